package dualstack_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emmansun/gmsm/smx509"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/zfaas/zfaas/crypto/dualstack"
	"github.com/zfaas/zfaas/crypto/mtls"
	"github.com/zfaas/zfaas/crypto/tlcp"
	"github.com/zfaas/zfaas/crypto/tlcp/tlcptest"
)

const td = "test.zfaas"

var (
	gatewayID = spiffeid.RequireFromString("spiffe://" + td + "/gateway/node1")
	callerID  = spiffeid.RequireFromString("spiffe://" + td + "/ns/t1/fn/caller")
)

// identity is one workload's SVIDs in both worlds.
type identity struct {
	ec        *x509svid.SVID
	sign, enc *tlcp.Certificate
}

func (i *identity) GetTLCPCertificates() (*tlcp.Certificate, *tlcp.Certificate, error) {
	return i.sign, i.enc, nil
}

type world struct {
	ca              *tlcptest.CA
	bundle          *x509bundle.Bundle
	gateway, caller *identity
}

func newIdentity(t *testing.T, ca *tlcptest.CA, id spiffeid.ID) *identity {
	t.Helper()
	ec, err := ca.IssueECDSA(tlcptest.Options{ID: id.Path()})
	if err != nil {
		t.Fatal(err)
	}
	sign, enc, err := ca.IssuePair(tlcptest.Options{ID: id.Path()})
	if err != nil {
		t.Fatal(err)
	}
	return &identity{
		ec:   &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{ec.Leaf}, PrivateKey: ec.PrivateKey.(crypto.Signer)},
		sign: sign, enc: enc,
	}
}

func newWorld(t *testing.T) *world {
	t.Helper()
	ca, err := tlcptest.New(td, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	w := &world{ca: ca, bundle: x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString(td), []*x509.Certificate{ca.ECCert})}
	w.gateway = newIdentity(t, ca, gatewayID)
	w.caller = newIdentity(t, ca, callerID)
	return w
}

func (w *world) serverConfig() dualstack.Config {
	tlsCfg := mtls.ServerConfig(w.gateway.ec, w.bundle)
	tlsCfg.NextProtos = []string{"h2", "http/1.1"}
	return dualstack.Config{
		Mode: dualstack.ModeAuto,
		TLS:  tlsCfg,
		TLCP: dualstack.TLCPServerConfig(w.gateway, w.ca.Pool, nil),
	}
}

func (w *world) clientConfig(mode dualstack.Mode) dualstack.Config {
	return dualstack.Config{
		Mode: mode,
		TLS:  mtls.ClientConfig(w.caller.ec, w.bundle, gatewayID),
		TLCP: dualstack.TLCPClientConfig(w.caller, w.ca.Pool, gatewayID),
	}
}

func serve(t *testing.T, cfg dualstack.Config) string {
	t.Helper()
	ln, err := dualstack.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			st, ok := dualstack.FromContext(r.Context())
			if !ok {
				http.Error(rw, "no connection state", http.StatusInternalServerError)
				return
			}
			id, _ := st.PeerID()
			fmt.Fprintf(rw, "%s|%s|%s|%s|%s", st.Protocol, st.VersionName, st.CipherSuiteName, id, r.Proto)
		}),
		ConnContext:       dualstack.ConnContext,
		ReadHeaderTimeout: 5 * time.Second,
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func get(t *testing.T, d *dualstack.Dialer, addr string, h2 bool) (string, error) {
	t.Helper()
	tr := &http.Transport{DialTLSContext: d.DialContext, ForceAttemptHTTP2: h2}
	if h2 {
		// net/http negotiates HTTP/2 only over its own TLS dialing; with a
		// custom DialTLSContext it needs the TLS config too.
		tr.TLSClientConfig = d.TLS.Clone()
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + addr + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// TestOnePortTLSAndTLCP serves a TLS 1.3 client and a TLCP client side by
// side on one dual-stack port, each with mutual SPIFFE authentication, and
// checks what the handler sees.
func TestOnePortTLSAndTLCP(t *testing.T) {
	w := newWorld(t)
	addr := serve(t, w.serverConfig())

	type result struct {
		body string
		err  error
	}
	tlsDialer := &dualstack.Dialer{Config: w.clientConfig(dualstack.ModeStandard)}
	tlsDialer.TLS.NextProtos = []string{"h2", "http/1.1"}
	gmDialer := &dualstack.Dialer{Config: w.clientConfig(dualstack.ModeGM)}
	var wg sync.WaitGroup
	results := make([]result, 4)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, h2 := tlsDialer, true
			if i%2 == 1 {
				d, h2 = gmDialer, false
			}
			b, err := get(t, d, addr, h2)
			results[i] = result{b, err}
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("client %d: %v", i, r.err)
		}
		want := "tls|TLS 1.3|TLS_AES_128_GCM_SHA256|" + callerID.String() + "|HTTP/2.0"
		if i%2 == 1 {
			want = "tlcp|TLCP 1.1|ECDHE_SM4_GCM_SM3|" + callerID.String() + "|HTTP/1.1"
		}
		if r.body != want {
			t.Errorf("client %d: got %q, want %q", i, r.body, want)
		}
	}
}

