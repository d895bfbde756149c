package audit

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Expired describes records removed by retention, as the details of the
// audit.expired record that announces them.
type Expired struct {
	FirstSeq uint64 // first record removed
	LastSeq  uint64 // last record removed
	LastHash string // hash of LastSeq: the Prev of the first record kept
	Before   time.Time
}

// Expire removes the records older than Config.Retention, if any. It
// first appends (and waits for) an audit.expired record whose details
// give the removed range ("first_seq", "last_seq"), the hash of the last
// removed record ("last_hash", which the first remaining record's Prev
// must equal, so the remaining chain still verifies), the cutoff
// ("before") and the retention ("max_age"); only then does it purge. The
// newest stored batch is never removed, so the chain's head survives. If
// the process stops between the two steps, the next run records the same
// range again: expiry is announced at least once, never silently.
// Expire returns the number of records removed.
func (l *Log) Expire(ctx context.Context) (uint64, error) {
	if l.cfg.Retention <= 0 {
		return 0, nil
	}
	cutoff := l.cfg.Now().Add(-l.cfg.Retention)
	info, err := l.recs.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("audit: stream info: %w", err)
	}
	if info.State.Msgs < 2 {
		return 0, nil
	}
	var ex Expired
	var purgeTo uint64 // first stream sequence to keep
	err = scan(ctx, l.recs, jetstream.ConsumerConfig{FilterSubject: Subject, DeliverPolicy: jetstream.DeliverAllPolicy, HeadersOnly: true},
		info.State.LastSeq-1, func(m jetstream.Msg) (bool, error) {
			h := m.Headers()
			t, err := time.Parse(time.RFC3339Nano, h.Get(hdrTime))
			if err != nil {
				return false, fmt.Errorf("audit: stored batch without a time: %w", err)
			}
			if !t.Before(cutoff) {
				return false, nil
			}
			first, err1 := strconv.ParseUint(h.Get(hdrFirst), 10, 64)
			last, err2 := strconv.ParseUint(h.Get(hdrLast), 10, 64)
			if err1 != nil || err2 != nil {
				return false, fmt.Errorf("audit: stored batch without sequence headers")
			}
			md, err := m.Metadata()
			if err != nil {
				return false, err
			}
			if ex.FirstSeq == 0 {
				ex.FirstSeq = first
			}
			ex.LastSeq, ex.LastHash = last, h.Get(hdrHead)
			purgeTo = md.Sequence.Stream + 1
			return true, nil
		})
	if err != nil {
		return 0, err
	}
	if purgeTo == 0 {
		return 0, nil
	}
	ex.Before = cutoff
	if _, err := l.AppendSync(ctx, Record{
		Kind: KindExpired, Time: l.cfg.Now(), Subject: "audit", Action: "expire", Outcome: OutcomeSuccess,
		Details: map[string]any{
			"first_seq": ex.FirstSeq, "last_seq": ex.LastSeq, "last_hash": ex.LastHash,
			"before": FormatTime(ex.Before), "max_age": l.cfg.Retention.String(),
		},
	}); err != nil {
		return 0, fmt.Errorf("audit: record expiry: %w", err)
	}
	if err := l.recs.Purge(ctx, jetstream.WithPurgeSequence(purgeTo)); err != nil {
		return 0, fmt.Errorf("audit: purge expired records: %w", err)
	}
	l.log.Info("audit records expired", "first_seq", ex.FirstSeq, "last_seq", ex.LastSeq, "before", ex.Before)
	return ex.LastSeq - ex.FirstSeq + 1, nil
}
