package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/crypto/mtls"
	"github.com/zfaas/zfaas/gateway"
	"github.com/zfaas/zfaas/policies"
	"github.com/zfaas/zfaas/policyd"
	"github.com/zfaas/zfaas/policyd/extauthz"
	"github.com/zfaas/zfaas/runtime/sandbox/process"
	"github.com/zfaas/zfaas/runtime/svid"
	"github.com/zfaas/zfaas/runtime/worker"
	"github.com/zfaas/zfaas/store"
)

func runUp(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) error {
	cfg := defaultUpConfig(getenv)
	fs := newFlagSet("zfaas up", "zfaas up [--config FILE] [flags]", stderr)
	configPath := fs.String("config", getenv("ZFAAS_CONFIG"), "YAML configuration file (env ZFAAS_CONFIG)")
	dataDir := fs.String("data-dir", "", "data directory (default "+cfg.DataDir+")")
	listen := fs.String("listen", "", "gateway HTTP address (default "+cfg.Gateway.Listen+")")
	grpcListen := fs.String("grpc-listen", "", "gateway gRPC address, or \"off\" (default "+cfg.Gateway.GRPCListen+")")
	tlsListen := fs.String("tls-listen", "", "gateway mutual-TLS (SPIFFE) address, or \"off\" (default "+cfg.Gateway.TLSListen+")")
	logLevel := fs.String("log-level", "", "debug, info, warn or error")
	examples := fs.String("deploy-examples", "", "deploy every function directory (with a zfaas.yaml) under DIR once the platform is up")
	clientCfg := fs.String("client-config", "", "where to write the CLI's config (default the user config dir; \"-\" to skip)")
	if _, err := parseInterspersed(fs, args); err != nil {
		return flagErr(err)
	}
	if *configPath != "" {
		if err := loadConfigFile(*configPath, &cfg); err != nil {
			return err
		}
	}
	for dst, v := range map[*string]string{&cfg.DataDir: *dataDir, &cfg.Gateway.Listen: *listen, &cfg.Gateway.GRPCListen: *grpcListen, &cfg.LogLevel: *logLevel} {
		if v != "" {
			*dst = v
		}
	}
	if *grpcListen == "off" {
		cfg.Gateway.GRPCListen = ""
	}
	switch *tlsListen {
	case "":
	case "off":
		cfg.Gateway.TLSListen = ""
	default:
		cfg.Gateway.TLSListen = *tlsListen
	}
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	log := newLogger(stderr, cfg.LogLevel)
	p, err := startPlatform(ctx, cfg, log)
	if err != nil {
		return err
	}
	gwURL := "http://" + p.httpAddr
	var refreshSVID task
	if *clientCfg != "-" {
		cc := clientConfig{Gateway: gwURL}
		path := *clientCfg
		if path == "" {
			path, err = clientConfigPath(getenv)
		}
		if err == nil && p.tlsAddr != "" {
			// The local administrator's X.509-SVID for the CLI, refreshed
			// well before it expires.
			dir := filepath.Dir(path)
			cc.GatewayMTLS, cc.GatewayID = "https://"+p.tlsAddr, gatewayID
			cc.Cert, cc.Key, cc.Bundle = filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid-key.pem"), filepath.Join(dir, "bundle.pem")
			refreshSVID = func(ctx context.Context) error {
				for {
					if err := writeAdminSVID(ctx, p, cc); err != nil {
						log.Warn("could not write the CLI's SVID", "err", err)
					}
					select {
					case <-ctx.Done():
						return nil
					case <-time.After(20 * time.Minute):
					}
				}
			}
			if err := os.MkdirAll(dir, 0o700); err == nil {
				if err := writeAdminSVID(ctx, p, cc); err != nil {
					log.Warn("could not write the CLI's SVID", "err", err)
					cc.GatewayMTLS, cc.Cert = "", ""
				}
			}
		}
		if err == nil {
			path, err = writeClientConfig(path, getenv, cc)
		}
		if err != nil {
			log.Warn("could not write the CLI config", "err", err)
		} else {
			log.Info("wrote CLI config", "path", path, "mtls", cc.GatewayMTLS != "")
		}
	}
	fmt.Fprintf(stdout, "zfaas is up: gateway %s, mTLS %s, gRPC %s, data in %s\n", gwURL, p.tlsAddr, p.grpcAddr, cfg.DataDir)
	tasks := []task{p.run}
	if refreshSVID != nil {
		tasks = append(tasks, refreshSVID)
	}
	if *examples != "" {
		tasks = append(tasks, func(ctx context.Context) error {
			if err := deployExamples(ctx, gwURL, *examples, stdout); err != nil {
				return fmt.Errorf("deploy examples: %w", err)
			}
			<-ctx.Done()
			return nil
		})
	}
	err = runTasks(ctx, tasks...)
	closeCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if cerr := p.close(closeCtx); cerr != nil {
		log.Warn("shutdown", "err", cerr)
	}
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
}

