// Package mtls builds the TLS configurations zfaas listeners use with SPIFFE
// X.509-SVIDs: the server presents its own SVID (taken from a source on every
// handshake, so rotation needs no restart) and verifies any client
// certificate as an X.509-SVID of the trust bundle. It relies on crypto/tls
// and go-spiffe for all cryptography and must never implement primitives.
package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ServerConfig returns a TLS 1.2+ server configuration that presents the
// SVID of svids and requests a client certificate. A presented client
// certificate must be an X.509-SVID that verifies against bundles, or the
// handshake fails; a client without a certificate is let through, so the
// application can require another credential (a JWT-SVID bearer token) —
// use PeerID to tell them apart.
func ServerConfig(svids x509svid.Source, bundles x509bundle.Source, opts ...Option) *tls.Config {
	o := options(opts)
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ClientAuth: tls.RequestClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return certificate(svids)
		},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return nil
			}
			_, _, err := x509svid.ParseAndVerify(raw, bundles, x509svid.WithTime(o.now()))
			if err != nil {
				return fmt.Errorf("client certificate is not a valid X.509-SVID: %w", err)
			}
			return nil
		},
	}
}

// Option adjusts a configuration.
type Option func(*config)

type config struct{ now func() time.Time }

// WithClock sets the clock certificates are checked against (default
// time.Now), so expiry is testable without waiting.
func WithClock(now func() time.Time) Option { return func(c *config) { c.now = now } }

func options(opts []Option) config {
	c := config{now: time.Now}
	for _, o := range opts {
		o(&c)
	}
	return c
}

// ClientConfig returns a TLS 1.2+ client configuration that presents the
// SVID of svids (nil: no client certificate) and accepts only a server
// whose X.509-SVID verifies against bundles and whose ID is serverID.
func ClientConfig(svids x509svid.Source, bundles x509bundle.Source, serverID spiffeid.ID, opts ...Option) *tls.Config {
	o := options(opts)
	c := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Verification is by SPIFFE ID, not host name; the callback below
		// does all of it.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			id, _, err := x509svid.ParseAndVerify(raw, bundles, x509svid.WithTime(o.now()))
			if err != nil {
				return fmt.Errorf("server certificate is not a valid X.509-SVID: %w", err)
			}
			if id != serverID {
				return fmt.Errorf("server is %s, want %s", id, serverID)
			}
			return nil
		},
	}
	if svids != nil {
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return certificate(svids)
		}
	}
	return c
}

func certificate(svids x509svid.Source) (*tls.Certificate, error) {
	s, err := svids.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("get X.509-SVID: %w", err)
	}
	if len(s.Certificates) == 0 {
		return nil, errors.New("X.509-SVID without certificates")
	}
	c := &tls.Certificate{PrivateKey: s.PrivateKey, Leaf: s.Certificates[0]}
	for _, cert := range s.Certificates {
		c.Certificate = append(c.Certificate, cert.Raw)
	}
	return c, nil
}

// PeerID returns the SPIFFE ID of the verified client X.509-SVID of a
// connection made with ServerConfig, and false when the client presented
// no certificate.
func PeerID(cs *tls.ConnectionState) (spiffeid.ID, bool) {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, false
	}
	id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, false
	}
	return id, true
}
