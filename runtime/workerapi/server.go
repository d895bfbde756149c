package workerapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	"github.com/zfaas/zfaas/api"
	zfaasv1 "github.com/zfaas/zfaas/api/zfaas/v1"
	"github.com/zfaas/zfaas/crypto/dualstack"
	"github.com/zfaas/zfaas/identity"
	"github.com/zfaas/zfaas/runtime/pool"
)

// DefaultMaxMessageBytes bounds every message either way: 6 MiB of payload
// (Lambda's limit and the gateway's and worker's defaults), 1 MiB of HTTP
// headers (net/http's default header limit) and 64 KiB for the version
// record and framing.
const DefaultMaxMessageBytes = 6<<20 + 1<<20 + 64<<10

// Keepalive: the client pings a quiet connection every keepaliveTime and
// drops it when no answer comes within keepaliveTimeout, so a worker whose
// machine vanished is noticed mid-call; the server allows pings that often.
const (
	keepaliveTime    = 30 * time.Second
	keepaliveTimeout = 10 * time.Second
	keepaliveMinTime = 15 * time.Second
)

// Local is the worker's own invoker, which a Server exposes:
// *worker.Worker, with its Load converted (see Load).
type Local interface {
	// Invoke runs one invocation; see worker.Worker.Invoke for its errors.
	Invoke(ctx context.Context, inv api.Invocation) (*api.InvocationResult, error)
	// Evict stops the idle instances of a function version.
	Evict(v api.Version)
	// Load returns a snapshot of the worker's instances and invocations.
	Load() Load
}

// Load is a snapshot of what a worker runs, for placement. It has the
// fields of worker.Load, so workerapi.Load(w.Load()) converts one.
type Load struct {
	// Versions are the instances by "tenant/function/version".
	Versions map[string]pool.Stats
	// Instances and MemoryMB count every live instance (idle, busy and
	// starting) and the memory configured for them.
	Instances int
	MemoryMB  int
	// Inflight is the number of invocations running now.
	Inflight int
}

// Authorizer decides whether the caller with a verified SPIFFE ID may use
// the worker; a nil error allows it.
type Authorizer func(caller spiffeid.ID) error

// AuthorizeGateways allows the gateways of trust domain td
// (spiffe://td/gateway/NODE) and no one else.
func AuthorizeGateways(td spiffeid.TrustDomain) Authorizer {
	return func(caller spiffeid.ID) error {
		if !caller.MemberOf(td) {
			return fmt.Errorf("%s is not in trust domain %s", caller, td)
		}
		n, err := identity.Parse(caller)
		if err != nil {
			return err
		}
		if n.Kind != identity.KindGateway {
			return fmt.Errorf("%s is not a gateway", caller)
		}
		return nil
	}
}

// Option configures a Server or a Client; each option says which.
type Option func(*options)

type options struct {
	maxMsg int
	auth   Authorizer
	td     spiffeid.TrustDomain
	log    *slog.Logger
	dial   []grpc.DialOption
}

// WithMaxMessageBytes bounds the messages a Server or Client sends and
// accepts (default DefaultMaxMessageBytes). Both ends should agree.
func WithMaxMessageBytes(n int) Option { return func(o *options) { o.maxMsg = n } }

// WithTrustDomain makes a Server accept the gateways of td (see
// AuthorizeGateways). Server only.
func WithTrustDomain(td spiffeid.TrustDomain) Option { return func(o *options) { o.td = td } }

// WithAuthorizer makes a Server accept the callers a allows, instead of the
// gateways of its trust domain. Server only.
func WithAuthorizer(a Authorizer) Option { return func(o *options) { o.auth = a } }

// WithLogger sets the log a Server reports refused callers and platform
// failures to (default discards). Server only.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithDialOptions adds gRPC dial options (after the package's own). Client
// only.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dial = append(o.dial, opts...) }
}

func applyOptions(opts []Option) (options, error) {
	o := options{maxMsg: DefaultMaxMessageBytes}
	for _, opt := range opts {
		opt(&o)
	}
	if o.maxMsg <= 0 {
		return o, errors.New("max message bytes must be positive")
	}
	return o, nil
}

// Server serves the zfaas.v1.Worker API in front of a Local. It is safe for
// concurrent use.
type Server struct {
	local  Local
	auth   Authorizer
	maxMsg int
	log    *slog.Logger
}

// NewServer returns a Server for local. It needs WithTrustDomain or
// WithAuthorizer: there is no default set of callers.
func NewServer(local Local, opts ...Option) (*Server, error) {
	o, err := applyOptions(opts)
	if err != nil {
		return nil, fmt.Errorf("workerapi: %w", err)
	}
	if local == nil {
		return nil, errors.New("workerapi: a local invoker is required")
	}
	auth := o.auth
	if auth == nil {
		if o.td.IsZero() {
			return nil, errors.New("workerapi: WithTrustDomain or WithAuthorizer is required")
		}
		auth = AuthorizeGateways(o.td)
	}
	log := o.log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{local: local, auth: auth, maxMsg: o.maxMsg, log: log.With("component", "workerapi")}, nil
}

