package ca_test

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/zfaas/zfaas/identity/ca"
)

func gmCA(cfg *ca.Config) { cfg.Suite = ca.SuiteGM }

func newSM2Key(t *testing.T) *sm2.PrivateKey {
	t.Helper()
	k, err := sm2.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// checkSM2Authority: a self-signed SM2 CA of the trust domain, SM2-with-SM3,
// critical basic constraints (CA, path length 0) and key usage
// (keyCertSign, cRLSign).
func checkSM2Authority(t *testing.T, a *smx509.Certificate) {
	t.Helper()
	if a.SignatureAlgorithm != smx509.SM2WithSM3 {
		t.Errorf("authority signature algorithm: got %v, want SM2-SM3", a.SignatureAlgorithm)
	}
	if err := a.CheckSignatureFrom(a); err != nil {
		t.Errorf("authority not self-signed: %v", err)
	}
	if !a.IsCA || !a.BasicConstraintsValid || a.MaxPathLen != 0 || !a.MaxPathLenZero {
		t.Errorf("authority basic constraints: isCA=%v pathlen=%d zero=%v", a.IsCA, a.MaxPathLen, a.MaxPathLenZero)
	}
	if a.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("authority key usage: got %b, want keyCertSign|cRLSign", a.KeyUsage)
	}
	for _, e := range a.Extensions {
		if (e.Id.Equal(oidKeyUsage) || e.Id.Equal(oidBasicConstraints)) && !e.Critical {
			t.Errorf("authority extension %v not critical", e.Id)
		}
	}
	if len(a.URIs) != 1 || a.URIs[0].String() != td.ID().String() {
		t.Errorf("authority URI SANs: got %v, want [%s]", a.URIs, td.ID())
	}
}

// checkGMCert is the conformance check of one certificate of a GM double
// SVID, written from the SPIFFE X509-SVID specification (one URI SAN, leaf
// not a CA, critical key usage) and GB/T 38636 (separate signing and
// encryption keys: the signing certificate has digitalSignature only, the
// encryption certificate keyEncipherment, dataEncipherment and keyAgreement
// and not digitalSignature).
func checkGMCert(t *testing.T, leaf, issuer *smx509.Certificate, want spiffeid.ID, usage x509.KeyUsage, key *sm2.PrivateKey) {
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
	var kuPresent, kuCritical bool
	for _, e := range leaf.Extensions {
		if e.Id.Equal(oidKeyUsage) {
			kuPresent, kuCritical = true, e.Critical
		}
	}
	if !kuPresent || !kuCritical {
		t.Errorf("key usage: present=%v critical=%v, want both", kuPresent, kuCritical)
	}
	if leaf.KeyUsage != usage {
		t.Errorf("key usage: got %b, want %b", leaf.KeyUsage, usage)
	}
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) || !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		t.Errorf("EKU: got %v, want serverAuth and clientAuth", leaf.ExtKeyUsage)
	}
	if leaf.NotBefore.Before(issuer.NotBefore) || leaf.NotAfter.After(issuer.NotAfter) || !leaf.NotAfter.After(leaf.NotBefore) {
		t.Errorf("validity %v..%v, authority %v..%v", leaf.NotBefore, leaf.NotAfter, issuer.NotBefore, issuer.NotAfter)
	}
	if leaf.SignatureAlgorithm != smx509.SM2WithSM3 {
		t.Errorf("signature algorithm: got %v, want SM2-SM3", leaf.SignatureAlgorithm)
	}
	if err := leaf.CheckSignatureFrom(issuer); err != nil {
		t.Errorf("signature does not verify against the sm2 authority: %v", err)
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		t.Errorf("certified key differs from the requested one")
	}
}

