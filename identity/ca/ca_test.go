package ca_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/zfaas/zfaas/identity"
	"github.com/zfaas/zfaas/identity/ca"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

var td = spiffeid.RequireTrustDomainFromString("zfaas.local")

func newCA(t *testing.T, dir string, clk *fakeClock, mod func(*ca.Config)) *ca.CA {
	t.Helper()
	cfg := ca.Config{TrustDomain: td, Dir: dir, Clock: clk.Now}
	if mod != nil {
		mod(&cfg)
	}
	c, err := ca.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("ca.New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func fnID(t *testing.T, tenant, name string) spiffeid.ID {
	t.Helper()
	id, err := identity.FunctionID(td, tenant, name)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

var (
	oidKeyUsage         = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
)

// checkX509SVID is the conformance check, written from the SPIFFE X509-SVID
// specification (sections 2-5): one URI SAN holding the SPIFFE ID, a leaf
// that is not a CA, a critical key usage with digitalSignature and without
// keyCertSign/cRLSign, and a validity inside the signing CA's.
func checkX509SVID(t *testing.T, leaf, issuer *x509.Certificate, want spiffeid.ID) {
	t.Helper()
	if n := len(leaf.URIs); n != 1 {
		t.Fatalf("URI SANs: got %d, want 1", n)
	}
	if got := leaf.URIs[0].String(); got != want.String() {
		t.Errorf("URI SAN: got %s, want %s", got, want)
	}
	if len(leaf.DNSNames)+len(leaf.EmailAddresses)+len(leaf.IPAddresses) != 0 {
		t.Errorf("unexpected non-URI SANs")
	}
	if !leaf.BasicConstraintsValid || leaf.IsCA {
		t.Errorf("basic constraints: valid=%v isCA=%v, want valid and not CA", leaf.BasicConstraintsValid, leaf.IsCA)
	}
	var kuCritical, kuPresent bool
	for _, e := range leaf.Extensions {
		if e.Id.Equal(oidKeyUsage) {
			kuPresent, kuCritical = true, e.Critical
		}
	}
	if !kuPresent || !kuCritical {
		t.Errorf("key usage: present=%v critical=%v, want both", kuPresent, kuCritical)
	}
	if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		t.Errorf("key usage %b lacks digitalSignature", leaf.KeyUsage)
	}
	if leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0 {
		t.Errorf("key usage %b has keyCertSign or cRLSign", leaf.KeyUsage)
	}
	var server, client bool
	for _, u := range leaf.ExtKeyUsage {
		server = server || u == x509.ExtKeyUsageServerAuth
		client = client || u == x509.ExtKeyUsageClientAuth
	}
	if !server || !client {
		t.Errorf("EKU: serverAuth=%v clientAuth=%v, want both", server, client)
	}
	if leaf.NotBefore.Before(issuer.NotBefore) || leaf.NotAfter.After(issuer.NotAfter) {
		t.Errorf("validity %v..%v outside CA validity %v..%v", leaf.NotBefore, leaf.NotAfter, issuer.NotBefore, issuer.NotAfter)
	}
	if !leaf.NotAfter.After(leaf.NotBefore) {
		t.Errorf("empty validity %v..%v", leaf.NotBefore, leaf.NotAfter)
	}
	if err := leaf.CheckSignatureFrom(issuer); err != nil {
		t.Errorf("signature: %v", err)
	}
	// Signing certificates: CA flag, keyCertSign, URI SAN of the trust domain.
	if !issuer.IsCA || issuer.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("issuer: isCA=%v usage=%b, want CA with keyCertSign", issuer.IsCA, issuer.KeyUsage)
	}
	for _, e := range issuer.Extensions {
		if (e.Id.Equal(oidKeyUsage) || e.Id.Equal(oidBasicConstraints)) && !e.Critical {
			t.Errorf("issuer extension %v not critical", e.Id)
		}
	}
}

