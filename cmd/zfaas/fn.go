package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
	"gopkg.in/yaml.v3"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/gateway/client"
	"github.com/zfaas/zfaas/runtime/archive"
)

// cliFlags are the flags every client command has.
type cliFlags struct {
	gateway string
	output  string
	tls     string
	// conn is what client() resolved: the gateway and the credentials.
	conn clientConfig
}

func (c *cliFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.gateway, "gateway", "", "gateway URL (env ZFAAS_GATEWAY; default from the client config that zfaas up wrote, else "+defaultGatewayURL+")")
	fs.StringVar(&c.output, "o", "table", "output format: table or json")
	fs.StringVar(&c.tls, "tls", "", "transport to the gateway: standard (TLS 1.3), gm (TLCP, SM2/SM3/SM4) or auto (TLS, then TLCP) (env ZFAAS_TLS; default standard)")
}

// defaultGatewayURL is where `zfaas up` serves its API by default.
const defaultGatewayURL = "https://127.0.0.1:8443"

// client builds the API client: the gateway from --gateway, ZFAAS_GATEWAY
// or the client config; over TLS the credentials (X.509-SVID files, trust
// bundle, gateway ID) from the client config, and a JWT-SVID bearer token
// from ZFAAS_TOKEN when set.
func (c *cliFlags) client(getenv env) (*client.Client, error) {
	if c.output != "table" && c.output != "json" {
		return nil, fmt.Errorf("-o %q: want table or json", c.output)
	}
	cc, err := readClientConfig(getenv)
	if err != nil {
		return nil, err
	}
	for _, gw := range []string{c.gateway, getenv("ZFAAS_GATEWAY"), cc.Gateway, defaultGatewayURL} {
		if gw != "" {
			cc.Gateway = gw
			break
		}
	}
	if id := getenv("ZFAAS_GATEWAY_ID"); id != "" {
		cc.GatewayID = id
	}
	mode := c.tls
	if mode == "" {
		mode = getenv("ZFAAS_TLS")
	}
	hc, err := cc.httpClient(getenv("ZFAAS_TOKEN"), mode)
	if err != nil {
		return nil, err
	}
	c.conn = cc
	return client.New(cc.Gateway, hc)
}

const fnUsage = `Usage: zfaas fn <command>

Commands:
  deploy NAME (--dir DIR | --zip FILE)   publish a new version
  ls                                     list functions
  get NAME                               show a function
  rm NAME                                delete a function and its versions
  versions NAME                          list versions
  alias set NAME ALIAS VERSION           point an alias (optionally weighted)
  alias rm NAME ALIAS                    delete an alias
  invoke NAME[:QUALIFIER]                invoke synchronously
  logs NAME [-f]                         show function output
  egress NAME                            show the egress rules: the policy's and those in force
`

func runFn(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, fnUsage)
		return errUsage
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "deploy":
		return fnDeploy(ctx, args, getenv, stdout, stderr)
	case "ls", "list":
		return fnList(ctx, args, getenv, stdout, stderr)
	case "get":
		return fnGet(ctx, args, getenv, stdout, stderr)
	case "rm", "delete":
		return fnRm(ctx, args, getenv, stdout, stderr)
	case "versions":
		return fnVersions(ctx, args, getenv, stdout, stderr)
	case "alias":
		return fnAlias(ctx, args, getenv, stdout, stderr)
	case "invoke":
		return fnInvoke(ctx, args, getenv, stdout, stderr)
	case "logs":
		return fnLogs(ctx, args, getenv, stdout, stderr)
	case "egress":
		return fnEgress(ctx, args, getenv, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, fnUsage)
		return nil
	}
	fmt.Fprintf(stderr, "zfaas fn: unknown command %q\n\n%s", cmd, fnUsage)
	return errUsage
}

// envFlag collects repeated --env K=V.
type envFlag map[string]string

func (e envFlag) String() string { return "" }
func (e envFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want KEY=VALUE, got %q", s)
	}
	e[k] = v
	return nil
}

// manifest is a function directory's zfaas.yaml: defaults for deploy.
type manifest struct {
	Name           string            `yaml:"name"`
	Runtime        string            `yaml:"runtime"`
	Handler        string            `yaml:"handler"`
	Mode           string            `yaml:"mode"`
	Memory         int               `yaml:"memory"`
	Timeout        int               `yaml:"timeout"`
	MaxConcurrency int               `yaml:"max_concurrency"`
	Env            map[string]string `yaml:"env"`
	Description    string            `yaml:"description"`
}

const manifestName = "zfaas.yaml"

