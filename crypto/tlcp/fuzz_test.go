package tlcp

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"
)

// Fuzz targets for the record layer and the handshake parsers. Run each
// for a bounded time, e.g.
//
//	go test ./crypto/tlcp -run '^$' -fuzz '^FuzzRecordLayer$' -fuzztime 10s
//
// The seed corpus in testdata/fuzz/ holds real flights recorded from
// handshakes of this package (TestWriteFuzzCorpus with ZFAAS_WRITE_CORPUS=1
// rewrites it).

// scriptConn is a net.Conn whose reads come from a fixed input and whose
// writes are recorded.
type scriptConn struct {
	r   io.Reader
	out bytes.Buffer
}

func (c *scriptConn) Read(b []byte) (int, error)       { return c.r.Read(b) }
func (c *scriptConn) Write(b []byte) (int, error)      { return c.out.Write(b) }
func (c *scriptConn) Close() error                     { return nil }
func (c *scriptConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *scriptConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }

var (
	fuzzOnce sync.Once
	fuzzSrv  *Config
	fuzzCli  *Config
)

// fuzzConfigs makes a server and a client config with a throwaway SM2 CA.
func fuzzConfigs(tb testing.TB) (*Config, *Config) {
	tb.Helper()
	fuzzOnce.Do(func() {
		caKey, _ := sm2.GenerateKey(rand.Reader)
		caTmpl := certTemplate(1, true, 0)
		caDER, err := smx509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
		if err != nil {
			panic(err)
		}
		ca, _ := smx509.ParseCertificate(caDER)
		pool := smx509.NewCertPool()
		pool.AddCert(ca)
		issue := func(serial int64, usage x509.KeyUsage) *Certificate {
			k, _ := sm2.GenerateKey(rand.Reader)
			der, err := smx509.CreateCertificate(rand.Reader, certTemplate(serial, false, usage), ca, &k.PublicKey, caKey)
			if err != nil {
				panic(err)
			}
			return &Certificate{Certificate: [][]byte{der}, PrivateKey: k}
		}
		fuzzSrv = &Config{
			SignCertificate: issue(2, x509.KeyUsageDigitalSignature), EncCertificate: issue(3, encKeyUsage),
			ClientCAs: pool, ClientAuth: VerifyClientCertIfGiven,
		}
		fuzzCli = &Config{
			SignCertificate: issue(4, x509.KeyUsageDigitalSignature), EncCertificate: issue(5, encKeyUsage),
			RootCAs: pool, ServerName: "fuzz.test",
		}
	})
	return fuzzSrv, fuzzCli
}

func certTemplate(serial int64, ca bool, usage x509.KeyUsage) *x509.Certificate {
	t := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: fmt.Sprintf("fuzz %d", serial)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		BasicConstraintsValid: true,
		IsCA:                  ca,
		KeyUsage:              usage,
		DNSNames:              []string{"fuzz.test"},
	}
	if ca {
		t.KeyUsage = x509.KeyUsageCertSign
		t.DNSNames = nil
	}
	return t
}

// FuzzRecordLayer feeds arbitrary bytes to a server as the client's side
// of the connection: records, handshake messages, alerts, all of it.
func FuzzRecordLayer(f *testing.F) {
	srv, _ := fuzzConfigs(f)
	f.Add([]byte{0x16, 0x01, 0x01, 0x00, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		c := Server(&scriptConn{r: bytes.NewReader(data)}, srv)
		if err := c.Handshake(); err == nil {
			t.Fatal("handshake succeeded against scripted input")
		}
	})
}

// FuzzClientHandshake feeds arbitrary bytes to a client as the server's
// flights.
func FuzzClientHandshake(f *testing.F) {
	_, cli := fuzzConfigs(f)
	f.Add([]byte{0x16, 0x01, 0x01, 0x00, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		c := Client(&scriptConn{r: bytes.NewReader(data)}, cli)
		if err := c.Handshake(); err == nil {
			t.Fatal("handshake succeeded against scripted input")
		}
	})
}

