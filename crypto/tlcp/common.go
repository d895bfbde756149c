// Package tlcp implements TLCP, China's Transport Layer Cryptography Protocol
// (GB/T 38636-2020, protocol version 0x0101, the successor of GM/T 0024), as
// a client and a server over any net.Conn, in the shape of crypto/tls.
//
// Supported cipher suites: ECC_SM4_CBC_SM3 (0xe013), ECC_SM4_GCM_SM3
// (0xe053), ECDHE_SM4_CBC_SM3 (0xe011) and ECDHE_SM4_GCM_SM3 (0xe051). Every
// endpoint that authenticates has a double certificate: an SM2 signing
// certificate (digitalSignature) and an SM2 encryption certificate
// (keyEncipherment, dataEncipherment or keyAgreement). The server always
// presents both; a client presents its signing certificate when asked and
// its encryption certificate too, which the ECDHE suites require (the SM2
// key exchange of GB/T 32918.3 runs over both sides' encryption keys).
//
// All primitives come from github.com/emmansun/gmsm (SM2, SM3, SM4, SM2
// X.509); this package implements only the protocol and must never implement
// a primitive itself. Everything read from the wire is parsed with explicit
// bounds: a malformed or hostile peer gets an alert and an error, never a
// panic. Session resumption and renegotiation are not supported: every
// connection makes a full handshake and a peer's attempt to renegotiate is
// refused.
package tlcp

import (
	"context"
	"crypto"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"time"

	"github.com/emmansun/gmsm/smx509"
)

// VersionTLCP is the protocol version of TLCP (GB/T 38636-2020), the only
// version this package speaks.
const VersionTLCP uint16 = 0x0101

// The bytes of VersionTLCP on the wire.
const versHi, versLo byte = 0x01, 0x01

// Cipher suites of GB/T 38636-2020.
const (
	ECDHE_SM4_CBC_SM3 uint16 = 0xe011
	ECC_SM4_CBC_SM3   uint16 = 0xe013
	ECDHE_SM4_GCM_SM3 uint16 = 0xe051
	ECC_SM4_GCM_SM3   uint16 = 0xe053
)

// DefaultUserID is the SM2 user identifier of GB/T 35276 used for every
// signature and key exchange when Config.UserID is empty.
var DefaultUserID = []byte("1234567812345678")

// CipherSuiteName returns the standard name of a cipher suite, or its
// number in hex when it is not one of this package's suites.
func CipherSuiteName(id uint16) string {
	if s := suiteByID(id); s != nil {
		return s.name
	}
	const hex = "0123456789abcdef"
	return "0x" + string([]byte{hex[id>>12], hex[id>>8&15], hex[id>>4&15], hex[id&15]})
}

// CipherSuites returns the IDs of the suites this package implements, in
// the default order of preference.
func CipherSuites() []uint16 {
	return []uint16{ECDHE_SM4_GCM_SM3, ECC_SM4_GCM_SM3, ECDHE_SM4_CBC_SM3, ECC_SM4_CBC_SM3}
}

// ClientAuthType says whether a server asks for and verifies the client's
// certificates, as in crypto/tls.
type ClientAuthType int

const (
	// NoClientCert asks for no client certificate. The ECDHE suites, which
	// need the client's encryption certificate, are then never chosen.
	NoClientCert ClientAuthType = iota
	// RequestClientCert asks for client certificates but does not require or
	// verify them.
	RequestClientCert
	// RequireAnyClientCert requires client certificates but does not verify
	// them against ClientCAs.
	RequireAnyClientCert
	// VerifyClientCertIfGiven verifies client certificates when the client
	// sends them.
	VerifyClientCertIfGiven
	// RequireAndVerifyClientCert requires client certificates and verifies
	// them against ClientCAs.
	RequireAndVerifyClientCert
)

// Certificate is one certificate chain and its private key.
type Certificate struct {
	// Certificate is the chain in DER, leaf first.
	Certificate [][]byte
	// PrivateKey is the leaf's key: a *sm2.PrivateKey, or a crypto.Signer
	// (signing certificate) or crypto.Decrypter (encryption certificate,
	// ECC suites) that accepts gmsm's SM2 options. The ECDHE suites need
	// the encryption key as a *sm2.PrivateKey.
	PrivateKey crypto.PrivateKey
	// Leaf is the parsed leaf (X509KeyPair fills it); informational, the
	// handshake sends Certificate.
	Leaf *smx509.Certificate
}

// ClientHelloInfo is what a server knows of a client when it picks its
// certificates.
type ClientHelloInfo struct {
	CipherSuites []uint16
	// ServerName is the server_name extension's host name, when the client
	// sent one (TLCP clients often do not).
	ServerName string
	// Conn is the underlying connection.
	Conn net.Conn
	ctx  context.Context
}

// Context returns the context of the handshake in progress.
func (i *ClientHelloInfo) Context() context.Context { return i.ctx }

