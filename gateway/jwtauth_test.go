package gateway

import (
	"context"
	"errors"
	"net/http/httptest"
	"testing"

	"google.golang.org/grpc/metadata"
)

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
		Next:     LocalAdmin{ID: "spiffe://zfaas.local/user/admin"},
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
		{"no token goes to next", "", CallerFromID("spiffe://zfaas.local/user/admin", "local"), false},
		{"other scheme goes to next", "Basic eDp5", CallerFromID("spiffe://zfaas.local/user/admin", "local"), false},
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
