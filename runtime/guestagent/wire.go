// Package guestagent is the micro-VM guest agent and the wire protocol it
// speaks with the worker over the VM's private channel: a virtio-serial
// port, or AF_VSOCK where the host has vhost-vsock ([GuestTransport]).
//
// The agent runs as PID 1 in the guest (see [RunGuest]): it mounts /proc,
// /sys, /dev and /tmp, loads the virtio modules, announces itself with a
// Ready frame, receives the instance's [Config], runs the function's command
// and forwards its output and exit. TCP connections are tunnelled in both
// directions as flow-controlled streams multiplexed over the one channel
// ([Mux]), so the guest needs no NIC. Unix sockets the host put in the
// instance's mounts (the SPIFFE Workload API endpoint) are served in the
// guest at the same place and tunnelled the same way, guest to host only. [RunHostProxy] is the host-side helper
// that the driver runs inside the instance's cgroup so that every host socket
// made on the VM's behalf belongs to that cgroup (eBPF egress rules and the
// worker's peer checks apply).
//
// The agent must never trust the host end more than the kernel does: it only
// runs what its Config says, and it never opens a host connection itself.
// Frame sizes are bounded on both sides.
package guestagent

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Frame types.
const (
	TReady      byte = 1  // guest→host, JSON Ready
	TConfig     byte = 2  // host→guest, JSON Config
	TStarted    byte = 3  // guest→host, JSON Started
	TExit       byte = 4  // guest→host, JSON Exit
	TStdout     byte = 5  // guest→host, raw bytes
	TStderr     byte = 6  // guest→host, raw bytes
	TOpen       byte = 7  // either way, JSON Open; opens stream
	TOpenResult byte = 8  // answer to TOpen; empty payload = ok, else error text
	TData       byte = 9  // stream bytes
	TClose      byte = 10 // stream closed by the sender
	TWindow     byte = 11 // 4-byte big-endian credit for the stream
)

// Protocol limits.
const (
	headerSize = 9
	// MaxFrame bounds one frame's payload; larger frames end the session.
	MaxFrame = 1 << 20
	// chunk is the largest data payload a writer sends.
	chunk = 32 << 10
	// window is each stream's initial receive window.
	window = 256 << 10
	// MaxStreams bounds the streams open at once on one Mux (both
	// directions together); opens beyond it are refused, not queued.
	MaxStreams = 256
	// MaxSockets bounds Config.Sockets.
	MaxSockets = 16
	// MaxSocketPath bounds a Config.Sockets path (sun_path is 108 bytes
	// with its terminating NUL).
	MaxSocketPath = 107
	// Version is the protocol version in Ready. 2 added Config.Sockets,
	// Open.Kind and MaxStreams.
	Version = 2
	// PortName is the virtio-serial port name of the agent channel.
	PortName = "zfaas.agent"
)

// Ready is the agent's first frame.
type Ready struct {
	Version int `json:"version"`
	// AgentStartNanos is the guest's CLOCK_BOOTTIME when the agent began
	// (time from kernel start to PID 1); ReadyNanos when it sent Ready.
	AgentStartNanos int64  `json:"agent_start_ns"`
	ReadyNanos      int64  `json:"ready_ns"`
	Kernel          string `json:"kernel,omitempty"`
	// Transport is the channel the agent opened (TransportSerial or
	// TransportVsock).
	Transport string `json:"transport,omitempty"`
	Error     string `json:"error,omitempty"` // setup failure (modules, mounts)
}

// Config tells the agent what to run. An empty Args means: only report
// Ready, then power off (the accelerator probe).
type Config struct {
	Args    []string `json:"args"`
	Env     []string `json:"env"`
	WorkDir string   `json:"workdir,omitempty"`
	// Listen are guest TCP addresses (127.0.0.1:PORT) the agent listens on;
	// each accepted connection becomes a stream opened with Open.Forward
	// set to the address's index.
	Listen []string `json:"listen,omitempty"`
	// UnixNanos is the host's wall clock; the guest sets its clock to it.
	UnixNanos int64 `json:"unix_ns"`
	// UID and GID run the command; 0 keeps root (the VM is the boundary).
	UID int `json:"uid,omitempty"`
	GID int `json:"gid,omitempty"`
	// Limits inside the guest; zero means none beyond the VM's own. The
	// command runs in a cgroup of its own (FunctionCgroup) with memory.max
	// MemoryBytes and pids.max PIDs, so the guest's OOM killer and fork
	// limit hit the function, never the agent; NoFile is its
	// RLIMIT_NOFILE; /tmp is a tmpfs of TmpBytes.
	MemoryBytes int64  `json:"memory_bytes,omitempty"`
	PIDs        int64  `json:"pids,omitempty"`
	NoFile      uint64 `json:"nofile,omitempty"`
	TmpBytes    int64  `json:"tmp_bytes,omitempty"`
	// Sockets are absolute guest paths of Unix sockets the agent listens
	// on before it starts the command (at most MaxSockets, each at most
	// MaxSocketPath bytes; mode 0600, owned by UID/GID). Each accepted
	// connection becomes a stream opened with Open{Kind: StreamUnix,
	// Forward: index}. The host alone knows which host socket an index
	// stands for: the guest can never name a host path.
	Sockets []string `json:"sockets,omitempty"`
}

