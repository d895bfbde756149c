package workloadapi_test

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/emmansun/gmsm/smx509"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/zfaas/zfaas/identity/ca"
	"github.com/zfaas/zfaas/identity/workloadapi"
)

var _ workloadapi.GMIssuer = (*ca.CA)(nil)

// checkGMPair checks a delivered GM double SVID against the CA: both
// certificates name id in their one URI SAN, are not CAs, have the GM key
// usages, chain to the delivered SM2 bundle, which is the CA's, and come
// with their private keys.
func checkGMPair(t *testing.T, e *env, gm *workloadapi.GMX509SVID, id spiffeid.ID) {
	t.Helper()
	if gm.ID != id {
		t.Errorf("gm id: got %s, want %s", gm.ID, id)
	}
	want := e.ca.GMBundle()
	if len(gm.Bundle) != len(want) || len(want) == 0 {
		t.Fatalf("gm bundle: got %d authorities, want %d", len(gm.Bundle), len(want))
	}
	pool := smx509.NewCertPool()
	for i, a := range gm.Bundle {
		if !a.Equal(want[i]) {
			t.Errorf("gm bundle authority %d differs from the CA's", i)
		}
		pool.AddCert(a)
	}
	for _, c := range []struct {
		name  string
		chain []*smx509.Certificate
		usage x509.KeyUsage
		pub   any
	}{
		{"sign", gm.Sign, ca.GMSignKeyUsage, gm.SignKey.Public()},
		{"enc", gm.Enc, ca.GMEncKeyUsage, gm.EncKey.Public()},
	} {
		leaf := c.chain[0]
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() || leaf.IsCA || leaf.KeyUsage != c.usage {
			t.Errorf("%s: URIs %v isCA %v usage %b", c.name, leaf.URIs, leaf.IsCA, leaf.KeyUsage)
		}
		if leaf.SignatureAlgorithm != smx509.SM2WithSM3 {
			t.Errorf("%s: signature algorithm %v", c.name, leaf.SignatureAlgorithm)
		}
		if _, err := leaf.Verify(smx509.VerifyOptions{Roots: pool, CurrentTime: e.clk.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("%s: chain: %v", c.name, err)
		}
	}
	if gm.SignKey.Equal(gm.EncKey) {
		t.Error("signing and encryption keys are the same")
	}
}

func gmConn(t *testing.T, path string) workload.SpiffeWorkloadAPIClient {
	t.Helper()
	conn, err := grpc.NewClient(workloadapi.EndpointAddr(path), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return workload.NewSpiffeWorkloadAPIClient(conn)
}

// TestGMDelivery: a GM-aware fetch gets the standard SVID first and the GM
// pair after it; a standard go-spiffe client on the same gm server gets a
// usable standard SVID and never sees SM2.
func TestGMDelivery(t *testing.T) {
	e := newEnvSuite(t, ca.SuiteGM)
	inst := e.instance(t, "hello", e.self)
	path := e.serve(t, inst)
	ctx := ctxT(t)

	t.Run("gm-aware raw response", func(t *testing.T) {
		stream, err := gmConn(t, path).FetchX509SVID(workloadapi.WithGM(ctx), &workload.X509SVIDRequest{})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		svids := resp.GetSvids()
		if len(svids) != 3 {
			t.Fatalf("entries: got %d, want 3", len(svids))
		}
		for i, want := range []string{"", workloadapi.HintGMSign, workloadapi.HintGMEnc} {
			if svids[i].GetHint() != want || svids[i].GetSpiffeId() != inst.ID.String() {
				t.Errorf("entry %d: hint %q id %s, want hint %q id %s", i, svids[i].GetHint(), svids[i].GetSpiffeId(), want, inst.ID)
			}
		}
		// The first entry is the standard ECDSA SVID, readable by go-spiffe.
		std, err := x509svid.ParseRaw(svids[0].GetX509Svid(), svids[0].GetX509SvidKey())
		if err != nil {
			t.Fatalf("standard entry: %v", err)
		}
		if _, _, err := x509svid.Verify(std.Certificates, e.ca.X509Bundle(), x509svid.WithTime(e.clk.Now())); err != nil {
			t.Errorf("standard entry does not verify: %v", err)
		}
		gm, err := workloadapi.ParseGMX509SVID(resp)
		if err != nil {
			t.Fatal(err)
		}
		checkGMPair(t, e, gm, inst.ID)
	})

	t.Run("FetchGMX509SVID", func(t *testing.T) {
		gm, err := workloadapi.FetchGMX509SVID(ctx, workloadapi.EndpointAddr(path))
		if err != nil {
			t.Fatal(err)
		}
		checkGMPair(t, e, gm, inst.ID)
	})

	t.Run("standard go-spiffe client", func(t *testing.T) {
		c := client(t, path)
		xc, err := c.FetchX509Context(ctx)
		if err != nil {
			t.Fatalf("FetchX509Context: %v", err)
		}
		if len(xc.SVIDs) != 1 || xc.SVIDs[0].ID != inst.ID {
			t.Fatalf("svids: got %v, want one for %s", xc.SVIDs, inst.ID)
		}
		if _, _, err := x509svid.Verify(xc.SVIDs[0].Certificates, xc.Bundles, x509svid.WithTime(e.clk.Now())); err != nil {
			t.Errorf("verify: %v", err)
		}
		svids, err := c.FetchX509SVIDs(ctx)
		if err != nil || len(svids) != 1 {
			t.Errorf("FetchX509SVIDs: got %d svids, %v; want 1", len(svids), err)
		}
		src, err := spiffewl.NewX509Source(ctx, spiffewl.WithClient(c))
		if err != nil {
			t.Fatalf("NewX509Source: %v", err)
		}
		defer src.Close()
		if s, err := src.GetX509SVID(); err != nil || s.ID != inst.ID {
			t.Errorf("X509Source: got %v, %v", s, err)
		}
	})
}

// TestGMNotServedWithoutSuite: a GM request to a standard server gets the
// standard SVID only.
func TestGMNotServedWithoutSuite(t *testing.T) {
	e := newEnv(t)
	path := e.serve(t, e.instance(t, "hello", e.self))
	_, err := workloadapi.FetchGMX509SVID(ctxT(t), workloadapi.EndpointAddr(path))
	if !errors.Is(err, workloadapi.ErrNoGMSVID) {
		t.Fatalf("got %v, want %v", err, workloadapi.ErrNoGMSVID)
	}
	if _, err := workloadapi.New(workloadapi.Config{Issuer: standardOnly{e.ca}, Attestor: staticAttestor{}, GM: true}); err == nil {
		t.Error("gm server with an issuer that cannot mint gm svids: got nil error")
	}
}

// standardOnly hides MintGMSVID.
type standardOnly struct{ workloadapi.Issuer }

type staticAttestor struct{ id workloadapi.Identity }

func (a staticAttestor) Attest(context.Context) (workloadapi.Identity, error) { return a.id, nil }

// TestGMRotationOnStream: the GM pair is re-issued at half life on the
// open stream, and a CA rotation brings the successor SM2 authority.
func TestGMRotationOnStream(t *testing.T) {
	e := newEnvSuite(t, ca.SuiteGM)
	inst := e.instance(t, "hello", e.self)
	path := e.serve(t, inst)
	ctx, cancel := context.WithCancel(ctxT(t))
	updates := make(chan *workloadapi.GMX509SVID, 8)
	done := make(chan error, 1)
	go func() {
		done <- workloadapi.WatchGMX509SVID(ctx, workloadapi.EndpointAddr(path), func(s *workloadapi.GMX509SVID) error {
			updates <- s
			return nil
		})
	}()
	defer func() { cancel(); <-done }()
	next := func(what string) *workloadapi.GMX509SVID {
		t.Helper()
		select {
		case u := <-updates:
			return u
		case err := <-done:
			t.Fatalf("watch ended before %s: %v", what, err)
		case <-time.After(10 * time.Second):
			t.Fatalf("no update for %s", what)
		}
		return nil
	}
	first := next("first message")
	checkGMPair(t, e, first, inst.ID)

	e.clk.Add(10 * time.Second)
	e.srv.Refresh()
	select {
	case u := <-updates:
		t.Fatalf("update before half life: serial %v", u.Sign[0].SerialNumber)
	case <-time.After(200 * time.Millisecond):
	}

	e.clk.Add(time.Minute) // past half of the 2 min TTL
	e.srv.Refresh()
	second := next("gm rotation")
	checkGMPair(t, e, second, inst.ID)
	if second.Sign[0].SerialNumber.Cmp(first.Sign[0].SerialNumber) == 0 || second.Enc[0].SerialNumber.Cmp(first.Enc[0].SerialNumber) == 0 {
		t.Fatal("rotation sent the same certificates")
	}
	if second.SignKey.Equal(first.SignKey) || second.EncKey.Equal(first.EncKey) {
		t.Error("rotation reused a key")
	}

	e.clk.Add(30 * time.Minute)
	if err := e.ca.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	third := next("bundle change")
	if len(third.Bundle) != 2 {
		t.Fatalf("gm bundle after ca prepare: got %d authorities, want 2", len(third.Bundle))
	}
}

// TestGoSpiffeRejectsSM2Entries records why the GM pair is opt-in: a
// server that put the SM2 entries into every response would break
// go-spiffe v2's FetchX509SVIDs, FetchX509Context and X509Source (they
// parse every entry and bundle with crypto/x509, which rejects SM2 keys);
// only FetchX509SVID, which reads the first entry alone, would survive.
// The server here injects the zfaas-gm metadata into every stream, as an
// always-on delivery would.
func TestGoSpiffeRejectsSM2Entries(t *testing.T) {
	e := newEnvSuite(t, ca.SuiteGM)
	id := fnID(t, "hello")
	srv, err := workloadapi.New(workloadapi.Config{Issuer: e.ca, Attestor: staticAttestor{workloadapi.Identity{ID: id, Instance: "i1"}}, Clock: e.clk.Now, GM: true})
	if err != nil {
		t.Fatal(err)
	}
	forceGM := func(s any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		md, _ := metadata.FromIncomingContext(ss.Context())
		md = metadata.Join(md, metadata.Pairs(workloadapi.GMHeader, "true"))
		return h(s, ctxStream{ss, metadata.NewIncomingContext(ss.Context(), md)})
	}
	g := grpc.NewServer(grpc.StreamInterceptor(forceGM))
	workload.RegisterSpiffeWorkloadAPIServer(g, srv)
	dir, err := os.MkdirTemp("", "zid")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "always-gm.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(l)
	t.Cleanup(g.Stop)

	c := client(t, path)
	ctx := ctxT(t)
	if _, err := c.FetchX509Context(ctx); err == nil {
		t.Error("go-spiffe FetchX509Context accepted SM2 entries; the opt-in header may no longer be needed (update docs/identity.md)")
	} else {
		t.Logf("FetchX509Context with SM2 entries: %v", err)
	}
	if _, err := c.FetchX509SVIDs(ctx); err == nil {
		t.Error("go-spiffe FetchX509SVIDs accepted SM2 entries")
	}
	if s, err := c.FetchX509SVID(ctx); err != nil || s.ID != id {
		t.Errorf("FetchX509SVID (first entry only): got %v, %v", s, err)
	}
}

type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s ctxStream) Context() context.Context { return s.ctx }
