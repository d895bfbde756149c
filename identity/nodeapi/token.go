package nodeapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"log/slog"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	zfaasv1 "github.com/zfaas/zfaas/api/zfaas/v1"
	"github.com/zfaas/zfaas/identity"
	"github.com/zfaas/zfaas/identity/attest"
)

// maxTokenSize bounds a join token.
const maxTokenSize = 1024

// HashJoinToken returns the SHA-256 hash under which a join token is
// configured (Config.JoinTokens).
func HashJoinToken(token string) [sha256.Size]byte { return sha256.Sum256([]byte(token)) }

// JoinToken implements zfaasv1.NodeIdentityServer. A token is compared in
// constant time with every configured hash, admits one node once (the
// token is then spent), and only when the Admitter allows the method
// "join_token". A node admitted this way renews by calling again with its
// current SVID as client certificate and no token. Every admission is
// logged at WARN: the worker is not attested.
func (s *Server) JoinToken(ctx context.Context, req *zfaasv1.JoinTokenRequest) (*zfaasv1.WorkerSVID, error) {
	peerNode, _, renewing, err := s.peerWorker(ctx)
	if err != nil {
		return nil, err
	}
	node := req.GetNode()
	if _, err := identity.WorkerID(s.td, node); err != nil {
		return nil, status.Error(codes.InvalidArgument, "invalid node name")
	}
	if len(req.GetToken()) > maxTokenSize {
		return nil, status.Error(codes.InvalidArgument, "token too long")
	}
	csr, err := parseCSR(req.GetCsr())
	if err != nil {
		return nil, err
	}
	if renewing && peerNode != node {
		return nil, status.Errorf(codes.PermissionDenied, "client certificate is worker %q's, request names %q", peerNode, node)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, found, err := s.nodes.Node(ctx, node)
	if err != nil {
		s.log.LogAttrs(ctx, slog.LevelError, "read node record", slog.String("node", node), slog.String("error", err.Error()))
		return nil, status.Error(codes.Internal, "could not read the node record")
	}
	var hash [sha256.Size]byte
	switch {
	case found && rec.State == StateRevoked:
		return nil, s.tokenRefused(ctx, node, "node is revoked; an operator must clear it before it may join again")
	case found && rec.Method == MethodTPM:
		return nil, s.tokenRefused(ctx, node, "node was admitted by TPM attestation; a join token cannot replace it")
	case renewing && !found:
		return nil, s.tokenRefused(ctx, node, "no admission record for this node; join again with a token")
	case renewing:
		// Renewal with the current SVID: no token needed.
	default:
		if req.GetToken() == "" {
			return nil, status.Error(codes.InvalidArgument, "token is required")
		}
		var ok bool
		hash, ok = s.matchToken(req.GetToken())
		if !ok {
			return nil, s.tokenRefused(ctx, node, "unknown join token")
		}
		if _, used := s.usedTokens[hash]; used {
			return nil, s.tokenRefused(ctx, node, "join token already used")
		}
	}
	c := attest.Claims{Node: node, Method: MethodJoinToken, AttestedAt: s.cfg.Now().UTC()}
	allow, reasons, err := s.admitter.Admit(ctx, c)
	if err != nil {
		s.log.LogAttrs(ctx, slog.LevelError, "admission policy", slog.String("node", node), slog.String("error", err.Error()))
		return nil, status.Error(codes.Internal, "admission policy could not be evaluated")
	}
	if !allow {
		if len(reasons) == 0 {
			reasons = []string{"not admitted by policy"}
		}
		msg := "not admitted: " + strings.Join(reasons, "; ")
		if renewing {
			if err := s.revokeLocked(ctx, rec, reasons); err != nil {
				s.log.LogAttrs(ctx, slog.LevelError, "revoke", slog.String("node", node), slog.String("error", err.Error()))
			}
			return nil, status.Error(codes.PermissionDenied, msg+"; worker revoked")
		}
		s.refused(ctx, node, reasons)
		return nil, status.Error(codes.PermissionDenied, msg)
	}
	if !renewing {
		s.usedTokens[hash] = node
	}
	s.log.LogAttrs(ctx, slog.LevelWarn, "worker admitted with a join token: NOT attested (development shortcut)",
		slog.String("node", node), slog.Bool("renewal", renewing))
	return s.admitLocked(ctx, rec, c, reasons, csr)
}

// matchToken compares the token's hash with every configured hash in
// constant time, without stopping at a match.
func (s *Server) matchToken(token string) ([sha256.Size]byte, bool) {
	h := HashJoinToken(token)
	found := 0
	for _, want := range s.cfg.JoinTokens {
		found |= subtle.ConstantTimeCompare(h[:], want[:])
	}
	return h, found == 1
}

func (s *Server) tokenRefused(ctx context.Context, node, reason string) error {
	s.refused(ctx, node, []string{reason})
	return status.Error(codes.PermissionDenied, "not admitted: "+reason)
}
