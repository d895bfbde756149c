// Package store is zfaas's adapter to its one engine for state and queues,
// NATS JetStream: key-value buckets with compare-and-set, a content-addressed
// package store on the JetStream object store, and access to the connection
// and JetStream context for streams (async invocations, audit records).
//
// With no URL configured, Open runs an embedded nats-server in-process whose
// JetStream file store lives under the data directory and which opens no
// network port at all: the only client is the in-process connection. With a
// URL it connects to an external NATS cluster instead; everything above Open
// is the same code path.
//
// The package must never hold application logic (what a function or a lease
// is) and never write shared state except through compare-and-set or
// content-addressed names.
package store

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Defaults used when the matching Config field is zero.
const (
	DefaultServerName   = "zfaas"
	DefaultStartTimeout = 30 * time.Second
	// KVHistory is how many revisions of each key a bucket made by KV keeps.
	KVHistory = 5
)

// drainTimeout bounds how long Close waits for in-flight messages.
const drainTimeout = 10 * time.Second

// Config configures Open. The zero value is not usable: set DataDir or URL.
type Config struct {
	// DataDir is the directory of the embedded server's JetStream file
	// store. It is created with mode 0700 if missing. Required when URL is
	// empty, ignored otherwise.
	DataDir string
	// URL, when set, names an external NATS cluster ("nats://a:4222,nats://b:4222")
	// to connect to instead of embedding a server.
	URL string
	// ClientOptions are extra client options for the URL connection, such as
	// TLS and credentials (nats.ClientTLSConfig, nats.UserCredentials).
	ClientOptions []nats.Option
	// Replicas is the replica count of the buckets this package creates:
	// 1 (the default) for the embedded server, 3 or 5 for a cluster.
	Replicas int
	// ServerName names the embedded server (default DefaultServerName).
	ServerName string
	// StartTimeout bounds how long Open waits for the embedded server
	// (including recovery of an existing store) or the cluster to be ready
	// (default DefaultStartTimeout). The context passed to Open can cut it
	// shorter.
	StartTimeout time.Duration
	// SyncAlways makes the embedded server fsync every write instead of
	// periodically. Slower; survives a machine crash, not only a process crash.
	SyncAlways bool
	// SpoolDir is where PutPackage keeps its temporary compressed copy of a
	// package (default os.TempDir()). Files there are 0600 and removed after use.
	SpoolDir string
	// Logger receives the store's and the embedded server's logs, with
	// component=store. Nil discards them.
	Logger *slog.Logger
	// Listen, when set, makes the embedded server accept clients on this
	// TCP address (workers on other machines), with TLS: TLS must then be
	// set and must require and verify a client certificate. Empty: the
	// embedded server listens on nothing and only this process uses it.
	Listen string
	// TLS is the embedded server's TLS configuration for Listen.
	TLS *tls.Config
}

// Store is an open connection to JetStream, and the embedded server when
// there is one. It is safe for concurrent use.
type Store struct {
	cfg    Config
	log    *slog.Logger
	srv    *server.Server // nil when connected to an external URL
	nc     *nats.Conn
	js     jetstream.JetStream
	closed chan struct{} // closed by the connection's closed handler

	closeOnce sync.Once
	closeErr  error

	objMu sync.Mutex
	obj   jetstream.ObjectStore // packages bucket, bound on first use

	putMu    sync.Mutex
	putLocks map[string]*digestLock // by digest, while a put holds it
}

// Open starts the embedded server (no URL) or connects to the cluster (URL)
// and returns once JetStream answers. On error nothing is left running.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
	}
	if cfg.Replicas < 0 || cfg.Replicas > 5 {
		return nil, fmt.Errorf("store: replicas %d out of range [1, 5]", cfg.Replicas)
	}
	if cfg.ServerName == "" {
		cfg.ServerName = DefaultServerName
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	if cfg.SpoolDir == "" {
		cfg.SpoolDir = os.TempDir()
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "store")

	ctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()

	s := &Store{cfg: cfg, log: log, closed: make(chan struct{})}
	var closedOnce sync.Once
	opts := []nats.Option{
		nats.Name("zfaas"),
		nats.MaxReconnects(-1),
		nats.DrainTimeout(drainTimeout),
		nats.ClosedHandler(func(*nats.Conn) { closedOnce.Do(func() { close(s.closed) }) }),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("disconnected from nats", "err", err)
			}
		}),
		nats.ReconnectHandler(func(*nats.Conn) { log.Info("reconnected to nats") }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			log.Warn("nats async error", "subject", subject, "err", err)
		}),
	}

	if cfg.URL == "" {
		srv, err := startEmbedded(ctx, cfg, log)
		if err != nil {
			return nil, err
		}
		s.srv = srv
		opts = append(opts, nats.InProcessServer(srv))
	} else {
		timeout := cfg.StartTimeout
		if dl, ok := ctx.Deadline(); ok {
			timeout = time.Until(dl)
		}
		opts = append(opts, nats.Timeout(timeout))
		opts = append(opts, cfg.ClientOptions...)
	}

	url := cfg.URL
	if url == "" {
		url = nats.DefaultURL // unused: the in-process provider wins
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		s.shutdownServer()
		return nil, fmt.Errorf("store: connect: %w", err)
	}
	s.nc = nc
	js, err := jetstream.New(nc)
	if err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("store: jetstream: %w", err)
	}
	s.js = js
	if _, err := js.AccountInfo(ctx); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("store: jetstream not available: %w", err)
	}
	if s.srv != nil {
		log.Info("embedded nats started", "dir", cfg.DataDir, "server", cfg.ServerName)
	} else {
		log.Info("connected to nats", "url", nc.ConnectedUrlRedacted())
	}
	return s, nil
}

