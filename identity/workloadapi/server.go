// Package workloadapi serves the standard SPIFFE Workload API
// (SpiffeWorkloadAPI gRPC service) to function instances, one Unix socket
// per instance, so go-spiffe and every other SPIFFE client work unchanged.
//
// Every call must carry the `workload.spiffe.io: true` metadata
// (InvalidArgument otherwise) and come from a caller the Attestor can tie to
// an identity (PermissionDenied otherwise). Streams send their first message
// at once and a new one whenever the bundles or the active authority change
// or the SVID passes half of its life by the injected clock; Refresh wakes
// them to re-check. The server never returns internal error text to a
// client and never serves an SVID to a caller it has not attested on that
// very call or stream update.
//
// GM suite: a server with Config.GM also delivers the GM double SVID (an
// SM2 signing and an SM2 encryption certificate, see gm.go) on
// FetchX509SVID, but only to a caller that asks for it with the
// `zfaas-gm: true` metadata, as two extra X509SVID entries after the
// standard one (hints "gm-sign" and "gm-enc"). Standard clients never see
// SM2 certificates: go-spiffe parses every entry with crypto/x509, which
// rejects SM2 keys.
package workloadapi

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/zfaas/zfaas/identity/ca"
	"github.com/zfaas/zfaas/identity/internal/notify"
)

// DefaultRefreshInterval is how often Run wakes the streams to re-check
// SVID lifetimes.
const DefaultRefreshInterval = 5 * time.Second

const headerKey = "workload.spiffe.io"

// Issuer mints SVIDs and publishes bundles; *ca.CA implements it.
type Issuer interface {
	MintX509SVID(ctx context.Context, p ca.X509Params) (*ca.X509SVID, error)
	MintJWTSVID(ctx context.Context, p ca.JWTParams) (*ca.JWTSVID, error)
	ValidateJWTSVID(token, audience string) (*ca.ValidatedJWT, error)
	Bundles() ca.Bundles
	// Changed returns a channel closed at the next bundle or authority change.
	Changed() <-chan struct{}
}

// GMIssuer mints GM double SVIDs; *ca.CA implements it. A Server with
// Config.GM needs an Issuer that is also a GMIssuer and whose Bundles carry
// the SM2 authorities (Bundles.GM).
type GMIssuer interface {
	MintGMSVID(ctx context.Context, p ca.GMParams) (*ca.GMSVID, error)
}

// Config configures a Server.
type Config struct {
	// Issuer signs SVIDs. Required.
	Issuer Issuer
	// Attestor identifies callers. Required (usually a *CgroupAttestor).
	Attestor Attestor
	// Clock returns the current time; nil means time.Now. It must be the
	// issuer's clock.
	Clock func() time.Time
	// RefreshInterval is how often Run wakes streams (5 s).
	RefreshInterval time.Duration
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// GM serves the GM double SVID to callers that ask for it (GMHeader);
	// the Issuer must implement GMIssuer.
	GM bool
}

// Server implements workload.SpiffeWorkloadAPIServer. It is safe for
// concurrent use; one Server serves any number of instance listeners.
type Server struct {
	workload.UnimplementedSpiffeWorkloadAPIServer

	issuer   Issuer
	gm       GMIssuer // nil unless Config.GM
	attestor Attestor
	now      func() time.Time
	interval time.Duration
	log      *slog.Logger
	grpc     *grpc.Server
	refresh  notify.Broadcaster
}

var _ workload.SpiffeWorkloadAPIServer = (*Server)(nil)

// New builds a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Issuer == nil || cfg.Attestor == nil {
		return nil, errors.New("workloadapi config: issuer and attestor are required")
	}
	s := &Server{issuer: cfg.Issuer, attestor: cfg.Attestor, now: cfg.Clock, interval: cfg.RefreshInterval, log: cfg.Logger}
	if cfg.GM {
		gm, ok := cfg.Issuer.(GMIssuer)
		if !ok {
			return nil, fmt.Errorf("workloadapi config: gm needs an issuer that mints gm svids, %T does not", cfg.Issuer)
		}
		s.gm = gm
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.interval <= 0 {
		s.interval = DefaultRefreshInterval
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With("component", "workloadapi")
	s.grpc = grpc.NewServer(
		grpc.Creds(peerCreds{}),
		grpc.MaxRecvMsgSize(64<<10),
		grpc.MaxConcurrentStreams(16),
		grpc.ChainUnaryInterceptor(s.recoverUnary, headerUnary),
		grpc.ChainStreamInterceptor(s.recoverStream, headerStream),
	)
	workload.RegisterSpiffeWorkloadAPIServer(s.grpc, s)
	return s, nil
}

// Serve accepts connections on l (normally from ListenInstance) until Stop.
// It may be called for many listeners at once.
func (s *Server) Serve(l net.Listener) error { return s.grpc.Serve(l) }

// Stop closes all listeners and connections at once, ending open
// streams. (A graceful stop would wait forever on the streams.)
func (s *Server) Stop() { s.grpc.Stop() }

// Refresh wakes every open stream to re-check its SVID against the clock.
func (s *Server) Refresh() { s.refresh.Notify() }

// Run calls Refresh every RefreshInterval until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			s.Refresh()
		}
	}
}

func checkHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(headerKey); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	return nil
}

func headerUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := checkHeader(ctx); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func headerStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := checkHeader(ss.Context()); err != nil {
		return err
	}
	return h(srv, ss)
}

func (s *Server) recoverUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("panic in workload api", "method", info.FullMethod, "panic", r, "stack", string(debug.Stack()))
			resp, err = nil, status.Error(codes.Internal, "internal error")
		}
	}()
	return h(ctx, req)
}

func (s *Server) recoverStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("panic in workload api", "method", info.FullMethod, "panic", r, "stack", string(debug.Stack()))
			err = status.Error(codes.Internal, "internal error")
		}
	}()
	return h(srv, ss)
}

func (s *Server) attest(ctx context.Context, method string) (Identity, error) {
	id, err := s.attestor.Attest(ctx)
	if err != nil {
		s.log.Warn("workload attestation failed", "method", method, "err", err)
		return Identity{}, status.Error(codes.PermissionDenied, "no identity issued")
	}
	return id, nil
}

func unavailable(log *slog.Logger, what string, err error) error {
	log.Error("workload api: "+what, "err", err)
	return status.Error(codes.Unavailable, "could not "+what)
}

// FetchX509SVID implements the Workload API.
func (s *Server) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	ctx := stream.Context()
	wantGM := gmRequested(ctx)
	if wantGM && s.gm == nil {
		s.log.Debug("gm svid requested from a server without the gm suite")
		wantGM = false
	}
	var (
		cur   *ca.X509SVID
		curGM *ca.GMSVID
		gen   uint64
		sent  bool
	)
	for {
		changed, refresh := s.issuer.Changed(), s.refresh.Wait()
		b := s.issuer.Bundles()
		if !sent || b.Generation != gen || s.due(cur) || (wantGM && s.dueGM(curGM)) {
			// Attest again on every update: a process that left the
			// instance's cgroup gets nothing new.
			ident, err := s.attest(ctx, "FetchX509SVID")
			if err != nil {
				return err
			}
			svid, keyDER, err := s.mintX509(ctx, ident)
			if err != nil {
				return unavailable(s.log, "issue x509-svid", err)
			}
			resp := &workload.X509SVIDResponse{Svids: []*workload.X509SVID{{
				SpiffeId:    svid.ID.String(),
				X509Svid:    concatDER(svid.Certificates),
				X509SvidKey: keyDER,
				Bundle:      concatDER(b.X509.X509Authorities()),
			}}}
			var gm *ca.GMSVID
			if wantGM {
				var entries []*workload.X509SVID
				gm, entries, err = s.mintGM(ctx, ident, b)
				if err != nil {
					return unavailable(s.log, "issue gm svid", err)
				}
				resp.Svids = append(resp.Svids, entries...)
			}
			if err := stream.Send(resp); err != nil {
				return err
			}
			cur, curGM, gen, sent = svid, gm, b.Generation, true
			s.log.Debug("x509-svid sent", "spiffe_id", svid.ID.String(), "instance", ident.Instance,
				"serial", svid.Certificates[0].SerialNumber.Text(16), "not_after", svid.Certificates[0].NotAfter)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-refresh:
		}
	}
}

// due reports whether svid has passed half of its lifetime.
func (s *Server) due(svid *ca.X509SVID) bool {
	if svid == nil || len(svid.Certificates) == 0 {
		return true
	}
	leaf := svid.Certificates[0]
	return s.pastHalf(leaf.NotBefore, leaf.NotAfter)
}

func (s *Server) pastHalf(notBefore, notAfter time.Time) bool {
	half := notBefore.Add(notAfter.Sub(notBefore) / 2)
	return !s.now().Before(half)
}