func TestDialerAutoFallsBackToTLCP(t *testing.T) {
	w := newWorld(t)
	gmOnly := w.serverConfig()
	gmOnly.Mode = dualstack.ModeGM
	for _, tt := range []struct {
		name   string
		server dualstack.Config
		want   string
	}{
		{"auto server", w.serverConfig(), "tls|"},
		{"gm-only server", gmOnly, "tlcp|"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			addr := serve(t, tt.server)
			body, err := get(t, &dualstack.Dialer{Config: w.clientConfig(dualstack.ModeAuto)}, addr, false)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(body, tt.want) {
				t.Fatalf("got %q, want prefix %q", body, tt.want)
			}
		})
	}
}

func TestSPIFFERefusals(t *testing.T) {
	w := newWorld(t)
	other, err := tlcptest.New("other.zfaas", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	foreign := newIdentity(t, other, spiffeid.RequireFromString("spiffe://other.zfaas/ns/t1/fn/caller"))
	wrongEnc, err := w.ca.IssueSM2(tlcptest.Options{ID: "/ns/t9/fn/else"}, tlcptest.EncUsage)
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, w.serverConfig())
	for _, tt := range []struct {
		name string
		cfg  func() dualstack.Config
	}{
		{"client of another trust domain", func() dualstack.Config {
			c := w.clientConfig(dualstack.ModeGM)
			c.TLCP = dualstack.TLCPClientConfig(foreign, w.ca.Pool, gatewayID)
			return c
		}},
		{"client enc cert of another ID", func() dualstack.Config {
			c := w.clientConfig(dualstack.ModeGM)
			c.TLCP = dualstack.TLCPClientConfig(dualstack.TLCPSourceFunc(func() (*tlcp.Certificate, *tlcp.Certificate, error) {
				return w.caller.sign, wrongEnc, nil
			}), w.ca.Pool, gatewayID)
			return c
		}},
		{"server is not the expected ID", func() dualstack.Config {
			c := w.clientConfig(dualstack.ModeGM)
			c.TLCP = dualstack.TLCPClientConfig(w.caller, w.ca.Pool, callerID)
			return c
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := get(t, &dualstack.Dialer{Config: tt.cfg()}, addr, false)
			var a *tlcp.AlertError
			if !errors.As(err, &a) {
				t.Fatalf("got %v, want a TLCP alert", err)
			}
		})
	}
}

// TestGRPC runs gRPC health checks over TLCP and over TLS against one
// dual-stack gRPC server, and checks what the server sees of each call.
func TestGRPC(t *testing.T) {
	w := newWorld(t)
	creds, err := dualstack.NewCredentials(w.serverConfig())
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan dualstack.ConnectionState, 4)
	srv := grpc.NewServer(grpc.Creds(creds), grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if st, ok := dualstack.StateFromPeer(ctx); ok {
			seen <- st
		}
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)

	for _, mode := range []dualstack.Mode{dualstack.ModeGM, dualstack.ModeStandard} {
		t.Run(string(mode), func(t *testing.T) {
			ccreds, err := dualstack.NewCredentials(w.clientConfig(mode))
			if err != nil {
				t.Fatal(err)
			}
			cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(ccreds))
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if resp.Status != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("got %v, want SERVING", resp.Status)
			}
			st := <-seen
			wantProto := dualstack.ProtocolTLS
			if mode == dualstack.ModeGM {
				wantProto = dualstack.ProtocolTLCP
			}
			id, _ := st.PeerID()
			if st.Protocol != wantProto || id != callerID {
				t.Fatalf("server saw %s from %s, want %s from %s", st.Protocol, id, wantProto, callerID)
			}
		})
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]dualstack.Mode{"": dualstack.ModeAuto, "GM": dualstack.ModeGM, "standard": dualstack.ModeStandard, "auto": dualstack.ModeAuto} {
		got, err := dualstack.ParseMode(in)
		if err != nil || got != want {
			t.Errorf("ParseMode(%q): got %q, %v, want %q", in, got, err, want)
		}
	}
	if _, err := dualstack.ParseMode("tls"); err == nil {
		t.Error("ParseMode(tls): got nil error")
	}
}