// Started reports that the command runs, or why it could not start.
type Started struct {
	Pid   int    `json:"pid,omitempty"`
	Error string `json:"error,omitempty"`
}

// Exit reports how the command ended.
type Exit struct {
	Code   int    `json:"code"`
	Signal string `json:"signal,omitempty"`
	Error  string `json:"error,omitempty"`
}

// Stream kinds in Open.Kind.
const (
	StreamTCP  = ""     // Forward indexes Config.Listen (guest→host), or Port (host→guest)
	StreamUnix = "unix" // Forward indexes Config.Sockets; guest→host only
)

// Open starts a stream: Forward (guest→host) names an index of
// Config.Listen, or of Config.Sockets when Kind is StreamUnix; Port
// (host→guest) a guest loopback TCP port to dial.
type Open struct {
	Kind    string `json:"kind,omitempty"`
	Forward int    `json:"forward,omitempty"`
	Port    int    `json:"port,omitempty"`
}

// errTooManyStreams refuses an open beyond MaxStreams.
var errTooManyStreams = errors.New("guestagent: too many open streams")

// ErrClosed is returned by operations on a closed Mux or Stream.
var ErrClosed = errors.New("guestagent: closed")

// Frame is one non-stream message delivered by [Mux.Next].
type Frame struct {
	Type    byte
	Payload []byte
}

// Mux multiplexes control frames and byte streams over one connection. It
// is safe for concurrent use.
type Mux struct {
	conn  io.ReadWriteCloser
	wmu   sync.Mutex
	odd   bool // this side opens odd stream ids
	frame chan Frame
	// OnOpen is called (in its own goroutine) for every stream the peer
	// opens; it must answer with Stream.Accept or Stream.Reject. Set
	// before Run.
	OnOpen func(s *Stream, o Open)

	mu      sync.Mutex
	streams map[uint32]*Stream
	next    uint32
	err     error
	done    chan struct{}
}

// NewMux wraps conn. guest selects odd stream ids for streams opened here
// (the host uses even ones). Call Run to start reading.
func NewMux(conn io.ReadWriteCloser, guest bool) *Mux {
	m := &Mux{conn: conn, odd: guest, frame: make(chan Frame, 64), streams: map[uint32]*Stream{}, done: make(chan struct{})}
	if guest {
		m.next = 1
	} else {
		m.next = 2
	}
	return m
}

// Send writes one control frame.
func (m *Mux) Send(typ byte, payload []byte) error { return m.write(typ, 0, payload) }

// SendJSON writes one control frame with v as JSON.
func (m *Mux) SendJSON(typ byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return m.Send(typ, b)
}

func (m *Mux) write(typ byte, id uint32, payload []byte) error {
	if len(payload) > MaxFrame {
		return fmt.Errorf("guestagent: frame of %d bytes over limit", len(payload))
	}
	var h [headerSize]byte
	h[0] = typ
	binary.BigEndian.PutUint32(h[1:5], id)
	binary.BigEndian.PutUint32(h[5:9], uint32(len(payload)))
	m.wmu.Lock()
	defer m.wmu.Unlock()
	select {
	case <-m.done:
		return ErrClosed
	default:
	}
	if _, err := m.conn.Write(append(h[:], payload...)); err != nil {
		return fmt.Errorf("guestagent: write frame: %w", err)
	}
	return nil
}

// Next returns the next control frame, or an error once the connection
// ended.
func (m *Mux) Next() (Frame, error) {
	f, ok := <-m.frame
	if !ok {
		return Frame{}, m.Err()
	}
	return f, nil
}

// Done is closed when the Mux stopped (connection error or Close).
func (m *Mux) Done() <-chan struct{} { return m.done }

// Err reports why the Mux stopped.
func (m *Mux) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err == nil {
		return ErrClosed
	}
	return m.err
}

