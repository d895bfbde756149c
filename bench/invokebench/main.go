// Command invokebench measures what zfaas adds to an invocation, each figure
// beside a baseline measured in the same run: warm invokes through the
// gateway against the same HTTP-mode binary called directly, and cold starts
// against a bare fork/exec of the same code. bench/run.sh starts the
// platform (bin/zfaas up) and runs this program against it; bench/README.md
// explains every figure.
//
// It only talks to 127.0.0.1, every loop is bounded in count and time, and
// it stops every process it started (they also die with it, by
// PR_SET_PDEATHSIG). It never stops the platform: run.sh does.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/zfaas/zfaas/runtime/bootstrap"
)

// payload is the body of every invocation.
var payload = []byte(`{"name":"bench"}`)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "invokebench:", err)
		os.Exit(1)
	}
}

// bench holds what every phase needs.
type bench struct {
	gateway  string // https://127.0.0.1:PORT
	zfaas    string // the CLI
	examples string // build/examples
	work     string // scratch directory, removed by run.sh
	// clientConfig is the CLI config `zfaas up` wrote (admin SVID files).
	clientConfig string
	rtDir        string // runtime bootstraps for the bare Lambda baselines
	warmup       time.Duration
	gwClient     *http.Client
	deployed     map[string]bool
	procLog      io.Writer // output of the processes the benchmark starts
	stderr       io.Writer
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.stderr, "  "+format+"\n", args...)
}

// cli runs the zfaas CLI against the gateway.
func (b *bench) cli(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.zfaas, append(args, "--gateway", b.gateway)...)
	cmd.Env = append(os.Environ(), "ZFAAS_CLIENT_CONFIG="+b.clientConfig)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("zfaas %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func (b *bench) deploy(ctx context.Context, name, dir string) error {
	return b.cli(ctx, "fn", "deploy", name, "--dir", dir)
}

// warmRow is one concurrency level of the warm-invoke figures.
type warmRow struct {
	conc                int
	direct, echo, hello loadResult
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("invokebench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	gw := fs.String("gateway", "", "gateway URL of a running `zfaas up` (loopback only)")
	clientCfg := fs.String("client-config", "", "the client config `zfaas up --client-config` wrote: the administrator's SVID files (required)")
	zfaas := fs.String("zfaas", "bin/zfaas", "zfaas CLI used to deploy and delete functions")
	exDir := fs.String("examples", "build/examples", "built examples (make examples)")
	work := fs.String("work", "", "scratch directory (required; the caller removes it)")
	concs := fs.String("concurrency", "1,8", "comma-separated closed-loop concurrency levels")
	requests := fs.Int("requests", 200000, "request cap of each measured warm run")
	duration := fs.Duration("duration", 3*time.Second, "time cap of each measured warm run")
	warmup := fs.Duration("warmup", time.Second, "unrecorded warm-up before each warm run")
	k := fs.Int("cold", 10, "cold-start samples per example, for zfaas and for the bare baseline")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root: the zfaas process sandbox uses namespaces and cgroups (run it as root, e.g. sudo make bench)")
	}
	if *work == "" || *gw == "" || *clientCfg == "" {
		return errors.New("-gateway, -client-config and -work are required")
	}
	var err error
	if gatewayTLS, err = loadClientTLS(*clientCfg); err != nil {
		return err
	}
	if err := loopbackURL(*gw); err != nil {
		return err
	}
	levels, err := parseLevels(*concs)
	if err != nil {
		return err
	}
	if *requests < 1 || *duration <= 0 || *duration > time.Minute || *warmup < 0 || *warmup > time.Minute || *k < 1 || *k > 100 {
		return errors.New("want -requests >= 1, 0 < -duration <= 1m, 0 <= -warmup <= 1m, 1 <= -cold <= 100")
	}
	for _, p := range []string{*zfaas, python3, node} {
		if err := needExec(p); err != nil {
			return err
		}
	}
	for _, e := range examples {
		if _, err := os.Stat(filepath.Join(*exDir, e.name, "zfaas.yaml")); err != nil {
			return fmt.Errorf("example %s not built (make examples): %w", e.name, err)
		}
	}
	procLog, err := os.Create(filepath.Join(*work, "processes.log"))
	if err != nil {
		return err
	}
	defer procLog.Close()
	b := &bench{
		gateway: strings.TrimRight(*gw, "/"), zfaas: *zfaas, examples: *exDir, work: *work, clientConfig: *clientCfg,
		rtDir: filepath.Join(*work, "runtime"), warmup: *warmup,
		gwClient: newClient(1), deployed: map[string]bool{}, procLog: procLog, stderr: stderr,
	}
	defer b.gwClient.CloseIdleConnections()
	if err := bootstrap.WriteTo(b.rtDir); err != nil {
		return err
	}
	cold := map[string]*coldResult{}
	for _, e := range examples {
		cold[e.name] = &coldResult{}
	}
	echo, hello := examples[0], examples[1]

	fmt.Fprintln(stderr, "== deploying http-echo and hello through the CLI")
	for _, e := range []example{echo, hello} {
		if err := b.ensureDeployed(ctx, e, cold[e.name]); err != nil {
			return err
		}
	}

	fmt.Fprintln(stderr, "== warm invoke: closed loop, keep-alive")
	direct, stopDirect, err := b.startDirect(ctx)
	if err != nil {
		return err
	}
	var rows []warmRow
	for _, c := range levels {
		l := load{contentType: "application/json", body: payload, conc: c, requests: *requests, duration: *duration}
		row := warmRow{conc: c}
		steps := []struct {
			name, url, want string
			out             *loadResult
		}{
			{"http-echo direct", direct, `"method": "POST"`, &row.direct},
			{"http-echo via gateway", echo.invokeURL(b.gateway, echo.name), `"method": "POST"`, &row.echo},
			{"hello via gateway", hello.invokeURL(b.gateway, hello.name), "Hello, bench!", &row.hello},
		}
		for _, s := range steps {
			l.url = s.url
			if *s.out, err = b.measure(ctx, fmt.Sprintf("%s c=%d", s.name, c), l, s.want); err != nil {
				stopDirect()
				return err
			}
		}
		rows = append(rows, row)
	}
	stopDirect()

	for _, e := range examples {
		fmt.Fprintf(stderr, "== cold start: %s (%d samples each)\n", e.name, *k)
		res := cold[e.name]
		if err := b.platformCold(ctx, e, *k, res); err != nil {
			return err
		}
		b.logf("zfaas: %s", summary(res.platform))
		if err := b.bareCold(ctx, e, *k, res); err != nil {
			return err
		}
		b.logf("bare:  %s", summary(res.bare))
		if res.floor != nil {
			b.logf("interpreter %s: %s", strings.Join(e.floor[1:], " "), summary(res.floor))
		}
	}
	report(stdout, rows, cold)
	return nil
}