// FuzzHandshakeMessages runs every handshake message parser on the input;
// what parses must marshal back to the same bytes where the encoding is
// canonical.
func FuzzHandshakeMessages(f *testing.F) {
	f.Add((&certificateMsg{certificates: [][]byte{{1, 2, 3}}}).marshal())
	f.Add((&certificateRequestMsg{certTypes: []byte{64}, cas: [][]byte{{0x30, 0}}}).marshal())
	f.Fuzz(func(t *testing.T, msg []byte) {
		var ch clientHelloMsg
		if ch.unmarshal(msg) {
			var again clientHelloMsg
			if !again.unmarshal(ch.marshal()) || again.serverName != ch.serverName || len(again.cipherSuites) != len(ch.cipherSuites) {
				t.Fatal("ClientHello does not survive a round trip")
			}
		}
		var sh serverHelloMsg
		if sh.unmarshal(msg) {
			var again serverHelloMsg
			if !again.unmarshal(sh.marshal()) || again.cipherSuite != sh.cipherSuite {
				t.Fatal("ServerHello does not survive a round trip")
			}
		}
		var cm certificateMsg
		if cm.unmarshal(msg) && !bytes.Equal(cm.marshal(), msg) {
			t.Fatal("Certificate does not round-trip")
		}
		var cr certificateRequestMsg
		if cr.unmarshal(msg) && !bytes.Equal(cr.marshal(), msg) {
			t.Fatal("CertificateRequest does not round-trip")
		}
		for _, ecdhe := range []bool{false, true} {
			var ske serverKeyExchangeMsg
			if ske.unmarshal(msg, ecdhe) {
				if !bytes.Equal(ske.marshal(), msg) {
					t.Fatal("ServerKeyExchange does not round-trip")
				}
				parseECDHParams(ske.params)
			}
		}
		for _, typ := range []uint8{typeClientKeyExchange, typeCertificateVerify} {
			var m opaque16Msg
			if m.unmarshal(msg, typ) {
				if !bytes.Equal(m.marshal(), msg) {
					t.Fatal("opaque message does not round-trip")
				}
				parseECDHParams(m.data)
			}
		}
		parseFinished(msg)
	})
}

// FuzzRecordOpen decrypts arbitrary fragments under fixed keys, for both
// protections, and checks seal/open round trips of arbitrary payloads.
func FuzzRecordOpen(f *testing.F) {
	f.Add(uint8(23), []byte("hello"), []byte{})
	f.Fuzz(func(t *testing.T, typ uint8, payload, frag []byte) {
		if len(payload) > maxPlaintext {
			payload = payload[:maxPlaintext]
		}
		for _, s := range suiteTable {
			k := deriveKeys(s, make([]byte, 48), make([]byte, 32), make([]byte, 32))
			p, err := newProtection(s, k.clientMAC, k.clientKey, k.clientIV)
			if err != nil {
				t.Fatal(err)
			}
			in := &halfConn{p: p}
			_, _ = in.open(typ, append([]byte(nil), frag...))

			p2, _ := newProtection(s, k.clientMAC, k.clientKey, k.clientIV)
			out, in2 := &halfConn{p: p}, &halfConn{p: p2}
			rec, err := out.seal(nil, typ, payload, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			got, err := in2.open(typ, rec[recordHeaderLen:])
			if err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("%s: seal/open round trip failed: %v", s.name, err)
			}
		}
	})
}

// recordingConn records what a real peer sent.
type recordingConn struct {
	net.Conn
	got bytes.Buffer
}

func (c *recordingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.got.Write(b[:n])
	return n, err
}

// TestWriteFuzzCorpus records real handshakes (every suite) and writes the
// flights each side received as seeds. Run with ZFAAS_WRITE_CORPUS=1.
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("ZFAAS_WRITE_CORPUS") != "1" {
		t.Skip("set ZFAAS_WRITE_CORPUS=1 to rewrite testdata/fuzz")
	}
	srvCfg, cliCfg := fuzzConfigs(t)
	for _, s := range suiteTable {
		a, b := net.Pipe()
		ra, rb := &recordingConn{Conn: a}, &recordingConn{Conn: b}
		cli, srv := Client(ra, cliCfg.Clone()), Server(rb, srvCfg)
		cli.config.CipherSuites = []uint16{s.id}
		errc := make(chan error, 1)
		go func() { errc <- srv.Handshake() }()
		if err := cli.Handshake(); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		go func() { _, _ = srv.Write([]byte("application data")); srv.Close() }()
		_, _ = io.ReadAll(cli)
		a.Close()
		b.Close()
		writeSeed(t, "FuzzRecordLayer", s.name, rb.got.Bytes())
		writeSeed(t, "FuzzClientHandshake", s.name, ra.got.Bytes())
		// Split the server's input into handshake messages for the parser.
		msgs := rb.got.Bytes()
		for i := 0; len(msgs) >= recordHeaderLen; i++ {
			n := int(msgs[3])<<8 | int(msgs[4])
			if msgs[0] == recordHandshake && i < 3 && len(msgs) >= recordHeaderLen+n {
				writeSeed(t, "FuzzHandshakeMessages", fmt.Sprintf("%s-client-%d", s.name, i), msgs[recordHeaderLen:recordHeaderLen+n])
			}
			msgs = msgs[min(len(msgs), recordHeaderLen+n):]
		}
		srvMsgs := ra.got.Bytes()
		for i := 0; len(srvMsgs) >= recordHeaderLen && i < 8; i++ {
			n := int(srvMsgs[3])<<8 | int(srvMsgs[4])
			if srvMsgs[0] == recordHandshake && len(srvMsgs) >= recordHeaderLen+n {
				writeSeed(t, "FuzzHandshakeMessages", fmt.Sprintf("%s-server-%d", s.name, i), srvMsgs[recordHeaderLen:recordHeaderLen+n])
			}
			srvMsgs = srvMsgs[min(len(srvMsgs), recordHeaderLen+n):]
		}
	}
}

func writeSeed(t *testing.T, target, name string, data []byte) {
	t.Helper()
	dir := filepath.Join("testdata", "fuzz", target)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
	if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}
