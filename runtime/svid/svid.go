// Package svid hands each function instance its own SPIFFE identity: it
// runs the identity CA and the SPIFFE Workload API server, and creates for
// every instance a Unix socket in a directory of its own, which the worker
// mounts into that instance's sandbox. A peer gets an SVID only when its
// process is in the instance's cgroup, so an instance can never obtain
// another function's SVID.
//
// Where a socket cannot cross the sandbox boundary (a Kata VM shares host
// directories by virtio-fs), Endpoints.Files writes the instance's SVIDs
// and bundles as files instead (spiffe-helper's names), rotated at half
// life and switched as a whole set. That directory must only ever be
// mounted into the one instance it was made for.
//
// Under the gm suite (Config.Suite = ca.SuiteGM) the CA also has SM2
// authorities: TLCPSource hands platform components a rotating SM2 double
// SVID for TLCP (crypto/dualstack), GMBundle and VerifyTLCPPeer verify
// peers against the SM2 authorities, and instances can ask their Workload
// API endpoint for the GM pair (identity/workloadapi, zfaas-gm metadata).
package svid

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/emmansun/gmsm/smx509"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/peer"

	"github.com/zfaas/zfaas/identity"
	"github.com/zfaas/zfaas/identity/ca"
	"github.com/zfaas/zfaas/identity/workloadapi"
	"github.com/zfaas/zfaas/runtime/worker"
)

// Provider is the worker's Identity: a CA under DIR/ca and one
// Workload API server with a socket per instance under DIR/ep/<instance>,
// or SVID files per instance under DIR/files/<instance> (Files).
type Provider struct {
	*Endpoints
	td     spiffeid.TrustDomain
	now    func() time.Time
	ca     *ca.CA
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Endpoints is the Workload API of a worker: one server, one socket per
// instance under DIR/ep/<instance>, each attested by the instance's
// cgroup; or, for sandboxes a socket cannot enter, SVID files per instance
// under DIR/files/<instance> (Files). Provider embeds one over its local
// CA; a worker on another machine starts one over the control plane's
// issuer (StartEndpoints).
type Endpoints struct {
	td       spiffeid.TrustDomain
	srv      *workloadapi.Server
	att      *pendingCgroupAttestor
	epDir    string
	uid, gid int
	issuer   workloadapi.Issuer
	now      func() time.Time
	log      *slog.Logger
	interval time.Duration
	bg       context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup

	// The SVID file sets (Files) under filesDir, each with the JWT-SVID
	// audience.
	filesDir    string
	audience    []string
	filesMu     sync.Mutex
	files       map[*fileSet]struct{}
	filesClosed bool
}

var _ worker.Identity = (*Endpoints)(nil)

// EndpointsConfig configures StartEndpoints.
type EndpointsConfig struct {
	// Dir holds the per-instance endpoints (Dir/ep) and SVID files
	// (Dir/files).
	Dir         string
	TrustDomain string
	// UID and GID own the per-instance sockets and the secret SVID files.
	UID, GID int
	// Issuer mints the instances' SVIDs (for a remote worker: the control
	// plane's identity service). Required.
	Issuer workloadapi.Issuer
	// GM delivers SM2 pairs on request (the issuer must mint them).
	GM bool
	// JWTAudience is the audience of the JWT-SVID written with the SVID
	// files (Files); default the gateway's SPIFFE ID,
	// spiffe://TD/gateway/local.
	JWTAudience []string
	// RefreshInterval is how often Workload API streams and SVID files
	// are checked against the clock; default
	// workloadapi.DefaultRefreshInterval.
	RefreshInterval time.Duration
	Logger          *slog.Logger
	Clock           func() time.Time
}

// StartEndpoints starts a Workload API server whose SVIDs come from
// cfg.Issuer, with endpoints under cfg.Dir/ep.
func StartEndpoints(ctx context.Context, cfg EndpointsConfig) (*Endpoints, error) {
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return nil, err
	}
	if cfg.Issuer == nil {
		return nil, errors.New("svid: an issuer is required")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = workloadapi.DefaultRefreshInterval
	}
	aud := slices.Clone(cfg.JWTAudience)
	if len(aud) == 0 {
		gw, err := identity.GatewayID(td, "local")
		if err != nil {
			return nil, err
		}
		aud = []string{gw.String()}
	}
	if slices.Contains(aud, "") {
		return nil, errors.New("svid: empty jwt audience")
	}
	cgAtt, err := workloadapi.NewCgroupAttestor()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, err
	}
	epDir := filepath.Join(cfg.Dir, "ep")
	// Stale endpoints of an earlier run are useless: their sockets are dead.
	if err := os.RemoveAll(epDir); err != nil {
		return nil, err
	}
	if err := os.Mkdir(epDir, 0o700); err != nil {
		return nil, err
	}
	filesDir := filepath.Join(cfg.Dir, "files")
	if err := prepareFilesDir(filesDir); err != nil {
		return nil, err
	}
	att := &pendingCgroupAttestor{inner: cgAtt, cgroups: map[string]func() (string, error){}}
	srv, err := workloadapi.New(workloadapi.Config{Issuer: cfg.Issuer, Attestor: att, Logger: log, Clock: cfg.Clock, GM: cfg.GM})
	if err != nil {
		return nil, err
	}
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	e := &Endpoints{
		td: td, srv: srv, att: att, epDir: epDir, uid: cfg.UID, gid: cfg.GID,
		issuer: cfg.Issuer, now: cfg.Clock, log: log.With("component", "svid"), interval: cfg.RefreshInterval, bg: bg, cancel: cancel,
		filesDir: filesDir, audience: aud, files: map[*fileSet]struct{}{},
	}
	e.wg.Go(func() {
		t := time.NewTicker(e.interval)
		defer t.Stop()
		for {
			select {
			case <-bg.Done():
				return
			case <-t.C:
				e.Refresh()
			}
		}
	})
	log.Info("workload api ready", "trust_domain", cfg.TrustDomain, "endpoints", epDir, "svid_files", filesDir)
	return e, nil
}