// measure checks one answer, warms up, then runs the measured load.
func (b *bench) measure(ctx context.Context, name string, l load, want string) (loadResult, error) {
	c := newClient(l.conc)
	defer c.CloseIdleConnections()
	status, _, body, err := post(ctx, c, l.url, l.contentType, l.body)
	if err != nil {
		return loadResult{}, fmt.Errorf("%s: %w", name, err)
	}
	if status != http.StatusOK || !bytes.Contains(body, []byte(want)) {
		return loadResult{}, fmt.Errorf("%s: got status %d body %q, want 200 and %q", name, status, body, want)
	}
	if b.warmup > 0 {
		w := l
		w.duration, w.requests = b.warmup, 1<<20
		if r := w.run(ctx, c); r.errors > 0 {
			b.logf("%s: warm-up: %s", name, r)
		}
	}
	r := l.run(ctx, c)
	b.logf("%-28s %s, cold starts during the run: %d", name+":", r, r.colds)
	if r.ok() == 0 {
		return r, fmt.Errorf("%s: no successful request", name)
	}
	return r, ctx.Err()
}

// startDirect starts the http-echo binary as a bare process with $PORT set
// and returns its URL once it answers.
func (b *bench) startDirect(ctx context.Context) (string, func(), error) {
	dir, err := filepath.Abs(filepath.Join(b.examples, "http-echo"))
	if err != nil {
		return "", nil, err
	}
	port, err := freePort()
	if err != nil {
		return "", nil, err
	}
	cmd := command([]string{filepath.Join(dir, "bootstrap")}, append(b.baseEnv(dir), "PORT="+strconv.Itoa(port)), dir, b.procLog)
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stopFn := func() { stop(cmd, 5*time.Second) }
	u := "http://127.0.0.1:" + strconv.Itoa(port) + "/"
	c := newClient(1)
	defer c.CloseIdleConnections()
	for deadline := time.Now().Add(10 * time.Second); ; {
		if status, _, _, err := post(ctx, c, u, "application/json", payload); err == nil && status == http.StatusOK {
			return u, stopFn, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			stopFn()
			return "", nil, errors.New("direct http-echo did not answer within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func loopbackURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" {
		return fmt.Errorf("-gateway %q: want https://127.0.0.1:PORT", s)
	}
	if ip := net.ParseIP(u.Hostname()); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("-gateway %q: only loopback addresses are benchmarked", s)
	}
	return nil
}

func parseLevels(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 256 {
			return nil, fmt.Errorf("-concurrency %q: want numbers in 1..256", s)
		}
		out = append(out, n)
	}
	return out, nil
}

func summary(sorted []time.Duration) string {
	if len(sorted) == 0 {
		return "no samples"
	}
	return fmt.Sprintf("n=%d min=%s p50=%s max=%s", len(sorted), ms(sorted[0]), ms(percentile(sorted, 50)), ms(sorted[len(sorted)-1]))
}

func ratio(a, b float64) string {
	if b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

// report prints the results table.
func report(w io.Writer, rows []warmRow, cold map[string]*coldResult) {
	fmt.Fprintf(w, "\nzfaas bench: %d CPUs, %s/%s, %s; ratio = zfaas / baseline, both measured in this run\n",
		runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	fmt.Fprintln(tw, "\nWarm invoke (closed loop, keep-alive, POST of 16 bytes of JSON; gateway = POST /function/http-echo/ or /v1/functions/hello/invoke):")
	for _, r := range rows {
		d, e, h := r.direct, r.echo, r.hello
		p50 := func(x loadResult) float64 { return float64(percentile(x.lat, 50)) }
		p99 := func(x loadResult) float64 { return float64(percentile(x.lat, 99)) }
		fmt.Fprintf(tw, "  warm invoke p50, http-echo, c=%d:\tgateway %s\tvs direct %s\t= %s\n", r.conc, ms(percentile(e.lat, 50)), ms(percentile(d.lat, 50)), ratio(p50(e), p50(d)))
		fmt.Fprintf(tw, "  warm invoke p99, http-echo, c=%d:\tgateway %s\tvs direct %s\t= %s\n", r.conc, ms(percentile(e.lat, 99)), ms(percentile(d.lat, 99)), ratio(p99(e), p99(d)))
		fmt.Fprintf(tw, "  warm throughput, http-echo, c=%d:\tgateway %.0f req/s\tvs direct %.0f req/s\t= %s\n", r.conc, e.throughput(), d.throughput(), ratio(e.throughput(), d.throughput()))
		fmt.Fprintf(tw, "  warm invoke p50, hello (Lambda), c=%d:\tgateway %s\tvs http-echo direct %s\t= %s\n", r.conc, ms(percentile(h.lat, 50)), ms(percentile(d.lat, 50)), ratio(p50(h), p50(d)))
		fmt.Fprintf(tw, "  warm invoke p99, hello (Lambda), c=%d:\tgateway %s\tvs http-echo direct %s\t= %s\n", r.conc, ms(percentile(h.lat, 99)), ms(percentile(d.lat, 99)), ratio(p99(h), p99(d)))
		fmt.Fprintf(tw, "  warm throughput, hello (Lambda), c=%d:\tgateway %.0f req/s\tvs http-echo direct %.0f req/s\t= %s\n", r.conc, h.throughput(), d.throughput(), ratio(h.throughput(), d.throughput()))
	}
	fmt.Fprintln(tw, "  (hello has no direct baseline: a Lambda-mode function only speaks the Runtime API, so it is set against the HTTP one)")
	tw.Flush()

	fmt.Fprintln(tw, "\nCold start, p50 (zfaas: first call of a freshly deployed function, package already unpacked, client-side latency):")
	bareName := map[string]string{
		"http-echo":    "bare fork/exec until first HTTP 200",
		"hello":        "bare fork/exec + Runtime API until first event answered",
		"python-hello": "bare python3 bootstrap.py until first event answered",
		"node-hello":   "bare node bootstrap.js until first event answered",
	}
	var floors, firsts []string
	for _, e := range examples {
		r := cold[e.name]
		zp, bp := percentile(r.platform, 50), percentile(r.bare, 50)
		fmt.Fprintf(tw, "  cold start p50, %s:\tzfaas %s\tvs %s %s\t= %s\n", e.name, ms(zp), bareName[e.name], ms(bp), ratio(float64(zp), float64(bp)))
		if r.floor != nil {
			floors = append(floors, fmt.Sprintf("%s %s: %s", filepath.Base(e.floor[0]), strings.Join(e.floor[1:], " "), ms(percentile(r.floor, 50))))
		}
		if r.first > 0 {
			firsts = append(firsts, fmt.Sprintf("%s %s (%s bare)", e.name, ms(r.first), ratio(float64(r.first), float64(bp))))
		}
	}
	fmt.Fprintf(tw, "  bare interpreter start p50 (floor): %s\n", strings.Join(floors, "; "))
	fmt.Fprintf(tw, "  first instance of a never-run package (n=1, adds fetch + unpack): %s\n", strings.Join(firsts, "; "))
	tw.Flush()

	fmt.Fprintln(w, "\nSamples:")
	for _, r := range rows {
		fmt.Fprintf(w, "  c=%d: direct %s | gateway http-echo %s (cold starts %d) | gateway hello %s (cold starts %d)\n", r.conc, r.direct, r.echo, r.echo.colds, r.hello, r.hello.colds)
	}
	for _, e := range examples {
		r := cold[e.name]
		fmt.Fprintf(w, "  cold %s: zfaas %s | bare %s\n", e.name, summary(r.platform), summary(r.bare))
	}
}
