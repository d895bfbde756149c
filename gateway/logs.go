package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/store"
)

const (
	logStream  = "ZFAAS_LOGS"
	logSubject = "zfaas.logs"
)

// LogStore keeps function output in a JetStream stream, one subject per
// function (zfaas.logs.<tenant>.<function>), bounded by age and size.
type LogStore struct {
	js      jetstream.JetStream
	log     *slog.Logger
	dropped atomic.Int64
}

func newLogStore(ctx context.Context, st *store.Store, retention time.Duration, log *slog.Logger) (*LogStore, error) {
	js := st.JetStream()
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        logStream,
		Description: "zfaas function output",
		Subjects:    []string{logSubject + ".>"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      retention,
		MaxBytes:    1 << 30,
		MaxMsgSize:  64 << 10,
		Replicas:    st.Replicas(),
	})
	if err != nil {
		return nil, fmt.Errorf("create log stream: %w", err)
	}
	return &LogStore{js: js, log: log}, nil
}

// Log publishes one record without waiting for the acknowledgement; when
// too many publishes are in flight the record is dropped and counted, so a
// chatty function can never stall invocations.
func (s *LogStore) Log(rec api.LogRecord) {
	raw, err := json.Marshal(rec)
	if err != nil {
		return
	}
	subj := logSubject + "." + rec.Tenant + "." + rec.Function
	if _, err := s.js.PublishAsync(subj, raw); err != nil {
		if n := s.dropped.Add(1); n == 1 || n%1000 == 0 {
			s.log.Warn("function log records dropped", "dropped", n, "err", err)
		}
	}
}

// handleLogs serves GET /v1/functions/{name}/logs?since=1h&follow=true as
// newline-delimited JSON records.
func (g *Gateway) handleLogs(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := g.authorizeControl(r, "read", name); err != nil {
		g.writeError(w, r, err)
		return
	}
	if _, err := g.reg.loadFunction(r.Context(), g.cfg.Tenant, name); err != nil {
		g.writeError(w, r, err)
		return
	}
	since := time.Hour
	if s := r.URL.Query().Get("since"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			g.writeError(w, r, errf(http.StatusBadRequest, CodeBadRequest, "since must be a positive duration such as 10m or 2h"))
			return
		}
		since = d
	}
	follow, _ := strconv.ParseBool(r.URL.Query().Get("follow"))
	start := g.cfg.Now().Add(-since)
	cons, err := g.logs.js.OrderedConsumer(r.Context(), logStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{logSubject + "." + g.cfg.Tenant + "." + name},
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
		OptStartTime:   &start,
	})
	if err != nil {
		g.writeError(w, r, fmt.Errorf("log consumer: %w", err))
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	info, err := cons.Info(r.Context())
	if err != nil || (info.NumPending == 0 && !follow) {
		return
	}
	for {
		wait := time.Second
		if !follow {
			wait = 2 * time.Second
		}
		msg, err := cons.Next(jetstream.FetchMaxWait(wait))
		if r.Context().Err() != nil {
			return
		}
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			return
		}
		if err != nil {
			if follow {
				continue // nothing new yet
			}
			return
		}
		_, _ = w.Write(append(msg.Data(), '\n'))
		if md, err := msg.Metadata(); err == nil && md.NumPending == 0 {
			if flusher != nil {
				flusher.Flush()
			}
			if !follow {
				return
			}
		}
	}
}
