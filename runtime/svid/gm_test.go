package svid

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zfaas/zfaas/crypto/dualstack"
	"github.com/zfaas/zfaas/crypto/mtls"
	"github.com/zfaas/zfaas/crypto/tlcp"
	"github.com/zfaas/zfaas/identity/ca"
	"github.com/zfaas/zfaas/identity/workloadapi"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func startProvider(t *testing.T, td string, suite ca.Suite, clk *fakeClock) *Provider {
	t.Helper()
	if _, err := workloadapi.NewCgroupAttestor(); err != nil {
		t.Skipf("no cgroup v2 hierarchy: %v", err)
	}
	p, err := Start(context.Background(), Config{
		Dir: t.TempDir(), TrustDomain: td, UID: os.Getuid(), GID: os.Getgid(),
		X509TTL: 10 * time.Minute, CATTL: time.Hour, Suite: suite, Clock: clk.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

const (
	gatewayID = "spiffe://zfaas.test/gateway/node1"
	callerID  = "spiffe://zfaas.test/ns/acme/fn/caller"
	otherID   = "spiffe://zfaas.test/ns/acme/fn/other"
)

func TestTLCPSourceRotatesAtHalfLife(t *testing.T) {
	clk := &fakeClock{t: time.Now()}
	p := startProvider(t, "zfaas.test", ca.SuiteGM, clk)
	src := p.TLCPSource(callerID)
	sign, enc, err := src.GetTLCPCertificates()
	if err != nil {
		t.Fatal(err)
	}
	pool := p.GMBundle()
	for _, c := range []struct {
		name  string
		cert  *tlcp.Certificate
		usage x509.KeyUsage
	}{{"sign", sign, ca.GMSignKeyUsage}, {"enc", enc, ca.GMEncKeyUsage}} {
		leaf := c.cert.Leaf
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != callerID || leaf.IsCA || leaf.KeyUsage != c.usage {
			t.Errorf("%s: URIs %v isCA %v usage %b", c.name, leaf.URIs, leaf.IsCA, leaf.KeyUsage)
		}
		if _, err := leaf.Verify(smx509.VerifyOptions{Roots: pool, CurrentTime: clk.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
		if len(c.cert.Certificate) != 1 || string(c.cert.Certificate[0]) != string(leaf.Raw) {
			t.Errorf("%s: chain is not the leaf", c.name)
		}
	}

	// Half life of the pair (NotBefore is backdated a little).
	half := sign.Leaf.NotBefore.Add(sign.Leaf.NotAfter.Sub(sign.Leaf.NotBefore) / 2)
	clk.Add(half.Sub(clk.Now()) - time.Second)
	sign2, enc2, err := src.GetTLCPCertificates()
	if err != nil {
		t.Fatal(err)
	}
	if sign2 != sign || enc2 != enc {
		t.Error("re-minted before half life")
	}
	clk.Add(2 * time.Second)
	sign3, enc3, err := src.GetTLCPCertificates()
	if err != nil {
		t.Fatal(err)
	}
	if sign3.Leaf.SerialNumber.Cmp(sign.Leaf.SerialNumber) == 0 || enc3.Leaf.SerialNumber.Cmp(enc.Leaf.SerialNumber) == 0 {
		t.Fatal("not re-minted after half life")
	}
	if !sign3.Leaf.NotBefore.After(sign.Leaf.NotBefore) {
		t.Errorf("rotated notBefore %v, was %v", sign3.Leaf.NotBefore, sign.Leaf.NotBefore)
	}
	if sign3.PrivateKey == sign.PrivateKey || enc3.PrivateKey == enc.PrivateKey {
		t.Error("rotation kept a key")
	}

	std := startProvider(t, "zfaas.test", ca.SuiteStandard, clk)
	if _, _, err := std.TLCPSource(callerID).GetTLCPCertificates(); !errors.Is(err, ca.ErrGMDisabled) {
		t.Errorf("standard suite: got %v, want %v", err, ca.ErrGMDisabled)
	}
	if std.Suite() != ca.SuiteStandard || p.Suite() != ca.SuiteGM {
		t.Errorf("suites: %q, %q", std.Suite(), p.Suite())
	}
}

// gmServer serves HTTP on a dual-stack port (auto: TLS 1.3 and TLCP) the
// way the gateway does, with the gateway's SVIDs from p; the handler
// answers protocol|peer ID.
func gmServer(t *testing.T, p *Provider, tlcpCfg *tlcp.Config) string {
	t.Helper()
	ln, err := dualstack.Listen("tcp", "127.0.0.1:0", dualstack.Config{
		Mode: dualstack.ModeAuto,
		TLS:  mtls.ServerConfig(p.SVIDSource(gatewayID), p),
		TLCP: tlcpCfg,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			st, ok := dualstack.FromContext(r.Context())
			if !ok {
				http.Error(w, "no state", http.StatusInternalServerError)
				return
			}
			id, _ := st.PeerID()
			fmt.Fprintf(w, "%s|%s", st.Protocol, id)
		}),
		ConnContext:       dualstack.ConnContext,
		ReadHeaderTimeout: 5 * time.Second,
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func gmGet(cfg *tlcp.Config, addr string) (string, error) {
	d := &dualstack.Dialer{Config: dualstack.Config{Mode: dualstack.ModeGM, TLCP: cfg}}
	tr := &http.Transport{DialTLSContext: d.DialContext}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + addr + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func onlyID(want string) func(spiffeid.ID) error { return (&authz{}).only(want) }

// authz records the IDs it refused.
type authz struct {
	mu      sync.Mutex
	refused []string
}

func (a *authz) only(want string) func(spiffeid.ID) error {
	return func(id spiffeid.ID) error {
		if id.String() != want {
			a.mu.Lock()
			a.refused = append(a.refused, id.String())
			a.mu.Unlock()
			return fmt.Errorf("%s is not allowed", id)
		}
		return nil
	}
}

func (a *authz) take() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.refused
	a.refused = nil
	return r
}

// TestTLCPBetweenWorkloads runs TLCP handshakes between two workloads whose
// double SVIDs come from one CA, with SPIFFE ID authorization on both
// sides, through the dual-stack listener and dialer.
func TestTLCPBetweenWorkloads(t *testing.T) {
	clk := &fakeClock{t: time.Now()}
	p := startProvider(t, "zfaas.test", ca.SuiteGM, clk)
	gw, caller, other := spiffeid.RequireFromString(gatewayID), p.TLCPSource(callerID), p.TLCPSource(otherID)
	clock := dualstack.WithClock(clk.Now)

	// Rotation-following configs (Provider) and snapshot configs (the
	// plain dualstack helpers with GMBundle) both work.
	dynAuthz, snapAuthz := &authz{}, &authz{}
	dynAddr := gmServer(t, p, p.TLCPServerConfig(p.ServerTLCPSource(gatewayID, "127.0.0.1"), dynAuthz.only(callerID)))
	snapAddr := gmServer(t, p, dualstack.TLCPServerConfig(p.TLCPSource(gatewayID), p.GMBundle(), snapAuthz.only(callerID), clock))

	// A workload of another trust domain, with its own SM2 CA.
	foreign := startProvider(t, "evil.test", ca.SuiteGM, clk)
	foreignCaller := foreign.TLCPSource("spiffe://evil.test/ns/acme/fn/caller")

	tests := []struct {
		name    string
		client  *tlcp.Config
		addr    string
		want    string
		wantErr bool
		// refusedBy is the server authorizer that must have refused
		// otherID, for the cases refused by authorization.
		refusedBy *authz
	}{
		{"dynamic: allowed caller", p.TLCPClientConfig(caller, gw), dynAddr, "tlcp|" + callerID, false, nil},
		{"snapshot: allowed caller", dualstack.TLCPClientConfig(caller, p.GMBundle(), gw, clock), snapAddr, "tlcp|" + callerID, false, nil},
		{"dynamic client to snapshot server", p.TLCPClientConfig(caller, gw), snapAddr, "tlcp|" + callerID, false, nil},
		{"dynamic: caller not authorized", p.TLCPClientConfig(other, gw), dynAddr, "", true, dynAuthz},
		{"snapshot: caller not authorized", dualstack.TLCPClientConfig(other, p.GMBundle(), gw, clock), snapAddr, "", true, snapAuthz},
		{"dynamic: wrong server id", p.TLCPClientConfig(caller, spiffeid.RequireFromString("spiffe://zfaas.test/gateway/node2")), dynAddr, "", true, nil},
		{"snapshot: wrong server id", dualstack.TLCPClientConfig(caller, p.GMBundle(), spiffeid.RequireFromString(callerID), clock), snapAddr, "", true, nil},
		{"dynamic: foreign trust domain", foreign.TLCPClientConfig(foreignCaller, gw), dynAddr, "", true, nil},
		{"dynamic: foreign client cert", dualstack.TLCPClientConfig(foreignCaller, p.GMBundle(), gw, clock), dynAddr, "", true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := gmGet(tt.client, tt.addr)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("got %q, want a refused handshake", got)
				}
				t.Logf("refused: %v", err)
				if tt.refusedBy != nil {
					if got := tt.refusedBy.take(); len(got) != 1 || got[0] != otherID {
						t.Errorf("server authorizer refused %v, want [%s]", got, otherID)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}

	// A standard TLS client on the same port still works under the gm
	// suite.
	t.Run("tls client on the same port", func(t *testing.T) {
		d := &dualstack.Dialer{Config: dualstack.Config{Mode: dualstack.ModeStandard, TLS: mtls.ClientConfig(p.SVIDSource(callerID), p, gw)}}
		tr := &http.Transport{DialTLSContext: d.DialContext}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + dynAddr + "/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if want := "tls|" + callerID; string(b) != want {
			t.Errorf("got %q, want %q", b, want)
		}
	})

	// Expired: the caller's pair is used after its lifetime ends (the
	// source is pinned so it does not re-mint).
	t.Run("expired caller", func(t *testing.T) {
		sign, enc, err := caller.GetTLCPCertificates()
		if err != nil {
			t.Fatal(err)
		}
		pinned := dualstack.TLCPSourceFunc(func() (*tlcp.Certificate, *tlcp.Certificate, error) { return sign, enc, nil })
		srvClk := &fakeClock{t: sign.Leaf.NotAfter.Add(time.Second)}
		cfg := dualstack.TLCPServerConfig(p.TLCPSource(gatewayID), p.GMBundle(), nil, dualstack.WithClock(srvClk.Now))
		addr := gmServer(t, p, cfg)
		if got, err := gmGet(dualstack.TLCPClientConfig(pinned, p.GMBundle(), gw, clock), addr); err == nil {
			t.Fatalf("got %q, want refused", got)
		}
	})
}

// TestTLCPTrustFollowsCARotation: after the CA rotates, a peer whose double
// SVID comes from the successor SM2 authority is accepted by a server
// whose config (Provider.TLCPServerConfig) was built before the successor
// existed; a snapshot pool from before the rotation does not know it.
func TestTLCPTrustFollowsCARotation(t *testing.T) {
	clk := &fakeClock{t: time.Now()}
	p := startProvider(t, "zfaas.test", ca.SuiteGM, clk)
	gw := spiffeid.RequireFromString(gatewayID)
	clock := dualstack.WithClock(clk.Now)
	oldPool := p.GMBundle()
	dynAddr := gmServer(t, p, p.TLCPServerConfig(p.TLCPSource(gatewayID), onlyID(callerID)))
	snapAddr := gmServer(t, p, dualstack.TLCPServerConfig(p.TLCPSource(gatewayID), oldPool, onlyID(callerID), clock))

	// CA TTL 1 h: successor published at half life, signing at two thirds.
	for _, d := range []time.Duration{31 * time.Minute, 10 * time.Minute} {
		clk.Add(d)
		if err := p.ca.Rotate(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(p.ca.GMBundle()); n != 2 {
		t.Fatalf("sm2 authorities after rotation: got %d, want 2", n)
	}
	caller := p.TLCPSource(callerID)
	sign, _, err := caller.GetTLCPCertificates()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sign.Leaf.Verify(smx509.VerifyOptions{Roots: oldPool, CurrentTime: clk.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
		t.Fatal("new caller svid still signed by the old authority")
	}
	got, err := gmGet(p.TLCPClientConfig(caller, gw), dynAddr)
	if err != nil {
		t.Fatalf("rotation-following server refused a successor svid: %v", err)
	}
	if want := "tlcp|" + callerID; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got, err := gmGet(p.TLCPClientConfig(caller, gw), snapAddr); err == nil {
		t.Errorf("snapshot server accepted a successor svid: %q", got)
	}
}

// TestGMIssuanceIsRecorded: the Workload API's GM pair reaches OnIssue as
// two records, signing then encryption.
func TestGMIssuanceIsRecorded(t *testing.T) {
	clk := &fakeClock{t: time.Now()}
	p := startProvider(t, "zfaas.test", ca.SuiteGM, clk)
	var got []Issued
	r := recordingIssuer{CA: p.ca, on: func(i Issued) { got = append(got, i) }}
	var _ workloadapi.GMIssuer = r
	sign, enc, err := mintGMWith(r)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Type != "gm-sign" || got[1].Type != "gm-enc" ||
		got[0].Serial != sign.SerialNumber.Text(16) || got[1].Serial != enc.SerialNumber.Text(16) || got[0].ID != callerID {
		t.Errorf("records: %+v", got)
	}
}

func mintGMWith(r workloadapi.GMIssuer) (sign, enc *smx509.Certificate, err error) {
	sk, err := sm2.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	ek, err := sm2.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	s, err := r.MintGMSVID(context.Background(), ca.GMParams{ID: spiffeid.RequireFromString(callerID), SignKey: sk.Public(), EncKey: ek.Public()})
	if err != nil {
		return nil, nil, err
	}
	return s.Sign[0], s.Enc[0], nil
}