// Refresh wakes every Workload API stream and every SVID file writer to
// check its SVIDs against the clock now (they also do every
// RefreshInterval).
func (e *Endpoints) Refresh() {
	e.srv.Refresh()
	e.refreshFiles()
}

// Close removes the SVID files still open and stops the server, ending
// open streams.
func (e *Endpoints) Close() error {
	e.closeAllFiles()
	e.srv.Stop()
	e.cancel()
	e.wg.Wait()
	return nil
}

var _ worker.Identity = (*Provider)(nil)

// Config configures a Provider.
type Config struct {
	// Dir holds the CA (Dir/ca) and the per-instance endpoints (Dir/ep).
	Dir string
	// TrustDomain is e.g. "zfaas.local".
	TrustDomain string
	// UID and GID own the per-instance sockets and the secret SVID files.
	UID, GID int
	// X509TTL, JWTTTL and CATTL are the CA's lifetimes; zero means the
	// defaults of identity/ca (1h, 5m, 24h).
	X509TTL, JWTTTL, CATTL time.Duration
	Logger                 *slog.Logger
	// OnIssue, when set, is told of every SVID the Workload API mints for
	// an instance (for the audit trail); it must not block.
	OnIssue func(Issued)
	// Suite is ca.SuiteStandard ("" means standard) or ca.SuiteGM, which
	// adds SM2 authorities, TLCPSource and GM delivery on the Workload API.
	Suite ca.Suite
	// Clock returns the current time for the CA, the Workload API and the
	// rotation of the sources; nil means time.Now.
	Clock func() time.Time
	// JWTAudience and RefreshInterval are EndpointsConfig's.
	JWTAudience     []string
	RefreshInterval time.Duration
}

