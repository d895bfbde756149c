package cluster

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/zfaas/zfaas/store"
)

// Heartbeat defaults, used when the matching HeartbeatConfig field is zero.
const (
	DefaultInterval = 2 * time.Second
	DefaultLeaseTTL = 10 * time.Second
	DefaultMaxWarm  = 256
)

// Snapshot is what a worker reports with each heartbeat.
type Snapshot struct {
	Capacity Capacity
	Load     Load
	// Warm lists versions with idle instances; entries with Idle <= 0 are
	// dropped.
	Warm []Warm
}

// LoadSource reports the local worker's capacity and load. It is called
// once per heartbeat and must not block.
type LoadSource interface {
	Load() Snapshot
}

// HeartbeatConfig configures NewHeartbeat.
type HeartbeatConfig struct {
	// Store holds the bucket. Required.
	Store *store.Store
	// Bucket is the KV bucket (default DefaultBucket).
	Bucket string
	// Node is this worker's name (see ValidNode). Required.
	Node string
	// Addr is host:port of this worker's gRPC API, as gateways dial it.
	Addr string
	// Source reports capacity and load. Required.
	Source LoadSource
	// Interval between heartbeats (default DefaultInterval).
	Interval time.Duration
	// TTL is how long one heartbeat keeps the lease (default
	// DefaultLeaseTTL). It must be at least twice Interval, so one lost
	// heartbeat does not drop the worker.
	TTL time.Duration
	// MaxWarm caps the warm entries per record, most idle first (default
	// DefaultMaxWarm), so the record stays small.
	MaxWarm int
	// Now is the clock (default time.Now).
	Now func() time.Time
	// OnState, when set, is called by Run with the record's state after
	// the first heartbeat and whenever it changes (e.g. to react to a
	// drain or a revocation). It must not block.
	OnState func(State)
	// Logger gets component=cluster logs. Nil discards them.
	Logger *slog.Logger
}

// Heartbeat keeps one worker's lease alive and its load current. It owns
// only the worker's fields of the record (Addr, Capacity, Load, Warm,
// LeaseExpiry); every write is a compare-and-set that re-reads the record,
// so a state set by the control plane always survives. It is safe for
// concurrent use.
type Heartbeat struct {
	cfg HeartbeatConfig
	kv  *store.KV
	log *slog.Logger

	mu        sync.Mutex
	lastState State
}

