package policyd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/open-policy-agent/opa/v1/ast"
)

// publishStallWait bounds how long the publisher waits for acknowledgements
// when too many publishes are outstanding before it counts a failure.
const publishStallWait = 10 * time.Second

// logItem is a decision waiting to be published, or a flush marker.
type logItem struct {
	rev      *revision // the revision that decided; nil when none was loaded
	d        Decision
	at       time.Time
	input    ast.Value // owned by the log; nil when unavailable
	errClass string
	flush    chan struct{}
}

// decisionLog publishes decisions asynchronously through a bounded queue:
// Decide never waits for the store, and drops (and counts) records when the
// queue is full.
type decisionLog struct {
	e    *Engine
	js   jetstream.JetStream
	q    chan logItem
	done chan struct{} // closed when run returns

	sent, dropped, failed atomic.Uint64
}

func newDecisionLog(ctx context.Context, e *Engine) (*decisionLog, error) {
	l := &decisionLog{e: e, q: make(chan logItem, e.cfg.DecisionLogQueue), done: make(chan struct{})}
	js, err := jetstream.New(e.cfg.Store.Conn(),
		jetstream.WithPublishAsyncMaxPending(512),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) {
			if l.failed.Add(1)%1000 == 1 {
				e.log.Warn("decision log publish failed", "err", err, "failed_total", l.failed.Load())
			}
		}))
	if err != nil {
		return nil, fmt.Errorf("policyd: decision log: %w", err)
	}
	l.js = js
	_, err = js.Stream(ctx, DecisionStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		_, err = js.CreateStream(ctx, jetstream.StreamConfig{
			Name:        DecisionStream,
			Description: "zfaas policy decisions, masked by zfaas.log.mask",
			Subjects:    []string{DecisionSubjectPrefix + ">"},
			Storage:     jetstream.FileStorage,
			Replicas:    e.cfg.Store.Replicas(),
			MaxAge:      e.cfg.DecisionLogMaxAge,
			MaxBytes:    e.cfg.DecisionLogMaxBytes,
			Discard:     jetstream.DiscardOld,
			Duplicates:  2 * time.Minute,
		})
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			err = nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("policyd: decision stream: %w", err)
	}
	return l, nil
}

// record queues a decision for the log; it never blocks.
func (e *Engine) record(rev *revision, d Decision, at time.Time, input ast.Value, errClass string) {
	if e.dlog == nil {
		return
	}
	select {
	case <-e.dlog.done:
		e.dlog.dropped.Add(1)
		return
	default:
	}
	select {
	case e.dlog.q <- logItem{rev: rev, d: d, at: at, input: input, errClass: errClass}:
	default:
		if e.dlog.dropped.Add(1)%1000 == 1 {
			e.log.Warn("decision log queue full: records dropped", "dropped_total", e.dlog.dropped.Load())
		}
	}
}

// LogStats are the decision log's counters since New.
type LogStats struct {
	// Sent records were handed to JetStream; Failed of them were not
	// acknowledged; Dropped never left the queue (full, or after Close).
	Sent, Failed, Dropped uint64
}

// LogStats returns the decision log's counters (zero when it is off).
func (e *Engine) LogStats() LogStats {
	if e.dlog == nil {
		return LogStats{}
	}
	return LogStats{Sent: e.dlog.sent.Load(), Failed: e.dlog.failed.Load(), Dropped: e.dlog.dropped.Load()}
}

// FlushDecisionLog waits until every decision made before the call is
// published and acknowledged, or ctx ends.
func (e *Engine) FlushDecisionLog(ctx context.Context) error {
	if e.dlog == nil {
		return nil
	}
	return e.dlog.Flush(ctx)
}

