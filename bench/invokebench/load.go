package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zfaas/zfaas/api"
)

// load describes one closed-loop run: conc workers, each sending its next
// request as soon as the previous answer was read, until requests were sent
// or duration passed, whichever comes first. Requests in flight at the
// deadline are completed, not cancelled: the worker discards an instance
// whose invocation was cancelled, and the next run would pay a cold start.
type load struct {
	url         string
	body        []byte
	contentType string
	conc        int
	requests    int
	duration    time.Duration
}

// loadResult is what one run measured. lat holds the latency of every
// successful request, sorted.
type loadResult struct {
	lat     []time.Duration
	errors  int
	colds   int // answers with X-Zfaas-Cold-Start: true (gateway only)
	elapsed time.Duration
	// firstErr describes the first failed request, if any.
	firstErr string
}

func (r loadResult) ok() int { return len(r.lat) }

// throughput is successful requests per second of wall time.
func (r loadResult) throughput() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(len(r.lat)) / r.elapsed.Seconds()
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

// newClient returns a keep-alive client for conc concurrent requests to one
// loopback host, ignoring proxy settings.
func newClient(conc int) *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			MaxIdleConns:        conc,
			MaxIdleConnsPerHost: conc,
			MaxConnsPerHost:     conc,
			IdleConnTimeout:     time.Minute,
			DisableCompression:  true,
			// The gateway's TLS (https URLs only); keep-alive amortizes the
			// handshake as it does for any long-lived client.
			TLSClientConfig: gatewayTLS,
		},
	}
}

// post sends one request and reads the whole answer; it returns the status,
// whether the gateway reported a cold start, and the body.
func post(ctx context.Context, c *http.Client, url, contentType string, body []byte) (int, bool, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, false, nil, err
	}
	req.Header.Set("Content-Type", contentType)
	resp, err := c.Do(req)
	if err != nil {
		return 0, false, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, false, nil, err
	}
	return resp.StatusCode, resp.Header.Get(api.HeaderColdStart) == "true", b, nil
}

// run performs the load with client c and returns the measurements.
func (l load) run(ctx context.Context, c *http.Client) loadResult {
	deadline := time.Now().Add(l.duration)
	lat := make([]time.Duration, l.requests)
	okAt := make([]bool, l.requests)
	var next, errs, colds atomic.Int64
	var errOnce sync.Once
	var firstErr string
	var wg sync.WaitGroup
	t0 := time.Now()
	for range l.conc {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(l.requests) || ctx.Err() != nil || time.Now().After(deadline) {
					return
				}
				s := time.Now()
				status, cold, body, err := post(ctx, c, l.url, l.contentType, l.body)
				d := time.Since(s)
				if err != nil || status != http.StatusOK {
					errs.Add(1)
					errOnce.Do(func() { firstErr = describe(status, body, err) })
					continue
				}
				if cold {
					colds.Add(1)
				}
				lat[i], okAt[i] = d, true
			}
		})
	}
	wg.Wait()
	res := loadResult{elapsed: time.Since(t0), errors: int(errs.Load()), colds: int(colds.Load()), firstErr: firstErr}
	for i, ok := range okAt {
		if ok {
			res.lat = append(res.lat, lat[i])
		}
	}
	slices.Sort(res.lat)
	return res
}

func (r loadResult) String() string {
	s := fmt.Sprintf("n=%d errors=%d p50=%s p99=%s %.0f req/s", r.ok(), r.errors, ms(percentile(r.lat, 50)), ms(percentile(r.lat, 99)), r.throughput())
	if r.firstErr != "" {
		s += " (first error: " + r.firstErr + ")"
	}
	return s
}

// describe summarises a failed request.
func describe(status int, body []byte, err error) string {
	if err != nil {
		return err.Error()
	}
	if len(body) > 200 {
		body = body[:200]
	}
	return fmt.Sprintf("status %d: %s", status, bytes.TrimSpace(body))
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
