package nodeclient_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	gsw "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"

	"github.com/zfaas/zfaas/identity"
	"github.com/zfaas/zfaas/identity/attest"
	"github.com/zfaas/zfaas/identity/ca"
	"github.com/zfaas/zfaas/identity/nodeapi"
	"github.com/zfaas/zfaas/identity/workloadapi"
	"github.com/zfaas/zfaas/runtime/nodeclient"
)

var td = spiffeid.RequireTrustDomainFromString("zfaas.local")

// tokenOnly admits join tokens (the shipped policy with
// allow_join_token is tested in identity/nodeapi).
type tokenOnly struct{}

func (tokenOnly) Admit(_ context.Context, c attest.Claims) (bool, []string, error) {
	return c.Method == nodeapi.MethodJoinToken, []string{"test"}, nil
}

// serve starts a CA and a NodeIdentity server with one join token "t1".
func serve(t *testing.T, workerTTL time.Duration) (*ca.CA, *nodeapi.Server, string) {
	t.Helper()
	return serveSuite(t, workerTTL, ca.SuiteStandard)
}

// serveSuite is serve with a CA of the given suite.
func serveSuite(t *testing.T, workerTTL time.Duration, suite ca.Suite) (*ca.CA, *nodeapi.Server, string) {
	t.Helper()
	c, err := ca.New(context.Background(), ca.Config{TrustDomain: td, Dir: t.TempDir(), Suite: suite})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	srv, err := nodeapi.New(nodeapi.Config{
		CA: c, Attest: attest.Config{Admitter: tokenOnly{}}, WorkerTTL: workerTTL,
		JoinTokens: [][32]byte{nodeapi.HashJoinToken("t1")},
	})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	id, _ := identity.GatewayID(td, "cp")
	s, err := c.MintX509SVID(context.Background(), ca.X509Params{ID: id, PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(srv.ServerOptions(&x509svid.SVID{ID: id, Certificates: s.Certificates, PrivateKey: key})...)
	srv.Register(gs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	return c, srv, ln.Addr().String()
}

func join(t *testing.T, c *ca.CA, addr string) *nodeclient.WorkerIdentity {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w, err := nodeclient.Join(ctx, nodeclient.Config{Addr: addr, Bundle: c.Bundles().X509, Node: "w1", JoinToken: "t1"})
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

func TestConfig(t *testing.T) {
	c, _, addr := serve(t, 0)
	for name, cfg := range map[string]nodeclient.Config{
		"no addr":         {Bundle: c.Bundles().X509, Node: "w1", JoinToken: "t1"},
		"no bundle":       {Addr: addr, Node: "w1", JoinToken: "t1"},
		"no credential":   {Addr: addr, Bundle: c.Bundles().X509, Node: "w1"},
		"bad node":        {Addr: addr, Bundle: c.Bundles().X509, Node: "W/1", JoinToken: "t1"},
		"wrong key curve": {Addr: addr, Bundle: c.Bundles().X509, Node: "w1", JoinToken: "t1", Key: p384(t)},
	} {
		if _, err := nodeclient.Join(context.Background(), cfg); err == nil {
			t.Errorf("%s: got no error", name)
		}
	}
}

func p384(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestRun renews at half life and stops with ErrRefused once revoked.
func TestRun(t *testing.T) {
	c, srv, addr := serve(t, 4*time.Second)
	w := join(t, c, addr)
	first, _ := w.GetX509SVID()
	changed := w.Changed()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("no renewal within 10 s of a 4 s SVID")
	}
	if s, _ := w.GetX509SVID(); s.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) == 0 {
		t.Error("Changed fired without a new SVID")
	}
	if err := srv.Revoke(context.Background(), "w1", []string{"test"}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, nodeclient.ErrRefused) {
			t.Errorf("got %v, want ErrRefused", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop after revocation")
	}
}

type staticAttestor struct{ id workloadapi.Identity }

func (a staticAttestor) Attest(context.Context) (workloadapi.Identity, error) { return a.id, nil }

// TestRemoteIssuerBehindWorkloadAPI serves instances through the real
// Workload API server with SVIDs minted by the node service, read by
// go-spiffe's client.
func TestRemoteIssuerBehindWorkloadAPI(t *testing.T) {
	c, _, addr := serve(t, 0)
	w := join(t, c, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go w.Run(ctx)

	fn, _ := identity.FunctionID(td, "acme", "hello")
	api, err := workloadapi.New(workloadapi.Config{Issuer: w.Issuer(), Attestor: staticAttestor{workloadapi.Identity{ID: fn, Instance: "i-1"}}})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go api.Serve(ln)
	t.Cleanup(api.Stop)

	client, err := gsw.New(ctx, gsw.WithAddr("unix://"+sock))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	svid, err := client.FetchX509SVID(ctx)
	if err != nil {
		t.Fatalf("fetch x509-svid: %v", err)
	}
	ws, _ := w.GetX509SVID()
	if svid.ID != fn || svid.Certificates[0].NotAfter.After(ws.Certificates[0].NotAfter) {
		t.Errorf("got %v until %v, want %v until at most %v", svid.ID, svid.Certificates[0].NotAfter, fn, ws.Certificates[0].NotAfter)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, c.Bundles().X509); err != nil {
		t.Errorf("instance svid does not verify against the control plane's bundle: %v", err)
	}
	bundles, err := client.FetchX509Bundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := bundles.GetX509BundleForTrustDomain(td); err != nil || !b.Equal(c.Bundles().X509) {
		t.Errorf("got bundle %v (%v), want the CA's", b, err)
	}
	jwt, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "billing"})
	if err != nil {
		t.Fatalf("fetch jwt-svid: %v", err)
	}
	got, err := client.ValidateJWTSVID(ctx, jwt.Marshal(), "billing")
	if err != nil || got.ID != fn {
		t.Errorf("validate: got %v, %v", got, err)
	}
	if _, err := c.ValidateJWTSVID(jwt.Marshal(), "billing"); err != nil {
		t.Errorf("the CA does not accept the instance's JWT-SVID: %v", err)
	}
}
