package nodeapi

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	zfaasv1 "github.com/zfaas/zfaas/api/zfaas/v1"
	"github.com/zfaas/zfaas/identity/attest"
)

// attestRefusals are the verifier errors that mean the node failed
// attestation. On a re-attestation they revoke the node; the others
// (malformed message, late or unknown challenge, busy) only fail the call.
var attestRefusals = []error{
	attest.ErrEKCertificate, attest.ErrAK, attest.ErrActivation, attest.ErrQuote,
	attest.ErrQuoteSignature, attest.ErrNonce, attest.ErrEventLog, ErrNotBound,
}

// Attest implements zfaasv1.NodeIdentityServer: hello → challenge,
// evidence (+ binding quote + CSR) → worker SVID.
func (s *Server) Attest(stream grpc.BidiStreamingServer[zfaasv1.AttestRequest, zfaasv1.AttestResponse]) error {
	ctx := stream.Context()
	if s.verifier == nil {
		return status.Error(codes.FailedPrecondition, "TPM attestation is not configured on this server")
	}
	peerNode, _, renewing, err := s.peerWorker(ctx)
	if err != nil {
		return err
	}
	// The whole exchange must finish within the challenge's lifetime
	// plus slack, so a stalled client does not hold the stream.
	deadline := time.NewTimer(s.attestTimeout())
	defer deadline.Stop()
	req, err := recv(stream, deadline.C)
	if err != nil {
		return err
	}
	hm := req.GetHello()
	if hm == nil {
		return status.Error(codes.InvalidArgument, "the first message must be hello")
	}
	hello := &attest.Hello{Node: hm.GetNode(), EKCert: hm.GetEkCert(), EKChain: hm.GetEkChain(), EKPublic: hm.GetEkPublic(), AKPublic: hm.GetAkPublic()}
	if renewing && peerNode != hello.Node {
		return status.Errorf(codes.PermissionDenied, "client certificate is worker %q's, hello names %q", peerNode, hello.Node)
	}
	ch, err := s.verifier.Challenge(ctx, hello)
	if err != nil {
		return s.attestFailed(ctx, hello.Node, renewing, err)
	}
	pcrs := make([]int32, len(ch.PCRs))
	for i, p := range ch.PCRs {
		pcrs[i] = int32(p)
	}
	if err := stream.Send(&zfaasv1.AttestResponse{Step: &zfaasv1.AttestResponse_Challenge{Challenge: &zfaasv1.AttestChallenge{
		Id: ch.ID, Credential: ch.Credential, Secret: ch.Secret, Nonce: ch.Nonce, Bank: ch.Bank, Pcrs: pcrs,
	}}}); err != nil {
		return err
	}
	req, err = recv(stream, deadline.C)
	if err != nil {
		return err
	}
	em := req.GetEvidence()
	if em == nil {
		return status.Error(codes.InvalidArgument, "the second message must be evidence")
	}
	if em.GetChallengeId() != ch.ID {
		return status.Error(codes.InvalidArgument, "evidence names another challenge than this stream's")
	}
	csr, err := parseCSR(em.GetCsr())
	if err != nil {
		return err
	}
	ev := &attest.Evidence{
		ChallengeID: em.GetChallengeId(), Secret: em.GetSecret(), Quote: em.GetQuote(),
		Signature: em.GetSignature(), EventLog: em.GetEventLog(),
	}
	for _, p := range em.GetPcrs() {
		ev.PCRs = append(ev.PCRs, attest.PCR{Index: int(p.GetIndex()), Digest: p.GetDigest()})
	}
	// The binding is checked against this stream's Hello (the AK the
	// verifier checked) and this stream's challenge before the verifier
	// consumes the challenge; both must pass.
	want := CSRBinding(ch.ID, ch.Nonce, csr.RawSubjectPublicKeyInfo)
	if err := checkBinding(hello.AKPublic, ev.Quote, em.GetBindingQuote(), em.GetBindingSignature(), want); err != nil {
		return s.attestFailed(ctx, hello.Node, renewing, err)
	}
	res, err := s.verifier.Verify(ctx, ev)
	if err != nil {
		if errors.Is(err, attest.ErrNotAdmitted) && res != nil {
			return s.notAdmitted(ctx, hello.Node, renewing, res.Reasons)
		}
		return s.attestFailed(ctx, hello.Node, renewing, err)
	}
	out, err := s.decideTPM(ctx, res, renewing, csr)
	if err != nil {
		return err
	}
	return stream.Send(&zfaasv1.AttestResponse{Step: &zfaasv1.AttestResponse_Svid{Svid: out}})
}

func (s *Server) attestTimeout() time.Duration {
	ttl := s.cfg.Attest.ChallengeTTL
	if ttl <= 0 {
		ttl = 30 * time.Second
	}
	return ttl + 10*time.Second
}

