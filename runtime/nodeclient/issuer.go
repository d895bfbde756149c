package nodeclient

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	zfaasv1 "github.com/zfaas/zfaas/api/zfaas/v1"
	"github.com/zfaas/zfaas/identity/ca"
	"github.com/zfaas/zfaas/identity/workloadapi"
)

// RemoteIssuer implements identity/workloadapi.Issuer by asking the node
// identity service, authenticated as the worker, so the worker's local
// Workload API serves its instances SVIDs signed by the control plane.
// Their lifetime never exceeds the worker SVID's remaining life, so a
// revoked worker's instances run out of identity. JWT-SVIDs are validated
// locally against the JWT bundle. It is safe for concurrent use.
type RemoteIssuer struct {
	w *WorkerIdentity
}

var _ workloadapi.Issuer = (*RemoteIssuer)(nil)

// Issuer returns the RemoteIssuer of this worker. Run must be running for
// its bundles to follow rotations.
func (w *WorkerIdentity) Issuer() *RemoteIssuer { return &RemoteIssuer{w: w} }

// MintX509SVID implements workloadapi.Issuer. Only function IDs are
// accepted by the server; DNS and IP SANs are not supported remotely.
func (r *RemoteIssuer) MintX509SVID(ctx context.Context, p ca.X509Params) (*ca.X509SVID, error) {
	if len(p.DNSNames) > 0 || len(p.IPAddresses) > 0 {
		return nil, errors.New("nodeclient: DNS and IP SANs are not issued to instances")
	}
	pkix, err := x509.MarshalPKIXPublicKey(p.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ca.ErrUnsupportedKey, err)
	}
	resp, err := r.w.client().MintX509SVID(ctx, &zfaasv1.MintX509SVIDRequest{
		SpiffeId: p.ID.String(), PublicKey: pkix, TtlSeconds: int64(p.TTL / time.Second),
	})
	if err != nil {
		return nil, fmt.Errorf("nodeclient: mint x509-svid for %s: %w", p.ID, err)
	}
	var certs []*x509.Certificate
	for _, der := range resp.GetCertChain() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("nodeclient: x509-svid for %s: %w", p.ID, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("nodeclient: empty x509-svid for %s", p.ID)
	}
	id, _, err := x509svid.Verify(certs, r.w, x509svid.WithTime(r.w.cfg.Now()))
	if err != nil {
		return nil, fmt.Errorf("nodeclient: x509-svid for %s does not verify: %w", p.ID, err)
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	pub, ok := certs[0].PublicKey.(equaler)
	if id != p.ID || !ok || !pub.Equal(p.PublicKey) {
		return nil, fmt.Errorf("nodeclient: server returned an x509-svid for another ID or key than %s", p.ID)
	}
	return &ca.X509SVID{ID: id, Certificates: certs}, nil
}

// MintJWTSVID implements workloadapi.Issuer.
func (r *RemoteIssuer) MintJWTSVID(ctx context.Context, p ca.JWTParams) (*ca.JWTSVID, error) {
	resp, err := r.w.client().MintJWTSVID(ctx, &zfaasv1.MintJWTSVIDRequest{
		SpiffeId: p.ID.String(), Audience: p.Audience, Instance: p.Instance, TtlSeconds: int64(p.TTL / time.Second),
	})
	if err != nil {
		return nil, fmt.Errorf("nodeclient: mint jwt-svid for %s: %w", p.ID, err)
	}
	return &ca.JWTSVID{Token: resp.GetToken(), ID: p.ID, Audience: p.Audience, Expiry: time.Unix(resp.GetExpiresAt(), 0).UTC()}, nil
}

// ValidateJWTSVID implements workloadapi.Issuer against the local JWT
// bundle: signature by a published key, subject in the trust domain,
// audience, expiry. Errors wrap ca.ErrInvalidJWT, ca.ErrJWTExpired or
// ca.ErrJWTAudience.
func (r *RemoteIssuer) ValidateJWTSVID(token, audience string) (*ca.ValidatedJWT, error) {
	if len(token) > ca.MaxJWTSize {
		return nil, fmt.Errorf("%w: token too large", ca.ErrInvalidJWT)
	}
	if audience == "" {
		return nil, fmt.Errorf("%w: audience required", ca.ErrJWTAudience)
	}
	r.w.mu.RLock()
	jb := r.w.jwt
	r.w.mu.RUnlock()
	svid, err := jwtsvid.ParseAndValidate(token, jb, []string{audience})
	if err != nil {
		msg := err.Error()
		switch {
		case strings.Contains(msg, "expired"):
			return nil, fmt.Errorf("%w: %v", ca.ErrJWTExpired, err)
		case strings.Contains(msg, "audience"):
			return nil, fmt.Errorf("%w: %v", ca.ErrJWTAudience, err)
		}
		return nil, fmt.Errorf("%w: %v", ca.ErrInvalidJWT, err)
	}
	if !svid.ID.MemberOf(r.w.td) {
		return nil, fmt.Errorf("%w: subject %s", ca.ErrInvalidJWT, svid.ID)
	}
	return &ca.ValidatedJWT{ID: svid.ID, Audience: svid.Audience, Expiry: svid.Expiry.UTC(), Claims: svid.Claims}, nil
}

// Bundles implements workloadapi.Issuer: copies of the current bundles.
// GM authorities are not carried by the node service.
func (r *RemoteIssuer) Bundles() ca.Bundles {
	r.w.mu.RLock()
	defer r.w.mu.RUnlock()
	return ca.Bundles{X509: r.w.x509.Clone(), JWT: r.w.jwt.Clone(), Generation: r.w.gen}
}

// Changed implements workloadapi.Issuer. It also fires when the worker
// SVID is renewed, which lets the Workload API re-check instance SVIDs.
func (r *RemoteIssuer) Changed() <-chan struct{} { return r.w.Changed() }

// TrustDomain returns the worker's trust domain.
func (r *RemoteIssuer) TrustDomain() spiffeid.TrustDomain { return r.w.td }
