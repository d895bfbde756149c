// Package nodeapi is the identity role's node service (gRPC
// zfaas.v1.NodeIdentity): it admits worker machines by TPM attestation
// (identity/attest) or, in development, by join token, issues their worker
// X.509-SVIDs (spiffe://TD/worker/NODE, short-lived, bound to a key that
// never leaves the worker), re-attests them on every renewal, revokes them
// when a re-attestation fails, and signs SVIDs for the function instances
// an admitted worker runs. Under the gm suite an admitted worker may also
// ask for the GM double SVID (SM2 signing and encryption certificates) of
// its own worker ID, for TLCP component links; those keys are vouched for
// by the worker SVID presented over mTLS and never outlive it.
//
// It must never issue a worker SVID to a caller that has not passed
// attestation (or a join token the policy allows) on that very call, never
// sign a worker-supplied key for a worker SVID that is not bound to the
// attestation session, never mint a worker any ID but function IDs and its
// own worker ID (the GM double SVID), and never send internal error text
// to a client. See docs/attestation.md for the protocol and why the CSR
// binding is sound.
package nodeapi

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	zfaasv1 "github.com/zfaas/zfaas/api/zfaas/v1"
	"github.com/zfaas/zfaas/identity"
	"github.com/zfaas/zfaas/identity/attest"
	"github.com/zfaas/zfaas/identity/ca"
)

// Defaults.
const (
	// DefaultWorkerTTL is the lifetime of a worker SVID; the worker
	// re-attests at half of it.
	DefaultWorkerTTL = 10 * time.Minute
	// DefaultInstanceTTL is the lifetime asked for an instance X.509-SVID
	// before it is clipped to the worker SVID's remaining life.
	DefaultInstanceTTL = time.Hour
	// DefaultJWTTTL is the same for instance JWT-SVIDs.
	DefaultJWTTTL = 5 * time.Minute
)

// MethodTPM and MethodJoinToken are the admission methods (Claims.Method).
const (
	MethodTPM       = "tpm"
	MethodJoinToken = "join_token"
)

// CA signs SVIDs and publishes bundles; *ca.CA implements it.
type CA interface {
	TrustDomain() spiffeid.TrustDomain
	MintX509SVID(ctx context.Context, p ca.X509Params) (*ca.X509SVID, error)
	MintJWTSVID(ctx context.Context, p ca.JWTParams) (*ca.JWTSVID, error)
	Bundles() ca.Bundles
	// Changed returns a channel closed at the next bundle change.
	Changed() <-chan struct{}
}

var _ CA = (*ca.CA)(nil)

// Events receives admission outcomes; the lead implements it to update the
// worker record and write audit records. Calls are synchronous, on the
// request path, after the decision: keep them short.
type Events interface {
	// Admitted: the node passed attestation (or a join token) and policy
	// and was issued a worker SVID.
	Admitted(ctx context.Context, c attest.Claims)
	// Refused: a first admission was refused; no SVID was issued. node may
	// be empty when the message never named one.
	Refused(ctx context.Context, node string, reasons []string)
	// Revoked: an admitted node failed re-attestation (or Server.Revoke
	// was called); its SVID will not be renewed and its instances' calls
	// are refused.
	Revoked(ctx context.Context, node string, reasons []string)
}

// WorkloadAuthorizer decides whether a worker may have SVIDs for a function
// ID, e.g. only functions placed on it. Optional.
type WorkloadAuthorizer interface {
	AuthorizeWorkload(ctx context.Context, node string, id spiffeid.ID) error
}

