package nodeapi

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	zfaasv1 "github.com/zfaas/zfaas/api/zfaas/v1"
	"github.com/zfaas/zfaas/identity"
	"github.com/zfaas/zfaas/identity/ca"
)

// minRemaining is the least remaining worker SVID life for which an
// instance SVID is still signed: below it the worker must renew first.
const minRemaining = time.Second

// admittedWorker authenticates a workload call: the caller must present a
// worker SVID of an admitted, non-revoked node. It returns the node and
// how long the presented SVID still lives.
func (s *Server) admittedWorker(ctx context.Context) (string, time.Duration, error) {
	node, leaf, ok, err := s.peerWorker(ctx)
	if err != nil {
		return "", 0, err
	}
	if !ok {
		return "", 0, status.Error(codes.Unauthenticated, "a worker SVID is required as client certificate")
	}
	rec, found, err := s.nodes.Node(ctx, node)
	if err != nil {
		s.log.LogAttrs(ctx, slog.LevelError, "read node record", slog.String("node", node), slog.String("error", err.Error()))
		return "", 0, status.Error(codes.Internal, "could not read the node record")
	}
	if !found || rec.State != StateAdmitted {
		return "", 0, status.Errorf(codes.PermissionDenied, "worker %q is not admitted", node)
	}
	left := leaf.NotAfter.Sub(s.cfg.Now())
	if left < minRemaining {
		return "", 0, status.Error(codes.Unauthenticated, "worker SVID expires too soon; renew it first")
	}
	return node, left, nil
}

// functionID parses and authorizes a requested instance ID.
func (s *Server) functionID(ctx context.Context, node, raw string) (spiffeid.ID, error) {
	id, err := spiffeid.FromString(raw)
	if err != nil {
		return spiffeid.ID{}, status.Error(codes.InvalidArgument, "spiffe_id is not a SPIFFE ID")
	}
	n, err := identity.Parse(id)
	if err != nil || n.Kind != identity.KindFunction || !id.MemberOf(s.td) {
		return spiffeid.ID{}, status.Errorf(codes.PermissionDenied, "%s is not a function ID of %s", id, s.td)
	}
	if s.cfg.Workloads != nil {
		if err := s.cfg.Workloads.AuthorizeWorkload(ctx, node, id); err != nil {
			s.log.LogAttrs(ctx, slog.LevelWarn, "workload refused", slog.String("node", node), slog.String("id", id.String()), slog.String("error", err.Error()))
			return spiffeid.ID{}, status.Errorf(codes.PermissionDenied, "worker %q may not hold %s", node, id)
		}
	}
	return id, nil
}

// clipTTL returns the requested lifetime (def when 0) clipped to limit.
func clipTTL(reqSeconds int64, def, limit time.Duration) (time.Duration, error) {
	if reqSeconds < 0 {
		return 0, status.Error(codes.InvalidArgument, "negative ttl")
	}
	ttl := def
	if reqSeconds > 0 && time.Duration(reqSeconds)*time.Second < def {
		ttl = time.Duration(reqSeconds) * time.Second
	}
	return min(ttl, limit), nil
}

