package cluster

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestPick(t *testing.T) {
	v := version("acme", "echo", 3, 256)
	key := VersionKey(v)
	if key != "acme/echo/3" {
		t.Fatalf("VersionKey: got %q", key)
	}
	draining := placeable("drained", snapshot(8192, 0, 0, Warm{key, 5}))
	draining.State, draining.Placeable = StateDraining, false
	lapsed := placeable("lapsed", snapshot(8192, 0, 0, Warm{key, 5}))
	lapsed.Live, lapsed.Placeable = false, false

	tests := []struct {
		name    string
		workers []Worker
		exclude []string
		want    string
		wantErr error
		errText string
	}{
		{
			name: "warm first, even when busier",
			workers: []Worker{
				placeable("a", snapshot(4096, 0, 0)),
				placeable("b", snapshot(4096, 2048, 6, Warm{key, 1})),
			},
			want: "b",
		},
		{
			name: "warm of another version does not count",
			workers: []Worker{
				placeable("a", snapshot(4096, 1024, 1)),
				placeable("b", snapshot(4096, 0, 3, Warm{"acme/echo/2", 4})),
			},
			want: "a",
		},
		{
			name: "least loaded among warm",
			workers: []Worker{
				placeable("a", snapshot(4096, 512, 4, Warm{key, 1})),
				placeable("b", snapshot(4096, 512, 1, Warm{key, 1})),
				placeable("c", snapshot(4096, 0, 0)),
			},
			want: "b",
		},
		{
			name: "cold: fewest in flight with room",
			workers: []Worker{
				placeable("a", snapshot(1024, 896, 0)), // 128 MB free: no room
				placeable("b", snapshot(4096, 0, 3)),
				placeable("c", snapshot(2048, 1024, 1)),
			},
			want: "c",
		},
		{
			name: "cold: then most free memory",
			workers: []Worker{
				placeable("a", snapshot(2048, 1024, 1)),
				placeable("b", snapshot(4096, 1024, 1)),
			},
			want: "b",
		},
		{
			name: "cold: instance cap",
			workers: []Worker{
				func() Worker {
					w := placeable("a", snapshot(8192, 0, 0))
					w.Capacity.MaxInstances, w.Load.Instances = 2, 2
					return w
				}(),
				placeable("b", snapshot(1024, 512, 2)),
			},
			want: "b",
		},
		{
			name:    "not placeable workers are skipped, even warm",
			workers: []Worker{draining, lapsed, placeable("a", snapshot(1024, 0, 5))},
			want:    "a",
		},
		{
			name: "exclusion: retry elsewhere",
			workers: []Worker{
				placeable("a", snapshot(4096, 0, 0, Warm{key, 1})),
				placeable("b", snapshot(4096, 0, 2)),
			},
			exclude: []string{"a"},
			want:    "b",
		},
		{
			name:    "none registered",
			wantErr: ErrNoneAdmitted, errText: "no worker registered",
		},
		{
			name:    "none admitted",
			workers: []Worker{draining, lapsed},
			wantErr: ErrNoneAdmitted, errText: "2 known: 1 draining, 1 lease lapsed",
		},
		{
			name:    "all excluded",
			workers: []Worker{placeable("a", snapshot(4096, 0, 0)), placeable("b", snapshot(4096, 0, 0))},
			exclude: []string{"a", "b"},
			wantErr: ErrAllExcluded,
		},
		{
			name: "all full",
			workers: []Worker{
				placeable("a", snapshot(1024, 1024, 0)),
				placeable("b", snapshot(0, 0, 0)), // offers no memory
				placeable("c", snapshot(4096, 0, 0)),
			},
			exclude: []string{"c"},
			wantErr: ErrAllFull, errText: "3 placeable, 1 excluded",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewPlacer(staticSource(tt.workers), PlacerConfig{Rand: first})
			exclude := map[string]bool{}
			for _, n := range tt.exclude {
				exclude[n] = true
			}
			got, err := p.Pick(v, exclude)
			if tt.wantErr != nil {
				if !errors.Is(err, ErrNoWorker) || !errors.Is(err, tt.wantErr) {
					t.Fatalf("got %v, want ErrNoWorker and %v", err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.errText) {
					t.Fatalf("error %q does not say %q", err, tt.errText)
				}
				return
			}
			if err != nil || got.Node != tt.want {
				t.Fatalf("got %q, %v; want %q", got.Node, err, tt.want)
			}
		})
	}
}

