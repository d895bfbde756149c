package dualstack

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/zfaas/zfaas/crypto/tlcp"
)

// Config configures a dual-stack listener, dialer or gRPC credentials.
type Config struct {
	// Mode is the accepted protocol set; "" means ModeAuto.
	Mode Mode
	// TLS configures the standard side (needed unless Mode is ModeGM). Its
	// MinVersion is raised to TLS 1.2 when lower.
	TLS *tls.Config
	// TLCP configures the GM side (needed unless Mode is ModeStandard).
	TLCP *tlcp.Config
	// Engine makes the TLCP connections; nil means BuiltinEngine
	// (crypto/tlcp).
	Engine TLCPEngine
	// PeekTimeout bounds how long a new connection may take to send its
	// first bytes before it is dropped (default 10 s).
	PeekTimeout time.Duration
	// MaxPending bounds the connections waiting for their first bytes
	// (default 1024); Accept on the inner listener pauses beyond it.
	MaxPending int
}

func (c Config) mode() Mode {
	if c.Mode == "" {
		return ModeAuto
	}
	return c.Mode
}

func (c Config) validate() error {
	m := c.mode()
	if _, err := ParseMode(string(m)); err != nil {
		return err
	}
	if m != ModeGM && c.TLS == nil {
		return fmt.Errorf("dualstack: mode %s needs a TLS config", m)
	}
	if m != ModeStandard && c.TLCP == nil {
		return fmt.Errorf("dualstack: mode %s needs a TLCP config", m)
	}
	return nil
}

func (c Config) tlsConfig() *tls.Config {
	if c.TLS == nil {
		return nil
	}
	t := c.TLS.Clone()
	if t.MinVersion < tls.VersionTLS12 {
		t.MinVersion = tls.VersionTLS12
	}
	return t
}

// isTLCP reports whether a connection's first bytes are a TLCP handshake
// record (type 22, version 0x0101).
func isTLCP(hdr []byte) bool {
	return len(hdr) >= 3 && hdr[0] == 22 && hdr[1] == 0x01 && hdr[2] == 0x01
}

// prefixConn replays bytes already buffered while peeking.
type prefixConn struct {
	net.Conn
	br *bufio.Reader
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if c.br != nil && c.br.Buffered() > 0 {
		return c.br.Read(b)
	}
	return c.Conn.Read(b)
}

// peek reads a connection's first three bytes without consuming them.
func peek(raw net.Conn) (net.Conn, []byte, error) {
	br := bufio.NewReaderSize(raw, 16)
	hdr, err := br.Peek(3)
	if err != nil {
		return nil, nil, err
	}
	return &prefixConn{Conn: raw, br: br}, hdr, nil
}

// Listener accepts TLS and TLCP connections on one inner listener. Accept
// returns a *tls.Conn or a *tlcp.Conn whose handshake has not run yet (it
// runs on first use, or on Handshake), so net/http serves HTTP/2 over TLS
// as usual. Classifying a connection waits for its first bytes in a
// goroutine of its own, so a silent client never blocks Accept.
type Listener struct {
	inner   net.Listener
	cfg     Config
	tlsCfg  *tls.Config
	conns   chan net.Conn
	done    chan struct{}
	sem     chan struct{}
	errOnce sync.Once
	err     error
	errc    chan struct{}
	close   sync.Once
	wg      sync.WaitGroup // the accept loop

	mu      sync.Mutex
	pending map[net.Conn]struct{} // being classified
	closed  bool
}

var _ net.Listener = (*Listener)(nil)

// NewListener wraps inner. It returns an error when cfg lacks the config
// its mode needs.
func NewListener(inner net.Listener, cfg Config) (*Listener, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.PeekTimeout <= 0 {
		cfg.PeekTimeout = 10 * time.Second
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 1024
	}
	l := &Listener{
		inner:   inner,
		cfg:     cfg,
		tlsCfg:  cfg.tlsConfig(),
		conns:   make(chan net.Conn),
		done:    make(chan struct{}),
		sem:     make(chan struct{}, cfg.MaxPending),
		errc:    make(chan struct{}),
		pending: map[net.Conn]struct{}{},
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l, nil
}

// Listen listens on a TCP address and wraps the listener.
func Listen(network, addr string, cfg Config) (*Listener, error) {
	inner, err := net.Listen(network, addr)
	if err != nil {
		return nil, err
	}
	l, err := NewListener(inner, cfg)
	if err != nil {
		inner.Close()
		return nil, err
	}
	return l, nil
}

func (l *Listener) fail(err error) {
	l.errOnce.Do(func() {
		l.err = err
		close(l.errc)
	})
}

func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	var backoff time.Duration
	for {
		raw, err := l.inner.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				select {
				case <-time.After(backoff):
					continue
				case <-l.done:
					l.fail(net.ErrClosed)
					return
				}
			}
			l.fail(err)
			return
		}
		backoff = 0
		select {
		case l.sem <- struct{}{}:
		case <-l.done:
			raw.Close()
			l.fail(net.ErrClosed)
			return
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			raw.Close()
			<-l.sem
			continue
		}
		l.pending[raw] = struct{}{}
		l.mu.Unlock()
		go l.classify(raw)
	}
}

