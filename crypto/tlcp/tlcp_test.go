package tlcp_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emmansun/gmsm/smx509"

	"github.com/zfaas/zfaas/crypto/tlcp"
	"github.com/zfaas/zfaas/crypto/tlcp/tlcptest"
)

const trustDomain = "test.zfaas"

type fixture struct {
	ca                  *tlcptest.CA
	serverSign, serverE *tlcp.Certificate
	clientSign, clientE *tlcp.Certificate
}

var (
	fixOnce sync.Once
	fix     fixture
	fixErr  error
)

func newFixture(t *testing.T) *fixture {
	t.Helper()
	fixOnce.Do(func() {
		fix.ca, fixErr = tlcptest.New(trustDomain, time.Now())
		if fixErr != nil {
			return
		}
		fix.serverSign, fix.serverE, fixErr = fix.ca.IssuePair(tlcptest.Options{ID: "/gateway/node1", DNSNames: []string{"gateway.test"}})
		if fixErr != nil {
			return
		}
		fix.clientSign, fix.clientE, fixErr = fix.ca.IssuePair(tlcptest.Options{ID: "/ns/t1/fn/caller"})
	})
	if fixErr != nil {
		t.Fatal(fixErr)
	}
	return &fix
}

// spiffeCheck returns a VerifyPeerCertificate hook requiring the peer's
// signing certificate to carry want as its URI SAN.
func spiffeCheck(want string) func([][]byte, [][]*smx509.Certificate) error {
	return func(raw [][]byte, chains [][]*smx509.Certificate) error {
		if len(chains) == 0 {
			return errors.New("no verified chain")
		}
		leaf := chains[0][0]
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
			return fmt.Errorf("peer is %v, want %s", leaf.URIs, want)
		}
		return nil
	}
}

func (f *fixture) serverConfig() *tlcp.Config {
	return &tlcp.Config{
		SignCertificate:       f.serverSign,
		EncCertificate:        f.serverE,
		ClientCAs:             f.ca.Pool,
		ClientAuth:            tlcp.RequireAndVerifyClientCert,
		VerifyPeerCertificate: spiffeCheck("spiffe://" + trustDomain + "/ns/t1/fn/caller"),
	}
}

func (f *fixture) clientConfig() *tlcp.Config {
	return &tlcp.Config{
		SignCertificate:       f.clientSign,
		EncCertificate:        f.clientE,
		RootCAs:               f.ca.Pool,
		VerifyPeerCertificate: spiffeCheck("spiffe://" + trustDomain + "/gateway/node1"),
	}
}

// pipe returns two ends of a loopback TCP connection.
func pipe(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- nil
			return
		}
		ch <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// handshakePair runs both handshakes and returns their errors.
func handshakePair(t *testing.T, scfg, ccfg *tlcp.Config) (*tlcp.Conn, *tlcp.Conn, error, error) {
	t.Helper()
	a, b := pipe(t)
	cli := tlcp.Client(a, ccfg)
	srv := tlcp.Server(b, scfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- srv.HandshakeContext(ctx) }()
	cerr := cli.HandshakeContext(ctx)
	if cerr != nil {
		// Unblock a server waiting for a flight that will never come.
		a.Close()
	}
	serr := <-errc
	if serr != nil {
		b.Close()
	}
	return cli, srv, cerr, serr
}

func TestHandshakeAllSuitesMutual(t *testing.T) {
	f := newFixture(t)
	for _, id := range tlcp.CipherSuites() {
		t.Run(tlcp.CipherSuiteName(id), func(t *testing.T) {
			scfg, ccfg := f.serverConfig(), f.clientConfig()
			ccfg.CipherSuites = []uint16{id}
			cli, srv, cerr, serr := handshakePair(t, scfg, ccfg)
			if cerr != nil || serr != nil {
				t.Fatalf("handshake: client %v, server %v", cerr, serr)
			}
			for _, c := range []*tlcp.Conn{cli, srv} {
				st := c.ConnectionState()
				if st.Version != tlcp.VersionTLCP || st.CipherSuite != id || !st.HandshakeComplete {
					t.Fatalf("state: got version %#x suite %s complete %v, want %#x %s true",
						st.Version, tlcp.CipherSuiteName(st.CipherSuite), st.HandshakeComplete, tlcp.VersionTLCP, tlcp.CipherSuiteName(id))
				}
				if st.PeerSignCertificate == nil || st.PeerEncCertificate == nil || len(st.VerifiedChains) == 0 {
					t.Fatalf("state: peer sign %v enc %v chains %d, want all set", st.PeerSignCertificate != nil, st.PeerEncCertificate != nil, len(st.VerifiedChains))
				}
			}
			exchange(t, cli, srv, 100_000)
		})
	}
}