// Issued describes one SVID handed to an instance.
type Issued struct {
	ID       string
	Type     string // "x509", "jwt", or "gm-sign" / "gm-enc" (the two SM2 certificates of a GM SVID)
	Serial   string // hex, X.509 and GM only
	Audience []string
	NotAfter time.Time
	// Delivery is how the instance gets it: DeliveryWorkloadAPI or
	// DeliveryFiles.
	Delivery string
}

// recordingIssuer tells Config.OnIssue of every SVID it mints.
type recordingIssuer struct {
	*ca.CA
	on func(Issued)
}

func (r recordingIssuer) MintX509SVID(ctx context.Context, p ca.X509Params) (*ca.X509SVID, error) {
	s, err := r.CA.MintX509SVID(ctx, p)
	if err == nil && len(s.Certificates) > 0 {
		leaf := s.Certificates[0]
		r.on(Issued{ID: s.ID.String(), Type: "x509", Serial: leaf.SerialNumber.Text(16), NotAfter: leaf.NotAfter, Delivery: deliveryOf(ctx)})
	}
	return s, err
}

func (r recordingIssuer) MintGMSVID(ctx context.Context, p ca.GMParams) (*ca.GMSVID, error) {
	s, err := r.CA.MintGMSVID(ctx, p)
	if err == nil && len(s.Sign) > 0 && len(s.Enc) > 0 {
		for _, c := range []struct {
			typ  string
			leaf *smx509.Certificate
		}{{"gm-sign", s.Sign[0]}, {"gm-enc", s.Enc[0]}} {
			r.on(Issued{ID: s.ID.String(), Type: c.typ, Serial: c.leaf.SerialNumber.Text(16), NotAfter: c.leaf.NotAfter, Delivery: deliveryOf(ctx)})
		}
	}
	return s, err
}

func (r recordingIssuer) MintJWTSVID(ctx context.Context, p ca.JWTParams) (*ca.JWTSVID, error) {
	s, err := r.CA.MintJWTSVID(ctx, p)
	if err == nil {
		r.on(Issued{ID: p.ID.String(), Type: "jwt", Audience: p.Audience, NotAfter: s.Expiry, Delivery: deliveryOf(ctx)})
	}
	return s, err
}

// Start creates (or reloads) the CA under cfg.Dir/ca and starts the
// Workload API server; endpoints go under cfg.Dir/ep, SVID files under
// cfg.Dir/files.
func Start(ctx context.Context, cfg Config) (*Provider, error) {
	dir, trustDomain, uid, gid, log := cfg.Dir, cfg.TrustDomain, cfg.UID, cfg.GID, cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return nil, err
	}
	now := cfg.Clock
	if now == nil {
		now = time.Now
	}
	authority, err := ca.New(ctx, ca.Config{
		TrustDomain: td, Dir: filepath.Join(dir, "ca"), Logger: log,
		X509TTL: cfg.X509TTL, JWTTTL: cfg.JWTTTL, CATTL: cfg.CATTL,
		Suite: cfg.Suite, Clock: now,
	})
	if err != nil {
		return nil, err
	}
	var issuer workloadapi.Issuer = authority
	if cfg.OnIssue != nil {
		issuer = recordingIssuer{CA: authority, on: cfg.OnIssue}
	}
	ep, err := StartEndpoints(ctx, EndpointsConfig{
		Dir: dir, TrustDomain: trustDomain, UID: uid, GID: gid, Issuer: issuer,
		GM: authority.Suite() == ca.SuiteGM, JWTAudience: cfg.JWTAudience, RefreshInterval: cfg.RefreshInterval,
		Logger: log, Clock: now,
	})
	if err != nil {
		authority.Close()
		return nil, err
	}
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	i := &Provider{Endpoints: ep, td: td, now: now, ca: authority, cancel: cancel}
	i.wg.Go(func() { _ = authority.Run(bg) })
	log.Info("identity ca ready", "trust_domain", trustDomain, "suite", string(authority.Suite()))
	return i, nil
}