// TestSilentClientDoesNotBlockAccept: a connection that sends nothing is
// classified in the background and dropped after PeekTimeout, while other
// clients get through.
func TestSilentClientDoesNotBlockAccept(t *testing.T) {
	w := newWorld(t)
	cfg := w.serverConfig()
	cfg.PeekTimeout = 300 * time.Millisecond
	addr := serve(t, cfg)
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	body, err := get(t, &dualstack.Dialer{Config: w.clientConfig(dualstack.ModeGM)}, addr, false)
	if err != nil || !strings.HasPrefix(body, "tlcp|") {
		t.Fatalf("got %q, %v; want a TLCP answer", body, err)
	}
	_ = silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("silent connection: got %v, want it closed by the server", err)
	}
}

// countingEngine is another TLCP engine: crypto/tlcp behind a wrapper that
// counts the connections it makes.
type countingEngine struct{ servers, clients atomic.Int64 }

func (e *countingEngine) Server(c net.Conn, cfg *tlcp.Config) dualstack.TLCPConn {
	e.servers.Add(1)
	return dualstack.BuiltinEngine{}.Server(c, cfg)
}

func (e *countingEngine) Client(c net.Conn, cfg *tlcp.Config) dualstack.TLCPConn {
	e.clients.Add(1)
	return dualstack.BuiltinEngine{}.Client(c, cfg)
}

// TestEngineSwap: the listener and the dialer make their TLCP connections
// with Config.Engine, and the connection state still reaches the handler.
func TestEngineSwap(t *testing.T) {
	w := newWorld(t)
	eng := &countingEngine{}
	sc := w.serverConfig()
	sc.Engine = eng
	addr := serve(t, sc)
	cc := w.clientConfig(dualstack.ModeGM)
	cc.Engine = eng
	body, err := get(t, &dualstack.Dialer{Config: cc}, addr, false)
	if err != nil || !strings.HasPrefix(body, "tlcp|") {
		t.Fatalf("TLCP through a swapped engine: %q %v", body, err)
	}
	if eng.servers.Load() != 1 || eng.clients.Load() != 1 {
		t.Fatalf("engine made %d server and %d client connections, want 1 and 1", eng.servers.Load(), eng.clients.Load())
	}
}

// TestVerifySPIFFEPeer calls the hook as the engine does and checks that
// it reads the authorities and the clock at each call and refuses what
// AuthorizeSPIFFE refuses.
func TestVerifySPIFFEPeer(t *testing.T) {
	w := newWorld(t)
	other, err := tlcptest.New("other.zfaas", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	wrongEnc, err := w.ca.IssueSM2(tlcptest.Options{ID: "/ns/t9/fn/else"}, tlcptest.EncUsage)
	if err != nil {
		t.Fatal(err)
	}
	var roots atomic.Pointer[smx509.CertPool]
	roots.Store(other.Pool)
	var now atomic.Pointer[time.Time]
	tm := time.Now()
	now.Store(&tm)
	var authorized []spiffeid.ID
	verify := dualstack.VerifySPIFFEPeer(roots.Load, func() time.Time { return *now.Load() }, func(id spiffeid.ID) error {
		authorized = append(authorized, id)
		if id != callerID {
			return fmt.Errorf("not %s", callerID)
		}
		return nil
	})
	pair := append(slices.Clone(w.caller.sign.Certificate), w.caller.enc.Certificate...)

	if err := verify(pair, nil); err == nil || !strings.Contains(err.Error(), "verify peer signing certificate") {
		t.Fatalf("against another trust domain's roots: %v", err)
	}
	roots.Store(w.ca.Pool) // the source changed: the next call trusts it
	if err := verify(pair, nil); err != nil {
		t.Fatalf("against the current roots: %v", err)
	}
	if len(authorized) != 1 || authorized[0] != callerID {
		t.Fatalf("authorize saw %v, want [%s]", authorized, callerID)
	}
	if err := verify(w.gateway.sign.Certificate, nil); err == nil {
		t.Fatal("authorize refused the gateway's ID, the hook did not")
	}
	if err := verify(append(slices.Clone(w.caller.sign.Certificate), wrongEnc.Certificate...), nil); err == nil {
		t.Fatal("encryption certificate of another ID accepted")
	}
	if err := verify(nil, nil); err == nil {
		t.Fatal("no certificate accepted")
	}
	later := tm.Add(10 * 365 * 24 * time.Hour)
	now.Store(&later)
	if err := verify(pair, nil); err == nil || !strings.Contains(err.Error(), "verify peer signing certificate") {
		t.Fatalf("ten years later: %v", err)
	}
}
