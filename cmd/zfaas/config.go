package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"gopkg.in/yaml.v3"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/runtime/archive"
	"github.com/zfaas/zfaas/runtime/sandbox/container"
	"github.com/zfaas/zfaas/runtime/worker"
)

// upConfig is the YAML configuration of `zfaas up`. Unknown keys are an
// error. See docs/configuration.md.
type upConfig struct {
	DataDir  string         `yaml:"data_dir"`
	LogLevel string         `yaml:"log_level"`
	Tenant   string         `yaml:"tenant"`
	Gateway  gatewayConfig  `yaml:"gateway"`
	Worker   workerConfig   `yaml:"worker"`
	Packages packageConfig  `yaml:"packages"`
	Store    storeConfig    `yaml:"store"`
	Policy   policyConfig   `yaml:"policy"`
	Identity identityConfig `yaml:"identity"`
	Audit    auditConfig    `yaml:"audit"`
	Cluster  clusterConfig  `yaml:"cluster"`
}

// auditConfig configures the compliance audit trail (docs/audit.md).
type auditConfig struct {
	// Enabled writes the trail (default true).
	Enabled bool `yaml:"enabled"`
	// CheckpointEvery and CheckpointInterval cut signed checkpoints every
	// N records and every interval; zero means the defaults (docs/audit.md).
	CheckpointEvery    int           `yaml:"checkpoint_every"`
	CheckpointInterval time.Duration `yaml:"checkpoint_interval"`
	// Retention removes records older than this, recording the expiry in
	// the trail; zero keeps everything.
	Retention time.Duration `yaml:"retention"`
}

// identityConfig configures the trust domain's CA and the SVIDs it issues.
type identityConfig struct {
	// TrustDomain is the SPIFFE trust domain (default "zfaas.local").
	TrustDomain string `yaml:"trust_domain"`
	// Suite is "standard" (ECDSA P-256 SVIDs, SHA-256 audit chain) or "gm"
	// (also SM2 sign+encryption SVIDs for TLCP, SM3+SM2 audit chain).
	Suite string `yaml:"suite"`
	// X509SVIDTTL is the lifetime of X.509-SVIDs (default 1h); holders
	// rotate at half life.
	X509SVIDTTL time.Duration `yaml:"x509_svid_ttl"`
	// JWTSVIDTTL is the lifetime of JWT-SVIDs (default 5m).
	JWTSVIDTTL time.Duration `yaml:"jwt_svid_ttl"`
	// CATTL is the lifetime of each signing authority (default 24h); at
	// least six times either SVID TTL.
	CATTL time.Duration `yaml:"ca_ttl"`
}

type policyConfig struct {
	// VerifyKeyFile is a PEM public key; when set, every pushed bundle must
	// be signed by it.
	VerifyKeyFile string `yaml:"verify_key_file"`
	// KeyID is the key id bundles are signed with (default "zfaas").
	KeyID string `yaml:"key_id"`
	// DecisionLog records every decision in the ZFAAS_DECISIONS stream.
	DecisionLog bool `yaml:"decision_log"`
}

type gatewayConfig struct {
	// Listen serves the HTTP API (HTTP/1.1 and HTTP/2) over mutual TLS:
	// every caller presents an X.509-SVID or a JWT-SVID bearer token.
	Listen string `yaml:"listen"`
	// GRPCListen serves the gRPC API (zfaas.v1.Functions, Envoy ext_authz)
	// over mutual TLS; empty disables it.
	GRPCListen string `yaml:"grpc_listen"`
	// HealthListen serves only /healthz and /metrics, in plain HTTP;
	// empty disables it.
	HealthListen string `yaml:"health_listen"`
	// ServerNames are host names and IP addresses the gateway's SVID names
	// besides its SPIFFE ID (always: localhost, 127.0.0.1, ::1 and the
	// listen hosts), so clients that check host names can verify it
	// against the trust bundle.
	ServerNames []string `yaml:"server_names"`
	// TLS is the gateway's transport mode: "standard" (TLS 1.3, 1.2
	// minimum), "gm" (TLCP only) or "auto" (both on the same ports, the
	// first record decides). Default: auto under identity.suite gm,
	// standard otherwise; gm and auto need identity.suite gm.
	TLS                   string        `yaml:"tls"`
	MaxPayloadBytes       int64         `yaml:"max_payload_bytes"`
	WaitBudget            time.Duration `yaml:"wait_budget"`
	DefaultMaxConcurrency int           `yaml:"default_max_concurrency"`
	LogRetention          time.Duration `yaml:"log_retention"`
}