func (s *Server) mintX509(ctx context.Context, ident Identity) (*ca.X509SVID, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate svid key: %w", err)
	}
	svid, err := s.issuer.MintX509SVID(ctx, ca.X509Params{ID: ident.ID, PublicKey: key.Public()})
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("marshal svid key: %w", err)
	}
	return svid, der, nil
}

func concatDER(certs []*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		b.Write(c.Raw)
	}
	return b.Bytes()
}

// FetchX509Bundles implements the Workload API.
func (s *Server) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	return s.streamBundles(stream.Context(), "FetchX509Bundles", func(b ca.Bundles) error {
		return stream.Send(&workload.X509BundlesResponse{Bundles: map[string][]byte{
			b.X509.TrustDomain().Name(): concatDER(b.X509.X509Authorities()),
		}})
	})
}

// FetchJWTBundles implements the Workload API.
func (s *Server) FetchJWTBundles(_ *workload.JWTBundlesRequest, stream grpc.ServerStreamingServer[workload.JWTBundlesResponse]) error {
	return s.streamBundles(stream.Context(), "FetchJWTBundles", func(b ca.Bundles) error {
		jwks, err := b.JWT.Marshal()
		if err != nil {
			return unavailable(s.log, "encode jwt bundle", err)
		}
		return stream.Send(&workload.JWTBundlesResponse{Bundles: map[string][]byte{
			b.JWT.TrustDomain().Name(): jwks,
		}})
	})
}

func (s *Server) streamBundles(ctx context.Context, method string, send func(ca.Bundles) error) error {
	var (
		gen  uint64
		sent bool
	)
	for {
		changed := s.issuer.Changed()
		b := s.issuer.Bundles()
		if !sent || b.Generation != gen {
			if _, err := s.attest(ctx, method); err != nil {
				return err
			}
			if err := send(b); err != nil {
				return err
			}
			gen, sent = b.Generation, true
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// FetchJWTSVID implements the Workload API.
func (s *Server) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	if len(req.GetAudience()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	for _, a := range req.GetAudience() {
		if a == "" || len(a) > 1024 {
			return nil, status.Error(codes.InvalidArgument, "invalid audience")
		}
	}
	ident, err := s.attest(ctx, "FetchJWTSVID")
	if err != nil {
		return nil, err
	}
	if want := req.GetSpiffeId(); want != "" {
		id, err := spiffeid.FromString(want)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, "invalid spiffe_id")
		}
		if id != ident.ID {
			s.log.Warn("jwt-svid for foreign id refused", "requested", want, "entitled", ident.ID.String(), "instance", ident.Instance)
			return nil, status.Error(codes.PermissionDenied, "no identity issued")
		}
	}
	svid, err := s.issuer.MintJWTSVID(ctx, ca.JWTParams{ID: ident.ID, Audience: req.GetAudience(), Instance: ident.Instance})
	if err != nil {
		return nil, unavailable(s.log, "issue jwt-svid", err)
	}
	return &workload.JWTSVIDResponse{Svids: []*workload.JWTSVID{{SpiffeId: svid.ID.String(), Svid: svid.Token}}}, nil
}

// ValidateJWTSVID implements the Workload API.
func (s *Server) ValidateJWTSVID(ctx context.Context, req *workload.ValidateJWTSVIDRequest) (*workload.ValidateJWTSVIDResponse, error) {
	if req.GetAudience() == "" {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	if req.GetSvid() == "" {
		return nil, status.Error(codes.InvalidArgument, "svid must be specified")
	}
	if _, err := s.attest(ctx, "ValidateJWTSVID"); err != nil {
		return nil, err
	}
	v, err := s.issuer.ValidateJWTSVID(req.GetSvid(), req.GetAudience())
	if err != nil {
		msg := "invalid JWT-SVID"
		switch {
		case errors.Is(err, ca.ErrJWTExpired):
			msg = "JWT-SVID has expired"
		case errors.Is(err, ca.ErrJWTAudience):
			msg = "JWT-SVID audience mismatch"
		}
		s.log.Debug("jwt-svid validation failed", "err", err)
		return nil, status.Error(codes.InvalidArgument, msg)
	}
	claims, err := structpb.NewStruct(v.Claims)
	if err != nil {
		return nil, unavailable(s.log, "encode claims", err)
	}
	return &workload.ValidateJWTSVIDResponse{SpiffeId: v.ID.String(), Claims: claims}, nil
}