func TestX509SVIDConformance(t *testing.T) {
	clk := &fakeClock{t: time.Now()}
	c := newCA(t, t.TempDir(), clk, nil)
	id := fnID(t, "acme", "hello")
	roots := c.X509Bundle().X509Authorities()
	if len(roots) != 1 {
		t.Fatalf("bundle: got %d authorities, want 1", len(roots))
	}
	serials := map[string]bool{}
	for i := range 20 {
		k := newKey(t)
		svid, err := c.MintX509SVID(context.Background(), ca.X509Params{ID: id, PublicKey: k.Public()})
		if err != nil {
			t.Fatal(err)
		}
		leaf := svid.Certificates[0]
		checkX509SVID(t, leaf, roots[0], id)
		if s := leaf.SerialNumber.String(); serials[s] {
			t.Fatalf("serial %s repeated at %d", s, i)
		} else {
			serials[s] = true
		}
		if got, want := leaf.NotAfter.Sub(clk.Now()), ca.DefaultX509TTL; got > want || got < want-time.Second {
			t.Errorf("ttl: got %v, want %v", got, want)
		}
		// go-spiffe's own parser agrees, and the chain verifies.
		if _, err := x509svid.ParseRaw(leaf.Raw, mustPKCS8(t, k)); err != nil {
			t.Errorf("x509svid.ParseRaw: %v", err)
		}
		if _, _, err := x509svid.Verify(svid.Certificates, c.X509Bundle(), x509svid.WithTime(clk.Now())); err != nil {
			t.Errorf("x509svid.Verify: %v", err)
		}
	}
}

func mustPKCS8(t *testing.T, k *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestMintRejects(t *testing.T) {
	clk := &fakeClock{t: time.Now()}
	c := newCA(t, t.TempDir(), clk, nil)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	other := spiffeid.RequireFromString("spiffe://evil.example/ns/acme/fn/hello")
	good := fnID(t, "acme", "hello")
	pub := newKey(t).Public()
	tests := []struct {
		name string
		p    ca.X509Params
		want error
	}{
		{"other trust domain", ca.X509Params{ID: other, PublicKey: pub}, ca.ErrWrongTrustDomain},
		{"trust domain id", ca.X509Params{ID: td.ID(), PublicKey: pub}, ca.ErrWrongTrustDomain},
		{"zero id", ca.X509Params{PublicKey: pub}, ca.ErrWrongTrustDomain},
		{"rsa key", ca.X509Params{ID: good, PublicKey: rsaKey.Public()}, ca.ErrUnsupportedKey},
		{"ttl too long", ca.X509Params{ID: good, PublicKey: pub, TTL: 48 * time.Hour}, ca.ErrTTL},
		{"negative ttl", ca.X509Params{ID: good, PublicKey: pub, TTL: -time.Second}, ca.ErrTTL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := c.MintX509SVID(context.Background(), tt.p); !errors.Is(err, tt.want) {
				t.Errorf("got %v, want %v", err, tt.want)
			}
		})
	}
	if _, err := c.MintJWTSVID(context.Background(), ca.JWTParams{ID: good}); err == nil {
		t.Error("jwt without audience: got nil error")
	}
	if _, err := c.MintJWTSVID(context.Background(), ca.JWTParams{ID: other, Audience: []string{"a"}}); !errors.Is(err, ca.ErrWrongTrustDomain) {
		t.Errorf("jwt other td: got %v, want %v", err, ca.ErrWrongTrustDomain)
	}
}

