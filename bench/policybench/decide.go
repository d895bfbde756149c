package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/zfaas/zfaas/policies"
	"github.com/zfaas/zfaas/policyd"
	"github.com/zfaas/zfaas/store"
)

// invokeCase is one realistic input of data.zfaas.invoke.decision, in the
// shape docs/policy.md gives, with the decision the shipped policy makes.
type invokeCase struct {
	name  string
	allow bool
	input map[string]any
}

// request is what the gateway puts in input.request for an invocation.
var request = map[string]any{
	"protocol": "http",
	"method":   "POST",
	"path":     "/v1/functions/hello:live/invoke",
	"tls":      map[string]any{"protocol": "TLS1.3", "cipher_suite": "TLS_AES_128_GCM_SHA256"},
	"headers":  map[string]any{"content-type": "application/json"},
	"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
}

func invokeInput(caller, function map[string]any) map[string]any {
	return map[string]any{
		"caller":   caller,
		"function": function,
		"action":   "invoke",
		"request":  request,
		"time_ns":  int64(1767225600000000000),
	}
}

// cases: the first is the headline.
var cases = []invokeCase{
	{
		name:  "same-tenant function (allowed)",
		allow: true,
		input: invokeInput(
			map[string]any{"spiffe_id": "spiffe://zfaas.local/ns/acme/fn/billing", "authenticated": true, "auth_method": "x509", "kind": "function", "tenant": "acme", "name": "billing"},
			map[string]any{"tenant": "acme", "name": "hello", "version": 3, "qualifier": "live"}),
	},
	{
		name:  "admin user (allowed)",
		allow: true,
		input: invokeInput(
			map[string]any{"spiffe_id": "spiffe://zfaas.local/user/admin", "authenticated": true, "auth_method": "jwt", "kind": "user", "name": "admin"},
			map[string]any{"tenant": "globex", "name": "report", "version": 1, "qualifier": "$LATEST"}),
	},
	{
		name:  "anonymous (denied)",
		allow: false,
		input: invokeInput(
			map[string]any{"spiffe_id": "", "authenticated": false, "auth_method": "none", "kind": "anonymous"},
			map[string]any{"tenant": "acme", "name": "hello", "version": 3, "qualifier": "live"}),
	},
}

// runResult is one closed-loop run: the latency of every successful call,
// sorted.
type runResult struct {
	lat      []time.Duration
	failed   int
	firstErr string
	elapsed  time.Duration
}

func (r runResult) rate() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(len(r.lat)) / r.elapsed.Seconds()
}

func (r runResult) String() string {
	s := fmt.Sprintf("n=%d failed=%d p50=%s p99=%s max=%s %.0f/s", len(r.lat), r.failed,
		ms(percentile(r.lat, 50)), ms(percentile(r.lat, 99)), ms(r.max()), r.rate())
	if r.firstErr != "" {
		s += " (first error: " + r.firstErr + ")"
	}
	return s
}

func (r runResult) max() time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[len(r.lat)-1]
}

// sampler accumulates closed-loop calls of one target over several blocks.
type sampler struct {
	runResult
	limit time.Duration // hard cap of elapsed
}

// run calls once up to n times, one call at a time, stopping early when the
// target's elapsed time reaches its limit or ctx ends. It returns the
// number of calls made.
func (s *sampler) run(ctx context.Context, n int, once func() error) int {
	t0 := time.Now()
	deadline := t0.Add(s.limit - s.elapsed)
	calls := 0
	for ; calls < n && ctx.Err() == nil; calls++ {
		st := time.Now()
		if st.After(deadline) {
			break
		}
		err := once()
		d := time.Since(st)
		if err != nil {
			if s.failed == 0 {
				s.firstErr = err.Error()
			}
			s.failed++
			continue
		}
		s.lat = append(s.lat, d)
	}
	s.elapsed += time.Since(t0)
	return calls
}

// result returns the samples, sorted.
func (s *sampler) result() runResult {
	r := s.runResult
	slices.Sort(r.lat)
	return r
}