// Config configures a Server.
type Config struct {
	// CA signs every SVID. Required.
	CA CA
	// Attest configures TPM attestation (identity/attest). Attest.Admitter
	// is required; it judges join tokens too. When Attest.Roots is nil,
	// TPM attestation is off and Attest answers FailedPrecondition.
	Attest attest.Config
	// Nodes keeps node records; an in-memory store when nil.
	Nodes NodeStore
	// Events receives outcomes; nil drops them.
	Events Events
	// Workloads authorizes function IDs per worker; nil allows every
	// function ID of the trust domain.
	Workloads WorkloadAuthorizer
	// WorkerTTL is the worker SVID lifetime (DefaultWorkerTTL).
	WorkerTTL time.Duration
	// InstanceTTL and JWTTTL are the default lifetimes of instance SVIDs
	// (DefaultInstanceTTL, DefaultJWTTTL), always clipped to the calling
	// worker SVID's remaining life.
	InstanceTTL, JWTTTL time.Duration
	// JoinTokens are SHA-256 hashes of the development join tokens. Each
	// token admits one node once; the node then renews with its SVID.
	JoinTokens [][sha256.Size]byte
	// Now is the clock; time.Now when nil. It should be the CA's clock.
	Now func() time.Time
	// Logger; discarded when nil.
	Logger *slog.Logger
}

// Server implements zfaasv1.NodeIdentityServer. It is safe for concurrent
// use.
type Server struct {
	zfaasv1.UnimplementedNodeIdentityServer

	cfg      Config
	td       spiffeid.TrustDomain
	verifier *attest.Verifier // nil when TPM attestation is off
	admitter attest.Admitter
	nodes    NodeStore
	events   Events
	log      *slog.Logger

	// mu serialises the read-decide-write of node records and join-token
	// use within this process.
	mu         sync.Mutex
	usedTokens map[[sha256.Size]byte]string

	revokedMu sync.Mutex
	revokedCh chan struct{}
}

var _ zfaasv1.NodeIdentityServer = (*Server)(nil)

// New validates cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.CA == nil {
		return nil, errors.New("nodeapi config: CA is required")
	}
	if cfg.Attest.Admitter == nil {
		return nil, errors.New("nodeapi config: Attest.Admitter is required")
	}
	if cfg.WorkerTTL == 0 {
		cfg.WorkerTTL = DefaultWorkerTTL
	}
	if cfg.InstanceTTL == 0 {
		cfg.InstanceTTL = DefaultInstanceTTL
	}
	if cfg.JWTTTL == 0 {
		cfg.JWTTTL = DefaultJWTTTL
	}
	if cfg.WorkerTTL < 0 || cfg.InstanceTTL < 0 || cfg.JWTTTL < 0 {
		return nil, errors.New("nodeapi config: durations must be positive")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg: cfg, td: cfg.CA.TrustDomain(), admitter: cfg.Attest.Admitter,
		nodes: cfg.Nodes, events: cfg.Events,
		log:        cfg.Logger.With("component", "nodeapi"),
		usedTokens: make(map[[sha256.Size]byte]string),
		revokedCh:  make(chan struct{}),
	}
	if s.nodes == nil {
		s.nodes = NewMemoryNodes()
	}
	if s.events == nil {
		s.events = noEvents{}
	}
	if cfg.Attest.Roots != nil {
		ac := cfg.Attest
		if ac.Now == nil {
			ac.Now = cfg.Now
		}
		if ac.Logger == nil {
			ac.Logger = cfg.Logger
		}
		v, err := attest.New(ac)
		if err != nil {
			return nil, fmt.Errorf("nodeapi config: %w", err)
		}
		s.verifier = v
	}
	return s, nil
}

// Register registers the NodeIdentity service on gs. gs must use
// credentials built from TLSConfig.
func (s *Server) Register(gs grpc.ServiceRegistrar) {
	zfaasv1.RegisterNodeIdentityServer(gs, s)
}

// ServerOptions returns the gRPC server options the service expects:
// TLS from TLSConfig(svid), a message limit that fits Evidence, and
// interceptors that turn panics into Internal errors.
func (s *Server) ServerOptions(svid x509svid.Source) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.Creds(credentials.NewTLS(s.TLSConfig(svid))),
		grpc.MaxRecvMsgSize(attest.MaxEvidenceSize + 64<<10),
		grpc.ChainUnaryInterceptor(s.recoverUnary),
		grpc.ChainStreamInterceptor(s.recoverStream),
	}
}

