package nodeapi_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	zfaasv1 "github.com/zfaas/zfaas/api/zfaas/v1"
	"github.com/zfaas/zfaas/identity"
	"github.com/zfaas/zfaas/identity/ca"
	"github.com/zfaas/zfaas/identity/nodeapi"
	"github.com/zfaas/zfaas/runtime/nodeclient"
)

func joinToken(t *testing.T, e *env, node, token string) (*nodeclient.WorkerIdentity, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w, err := nodeclient.Join(ctx, nodeclient.Config{Addr: e.addr, Bundle: e.bundle, Node: node, JoinToken: token})
	if err == nil {
		t.Cleanup(func() { w.Close() })
	}
	return w, err
}

func TestJoinTokenRefusedByDefaultPolicy(t *testing.T) {
	e := newEnv(t, envOpts{tokens: []string{"t1"}})
	_, err := joinToken(t, e, "dev-1", "t1")
	wantRefused(t, e, "dev-1", err, "join token admission is disabled")
}

func TestJoinToken(t *testing.T) {
	e := newEnv(t, envOpts{tokens: []string{"t1", "t2"}, admission: admission{AllowJoinToken: true}})
	w, err := joinToken(t, e, "dev-1", "t1")
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	if got := w.Method(); got != nodeapi.MethodJoinToken {
		t.Errorf("got method %q, want join_token", got)
	}
	svid, _ := w.GetX509SVID()
	checkWorkerSVID(t, e, svid, "dev-1", time.Now().Add(-time.Second), nodeapi.DefaultWorkerTTL)

	for _, tc := range []struct{ node, token, want string }{
		{"dev-2", "t1", "join token already used"},
		{"dev-2", "bogus", "unknown join token"},
	} {
		_, err := joinToken(t, e, tc.node, tc.token)
		wantRefused(t, e, tc.node, err, tc.want)
	}
	if _, err := joinToken(t, e, "dev-2", "t2"); err != nil {
		t.Fatalf("join dev-2 with an unused token: %v", err)
	}
	// Renewal needs no token, only the current SVID.
	if err := w.Renew(context.Background()); err != nil {
		t.Fatalf("renew: %v", err)
	}
	renewed, _ := w.GetX509SVID()
	if renewed == svid {
		t.Error("renewal kept the old SVID")
	}
	// Without a certificate, a token is required.
	csr := newCSR(t)
	_, err = e.client(t, nil).JoinToken(context.Background(), &zfaasv1.JoinTokenRequest{Node: "dev-3", Csr: csr})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("got %v, want InvalidArgument", err)
	}
	// A worker's SVID cannot renew another node.
	_, err = e.client(t, renewed).JoinToken(context.Background(), &zfaasv1.JoinTokenRequest{Node: "dev-2", Csr: csr})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("got %v, want PermissionDenied", err)
	}
}

