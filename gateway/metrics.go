package gateway

import (
	"errors"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/zfaas/zfaas/api"
)

// Metrics are the gateway's Prometheus series. Labels are bounded by the
// number of deployed functions.
type Metrics struct {
	invocations  *prometheus.CounterVec
	errors       *prometheus.CounterVec
	throttles    *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	coldStarts   *prometheus.CounterVec
	coldDuration *prometheus.HistogramVec
	instances    *prometheus.GaugeVec
	stopped      *prometheus.CounterVec
	gbSeconds    *prometheus.CounterVec
	transport    *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		invocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zfaas_invocations_total", Help: "Invocations by function, version and outcome (ok, function_error, timeout, crashed, init_error, throttled, error).",
		}, []string{"function", "version", "outcome"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zfaas_invocation_errors_total", Help: "Failed invocations by function and error type.",
		}, []string{"function", "type"}),
		throttles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zfaas_throttles_total", Help: "Invocations refused with 429 because the function was at its concurrency limit.",
		}, []string{"function"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "zfaas_invocation_duration_seconds", Help: "Time the function spent on an invocation.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 14),
		}, []string{"function"}),
		coldStarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zfaas_cold_starts_total", Help: "Instances started for an invocation.",
		}, []string{"function"}),
		coldDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "zfaas_cold_start_duration_seconds", Help: "Time from sandbox start to the instance being ready.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}, []string{"function"}),
		instances: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "zfaas_instances", Help: "Live function instances (idle or busy).",
		}, []string{"function"}),
		stopped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zfaas_instances_stopped_total", Help: "Instances stopped, by reason (idle, timeout, crashed, exited, evicted, closed, canceled, error).",
		}, []string{"function", "reason"}),
		gbSeconds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zfaas_billed_gb_seconds_total", Help: "Metering: billed duration times configured memory, in GB-seconds.",
		}, []string{"function"}),
		transport: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zfaas_invocation_requests_by_transport_total", Help: "Invocation requests by the caller's secure transport (TLSv1.3, TLSv1.2, TLCP) and cipher suite.",
		}, []string{"protocol", "cipher_suite"}),
	}
	for _, c := range []prometheus.Collector{m.invocations, m.errors, m.throttles, m.duration, m.coldStarts, m.coldDuration, m.instances, m.stopped, m.gbSeconds, m.transport} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *Metrics) observe(v api.Version, res *api.InvocationResult, err error, _ time.Duration) {
	fn := v.Function
	ver := strconv.FormatInt(v.Version, 10)
	outcome := "ok"
	var ie *api.InitError
	switch {
	case err == nil && res.FuncErr != nil:
		outcome = "function_error"
		m.errors.WithLabelValues(fn, res.FuncErr.ErrorType).Inc()
	case err == nil:
	case errors.Is(err, api.ErrNoCapacity):
		outcome = "throttled"
		m.throttles.WithLabelValues(fn).Inc()
	case errors.Is(err, api.ErrTimeout):
		outcome = "timeout"
		m.errors.WithLabelValues(fn, "Timeout").Inc()
		// A timed-out invocation is billed for its whole timeout.
		m.gbSeconds.WithLabelValues(fn).Add(float64(v.Config.TimeoutSeconds) * float64(v.Config.MemoryMB) / 1024)
	case errors.Is(err, api.ErrCrashed):
		outcome = "crashed"
		m.errors.WithLabelValues(fn, "Runtime.ExitError").Inc()
	case errors.As(err, &ie):
		outcome = "init_error"
		m.errors.WithLabelValues(fn, ie.FuncErr.ErrorType).Inc()
	default:
		outcome = "error"
		m.errors.WithLabelValues(fn, "Platform").Inc()
	}
	m.invocations.WithLabelValues(fn, ver, outcome).Inc()
	if res == nil {
		return
	}
	m.duration.WithLabelValues(fn).Observe(res.Duration.Seconds())
	if res.ColdStart {
		m.coldStarts.WithLabelValues(fn).Inc()
	}
	ms := billed(res.Duration)
	m.gbSeconds.WithLabelValues(fn).Add(float64(ms) / 1000 * float64(v.Config.MemoryMB) / 1024)
}

// InstanceStarted records a cold start; the worker calls it.
func (m *Metrics) InstanceStarted(fn string, d time.Duration) {
	m.instances.WithLabelValues(fn).Inc()
	m.coldDuration.WithLabelValues(fn).Observe(d.Seconds())
}

// InstanceStopped records an instance going away; the worker calls it.
func (m *Metrics) InstanceStopped(fn, reason string) {
	m.instances.WithLabelValues(fn).Dec()
	m.stopped.WithLabelValues(fn, reason).Inc()
}