// Endpoint implements worker.Identity.
func (i *Endpoints) Endpoint(_ context.Context, spec worker.EndpointSpec) (string, func(), error) {
	id, err := identity.FunctionID(i.td, spec.Tenant, spec.Function)
	if err != nil {
		return "", nil, err
	}
	dir := filepath.Join(i.epDir, spec.InstanceID)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", nil, err
	}
	i.att.add(spec.InstanceID, spec.CgroupDir)
	// The cgroup is not known yet: the attestor substitutes it per call.
	l, err := workloadapi.ListenInstance(filepath.Join(dir, worker.EndpointSocket), workloadapi.Instance{
		Name: spec.InstanceID, ID: id, CgroupDir: pendingCgroup, UID: i.uid, GID: i.gid,
	})
	if err != nil {
		i.att.remove(spec.InstanceID)
		os.RemoveAll(dir)
		return "", nil, err
	}
	go func() { _ = i.srv.Serve(l) }()
	var once sync.Once
	return dir, func() {
		once.Do(func() {
			l.Close()
			i.att.remove(spec.InstanceID)
			os.RemoveAll(dir)
		})
	}, nil
}

// Close stops the Workload API server (ending open streams) and the CA.
func (i *Provider) Close() error {
	i.Endpoints.Close()
	i.cancel()
	i.wg.Wait()
	return i.ca.Close()
}

// pendingCgroup is the placeholder cgroup of a listener created before its
// instance's cgroup exists; it lies outside every cgroup mount, so nothing
// is attested against it.
const pendingCgroup = "/nonexistent/zfaas-pending-cgroup"

// pendingCgroupAttestor fills in an instance's cgroup (known only once the
// sandbox started) before the cgroup check.
type pendingCgroupAttestor struct {
	inner   workloadapi.Attestor
	mu      sync.Mutex
	cgroups map[string]func() (string, error) // instance → cgroup dir
}

func (a *pendingCgroupAttestor) add(name string, f func() (string, error)) {
	a.mu.Lock()
	a.cgroups[name] = f
	a.mu.Unlock()
}

func (a *pendingCgroupAttestor) remove(name string) {
	a.mu.Lock()
	delete(a.cgroups, name)
	a.mu.Unlock()
}

func (a *pendingCgroupAttestor) Attest(ctx context.Context) (workloadapi.Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return workloadapi.Identity{}, fmt.Errorf("%w: no peer", workloadapi.ErrNotAttested)
	}
	info, ok := p.AuthInfo.(workloadapi.PeerInfo)
	if !ok || !info.HasInstance {
		return workloadapi.Identity{}, fmt.Errorf("%w: not an instance endpoint", workloadapi.ErrNotAttested)
	}
	a.mu.Lock()
	f := a.cgroups[info.Instance.Name]
	a.mu.Unlock()
	if f == nil {
		return workloadapi.Identity{}, fmt.Errorf("%w: instance %s is gone", workloadapi.ErrNotAttested, info.Instance.Name)
	}
	dir, err := f()
	if err != nil {
		return workloadapi.Identity{}, fmt.Errorf("%w: instance %s: %v", workloadapi.ErrNotAttested, info.Instance.Name, err)
	}
	info.Instance.CgroupDir = dir
	q := *p
	q.AuthInfo = info
	return a.inner.Attest(peer.NewContext(ctx, &q))
}

// VerifyJWTSVID checks a JWT-SVID against the CA's JWT bundle (signature,
// expiry, audience) and returns its SPIFFE ID. The gateway authenticates
// bearer tokens with it.
func (i *Provider) VerifyJWTSVID(token, audience string) (string, error) {
	v, err := i.ca.ValidateJWTSVID(token, audience)
	if err != nil {
		return "", err
	}
	return v.ID.String(), nil
}