// MintX509SVID implements zfaasv1.NodeIdentityServer.
func (s *Server) MintX509SVID(ctx context.Context, req *zfaasv1.MintX509SVIDRequest) (*zfaasv1.MintX509SVIDResponse, error) {
	node, left, err := s.admittedWorker(ctx)
	if err != nil {
		return nil, err
	}
	id, err := s.functionID(ctx, node, req.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	var pub crypto.PublicKey
	switch {
	case len(req.GetCsr()) > 0 && len(req.GetPublicKey()) > 0:
		return nil, status.Error(codes.InvalidArgument, "send a csr or a public_key, not both")
	case len(req.GetCsr()) > 0:
		csr, err := parseCSR(req.GetCsr())
		if err != nil {
			return nil, err
		}
		pub = csr.PublicKey
	case len(req.GetPublicKey()) > 0 && len(req.GetPublicKey()) <= 1024:
		k, err := x509.ParsePKIXPublicKey(req.GetPublicKey())
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, "public_key is not a DER SubjectPublicKeyInfo")
		}
		if err := checkKey(k); err != nil {
			return nil, err
		}
		pub = k
	default:
		return nil, status.Error(codes.InvalidArgument, "a csr or a public_key is required")
	}
	ttl, err := clipTTL(req.GetTtlSeconds(), s.cfg.InstanceTTL, left)
	if err != nil {
		return nil, err
	}
	svid, err := s.cfg.CA.MintX509SVID(ctx, ca.X509Params{ID: id, PublicKey: pub, TTL: ttl})
	if err != nil {
		s.log.LogAttrs(ctx, slog.LevelError, "mint instance x509-svid", slog.String("node", node), slog.String("id", id.String()), slog.String("error", err.Error()))
		return nil, status.Error(codes.Internal, "could not sign the SVID")
	}
	s.log.LogAttrs(ctx, slog.LevelDebug, "instance x509-svid issued", slog.String("node", node), slog.String("id", id.String()),
		slog.String("serial", svid.Certificates[0].SerialNumber.Text(16)), slog.Time("expires", svid.Certificates[0].NotAfter))
	out := &zfaasv1.MintX509SVIDResponse{}
	for _, c := range svid.Certificates {
		out.CertChain = append(out.CertChain, c.Raw)
	}
	return out, nil
}

// MintJWTSVID implements zfaasv1.NodeIdentityServer.
func (s *Server) MintJWTSVID(ctx context.Context, req *zfaasv1.MintJWTSVIDRequest) (*zfaasv1.MintJWTSVIDResponse, error) {
	node, left, err := s.admittedWorker(ctx)
	if err != nil {
		return nil, err
	}
	id, err := s.functionID(ctx, node, req.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	if len(req.GetAudience()) == 0 || len(req.GetAudience()) > 16 {
		return nil, status.Error(codes.InvalidArgument, "1 to 16 audiences are required")
	}
	for _, a := range req.GetAudience() {
		if a == "" || len(a) > 512 {
			return nil, status.Error(codes.InvalidArgument, "an audience is empty or longer than 512 bytes")
		}
	}
	if len(req.GetInstance()) > 128 {
		return nil, status.Error(codes.InvalidArgument, "instance longer than 128 bytes")
	}
	ttl, err := clipTTL(req.GetTtlSeconds(), s.cfg.JWTTTL, left)
	if err != nil {
		return nil, err
	}
	tok, err := s.cfg.CA.MintJWTSVID(ctx, ca.JWTParams{ID: id, Audience: req.GetAudience(), TTL: ttl, Instance: req.GetInstance()})
	if err != nil {
		s.log.LogAttrs(ctx, slog.LevelError, "mint instance jwt-svid", slog.String("node", node), slog.String("id", id.String()), slog.String("error", err.Error()))
		return nil, status.Error(codes.Internal, "could not sign the SVID")
	}
	return &zfaasv1.MintJWTSVIDResponse{Token: tok.Token, ExpiresAt: tok.Expiry.Unix()}, nil
}

// Bundles implements zfaasv1.NodeIdentityServer: the bundles at once and
// on every change, until the caller goes away or its node is revoked.
func (s *Server) Bundles(_ *zfaasv1.BundlesRequest, stream grpc.ServerStreamingServer[zfaasv1.TrustBundles]) error {
	ctx := stream.Context()
	node, _, err := s.admittedWorker(ctx)
	if err != nil {
		return err
	}
	for {
		changed, revoked := s.cfg.CA.Changed(), s.revocations()
		b, err := s.trustBundles()
		if err != nil {
			return err
		}
		if err := stream.Send(b); err != nil {
			return err
		}
		for waiting := true; waiting; {
			select {
			case <-ctx.Done():
				return nil
			case <-changed:
				waiting = false
			case <-revoked:
				revoked = s.revocations()
				rec, found, err := s.nodes.Node(ctx, node)
				if err != nil || !found || rec.State != StateAdmitted {
					return status.Errorf(codes.PermissionDenied, "worker %q is not admitted", node)
				}
			}
		}
	}
}

// checkKey accepts ECDSA P-256 public keys only.
func checkKey(k any) error {
	ec, ok := k.(*ecdsa.PublicKey)
	if !ok || ec.Curve != elliptic.P256() {
		return status.Error(codes.InvalidArgument, "key is not ECDSA P-256")
	}
	return nil
}
