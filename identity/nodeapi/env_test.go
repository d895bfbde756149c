package nodeapi_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	zfaasv1 "github.com/zfaas/zfaas/api/zfaas/v1"
	"github.com/zfaas/zfaas/identity"
	"github.com/zfaas/zfaas/identity/attest"
	"github.com/zfaas/zfaas/identity/ca"
	"github.com/zfaas/zfaas/identity/nodeapi"
	"github.com/zfaas/zfaas/policies"
)

var td = spiffeid.RequireTrustDomainFromString("zfaas.local")

// admission is data.zfaas.config.admission for a test.
type admission struct {
	AllowJoinToken bool                         `json:"allow_join_token"`
	EKFingerprints []string                     `json:"ek_fingerprints"`
	GoldenPCRs     map[string]map[string]string `json:"golden_pcrs"`
}

// regoAdmitter evaluates the shipped zfaas.admission policy with real OPA
// and the shipped data, its admission section replaced, as the lead's
// binding to policyd does.
type regoAdmitter struct {
	query rego.PreparedEvalQuery
}

func newRegoAdmitter(t testing.TB, adm admission) *regoAdmitter {
	t.Helper()
	if adm.EKFingerprints == nil {
		adm.EKFingerprints = []string{}
	}
	if adm.GoldenPCRs == nil {
		adm.GoldenPCRs = map[string]map[string]string{}
	}
	opts := []func(*rego.Rego){rego.Query("data.zfaas.admission.decision")}
	var data map[string]any
	err := fs.WalkDir(policies.FS, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(policies.FS, path)
		if err != nil {
			return err
		}
		switch {
		case strings.HasSuffix(path, ".rego") && !strings.HasSuffix(path, "_test.rego"):
			opts = append(opts, rego.Module(path, string(b)))
		case path == "zfaas/config/data.json":
			var cfg map[string]any
			if err := json.Unmarshal(b, &cfg); err != nil {
				return err
			}
			raw, _ := json.Marshal(adm)
			var a map[string]any
			if err := json.Unmarshal(raw, &a); err != nil {
				return err
			}
			cfg["admission"] = a
			data = map[string]any{"zfaas": map[string]any{"config": cfg}}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	opts = append(opts, rego.Store(inmem.NewFromObject(data)))
	q, err := rego.New(opts...).PrepareForEval(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return &regoAdmitter{query: q}
}

func (r *regoAdmitter) Admit(ctx context.Context, c attest.Claims) (bool, []string, error) {
	rs, err := r.query.Eval(ctx, rego.EvalInput(c.PolicyInput()))
	if err != nil {
		return false, nil, err
	}
	if len(rs) != 1 || len(rs[0].Expressions) != 1 {
		return false, nil, fmt.Errorf("admission policy gave %d results", len(rs))
	}
	d, ok := rs[0].Expressions[0].Value.(map[string]any)
	if !ok {
		return false, nil, fmt.Errorf("admission decision is %T", rs[0].Expressions[0].Value)
	}
	allow, _ := d["allow"].(bool)
	var reasons []string
	list, _ := d["reasons"].([]any)
	for _, x := range list {
		s, _ := x.(string)
		reasons = append(reasons, s)
	}
	return allow, reasons, nil
}

// events records what the server reported.
type events struct {
	mu       sync.Mutex
	admitted []attest.Claims
	refused  map[string][]string
	revoked  map[string][]string
}

func (e *events) Admitted(_ context.Context, c attest.Claims) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.admitted = append(e.admitted, c)
}

func (e *events) Refused(_ context.Context, node string, reasons []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.refused[node] = append(e.refused[node], reasons...)
}

func (e *events) Revoked(_ context.Context, node string, reasons []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.revoked[node] = append(e.revoked[node], reasons...)
}

func (e *events) snapshot() (admitted int, refused, revoked map[string][]string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	refused, revoked = map[string][]string{}, map[string][]string{}
	for k, v := range e.refused {
		refused[k] = append([]string(nil), v...)
	}
	for k, v := range e.revoked {
		revoked[k] = append([]string(nil), v...)
	}
	return len(e.admitted), refused, revoked
}

// env is a CA and a NodeIdentity server on loopback mTLS.
type env struct {
	ca     *ca.CA
	srv    *nodeapi.Server
	addr   string
	bundle *x509bundle.Bundle
	events *events
}

type envOpts struct {
	roots     []*x509.Certificate
	admission admission
	tokens    []string
	workerTTL time.Duration
	suite     ca.Suite
}

func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	ctx := context.Background()
	c, err := ca.New(ctx, ca.Config{TrustDomain: td, Dir: t.TempDir(), Suite: o.suite})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ev := &events{refused: map[string][]string{}, revoked: map[string][]string{}}
	cfg := nodeapi.Config{
		CA:        c,
		Attest:    attest.Config{Admitter: newRegoAdmitter(t, o.admission)},
		Events:    ev,
		WorkerTTL: o.workerTTL,
		Logger:    slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if len(o.roots) > 0 {
		cfg.Attest.Roots = x509.NewCertPool()
		for _, r := range o.roots {
			cfg.Attest.Roots.AddCert(r)
		}
	}
	for _, tok := range o.tokens {
		cfg.JoinTokens = append(cfg.JoinTokens, nodeapi.HashJoinToken(tok))
	}
	srv, err := nodeapi.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	serverSVID := mintSVID(t, c, mustID(identity.GatewayID(td, "cp")))
	gs := grpc.NewServer(srv.ServerOptions(serverSVID)...)
	srv.Register(gs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	return &env{ca: c, srv: srv, addr: ln.Addr().String(), bundle: c.Bundles().X509, events: ev}
}

func mustID(id spiffeid.ID, err error) spiffeid.ID {
	if err != nil {
		panic(err)
	}
	return id
}

func mintSVID(t testing.TB, c *ca.CA, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.MintX509SVID(context.Background(), ca.X509Params{ID: id, PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: s.Certificates, PrivateKey: key}
}

// client dials the server, as svid when it is not nil.
func (e *env) client(t *testing.T, svid x509svid.Source) zfaasv1.NodeIdentityClient {
	t.Helper()
	authz := tlsconfig.AuthorizeID(mustID(identity.GatewayID(td, "cp")))
	cfg := tlsconfig.TLSClientConfig(e.bundle, authz)
	if svid != nil {
		cfg = tlsconfig.MTLSClientConfig(svid, e.bundle, authz)
	}
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return zfaasv1.NewNodeIdentityClient(conn)
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
