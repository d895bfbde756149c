package dualstack

import (
	"context"
	"net"

	"github.com/zfaas/zfaas/crypto/tlcp"
)

// TLCPConn is a TLCP connection as this package uses it.
type TLCPConn interface {
	net.Conn
	Handshake() error
	HandshakeContext(ctx context.Context) error
	ConnectionState() tlcp.ConnectionState
}

// TLCPEngine makes TLCP connections. The default, BuiltinEngine, is
// crypto/tlcp; another GB/T 38636 implementation (a certified module, an
// HSM-backed stack) plugs in here through Config.Engine without changing
// the listener, the dialer or the gRPC credentials.
type TLCPEngine interface {
	Server(conn net.Conn, cfg *tlcp.Config) TLCPConn
	Client(conn net.Conn, cfg *tlcp.Config) TLCPConn
}

// BuiltinEngine is crypto/tlcp.
type BuiltinEngine struct{}

// Server implements TLCPEngine.
func (BuiltinEngine) Server(conn net.Conn, cfg *tlcp.Config) TLCPConn { return tlcp.Server(conn, cfg) }

// Client implements TLCPEngine.
func (BuiltinEngine) Client(conn net.Conn, cfg *tlcp.Config) TLCPConn { return tlcp.Client(conn, cfg) }

var _ TLCPConn = (*tlcp.Conn)(nil)

func (c Config) engine() TLCPEngine {
	if c.Engine != nil {
		return c.Engine
	}
	return BuiltinEngine{}
}
