package workloadapi

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/zfaas/zfaas/identity/ca"
)

// Delivery of the GM double SVID over the standard Workload API.
//
// A GM-aware client calls FetchX509SVID with the metadata
// `workload.spiffe.io: true` and `zfaas-gm: true` (WithGM). When the server
// runs the gm suite, every X509SVIDResponse on that stream then holds three
// X509SVID entries for the caller's one SPIFFE ID:
//
//	[0] hint ""        the standard ECDSA P-256 X509-SVID and bundle, as for any client
//	[1] hint "gm-sign" x509_svid: DER of the SM2 signing certificate (leaf first)
//	                   x509_svid_key: PKCS#8 DER of its SM2 private key
//	                   bundle: concatenated DER of the SM2 authorities
//	[2] hint "gm-enc"  the same for the SM2 encryption certificate
//
// Both pairs are rotated together at half of their life on the same
// stream. Without the `zfaas-gm` metadata (every standard SPIFFE client),
// or from a server without the gm suite, the response has the standard
// entry only: go-spiffe's FetchX509SVIDs, FetchX509Context and X509Source
// parse every entry and its bundle with crypto/x509, which fails on SM2
// keys, so SM2 entries must never reach a client that did not ask.
const (
	// GMHeader is the gRPC metadata key that asks for the GM double SVID.
	GMHeader = "zfaas-gm"
	// HintGMSign and HintGMEnc are the X509SVID.hint values of the GM
	// signing and encryption entries.
	HintGMSign = "gm-sign"
	HintGMEnc  = "gm-enc"
)

// ErrNoGMSVID is returned by ParseGMX509SVID when a response carries no GM
// entries (the server does not run the gm suite).
var ErrNoGMSVID = errors.New("no gm svid in workload api response")

func gmRequested(ctx context.Context) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get(GMHeader)
	return len(v) == 1 && v[0] == "true"
}

// dueGM reports whether the GM pair has passed half of its lifetime.
func (s *Server) dueGM(svid *ca.GMSVID) bool {
	if svid == nil || len(svid.Sign) == 0 || len(svid.Enc) == 0 {
		return true
	}
	sign, enc := svid.Sign[0], svid.Enc[0]
	return s.pastHalf(sign.NotBefore, sign.NotAfter) || s.pastHalf(enc.NotBefore, enc.NotAfter)
}

// mintGM issues a GM double SVID with fresh SM2 keys and returns it with
// its two response entries.
func (s *Server) mintGM(ctx context.Context, ident Identity, b ca.Bundles) (*ca.GMSVID, []*workload.X509SVID, error) {
	if len(b.GM) == 0 {
		return nil, nil, errors.New("issuer publishes no sm2 authorities")
	}
	signKey, err := sm2.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate sm2 signing key: %w", err)
	}
	encKey, err := sm2.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate sm2 encryption key: %w", err)
	}
	svid, err := s.gm.MintGMSVID(ctx, ca.GMParams{ID: ident.ID, SignKey: signKey.Public(), EncKey: encKey.Public()})
	if err != nil {
		return nil, nil, err
	}
	bundle := concatSM2(b.GM)
	var entries []*workload.X509SVID
	for _, e := range []struct {
		hint  string
		chain []*smx509.Certificate
		key   *sm2.PrivateKey
	}{{HintGMSign, svid.Sign, signKey}, {HintGMEnc, svid.Enc, encKey}} {
		der, err := smx509.MarshalPKCS8PrivateKey(e.key)
		if err != nil {
			return nil, nil, fmt.Errorf("marshal sm2 key: %w", err)
		}
		entries = append(entries, &workload.X509SVID{
			SpiffeId:    svid.ID.String(),
			X509Svid:    concatSM2(e.chain),
			X509SvidKey: der,
			Bundle:      bundle,
			Hint:        e.hint,
		})
	}
	s.log.Debug("gm svid sent", "spiffe_id", svid.ID.String(), "instance", ident.Instance,
		"sign_serial", svid.Sign[0].SerialNumber.Text(16), "enc_serial", svid.Enc[0].SerialNumber.Text(16),
		"not_after", svid.Sign[0].NotAfter)
	return svid, entries, nil
}

func concatSM2(certs []*smx509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		b.Write(c.Raw)
	}
	return b.Bytes()
}

// WithGM returns ctx with the outgoing metadata of a GM-aware Workload API
// call: `workload.spiffe.io: true` and `zfaas-gm: true`.
func WithGM(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, headerKey, "true", GMHeader, "true")
}

// GMX509SVID is the GM double SVID of one Workload API response with its
// private keys and the SM2 trust bundle.
type GMX509SVID struct {
	// ID is the SPIFFE ID of both certificates.
	ID spiffeid.ID
	// Sign and Enc are the signing and encryption certificate chains, leaf
	// first.
	Sign, Enc []*smx509.Certificate
	// SignKey and EncKey are their private keys.
	SignKey, EncKey *sm2.PrivateKey
	// Bundle holds the SM2 authorities of the trust domain, to verify
	// peers' GM SVIDs.
	Bundle []*smx509.Certificate
}

