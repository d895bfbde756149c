package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Key usages of the GM double SVID (GB/T 38636 separates signing from
// encryption keys).
const (
	// GMSignKeyUsage is the key usage of the SM2 signing certificate.
	GMSignKeyUsage = x509.KeyUsageDigitalSignature
	// GMEncKeyUsage is the key usage of the SM2 encryption certificate.
	GMEncKeyUsage = x509.KeyUsageKeyEncipherment | x509.KeyUsageDataEncipherment | x509.KeyUsageKeyAgreement
)

// GMParams asks for a GM double SVID.
type GMParams struct {
	// ID is the SPIFFE ID to certify, as for X509Params.
	ID spiffeid.ID
	// SignKey and EncKey are the subject keys of the signing and the
	// encryption certificate: two different SM2 public keys
	// (*ecdsa.PublicKey on sm2.P256, e.g. &(*sm2.PrivateKey).PublicKey).
	SignKey, EncKey crypto.PublicKey
	// TTL is the lifetime of both; zero means Config.X509TTL. At most
	// CATTL/6.
	TTL time.Duration
	// DNSNames and IPAddresses are extra SANs for a server, on both
	// certificates; the SPIFFE ID stays the one URI SAN.
	DNSNames    []string
	IPAddresses []net.IP
}

// GMSVID is a signed GM double SVID without its private keys: two SM2
// certificates for one SPIFFE ID, signed by the same SM2 authority with
// the same validity.
type GMSVID struct {
	ID spiffeid.ID
	// Sign is the signing certificate chain, leaf first (the leaf alone:
	// it is signed directly by an authority of the GM bundle). Its leaf is
	// an X509-SVID: one URI SAN, not a CA, critical key usage
	// digitalSignature.
	Sign []*smx509.Certificate
	// Enc is the encryption certificate chain, leaf first. Its leaf has
	// the same URI SAN and key usage keyEncipherment, dataEncipherment and
	// keyAgreement (no digitalSignature, so it is not an X509-SVID on its
	// own: it is only ever used next to Sign).
	Enc []*smx509.Certificate
}

// MintGMSVID signs a GM double SVID with the SM2 partner of the active
// authority: both certificates carry exactly one URI SAN (p.ID), are not
// CAs, have EKU serverAuth and clientAuth and a critical key usage
// (GMSignKeyUsage, GMEncKeyUsage), are signed SM2-with-SM3, and live as long
// as an X509-SVID, clipped to the SM2 authority. It fails with
// ErrGMDisabled unless the CA runs the gm suite.
func (c *CA) MintGMSVID(_ context.Context, p GMParams) (*GMSVID, error) {
	if c.cfg.Suite != SuiteGM {
		return nil, ErrGMDisabled
	}
	if err := c.checkID(p.ID); err != nil {
		return nil, err
	}
	if err := checkSM2(p.SignKey); err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	if err := checkSM2(p.EncKey); err != nil {
		return nil, fmt.Errorf("encryption key: %w", err)
	}
	if publicKeysEqual(p.SignKey, p.EncKey) {
		return nil, fmt.Errorf("%w: the signing and the encryption key must differ", ErrUnsupportedKey)
	}
	ttl, err := c.ttl(p.TTL, c.cfg.X509TTL)
	if err != nil {
		return nil, err
	}
	issuer, issuerKey, now, err := c.gmSigningAuthority()
	if err != nil {
		return nil, err
	}
	nb, na := clipTo(now, ttl, issuer.NotBefore, issuer.NotAfter)
	svid := &GMSVID{ID: p.ID}
	for _, k := range []struct {
		pub   crypto.PublicKey
		usage x509.KeyUsage
		out   *[]*smx509.Certificate
	}{
		{p.SignKey, GMSignKeyUsage, &svid.Sign},
		{p.EncKey, GMEncKeyUsage, &svid.Enc},
	} {
		serial, err := randomSerial()
		if err != nil {
			return nil, err
		}
		tmpl := &x509.Certificate{
			SerialNumber:          serial,
			Subject:               pkix.Name{Organization: []string{"zfaas"}, SerialNumber: serial.Text(16)},
			URIs:                  []*url.URL{p.ID.URL()},
			DNSNames:              p.DNSNames,
			IPAddresses:           p.IPAddresses,
			NotBefore:             nb,
			NotAfter:              na,
			KeyUsage:              k.usage,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			BasicConstraintsValid: true,
			IsCA:                  false,
		}
		der, err := smx509.CreateCertificate(rand.Reader, tmpl, issuer, k.pub, issuerKey)
		if err != nil {
			return nil, fmt.Errorf("sign gm svid: %w", err)
		}
		leaf, err := smx509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("parse gm svid: %w", err)
		}
		*k.out = []*smx509.Certificate{leaf}
	}
	return svid, nil
}