// TLSConfig returns the server TLS configuration: TLS 1.3, the server
// presents svid (read on every handshake, so rotation needs no restart),
// and a client certificate is optional but, when sent, must be an
// X.509-SVID of this trust domain verified against the CA's current
// bundle. Joining workers send none; every call that needs a worker
// identity checks for it.
func (s *Server) TLSConfig(svid x509svid.Source) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: tlsconfig.GetCertificate(svid),
		ClientAuth:     tls.RequestClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return nil
			}
			_, _, err := x509svid.ParseAndVerify(raw, s.cfg.CA.Bundles().X509, x509svid.WithTime(s.cfg.Now()))
			return err
		},
	}
}

// peerWorker returns the node name and leaf of a verified worker SVID the
// caller presented, or ok false when it presented no certificate.
func (s *Server) peerWorker(ctx context.Context) (node string, leaf *x509.Certificate, ok bool, err error) {
	p, found := peer.FromContext(ctx)
	if !found {
		return "", nil, false, status.Error(codes.Unauthenticated, "no peer")
	}
	info, found := p.AuthInfo.(credentials.TLSInfo)
	if !found {
		return "", nil, false, status.Error(codes.Unauthenticated, "not a TLS connection")
	}
	certs := info.State.PeerCertificates
	if len(certs) == 0 {
		return "", nil, false, nil
	}
	id, _, verr := x509svid.Verify(certs, s.cfg.CA.Bundles().X509, x509svid.WithTime(s.cfg.Now()))
	if verr != nil {
		return "", nil, false, status.Error(codes.Unauthenticated, "client certificate is not a valid SVID of this trust domain")
	}
	n, perr := identity.Parse(id)
	if perr != nil || n.Kind != identity.KindWorker {
		return "", nil, false, status.Errorf(codes.PermissionDenied, "caller %s is not a worker", id)
	}
	return n.Name, certs[0], true, nil
}

// Revoke marks node revoked (an operator's drain-and-revoke), fires
// Events.Revoked and ends its Bundles streams. Its current SVID stays
// cryptographically valid until it expires, but every call that needs an
// admitted worker is refused from now on.
func (s *Server) Revoke(ctx context.Context, node string, reasons []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, found, err := s.nodes.Node(ctx, node)
	if err != nil {
		return fmt.Errorf("revoke %s: %w", node, err)
	}
	if !found {
		rec = NodeRecord{Node: node}
	}
	return s.revokeLocked(ctx, rec, reasons)
}

func (s *Server) revokeLocked(ctx context.Context, rec NodeRecord, reasons []string) error {
	rec.State = StateRevoked
	rec.Reasons = reasons
	rec.UpdatedAt = s.cfg.Now().UTC()
	if err := s.nodes.PutNode(ctx, rec); err != nil {
		return fmt.Errorf("revoke %s: %w", rec.Node, err)
	}
	s.log.LogAttrs(ctx, slog.LevelWarn, "worker revoked", slog.String("node", rec.Node), slog.Any("reasons", reasons))
	s.events.Revoked(ctx, rec.Node, reasons)
	s.revokedMu.Lock()
	close(s.revokedCh)
	s.revokedCh = make(chan struct{})
	s.revokedMu.Unlock()
	return nil
}

func (s *Server) revocations() <-chan struct{} {
	s.revokedMu.Lock()
	defer s.revokedMu.Unlock()
	return s.revokedCh
}

func (s *Server) refused(ctx context.Context, node string, reasons []string) {
	s.log.LogAttrs(ctx, slog.LevelWarn, "worker refused", slog.String("node", node), slog.Any("reasons", reasons))
	s.events.Refused(ctx, node, reasons)
}

