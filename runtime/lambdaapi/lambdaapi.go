// Package lambdaapi serves the AWS Lambda Runtime API (version 2018-06-01)
// to exactly one function instance, so that unmodified Lambda runtimes — a Go
// program using github.com/aws/aws-lambda-go/lambda.Start, or zfaas's Python
// and Node.js bootstraps — can run on zfaas.
//
// The worker starts one Server per instance, gives the instance
// AWS_LAMBDA_RUNTIME_API=Addr() (see Server.Env), waits for the runtime to
// finish its initialisation with WaitReady and then calls Invoke once per
// event. The runtime pulls each event with GET /runtime/invocation/next and
// answers with POST /runtime/invocation/{id}/response or …/error.
//
// The package never starts, watches or kills processes: when the instance
// exits or must be killed, the worker calls Close, which fails any pending
// WaitReady or Invoke with ErrClosed. It never serves more than one instance
// and never reads a request body without a limit. It does not implement the
// Extensions or Telemetry APIs; their endpoints answer 404.
package lambdaapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zfaas/zfaas/api"
)

// Defaults and limits.
const (
	// DefaultAddr is the listen address used when Config.Addr is empty.
	DefaultAddr = "127.0.0.1:0"
	// DefaultMaxResponseBytes is the response payload limit used when
	// Config.MaxResponseBytes is zero: 6 MiB, as in AWS Lambda.
	DefaultMaxResponseBytes int64 = 6 << 20
	// MaxErrorBytes bounds the body of an /error or /init/error report.
	MaxErrorBytes int64 = 1 << 20
	// MaxHeaderValueBytes bounds each Event string sent to the runtime in a
	// header (trace ID, ARN, client context).
	MaxHeaderValueBytes = 16 << 10
	// MaxRequestIDBytes bounds Event.RequestID.
	MaxRequestIDBytes = 128
)

// Function error types the Server itself reports in Result.FuncErr.
const (
	// ErrorTypeResponseTooLarge: the runtime posted a response larger than
	// Config.MaxResponseBytes.
	ErrorTypeResponseTooLarge = "Function.ResponseSizeTooLarge"
	// ErrorTypeErrorTooLarge: the runtime posted an error report larger than
	// MaxErrorBytes (when it gave no type in the header).
	ErrorTypeErrorTooLarge = "Runtime.ErrorReportTooLarge"
	// ErrorTypeNoResponse: the runtime asked for the next event without
	// answering the one it had been given.
	ErrorTypeNoResponse = "Runtime.NoResponse"
	// ErrorTypeUnknown: the runtime reported an error without a type.
	ErrorTypeUnknown = "Runtime.Unknown"
)

var (
	// ErrClosed is returned by WaitReady and Invoke once Close was called.
	ErrClosed = errors.New("lambdaapi: server closed")
	// ErrInvokeInProgress is returned by Invoke when another Invoke on the
	// same Server has not returned yet: an instance runs one event at a time.
	ErrInvokeInProgress = errors.New("lambdaapi: another invocation is in progress on this instance")
	// ErrInvalidEvent is returned (wrapped) by Invoke when the Event cannot
	// be passed to a runtime as it is.
	ErrInvalidEvent = errors.New("lambdaapi: invalid event")
)

// InitError is the function's own report of a failed initialisation, posted
// to /runtime/init/error. WaitReady and every later Invoke return it.
type InitError struct {
	// ErrorType is the function's error type, e.g. "Runtime.ImportModuleError".
	ErrorType string
	// ErrorMessage is the function's description of the failure.
	ErrorMessage string
	// StackTrace is the stack the function reported, if any.
	StackTrace []string
}

// Error implements error.
func (e *InitError) Error() string {
	return fmt.Sprintf("lambdaapi: function initialisation failed: %s: %s", e.ErrorType, e.ErrorMessage)
}

// FunctionError returns the report in the shape zfaas returns to callers.
func (e *InitError) FunctionError() *api.FunctionError {
	return &api.FunctionError{
		ErrorType:    e.ErrorType,
		ErrorMessage: e.ErrorMessage,
		StackTrace:   append([]string(nil), e.StackTrace...),
	}
}

