package cluster

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/store"
)

// clock is a settable clock shared by workers and registries in a test.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// source is a LoadSource the test sets.
type source struct {
	mu   sync.Mutex
	snap Snapshot
}

func (s *source) Load() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap
}

func (s *source) Set(snap Snapshot) {
	s.mu.Lock()
	s.snap = snap
	s.mu.Unlock()
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func openStore(t *testing.T, dir string) *store.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := store.Open(ctx, store.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func newRegistry(t *testing.T, st *store.Store, clk *clock) *Registry {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	r, err := NewRegistry(ctx, RegistryConfig{Store: st, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func newHeartbeat(t *testing.T, st *store.Store, clk *clock, node string, src LoadSource) *Heartbeat {
	t.Helper()
	h, err := NewHeartbeat(testContext(t), HeartbeatConfig{
		Store: st, Node: node, Addr: node + ":7443", Source: src, Now: clk.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// admit admits node with a fake TPM attestation.
func admit(t *testing.T, r *Registry, clk *clock, node string) WorkerRecord {
	t.Helper()
	rec, err := r.Admit(testContext(t), Attestation{
		Node: node, SPIFFEID: "spiffe://zfaas.test/worker/" + node, Method: AttestTPM,
		EKFingerprint: "sha256:ek-" + node, PCRSummary: map[int]string{0: "0000000000000000"},
		AttestedAt: clk.Now(), SVIDExpiry: clk.Now().Add(time.Hour),
	})
	if err != nil {
		t.Fatalf("Admit %s: %v", node, err)
	}
	return rec
}

func beat(t *testing.T, h *Heartbeat) WorkerRecord {
	t.Helper()
	rec, err := h.Beat(testContext(t))
	if err != nil {
		t.Fatalf("Beat: %v", err)
	}
	return rec
}

// waitGen waits until r's view holds node at generation gen or later.
func waitGen(t *testing.T, r *Registry, node string, gen uint64) Worker {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if w, ok := r.Get(node); ok && w.Generation >= gen {
			return w
		}
		if time.Now().After(deadline) {
			w, _ := r.Get(node)
			t.Fatalf("registry never saw %s at generation %d (has %+v)", node, gen, w)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitGone waits until r's view no longer holds node.
func waitGone(t *testing.T, r *Registry, node string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, ok := r.Get(node); !ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("registry still holds %s", node)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func version(tenant, fn string, n int64, memMB int) api.Version {
	return api.Version{Tenant: tenant, Function: fn, Version: n, Config: api.FunctionConfig{Runtime: api.RuntimeGo, MemoryMB: memMB}}
}

func snapshot(capMB, usedMB, inflight int, warm ...Warm) Snapshot {
	return Snapshot{
		Capacity: Capacity{MemoryMB: capMB},
		Load:     Load{MemoryMB: usedMB, Instances: usedMB / 128, Inflight: inflight},
		Warm:     warm,
	}
}

// staticSource is a fixed view for placement tables.
type staticSource []Worker

func (s staticSource) Workers() []Worker { return s }

func placeable(node string, snap Snapshot) Worker {
	return Worker{
		WorkerRecord: WorkerRecord{
			Node: node, State: StateAdmitted, Capacity: snap.Capacity, Load: snap.Load,
			Warm: trimWarm(snap.Warm, DefaultMaxWarm), Generation: 1,
		},
		Live: true, Placeable: true,
	}
}

func first(int) int { return 0 }
