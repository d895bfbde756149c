// Package pool keeps warm function instances per function version: it hands
// out one idle instance per invocation (one invocation at a time per
// instance, like Lambda), starts a new one when none is idle and the
// function is below its concurrency limit, makes callers wait a bounded time
// for capacity otherwise, and reaps instances that stayed idle too long
// (scale to zero).
//
// The pool never reuses an instance that was discarded (timed out, crashed):
// Lease.Discard stops it and frees its slot.
package pool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// ErrNoCapacity is returned by Acquire when the key is at its concurrency
// limit and no instance became free before the context ended.
var ErrNoCapacity = errors.New("no capacity")

// ErrClosed is returned by Acquire after Close.
var ErrClosed = errors.New("pool closed")

// Instance is what the pool manages.
type Instance interface {
	// Stop kills the instance and releases its resources.
	Stop(ctx context.Context) error
	// Done is closed when the instance died by itself.
	Done() <-chan struct{}
}

// StartFunc starts a new instance for a key (a cold start).
type StartFunc func(ctx context.Context) (Instance, error)

// Config configures a Pool.
type Config struct {
	// IdleTimeout is how long an idle instance is kept warm; default 10 min.
	IdleTimeout time.Duration
	// ReapInterval is how often idle instances are checked; default
	// IdleTimeout/10, at most 30 s.
	ReapInterval time.Duration
	// Now returns the current time; default time.Now.
	Now func() time.Time
	// Logger receives pool events; default discards.
	Logger *slog.Logger
	// OnStop is called after an instance was stopped (reaped, discarded or
	// drained), for metrics. Optional.
	OnStop func(key string, reason string)
}

// Pool is a set of instance pools, one per key. It is safe for concurrent use.
type Pool struct {
	cfg    Config
	log    *slog.Logger
	mu     sync.Mutex
	keys   map[string]*keyPool
	closed bool
	stop   chan struct{}
	wg     sync.WaitGroup
}

type keyPool struct {
	idle    []*entry
	total   int // idle + busy + starting
	changed chan struct{}
	gen     uint64 // bumped by Evict; leases of older generations are not kept
}

type entry struct {
	inst     Instance
	lastUsed time.Time
}

// Lease is one acquired instance. Exactly one of Release or Discard must be
// called.
type Lease struct {
	p    *Pool
	key  string
	e    *entry
	gen  uint64
	once sync.Once
	// Cold reports whether the instance was started for this lease.
	Cold bool
}

// Instance returns the leased instance.
func (l *Lease) Instance() Instance { return l.e.inst }

// New returns a running pool; call Close to stop it and its instances.
func New(cfg Config) *Pool {
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 10 * time.Minute
	}
	if cfg.ReapInterval <= 0 {
		cfg.ReapInterval = min(cfg.IdleTimeout/10, 30*time.Second)
		if cfg.ReapInterval < 10*time.Millisecond {
			cfg.ReapInterval = 10 * time.Millisecond
		}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Pool{cfg: cfg, log: log.With("component", "pool"), keys: map[string]*keyPool{}, stop: make(chan struct{})}
	p.wg.Add(1)
	go p.reapLoop()
	return p
}

func (p *Pool) kp(key string) *keyPool {
	k := p.keys[key]
	if k == nil {
		k = &keyPool{changed: make(chan struct{})}
		p.keys[key] = k
	}
	return k
}

func (k *keyPool) notify() {
	close(k.changed)
	k.changed = make(chan struct{})
}

// Acquire returns an instance for key: an idle warm one if any, else a new
// one from start when fewer than limit instances exist (limit <= 0 means
// no limit), else it waits until one is released or ctx ends, returning
// ErrNoCapacity. Errors from start are returned as they are.
func (p *Pool) Acquire(ctx context.Context, key string, limit int, start StartFunc) (*Lease, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrClosed
		}
		k := p.kp(key)
		for len(k.idle) > 0 {
			e := k.idle[len(k.idle)-1]
			k.idle = k.idle[:len(k.idle)-1]
			select {
			case <-e.inst.Done():
				// Died while idle: drop it and look again.
				k.total--
				p.mu.Unlock()
				p.stopInstance(key, e.inst, "exited")
				p.mu.Lock()
				continue
			default:
			}
			p.mu.Unlock()
			return &Lease{p: p, key: key, e: e, gen: k.gen}, nil
		}
		if limit <= 0 || k.total < limit {
			k.total++
			gen := k.gen
			p.mu.Unlock()
			inst, err := start(ctx)
			if err != nil {
				p.mu.Lock()
				k.total--
				k.notify()
				p.mu.Unlock()
				return nil, err
			}
			return &Lease{p: p, key: key, e: &entry{inst: inst}, gen: gen, Cold: true}, nil
		}
		ch := k.changed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %d of %d instances busy", ErrNoCapacity, limit, limit)
		}
	}
}