type workerConfig struct {
	Sandbox string `yaml:"sandbox"`
	// MicroVM configures worker.sandbox: microvm.
	MicroVM microVMConfig `yaml:"microvm"`
	// Containerd configures worker.sandbox: container.
	Containerd containerdConfig `yaml:"containerd"`
	// IdentityDelivery is how instances get their SPIFFE identity:
	// "socket" (a per-instance Workload API socket), "files" (rotated
	// SVID files, where a socket cannot enter the sandbox) or "auto"
	// (default: files under worker.sandbox container with the Kata
	// runtime, socket otherwise). See identityDelivery.
	IdentityDelivery string `yaml:"identity_delivery"`
	// Egress is "enforce" (default: every instance may reach only what
	// zfaas.egress allows, enforced by eBPF in the kernel) or "off"
	// (development on hosts without BPF: instances have the host's
	// network; logged at start).
	Egress string `yaml:"egress"`
	// CapacityMB is the memory this worker offers to instances, which
	// placement fills (0: three quarters of the machine's memory).
	CapacityMB int `yaml:"capacity_mb"`
	// Attest is how the in-process worker is admitted: "none" (it is part
	// of the control plane), "swtpm" (development: a software TPM that
	// zfaas up manufactures under data_dir/swtpm and starts) or a TPM
	// device path such as /dev/tpmrm0 (its manufacturer roots must be in
	// cluster.ek_roots_file).
	Attest           string        `yaml:"attest"`
	IdleTimeout      time.Duration `yaml:"idle_timeout"`
	InitTimeout      time.Duration `yaml:"init_timeout"`
	MaxResponseBytes int64         `yaml:"max_response_bytes"`
	UID              int           `yaml:"uid"`
	GID              int           `yaml:"gid"`
}

type packageConfig struct {
	MaxCompressedBytes int64 `yaml:"max_compressed_bytes"`
	MaxUnpackedBytes   int64 `yaml:"max_unpacked_bytes"`
	MaxRatio           int64 `yaml:"max_ratio"`
	MaxFiles           int   `yaml:"max_files"`
}

type storeConfig struct {
	URL      string `yaml:"url"`
	Replicas int    `yaml:"replicas"`
	// Listen makes the embedded store reachable for workers on other
	// machines (TLS; only worker and gateway SVIDs may connect); empty:
	// no TCP port.
	Listen string `yaml:"listen"`
}

// microVMConfig configures the micro-VM sandbox (docs/microvm.md).
type microVMConfig struct {
	// KernelDir holds vmlinux and the virtio modules (make vmkernel).
	KernelDir string `yaml:"kernel_dir"`
	// QEMU is the qemu-system-x86_64 binary.
	QEMU string `yaml:"qemu"`
	// Agent is the guest agent binary (default: zfaas-agent beside the
	// zfaas binary).
	Agent string `yaml:"agent"`
	// Accel is auto (KVM when a probe boot proves it works, else TCG),
	// kvm or tcg.
	Accel string `yaml:"accel"`
	// Transport is the agent channel: auto (vsock where /dev/vhost-vsock
	// opens, else serial), serial or vsock.
	Transport string `yaml:"transport"`
}

// containerdConfig configures the container sandbox (docs/container.md).
type containerdConfig struct {
	Address   string `yaml:"address"`
	Namespace string `yaml:"namespace"`
	// Runtime is the runtime class: io.containerd.runc.v2 or
	// io.containerd.kata.v2.
	Runtime string `yaml:"runtime"`
}

// clusterConfig configures how workers on other machines join.
type clusterConfig struct {
	// EKRootsFile is a PEM file of TPM manufacturer roots (and
	// intermediates) that EK certificates must chain to; empty turns TPM
	// attestation off.
	EKRootsFile string `yaml:"ek_roots_file"`
	// JoinTokensFile lists development join tokens, one per line (kept
	// only as SHA-256 hashes in memory); the admission policy must also
	// allow join tokens.
	JoinTokensFile string `yaml:"join_tokens_file"`
	// WorkerSVIDTTL is the lifetime of a worker SVID: workers re-attest at
	// half of it (default 10m).
	WorkerSVIDTTL time.Duration `yaml:"worker_svid_ttl"`
}

