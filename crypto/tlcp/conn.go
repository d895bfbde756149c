package tlcp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emmansun/gmsm/smx509"
)

// maxHandshakeLen bounds one handshake message (a certificate message with
// two chains fits comfortably).
const maxHandshakeLen = 64 << 10

// Conn is a TLCP connection over an underlying net.Conn. Read and Write may
// be called concurrently with each other; ConnectionState and Close from
// any goroutine.
type Conn struct {
	conn     net.Conn
	br       *bufio.Reader
	config   *Config
	isClient bool

	handshakeMu   sync.Mutex
	handshakeErr  error
	handshakeDone atomic.Bool
	state         ConnectionState // set by the handshake, read-only afterwards

	in, out halfConn

	// Guarded by in.
	rbuf        []byte // record buffer
	input       []byte // application data not yet read
	hand        []byte // handshake bytes not yet parsed
	sawCCS      bool
	emptyCount  int
	warnCount   int
	alertSent   atomic.Bool
	closeNotify atomic.Bool

	// Guarded by out.
	sendBuf []byte
}

var _ net.Conn = (*Conn)(nil)

// Server returns a server side TLCP connection over conn. The handshake
// runs on the first Read or Write, or on Handshake.
func Server(conn net.Conn, config *Config) *Conn {
	return newConn(conn, config, false)
}

// Client returns a client side TLCP connection over conn.
func Client(conn net.Conn, config *Config) *Conn {
	return newConn(conn, config, true)
}

func newConn(conn net.Conn, config *Config, client bool) *Conn {
	if config == nil {
		config = &Config{}
	}
	return &Conn{
		conn:     conn,
		br:       bufio.NewReaderSize(conn, recordHeaderLen+maxCiphertext),
		config:   config,
		isClient: client,
	}
}

// LocalAddr returns the local network address.
func (c *Conn) LocalAddr() net.Addr { return c.conn.LocalAddr() }

// RemoteAddr returns the remote network address.
func (c *Conn) RemoteAddr() net.Addr { return c.conn.RemoteAddr() }

// SetDeadline sets the read and write deadlines of the underlying
// connection; a Write that times out leaves the connection unusable.
func (c *Conn) SetDeadline(t time.Time) error { return c.conn.SetDeadline(t) }

// SetReadDeadline sets the underlying connection's read deadline.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.conn.SetReadDeadline(t) }

// SetWriteDeadline sets the underlying connection's write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.conn.SetWriteDeadline(t) }

// NetConn returns the underlying connection.
func (c *Conn) NetConn() net.Conn { return c.conn }

// ConnectionState returns the connection's negotiated parameters. It
// waits for a handshake in progress.
func (c *Conn) ConnectionState() ConnectionState {
	c.handshakeMu.Lock()
	defer c.handshakeMu.Unlock()
	return c.state
}

// Handshake runs the handshake if it has not run yet.
func (c *Conn) Handshake() error { return c.HandshakeContext(context.Background()) }

// HandshakeContext runs the handshake if it has not run yet. Cancelling ctx
// aborts the handshake by closing the underlying connection.
func (c *Conn) HandshakeContext(ctx context.Context) (ret error) {
	if c.handshakeDone.Load() {
		return nil
	}
	c.handshakeMu.Lock()
	defer c.handshakeMu.Unlock()
	if c.handshakeErr != nil {
		return c.handshakeErr
	}
	if c.handshakeDone.Load() {
		return nil
	}
	if ctx.Done() != nil {
		done := make(chan struct{})
		interrupted := make(chan error, 1)
		defer func() {
			close(done)
			if err := <-interrupted; err != nil {
				ret = fmt.Errorf("tlcp: handshake: %w", err)
				c.handshakeErr = ret
			}
		}()
		go func() {
			select {
			case <-ctx.Done():
				_ = c.conn.Close()
				interrupted <- ctx.Err()
			case <-done:
				interrupted <- nil
			}
		}()
	}

	c.in.Lock()
	defer c.in.Unlock()
	c.out.Lock()
	defer c.out.Unlock()
	var err error
	if c.isClient {
		err = c.clientHandshake(ctx)
	} else {
		err = c.serverHandshake(ctx)
	}
	if err == nil && len(c.hand) > 0 {
		err = c.fail(alertUnexpectedMessage, errors.New("handshake data after Finished"))
	}
	if err != nil {
		c.handshakeErr = err
		c.in.err, c.out.err = err, err
		return err
	}
	c.state.HandshakeComplete = true
	c.handshakeDone.Store(true)
	return nil
}

// fail sends a fatal alert (once per connection) and returns err wrapped
// with it. Callers hold out or the handshake's locks.
func (c *Conn) fail(code uint8, err error) error {
	if c.alertSent.CompareAndSwap(false, true) {
		c.sendBuf = c.sendBuf[:0]
		_ = c.writeAlertLocked(alertLevelFatal, code)
	}
	return fmt.Errorf("%w: %v", &AlertError{Code: code, Sent: true}, err)
}

func (c *Conn) writeAlertLocked(level, code uint8) error {
	if err := c.writeRecordLocked(recordAlert, []byte{level, code}); err != nil {
		return err
	}
	return c.flushLocked()
}

