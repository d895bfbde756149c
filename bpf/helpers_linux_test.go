//go:build linux

package bpf

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The test binary doubles as the client that runs inside an instance
// cgroup: started with agentEnv set, it reads one JSON command per line on
// stdin and answers one JSON line on stdout.
const agentEnv = "ZFAAS_BPF_TEST_AGENT"

func TestMain(m *testing.M) {
	if os.Getenv(agentEnv) == "1" {
		runAgent(os.Stdin, os.Stdout)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type agentCmd struct {
	Op       string   `json:"op"`
	Net      string   `json:"net,omitempty"`
	Addr     string   `json:"addr,omitempty"`
	SNI      string   `json:"sni,omitempty"`
	Chunks   []string `json:"chunks,omitempty"` // hex
	Family   int      `json:"family,omitempty"`
	Type     int      `json:"type,omitempty"`
	Proto    int      `json:"proto,omitempty"`
	Targets  []string `json:"targets,omitempty"`
	Duration int64    `json:"duration_ms,omitempty"`
}

type attempt struct {
	Target int    `json:"t"`
	Start  int64  `json:"s"` // CLOCK_MONOTONIC ns
	End    int64  `json:"e"`
	Err    string `json:"err,omitempty"`
}

type agentResult struct {
	Err      string    `json:"err,omitempty"` // errno name, or the error text when no errno
	PID      int       `json:"pid,omitempty"`
	Elapsed  int64     `json:"elapsed_ns,omitempty"`
	Attempts []attempt `json:"attempts,omitempty"`
}

func errName(err error) string {
	if err == nil {
		return ""
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		return unix.ErrnoName(en)
	}
	return err.Error()
}

func monoNow() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

func runAgent(in io.Reader, out io.Writer) {
	sc := bufio.NewScanner(in)
	enc := json.NewEncoder(out)
	for sc.Scan() {
		var c agentCmd
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			_ = enc.Encode(agentResult{Err: err.Error()})
			continue
		}
		start := time.Now()
		res := agentDo(c)
		res.Elapsed = int64(time.Since(start))
		_ = enc.Encode(res)
	}
}

func agentDo(c agentCmd) agentResult {
	d := net.Dialer{Timeout: 3 * time.Second}
	switch c.Op {
	case "pid":
		return agentResult{PID: os.Getpid()}
	case "connect":
		conn, err := d.Dial(c.Net, c.Addr)
		if err == nil {
			conn.Close()
		}
		return agentResult{Err: errName(err)}
	case "rawconnect":
		// connect(2) on an AF_INET6 socket, for IPv4-mapped addresses
		// (which the net package refuses to dial on tcp6).
		ap, err := netip.ParseAddrPort(c.Addr)
		if err != nil {
			return agentResult{Err: err.Error()}
		}
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM, 0)
		if err != nil {
			return agentResult{Err: errName(err)}
		}
		defer unix.Close(fd)
		err = unix.Connect(fd, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()})
		return agentResult{Err: errName(err)}
	case "sendto":
		// Unconnected UDP: sendto with an address.
		pc, err := net.ListenPacket(c.Net, "")
		if err != nil {
			return agentResult{Err: errName(err)}
		}
		defer pc.Close()
		ua, err := net.ResolveUDPAddr(c.Net, c.Addr)
		if err != nil {
			return agentResult{Err: err.Error()}
		}
		_, err = pc.WriteTo([]byte("ping"), ua)
		return agentResult{Err: errName(err)}
	case "socket":
		fd, err := unix.Socket(c.Family, c.Type, c.Proto)
		if err == nil {
			unix.Close(fd)
		}
		return agentResult{Err: errName(err)}
	case "tls":
		conn, err := d.Dial("tcp", c.Addr)
		if err != nil {
			return agentResult{Err: errName(err)}
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		tc := tls.Client(conn, &tls.Config{ServerName: c.SNI, InsecureSkipVerify: true})
		err = tc.Handshake()
		if err == nil {
			// One round trip through the server proves data flows.
			if _, err = tc.Write([]byte("x")); err == nil {
				_, err = io.ReadFull(tc, make([]byte, 1))
			}
		}
		return agentResult{Err: errName(err)}
	case "write":
		// Connect, then one write per chunk; the first failing write's errno.
		conn, err := d.Dial("tcp", c.Addr)
		if err != nil {
			return agentResult{Err: errName(err)}
		}
		defer conn.Close()
		for _, h := range c.Chunks {
			b, _ := hex.DecodeString(h)
			if _, err := conn.Write(b); err != nil {
				return agentResult{Err: errName(err)}
			}
		}
		return agentResult{}
	case "loop":
		// Connect to the targets in turn until the duration ends.
		var res agentResult
		deadline := time.Now().Add(time.Duration(c.Duration) * time.Millisecond)
		for i := 0; time.Now().Before(deadline) && i < 200000; i++ {
			t := i % len(c.Targets)
			a := attempt{Target: t, Start: monoNow()}
			conn, err := d.Dial("tcp", c.Targets[t])
			a.End = monoNow()
			if err == nil {
				conn.Close()
			}
			a.Err = errName(err)
			res.Attempts = append(res.Attempts, a)
		}
		return res
	}
	return agentResult{Err: "unknown op " + c.Op}
}