// defaultUpConfig returns the embedded defaults.
func defaultUpConfig(getenv env) upConfig {
	dataDir := "/var/lib/zfaas"
	if os.Geteuid() != 0 {
		if h := getenv("HOME"); h != "" {
			dataDir = filepath.Join(h, ".local", "share", "zfaas")
		}
	}
	lim := archive.DefaultLimits()
	return upConfig{
		DataDir:  dataDir,
		LogLevel: "info",
		Tenant:   "default",
		Gateway: gatewayConfig{
			Listen:                "127.0.0.1:8443",
			GRPCListen:            "127.0.0.1:9090",
			HealthListen:          "127.0.0.1:8080",
			MaxPayloadBytes:       6 << 20,
			WaitBudget:            time.Second,
			DefaultMaxConcurrency: 32,
			LogRetention:          24 * time.Hour,
		},
		Worker: workerConfig{
			Sandbox:          "process",
			IdentityDelivery: "auto",
			Egress:           "enforce",
			Attest:           "none",
			IdleTimeout:      10 * time.Minute,
			InitTimeout:      10 * time.Second,
			MaxResponseBytes: 6 << 20,
			UID:              65534,
			GID:              65534,
		},
		Packages: packageConfig{
			MaxCompressedBytes: lim.MaxCompressed,
			MaxUnpackedBytes:   lim.MaxUnpacked,
			MaxRatio:           lim.MaxRatio,
			MaxFiles:           lim.MaxFiles,
		},
		Store:   storeConfig{Replicas: 1},
		Policy:  policyConfig{DecisionLog: true},
		Audit:   auditConfig{Enabled: true},
		Cluster: clusterConfig{WorkerSVIDTTL: 10 * time.Minute},
		Identity: identityConfig{
			TrustDomain: "zfaas.local",
			Suite:       "standard",
			X509SVIDTTL: time.Hour,
			JWTSVIDTTL:  5 * time.Minute,
			CATTL:       24 * time.Hour,
		},
	}
}

// loadConfigFile merges a YAML file over cfg, refusing unknown keys.
func loadConfigFile(path string, cfg *upConfig) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config %s: %w", path, err)
	}
	return nil
}

