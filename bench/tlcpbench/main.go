// Command tlcpbench measures the TLCP engine (crypto/tlcp) beside Go's
// crypto/tls in the same run, on one core (GOMAXPROCS=1, client and server
// of each handshake in this process over in-memory pipes):
//
//   - full handshakes per second: TLCP ECC_SM4_GCM_SM3 (server
//     authentication) and ECDHE_SM4_GCM_SM3 (mutual, as the suite requires)
//     against TLS 1.3 with ECDSA P-256 (server authentication, and mutual
//     for the ECDHE row);
//   - bulk throughput: the SM4-GCM and AES-128-GCM primitives on 16 KiB
//     records, and a TLCP (SM4-GCM) against a TLS 1.3 (AES-128-GCM)
//     connection moving data one way.
//
// Series run in alternating blocks so all see the same background load.
// bench/run.sh runs it; bench/README.md explains the figures. Every loop is
// bounded in count and time; nothing touches the network.
package main

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/emmansun/gmsm/sm4"

	"github.com/zfaas/zfaas/crypto/tlcp"
	"github.com/zfaas/zfaas/crypto/tlcp/tlcptest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "tlcpbench:", err)
		os.Exit(1)
	}
}

type config struct {
	duration time.Duration // per handshake series, all blocks together
	blocks   int
	bulk     time.Duration // per bulk series
	procs    int
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tlcpbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	fs.DurationVar(&c.duration, "duration", 3*time.Second, "time of each handshake series (split into -blocks alternating blocks)")
	fs.IntVar(&c.blocks, "blocks", 6, "alternating blocks per handshake series")
	fs.DurationVar(&c.bulk, "bulk", time.Second, "time of each bulk series")
	fs.IntVar(&c.procs, "procs", 1, "GOMAXPROCS while measuring")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if c.duration <= 0 || c.duration > 5*time.Minute || c.blocks < 1 || c.blocks > 1000 || c.bulk <= 0 || c.bulk > time.Minute || c.procs < 1 {
		return errors.New("flags out of range")
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(c.procs))

	env, err := newEnv()
	if err != nil {
		return err
	}
	series := []*series{
		{name: "TLS 1.3 ECDSA P-256", run: env.tlsHandshake(false)},
		{name: "TLS 1.3 ECDSA P-256 mutual", run: env.tlsHandshake(true)},
		{name: "TLCP ECC_SM4_GCM_SM3", run: env.tlcpHandshake(tlcp.ECC_SM4_GCM_SM3, false)},
		{name: "TLCP ECC_SM4_CBC_SM3", run: env.tlcpHandshake(tlcp.ECC_SM4_CBC_SM3, false)},
		{name: "TLCP ECDHE_SM4_GCM_SM3 mutual", run: env.tlcpHandshake(tlcp.ECDHE_SM4_GCM_SM3, true)},
	}
	fmt.Fprintf(stderr, "   handshakes: %d series x %d blocks, %s each, GOMAXPROCS=%d\n", len(series), c.blocks, c.duration, c.procs)
	for _, s := range series { // warm up
		if err := s.run(); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	block := c.duration / time.Duration(c.blocks)
	for range c.blocks {
		for _, s := range series {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := s.measure(block); err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
		}
	}

	sm4Rate, err := aeadRate(ctx, newSM4GCM, c.bulk)
	if err != nil {
		return err
	}
	aesRate, err := aeadRate(ctx, newAESGCM, c.bulk)
	if err != nil {
		return err
	}
	tlcpConn, err := env.connRate(ctx, true, c.bulk)
	if err != nil {
		return fmt.Errorf("TLCP bulk: %w", err)
	}
	tlsConn, err := env.connRate(ctx, false, c.bulk)
	if err != nil {
		return fmt.Errorf("TLS bulk: %w", err)
	}

	w := stdout
	fmt.Fprintf(w, "== TLCP (crypto/tlcp) vs Go crypto/tls, GOMAXPROCS=%d, same run\n", c.procs)
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	base, baseMutual := series[0].rate(), series[1].rate()
	for _, s := range series {
		b, label := base, series[0].name
		if s == series[4] {
			b, label = baseMutual, series[1].name
		}
		fmt.Fprintf(tw, "  handshakes/s %s:\t%.0f\tvs %s %.0f\t= %.2fx\t(%d in %s)\n", s.name, s.rate(), label, b, s.rate()/b, s.n, s.elapsed.Round(time.Millisecond))
	}
	fmt.Fprintf(tw, "  bulk SM4-GCM (gmsm) 16 KiB seals:\t%.0f MB/s\tvs AES-128-GCM %.0f MB/s\t= %.2fx\t\n", sm4Rate, aesRate, sm4Rate/aesRate)
	fmt.Fprintf(tw, "  bulk TLCP conn ECC_SM4_GCM_SM3:\t%.0f MB/s\tvs TLS 1.3 AES_128_GCM %.0f MB/s\t= %.2fx\t\n", tlcpConn, tlsConn, tlcpConn/tlsConn)
	tw.Flush()
	fmt.Fprintf(w, "  goal: TLCP handshakes at least 0.5x TLS 1.3 (ECC %.2fx, ECDHE mutual %.2fx)\n", series[2].rate()/base, series[4].rate()/baseMutual)
	return nil
}

type series struct {
	name    string
	run     func() error
	n       int
	elapsed time.Duration
}

func (s *series) measure(d time.Duration) error {
	t0 := time.Now()
	for time.Since(t0) < d {
		if err := s.run(); err != nil {
			return err
		}
		s.n++
	}
	s.elapsed += time.Since(t0)
	return nil
}

func (s *series) rate() float64 {
	if s.elapsed <= 0 {
		return 0
	}
	return float64(s.n) / s.elapsed.Seconds()
}

type env struct {
	tlsServer, tlsClient, tlsServerMutual, tlsClientMutual *tls.Config
	tlcpServer, tlcpClient                                 *tlcp.Config
}

func newEnv() (*env, error) {
	ca, err := tlcptest.New("bench.zfaas", time.Now())
	if err != nil {
		return nil, err
	}
	srvEC, err := ca.IssueECDSA(tlcptest.Options{ID: "/gateway/bench", DNSNames: []string{"bench.test"}})
	if err != nil {
		return nil, err
	}
	cliEC, err := ca.IssueECDSA(tlcptest.Options{ID: "/ns/bench/fn/client"})
	if err != nil {
		return nil, err
	}
	srvSign, srvEnc, err := ca.IssuePair(tlcptest.Options{ID: "/gateway/bench", DNSNames: []string{"bench.test"}})
	if err != nil {
		return nil, err
	}
	cliSign, cliEnc, err := ca.IssuePair(tlcptest.Options{ID: "/ns/bench/fn/client"})
	if err != nil {
		return nil, err
	}
	e := &env{
		tlsServer: &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*srvEC}, SessionTicketsDisabled: true},
		tlsClient: &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: ca.ECPool, ServerName: "bench.test",
			CurvePreferences: []tls.CurveID{tls.X25519}},
		tlcpServer: &tlcp.Config{SignCertificate: srvSign, EncCertificate: srvEnc, ClientCAs: ca.Pool, ClientAuth: tlcp.VerifyClientCertIfGiven},
		tlcpClient: &tlcp.Config{RootCAs: ca.Pool, ServerName: "bench.test", SignCertificate: cliSign, EncCertificate: cliEnc},
	}
	e.tlsServerMutual = e.tlsServer.Clone()
	e.tlsServerMutual.ClientAuth = tls.RequireAndVerifyClientCert
	e.tlsServerMutual.ClientCAs = ca.ECPool
	e.tlsClientMutual = e.tlsClient.Clone()
	e.tlsClientMutual.Certificates = []tls.Certificate{*cliEC}
	return e, nil
}