// ServerOptions are the options the grpc.Server serving s must be built
// with, beside its transport credentials: the message size limits and a
// keepalive policy that allows the Client's pings. Without them payloads
// over gRPC's 4 MiB default are refused, and the Client's keepalive pings
// make the server drop connections mid-call.
func (s *Server) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(s.maxMsg),
		grpc.MaxSendMsgSize(s.maxMsg),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveMinTime, PermitWithoutStream: true}),
	}
}

// Register adds the Worker service to gs. Callers are authorized in every
// RPC, so gs may serve other services with other callers.
func (s *Server) Register(gs grpc.ServiceRegistrar) {
	zfaasv1.RegisterWorkerServer(gs, service{s: s})
}

// authorize checks the verified SPIFFE ID of the call's peer.
func (s *Server) authorize(ctx context.Context, method string) error {
	id, ok := peerID(ctx)
	if !ok {
		s.log.Warn("caller refused: no verified SPIFFE ID", "method", method)
		return reasonStatus(codes.Unauthenticated, zfaasv1.WorkerError_UNAUTHORIZED, "caller has no verified SPIFFE ID").Err()
	}
	if err := s.auth(id); err != nil {
		s.log.Warn("caller refused", "method", method, "caller", id.String(), "err", err)
		return reasonStatus(codes.PermissionDenied, zfaasv1.WorkerError_UNAUTHORIZED, "caller "+id.String()+" may not use this worker").Err()
	}
	return nil
}

// peerID is the SPIFFE ID of the call's peer, from go-spiffe's gRPC
// credentials (which wrap grpc's TLSInfo) or from crypto/dualstack's TLS and
// TLCP credentials. Both verify the peer's SVID in the handshake.
func peerID(ctx context.Context) (spiffeid.ID, bool) {
	if id, ok := grpccredentials.PeerIDFromContext(ctx); ok && !id.IsZero() {
		return id, true
	}
	cs, ok := dualstack.StateFromPeer(ctx)
	if !ok {
		return spiffeid.ID{}, false
	}
	return cs.PeerID()
}

// fail turns an error of Local into the status sent back.
func (s *Server) fail(method, invocation string, err error) error {
	st, internal := errorStatus(err)
	if internal {
		s.log.Error("invocation failed", "method", method, "invocation", invocation, "err", err)
	}
	return st.Err()
}

// service implements zfaasv1.WorkerServer; it is apart from Server so the
// handlers are not part of Server's API.
type service struct {
	zfaasv1.UnimplementedWorkerServer
	s *Server
}

func (h service) Invoke(ctx context.Context, req *zfaasv1.WorkerInvokeRequest) (*zfaasv1.WorkerInvokeResponse, error) {
	s := h.s
	if err := s.authorize(ctx, "Invoke"); err != nil {
		return nil, err
	}
	inv, err := decodeInvocation(req)
	if err != nil {
		return nil, reasonStatus(codes.InvalidArgument, zfaasv1.WorkerError_INVALID_REQUEST, err.Error()).Err()
	}
	res, err := s.local.Invoke(ctx, inv)
	if err != nil {
		return nil, s.fail("Invoke", inv.ID, err)
	}
	if res == nil {
		return nil, s.fail("Invoke", inv.ID, errors.New("local invoker returned no result"))
	}
	resp := encodeResult(res)
	if n := proto.Size(resp); n > s.maxMsg {
		return nil, s.fail("Invoke", inv.ID, fmt.Errorf("%w: %d bytes, message limit %d", api.ErrResponseTooLarge, n, s.maxMsg))
	}
	return resp, nil
}

func (h service) Evict(ctx context.Context, req *zfaasv1.WorkerEvictRequest) (*zfaasv1.WorkerEvictResponse, error) {
	s := h.s
	if err := s.authorize(ctx, "Evict"); err != nil {
		return nil, err
	}
	v, err := decodeVersion(req.GetVersion())
	if err != nil {
		return nil, reasonStatus(codes.InvalidArgument, zfaasv1.WorkerError_INVALID_REQUEST, err.Error()).Err()
	}
	s.local.Evict(v)
	return &zfaasv1.WorkerEvictResponse{}, nil
}

func (h service) Load(ctx context.Context, _ *zfaasv1.WorkerLoadRequest) (*zfaasv1.WorkerLoadResponse, error) {
	s := h.s
	if err := s.authorize(ctx, "Load"); err != nil {
		return nil, err
	}
	return loadToWire(s.local.Load()), nil
}
