package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"

	"github.com/zfaas/zfaas/policyd"
	"github.com/zfaas/zfaas/policyd/decisionapi"
	"github.com/zfaas/zfaas/policyd/extauthz"
	"github.com/zfaas/zfaas/store"
)

const policydUsageText = "zfaas policyd (--nats URL | --data-dir DIR) (--svid-dir DIR | --spiffe-socket ADDR | --insecure-plaintext) [--listen ADDR] [flags]"

// runPolicyd runs the standalone policy engine role: it follows the policy
// revisions in the store and serves Envoy ext_authz
// (envoy.service.auth.v3.Authorization) and zfaas.policyd.v1.Decisions on
// one gRPC listener, over mutual TLS with its own X.509-SVID: callers must
// present an X.509-SVID of the same trust domain.
func runPolicyd(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) error {
	fs := newFlagSet("zfaas policyd", policydUsageText, stderr)
	natsURL := fs.String("nats", getenv("ZFAAS_NATS_URL"), "NATS cluster URL(s) of the store (env ZFAAS_NATS_URL)")
	replicas := fs.Int("replicas", 0, "replicas of the buckets and streams this role creates (default 1)")
	dataDir := fs.String("data-dir", "", "embedded store directory, when --nats is not given")
	listen := fs.String("listen", "127.0.0.1:9191", "gRPC address for ext_authz and the decision API")
	node := fs.String("node", "", "node name in status and decision records (default the host name)")
	verifyKey := fs.String("verify-key", "", "PEM public key every policy bundle must be signed with")
	keyID := fs.String("key-id", policyd.DefaultKeyID, "id of --verify-key")
	envoyQuery := fs.String("envoy-query", policyd.DefaultEnvoyQuery, "Rego query answering ext_authz checks")
	decisionLog := fs.Bool("decision-log", true, "publish every decision to the decision log")
	defaultPolicy := fs.String("default-policy", "", "policy directory served until a revision is pushed")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	svidDirFlag := fs.String("svid-dir", "", "directory with this engine's X.509-SVID (svid.pem, svid-key.pem, bundle.pem; see zfaas identity issue-policyd), reread when the files change")
	spiffeSocket := fs.String("spiffe-socket", "", "SPIFFE Workload API address (unix:///path) to get this engine's X.509-SVID from (default env SPIFFE_ENDPOINT_SOCKET, unless --svid-dir or --insecure-plaintext is given)")
	plaintext := fs.Bool("insecure-plaintext", false, "development only: serve without TLS and without authenticating callers")
	if _, err := parseN(fs, args, 0); err != nil {
		return err
	}
	if (*natsURL == "") == (*dataDir == "") {
		fmt.Fprintln(stderr, "zfaas policyd: give exactly one of --nats or --data-dir")
		return errUsage
	}
	if *spiffeSocket == "" && *svidDirFlag == "" && !*plaintext {
		*spiffeSocket = getenv("SPIFFE_ENDPOINT_SOCKET")
	}
	n := 0
	for _, set := range []bool{*svidDirFlag != "", *spiffeSocket != "", *plaintext} {
		if set {
			n++
		}
	}
	if n != 1 {
		fmt.Fprintln(stderr, "zfaas policyd: give exactly one of --svid-dir, --spiffe-socket (or SPIFFE_ENDPOINT_SOCKET) or --insecure-plaintext: policyd serves over mutual TLS with its own SVID")
		return errUsage
	}
	log := newLogger(stderr, *logLevel)
	var creds grpc.ServerOption
	switch {
	case *plaintext:
		log.Warn("development: policyd serves without TLS and without authenticating callers (--insecure-plaintext); anyone who reaches the listener can ask for decisions")
	case *svidDirFlag != "":
		d, err := openSVIDDir(*svidDirFlag)
		if err != nil {
			return fmt.Errorf("--svid-dir: %w", err)
		}
		s, _ := d.GetX509SVID()
		creds = grpc.Creds(grpccredentials.MTLSServerCredentials(d, d, tlsconfig.AuthorizeMemberOf(s.ID.TrustDomain())))
		log.Info("policyd identity from files", "spiffe_id", s.ID.String(), "dir", *svidDirFlag)
	default:
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		src, err := workloadapi.NewX509Source(sctx, workloadapi.WithClientOptions(workloadapi.WithAddr(*spiffeSocket)))
		cancel()
		if err != nil {
			return fmt.Errorf("workload api %s: %w", *spiffeSocket, err)
		}
		defer src.Close()
		s, err := src.GetX509SVID()
		if err != nil {
			return fmt.Errorf("workload api: %w", err)
		}
		creds = grpc.Creds(grpccredentials.MTLSServerCredentials(src, src, tlsconfig.AuthorizeMemberOf(s.ID.TrustDomain())))
		log.Info("policyd identity from the workload api", "spiffe_id", s.ID.String())
	}

	cfg := policyd.Config{
		Node:        *node,
		Logger:      log,
		KeyID:       *keyID,
		DecisionLog: *decisionLog,
		EnvoyQuery:  *envoyQuery,
	}
	if *verifyKey != "" {
		k, err := os.ReadFile(*verifyKey)
		if err != nil {
			return fmt.Errorf("verify key: %w", err)
		}
		cfg.VerifyKey = k
	}
	if *defaultPolicy != "" {
		if fi, err := os.Stat(*defaultPolicy); err != nil || !fi.IsDir() {
			return fmt.Errorf("default policy %s: not a directory", *defaultPolicy)
		}
		cfg.Default = os.DirFS(*defaultPolicy)
	}
	if _, _, err := net.SplitHostPort(*listen); err != nil {
		return fmt.Errorf("--listen %q: %w", *listen, err)
	}

	sc := store.Config{URL: *natsURL, Replicas: *replicas, Logger: log}
	if *dataDir != "" {
		sc.DataDir = filepath.Join(*dataDir, "nats")
	}
	st, err := store.Open(ctx, sc)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	defer st.Close()
	cfg.Store = st

	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	eng, err := policyd.New(bg, cfg)
	if err != nil {
		return err
	}
	defer func() {
		cctx, c := context.WithTimeout(context.Background(), 10*time.Second)
		defer c()
		if err := eng.Close(cctx); err != nil {
			log.Warn("policy engine close", "err", err)
		}
	}()

	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(8 << 20)}
	if creds != nil {
		opts = append(opts, creds)
	}
	srv := grpc.NewServer(opts...)
	extauthz.New(eng, log).Register(srv)
	decisionapi.New(eng, log).Register(srv)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("policyd listen: %w", err)
	}
	active, _ := eng.Active()
	fmt.Fprintf(stdout, "zfaas policyd is up: gRPC %s, node %s, policy revision %d\n", ln.Addr(), eng.Node(), active.Revision)
	log.Info("policyd ready", "listen", ln.Addr().String(), "node", eng.Node(), "revision", active.Revision)

	err = runTasks(ctx, func(ctx context.Context) error {
		go func() {
			<-ctx.Done()
			stopped := make(chan struct{})
			go func() { srv.GracefulStop(); close(stopped) }()
			select {
			case <-stopped:
			case <-time.After(10 * time.Second):
				srv.Stop()
			}
		}()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("policyd grpc: %w", err)
		}
		return ctx.Err()
	})
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
