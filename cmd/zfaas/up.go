package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/audit"
	"github.com/zfaas/zfaas/bpf"
	"github.com/zfaas/zfaas/crypto/dualstack"
	"github.com/zfaas/zfaas/crypto/mtls"
	"github.com/zfaas/zfaas/gateway"
	"github.com/zfaas/zfaas/identity/ca"
	"github.com/zfaas/zfaas/policyd"
	"github.com/zfaas/zfaas/policyd/extauthz"
	"github.com/zfaas/zfaas/runtime/attest/swtpm"
	"github.com/zfaas/zfaas/runtime/cluster"
	"github.com/zfaas/zfaas/runtime/egress"
	"github.com/zfaas/zfaas/runtime/sandbox"
	"github.com/zfaas/zfaas/runtime/sandbox/container"
	"github.com/zfaas/zfaas/runtime/sandbox/microvm"
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
	listen := fs.String("listen", "", "gateway HTTPS (mutual TLS) address (default "+cfg.Gateway.Listen+")")
	grpcListen := fs.String("grpc-listen", "", "gateway gRPC (mutual TLS) address, or \"off\" (default "+cfg.Gateway.GRPCListen+")")
	sandboxFlag := fs.String("sandbox", "", "sandbox driver: process, microvm or container (default "+cfg.Worker.Sandbox+")")
	suite := fs.String("suite", "", "identity suite: standard (ECDSA P-256) or gm (also SM2 sign+encryption certificates; the gateway then speaks TLCP and TLS 1.3 on one port) (default "+cfg.Identity.Suite+")")
	healthListen := fs.String("health-listen", "", "plain HTTP address for /healthz and /metrics only, or \"off\" (default "+cfg.Gateway.HealthListen+")")
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
	for dst, v := range map[*string]string{&cfg.Worker.Sandbox: *sandboxFlag, &cfg.Identity.Suite: *suite, &cfg.DataDir: *dataDir, &cfg.Gateway.Listen: *listen, &cfg.Gateway.GRPCListen: *grpcListen, &cfg.LogLevel: *logLevel} {
		if v != "" {
			*dst = v
		}
	}
	for dst, v := range map[*string]string{&cfg.Gateway.GRPCListen: *grpcListen, &cfg.Gateway.HealthListen: *healthListen} {
		switch v {
		case "":
		case "off":
			*dst = ""
		default:
			*dst = v
		}
	}
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	log := newLogger(stderr, cfg.LogLevel)
	p, err := startPlatform(ctx, cfg, log)
	if err != nil {
		return err
	}
	gwURL := "https://" + p.httpAddr
	var refreshSVID task
	if *clientCfg != "-" {
		path := *clientCfg
		if path == "" {
			// The user's own config dir: ZFAAS_CLIENT_CONFIG may point at
			// another user's config (from issue-user), never overwritten.
			path, err = clientConfigPath(func(k string) string {
				if k == "ZFAAS_CLIENT_CONFIG" {
					return ""
				}
				return getenv(k)
			})
		}
		if err == nil {
			// The local administrator's X.509-SVID for the CLI, refreshed
			// well before it expires.
			dir := filepath.Dir(path)
			cc := clientConfig{
				Gateway: gwURL, GatewayID: p.gatewayID,
				Cert: filepath.Join(dir, "svid.pem"), Key: filepath.Join(dir, "svid-key.pem"), Bundle: filepath.Join(dir, "bundle.pem"),
			}
			if cfg.Identity.Suite == "gm" {
				cc.withGMFiles(dir)
			}
			refreshSVID = func(ctx context.Context) error {
				for {
					select {
					case <-ctx.Done():
						return nil
					case <-time.After(adminSVIDRefresh(cfg.Identity.X509SVIDTTL)):
					}
					if err := writeAdminSVID(ctx, p, cc); err != nil {
						log.Warn("could not write the CLI's SVID", "err", err)
					}
				}
			}
			if err = os.MkdirAll(dir, 0o700); err == nil {
				if err = writeAdminSVID(ctx, p, cc); err == nil {
					path, err = writeClientConfig(path, getenv, cc)
				}
			}
		}
		if err != nil {
			log.Warn("could not write the CLI config and the local administrator's SVID", "err", err)
			refreshSVID = nil
		} else {
			log.Info("wrote CLI config and the local administrator's X.509-SVID", "path", path, "spiffe_id", p.adminID)
		}
	}
	fmt.Fprintf(stdout, "zfaas is up: gateway %s (mTLS), gRPC %s, health %s, trust domain %s, data in %s\n",
		gwURL, orOff(p.grpcAddr, " (mTLS)"), orOff(p.healthAddr, ""), p.td, cfg.DataDir)
	tasks := []task{p.run}
	if refreshSVID != nil {
		tasks = append(tasks, refreshSVID)
	}
	if *examples != "" {
		tasks = append(tasks, func(ctx context.Context) error {
			if err := deployExamples(ctx, gwURL, p.adminClient, *examples, stdout); err != nil {
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
	cfg    upConfig
	log    *slog.Logger
	store  *store.Store
	policy *policyd.Engine
	audit  *audit.Log // nil when audit.enabled is false
	// cluster is the registry of workers (the in-process one and any that
	// joined); dialer reaches the remote ones; lease keeps the in-process
	// worker's lease.
	cluster *cluster.Registry
	dialer  *workerDialer
	lease   task
	// swtpm is the software TPM of worker.attest: swtpm; localTPM the
	// address the in-process worker attests with ("" when not attested).
	swtpm    *swtpm.TPM
	localTPM string
	// closers run at close, after the worker stopped its instances.
	closers []func() error
	// egress enforces zfaas.egress on instances; nil when worker.egress
	// is off.
	egress *egressBinding
	// swapped is called when another policy revision activates.
	swapped  atomic.Pointer[func(int64)]
	worker   *worker.Worker
	identity *svid.Provider
	gateway  *gateway.Gateway
	httpLn   net.Listener // mutual-TLS HTTP API
	grpcLn   net.Listener // mutual-TLS gRPC
	healthLn net.Listener // plain /healthz and /metrics
	httpSrv  *http.Server
	health   *http.Server
	grpcSrv  *grpc.Server
	httpAddr string
	grpcAddr string
	// healthAddr is "" when the health listener is off.
	healthAddr string
	td         spiffeid.TrustDomain
	// gatewayID is the gateway's SPIFFE ID, the audience of the JWT-SVIDs
	// it accepts; adminID is the local administrator's.
	gatewayID, adminID string
	// adminClient is an HTTP client with the local administrator's
	// (rotating) X.509-SVID, for deploying the examples.
	adminClient *http.Client
	cancel      context.CancelFunc
	once        sync.Once
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
	td, err := spiffeid.TrustDomainFromString(cfg.Identity.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("identity.trust_domain: %w", err)
	}
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p := &platform{cfg: cfg, log: log, cancel: cancel, td: td,
		gatewayID: "spiffe://" + td.Name() + "/gateway/local", adminID: "spiffe://" + td.Name() + "/user/admin"}
	defer func() {
		if err != nil {
			closeCtx, c := context.WithTimeout(context.Background(), 10*time.Second)
			defer c()
			p.close(closeCtx)
		}
	}()
	p.identity, err = svid.Start(ctx, svid.Config{
		Dir:         filepath.Join(cfg.DataDir, "identity"),
		TrustDomain: td.Name(),
		UID:         cfg.Worker.UID,
		GID:         cfg.Worker.GID,
		Suite:       ca.Suite(cfg.Identity.Suite),
		X509TTL:     cfg.Identity.X509SVIDTTL,
		JWTTTL:      cfg.Identity.JWTSVIDTTL,
		CATTL:       cfg.Identity.CATTL,
		Logger:      log,
		OnIssue:     p.recordSVID,
		// The JWT-SVID written with SVID files is for the gateway.
		JWTAudience: []string{p.gatewayID},
	})
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	sc := store.Config{
		DataDir:  filepath.Join(cfg.DataDir, "nats"),
		URL:      cfg.Store.URL,
		Replicas: cfg.Store.Replicas,
		Logger:   log,
	}
	if cfg.Store.Listen != "" {
		// Workers on other machines reach the embedded store over TLS with
		// their worker SVIDs; nothing else may connect.
		sc.Listen, sc.TLS = cfg.Store.Listen, storeServerTLS(p.identity, p.gatewayID, td)
	}
	p.store, err = store.Open(ctx, sc)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	var verifyKey []byte
	if cfg.Policy.VerifyKeyFile != "" {
		if verifyKey, err = os.ReadFile(cfg.Policy.VerifyKeyFile); err != nil {
			return nil, fmt.Errorf("policy.verify_key_file: %w", err)
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if cfg.Audit.Enabled {
		p.audit, err = audit.Open(ctx, audit.Config{
			Store:              p.store,
			Suite:              auditSuite(cfg.Identity.Suite),
			KeyDir:             filepath.Join(cfg.DataDir, "audit"),
			Node:               "local",
			CheckpointEvery:    cfg.Audit.CheckpointEvery,
			CheckpointInterval: cfg.Audit.CheckpointInterval,
			Retention:          cfg.Audit.Retention,
			Logger:             log,
			Registerer:         reg,
			ProductVersion:     buildVersion(),
		})
		if err != nil {
			return nil, fmt.Errorf("audit: %w", err)
		}
	} else {
		log.Warn("the audit trail is off (audit.enabled: false): decisions, changes and identities are not recorded")
	}
	shipped, err := defaultPolicy(td.Name())
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	p.policy, err = policyd.New(bg, policyd.Config{
		Store:       p.store,
		Node:        "local",
		Logger:      log,
		Default:     shipped,
		DecisionLog: cfg.Policy.DecisionLog,
		OnSwap: func(rev int64) {
			if f := p.swapped.Load(); f != nil {
				(*f)(rev)
			}
		},
		VerifyKey: verifyKey,
		KeyID:     cfg.Policy.KeyID,
	})
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	driver, err := p.newDriver(cfg)
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	delivery, why, err := cfg.Worker.identityDelivery()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	logIdentityDelivery(log, delivery, why)
	// The gateway and the worker need each other (invoker; log sink and
	// observer), so the worker is bound through a small late-bound shim.
	shim := &lateInvoker{}
	if p.cluster, err = cluster.NewRegistry(bg, cluster.RegistryConfig{Store: p.store, Logger: log}); err != nil {
		return nil, fmt.Errorf("worker registry: %w", err)
	}
	p.dialer = &workerDialer{svids: p.identity.SVIDSource(p.gatewayID), bundles: p.identity, clients: map[string]*remoteWorker{}}
	if cfg.Identity.Suite == "gm" {
		// Gateway → worker over TLCP: the gateway's SM2 pair, the worker
		// pinned by its SPIFFE ID, the SM2 authorities as they are.
		src := p.identity.TLCPSource(p.gatewayID)
		p.dialer.gm = func(id spiffeid.ID) credentials.TransportCredentials {
			return dualstack.NewTLCPCredentials(p.identity.TLCPClientConfig(src, id))
		}
	}
	invoker := &gateway.ClusterInvoker{
		Placer: placerAdapter{cluster.NewPlacer(p.cluster, cluster.PlacerConfig{})},
		Local:  shim, LocalNode: localNode, Remote: p.dialer,
	}
	// Every caller is its X.509-SVID (mutual TLS) or a JWT-SVID bearer
	// token for the gateway's audience; there is no plaintext API.
	auth := gateway.TLSPeer{Bearer: gateway.BearerJWT{Verifier: p.identity, Audience: p.gatewayID}}
	p.gateway, err = gateway.New(bg, gateway.Config{
		Store:                 p.store,
		Invoker:               invoker,
		Workers:               workerAdmin{p.cluster},
		Authorizer:            engineAuthorizer{p.policy},
		Authenticator:         auth,
		GRPCAuthenticator:     auth,
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
		Audit:                 p.auditLog(),
		Egress:                p.egressInspector(),
	})
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(cfg.DataDir, "tmp"), 0o700); err != nil {
		return nil, err
	}
	// The listeners open before the worker so functions can be told the
	// gateway's real addresses (the configured ports may be 0).
	p.httpLn, err = net.Listen("tcp", cfg.Gateway.Listen)
	if err != nil {
		return nil, fmt.Errorf("gateway listen: %w", err)
	}
	p.httpAddr = p.httpLn.Addr().String()
	if cfg.Gateway.GRPCListen != "" {
		p.grpcLn, err = net.Listen("tcp", cfg.Gateway.GRPCListen)
		if err != nil {
			return nil, fmt.Errorf("gateway grpc listen: %w", err)
		}
		p.grpcAddr = p.grpcLn.Addr().String()
	}
	if cfg.Gateway.HealthListen != "" {
		p.healthLn, err = net.Listen("tcp", cfg.Gateway.HealthListen)
		if err != nil {
			return nil, fmt.Errorf("gateway health listen: %w", err)
		}
		p.healthAddr = p.healthLn.Addr().String()
		if tcp, ok := p.healthLn.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
			log.Warn("the plain health listener is reachable beyond loopback: /metrics shows function names and counts to anyone who reaches it", "health_listen", p.healthAddr)
		}
	}
	if cfg.Worker.Egress == "enforce" {
		cp, ok := driver.(interface{ CgroupV2Parent() string })
		if !ok {
			return nil, fmt.Errorf("worker.sandbox %s cannot be combined with egress enforcement yet (worker.egress: off)", cfg.Worker.Sandbox)
		}
		if err := p.startEgress(bg, cp.CgroupV2Parent(), reg); err != nil {
			return nil, err
		}
	} else {
		log.Warn("development: egress is not enforced (worker.egress: off): function instances have the host's network")
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
		IdentityDelivery: delivery,
		Egress:           p.workerEgress(),
		Env:              p.gatewayEnv(),
	})
	if err != nil {
		return nil, err
	}
	shim.w = p.worker
	serverTLS := mtls.ServerConfig(p.identity.ServerSVIDSource(p.gatewayID, gatewayHosts(cfg.Gateway)...), p.identity)
	// One port per API for TLS 1.3 and, under the gm suite, TLCP: the
	// first record of a connection decides (crypto/dualstack).
	dc := dualstack.Config{Mode: dualstack.Mode(cfg.Gateway.TLS)}
	if dc.Mode != dualstack.ModeGM {
		dc.TLS = serverTLS.Clone()
		dc.TLS.NextProtos = []string{"h2", "http/1.1"}
	}
	if dc.Mode != dualstack.ModeStandard {
		dc.TLCP = p.identity.TLCPServerConfig(p.identity.ServerTLCPSource(p.gatewayID, gatewayHosts(cfg.Gateway)...), nil)
	}
	if p.httpLn, err = dualstack.NewListener(p.httpLn, dc); err != nil {
		return nil, fmt.Errorf("gateway listener: %w", err)
	}
	p.httpSrv = &http.Server{
		Handler:           p.gateway,
		ConnContext:       dualstack.ConnContext,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if p.healthLn != nil {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"status":"ok"}`+"\n")
		})
		mux.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			gateway.WriteError(w, http.StatusNotFound, gateway.CodeNotFound,
				"this listener serves only /healthz and /metrics; the API is on "+"https://"+p.httpAddr+" (mutual TLS)")
		}))
		p.health = &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       120 * time.Second,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		}
	}
	if p.grpcLn != nil {
		gc := dc
		if gc.TLS != nil {
			gc.TLS = serverTLS.Clone()
		}
		grpcCreds, err := dualstack.NewCredentials(gc)
		if err != nil {
			return nil, fmt.Errorf("gateway grpc credentials: %w", err)
		}
		p.grpcSrv = grpc.NewServer(
			grpc.Creds(grpcCreds),
			grpc.ChainUnaryInterceptor(requireCaller(auth, log)),
			grpc.MaxRecvMsgSize(p.gateway.GRPCMaxMessageBytes()),
			grpc.MaxSendMsgSize(int(cfg.Worker.MaxResponseBytes)+64<<10))
		p.gateway.RegisterGRPC(p.grpcSrv)
		// Workers on other machines join here (TPM attestation or a
		// development join token) and get their instances' SVIDs.
		nodes, err := p.startNodeIdentity(bg, cfg)
		if err != nil {
			return nil, err
		}
		nodes.Register(p.grpcSrv)
		// Envoy's external authorization, so a mesh can ask the same policy.
		extauthz.New(p.policy, log).Register(p.grpcSrv)
	}
	capacity := cfg.Worker.CapacityMB
	if capacity == 0 {
		capacity = defaultCapacityMB()
	}
	if p.lease, err = startLocalWorkerLease(ctx, p, capacity, p.localTPM); err != nil {
		return nil, err
	}
	p.adminClient = &http.Client{
		Timeout: 5 * time.Minute,
		Transport: &http.Transport{
			TLSClientConfig:   mtls.ClientConfig(p.identity.SVIDSource(p.adminID), p.identity, spiffeid.RequireFromString(p.gatewayID)),
			ForceAttemptHTTP2: true,
		},
	}
	log.Info("platform ready", "gateway", "https://"+p.httpAddr, "grpc", p.grpcAddr, "health", p.healthAddr, "trust_domain", td.Name(), "data_dir", cfg.DataDir)
	return p, nil
}

// run serves until ctx ends or a server fails.
func (p *platform) run(ctx context.Context) error {
	tasks := []task{
		p.lease,
		func(ctx context.Context) error {
			go func() { <-ctx.Done(); shutdown(p.httpSrv) }()
			if err := p.httpSrv.Serve(p.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("gateway https: %w", err)
			}
			return ctx.Err()
		},
	}
	if p.health != nil {
		tasks = append(tasks, func(ctx context.Context) error {
			go func() { <-ctx.Done(); shutdown(p.health) }()
			if err := p.health.Serve(p.healthLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("gateway health: %w", err)
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

func shutdown(s *http.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = s.Shutdown(ctx)
}

// close stops accepting, drains, stops instances and the store.
func (p *platform) close(ctx context.Context) error {
	var errs []error
	p.once.Do(func() {
		if p.health != nil {
			_ = p.health.Shutdown(ctx)
		} else if p.healthLn != nil {
			p.healthLn.Close()
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
		if p.dialer != nil {
			p.dialer.Close()
		}
		if p.swtpm != nil {
			_ = p.swtpm.Close()
		}
		if p.worker != nil {
			errs = append(errs, p.worker.Close(ctx))
		}
		for _, c := range p.closers {
			errs = append(errs, c())
		}
		if p.egress != nil {
			// Enforcement stays pinned in the kernel; a restart adopts it.
			errs = append(errs, p.egress.enf.Close())
		}
		if p.identity != nil {
			errs = append(errs, p.identity.Close())
		}
		if p.policy != nil {
			errs = append(errs, p.policy.Close(ctx))
		}
		if p.audit != nil {
			errs = append(errs, p.audit.Close(ctx))
		}
		p.cancel()
		if p.store != nil {
			errs = append(errs, p.store.Close())
		}
	})
	return errors.Join(errs...)
}

// lateInvoker forwards to the worker once it is built.
type lateInvoker struct{ w *worker.Worker }

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

// gatewayEnv tells functions where the gateway is and which SPIFFE ID it
// has: the ID their mTLS clients must expect and the audience their
// JWT-SVIDs must name.
func (p *platform) gatewayEnv() []string {
	env := []string{"ZFAAS_GATEWAY=https://" + p.httpAddr, "ZFAAS_GATEWAY_ID=" + p.gatewayID, "ZFAAS_GATEWAY_AUDIENCE=" + p.gatewayID}
	if p.grpcAddr != "" {
		env = append(env, "ZFAAS_GATEWAY_GRPC="+p.grpcAddr)
	}
	return env
}

// startEgress opens the kernel enforcer at the instances' parent cgroup
// (deny by default for instances without rules) and the rule controller.
func (p *platform) startEgress(ctx context.Context, cgroupParent string, reg prometheus.Registerer) error {
	enf, err := bpf.Open(bpf.Config{CgroupParent: cgroupParent, DenyUnknown: true, Logger: p.log})
	if err != nil {
		return fmt.Errorf("egress enforcement: %w (on a host without eBPF, set worker.egress: off for development)", err)
	}
	ctl, err := egress.New(egress.Config{Enforcer: enf, Logger: p.log})
	if err != nil {
		enf.Close()
		return fmt.Errorf("egress: %w", err)
	}
	var always []netip.AddrPort
	for _, a := range []string{p.httpAddr, p.grpcAddr} {
		ap, err := netip.ParseAddrPort(a)
		if err != nil {
			continue
		}
		if ap.Addr().IsUnspecified() {
			always = append(always, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ap.Port()), netip.AddrPortFrom(netip.IPv6Loopback(), ap.Port()))
		} else {
			always = append(always, ap)
		}
	}
	p.egress = &egressBinding{enf: enf, ctl: ctl, policy: p.policy, td: p.td, log: p.log, audit: p.audit,
		always: platformRules(always), live: map[uint64]worker.EgressSpec{}, denied: newDeniedCounter(reg)}
	swap := p.egress.onSwap
	p.swapped.Store(&swap)
	go func() { _ = ctl.Run(ctx) }()
	go func() { _ = p.egress.events(ctx) }()
	p.log.Info("egress enforced by eBPF", "cgroup_parent", cgroupParent, "platform", always)
	return nil
}

// egressInspector lets the gateway show the rules in force; the binding
// is made after the gateway (it needs the gateway's addresses).
func (p *platform) egressInspector() gateway.EgressInspector {
	if p.cfg.Worker.Egress != "enforce" {
		return nil
	}
	return lateEgress{p}
}

type lateEgress struct{ p *platform }

func (l lateEgress) EgressView(ctx context.Context, tenant, function string) (api.EgressView, error) {
	if l.p.egress == nil {
		return api.EgressView{}, errors.New("egress enforcement is not running")
	}
	return l.p.egress.EgressView(ctx, tenant, function)
}

// workerEgress is the worker's egress hook; nil when enforcement is off.
func (p *platform) workerEgress() worker.Egress {
	if p.egress == nil {
		return nil
	}
	return p.egress
}

// auditLog is the gateway's view of the audit trail; nil when it is off.
func (p *platform) auditLog() gateway.AuditLog {
	if p.audit == nil {
		return nil
	}
	return p.audit
}

// recordSVID records an SVID the Workload API handed to an instance.
func (p *platform) recordSVID(s svid.Issued) {
	if p.audit == nil {
		return
	}
	d := map[string]any{"type": s.Type, "not_after": s.NotAfter.UTC().Format(time.RFC3339)}
	if s.Serial != "" {
		d["serial"] = s.Serial
	}
	if len(s.Audience) > 0 {
		aud := make([]any, len(s.Audience))
		for i, a := range s.Audience {
			aud[i] = a
		}
		d["audience"] = aud
	}
	action := s.Delivery
	if action == "" {
		action = svid.DeliveryWorkloadAPI
	}
	_ = p.audit.Append(audit.Record{Kind: audit.KindSVIDIssued, Actor: "spiffe://" + p.td.Name() + "/worker/local", Subject: s.ID,
		Action: action, Outcome: audit.OutcomeSuccess, Details: d})
}

// logIdentityDelivery says at start how instances get their SVIDs.
func logIdentityDelivery(log *slog.Logger, d worker.IdentityDelivery, why string) {
	if d == worker.DeliverFiles {
		log.Info("instances get their SVIDs as rotated files (svid.pem, svid_key.pem, svid_bundle.pem, jwt_svid.token, jwt_bundle.json)",
			"identity_delivery", string(d), "chosen", why, "path", worker.SVIDMountDir, "env", worker.SVIDDirEnv)
		return
	}
	log.Info("instances get their SVIDs from a SPIFFE Workload API socket of their own",
		"identity_delivery", string(d), "chosen", why, "path", path.Join(worker.EndpointMountDir, worker.EndpointSocket), "env", "SPIFFE_ENDPOINT_SOCKET")
}

// auditSuite is the audit chain's suite for an identity suite: SM3 and SM2
// under gm.
func auditSuite(s string) audit.Suite {
	if s == "gm" {
		return audit.SuiteGM
	}
	return audit.SuiteStandard
}

// orOff is addr with suffix, or "off" for a listener that is turned off.
func orOff(addr, suffix string) string {
	if addr == "" {
		return "off"
	}
	return addr + suffix
}

// gatewayHosts are the host SANs of the gateway's SVID: loopback, the
// specific hosts it listens on, and gateway.server_names.
func gatewayHosts(g gatewayConfig) []string {
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	for _, addr := range []string{g.Listen, g.GRPCListen} {
		if h, _, err := net.SplitHostPort(addr); err == nil && h != "" {
			if ip := net.ParseIP(h); ip == nil || !ip.IsUnspecified() {
				hosts = append(hosts, h)
			}
		}
	}
	hosts = append(hosts, g.ServerNames...)
	slices.Sort(hosts)
	return slices.Compact(hosts)
}

// adminSVIDRefresh is how often `zfaas up` rewrites the CLI's SVID files:
// at a third of the SVID lifetime, so a CLI reading them always finds one
// with at least half its life left.
func adminSVIDRefresh(ttl time.Duration) time.Duration { return ttl / 3 }

// requireCaller refuses gRPC calls whose caller cannot be authenticated
// (no client X.509-SVID and no valid JWT-SVID bearer token) before any
// service sees them.
func requireCaller(auth gateway.ContextAuthenticator, log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		// zfaas.v1.Functions authenticates (and authorizes) each call
		// itself; zfaas.v1.NodeIdentity admits machines that have no SVID
		// yet and checks worker SVIDs itself.
		if strings.HasPrefix(info.FullMethod, "/zfaas.v1.Functions/") || strings.HasPrefix(info.FullMethod, "/zfaas.v1.NodeIdentity/") {
			return h(ctx, req)
		}
		if _, err := auth.AuthenticateContext(ctx); err != nil {
			log.Debug("grpc call refused", "method", info.FullMethod, "err", err)
			return nil, status.Error(codes.Unauthenticated, err.Error())
		}
		return h(ctx, req)
	}
}

// writeAdminSVID mints the local administrator's X.509-SVID and writes it,
// its key (0600) and the trust bundle where the CLI config points.
func writeAdminSVID(ctx context.Context, p *platform, cc clientConfig) error {
	svid, err := p.identity.MintX509(ctx, p.adminID)
	if err != nil {
		return err
	}
	bundle, err := p.identity.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
	if err != nil {
		return err
	}
	if err := writeSVIDFiles(cc.Cert, cc.Key, cc.Bundle, svid, bundle); err != nil {
		return err
	}
	if cc.GMSignCert == "" {
		return nil
	}
	sign, enc, err := p.identity.TLCPSource(p.adminID).GetTLCPCertificates()
	if err != nil {
		return fmt.Errorf("SM2 certificates: %w", err)
	}
	return writeGMFiles(cc, sign, enc, p.identity.GMRoots())
}

// newDriver builds the sandbox driver worker.sandbox names.
func (p *platform) newDriver(cfg upConfig) (sandbox.Driver, error) {
	switch cfg.Worker.Sandbox {
	case "microvm":
		m := cfg.Worker.MicroVM
		agent := m.Agent
		if agent == "" {
			exe, err := os.Executable()
			if err != nil {
				return nil, err
			}
			agent = filepath.Join(filepath.Dir(exe), "zfaas-agent")
		}
		d, err := microvm.New(microvm.Config{
			KernelDir: m.KernelDir, QEMUPath: m.QEMU, AgentPath: agent, Accel: m.Accel, Transport: m.Transport,
			StateDir: filepath.Join(cfg.DataDir, "microvm"), Logger: p.log,
		})
		if err != nil {
			return nil, err
		}
		p.log.Info("sandbox driver \"microvm\": every instance runs in its own QEMU micro-VM", "accel", d.Accel(), "transport", d.Transport())
		return d, nil
	case "container":
		c := cfg.Worker.Containerd
		d, err := container.New(container.Config{
			Address: c.Address, Namespace: c.Namespace, Runtime: c.Runtime,
			StateDir: filepath.Join(cfg.DataDir, "sandbox-container"), UID: cfg.Worker.UID, GID: cfg.Worker.GID, Logger: p.log,
		})
		if err != nil {
			return nil, err
		}
		p.closers = append(p.closers, d.Close)
		p.log.Warn("sandbox driver \"container\": isolation comes from the containerd runtime class", "runtime", c.Runtime)
		return d, nil
	}
	p.log.Warn("sandbox driver \"process\": instances are isolated by namespaces, cgroups and seccomp, not by a virtual machine (development isolation)")
	return process.New(process.Config{
		StateDir: filepath.Join(cfg.DataDir, "sandbox"),
		UID:      cfg.Worker.UID,
		GID:      cfg.Worker.GID,
		Logger:   p.log,
	})
}
