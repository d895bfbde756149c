package audit

import "github.com/prometheus/client_golang/prometheus"

// registerMetrics exposes a Log's counters to Prometheus.
func registerMetrics(reg prometheus.Registerer, l *Log) error {
	if reg == nil {
		return nil
	}
	counter := func(name, help string, v func() uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "zfaas", Subsystem: "audit", Name: name, Help: help},
			func() float64 { return float64(v()) })
	}
	cs := []prometheus.Collector{
		counter("appended_total", "Audit records written to the store.", l.appended.Load),
		counter("dropped_total", "Audit records that never reached the store (queue full, closing, write failed for good).", l.dropped.Load),
		counter("conflicts_total", "Audit writes retried because another writer appended first.", l.conflicts.Load),
		counter("write_errors_total", "Failed audit store writes (retried).", l.errs.Load),
		counter("checkpoints_total", "Audit checkpoints signed by this writer.", l.checkpointsSigned.Load),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "zfaas", Subsystem: "audit", Name: "queue_length", Help: "Audit records waiting to be written."},
			func() float64 { return float64(len(l.q)) }),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