func TestJWTSVID(t *testing.T) {
	ctx := context.Background()
	id := fnID(t, "acme", "hello")

	t.Run("go-spiffe validates", func(t *testing.T) {
		clk := &fakeClock{t: time.Now()}
		c := newCA(t, t.TempDir(), clk, nil)
		svid, err := c.MintJWTSVID(ctx, ca.JWTParams{ID: id, Audience: []string{"gateway", "other"}, Instance: "i-1"})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := svid.Expiry.Sub(clk.Now()), ca.DefaultJWTTTL; got > want || got < want-time.Second {
			t.Errorf("ttl: got %v, want %v", got, want)
		}
		got, err := jwtsvid.ParseAndValidate(svid.Token, c.JWTBundle(), []string{"gateway"})
		if err != nil {
			t.Fatalf("ParseAndValidate: %v", err)
		}
		if got.ID != id {
			t.Errorf("sub: got %s, want %s", got.ID, id)
		}
		if got.Claims[ca.InstanceClaim] != "i-1" {
			t.Errorf("instance claim: got %v, want i-1", got.Claims[ca.InstanceClaim])
		}
		if _, err := jwtsvid.ParseAndValidate(svid.Token, c.JWTBundle(), []string{"nobody"}); err == nil {
			t.Error("wrong audience: got nil error")
		}
		// A foreign CA's bundle must not validate it.
		c2 := newCA(t, t.TempDir(), clk, nil)
		if _, err := jwtsvid.ParseAndValidate(svid.Token, c2.JWTBundle(), []string{"gateway"}); err == nil {
			t.Error("foreign bundle: got nil error")
		}
		v, err := c.ValidateJWTSVID(svid.Token, "other")
		if err != nil || v.ID != id || v.Claims["sub"] != id.String() {
			t.Errorf("ValidateJWTSVID: got %+v, %v", v, err)
		}
	})

	t.Run("expired by real time", func(t *testing.T) {
		clk := &fakeClock{t: time.Now().Add(-time.Hour)}
		c := newCA(t, t.TempDir(), clk, nil)
		svid, err := c.MintJWTSVID(ctx, ca.JWTParams{ID: id, Audience: []string{"gateway"}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := jwtsvid.ParseAndValidate(svid.Token, c.JWTBundle(), []string{"gateway"}); err == nil || !strings.Contains(err.Error(), "expired") {
			t.Errorf("got %v, want expired", err)
		}
	})

	t.Run("ValidateJWTSVID by fake clock", func(t *testing.T) {
		clk := &fakeClock{t: time.Now()}
		c := newCA(t, t.TempDir(), clk, nil)
		svid, err := c.MintJWTSVID(ctx, ca.JWTParams{ID: id, Audience: []string{"gateway"}, TTL: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		parts := strings.Split(svid.Token, ".")
		tampered := parts[0] + "." + parts[1] + "." + strings.Repeat("A", len(parts[2]))
		noneAlg := "eyJhbGciOiJub25lIn0." + parts[1] + "."
		tests := []struct {
			name, token, aud string
			advance          time.Duration
			want             error
		}{
			{"ok", svid.Token, "gateway", 0, nil},
			{"wrong audience", svid.Token, "nobody", 0, ca.ErrJWTAudience},
			{"bad signature", tampered, "gateway", 0, ca.ErrInvalidJWT},
			{"alg none", noneAlg, "gateway", 0, ca.ErrInvalidJWT},
			{"garbage", "a.b", "gateway", 0, ca.ErrInvalidJWT},
			{"too large", strings.Repeat("a", ca.MaxJWTSize+1), "gateway", 0, ca.ErrInvalidJWT},
			{"expired", svid.Token, "gateway", time.Minute, ca.ErrJWTExpired},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				clk.Add(tt.advance)
				_, err := c.ValidateJWTSVID(tt.token, tt.aud)
				if !errors.Is(err, tt.want) {
					t.Errorf("got %v, want %v", err, tt.want)
				}
			})
		}
	})
}

func TestKeyFilesArePrivate(t *testing.T) {
	dir := t.TempDir()
	clk := &fakeClock{t: time.Now()}
	newCA(t, dir, clk, nil)
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		want := fs.FileMode(0o600)
		if d.IsDir() {
			want = 0o700
		}
		if p == dir {
			return nil
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: got mode %v, want %v", p, got, want)
		}
		if strings.HasSuffix(p, ".key") {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("key files: got %d, want 2 (x509 + jwt)", n)
	}
}

func TestDiskKeyStore(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "keys")
	ks, err := ca.NewDiskKeyStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	k, err := ks.GenerateKey(ctx, "x509-1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ks.GenerateKey(ctx, "x509-1"); err == nil {
		t.Error("overwrite: got nil error")
	}
	got, err := ks.LoadKey(ctx, "x509-1")
	if err != nil {
		t.Fatal(err)
	}
	if !k.Public().(*ecdsa.PublicKey).Equal(got.Public()) {
		t.Error("loaded key differs")
	}
	for _, name := range []string{"../x", "a/b", "", "UPPER", ".hidden"} {
		if _, err := ks.GenerateKey(ctx, name); !errors.Is(err, ca.ErrKeyName) {
			t.Errorf("name %q: got %v, want %v", name, err, ca.ErrKeyName)
		}
	}
	if _, err := ks.LoadKey(ctx, "missing"); !errors.Is(err, ca.ErrKeyNotFound) {
		t.Errorf("missing: got %v, want %v", err, ca.ErrKeyNotFound)
	}
	if err := os.Chmod(filepath.Join(dir, "x509-1.key"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.LoadKey(ctx, "x509-1"); !errors.Is(err, ca.ErrKeyPermissions) {
		t.Errorf("0644 key: got %v, want %v", err, ca.ErrKeyPermissions)
	}
	if err := ks.DeleteKey(ctx, "x509-1"); err != nil {
		t.Fatal(err)
	}
}

func TestRotation(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Now()}
	dir := t.TempDir()
	c := newCA(t, dir, clk, func(cfg *ca.Config) { cfg.CATTL = time.Hour; cfg.X509TTL = 10 * time.Minute })
	id := fnID(t, "acme", "hello")
	pub := newKey(t).Public()
	issuerOf := func() *x509.Certificate {
		t.Helper()
		svid, err := c.MintX509SVID(ctx, ca.X509Params{ID: id, PublicKey: pub})
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range c.X509Bundle().X509Authorities() {
			if svid.Certificates[0].CheckSignatureFrom(a) == nil {
				checkX509SVID(t, svid.Certificates[0], a, id)
				return a
			}
		}
		t.Fatal("svid not signed by any bundle authority")
		return nil
	}
	first := issuerOf()
	gen0 := c.Bundles().Generation
	changed := c.Changed()

	// Half life: the successor is published but does not sign yet.
	clk.Add(31 * time.Minute)
	if err := c.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	default:
		t.Error("Changed not closed after publishing successor")
	}
	b := c.Bundles()
	if n := len(b.X509.X509Authorities()); n != 2 {
		t.Fatalf("x509 authorities after prepare: got %d, want 2", n)
	}
	if n := len(b.JWT.JWTAuthorities()); n != 2 {
		t.Fatalf("jwt authorities after prepare: got %d, want 2", n)
	}
	if b.Generation == gen0 {
		t.Error("generation did not change")
	}
	if got := issuerOf(); !got.Equal(first) {
		t.Error("successor signs before activation")
	}

	// Restart keeps the state.
	c2 := newCA(t, dir, clk, func(cfg *ca.Config) { cfg.CATTL = time.Hour; cfg.X509TTL = 10 * time.Minute })
	if !c2.X509Bundle().Equal(c.X509Bundle()) || !c2.JWTBundle().Equal(c.JWTBundle()) {
		t.Error("bundles differ after restart")
	}

	// Two thirds: the successor signs, the old one stays published.
	clk.Add(10 * time.Minute)
	if err := c.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	second := issuerOf()
	if second.Equal(first) {
		t.Error("successor not active at two thirds")
	}
	if n := len(c.X509Bundle().X509Authorities()); n != 2 {
		t.Errorf("authorities after activation: got %d, want 2", n)
	}
	// An SVID from the old authority would be clipped to its expiry;
	// after that expiry it is dropped.
	clk.Add(20 * time.Minute)
	if err := c.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	// (By now the successor is itself past half life, so it has a
	// successor of its own.)
	auths := c.X509Bundle().X509Authorities()
	var hasFirst, hasSecond bool
	for _, a := range auths {
		hasFirst = hasFirst || a.Equal(first)
		hasSecond = hasSecond || a.Equal(second)
	}
	if hasFirst || !hasSecond {
		t.Errorf("after old expiry: first published=%v second published=%v, want false, true", hasFirst, hasSecond)
	}
	if got, want := len(c.JWTBundle().JWTAuthorities()), len(auths); got != want {
		t.Errorf("jwt authorities after old expiry: got %d, want %d", got, want)
	}
	keys, _ := filepath.Glob(filepath.Join(dir, "keys", "*.key"))
	if got, want := len(keys), 2*len(auths); got != want {
		t.Errorf("key files after expiry: got %d, want %d (old keys deleted)", got, want)
	}
}

func TestConfigValidation(t *testing.T) {
	clk := &fakeClock{t: time.Now()}
	for _, cfg := range []ca.Config{
		{Dir: t.TempDir()},
		{TrustDomain: td},
		{TrustDomain: td, Dir: t.TempDir(), CATTL: time.Hour, X509TTL: time.Hour},
	} {
		cfg.Clock = clk.Now
		if c, err := ca.New(context.Background(), cfg); err == nil {
			c.Close()
			t.Errorf("config %+v: got nil error", cfg)
		}
	}
}

// TestTrustDomainIsFixed: a CA directory of one trust domain cannot be
// reopened for another, which would sign IDs of the new domain with the
// old domain's authority.
func TestTrustDomainIsFixed(t *testing.T) {
	dir := t.TempDir()
	c, err := ca.New(context.Background(), ca.Config{TrustDomain: spiffeid.RequireTrustDomainFromString("one.test"), Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	_, err = ca.New(context.Background(), ca.Config{TrustDomain: spiffeid.RequireTrustDomainFromString("two.test"), Dir: dir})
	if !errors.Is(err, ca.ErrTrustDomain) {
		t.Fatalf("reopened for another trust domain: %v, want ErrTrustDomain", err)
	}
	c, err = ca.New(context.Background(), ca.Config{TrustDomain: spiffeid.RequireTrustDomainFromString("one.test"), Dir: dir})
	if err != nil {
		t.Fatalf("reopen for its own trust domain: %v", err)
	}
	c.Close()
}