// exchange sends n random bytes each way and checks them.
func exchange(t *testing.T, a, b net.Conn, n int) {
	t.Helper()
	for _, dir := range [][2]net.Conn{{a, b}, {b, a}} {
		msg := make([]byte, n)
		_, _ = rand.Read(msg)
		errc := make(chan error, 1)
		go func() {
			_, err := dir[0].Write(msg)
			errc <- err
		}()
		got := make([]byte, n)
		if _, err := io.ReadFull(dir[1], got); err != nil {
			t.Fatalf("read: %v", err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("write: %v", err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatal("data differs")
		}
	}
}

func TestHandshakeECCWithoutClientAuth(t *testing.T) {
	f := newFixture(t)
	scfg := f.serverConfig()
	scfg.ClientAuth = tlcp.NoClientCert
	ccfg := &tlcp.Config{RootCAs: f.ca.Pool, ServerName: "gateway.test"}
	cli, srv, cerr, serr := handshakePair(t, scfg, ccfg)
	if cerr != nil || serr != nil {
		t.Fatalf("handshake: client %v, server %v", cerr, serr)
	}
	if got := cli.ConnectionState().CipherSuite; got != tlcp.ECC_SM4_GCM_SM3 {
		t.Fatalf("suite: got %s, want ECC_SM4_GCM_SM3 (ECDHE needs client certificates)", tlcp.CipherSuiteName(got))
	}
	if srv.ConnectionState().PeerSignCertificate != nil {
		t.Fatal("server saw client certificates it did not ask for")
	}
	exchange(t, cli, srv, 10)
	// close_notify reaches the peer as io.EOF.
	cli.Close()
	if _, err := srv.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("read after close: got %v, want io.EOF", err)
	}
}

func alertCode(err error) (uint8, bool) {
	var a *tlcp.AlertError
	if errors.As(err, &a) {
		return a.Code, true
	}
	return 0, false
}

func TestRefusals(t *testing.T) {
	f := newFixture(t)
	otherCA, err := tlcptest.New("other.zfaas", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	foreignSign, foreignEnc, err := otherCA.IssuePair(tlcptest.Options{ID: "/ns/t1/fn/caller"})
	if err != nil {
		t.Fatal(err)
	}
	expiredSign, expiredEnc, err := f.ca.IssuePair(tlcptest.Options{ID: "/ns/t1/fn/caller",
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	wrongSign, wrongEnc, err := f.ca.IssuePair(tlcptest.Options{ID: "/ns/t2/fn/intruder"})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		setup    func(s, c *tlcp.Config)
		wantCode uint8 // alert the refusing side sends
		serverNo bool  // true: the server refuses, false: the client does
	}{
		{"client cert from another CA", func(s, c *tlcp.Config) { c.SignCertificate, c.EncCertificate = foreignSign, foreignEnc }, 48, true},
		{"expired client cert", func(s, c *tlcp.Config) { c.SignCertificate, c.EncCertificate = expiredSign, expiredEnc }, 45, true},
		{"wrong client SPIFFE ID", func(s, c *tlcp.Config) { c.SignCertificate, c.EncCertificate = wrongSign, wrongEnc }, 42, true},
		{"client enc cert without sign cert", func(s, c *tlcp.Config) {
			c.SignCertificate, c.EncCertificate = f.clientE, nil
			c.CipherSuites = []uint16{tlcp.ECC_SM4_CBC_SM3}
			c.GetClientCertificates = func(*tlcp.CertificateRequestInfo) (*tlcp.Certificate, *tlcp.Certificate, error) {
				return f.clientE, nil, nil
			}
		}, 42, true},
		{"client enc cert twice", func(s, c *tlcp.Config) { c.SignCertificate, c.EncCertificate = f.clientE, f.clientE }, 42, true},
		{"no client cert", func(s, c *tlcp.Config) {
			c.SignCertificate, c.EncCertificate = nil, nil
		}, 40, true},
		{"server from another CA", func(s, c *tlcp.Config) { s.SignCertificate, s.EncCertificate = foreignSign, foreignEnc }, 48, false},
		{"expired server cert", func(s, c *tlcp.Config) { s.SignCertificate, s.EncCertificate = expiredSign, expiredEnc }, 45, false},
		{"server enc cert in the sign place", func(s, c *tlcp.Config) { s.SignCertificate = f.serverE }, 42, false},
		{"wrong server SPIFFE ID", func(s, c *tlcp.Config) { s.SignCertificate, s.EncCertificate = wrongSign, wrongEnc }, 42, false},
		{"client clock past expiry", func(s, c *tlcp.Config) { c.Time = func() time.Time { return time.Now().Add(48 * time.Hour) } }, 45, false},
		{"no shared suite", func(s, c *tlcp.Config) {
			s.CipherSuites = []uint16{tlcp.ECC_SM4_GCM_SM3}
			c.CipherSuites = []uint16{tlcp.ECC_SM4_CBC_SM3}
		}, 40, true},
		{"different user id", func(s, c *tlcp.Config) { c.UserID = []byte("another-user-id") }, 51, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, c := f.serverConfig(), f.clientConfig()
			tt.setup(s, c)
			_, _, cerr, serr := handshakePair(t, s, c)
			if cerr == nil || serr == nil {
				t.Fatalf("handshake: got client %v, server %v, want both to fail", cerr, serr)
			}
			refuser, other := cerr, serr
			if tt.serverNo {
				refuser, other = serr, cerr
			}
			var a *tlcp.AlertError
			if !errors.As(refuser, &a) || !a.Sent || a.Code != tt.wantCode {
				t.Fatalf("refusing side: got %v, want it to send alert %d", refuser, tt.wantCode)
			}
			if code, ok := alertCode(other); ok && code != tt.wantCode {
				t.Fatalf("other side: got alert %d, want %d", code, tt.wantCode)
			}
		})
	}
}

func TestClientNeedsVerification(t *testing.T) {
	f := newFixture(t)
	_, _, cerr, _ := handshakePair(t, f.serverConfig(), &tlcp.Config{RootCAs: f.ca.Pool})
	if !errors.Is(cerr, tlcp.ErrNoVerification) {
		t.Fatalf("got %v, want ErrNoVerification", cerr)
	}
}

func TestGarbageGetsAlertNotPanic(t *testing.T) {
	f := newFixture(t)
	inputs := map[string][]byte{
		"tls13 hello":      {0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00},
		"huge record":      {0x16, 0x01, 0x01, 0xff, 0xff},
		"bad type":         {0x63, 0x01, 0x01, 0x00, 0x01, 0x00},
		"truncated hello":  {0x16, 0x01, 0x01, 0x00, 0x06, 0x01, 0x00, 0x00, 0x40, 0x01, 0x01},
		"oversize message": {0x16, 0x01, 0x01, 0x00, 0x04, 0x01, 0xff, 0xff, 0xff},
		"app data first":   {0x17, 0x01, 0x01, 0x00, 0x01, 0x00},
		"ccs first":        {0x14, 0x01, 0x01, 0x00, 0x01, 0x01},
	}
	for name, in := range inputs {
		t.Run(name, func(t *testing.T) {
			a, b := pipe(t)
			srv := tlcp.Server(b, f.serverConfig())
			errc := make(chan error, 1)
			go func() { errc <- srv.Handshake() }()
			if _, err := a.Write(in); err != nil {
				t.Fatal(err)
			}
			a.(*net.TCPConn).CloseWrite()
			err := <-errc
			b.Close()
			_ = a.SetReadDeadline(time.Now().Add(5 * time.Second))
			reply, _ := io.ReadAll(a)
			if err == nil {
				t.Fatal("handshake succeeded on garbage")
			}
			if _, ok := alertCode(err); ok && (len(reply) < 7 || reply[0] != 21) {
				t.Fatalf("server error %v but reply %x is no alert record", err, reply)
			}
		})
	}
}

// TestHTTPOverTLCP serves HTTP/1.1 from a TLCP listener to an http.Client
// dialing TLCP, with mutual authentication.
func TestHTTPOverTLCP(t *testing.T) {
	f := newFixture(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello %s", r.URL.Path)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go srv.Serve(tlcp.NewListener(ln, f.serverConfig()))
	t.Cleanup(func() { srv.Close() })

	tr := &http.Transport{DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return tlcp.Dial(ctx, network, addr, f.clientConfig())
	}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for i := range 3 {
		resp, err := client.Get("https://" + ln.Addr().String() + "/x" + fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprintf("hello /x%d", i); string(body) != want {
			t.Fatalf("got %q, want %q", body, want)
		}
	}
}

func TestHandshakeContextCancel(t *testing.T) {
	f := newFixture(t)
	a, _ := pipe(t) // nobody answers
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := tlcp.Client(a, f.clientConfig()).HandshakeContext(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want context.DeadlineExceeded", err)
	}
}

func TestX509KeyPair(t *testing.T) {
	f := newFixture(t)
	certPEM, keyPEM, err := tlcptest.PEM(f.serverSign)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tlcp.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c.Certificate[0], f.serverSign.Certificate[0]) {
		t.Fatal("certificate differs")
	}
	_, otherKey, _ := tlcptest.PEM(f.serverE)
	if _, err := tlcp.X509KeyPair(certPEM, otherKey); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("mismatched key: got %v, want a mismatch error", err)
	}
}