func (l *decisionLog) Flush(ctx context.Context) error {
	ch := make(chan struct{})
	select {
	case l.q <- logItem{flush: ch}:
	case <-l.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-ch:
		return nil
	case <-l.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *decisionLog) run(ctx context.Context) {
	defer close(l.done)
	for {
		select {
		case <-ctx.Done():
			return
		case it := <-l.q:
			if it.flush != nil {
				select {
				case <-l.js.PublishAsyncComplete():
				case <-ctx.Done():
				}
				close(it.flush)
				continue
			}
			rec := l.build(ctx, it)
			data, err := json.Marshal(rec)
			if err != nil {
				// Only possible for values JSON cannot hold; keep the
				// decision, drop the payload.
				rec.Input, rec.Result, rec.MaskFailed = nil, nil, true
				if data, err = json.Marshal(rec); err != nil {
					l.failed.Add(1)
					continue
				}
			}
			// Waiting here when too many publishes are unacknowledged is
			// fine: only the queue fills, never Decide.
			_, err = l.js.PublishAsync(DecisionSubjectPrefix+rec.Entry, data,
				jetstream.WithMsgID(rec.DecisionID), jetstream.WithStallWait(publishStallWait))
			if err != nil {
				if l.failed.Add(1)%1000 == 1 {
					l.e.log.Warn("decision log publish failed", "err", err, "failed_total", l.failed.Load())
				}
				continue
			}
			l.sent.Add(1)
		}
	}
}

// build turns a decision into its record, masked by the zfaas.log.mask
// policy of the revision that decided.
func (l *decisionLog) build(ctx context.Context, it logItem) DecisionRecord {
	e := l.e
	rec := DecisionRecord{
		DecisionID: it.d.ID,
		Time:       it.at.UTC(),
		Node:       e.cfg.Node,
		Revision:   it.d.Revision,
		Entry:      it.d.Entry,
		Query:      e.queries[it.d.Entry],
		Allow:      it.d.Allow,
		Reasons:    it.d.Reasons,
		Error:      it.errClass,
	}
	if it.rev == nil {
		return rec // no mask to apply: leave input and result out
	}
	rec.Digest = it.rev.info.Digest
	var input any
	if it.input != nil {
		var err error
		if input, err = ast.JSON(it.input); err != nil {
			rec.MaskFailed = true
			return rec
		}
	}
	rec.Caller = callerOf(input, e.cfg.CallerPointers)
	rec.TraceID, rec.SpanID = traceOf(input)
	result := deepCopy(it.d.Result)

	maskIn := map[string]any{
		"input":       input,
		"result":      result,
		"decision_id": rec.DecisionID,
		"path":        strings.ReplaceAll(strings.TrimPrefix(rec.Query, "data."), ".", "/"),
	}
	maskVal, err := ast.InterfaceToValue(maskIn)
	if err != nil {
		rec.MaskFailed = true
		return rec
	}
	ctx, cancel := context.WithTimeout(ctx, e.cfg.EvalTimeout)
	defer cancel()
	ms, defined, err := e.eval(ctx, it.rev, EntryMask, maskVal, it.at)
	if err != nil {
		rec.MaskFailed = true
		return rec
	}
	event := map[string]any{"input": input, "result": result}
	// The built-in mask always applies, whatever the revision says, so a
	// revision without (or with a weaker) zfaas.log.mask never logs
	// credentials; the revision's own mask adds to it.
	ops := builtinMask()
	if defined {
		extra, err := parseMask(ms)
		if err != nil {
			rec.MaskFailed = true
			return rec
		}
		ops = append(ops, extra...)
	}
	rec.Erased = applyMask(event, ops)
	rec.Input, rec.Result = event["input"], event["result"]
	return rec
}

// callerOf returns the first string found at one of the pointers.
func callerOf(input any, pointers []string) string {
	for _, p := range pointers {
		if s, ok := lookup(input, p).(string); ok && s != "" {
			return s
		}
	}
	return ""
}

var traceparentRE = regexp.MustCompile(`^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$`)

// traceOf reads a W3C traceparent header from input.request.headers (the
// gateway's input) or input.attributes.request.http.headers (Envoy's).
func traceOf(input any) (traceID, spanID string) {
	for _, p := range []string{"/request/headers", "/attributes/request/http/headers"} {
		h, ok := lookup(input, p).(map[string]any)
		if !ok {
			continue
		}
		for k, v := range h {
			if !strings.EqualFold(k, "traceparent") {
				continue
			}
			if arr, ok := v.([]any); ok && len(arr) > 0 {
				v = arr[0]
			}
			s, _ := v.(string)
			m := traceparentRE.FindStringSubmatch(strings.TrimSpace(strings.ToLower(s)))
			if m == nil || m[1] == "ff" || m[2] == strings.Repeat("0", 32) || m[3] == strings.Repeat("0", 16) {
				continue
			}
			return m[2], m[3]
		}
	}
	return "", ""
}

func deepCopy(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = deepCopy(e)
		}
		return m
	case []any:
		a := make([]any, len(x))
		for i, e := range x {
			a[i] = deepCopy(e)
		}
		return a
	}
	return v
}

// DecisionFilter selects decision-log records.
type DecisionFilter struct {
	// Since: records at or after it; zero means all retained.
	Since time.Time
	// DenyOnly: only denials.
	DenyOnly bool
	// Entry: only this entry point; "" means all.
	Entry string
	// Limit: stop after this many records (the oldest matching first);
	// 0 means no limit.
	Limit int
}

var entryRE = regexp.MustCompile(`^[a-z0-9_-]+$`)

// Decisions reads decision-log records matching f, oldest first, calling
// fn for each, until the records that existed when it started are read,
// Limit is reached or ctx ends. It reads the stream whether or not this
// engine publishes to it.
func (e *Engine) Decisions(ctx context.Context, f DecisionFilter, fn func(DecisionRecord)) error {
	subject := DecisionSubjectPrefix + ">"
	if f.Entry != "" {
		if !entryRE.MatchString(f.Entry) {
			return fmt.Errorf("%w %q", ErrUnknownEntry, f.Entry)
		}
		subject = DecisionSubjectPrefix + f.Entry
	}
	js := e.cfg.Store.JetStream()
	s, err := js.Stream(ctx, DecisionStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("policyd: decision stream: %w", err)
	}
	si, err := s.Info(ctx)
	if err != nil {
		return fmt.Errorf("policyd: decision stream: %w", err)
	}
	lastSeq := si.State.LastSeq
	cc := jetstream.OrderedConsumerConfig{
		FilterSubjects:    []string{subject},
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		InactiveThreshold: 30 * time.Second, // the server forgets it soon after a reader is gone
	}
	if !f.Since.IsZero() {
		since := f.Since
		cc.DeliverPolicy, cc.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	c, err := s.OrderedConsumer(ctx, cc)
	if err != nil {
		return fmt.Errorf("policyd: read decisions: %w", err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		return fmt.Errorf("policyd: read decisions: %w", err)
	}
	if info.NumPending == 0 {
		return nil
	}
	it, err := c.Messages(jetstream.PullMaxMessages(256))
	if err != nil {
		return fmt.Errorf("policyd: read decisions: %w", err)
	}
	defer it.Stop()
	n := 0
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("policyd: read decisions: %w", err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("policyd: read decisions: %w", err)
		}
		if meta.Sequence.Stream > lastSeq {
			return nil
		}
		var rec DecisionRecord
		if json.Unmarshal(msg.Data(), &rec) == nil && !(f.DenyOnly && rec.Allow) {
			fn(rec)
			if n++; f.Limit > 0 && n >= f.Limit {
				return nil
			}
		}
		if meta.NumPending == 0 || meta.Sequence.Stream == lastSeq {
			return nil
		}
	}
}