// NewHeartbeat binds the bucket. It writes nothing; call Run or Beat.
func NewHeartbeat(ctx context.Context, cfg HeartbeatConfig) (*Heartbeat, error) {
	if cfg.Store == nil || cfg.Source == nil {
		return nil, errors.New("cluster: heartbeat needs Store and Source")
	}
	if err := checkNode(cfg.Node); err != nil {
		return nil, err
	}
	if cfg.Bucket == "" {
		cfg.Bucket = DefaultBucket
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultLeaseTTL
	}
	if cfg.TTL < 2*cfg.Interval {
		return nil, fmt.Errorf("cluster: lease ttl %s is shorter than twice the interval %s", cfg.TTL, cfg.Interval)
	}
	if cfg.MaxWarm <= 0 {
		cfg.MaxWarm = DefaultMaxWarm
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	kv, err := cfg.Store.KV(ctx, cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("cluster: workers bucket: %w", err)
	}
	return &Heartbeat{cfg: cfg, kv: kv, log: log.With("component", "cluster", "node", cfg.Node)}, nil
}

// Beat renews the lease once (LeaseExpiry = now + TTL) with a fresh load
// snapshot and returns the record as written. It fails with ErrNotAdmitted
// when the worker has no record, and ErrContention when it keeps losing
// compare-and-set races.
func (h *Heartbeat) Beat(ctx context.Context) (WorkerRecord, error) {
	snap := h.cfg.Source.Load()
	warm := trimWarm(snap.Warm, h.cfg.MaxWarm)
	return h.update(ctx, "heartbeat", func(r *WorkerRecord, now time.Time) {
		r.Addr = h.cfg.Addr
		r.Capacity = snap.Capacity
		r.Load = snap.Load
		r.Warm = warm
		r.LeaseExpiry = now.Add(h.cfg.TTL)
	})
}

// Leave ends the lease now, so placement stops at once instead of when the
// TTL runs out. Call it first on a graceful shutdown, before draining
// in-flight invocations. The state is unchanged: a restarted worker is
// placeable again after its first heartbeat.
func (h *Heartbeat) Leave(ctx context.Context) error {
	_, err := h.update(ctx, "leave", func(r *WorkerRecord, now time.Time) {
		r.LeaseExpiry = now
	})
	if errors.Is(err, ErrNotAdmitted) {
		return nil
	}
	return err
}

// Run beats at once and then every Interval until ctx ends, and returns
// nil then. Failures are logged and retried at the next tick; they do not
// end Run, because the lease TTL already bounds how long a silent worker
// keeps receiving work.
func (h *Heartbeat) Run(ctx context.Context) error {
	t := time.NewTicker(h.cfg.Interval)
	defer t.Stop()
	var lastErr string
	for {
		rec, err := h.Beat(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			// Log a failure when it starts or changes, not every tick.
			if err.Error() != lastErr {
				h.log.Warn("heartbeat failed", "err", err)
			}
			lastErr = err.Error()
		default:
			if lastErr != "" {
				h.log.Info("heartbeat recovered")
				lastErr = ""
			}
			h.noteState(rec.State)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (h *Heartbeat) noteState(s State) {
	h.mu.Lock()
	changed := s != h.lastState
	h.lastState = s
	h.mu.Unlock()
	if !changed {
		return
	}
	h.log.Info("worker state", "state", s)
	if h.cfg.OnState != nil {
		h.cfg.OnState(s)
	}
}

// update applies change to the current record with compare-and-set,
// re-reading on conflict, so fields it does not touch (State above all)
// keep whatever the last writer stored.
func (h *Heartbeat) update(ctx context.Context, op string, change func(*WorkerRecord, time.Time)) (WorkerRecord, error) {
	for range casAttempts {
		e, err := h.kv.Get(ctx, h.cfg.Node)
		if errors.Is(err, store.ErrNotFound) {
			return WorkerRecord{}, fmt.Errorf("%s %s: %w", op, h.cfg.Node, ErrNotAdmitted)
		}
		if err != nil {
			return WorkerRecord{}, fmt.Errorf("%s %s: %w", op, h.cfg.Node, err)
		}
		rec, err := decode(e)
		if err != nil {
			return WorkerRecord{}, fmt.Errorf("%s: %w", op, err)
		}
		now := h.cfg.Now()
		change(&rec, now)
		rec.UpdatedAt = now
		rec.Generation++
		raw, err := json.Marshal(rec)
		if err != nil {
			return WorkerRecord{}, err
		}
		_, err = h.kv.Update(ctx, h.cfg.Node, raw, e.Revision)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return WorkerRecord{}, fmt.Errorf("%s %s: %w", op, h.cfg.Node, err)
		}
		return rec, nil
	}
	return WorkerRecord{}, fmt.Errorf("%s %s: %w", op, h.cfg.Node, ErrContention)
}

// trimWarm drops entries without idle instances, merges duplicates, and
// keeps the limit most idle (ties by version key, so the record is stable).
func trimWarm(in []Warm, limit int) []Warm {
	byKey := make(map[string]int, len(in))
	for _, w := range in {
		if w.Idle > 0 && w.Version != "" {
			byKey[w.Version] += w.Idle
		}
	}
	if len(byKey) == 0 {
		return nil
	}
	out := make([]Warm, 0, len(byKey))
	for k, n := range byKey {
		out = append(out, Warm{Version: k, Idle: n})
	}
	slices.SortFunc(out, func(a, b Warm) int {
		if c := cmp.Compare(b.Idle, a.Idle); c != 0 {
			return c
		}
		return cmp.Compare(a.Version, b.Version)
	})
	return out[:min(len(out), limit)]
}