// TrustBundle returns the trust domain's SPIFFE bundle (X.509 authorities
// and JWT keys) in the standard JWKS form, and its X.509 authorities as PEM.
func (i *Provider) TrustBundle() (jwks, pemCerts []byte, err error) {
	b := i.ca.Bundles()
	sb := spiffebundle.New(i.td)
	sb.SetX509Authorities(b.X509.X509Authorities())
	sb.SetJWTAuthorities(b.JWT.JWTAuthorities())
	jwks, err = sb.Marshal()
	if err != nil {
		return nil, nil, err
	}
	pemCerts, err = b.X509.Marshal()
	if err != nil {
		return nil, nil, err
	}
	return jwks, pemCerts, nil
}

// MintX509 issues an X.509-SVID for id with a new P-256 key, e.g. for a
// platform component or a user.
func (i *Provider) MintX509(ctx context.Context, id string) (*x509svid.SVID, error) {
	return i.mintX509(ctx, id, nil)
}

// mintX509 is MintX509 with extra host SANs (IP addresses or DNS names).
func (i *Provider) mintX509(ctx context.Context, id string, hosts []string) (*x509svid.SVID, error) {
	sid, err := spiffeid.FromString(id)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	p := ca.X509Params{ID: sid, PublicKey: key.Public()}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			p.IPAddresses = append(p.IPAddresses, ip)
		} else if h != "" {
			p.DNSNames = append(p.DNSNames, h)
		}
	}
	s, err := i.ca.MintX509SVID(ctx, p)
	if err != nil {
		return nil, err
	}
	return &x509svid.SVID{ID: s.ID, Certificates: s.Certificates, PrivateKey: key}, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source with the CA's
// current bundle.
func (i *Provider) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != i.td {
		return nil, fmt.Errorf("no bundle for trust domain %q", td)
	}
	return i.ca.Bundles().X509, nil
}

// SVIDSource returns an x509svid.Source holding an SVID for id, minted on
// first use and again once half its lifetime has passed.
func (i *Provider) SVIDSource(id string) x509svid.Source {
	return &rotatingSVID{p: i, id: id}
}

// ServerSVIDSource is SVIDSource for a server whose SVID also names hosts
// (DNS names or IP addresses), so that clients checking host names can
// verify it against the trust bundle.
func (i *Provider) ServerSVIDSource(id string, hosts ...string) x509svid.Source {
	return &rotatingSVID{p: i, id: id, hosts: hosts}
}

type rotatingSVID struct {
	p     *Provider
	id    string
	hosts []string
	mu    sync.Mutex
	svid  *x509svid.SVID
}

func (r *rotatingSVID) GetX509SVID() (*x509svid.SVID, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.svid != nil {
		leaf := r.svid.Certificates[0]
		half := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
		if r.p.now().Before(half) {
			return r.svid, nil
		}
	}
	s, err := r.p.mintX509(context.Background(), r.id, r.hosts)
	if err != nil {
		return nil, err
	}
	r.svid = s
	return s, nil
}

// IssueSVID signs an X.509-SVID for spiffe://TD/user/NAME (kind "user")
// or spiffe://TD/policyd/NAME (kind "policyd") over the public key of a
// PKCS#10 certificate request, after checking the request's signature (the
// requester holds the key, which never leaves it). It returns the
// certificate chain, leaf first. Workers and gateways get their SVIDs by
// attestation, never this way.
func (i *Provider) IssueSVID(ctx context.Context, kind, name string, csrDER []byte) ([]*x509.Certificate, error) {
	var id spiffeid.ID
	var err error
	switch kind {
	case "user":
		id, err = identity.UserID(i.td, name)
	case "policyd":
		id, err = identity.PolicydID(i.td, name)
	default:
		err = fmt.Errorf("identity kind %q cannot be issued on request", kind)
	}
	if err != nil {
		return nil, err
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("parse certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate request signature: %w", err)
	}
	s, err := i.ca.MintX509SVID(ctx, ca.X509Params{ID: id, PublicKey: csr.PublicKey})
	if err != nil {
		return nil, err
	}
	return s.Certificates, nil
}

// CA returns the local certificate authority (for the node identity
// service, which mints worker and remote-instance SVIDs with it).
func (i *Provider) CA() *ca.CA { return i.ca }
