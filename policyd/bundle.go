package policyd

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
)

// maxBundleFiles caps the number of files in a bundle.
const maxBundleFiles = 10_000

// BuildBundle packs the policy directory dir (its .rego files, data.json /
// data.yaml files and an optional .manifest; hidden directories are skipped)
// into an unsigned OPA bundle (tar.gz), as `opa build` would. Data files are
// merged into the bundle's data.json under their directory's path. The
// output is deterministic for the same input. A Rego syntax error is a
// *RefusedError wrapping ErrCompile.
func BuildBundle(dir string) ([]byte, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("policyd: %s is not a directory", dir)
	}
	return BuildBundleFS(os.DirFS(dir))
}

// BuildBundleFS is BuildBundle for a file system, e.g. an embed.FS.
func BuildBundleFS(fsys fs.FS) ([]byte, error) {
	b, err := readFSBundle(fsys, DefaultMaxUnpackedBytes)
	if err != nil {
		return nil, err
	}
	if b.Manifest.RegoVersion == nil {
		b.Manifest.SetRegoVersion(ast.RegoV1)
	}
	return writeBundle(b)
}

// SignBundle signs an OPA bundle (tar.gz) with privateKeyPEM (PKCS#1,
// PKCS#8 or SEC 1 PEM; RSA or ECDSA) the way `opa build --signing-key`
// does: a .signatures.json holding one JWS over the SHA-256 of every file.
// keyID becomes the JWS "kid"; alg "" picks RS256 for RSA keys and
// ES256/ES384/ES512 by curve for ECDSA keys. An existing signature is
// replaced.
func SignBundle(raw []byte, privateKeyPEM []byte, keyID, alg string) ([]byte, error) {
	if alg == "" {
		var err error
		if alg, err = signingAlgorithm(privateKeyPEM); err != nil {
			return nil, fmt.Errorf("policyd: signing key: %w", err)
		}
	}
	b, err := bundle.NewReader(bytes.NewReader(raw)).WithSkipBundleVerification(true).Read()
	if err != nil {
		return nil, fmt.Errorf("policyd: read bundle: %w", err)
	}
	sc := bundle.NewSigningConfig(strings.TrimSpace(string(privateKeyPEM)), alg, "")
	if err := b.GenerateSignature(sc, keyID, false); err != nil {
		return nil, fmt.Errorf("policyd: sign bundle: %w", err)
	}
	return writeBundle(&b)
}

func writeBundle(b *bundle.Bundle) ([]byte, error) {
	var buf bytes.Buffer
	if err := bundle.NewWriter(&buf).Write(*b); err != nil {
		return nil, fmt.Errorf("policyd: write bundle: %w", err)
	}
	return buf.Bytes(), nil
}

func signingAlgorithm(keyPEM []byte) (string, error) {
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return "", errors.New("not PEM")
	}
	var key any
	var err error
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	default:
		return "", fmt.Errorf("PEM block %q: want a private key", block.Type)
	}
	if err != nil {
		return "", err
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		return "RS256", nil
	case *ecdsa.PrivateKey:
		switch k.Curve {
		case elliptic.P256():
			return "ES256", nil
		case elliptic.P384():
			return "ES384", nil
		case elliptic.P521():
			return "ES512", nil
		}
		return "", errors.New("unsupported ECDSA curve")
	}
	return "", fmt.Errorf("unsupported key type %T", key)
}

// policyFileFilter keeps what a policy bundle is made of and skips hidden
// directories (.git) and everything else (README.md, embed.go, …). It
// returns true for what to skip.
func policyFileFilter(p string, info fs.FileInfo, _ int) bool {
	name := info.Name()
	if info.IsDir() {
		return p != "." && p != "" && strings.HasPrefix(name, ".")
	}
	switch {
	case strings.HasSuffix(name, ".rego"),
		name == "data.json", name == "data.yaml", name == "data.yml",
		name == ".manifest":
		return false
	}
	return true
}

// readFSBundle reads a policy directory as an (unsigned) bundle.
func readFSBundle(fsys fs.FS, maxFile int64) (*bundle.Bundle, error) {
	loader, err := bundle.NewFSLoader(fsys)
	if err != nil {
		return nil, refused(ErrBundle, "%v", err)
	}
	loader = loader.WithFilter(policyFileFilter).WithSizeLimitBytes(maxFile)
	b, err := bundle.NewCustomReader(loader).WithSkipBundleVerification(true).WithSizeLimitBytes(maxFile + 1).Read()
	if err != nil {
		return nil, classifyReadError(err)
	}
	if len(b.Modules) == 0 {
		return nil, refused(ErrBundle, "no .rego files")
	}
	return &b, nil
}

func classifyReadError(err error) *RefusedError {
	var astErrs ast.Errors
	if errors.As(err, &astErrs) {
		return refused(ErrCompile, "%v", err)
	}
	return refused(ErrBundle, "%v", err)
}

// archiveInfo is what inspectArchive learns from a bundle's tar.gz.
type archiveInfo struct {
	files      []string // normalised paths, without the signatures file
	signatures []byte   // .signatures.json, nil when absent
}

// normPath turns a tar entry name into the form bundle signatures use.
func normPath(name string) string {
	return strings.TrimPrefix(path.Clean("/"+name), "/")
}

