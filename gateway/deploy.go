package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"path"
	"strconv"
	"strings"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/audit"
	"github.com/zfaas/zfaas/runtime/archive"
)

// DeployRequest is the "config" part of a deploy.
type DeployRequest struct {
	api.FunctionConfig
	Description string `json:"description,omitempty"`
}

const maxConfigBytes = 64 << 10

// handleDeploy publishes a new version. The body is multipart/form-data with
// a "config" part (JSON DeployRequest) followed by a "package" part (zip or
// tar.gz). Everything is validated before anything is stored.
func (g *Gateway) handleDeploy(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !api.ValidName(name) {
		g.writeError(w, r, errf(http.StatusBadRequest, CodeBadRequest, "function name must be 1-64 lower-case letters, digits or inner hyphens"))
		return
	}
	// Authenticate before reading a body of up to the package limit.
	c, err := g.caller(r)
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	v, err := g.deploy(r, c, name)
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	g.log.Info("deployed", "function", name, "version", v.Version, "digest", v.PackageDigest, "size", v.PackageSize)
	g.recordControl(audit.KindDeploy, c, g.cfg.Tenant+"/"+name, "deploy", map[string]any{"version": v.Version, "digest": v.PackageDigest, "size": v.PackageSize})
	writeJSON(w, http.StatusCreated, v)
}

func (g *Gateway) deploy(r *http.Request, caller Caller, name string) (api.Version, error) {
	ctx := r.Context()
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/form-data" {
		return api.Version{}, errf(http.StatusUnsupportedMediaType, CodeBadRequest, "deploy wants multipart/form-data with a config and a package part")
	}
	// The whole body is bounded: package limit plus room for the config and
	// multipart framing.
	r.Body = http.MaxBytesReader(nil, r.Body, g.cfg.Archive.MaxCompressed+maxConfigBytes+64<<10)
	mr, err := r.MultipartReader()
	if err != nil {
		return api.Version{}, errf(http.StatusBadRequest, CodeBadRequest, "malformed multipart body")
	}
	var req DeployRequest
	haveConfig := false
	var pkg *os.File
	var pkgSize int64
	defer func() {
		if pkg != nil {
			pkg.Close()
			os.Remove(pkg.Name())
		}
	}()
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return api.Version{}, tooLarge(g.cfg.Archive.MaxCompressed)
			}
			return api.Version{}, errf(http.StatusBadRequest, CodeBadRequest, "malformed multipart body")
		}
		switch part.FormName() {
		case "config":
			raw, err := io.ReadAll(io.LimitReader(part, maxConfigBytes+1))
			if err != nil {
				return api.Version{}, errf(http.StatusBadRequest, CodeBadRequest, "cannot read config part")
			}
			if len(raw) > maxConfigBytes {
				return api.Version{}, errf(http.StatusRequestEntityTooLarge, CodePayloadTooLarge, "config part over 64 KiB")
			}
			dec := json.NewDecoder(strings.NewReader(string(raw)))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&req); err != nil {
				return api.Version{}, errf(http.StatusBadRequest, CodeBadRequest, "config: "+jsonErrMessage(err))
			}
			haveConfig = true
		case "package":
			if pkg != nil {
				return api.Version{}, errf(http.StatusBadRequest, CodeBadRequest, "more than one package part")
			}
			pkg, err = os.CreateTemp(g.cfg.TempDir, "zfaas-upload-*")
			if err != nil {
				return api.Version{}, fmt.Errorf("spool upload: %w", err)
			}
			pkgSize, err = io.Copy(pkg, io.LimitReader(part, g.cfg.Archive.MaxCompressed+1))
			if err != nil {
				var mbe *http.MaxBytesError
				if errors.As(err, &mbe) {
					return api.Version{}, tooLarge(g.cfg.Archive.MaxCompressed)
				}
				return api.Version{}, errf(http.StatusBadRequest, CodeBadRequest, "cannot read package part")
			}
			if pkgSize > g.cfg.Archive.MaxCompressed {
				return api.Version{}, tooLarge(g.cfg.Archive.MaxCompressed)
			}
		default:
			return api.Version{}, errf(http.StatusBadRequest, CodeBadRequest, fmt.Sprintf("unexpected part %q", part.FormName()))
		}
	}
	if !haveConfig {
		return api.Version{}, errf(http.StatusBadRequest, CodeBadRequest, "missing config part")
	}
	if pkg == nil {
		return api.Version{}, errf(http.StatusBadRequest, CodeBadRequest, "missing package part")
	}
	cfg := req.FunctionConfig
	if err := cfg.Normalize(); err != nil {
		return api.Version{}, errf(http.StatusBadRequest, CodeBadRequest, err.Error())
	}
	if cfg.MaxConcurrency == 0 {
		cfg.MaxConcurrency = g.cfg.DefaultMaxConcurrency
	}
	if len(req.Description) > 256 {
		return api.Version{}, errf(http.StatusBadRequest, CodeBadRequest, "description over 256 bytes")
	}
	if err := g.authorizeAs(r, caller, "deploy", name, map[string]any{
		"runtime": string(cfg.Runtime), "mode": string(cfg.Mode), "memoryMB": cfg.MemoryMB,
		"timeoutSeconds": cfg.TimeoutSeconds, "maxConcurrency": cfg.MaxConcurrency,
		"packageSize": pkgSize,
	}); err != nil {
		return api.Version{}, err
	}
	man, err := archive.Inspect(pkg, pkgSize, g.cfg.Archive)
	if err != nil {
		return api.Version{}, err
	}
	if err := checkHandler(cfg, man); err != nil {
		return api.Version{}, err
	}
	if _, err := pkg.Seek(0, io.SeekStart); err != nil {
		return api.Version{}, err
	}
	info, err := g.cfg.Store.PutPackage(ctx, pkg)
	if err != nil {
		return api.Version{}, fmt.Errorf("store package: %w", err)
	}
	return g.reg.Publish(ctx, g.cfg.Tenant, name, cfg, info, req.Description)
}

