package micro

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zfaas/zfaas/identity"
	"github.com/zfaas/zfaas/identity/ca"
)

// BenchmarkIdentityMint measures X509-SVIDs minted per second by
// ca.MintX509SVID (a CA in a temporary directory, its default TTLs), with
// the workload's ECDSA P-256 key generated per SVID (as the Workload API
// server does) and pre-generated, each beside the floor: x509.CreateCertificate
// of an equivalent leaf (same fields, a 127-bit serial) signed by an ECDSA
// P-256 CA certificate shaped like the CA's own, with the key generated the
// same way.
func BenchmarkIdentityMint(b *testing.B) {
	ctx := context.Background()
	td := spiffeid.RequireTrustDomainFromString("zfaas.local")
	c, err := ca.New(ctx, ca.Config{TrustDomain: td, Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	id, err := identity.FunctionID(td, "acme", "billing")
	if err != nil {
		b.Fatal(err)
	}
	wlKey := newP256(b)

	// The baseline's authority: a self-signed P-256 CA certificate with the
	// fields ca.New gives its own.
	caKey := newP256(b)
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          serial127(b),
		Subject:               pkix.Name{Organization: []string{"zfaas"}, CommonName: "zfaas CA " + td.Name()},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             now.Add(-30 * time.Second),
		NotAfter:              now.Add(ca.DefaultCATTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		b.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		b.Fatal(err)
	}
	leafSerial := serial127(b)
	leaf := &x509.Certificate{
		SerialNumber:          leafSerial,
		Subject:               pkix.Name{Organization: []string{"zfaas"}, SerialNumber: leafSerial.Text(16)},
		URIs:                  []*url.URL{id.URL()},
		NotBefore:             now.Add(-30 * time.Second),
		NotAfter:              now.Add(ca.DefaultX509TTL),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}

	mint := func(b *testing.B, key *ecdsa.PrivateKey) {
		svid, err := c.MintX509SVID(ctx, ca.X509Params{ID: id, PublicKey: key.Public()})
		if err != nil {
			b.Fatal(err)
		}
		if len(svid.Certificates) != 1 {
			b.Fatalf("got %d certificates, want 1", len(svid.Certificates))
		}
	}
	create := func(b *testing.B, key *ecdsa.PrivateKey) {
		if _, err := x509.CreateCertificate(rand.Reader, leaf, caCert, key.Public(), caKey); err != nil {
			b.Fatal(err)
		}
	}
	run := func(name string, fresh bool, sign func(*testing.B, *ecdsa.PrivateKey)) {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			n := 0
			for b.Loop() {
				key := wlKey
				if fresh {
					key = newP256(b)
				}
				sign(b, key)
				n++
			}
			b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "svids/s")
		})
	}
	run("x509-svid-fresh-key", true, mint)
	run("baseline-createcert-fresh-key", true, create)
	run("x509-svid-pregenerated-key", false, mint)
	run("baseline-createcert-pregenerated-key", false, create)
}

func newP256(b *testing.B) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	return k
}

// serial127 is a positive serial of at most 127 bits, as the CA draws.
func serial127(b *testing.B) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		b.Fatal(err)
	}
	return n.Add(n, big.NewInt(1))
}