// Config configures a Server. The zero value is usable.
type Config struct {
	// Addr is the TCP address to listen on; default DefaultAddr.
	Addr string
	// Logger receives the Server's logs (with component=lambdaapi); nil
	// discards them.
	Logger *slog.Logger
	// FunctionName, FunctionVersion and MemoryMB describe the function to
	// the runtime through Env; they do not change how the Server behaves.
	FunctionName    string
	FunctionVersion string
	MemoryMB        int
	// MaxResponseBytes limits a response payload; default
	// DefaultMaxResponseBytes. A larger response is refused with 413 and
	// the invocation fails with ErrorTypeResponseTooLarge.
	MaxResponseBytes int64
	// Authorize, if set, is called once for every accepted connection
	// before any request on it is read; when it returns an error the
	// connection is closed. It runs on the accept loop, so it must return
	// quickly. The worker uses it to check that the peer belongs to the
	// instance.
	Authorize func(net.Conn) error
}

// Event is one invocation handed to the runtime.
type Event struct {
	// RequestID identifies the invocation: 1–128 bytes of [A-Za-z0-9._:-],
	// unique per Server. Required.
	RequestID string
	// Payload is the event document, normally JSON.
	Payload []byte
	// Deadline is when the invocation times out. When zero, the deadline of
	// Invoke's ctx is used, or else now + api.MaxTimeoutSeconds.
	Deadline time.Time
	// InvokedFunctionARN is the function reference the caller used.
	// Optional.
	InvokedFunctionARN string
	// TraceID is the tracing header value. Optional.
	TraceID string
	// ClientContext is a JSON object describing the calling client.
	// Optional; it must be valid JSON when set.
	ClientContext string
}

// Result is the outcome of an invocation the runtime answered.
type Result struct {
	// Payload is the response body the runtime posted; nil when FuncErr is set.
	Payload []byte
	// FuncErr is set when the function failed: it posted an error, posted
	// an oversized response, or asked for the next event without answering.
	FuncErr *api.FunctionError
}

// Server serves the Runtime API to one function instance. Its methods are
// safe for concurrent use.
type Server struct {
	cfg       Config
	log       *slog.Logger
	ln        net.Listener
	srv       *http.Server
	serveDone chan struct{}

	ready      chan struct{} // closed on the first GET /next
	initFailed chan struct{} // closed when /init/error was accepted
	closed     chan struct{} // closed by Close
	closeOnce  sync.Once
	closeErr   error

	invoking atomic.Bool // an Invoke call is running

	mu      sync.Mutex
	isReady bool
	initErr *InitError
	// current is the invocation of the running Invoke call, if any.
	current *invocation
	// nextGen counts GET /next requests; only the latest one may take an
	// event, so a request the runtime abandoned cannot swallow one.
	nextGen uint64
	// waiting counts GET /next requests blocked for an event.
	waiting int
	// changed is closed and replaced whenever current or nextGen changes,
	// waking the blocked GET /next requests.
	changed   chan struct{}
	recent    [recentIDs]string
	recentPos int
}

// recentIDs is how many finished request IDs the Server remembers, to tell
// a late or repeated answer from a made-up request ID.
const recentIDs = 32

// invocation is the state of one Invoke call. Its fields other than ev and
// done are guarded by Server.mu.
type invocation struct {
	ev        Event
	delivered bool
	finished  bool
	done      chan Result // buffered 1
}

// New starts a Server listening on cfg.Addr and serving in the background.
// Call Close to stop it.
func New(cfg Config) (*Server, error) {
	if cfg.Addr == "" {
		cfg.Addr = DefaultAddr
	}
	if cfg.MaxResponseBytes == 0 {
		cfg.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if cfg.MaxResponseBytes < 0 {
		return nil, fmt.Errorf("lambdaapi: MaxResponseBytes %d is negative", cfg.MaxResponseBytes)
	}
	if cfg.MemoryMB < 0 {
		return nil, fmt.Errorf("lambdaapi: MemoryMB %d is negative", cfg.MemoryMB)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "lambdaapi")
	if cfg.FunctionName != "" {
		logger = logger.With("function", cfg.FunctionName)
	}

	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("lambdaapi: listen on %s: %w", cfg.Addr, err)
	}
	if cfg.Authorize != nil {
		ln = &authListener{Listener: ln, authorize: cfg.Authorize, log: logger}
	}
	s := &Server{
		cfg:        cfg,
		log:        logger,
		ln:         ln,
		serveDone:  make(chan struct{}),
		changed:    make(chan struct{}),
		ready:      make(chan struct{}),
		initFailed: make(chan struct{}),
		closed:     make(chan struct{}),
	}
	s.srv = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 30 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	go func() {
		defer close(s.serveDone)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("runtime API server stopped", "err", err)
		}
	}()
	return s, nil
}