// testEnv is one enforcer on a private cgroup parent and pin directory.
type testEnv struct {
	t      *testing.T
	parent string
	pinDir string
	enf    *Enforcer
	n      int
}

// cgroup2Mount finds the cgroup v2 mount point, "" when none.
func cgroup2Mount() string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		for i, x := range f {
			if x == "-" && i+1 < len(f) && f[i+1] == "cgroup2" {
				return f[4]
			}
		}
	}
	return ""
}

// requireKernel skips t unless the host can run the enforcer for real.
func requireKernel(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads eBPF programs and creates cgroups")
	}
	mnt := cgroup2Mount()
	if mnt == "" {
		t.Skip("needs a cgroup v2 hierarchy (none mounted)")
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		t.Skip("needs kernel BTF (/sys/kernel/btf/vmlinux)")
	}
	return mnt
}

func randName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

func newTestEnv(t *testing.T, cfg Config) *testEnv {
	t.Helper()
	mnt := requireKernel(t)
	env := &testEnv{t: t, parent: filepath.Join(mnt, randName("zfaas-bpftest-")), pinDir: filepath.Join("/sys/fs/bpf", randName("zfaas-test-"))}
	if err := os.Mkdir(env.parent, 0o755); err != nil {
		t.Skipf("cannot create a cgroup under %s: %v", mnt, err)
	}
	t.Cleanup(func() {
		// Children first; the agents are gone by now (their cleanups ran).
		entries, _ := os.ReadDir(env.parent)
		for _, e := range entries {
			if e.IsDir() {
				_ = os.Remove(filepath.Join(env.parent, e.Name()))
			}
		}
		if err := os.Remove(env.parent); err != nil {
			t.Errorf("remove test cgroup: %v", err)
		}
	})
	cfg.PinDir = env.pinDir
	cfg.CgroupParent = env.parent
	// Registered first, so that it also runs after a failed Open.
	t.Cleanup(func() { _ = os.RemoveAll(env.pinDir) })
	enf, err := Open(cfg)
	if errors.Is(err, ErrUnsupported) {
		t.Skipf("egress enforcement unsupported here: %v", err)
	}
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	env.enf = enf
	t.Cleanup(func() {
		if env.enf != nil {
			if err := env.enf.Teardown(); err != nil {
				t.Errorf("Teardown: %v", err)
			}
		}
	})
	return env
}

// agent is a client process started directly inside an instance cgroup.
type agent struct {
	t     *testing.T
	cg    string
	id    uint64
	pid   int
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Scanner
	mu    sync.Mutex
	close sync.Once
}

// newAgent makes a new instance cgroup under the env's parent and starts
// an agent in it.
func (env *testEnv) newAgent() *agent {
	t := env.t
	t.Helper()
	env.n++
	cg := filepath.Join(env.parent, fmt.Sprintf("inst-%d", env.n))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatalf("create instance cgroup: %v", err)
	}
	return startAgent(t, cg)
}

