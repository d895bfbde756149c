package dualstack

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/emmansun/gmsm/smx509"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/zfaas/zfaas/crypto/tlcp"
)

// TLCPSource yields the current GM double SVID: an SM2 signing
// certificate (digitalSignature) and an SM2 encryption certificate
// (keyEncipherment / keyAgreement) that carry the same SPIFFE ID. It is
// called on every handshake, so rotation needs no restart.
type TLCPSource interface {
	GetTLCPCertificates() (sign, enc *tlcp.Certificate, err error)
}

// TLCPSourceFunc adapts a function to TLCPSource.
type TLCPSourceFunc func() (sign, enc *tlcp.Certificate, err error)

// GetTLCPCertificates calls f.
func (f TLCPSourceFunc) GetTLCPCertificates() (*tlcp.Certificate, *tlcp.Certificate, error) {
	return f()
}

// AuthorizeSPIFFE returns a tlcp.Config.VerifyPeerCertificate hook for
// SPIFFE: the peer's verified signing certificate must be an X.509-SVID
// (exactly one SPIFFE URI SAN, not a CA), its encryption certificate (when
// sent) must carry the same ID, and authorize (nil: any ID of the trust
// bundle) must accept the ID.
func AuthorizeSPIFFE(authorize func(spiffeid.ID) error) func([][]byte, [][]*smx509.Certificate) error {
	return func(raw [][]byte, chains [][]*smx509.Certificate) error {
		if len(chains) == 0 || len(chains[0]) == 0 {
			return errors.New("peer certificate was not verified against the trust bundle")
		}
		leaf := chains[0][0]
		if leaf.IsCA {
			return errors.New("peer signing certificate is a CA certificate")
		}
		id, err := x509svid.IDFromCert(leaf.ToX509())
		if err != nil {
			return fmt.Errorf("peer signing certificate is not an X.509-SVID: %w", err)
		}
		if len(raw) > 1 {
			enc, err := smx509.ParseCertificate(raw[1])
			if err != nil {
				return fmt.Errorf("parse peer encryption certificate: %w", err)
			}
			if !enc.IsCA {
				encID, err := x509svid.IDFromCert(enc.ToX509())
				if err != nil {
					return fmt.Errorf("peer encryption certificate has no SPIFFE ID: %w", err)
				}
				if encID != id {
					return fmt.Errorf("peer encryption certificate is %s, signing certificate %s", encID, id)
				}
			}
		}
		if authorize != nil {
			return authorize(id)
		}
		return nil
	}
}

// Option adjusts the TLCP configs built here.
type Option func(*tlcp.Config)

// WithClock sets the clock certificates are checked against.
func WithClock(now func() time.Time) Option {
	return func(c *tlcp.Config) { c.Time = now }
}

// WithCipherSuites restricts the TLCP suites.
func WithCipherSuites(ids ...uint16) Option {
	return func(c *tlcp.Config) { c.CipherSuites = ids }
}

// TLCPServerConfig is the GM counterpart of mtls.ServerConfig: it presents
// the double SVID of src, requests client certificates and verifies any
// that are sent against roots as SPIFFE SVIDs (a client without
// certificates is let through for another credential, such as a JWT-SVID;
// it can then only get the ECC suites). authorize may be nil.
func TLCPServerConfig(src TLCPSource, roots *smx509.CertPool, authorize func(spiffeid.ID) error, opts ...Option) *tlcp.Config {
	c := &tlcp.Config{
		GetCertificates: func(*tlcp.ClientHelloInfo) (*tlcp.Certificate, *tlcp.Certificate, error) {
			return src.GetTLCPCertificates()
		},
		ClientCAs:             roots,
		ClientAuth:            tlcp.VerifyClientCertIfGiven,
		VerifyPeerCertificate: AuthorizeSPIFFE(authorize),
	}
	for _, o := range opts {
		o(c)
	}
	return c
}

// TLCPClientConfig is the GM counterpart of mtls.ClientConfig: it presents
// the double SVID of src (nil: none, so only the ECC suites) and accepts
// only a server whose signing SVID verifies against roots and is serverID.
func TLCPClientConfig(src TLCPSource, roots *smx509.CertPool, serverID spiffeid.ID, opts ...Option) *tlcp.Config {
	c := &tlcp.Config{
		RootCAs:               roots,
		VerifyPeerCertificate: AuthorizeSPIFFE(serverIs(serverID)),
	}
	if src != nil {
		c.GetClientCertificates = func(*tlcp.CertificateRequestInfo) (*tlcp.Certificate, *tlcp.Certificate, error) {
			return src.GetTLCPCertificates()
		}
	}
	for _, o := range opts {
		o(c)
	}
	return c
}