// platform is the all-in-one composition root: embedded NATS, gateway and
// one local worker.
type platform struct {
	cfg      upConfig
	log      *slog.Logger
	store    *store.Store
	policy   *policyd.Engine
	worker   *worker.Worker
	identity *svid.Provider
	gateway  *gateway.Gateway
	httpLn   net.Listener
	grpcLn   net.Listener
	httpSrv  *http.Server
	tlsSrv   *http.Server
	tlsLn    net.Listener
	tlsAddr  string
	grpcSrv  *grpc.Server
	httpAddr string
	grpcAddr string
	cancel   context.CancelFunc
	once     sync.Once
}

// startPlatform builds every component in order and opens the listeners;
// run serves them.
func startPlatform(ctx context.Context, cfg upConfig, log *slog.Logger) (_ *platform, err error) {
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	if err := os.Chmod(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p := &platform{cfg: cfg, log: log, cancel: cancel}
	defer func() {
		if err != nil {
			closeCtx, c := context.WithTimeout(context.Background(), 10*time.Second)
			defer c()
			p.close(closeCtx)
		}
	}()
	p.store, err = store.Open(ctx, store.Config{
		DataDir:  filepath.Join(cfg.DataDir, "nats"),
		URL:      cfg.Store.URL,
		Replicas: cfg.Store.Replicas,
		Logger:   log,
	})
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	var verifyKey []byte
	if cfg.Policy.VerifyKeyFile != "" {
		if verifyKey, err = os.ReadFile(cfg.Policy.VerifyKeyFile); err != nil {
			return nil, fmt.Errorf("policy.verify_key_file: %w", err)
		}
	}
	p.policy, err = policyd.New(bg, policyd.Config{
		Store:       p.store,
		Node:        "local",
		Logger:      log,
		Default:     policies.FS,
		DecisionLog: cfg.Policy.DecisionLog,
		VerifyKey:   verifyKey,
		KeyID:       cfg.Policy.KeyID,
	})
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	log.Warn("development: callers on loopback act as the local administrator until mTLS identities are configured (function instances excepted); the policy allows it only while data.zfaas.config.development.local_admin is true",
		"admin", localAdminID)
	log.Warn("sandbox driver \"process\": instances are isolated by namespaces, cgroups and seccomp, not by a virtual machine (development isolation)")
	driver, err := process.New(process.Config{
		StateDir: filepath.Join(cfg.DataDir, "sandbox"),
		UID:      cfg.Worker.UID,
		GID:      cfg.Worker.GID,
		Logger:   log,
	})
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// The gateway and the worker need each other (invoker; log sink and
	// observer), so the worker is bound through a small late-bound shim.
	p.identity, err = svid.Start(ctx, filepath.Join(cfg.DataDir, "identity"), trustDomain, cfg.Worker.UID, cfg.Worker.GID, log)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	shim := &lateInvoker{}
	local := &localAuth{admin: gateway.LocalAdmin{ID: localAdminID}, peers: shim, log: log}
	// Callers with a JWT-SVID for the gateway's audience are who their token
	// says (functions get theirs from the Workload API); the rest fall back
	// to the development shortcut.
	bearer := gateway.BearerJWT{Verifier: p.identity, Audience: gatewayID, Next: local, NextContext: local}
	// Over mutual TLS the caller is its X.509-SVID or its JWT-SVID, never
	// the development shortcut.
	auth := gateway.TLSPeer{Bearer: gateway.BearerJWT{Verifier: p.identity, Audience: gatewayID}, Plain: bearer}
	p.gateway, err = gateway.New(bg, gateway.Config{
		Store:                 p.store,
		Invoker:               shim,
		Authorizer:            engineAuthorizer{p.policy},
		Authenticator:         auth,
		GRPCAuthenticator:     bearer,
		Policy:                enginePolicyAdmin{e: p.policy, now: time.Now},
		Bundle:                p.identity,
		Users:                 p.identity,
		Logger:                log,
		Tenant:                cfg.Tenant,
		MaxPayloadBytes:       cfg.Gateway.MaxPayloadBytes,
		Archive:               cfg.archiveLimits(),
		DefaultMaxConcurrency: cfg.Gateway.DefaultMaxConcurrency,
		WaitBudget:            cfg.Gateway.WaitBudget,
		TempDir:               filepath.Join(cfg.DataDir, "tmp"),
		Registerer:            reg,
		LogRetention:          cfg.Gateway.LogRetention,
	})
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(cfg.DataDir, "tmp"), 0o700); err != nil {
		return nil, err
	}
	// The listener opens before the worker so functions can be told the
	// gateway's real address (the configured port may be 0).
	p.httpLn, err = net.Listen("tcp", cfg.Gateway.Listen)
	if err != nil {
		return nil, fmt.Errorf("gateway listen: %w", err)
	}
	p.httpAddr = p.httpLn.Addr().String()
	if cfg.Gateway.TLSListen != "" {
		p.tlsLn, err = net.Listen("tcp", cfg.Gateway.TLSListen)
		if err != nil {
			return nil, fmt.Errorf("gateway tls listen: %w", err)
		}
		p.tlsAddr = p.tlsLn.Addr().String()
	}
	p.worker, err = worker.New(worker.Config{
		DataDir:          filepath.Join(cfg.DataDir, "worker"),
		Driver:           driver,
		Packages:         p.store,
		ArchiveLimits:    cfg.archiveLimits(),
		IdleTimeout:      cfg.Worker.IdleTimeout,
		InitTimeout:      cfg.Worker.InitTimeout,
		MaxResponseBytes: cfg.Worker.MaxResponseBytes,
		Logs:             p.gateway.LogSink(),
		Observer:         p.gateway.Observer(),
		Logger:           log,
		Identity:         p.identity,
		Env:              gatewayEnv(p.httpAddr, p.tlsAddr),
	})
	if err != nil {
		return nil, err
	}
	shim.w = p.worker
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("/", p.gateway)
	p.httpSrv = &http.Server{
		Handler:           mux,
		ConnContext:       connContext,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if p.tlsLn != nil {
		p.tlsSrv = &http.Server{
			Handler:           mux,
			TLSConfig:         mtls.ServerConfig(p.identity.SVIDSource(gatewayID), p.identity),
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       120 * time.Second,
			MaxHeaderBytes:    64 << 10,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		}
	}
	if cfg.Gateway.GRPCListen != "" {
		p.grpcSrv = grpc.NewServer(grpc.MaxRecvMsgSize(p.gateway.GRPCMaxMessageBytes()), grpc.MaxSendMsgSize(int(cfg.Worker.MaxResponseBytes)+64<<10))
		p.gateway.RegisterGRPC(p.grpcSrv)
		// Envoy's external authorization, so a mesh can ask the same policy.
		extauthz.New(p.policy, log).Register(p.grpcSrv)
		p.grpcLn, err = net.Listen("tcp", cfg.Gateway.GRPCListen)
		if err != nil {
			return nil, fmt.Errorf("gateway grpc listen: %w", err)
		}
		p.grpcAddr = p.grpcLn.Addr().String()
	}
	log.Info("platform ready", "gateway", p.httpAddr, "gateway_mtls", p.tlsAddr, "grpc", p.grpcAddr, "data_dir", cfg.DataDir)
	return p, nil
}

// run serves until ctx ends or a server fails.
func (p *platform) run(ctx context.Context) error {
	tasks := []task{
		func(ctx context.Context) error {
			go func() { <-ctx.Done(); p.shutdownHTTP() }()
			if err := p.httpSrv.Serve(p.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("gateway http: %w", err)
			}
			return ctx.Err()
		},
	}
	if p.tlsSrv != nil {
		tasks = append(tasks, func(ctx context.Context) error {
			go func() {
				<-ctx.Done()
				sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_ = p.tlsSrv.Shutdown(sctx)
			}()
			if err := p.tlsSrv.ServeTLS(p.tlsLn, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("gateway mtls: %w", err)
			}
			return ctx.Err()
		})
	}
	if p.grpcSrv != nil {
		tasks = append(tasks, func(ctx context.Context) error {
			go func() { <-ctx.Done(); p.grpcSrv.GracefulStop() }()
			if err := p.grpcSrv.Serve(p.grpcLn); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				return fmt.Errorf("gateway grpc: %w", err)
			}
			return ctx.Err()
		})
	}
	return runTasks(ctx, tasks...)
}

