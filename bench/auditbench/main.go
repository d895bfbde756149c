// Command auditbench measures the audit log (package audit) beside
// baselines measured in the same run, on one embedded NATS JetStream
// server in a scratch directory:
//
//   - append throughput: records appended with (*audit.Log).Append (queued,
//     batched, hash-chained, published with expected-last-sequence) until
//     Flush, against the same record bytes published as plain JetStream
//     messages to a plain stream, one synchronous publish each, and
//     pipelined with PublishAsync;
//   - AppendSync latency against one synchronous JetStream publish;
//   - the cost on a request path: a loopback HTTP handler that answers a
//     small request, with and without an audit.Append per request (a
//     stand-in for the gateway's invoke path until the gateway writes
//     invocation records; invokebench measures the real path then).
//
// bench/run.sh runs it; bench/README.md explains the figures. Everything
// runs in this process; the scratch directory is removed at the end and
// every loop is bounded in count and time.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/zfaas/zfaas/audit"
	"github.com/zfaas/zfaas/store"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "auditbench:", err)
		os.Exit(1)
	}
}

type config struct {
	work        string
	records     int
	syncRecords int
	duration    time.Duration
	concurrency int
	suite       string
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("auditbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	fs.StringVar(&c.work, "work", "", "where to create the scratch directory (default: the system temporary directory)")
	fs.IntVar(&c.records, "records", 20000, "records per throughput series")
	fs.IntVar(&c.syncRecords, "sync-records", 1000, "records per latency series (AppendSync, synchronous publish)")
	fs.DurationVar(&c.duration, "duration", 4*time.Second, "length of the request-path measurement (both series together)")
	fs.IntVar(&c.concurrency, "concurrency", 8, "concurrent clients on the request path")
	fs.StringVar(&c.suite, "suite", "standard", "audit suite: standard (SHA-256, ECDSA) or gm (SM3, SM2)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if c.records < 100 || c.records > 1_000_000 || c.syncRecords < 10 || c.syncRecords > 100_000 ||
		c.duration <= 0 || c.duration > time.Minute || c.concurrency < 1 || c.concurrency > 256 {
		return errors.New("want 100 <= -records <= 1e6, 10 <= -sync-records <= 1e5, 0 < -duration <= 1m, 1 <= -concurrency <= 256")
	}
	suite, err := audit.ParseSuite(c.suite)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp(c.work, "auditbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()

	st, err := store.Open(ctx, store.Config{DataDir: filepath.Join(dir, "nats"), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	defer st.Close()
	lg, err := audit.Open(ctx, audit.Config{Store: st, Suite: suite, KeyDir: filepath.Join(dir, "keys"), Node: "bench"})
	if err != nil {
		return err
	}
	defer lg.Close(context.WithoutCancel(ctx))
	js := st.JetStream()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "BENCH_PLAIN", Subjects: []string{"bench.plain"}, Storage: jetstream.FileStorage}); err != nil {
		return err
	}
	sample, err := lg.AppendSync(ctx, record(0))
	if err != nil {
		return err
	}
	line, err := audit.MarshalLine(&sample)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "== audit: %s suite, %d-byte records, %d per throughput series\n", suite, len(line), c.records)

	// Throughput.
	plainSync, err := timeN(c.records, func(int) error {
		_, err := js.Publish(ctx, "bench.plain", line)
		return err
	})
	if err != nil {
		return fmt.Errorf("plain publish: %w", err)
	}
	plainAsync, err := timeAsync(ctx, js, line, c.records)
	if err != nil {
		return fmt.Errorf("plain async publish: %w", err)
	}
	full := 0
	t0 := time.Now()
	for i := range c.records {
		for {
			err := lg.Append(record(i))
			if err == nil {
				break
			}
			if !errors.Is(err, audit.ErrQueueFull) {
				return err
			}
			full++
			time.Sleep(50 * time.Microsecond)
		}
	}
	if err := lg.Flush(ctx); err != nil {
		return err
	}
	appendDur := time.Since(t0)

	// Latency.
	var syncLat, pubLat []time.Duration
	for i := range c.syncRecords {
		t := time.Now()
		if _, err := js.Publish(ctx, "bench.plain", line); err != nil {
			return err
		}
		pubLat = append(pubLat, time.Since(t))
		t = time.Now()
		if _, err := lg.AppendSync(ctx, record(i)); err != nil {
			return err
		}
		syncLat = append(syncLat, time.Since(t))
	}

	// Request path.
	with, without, err := requestPath(ctx, lg, c)
	if err != nil {
		return err
	}
	st0 := lg.Stats()
	fmt.Fprintf(stderr, "   audit stats: %d appended, %d dropped (Append retried %d times on a full queue), %d checkpoints\n",
		st0.Appended, st0.Dropped, full, st0.Checkpoints)

	rate := func(n int, d time.Duration) float64 { return float64(n) / d.Seconds() }
	ar := rate(c.records, appendDur)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "== audit log (bench/auditbench)")
	fmt.Fprintln(tw, "figure\tzfaas audit\tbaseline\tbaseline value\tratio")
	fmt.Fprintf(tw, "append throughput (Append+Flush)\t%.0f rec/s\tJetStream publish, sync, 1 msg/record\t%.0f msg/s\t%.2f\n", ar, rate(c.records, plainSync), ar/rate(c.records, plainSync))
	fmt.Fprintf(tw, "append throughput (Append+Flush)\t%.0f rec/s\tJetStream PublishAsync, pipelined\t%.0f msg/s\t%.2f\n", ar, rate(c.records, plainAsync), ar/rate(c.records, plainAsync))
	sp, pp := pct(syncLat, 50), pct(pubLat, 50)
	fmt.Fprintf(tw, "AppendSync latency p50\t%s\tJetStream publish p50\t%s\t%.2f\n", sp, pp, float64(sp)/float64(pp))
	sp, pp = pct(syncLat, 99), pct(pubLat, 99)
	fmt.Fprintf(tw, "AppendSync latency p99\t%s\tJetStream publish p99\t%s\t%.2f\n", sp, pp, float64(sp)/float64(pp))
	fmt.Fprintf(tw, "request path with Append (c=%d)\t%.0f req/s\tsame handler without audit\t%.0f req/s\t%.2f\n", c.concurrency, with, without, with/without)
	return tw.Flush()
}

func record(i int) audit.Record {
	return audit.Record{
		Kind: audit.KindInvoke, Actor: "spiffe://zfaas.local/ns/acme/fn/caller", PolicyRevision: 7,
		TraceID: "4bf92f3577b34da6a3ce929d0e0e4736", DecisionID: "0d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6",
		Subject: "acme/hello:live", Action: "invoke", Outcome: audit.OutcomeSuccess,
		Details: map[string]any{"version": 3, "duration_ms": 2.5, "memory_mb": 128, "status": 200, "cold": i%100 == 0},
	}
}

func timeN(n int, fn func(int) error) (time.Duration, error) {
	t0 := time.Now()
	for i := range n {
		if err := fn(i); err != nil {
			return 0, err
		}
	}
	return time.Since(t0), nil
}

func timeAsync(ctx context.Context, js jetstream.JetStream, data []byte, n int) (time.Duration, error) {
	t0 := time.Now()
	for range n {
		if _, err := js.PublishAsync("bench.plain", data); err != nil {
			return 0, err
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return time.Since(t0), nil
}

func pct(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[(len(s)-1)*p/100].Round(time.Microsecond)
}

// requestPath serves a small JSON answer on loopback and measures requests
// per second with an audit.Append per request and without, in alternating
// blocks so both see the same background.
func requestPath(ctx context.Context, lg *audit.Log, c config) (with, without float64, err error) {
	var withAudit atomic.Bool
	var seq atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<16))
		if withAudit.Load() {
			_ = lg.Append(record(int(seq.Add(1)))) // a full queue drops and counts; never blocks
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(bytes.ToUpper(body))
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, 0, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	url := "http://" + ln.Addr().String() + "/"
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: c.concurrency}, Timeout: 10 * time.Second}
	const blocks = 6
	block := c.duration / blocks
	var nWith, nWithout int64
	var tWith, tWithout time.Duration
	for b := range blocks {
		on := b%2 == 1
		withAudit.Store(on)
		var n atomic.Int64
		var wg sync.WaitGroup
		var firstErr atomic.Pointer[error]
		end := time.Now().Add(block)
		t0 := time.Now()
		for range c.concurrency {
			wg.Go(func() {
				for time.Now().Before(end) && ctx.Err() == nil {
					resp, err := client.Post(url, "application/json", bytes.NewReader([]byte(`{"name":"zfaas"}`)))
					if err != nil {
						firstErr.CompareAndSwap(nil, &err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					n.Add(1)
				}
			})
		}
		wg.Wait()
		if e := firstErr.Load(); e != nil {
			return 0, 0, *e
		}
		if on {
			nWith, tWith = nWith+n.Load(), tWith+time.Since(t0)
		} else {
			nWithout, tWithout = nWithout+n.Load(), tWithout+time.Since(t0)
		}
	}
	if err := lg.Flush(ctx); err != nil {
		return 0, 0, err
	}
	return float64(nWith) / tWith.Seconds(), float64(nWithout) / tWithout.Seconds(), nil
}