// ParseGMX509SVID extracts the GM double SVID from a FetchX509SVID response
// (the entries hinted "gm-sign" and "gm-enc"). Both must name the same
// SPIFFE ID in their one URI SAN, carry SM2 keys matching their leaves and
// the same SM2 bundle. It fails with ErrNoGMSVID when there are no GM
// entries.
func ParseGMX509SVID(resp *workload.X509SVIDResponse) (*GMX509SVID, error) {
	var sign, enc *workload.X509SVID
	for _, e := range resp.GetSvids() {
		switch e.GetHint() {
		case HintGMSign:
			if sign == nil {
				sign = e
			}
		case HintGMEnc:
			if enc == nil {
				enc = e
			}
		}
	}
	if sign == nil && enc == nil {
		return nil, ErrNoGMSVID
	}
	if sign == nil || enc == nil {
		return nil, errors.New("gm svid: signing or encryption entry missing")
	}
	id, err := spiffeid.FromString(sign.GetSpiffeId())
	if err != nil {
		return nil, fmt.Errorf("gm svid: %w", err)
	}
	if enc.GetSpiffeId() != sign.GetSpiffeId() {
		return nil, fmt.Errorf("gm svid: encryption entry is %q, signing entry %q", enc.GetSpiffeId(), sign.GetSpiffeId())
	}
	if !bytes.Equal(sign.GetBundle(), enc.GetBundle()) {
		return nil, errors.New("gm svid: signing and encryption entries carry different bundles")
	}
	out := &GMX509SVID{ID: id}
	if out.Sign, out.SignKey, err = parseGMEntry(sign, id); err != nil {
		return nil, fmt.Errorf("gm svid signing entry: %w", err)
	}
	if out.Enc, out.EncKey, err = parseGMEntry(enc, id); err != nil {
		return nil, fmt.Errorf("gm svid encryption entry: %w", err)
	}
	if out.Bundle, err = smx509.ParseCertificates(sign.GetBundle()); err != nil {
		return nil, fmt.Errorf("gm svid bundle: %w", err)
	}
	if len(out.Bundle) == 0 {
		return nil, errors.New("gm svid: empty bundle")
	}
	return out, nil
}

func parseGMEntry(e *workload.X509SVID, id spiffeid.ID) ([]*smx509.Certificate, *sm2.PrivateKey, error) {
	chain, err := smx509.ParseCertificates(e.GetX509Svid())
	if err != nil {
		return nil, nil, err
	}
	if len(chain) == 0 {
		return nil, nil, errors.New("no certificate")
	}
	got, err := x509svid.IDFromCert(chain[0].ToX509())
	if err != nil {
		return nil, nil, err
	}
	if got != id {
		return nil, nil, fmt.Errorf("certificate names %s, entry %s", got, id)
	}
	k, err := smx509.ParsePKCS8PrivateKey(e.GetX509SvidKey())
	if err != nil {
		return nil, nil, fmt.Errorf("parse key: %w", err)
	}
	key, ok := k.(*sm2.PrivateKey)
	if !ok {
		return nil, nil, fmt.Errorf("key is %T, want sm2", k)
	}
	if !key.PublicKey.Equal(chain[0].PublicKey) {
		return nil, nil, errors.New("key does not match the certificate")
	}
	return chain, key, nil
}

// FetchGMX509SVID connects to the Workload API at addr (a
// SPIFFE_ENDPOINT_SOCKET value such as unix:///run/spiffe.sock), asks for
// the GM double SVID and returns the first one it gets.
func FetchGMX509SVID(ctx context.Context, addr string) (*GMX509SVID, error) {
	var out *GMX509SVID
	errStop := errors.New("stop")
	err := WatchGMX509SVID(ctx, addr, func(s *GMX509SVID) error {
		out = s
		return errStop
	})
	if out != nil {
		return out, nil
	}
	return nil, err
}

// WatchGMX509SVID connects to the Workload API at addr, asks for the GM
// double SVID and calls update with the first one and with every rotated
// one on the same stream, until ctx ends (nil), the stream fails or update
// returns an error (returned as is).
func WatchGMX509SVID(ctx context.Context, addr string, update func(*GMX509SVID) error) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("workload api %s: %w", addr, err)
	}
	defer conn.Close()
	stream, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(WithGM(ctx), &workload.X509SVIDRequest{})
	if err != nil {
		return fmt.Errorf("fetch gm svid: %w", err)
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("fetch gm svid: %w", err)
		}
		svid, err := ParseGMX509SVID(resp)
		if err != nil {
			return err
		}
		if err := update(svid); err != nil {
			return err
		}
	}
}