func (p *platform) shutdownHTTP() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = p.httpSrv.Shutdown(ctx)
}

// close stops accepting, drains, stops instances and the store.
func (p *platform) close(ctx context.Context) error {
	var errs []error
	p.once.Do(func() {
		if p.tlsSrv != nil {
			_ = p.tlsSrv.Shutdown(ctx)
		} else if p.tlsLn != nil {
			p.tlsLn.Close()
		}
		if p.httpSrv != nil {
			_ = p.httpSrv.Shutdown(ctx)
		} else if p.httpLn != nil {
			p.httpLn.Close()
		}
		if p.grpcSrv != nil {
			p.grpcSrv.Stop()
		} else if p.grpcLn != nil {
			p.grpcLn.Close()
		}
		if p.worker != nil {
			errs = append(errs, p.worker.Close(ctx))
		}
		if p.identity != nil {
			errs = append(errs, p.identity.Close())
		}
		if p.policy != nil {
			errs = append(errs, p.policy.Close(ctx))
		}
		p.cancel()
		if p.store != nil {
			errs = append(errs, p.store.Close())
		}
	})
	return errors.Join(errs...)
}

// trustDomain is the SPIFFE trust domain of an all-in-one platform.
const trustDomain = "zfaas.local"

// gatewayID is the gateway's SPIFFE ID, the audience of the JWT-SVIDs it
// accepts.
const gatewayID = "spiffe://" + trustDomain + "/gateway/local"

