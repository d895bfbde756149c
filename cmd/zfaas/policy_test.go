package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/zfaas/zfaas/api"
	policydv1 "github.com/zfaas/zfaas/api/policyd/v1"
	"github.com/zfaas/zfaas/identity/ca"
	"github.com/zfaas/zfaas/policyd"
	"github.com/zfaas/zfaas/store"
)

const testPolicyDir = "../../policyd/testdata/basic"

func noEnv(string) string { return "" }

func TestPolicyTestCommand(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := runPolicy(t.Context(), []string{"test", testPolicyDir, "-v"}, noEnv, &out, &errOut); err != nil {
		t.Fatalf("policy test: %v\n%s%s", err, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), "PASS: 5/5") || !strings.Contains(out.String(), "test_allowed_caller") {
		t.Errorf("output: %s", out.String())
	}

	dir := t.TempDir()
	write(t, filepath.Join(dir, "p.rego"), "package p\n\nallow := false\n")
	write(t, filepath.Join(dir, "p_test.rego"), "package p_test\n\ntest_allow if data.p.allow\n")
	out.Reset()
	err := runPolicy(t.Context(), []string{"test", dir}, noEnv, &out, &errOut)
	if err == nil || !strings.Contains(out.String(), "FAIL data.p_test.test_allow") || !strings.Contains(out.String(), "FAIL: 0/1") {
		t.Errorf("failing tests: got %v\n%s", err, out.String())
	}
	if err := runPolicy(t.Context(), []string{"test"}, noEnv, &out, &errOut); !errors.Is(err, errUsage) {
		t.Errorf("no DIR: got %v, want usage", err)
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func signingKey(t *testing.T) (privPath string, pubPEM []byte) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	pder, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	privPath = filepath.Join(t.TempDir(), "key.pem")
	write(t, privPath, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})))
	return privPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pder})
}

