// Command egressbench measures what the eBPF egress enforcement (package
// bpf) costs a function instance, beside a baseline measured in the same
// run: connect() latency and a full TLS handshake (through the sk_msg SNI
// check) from a process inside an enforced instance cgroup vs the same
// client in a cgroup outside the enforced parent, and the time to apply a
// policy revision of 1,000 rules to one instance. bench/run.sh runs it;
// bench/README.md explains the figures.
//
// It needs root (it loads eBPF programs and creates cgroups). Everything
// runs on 127.0.0.1; the cgroups, the bpffs pins and the client processes
// it creates are removed at the end, and every loop is bounded in count
// and time.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/zfaas/zfaas/bpf"
)

// clientEnv makes the binary act as the measuring client.
const clientEnv = "ZFAAS_EGRESSBENCH_CLIENT"

func main() {
	if os.Getenv(clientEnv) == "1" {
		if err := client(os.Args[1:], os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "egressbench client:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "egressbench:", err)
		os.Exit(1)
	}
}

type config struct {
	samples int           // measured operations per series and block
	blocks  int           // alternating inside/outside blocks
	rules   int           // rules per applied revision
	applies int           // measured applies
	timeout time.Duration // the whole run
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("egressbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	fs.IntVar(&c.samples, "samples", 400, "measured connects (and handshakes) per series and block")
	fs.IntVar(&c.blocks, "blocks", 5, "alternating blocks inside and outside the enforced cgroup")
	fs.IntVar(&c.rules, "rules", 1000, "rules in each applied revision")
	fs.IntVar(&c.applies, "applies", 20, "measured revision applies")
	fs.DurationVar(&c.timeout, "timeout", 2*time.Minute, "give up after this")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if c.samples < 1 || c.samples > 100_000 || c.blocks < 1 || c.blocks > 100 || c.rules < 1 || c.rules > 100_000 ||
		c.applies < 1 || c.applies > 1000 {
		return errors.New("flag out of range")
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root: loads eBPF programs and creates cgroups")
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()

	mnt, err := cgroup2Mount()
	if err != nil {
		return err
	}
	suffix := randHex()
	base := filepath.Join(mnt, "zfaas-egressbench-"+suffix)
	parent := filepath.Join(base, "parent")
	inside := filepath.Join(parent, "inst")
	applyCg := filepath.Join(parent, "apply")
	outside := filepath.Join(base, "outside")
	for _, d := range []string{base, parent, inside, applyCg, outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("create cgroup: %w", err)
		}
	}
	defer func() {
		for _, d := range []string{outside, applyCg, inside, parent, base} {
			if err := os.Remove(d); err != nil {
				fmt.Fprintln(stderr, "egressbench: remove cgroup:", err)
			}
		}
	}()
	pinDir := filepath.Join("/sys/fs/bpf", "zfaas-egressbench-"+suffix)
	enf, err := bpf.Open(bpf.Config{PinDir: pinDir, CgroupParent: parent})
	if err != nil {
		return err
	}
	defer func() {
		if err := enf.Teardown(); err != nil {
			fmt.Fprintln(stderr, "egressbench: teardown:", err)
		}
	}()

	tcpAddr, stopTCP, err := tcpServer()
	if err != nil {
		return err
	}
	defer stopTCP()
	tlsAddr, stopTLS, err := tlsServer()
	if err != nil {
		return err
	}
	defer stopTLS()

	id, err := bpf.CgroupID(inside)
	if err != nil {
		return err
	}
	lo := netip.MustParseAddr("127.0.0.1")
	if err := enf.Apply(id, bpf.InstanceMeta{SPIFFEID: "spiffe://bench.zfaas/ns/bench/fn/egress", Revision: "bench"}, []bpf.Rule{
		{Prefix: netip.PrefixFrom(lo, 32), Port: tcpAddr.Port(), Protocol: bpf.TCP},
		{Prefix: netip.PrefixFrom(lo, 32), Port: tlsAddr.Port(), Protocol: bpf.TCP, SNI: []string{"bench.test", "*.bench.test"}},
	}); err != nil {
		return err
	}

	series := map[string][]time.Duration{}
	for b := range c.blocks {
		places := []struct{ name, cg string }{{"inside", inside}, {"outside", outside}}
		if b%2 == 1 { // alternate who goes first
			slices.Reverse(places)
		}
		for _, place := range places {
			for _, op := range []struct{ name, addr string }{{"connect", tcpAddr.String()}, {"tls", tlsAddr.String()}} {
				d, err := runClient(ctx, place.cg, op.name, op.addr, c.samples)
				if err != nil {
					return fmt.Errorf("%s %s: %w", op.name, place.name, err)
				}
				series[op.name+"/"+place.name] = append(series[op.name+"/"+place.name], d...)
			}
		}
	}

	applyID, err := bpf.CgroupID(applyCg)
	if err != nil {
		return err
	}
	small, big, err := applyTimes(enf, applyID, c)
	if err != nil {
		return err
	}

	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "== egress (eBPF): inside an enforced instance cgroup vs outside, same run, %d samples per series\n", c.samples*c.blocks)
	fmt.Fprintln(w, "figure\tinside p50\toutside p50\tratio\tinside p99\toutside p99")
	for _, op := range []struct{ key, label string }{{"connect", "connect() to 127.0.0.1"}, {"tls", "TLS 1.3 handshake (SNI checked)"}} {
		in, out := series[op.key+"/inside"], series[op.key+"/outside"]
		fmt.Fprintf(w, "%s\t%v\t%v\t%.2f\t%v\t%v\n", op.label, pct(in, 50), pct(out, 50),
			float64(pct(in, 50))/float64(max(pct(out, 50), 1)), pct(in, 99), pct(out, 99))
	}
	fmt.Fprintf(w, "apply a revision of %d rules (p50, max)\t%v\t%v\t\t\t\n", c.rules, pct(big, 50), slices.Max(big))
	fmt.Fprintf(w, "apply a revision of 1 rule (p50, max)\t%v\t%v\t\t\t\n", pct(small, 50), slices.Max(small))
	return w.Flush()
}

// applyTimes switches an instance between two revisions of c.rules rules
// (and of 1 rule) and returns how long each Apply took.
func applyTimes(enf *bpf.Enforcer, id uint64, c config) (small, big []time.Duration, err error) {
	revision := func(seed byte, n int) []bpf.Rule {
		rs := make([]bpf.Rule, 0, n)
		for i := range n {
			a := netip.AddrFrom4([4]byte{10, seed, byte(i >> 8), byte(i)})
			r := bpf.Rule{Prefix: netip.PrefixFrom(a, 32), Port: 443, Protocol: bpf.TCP}
			if i%4 == 0 {
				r.SNI = []string{"api" + strconv.Itoa(i%32) + ".bench.test"}
			}
			rs = append(rs, r)
		}
		return rs
	}
	meta := bpf.InstanceMeta{SPIFFEID: "spiffe://bench.zfaas/ns/bench/fn/apply"}
	for _, s := range []struct {
		n   int
		out *[]time.Duration
	}{{1, &small}, {c.rules, &big}} {
		revs := [2][]bpf.Rule{revision(1, s.n), revision(2, s.n)}
		for i := range c.applies + 2 { // the first two fill the maps
			meta.Revision = strconv.Itoa(i)
			start := time.Now()
			if err := enf.Apply(id, meta, revs[i%2]); err != nil {
				return nil, nil, err
			}
			if i >= 2 {
				*s.out = append(*s.out, time.Since(start))
			}
		}
	}
	return small, big, enf.Remove(id)
}

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(i-1, 0)].Round(100 * time.Nanosecond)
}

