// Package tlcptest is a small SM2 certificate authority for tests of the TLCP
// engine and the dual-stack listener: it issues TLCP double certificates
// (an SM2 signing and an SM2 encryption certificate with the same SPIFFE
// URI SAN) and, for the standard side, ECDSA P-256 X.509-SVIDs. It is
// imported only by tests and benchmarks and must never be used by
// production code (its keys live in memory, unprotected).
package tlcptest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"

	"github.com/zfaas/zfaas/crypto/tlcp"
)

// CA is an SM2 root plus an ECDSA P-256 root for one trust domain.
type CA struct {
	TrustDomain string
	Cert        *smx509.Certificate
	Key         *sm2.PrivateKey
	// Pool holds Cert, for tlcp.Config.RootCAs / ClientCAs.
	Pool *smx509.CertPool

	ECCert *x509.Certificate
	ECKey  *ecdsa.PrivateKey
	// ECPool holds ECCert, for crypto/tls.
	ECPool *x509.CertPool

	serial int64
}

// New makes a CA valid from an hour before now for a year.
func New(trustDomain string, now time.Time) (*CA, error) {
	key, err := sm2.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: trustDomain + " SM2 test CA", Organization: []string{"zfaas test"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: trustDomain}},
	}
	der, err := smx509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create SM2 CA: %w", err)
	}
	cert, err := smx509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	ca := &CA{TrustDomain: trustDomain, Cert: cert, Key: key, Pool: smx509.NewCertPool(), serial: 1}
	ca.Pool.AddCert(cert)

	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl.Subject.CommonName = trustDomain + " ECDSA test CA"
	ecDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &ecKey.PublicKey, ecKey)
	if err != nil {
		return nil, fmt.Errorf("create ECDSA CA: %w", err)
	}
	if ca.ECCert, err = x509.ParseCertificate(ecDER); err != nil {
		return nil, err
	}
	ca.ECKey = ecKey
	ca.ECPool = x509.NewCertPool()
	ca.ECPool.AddCert(ca.ECCert)
	return ca, nil
}

// Options shape an issued certificate.
type Options struct {
	// ID is the SPIFFE ID path, e.g. "/ns/a/fn/b" (empty: no URI SAN).
	ID string
	// DNSNames are optional DNS SANs.
	DNSNames []string
	// NotBefore and NotAfter default to an hour ago and a day ahead.
	NotBefore, NotAfter time.Time
}

func (ca *CA) template(o Options, usage x509.KeyUsage) *x509.Certificate {
	ca.serial++
	nb, na := o.NotBefore, o.NotAfter
	if nb.IsZero() {
		nb = time.Now().Add(-time.Hour)
	}
	if na.IsZero() {
		na = time.Now().Add(24 * time.Hour)
	}
	t := &x509.Certificate{
		SerialNumber:          big.NewInt(ca.serial),
		Subject:               pkix.Name{CommonName: "zfaas test " + o.ID, Organization: []string{"zfaas test"}},
		NotBefore:             nb,
		NotAfter:              na,
		KeyUsage:              usage,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		DNSNames:              o.DNSNames,
	}
	if o.ID != "" {
		t.URIs = []*url.URL{{Scheme: "spiffe", Host: ca.TrustDomain, Path: o.ID}}
	}
	return t
}

// IssueSM2 issues one SM2 certificate with the given key usage.
func (ca *CA) IssueSM2(o Options, usage x509.KeyUsage) (*tlcp.Certificate, error) {
	key, err := sm2.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := smx509.CreateCertificate(rand.Reader, ca.template(o, usage), ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("issue SM2 certificate: %w", err)
	}
	leaf, err := smx509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tlcp.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// SignUsage and EncUsage are the key usages of a TLCP double certificate.
const (
	SignUsage = x509.KeyUsageDigitalSignature
	EncUsage  = x509.KeyUsageKeyEncipherment | x509.KeyUsageDataEncipherment | x509.KeyUsageKeyAgreement
)

// IssuePair issues a signing and an encryption certificate for one ID.
func (ca *CA) IssuePair(o Options) (sign, enc *tlcp.Certificate, err error) {
	if sign, err = ca.IssueSM2(o, SignUsage); err != nil {
		return nil, nil, err
	}
	if enc, err = ca.IssueSM2(o, EncUsage); err != nil {
		return nil, nil, err
	}
	return sign, enc, nil
}

// IssueECDSA issues an ECDSA P-256 X.509-SVID for crypto/tls.
func (ca *CA) IssueECDSA(o Options) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, ca.template(o, x509.KeyUsageDigitalSignature), ca.ECCert, &key.PublicKey, ca.ECKey)
	if err != nil {
		return nil, fmt.Errorf("issue ECDSA certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// PEM encodes a certificate's chain and its SM2 key (PKCS#8).
func PEM(c *tlcp.Certificate) (certPEM, keyPEM []byte, err error) {
	for _, der := range c.Certificate {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	der, err := smx509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		return nil, nil, err
	}
	return certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