// CertificateRequestInfo is what a client knows of a server's certificate
// request when it picks its certificates.
type CertificateRequestInfo struct {
	// AcceptableCAs are the DER distinguished names the server accepts;
	// empty means any.
	AcceptableCAs [][]byte
	// CipherSuite is the negotiated suite: the ECDHE suites need the
	// encryption certificate.
	CipherSuite uint16
	ctx         context.Context
}

// Context returns the context of the handshake in progress.
func (i *CertificateRequestInfo) Context() context.Context { return i.ctx }

// Config configures a client or a server. A Config may be shared by many
// connections and must not be modified once in use.
type Config struct {
	// Rand is the source of randomness; nil means crypto/rand.Reader.
	Rand io.Reader
	// Time returns the current time for certificate validity; nil means
	// time.Now.
	Time func() time.Time

	// SignCertificate and EncCertificate are this endpoint's double
	// certificate. A server needs both (or GetCertificates); a client
	// presents them when the server asks.
	SignCertificate *Certificate
	EncCertificate  *Certificate
	// GetCertificates, when set, is called on every server handshake
	// instead of reading SignCertificate and EncCertificate, so rotated
	// certificates are served without a restart.
	GetCertificates func(*ClientHelloInfo) (sign, enc *Certificate, err error)
	// GetClientCertificates, when set, is called when a server asks for
	// client certificates. It may return a nil enc for the ECC suites.
	GetClientCertificates func(*CertificateRequestInfo) (sign, enc *Certificate, err error)

	// RootCAs verify server certificates (client side).
	RootCAs *smx509.CertPool
	// ClientCAs verify client certificates (server side); their subjects
	// are sent in the certificate request.
	ClientCAs *smx509.CertPool
	// ClientAuth is the server's client certificate policy.
	ClientAuth ClientAuthType
	// ServerName, when set, is checked against the server's signing
	// certificate (client side) and sent as server_name. A client must set
	// ServerName, VerifyPeerCertificate, VerifyConnection or
	// InsecureSkipVerify: a chain to RootCAs alone names nobody.
	ServerName string
	// InsecureSkipVerify skips the client's chain and name verification; the
	// hooks still run. For tests and for hooks that verify everything.
	InsecureSkipVerify bool

	// VerifyPeerCertificate, when set, is called after the normal
	// verification with the peer's raw certificates (signing certificate
	// first, then the encryption certificate, then the rest of the chain)
	// and the verified chains of the signing certificate (nil when
	// verification was skipped). An error fails the handshake with a
	// bad_certificate alert. This is where SPIFFE ID authorization plugs in.
	VerifyPeerCertificate func(rawCerts [][]byte, verifiedChains [][]*smx509.Certificate) error
	// VerifyConnection, when set, is called at the end of certificate
	// processing with the connection's state; an error fails the handshake.
	VerifyConnection func(ConnectionState) error

	// CipherSuites lists the enabled suites in order of preference (the
	// server's order decides); nil means CipherSuites().
	CipherSuites []uint16
	// UserID is the SM2 user identifier used for this endpoint's signatures
	// and for verifying the peer's; empty means DefaultUserID.
	UserID []byte
}

func (c *Config) rand() io.Reader {
	if c.Rand != nil {
		return c.Rand
	}
	return rand.Reader
}

func (c *Config) now() time.Time {
	if c.Time != nil {
		return c.Time()
	}
	return time.Now()
}

func (c *Config) userID() []byte {
	if len(c.UserID) > 0 {
		return c.UserID
	}
	return DefaultUserID
}

func (c *Config) suites() []uint16 {
	if c.CipherSuites != nil {
		return c.CipherSuites
	}
	return CipherSuites()
}

// Clone returns a shallow copy of c.
func (c *Config) Clone() *Config {
	if c == nil {
		return nil
	}
	n := *c
	return &n
}

// ConnectionState describes a connection.
type ConnectionState struct {
	// Version is VersionTLCP once the handshake is done.
	Version uint16
	// HandshakeComplete says whether the handshake finished.
	HandshakeComplete bool
	// CipherSuite is the negotiated suite.
	CipherSuite uint16
	// ServerName is the server name the client asked for, if any.
	ServerName string
	// PeerCertificates are the peer's certificates as sent: the signing
	// certificate, the encryption certificate (when sent) and the rest of
	// the chain.
	PeerCertificates []*smx509.Certificate
	// PeerSignCertificate and PeerEncCertificate are the peer's double
	// certificate (PeerEncCertificate is nil when a client sent none).
	PeerSignCertificate *smx509.Certificate
	PeerEncCertificate  *smx509.Certificate
	// VerifiedChains are the verified chains of the signing certificate.
	VerifiedChains [][]*smx509.Certificate
}

// Errors a caller may match with errors.Is.
var (
	// ErrNoCertificates: a server has no double certificate to present.
	ErrNoCertificates = errors.New("tlcp: no signing and encryption certificates configured")
	// ErrNoVerification: a client config verifies nothing (see
	// Config.ServerName).
	ErrNoVerification = errors.New("tlcp: client config sets neither ServerName, a verification hook nor InsecureSkipVerify")
	// ErrNoSharedSuite: client and server have no cipher suite in common.
	ErrNoSharedSuite = errors.New("tlcp: no cipher suite in common")
)
