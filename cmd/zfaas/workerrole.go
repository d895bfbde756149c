package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"

	"github.com/zfaas/zfaas/bpf"
	"github.com/zfaas/zfaas/crypto/dualstack"
	"github.com/zfaas/zfaas/crypto/mtls"
	vattest "github.com/zfaas/zfaas/identity/attest"
	"github.com/zfaas/zfaas/policyd"
	rattest "github.com/zfaas/zfaas/runtime/attest"
	"github.com/zfaas/zfaas/runtime/cluster"
	"github.com/zfaas/zfaas/runtime/egress"
	"github.com/zfaas/zfaas/runtime/nodeclient"
	"github.com/zfaas/zfaas/runtime/sandbox/process"
	"github.com/zfaas/zfaas/runtime/svid"
	"github.com/zfaas/zfaas/runtime/worker"
	"github.com/zfaas/zfaas/runtime/workerapi"
	"github.com/zfaas/zfaas/store"
)

const workerRoleUsage = "zfaas worker --join HOST:PORT --trust-bundle FILE --store tls://HOST:PORT (--tpm swtpm://HOST:PORT|/dev/tpmrm0 | --join-token-file FILE) [flags]"

// runWorkerRole runs the worker role on this machine: it proves the
// machine with its TPM (or, in development, a join token) to the control
// plane's node identity service, gets its worker SVID, and then serves
// invocations over mutual TLS, leases itself in the store, re-attests at
// half life, and stops when the control plane revokes it.
func runWorkerRole(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) error {
	host, _ := os.Hostname()
	fs := newFlagSet("zfaas worker", workerRoleUsage, stderr)
	join := fs.String("join", "", "the control plane's gRPC address (its node identity service), HOST:PORT (required)")
	bundleFile := fs.String("trust-bundle", "", "PEM X.509 bundle of the trust domain (zfaas identity bundle), the trust anchor for joining (required)")
	tdName := fs.String("trust-domain", "zfaas.local", "the SPIFFE trust domain")
	serverID := fs.String("control-plane-id", "", "SPIFFE ID the control plane (its gRPC port and store) presents (default spiffe://TD/gateway/local)")
	storeURL := fs.String("store", "", "the store: tls://HOST:PORT of the control plane's embedded NATS (store.listen), or an external NATS cluster's URLs (required)")
	storeCA := fs.String("store-ca", "", "PEM CA that verifies an external NATS cluster's server certificates by host name (default: the store must present the control plane's SVID)")
	gatewayURL := fs.String("gateway", "", "the gateway's API URL given to functions (default https://JOIN-HOST:8443)")
	node := fs.String("node", host, "this worker's node name")
	tpmAddr := fs.String("tpm", "", "the TPM: /dev/tpmrm0, or swtpm://HOST:PORT (a software TPM: development)")
	tokenFile := fs.String("join-token-file", "", "development: join with the token in FILE instead of TPM attestation (logged as unattested)")
	listen := fs.String("listen", "0.0.0.0:9292", "address of this worker's gRPC API (mutual TLS, gateways only)")
	advertise := fs.String("advertise", "", "address gateways dial (default the listen address; required when it is unspecified, e.g. 0.0.0.0)")
	dataDir := fs.String("data-dir", "/var/lib/zfaas-worker", "data directory (packages, sandboxes, endpoints)")
	cgroupParent := fs.String("cgroup-parent", "", "cgroup (v2) under which instances run (default zfaas-NODE)")
	egressMode := fs.String("egress", "enforce", "enforce (eBPF) or off (development)")
	capacityMB := fs.Int("capacity-mb", 0, "memory offered to instances (0: three quarters of the machine's)")
	uid := fs.Int("uid", 65534, "unprivileged uid of instances")
	delivery := fs.String("identity-delivery", "auto", "how instances get their SVIDs: socket (a Workload API socket each), files (rotated SVID files at "+worker.SVIDMountDir+") or auto (socket with this worker's process sandbox)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if _, err := parseN(fs, args, 0); err != nil {
		return err
	}
	if *join == "" || *bundleFile == "" || *storeURL == "" || (*tpmAddr == "") == (*tokenFile == "") {
		fmt.Fprintln(stderr, "zfaas worker: --join, --trust-bundle, --store and exactly one of --tpm or --join-token-file are required")
		fs.Usage()
		return errUsage
	}
	if !cluster.ValidNode(*node) {
		return fmt.Errorf("--node %q: not a valid node name", *node)
	}
	// The remote worker runs the process sandbox.
	idDelivery, why, err := workerConfig{Sandbox: "process", IdentityDelivery: *delivery}.identityDelivery()
	if err != nil {
		return fmt.Errorf("--identity-delivery: %w", err)
	}
	log := newLogger(stderr, *logLevel).With("node", *node)
	td, err := spiffeid.TrustDomainFromString(*tdName)
	if err != nil {
		return fmt.Errorf("--trust-domain: %w", err)
	}
	cpID := *serverID
	if cpID == "" {
		cpID = "spiffe://" + td.Name() + "/gateway/local"
	}
	controlPlane, err := spiffeid.FromString(cpID)
	if err != nil {
		return fmt.Errorf("--control-plane-id: %w", err)
	}
	bundle, err := x509bundle.Load(td, *bundleFile)
	if err != nil {
		return fmt.Errorf("--trust-bundle: %w", err)
	}
	if *cgroupParent == "" {
		*cgroupParent = "zfaas-" + *node
	}
	addr := *advertise
	if addr == "" {
		addr = *listen
	}
	if h, _, err := net.SplitHostPort(addr); err != nil || net.ParseIP(h) != nil && net.ParseIP(h).IsUnspecified() {
		if *advertise == "" && err == nil {
			return errors.New("--advertise is required when --listen is an unspecified address")
		}
		if err != nil {
			return fmt.Errorf("--advertise %q: %w", addr, err)
		}
	}
	if *gatewayURL == "" {
		h, _, err := net.SplitHostPort(*join)
		if err != nil {
			return fmt.Errorf("--join %q: %w", *join, err)
		}
		*gatewayURL = "https://" + net.JoinHostPort(h, "8443")
	}

	// 1. Join: prove the machine, get the worker SVID (the key stays here).
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	jc := nodeclient.Config{Addr: *join, Bundle: bundle, ServerAuthorizer: tlsconfig.AuthorizeID(controlPlane), Node: *node, Key: key, Logger: log}
	if *tokenFile != "" {
		raw, err := os.ReadFile(*tokenFile)
		if err != nil {
			return fmt.Errorf("--join-token-file: %w", err)
		}
		jc.JoinToken = strings.TrimSpace(string(raw))
		log.Warn("development: joining with a join token; this worker is NOT attested by a TPM")
	} else {
		// The TPM is opened for each attestation (join and every
		// re-attestation) and released in between.
		jc.Attester = &sessionTPM{addr: *tpmAddr, node: *node, log: log}
	}
	wid, err := nodeclient.Join(ctx, jc)
	if err != nil {
		return fmt.Errorf("join %s: %w", *join, err)
	}
	defer wid.Close()
	log.Info("admitted", "spiffe_id", wid.ID().String(), "method", wid.Method())

	// 2. The store, over TLS with the worker SVID.
	storeTLS := mtls.ClientConfig(wid, wid, controlPlane)
	if *storeCA != "" {
		// An external cluster with its own PKI: verify it by host name and
		// present the worker SVID as the client certificate.
		pool := x509.NewCertPool()
		raw, err := os.ReadFile(*storeCA)
		if err != nil || !pool.AppendCertsFromPEM(raw) {
			return fmt.Errorf("--store-ca %s: no PEM certificates (%v)", *storeCA, err)
		}
		client := mtls.ClientConfig(wid, wid, controlPlane)
		storeTLS = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, GetClientCertificate: client.GetClientCertificate}
	}
	if err := os.MkdirAll(filepath.Join(*dataDir, "tmp"), 0o700); err != nil {
		return err
	}
	st, err := store.Open(ctx, store.Config{URL: *storeURL, Logger: log, SpoolDir: filepath.Join(*dataDir, "tmp"),
		ClientOptions: []nats.Option{nats.Secure(storeTLS)}})
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	defer st.Close()

	// 3. The worker: sandbox, Workload API over the control plane's
	// issuer, egress enforcement from the active policy.
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	driver, err := process.New(process.Config{StateDir: filepath.Join(*dataDir, "sandbox"), UID: *uid, GID: *uid, CgroupParent: *cgroupParent, Logger: log})
	if err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	endpoints, err := svid.StartEndpoints(ctx, svid.EndpointsConfig{Dir: filepath.Join(*dataDir, "identity"), TrustDomain: td.Name(), UID: *uid, GID: *uid, Issuer: wid.Issuer(),
		JWTAudience: []string{cpID}, Logger: log})
	if err != nil {
		return err
	}
	defer endpoints.Close()
	logIdentityDelivery(log, idDelivery, why)
	shipped, err := defaultPolicy(td.Name())
	if err != nil {
		return err
	}
	eng, err := policyd.New(bg, policyd.Config{Store: st, Node: *node, Logger: log, Default: shipped})
	if err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	defer func() {
		cctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		_ = eng.Close(cctx)
	}()
	gwURL, err := url.Parse(*gatewayURL)
	if err != nil {
		return fmt.Errorf("--gateway: %w", err)
	}
	var eg worker.Egress
	var tasks []task
	if *egressMode == "enforce" {
		enf, err := bpf.Open(bpf.Config{CgroupParent: driver.CgroupV2Parent(), PinDir: "/sys/fs/bpf/zfaas-" + *node, DenyUnknown: true, Logger: log})
		if err != nil {
			return fmt.Errorf("egress enforcement: %w (on a host without eBPF use --egress off for development)", err)
		}
		defer enf.Close()
		ctl, err := egress.New(egress.Config{Enforcer: enf, Logger: log})
		if err != nil {
			return err
		}
		var always []netip.AddrPort
		for _, a := range []string{gwURL.Host, *join} {
			if ap, err := resolveAddrPort(ctx, a); err == nil {
				always = append(always, ap...)
			}
		}
		b := &egressBinding{enf: enf, ctl: ctl, policy: eng, td: td, log: log, always: platformRules(always), live: map[uint64]worker.EgressSpec{}, denied: newDeniedCounter(prometheus.NewRegistry())}
		eg = b
		tasks = append(tasks, ctl.Run, b.events)
	} else {
		log.Warn("development: egress is not enforced (--egress off): function instances have the host's network")
	}
	w, err := worker.New(worker.Config{
		DataDir: filepath.Join(*dataDir, "worker"), Driver: driver, Packages: st, Logger: log, Identity: endpoints, IdentityDelivery: idDelivery, Egress: eg,
		Env: []string{"ZFAAS_GATEWAY=" + *gatewayURL, "ZFAAS_GATEWAY_ID=" + cpID, "ZFAAS_GATEWAY_AUDIENCE=" + cpID, "ZFAAS_GATEWAY_GRPC=" + *join},
	})
	if err != nil {
		return err
	}
	defer func() {
		cctx, c := context.WithTimeout(context.Background(), 15*time.Second)
		defer c()
		_ = w.Close(cctx)
	}()

	// 4. The worker API, for gateways only, over mutual TLS.
	api, err := workerapi.NewServer(workerLocal{w}, workerapi.WithTrustDomain(td), workerapi.WithLogger(log))
	if err != nil {
		return err
	}
	// Under the gm suite the worker API speaks TLCP (with the worker's SM2
	// pair from the control plane) beside TLS 1.3 on the same port.
	creds := grpccredentials.MTLSServerCredentials(wid, wid, tlsconfig.AuthorizeMemberOf(td))
	switch err := wid.RenewGM(ctx); {
	case err == nil:
		creds, err = dualstack.NewCredentials(dualstack.Config{
			Mode: dualstack.ModeAuto,
			TLS:  tlsconfig.MTLSServerConfig(wid, wid, tlsconfig.AuthorizeMemberOf(td)),
			TLCP: wid.TLCPServerConfig(func(id spiffeid.ID) error {
				if id.TrustDomain() != td {
					return fmt.Errorf("%s is not of %s", id, td)
				}
				return nil
			}),
		})
		if err != nil {
			return err
		}
		log.Info("worker API serves TLCP and TLS 1.3 (gm suite)")
	case errors.Is(err, nodeclient.ErrGMDisabled):
	default:
		return fmt.Errorf("gm worker certificates: %w", err)
	}
	gs := grpc.NewServer(append(api.ServerOptions(), grpc.Creds(creds))...)
	api.Register(gs)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if *advertise == "" {
		addr = ln.Addr().String()
	}

	// 5. The lease.
	capacity := *capacityMB
	if capacity == 0 {
		capacity = defaultCapacityMB()
	}
	hb, err := cluster.NewHeartbeat(ctx, cluster.HeartbeatConfig{Store: st, Node: *node, Addr: addr, Source: loadSource{w: w, capacityMB: capacity}, Logger: log})
	if err != nil {
		return err
	}
	if _, err := hb.Beat(ctx); err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	fmt.Fprintf(stdout, "zfaas worker %s is up: %s, serving %s, store %s\n", *node, wid.ID(), addr, *storeURL)
	tasks = append(tasks,
		func(ctx context.Context) error {
			go func() { <-ctx.Done(); gs.GracefulStop() }()
			if err := gs.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				return err
			}
			return ctx.Err()
		},
		func(ctx context.Context) error {
			err := hb.Run(ctx)
			lctx, c := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer c()
			_ = hb.Leave(lctx)
			return err
		},
		func(ctx context.Context) error {
			// Re-attestation at half life; a refusal (revocation) stops
			// the worker.
			if err := wid.Run(ctx); err != nil {
				log.Error("the control plane no longer vouches for this worker; stopping", "err", err)
				return err
			}
			return ctx.Err()
		},
	)
	err = runTasks(ctx, tasks...)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// openTPM opens /dev/tpmrm0-style devices or a swtpm over TCP.
