package main

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	spiffeworkloadapi "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/zfaas/zfaas/api"
	zfaasv1 "github.com/zfaas/zfaas/api/zfaas/v1"
	"github.com/zfaas/zfaas/crypto/dualstack"
	"github.com/zfaas/zfaas/crypto/mtls"
	"github.com/zfaas/zfaas/gateway/client"
	"github.com/zfaas/zfaas/identity/ca"
	"github.com/zfaas/zfaas/runtime/archive"
	"github.com/zfaas/zfaas/runtime/sandbox/process"
)

// built holds function directories built once for all tests.
var built struct {
	once    sync.Once
	err     error
	root    string
	fixture string // dir with the fixture binary as "bootstrap"
	hello   string
	caller  string
	echo    string
	python  string
	node    string
}

func TestMain(m *testing.M) {
	process.Init()
	code := m.Run()
	if built.root != "" {
		os.RemoveAll(built.root)
	}
	os.Exit(code)
}

// needPlatform skips tests that need what the process sandbox needs.
func needPlatform(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the process sandbox uses namespaces and cgroups")
	}
}

func buildFunctions(t *testing.T) {
	t.Helper()
	built.once.Do(func() {
		root, err := os.MkdirTemp("", "zfaas-e2e-fns-")
		if err != nil {
			built.err = err
			return
		}
		built.root = root
		build := func(pkg, name string) (string, error) {
			dir := filepath.Join(root, name)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return "", err
			}
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "bootstrap"), pkg)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				return "", fmt.Errorf("build %s: %v\n%s", pkg, err, out)
			}
			return dir, nil
		}
		if built.fixture, built.err = build("./testdata/fixture", "fixture"); built.err != nil {
			return
		}
		if built.hello, built.err = build("../../examples/hello", "hello"); built.err != nil {
			return
		}
		if built.echo, built.err = build("../../examples/http-echo", "http-echo"); built.err != nil {
			return
		}
		if built.caller, built.err = build("../../examples/caller", "caller"); built.err != nil {
			return
		}
		built.python, _ = filepath.Abs("../../examples/python-hello")
		built.node, _ = filepath.Abs("../../examples/node-hello")
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
}

type testPlatform struct {
	t   *testing.T
	p   *platform
	url string // https://API address
	// hc is an HTTP client with the local administrator's X.509-SVID.
	hc *http.Client
	c  *client.Client
	// clientConfig is the CLI config (admin SVID files) tp.cli uses.
	clientConfig string
	cancel       context.CancelFunc
	done         chan error
	dataDir      string
	once         sync.Once
}

func startTest(t *testing.T, dataDir string, mutate func(*upConfig)) *testPlatform {
	t.Helper()
	needPlatform(t)
	buildFunctions(t)
	cfg := defaultUpConfig(os.Getenv)
	cfg.DataDir = dataDir
	cfg.Gateway.Listen = "127.0.0.1:0"
	cfg.Gateway.GRPCListen = "127.0.0.1:0"
	cfg.Gateway.HealthListen = "127.0.0.1:0"
	cfg.Gateway.WaitBudget = 200 * time.Millisecond
	if mutate != nil {
		mutate(&cfg)
	}
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	ctx, cancel := context.WithCancel(context.Background())
	p, err := startPlatform(ctx, cfg, log)
	if err != nil {
		cancel()
		t.Fatalf("start platform: %v", err)
	}
	tp := &testPlatform{t: t, p: p, url: "https://" + p.httpAddr, hc: p.adminClient, cancel: cancel, done: make(chan error, 1), dataDir: dataDir}
	go func() { tp.done <- p.run(ctx) }()
	tp.c, err = client.New(tp.url, tp.hc)
	if err != nil {
		t.Fatal(err)
	}
	// The CLI's config with the local administrator's SVID files, as
	// `zfaas up` writes them.
	cdir := t.TempDir()
	cc := clientConfig{Gateway: tp.url, GatewayID: p.gatewayID,
		Cert: filepath.Join(cdir, "svid.pem"), Key: filepath.Join(cdir, "svid-key.pem"), Bundle: filepath.Join(cdir, "bundle.pem")}
	if cfg.Identity.Suite == "gm" {
		cc.withGMFiles(cdir)
	}
	if err := writeAdminSVID(ctx, p, cc); err != nil {
		t.Fatal(err)
	}
	if tp.clientConfig, err = writeClientConfig(filepath.Join(cdir, "config.yaml"), nil, cc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tp.stop)
	return tp
}

// getenv is the environment the CLI sees in these tests:
// ZFAAS_CLIENT_CONFIG names the administrator's client config for this
// platform, nothing else is set.
func (tp *testPlatform) getenv(k string) string {
	if k == "ZFAAS_CLIENT_CONFIG" {
		return tp.clientConfig
	}
	return ""
}

// grpcConn dials the platform's gRPC port over TLS, presenting svids (nil:
// no client certificate).
func (tp *testPlatform) grpcConn(svids x509svid.Source) *grpc.ClientConn {
	tp.t.Helper()
	cfg := mtls.ClientConfig(svids, tp.p.identity, spiffeid.RequireFromString(tp.p.gatewayID))
	conn, err := grpc.NewClient(tp.p.grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		tp.t.Fatal(err)
	}
	tp.t.Cleanup(func() { conn.Close() })
	return conn
}

// mint returns a fresh X.509-SVID for id from the platform's CA.
func (tp *testPlatform) mint(id string) *x509svid.SVID {
	tp.t.Helper()
	s, err := tp.p.identity.MintX509(context.Background(), id)
	if err != nil {
		tp.t.Fatal(err)
	}
	return s
}

// cli runs the zfaas command against this platform and returns what it
// printed on standard output and error.
// pushPolicyData pushes a revision of the shipped policy repo whose
// zfaas/config/data.json mutate has changed, as a security team would.
// The shipped tests, which pin the shipped data, are left out of it.
func (tp *testPlatform) pushPolicyData(mutate func(data map[string]any)) {
	t := tp.t
	t.Helper()
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS("../../policies")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "zfaas", "config", "config_test.rego")); err != nil {
		t.Fatal(err)
	}
	dataPath := filepath.Join(dir, "zfaas", "config", "data.json")
	raw, err := os.ReadFile(dataPath)
	if err != nil {
		t.Fatal(err)
	}
	var data map[string]any
	if err := json.Unmarshal(raw, &data); err != nil {
		t.Fatal(err)
	}
	mutate(data)
	if raw, err = json.Marshal(data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dataPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := tp.cli("policy", "push", dir); err != nil {
		t.Fatalf("policy push: %v\n%s", err, out)
	}
}

func (tp *testPlatform) cli(args ...string) (string, error) {
	var out bytes.Buffer
	err := run(context.Background(), args, tp.getenv, &out, &out)
	return out.String(), err
}

