package tlcp_test

// Interoperability with an independent TLCP implementation: tjfoc/gmsm
// v1.4.1 gmtls (imported by this test only). It speaks ECC_SM4_CBC_SM3
// (0xe013) with the double certificate; its ECDHE suite (0xe011) is
// unfinished, which the last test uses as a hostile-ish peer.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/emmansun/gmsm/sm2"
	tjtls "github.com/tjfoc/gmsm/gmtls"
	tjsm2 "github.com/tjfoc/gmsm/sm2"
	tjx509 "github.com/tjfoc/gmsm/x509"

	"github.com/zfaas/zfaas/crypto/tlcp"
)

// toTjfoc converts one of our certificates to a tjfoc one.
func toTjfoc(t *testing.T, c *tlcp.Certificate) tjtls.Certificate {
	t.Helper()
	k := c.PrivateKey.(*sm2.PrivateKey)
	priv := &tjsm2.PrivateKey{PublicKey: tjsm2.PublicKey{Curve: tjsm2.P256Sm2(), X: k.X, Y: k.Y}, D: k.D}
	return tjtls.Certificate{Certificate: c.Certificate, PrivateKey: priv}
}

func (f *fixture) tjfocRoots(t *testing.T) *tjx509.CertPool {
	t.Helper()
	root, err := tjx509.ParseCertificate(f.ca.Cert.Raw)
	if err != nil {
		t.Fatalf("tjfoc cannot parse our SM2 CA: %v", err)
	}
	pool := tjx509.NewCertPool()
	pool.AddCert(root)
	return pool
}

func serveHTTP(t *testing.T, ln net.Listener) {
	t.Helper()
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "tlcp says hello to %s", r.URL.Path)
		}),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          nil,
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

func get(t *testing.T, dial func(ctx context.Context, network, addr string) (net.Conn, error), addr, path string) (string, error) {
	t.Helper()
	tr := &http.Transport{DialTLSContext: dial}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := client.Get("https://" + addr + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestInteropTjfocClientZfaasServer(t *testing.T) {
	f := newFixture(t)
	for _, mutual := range []bool{false, true} {
		t.Run(fmt.Sprintf("mutual=%v", mutual), func(t *testing.T) {
			scfg := f.serverConfig()
			if !mutual {
				scfg.ClientAuth = tlcp.NoClientCert
			} else {
				// tjfoc cannot do ECDHE: keep its handshake on ECC.
				scfg.CipherSuites = []uint16{tlcp.ECC_SM4_CBC_SM3}
			}
			var states = make(chan tlcp.ConnectionState, 4)
			scfg.VerifyConnection = func(cs tlcp.ConnectionState) error { states <- cs; return nil }
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			serveHTTP(t, tlcp.NewListener(ln, scfg))

			tcfg := &tjtls.Config{
				GMSupport:  tjtls.NewGMSupport(),
				RootCAs:    f.tjfocRoots(t),
				ServerName: "gateway.test",
			}
			if mutual {
				tcfg.Certificates = []tjtls.Certificate{toTjfoc(t, f.clientSign), toTjfoc(t, f.clientE)}
			}
			dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
				return tjtls.Dial(network, addr, tcfg)
			}
			body, err := get(t, dial, ln.Addr().String(), "/from-tjfoc")
			if err != nil {
				t.Fatalf("tjfoc client: %v", err)
			}
			if want := "tlcp says hello to /from-tjfoc"; body != want {
				t.Fatalf("got %q, want %q", body, want)
			}
			cs := <-states
			if cs.CipherSuite != tlcp.ECC_SM4_CBC_SM3 {
				t.Fatalf("suite: got %s, want ECC_SM4_CBC_SM3", tlcp.CipherSuiteName(cs.CipherSuite))
			}
			if mutual && (cs.PeerSignCertificate == nil || cs.PeerSignCertificate.URIs[0].Path != "/ns/t1/fn/caller") {
				t.Fatalf("server did not see the tjfoc client's signing certificate: %+v", cs.PeerSignCertificate)
			}
		})
	}
}

func TestInteropZfaasClientTjfocServer(t *testing.T) {
	f := newFixture(t)
	for _, mutual := range []bool{false, true} {
		t.Run(fmt.Sprintf("mutual=%v", mutual), func(t *testing.T) {
			tcfg := &tjtls.Config{
				GMSupport:    tjtls.NewGMSupport(),
				Certificates: []tjtls.Certificate{toTjfoc(t, f.serverSign), toTjfoc(t, f.serverE)},
			}
			if mutual {
				tcfg.ClientAuth = tjtls.RequireAndVerifyClientCert
				tcfg.ClientCAs = f.tjfocRoots(t)
			}
			ln, err := tjtls.Listen("tcp", "127.0.0.1:0", tcfg)
			if err != nil {
				t.Fatal(err)
			}
			serveHTTP(t, ln)

			ccfg := f.clientConfig()
			ccfg.CipherSuites = []uint16{tlcp.ECC_SM4_CBC_SM3}
			if !mutual {
				ccfg.SignCertificate, ccfg.EncCertificate = nil, nil
			}
			var suite uint16
			dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := tlcp.Dial(ctx, network, addr, ccfg)
				if err == nil {
					suite = c.ConnectionState().CipherSuite
				}
				return c, err
			}
			body, err := get(t, dial, ln.Addr().String(), "/from-zfaas")
			if err != nil {
				t.Fatalf("zfaas client: %v", err)
			}
			if want := "tlcp says hello to /from-zfaas"; body != want {
				t.Fatalf("got %q, want %q", body, want)
			}
			if suite != tlcp.ECC_SM4_CBC_SM3 {
				t.Fatalf("suite: got %s, want ECC_SM4_CBC_SM3", tlcp.CipherSuiteName(suite))
			}
		})
	}
}