// blocks is the number of alternating policyd and OPA blocks a decision
// run is split into, so that both see the same background load.
const blocks = 10

// decisionCase is the measurement of one input on both engines.
type decisionCase struct {
	name         string
	policyd, opa runResult
	reasons      []string
}

func decisionBench(ctx context.Context, c config, dir string, stderr io.Writer) ([]decisionCase, error) {
	st, err := store.Open(ctx, store.Config{DataDir: filepath.Join(dir, "store-decide")})
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	defer st.Close()
	// As `zfaas up` serves the shipped policies before any push: revision 0
	// from policies.FS. The decision log is off, as it is in `opa run`.
	eng, err := policyd.New(ctx, policyd.Config{Store: st, Node: "bench", Default: policies.FS})
	if err != nil {
		return nil, fmt.Errorf("policyd: %w", err)
	}
	defer closeEngine(eng)

	srv, err := startOPA(ctx, c.opa, c.policies, dir)
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	fmt.Fprintf(stderr, "  opa %s serving %s on %s\n", srv.version, c.policies, srv.base)
	client := newClient()
	defer client.CloseIdleConnections()
	url := srv.base + "/v1/data/zfaas/invoke/decision"

	var out []decisionCase
	for i, tc := range cases {
		body, err := json.Marshal(map[string]any{"input": tc.input})
		if err != nil {
			return nil, err
		}
		decide := func() (policyd.Decision, error) {
			d, err := eng.Decide(ctx, policyd.EntryInvoke, tc.input)
			if err == nil && d.Allow != tc.allow {
				err = fmt.Errorf("allow=%v, want %v: %q", d.Allow, tc.allow, d.Reasons)
			}
			return d, err
		}
		ask := func() (opaDecision, error) {
			res, err := askOPA(ctx, client, url, body)
			if err == nil && res.Allow != tc.allow {
				err = fmt.Errorf("allow=%v, want %v: %q", res.Allow, tc.allow, res.Reasons)
			}
			return res, err
		}
		// Both must answer, and answer the same, before anything is timed.
		d, err := decide()
		if err != nil {
			return nil, fmt.Errorf("%s: policyd: %w", tc.name, err)
		}
		o, err := ask()
		if err != nil {
			return nil, fmt.Errorf("%s: opa: %w", tc.name, err)
		}
		if !slices.Equal(d.Reasons, o.Reasons) {
			return nil, fmt.Errorf("%s: policyd and opa disagree: reasons %q vs %q", tc.name, d.Reasons, o.Reasons)
		}

		dc := decisionCase{name: tc.name, reasons: d.Reasons}
		onceP := func() error { _, err := decide(); return err }
		onceO := func() error { _, err := ask(); return err }
		n := c.others
		if i == 0 {
			n = c.decisions
		}
		warm := sampler{limit: c.duration}
		warm.run(ctx, c.warmup, onceP)
		warm = sampler{limit: c.duration}
		warm.run(ctx, c.warmup, onceO)
		// Alternate blocks; OPA makes exactly as many calls as policyd did.
		// Past the time cap no block starts, so both keep the same count.
		sp, so := sampler{limit: c.duration}, sampler{limit: c.duration}
		done := 0
		for ; done < blocks && sp.elapsed+so.elapsed < c.duration; done++ {
			k := n/blocks + btoi(done < n%blocks)
			so.run(ctx, sp.run(ctx, k, onceP), onceO)
		}
		dc.policyd, dc.opa = sp.result(), so.result()
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		fmt.Fprintf(stderr, "  %-32s reasons %q\n", tc.name+":", dc.reasons)
		fmt.Fprintf(stderr, "  %-32s policyd %s\n", "", dc.policyd)
		fmt.Fprintf(stderr, "  %-32s opa     %s\n", "", dc.opa)
		if done < blocks {
			fmt.Fprintf(stderr, "  %-32s (stopped after %d of %d blocks at the %s time cap)\n", "", done, blocks, c.duration)
		}
		for _, r := range []runResult{dc.policyd, dc.opa} {
			if len(r.lat) == 0 {
				return nil, fmt.Errorf("%s: no successful decision (%s)", tc.name, r.firstErr)
			}
		}
		out = append(out, dc)
	}
	return out, nil
}