func TestGMSVIDConformance(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Now()}
	c := newCA(t, t.TempDir(), clk, gmCA)
	if c.Suite() != ca.SuiteGM {
		t.Fatalf("suite: got %q, want gm", c.Suite())
	}
	roots := c.GMBundle()
	if len(roots) != 1 {
		t.Fatalf("gm bundle: got %d authorities, want 1", len(roots))
	}
	checkSM2Authority(t, roots[0])
	ecRoots := c.X509Bundle().X509Authorities()
	if len(ecRoots) != 1 {
		t.Fatalf("x509 bundle: got %d authorities, want 1", len(ecRoots))
	}
	if !roots[0].NotAfter.Equal(ecRoots[0].NotAfter) {
		t.Errorf("sm2 authority expires %v, its ecdsa partner %v", roots[0].NotAfter, ecRoots[0].NotAfter)
	}
	pool := smx509.NewCertPool()
	pool.AddCert(roots[0])

	id := fnID(t, "acme", "hello")
	serials := map[string]bool{}
	for range 5 {
		sk, ek := newSM2Key(t), newSM2Key(t)
		svid, err := c.MintGMSVID(ctx, ca.GMParams{ID: id, SignKey: sk.Public(), EncKey: ek.Public()})
		if err != nil {
			t.Fatal(err)
		}
		if svid.ID != id || len(svid.Sign) != 1 || len(svid.Enc) != 1 {
			t.Fatalf("gm svid: id %s, %d sign and %d enc certificates", svid.ID, len(svid.Sign), len(svid.Enc))
		}
		sign, enc := svid.Sign[0], svid.Enc[0]
		checkGMCert(t, sign, roots[0], id, x509.KeyUsageDigitalSignature, sk)
		checkGMCert(t, enc, roots[0], id, x509.KeyUsageKeyEncipherment|x509.KeyUsageDataEncipherment|x509.KeyUsageKeyAgreement, ek)
		if !sign.NotBefore.Equal(enc.NotBefore) || !sign.NotAfter.Equal(enc.NotAfter) {
			t.Errorf("sign %v..%v and enc %v..%v validities differ", sign.NotBefore, sign.NotAfter, enc.NotBefore, enc.NotAfter)
		}
		if got, want := sign.NotAfter.Sub(clk.Now()), ca.DefaultX509TTL; got > want || got < want-time.Second {
			t.Errorf("ttl: got %v, want %v", got, want)
		}
		for _, cert := range []*smx509.Certificate{sign, enc} {
			s := cert.SerialNumber.String()
			if serials[s] {
				t.Fatalf("serial %s repeated", s)
			}
			serials[s] = true
			if _, err := cert.Verify(smx509.VerifyOptions{Roots: pool, CurrentTime: clk.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("chain: %v", err)
			}
		}
		// The signing certificate is an X509-SVID to go-spiffe's reader.
		if got, err := x509svid.IDFromCert(sign.ToX509()); err != nil || got != id {
			t.Errorf("IDFromCert(sign): %v, %v", got, err)
		}
	}

	// The standard side is unchanged under the gm suite.
	k := newKey(t)
	svid, err := c.MintX509SVID(ctx, ca.X509Params{ID: id, PublicKey: k.Public()})
	if err != nil {
		t.Fatal(err)
	}
	checkX509SVID(t, svid.Certificates[0], ecRoots[0], id)
}

func TestGMMintRejects(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Now()}
	std := newCA(t, t.TempDir(), clk, nil)
	gm := newCA(t, t.TempDir(), clk, gmCA)
	id := fnID(t, "acme", "hello")
	sk, ek := newSM2Key(t).Public(), newSM2Key(t).Public()
	tests := []struct {
		name string
		c    *ca.CA
		p    ca.GMParams
		want error
	}{
		{"standard suite", std, ca.GMParams{ID: id, SignKey: sk, EncKey: ek}, ca.ErrGMDisabled},
		{"other trust domain", gm, ca.GMParams{ID: spiffeid.RequireFromString("spiffe://evil.example/ns/acme/fn/hello"), SignKey: sk, EncKey: ek}, ca.ErrWrongTrustDomain},
		{"trust domain id", gm, ca.GMParams{ID: td.ID(), SignKey: sk, EncKey: ek}, ca.ErrWrongTrustDomain},
		{"p-256 signing key", gm, ca.GMParams{ID: id, SignKey: newKey(t).Public(), EncKey: ek}, ca.ErrUnsupportedKey},
		{"p-256 encryption key", gm, ca.GMParams{ID: id, SignKey: sk, EncKey: newKey(t).Public()}, ca.ErrUnsupportedKey},
		{"no encryption key", gm, ca.GMParams{ID: id, SignKey: sk}, ca.ErrUnsupportedKey},
		{"same key twice", gm, ca.GMParams{ID: id, SignKey: sk, EncKey: sk}, ca.ErrUnsupportedKey},
		{"ttl too long", gm, ca.GMParams{ID: id, SignKey: sk, EncKey: ek, TTL: ca.DefaultCATTL}, ca.ErrTTL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.c.MintGMSVID(ctx, tt.p)
			if !errors.Is(err, tt.want) {
				t.Errorf("got %v, want %v", err, tt.want)
			}
		})
	}
	if b := std.Bundles(); b.GM != nil || std.GMBundle() != nil {
		t.Errorf("standard suite publishes sm2 authorities: %d", len(b.GM))
	}
}

func TestGMConfig(t *testing.T) {
	if _, err := ca.New(context.Background(), ca.Config{TrustDomain: td, Dir: t.TempDir(), Suite: "rsa"}); err == nil {
		t.Error("unknown suite: got nil error")
	}
	ks, err := ca.NewDiskKeyStore(filepath.Join(t.TempDir(), "keys"))
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	_, err = ca.New(context.Background(), ca.Config{TrustDomain: td, Dir: t.TempDir(), Suite: ca.SuiteGM, KeyStore: ecdsaOnly{ks}})
	if err == nil || !strings.Contains(err.Error(), "sm2") {
		t.Errorf("gm suite with an ecdsa-only key store: got %v, want an sm2 error", err)
	}
}

