package cluster

import (
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

// DefaultMaxLeaseTTL bounds the lease a heartbeat may claim, so a worker
// cannot keep itself placeable for long after it goes silent.
const DefaultMaxLeaseTTL = time.Minute

// ErrEKMismatch is returned by Admit when the attestation presents a
// different EK (or none) for a node that was admitted with an EK. The node name belongs to one TPM; to move it to
// another machine an operator removes the record first.
var ErrEKMismatch = errors.New("cluster: endorsement key differs from the admitted one")

// RegistryConfig configures NewRegistry.
type RegistryConfig struct {
	// Store holds the bucket. Required.
	Store *store.Store
	// Bucket is the KV bucket (default DefaultBucket).
	Bucket string
	// Now is the clock (default time.Now).
	Now func() time.Time
	// MaxLeaseTTL caps the lease one heartbeat may claim (default
	// DefaultMaxLeaseTTL).
	MaxLeaseTTL time.Duration
	// ForgetAfter, when positive, deletes records in state admitted or
	// refused whose lease lapsed that long ago (see Prune), checking every
	// ForgetAfter/4. Draining and revoked records are never deleted
	// automatically. Zero keeps every record.
	ForgetAfter time.Duration
	// Logger gets component=cluster logs. Nil discards them.
	Logger *slog.Logger
}

// Attestation is what the attestation service records when it admits a
// worker.
type Attestation struct {
	Node     string
	SPIFFEID string
	// Method is AttestTPM or AttestJoinToken.
	Method        string
	EKFingerprint string
	PCRSummary    map[int]string
	AttestedAt    time.Time
	SVIDExpiry    time.Time
}

// Worker is a record as the registry sees it.
type Worker struct {
	WorkerRecord
	// Revision is the record's store revision.
	Revision uint64
	// LeaseDeadline is when the lease lapses by this process's clock:
	// when the registry saw the last heartbeat plus the TTL that heartbeat
	// claimed (so clock skew between machines does not matter).
	LeaseDeadline time.Time
	// Live is false once the lease has lapsed; the worker is then treated
	// as gone.
	Live bool
	// Placeable is true when the worker may receive new invocations:
	// admitted, lease live, and its SVID (when recorded) not expired.
	Placeable bool
}

// Registry is the control plane's view of the workers: a watch keeps an
// in-memory copy of the bucket, and state changes go to the store with
// compare-and-set. Reads (Workers, Get) never touch the network. It is safe
// for concurrent use.
type Registry struct {
	cfg RegistryConfig
	kv  *store.KV
	log *slog.Logger

	mu      sync.RWMutex
	entries map[string]*entry
	gone    map[string]uint64 // node → revision of its deletion
}

type entry struct {
	rec      WorkerRecord
	rev      uint64
	deadline time.Time // lease deadline, local clock; zero: never leased
	seen     time.Time // first seen, local clock
}

// NewRegistry binds the bucket, loads every record, and then follows
// changes until ctx ends. It returns once the current records are loaded,
// so Workers is complete from the start.
func NewRegistry(ctx context.Context, cfg RegistryConfig) (*Registry, error) {
	if cfg.Store == nil {
		return nil, errors.New("cluster: registry needs Store")
	}
	if cfg.Bucket == "" {
		cfg.Bucket = DefaultBucket
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxLeaseTTL <= 0 {
		cfg.MaxLeaseTTL = DefaultMaxLeaseTTL
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	kv, err := cfg.Store.KV(ctx, cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("cluster: workers bucket: %w", err)
	}
	r := &Registry{
		cfg: cfg, kv: kv, log: log.With("component", "cluster"),
		entries: map[string]*entry{}, gone: map[string]uint64{},
	}
	// Load the current records first: their leases are judged against the
	// expiry the worker wrote, since when they were written is unknown
	// here. Later changes come from the watch, which also replays these
	// (same revisions, ignored).
	keys, err := kv.Keys(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("cluster: list workers: %w", err)
	}
	for _, k := range keys {
		e, err := kv.Get(ctx, k)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("cluster: load workers: %w", err)
		}
		r.apply(e, false)
	}
	updates, err := kv.Watch(ctx, ">")
	if err != nil {
		return nil, fmt.Errorf("cluster: watch workers: %w", err)
	}
	go func() {
		for e := range updates {
			r.apply(e, true)
		}
		if ctx.Err() == nil {
			r.log.Warn("worker watch ended; the view is no longer updated")
		}
	}()
	if cfg.ForgetAfter > 0 {
		go r.pruneLoop(ctx)
	}
	return r, nil
}

// apply merges one store entry into the view, ignoring anything older than
// what the view holds. fresh marks entries that just arrived on the watch:
// a changed lease then counts from now.
func (r *Registry) apply(e store.Entry, fresh bool) {
	now := r.cfg.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	cur := r.entries[e.Key]
	if cur != nil && cur.rev >= e.Revision {
		return
	}
	if rev, ok := r.gone[e.Key]; ok && rev >= e.Revision {
		return
	}
	if e.Deleted {
		delete(r.entries, e.Key)
		r.gone[e.Key] = e.Revision
		return
	}
	rec, err := decode(e)
	if err != nil {
		r.log.Warn("ignoring worker record", "node", e.Key, "err", err)
		return
	}
	delete(r.gone, e.Key)
	ent := &entry{rec: rec, rev: e.Revision, seen: now}
	ttl := min(rec.leaseTTL(), r.cfg.MaxLeaseTTL)
	switch {
	case cur != nil && cur.rec.LeaseExpiry.Equal(rec.LeaseExpiry):
		// Not a heartbeat (a state change): the lease is unchanged.
		ent.deadline = cur.deadline
	case rec.LeaseExpiry.IsZero():
		// Admitted, never heartbeated.
	case fresh:
		ent.deadline = now.Add(ttl)
	default:
		// Written at an unknown time: trust the worker's expiry, capped.
		ent.deadline = rec.LeaseExpiry
		if lim := now.Add(ttl); ent.deadline.After(lim) {
			ent.deadline = lim
		}
	}
	if cur != nil {
		ent.seen = cur.seen
	}
	r.entries[e.Key] = ent
}

func (r *Registry) view(ent *entry, now time.Time) Worker {
	w := Worker{
		WorkerRecord:  ent.rec.clone(),
		Revision:      ent.rev,
		LeaseDeadline: ent.deadline,
		Live:          now.Before(ent.deadline),
	}
	w.Placeable = w.Live && w.State == StateAdmitted &&
		(w.SVIDExpiry.IsZero() || now.Before(w.SVIDExpiry))
	return w
}

// Workers returns every known worker, sorted by node name, each marked
// Live or not and Placeable or not at the registry's clock.
func (r *Registry) Workers() []Worker {
	now := r.cfg.Now()
	r.mu.RLock()
	out := make([]Worker, 0, len(r.entries))
	for _, ent := range r.entries {
		out = append(out, r.view(ent, now))
	}
	r.mu.RUnlock()
	slices.SortFunc(out, func(a, b Worker) int {
		switch {
		case a.Node < b.Node:
			return -1
		case a.Node > b.Node:
			return 1
		}
		return 0
	})
	return out
}

// Get returns one worker from the view.
func (r *Registry) Get(node string) (Worker, bool) {
	now := r.cfg.Now()
	r.mu.RLock()
	defer r.mu.RUnlock()
	ent, ok := r.entries[node]
	if !ok {
		return Worker{}, false
	}
	return r.view(ent, now), true
}

// Admit records a successful attestation: the node becomes admitted (from
// no record, admitted or refused) and its attestation fields are replaced.
// A draining node stays draining with the new attestation. It fails with
// ErrRevoked for a revoked node and ErrEKMismatch when the node was
// admitted with another EK. The worker is placeable after its first
// heartbeat.
func (r *Registry) Admit(ctx context.Context, a Attestation) (WorkerRecord, error) {
	if err := checkNode(a.Node); err != nil {
		return WorkerRecord{}, err
	}
	return r.modify(ctx, "admit", a.Node, true, func(rec *WorkerRecord, exists bool) error {
		if exists {
			if rec.State == StateRevoked {
				return fmt.Errorf("admit %s: %w", a.Node, ErrRevoked)
			}
			if rec.EKFingerprint != "" && rec.EKFingerprint != a.EKFingerprint {
				return fmt.Errorf("admit %s: recorded %s, presented %q: %w", a.Node, rec.EKFingerprint, a.EKFingerprint, ErrEKMismatch)
			}
		}
		if rec.State != StateDraining {
			rec.State = StateAdmitted
			rec.Reasons = nil
		}
		rec.SPIFFEID = a.SPIFFEID
		rec.AttestMethod = a.Method
		rec.EKFingerprint = a.EKFingerprint
		rec.PCRSummary = a.PCRSummary
		rec.AttestedAt = a.AttestedAt
		rec.SVIDExpiry = a.SVIDExpiry
		return nil
	})
}

// allowed lists the states each state may move to with SetState.
var allowed = map[State][]State{
	StateAdmitted: {StateAdmitted, StateDraining, StateRevoked},
	StateDraining: {StateAdmitted, StateDraining, StateRevoked},
	StateRefused:  {StateRefused, StateRevoked},
	StateRevoked:  {StateRevoked},
}

// SetState changes a worker's state with compare-and-set and records
// reasons (which replace the previous ones). Drain is admitted → draining,
// undrain draining → admitted. Revoked may be set from any state, and
// refused or revoked on a node without a record (which creates one, so a
// refusal shows up and a revocation sticks). Anything else fails with
// ErrTransition (a refused or revoked node becomes admitted only through
// Admit, after Remove for a revoked one) or ErrUnknownWorker.
func (r *Registry) SetState(ctx context.Context, node string, to State, reasons []string) (WorkerRecord, error) {
	if err := checkNode(node); err != nil {
		return WorkerRecord{}, err
	}
	if !to.Valid() {
		return WorkerRecord{}, fmt.Errorf("set state %s: %w: unknown state %q", node, ErrTransition, to)
	}
	create := to == StateRevoked || to == StateRefused
	return r.modify(ctx, "set state", node, create, func(rec *WorkerRecord, exists bool) error {
		if exists && !slices.Contains(allowed[rec.State], to) {
			return fmt.Errorf("set state %s: %w: %s → %s", node, ErrTransition, rec.State, to)
		}
		rec.State = to
		rec.Reasons = slices.Clone(reasons)
		return nil
	})
}

// modify is the control plane's read-modify-write with compare-and-set.
// Without a record it fails with ErrUnknownWorker unless create is set.
func (r *Registry) modify(ctx context.Context, op, node string, create bool, change func(*WorkerRecord, bool) error) (WorkerRecord, error) {
	for range casAttempts {
		var rec WorkerRecord
		e, err := r.kv.Get(ctx, node)
		exists := err == nil
		switch {
		case errors.Is(err, store.ErrNotFound):
			if !create {
				return WorkerRecord{}, fmt.Errorf("%s %s: %w", op, node, ErrUnknownWorker)
			}
			rec = WorkerRecord{Node: node}
		case err != nil:
			return WorkerRecord{}, fmt.Errorf("%s %s: %w", op, node, err)
		default:
			if rec, err = decode(e); err != nil {
				return WorkerRecord{}, fmt.Errorf("%s: %w", op, err)
			}
		}
		if err := change(&rec, exists); err != nil {
			return WorkerRecord{}, err
		}
		rec.UpdatedAt = r.cfg.Now()
		rec.Generation++
		raw, err := json.Marshal(rec)
		if err != nil {
			return WorkerRecord{}, err
		}
		var rev uint64
		if exists {
			rev, err = r.kv.Update(ctx, node, raw, e.Revision)
		} else {
			rev, err = r.kv.Create(ctx, node, raw)
		}
		if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrExists) {
			continue
		}
		if err != nil {
			return WorkerRecord{}, fmt.Errorf("%s %s: %w", op, node, err)
		}
		// Show our own write at once; the watch brings the same revision.
		r.apply(store.Entry{Key: node, Value: raw, Revision: rev}, false)
		r.log.Info("worker record", "op", op, "node", node, "state", rec.State, "reasons", rec.Reasons)
		return rec, nil
	}
	return WorkerRecord{}, fmt.Errorf("%s %s: %w", op, node, ErrContention)
}

// Remove deletes a worker's record, whatever its state. A removed worker
// gets no placement and its heartbeats fail with ErrNotAdmitted until it
// attests again. This is how an operator clears a revocation.
func (r *Registry) Remove(ctx context.Context, node string) error {
	if err := checkNode(node); err != nil {
		return err
	}
	if err := r.kv.Delete(ctx, node, 0); err != nil {
		return fmt.Errorf("remove %s: %w", node, err)
	}
	r.forget(node)
	r.log.Info("worker record removed", "node", node)
	return nil
}

func (r *Registry) forget(node string) {
	r.mu.Lock()
	if ent, ok := r.entries[node]; ok {
		r.gone[node] = ent.rev
		delete(r.entries, node)
	}
	r.mu.Unlock()
}

// Prune deletes the records in state admitted or refused whose lease lapsed
// at least ForgetAfter ago (or that never heartbeated since the registry
// first saw them that long ago), and returns their names. Each delete is
// conditional on the revision seen, so a worker that heartbeats meanwhile
// stays. With ForgetAfter zero it does nothing.
func (r *Registry) Prune(ctx context.Context) ([]string, error) {
	if r.cfg.ForgetAfter <= 0 {
		return nil, nil
	}
	now := r.cfg.Now()
	type victim struct {
		node string
		rev  uint64
	}
	var victims []victim
	r.mu.RLock()
	for node, ent := range r.entries {
		if ent.rec.State != StateAdmitted && ent.rec.State != StateRefused {
			continue
		}
		since := ent.deadline
		if since.IsZero() {
			since = ent.seen
		}
		if now.Sub(since) >= r.cfg.ForgetAfter {
			victims = append(victims, victim{node, ent.rev})
		}
	}
	r.mu.RUnlock()
	var removed []string
	for _, v := range victims {
		err := r.kv.Delete(ctx, v.node, v.rev)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return removed, fmt.Errorf("prune %s: %w", v.node, err)
		}
		r.mu.Lock()
		if ent, ok := r.entries[v.node]; ok && ent.rev == v.rev {
			delete(r.entries, v.node)
			r.gone[v.node] = v.rev
		}
		r.mu.Unlock()
		removed = append(removed, v.node)
		r.log.Info("worker record pruned", "node", v.node)
	}
	slices.Sort(removed)
	return removed, nil
}

func (r *Registry) pruneLoop(ctx context.Context) {
	t := time.NewTicker(max(r.cfg.ForgetAfter/4, time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := r.Prune(ctx); err != nil && ctx.Err() == nil {
				r.log.Warn("prune workers", "err", err)
			}
		}
	}
}
