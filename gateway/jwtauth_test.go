package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// fixedCaller authenticates every request as one caller.
type fixedCaller Caller

func (f fixedCaller) Authenticate(*http.Request) (Caller, error) { return Caller(f), nil }

type fakeVerifier map[string]string // token → SPIFFE ID, for audience "aud"

func (f fakeVerifier) VerifyJWTSVID(token, audience string) (string, error) {
	id, ok := f[token]
	if !ok || audience != "aud" {
		return "", errors.New("bad token")
	}
	return id, nil
}

func TestBearerJWT(t *testing.T) {
	b := BearerJWT{
		Verifier: fakeVerifier{"good": "spiffe://zfaas.local/ns/acme/fn/billing"},
		Audience: "aud",
		Next:     fixedCaller(CallerFromID("spiffe://zfaas.local/user/admin", "x509")),
	}
	tests := []struct {
		name    string
		header  string
		want    Caller
		wantErr bool
	}{
		{"valid token", "Bearer good", CallerFromID("spiffe://zfaas.local/ns/acme/fn/billing", "jwt"), false},
		{"scheme is case-insensitive", "bearer good", CallerFromID("spiffe://zfaas.local/ns/acme/fn/billing", "jwt"), false},
		{"bad token never falls back", "Bearer forged", Anonymous, true},
		{"no token goes to next", "", CallerFromID("spiffe://zfaas.local/user/admin", "x509"), false},
		{"other scheme goes to next", "Basic eDp5", CallerFromID("spiffe://zfaas.local/user/admin", "x509"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/", nil)
			if tt.header != "" {
				r.Header.Set("Authorization", tt.header)
			}
			got, err := b.Authenticate(r)
			if (err != nil) != tt.wantErr || (err != nil && !errors.Is(err, ErrUnauthenticated)) {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer good"))
	if c, err := b.AuthenticateContext(ctx); err != nil || c.Kind != "function" || c.Tenant != "acme" {
		t.Fatalf("gRPC bearer: %+v %v", c, err)
	}
	ctx = metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer forged"))
	if _, err := b.AuthenticateContext(ctx); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("gRPC forged bearer: got %v", err)
	}
}

// TestTLSPeer: only TLS requests are served; without a client SVID the
// caller needs a valid bearer token, and gets ErrUnauthenticated without.
func TestTLSPeer(t *testing.T) {
	a := TLSPeer{Bearer: BearerJWT{Verifier: fakeVerifier{"good": "spiffe://zfaas.local/ns/acme/fn/billing"}, Audience: "aud"}}
	r := httptest.NewRequest("GET", "/", nil)
	if _, err := a.Authenticate(r); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("plain HTTP: got %v, want ErrUnauthenticated", err)
	}
	r.TLS = &tls.ConnectionState{Version: tls.VersionTLS13}
	if _, err := a.Authenticate(r); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("TLS without credentials: got %v, want ErrUnauthenticated", err)
	}
	r.Header.Set("Authorization", "Bearer good")
	if c, err := a.Authenticate(r); err != nil || c.AuthMethod != "jwt" || c.Name != "billing" {
		t.Fatalf("TLS with bearer: %+v %v", c, err)
	}
	// gRPC: the peer must have come over TLS.
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer good"))
	if _, err := a.AuthenticateContext(ctx); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("gRPC without a peer: got %v", err)
	}
	tctx := peer.NewContext(ctx, &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{Version: tls.VersionTLS13}}})
	if c, err := a.AuthenticateContext(tctx); err != nil || c.AuthMethod != "jwt" {
		t.Fatalf("gRPC over TLS with bearer: %+v %v", c, err)
	}
	bare := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{}})
	if _, err := a.AuthenticateContext(bare); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("gRPC over TLS without credentials: got %v", err)
	}
	if p, s := TLSState(&tls.ConnectionState{Version: tls.VersionTLS13, CipherSuite: tls.TLS_AES_128_GCM_SHA256}); p != "TLSv1.3" || s != "TLS_AES_128_GCM_SHA256" {
		t.Fatalf("TLSState: %s %s", p, s)
	}
}