// validate checks the merged configuration.
func (c *upConfig) validate() error {
	if c.DataDir == "" {
		return errors.New("data_dir is required")
	}
	abs, err := filepath.Abs(c.DataDir)
	if err != nil {
		return fmt.Errorf("data_dir %q: %w", c.DataDir, err)
	}
	c.DataDir = abs
	if !api.ValidName(c.Tenant) {
		return fmt.Errorf("tenant %q: use lower-case letters, digits and inner hyphens", c.Tenant)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	for name, addr := range map[string]string{"gateway.listen": c.Gateway.Listen, "gateway.grpc_listen": c.Gateway.GRPCListen, "gateway.health_listen": c.Gateway.HealthListen} {
		if addr == "" && name != "gateway.listen" {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("%s %q: %v", name, addr, err)
		}
	}
	// Port 0 picks a free port per listener, so only fixed ports can clash.
	seen := map[string]string{}
	for _, l := range []struct{ name, addr string }{{"gateway.listen", c.Gateway.Listen}, {"gateway.grpc_listen", c.Gateway.GRPCListen}, {"gateway.health_listen", c.Gateway.HealthListen}} {
		if l.addr == "" || strings.HasSuffix(l.addr, ":0") {
			continue
		}
		if other, ok := seen[l.addr]; ok {
			return fmt.Errorf("%s and %s are both %s: each listener needs its own address", other, l.name, l.addr)
		}
		seen[l.addr] = l.name
	}
	for _, n := range c.Gateway.ServerNames {
		if net.ParseIP(n) == nil && !hostNameRE.MatchString(n) {
			return fmt.Errorf("gateway.server_names: %q is neither an IP address nor a DNS name", n)
		}
	}
	if c.Store.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Store.Listen); err != nil {
			return fmt.Errorf("store.listen %q: %v", c.Store.Listen, err)
		}
		if c.Store.URL != "" {
			return errors.New("store.listen applies to the embedded store; with store.url workers use the external cluster")
		}
	}
	if c.Cluster.WorkerSVIDTTL < time.Minute || c.Cluster.WorkerSVIDTTL > 24*time.Hour {
		return fmt.Errorf("cluster.worker_svid_ttl %s: want 1m..24h", c.Cluster.WorkerSVIDTTL)
	}
	if c.Audit.CheckpointEvery < 0 || c.Audit.CheckpointInterval < 0 || (c.Audit.Retention != 0 && c.Audit.Retention < time.Hour) {
		return errors.New("audit: checkpoint_every and checkpoint_interval must not be negative, retention 0 (keep all) or at least 1h")
	}
	if err := c.Identity.validate(); err != nil {
		return err
	}
	switch c.Gateway.TLS {
	case "":
		c.Gateway.TLS = "standard"
		if c.Identity.Suite == "gm" {
			c.Gateway.TLS = "auto"
		}
	case "standard":
	case "gm", "auto":
		if c.Identity.Suite != "gm" {
			return fmt.Errorf("gateway.tls %q needs identity.suite gm (SM2 certificates for TLCP)", c.Gateway.TLS)
		}
	default:
		return fmt.Errorf("gateway.tls %q: want standard, gm or auto", c.Gateway.TLS)
	}
	if c.Worker.Attest != "none" && c.Worker.Attest != "swtpm" && !strings.HasPrefix(c.Worker.Attest, "/") {
		return fmt.Errorf("worker.attest %q: want none, swtpm or a TPM device path", c.Worker.Attest)
	}
	if c.Worker.Attest != "none" && c.Gateway.GRPCListen == "" {
		return errors.New("worker.attest needs gateway.grpc_listen: the worker attests through the node identity service there")
	}
	if c.Worker.CapacityMB < 0 {
		return fmt.Errorf("worker.capacity_mb %d: want 0 (three quarters of the memory) or more", c.Worker.CapacityMB)
	}
	if c.Worker.Egress != "enforce" && c.Worker.Egress != "off" {
		return fmt.Errorf("worker.egress %q: want enforce or off", c.Worker.Egress)
	}
	switch c.Worker.Sandbox {
	case "process", "container":
	case "microvm":
		switch c.Worker.MicroVM.Accel {
		case "", "auto", "kvm", "tcg":
		default:
			return fmt.Errorf("worker.microvm.accel %q: want auto, kvm or tcg", c.Worker.MicroVM.Accel)
		}
		switch c.Worker.MicroVM.Transport {
		case "", "auto", "serial", "vsock":
		default:
			return fmt.Errorf("worker.microvm.transport %q: want auto, serial or vsock", c.Worker.MicroVM.Transport)
		}
	default:
		return fmt.Errorf("worker.sandbox %q: want process, microvm or container", c.Worker.Sandbox)
	}
	if _, _, err := c.Worker.identityDelivery(); err != nil {
		return err
	}
	if c.Gateway.MaxPayloadBytes <= 0 || c.Gateway.MaxPayloadBytes > 64<<20 {
		return fmt.Errorf("gateway.max_payload_bytes %d: want 1..%d", c.Gateway.MaxPayloadBytes, 64<<20)
	}
	if c.Gateway.WaitBudget < time.Millisecond || c.Gateway.WaitBudget > time.Minute {
		return fmt.Errorf("gateway.wait_budget %s: want 1ms..1m", c.Gateway.WaitBudget)
	}
	if c.Gateway.LogRetention < time.Minute {
		return fmt.Errorf("gateway.log_retention %s: want at least 1m", c.Gateway.LogRetention)
	}
	if c.Worker.MaxResponseBytes <= 0 || c.Worker.MaxResponseBytes > 64<<20 {
		return fmt.Errorf("worker.max_response_bytes %d: want 1..%d", c.Worker.MaxResponseBytes, 64<<20)
	}
	if c.Gateway.DefaultMaxConcurrency < 1 {
		return fmt.Errorf("gateway.default_max_concurrency %d: want at least 1", c.Gateway.DefaultMaxConcurrency)
	}
	if c.Worker.IdleTimeout < time.Second {
		return fmt.Errorf("worker.idle_timeout %s: want at least 1s", c.Worker.IdleTimeout)
	}
	if c.Worker.InitTimeout < 100*time.Millisecond {
		return fmt.Errorf("worker.init_timeout %s: want at least 100ms", c.Worker.InitTimeout)
	}
	if c.Worker.UID <= 0 || c.Worker.GID <= 0 {
		return errors.New("worker.uid and worker.gid must be unprivileged (non-zero)")
	}
	p := c.Packages
	if p.MaxCompressedBytes <= 0 || p.MaxUnpackedBytes <= 0 || p.MaxRatio < 1 || p.MaxFiles <= 0 {
		return errors.New("packages: max_compressed_bytes, max_unpacked_bytes, max_files must be positive and max_ratio at least 1")
	}
	if c.Store.Replicas != 1 && c.Store.Replicas != 3 && c.Store.Replicas != 5 {
		return fmt.Errorf("store.replicas %d: want 1, 3 or 5", c.Store.Replicas)
	}
	if c.Store.Replicas > 1 && c.Store.URL == "" {
		return fmt.Errorf("store.replicas %d needs store.url: the embedded server is a single node", c.Store.Replicas)
	}
	return nil
}