func readManifest(dir string) (manifest, bool, error) {
	var m manifest
	raw, err := os.ReadFile(filepath.Join(dir, manifestName))
	if errors.Is(err, fs.ErrNotExist) {
		return m, false, nil
	}
	if err != nil {
		return m, false, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&m); err != nil && !errors.Is(err, io.EOF) {
		return m, false, fmt.Errorf("%s: %w", filepath.Join(dir, manifestName), err)
	}
	return m, true, nil
}

func (m manifest) request() client.DeployRequest {
	return client.DeployRequest{
		FunctionConfig: api.FunctionConfig{
			Runtime: api.Runtime(m.Runtime), Handler: m.Handler, Mode: api.Mode(m.Mode),
			MemoryMB: m.Memory, TimeoutSeconds: m.Timeout, MaxConcurrency: m.MaxConcurrency, Env: m.Env,
		},
		Description: m.Description,
	}
}

func fnDeploy(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) error {
	fs := newFlagSet("zfaas fn deploy", "zfaas fn deploy NAME (--dir DIR | --zip FILE) [flags]", stderr)
	var cf cliFlags
	cf.register(fs)
	dir := fs.String("dir", "", "directory to package (its zfaas.yaml, if any, gives defaults)")
	zipPath := fs.String("zip", "", "zip or tar.gz package to upload as is")
	runtime := fs.String("runtime", "", "provided, go, python3 or nodejs")
	handler := fs.String("handler", "", "executable (provided, go) or module.function (python3, nodejs)")
	mode := fs.String("mode", "", "lambda (Runtime API, default) or http (serve HTTP on $PORT)")
	memory := fs.Int("memory", 0, "memory in MB (default 128)")
	timeout := fs.Duration("timeout", 0, "invocation timeout, e.g. 30s (default 30s)")
	maxConc := fs.Int("max-concurrency", 0, "maximum concurrent instances (default: the gateway's)")
	desc := fs.String("description", "", "version description")
	envs := envFlag{}
	fs.Var(envs, "env", "environment variable KEY=VALUE (repeatable)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return flagErr(err)
	}
	if (*dir == "") == (*zipPath == "") {
		fmt.Fprintln(stderr, "zfaas fn deploy: give exactly one of --dir or --zip")
		return errUsage
	}
	var m manifest
	if *dir != "" {
		if m, _, err = readManifest(*dir); err != nil {
			return err
		}
	}
	name := m.Name
	if len(pos) > 0 {
		name = pos[0]
	}
	if name == "" || len(pos) > 1 {
		fs.Usage()
		return errUsage
	}
	req := m.request()
	setIf := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	setIf((*string)(&req.Runtime), *runtime)
	setIf(&req.Handler, *handler)
	setIf((*string)(&req.Mode), *mode)
	setIf(&req.Description, *desc)
	if *memory != 0 {
		req.MemoryMB = *memory
	}
	if *timeout != 0 {
		if *timeout%time.Second != 0 {
			return fmt.Errorf("--timeout %s: whole seconds only", *timeout)
		}
		req.TimeoutSeconds = int(*timeout / time.Second)
	}
	if *maxConc != 0 {
		req.MaxConcurrency = *maxConc
	}
	if len(envs) > 0 && req.Env == nil {
		req.Env = map[string]string{}
	}
	for k, v := range envs {
		req.Env[k] = v
	}
	// Check locally what can be checked, so mistakes fail before an upload.
	check := req.FunctionConfig
	if err := check.Normalize(); err != nil {
		return err
	}
	c, err := cf.client(getenv)
	if err != nil {
		return err
	}
	pkgPath := *zipPath
	if *dir != "" {
		f, err := os.CreateTemp("", "zfaas-package-*.zip")
		if err != nil {
			return err
		}
		defer os.Remove(f.Name())
		if err := archive.ZipDir(ctx, *dir, f); err != nil {
			f.Close()
			return fmt.Errorf("package %s: %w", *dir, err)
		}
		if err := f.Close(); err != nil {
			return err
		}
		pkgPath = f.Name()
	}
	f, err := os.Open(pkgPath)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	var body io.Reader = f
	if st.Size() > 1<<20 && isTerminal(stderr) {
		bar := progressbar.DefaultBytes(st.Size(), "uploading")
		r := progressbar.NewReader(f, bar)
		body = &r
		defer bar.Finish()
	}
	v, err := c.Deploy(ctx, name, req, body, filepath.Base(pkgPath))
	if err != nil {
		return err
	}
	if cf.output == "json" {
		return printJSON(stdout, v)
	}
	fmt.Fprintf(stdout, "deployed %s version %d (%s, %s, %d bytes)\n", v.Function, v.Version, v.Config.Runtime, short(v.PackageDigest), v.PackageSize)
	return nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func short(digest string) string {
	if len(digest) > 19 {
		return digest[:19]
	}
	return digest
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// clientArgs registers the common client flags on fs, parses exactly n
// positional arguments and returns the flags, the arguments and a client.
func clientArgs(fs *flag.FlagSet, args []string, n int, getenv env) (*cliFlags, []string, *client.Client, error) {
	cf := &cliFlags{}
	cf.register(fs)
	pos, err := parseN(fs, args, n)
	if err != nil {
		return nil, nil, nil, err
	}
	c, err := cf.client(getenv)
	if err != nil {
		return nil, nil, nil, err
	}
	return cf, pos, c, nil
}

// parseN parses flags and exactly n positional arguments.
func parseN(fs *flag.FlagSet, args []string, n int) ([]string, error) {
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return nil, flagErr(err)
	}
	if len(pos) != n {
		fs.Usage()
		return nil, errUsage
	}
	return pos, nil
}

func fnList(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) error {
	fs := newFlagSet("zfaas fn ls", "zfaas fn ls [-o json]", stderr)
	cf, _, c, err := clientArgs(fs, args, 0, getenv)
	if err != nil {
		return err
	}
	fns, err := c.List(ctx)
	if err != nil {
		return err
	}
	if cf.output == "json" {
		return printJSON(stdout, fns)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tLATEST\tRUNTIME\tMODE\tMEMORY\tTIMEOUT\tALIASES\tUPDATED")
	for _, f := range fns {
		rt, mode, mem, to := "-", "-", "-", "-"
		if f.Latest != nil {
			rt, mode = string(f.Latest.Config.Runtime), string(f.Latest.Config.Mode)
			mem = strconv.Itoa(f.Latest.Config.MemoryMB) + "MB"
			to = strconv.Itoa(f.Latest.Config.TimeoutSeconds) + "s"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", f.Name, f.LatestVersion, rt, mode, mem, to, aliasList(f.Aliases), f.UpdatedAt.Local().Format(time.DateTime))
	}
	return tw.Flush()
}

func aliasList(as map[string]api.Alias) string {
	if len(as) == 0 {
		return "-"
	}
	names := make([]string, 0, len(as))
	for n, a := range as {
		s := fmt.Sprintf("%s→%d", n, a.Version)
		if a.AdditionalVersion != 0 {
			s += fmt.Sprintf("+%d@%g", a.AdditionalVersion, a.AdditionalWeight)
		}
		names = append(names, s)
	}
	sort.Strings(names)
	return strings.Join(names, ",")
}

func fnGet(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) error {
	fs := newFlagSet("zfaas fn get", "zfaas fn get NAME [-o json]", stderr)
	cf, pos, c, err := clientArgs(fs, args, 1, getenv)
	if err != nil {
		return err
	}
	f, err := c.Get(ctx, pos[0])
	if err != nil {
		return err
	}
	if cf.output == "json" {
		return printJSON(stdout, f)
	}
	v := f.Latest
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Name:\t%s\n", f.Name)
	fmt.Fprintf(tw, "Tenant:\t%s\n", f.Tenant)
	fmt.Fprintf(tw, "Latest version:\t%d\n", f.LatestVersion)
	fmt.Fprintf(tw, "Runtime:\t%s (%s mode)\n", v.Config.Runtime, v.Config.Mode)
	fmt.Fprintf(tw, "Handler:\t%s\n", v.Config.Handler)
	fmt.Fprintf(tw, "Memory:\t%d MB\n", v.Config.MemoryMB)
	fmt.Fprintf(tw, "Timeout:\t%d s\n", v.Config.TimeoutSeconds)
	fmt.Fprintf(tw, "Max concurrency:\t%d\n", v.Config.MaxConcurrency)
	fmt.Fprintf(tw, "Package:\t%s (%d bytes)\n", v.PackageDigest, v.PackageSize)
	fmt.Fprintf(tw, "Aliases:\t%s\n", aliasList(f.Aliases))
	fmt.Fprintf(tw, "Created:\t%s\n", f.CreatedAt.Local().Format(time.DateTime))
	fmt.Fprintf(tw, "Updated:\t%s\n", f.UpdatedAt.Local().Format(time.DateTime))
	return tw.Flush()
}

func fnRm(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) error {
	fs := newFlagSet("zfaas fn rm", "zfaas fn rm NAME", stderr)
	_, pos, c, err := clientArgs(fs, args, 1, getenv)
	if err != nil {
		return err
	}
	if err := c.Delete(ctx, pos[0]); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "deleted %s\n", pos[0])
	return nil
}

func fnVersions(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) error {
	fs := newFlagSet("zfaas fn versions", "zfaas fn versions NAME [-o json]", stderr)
	cf, pos, c, err := clientArgs(fs, args, 1, getenv)
	if err != nil {
		return err
	}
	vers, err := c.Versions(ctx, pos[0])
	if err != nil {
		return err
	}
	if cf.output == "json" {
		return printJSON(stdout, vers)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tRUNTIME\tHANDLER\tMEMORY\tPACKAGE\tCREATED\tDESCRIPTION")
	for _, v := range vers {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%dMB\t%s\t%s\t%s\n", v.Version, v.Config.Runtime, v.Config.Handler, v.Config.MemoryMB, short(v.PackageDigest), v.CreatedAt.Local().Format(time.DateTime), v.Description)
	}
	return tw.Flush()
}

func fnEgress(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) error {
	fs := newFlagSet("zfaas fn egress", "zfaas fn egress NAME [-o json]", stderr)
	cf, pos, c, err := clientArgs(fs, args, 1, getenv)
	if err != nil {
		return err
	}
	v, err := c.Egress(ctx, pos[0])
	if err != nil {
		return err
	}
	if cf.output == "json" {
		return printJSON(stdout, v)
	}
	fmt.Fprintf(stdout, "Function %s, policy revision %d\n", v.Function, v.Revision)
	if len(v.Rules) == 0 {
		fmt.Fprintln(stdout, "Policy rules: none (no egress beyond the platform)")
	} else {
		fmt.Fprintln(stdout, "Policy rules:")
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  PROTOCOL\tPORTS\tCIDRS\tHOSTS\tSNI")
		for _, r := range v.Rules {
			fmt.Fprintf(tw, "  %v\t%v\t%v\t%v\t%v\n", r["protocol"], r["ports"], r["cidrs"], r["hosts"], r["sni"])
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(v.Instances) == 0 {
		fmt.Fprintln(stdout, "No running instances.")
	}
	for _, in := range v.Instances {
		fmt.Fprintf(stdout, "Instance %s (revision %s), in force:\n", in.Instance, in.Revision)
		for _, r := range in.InForce {
			fmt.Fprintf(stdout, "  %s\n", r)
		}
	}
	return nil
}

func fnAlias(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "set" && args[0] != "rm") {
		fmt.Fprintln(stderr, "Usage: zfaas fn alias set NAME ALIAS VERSION [--additional-version V --weight W]\n       zfaas fn alias rm NAME ALIAS")
		return errUsage
	}
	sub, args := args[0], args[1:]
	var cf cliFlags
	if sub == "rm" {
		fs := newFlagSet("zfaas fn alias rm", "zfaas fn alias rm NAME ALIAS", stderr)
		cf.register(fs)
		pos, err := parseN(fs, args, 2)
		if err != nil {
			return err
		}
		c, err := cf.client(getenv)
		if err != nil {
			return err
		}
		if err := c.DeleteAlias(ctx, pos[0], pos[1]); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "deleted alias %s:%s\n", pos[0], pos[1])
		return nil
	}
	fs := newFlagSet("zfaas fn alias set", "zfaas fn alias set NAME ALIAS VERSION [--additional-version V --weight W]", stderr)
	cf.register(fs)
	addl := fs.Int64("additional-version", 0, "second version for a weighted (canary) split")
	weight := fs.Float64("weight", 0, "share of calls, in (0,1), routed to --additional-version")
	pos, err := parseN(fs, args, 3)
	if err != nil {
		return err
	}
	ver, err := strconv.ParseInt(pos[2], 10, 64)
	if err != nil {
		return fmt.Errorf("version %q: want a number", pos[2])
	}
	c, err := cf.client(getenv)
	if err != nil {
		return err
	}
	a, err := c.SetAlias(ctx, pos[0], pos[1], ver, *addl, *weight)
	if err != nil {
		return err
	}
	if cf.output == "json" {
		return printJSON(stdout, a)
	}
	if a.AdditionalVersion != 0 {
		fmt.Fprintf(stdout, "alias %s:%s → version %d (%.0f%% to version %d)\n", pos[0], a.Name, a.Version, a.AdditionalWeight*100, a.AdditionalVersion)
	} else {
		fmt.Fprintf(stdout, "alias %s:%s → version %d\n", pos[0], a.Name, a.Version)
	}
	return nil
}

func fnInvoke(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) error {
	fs := newFlagSet("zfaas fn invoke", "zfaas fn invoke NAME[:QUALIFIER] [--data JSON|@FILE|@-]", stderr)
	data := fs.String("data", "{}", "event payload: inline JSON, @FILE, or @- for standard input")
	verbose := fs.Bool("v", false, "print invocation metadata to stderr")
	cf, pos, c, err := clientArgs(fs, args, 1, getenv)
	if err != nil {
		return err
	}
	var payload []byte
	switch {
	case *data == "@-":
		payload, err = io.ReadAll(io.LimitReader(os.Stdin, 64<<20))
	case strings.HasPrefix(*data, "@"):
		payload, err = os.ReadFile((*data)[1:])
	default:
		payload = []byte(*data)
	}
	if err != nil {
		return fmt.Errorf("read payload: %w", err)
	}
	out, meta, err := c.Invoke(ctx, pos[0], payload)
	if *verbose || cf.output == "json" {
		defer fmt.Fprintf(stderr, "invocation %s: version %s, %s ms (billed %s ms), cold start %v\n", meta.InvocationID, meta.Version, meta.DurationMs, meta.BilledDuration, meta.ColdStart)
	}
	var fe *client.FunctionError
	if errors.As(err, &fe) {
		if cf.output == "json" {
			printJSON(stdout, fe.FunctionError)
		}
		return fmt.Errorf("%s: %s", fe.ErrorType, fe.ErrorMessage)
	}
	if err != nil {
		return err
	}
	stdout.Write(out)
	if len(out) > 0 && out[len(out)-1] != '\n' {
		fmt.Fprintln(stdout)
	}
	return nil
}

func fnLogs(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) error {
	fs := newFlagSet("zfaas fn logs", "zfaas fn logs NAME [-f] [--since 1h] [-o json]", stderr)
	follow := fs.Bool("f", false, "follow: keep printing new output")
	since := fs.Duration("since", time.Hour, "show output from this long ago")
	cf, pos, c, err := clientArgs(fs, args, 1, getenv)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	err = c.Logs(ctx, pos[0], since.String(), *follow, func(r api.LogRecord) {
		if cf.output == "json" {
			enc.Encode(r)
			return
		}
		inv := r.InvocationID
		if len(inv) > 8 {
			inv = inv[:8]
		}
		fmt.Fprintf(stdout, "%s %s v%d %s %s %s\n", r.Time.Local().Format("2006-01-02T15:04:05.000"), r.Function, r.Version, r.InstanceID, inv, r.Line)
	})
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// deployExamples deploys every directory under root that has a zfaas.yaml.
func deployExamples(ctx context.Context, gwURL string, hc *http.Client, root string, stdout io.Writer) error {
	ents, err := os.ReadDir(root)
	if err != nil {
		return err
	}
	c, err := client.New(gwURL, hc)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(root, e.Name())
		m, ok, err := readManifest(dir)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		if m.Name == "" {
			m.Name = e.Name()
		}
		var buf bytes.Buffer
		if err := archive.ZipDir(ctx, dir, &buf); err != nil {
			return fmt.Errorf("package %s: %w", dir, err)
		}
		// ZipDir is deterministic, so an unchanged example has the digest of
		// the deployed one and is not published again.
		req := m.request()
		if cur, err := c.Get(ctx, m.Name); err == nil && cur.Latest.PackageDigest == digestOf(buf.Bytes()) && sameConfig(cur.Latest.Config, req.FunctionConfig) {
			fmt.Fprintf(stdout, "example %s is up to date (version %d)\n", m.Name, cur.LatestVersion)
			continue
		}
		v, err := c.Deploy(ctx, m.Name, req, &buf, m.Name+".zip")
		if err != nil {
			return fmt.Errorf("%s: %w", m.Name, err)
		}
		fmt.Fprintf(stdout, "deployed example %s version %d (%s)\n", v.Function, v.Version, v.Config.Runtime)
	}
	return nil
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// sameConfig reports whether a deployed config equals what a manifest asks
// for, after both take the defaults.
func sameConfig(deployed, want api.FunctionConfig) bool {
	if err := want.Normalize(); err != nil {
		return false
	}
	if want.MaxConcurrency == 0 {
		want.MaxConcurrency = deployed.MaxConcurrency
	}
	a, _ := json.Marshal(deployed)
	b, _ := json.Marshal(want)
	return bytes.Equal(a, b)
}
