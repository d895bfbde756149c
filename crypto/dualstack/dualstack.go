// Package dualstack serves and dials international TLS (Go's crypto/tls,
// TLS 1.3 preferred, TLS 1.2 minimum) and China's TLCP (crypto/tlcp, GB/T
// 38636-2020) on the same port: a listener peeks at each connection's first
// record and hands it to the TLCP engine when the record's version is
// 0x0101, to crypto/tls otherwise. It also has a dialer, gRPC transport
// credentials for both protocols, and the accessors that tell a handler
// which protocol and cipher suite a connection negotiated.
//
// The package only routes and reports: certificates and peer authorization
// come from the *tls.Config and *tlcp.Config it is given (see the SPIFFE
// helpers in spiffe.go for the TLCP side). It must never implement
// cryptography itself.
package dualstack

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/zfaas/zfaas/crypto/tlcp"
)

// Mode selects the protocols a listener accepts or a dialer speaks.
type Mode string

const (
	// ModeStandard is TLS only (1.3, 1.2 minimum).
	ModeStandard Mode = "standard"
	// ModeGM is TLCP only.
	ModeGM Mode = "gm"
	// ModeAuto accepts both (the first record decides); a dialer tries TLS
	// first and TLCP when the server refuses TLS.
	ModeAuto Mode = "auto"
)

// ParseMode parses "standard", "gm" or "auto" ("" is auto).
func ParseMode(s string) (Mode, error) {
	switch m := Mode(strings.ToLower(strings.TrimSpace(s))); m {
	case ModeStandard, ModeGM, ModeAuto:
		return m, nil
	case "":
		return ModeAuto, nil
	default:
		return "", fmt.Errorf("unknown TLS mode %q (want standard, gm or auto)", s)
	}
}

// Protocol names of ConnectionState.Protocol.
const (
	ProtocolTLS  = "tls"
	ProtocolTLCP = "tlcp"
)

// ConnectionState is what a handler, a metric or a policy input needs to
// know about a secured connection, whichever protocol it speaks.
type ConnectionState struct {
	// Protocol is ProtocolTLS or ProtocolTLCP.
	Protocol string
	// Version is the protocol version: tls.VersionTLS13, tlcp.VersionTLCP…
	Version uint16
	// VersionName is e.g. "TLS 1.3" or "TLCP 1.1".
	VersionName string
	// CipherSuite and CipherSuiteName are the negotiated suite.
	CipherSuite     uint16
	CipherSuiteName string
	// PeerCertificates are the peer's certificates as crypto/x509 values
	// (for TLCP: the signing certificate first, then the encryption
	// certificate); empty when the peer sent none.
	PeerCertificates []*x509.Certificate
	// TLS or TLCP is the full state of the protocol that ran.
	TLS  *tls.ConnectionState
	TLCP *tlcp.ConnectionState
}

// GM reports whether the connection uses the GM/T suites (TLCP).
func (s ConnectionState) GM() bool { return s.Protocol == ProtocolTLCP }

// PeerID returns the SPIFFE ID of the peer's (signing) certificate.
func (s ConnectionState) PeerID() (spiffeid.ID, bool) {
	if len(s.PeerCertificates) == 0 {
		return spiffeid.ID{}, false
	}
	id, err := x509svid.IDFromCert(s.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, false
	}
	return id, true
}

// FromTLS describes a crypto/tls connection state.
func FromTLS(cs *tls.ConnectionState) ConnectionState {
	return ConnectionState{
		Protocol:         ProtocolTLS,
		Version:          cs.Version,
		VersionName:      tls.VersionName(cs.Version),
		CipherSuite:      cs.CipherSuite,
		CipherSuiteName:  tls.CipherSuiteName(cs.CipherSuite),
		PeerCertificates: cs.PeerCertificates,
		TLS:              cs,
	}
}

// FromTLCP describes a TLCP connection state.
func FromTLCP(cs *tlcp.ConnectionState) ConnectionState {
	s := ConnectionState{
		Protocol:        ProtocolTLCP,
		Version:         cs.Version,
		VersionName:     "TLCP 1.1",
		CipherSuite:     cs.CipherSuite,
		CipherSuiteName: tlcp.CipherSuiteName(cs.CipherSuite),
		TLCP:            cs,
	}
	for _, c := range cs.PeerCertificates {
		s.PeerCertificates = append(s.PeerCertificates, c.ToX509())
	}
	return s
}

// State returns the state of a connection made by this package's
// listener or dialer (a *tls.Conn or a *tlcp.Conn), once its handshake has
// finished; false for any other connection or before the handshake.
func State(c net.Conn) (ConnectionState, bool) {
	switch c := c.(type) {
	case *tls.Conn:
		cs := c.ConnectionState()
		if !cs.HandshakeComplete {
			return ConnectionState{}, false
		}
		return FromTLS(&cs), true
	case TLCPConn:
		cs := c.ConnectionState()
		if !cs.HandshakeComplete {
			return ConnectionState{}, false
		}
		return FromTLCP(&cs), true
	}
	return ConnectionState{}, false
}

type connKey struct{}

// ConnContext is an http.Server ConnContext hook: it remembers the
// connection so handlers can call FromContext(r.Context()). (net/http fills
// r.TLS for crypto/tls only; this works for both protocols.)
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// FromContext returns the state of the connection a request arrived on,
// when the server was set up with ConnContext.
func FromContext(ctx context.Context) (ConnectionState, bool) {
	c, ok := ctx.Value(connKey{}).(net.Conn)
	if !ok {
		return ConnectionState{}, false
	}
	return State(c)
}