// inspectArchive reads the tar.gz once, before OPA does, to bound its size
// and file count, refuse odd entries (links, devices, ".." paths) and list
// its files for the signature coverage check.
func inspectArchive(raw []byte, maxUnpacked int64) (*archiveInfo, error) {
	gz, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		return nil, refused(ErrBundle, "not gzip: %v", err)
	}
	tr := tar.NewReader(gz)
	info := &archiveInfo{}
	var total int64
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, refused(ErrBundle, "not a tar archive: %v", err)
		}
		if slices.Contains(strings.Split(h.Name, "/"), "..") {
			return nil, refused(ErrBundle, "entry %q escapes the bundle", h.Name)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			continue
		case tar.TypeReg:
		default:
			return nil, refused(ErrBundle, "entry %q is not a regular file", h.Name)
		}
		if len(info.files) >= maxBundleFiles {
			return nil, refused(ErrTooLarge, "more than %d files", maxBundleFiles)
		}
		p := normPath(h.Name)
		isSig := bundle.IsSignaturesFile(p)
		var sink bytes.Buffer
		w := io.Discard
		if isSig {
			w = &sink
		}
		n, err := io.Copy(w, io.LimitReader(tr, maxUnpacked-total+1))
		if err != nil {
			return nil, refused(ErrBundle, "read %q: %v", h.Name, err)
		}
		total += n
		if total > maxUnpacked {
			return nil, refused(ErrTooLarge, "unpacked files over %d bytes", maxUnpacked)
		}
		if isSig {
			if info.signatures != nil {
				return nil, refused(ErrBundle, "more than one signatures file")
			}
			info.signatures = sink.Bytes()
			continue
		}
		if slices.Contains(info.files, p) {
			return nil, refused(ErrBundle, "file %q appears twice", p)
		}
		info.files = append(info.files, p)
	}
	return info, nil
}

// signedFiles returns the file names covered by the (already verified)
// signature in a .signatures.json.
func signedFiles(sigJSON []byte) (map[string]bool, error) {
	var sc bundle.SignaturesConfig
	if err := json.Unmarshal(sigJSON, &sc); err != nil {
		return nil, err
	}
	if len(sc.Signatures) != 1 {
		return nil, fmt.Errorf("%d signatures, want exactly one", len(sc.Signatures))
	}
	parts := strings.Split(sc.Signatures[0], ".")
	if len(parts) != 3 {
		return nil, errors.New("signature is not a compact JWS")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, err
	}
	var ds bundle.DecodedSignature
	if err := json.Unmarshal(payload, &ds); err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(ds.Files))
	for _, f := range ds.Files {
		out[normPath(f.Name)] = true
	}
	return out, nil
}

// bundleReader reads archives under the engine's limits and key.
type bundleReader struct {
	maxBundle, maxUnpacked int64
	verify                 *bundle.VerificationConfig // nil: signatures not checked
}

// read parses raw as a snapshot bundle. With a verification key, the bundle
// must carry exactly one valid signature that covers every file it holds,
// and nothing else; without one, signatures are ignored. trusted skips the
// signature requirement (the built-in default policy).
func (r bundleReader) read(raw []byte, trusted bool) (b *bundle.Bundle, signed bool, err error) {
	if int64(len(raw)) > r.maxBundle {
		return nil, false, refused(ErrTooLarge, "%d bytes, limit %d", len(raw), r.maxBundle)
	}
	info, err := inspectArchive(raw, r.maxUnpacked)
	if err != nil {
		return nil, false, err
	}
	verify := r.verify != nil && !trusted
	if verify && info.signatures == nil {
		return nil, false, refused(ErrSignature, "the bundle is not signed (no .signatures.json) and this platform requires signed policy")
	}
	// Parse without verification first, so that a refusal after this point
	// is about the signature and not the bundle's shape.
	plain, err := bundle.NewReader(bytes.NewReader(raw)).
		WithSizeLimitBytes(r.maxUnpacked + 1).
		WithSkipBundleVerification(true).
		Read()
	if err != nil {
		return nil, false, classifyReadError(err)
	}
	if plain.Type() != bundle.SnapshotBundleType {
		return nil, false, refused(ErrBundle, "delta bundles are not supported")
	}
	if len(plain.WasmModules) > 0 || len(plain.PlanModules) > 0 {
		return nil, false, refused(ErrBundle, "wasm and plan bundles are not supported")
	}
	if len(plain.Modules) == 0 {
		return nil, false, refused(ErrBundle, "no .rego files")
	}
	if !verify {
		return &plain, false, nil
	}
	vb, err := bundle.NewReader(bytes.NewReader(raw)).
		WithSizeLimitBytes(r.maxUnpacked + 1).
		WithBundleVerificationConfig(r.verify).
		Read()
	if err != nil {
		return nil, false, refused(ErrSignature, "%v", err)
	}
	// OPA checks every file against the signature; check it here too, from
	// our own reading of the archive, so that no file can be activated
	// without being covered whatever the library version does.
	covered, err := signedFiles(info.signatures)
	if err != nil {
		return nil, false, refused(ErrSignature, "%v", err)
	}
	for _, f := range info.files {
		if !covered[f] {
			return nil, false, refused(ErrSignature, "file %q is not covered by the signature", f)
		}
	}
	for f := range covered {
		if !slices.Contains(info.files, f) {
			return nil, false, refused(ErrSignature, "signed file %q is missing from the bundle", f)
		}
	}
	return &vb, true, nil
}

func digestOf(raw []byte) string {
	sum := sha256.Sum256(raw)
	return "sha256:" + hex.EncodeToString(sum[:])
}