// writeRecordLocked protects data as records of type typ and queues them;
// flushLocked sends the queue. The caller holds out.
func (c *Conn) writeRecordLocked(typ uint8, data []byte) error {
	if c.out.err != nil {
		return c.out.err
	}
	for first := true; first || len(data) > 0; first = false {
		n := min(len(data), maxPlaintext)
		var err error
		c.sendBuf, err = c.out.seal(c.sendBuf, typ, data[:n], c.config.rand())
		if err != nil {
			c.out.err = err
			return err
		}
		data = data[n:]
	}
	return nil
}

func (c *Conn) flushLocked() error {
	if len(c.sendBuf) == 0 {
		return nil
	}
	_, err := c.conn.Write(c.sendBuf)
	c.sendBuf = c.sendBuf[:0]
	if err != nil {
		c.out.err = err
	}
	return err
}

// readRecord reads one record and acts on it: application data lands in
// c.input, handshake data in c.hand, a change_cipher_spec (only when
// expectCCS) switches the read protection. The caller holds in.
func (c *Conn) readRecord(expectCCS bool) error {
	if c.in.err != nil {
		return c.in.err
	}
	err := c.readRecordOnce(expectCCS)
	if err != nil && c.in.err == nil {
		c.in.err = err
	}
	return err
}

