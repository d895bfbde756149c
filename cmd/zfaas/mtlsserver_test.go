package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/zfaas/zfaas/crypto/mtls"
	"github.com/zfaas/zfaas/identity/ca"
)

// mtlsTestServer serves h over mutual TLS as spiffe://zfaas.test/gateway/gw
// and returns its URL and an environment whose client config makes the CLI
// a client with the SVID of spiffe://zfaas.test/user/cli.
func mtlsTestServer(t *testing.T, h http.Handler) (string, env) {
	t.Helper()
	ctx := context.Background()
	authority, err := ca.New(ctx, ca.Config{TrustDomain: spiffeid.RequireTrustDomainFromString("zfaas.test"), Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { authority.Close() })
	mint := func(id string) *x509svid.SVID {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		s, err := authority.MintX509SVID(ctx, ca.X509Params{ID: spiffeid.RequireFromString(id), PublicKey: key.Public()})
		if err != nil {
			t.Fatal(err)
		}
		return &x509svid.SVID{ID: s.ID, Certificates: s.Certificates, PrivateKey: key}
	}
	const gatewayID = "spiffe://zfaas.test/gateway/gw"
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = mtls.ServerConfig(mint(gatewayID), authority.X509Bundle())
	// httptest would add its own certificate, which crypto/tls prefers to
	// GetCertificate; give it the gateway's SVID instead.
	gw := mint(gatewayID)
	cert := tls.Certificate{PrivateKey: gw.PrivateKey}
	for _, c := range gw.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	srv.TLS.Certificates = []tls.Certificate{cert}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	cc := clientConfig{Gateway: srv.URL, GatewayID: gatewayID,
		Cert: filepath.Join(dir, "svid.pem"), Key: filepath.Join(dir, "svid-key.pem"), Bundle: filepath.Join(dir, "bundle.pem")}
	if err := writeSVIDFiles(cc.Cert, cc.Key, cc.Bundle, mint("spiffe://zfaas.test/user/cli"), authority.X509Bundle()); err != nil {
		t.Fatal(err)
	}
	path, err := writeClientConfig(filepath.Join(dir, "config.yaml"), nil, cc)
	if err != nil {
		t.Fatal(err)
	}
	return srv.URL, func(k string) string {
		if k == "ZFAAS_CLIENT_CONFIG" {
			return path
		}
		return ""
	}
}
