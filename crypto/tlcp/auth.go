package tlcp

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"
)

// signSM2 signs msg with an SM2 key and the user id (GB/T 32918.2: the
// signature covers SM3(Z || msg)).
func signSM2(cfg *Config, key crypto.PrivateKey, msg []byte) ([]byte, error) {
	opts := sm2.NewSM2SignerOption(true, cfg.userID())
	switch k := key.(type) {
	case *sm2.PrivateKey:
		return k.Sign(cfg.rand(), msg, opts)
	case crypto.Signer:
		if !sm2.IsSM2PublicKey(k.Public()) {
			return nil, errors.New("tlcp: signing key is not an SM2 key")
		}
		return k.Sign(cfg.rand(), msg, opts)
	default:
		return nil, fmt.Errorf("tlcp: signing key of type %T is not a crypto.Signer", key)
	}
}

func verifySM2(cfg *Config, pub *ecdsa.PublicKey, msg, sig []byte) bool {
	return sm2.VerifyASN1WithSM2(pub, cfg.userID(), msg, sig)
}

// decryptSM2 decrypts a GM/T 0009 ASN.1 SM2 ciphertext.
func decryptSM2(cfg *Config, key crypto.PrivateKey, ct []byte) ([]byte, error) {
	switch k := key.(type) {
	case *sm2.PrivateKey:
		return k.Decrypt(cfg.rand(), ct, sm2.ASN1DecrypterOpts)
	case crypto.Decrypter:
		return k.Decrypt(cfg.rand(), ct, sm2.ASN1DecrypterOpts)
	default:
		return nil, fmt.Errorf("tlcp: encryption key of type %T is not a crypto.Decrypter", key)
	}
}

func sm2PublicKey(c *smx509.Certificate) (*ecdsa.PublicKey, bool) {
	pub, ok := c.PublicKey.(*ecdsa.PublicKey)
	if !ok || !sm2.IsSM2PublicKey(pub) {
		return nil, false
	}
	return pub, true
}

const encKeyUsage = x509.KeyUsageKeyEncipherment | x509.KeyUsageDataEncipherment | x509.KeyUsageKeyAgreement

// X509KeyPair parses a PEM certificate chain (leaf first) and its PEM
// private key (PKCS#8, or SEC 1 "EC PRIVATE KEY" on the SM2 curve) into a
// Certificate with Leaf set. The key must be an SM2 key matching the leaf.
func X509KeyPair(certPEM, keyPEM []byte) (*Certificate, error) {
	var c Certificate
	for rest := certPEM; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			c.Certificate = append(c.Certificate, b.Bytes)
		}
	}
	if len(c.Certificate) == 0 {
		return nil, errors.New("tlcp: no CERTIFICATE block in the certificate PEM")
	}
	leaf, err := smx509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("tlcp: parse certificate: %w", err)
	}
	c.Leaf = leaf
	var key *sm2.PrivateKey
	for rest := keyPEM; key == nil; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, errors.New("tlcp: no private key block in the key PEM")
		}
		switch b.Type {
		case "PRIVATE KEY":
			k, err := smx509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("tlcp: parse private key: %w", err)
			}
			sk, ok := k.(*sm2.PrivateKey)
			if !ok {
				return nil, fmt.Errorf("tlcp: private key is %T, not SM2", k)
			}
			key = sk
		case "EC PRIVATE KEY", "SM2 PRIVATE KEY":
			sk, err := smx509.ParseSM2PrivateKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("tlcp: parse private key: %w", err)
			}
			key = sk
		}
	}
	pub, ok := sm2PublicKey(leaf)
	if !ok || !pub.Equal(&key.PublicKey) {
		return nil, errors.New("tlcp: private key does not match the certificate's SM2 public key")
	}
	c.PrivateKey = key
	return &c, nil
}

// peerCerts is a peer's parsed certificate message.
type peerCerts struct {
	all    []*smx509.Certificate
	sign   *smx509.Certificate
	enc    *smx509.Certificate
	chains [][]*smx509.Certificate
}

// checkPeerCertificates parses and checks a peer's certificates: the
// signing certificate first, then (required from a server and for ECDHE)
// the encryption certificate, then CA certificates. When verify is set,
// both the signing and the encryption certificate must chain to roots at
// the configured time. It returns the alert to send on failure.
func checkPeerCertificates(cfg *Config, raw [][]byte, needEnc, verify bool, roots *smx509.CertPool, dnsName string) (*peerCerts, uint8, error) {
	if len(raw) == 0 {
		return nil, alertHandshakeFailure, errors.New("peer sent no certificate")
	}
	p := &peerCerts{}
	for _, der := range raw {
		c, err := smx509.ParseCertificate(der)
		if err != nil {
			return nil, alertBadCertificate, fmt.Errorf("parse peer certificate: %w", err)
		}
		p.all = append(p.all, c)
	}
	p.sign = p.all[0]
	rest := p.all[1:]
	if len(rest) > 0 && !rest[0].IsCA {
		p.enc, rest = rest[0], rest[1:]
	}
	if p.enc == nil && needEnc {
		return nil, alertBadCertificate, errors.New("peer sent no encryption certificate")
	}
	if _, ok := sm2PublicKey(p.sign); !ok {
		return nil, alertUnsupportedCertificate, errors.New("peer signing certificate has no SM2 key")
	}
	if p.sign.KeyUsage != 0 && p.sign.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return nil, alertBadCertificate, errors.New("peer signing certificate is not for digitalSignature (an encryption certificate in the signing place?)")
	}
	if p.enc != nil {
		if _, ok := sm2PublicKey(p.enc); !ok {
			return nil, alertUnsupportedCertificate, errors.New("peer encryption certificate has no SM2 key")
		}
		if p.enc.KeyUsage != 0 && p.enc.KeyUsage&encKeyUsage == 0 {
			return nil, alertBadCertificate, errors.New("peer encryption certificate allows no encipherment or key agreement")
		}
	}
	if !verify {
		return p, 0, nil
	}
	inter := smx509.NewCertPool()
	for _, c := range rest {
		inter.AddCert(c)
	}
	opts := smx509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   cfg.now(),
		DNSName:       dnsName,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}
	chains, err := p.sign.Verify(opts)
	if err != nil {
		return nil, verifyAlert(err), fmt.Errorf("verify peer signing certificate: %w", err)
	}
	p.chains = chains
	if p.enc != nil {
		opts.DNSName = ""
		if _, err := p.enc.Verify(opts); err != nil {
			return nil, verifyAlert(err), fmt.Errorf("verify peer encryption certificate: %w", err)
		}
	}
	return p, 0, nil
}

func verifyAlert(err error) uint8 {
	var inv smx509.CertificateInvalidError
	if errors.As(err, &inv) && inv.Reason == x509.Expired {
		return alertCertificateExpired
	}
	var ua smx509.UnknownAuthorityError
	if errors.As(err, &ua) {
		return alertUnknownCA
	}
	return alertBadCertificate
}