// serverIs authorizes serverID only.
func serverIs(serverID spiffeid.ID) func(spiffeid.ID) error {
	return func(id spiffeid.ID) error {
		if id != serverID {
			return fmt.Errorf("server is %s, want %s", id, serverID)
		}
		return nil
	}
}

// VerifySPIFFEPeer returns a tlcp.Config.VerifyPeerCertificate hook that
// does the whole peer verification itself, against the authorities roots
// returns at each handshake (so an authority published after the config
// was built is trusted at once): the signing and, when sent, the
// encryption certificate must chain to roots() at now(), then
// AuthorizeSPIFFE(authorize) applies. Use it with the engine's own
// verification off (TLCPServerConfigFrom and TLCPClientConfigFrom do).
func VerifySPIFFEPeer(roots func() *smx509.CertPool, now func() time.Time, authorize func(spiffeid.ID) error) func([][]byte, [][]*smx509.Certificate) error {
	spiffe := AuthorizeSPIFFE(authorize)
	return func(raw [][]byte, _ [][]*smx509.Certificate) error {
		if len(raw) == 0 {
			return errors.New("peer sent no certificate")
		}
		certs := make([]*smx509.Certificate, len(raw))
		for n, der := range raw {
			c, err := smx509.ParseCertificate(der)
			if err != nil {
				return fmt.Errorf("parse peer certificate: %w", err)
			}
			certs[n] = c
		}
		sign, rest := certs[0], certs[1:]
		var enc *smx509.Certificate
		if len(rest) > 0 && !rest[0].IsCA {
			enc, rest = rest[0], rest[1:]
		}
		inter := smx509.NewCertPool()
		for _, c := range rest {
			inter.AddCert(c)
		}
		opts := smx509.VerifyOptions{
			Roots:         roots(),
			Intermediates: inter,
			CurrentTime:   now(),
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
		}
		chains, err := sign.Verify(opts)
		if err != nil {
			return fmt.Errorf("verify peer signing certificate: %w", err)
		}
		if enc != nil {
			if _, err := enc.Verify(opts); err != nil {
				return fmt.Errorf("verify peer encryption certificate: %w", err)
			}
		}
		return spiffe(raw, chains)
	}
}

// TLCPServerConfigFrom is TLCPServerConfig for trust that follows
// rotation: it presents src's double SVID, asks for client certificates
// and verifies any that are sent with VerifySPIFFEPeer(roots, now,
// authorize) at every handshake (a client without certificates is let
// through for another credential, as with TLCPServerConfig). The
// engine's clock is now.
func TLCPServerConfigFrom(src TLCPSource, roots func() *smx509.CertPool, now func() time.Time, authorize func(spiffeid.ID) error, opts ...Option) *tlcp.Config {
	opts = append([]Option{WithClock(now)}, opts...)
	c := TLCPServerConfig(src, roots(), authorize, opts...)
	// The engine only parses and checks key usages; the hook verifies
	// against the current authorities. ClientCAs stays for the CA names
	// of the certificate request.
	c.ClientAuth = tlcp.RequestClientCert
	c.VerifyPeerCertificate = VerifySPIFFEPeer(roots, now, authorize)
	return c
}

// TLCPClientConfigFrom is TLCPClientConfig for trust that follows
// rotation: it presents src's double SVID (nil: none) and accepts only a
// server whose certificates VerifySPIFFEPeer(roots, now, ...) verifies at
// every handshake and whose SPIFFE ID is serverID. The engine's clock is
// now.
func TLCPClientConfigFrom(src TLCPSource, roots func() *smx509.CertPool, now func() time.Time, serverID spiffeid.ID, opts ...Option) *tlcp.Config {
	opts = append([]Option{WithClock(now)}, opts...)
	c := TLCPClientConfig(src, roots(), serverID, opts...)
	c.InsecureSkipVerify = true // the hook verifies the chains and the ID
	c.VerifyPeerCertificate = VerifySPIFFEPeer(roots, now, serverIs(serverID))
	return c
}