// handshake runs both sides of one handshake over an in-memory pipe.
func handshake(client, server interface{ Handshake() error }, a, b net.Conn) error {
	errc := make(chan error, 1)
	go func() { errc <- server.Handshake() }()
	cerr := client.Handshake()
	if cerr != nil {
		a.Close()
	}
	serr := <-errc
	a.Close()
	b.Close()
	if cerr != nil {
		return cerr
	}
	return serr
}

func (e *env) tlsHandshake(mutual bool) func() error {
	return func() error {
		s, c := e.tlsServer, e.tlsClient
		if mutual {
			s, c = e.tlsServerMutual, e.tlsClientMutual
		}
		a, b := net.Pipe()
		return handshake(tls.Client(a, c), tls.Server(b, s), a, b)
	}
}

func (e *env) tlcpHandshake(suite uint16, mutual bool) func() error {
	s := e.tlcpServer.Clone()
	c := e.tlcpClient.Clone()
	c.CipherSuites = []uint16{suite}
	if !mutual {
		s.ClientAuth = tlcp.NoClientCert
	}
	return func() error {
		a, b := net.Pipe()
		cc, sc := tlcp.Client(a, c), tlcp.Server(b, s)
		if err := handshake(cc, sc, a, b); err != nil {
			return err
		}
		if got := cc.ConnectionState().CipherSuite; got != suite {
			return fmt.Errorf("negotiated %s, want %s", tlcp.CipherSuiteName(got), tlcp.CipherSuiteName(suite))
		}
		return nil
	}
}