// Addr returns the host:port the Server listens on, the value of
// AWS_LAMBDA_RUNTIME_API for the instance.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Env returns the Lambda environment variables that point a runtime at this
// Server and describe the function: AWS_LAMBDA_RUNTIME_API and, when set in
// Config, AWS_LAMBDA_FUNCTION_NAME, AWS_LAMBDA_FUNCTION_VERSION and
// AWS_LAMBDA_FUNCTION_MEMORY_SIZE, each as "KEY=value".
func (s *Server) Env() []string {
	env := []string{"AWS_LAMBDA_RUNTIME_API=" + s.Addr()}
	if s.cfg.FunctionName != "" {
		env = append(env, "AWS_LAMBDA_FUNCTION_NAME="+s.cfg.FunctionName)
	}
	if s.cfg.FunctionVersion != "" {
		env = append(env, "AWS_LAMBDA_FUNCTION_VERSION="+s.cfg.FunctionVersion)
	}
	if s.cfg.MemoryMB > 0 {
		env = append(env, "AWS_LAMBDA_FUNCTION_MEMORY_SIZE="+strconv.Itoa(s.cfg.MemoryMB))
	}
	return env
}

// Close stops listening, closes every connection and makes pending and
// future WaitReady and Invoke calls return ErrClosed. It is idempotent.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		close(s.closed)
		s.closeErr = s.srv.Close()
		<-s.serveDone
	})
	return s.closeErr
}

// WaitReady blocks until the runtime finished initialising, which it signals
// by its first GET /runtime/invocation/next, and then returns nil. It returns
// an *InitError if the runtime reported an initialisation error, ErrClosed
// after Close, or ctx's error (wrapped) when ctx is done first.
func (s *Server) WaitReady(ctx context.Context) error {
	select {
	case <-s.ready:
		return nil
	default:
	}
	select {
	case <-s.ready:
		return nil
	case <-s.initFailed:
		return s.initError()
	case <-s.closed:
		return ErrClosed
	case <-ctx.Done():
		return fmt.Errorf("lambdaapi: wait for runtime initialisation: %w", ctx.Err())
	}
}

// Invoke hands ev to the runtime and blocks until the runtime answers it. A
// function error is not an error of Invoke: it is Result.FuncErr. Invoke
// returns an error when ev is invalid (ErrInvalidEvent), when another Invoke
// is in progress (ErrInvokeInProgress), when the runtime reported an
// initialisation error (*InitError), after Close (ErrClosed), or when ctx is
// done first (ctx's error, wrapped): the instance is then in an unknown state
// and should be killed.
func (s *Server) Invoke(ctx context.Context, ev Event) (Result, error) {
	if err := ev.normalize(ctx); err != nil {
		return Result{}, err
	}
	if !s.invoking.CompareAndSwap(false, true) {
		return Result{}, ErrInvokeInProgress
	}
	defer s.invoking.Store(false)

	inv := &invocation{ev: ev, done: make(chan Result, 1)}
	s.mu.Lock()
	switch {
	case s.isClosed():
		s.mu.Unlock()
		return Result{}, ErrClosed
	case s.initErr != nil:
		err := s.initErr
		s.mu.Unlock()
		return Result{}, err
	case s.seenLocked(ev.RequestID):
		s.mu.Unlock()
		return Result{}, fmt.Errorf("%w: request ID %q was already used on this instance", ErrInvalidEvent, ev.RequestID)
	}
	s.current = inv
	s.notifyLocked()
	s.mu.Unlock()
	defer s.abandon(inv)

	select {
	case res := <-inv.done:
		return res, nil
	case <-s.initFailed:
		return Result{}, s.initError()
	case <-s.closed:
		return Result{}, ErrClosed
	case <-ctx.Done():
		s.mu.Lock()
		phase := "waiting for the runtime to take the event"
		if inv.delivered {
			phase = "waiting for the runtime's answer"
		}
		s.mu.Unlock()
		return Result{}, fmt.Errorf("lambdaapi: invoke %s: %s: %w", ev.RequestID, phase, ctx.Err())
	}
}

