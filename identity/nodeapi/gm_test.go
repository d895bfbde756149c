package nodeapi_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	zfaasv1 "github.com/zfaas/zfaas/api/zfaas/v1"
	"github.com/zfaas/zfaas/crypto/dualstack"
	"github.com/zfaas/zfaas/crypto/tlcp"
	"github.com/zfaas/zfaas/identity"
	"github.com/zfaas/zfaas/identity/ca"
	"github.com/zfaas/zfaas/runtime/nodeclient"
)

func gmEnv(t *testing.T, workerTTL time.Duration) *env {
	t.Helper()
	return newEnv(t, envOpts{tokens: []string{"t1"}, admission: admission{AllowJoinToken: true}, workerTTL: workerTTL, suite: ca.SuiteGM})
}

func sm2CSR(t *testing.T) []byte {
	t.Helper()
	key, err := sm2.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := smx509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func gmPool(certs []*smx509.Certificate) *smx509.CertPool {
	p := smx509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// gmPair mints a GM double SVID for id straight from the CA, as the
// gateway's own identity provider does.
func gmPair(t *testing.T, c *ca.CA, id spiffeid.ID) dualstack.TLCPSource {
	t.Helper()
	signKey, _ := sm2.GenerateKey(rand.Reader)
	encKey, _ := sm2.GenerateKey(rand.Reader)
	s, err := c.MintGMSVID(context.Background(), ca.GMParams{ID: id, SignKey: signKey.Public(), EncKey: encKey.Public()})
	if err != nil {
		t.Fatal(err)
	}
	sign := &tlcp.Certificate{Certificate: [][]byte{s.Sign[0].Raw}, PrivateKey: signKey, Leaf: s.Sign[0]}
	enc := &tlcp.Certificate{Certificate: [][]byte{s.Enc[0].Raw}, PrivateKey: encKey, Leaf: s.Enc[0]}
	return dualstack.TLCPSourceFunc(func() (*tlcp.Certificate, *tlcp.Certificate, error) { return sign, enc, nil })
}

// TestMintWorkerGM: an admitted worker gets a GM double SVID for its own
// ID, chaining to the GM bundle, with the CA's key usages, living no
// longer than its worker SVID; the Bundles stream carries the GM bundle.
func TestMintWorkerGM(t *testing.T) {
	e := gmEnv(t, 2*time.Minute)
	w, err := joinToken(t, e, "dev-1", "t1")
	if err != nil {
		t.Fatal(err)
	}
	workerID := mustID(identity.WorkerID(td, "dev-1"))
	ws, _ := w.GetX509SVID()
	sign, enc, err := w.TLCPSource().GetTLCPCertificates()
	if err != nil {
		t.Fatalf("tlcp source: %v", err)
	}
	roots := gmPool(e.ca.GMBundle())
	for _, tc := range []struct {
		name  string
		cert  *tlcp.Certificate
		usage x509.KeyUsage
	}{
		{"sign", sign, ca.GMSignKeyUsage},
		{"enc", enc, ca.GMEncKeyUsage},
	} {
		leaf := tc.cert.Leaf
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != workerID.String() {
			t.Errorf("%s: got URI SANs %v, want exactly %s", tc.name, leaf.URIs, workerID)
		}
		if leaf.KeyUsage != tc.usage || leaf.IsCA {
			t.Errorf("%s: got key usage %#x (CA %v), want %#x and not a CA", tc.name, leaf.KeyUsage, leaf.IsCA, tc.usage)
		}
		if _, err := leaf.Verify(smx509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("%s: does not chain to the GM bundle: %v", tc.name, err)
		}
		if leaf.NotAfter.After(ws.Certificates[0].NotAfter) {
			t.Errorf("%s: expires %v, after the worker SVID (%v)", tc.name, leaf.NotAfter, ws.Certificates[0].NotAfter)
		}
		pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
		key, _ := tc.cert.PrivateKey.(*sm2.PrivateKey)
		if !ok || key == nil || !pub.Equal(key.Public()) {
			t.Errorf("%s: the certificate does not hold the worker's key", tc.name)
		}
	}
	// Cached until half life.
	if s2, _, _ := w.TLCPSource().GetTLCPCertificates(); s2 != sign {
		t.Error("a second call minted a new pair before half life")
	}
	if !w.GMBundle().Equal(roots) {
		t.Error("the worker's GM bundle is not the CA's")
	}

	stream, err := e.client(t, ws).Bundles(context.Background(), &zfaasv1.BundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := b.GetGmAuthorities(); len(got) != len(e.ca.GMBundle()) || string(got[0]) != string(e.ca.GMBundle()[0].Raw) {
		t.Errorf("bundles: got %d GM authorities, want the CA's %d", len(got), len(e.ca.GMBundle()))
	}
}

// TestWorkerTLCP runs the gateway → worker API link over TLCP: the worker
// serves gRPC with dual-stack credentials (its worker SVID for TLS, its GM
// double SVID for TLCP) and a gateway dials with TLCP credentials built
// from a CA-minted gateway pair.
func TestWorkerTLCP(t *testing.T) {
	e := gmEnv(t, 0)
	w, err := joinToken(t, e, "dev-1", "t1")
	if err != nil {
		t.Fatal(err)
	}
	workerID := w.ID()
	gatewayID := mustID(identity.GatewayID(td, "gw-1"))
	authorizeGateway := func(id spiffeid.ID) error {
		if n, err := identity.Parse(id); err != nil || n.Kind != identity.KindGateway {
			return fmt.Errorf("%s is not a gateway", id)
		}
		return nil
	}
	seen := make(chan dualstack.ConnectionState, 8)
	for _, tc := range []struct {
		name string
		cfg  *tlcp.Config
	}{
		{"snapshot pool", dualstack.TLCPServerConfig(w.TLCPSource(), w.GMBundle(), authorizeGateway)},
		{"following rotation", w.TLCPServerConfig(authorizeGateway)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			creds, err := dualstack.NewCredentials(dualstack.Config{
				Mode: dualstack.ModeAuto,
				TLS:  tlsconfig.MTLSServerConfig(w, w, tlsconfig.AuthorizeMemberOf(td)),
				TLCP: tc.cfg,
			})
			if err != nil {
				t.Fatal(err)
			}
			gs := grpc.NewServer(grpc.Creds(creds), grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
				if st, ok := dualstack.StateFromPeer(ctx); ok {
					seen <- st
				}
				return h(ctx, req)
			}))
			healthpb.RegisterHealthServer(gs, health.NewServer())
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			go gs.Serve(ln)
			defer gs.Stop()

			dial := func(creds credentials.TransportCredentials) error {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(creds))
				if err != nil {
					return err
				}
				defer conn.Close()
				_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
				return err
			}
			call := func(src dualstack.TLCPSource, server spiffeid.ID) error {
				return dial(dualstack.NewTLCPCredentials(dualstack.TLCPClientConfig(src, gmPool(e.ca.GMBundle()), server)))
			}
			wantSeen := func(protocol string) {
				t.Helper()
				select {
				case st := <-seen:
					if id, _ := st.PeerID(); st.Protocol != protocol || id != gatewayID {
						t.Errorf("got %s from %v, want %s from %s", st.Protocol, id, protocol, gatewayID)
					}
				default:
					t.Error("the handler saw no connection state")
				}
			}
			if err := call(gmPair(t, e.ca, gatewayID), workerID); err != nil {
				t.Fatalf("gateway over TLCP: %v", err)
			}
			wantSeen(dualstack.ProtocolTLCP)
			// The same port still serves TLS 1.3 with the worker SVID.
			gwX509 := mintSVID(t, e.ca, gatewayID)
			if err := dial(credentials.NewTLS(tlsconfig.MTLSClientConfig(gwX509, e.bundle, tlsconfig.AuthorizeID(workerID)))); err != nil {
				t.Fatalf("gateway over TLS: %v", err)
			}
			wantSeen(dualstack.ProtocolTLS)
			// A peer that is not a gateway is refused by the worker; a
			// gateway expecting another worker refuses this one.
			if err := call(gmPair(t, e.ca, mustID(identity.UserID(td, "mallory"))), workerID); err == nil {
				t.Error("a user's GM SVID was accepted by the worker API")
			}
			if err := call(gmPair(t, e.ca, gatewayID), mustID(identity.WorkerID(td, "dev-2"))); err == nil {
				t.Error("the gateway accepted dev-1 as dev-2")
			}
		})
	}
}

