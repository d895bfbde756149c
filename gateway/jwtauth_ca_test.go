package gateway

import (
	"context"
	"errors"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zfaas/zfaas/identity/ca"
)

type caVerifier struct{ c *ca.CA }

func (v caVerifier) VerifyJWTSVID(token, audience string) (string, error) {
	got, err := v.c.ValidateJWTSVID(token, audience)
	if err != nil {
		return "", err
	}
	return got.ID.String(), nil
}

type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newCA(t *testing.T, td string, clock func() time.Time) *ca.CA {
	t.Helper()
	c, err := ca.New(context.Background(), ca.Config{TrustDomain: spiffeid.RequireTrustDomainFromString(td), Dir: t.TempDir(), Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestBearerJWTRefusals: the gateway's bearer authentication with the real
// CA refuses a token for another audience, an expired token and a token
// from another trust domain, each with ErrUnauthenticated (401).
func TestBearerJWTRefusals(t *testing.T) {
	clock := &testClock{t: time.Now()}
	ours := newCA(t, "zfaas.local", clock.Now)
	theirs := newCA(t, "other.test", clock.Now)
	const aud = "spiffe://zfaas.local/gateway/local"
	mint := func(c *ca.CA, id string, audience ...string) string {
		t.Helper()
		j, err := c.MintJWTSVID(context.Background(), ca.JWTParams{ID: spiffeid.RequireFromString(id), Audience: audience})
		if err != nil {
			t.Fatal(err)
		}
		return j.Token
	}
	b := BearerJWT{Verifier: caVerifier{ours}, Audience: aud}
	auth := func(token string) (Caller, error) {
		r := httptest.NewRequest("POST", "/v1/functions/x/invoke", nil)
		r.Header.Set("Authorization", "Bearer "+token)
		return b.Authenticate(r)
	}
	good := mint(ours, "spiffe://zfaas.local/ns/acme/fn/billing", aud)
	if c, err := auth(good); err != nil || c.SPIFFEID != "spiffe://zfaas.local/ns/acme/fn/billing" || c.AuthMethod != "jwt" {
		t.Fatalf("valid token: %+v %v", c, err)
	}
	refused := map[string]string{
		"wrong audience":     mint(ours, "spiffe://zfaas.local/ns/acme/fn/billing", "spiffe://zfaas.local/gateway/other"),
		"other trust domain": mint(theirs, "spiffe://other.test/ns/acme/fn/billing", aud),
		"not a JWT":          "not-a-token",
	}
	for name, token := range refused {
		if c, err := auth(token); !errors.Is(err, ErrUnauthenticated) || c != Anonymous {
			t.Errorf("%s: got %+v %v, want ErrUnauthenticated", name, c, err)
		}
	}
	clock.Add(6 * time.Minute) // JWT-SVIDs live 5 minutes
	if _, err := auth(good); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("expired token: got %v, want ErrUnauthenticated", err)
	}
}