func newSM4GCM() (cipher.AEAD, error) {
	b, err := sm4.NewCipher(make([]byte, 16))
	if err != nil {
		return nil, err
	}
	if g, ok := b.(interface {
		NewGCM(nonceSize, tagSize int) (cipher.AEAD, error)
	}); ok {
		return g.NewGCM(12, 16)
	}
	return cipher.NewGCM(b)
}

func newAESGCM() (cipher.AEAD, error) {
	b, err := aes.NewCipher(make([]byte, 16))
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// aeadRate seals 16 KiB records for d and returns MB/s.
func aeadRate(ctx context.Context, newAEAD func() (cipher.AEAD, error), d time.Duration) (float64, error) {
	g, err := newAEAD()
	if err != nil {
		return 0, err
	}
	buf := make([]byte, 16<<10)
	out := make([]byte, 0, len(buf)+g.Overhead())
	nonce := make([]byte, g.NonceSize())
	aad := make([]byte, 13)
	var n int
	t0 := time.Now()
	for time.Since(t0) < d && ctx.Err() == nil {
		for range 16 {
			out = g.Seal(out[:0], nonce, buf, aad)
			n += len(buf)
		}
	}
	return float64(n) / 1e6 / time.Since(t0).Seconds(), ctx.Err()
}

// connRate moves data one way over a TLCP (ECC_SM4_GCM_SM3) or TLS 1.3
// (AES_128_GCM) connection on an in-memory pipe for d; MB/s.
func (e *env) connRate(ctx context.Context, gm bool, d time.Duration) (float64, error) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	var w, r net.Conn
	if gm {
		c := e.tlcpClient.Clone()
		c.CipherSuites = []uint16{tlcp.ECC_SM4_GCM_SM3}
		s := e.tlcpServer.Clone()
		s.ClientAuth = tlcp.NoClientCert
		w, r = tlcp.Client(a, c), tlcp.Server(b, s)
	} else {
		c := e.tlsClient.Clone()
		c.CipherSuites = nil
		w, r = tls.Client(a, c), tls.Server(b, e.tlsServer)
	}
	done := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, r)
		done <- n
	}()
	buf := make([]byte, 64<<10)
	var sent int64
	t0 := time.Now()
	for time.Since(t0) < d && ctx.Err() == nil {
		n, err := w.Write(buf)
		sent += int64(n)
		if err != nil {
			return 0, err
		}
	}
	elapsed := time.Since(t0)
	w.Close()
	<-done
	return float64(sent) / 1e6 / elapsed.Seconds(), ctx.Err()
}
