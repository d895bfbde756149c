package dualstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/zfaas/zfaas/crypto/tlcp"
)

// AuthInfo is the credentials.AuthInfo of a TLCP connection made with this
// package's gRPC credentials. (TLS connections get grpc's own
// credentials.TLSInfo, so existing TLS-aware code keeps working.)
type AuthInfo struct {
	credentials.CommonAuthInfo
	State ConnectionState
	// SPIFFEID is the peer's SPIFFE ID, when its signing certificate has one.
	SPIFFEID *url.URL
}

// AuthType returns "tlcp".
func (AuthInfo) AuthType() string { return ProtocolTLCP }

func newAuthInfo(c TLCPConn) AuthInfo {
	cs := c.ConnectionState()
	ai := AuthInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		State:          FromTLCP(&cs),
	}
	if id, ok := ai.State.PeerID(); ok {
		ai.SPIFFEID = id.URL()
	}
	return ai
}

// StateFromAuthInfo returns the connection state behind a gRPC peer's
// AuthInfo, for TLS (credentials.TLSInfo) and TLCP (AuthInfo) alike.
func StateFromAuthInfo(ai credentials.AuthInfo) (ConnectionState, bool) {
	switch ai := ai.(type) {
	case credentials.TLSInfo:
		return FromTLS(&ai.State), true
	case *credentials.TLSInfo:
		return FromTLS(&ai.State), true
	case AuthInfo:
		return ai.State, true
	case *AuthInfo:
		return ai.State, true
	}
	return ConnectionState{}, false
}

// StateFromPeer returns the connection state of the gRPC call in ctx.
func StateFromPeer(ctx context.Context) (ConnectionState, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return ConnectionState{}, false
	}
	return StateFromAuthInfo(p.AuthInfo)
}

// NewTLCPCredentials returns gRPC transport credentials that speak TLCP
// with cfg, as a client (cfg's verification applies; the authority is not
// turned into a ServerName) or as a server.
func NewTLCPCredentials(cfg *tlcp.Config) credentials.TransportCredentials {
	return &tlcpCreds{cfg: cfg, engine: BuiltinEngine{}}
}

type tlcpCreds struct {
	cfg    *tlcp.Config
	engine TLCPEngine
}

func (c *tlcpCreds) ClientHandshake(ctx context.Context, _ string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn := c.engine.Client(raw, c.cfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, newAuthInfo(conn), nil
}

func (c *tlcpCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn := c.engine.Server(raw, c.cfg)
	if err := conn.Handshake(); err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, newAuthInfo(conn), nil
}

func (c *tlcpCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: ProtocolTLCP}
}

func (c *tlcpCreds) Clone() credentials.TransportCredentials {
	return &tlcpCreds{cfg: c.cfg.Clone(), engine: c.engine}
}

// OverrideServerName sets the name checked against the server's signing
// certificate. Deprecated in gRPC; kept for the interface.
func (c *tlcpCreds) OverrideServerName(name string) error {
	c.cfg = c.cfg.Clone()
	c.cfg.ServerName = name
	return nil
}

// NewCredentials returns gRPC transport credentials for cfg's mode: on the
// server side ModeAuto peeks at each connection's first record and runs
// TLCP or TLS (grpc's own TLS credentials, with ALPN h2) accordingly; on the
// client side ModeGM speaks TLCP and the other modes TLS (a gRPC client
// cannot redial inside a handshake, so pick ModeGM for TLCP links).
func NewCredentials(cfg Config) (credentials.TransportCredentials, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	d := &dualCreds{mode: cfg.mode()}
	if cfg.TLS != nil {
		d.tls = credentials.NewTLS(cfg.tlsConfig())
	}
	if cfg.TLCP != nil {
		d.tlcp = &tlcpCreds{cfg: cfg.TLCP, engine: cfg.engine()}
	}
	return d, nil
}

type dualCreds struct {
	mode Mode
	tls  credentials.TransportCredentials
	tlcp *tlcpCreds
}

func (d *dualCreds) client() credentials.TransportCredentials {
	if d.mode == ModeGM {
		return d.tlcp
	}
	return d.tls
}

func (d *dualCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c := d.client()
	if c == nil {
		return nil, nil, errors.New("dualstack: no client credentials for this mode")
	}
	return c.ClientHandshake(ctx, authority, raw)
}

func (d *dualCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	switch d.mode {
	case ModeStandard:
		return d.tls.ServerHandshake(raw)
	case ModeGM:
		return d.tlcp.ServerHandshake(raw)
	}
	// grpc has set a deadline on raw for the whole handshake.
	pc, hdr, err := peek(raw)
	if err != nil {
		raw.Close()
		return nil, nil, fmt.Errorf("dualstack: read first record: %w", err)
	}
	if isTLCP(hdr) {
		return d.tlcp.ServerHandshake(pc)
	}
	return d.tls.ServerHandshake(pc)
}

func (d *dualCreds) Info() credentials.ProtocolInfo {
	if c := d.client(); c != nil {
		return c.Info()
	}
	return credentials.ProtocolInfo{SecurityProtocol: ProtocolTLCP}
}

func (d *dualCreds) Clone() credentials.TransportCredentials {
	n := &dualCreds{mode: d.mode}
	if d.tls != nil {
		n.tls = d.tls.Clone()
	}
	if d.tlcp != nil {
		n.tlcp = d.tlcp.Clone().(*tlcpCreds)
	}
	return n
}

// OverrideServerName is deprecated in gRPC; kept for the interface.
func (d *dualCreds) OverrideServerName(name string) error {
	if d.tls != nil {
		//lint:ignore SA1019 the interface still requires it
		if err := d.tls.OverrideServerName(name); err != nil {
			return err
		}
	}
	if d.tlcp != nil {
		return d.tlcp.OverrideServerName(name)
	}
	return nil
}