// TestMintWorkerGMRefused: a standard CA, a revoked worker, a caller
// without a worker SVID and malformed requests get no GM SVID.
func TestMintWorkerGMRefused(t *testing.T) {
	ctx := context.Background()
	t.Run("standard CA", func(t *testing.T) {
		e := newEnv(t, envOpts{tokens: []string{"t1"}, admission: admission{AllowJoinToken: true}})
		w, err := joinToken(t, e, "dev-1", "t1")
		if err != nil {
			t.Fatal(err)
		}
		ws, _ := w.GetX509SVID()
		_, err = e.client(t, ws).MintWorkerGM(ctx, &zfaasv1.MintWorkerGMRequest{SignCsr: sm2CSR(t), EncCsr: sm2CSR(t)})
		if status.Code(err) != codes.FailedPrecondition {
			t.Errorf("got %v, want FailedPrecondition", err)
		}
		if _, _, err := w.TLCPSource().GetTLCPCertificates(); !errors.Is(err, nodeclient.ErrGMDisabled) {
			t.Errorf("tlcp source: got %v, want ErrGMDisabled", err)
		}
		if !w.GMBundle().Equal(smx509.NewCertPool()) {
			t.Error("got GM authorities from a standard CA, want none")
		}
	})
	t.Run("revoked", func(t *testing.T) {
		e := gmEnv(t, 0)
		w, err := joinToken(t, e, "dev-1", "t1")
		if err != nil {
			t.Fatal(err)
		}
		if err := w.RenewGM(ctx); err != nil {
			t.Fatal(err)
		}
		if err := e.srv.Revoke(ctx, "dev-1", []string{"drained by operator"}); err != nil {
			t.Fatal(err)
		}
		ws, _ := w.GetX509SVID()
		_, err = e.client(t, ws).MintWorkerGM(ctx, &zfaasv1.MintWorkerGMRequest{SignCsr: sm2CSR(t), EncCsr: sm2CSR(t)})
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("got %v, want PermissionDenied", err)
		}
		if err := w.RenewGM(ctx); !errors.Is(err, nodeclient.ErrRefused) {
			t.Errorf("renew gm: got %v, want ErrRefused", err)
		}
		if _, _, err := w.TLCPSource().GetTLCPCertificates(); !errors.Is(err, nodeclient.ErrRefused) {
			t.Errorf("tlcp source after revocation: got %v, want ErrRefused", err)
		}
	})

	e := gmEnv(t, 0)
	w, err := joinToken(t, e, "dev-1", "t1")
	if err != nil {
		t.Fatal(err)
	}
	ws, _ := w.GetX509SVID()
	same := sm2CSR(t)
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecCSR, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, p256)
	tampered := sm2CSR(t)
	tampered[len(tampered)-3] ^= 0xff
	gw := mintSVID(t, e.ca, mustID(identity.GatewayID(td, "cp")))
	for _, tc := range []struct {
		name string
		as   x509svid.Source
		req  *zfaasv1.MintWorkerGMRequest
		want codes.Code
	}{
		{"no client certificate", nil, &zfaasv1.MintWorkerGMRequest{SignCsr: sm2CSR(t), EncCsr: sm2CSR(t)}, codes.Unauthenticated},
		{"not a worker", gw, &zfaasv1.MintWorkerGMRequest{SignCsr: sm2CSR(t), EncCsr: sm2CSR(t)}, codes.PermissionDenied},
		{"missing enc csr", ws, &zfaasv1.MintWorkerGMRequest{SignCsr: sm2CSR(t)}, codes.InvalidArgument},
		{"same key twice", ws, &zfaasv1.MintWorkerGMRequest{SignCsr: same, EncCsr: same}, codes.InvalidArgument},
		{"p-256 key", ws, &zfaasv1.MintWorkerGMRequest{SignCsr: ecCSR, EncCsr: sm2CSR(t)}, codes.InvalidArgument},
		{"bad csr signature", ws, &zfaasv1.MintWorkerGMRequest{SignCsr: sm2CSR(t), EncCsr: tampered}, codes.InvalidArgument},
		{"negative ttl", ws, &zfaasv1.MintWorkerGMRequest{SignCsr: sm2CSR(t), EncCsr: sm2CSR(t), TtlSeconds: -1}, codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.client(t, tc.as).MintWorkerGM(ctx, tc.req)
			if got := status.Code(err); got != tc.want {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// TestMintWorkerGMTTL: the pair never outlives the worker SVID the caller
// presented, even when the worker TTL is longer; a shorter request is
// honoured.
func TestMintWorkerGMTTL(t *testing.T) {
	ctx := context.Background()
	e := gmEnv(t, 10*time.Minute)
	if _, err := joinToken(t, e, "dev-1", "t1"); err != nil {
		t.Fatal(err)
	}
	// A valid SVID of the admitted worker with 30 s left.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	id := mustID(identity.WorkerID(td, "dev-1"))
	s, err := e.ca.MintX509SVID(ctx, ca.X509Params{ID: id, PublicKey: key.Public(), TTL: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	short := &x509svid.SVID{ID: id, Certificates: s.Certificates, PrivateKey: key}
	limit := s.Certificates[0].NotAfter
	for _, tc := range []struct {
		name    string
		seconds int64
		max     time.Time
	}{
		{"default", 0, limit},
		{"longer than the worker svid", 3600, limit},
		{"shorter", 10, time.Now().Add(11 * time.Second)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := e.client(t, short).MintWorkerGM(ctx, &zfaasv1.MintWorkerGMRequest{SignCsr: sm2CSR(t), EncCsr: sm2CSR(t), TtlSeconds: tc.seconds})
			if err != nil {
				t.Fatal(err)
			}
			for _, der := range [][]byte{resp.GetSignChain()[0], resp.GetEncChain()[0]} {
				c, err := smx509.ParseCertificate(der)
				if err != nil {
					t.Fatal(err)
				}
				if c.NotAfter.After(tc.max) {
					t.Errorf("got NotAfter %v, want at most %v", c.NotAfter, tc.max)
				}
				if len(c.URIs) != 1 || c.URIs[0].String() != id.String() {
					t.Errorf("got URI SANs %v, want %s", c.URIs, id)
				}
			}
		})
	}
}