// policyGateway serves the gateway's /v1/policy routes over a real engine,
// as the gateway is to.
func policyGateway(t *testing.T, e *policyd.Engine) http.Handler {
	t.Helper()
	fail := func(w http.ResponseWriter, status int, code, msg string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(api.ErrorBody{Error: api.ErrorDetail{Code: code, Message: msg}})
	}
	reply := func(w http.ResponseWriter, v any, err error) {
		var re *policyd.RefusedError
		switch {
		case errors.As(err, &re):
			fail(w, http.StatusUnprocessableEntity, "policy_refused", re.Error())
		case errors.Is(err, policyd.ErrRevisionNotFound):
			fail(w, http.StatusNotFound, "not_found", "no such policy revision")
		case err != nil:
			fail(w, http.StatusInternalServerError, "internal_error", "internal error")
		default:
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(v)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/policy/revisions", func(w http.ResponseWriter, r *http.Request) {
		raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, policyd.DefaultMaxBundleBytes))
		if err != nil {
			fail(w, http.StatusRequestEntityTooLarge, "payload_too_large", "bundle over the limit")
			return
		}
		info, err := e.Push(r.Context(), raw, "spiffe://zfaas.test/user/cli")
		reply(w, info, err)
	})
	mux.HandleFunc("GET /v1/policy/status", func(w http.ResponseWriter, r *http.Request) {
		st, err := e.Status(r.Context())
		reply(w, st, err)
	})
	mux.HandleFunc("POST /v1/policy/rollback", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Revision int64 `json:"revision"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<10)).Decode(&body); err != nil {
			fail(w, http.StatusBadRequest, "bad_request", "want {\"revision\": n}")
			return
		}
		info, err := e.Rollback(r.Context(), body.Revision, "spiffe://zfaas.test/user/cli")
		reply(w, info, err)
	})
	mux.HandleFunc("GET /v1/policy/decisions", func(w http.ResponseWriter, r *http.Request) {
		f := policyd.DecisionFilter{DenyOnly: r.URL.Query().Get("deny") == "true", Entry: r.URL.Query().Get("entry")}
		if s := r.URL.Query().Get("since"); s != "" {
			d, err := time.ParseDuration(s)
			if err != nil {
				fail(w, http.StatusBadRequest, "bad_request", "bad since")
				return
			}
			f.Since = time.Now().Add(-d)
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		enc := json.NewEncoder(w)
		_ = e.Decisions(r.Context(), f, func(rec policyd.DecisionRecord) { _ = enc.Encode(rec) })
	})
	return mux
}

func testEngine(t *testing.T, cfg policyd.Config) *policyd.Engine {
	t.Helper()
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	s, err := store.Open(t.Context(), store.Config{DataDir: filepath.Join(t.TempDir(), "nats"), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	cfg.Store, cfg.Node, cfg.Logger = s, "gw", log
	e, err := policyd.New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close(context.Background()) })
	return e
}

func TestPolicyClientCommands(t *testing.T) {
	privPath, pub := signingKey(t)
	e := testEngine(t, policyd.Config{VerifyKey: pub, DecisionLog: true})
	gwURL, gwEnv := mtlsTestServer(t, policyGateway(t, e))
	ctx := t.Context()
	run := func(args ...string) (string, error) {
		var out, errOut bytes.Buffer
		err := runPolicy(ctx, append(args, "--gateway", gwURL), gwEnv, &out, &errOut)
		return out.String() + errOut.String(), err
	}

	// Unsigned: refused by the platform, with the reason shown.
	out, err := run("push", testPolicyDir)
	if err == nil || !strings.Contains(err.Error(), "not signed") {
		t.Fatalf("unsigned push: got %v (%s), want a refusal naming the signature", err, out)
	}

	out, err = run("push", testPolicyDir, "--signing-key", privPath, "--key-id", "ci")
	if err != nil || !strings.Contains(out, "policy revision 1 active") || !strings.Contains(out, "5 tests passed, signed by key zfaas") {
		t.Fatalf("signed push: got %v\n%s", err, out)
	}
	// A signed bundle built offline is pushed as is.
	bundlePath := filepath.Join(t.TempDir(), "bundle.tar.gz")
	var buildOut bytes.Buffer
	if err := runPolicy(ctx, []string{"build", testPolicyDir, "--out", bundlePath, "--signing-key", privPath}, noEnv, &buildOut, &buildOut); err != nil || !strings.Contains(buildOut.String(), "signed") {
		t.Fatalf("build: %v\n%s", err, buildOut.String())
	}
	if out, err := run("push", bundlePath); err != nil || !strings.Contains(out, "policy revision 2 active") {
		t.Fatalf("push bundle file: %v\n%s", err, out)
	}

	out, err = run("status")
	if err != nil || !strings.Contains(out, "active revision 2") || !regexp.MustCompile(`(?m)^gw\s+2\s`).MatchString(out) {
		t.Errorf("status: %v\n%s", err, out)
	}
	out, err = run("rollback", "1")
	if err != nil || !strings.Contains(out, "policy revision 1 active again") {
		t.Errorf("rollback: %v\n%s", err, out)
	}
	if out, err := run("rollback", "42"); err == nil || !strings.Contains(err.Error(), "no such policy revision") {
		t.Errorf("rollback 42: got %v\n%s", err, out)
	}

	d, err := e.Decide(ctx, policyd.EntryInvoke, map[string]any{"caller": map[string]any{"spiffe_id": "spiffe://zfaas.test/ns/evil/fn/x"}})
	if err != nil || d.Allow {
		t.Fatalf("Decide: %+v, %v", d, err)
	}
	if _, err := e.Decide(ctx, policyd.EntryInvoke, map[string]any{"caller": map[string]any{"spiffe_id": "spiffe://zfaas.test/ns/acme/fn/a"}, "function": map[string]any{"name": "f"}}); err != nil {
		t.Fatal(err)
	}
	if err := e.FlushDecisionLog(ctx); err != nil {
		t.Fatal(err)
	}
	out, err = run("decisions", "--deny")
	if err != nil || !strings.Contains(out, "caller is blocked") || !strings.Contains(out, d.ID) || strings.Contains(out, "may invoke") {
		t.Errorf("decisions --deny: %v\n%s", err, out)
	}
	out, err = run("decisions", "-o", "json")
	if err != nil || strings.Count(out, "\n") != 2 {
		t.Errorf("decisions -o json: %v\n%s", err, out)
	}
	var rec policydv1.DecisionRecord
	if err := json.Unmarshal([]byte(strings.SplitN(out, "\n", 2)[0]), &rec); err != nil || rec.Revision != 1 {
		t.Errorf("decision record: %+v, %v", rec, err)
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestPolicydRole: the standalone policy engine serves decisions over
// mutual TLS with the SVID from --svid-dir, to callers of its trust domain
// only.
func TestPolicydRole(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	td := spiffeid.RequireTrustDomainFromString("zfaas.test")
	authority, err := ca.New(ctx, ca.Config{TrustDomain: td, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer authority.Close()
	mint := func(id string) *x509svid.SVID {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		s, err := authority.MintX509SVID(ctx, ca.X509Params{ID: spiffeid.RequireFromString(id), PublicKey: key.Public()})
		if err != nil {
			t.Fatal(err)
		}
		return &x509svid.SVID{ID: s.ID, Certificates: s.Certificates, PrivateKey: key}
	}
	bundle := authority.X509Bundle()
	svids := t.TempDir()
	if err := writeSVIDFiles(filepath.Join(svids, "svid.pem"), filepath.Join(svids, "svid-key.pem"), filepath.Join(svids, "bundle.pem"), mint("spiffe://zfaas.test/policyd/pd1"), bundle); err != nil {
		t.Fatal(err)
	}
	var out, errOut syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- runPolicyd(ctx, []string{"--data-dir", t.TempDir(), "--listen", "127.0.0.1:0", "--node", "pd1", "--default-policy", testPolicyDir, "--log-level", "warn", "--svid-dir", svids}, noEnv, &out, &errOut)
	}()
	addrRE := regexp.MustCompile(`gRPC (\S+), node pd1, policy revision 0`)
	var addr string
	deadline := time.Now().Add(30 * time.Second)
	for addr == "" {
		if m := addrRE.FindStringSubmatch(out.String()); m != nil {
			addr = m[1]
			break
		}
		select {
		case err := <-done:
			t.Fatalf("policyd exited: %v\n%s", err, errOut.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("policyd did not start: %s %s", out.String(), errOut.String())
		}
	}
	decide := func(creds credentials.TransportCredentials) (*policydv1.DecideResponse, error) {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return policydv1.NewDecisionsClient(conn).Decide(ctx, &policydv1.DecideRequest{
			Entry: "invoke",
			Input: &policydv1.DecideRequest_InputJson{InputJson: []byte(`{"caller": {"spiffe_id": "spiffe://zfaas.test/user/alice"}, "function": {"name": "f"}}`)},
		})
	}
	pd := tlsconfig.AuthorizeID(spiffeid.RequireFromString("spiffe://zfaas.test/policyd/pd1"))
	if _, err := decide(insecure.NewCredentials()); err == nil {
		t.Fatal("a plaintext client got a decision")
	}
	if _, err := decide(credentials.NewTLS(tlsconfig.TLSClientConfig(bundle, pd))); err == nil {
		t.Fatal("a client without an SVID got a decision")
	}
	// A gateway's SVID of the trust domain is a valid caller.
	resp, err := decide(grpccredentials.MTLSClientCredentials(mint("spiffe://zfaas.test/gateway/gw1"), bundle, pd))
	if err != nil || !resp.GetAllow() || resp.GetRevision() != 0 {
		t.Fatalf("Decide over the policyd role: %v, %v", resp, err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("policyd: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("policyd did not stop")
	}
	if err := runPolicyd(t.Context(), nil, noEnv, io.Discard, io.Discard); !errors.Is(err, errUsage) {
		t.Errorf("no store flag: got %v, want usage", err)
	}
	var msg bytes.Buffer
	if err := runPolicyd(t.Context(), []string{"--data-dir", t.TempDir()}, noEnv, io.Discard, &msg); !errors.Is(err, errUsage) || !strings.Contains(msg.String(), "--svid-dir") {
		t.Errorf("no identity: got %v %s, want usage naming --svid-dir", err, msg.String())
	}
}