func closeEngine(e *policyd.Engine) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = e.Close(ctx)
}

// opaDecision is the result of data.zfaas.invoke.decision.
type opaDecision struct {
	Allow   bool     `json:"allow"`
	Reasons []string `json:"reasons"`
}

// askOPA posts one query and decodes the decision, as a client of OPA's
// REST API would.
func askOPA(ctx context.Context, c *http.Client, url string, body []byte) (opaDecision, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return opaDecision{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return opaDecision{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return opaDecision{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return opaDecision{}, fmt.Errorf("status %d: %s", resp.StatusCode, bytes.TrimSpace(raw[:min(len(raw), 200)]))
	}
	var out struct {
		Result *opaDecision `json:"result"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return opaDecision{}, err
	}
	if out.Result == nil {
		return opaDecision{}, errors.New("result is undefined")
	}
	return *out.Result, nil
}

// newClient returns a keep-alive client with one connection to a loopback
// host, ignoring proxy settings.
func newClient() *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			MaxIdleConns:        1,
			MaxIdleConnsPerHost: 1,
			MaxConnsPerHost:     1,
			IdleConnTimeout:     time.Minute,
			DisableCompression:  true,
		},
	}
}

// opaServer is a running `opa run --server`.
type opaServer struct {
	cmd     *exec.Cmd
	done    chan struct{}
	base    string // http://127.0.0.1:PORT
	version string
}

// startOPA starts upstream OPA as a server on a free 127.0.0.1 port with
// the policy directory loaded, and returns once /health answers 200. A lost
// race for the port is retried.
func startOPA(ctx context.Context, bin, policiesDir, dir string) (*opaServer, error) {
	version := "?"
	if out, err := exec.CommandContext(ctx, bin, "version").Output(); err == nil {
		if line, _, _ := bytes.Cut(out, []byte("\n")); len(line) > 0 {
			version = string(bytes.TrimPrefix(line, []byte("Version: ")))
		}
	}
	logPath := filepath.Join(dir, "opa.log")
	var lastErr error
	for range 3 {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		logf, err := os.Create(logPath)
		if err != nil {
			return nil, err
		}
		s := &opaServer{base: "http://127.0.0.1:" + strconv.Itoa(port), version: version, done: make(chan struct{})}
		// --skip-version-check: no request to GitHub, loopback only.
		// --log-level error: no access log line per request.
		s.cmd = exec.Command(bin, "run", "--server", "--addr", "127.0.0.1:"+strconv.Itoa(port),
			"--skip-version-check", "--log-level", "error", "--log-format", "text", policiesDir)
		s.cmd.Stdout, s.cmd.Stderr = logf, logf
		s.cmd.Env = os.Environ()
		setDeathSignal(s.cmd)
		if err := s.cmd.Start(); err != nil {
			logf.Close()
			return nil, fmt.Errorf("start opa: %w", err)
		}
		go func() { _ = s.cmd.Wait(); logf.Close(); close(s.done) }()
		if lastErr = s.waitReady(ctx, 30*time.Second); lastErr == nil {
			return s, nil
		}
		s.stop()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	log, _ := os.ReadFile(logPath)
	return nil, fmt.Errorf("opa server: %w; its log: %s", lastErr, bytes.TrimSpace(log[max(0, len(log)-2000):]))
}

func (s *opaServer) waitReady(ctx context.Context, limit time.Duration) error {
	c := newClient()
	defer c.CloseIdleConnections()
	for deadline := time.Now().Add(limit); ; {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.base+"/health", nil)
		if resp, err := c.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-s.done:
			return errors.New("opa exited before it was ready")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("opa was not ready within %s", limit)
		}
	}
}

// stop kills the server and reaps it. It may be called more than once.
func (s *opaServer) stop() {
	if s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
	}
	<-s.done
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