// startEmbedded runs a JetStream-enabled nats-server that listens on nothing.
func startEmbedded(ctx context.Context, cfg Config, log *slog.Logger) (*server.Server, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("store: DataDir is required without a URL")
	}
	dir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("store: data dir: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store: data dir: %w", err)
	}
	opts := &server.Options{
		ServerName: cfg.ServerName,
		JetStream:  true,
		StoreDir:   dir,
		DontListen: true,
		NoSigs:     true,
		SyncAlways: cfg.SyncAlways,
	}
	if cfg.Listen != "" {
		host, port, err := net.SplitHostPort(cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("store: listen %q: %w", cfg.Listen, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("store: listen %q: %w", cfg.Listen, err)
		}
		if cfg.TLS == nil || (cfg.TLS.ClientAuth != tls.RequireAnyClientCert && cfg.TLS.ClientAuth != tls.RequireAndVerifyClientCert) {
			return nil, errors.New("store: listening needs TLS that requires client certificates")
		}
		if p == 0 {
			p = -1 // any free port
		}
		opts.DontListen = false
		opts.Host, opts.Port = host, p
		opts.TLSConfig = cfg.TLS
		opts.TLS = true
		opts.TLSVerify = true
		opts.TLSTimeout = 5
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("store: embedded nats: %w", err)
	}
	sl := &serverLogger{log: log.With("nats", "server")}
	srv.SetLoggerV2(sl, false, false, false)
	srv.Start()

	fail := func(err error) (*server.Server, error) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, err
	}
	for !srv.ReadyForConnections(100 * time.Millisecond) {
		if ctx.Err() != nil {
			return fail(fmt.Errorf("store: embedded nats not ready: %w", context.Cause(ctx)))
		}
		if msg := sl.fatal.Load(); msg != nil {
			return fail(fmt.Errorf("store: embedded nats: %s", *msg))
		}
	}
	if !srv.JetStreamEnabled() {
		msg := "jetstream did not start"
		if m := sl.fatal.Load(); m != nil {
			msg = *m
		}
		return fail(fmt.Errorf("store: embedded nats: %s", msg))
	}
	return srv, nil
}

// Conn returns the NATS connection, for publishing and subscribing on
// streams. It must not be closed by the caller.
func (s *Store) Conn() *nats.Conn { return s.nc }

// JetStream returns the JetStream context of the connection, for managing
// and consuming streams.
func (s *Store) JetStream() jetstream.JetStream { return s.js }

// Close drains the connection (waiting a bounded time for in-flight
// messages), then shuts the embedded server down and waits until its store
// is flushed, so a later Open of the same DataDir sees every acknowledged
// write. Close is idempotent; open watches end with their channels closed.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		if s.nc != nil {
			if err := s.nc.Drain(); err != nil {
				s.nc.Close()
			}
			select {
			case <-s.closed:
			case <-time.After(drainTimeout + time.Second):
				s.nc.Close()
				s.closeErr = errors.New("store: drain timed out")
			}
		}
		s.shutdownServer()
	})
	return s.closeErr
}

func (s *Store) shutdownServer() {
	if s.srv == nil {
		return
	}
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
	s.log.Info("embedded nats stopped")
}

// serverLogger forwards nats-server logs to slog and remembers the last
// fatal message (the embedded server logs it instead of exiting).
type serverLogger struct {
	log   *slog.Logger
	fatal atomic.Pointer[string]
}

func (l *serverLogger) Noticef(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *serverLogger) Warnf(format string, v ...any)   { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l *serverLogger) Errorf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l *serverLogger) Debugf(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *serverLogger) Tracef(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *serverLogger) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.fatal.Store(&msg)
	l.log.Error(msg, "fatal", true)
}

// ClientURL is the address workers on other machines use to reach the
// embedded server ("tls://HOST:PORT"), or "" when it listens on nothing or
// the store is an external cluster.
func (s *Store) ClientURL() string {
	if s.srv == nil || s.cfg.Listen == "" {
		return ""
	}
	addr := s.srv.Addr()
	if addr == nil {
		return ""
	}
	return "tls://" + addr.String()
}
