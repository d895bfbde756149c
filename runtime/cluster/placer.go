package cluster

import (
	crand "crypto/rand"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"

	"github.com/zfaas/zfaas/api"
)

// Placement errors. Every failure of Pick and Place wraps ErrNoWorker and
// one of the reasons below; match with errors.Is.
var (
	// ErrNoWorker: no worker can take the invocation now.
	ErrNoWorker = errors.New("no worker available")
	// ErrNoneAdmitted: no worker is admitted with a live lease (all
	// draining, revoked, refused, silent, or none registered).
	ErrNoneAdmitted = errors.New("no admitted worker with a live lease")
	// ErrAllExcluded: every placeable worker was in the exclude set (the
	// caller already tried them).
	ErrAllExcluded = errors.New("every placeable worker is excluded")
	// ErrAllFull: no placeable worker has an idle instance of the version
	// nor room for a new one.
	ErrAllFull = errors.New("no placeable worker has room")
)

// WorkerSource is the view the placer reads; *Registry implements it.
type WorkerSource interface {
	Workers() []Worker
}

var _ WorkerSource = (*Registry)(nil)

// PlacerConfig configures NewPlacer.
type PlacerConfig struct {
	// Rand returns a uniform integer in [0, n); it breaks ties between
	// equally loaded workers. It is called with the placer's lock held.
	// Nil uses a private generator seeded from crypto/rand, so several
	// gateways do not all pick the same worker.
	Rand func(n int) int
}

// Placer decides which worker runs an invocation.
//
// It follows the split that AWS Lambda describes between assignment and
// placement. Assignment is the fast, common path: hand the invocation to an
// execution environment that already exists and is idle. Placement is the
// slow path taken only when there is none: choose a host with enough free
// resources to create a new environment. Pick does assignment first (a
// worker that advertises an idle instance of this exact version, the least
// loaded of them) and falls back to placement (the least loaded worker with
// room for the version's memory, which will cold-start an instance). In
// Lambda the two are separate services; here they are two steps of one
// decision over the same eventually consistent view of worker records.
//
// Because that view lags by up to a heartbeat, the placer also counts what
// it sent itself: the invocations in flight from this process to each
// worker (Acquire/Release, or Place's release function), added to the
// advertised in-flight count, and — for Place — the idle instances it
// already claimed and the memory of the cold starts it caused, which count
// until the worker's record has been rewritten twice (by then its own
// numbers include them). So a burst spreads over the workers instead of all
// landing on the one that looked emptiest at the last heartbeat.
//
// Only workers that are Placeable (admitted, live lease, SVID not expired)
// are considered. A Placer is safe for concurrent use.
type Placer struct {
	src  WorkerSource
	rand func(int) int

	mu     sync.Mutex
	local  map[string]*localLoad
	nextID uint64
}

// localLoad is what this placer sent to one worker.
type localLoad struct {
	inflight int
	claims   map[uint64]claim
}

// claim is an idle instance taken (warm) or memory used by a cold start
// (memMB), as of the worker's record generation gen.
type claim struct {
	gen   uint64
	warm  string
	memMB int
}

// active reports whether the claim is still missing from a record of
// generation g: the record must have been rewritten twice since, because
// the first write may have been taken before the invocation arrived.
func (c claim) active(g uint64) bool { return g < c.gen+2 }

// NewPlacer returns a placer over src.
func NewPlacer(src WorkerSource, cfg PlacerConfig) *Placer {
	r := cfg.Rand
	if r == nil {
		var seed [32]byte
		_, _ = crand.Read(seed[:]) // never fails (crypto/rand panics instead)
		g := rand.New(rand.NewChaCha8(seed))
		r = g.IntN
	}
	return &Placer{src: src, rand: r, local: map[string]*localLoad{}}
}

// candidate is a placeable worker with this placer's counts added.
type candidate struct {
	rec       WorkerRecord
	inflight  int
	idle      int
	freeMB    int
	instances int
}

// Pick chooses a worker for one invocation of v, skipping the nodes in
// exclude (those already tried): a placeable worker with an idle instance
// of v, else a placeable worker with room for v.Config.MemoryMB (and under
// Capacity.MaxInstances). Among several, the one with the fewest
// invocations in flight wins, then the one with the most free memory; ties
// go to Rand. Pick does not count the invocation: call Acquire, or use
// Place. Errors wrap ErrNoWorker and ErrNoneAdmitted, ErrAllExcluded or
// ErrAllFull.
func (p *Placer) Pick(v api.Version, exclude map[string]bool) (WorkerRecord, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, _, err := p.pick(v, exclude)
	return c.rec, err
}

// Place is Pick and Acquire in one step under one lock, so concurrent
// callers see each other's choices. It also claims the idle instance (warm
// placement) or the memory (cold start) it counted on. Call release
// exactly once when the invocation ends, whatever its outcome; extra
// calls do nothing.
func (p *Placer) Place(v api.Version, exclude map[string]bool) (rec WorkerRecord, release func(), err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, warm, err := p.pick(v, exclude)
	if err != nil {
		return WorkerRecord{}, func() {}, err
	}
	node := c.rec.Node
	l := p.load(node)
	l.inflight++
	p.nextID++
	id := p.nextID
	cl := claim{gen: c.rec.Generation}
	if warm {
		cl.warm = VersionKey(v)
	} else {
		cl.memMB = max(v.Config.MemoryMB, 0)
	}
	l.claims[id] = cl
	var once sync.Once
	return c.rec, func() {
		once.Do(func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			if l, ok := p.local[node]; ok {
				delete(l.claims, id)
				p.dec(node, l)
			}
		})
	}, nil
}

