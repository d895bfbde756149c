package nodeclient

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	zfaasv1 "github.com/zfaas/zfaas/api/zfaas/v1"
	"github.com/zfaas/zfaas/crypto/dualstack"
	"github.com/zfaas/zfaas/crypto/tlcp"
)

// ErrGMDisabled is returned by TLCPSource's GetTLCPCertificates and by
// RenewGM when the control plane's CA does not run the gm suite
// (MintWorkerGM answered FailedPrecondition): the worker has no GM double
// SVID and must serve and dial TLS only.
var ErrGMDisabled = errors.New("nodeclient: the control plane does not run the gm suite")

// Bounds of the GM double SVID source.
const (
	// gmMintTimeout bounds a mint made on a handshake, which has no
	// context of its own.
	gmMintTimeout = 10 * time.Second
	// gmRetry is how long a failed renewal is not retried on handshakes
	// while the current pair is still valid.
	gmRetry = 5 * time.Second
)

// gmPair is the worker's current GM double SVID, the worker SVID it was
// minted under and when it is due for renewal.
type gmPair struct {
	sign, enc *tlcp.Certificate
	under     *x509svid.SVID
	renewAt   time.Time
}

// TLCPSource returns the worker's GM double SVID as a dualstack.TLCPSource:
// an SM2 signing and an SM2 encryption certificate for the worker's own
// SPIFFE ID, for two SM2 keys generated in this process (only CSRs leave
// it). The pair is minted by the control plane on first use and again once
// half its life has passed or the worker SVID was renewed (Run also
// refreshes it right after each renewal); it never outlives the worker
// SVID. While a renewal fails the still-valid pair keeps being served.
// Every call fails with an error wrapping ErrGMDisabled when the control
// plane does not run the gm suite, and with ErrRefused once the worker is
// revoked. Call RenewGM at start-up to find out early.
func (w *WorkerIdentity) TLCPSource() dualstack.TLCPSource {
	return dualstack.TLCPSourceFunc(func() (*tlcp.Certificate, *tlcp.Certificate, error) {
		ctx, cancel := context.WithTimeout(context.Background(), gmMintTimeout)
		defer cancel()
		return w.gmCertificates(ctx, false)
	})
}

// RenewGM mints a new GM double SVID now and installs it for TLCPSource.
// It returns an error wrapping ErrGMDisabled when the control plane does
// not run the gm suite and ErrRefused when the worker is not admitted.
func (w *WorkerIdentity) RenewGM(ctx context.Context) error {
	_, _, err := w.gmCertificates(ctx, true)
	return err
}

// GMBundle returns a new pool of the trust domain's SM2 authorities as the
// control plane last published them (Run follows changes); empty when it
// does not run the gm suite. It is a snapshot: use VerifyTLCPPeer (or
// TLCPServerConfig / TLCPClientConfig) for verification that follows
// authority rotation.
func (w *WorkerIdentity) GMBundle() *smx509.CertPool {
	pool := smx509.NewCertPool()
	for _, c := range w.gmAuthorities() {
		pool.AddCert(c)
	}
	return pool
}

func (w *WorkerIdentity) gmAuthorities() []*smx509.Certificate {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.gmRoots
}

// gmInUse reports whether a GM double SVID was ever minted.
func (w *WorkerIdentity) gmInUse() bool {
	w.gmMu.Lock()
	defer w.gmMu.Unlock()
	return w.gm != nil
}

// gmCertificates returns the current pair, minting a new one when forced,
// when there is none, when half its life has passed or when the worker
// SVID changed since.
func (w *WorkerIdentity) gmCertificates(ctx context.Context, force bool) (*tlcp.Certificate, *tlcp.Certificate, error) {
	w.gmMu.Lock()
	defer w.gmMu.Unlock()
	now := w.cfg.Now()
	cur := w.gm
	if !force && cur != nil && cur.under == w.current() && now.Before(cur.renewAt) {
		return cur.sign, cur.enc, nil
	}
	usable := cur != nil && now.Before(cur.sign.Leaf.NotAfter) && now.Before(cur.enc.Leaf.NotAfter)
	if !force && usable && now.Before(w.gmRetryAt) {
		return cur.sign, cur.enc, nil
	}
	next, err := w.mintGM(ctx)
	if err != nil {
		if errors.Is(err, ErrRefused) || errors.Is(err, ErrGMDisabled) {
			w.gm = nil
			return nil, nil, err
		}
		w.gmRetryAt = now.Add(gmRetry)
		if usable && !force {
			w.log.Warn("gm svid renewal failed; serving the current pair", "error", err, "expires", cur.sign.Leaf.NotAfter)
			return cur.sign, cur.enc, nil
		}
		return nil, nil, err
	}
	w.gm, w.gmRetryAt = next, time.Time{}
	w.log.Info("gm svid installed", "expires", next.sign.Leaf.NotAfter)
	return next.sign, next.enc, nil
}