func newCSR(t *testing.T) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestWorkloadCalls(t *testing.T) {
	const ttl = 2 * time.Minute
	e := newEnv(t, envOpts{tokens: []string{"t1"}, admission: admission{AllowJoinToken: true}, workerTTL: ttl})
	w, err := joinToken(t, e, "dev-1", "t1")
	if err != nil {
		t.Fatal(err)
	}
	ws, _ := w.GetX509SVID()
	iss := w.Issuer()
	ctx := context.Background()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	fn := mustID(identity.FunctionID(td, "acme", "hello"))

	for _, tc := range []struct {
		name string
		id   spiffeid.ID
	}{
		{"worker", mustID(identity.WorkerID(td, "dev-1"))},
		{"gateway", mustID(identity.GatewayID(td, "cp"))},
		{"user", mustID(identity.UserID(td, "admin"))},
		{"other trust domain", mustID(identity.FunctionID(spiffeid.RequireTrustDomainFromString("evil.example"), "acme", "hello"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := iss.MintX509SVID(ctx, ca.X509Params{ID: tc.id, PublicKey: key.Public()})
			if status.Code(err) != codes.PermissionDenied {
				t.Errorf("x509: got %v, want PermissionDenied", err)
			}
			_, err = iss.MintJWTSVID(ctx, ca.JWTParams{ID: tc.id, Audience: []string{"a"}})
			if status.Code(err) != codes.PermissionDenied {
				t.Errorf("jwt: got %v, want PermissionDenied", err)
			}
		})
	}

	// A function ID is signed, and lives no longer than the worker SVID.
	s, err := iss.MintX509SVID(ctx, ca.X509Params{ID: fn, PublicKey: key.Public()})
	if err != nil {
		t.Fatalf("mint: %v", err)
	}
	if s.ID != fn || s.Certificates[0].NotAfter.After(ws.Certificates[0].NotAfter) {
		t.Errorf("got %v until %v, want %v until at most %v", s.ID, s.Certificates[0].NotAfter, fn, ws.Certificates[0].NotAfter)
	}
	jwt, err := iss.MintJWTSVID(ctx, ca.JWTParams{ID: fn, Audience: []string{"billing"}, Instance: "i-1"})
	if err != nil {
		t.Fatalf("mint jwt: %v", err)
	}
	v, err := iss.ValidateJWTSVID(jwt.Token, "billing")
	if err != nil || v.ID != fn || v.Claims["x-zfaas-instance"] != "i-1" {
		t.Errorf("validate: got %+v, %v", v, err)
	}
	if _, err := iss.ValidateJWTSVID(jwt.Token, "other"); !errors.Is(err, ca.ErrJWTAudience) {
		t.Errorf("validate with another audience: got %v, want ErrJWTAudience", err)
	}

	// A CSR works too; a CSR and a key together do not.
	raw := e.client(t, ws)
	pkix, _ := x509.MarshalPKIXPublicKey(key.Public())
	if _, err := raw.MintX509SVID(ctx, &zfaasv1.MintX509SVIDRequest{SpiffeId: fn.String(), Csr: newCSR(t)}); err != nil {
		t.Errorf("mint with csr: %v", err)
	}
	if _, err := raw.MintX509SVID(ctx, &zfaasv1.MintX509SVIDRequest{SpiffeId: fn.String(), Csr: newCSR(t), PublicKey: pkix}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("got %v, want InvalidArgument", err)
	}
	// Without a worker SVID: Unauthenticated; with a non-worker SVID:
	// PermissionDenied.
	if _, err := e.client(t, nil).MintX509SVID(ctx, &zfaasv1.MintX509SVIDRequest{SpiffeId: fn.String(), PublicKey: pkix}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("got %v, want Unauthenticated", err)
	}
	gw := mintSVID(t, e.ca, mustID(identity.GatewayID(td, "cp")))
	if _, err := e.client(t, gw).MintX509SVID(ctx, &zfaasv1.MintX509SVIDRequest{SpiffeId: fn.String(), PublicKey: pkix}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("got %v, want PermissionDenied", err)
	}

	// Bundles streams; a revocation ends the stream and refuses mints.
	stream, err := raw.Bundles(ctx, &zfaasv1.BundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := stream.Recv()
	if err != nil || b.GetTrustDomain() != td.Name() || len(b.GetX509Authorities()) == 0 || len(b.GetJwtAuthorities()) == 0 {
		t.Fatalf("bundles: got %v, %v", b, err)
	}
	if err := e.srv.Revoke(ctx, "dev-1", []string{"drained by operator"}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Errorf("bundles after revoke: got %v, want PermissionDenied", err)
	}
	if _, err := iss.MintX509SVID(ctx, ca.X509Params{ID: fn, PublicKey: key.Public()}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("mint after revoke: got %v, want PermissionDenied", err)
	}
	if err := w.Renew(ctx); !errors.Is(err, nodeclient.ErrRefused) {
		t.Errorf("renew after revoke: got %v, want ErrRefused", err)
	}
	if _, _, revoked := e.events.snapshot(); len(revoked["dev-1"]) == 0 {
		t.Error("got no Revoked event")
	}
}
