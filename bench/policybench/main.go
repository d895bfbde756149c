// Command policybench measures the zfaas policy engine (policyd), each figure
// beside a baseline measured in the same run: the latency of an invoke
// decision in process (policyd.Engine.Decide with the shipped policies)
// against the same policy served by upstream OPA's REST API (`opa run
// --server` on 127.0.0.1), and the time from a push until the new revision
// decides against the time to compile and prepare the same policy with
// rego.PrepareForEval. bench/run.sh runs it; bench/README.md explains every
// figure.
//
// It only talks to 127.0.0.1, every loop is bounded in count and time, it
// kills the OPA server it started (which also dies with it, by
// PR_SET_PDEATHSIG) and removes its scratch directory.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"syscall"
	"text/tabwriter"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "policybench:", err)
		os.Exit(1)
	}
}

// config is what the flags set.
type config struct {
	opa       string        // upstream OPA binary
	policies  string        // the policies/ directory OPA loads
	work      string        // parent of the scratch directory
	decisions int           // measured decisions of the headline input, per engine
	others    int           // measured decisions of each other input, per engine
	duration  time.Duration // time cap of the measured decisions of one input, both engines
	warmup    int           // unrecorded decisions before each run
	pushes    int           // measured pushes (and baseline compilations)
	quiet     time.Duration // decision-rate window with no push
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("policybench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	fs.StringVar(&c.opa, "opa", "opa", "upstream OPA binary (bench/run.sh builds it with `go tool -n opa`)")
	fs.StringVar(&c.policies, "policies", "policies", "the policy repo directory, loaded by `opa run` (policies.FS embeds the same files)")
	fs.StringVar(&c.work, "work", "", "where to create the scratch directory (default: the system temporary directory)")
	fs.IntVar(&c.decisions, "decisions", 20000, "measured decisions of the headline input (same-tenant function), for policyd and for OPA alike")
	fs.IntVar(&c.others, "other-decisions", 5000, "measured decisions of each other input, for policyd and for OPA alike")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "time cap of the measured decisions of one input, policyd and OPA together (checked between blocks)")
	fs.IntVar(&c.warmup, "warmup", 1000, "unrecorded decisions before each measured run")
	fs.IntVar(&c.pushes, "pushes", 5, "measured pushes, and as many baseline compilations")
	fs.DurationVar(&c.quiet, "quiet", time.Second, "window for the decision rate with no push (baseline of the rate during pushes)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if c.decisions < 1 || c.decisions > 1_000_000 || c.others < 1 || c.others > 1_000_000 || c.duration <= 0 || c.duration > time.Minute ||
		c.warmup < 0 || c.warmup > 100_000 || c.pushes < 1 || c.pushes > 50 || c.quiet <= 0 || c.quiet > 10*time.Second {
		return errors.New("want 1 <= -decisions, -other-decisions <= 1e6, 0 < -duration <= 1m, 0 <= -warmup <= 1e5, 1 <= -pushes <= 50, 0 < -quiet <= 10s")
	}
	opa, err := exec.LookPath(c.opa)
	if err != nil {
		return fmt.Errorf("the OPA binary is needed for the REST baseline: %w", err)
	}
	c.opa = opa
	if _, err := os.Stat(filepath.Join(c.policies, "zfaas", "config", "data.json")); err != nil {
		return fmt.Errorf("-policies %q is not the policy repo: %w", c.policies, err)
	}
	dir, err := os.MkdirTemp(c.work, "policybench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	fmt.Fprintln(stderr, "== policy decisions: policyd in process vs upstream OPA REST, closed loop, one at a time")
	dec, err := decisionBench(ctx, c, dir, stderr)
	if err != nil {
		return err
	}
	fmt.Fprintln(stderr, "== policy swap: push to deciding, vs rego PrepareForEval of the same policy")
	sw, err := swapBench(ctx, c, dir, stderr)
	if err != nil {
		return err
	}
	report(stdout, dec, sw)
	return nil
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

// ms formats a duration in milliseconds with a precision that suits it.
func ms(d time.Duration) string {
	f := float64(d) / float64(time.Millisecond)
	switch {
	case f < 10:
		return fmt.Sprintf("%.3f ms", f)
	case f < 100:
		return fmt.Sprintf("%.1f ms", f)
	}
	return fmt.Sprintf("%.0f ms", f)
}

func ratio(a, b float64) string {
	if b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

func summary(d []time.Duration) string {
	if len(d) == 0 {
		return "no samples"
	}
	s := slices.Sorted(slices.Values(d))
	return fmt.Sprintf("n=%d min=%s p50=%s max=%s", len(s), ms(s[0]), ms(percentile(s, 50)), ms(s[len(s)-1]))
}

func p50(d []time.Duration) time.Duration {
	return percentile(slices.Sorted(slices.Values(d)), 50)
}

// report prints the results table.
func report(w io.Writer, dec []decisionCase, sw swapResult) {
	fmt.Fprintf(w, "\nzfaas policy bench: %d CPUs, %s/%s, %s; ratio = zfaas / baseline, both measured in this run\n",
		runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	fmt.Fprintf(tw, "\nInvoke decision latency (data.zfaas.invoke.decision, shipped policies, one at a time; policyd = Engine.Decide in process, opa = POST /v1/data/zfaas/invoke/decision to `opa run --server` over keep-alive loopback HTTP):\n")
	for _, d := range dec {
		p, o := d.policyd, d.opa
		for _, q := range []float64{50, 99} {
			pp, op := percentile(p.lat, q), percentile(o.lat, q)
			fmt.Fprintf(tw, "  decision p%.0f, %s:\tpolicyd %s\tvs opa REST %s\t= %s\n", q, d.name, ms(pp), ms(op), ratio(float64(pp), float64(op)))
		}
	}
	tw.Flush()

	fmt.Fprintf(tw, "\nPolicy swap, p50 of %d pushes of the shipped policies (push = PushFS: bundle, compile, prepare, run the tests, store, activate):\n", len(sw.local))
	base := p50(sw.baseline)
	fmt.Fprintf(tw, "  swap p50, push to deciding on the pushing engine:\tpolicyd %s\tvs rego PrepareForEval %s\t= %s\n", ms(p50(sw.local)), ms(base), ratio(float64(p50(sw.local)), float64(base)))
	fmt.Fprintf(tw, "  swap p50, push to deciding on a second engine:\tpolicyd %s\tvs rego PrepareForEval %s\t= %s\n", ms(p50(sw.remote)), ms(base), ratio(float64(p50(sw.remote)), float64(base)))
	q, l := sw.quiet, sw.loaded
	fmt.Fprintf(tw, "  decisions/s on the second engine while pushes happen:\t%.0f/s\tvs %.0f/s with no push\t= %s\n", l.rate(), q.rate(), ratio(l.rate(), q.rate()))
	fmt.Fprintf(tw, "  decision p99 on the second engine while pushes happen:\t%s\tvs %s with no push\t= %s\n", ms(percentile(l.lat, 99)), ms(percentile(q.lat, 99)), ratio(float64(percentile(l.lat, 99)), float64(percentile(q.lat, 99))))
	tw.Flush()
	fmt.Fprintf(w, "  (while pushing: %d pushes, %d decisions, %d failed or denied, %d revisions served, slowest decision %s)\n",
		len(sw.loadedSwaps), len(l.lat), l.failed, l.revisions, ms(l.max()))

	fmt.Fprintln(w, "\nSamples:")
	for _, d := range dec {
		fmt.Fprintf(w, "  %s: policyd %s | opa %s\n", d.name, d.policyd, d.opa)
	}
	fmt.Fprintf(w, "  push to deciding, pushing engine: %s\n", summary(sw.local))
	fmt.Fprintf(w, "  push to deciding, second engine:  %s\n", summary(sw.remote))
	fmt.Fprintf(w, "  push to deciding, second engine, under decision load: %s\n", summary(sw.loadedSwaps))
	fmt.Fprintf(w, "  rego PrepareForEval (baseline):   %s\n", summary(sw.baseline))
	fmt.Fprintf(w, "  of a push: BuildBundleFS %s; policyd.Test (the tests Push runs) %s\n", summary(sw.bundle), summary(sw.tests))
}