func (c *Conn) readRecordOnce(expectCCS bool) error {
	hdr, err := c.br.Peek(recordHeaderLen)
	if err != nil {
		if errors.Is(err, io.EOF) && len(hdr) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	typ := hdr[0]
	vers := uint16(hdr[1])<<8 | uint16(hdr[2])
	n := int(hdr[3])<<8 | int(hdr[4])
	if vers != VersionTLCP {
		return c.failLocked(alertProtocolVersion, fmt.Errorf("record version %#04x, want %#04x", vers, VersionTLCP))
	}
	if limit := maxCiphertext; c.in.p == nil && n > maxPlaintext || n > limit {
		return c.failLocked(alertRecordOverflow, fmt.Errorf("record of %d bytes", n))
	}
	if cap(c.rbuf) < n {
		c.rbuf = make([]byte, maxCiphertext)
	}
	buf := c.rbuf[:n]
	if _, err := c.br.Discard(recordHeaderLen); err != nil {
		return err
	}
	if _, err := io.ReadFull(c.br, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	data, err := c.in.open(typ, buf)
	if err != nil {
		return c.failLocked(alertBadRecordMAC, err)
	}
	if len(data) > maxPlaintext {
		return c.failLocked(alertRecordOverflow, errors.New("decrypted record too long"))
	}

	if typ != recordAlert {
		c.warnCount = 0
	}
	if typ != recordApplicationData || len(data) > 0 {
		c.emptyCount = 0
	}
	switch typ {
	case recordAlert:
		if len(data) != 2 {
			return c.failLocked(alertDecodeError, errors.New("malformed alert"))
		}
		level, code := data[0], data[1]
		if code == alertCloseNotify {
			c.closeNotify.Store(true)
			return io.EOF
		}
		if level == alertLevelWarning && c.handshakeDone.Load() {
			c.warnCount++
			if c.warnCount > maxWarnings {
				return c.failLocked(alertUnexpectedMessage, errors.New("too many warning alerts"))
			}
			return nil
		}
		if level != alertLevelWarning && level != alertLevelFatal {
			return c.failLocked(alertIllegalParameter, errors.New("bad alert level"))
		}
		// A fatal alert, or any warning during the handshake (TLCP defines
		// none a handshake can continue after), ends the connection.
		c.alertSent.Store(true) // never answer an alert with an alert
		return &AlertError{Code: code}
	case recordChangeCipherSpec:
		if !expectCCS || len(c.hand) > 0 {
			return c.failLocked(alertUnexpectedMessage, errors.New("unexpected change_cipher_spec"))
		}
		if len(data) != 1 || data[0] != 1 {
			return c.failLocked(alertDecodeError, errors.New("malformed change_cipher_spec"))
		}
		if err := c.in.changeCipherSpec(); err != nil {
			return c.failLocked(alertUnexpectedMessage, err)
		}
		c.sawCCS = true
		return nil
	case recordHandshake:
		if expectCCS {
			return c.failLocked(alertUnexpectedMessage, errors.New("handshake message instead of change_cipher_spec"))
		}
		if len(data) == 0 {
			return c.failLocked(alertDecodeError, errors.New("empty handshake record"))
		}
		if len(c.hand)+len(data) > maxHandshakeLen+4 {
			return c.failLocked(alertDecodeError, errors.New("handshake message too long"))
		}
		c.hand = append(c.hand, data...)
		if c.handshakeDone.Load() {
			return c.handlePostHandshake()
		}
		return nil
	case recordApplicationData:
		if !c.handshakeDone.Load() || expectCCS {
			return c.failLocked(alertUnexpectedMessage, errors.New("application data before the handshake finished"))
		}
		if len(data) == 0 {
			c.emptyCount++
			if c.emptyCount > maxEmptyRecords {
				return c.failLocked(alertUnexpectedMessage, errors.New("too many empty records"))
			}
		}
		c.input = data
		return nil
	default:
		return c.failLocked(alertUnexpectedMessage, fmt.Errorf("unknown record type %d", typ))
	}
}

// failLocked is fail for a reader: it takes out unless the handshake
// (which holds it already) is running.
func (c *Conn) failLocked(code uint8, err error) error {
	if c.handshakeDone.Load() {
		c.out.Lock()
		defer c.out.Unlock()
	}
	return c.fail(code, err)
}

// handlePostHandshake refuses renegotiation: a client answers a
// HelloRequest with a no_renegotiation warning; anything else is fatal.
func (c *Conn) handlePostHandshake() error {
	for len(c.hand) >= 4 {
		typ := c.hand[0]
		n := int(c.hand[1])<<16 | int(c.hand[2])<<8 | int(c.hand[3])
		if c.isClient && typ == typeHelloRequest && n == 0 {
			c.hand = c.hand[4:]
			c.out.Lock()
			err := c.writeAlertLocked(alertLevelWarning, alertNoRenegotiation)
			c.out.Unlock()
			if err != nil {
				return err
			}
			continue
		}
		return c.failLocked(alertNoRenegotiation, errors.New("renegotiation is not supported"))
	}
	return nil
}

// readHandshake returns the next handshake message, header included. The
// caller holds in.
func (c *Conn) readHandshake() ([]byte, error) {
	for len(c.hand) < 4 {
		if err := c.readRecord(false); err != nil {
			return nil, err
		}
	}
	n := int(c.hand[1])<<16 | int(c.hand[2])<<8 | int(c.hand[3])
	if n > maxHandshakeLen {
		return nil, c.fail(alertDecodeError, fmt.Errorf("handshake message of %d bytes", n))
	}
	for len(c.hand) < 4+n {
		if err := c.readRecord(false); err != nil {
			return nil, err
		}
	}
	msg := make([]byte, 4+n)
	copy(msg, c.hand)
	c.hand = c.hand[4+n:]
	if len(c.hand) == 0 {
		c.hand = nil
	}
	return msg, nil
}

// readChangeCipherSpec waits for the peer's change_cipher_spec.
func (c *Conn) readChangeCipherSpec() error {
	c.sawCCS = false
	for !c.sawCCS {
		if err := c.readRecord(true); err != nil {
			return err
		}
	}
	return nil
}

// Read reads application data, running the handshake first if needed.
func (c *Conn) Read(b []byte) (int, error) {
	if err := c.Handshake(); err != nil {
		return 0, err
	}
	if len(b) == 0 {
		return 0, nil
	}
	c.in.Lock()
	defer c.in.Unlock()
	for len(c.input) == 0 {
		if err := c.readRecord(false); err != nil {
			return 0, err
		}
	}
	n := copy(b, c.input)
	c.input = c.input[n:]
	return n, nil
}

// Write writes application data, running the handshake first if needed.
func (c *Conn) Write(b []byte) (int, error) {
	if err := c.Handshake(); err != nil {
		return 0, err
	}
	c.out.Lock()
	defer c.out.Unlock()
	if c.out.err != nil {
		return 0, c.out.err
	}
	if len(b) == 0 {
		return 0, nil
	}
	written := 0
	for written < len(b) {
		// Flush at most a few records at a time so huge writes do not
		// buffer whole.
		chunk := min(len(b)-written, 4*maxPlaintext)
		if err := c.writeRecordLocked(recordApplicationData, b[written:written+chunk]); err != nil {
			return written, err
		}
		if err := c.flushLocked(); err != nil {
			return written, err
		}
		written += chunk
	}
	return written, nil
}

// Close sends a close_notify alert (when the handshake finished and no
// Write is blocked) and closes the underlying connection.
func (c *Conn) Close() error {
	var alertErr error
	if c.handshakeDone.Load() && c.out.TryLock() {
		if c.out.err == nil && !c.alertSent.Load() {
			_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			alertErr = c.writeAlertLocked(alertLevelWarning, alertCloseNotify)
			c.out.err = net.ErrClosed
		}
		c.out.Unlock()
	}
	if err := c.conn.Close(); err != nil {
		return err
	}
	return alertErr
}

// CloseWrite sends close_notify and shuts down the writing side of the
// underlying connection when it supports that.
func (c *Conn) CloseWrite() error {
	if !c.handshakeDone.Load() {
		return errors.New("tlcp: CloseWrite before the handshake finished")
	}
	c.out.Lock()
	err := c.writeAlertLocked(alertLevelWarning, alertCloseNotify)
	c.out.err = net.ErrClosed
	c.out.Unlock()
	if err != nil {
		return err
	}
	if cw, ok := c.conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// peerState fills the certificate part of the connection state.
func (c *Conn) setPeer(certs []*smx509.Certificate, sign, enc *smx509.Certificate, chains [][]*smx509.Certificate) {
	c.state.PeerCertificates = certs
	c.state.PeerSignCertificate = sign
	c.state.PeerEncCertificate = enc
	c.state.VerifiedChains = chains
}
