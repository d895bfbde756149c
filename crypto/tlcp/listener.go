package tlcp

import (
	"context"
	"net"
)

type listener struct {
	net.Listener
	config *Config
}

// Accept returns the next connection as a server side *Conn; its handshake
// runs on first use.
func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return Server(c, l.config), nil
}

// NewListener returns a listener whose connections are TLCP server
// connections over those of inner.
func NewListener(inner net.Listener, config *Config) net.Listener {
	return &listener{Listener: inner, config: config}
}

// Dial connects to addr and runs a client handshake, which ctx bounds. When
// config.ServerName is empty, the host part of addr is not filled in: TLCP
// peers are usually authorized by a verification hook (see Config).
func Dial(ctx context.Context, network, addr string, config *Config) (*Conn, error) {
	var d net.Dialer
	raw, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c := Client(raw, config)
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	return c, nil
}
