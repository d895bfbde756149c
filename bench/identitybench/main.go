// Command identitybench measures how long a workload waits for its first
// X509-SVID from the zfaas Workload API (identity/workloadapi, backed by an
// identity/ca CA), beside a baseline measured in the same run: the same new
// Unix-socket gRPC connection carrying one gRPC health Check. bench/run.sh
// runs it; bench/README.md explains the figures.
//
// It needs no root: the server's attestor is the production CgroupAttestor
// with the instance placed in this process's own cgroup (as the package's
// tests do), or, without a cgroup v2 hierarchy, a stand-in that accepts
// this process's pid. Everything runs in this process on Unix sockets in a
// scratch directory that is removed at the end; every loop is bounded in
// count and time.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/zfaas/zfaas/identity"
	"github.com/zfaas/zfaas/identity/ca"
	"github.com/zfaas/zfaas/identity/workloadapi"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "identitybench:", err)
		os.Exit(1)
	}
}

type config struct {
	work     string        // parent of the scratch directory
	samples  int           // measured calls per series
	warmup   int           // unrecorded calls per series
	blocks   int           // alternating blocks the samples are split into
	duration time.Duration // no block starts after this
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("identitybench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	fs.StringVar(&c.work, "work", "", "where to create the scratch directory (default: the system temporary directory; keep it short, it holds Unix sockets)")
	fs.IntVar(&c.samples, "samples", 2000, "measured calls of each series (go-spiffe fetch, generated-client fetch, health check)")
	fs.IntVar(&c.warmup, "warmup", 50, "unrecorded calls of each series before measuring")
	fs.IntVar(&c.blocks, "blocks", 10, "alternating blocks the samples are split into, so all series see the same background load")
	fs.DurationVar(&c.duration, "duration", 8*time.Second, "no block starts after this (all series together)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if c.samples < 1 || c.samples > 1_000_000 || c.warmup < 0 || c.warmup > 10_000 || c.blocks < 1 || c.blocks > c.samples ||
		c.duration <= 0 || c.duration > time.Minute {
		return errors.New("want 1 <= -samples <= 1e6, 0 <= -warmup <= 1e4, 1 <= -blocks <= -samples, 0 < -duration <= 1m")
	}
	dir, err := os.MkdirTemp(c.work, "identitybench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	fmt.Fprintln(stderr, "== identity: Workload API FetchX509SVID first response vs a gRPC health Check, new Unix-socket connection each")
	env, err := start(ctx, dir)
	if err != nil {
		return err
	}
	defer env.stop()
	fmt.Fprintf(stderr, "   attestor: %s\n", env.attestor)

	series := []*series{
		{name: "go-spiffe", call: env.fetchGoSpiffe},
		{name: "generated", call: env.fetchGenerated},
		{name: "health", call: env.healthCheck},
	}
	for _, s := range series {
		for range c.warmup {
			if _, err := s.call(ctx); err != nil {
				return fmt.Errorf("%s (warm-up): %w", s.name, err)
			}
		}
	}
	t0 := time.Now()
	per := (c.samples + c.blocks - 1) / c.blocks
	cut := false
	for blk := 0; blk < c.blocks; blk++ {
		if blk > 0 && time.Since(t0) >= c.duration {
			cut = true
			break
		}
		for i := range series {
			s := series[(blk+i)%len(series)] // rotate which series goes first
			for j := 0; j < per && len(s.lat) < c.samples; j++ {
				d, err := s.call(ctx)
				if err != nil {
					return fmt.Errorf("%s: %w", s.name, err)
				}
				s.lat = append(s.lat, d)
			}
		}
	}
	if cut {
		fmt.Fprintf(stderr, "   stopped after %s with %d samples per series (-duration %s)\n", time.Since(t0).Round(time.Millisecond), len(series[0].lat), c.duration)
	}
	report(stdout, env.attestor, series)
	return nil
}

type series struct {
	name string
	call func(context.Context) (time.Duration, error)
	lat  []time.Duration
}

// env is a CA, the zfaas Workload API server on an instance socket, and a
// plain gRPC server with the standard health service on another socket.
type env struct {
	want       spiffeid.ID
	wlAddr     string // unix:// address of the Workload API endpoint
	healthAddr string
	attestor   string
	stop       func()
}

func start(ctx context.Context, dir string) (*env, error) {
	td := spiffeid.RequireTrustDomainFromString("zfaas.local")
	id, err := identity.FunctionID(td, "acme", "billing")
	if err != nil {
		return nil, err
	}
	authority, err := ca.New(ctx, ca.Config{TrustDomain: td, Dir: filepath.Join(dir, "ca")})
	if err != nil {
		return nil, err
	}
	var stops []func()
	stop := func() {
		for _, f := range slices.Backward(stops) {
			f()
		}
	}
	stops = append(stops, func() { _ = authority.Close() })

	att, cgroupDir, desc := newAttestor()
	srv, err := workloadapi.New(workloadapi.Config{Issuer: authority, Attestor: att})
	if err != nil {
		stop()
		return nil, err
	}
	stops = append(stops, srv.Stop)
	wlPath := filepath.Join(dir, "wl.sock")
	l, err := workloadapi.ListenInstance(wlPath, workloadapi.Instance{Name: "billing-i1", ID: id, CgroupDir: cgroupDir, UID: -1, GID: -1})
	if err != nil {
		stop()
		return nil, err
	}
	go func() { _ = srv.Serve(l) }()

	hs := grpc.NewServer()
	healthpb.RegisterHealthServer(hs, health.NewServer()) // "" is SERVING
	stops = append(stops, hs.Stop)
	hPath := filepath.Join(dir, "health.sock")
	hl, err := net.Listen("unix", hPath)
	if err != nil {
		stop()
		return nil, err
	}
	go func() { _ = hs.Serve(hl) }()

	return &env{want: id, wlAddr: workloadapi.EndpointAddr(wlPath), healthAddr: "unix://" + hPath, attestor: desc, stop: stop}, nil
}

// newAttestor returns the production cgroup attestor with this process's
// own cgroup as the instance's (the root cgroup allowed only if that is
// where this process is), or a pid attestor where there is no cgroup v2.
func newAttestor() (workloadapi.Attestor, string, string) {
	mount, err := workloadapi.FindCgroup2Mount("/proc/self/mountinfo")
	if err == nil {
		own, err2 := workloadapi.ProcessCgroup("/proc", os.Getpid())
		if err2 == nil {
			return &workloadapi.CgroupAttestor{Mount: mount, InsecureAllowRootCgroup: own == "/"}, filepath.Join(mount, own),
				fmt.Sprintf("CgroupAttestor, instance cgroup = this process's (%s)", own)
		}
		err = err2
	}
	return pidAttestor{pid: int32(os.Getpid())}, "/",
		fmt.Sprintf("stand-in that accepts this process's pid (no usable cgroup v2: %v)", err)
}

// pidAttestor accepts callers on an instance endpoint whose SO_PEERCRED pid
// is this process. For this benchmark only.
type pidAttestor struct{ pid int32 }

func (a pidAttestor) Attest(ctx context.Context) (workloadapi.Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return workloadapi.Identity{}, fmt.Errorf("%w: no peer", workloadapi.ErrNotAttested)
	}
	info, ok := p.AuthInfo.(workloadapi.PeerInfo)
	if !ok || !info.HasInstance || info.PID != a.pid {
		return workloadapi.Identity{}, fmt.Errorf("%w: not this process", workloadapi.ErrNotAttested)
	}
	return workloadapi.Identity{ID: info.Instance.ID, Instance: info.Instance.Name}, nil
}

const callTimeout = 5 * time.Second

// fetchGoSpiffe times go-spiffe's workloadapi.New (it dials lazily) and
// FetchX509SVID, which opens the stream, reads the first response, parses
// the SVID and its key, and cancels the stream. Close is not timed.
func (e *env) fetchGoSpiffe(ctx context.Context) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	t0 := time.Now()
	c, err := spiffewl.New(ctx, spiffewl.WithAddr(e.wlAddr))
	if err != nil {
		return 0, err
	}
	defer c.Close()
	svid, err := c.FetchX509SVID(ctx)
	d := time.Since(t0)
	if err != nil {
		return 0, err
	}
	if svid.ID != e.want || len(svid.Certificates) == 0 || svid.PrivateKey == nil {
		return 0, fmt.Errorf("got svid %s with %d certificates, want %s", svid.ID, len(svid.Certificates), e.want)
	}
	return d, nil
}

// fetchGenerated times grpc.NewClient, the generated client's
// FetchX509SVID with the workload.spiffe.io header, and the first Recv: the
// same client code as the health baseline, no parsing.
func (e *env) fetchGenerated(ctx context.Context) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true"), callTimeout)
	defer cancel()
	t0 := time.Now()
	conn, err := grpc.NewClient(e.wlAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	stream, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		return 0, err
	}
	resp, err := stream.Recv()
	d := time.Since(t0)
	if err != nil {
		return 0, err
	}
	if len(resp.Svids) != 1 || resp.Svids[0].SpiffeId != e.want.String() || len(resp.Svids[0].X509Svid) == 0 || len(resp.Svids[0].X509SvidKey) == 0 {
		return 0, fmt.Errorf("unexpected response with %d svids", len(resp.Svids))
	}
	return d, nil
}