// Release returns the instance to the pool as warm and idle.
func (l *Lease) Release() {
	l.once.Do(func() {
		p := l.p
		p.mu.Lock()
		k := p.kp(l.key)
		if p.closed || l.gen != k.gen {
			reason := "closed"
			if !p.closed {
				reason = "evicted"
			}
			k.total--
			k.notify()
			p.mu.Unlock()
			p.stopInstance(l.key, l.e.inst, reason)
			return
		}
		l.e.lastUsed = p.cfg.Now()
		k.idle = append(k.idle, l.e)
		k.notify()
		p.mu.Unlock()
	})
}

// Discard stops the instance (it timed out, crashed or is otherwise not
// reusable) and frees its slot. reason is reported to Config.OnStop.
func (l *Lease) Discard(reason string) {
	l.once.Do(func() {
		p := l.p
		p.stopInstance(l.key, l.e.inst, reason)
		p.mu.Lock()
		k := p.kp(l.key)
		k.total--
		k.notify()
		p.mu.Unlock()
	})
}

func (p *Pool) stopInstance(key string, inst Instance, reason string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := inst.Stop(ctx); err != nil {
		p.log.Warn("stop instance", "key", key, "reason", reason, "err", err)
	}
	if p.cfg.OnStop != nil {
		p.cfg.OnStop(key, reason)
	}
}

func (p *Pool) reapLoop() {
	defer p.wg.Done()
	t := time.NewTicker(p.cfg.ReapInterval)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.Reap()
		}
	}
}

// Reap stops idle instances unused for longer than IdleTimeout and idle
// instances that exited. It runs periodically; tests may call it directly.
func (p *Pool) Reap() {
	now := p.cfg.Now()
	type victim struct {
		key    string
		inst   Instance
		reason string
	}
	var victims []victim
	p.mu.Lock()
	for key, k := range p.keys {
		before := len(victims)
		keep := k.idle[:0]
		for _, e := range k.idle {
			reason := ""
			select {
			case <-e.inst.Done():
				reason = "exited"
			default:
				if now.Sub(e.lastUsed) >= p.cfg.IdleTimeout {
					reason = "idle"
				}
			}
			if reason == "" {
				keep = append(keep, e)
				continue
			}
			victims = append(victims, victim{key, e.inst, reason})
			k.total--
		}
		clear(k.idle[len(keep):])
		k.idle = keep
		if len(victims) > before {
			k.notify()
		}
		if k.total == 0 {
			delete(p.keys, key)
		}
	}
	p.mu.Unlock()
	for _, v := range victims {
		p.log.Debug("reaped instance", "key", v.key, "reason", v.reason)
		p.stopInstance(v.key, v.inst, v.reason)
	}
}

// Evict stops every idle instance of key (e.g. the function was deleted).
// Busy instances finish their current invocation and are stopped when
// released.
func (p *Pool) Evict(key string) {
	p.mu.Lock()
	k := p.keys[key]
	var idle []*entry
	if k != nil {
		idle = k.idle
		k.idle = nil
		k.total -= len(idle)
		k.gen++
		k.notify()
	}
	p.mu.Unlock()
	for _, e := range idle {
		p.stopInstance(key, e.inst, "evicted")
	}
}

// Stats is a snapshot of the pool.
type Stats struct {
	Idle  int // warm idle instances
	Total int // idle, busy and starting
}

// Stats returns per-key counts.
func (p *Pool) Stats() map[string]Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]Stats, len(p.keys))
	for key, k := range p.keys {
		out[key] = Stats{Idle: len(k.idle), Total: k.total}
	}
	return out
}

// Close stops the reaper and every idle instance; leases still out stop
// their instance when released. Close waits for idle instances to stop or
// ctx to end.
func (p *Pool) Close(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	var all []victimEntry
	for key, k := range p.keys {
		for _, e := range k.idle {
			all = append(all, victimEntry{key, e.inst})
			k.total--
		}
		k.idle = nil
		k.notify()
	}
	p.mu.Unlock()
	close(p.stop)
	p.wg.Wait()
	var wg sync.WaitGroup
	for _, v := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.stopInstance(v.key, v.inst, "closed")
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

type victimEntry struct {
	key  string
	inst Instance
}