func (l *Listener) classify(raw net.Conn) {
	c, err := l.wrap(raw)
	<-l.sem
	l.mu.Lock()
	delete(l.pending, raw)
	l.mu.Unlock()
	if err != nil {
		raw.Close()
		return
	}
	select {
	case l.conns <- c:
	case <-l.done:
		raw.Close()
	}
}

// wrap picks the protocol of one accepted connection.
func (l *Listener) wrap(raw net.Conn) (net.Conn, error) {
	switch l.cfg.mode() {
	case ModeStandard:
		return tls.Server(raw, l.tlsCfg), nil
	case ModeGM:
		return l.cfg.engine().Server(raw, l.cfg.TLCP), nil
	}
	if err := raw.SetReadDeadline(time.Now().Add(l.cfg.PeekTimeout)); err != nil {
		return nil, err
	}
	pc, hdr, err := peek(raw)
	if err != nil {
		return nil, err
	}
	if err := raw.SetReadDeadline(time.Time{}); err != nil {
		return nil, err
	}
	if isTLCP(hdr) {
		return l.cfg.engine().Server(pc, l.cfg.TLCP), nil
	}
	return tls.Server(pc, l.tlsCfg), nil
}

// Accept returns the next classified connection.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.errc:
		return nil, l.err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting, drops connections still being classified, and
// closes the inner listener.
func (l *Listener) Close() error {
	var err error
	l.close.Do(func() {
		close(l.done)
		err = l.inner.Close()
		l.wg.Wait()
		l.mu.Lock()
		l.closed = true
		for c := range l.pending {
			c.Close()
		}
		l.mu.Unlock()
	})
	return err
}

// Addr returns the inner listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Dialer dials TLS or TLCP according to its mode.
type Dialer struct {
	Config
	// NetDialer dials the TCP connection; nil means a zero net.Dialer.
	NetDialer *net.Dialer
}

// DialContext connects and runs the handshake; it returns a *tls.Conn or
// a *tlcp.Conn. In ModeAuto it tries TLS first and, when that handshake
// fails (not when ctx ends), dials again with TLCP.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if err := d.validate(); err != nil {
		return nil, err
	}
	switch d.mode() {
	case ModeStandard:
		return d.dialTLS(ctx, network, addr)
	case ModeGM:
		return d.dialTLCP(ctx, network, addr)
	}
	c, err := d.dialTLS(ctx, network, addr)
	if err == nil || ctx.Err() != nil {
		return c, err
	}
	var hsErr handshakeError
	if !errors.As(err, &hsErr) {
		return nil, err
	}
	c, err2 := d.dialTLCP(ctx, network, addr)
	if err2 != nil {
		return nil, fmt.Errorf("dualstack: TLS: %v; TLCP: %w", err, err2)
	}
	return c, nil
}

type handshakeError struct{ error }

func (e handshakeError) Unwrap() error { return e.error }

func (d *Dialer) netDialer() *net.Dialer {
	if d.NetDialer != nil {
		return d.NetDialer
	}
	return &net.Dialer{}
}

func (d *Dialer) dialTLS(ctx context.Context, network, addr string) (net.Conn, error) {
	raw, err := d.netDialer().DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	cfg := d.tlsConfig()
	if cfg.ServerName == "" && !cfg.InsecureSkipVerify {
		host, _, _ := net.SplitHostPort(addr)
		cfg.ServerName = host
	}
	c := tls.Client(raw, cfg)
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, handshakeError{err}
	}
	return c, nil
}

func (d *Dialer) dialTLCP(ctx context.Context, network, addr string) (net.Conn, error) {
	raw, err := d.netDialer().DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c := d.engine().Client(raw, d.TLCP)
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, handshakeError{err}
	}
	return c, nil
}