// TestInteropTjfocOffersECDHEFirst: a tjfoc client that offers 0xe011
// before 0xe013 gets a working handshake or a clean alert from our server,
// which then goes on serving.
func TestInteropTjfocOffersECDHEFirst(t *testing.T) {
	f := newFixture(t)
	for _, mutual := range []bool{false, true} {
		t.Run(fmt.Sprintf("mutual=%v", mutual), func(t *testing.T) {
			scfg := f.serverConfig()
			if !mutual {
				scfg.ClientAuth = tlcp.NoClientCert
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			serverErr := make(chan error, 2)
			go func() {
				for range 2 {
					c, err := ln.Accept()
					if err != nil {
						serverErr <- err
						return
					}
					sc := tlcp.Server(c, scfg)
					err = sc.Handshake()
					if err == nil {
						// Echo one line so the client sees a working connection.
						buf := make([]byte, 5)
						if _, err = io.ReadFull(sc, buf); err == nil {
							_, err = sc.Write(buf)
						}
					}
					sc.Close()
					serverErr <- err
				}
			}()
			tcfg := &tjtls.Config{
				GMSupport:    tjtls.NewGMSupport(),
				RootCAs:      f.tjfocRoots(t),
				ServerName:   "gateway.test",
				CipherSuites: []uint16{tjtls.GMTLS_ECDHE_SM2_WITH_SM4_SM3, tjtls.GMTLS_SM2_WITH_SM4_SM3},
			}
			if mutual {
				tcfg.Certificates = []tjtls.Certificate{toTjfoc(t, f.clientSign), toTjfoc(t, f.clientE)}
			}
			clientErr := func() (err error) {
				defer func() {
					// The tjfoc client's own ECDHE code may panic; that is its
					// problem, not our server's.
					if r := recover(); r != nil {
						err = fmt.Errorf("tjfoc client panicked: %v", r)
					}
				}()
				c, err := tjtls.Dial("tcp", ln.Addr().String(), tcfg)
				if err != nil {
					return err
				}
				defer c.Close()
				if _, err := c.Write([]byte("ping!")); err != nil {
					return err
				}
				buf := make([]byte, 5)
				_, err = io.ReadFull(c, buf)
				return err
			}()
			serr := <-serverErr
			t.Logf("client: %v; server: %v", clientErr, serr)
			if serr != nil {
				var a *tlcp.AlertError
				if !errors.As(serr, &a) && !errors.Is(serr, io.EOF) && !errors.Is(serr, io.ErrUnexpectedEOF) {
					t.Fatalf("server: got %v, want success or an alert", serr)
				}
			} else if clientErr != nil {
				t.Fatalf("server succeeded but client failed: %v", clientErr)
			}
			// The server is still fine: a plain ECC client gets through.
			tcfg.CipherSuites = []uint16{tjtls.GMTLS_SM2_WITH_SM4_SM3}
			c, err := tjtls.Dial("tcp", ln.Addr().String(), tcfg)
			if err != nil {
				t.Fatalf("ECC client after the ECDHE attempt: %v", err)
			}
			c.Write([]byte("again"))
			buf := make([]byte, 5)
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "again" {
				t.Fatalf("echo: got %q, %v", buf, err)
			}
			c.Close()
			if err := <-serverErr; err != nil {
				t.Fatalf("server on the second connection: %v", err)
			}
		})
	}
}