func TestPickExpiredSVID(t *testing.T) {
	st := openStore(t, t.TempDir())
	clk := newClock()
	reg := newRegistry(t, st, clk)
	admit(t, reg, clk, "w1") // SVID for one hour
	h := newHeartbeat(t, st, clk, "w1", &source{snap: snapshot(1024, 0, 0)})
	waitGen(t, reg, "w1", beat(t, h).Generation)
	clk.Advance(time.Hour)
	w := waitGen(t, reg, "w1", beat(t, h).Generation)
	if !w.Live || w.Placeable {
		t.Fatalf("expired SVID: got live=%v placeable=%v; want live, not placeable", w.Live, w.Placeable)
	}
	_, err := NewPlacer(reg, PlacerConfig{}).Pick(version("acme", "echo", 1, 128), nil)
	if !errors.Is(err, ErrNoneAdmitted) || !strings.Contains(err.Error(), "svid expired") {
		t.Fatalf("got %v, want ErrNoneAdmitted for an expired SVID", err)
	}
}

// TestTiesUseRand: equal workers are chosen by the injected Rand.
func TestTiesUseRand(t *testing.T) {
	ws := staticSource{
		placeable("a", snapshot(1024, 0, 0)), placeable("b", snapshot(1024, 0, 0)),
		placeable("c", snapshot(1024, 0, 0)), placeable("d", snapshot(2048, 0, 0)),
	}
	v := version("acme", "echo", 1, 128)
	got, err := NewPlacer(ws, PlacerConfig{Rand: first}).Pick(v, nil)
	if err != nil || got.Node != "d" { // most free memory wins before any tie
		t.Fatalf("got %q, %v; want d", got.Node, err)
	}
	ws[3].Capacity.MemoryMB = 1024
	var asked []int
	p := NewPlacer(ws, PlacerConfig{Rand: func(n int) int { asked = append(asked, n); return 2 }})
	if got, err := p.Pick(v, nil); err != nil || got.Node != "c" {
		t.Fatalf("got %q, %v; want c", got.Node, err)
	}
	if len(asked) != 1 || asked[0] != 4 {
		t.Fatalf("Rand called with %v, want [4]", asked)
	}
	seen := map[string]bool{}
	p = NewPlacer(ws, PlacerConfig{})
	for range 200 {
		got, _ := p.Pick(v, nil)
		seen[got.Node] = true
	}
	if len(seen) != 4 {
		t.Errorf("default Rand picked only %v out of 4 equal workers", seen)
	}
}

// TestBurstSpreads: a burst of concurrent placements between two
// heartbeats spreads evenly, and cold starts stop at each worker's memory.
func TestBurstSpreads(t *testing.T) {
	st := openStore(t, t.TempDir())
	clk := newClock()
	reg := newRegistry(t, st, clk)
	nodes := []string{"w1", "w2", "w3", "w4"}
	hb := map[string]*Heartbeat{}
	for _, n := range nodes {
		admit(t, reg, clk, n)
		hb[n] = newHeartbeat(t, st, clk, n, &source{snap: snapshot(1024, 0, 0)}) // room for 4 × 256 MB each
		waitGen(t, reg, n, beat(t, hb[n]).Generation)
	}
	p := NewPlacer(reg, PlacerConfig{})
	v := version("acme", "burst", 1, 256)

	var mu sync.Mutex
	count := map[string]int{}
	var releases []func()
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			rec, release, err := p.Place(v, nil)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			count[rec.Node]++
			releases = append(releases, release)
			mu.Unlock()
		})
	}
	wg.Wait()
	for _, n := range nodes {
		if count[n] != 4 || p.Inflight(n) != 4 {
			t.Errorf("%s: got %d placements, %d in flight; want 4", n, count[n], p.Inflight(n))
		}
	}
	// Every worker's memory is claimed by the cold starts just sent.
	if _, _, err := p.Place(v, nil); !errors.Is(err, ErrAllFull) {
		t.Fatalf("17th placement: got %v, want ErrAllFull", err)
	}
	releases[0]()
	releases[0]() // a second call does nothing
	if _, release, err := p.Place(v, nil); err != nil {
		t.Fatalf("after a release: %v", err)
	} else {
		release()
	}

	// Once the workers' records are rewritten twice, they report the
	// instances themselves and the claims no longer count.
	for _, n := range nodes {
		beat(t, hb[n])
		waitGen(t, reg, n, beat(t, hb[n]).Generation)
	}
	if _, release, err := p.Place(v, nil); err != nil {
		t.Fatalf("after two heartbeats: %v", err)
	} else {
		release()
	}
	for _, r := range releases[1:] {
		r()
	}
	for _, n := range nodes {
		if p.Inflight(n) != 0 {
			t.Errorf("%s: %d in flight after every release", n, p.Inflight(n))
		}
	}
}