// localAdminID is the SPIFFE ID local callers act as in development.
const localAdminID = "spiffe://zfaas.local/user/admin"

// lateInvoker forwards to the worker once it is built.
type lateInvoker struct{ w *worker.Worker }

func (l *lateInvoker) IsInstancePeer(local, remote net.Addr) bool {
	return l.w != nil && l.w.IsInstancePeer(local, remote)
}

func (l *lateInvoker) Invoke(ctx context.Context, inv api.Invocation) (*api.InvocationResult, error) {
	return l.w.Invoke(ctx, inv)
}

func (l *lateInvoker) Evict(v api.Version) { l.w.Evict(v) }

// task is one long-running part of a role.
type task func(ctx context.Context) error

// runTasks runs tasks until the first returns; it cancels the rest, waits
// for them and returns the first error. A panicking task is an error.
func runTasks(ctx context.Context, tasks ...task) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, len(tasks))
	for _, t := range tasks {
		go func() {
			defer func() {
				if r := recover(); r != nil {
					errc <- fmt.Errorf("panic: %v\n%s", r, strings.TrimSpace(string(debug.Stack())))
				}
			}()
			errc <- t(ctx)
		}()
	}
	err := <-errc
	cancel()
	for range len(tasks) - 1 {
		<-errc
	}
	return err
}

// gatewayEnv tells functions where the gateway is (plain and mutual-TLS)
// and which SPIFFE ID it has: the audience their JWT-SVIDs must name, and
// the ID their mTLS clients must expect.
func gatewayEnv(listen, tlsListen string) []string {
	env := []string{"ZFAAS_GATEWAY=http://" + listen, "ZFAAS_GATEWAY_AUDIENCE=" + gatewayID, "ZFAAS_GATEWAY_ID=" + gatewayID}
	if tlsListen != "" {
		env = append(env, "ZFAAS_GATEWAY_MTLS=https://"+tlsListen)
	}
	return env
}

// writeAdminSVID mints the local administrator's X.509-SVID and writes it,
// its key (0600) and the trust bundle where the CLI config points.
func writeAdminSVID(ctx context.Context, p *platform, cc clientConfig) error {
	svid, err := p.identity.MintX509(ctx, localAdminID)
	if err != nil {
		return err
	}
	bundle, err := p.identity.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
	if err != nil {
		return err
	}
	return writeSVIDFiles(cc.Cert, cc.Key, cc.Bundle, svid, bundle)
}