// gmSigningAuthority returns the SM2 partner of the active authority, its
// key, and now. The partner fields are read under the lock because Rotate
// sets them on authorities from before the gm suite was turned on.
func (c *CA) gmSigningAuthority() (*smx509.Certificate, Signer, time.Time, error) {
	now := c.now()
	c.mu.RLock()
	defer c.mu.RUnlock()
	a := c.activeLocked(now)
	if a == nil {
		return nil, nil, now, ErrNoAuthority
	}
	if a.gmCert == nil {
		// Rotate has not run since the gm suite was turned on.
		return nil, nil, now, fmt.Errorf("%w: the active authority has no sm2 partner yet", ErrNoAuthority)
	}
	return a.gmCert, a.gmKey, now, nil
}

// GMBundle returns the SM2 authorities (see Bundles.GM); nil unless the CA
// runs the gm suite. The slice is fresh; the certificates are shared and
// must not be modified.
func (c *CA) GMBundle() []*smx509.Certificate { return c.Bundles().GM }

// addGM creates the SM2 partner of a: a self-signed SM2 CA certificate
// valid from now (backdated, never before a's NotBefore) until a's
// NotAfter, whose key lives in the key store next to a's.
func (c *CA) addGM(ctx context.Context, a *authority, now time.Time) error {
	ks, ok := c.keys.(SM2KeyStore)
	if !ok {
		return fmt.Errorf("key store %T cannot create sm2 keys", c.keys)
	}
	name := "sm2-" + strings.TrimPrefix(a.x509KeyName, "x509-")
	key, err := ks.GenerateSM2Key(ctx, name)
	if err != nil {
		return fmt.Errorf("generate sm2 ca key: %w", err)
	}
	fail := func(err error) error {
		if derr := c.keys.DeleteKey(ctx, name); derr != nil {
			c.log.Warn("delete unused sm2 ca key", "key", name, "err", derr)
		}
		return err
	}
	if err := checkSM2(key.Public()); err != nil {
		return fail(err)
	}
	serial, err := randomSerial()
	if err != nil {
		return fail(err)
	}
	nb := now.Add(-backdate)
	if nb.Before(a.cert.NotBefore) {
		nb = a.cert.NotBefore
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{"zfaas"},
			CommonName:   "zfaas SM2 CA " + c.td.Name(),
			SerialNumber: serial.Text(16),
		},
		URIs:                  []*url.URL{c.td.ID().URL()},
		NotBefore:             nb,
		NotAfter:              a.cert.NotAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := smx509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fail(fmt.Errorf("self-sign sm2 ca certificate: %w", err))
	}
	cert, err := smx509.ParseCertificate(der)
	if err != nil {
		return fail(fmt.Errorf("parse sm2 ca certificate: %w", err))
	}
	if err := checkGMAuthority(cert, c.td); err != nil {
		return fail(err)
	}
	a.gmCert, a.gmKey, a.gmKeyName = cert, key, name
	return nil
}

// checkGMAuthority checks that cert is a self-signed SM2 CA certificate of
// trust domain td, signed SM2-with-SM3.
func checkGMAuthority(cert *smx509.Certificate, td spiffeid.TrustDomain) error {
	if !cert.IsCA || cert.SignatureAlgorithm != smx509.SM2WithSM3 || cert.CheckSignatureFrom(cert) != nil {
		return fmt.Errorf("ca state: sm2 certificate %s is not a self-signed sm2 ca", cert.SerialNumber.Text(16))
	}
	if err := checkSM2(cert.PublicKey); err != nil {
		return fmt.Errorf("ca state: sm2 certificate %s: %w", cert.SerialNumber.Text(16), err)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != td.ID().String() {
		return fmt.Errorf("%w: sm2 authority of %v, not %s", ErrTrustDomain, cert.URIs, td)
	}
	return nil
}

func checkSM2(pub any) error {
	k, ok := pub.(*ecdsa.PublicKey)
	if !ok || k.Curve != sm2.P256() {
		if ok {
			return fmt.Errorf("%w: ecdsa key on %s, want sm2", ErrUnsupportedKey, k.Curve.Params().Name)
		}
		if pub == nil {
			return fmt.Errorf("%w: no key", ErrUnsupportedKey)
		}
		return fmt.Errorf("%w: %T", ErrUnsupportedKey, pub)
	}
	return nil
}

// clipTo returns a validity window starting slightly in the past, both
// ends inside [notBefore, notAfter].
func clipTo(now time.Time, ttl time.Duration, notBefore, notAfter time.Time) (time.Time, time.Time) {
	nb := now.Add(-backdate)
	if nb.Before(notBefore) {
		nb = notBefore
	}
	na := now.Add(ttl)
	if na.After(notAfter) {
		na = notAfter
	}
	return nb, na
}

var errGMState = errors.New("ca state: sm2 certificate and key must come together")