// exportTrailUntil exports the audit trail to file until ok holds for its
// text (records arrive in batches), for at most 10 s. It returns the last
// export and whether ok held.
func (tp *testPlatform) exportTrailUntil(t *testing.T, file string, ok func(trail string) bool) (string, bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if out, err := tp.cli("audit", "export", "--out", file); err != nil {
			t.Fatalf("audit export: %v\n%s", err, out)
		}
		raw, _ := os.ReadFile(file)
		if ok(string(raw)) {
			return string(raw), true
		}
		if time.Now().After(deadline) {
			return string(raw), false
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (tp *testPlatform) stop() {
	tp.once.Do(func() {
		tp.cancel()
		<-tp.done
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := tp.p.close(ctx); err != nil {
			tp.t.Errorf("close platform: %v", err)
		}
	})
}

func (tp *testPlatform) deployDir(name, dir string, cfg api.FunctionConfig) api.Version {
	tp.t.Helper()
	var buf bytes.Buffer
	if err := archive.ZipDir(context.Background(), dir, &buf); err != nil {
		tp.t.Fatal(err)
	}
	v, err := tp.c.Deploy(context.Background(), name, client.DeployRequest{FunctionConfig: cfg}, &buf, name+".zip")
	if err != nil {
		tp.t.Fatalf("deploy %s: %v", name, err)
	}
	return v
}

func (tp *testPlatform) deployFixture(name string, mutate func(*api.FunctionConfig)) api.Version {
	cfg := api.FunctionConfig{Runtime: api.RuntimeGo, Handler: "bootstrap", TimeoutSeconds: 10}
	if mutate != nil {
		mutate(&cfg)
	}
	return tp.deployDir(name, built.fixture, cfg)
}

// fixtureResult mirrors the fixture's reply.
type fixtureResult struct {
	Version  string   `json:"version"`
	Instance string   `json:"instance"`
	PID      int      `json:"pid"`
	UID      int      `json:"uid"`
	Exists   bool     `json:"exists"`
	Data     string   `json:"data"`
	PIDs     []string `json:"pids"`
	Err      string   `json:"err"`
}

func (tp *testPlatform) invokeFixture(target string, ev map[string]any) (fixtureResult, client.InvokeMeta) {
	tp.t.Helper()
	raw, _ := json.Marshal(ev)
	out, meta, err := tp.c.Invoke(context.Background(), target, raw)
	if err != nil {
		tp.t.Fatalf("invoke %s %v: %v", target, ev, err)
	}
	var r fixtureResult
	if err := json.Unmarshal(out, &r); err != nil {
		tp.t.Fatalf("invoke %s: bad reply %q: %v", target, out, err)
	}
	return r, meta
}

// rawInvoke posts to the invoke endpoint and returns status, headers and body.
func (tp *testPlatform) rawInvoke(target string, body []byte) (int, http.Header, []byte) {
	tp.t.Helper()
	resp, err := tp.hc.Post(tp.url+"/v1/functions/"+target+"/invoke", "application/json", bytes.NewReader(body))
	if err != nil {
		tp.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func errorCode(t *testing.T, body []byte) string {
	t.Helper()
	var eb api.ErrorBody
	if err := json.Unmarshal(body, &eb); err != nil || eb.Error.Code == "" {
		t.Fatalf("body %q is not the JSON error envelope", body)
	}
	return eb.Error.Code
}

func TestExamplesEndToEnd(t *testing.T) {
	tp := startTest(t, t.TempDir(), nil)
	tp.deployDir("hello", built.hello, api.FunctionConfig{Runtime: api.RuntimeGo})
	tp.deployDir("http-echo", built.echo, api.FunctionConfig{Runtime: api.RuntimeGo, Mode: api.ModeHTTP})
	tp.deployDir("python-hello", built.python, api.FunctionConfig{Runtime: api.RuntimePython3, Handler: "handler.handle"})
	tp.deployDir("node-hello", built.node, api.FunctionConfig{Runtime: api.RuntimeNodejs, Handler: "index.handler"})

	tests := []struct {
		fn   string
		want string
	}{
		{"hello", `"Hello, x!"`},
		{"python-hello", `Hello, x from Python!`},
		{"node-hello", `x`},
	}
	for _, tt := range tests {
		t.Run(tt.fn, func(t *testing.T) {
			for i := range 2 {
				out, meta, err := tp.c.Invoke(context.Background(), tt.fn, []byte(`{"name":"x"}`))
				if err != nil {
					t.Fatalf("invoke: %v", err)
				}
				if !strings.Contains(string(out), tt.want) {
					t.Fatalf("got %s, want it to contain %s", out, tt.want)
				}
				if meta.InvocationID == "" || meta.BilledDuration == "" {
					t.Fatalf("missing invocation headers: %+v", meta)
				}
				if got, want := meta.ColdStart, i == 0; got != want {
					t.Fatalf("call %d: cold start %v, want %v", i, got, want)
				}
			}
		})
	}
	t.Run("caller", func(t *testing.T) {
		tp.deployDir("caller", built.caller, api.FunctionConfig{Runtime: api.RuntimeGo})
		out, _, err := tp.c.Invoke(context.Background(), "caller", []byte(`{"target":"hello","payload":{"name":"peer"}}`))
		if err != nil {
			t.Fatal(err)
		}
		var got struct {
			Caller string          `json:"caller"`
			Status int             `json:"status"`
			Answer json.RawMessage `json:"answer"`
		}
		if err := json.Unmarshal(out, &got); err != nil || got.Status != 200 || got.Caller != "spiffe://zfaas.local/ns/default/fn/caller" || !strings.Contains(string(got.Answer), "Hello, peer!") {
			t.Fatalf("caller example: got %s (%v)", out, err)
		}
	})
	t.Run("http-echo", func(t *testing.T) {
		resp, err := tp.hc.Post(tp.url+"/function/http-echo/some/path?q=1", "text/plain", strings.NewReader("ping"))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("got %d %s, want 200", resp.StatusCode, b)
		}
		for _, want := range []string{"/some/path", "ping", "POST"} {
			if !strings.Contains(string(b), want) {
				t.Errorf("echo %s lacks %q", b, want)
			}
		}
		if resp.Header.Get(api.HeaderInvocationID) == "" {
			t.Error("no invocation id header")
		}
	})
	t.Run("grpc", func(t *testing.T) {
		c := zfaasv1.NewFunctionsClient(tp.grpcConn(tp.mint(tp.p.adminID)))
		resp, err := c.Invoke(context.Background(), &zfaasv1.InvokeRequest{Function: "hello", Payload: []byte(`{"name":"grpc"}`)})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(resp.Payload), "Hello, grpc!") || resp.InvocationId == "" || resp.Version != 1 {
			t.Fatalf("got %+v", resp)
		}
		_, err = c.Invoke(context.Background(), &zfaasv1.InvokeRequest{Function: "nope"})
		if status.Code(err) != codes.NotFound {
			t.Fatalf("unknown function: got %v, want NotFound", err)
		}
		// Without a client SVID or a bearer token: Unauthenticated.
		anon := zfaasv1.NewFunctionsClient(tp.grpcConn(nil))
		if _, err := anon.Invoke(context.Background(), &zfaasv1.InvokeRequest{Function: "hello"}); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("gRPC without credentials: got %v, want Unauthenticated", err)
		}
	})
	t.Run("metrics", func(t *testing.T) {
		resp, err := http.Get("http://" + tp.p.healthAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, want := range []string{`zfaas_invocations_total{function="hello",outcome="ok",version="1"}`, `zfaas_cold_starts_total{function="hello"}`, "zfaas_invocation_duration_seconds_bucket", `zfaas_instances{function="hello"} 1`} {
			if !strings.Contains(string(b), want) {
				t.Errorf("metrics lack %s", want)
			}
		}
	})
}

func TestRestartPersistence(t *testing.T) {
	dir := t.TempDir()
	tp := startTest(t, dir, nil)
	v := tp.deployFixture("persist", nil)
	if _, err := tp.c.SetAlias(context.Background(), "persist", "live", v.Version, 0, 0); err != nil {
		t.Fatal(err)
	}
	tp.stop()

	tp2 := startTest(t, dir, nil)
	f, err := tp2.c.Get(context.Background(), "persist")
	if err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if f.LatestVersion != 1 || f.Aliases["live"].Version != 1 {
		t.Fatalf("after restart got %+v", f.Function)
	}
	if r, _ := tp2.invokeFixture("persist:live", map[string]any{"action": "whoami"}); r.UID != 65534 {
		t.Fatalf("got uid %d, want 65534", r.UID)
	}
}

func TestVersionsAndWeightedAlias(t *testing.T) {
	tp := startTest(t, t.TempDir(), nil)
	for _, ver := range []string{"one", "two"} {
		tp.deployFixture("canary", func(c *api.FunctionConfig) { c.Env = map[string]string{"FIXTURE_VERSION": ver} })
	}
	vers, err := tp.c.Versions(context.Background(), "canary")
	if err != nil || len(vers) != 2 {
		t.Fatalf("versions: %v %v", vers, err)
	}
	if vers[0].PackageDigest != vers[1].PackageDigest {
		t.Fatal("same bytes deployed twice got different digests")
	}
	for q, want := range map[string]string{"1": "one", "2": "two", "$LATEST": "two", "": "two"} {
		target := "canary"
		if q != "" {
			target += ":" + q
		}
		if r, _ := tp.invokeFixture(target, nil); r.Version != want {
			t.Errorf("%s ran %q, want %q", target, r.Version, want)
		}
	}
	if _, err := tp.c.SetAlias(context.Background(), "canary", "prod", 1, 2, 0.3); err != nil {
		t.Fatal(err)
	}
	const n = 300
	two := 0
	for range n {
		r, meta := tp.invokeFixture("canary:prod", nil)
		if r.Version == "two" {
			two++
			if meta.Version != "2" {
				t.Fatalf("ran version two but header says %q", meta.Version)
			}
		}
	}
	// Binomial(300, 0.3): sd ≈ 0.026; ±0.1 is nearly 4 sd.
	if share := float64(two) / n; share < 0.2 || share > 0.4 {
		t.Fatalf("version 2 got %.2f of calls, want 0.3±0.1", share)
	}
	// An alias to a missing version is refused and changes nothing.
	if _, err := tp.c.SetAlias(context.Background(), "canary", "prod", 9, 0, 0); !isAPIError(err, 404, "version_not_found") {
		t.Fatalf("alias to version 9: got %v", err)
	}
	if err := tp.c.DeleteAlias(context.Background(), "canary", "prod"); err != nil {
		t.Fatal(err)
	}
	if code, _, body := tp.rawInvoke("canary:prod", nil); code != 404 || errorCode(t, body) != "alias_not_found" {
		t.Fatalf("deleted alias: got %d %s", code, body)
	}
}

func isAPIError(err error, status int, code string) bool {
	var ae *client.APIError
	return errors.As(err, &ae) && ae.Status == status && ae.Code == code
}

func TestConcurrencyLimit(t *testing.T) {
	tp := startTest(t, t.TempDir(), nil)
	tp.deployFixture("busy", func(c *api.FunctionConfig) { c.MaxConcurrency = 1 })
	tp.invokeFixture("busy", nil) // warm
	started := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		close(started)
		tp.invokeFixture("busy", map[string]any{"action": "sleep", "millis": 2000})
	}()
	<-started
	time.Sleep(300 * time.Millisecond)
	code, hdr, body := tp.rawInvoke("busy", []byte(`{}`))
	if code != http.StatusTooManyRequests || errorCode(t, body) != "too_many_requests" {
		t.Fatalf("got %d %s, want 429 too_many_requests", code, body)
	}
	if hdr.Get(api.HeaderInvocationID) == "" {
		t.Error("429 without an invocation id")
	}
	<-done
	if r, _ := tp.invokeFixture("busy", nil); r.Instance == "" {
		t.Fatal("no instance after the busy one freed")
	}
}

func TestTimeoutKillsInstance(t *testing.T) {
	tp := startTest(t, t.TempDir(), nil)
	tp.deployFixture("slow", func(c *api.FunctionConfig) { c.TimeoutSeconds = 1 })
	first, _ := tp.invokeFixture("slow", nil)
	t0 := time.Now()
	code, _, body := tp.rawInvoke("slow", []byte(`{"action":"sleep","millis":5000}`))
	if code != http.StatusGatewayTimeout || errorCode(t, body) != "function_timeout" {
		t.Fatalf("got %d %s, want 504 function_timeout", code, body)
	}
	if d := time.Since(t0); d > 4*time.Second {
		t.Fatalf("timeout took %s", d)
	}
	// The instance was killed: its process is gone and the next call is a
	// cold start on a new instance.
	if err := waitGone(first.PID, first.Instance); err != nil {
		t.Fatal(err)
	}
	second, meta := tp.invokeFixture("slow", nil)
	if !meta.ColdStart || second.Instance == first.Instance {
		t.Fatalf("after timeout: cold=%v instance %s (was %s), want a new instance", meta.ColdStart, second.Instance, first.Instance)
	}
}

// waitGone waits until no host process has ZFAAS_INSTANCE_ID=inst.
func waitGone(_ int, inst string) error {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if !instanceProcessExists(inst) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("instance %s still has processes", inst)
}

func instanceProcessExists(inst string) bool {
	procs, _ := filepath.Glob("/proc/[0-9]*/environ")
	needle := []byte("ZFAAS_INSTANCE_ID=" + inst + "\x00")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, needle) {
			return true
		}
	}
	return false
}