// ecdsaOnly hides GenerateSM2Key.
type ecdsaOnly struct{ ca.KeyStore }

func TestDiskKeyStoreSM2(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "keys")
	ks, err := ca.NewDiskKeyStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	k, err := ks.GenerateSM2Key(ctx, "sm2-1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ks.GenerateSM2Key(ctx, "sm2-1"); err == nil {
		t.Error("overwrite: got nil error")
	}
	if _, err := ks.GenerateSM2Key(ctx, "../x"); !errors.Is(err, ca.ErrKeyName) {
		t.Errorf("bad name: got %v, want %v", err, ca.ErrKeyName)
	}
	fi, err := os.Stat(filepath.Join(dir, "sm2-1.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("sm2 key file: %v, %v; want mode 0600", fi, err)
	}
	got, err := ks.LoadKey(ctx, "sm2-1")
	if err != nil {
		t.Fatal(err)
	}
	sk, ok := got.(*sm2.PrivateKey)
	if !ok {
		t.Fatalf("loaded %T, want *sm2.PrivateKey", got)
	}
	if !sk.PublicKey.Equal(k.Public()) {
		t.Error("loaded key differs")
	}
	// The file is plain PKCS#8 that gmsm reads too.
	data, err := os.ReadFile(filepath.Join(dir, "sm2-1.key"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(data), "-----BEGIN PRIVATE KEY-----") {
		t.Errorf("sm2 key file is not a PKCS#8 PEM: %.40q", data)
	}
}

// TestGMRotation: the SM2 authority is published, activated and retired
// with its ECDSA partner.
func TestGMRotation(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Now()}
	dir := t.TempDir()
	mod := func(cfg *ca.Config) { gmCA(cfg); cfg.CATTL = time.Hour; cfg.X509TTL = 10 * time.Minute }
	c := newCA(t, dir, clk, mod)
	id := fnID(t, "acme", "hello")
	sk, ek := newSM2Key(t), newSM2Key(t)
	issuerOf := func() *smx509.Certificate {
		t.Helper()
		svid, err := c.MintGMSVID(ctx, ca.GMParams{ID: id, SignKey: sk.Public(), EncKey: ek.Public()})
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range c.GMBundle() {
			if svid.Sign[0].CheckSignatureFrom(a) == nil {
				checkGMCert(t, svid.Sign[0], a, id, ca.GMSignKeyUsage, sk)
				checkGMCert(t, svid.Enc[0], a, id, ca.GMEncKeyUsage, ek)
				return a
			}
		}
		t.Fatal("gm svid not signed by any gm bundle authority")
		return nil
	}
	first := issuerOf()
	gen0 := c.Bundles().Generation

	clk.Add(31 * time.Minute)
	if err := c.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	b := c.Bundles()
	if len(b.GM) != 2 || len(b.X509.X509Authorities()) != 2 {
		t.Fatalf("after prepare: %d sm2 and %d ecdsa authorities, want 2 and 2", len(b.GM), len(b.X509.X509Authorities()))
	}
	if b.Generation == gen0 {
		t.Error("generation did not change")
	}
	if got := issuerOf(); !got.Equal(first) {
		t.Error("sm2 successor signs before activation")
	}

	// Restart keeps the sm2 authorities.
	c2 := newCA(t, dir, clk, mod)
	if !equalCerts(c2.GMBundle(), c.GMBundle()) {
		t.Error("gm bundle differs after restart")
	}

	clk.Add(10 * time.Minute)
	if err := c.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	second := issuerOf()
	if second.Equal(first) {
		t.Error("sm2 successor not active at two thirds")
	}
	clk.Add(20 * time.Minute)
	if err := c.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	gmAuths := c.GMBundle()
	if slices.ContainsFunc(gmAuths, first.Equal) || !slices.ContainsFunc(gmAuths, second.Equal) {
		t.Errorf("after old expiry: first published=%v second published=%v, want false, true",
			slices.ContainsFunc(gmAuths, first.Equal), slices.ContainsFunc(gmAuths, second.Equal))
	}
	if got, want := len(gmAuths), len(c.X509Bundle().X509Authorities()); got != want {
		t.Errorf("sm2 authorities %d, ecdsa authorities %d", got, want)
	}
	keys, _ := filepath.Glob(filepath.Join(dir, "keys", "*.key"))
	if got, want := len(keys), 3*len(gmAuths); got != want {
		t.Errorf("key files after expiry: got %d, want %d (x509 + jwt + sm2 per authority, old ones deleted)", got, want)
	}
}