// mintGM generates two SM2 keys and asks the control plane to certify
// them for the worker's ID.
func (w *WorkerIdentity) mintGM(ctx context.Context) (*gmPair, error) {
	under, asked := w.current(), w.cfg.Now()
	if under == nil {
		return nil, errors.New("nodeclient: no worker svid")
	}
	signKey, err := sm2.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("nodeclient: generate sm2 signing key: %w", err)
	}
	encKey, err := sm2.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("nodeclient: generate sm2 encryption key: %w", err)
	}
	req := &zfaasv1.MintWorkerGMRequest{}
	for _, k := range []struct {
		key *sm2.PrivateKey
		out *[]byte
	}{{signKey, &req.SignCsr}, {encKey, &req.EncCsr}} {
		der, err := smx509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k.key)
		if err != nil {
			return nil, fmt.Errorf("nodeclient: create sm2 csr: %w", err)
		}
		*k.out = der
	}
	resp, err := w.client().MintWorkerGM(ctx, req)
	switch status.Code(err) {
	case codes.OK:
	case codes.FailedPrecondition:
		return nil, fmt.Errorf("%w: %s", ErrGMDisabled, status.Convert(err).Message())
	case codes.PermissionDenied:
		return nil, fmt.Errorf("%w: %s", ErrRefused, status.Convert(err).Message())
	default:
		return nil, fmt.Errorf("nodeclient: mint gm svid: %w", err)
	}
	roots := smx509.NewCertPool()
	for _, der := range resp.GetGmAuthorities() {
		c, err := smx509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("nodeclient: gm authority: %w", err)
		}
		roots.AddCert(c)
	}
	sign, err := w.checkGMCert(resp.GetSignChain(), signKey, roots, x509.KeyUsageDigitalSignature)
	if err != nil {
		return nil, fmt.Errorf("nodeclient: gm signing certificate: %w", err)
	}
	enc, err := w.checkGMCert(resp.GetEncChain(), encKey, roots, x509.KeyUsageKeyEncipherment|x509.KeyUsageKeyAgreement)
	if err != nil {
		return nil, fmt.Errorf("nodeclient: gm encryption certificate: %w", err)
	}
	// Half life from when it was asked for, by the worker's clock: the CA
	// backdates NotBefore.
	expires := sign.Leaf.NotAfter
	if enc.Leaf.NotAfter.Before(expires) {
		expires = enc.Leaf.NotAfter
	}
	return &gmPair{sign: sign, enc: enc, under: under, renewAt: asked.Add(expires.Sub(asked) / 2)}, nil
}

// checkGMCert checks a returned chain: it verifies against roots at the
// worker's clock, names the worker's ID only, certifies key and has one of
// the key usages in usage.
func (w *WorkerIdentity) checkGMCert(chain [][]byte, key *sm2.PrivateKey, roots *smx509.CertPool, usage x509.KeyUsage) (*tlcp.Certificate, error) {
	if len(chain) == 0 {
		return nil, errors.New("empty chain")
	}
	certs := make([]*smx509.Certificate, len(chain))
	for n, der := range chain {
		c, err := smx509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		certs[n] = c
	}
	leaf := certs[0]
	inter := smx509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(smx509.VerifyOptions{
		Roots: roots, Intermediates: inter, CurrentTime: w.cfg.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, fmt.Errorf("does not verify against the gm authorities: %w", err)
	}
	if leaf.IsCA || len(leaf.URIs) != 1 || leaf.URIs[0].String() != w.id.String() {
		return nil, fmt.Errorf("not a certificate for %s only", w.id)
	}
	if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(key.Public()) {
		return nil, errors.New("does not certify our key")
	}
	if leaf.KeyUsage&usage == 0 {
		return nil, fmt.Errorf("key usage %#x lacks %#x", leaf.KeyUsage, usage)
	}
	return &tlcp.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, nil
}

// VerifyTLCPPeer returns a tlcp.Config.VerifyPeerCertificate hook that
// verifies a TLCP peer against the SM2 authorities as the control plane
// publishes them at each handshake (so a rotated authority is trusted at
// once): dualstack.VerifySPIFFEPeer with GMBundle at the worker's clock
// (authorize nil: any ID the authorities vouch for).
func (w *WorkerIdentity) VerifyTLCPPeer(authorize func(spiffeid.ID) error) func([][]byte, [][]*smx509.Certificate) error {
	return dualstack.VerifySPIFFEPeer(w.GMBundle, w.cfg.Now, authorize)
}

// TLCPServerConfig is dualstack.TLCPServerConfigFrom for the worker: it
// presents TLCPSource's pair, asks for client certificates and verifies
// any that are sent with VerifyTLCPPeer(authorize) at each handshake (a
// client without certificates is let through, as with
// dualstack.TLCPServerConfig: authorize the caller in the handler when
// that matters). The engine's clock is the worker's.
func (w *WorkerIdentity) TLCPServerConfig(authorize func(spiffeid.ID) error, opts ...dualstack.Option) *tlcp.Config {
	return dualstack.TLCPServerConfigFrom(w.TLCPSource(), w.GMBundle, w.cfg.Now, authorize, opts...)
}

// TLCPClientConfig is dualstack.TLCPClientConfigFrom for the worker: it
// presents TLCPSource's pair and accepts only a server that
// VerifyTLCPPeer verifies at each handshake and whose SPIFFE ID is
// serverID.
func (w *WorkerIdentity) TLCPClientConfig(serverID spiffeid.ID, opts ...dualstack.Option) *tlcp.Config {
	return dualstack.TLCPClientConfigFrom(w.TLCPSource(), w.GMBundle, w.cfg.Now, serverID, opts...)
}