func TestCrashReplacesInstance(t *testing.T) {
	tp := startTest(t, t.TempDir(), nil)
	tp.deployFixture("crashy", nil)
	first, _ := tp.invokeFixture("crashy", nil)
	code, hdr, body := tp.rawInvoke("crashy", []byte(`{"action":"crash"}`))
	var fe api.FunctionError
	if code != http.StatusBadGateway || json.Unmarshal(body, &fe) != nil || fe.ErrorType != "Runtime.ExitError" {
		t.Fatalf("got %d %s, want 502 Runtime.ExitError", code, body)
	}
	if hdr.Get(api.HeaderFunctionError) == "" {
		t.Error("502 without the function error header")
	}
	second, meta := tp.invokeFixture("crashy", nil)
	if !meta.ColdStart || second.Instance == first.Instance {
		t.Fatalf("after crash: cold=%v instance %s (was %s)", meta.ColdStart, second.Instance, first.Instance)
	}
	// A handled function error is a 502 in Lambda's shape, and the instance
	// stays warm.
	code, _, body = tp.rawInvoke("crashy", []byte(`{"action":"fail"}`))
	if code != http.StatusBadGateway || json.Unmarshal(body, &fe) != nil || fe.ErrorMessage != "failed on purpose" {
		t.Fatalf("function error: got %d %s", code, body)
	}
	third, meta := tp.invokeFixture("crashy", nil)
	if meta.ColdStart || third.Instance != second.Instance {
		t.Fatal("a function error must not replace the instance")
	}
}

func TestIsolationBetweenInstances(t *testing.T) {
	tp := startTest(t, t.TempDir(), nil)
	tp.deployFixture("alice", nil)
	tp.deployFixture("bob", nil)
	a, _ := tp.invokeFixture("alice", map[string]any{"action": "write", "path": "/tmp/secret", "data": "alice's"})
	if a.Err != "" {
		t.Fatalf("alice cannot write her /tmp: %s", a.Err)
	}
	if r, _ := tp.invokeFixture("alice", map[string]any{"action": "read", "path": "/tmp/secret"}); r.Data != "alice's" {
		t.Fatalf("alice lost her file: %+v", r)
	}
	if r, _ := tp.invokeFixture("bob", map[string]any{"action": "read", "path": "/tmp/secret"}); r.Exists {
		t.Fatal("bob reads alice's /tmp file")
	}
	ps, _ := tp.invokeFixture("bob", map[string]any{"action": "ps"})
	for _, pid := range ps.PIDs {
		if pid == fmt.Sprint(a.PID) && a.PID != 1 && ps.PID != a.PID {
			t.Fatalf("bob sees alice's pid %d", a.PID)
		}
	}
	if len(ps.PIDs) > 3 {
		t.Fatalf("bob sees %d processes (%v), want only his own", len(ps.PIDs), ps.PIDs)
	}
	for _, path := range []string{tp.dataDir, filepath.Join(tp.dataDir, "worker", "packages"), "/proc/1/root/" + tp.dataDir} {
		if r, _ := tp.invokeFixture("bob", map[string]any{"action": "stat", "path": path}); r.Exists {
			t.Errorf("bob can see %s", path)
		}
	}
	if r, _ := tp.invokeFixture("bob", map[string]any{"action": "write", "path": "/var/task/x", "data": "x"}); r.Err == "" {
		t.Error("bob can write to his read-only package")
	}
	if r, _ := tp.invokeFixture("bob", nil); r.UID != 65534 {
		t.Errorf("bob runs as uid %d, want 65534", r.UID)
	}
}