func openTPM(ctx context.Context, addr string) (transport.TPMCloser, error) {
	if rest, ok := strings.CutPrefix(addr, "swtpm://"); ok {
		t, err := rattest.DialTCP(ctx, rest, 10*time.Second)
		if err != nil {
			return nil, fmt.Errorf("swtpm %s: %w", rest, err)
		}
		return t, nil
	}
	t, err := rattest.OpenDevice(addr)
	if err != nil {
		return nil, fmt.Errorf("tpm %s: %w", addr, err)
	}
	return t, nil
}

// resolveAddrPort turns HOST:PORT into addresses (names resolved).
func resolveAddrPort(ctx context.Context, hostport string) ([]netip.AddrPort, error) {
	h, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, err
	}
	port, err := net.LookupPort("tcp", p)
	if err != nil {
		return nil, err
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", h)
	if err != nil {
		return nil, err
	}
	var out []netip.AddrPort
	for _, ip := range ips {
		out = append(out, netip.AddrPortFrom(ip.Unmap(), uint16(port)))
	}
	return out, nil
}

// sessionTPM attests with a TPM opened per attestation session (see
// nodeclient.SessionAttester), so the worker holds no TPM connection
// between re-attestations.
type sessionTPM struct {
	addr string
	node string
	log  *slog.Logger

	tpm transport.TPMCloser
	cur *rattest.Attester
}

func (s *sessionTPM) Begin(ctx context.Context) error {
	s.End()
	tpm, err := openTPM(ctx, s.addr)
	if err != nil {
		return err
	}
	a, err := rattest.New(ctx, rattest.Config{TPM: tpm, Node: s.node, Logger: s.log})
	if err != nil {
		tpm.Close()
		return fmt.Errorf("tpm: %w", err)
	}
	s.tpm, s.cur = tpm, a
	return nil
}

func (s *sessionTPM) End() {
	if s.cur != nil {
		_ = s.cur.Close()
		s.cur = nil
	}
	if s.tpm != nil {
		_ = s.tpm.Close()
		s.tpm = nil
	}
}

// Hello is the open session's hello; before Begin, only the node name.
func (s *sessionTPM) Hello() *vattest.Hello {
	if s.cur == nil {
		return &vattest.Hello{Node: s.node}
	}
	return s.cur.Hello()
}

func (s *sessionTPM) Answer(ctx context.Context, c *vattest.Challenge) (*vattest.Evidence, error) {
	if s.cur == nil {
		return nil, errors.New("tpm session not open")
	}
	return s.cur.Answer(ctx, c)
}