// healthCheck is the baseline: grpc.NewClient and one unary health Check.
func (e *env) healthCheck(ctx context.Context) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	t0 := time.Now()
	conn, err := grpc.NewClient(e.healthAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	d := time.Since(t0)
	if err != nil {
		return 0, err
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return 0, fmt.Errorf("health status %s", resp.GetStatus())
	}
	return d, nil
}

// percentile returns the nearest-rank p-th percentile (0 < p <= 100) of
// sorted durations, or 0 when there are none.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(rank, 0), len(sorted)-1)]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond)) }

func ratio(a, b time.Duration) string {
	if b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", float64(a)/float64(b))
}

func report(w io.Writer, attestor string, ss []*series) {
	by := map[string][]time.Duration{}
	for _, s := range ss {
		by[s.name] = slices.Sorted(slices.Values(s.lat))
	}
	base := by["health"]
	fmt.Fprintf(w, "\nzfaas identity bench: %d CPUs, %s/%s, %s; ratio = zfaas / baseline, both measured in this run\n",
		runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())
	fmt.Fprintf(w, "\nWorkload API first response: new Unix-socket connection + FetchX509SVID stream + first response (attest, new P-256 key, mint)\nvs new Unix-socket connection + one unary grpc.health.v1 Check; attestor: %s\n", attestor)
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	for _, row := range []struct{ name, label string }{{"go-spiffe", "go-spiffe client"}, {"generated", "generated gRPC client"}} {
		for _, q := range []float64{50, 99} {
			z, b := percentile(by[row.name], q), percentile(base, q)
			fmt.Fprintf(tw, "  FetchX509SVID p%.0f, %s:\t%s\tvs health Check %s\t= %s\n", q, row.label, ms(z), ms(b), ratio(z, b))
		}
	}
	tw.Flush()
	fmt.Fprintln(w, "Samples:")
	for _, s := range ss {
		l := by[s.name]
		if len(l) == 0 {
			continue
		}
		fmt.Fprintf(w, "  %s: n=%d min=%s p50=%s p99=%s max=%s\n", s.name, len(l), ms(l[0]), ms(percentile(l, 50)), ms(percentile(l, 99)), ms(l[len(l)-1]))
	}
}
