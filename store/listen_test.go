package store

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// testPKI is a CA with one server and one client certificate.
type testPKI struct {
	pool           *x509.CertPool
	server, client tls.Certificate
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"}, NotBefore: time.Now().Add(-time.Minute),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leaf := func(serial int64, eku x509.ExtKeyUsage) tls.Certificate {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "leaf"}, NotBefore: time.Now().Add(-time.Minute),
			NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{eku},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, k.Public(), caKey)
		if err != nil {
			t.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return testPKI{pool: pool, server: leaf(2, x509.ExtKeyUsageServerAuth), client: leaf(3, x509.ExtKeyUsageClientAuth)}
}

// TestListenTLS: the embedded server accepts clients on a TCP port only
// over TLS with a client certificate; without one the connection fails.
func TestListenTLS(t *testing.T) {
	pki := newTestPKI(t)
	ctx := testContext(t)
	if _, err := Open(ctx, Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0"}); err == nil {
		t.Fatal("listening without TLS was accepted")
	}
	srvTLS := &tls.Config{Certificates: []tls.Certificate{pki.server}, ClientCAs: pki.pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}
	s, err := Open(ctx, Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", TLS: srvTLS, SpoolDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	url := s.ClientURL()
	if url == "" {
		t.Fatal("no client URL")
	}
	kv := newKV(t, s, "shared")
	if _, err := kv.Create(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	// A remote client with a certificate reads what the server wrote.
	remote, err := Open(ctx, Config{URL: url, SpoolDir: t.TempDir(), ClientOptions: []nats.Option{
		nats.Secure(&tls.Config{RootCAs: pki.pool, Certificates: []tls.Certificate{pki.client}, MinVersion: tls.VersionTLS12}),
	}, StartTimeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("client with a certificate: %v", err)
	}
	defer remote.Close()
	rkv := newKV(t, remote, "shared")
	if e, err := rkv.Get(ctx, "k"); err != nil || string(e.Value) != "v" {
		t.Fatalf("remote read: %+v %v", e, err)
	}
	// Without a client certificate: refused.
	if c, err := Open(ctx, Config{URL: url, SpoolDir: t.TempDir(), ClientOptions: []nats.Option{
		nats.Secure(&tls.Config{RootCAs: pki.pool, MinVersion: tls.VersionTLS12}), nats.MaxReconnects(0),
	}, StartTimeout: 3 * time.Second}); err == nil {
		c.Close()
		t.Fatal("a client without a certificate connected")
	}
}
