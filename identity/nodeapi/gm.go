package nodeapi

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"log/slog"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	zfaasv1 "github.com/zfaas/zfaas/api/zfaas/v1"
	"github.com/zfaas/zfaas/identity"
	"github.com/zfaas/zfaas/identity/ca"
)

// GMCA is the optional part of a CA that issues GM double SVIDs (SM2
// signing and encryption certificates); *ca.CA implements it and answers
// ca.ErrGMDisabled unless it runs the gm suite. When Config.CA does not
// implement it, MintWorkerGM answers FailedPrecondition.
type GMCA interface {
	MintGMSVID(ctx context.Context, p ca.GMParams) (*ca.GMSVID, error)
}

var _ GMCA = (*ca.CA)(nil)

// MintWorkerGM implements zfaasv1.NodeIdentityServer: the calling worker's
// own GM double SVID (spiffe://TD/worker/NODE, never another ID) for the
// two SM2 keys of its CSRs, living no longer than the worker SVID it
// presented, with the SM2 authorities. It answers FailedPrecondition when
// the CA does not run the gm suite.
func (s *Server) MintWorkerGM(ctx context.Context, req *zfaasv1.MintWorkerGMRequest) (*zfaasv1.MintWorkerGMResponse, error) {
	node, left, err := s.admittedWorker(ctx)
	if err != nil {
		return nil, err
	}
	gm, ok := s.cfg.CA.(GMCA)
	if !ok || len(s.cfg.CA.Bundles().GM) == 0 {
		return nil, status.Error(codes.FailedPrecondition, "the identity CA does not run the gm suite")
	}
	signKey, err := parseSM2CSR(req.GetSignCsr(), "sign_csr")
	if err != nil {
		return nil, err
	}
	encKey, err := parseSM2CSR(req.GetEncCsr(), "enc_csr")
	if err != nil {
		return nil, err
	}
	if signKey.Equal(encKey) {
		return nil, status.Error(codes.InvalidArgument, "sign_csr and enc_csr must carry different keys")
	}
	ttl, err := clipTTL(req.GetTtlSeconds(), s.cfg.WorkerTTL, left)
	if err != nil {
		return nil, err
	}
	id, err := identity.WorkerID(s.td, node)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, "invalid node name")
	}
	svid, err := gm.MintGMSVID(ctx, ca.GMParams{ID: id, SignKey: signKey, EncKey: encKey, TTL: ttl})
	switch {
	case errors.Is(err, ca.ErrGMDisabled):
		return nil, status.Error(codes.FailedPrecondition, "the identity CA does not run the gm suite")
	case errors.Is(err, ca.ErrUnsupportedKey):
		return nil, status.Error(codes.InvalidArgument, "the keys are not two different SM2 keys")
	case err != nil:
		s.log.LogAttrs(ctx, slog.LevelError, "mint worker gm svid", slog.String("node", node), slog.String("error", err.Error()))
		return nil, status.Error(codes.Internal, "could not sign the GM SVID")
	}
	s.log.LogAttrs(ctx, slog.LevelDebug, "worker gm svid issued", slog.String("node", node),
		slog.String("sign_serial", svid.Sign[0].SerialNumber.Text(16)), slog.String("enc_serial", svid.Enc[0].SerialNumber.Text(16)),
		slog.Time("expires", svid.Sign[0].NotAfter))
	out := &zfaasv1.MintWorkerGMResponse{GmAuthorities: gmAuthorities(s.cfg.CA.Bundles().GM)}
	for _, c := range svid.Sign {
		out.SignChain = append(out.SignChain, c.Raw)
	}
	for _, c := range svid.Enc {
		out.EncChain = append(out.EncChain, c.Raw)
	}
	return out, nil
}

// parseSM2CSR decodes a PKCS#10 CSR, checks that it is signed
// SM2-with-SM3 by the SM2 key it carries (proof of possession) and returns
// that key.
func parseSM2CSR(der []byte, field string) (*ecdsa.PublicKey, error) {
	if len(der) == 0 || len(der) > 8<<10 {
		return nil, status.Errorf(codes.InvalidArgument, "%s missing or larger than 8 KiB", field)
	}
	csr, err := smx509.ParseCertificateRequest(der)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%s is not a DER PKCS#10 request", field)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != sm2.P256() {
		return nil, status.Errorf(codes.InvalidArgument, "%s key is not an SM2 key", field)
	}
	if csr.SignatureAlgorithm != smx509.SM2WithSM3 {
		return nil, status.Errorf(codes.InvalidArgument, "%s is not signed SM2-with-SM3", field)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%s signature does not verify", field)
	}
	return pub, nil
}

// gmAuthorities encodes SM2 authorities as a DER list.
func gmAuthorities(certs []*smx509.Certificate) [][]byte {
	var out [][]byte
	for _, c := range certs {
		out = append(out, c.Raw)
	}
	return out
}