func equalCerts(a, b []*smx509.Certificate) bool {
	return slices.EqualFunc(a, b, func(x, y *smx509.Certificate) bool { return x.Equal(y) })
}

// TestStandardStateGainsSM2: a CA directory written by the standard suite
// (the state format of releases before the gm suite) loads under the gm
// suite and gains an SM2 authority; its ECDSA authority is untouched.
// Switching back to standard keeps the SM2 authority for later.
func TestStandardStateGainsSM2(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Now()}
	dir := t.TempDir()
	std, err := ca.New(ctx, ca.Config{TrustDomain: td, Dir: dir, Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	ecBundle := std.X509Bundle()
	std.Close()

	// The standard state has exactly the fields of the old format.
	var st struct {
		Version     int              `json:"version"`
		Authorities []map[string]any `json:"authorities"`
	}
	data, err := os.ReadFile(filepath.Join(dir, "ca-state.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	if st.Version != 1 || len(st.Authorities) != 1 {
		t.Fatalf("standard state: version %d, %d authorities", st.Version, len(st.Authorities))
	}
	var fields []string
	for k := range st.Authorities[0] {
		fields = append(fields, k)
	}
	slices.Sort(fields)
	if want := []string{"activate_at", "cert", "jwt_key", "kid", "x509_key"}; !slices.Equal(fields, want) {
		t.Fatalf("standard state fields: got %v, want %v", fields, want)
	}

	clk.Add(time.Minute)
	gm := newCA(t, dir, clk, gmCA)
	if !gm.X509Bundle().Equal(ecBundle) {
		t.Error("ecdsa bundle changed when gm was turned on")
	}
	roots := gm.GMBundle()
	if len(roots) != 1 {
		t.Fatalf("gm bundle: got %d authorities, want 1", len(roots))
	}
	checkSM2Authority(t, roots[0])
	if ec := ecBundle.X509Authorities()[0]; !roots[0].NotAfter.Equal(ec.NotAfter) || roots[0].NotBefore.Before(ec.NotBefore) {
		t.Errorf("sm2 authority %v..%v outside its partner %v..%v", roots[0].NotBefore, roots[0].NotAfter, ec.NotBefore, ec.NotAfter)
	}
	id := fnID(t, "acme", "hello")
	sk, ek := newSM2Key(t), newSM2Key(t)
	svid, err := gm.MintGMSVID(ctx, ca.GMParams{ID: id, SignKey: sk.Public(), EncKey: ek.Public()})
	if err != nil {
		t.Fatal(err)
	}
	checkGMCert(t, svid.Sign[0], roots[0], id, ca.GMSignKeyUsage, sk)
	data, err = os.ReadFile(filepath.Join(dir, "ca-state.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"gm_cert"`) || !strings.Contains(string(data), `"gm_key"`) {
		t.Error("state file lacks the sm2 authority")
	}

	// Back to standard: nothing GM is served, but the state keeps it.
	back := newCA(t, dir, clk, nil)
	if back.GMBundle() != nil {
		t.Error("standard suite publishes sm2 authorities")
	}
	if _, err := back.MintGMSVID(ctx, ca.GMParams{ID: id, SignKey: sk.Public(), EncKey: ek.Public()}); !errors.Is(err, ca.ErrGMDisabled) {
		t.Errorf("standard suite MintGMSVID: got %v, want %v", err, ca.ErrGMDisabled)
	}
	again := newCA(t, dir, clk, gmCA)
	if !equalCerts(again.GMBundle(), roots) {
		t.Error("sm2 authority changed after gm was turned off and on")
	}

	// Key files stay private.
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
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
		if fi.Mode().Perm() != want {
			t.Errorf("%s: got mode %v, want %v", p, fi.Mode().Perm(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestGMStateRejectsMismatch: a state whose sm2 key does not match its
// certificate is refused.
func TestGMStateRejectsMismatch(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Now()}
	dir := t.TempDir()
	c, err := ca.New(ctx, ca.Config{TrustDomain: td, Dir: dir, Clock: clk.Now, Suite: ca.SuiteGM})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	keys, _ := filepath.Glob(filepath.Join(dir, "keys", "sm2-*.key"))
	if len(keys) != 1 {
		t.Fatalf("sm2 key files: got %v, want one", keys)
	}
	ks, err := ca.NewDiskKeyStore(filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	name := strings.TrimSuffix(filepath.Base(keys[0]), ".key")
	if err := ks.DeleteKey(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.GenerateSM2Key(ctx, name); err != nil {
		t.Fatal(err)
	}
	if c, err := ca.New(ctx, ca.Config{TrustDomain: td, Dir: dir, Clock: clk.Now, Suite: ca.SuiteGM}); err == nil {
		c.Close()
		t.Fatal("swapped sm2 key: got nil error")
	}
}