// Close stops the Mux, closes the connection and every stream.
func (m *Mux) Close() error { m.fail(ErrClosed); return nil }

func (m *Mux) fail(err error) {
	m.mu.Lock()
	select {
	case <-m.done:
		m.mu.Unlock()
		return
	default:
	}
	m.err = err
	close(m.done)
	streams := m.streams
	m.streams = map[uint32]*Stream{}
	m.mu.Unlock()
	m.conn.Close()
	for _, s := range streams {
		s.remoteClosed(true)
	}
}

// Run reads frames until the connection fails; it returns that error.
func (m *Mux) Run() error {
	defer close(m.frame)
	var h [headerSize]byte
	for {
		if _, err := io.ReadFull(m.conn, h[:]); err != nil {
			m.fail(fmt.Errorf("guestagent: read frame: %w", err))
			return m.Err()
		}
		typ, id, n := h[0], binary.BigEndian.Uint32(h[1:5]), binary.BigEndian.Uint32(h[5:9])
		if n > MaxFrame {
			m.fail(fmt.Errorf("guestagent: frame of %d bytes over limit", n))
			return m.Err()
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(m.conn, p); err != nil {
			m.fail(fmt.Errorf("guestagent: read frame: %w", err))
			return m.Err()
		}
		if err := m.dispatch(typ, id, p); err != nil {
			m.fail(err)
			return m.Err()
		}
	}
}

func (m *Mux) dispatch(typ byte, id uint32, p []byte) error {
	switch typ {
	case TOpen:
		var o Open
		if err := json.Unmarshal(p, &o); err != nil {
			return fmt.Errorf("guestagent: bad open: %w", err)
		}
		if (id%2 == 1) == m.odd || id == 0 {
			return fmt.Errorf("guestagent: peer opened stream %d with our parity", id)
		}
		s, err := m.newStream(id)
		if errors.Is(err, errTooManyStreams) {
			// Refused without registering; written off the read loop.
			go func() { _ = m.write(TOpenResult, id, []byte(err.Error())) }()
			return nil
		} else if err != nil {
			return err
		}
		if m.OnOpen == nil {
			s.Reject(errors.New("no streams accepted"))
			return nil
		}
		go m.OnOpen(s, o)
	case TOpenResult, TData, TClose, TWindow:
		m.mu.Lock()
		s := m.streams[id]
		m.mu.Unlock()
		if s == nil {
			return nil // closed here meanwhile
		}
		return s.handle(typ, p)
	default:
		select {
		case m.frame <- Frame{Type: typ, Payload: p}:
		case <-m.done:
		}
	}
	return nil
}

// newStream registers stream id; it fails for an id in use and, with
// errTooManyStreams, when MaxStreams are open.
func (m *Mux) newStream(id uint32) (*Stream, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.streams[id]; ok {
		return nil, fmt.Errorf("guestagent: stream %d opened twice", id)
	}
	if len(m.streams) >= MaxStreams {
		return nil, errTooManyStreams
	}
	s := &Stream{m: m, id: id, credit: window, opened: make(chan string, 1)}
	s.cond = sync.NewCond(&s.mu)
	m.streams[id] = s
	return s, nil
}

// OpenStream opens a stream to the peer and waits until the peer accepted
// or rejected it, or timeout passed.
func (m *Mux) OpenStream(o Open, timeout time.Duration) (*Stream, error) {
	m.mu.Lock()
	select {
	case <-m.done:
		m.mu.Unlock()
		return nil, ErrClosed
	default:
	}
	id := m.next
	m.next += 2
	m.mu.Unlock()
	s, err := m.newStream(id)
	if err != nil {
		return nil, err
	}
	b, _ := json.Marshal(o)
	if err := m.write(TOpen, id, b); err != nil {
		s.forget()
		return nil, err
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case e := <-s.opened:
		if e != "" {
			s.forget()
			return nil, fmt.Errorf("guestagent: open refused: %s", e)
		}
		return s, nil
	case <-t.C:
		s.Close()
		return nil, errors.New("guestagent: open timed out")
	case <-m.done:
		return nil, m.Err()
	}
}

// Stream is one tunnelled byte stream. Read and Write are safe to call from
// one reader and one writer goroutine at a time.
type Stream struct {
	m      *Mux
	id     uint32
	opened chan string

	mu       sync.Mutex
	cond     *sync.Cond
	buf      []byte
	consumed int  // bytes read since the last window update
	rclosed  bool // peer closed: reads drain then EOF, writes fail
	closed   bool // closed here
	credit   int  // bytes we may still send
}

// Accept confirms a stream the peer opened.
func (s *Stream) Accept() error { return s.m.write(TOpenResult, s.id, nil) }

// Reject refuses a stream the peer opened.
func (s *Stream) Reject(err error) {
	msg := err.Error()
	if msg == "" {
		msg = "refused"
	}
	_ = s.m.write(TOpenResult, s.id, []byte(msg))
	s.forget()
}

func (s *Stream) forget() {
	s.m.mu.Lock()
	delete(s.m.streams, s.id)
	s.m.mu.Unlock()
	s.mu.Lock()
	s.closed = true
	s.cond.Broadcast()
	s.mu.Unlock()
}

func (s *Stream) handle(typ byte, p []byte) error {
	switch typ {
	case TOpenResult:
		select {
		case s.opened <- string(p):
		default:
		}
	case TData:
		s.mu.Lock()
		defer s.mu.Unlock()
		if len(s.buf)+len(p) > window {
			return fmt.Errorf("guestagent: stream %d overran its window", s.id)
		}
		if !s.closed {
			s.buf = append(s.buf, p...)
			s.cond.Broadcast()
		}
	case TClose:
		s.remoteClosed(false)
		s.mu.Lock()
		done := s.closed
		s.mu.Unlock()
		if done {
			s.forget()
		}
	case TWindow:
		if len(p) != 4 {
			return errors.New("guestagent: bad window frame")
		}
		s.mu.Lock()
		s.credit += int(binary.BigEndian.Uint32(p))
		if s.credit > window {
			s.mu.Unlock()
			return fmt.Errorf("guestagent: stream %d window over limit", s.id)
		}
		s.cond.Broadcast()
		s.mu.Unlock()
	}
	return nil
}

func (s *Stream) remoteClosed(muxDown bool) {
	s.mu.Lock()
	s.rclosed = true
	if muxDown {
		s.closed = true
	}
	s.cond.Broadcast()
	s.mu.Unlock()
}

// Read reads tunnelled bytes; io.EOF once the peer closed and the buffer
// is drained.
func (s *Stream) Read(p []byte) (int, error) {
	s.mu.Lock()
	for len(s.buf) == 0 && !s.rclosed && !s.closed {
		s.cond.Wait()
	}
	if len(s.buf) == 0 {
		s.mu.Unlock()
		if s.rclosed {
			return 0, io.EOF
		}
		return 0, ErrClosed
	}
	n := copy(p, s.buf)
	s.buf = s.buf[n:]
	if len(s.buf) == 0 {
		s.buf = nil
	}
	s.consumed += n
	var credit int
	if s.consumed >= window/4 || len(s.buf) == 0 {
		credit, s.consumed = s.consumed, 0
	}
	closed := s.closed || s.rclosed
	s.mu.Unlock()
	if credit > 0 && !closed {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(credit))
		_ = s.m.write(TWindow, s.id, b[:])
	}
	return n, nil
}

