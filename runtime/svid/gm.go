package svid

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zfaas/zfaas/crypto/dualstack"
	"github.com/zfaas/zfaas/crypto/tlcp"
	"github.com/zfaas/zfaas/identity/ca"
)

// Suite returns the CA's suite (ca.SuiteStandard or ca.SuiteGM).
func (i *Provider) Suite() ca.Suite { return i.ca.Suite() }

// TLCPSource returns a dualstack.TLCPSource holding an SM2 double SVID
// (signing and encryption certificates, two fresh SM2 keys) for id, minted
// on first use and again once half its lifetime has passed by the
// provider's clock. Each handshake asks the source, so rotation needs no
// restart. Under the standard suite every call fails with
// ca.ErrGMDisabled.
func (i *Provider) TLCPSource(id string) dualstack.TLCPSource {
	return &rotatingGM{p: i, id: id}
}

// ServerTLCPSource is TLCPSource for a server whose certificates also name
// hosts (DNS names or IP addresses), so TLCP clients that check a server
// name (ServerName) can verify it too.
func (i *Provider) ServerTLCPSource(id string, hosts ...string) dualstack.TLCPSource {
	return &rotatingGM{p: i, id: id, hosts: hosts}
}

type rotatingGM struct {
	p         *Provider
	id        string
	hosts     []string
	mu        sync.Mutex
	sign, enc *tlcp.Certificate
}

var _ dualstack.TLCPSource = (*rotatingGM)(nil)

// GetTLCPCertificates implements dualstack.TLCPSource.
func (r *rotatingGM) GetTLCPCertificates() (*tlcp.Certificate, *tlcp.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sign != nil {
		now := r.p.now()
		if now.Before(halfLife(r.sign.Leaf)) && now.Before(halfLife(r.enc.Leaf)) {
			return r.sign, r.enc, nil
		}
	}
	sign, enc, err := r.p.mintGM(context.Background(), r.id, r.hosts)
	if err != nil {
		return nil, nil, err
	}
	r.sign, r.enc = sign, enc
	return sign, enc, nil
}

func halfLife(c *smx509.Certificate) time.Time {
	return c.NotBefore.Add(c.NotAfter.Sub(c.NotBefore) / 2)
}

// mintGM issues an SM2 double SVID for id with two new SM2 keys.
func (i *Provider) mintGM(ctx context.Context, id string, hosts []string) (sign, enc *tlcp.Certificate, err error) {
	sid, err := spiffeid.FromString(id)
	if err != nil {
		return nil, nil, err
	}
	signKey, err := sm2.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate sm2 signing key: %w", err)
	}
	encKey, err := sm2.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate sm2 encryption key: %w", err)
	}
	p := ca.GMParams{ID: sid, SignKey: signKey.Public(), EncKey: encKey.Public()}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			p.IPAddresses = append(p.IPAddresses, ip)
		} else if h != "" {
			p.DNSNames = append(p.DNSNames, h)
		}
	}
	s, err := i.ca.MintGMSVID(ctx, p)
	if err != nil {
		return nil, nil, err
	}
	return tlcpCert(s.Sign, signKey), tlcpCert(s.Enc, encKey), nil
}

func tlcpCert(chain []*smx509.Certificate, key *sm2.PrivateKey) *tlcp.Certificate {
	c := &tlcp.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, cert := range chain {
		c.Certificate = append(c.Certificate, cert.Raw)
	}
	return c
}

// GMBundle returns a new pool of the CA's SM2 authorities as they are now
// (including a published successor that does not sign yet); empty under
// the standard suite. It is a snapshot: a successor published later is
// not in it (see VerifyTLCPPeer for verification that follows rotation).
func (i *Provider) GMBundle() *smx509.CertPool {
	pool := smx509.NewCertPool()
	for _, c := range i.ca.GMBundle() {
		pool.AddCert(c)
	}
	return pool
}

// VerifyTLCPPeer returns a tlcp.Config.VerifyPeerCertificate hook that
// does the whole peer verification against the CA's SM2 authorities as
// they are at each handshake (so an authority published after the config
// was built is trusted at once, like the standard side's bundle source):
// dualstack.VerifySPIFFEPeer with GMBundle and the provider's clock
// (authorize nil: any ID of the trust domain). Use it with verification
// by the engine turned off (TLCPServerConfig and TLCPClientConfig do).
func (i *Provider) VerifyTLCPPeer(authorize func(spiffeid.ID) error) func([][]byte, [][]*smx509.Certificate) error {
	return dualstack.VerifySPIFFEPeer(i.GMBundle, i.now, authorize)
}

// TLCPServerConfig is dualstack.TLCPServerConfigFrom for a server whose
// trust follows the CA's rotation: it presents src's double SVID, asks for
// client certificates and verifies any that are sent with
// VerifyTLCPPeer(authorize) at every handshake (a client without
// certificates is let through for another credential, as with
// dualstack.TLCPServerConfig). The engine's clock is the provider's.
func (i *Provider) TLCPServerConfig(src dualstack.TLCPSource, authorize func(spiffeid.ID) error, opts ...dualstack.Option) *tlcp.Config {
	return dualstack.TLCPServerConfigFrom(src, i.GMBundle, i.now, authorize, opts...)
}

// TLCPClientConfig is dualstack.TLCPClientConfigFrom whose trust follows
// the CA's rotation: it presents src's double SVID (nil: none) and accepts
// only a server whose certificates VerifyTLCPPeer verifies at every
// handshake and whose SPIFFE ID is serverID.
func (i *Provider) TLCPClientConfig(src dualstack.TLCPSource, serverID spiffeid.ID, opts ...dualstack.Option) *tlcp.Config {
	return dualstack.TLCPClientConfigFrom(src, i.GMBundle, i.now, serverID, opts...)
}

// GMRoots returns the CA's SM2 authorities (published and active), for
// writing a GM trust bundle to files.
func (i *Provider) GMRoots() []*smx509.Certificate { return i.ca.GMBundle() }