func TestFunctionLogs(t *testing.T) {
	tp := startTest(t, t.TempDir(), nil)
	tp.deployFixture("chatty", nil)
	_, meta := tp.invokeFixture("chatty", map[string]any{"action": "log", "data": "marker-42"})
	deadline := time.Now().Add(5 * time.Second)
	for {
		var found *api.LogRecord
		err := tp.c.Logs(context.Background(), "chatty", "1h", false, func(r api.LogRecord) {
			if strings.Contains(r.Line, "marker-42") {
				found = &r
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		if found != nil {
			if found.InvocationID != meta.InvocationID {
				t.Fatalf("log line attributed to %q, want %q", found.InvocationID, meta.InvocationID)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("log line never arrived")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// zipOf builds a zip with raw entries (name → content; a "->" content
// prefix makes a symlink).
func zipOf(t *testing.T, entries map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for name, content := range entries {
		h := &zip.FileHeader{Name: name, Method: zip.Deflate}
		if target, ok := strings.CutPrefix(content, "->"); ok {
			h.SetMode(os.ModeSymlink | 0o777)
			content = target
		} else {
			h.SetMode(0o755)
		}
		w, err := zw.CreateHeader(h)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(content))
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// tarGzOf builds a tar.gz from raw headers and contents.
func tarGzOf(t *testing.T, entries []tar.Header, contents []string) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for i, h := range entries {
		h.Size = int64(len(contents[i]))
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(contents[i]))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	gz.Close()
	return buf.Bytes()
}

func TestDeployRefusals(t *testing.T) {
	tp := startTest(t, t.TempDir(), func(c *upConfig) {
		c.Packages.MaxCompressedBytes = 8 << 20 // the fixture is about 6.5 MiB
		c.Packages.MaxUnpackedBytes = 32 << 20
		c.Gateway.MaxPayloadBytes = 1 << 10
		c.Packages.MaxFiles = 50
	})
	many := map[string]string{"bootstrap": "x"}
	for i := range 60 {
		many[fmt.Sprintf("f%d", i)] = "x"
	}
	bootstrapHdr := tar.Header{Name: "bootstrap", Mode: 0o755, Typeflag: tar.TypeReg}
	bomb := func() []byte {
		var buf bytes.Buffer
		zw := zip.NewWriter(&buf)
		w, _ := zw.Create("bootstrap")
		w.Write(bytes.Repeat([]byte{0}, 64<<20))
		zw.Close()
		return buf.Bytes()
	}()
	big := make([]byte, 9<<20)
	for i := range big {
		big[i] = byte(i * 7919 >> 3)
	}
	goCfg := api.FunctionConfig{Runtime: api.RuntimeGo}
	tests := []struct {
		name   string
		pkg    []byte
		cfg    api.FunctionConfig
		status int
		code   string
	}{
		{"traversal", zipOf(t, map[string]string{"bootstrap": "x", "../evil": "x"}), goCfg, 422, "package_unsafe_path"},
		{"absolute", zipOf(t, map[string]string{"bootstrap": "x", "/etc/evil": "x"}), goCfg, 422, "package_unsafe_path"},
		{"symlink-escape", zipOf(t, map[string]string{"bootstrap": "x", "link": "->../../etc/passwd"}), goCfg, 422, "package_unsafe_symlink"},
		{"bomb", bomb, goCfg, 422, ""},
		{"too-large", big, goCfg, 413, "package_too_large"},
		{"not-an-archive", []byte("hello, not a zip"), goCfg, 400, "package_invalid"},
		{"too-many-files", zipOf(t, many), goCfg, 422, "package_too_many_files"},
		{"tar-traversal", tarGzOf(t, []tar.Header{bootstrapHdr, {Name: "a/../../evil", Mode: 0o644, Typeflag: tar.TypeReg}}, []string{"x", "x"}), goCfg, 422, "package_unsafe_path"},
		{"tar-symlink-escape", tarGzOf(t, []tar.Header{bootstrapHdr, {Name: "etc", Linkname: "/etc", Typeflag: tar.TypeSymlink}}, []string{"x", ""}), goCfg, 422, "package_unsafe_symlink"},
		{"tar-device", tarGzOf(t, []tar.Header{bootstrapHdr, {Name: "null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3}}, []string{"x", ""}), goCfg, 422, "package_unsupported_entry"},
		{"missing-handler", zipOf(t, map[string]string{"main": "x"}), goCfg, 400, "bad_request"},
		{"bad-runtime", zipOf(t, map[string]string{"bootstrap": "x"}), api.FunctionConfig{Runtime: "cobol"}, 400, "bad_request"},
		{"bad-memory", zipOf(t, map[string]string{"bootstrap": "x"}), api.FunctionConfig{Runtime: api.RuntimeGo, MemoryMB: 1}, 400, "bad_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tp.c.Deploy(context.Background(), "refused-"+tt.name, client.DeployRequest{FunctionConfig: tt.cfg}, bytes.NewReader(tt.pkg), "pkg.zip")
			var ae *client.APIError
			if !errors.As(err, &ae) {
				t.Fatalf("got %v, want an API error", err)
			}
			if ae.Status != tt.status || (tt.code != "" && ae.Code != tt.code) || ae.Message == "" {
				t.Fatalf("got %d %s %q, want %d %s", ae.Status, ae.Code, ae.Message, tt.status, tt.code)
			}
			if _, err := tp.c.Get(context.Background(), "refused-"+tt.name); !isAPIError(err, 404, "function_not_found") {
				t.Fatalf("after a refused deploy the function exists: %v", err)
			}
		})
	}
	// Nothing was stored: the package store is empty.
	names, err := tp.p.store.PackageDigests(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 0 {
		t.Fatalf("refused deploys stored packages: %v", names)
	}
	t.Run("request-errors", func(t *testing.T) {
		tp.deployFixture("ok", nil)
		cases := []struct {
			target string
			body   []byte
			status int
			code   string
		}{
			{"nope", nil, 404, "function_not_found"},
			{"ok:7", nil, 404, "version_not_found"},
			{"ok:nosuch", nil, 404, "alias_not_found"},
			{"ok", bytes.Repeat([]byte("x"), 2<<10), 413, "payload_too_large"},
		}
		for _, c := range cases {
			code, _, body := tp.rawInvoke(c.target, c.body)
			if code != c.status || errorCode(t, body) != c.code {
				t.Errorf("%s: got %d %s, want %d %s", c.target, code, body, c.status, c.code)
			}
		}
		resp, err := tp.hc.Post(tp.url+"/v1/functions/ok/versions", "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode/100 != 4 {
			t.Errorf("deploy without multipart: got %d %s", resp.StatusCode, b)
		}
		errorCode(t, b)
		req, _ := http.NewRequest(http.MethodPatch, tp.url+"/v1/functions/ok", nil)
		resp, err = tp.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 405 || errorCode(t, b) != "method_not_allowed" {
			t.Errorf("PATCH: got %d %s", resp.StatusCode, b)
		}
	})
}

func TestDeleteFunction(t *testing.T) {
	tp := startTest(t, t.TempDir(), nil)
	tp.deployFixture("gone", nil)
	first, _ := tp.invokeFixture("gone", nil)
	if err := tp.c.Delete(context.Background(), "gone"); err != nil {
		t.Fatal(err)
	}
	if code, _, body := tp.rawInvoke("gone", nil); code != 404 || errorCode(t, body) != "function_not_found" {
		t.Fatalf("got %d %s", code, body)
	}
	if err := waitGone(first.PID, first.Instance); err != nil {
		t.Fatalf("deleted function's idle instance: %v", err)
	}
	// The name can be reused; numbering starts again.
	if v := tp.deployFixture("gone", nil); v.Version != 1 {
		t.Fatalf("redeploy got version %d, want 1", v.Version)
	}
}

// TestProvidedRuntime: a "provided" package runs its bootstrap whatever the
// handler says, and the handler reaches the function in $_HANDLER, as on
// Lambda.
func TestProvidedRuntime(t *testing.T) {
	tp := startTest(t, t.TempDir(), nil)
	tp.deployDir("custom", built.fixture, api.FunctionConfig{Runtime: api.RuntimeProvided, Handler: "function.handler"})
	r, _ := tp.invokeFixture("custom", map[string]any{"action": "env", "path": "_HANDLER"})
	if r.Data != "function.handler" {
		t.Fatalf("got _HANDLER=%q, want function.handler", r.Data)
	}
	for _, k := range []string{"AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_LOG_GROUP_NAME", "LAMBDA_TASK_ROOT"} {
		if r, _ := tp.invokeFixture("custom", map[string]any{"action": "env", "path": k}); r.Data == "" {
			t.Errorf("%s is not set", k)
		}
	}
}

// TestCLI drives the zfaas command itself (the code behind the binary)
// against a running platform.
func TestCLI(t *testing.T) {
	tp := startTest(t, t.TempDir(), nil)
	cli := tp.cli
	if out, err := cli("fn", "deploy", "hello", "--dir", built.hello, "--runtime", "go", "--memory", "256", "--timeout", "5s", "--env", "GREETING=Hi"); err != nil {
		t.Fatalf("deploy: %v\n%s", err, out)
	}
	if out, err := cli("fn", "invoke", "hello", "--data", `{"name":"cli"}`); err != nil || !strings.Contains(out, `"Hi, cli!"`) {
		t.Fatalf("invoke: %v %s", err, out)
	}
	out, err := cli("fn", "get", "hello", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var info client.FunctionInfo
	if err := json.Unmarshal([]byte(out), &info); err != nil || info.Latest.Config.MemoryMB != 256 || info.Latest.Config.TimeoutSeconds != 5 {
		t.Fatalf("get -o json: %v %s", err, out)
	}
	if out, err := cli("fn", "ls"); err != nil || !strings.Contains(out, "hello") || !strings.Contains(out, "256MB") {
		t.Fatalf("ls: %v %s", err, out)
	}
	if out, err := cli("fn", "alias", "set", "hello", "live", "1"); err != nil || !strings.Contains(out, "version 1") {
		t.Fatalf("alias set: %v %s", err, out)
	}
	if out, err := cli("fn", "invoke", "nope"); err == nil || !strings.Contains(err.Error(), "function_not_found") {
		t.Fatalf("invoke unknown: %v %s", err, out)
	}
	if _, err := cli("fn", "deploy", "x"); !errors.Is(err, errUsage) {
		t.Fatalf("deploy without package: got %v, want a usage error", err)
	}
	if out, err := cli("fn", "rm", "hello"); err != nil {
		t.Fatalf("rm: %v %s", err, out)
	}
	if out, err := cli("version"); err != nil || !strings.HasPrefix(out, "zfaas ") {
		t.Fatalf("version: %v %s", err, out)
	}
}

// TestCallerCancelKeepsInstance: a caller that hangs up does not cost the
// function its instance; the invocation runs to its end and the instance
// serves the next call warm.
func TestCallerCancelKeepsInstance(t *testing.T) {
	tp := startTest(t, t.TempDir(), nil)
	tp.deployFixture("patient", nil)
	first, _ := tp.invokeFixture("patient", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	_, _, err := tp.c.Invoke(ctx, "patient", []byte(`{"action":"sleep","millis":400}`))
	cancel()
	if err == nil {
		t.Fatal("the canceled call succeeded")
	}
	time.Sleep(500 * time.Millisecond)
	second, meta := tp.invokeFixture("patient", nil)
	if meta.ColdStart || second.Instance != first.Instance {
		t.Fatalf("after a caller hung up: cold=%v instance %s (was %s), want the same warm instance", meta.ColdStart, second.Instance, first.Instance)
	}
}

// TestNoPlaintextAPI: the API is served over TLS only. Plain HTTP to the
// API port gets no answer from the API, and the plain health listener
// serves /healthz and /metrics and nothing else; a function instance may
// not even connect to it (egress: only the gateway's API ports).
func TestNoPlaintextAPI(t *testing.T) {
	tp := startTest(t, t.TempDir(), nil)
	tp.deployFixture("sneaky", nil)
	if r, _ := tp.invokeFixture("sneaky", map[string]any{"action": "get", "path": "http://" + tp.p.httpAddr + "/v1/functions"}); r.Data != "400" {
		t.Errorf("function GET over plain HTTP to the API port: got %q (%s), want 400", r.Data, r.Err)
	}
	if r, _ := tp.invokeFixture("sneaky", map[string]any{"action": "get", "path": "http://" + tp.p.healthAddr + "/metrics"}); !strings.Contains(r.Err, "operation not permitted") {
		t.Errorf("function GET of the health listener: got %q %q, want EPERM from the egress enforcement", r.Data, r.Err)
	}
	for _, u := range []string{"http://" + tp.p.httpAddr + "/v1/functions", "http://" + tp.p.healthAddr + "/v1/functions", "http://" + tp.p.healthAddr + "/function/sneaky"} {
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 && resp.StatusCode != 404 {
			t.Errorf("host GET %s: got %d %s, want 400 or 404", u, resp.StatusCode, b)
		}
	}
	resp, err := http.Get("http://" + tp.p.healthAddr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("healthz: got %d", resp.StatusCode)
	}
	// The mutual-TLS API answers /healthz too.
	resp, err = tp.hc.Get(tp.url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("healthz over mTLS: got %d", resp.StatusCode)
	}
}

// TestPolicyEndToEnd: a pushed revision decides at once, a broken one is
// refused while the old one keeps deciding, a deny is a 403 with the
// decision id that the decision log then shows, and rollback restores an
// earlier revision.
func TestPolicyEndToEnd(t *testing.T) {
	tp := startTest(t, t.TempDir(), nil)
	tp.deployFixture("guarded", nil)
	tp.deployFixture("open", nil)
	cli := tp.cli
	tp.invokeFixture("guarded", nil) // the shipped policy lets the admin in

	if out, err := cli("policy", "push", "testdata/guard-policy"); err != nil {
		t.Fatalf("push: %v\n%s", err, out)
	}
	code, _, body := tp.rawInvoke("guarded", nil)
	var eb api.ErrorBody
	if code != http.StatusForbidden || json.Unmarshal(body, &eb) != nil || eb.Error.Code != "forbidden" || eb.Error.DecisionID == "" {
		t.Fatalf("guarded after push: got %d %s, want 403 with a decision id", code, body)
	}
	tp.invokeFixture("open", nil)

	// A revision whose test fails is refused; the last one keeps deciding.
	broken := t.TempDir()
	os.MkdirAll(filepath.Join(broken, "zfaas", "invoke"), 0o755)
	os.WriteFile(filepath.Join(broken, "zfaas", "invoke", "invoke.rego"), []byte("package zfaas.invoke\n\ndecision := {\"allow\": true, \"reasons\": []}\n"), 0o644)
	os.WriteFile(filepath.Join(broken, "zfaas", "invoke", "invoke_test.rego"), []byte("package zfaas.invoke_test\n\nimport data.zfaas.invoke\n\ntest_fails if not invoke.decision.allow\n"), 0o644)
	if out, err := cli("policy", "push", broken); err == nil {
		t.Fatalf("a revision with a failing test was accepted:\n%s", out)
	}
	os.WriteFile(filepath.Join(broken, "zfaas", "invoke", "invoke.rego"), []byte("package zfaas.invoke\n\ndecision := {{{\n"), 0o644)
	if out, err := cli("policy", "push", broken); err == nil {
		t.Fatalf("a revision that does not compile was accepted:\n%s", out)
	}
	if code, _, _ := tp.rawInvoke("guarded", nil); code != http.StatusForbidden {
		t.Fatalf("after refused pushes guarded got %d, want the old revision's 403", code)
	}

	// The deny is in the decision log under its id, with its revision.
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := cli("policy", "decisions", "--deny", "-o", "json")
		if err != nil {
			t.Fatalf("decisions: %v\n%s", err, out)
		}
		if strings.Contains(out, eb.Error.DecisionID) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("decision %s not in the log:\n%s", eb.Error.DecisionID, out)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Push the shipped policy again, then roll back to the guard.
	if out, err := cli("policy", "push", "../../policies"); err != nil {
		t.Fatalf("push shipped policies: %v\n%s", err, out)
	}
	tp.invokeFixture("guarded", nil)
	if out, err := cli("policy", "rollback", "1"); err != nil {
		t.Fatalf("rollback: %v\n%s", err, out)
	}
	if code, _, _ := tp.rawInvoke("guarded", nil); code != http.StatusForbidden {
		t.Fatalf("after rollback to the guard got %d, want 403", code)
	}
	if out, err := cli("policy", "status"); err != nil || !strings.Contains(out, "1") {
		t.Fatalf("status: %v\n%s", err, out)
	}
}

// TestEnvoyExtAuthzOnGateway: an Envoy ext_authz Check against the
// platform's gRPC port gets the policy's answer.
func TestEnvoyExtAuthzOnGateway(t *testing.T) {
	tp := startTest(t, t.TempDir(), nil)
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "envoy", "authz"), 0o755)
	os.WriteFile(filepath.Join(dir, "envoy", "authz", "authz.rego"), []byte(`package envoy.authz

default allow := false

allow if input.attributes.request.http.method == "GET"

allow if input.parsed_path[0] == "public"
`), 0o644)
	if out, err := tp.cli("policy", "push", dir); err != nil {
		t.Fatalf("push: %v\n%s", err, out)
	}
	// Only authenticated peers may ask (here: a mesh sidecar's SVID).
	anon := authv3.NewAuthorizationClient(tp.grpcConn(nil))
	if _, err := anon.Check(context.Background(), &authv3.CheckRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Check without credentials: got %v, want Unauthenticated", err)
	}
	c := authv3.NewAuthorizationClient(tp.grpcConn(tp.mint("spiffe://zfaas.local/ns/default/fn/envoy")))
	check := func(method, path string) codes.Code {
		resp, err := c.Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: method, Path: path, Host: "svc"}},
		}})
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		return codes.Code(resp.GetStatus().GetCode())
	}
	for _, tt := range []struct {
		method, path string
		want         codes.Code
	}{
		{"GET", "/private/x", codes.OK},
		{"POST", "/public/x", codes.OK},
		{"POST", "/private/x", codes.PermissionDenied},
	} {
		if got := check(tt.method, tt.path); got != tt.want {
			t.Errorf("%s %s: got %v, want %v", tt.method, tt.path, got, tt.want)
		}
	}
}

// TestFunctionLogsFollow: a follower sees output of an invocation made
// after it started.
func TestFunctionLogsFollow(t *testing.T) {
	tp := startTest(t, t.TempDir(), nil)
	tp.deployFixture("tail", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	got := make(chan api.LogRecord, 16)
	go func() {
		_ = tp.c.Logs(ctx, "tail", "1m", true, func(r api.LogRecord) { got <- r })
	}()
	time.Sleep(300 * time.Millisecond)
	_, meta := tp.invokeFixture("tail", map[string]any{"action": "log", "data": "followed-7"})
	for {
		select {
		case r := <-got:
			if strings.Contains(r.Line, "followed-7") {
				if r.InvocationID != meta.InvocationID || r.Stream != "stdout" {
					t.Fatalf("got %+v, want stdout of invocation %s", r, meta.InvocationID)
				}
				return
			}
		case <-ctx.Done():
			t.Fatal("the follower never saw the line")
		}
	}
}

// TestPolicyLockoutRecovery: a revision that turns the local administrator
// off locks the CLI out; `zfaas policy reset` with the platform stopped
// brings the shipped policy back.
func TestPolicyLockoutRecovery(t *testing.T) {
	dir := t.TempDir()
	tp := startTest(t, dir, nil)
	cli := tp.cli
	locked := t.TempDir()
	os.MkdirAll(filepath.Join(locked, "zfaas", "deploy"), 0o755)
	os.WriteFile(filepath.Join(locked, "zfaas", "deploy", "deploy.rego"), []byte("package zfaas.deploy\n\ndecision := {\"allow\": false, \"reasons\": [\"locked\"]}\n"), 0o644)
	if out, err := cli("policy", "push", locked); err != nil {
		t.Fatalf("push: %v\n%s", err, out)
	}
	if _, err := cli("policy", "status"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("status under the locking revision: got %v, want 403", err)
	}
	tp.stop()
	if out, err := cli("policy", "reset", "--data-dir", dir); err != nil {
		t.Fatalf("reset: %v\n%s", err, out)
	}
	tp2 := startTest(t, dir, nil)
	if out, err := tp2.cli("policy", "status"); err != nil {
		t.Fatalf("status after reset: %v\n%s", err, out)
	}
}

// buildSPIFFEClient builds testdata/spiffe-client and returns the
// function directory.
func buildSPIFFEClient(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "bootstrap"), "./testdata/spiffe-client")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build spiffe client: %v\n%s", err, out)
	}
	return dir
}

func TestFunctionSPIFFEIdentity(t *testing.T) {
	tp := startTest(t, t.TempDir(), nil)
	clientDir := buildSPIFFEClient(t)
	// A and B run the go-spiffe client; C (the fixture) reports its
	// environment and what it can see.
	tp.deployDir("id-a", clientDir, api.FunctionConfig{Runtime: api.RuntimeGo, Handler: "bootstrap", TimeoutSeconds: 10})
	tp.deployDir("id-b", clientDir, api.FunctionConfig{Runtime: api.RuntimeGo, Handler: "bootstrap", TimeoutSeconds: 10})
	tp.deployFixture("id-c", nil)
	inst := map[string]string{}
	for _, fn := range []string{"id-a", "id-b"} {
		want := "spiffe://zfaas.local/ns/default/fn/" + fn
		out, _, err := tp.c.Invoke(context.Background(), fn, []byte(`{}`))
		if err != nil {
			t.Fatalf("%s: invoke: %v", fn, err)
		}
		var reply string
		if err := json.Unmarshal(out, &reply); err != nil {
			t.Fatalf("%s: fetch svid: %s", fn, out)
		}
		got := strings.Split(reply, "|")
		if len(got) != 4 || got[0] != want || got[1] != want {
			t.Fatalf("%s: got x509|jwt|entries|instance %q, want both IDs %s", fn, reply, want)
		}
		if got[2] != "workload.sock" {
			t.Fatalf("%s: /run/spiffe holds %q, want only workload.sock", fn, got[2])
		}
		inst[fn] = got[3]
	}
	if r, _ := tp.invokeFixture("id-c", map[string]any{"action": "env", "path": "SPIFFE_ENDPOINT_SOCKET"}); r.Data != "unix:///run/spiffe/workload.sock" {
		t.Fatalf("SPIFFE_ENDPOINT_SOCKET=%q", r.Data)
	}
	epDir := filepath.Join(tp.dataDir, "identity", "ep")
	bSock := filepath.Join(epDir, inst["id-b"], "workload.sock")
	fi, err := os.Stat(bSock)
	if err != nil {
		t.Fatalf("B's endpoint on the host: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("B's socket mode %v, want 0600", fi.Mode().Perm())
	}
	// B's endpoint is not reachable from another instance: neither its host
	// path nor any other endpoint is mounted there (A saw only its own
	// socket above).
	if r, _ := tp.invokeFixture("id-c", map[string]any{"action": "stat", "path": bSock}); r.Exists || r.Err != "" {
		t.Fatalf("C sees B's socket at %s (%s)", bSock, r.Err)
	}
	// A process outside B's cgroup (this test) is refused on B's socket.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := spiffeworkloadapi.FetchX509SVID(ctx, spiffeworkloadapi.WithAddr("unix://"+bSock)); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("outsider on B's socket: got %v, want PermissionDenied", err)
	}
	// Stopped instances leave no endpoint behind.
	tp.stop()
	if ents, err := os.ReadDir(epDir); err != nil || len(ents) != 0 {
		t.Fatalf("endpoints after stop: %v, %v", ents, err)
	}
}

// TestFunctionCallsFunctionWithItsSVID: a function invokes another through
// the gateway with its own JWT-SVID; the gateway sees the caller's SPIFFE
// ID, and the shipped policy lets a function of the same tenant in. A
// token for another audience is refused (401); no token is anonymous (403).
func TestFunctionCallsFunctionWithItsSVID(t *testing.T) {
	tp := startTest(t, t.TempDir(), nil)
	tp.deployDir("caller", buildSPIFFEClient(t), api.FunctionConfig{Runtime: api.RuntimeGo})
	tp.deployDir("hello", built.hello, api.FunctionConfig{Runtime: api.RuntimeGo})
	call := func(ev string) (string, string) {
		t.Helper()
		out, _, err := tp.c.Invoke(context.Background(), "caller", []byte(ev))
		if err != nil {
			t.Fatalf("invoke caller %s: %v", ev, err)
		}
		var s string
		if err := json.Unmarshal(out, &s); err != nil {
			t.Fatalf("caller replied %s", out)
		}
		status, body, _ := strings.Cut(s, "|")
		return status, body
	}
	if status, body := call(`{"call":"hello"}`); status != "200" || !strings.Contains(body, "Hello, peer!") {
		t.Fatalf("function-to-function call: got %s %s", status, body)
	}
	if status, body := call(`{"call":"hello","audience":"spiffe://zfaas.local/gateway/elsewhere"}`); status != "401" || !strings.Contains(body, "unauthenticated") {
		t.Fatalf("token for another audience: got %s %s, want 401", status, body)
	}
	if status, body := call(`{"call":"hello","token":"none"}`); status != "401" {
		t.Fatalf("no token from a function: got %s %s, want 401", status, body)
	}
	// The decision log shows the caller's own SPIFFE ID.
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := tp.cli("policy", "decisions", "--since", "1m")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, "spiffe://zfaas.local/ns/default/fn/caller") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no decision with the caller function's ID:\n%s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestTrustBundle: the CLI prints the trust bundle in both forms, and the
// SPIFFE bundle parses with go-spiffe and holds X.509 and JWT authorities.
func TestTrustBundle(t *testing.T) {
	tp := startTest(t, t.TempDir(), nil)
	var jwks, pemOut, errOut bytes.Buffer
	if err := run(context.Background(), []string{"identity", "bundle", "--format", "jwks"}, tp.getenv, &jwks, &errOut); err != nil {
		t.Fatalf("bundle jwks: %v %s", err, errOut.String())
	}
	b, err := spiffebundle.Parse(spiffeid.RequireTrustDomainFromString("zfaas.local"), jwks.Bytes())
	if err != nil {
		t.Fatalf("parse SPIFFE bundle: %v\n%s", err, jwks.String())
	}
	if len(b.X509Authorities()) == 0 || len(b.JWTAuthorities()) == 0 {
		t.Fatalf("bundle has %d X.509 and %d JWT authorities", len(b.X509Authorities()), len(b.JWTAuthorities()))
	}
	if err := run(context.Background(), []string{"identity", "bundle"}, tp.getenv, &pemOut, &errOut); err != nil {
		t.Fatalf("bundle pem: %v", err)
	}
	xb, err := x509bundle.Parse(spiffeid.RequireTrustDomainFromString("zfaas.local"), pemOut.Bytes())
	if err != nil || len(xb.X509Authorities()) != len(b.X509Authorities()) {
		t.Fatalf("PEM bundle: %v", err)
	}
}

// TestGatewayMTLS: the mutual-TLS listener authenticates callers by their
// X.509-SVID, refuses a client without credentials (401) and a certificate
// of another trust domain (handshake failure), and presents the gateway's
// own SVID.
func TestGatewayMTLS(t *testing.T) {
	tp := startTest(t, t.TempDir(), nil)
	ctx := context.Background()
	gw := spiffeid.RequireFromString(tp.p.gatewayID)
	get := func(cfg *tls.Config, path string) (int, []byte, error) {
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 10 * time.Second}
		resp, err := hc.Get(tp.url + path)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b, nil
	}
	admin := tp.mint(tp.p.adminID)
	if code, body, err := get(mtls.ClientConfig(admin, tp.p.identity, gw), "/v1/functions"); err != nil || code != 200 {
		t.Fatalf("admin over mTLS: %d %s %v", code, body, err)
	}
	// No client certificate and no bearer token: 401.
	code, body, err := get(mtls.ClientConfig(nil, tp.p.identity, gw), "/v1/functions")
	if err != nil || code != 401 || errorCode(t, body) != "unauthenticated" {
		t.Fatalf("no credentials over mTLS: %d %s %v, want 401", code, body, err)
	}
	// A function's SVID is that function, which may not list functions.
	fn, err := tp.p.identity.MintX509(ctx, "spiffe://zfaas.local/ns/default/fn/somefn")
	if err != nil {
		t.Fatal(err)
	}
	if code, body, err := get(mtls.ClientConfig(fn, tp.p.identity, gw), "/v1/functions"); err != nil || code != 403 {
		t.Fatalf("function SVID listing functions: %d %s %v, want 403", code, body, err)
	}
	// A certificate from another trust domain fails the handshake.
	otherTD := spiffeid.RequireTrustDomainFromString("other.test")
	other, err := ca.New(ctx, ca.Config{TrustDomain: otherTD, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	osv, err := other.MintX509SVID(ctx, ca.X509Params{ID: spiffeid.RequireFromString("spiffe://other.test/user/admin"), PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	foreign := &x509svid.SVID{ID: osv.ID, Certificates: osv.Certificates, PrivateKey: key}
	if _, _, err := get(mtls.ClientConfig(foreign, tp.p.identity, gw), "/v1/functions"); err == nil {
		t.Fatal("a certificate from another trust domain was accepted")
	}
	// A client that checks host names (curl, browsers) verifies the
	// gateway's SVID against the trust bundle too.
	pool := x509.NewCertPool()
	b, _ := tp.p.identity.GetX509BundleForTrustDomain(tp.p.td)
	for _, c := range b.X509Authorities() {
		pool.AddCert(c)
	}
	plain := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		c := &tls.Certificate{PrivateKey: admin.PrivateKey}
		for _, x := range admin.Certificates {
			c.Certificate = append(c.Certificate, x.Raw)
		}
		return c, nil
	}}
	if code, body, err := get(plain, "/v1/functions"); err != nil || code != 200 {
		t.Fatalf("host-name-verifying client: %d %s %v", code, body, err)
	}
	// The client checks the gateway's SPIFFE ID.
	if _, _, err := get(mtls.ClientConfig(admin, tp.p.identity, spiffeid.RequireFromString("spiffe://zfaas.local/gateway/elsewhere")), "/healthz"); err == nil {
		t.Fatal("the client accepted a gateway with an unexpected SPIFFE ID")
	}
}

// TestCLIMutualTLS: with the client config `zfaas up` writes (the local
// administrator's SVID files), the CLI talks to the gateway over mutual TLS
// and shows its identity; without a trust bundle it refuses to connect.
func TestCLIMutualTLS(t *testing.T) {
	tp := startTest(t, t.TempDir(), nil)
	if st, err := os.Stat(filepath.Join(filepath.Dir(tp.clientConfig), "svid-key.pem")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v, want 0600", st, err)
	}
	if out, err := tp.cli("fn", "ls"); err != nil {
		t.Fatalf("fn ls over mTLS: %v\n%s", err, out)
	}
	if out, err := tp.cli("identity", "show"); err != nil || !strings.Contains(out, tp.p.adminID) {
		t.Fatalf("identity show: %v\n%s", err, out)
	}
	var out bytes.Buffer
	err := run(context.Background(), []string{"fn", "ls"}, func(k string) string {
		if k == "ZFAAS_GATEWAY" {
			return tp.url
		}
		return ""
	}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "trust bundle") {
		t.Fatalf("fn ls without a client config: %v\n%s", err, out.String())
	}
}

// TestTrustDomainConfig: identity.trust_domain names every SVID, and the
// shipped policy follows it (its admin is the new domain's admin).
func TestTrustDomainConfig(t *testing.T) {
	tp := startTest(t, t.TempDir(), func(c *upConfig) { c.Identity.TrustDomain = "acme.test" })
	if tp.p.adminID != "spiffe://acme.test/user/admin" || tp.p.gatewayID != "spiffe://acme.test/gateway/local" {
		t.Fatalf("ids: %s %s", tp.p.adminID, tp.p.gatewayID)
	}
	tp.deployFixture("fx", nil)
	if out, err := tp.cli("fn", "ls"); err != nil || !strings.Contains(out, "fx") {
		t.Fatalf("admin of acme.test: %v\n%s", err, out)
	}
	// An SVID of the shipped domain is foreign here.
	other, err := ca.New(context.Background(), ca.Config{TrustDomain: spiffeid.RequireTrustDomainFromString("zfaas.local"), Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	osv, err := other.MintX509SVID(context.Background(), ca.X509Params{ID: spiffeid.RequireFromString("spiffe://zfaas.local/user/admin"), PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: mtls.ClientConfig(&x509svid.SVID{ID: osv.ID, Certificates: osv.Certificates, PrivateKey: key}, tp.p.identity, spiffeid.RequireFromString(tp.p.gatewayID))}}
	if resp, err := hc.Get(tp.url + "/v1/functions"); err == nil {
		resp.Body.Close()
		t.Fatalf("an SVID of zfaas.local was accepted by acme.test: %d", resp.StatusCode)
	}
}

// TestIssueUser: an admin issues an SVID for a user; the key is made by the
// CLI; the user then authenticates over mTLS as that user (and, being in no
// tenant, may not list functions); a non-admin may not issue identities.
func TestIssueUser(t *testing.T) {
	tp := startTest(t, t.TempDir(), nil)
	dir := filepath.Join(t.TempDir(), "alice")
	if out, err := tp.cli("identity", "issue-user", "alice", "--out", dir); err != nil {
		t.Fatalf("issue-user: %v\n%s", err, out)
	}
	if st, err := os.Stat(filepath.Join(dir, "svid-key.pem")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file %v %v, want 0600", st, err)
	}
	alice, err := x509svid.Load(filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid-key.pem"))
	if err != nil || alice.ID.String() != "spiffe://zfaas.local/user/alice" {
		t.Fatalf("alice's SVID: %v %v", alice, err)
	}
	bundle, err := x509bundle.Load(alice.ID.TrustDomain(), filepath.Join(dir, "bundle.pem"))
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: mtls.ClientConfig(alice, bundle, spiffeid.RequireFromString(tp.p.gatewayID))}}
	resp, err := hc.Get(tp.url + "/v1/functions")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Fatalf("alice (no tenant) listing functions: %d %s, want 403", resp.StatusCode, body)
	}
	// Alice is no admin: she may not issue identities.
	cl, err := client.New(tp.url, hc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.IssueUser(context.Background(), "mallory", []byte("-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n")); !isAPIError(err, 403, "forbidden") {
		t.Fatalf("alice issuing an identity: got %v, want 403", err)
	}
	// A standalone policy engine's SVID.
	pdDir := filepath.Join(t.TempDir(), "pd")
	if out, err := tp.cli("identity", "issue-policyd", "pd1", "--out", pdDir); err != nil {
		t.Fatalf("issue-policyd: %v\n%s", err, out)
	}
	if pd, err := openSVIDDir(pdDir); err != nil {
		t.Fatal(err)
	} else if s, _ := pd.GetX509SVID(); s.ID.String() != "spiffe://zfaas.local/policyd/pd1" {
		t.Fatalf("policyd SVID is %s", s.ID)
	}
	// The client config written beside her files makes the CLI act as her.
	var out bytes.Buffer
	err = run(context.Background(), []string{"identity", "show"}, func(k string) string {
		if k == "ZFAAS_CLIENT_CONFIG" {
			return filepath.Join(dir, "config.yaml")
		}
		return ""
	}, &out, &out)
	if err != nil || !strings.Contains(out.String(), "spiffe://zfaas.local/user/alice") {
		t.Fatalf("identity show as alice: %v\n%s", err, out.String())
	}
}

// TestAuditTrailEndToEnd: deploys, decisions, invocations and SVIDs land in
// the audit trail; an admin exports it through the gateway and it verifies
// offline with only the published key; an edited export does not.
func TestAuditTrailEndToEnd(t *testing.T) {
	tp := startTest(t, t.TempDir(), nil)
	tp.deployDir("caller", buildSPIFFEClient(t), api.FunctionConfig{Runtime: api.RuntimeGo})
	tp.deployFixture("fx", nil)
	tp.invokeFixture("fx", nil)
	if _, _, err := tp.c.Invoke(context.Background(), "caller", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keys, err := tp.cli("audit", "keys")
	if err != nil {
		t.Fatalf("audit keys: %v\n%s", err, keys)
	}
	keyFile := filepath.Join(dir, "audit.pub")
	os.WriteFile(keyFile, []byte(keys), 0o600)
	export := filepath.Join(dir, "trail.jsonl")
	trail, ok := tp.exportTrailUntil(t, export, func(s string) bool {
		return strings.Contains(s, `"kind":"deploy"`) && strings.Contains(s, `"kind":"invoke"`) && strings.Contains(s, `"kind":"decision"`) &&
			strings.Contains(s, `"kind":"svid.issued"`) && strings.Contains(s, "spiffe://zfaas.local/ns/default/fn/caller")
	})
	if !ok {
		t.Fatalf("export lacks deploy/invoke/decision/svid.issued records:\n%s", trail)
	}
	raw := []byte(trail)
	if out, err := tp.cli("audit", "verify", export, "--key", keyFile); err != nil {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	// Edit one record: verify names its sequence number.
	lines := strings.Split(string(raw), "\n")
	for i, l := range lines {
		if strings.Contains(l, `"kind":"invoke"`) {
			lines[i] = strings.Replace(l, `"outcome":"success"`, `"outcome":"failure"`, 1)
			break
		}
	}
	os.WriteFile(export, []byte(strings.Join(lines, "\n")), 0o600)
	if out, err := tp.cli("audit", "verify", export, "--key", keyFile); err == nil || !strings.Contains(out+err.Error(), "seq") {
		t.Fatalf("verify of an edited export: %v\n%s", err, out)
	}
}

// TestEgressEndToEnd: an instance reaches only what zfaas.egress allows;
// a pushed revision switches the rules of the running (warm) instance; the
// kernel's denies land in the audit trail with the function's SPIFFE ID
// and the revision.
func TestEgressEndToEnd(t *testing.T) {
	tp := startTest(t, t.TempDir(), nil)
	serve := func() (string, string) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) }))
		t.Cleanup(srv.Close)
		u, _ := url.Parse(srv.URL)
		return srv.URL, u.Port()
	}
	urlA, portA := serve()
	urlB, portB := serve()
	push := func(ports ...string) {
		t.Helper()
		var ps []any
		for _, p := range ports {
			n, _ := strconv.Atoi(p)
			ps = append(ps, n)
		}
		tp.pushPolicyData(func(data map[string]any) {
			data["egress"] = map[string]any{"default/fx": []any{map[string]any{"cidrs": []any{"127.0.0.1/32"}, "ports": ps, "protocol": "tcp"}}}
		})
	}
	get := func(u string) fixtureResult {
		r, _ := tp.invokeFixture("fx", map[string]any{"action": "get", "path": u})
		return r
	}
	push(portA)
	tp.deployFixture("fx", nil)
	first := get(urlA)
	if first.Data != "418" {
		t.Fatalf("allowed destination: got %q %q, want 418", first.Data, first.Err)
	}
	if r := get(urlB); !strings.Contains(r.Err, "operation not permitted") {
		t.Fatalf("denied destination: got %q %q, want EPERM", r.Data, r.Err)
	}
	// A new revision allows B: the same warm instance now reaches it.
	push(portA, portB)
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := get(urlB)
		if r.Data == "418" {
			if r.Instance != first.Instance {
				t.Fatalf("the rules changed by replacing the instance (%s → %s), want the same instance", first.Instance, r.Instance)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the push B is still refused: %q %q", r.Data, r.Err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if r := get(urlA); r.Data != "418" {
		t.Fatalf("A after the push: %q %q", r.Data, r.Err)
	}
	// The deny is counted per function.
	resp, err := http.Get("http://" + tp.p.healthAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), `zfaas_egress_denied_total{function="fx",reason="connect"}`) {
		t.Errorf("metrics lack the egress deny counter:\n%s", metrics)
	}
	// The rules in force, as the CLI shows them.
	if out, err := tp.cli("fn", "egress", "fx"); err != nil || !strings.Contains(out, "tcp 127.0.0.1/32/"+portB) || !strings.Contains(out, first.Instance) {
		t.Fatalf("fn egress: %v\n%s", err, out)
	}
	// The earlier deny is in the audit trail, with the function's ID.
	deadline = time.Now().Add(10 * time.Second)
	for {
		out, err := tp.cli("audit", "export", "--kind", "egress.deny")
		if err != nil {
			t.Fatalf("audit export: %v\n%s", err, out)
		}
		if strings.Contains(out, `"actor":"spiffe://zfaas.local/ns/default/fn/fx"`) && strings.Contains(out, "127.0.0.1:"+portB) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no egress.deny record for fx → %s:\n%s", portB, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestGMSuiteEndToEnd: with identity.suite gm the gateway serves TLS 1.3
// and TLCP (SM2/SM3/SM4) on the same ports; the CLI invokes over either;
// gRPC runs over TLCP; the policy input and the audit trail name the
// protocol; the trail is chained with SM3 and checkpoints signed with SM2.
func TestGMSuiteEndToEnd(t *testing.T) {
	tp := startTest(t, t.TempDir(), func(c *upConfig) { c.Identity.Suite = "gm" })
	tp.deployFixture("fx", nil)
	for _, mode := range []string{"gm", "auto", "standard"} {
		if out, err := tp.cli("fn", "invoke", "fx", "--tls", mode); err != nil || !strings.Contains(out, `"version"`) {
			t.Fatalf("invoke --tls %s: %v\n%s", mode, err, out)
		}
	}
	// Side by side on one port: a TLS 1.3 client and a TLCP client.
	cc, err := readClientConfig(tp.getenv)
	if err != nil {
		t.Fatal(err)
	}
	gw := spiffeid.RequireFromString(tp.p.gatewayID)
	tc, err := cc.tlcpClientConfig(gw)
	if err != nil {
		t.Fatal(err)
	}
	d := &dualstack.Dialer{Config: dualstack.Config{Mode: dualstack.ModeGM, TLCP: tc}}
	gmClient := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialTLSContext: d.DialContext}}
	for name, hc := range map[string]*http.Client{"tls": tp.hc, "tlcp": gmClient} {
		resp, err := hc.Get(tp.url + "/v1/functions")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: got %d", name, resp.StatusCode)
		}
	}
	// gRPC over TLCP with the administrator's SM2 pair.
	conn, err := grpc.NewClient(tp.p.grpcAddr, grpc.WithTransportCredentials(dualstack.NewTLCPCredentials(tc)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := zfaasv1.NewFunctionsClient(conn).Invoke(context.Background(), &zfaasv1.InvokeRequest{Function: "fx", Payload: []byte(`{}`)})
	if err != nil || !strings.Contains(string(resp.GetPayload()), `"version"`) {
		t.Fatalf("gRPC over TLCP: %v %v", resp, err)
	}
	// Metrics count invocations by transport.
	mresp, err := http.Get("http://" + tp.p.healthAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	if !regexp.MustCompile(`zfaas_invocation_requests_by_transport_total\{cipher_suite="[A-Z0-9_]+",protocol="TLCP"\} [1-9]`).Match(metrics) {
		t.Errorf("metrics lack TLCP invocations:\n%s", metrics)
	}
	// The trail records the protocol and verifies with the SM2 key.
	dir := t.TempDir()
	keys, err := tp.cli("audit", "keys")
	if err != nil {
		t.Fatalf("audit keys: %v\n%s", err, keys)
	}
	os.WriteFile(filepath.Join(dir, "audit.pub"), []byte(keys), 0o600)
	export := filepath.Join(dir, "trail.jsonl")
	if trail, ok := tp.exportTrailUntil(t, export, func(s string) bool { return strings.Contains(s, `"tls":"TLCP"`) }); !ok {
		t.Fatalf("no decision over TLCP in the trail:\n%s", trail)
	}
	out, err := tp.cli("audit", "verify", export, "--key", filepath.Join(dir, "audit.pub"))
	if err != nil || !strings.Contains(strings.ToLower(out), "sm3") {
		t.Fatalf("verify an SM3/SM2 trail: %v\n%s", err, out)
	}
}

// TestWorkersEndToEnd: the in-process worker is a registered, leased worker
// like any other: `zfaas worker ls` shows it; drained, it gets no work
// (503); undrained, it serves again.
func TestWorkersEndToEnd(t *testing.T) {
	tp := startTest(t, t.TempDir(), nil)
	tp.deployFixture("fx", nil)
	tp.invokeFixture("fx", nil)
	// The load arrives with the next heartbeat (every 2 s).
	for deadline := time.Now().Add(10 * time.Second); ; {
		out, err := tp.cli("worker", "ls")
		if err == nil && regexp.MustCompile(`(?m)^local\s+admitted\s+local\s`).MatchString(out) && strings.Contains(out, "1 inst") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker ls: %v\n%s", err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if out, err := tp.cli("worker", "drain", "local"); err != nil || !strings.Contains(out, "draining") {
		t.Fatalf("drain: %v\n%s", err, out)
	}
	code, _, body := tp.rawInvoke("fx", []byte(`{}`))
	if code != http.StatusServiceUnavailable || errorCode(t, body) != "unavailable" {
		t.Fatalf("invoke with every worker drained: %d %s, want 503 unavailable", code, body)
	}
	if out, err := tp.cli("worker", "undrain", "local"); err != nil || !strings.Contains(out, "admitted") {
		t.Fatalf("undrain: %v\n%s", err, out)
	}
	tp.invokeFixture("fx", nil)
	if out, err := tp.cli("worker", "drain", "nope"); err == nil || !strings.Contains(err.Error(), "not_found") {
		t.Fatalf("drain an unknown worker: %v\n%s", err, out)
	}
}