// identityDelivery resolves worker.identity_delivery against the sandbox:
// the delivery, and why it was chosen (for the start log). A Unix socket
// cannot cross into a Kata VM (virtio-fs), so Kata needs files; the
// micro-VM driver copies its mounts into the VM once at start, so files
// would never rotate there (it forwards the Workload API socket instead).
func (w workerConfig) identityDelivery() (worker.IdentityDelivery, string, error) {
	kata := w.Sandbox == "container" && w.Containerd.Runtime == container.RuntimeKata
	switch w.IdentityDelivery {
	case "", "auto":
		if kata {
			return worker.DeliverFiles, "auto: the Kata runtime shares directories, not sockets, with its VMs", nil
		}
		return worker.DeliverSocket, "auto: the sandbox takes a Unix socket", nil
	case "socket":
		if kata {
			return "", "", fmt.Errorf("worker.identity_delivery socket cannot be used with worker.containerd.runtime %s: a Unix socket cannot cross into the VM; use files (or auto)", container.RuntimeKata)
		}
		return worker.DeliverSocket, "configured", nil
	case "files":
		if w.Sandbox == "microvm" {
			return "", "", errors.New("worker.identity_delivery files cannot be used with worker.sandbox microvm: the micro-VM driver copies mounted directories into the VM once at start, so rotated SVID files would never reach the instance; use socket (or auto): the driver forwards the Workload API socket")
		}
		return worker.DeliverFiles, "configured", nil
	}
	return "", "", fmt.Errorf("worker.identity_delivery %q: want auto, socket or files", w.IdentityDelivery)
}

var hostNameRE = regexp.MustCompile(`^(\*\.)?([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)*[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$`)

func (c identityConfig) validate() error {
	if c.Suite != "standard" && c.Suite != "gm" {
		return fmt.Errorf("identity.suite %q: want standard or gm", c.Suite)
	}
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		return fmt.Errorf("identity.trust_domain %q: %v", c.TrustDomain, err)
	}
	if c.X509SVIDTTL < time.Minute || c.X509SVIDTTL > 30*24*time.Hour {
		return fmt.Errorf("identity.x509_svid_ttl %s: want 1m..720h", c.X509SVIDTTL)
	}
	if c.JWTSVIDTTL < 30*time.Second || c.JWTSVIDTTL > 24*time.Hour {
		return fmt.Errorf("identity.jwt_svid_ttl %s: want 30s..24h", c.JWTSVIDTTL)
	}
	if c.CATTL < 6*c.X509SVIDTTL || c.CATTL < 6*c.JWTSVIDTTL {
		return fmt.Errorf("identity.ca_ttl %s: must be at least 6 times x509_svid_ttl and jwt_svid_ttl, so a successor authority is published before it signs", c.CATTL)
	}
	return nil
}

func (c *upConfig) archiveLimits() archive.Limits {
	return archive.Limits{
		MaxCompressed: c.Packages.MaxCompressedBytes,
		MaxUnpacked:   c.Packages.MaxUnpackedBytes,
		MaxRatio:      c.Packages.MaxRatio,
		MaxFiles:      c.Packages.MaxFiles,
	}
}