func tooLarge(limit int64) error {
	return &archive.Error{Code: "package_too_large", Msg: fmt.Sprintf("package over the %d byte limit", limit)}
}

// checkHandler refuses a package whose handler is not in it, so a typo fails
// the deploy instead of every invocation.
func checkHandler(cfg api.FunctionConfig, man archive.Manifest) error {
	files := map[string]archive.Entry{}
	for _, e := range man.Entries {
		files[path.Clean(e.Name)] = e
	}
	missing := func(msg string) error { return errf(http.StatusBadRequest, CodeBadRequest, msg) }
	switch {
	case cfg.Runtime == api.RuntimeProvided || cfg.Runtime == api.RuntimeGo:
		exe := cfg.Handler
		if cfg.Runtime == api.RuntimeProvided {
			exe = api.ProvidedExecutable
		}
		e, ok := files[path.Clean(exe)]
		if !ok {
			return missing(fmt.Sprintf("executable %q is not in the package", exe))
		}
		if e.Mode&0o111 == 0 && e.Type != archive.TypeSymlink {
			return missing(fmt.Sprintf("executable %q is not executable (mode %v)", exe, e.Mode))
		}
	case cfg.Mode == api.ModeHTTP:
		if _, ok := files[path.Clean(cfg.Handler)]; !ok {
			return missing(fmt.Sprintf("handler %q is not in the package", cfg.Handler))
		}
	default:
		// The same resolution as the bootstraps: Python imports everything
		// before the last dot as a (dotted) module; Node.js loads the file
		// named up to the first dot after the last slash.
		var mod string
		var cands []string
		if cfg.Runtime == api.RuntimeNodejs {
			dir, base := path.Split(cfg.Handler)
			mod = dir + base[:strings.Index(base, ".")]
			cands = []string{mod + ".js", mod + ".mjs", mod + ".cjs"}
		} else {
			mod = strings.ReplaceAll(cfg.Handler[:strings.LastIndex(cfg.Handler, ".")], ".", "/")
			cands = []string{mod + ".py", mod + "/__init__.py", mod + ".pyc"}
		}
		for _, c := range cands {
			if _, ok := files[path.Clean(c)]; ok {
				return nil
			}
		}
		return missing(fmt.Sprintf("handler module %q is not in the package (looked for %s)", mod, strings.Join(cands, ", ")))
	}
	return nil
}

func jsonErrMessage(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return "invalid JSON at offset " + strconv.FormatInt(se.Offset, 10)
	case errors.As(err, &te):
		return fmt.Sprintf("field %q has the wrong type", te.Field)
	case strings.HasPrefix(err.Error(), "json: unknown field"):
		return strings.TrimPrefix(err.Error(), "json: ")
	}
	return "invalid JSON"
}

func (g *Gateway) handleList(w http.ResponseWriter, r *http.Request) {
	if err := g.authorizeControl(r, "read", ""); err != nil {
		g.writeError(w, r, err)
		return
	}
	fns, err := g.reg.List(r.Context(), g.cfg.Tenant)
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	type item struct {
		api.Function
		Latest *api.Version `json:"latest,omitempty"`
	}
	out := make([]item, 0, len(fns))
	for _, f := range fns {
		it := item{Function: f}
		if v, err := g.reg.Version(r.Context(), f.Tenant, f.Name, f.LatestVersion); err == nil {
			it.Latest = &v
		}
		out = append(out, it)
	}
	writeJSON(w, http.StatusOK, map[string]any{"functions": out})
}

// FunctionInfo is the body of GET /v1/functions/{name}.
type FunctionInfo struct {
	api.Function
	Latest api.Version `json:"latest"`
}

func (g *Gateway) handleGet(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := g.authorizeControl(r, "read", name); err != nil {
		g.writeError(w, r, err)
		return
	}
	f, err := g.reg.loadFunction(r.Context(), g.cfg.Tenant, name)
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	v, err := g.reg.Version(r.Context(), g.cfg.Tenant, name, f.LatestVersion)
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, FunctionInfo{Function: f, Latest: v})
}