func startAgent(t *testing.T, cg string) *agent {
	t.Helper()
	id, err := CgroupID(cg)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.Open(cg)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), agentEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd()), Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start agent in %s: %v", cg, err)
	}
	a := &agent{t: t, cg: cg, id: id, cmd: cmd, in: in, out: bufio.NewScanner(outR)}
	a.out.Buffer(make([]byte, 0, 1<<20), 64<<20)
	t.Cleanup(a.stop)
	a.pid = a.do(agentCmd{Op: "pid"}).PID
	return a
}

func (a *agent) stop() {
	a.close.Do(func() {
		a.in.Close()
		done := make(chan struct{})
		go func() { _ = a.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = a.cmd.Process.Kill()
			<-done
		}
	})
}

func (a *agent) do(c agentCmd) agentResult {
	a.t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	b, _ := json.Marshal(c)
	if _, err := a.in.Write(append(b, '\n')); err != nil {
		a.t.Fatalf("agent %s: %v", c.Op, err)
	}
	if !a.out.Scan() {
		a.t.Fatalf("agent %s: no answer: %v", c.Op, a.out.Err())
	}
	var r agentResult
	if err := json.Unmarshal(a.out.Bytes(), &r); err != nil {
		a.t.Fatalf("agent %s: %v", c.Op, err)
	}
	return r
}

// tcpServer accepts connections on addr ("127.0.0.1:0", "[::1]:0") and
// drains them until the test ends.
func tcpServer(t *testing.T, network, addr string) *net.TCPAddr {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("listen %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr)
}

// tlsServer answers TLS handshakes with a fresh self-signed certificate
// and echoes one byte.
func tlsServer(t *testing.T) *net.TCPAddr {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"allowed.test"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				b := make([]byte, 1)
				if _, err := io.ReadFull(c, b); err == nil {
					_, _ = c.Write(b)
				}
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr)
}

// clientHello builds a TLS 1.2-framed ClientHello record with the given
// server name ("" for none) and extra extensions (type, body).
func clientHello(sni string, extra ...[2]any) []byte {
	var ext []byte
	addExt := func(typ uint16, body []byte) {
		ext = binary.BigEndian.AppendUint16(ext, typ)
		ext = binary.BigEndian.AppendUint16(ext, uint16(len(body)))
		ext = append(ext, body...)
	}
	if sni != "" {
		var b []byte
		b = binary.BigEndian.AppendUint16(b, uint16(len(sni)+3))
		b = append(b, 0)
		b = binary.BigEndian.AppendUint16(b, uint16(len(sni)))
		b = append(b, sni...)
		addExt(0, b)
	}
	addExt(0x000a, []byte{0, 2, 0, 0x1d}) // supported_groups: x25519
	for _, x := range extra {
		addExt(x[0].(uint16), x[1].([]byte))
	}
	var body []byte
	body = append(body, 3, 3)                // legacy_version
	body = append(body, make([]byte, 32)...) // random
	body = append(body, 32)                  // session id
	body = append(body, make([]byte, 32)...) //
	body = append(body, 0, 2, 0x13, 0x01)    // cipher suites
	body = append(body, 1, 0)                // compression
	body = binary.BigEndian.AppendUint16(body, uint16(len(ext)))
	body = append(body, ext...)
	hs := []byte{1, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}
	hs = append(hs, body...)
	rec := []byte{0x16, 3, 1}
	rec = binary.BigEndian.AppendUint16(rec, uint16(len(hs)))
	return append(rec, hs...)
}

// nextEvent waits for the next deny event matching keep.
func nextEvent(t *testing.T, ch <-chan DenyEvent, keep func(DenyEvent) bool) DenyEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("event channel closed")
			}
			if keep(ev) {
				return ev
			}
		case <-ctx.Done():
			t.Fatal("no matching deny event within 5s")
		}
	}
}
