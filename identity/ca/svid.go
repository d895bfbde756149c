package ca

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// X509Params asks for an X509-SVID.
type X509Params struct {
	// ID is the SPIFFE ID to certify; it must be a workload ID (non-empty
	// path) in the CA's trust domain.
	ID spiffeid.ID
	// PublicKey is the subject key, an ECDSA P-256 public key.
	PublicKey crypto.PublicKey
	// TTL is the lifetime; zero means Config.X509TTL. At most CATTL/6.
	TTL time.Duration
	// DNSNames and IPAddresses are extra SANs for a server SVID, so that
	// clients verifying by host name (curl, browsers) can check it too. The
	// SPIFFE ID stays the one URI SAN.
	DNSNames    []string
	IPAddresses []net.IP
}

// X509SVID is a signed X509-SVID without its private key.
type X509SVID struct {
	ID spiffeid.ID
	// Certificates is the chain, leaf first. There are no intermediates:
	// the leaf is signed directly by an authority in the X.509 bundle.
	Certificates []*x509.Certificate
}

// MintX509SVID signs an X509-SVID with the active authority: one URI SAN,
// not a CA, critical key usage digitalSignature, EKU serverAuth and
// clientAuth. Its lifetime is clipped to the authority's.
func (c *CA) MintX509SVID(_ context.Context, p X509Params) (*X509SVID, error) {
	if err := c.checkID(p.ID); err != nil {
		return nil, err
	}
	if err := checkP256(p.PublicKey); err != nil {
		return nil, err
	}
	ttl, err := c.ttl(p.TTL, c.cfg.X509TTL)
	if err != nil {
		return nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	a, now, err := c.signingAuthority()
	if err != nil {
		return nil, err
	}
	nb, na := clip(now, ttl, a)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"zfaas"}, SerialNumber: serial.Text(16)},
		URIs:                  []*url.URL{p.ID.URL()},
		DNSNames:              p.DNSNames,
		IPAddresses:           p.IPAddresses,
		NotBefore:             nb,
		NotAfter:              na,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, p.PublicKey, a.x509Key)
	if err != nil {
		return nil, fmt.Errorf("sign x509-svid: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse x509-svid: %w", err)
	}
	return &X509SVID{ID: p.ID, Certificates: []*x509.Certificate{leaf}}, nil
}

func (c *CA) ttl(req, def time.Duration) (time.Duration, error) {
	switch {
	case req == 0:
		return def, nil
	case req < 0:
		return 0, fmt.Errorf("%w: negative ttl %v", ErrTTL, req)
	case req > c.cfg.CATTL/6:
		return 0, fmt.Errorf("%w: %v exceeds %v", ErrTTL, req, c.cfg.CATTL/6)
	}
	return req, nil
}

// clip returns a validity window starting slightly in the past, both ends
// inside the authority's validity.
func clip(now time.Time, ttl time.Duration, a *authority) (time.Time, time.Time) {
	return clipTo(now, ttl, a.cert.NotBefore, a.cert.NotAfter)
}