// admit records an admission and mints the worker SVID for pub. The caller
// holds s.mu.
func (s *Server) admitLocked(ctx context.Context, rec NodeRecord, c attest.Claims, reasons []string, csr *x509.CertificateRequest) (*zfaasv1.WorkerSVID, error) {
	id, err := identity.WorkerID(s.td, c.Node)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, "invalid node name")
	}
	svid, err := s.cfg.CA.MintX509SVID(ctx, ca.X509Params{ID: id, PublicKey: csr.PublicKey, TTL: s.cfg.WorkerTTL})
	if err != nil {
		s.log.LogAttrs(ctx, slog.LevelError, "mint worker svid", slog.String("node", c.Node), slog.String("error", err.Error()))
		return nil, status.Error(codes.Internal, "could not sign the worker SVID")
	}
	rec.Node, rec.State, rec.Method = c.Node, StateAdmitted, c.Method
	if c.EKFingerprint != "" {
		rec.EKFingerprint = c.EKFingerprint
	}
	rec.SVIDExpiry = svid.Certificates[0].NotAfter.UTC()
	rec.Reasons = reasons
	rec.UpdatedAt = s.cfg.Now().UTC()
	if err := s.nodes.PutNode(ctx, rec); err != nil {
		s.log.LogAttrs(ctx, slog.LevelError, "store node record", slog.String("node", c.Node), slog.String("error", err.Error()))
		return nil, status.Error(codes.Internal, "could not record the admission")
	}
	s.events.Admitted(ctx, c)
	s.log.LogAttrs(ctx, slog.LevelInfo, "worker admitted", slog.String("node", c.Node), slog.String("method", c.Method),
		slog.String("ek", c.EKFingerprint), slog.Time("expires", rec.SVIDExpiry), slog.Any("reasons", reasons))
	b, err := s.trustBundles()
	if err != nil {
		return nil, err
	}
	out := &zfaasv1.WorkerSVID{Bundles: b, Method: c.Method, Reasons: reasons}
	for _, cert := range svid.Certificates {
		out.CertChain = append(out.CertChain, cert.Raw)
	}
	return out, nil
}

func (s *Server) trustBundles() (*zfaasv1.TrustBundles, error) {
	b := s.cfg.CA.Bundles()
	jwks, err := b.JWT.Marshal()
	if err != nil {
		s.log.Error("marshal jwt bundle", "error", err)
		return nil, status.Error(codes.Internal, "could not encode the bundles")
	}
	var x509DER []byte
	for _, c := range b.X509.X509Authorities() {
		x509DER = append(x509DER, c.Raw...)
	}
	return &zfaasv1.TrustBundles{
		TrustDomain: s.td.Name(), X509Authorities: x509DER, JwtAuthorities: jwks, Generation: b.Generation,
		GmAuthorities: gmAuthorities(b.GM),
	}, nil
}

// parseCSR decodes a PKCS#10 CSR, checks its self-signature (proof of
// possession of the key) and that the key is ECDSA P-256.
func parseCSR(der []byte) (*x509.CertificateRequest, error) {
	if len(der) == 0 || len(der) > 8<<10 {
		return nil, status.Error(codes.InvalidArgument, "csr missing or larger than 8 KiB")
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, "csr is not a DER PKCS#10 request")
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, status.Error(codes.InvalidArgument, "csr signature does not verify")
	}
	if err := checkKey(csr.PublicKey); err != nil {
		return nil, err
	}
	return csr, nil
}

func (s *Server) recoverUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if p := recover(); p != nil {
			s.log.LogAttrs(ctx, slog.LevelError, "panic", slog.String("method", info.FullMethod), slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
			err = status.Error(codes.Internal, "internal error")
		}
	}()
	return h(ctx, req)
}

func (s *Server) recoverStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
	defer func() {
		if p := recover(); p != nil {
			s.log.LogAttrs(ss.Context(), slog.LevelError, "panic", slog.String("method", info.FullMethod), slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
			err = status.Error(codes.Internal, "internal error")
		}
	}()
	return h(srv, ss)
}

type noEvents struct{}

func (noEvents) Admitted(context.Context, attest.Claims)   {}
func (noEvents) Refused(context.Context, string, []string) {}
func (noEvents) Revoked(context.Context, string, []string) {}
