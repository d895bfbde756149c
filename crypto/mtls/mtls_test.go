package mtls

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/zfaas/zfaas/identity/ca"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func mint(t *testing.T, c *ca.CA, id string) *x509svid.SVID {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.MintX509SVID(context.Background(), ca.X509Params{ID: spiffeid.RequireFromString(id), PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: s.ID, Certificates: s.Certificates, PrivateKey: key}
}

// result is one handshake's outcome: both sides' errors and the server's
// view of the client.
type result struct {
	serverErr, clientErr error
	peer                 spiffeid.ID
	hadPeer              bool
}

// handshake runs one TLS handshake over a pipe.
func handshake(t *testing.T, server, client *tls.Config) result {
	t.Helper()
	var serverErr, clientErr error
	var peer spiffeid.ID
	var hadPeer bool
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s := tls.Server(a, server)
		serverErr = s.Handshake()
		if serverErr == nil {
			cs := s.ConnectionState()
			peer, hadPeer = PeerID(&cs)
		}
		a.Close()
	}()
	c := tls.Client(b, client)
	clientErr = c.Handshake()
	b.Close()
	<-done
	return result{serverErr, clientErr, peer, hadPeer}
}

func TestServerAndClientConfig(t *testing.T) {
	clk := &clock{t: time.Now()}
	td := spiffeid.RequireTrustDomainFromString("zfaas.local")
	authority, err := ca.New(context.Background(), ca.Config{TrustDomain: td, Dir: t.TempDir(), Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer authority.Close()
	bundle := authority.Bundles().X509
	gwID := "spiffe://zfaas.local/gateway/local"
	server := ServerConfig(mint(t, authority, gwID), bundle, WithClock(clk.Now))
	alice := mint(t, authority, "spiffe://zfaas.local/user/alice")

	// A valid client SVID: both sides agree, the server sees alice.
	r := handshake(t, server, ClientConfig(alice, bundle, spiffeid.RequireFromString(gwID), WithClock(clk.Now)))
	if r.serverErr != nil || r.clientErr != nil || !r.hadPeer || r.peer.String() != "spiffe://zfaas.local/user/alice" {
		t.Fatalf("valid client: %+v", r)
	}
	// No client certificate: the handshake passes, with no peer ID.
	r = handshake(t, server, ClientConfig(nil, bundle, spiffeid.RequireFromString(gwID), WithClock(clk.Now)))
	if r.serverErr != nil || r.clientErr != nil || r.hadPeer {
		t.Fatalf("no client certificate: %+v", r)
	}
	// The client refuses a server with another ID.
	if r := handshake(t, server, ClientConfig(alice, bundle, spiffeid.RequireFromString("spiffe://zfaas.local/gateway/other"), WithClock(clk.Now))); r.clientErr == nil {
		t.Fatal("client accepted a server with the wrong SPIFFE ID")
	}
	// An expired client SVID fails the handshake (X.509-SVIDs live 1 h).
	clk.Add(2 * time.Hour)
	fresh := ServerConfig(mint(t, authority, gwID), bundle, WithClock(clk.Now))
	if r := handshake(t, fresh, ClientConfig(alice, bundle, spiffeid.RequireFromString(gwID), WithClock(clk.Now))); r.serverErr == nil {
		t.Fatal("server accepted an expired client SVID")
	}
}