// notifyLocked wakes the blocked GET /next requests. s.mu must be held.
func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// abandon forgets inv if it is still the current invocation, so that a late
// answer from the runtime is refused.
func (s *Server) abandon(inv *invocation) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !inv.finished {
		inv.finished = true
		s.rememberLocked(inv.ev.RequestID)
	}
	if s.current == inv {
		s.current = nil
	}
}

// finishLocked completes inv with res. s.mu must be held.
func (s *Server) finishLocked(inv *invocation, res Result) {
	if inv.finished {
		return
	}
	inv.finished = true
	s.rememberLocked(inv.ev.RequestID)
	if s.current == inv {
		s.current = nil
	}
	inv.done <- res
}

func (s *Server) rememberLocked(id string) {
	s.recent[s.recentPos] = id
	s.recentPos = (s.recentPos + 1) % len(s.recent)
}

func (s *Server) seenLocked(id string) bool {
	for _, r := range s.recent {
		if r == id {
			return true
		}
	}
	return false
}

func (s *Server) isClosed() bool {
	select {
	case <-s.closed:
		return true
	default:
		return false
	}
}

func (s *Server) initError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.initErr == nil {
		return nil
	}
	return s.initErr
}

// normalize validates ev and fills its defaults.
func (ev *Event) normalize(ctx context.Context) error {
	if ev.RequestID == "" {
		return fmt.Errorf("%w: request ID is empty", ErrInvalidEvent)
	}
	if len(ev.RequestID) > MaxRequestIDBytes {
		return fmt.Errorf("%w: request ID is longer than %d bytes", ErrInvalidEvent, MaxRequestIDBytes)
	}
	for i := 0; i < len(ev.RequestID); i++ {
		if !isIDByte(ev.RequestID[i]) {
			return fmt.Errorf("%w: request ID %q has a character outside [A-Za-z0-9._:-]", ErrInvalidEvent, ev.RequestID)
		}
	}
	if ev.ClientContext != "" {
		var b bytes.Buffer
		if err := json.Compact(&b, []byte(ev.ClientContext)); err != nil {
			return fmt.Errorf("%w: client context is not valid JSON: %v", ErrInvalidEvent, err)
		}
		ev.ClientContext = b.String()
	}
	for name, v := range map[string]string{
		"invoked function ARN": ev.InvokedFunctionARN,
		"trace ID":             ev.TraceID,
		"client context":       ev.ClientContext,
	} {
		if len(v) > MaxHeaderValueBytes {
			return fmt.Errorf("%w: %s is longer than %d bytes", ErrInvalidEvent, name, MaxHeaderValueBytes)
		}
		if !validHeaderValue(v) {
			return fmt.Errorf("%w: %s has control characters", ErrInvalidEvent, name)
		}
	}
	if ev.Deadline.IsZero() {
		if d, ok := ctx.Deadline(); ok {
			ev.Deadline = d
		} else {
			ev.Deadline = time.Now().Add(api.MaxTimeoutSeconds * time.Second)
		}
	}
	return nil
}

func isIDByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '_' || c == '.' || c == ':'
}

func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// authListener vets every accepted connection with Config.Authorize.
type authListener struct {
	net.Listener
	authorize func(net.Conn) error
	log       *slog.Logger
}

func (l *authListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if err := l.authorize(c); err != nil {
			l.log.Warn("refused runtime API connection", "remote", c.RemoteAddr().String(), "err", err)
			c.Close()
			continue
		}
		return c, nil
	}
}