// Acquire counts one invocation in flight from this process to node; pair
// it with Release.
func (p *Placer) Acquire(node string) {
	p.mu.Lock()
	p.load(node).inflight++
	p.mu.Unlock()
}

// Release ends one invocation counted by Acquire.
func (p *Placer) Release(node string) {
	p.mu.Lock()
	if l, ok := p.local[node]; ok {
		p.dec(node, l)
	}
	p.mu.Unlock()
}

// Inflight returns the invocations in flight from this process to node.
func (p *Placer) Inflight(node string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if l, ok := p.local[node]; ok {
		return l.inflight
	}
	return 0
}

func (p *Placer) load(node string) *localLoad {
	l, ok := p.local[node]
	if !ok {
		l = &localLoad{claims: map[uint64]claim{}}
		p.local[node] = l
	}
	return l
}

func (p *Placer) dec(node string, l *localLoad) {
	if l.inflight > 0 {
		l.inflight--
	}
	if l.inflight == 0 && len(l.claims) == 0 {
		delete(p.local, node)
	}
}

// pick runs with p.mu held.
func (p *Placer) pick(v api.Version, exclude map[string]bool) (candidate, bool, error) {
	key := VersionKey(v)
	mem := max(v.Config.MemoryMB, 0)
	fail := func(reason error, detail string) (candidate, bool, error) {
		return candidate{}, false, fmt.Errorf("place %s (%d MB): %w: %w (%s)", key, mem, ErrNoWorker, reason, detail)
	}
	all := p.src.Workers()
	var placeable, excluded int
	var warm, cold []candidate
	for _, w := range all {
		if !w.Placeable {
			continue
		}
		placeable++
		if exclude[w.Node] {
			excluded++
			continue
		}
		c := p.effective(w.WorkerRecord, key)
		if c.idle > 0 {
			warm = append(warm, c)
		}
		room := c.freeMB >= mem && c.rec.Capacity.MemoryMB > 0 &&
			(c.rec.Capacity.MaxInstances <= 0 || c.instances < c.rec.Capacity.MaxInstances)
		if room {
			cold = append(cold, c)
		}
	}
	switch {
	case placeable == 0:
		return fail(ErrNoneAdmitted, summarize(all))
	case excluded == placeable:
		return fail(ErrAllExcluded, fmt.Sprintf("%d placeable, all excluded", placeable))
	case len(warm) > 0:
		return p.best(warm), true, nil
	case len(cold) > 0:
		return p.best(cold), false, nil
	}
	return fail(ErrAllFull, fmt.Sprintf("%d placeable, %d excluded, none with an idle instance or room", placeable, excluded))
}

// effective adds this placer's counts to a worker's advertised load.
func (p *Placer) effective(rec WorkerRecord, key string) candidate {
	c := candidate{
		rec:       rec,
		inflight:  rec.Load.Inflight,
		idle:      rec.idle(key),
		freeMB:    rec.Capacity.MemoryMB - rec.Load.MemoryMB,
		instances: rec.Load.Instances,
	}
	l, ok := p.local[rec.Node]
	if !ok {
		return c
	}
	c.inflight += l.inflight
	for _, cl := range l.claims {
		if !cl.active(rec.Generation) {
			continue
		}
		if cl.warm != "" {
			if cl.warm == key {
				c.idle--
			}
			continue
		}
		c.freeMB -= cl.memMB
		c.instances++
	}
	return c
}

// best returns the least loaded candidate: fewest in flight, then most
// free memory; ties go to p.rand.
func (p *Placer) best(cs []candidate) candidate {
	less := func(a, b candidate) bool {
		if a.inflight != b.inflight {
			return a.inflight < b.inflight
		}
		return a.freeMB > b.freeMB
	}
	sort.SliceStable(cs, func(i, j int) bool {
		if less(cs[i], cs[j]) || less(cs[j], cs[i]) {
			return less(cs[i], cs[j])
		}
		return cs[i].rec.Node < cs[j].rec.Node
	})
	n := 1
	for n < len(cs) && !less(cs[0], cs[n]) {
		n++
	}
	if n == 1 {
		return cs[0]
	}
	return cs[p.rand(n)]
}

// summarize says why no worker was placeable, e.g. "3 known: 1 draining,
// 2 lease lapsed".
func summarize(ws []Worker) string {
	if len(ws) == 0 {
		return "no worker registered"
	}
	counts := map[string]int{}
	for _, w := range ws {
		switch {
		case w.State != StateAdmitted:
			counts[string(w.State)]++
		case !w.Live:
			counts["lease lapsed"]++
		default:
			counts["svid expired"]++
		}
	}
	parts := make([]string, 0, len(counts))
	for k, n := range counts {
		parts = append(parts, fmt.Sprintf("%d %s", n, k))
	}
	sort.Strings(parts)
	return fmt.Sprintf("%d known: %s", len(ws), strings.Join(parts, ", "))
}