// Write sends p, blocking while the peer's window is full.
func (s *Stream) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		s.mu.Lock()
		for s.credit == 0 && !s.closed && !s.rclosed {
			s.cond.Wait()
		}
		if s.closed || s.rclosed {
			s.mu.Unlock()
			return written, ErrClosed
		}
		n := min(len(p), s.credit, chunk)
		s.credit -= n
		s.mu.Unlock()
		if err := s.m.write(TData, s.id, p[:n]); err != nil {
			return written, err
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

// Close closes the stream in both directions.
func (s *Stream) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	peerGone := s.rclosed
	s.buf = nil
	s.cond.Broadcast()
	s.mu.Unlock()
	err := s.m.write(TClose, s.id, nil)
	if peerGone {
		s.forget()
	}
	if errors.Is(err, ErrClosed) {
		return nil
	}
	return err
}

// Bridge copies between s and c until both directions ended (or one ended
// and the other stayed idle for 30 s), then closes both.
func Bridge(s *Stream, c net.Conn) {
	fromConn := make(chan struct{})
	fromStream := make(chan struct{})
	go func() { _, _ = io.Copy(s, c); close(fromConn) }()
	go func() {
		_, _ = io.Copy(c, s)
		// The stream ended: half-close c where it can, so request and
		// response protocols see the end of input.
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		close(fromStream)
	}()
	t := time.NewTimer(30 * time.Second)
	defer t.Stop()
	select {
	case <-fromConn:
		select {
		case <-fromStream:
		case <-t.C:
		}
	case <-fromStream:
		select {
		case <-fromConn:
		case <-t.C:
		}
	}
	s.Close()
	c.Close()
}