// runClient runs this binary as a client directly inside cgroup cg.
func runClient(ctx context.Context, cg, op, addr string, n int) ([]time.Duration, error) {
	dir, err := os.Open(cg)
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, self, op, addr, strconv.Itoa(n))
	cmd.Env = append(os.Environ(), clientEnv+"=1")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd()), Pdeathsig: syscall.SIGKILL}
	out, err := cmd.Output()
	if err != nil {
		return nil, err
	}
	var ns []int64
	if err := json.Unmarshal(out, &ns); err != nil {
		return nil, err
	}
	d := make([]time.Duration, len(ns))
	for i, v := range ns {
		d[i] = time.Duration(v)
	}
	return d, nil
}

// client measures n operations (after n/10 unrecorded) and prints their
// durations in nanoseconds as a JSON array.
func client(args []string, stdout io.Writer) error {
	if len(args) != 3 {
		return errors.New("usage: connect|tls ADDR N")
	}
	op, addr := args[0], args[1]
	n, err := strconv.Atoi(args[2])
	if err != nil || n < 1 {
		return fmt.Errorf("bad count %q", args[2])
	}
	var one func() error
	switch op {
	case "connect":
		one = func() error {
			c, err := net.DialTimeout("tcp4", addr, 3*time.Second)
			if err == nil {
				c.Close()
			}
			return err
		}
	case "tls":
		cfg := &tls.Config{ServerName: "bench.test", InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
		one = func() error {
			d := &net.Dialer{Timeout: 3 * time.Second}
			c, err := tls.DialWithDialer(d, "tcp4", addr, cfg)
			if err == nil {
				c.Close()
			}
			return err
		}
	default:
		return fmt.Errorf("unknown op %q", op)
	}
	out := make([]int64, 0, n)
	for i := range n + n/10 {
		start := time.Now()
		if err := one(); err != nil {
			return err
		}
		if i >= n/10 {
			out = append(out, int64(time.Since(start)))
		}
	}
	return json.NewEncoder(stdout).Encode(out)
}

func tcpServer() (netip.AddrPort, func(), error) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort(), func() { ln.Close() }, nil
}

func tlsServer() (netip.AddrPort, func(), error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench.test"},
		DNSNames: []string{"bench.test"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	ln, err := tls.Listen("tcp4", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				_ = c.(*tls.Conn).Handshake()
				c.Close()
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort(), func() { ln.Close() }, nil
}

func cgroup2Mount() (string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		for i, x := range f {
			if x == "-" && i+1 < len(f) && f[i+1] == "cgroup2" {
				return f[4], nil
			}
		}
	}
	return "", errors.New("no cgroup v2 hierarchy mounted")
}

func randHex() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