func (g *Gateway) handleDelete(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	c, err := g.authenticateControl(r, "delete", name)
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	vers, err := g.reg.Delete(r.Context(), g.cfg.Tenant, name)
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	if ev, ok := g.cfg.Invoker.(Evicter); ok {
		for _, v := range vers {
			ev.Evict(v)
		}
	}
	g.log.Info("deleted", "function", name)
	g.recordControl(audit.KindDelete, c, g.cfg.Tenant+"/"+name, "delete", map[string]any{"versions": len(vers)})
	w.WriteHeader(http.StatusNoContent)
}

func (g *Gateway) handleVersions(w http.ResponseWriter, r *http.Request) {
	if err := g.authorizeControl(r, "read", r.PathValue("name")); err != nil {
		g.writeError(w, r, err)
		return
	}
	vers, err := g.reg.Versions(r.Context(), g.cfg.Tenant, r.PathValue("name"))
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"versions": vers})
}

func (g *Gateway) handleVersion(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := g.authorizeControl(r, "read", name); err != nil {
		g.writeError(w, r, err)
		return
	}
	n, err := strconv.ParseInt(r.PathValue("version"), 10, 64)
	if err != nil {
		g.writeError(w, r, errf(http.StatusNotFound, CodeVersionNotFound, "version must be a number"))
		return
	}
	if _, err := g.reg.loadFunction(r.Context(), g.cfg.Tenant, name); err != nil {
		g.writeError(w, r, err)
		return
	}
	v, err := g.reg.Version(r.Context(), g.cfg.Tenant, name, n)
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// AliasRequest is the body of PUT /v1/functions/{name}/aliases/{alias}.
type AliasRequest struct {
	Version           int64   `json:"version"`
	AdditionalVersion int64   `json:"additionalVersion,omitempty"`
	AdditionalWeight  float64 `json:"additionalWeight,omitempty"`
}

func (g *Gateway) handleSetAlias(w http.ResponseWriter, r *http.Request) {
	name, alias := r.PathValue("name"), r.PathValue("alias")
	c, err := g.authenticateControl(r, "alias.set", name)
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	if !api.ValidName(alias) || alias[0] >= '0' && alias[0] <= '9' {
		g.writeError(w, r, errf(http.StatusBadRequest, CodeBadRequest, "alias must start with a letter and use lower-case letters, digits or inner hyphens"))
		return
	}
	var req AliasRequest
	if err := decodeJSON(r, &req); err != nil {
		g.writeError(w, r, err)
		return
	}
	if req.Version < 1 {
		g.writeError(w, r, errf(http.StatusBadRequest, CodeBadRequest, "version must be a published version number"))
		return
	}
	if req.AdditionalVersion != 0 {
		if req.AdditionalWeight <= 0 || req.AdditionalWeight >= 1 {
			g.writeError(w, r, errf(http.StatusBadRequest, CodeBadRequest, "additionalWeight must be in (0, 1)"))
			return
		}
		if req.AdditionalVersion == req.Version {
			g.writeError(w, r, errf(http.StatusBadRequest, CodeBadRequest, "additionalVersion must differ from version"))
			return
		}
	} else if req.AdditionalWeight != 0 {
		g.writeError(w, r, errf(http.StatusBadRequest, CodeBadRequest, "additionalWeight needs additionalVersion"))
		return
	}
	f, err := g.reg.SetAlias(r.Context(), g.cfg.Tenant, name, api.Alias{
		Name: alias, Version: req.Version, AdditionalVersion: req.AdditionalVersion, AdditionalWeight: req.AdditionalWeight,
	})
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	g.log.Info("alias set", "function", name, "alias", alias, "version", req.Version, "additional", req.AdditionalVersion, "weight", req.AdditionalWeight)
	g.recordControl(audit.KindAlias, c, g.cfg.Tenant+"/"+name, "alias.set", map[string]any{
		"alias": alias, "version": req.Version, "additional_version": req.AdditionalVersion, "additional_weight": req.AdditionalWeight})
	writeJSON(w, http.StatusOK, f.Aliases[alias])
}

func (g *Gateway) handleDeleteAlias(w http.ResponseWriter, r *http.Request) {
	c, err := g.authenticateControl(r, "alias.delete", r.PathValue("name"))
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	if err := g.reg.DeleteAlias(r.Context(), g.cfg.Tenant, r.PathValue("name"), r.PathValue("alias")); err != nil {
		g.writeError(w, r, err)
		return
	}
	g.recordControl(audit.KindAlias, c, g.cfg.Tenant+"/"+r.PathValue("name"), "alias.delete", map[string]any{"alias": r.PathValue("alias")})
	w.WriteHeader(http.StatusNoContent)
}

func decodeJSON(r *http.Request, v any) error {
	body := http.MaxBytesReader(nil, r.Body, 64<<10)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return errf(http.StatusRequestEntityTooLarge, CodePayloadTooLarge, "body over 64 KiB")
		}
		return errf(http.StatusBadRequest, CodeBadRequest, jsonErrMessage(err))
	}
	return nil
}