// TestWarmClaims: idle instances taken by this placer are not offered twice.
func TestWarmClaims(t *testing.T) {
	v := version("acme", "echo", 1, 128)
	ws := staticSource{
		placeable("a", snapshot(4096, 0, 0, Warm{VersionKey(v), 2})),
		placeable("b", snapshot(4096, 0, 5)),
	}
	p := NewPlacer(ws, PlacerConfig{Rand: first})
	var got []string
	for range 3 {
		rec, _, err := p.Place(v, nil)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, rec.Node)
	}
	// Two warm on a; then a has no idle left, and as a cold start a has 2
	// in flight against b's 5.
	if strings.Join(got, ",") != "a,a,a" {
		t.Fatalf("got %v, want a,a,a", got)
	}
	p.Acquire("a")
	p.Acquire("a")
	p.Acquire("a")
	if rec, err := p.Pick(v, nil); err != nil || rec.Node != "b" {
		t.Fatalf("after Acquire: got %q, %v; want b", rec.Node, err)
	}
	p.Release("a")
	p.Release("a")
	if rec, err := p.Pick(v, nil); err != nil || rec.Node != "a" {
		t.Fatalf("after Release: got %q, %v; want a", rec.Node, err)
	}
}

// TestPlaceRetryElsewhere: through the store, a failed attempt on the warm
// worker retries on another with the first excluded.
func TestPlaceRetryElsewhere(t *testing.T) {
	st := openStore(t, t.TempDir())
	clk := newClock()
	reg := newRegistry(t, st, clk)
	v := version("acme", "echo", 1, 128)
	snaps := map[string]Snapshot{
		"w1": snapshot(2048, 128, 0, Warm{VersionKey(v), 1}),
		"w2": snapshot(2048, 0, 0),
		"w3": snapshot(2048, 0, 1),
	}
	for n, s := range snaps {
		admit(t, reg, clk, n)
		waitGen(t, reg, n, beat(t, newHeartbeat(t, st, clk, n, &source{snap: s})).Generation)
	}
	p := NewPlacer(reg, PlacerConfig{})
	exclude := map[string]bool{}
	var order []string
	for {
		rec, release, err := p.Place(v, exclude)
		if errors.Is(err, ErrAllExcluded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		release() // the attempt failed
		order = append(order, rec.Node)
		exclude[rec.Node] = true
	}
	if strings.Join(order, ",") != "w1,w2,w3" {
		t.Fatalf("attempts: got %v, want w1 (warm), w2, w3", order)
	}
}

// TestBurstSpreadsWarm: with idle instances everywhere and plenty of
// memory, only the in-flight counts tell workers apart; a concurrent burst
// still spreads evenly, through Place and through Pick + Acquire.
func TestBurstSpreadsWarm(t *testing.T) {
	v := version("acme", "echo", 1, 128)
	var ws staticSource
	for _, n := range []string{"a", "b", "c"} {
		ws = append(ws, placeable(n, snapshot(65536, 0, 0, Warm{VersionKey(v), 1000})))
	}
	p := NewPlacer(ws, PlacerConfig{Rand: first}) // ties always to "a" without the counts
	var mu sync.Mutex
	count := map[string]int{}
	note := func(node string) {
		mu.Lock()
		count[node]++
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for range 15 {
		wg.Go(func() {
			rec, _, err := p.Place(v, nil)
			if err != nil {
				t.Error(err)
				return
			}
			note(rec.Node)
		})
	}
	wg.Wait()
	// Pick and Acquire are two steps: a caller without Place serialises
	// them itself.
	var pickMu sync.Mutex
	for range 15 {
		wg.Go(func() {
			pickMu.Lock()
			rec, err := p.Pick(v, nil)
			if err == nil {
				p.Acquire(rec.Node)
			}
			pickMu.Unlock()
			if err != nil {
				t.Error(err)
				return
			}
			note(rec.Node)
		})
	}
	wg.Wait()
	for _, n := range []string{"a", "b", "c"} {
		if count[n] != 10 || p.Inflight(n) != 10 {
			t.Errorf("%s: got %d placements, %d in flight; want 10", n, count[n], p.Inflight(n))
		}
	}
}