// recv receives the next message unless timeout fires first. On timeout
// the handler returns, which cancels the stream and ends the Recv.
func recv(stream grpc.BidiStreamingServer[zfaasv1.AttestRequest, zfaasv1.AttestResponse], timeout <-chan time.Time) (*zfaasv1.AttestRequest, error) {
	type result struct {
		req *zfaasv1.AttestRequest
		err error
	}
	c := make(chan result, 1)
	go func() {
		req, err := stream.Recv()
		c <- result{req, err}
	}()
	select {
	case r := <-c:
		return r.req, r.err
	case <-timeout:
		return nil, status.Error(codes.DeadlineExceeded, "attestation took too long")
	}
}

// decideTPM applies the node's history to a verified, policy-admitted
// attestation and issues the SVID.
func (s *Server) decideTPM(ctx context.Context, res *attest.Result, renewing bool, csr *x509.CertificateRequest) (*zfaasv1.WorkerSVID, error) {
	c := res.Claims
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, found, err := s.nodes.Node(ctx, c.Node)
	if err != nil {
		s.log.LogAttrs(ctx, slog.LevelError, "read node record", slog.String("node", c.Node), slog.String("error", err.Error()))
		return nil, status.Error(codes.Internal, "could not read the node record")
	}
	switch {
	case found && rec.State == StateRevoked:
		reasons := []string{"node is revoked; an operator must clear it before it may join again"}
		s.refused(ctx, c.Node, reasons)
		return nil, status.Error(codes.PermissionDenied, "not admitted: "+reasons[0])
	case found && rec.EKFingerprint != "" && rec.EKFingerprint != c.EKFingerprint:
		reason := fmt.Sprintf("EK %s is not the EK node %s was admitted with (%s)", c.EKFingerprint, c.Node, rec.EKFingerprint)
		if renewing {
			if err := s.revokeLocked(ctx, rec, []string{reason}); err != nil {
				s.log.LogAttrs(ctx, slog.LevelError, "revoke", slog.String("node", c.Node), slog.String("error", err.Error()))
			}
			return nil, status.Error(codes.PermissionDenied, "not admitted: "+reason+"; worker revoked")
		}
		s.refused(ctx, c.Node, []string{reason})
		return nil, status.Error(codes.PermissionDenied, "not admitted: "+reason)
	case renewing && !found:
		s.log.LogAttrs(ctx, slog.LevelWarn, "re-attestation of a node without a record; admitting it as new", slog.String("node", c.Node))
	}
	return s.admitLocked(ctx, rec, c, res.Reasons, csr)
}

// attestFailed maps a verifier error to a status; on a re-attestation an
// attestation failure revokes the node.
func (s *Server) attestFailed(ctx context.Context, node string, renewing bool, err error) error {
	var sentinel error
	for _, e := range attestRefusals {
		if errors.Is(err, e) {
			sentinel = e
			break
		}
	}
	switch {
	case sentinel != nil:
		reason := "attestation failed: " + strings.TrimPrefix(strings.TrimPrefix(sentinel.Error(), "attest: "), "nodeapi: ")
		s.log.LogAttrs(ctx, slog.LevelWarn, "attestation failed", slog.String("node", node), slog.Bool("renewal", renewing), slog.String("error", err.Error()))
		if renewing {
			s.revoke(ctx, node, []string{reason})
			return status.Error(codes.PermissionDenied, reason+"; worker revoked")
		}
		s.refused(ctx, node, []string{reason})
		return status.Error(codes.PermissionDenied, reason)
	case errors.Is(err, attest.ErrMalformed):
		return status.Error(codes.InvalidArgument, "malformed attestation message")
	case errors.Is(err, attest.ErrUnknownChallenge):
		return status.Error(codes.FailedPrecondition, "unknown or already used challenge")
	case errors.Is(err, attest.ErrChallengeExpired):
		return status.Error(codes.FailedPrecondition, "challenge expired")
	case errors.Is(err, attest.ErrBusy):
		return status.Error(codes.ResourceExhausted, "too many pending attestations")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	s.log.LogAttrs(ctx, slog.LevelError, "attestation error", slog.String("node", node), slog.String("error", err.Error()))
	return status.Error(codes.Internal, "attestation could not be completed")
}

// notAdmitted handles a policy refusal: PermissionDenied with the policy's
// reasons; a refused re-attestation revokes the node.
func (s *Server) notAdmitted(ctx context.Context, node string, renewing bool, reasons []string) error {
	if len(reasons) == 0 {
		reasons = []string{"not admitted by policy"}
	}
	msg := "not admitted: " + strings.Join(reasons, "; ")
	if renewing {
		s.revoke(ctx, node, reasons)
		return status.Error(codes.PermissionDenied, msg+"; worker revoked")
	}
	s.refused(ctx, node, reasons)
	return status.Error(codes.PermissionDenied, msg)
}

// revoke revokes node, logging a store failure (the call fails anyway).
func (s *Server) revoke(ctx context.Context, node string, reasons []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, found, err := s.nodes.Node(ctx, node)
	if err == nil {
		if !found {
			rec = NodeRecord{Node: node}
		}
		err = s.revokeLocked(ctx, rec, reasons)
	}
	if err != nil {
		s.log.LogAttrs(ctx, slog.LevelError, "revoke", slog.String("node", node), slog.String("error", err.Error()))
	}
}
