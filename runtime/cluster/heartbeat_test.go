package cluster

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestHeartbeatRecord(t *testing.T) {
	st := openStore(t, t.TempDir())
	clk := newClock()
	reg := newRegistry(t, st, clk)
	admitted := admit(t, reg, clk, "w1")
	src := &source{snap: Snapshot{
		Capacity: Capacity{MemoryMB: 4096, MaxInstances: 20},
		Load:     Load{MemoryMB: 640, Instances: 4, Inflight: 2},
		Warm: []Warm{
			{Version: "acme/b/1", Idle: 1}, {Version: "acme/a/2", Idle: 3},
			{Version: "acme/c/1", Idle: 0}, {Version: "acme/b/1", Idle: 1},
		},
	}}
	rec := beat(t, newHeartbeat(t, st, clk, "w1", src))
	if rec.Generation != admitted.Generation+1 {
		t.Errorf("generation: got %d, want %d", rec.Generation, admitted.Generation+1)
	}
	if !rec.LeaseExpiry.Equal(clk.Now().Add(DefaultLeaseTTL)) || !rec.UpdatedAt.Equal(clk.Now()) {
		t.Errorf("lease: got %s updated %s", rec.LeaseExpiry, rec.UpdatedAt)
	}
	wantWarm := []Warm{{Version: "acme/a/2", Idle: 3}, {Version: "acme/b/1", Idle: 2}}
	if !slices.Equal(rec.Warm, wantWarm) {
		t.Errorf("warm: got %v, want %v", rec.Warm, wantWarm)
	}
	w := waitGen(t, reg, "w1", rec.Generation)
	if w.SPIFFEID != admitted.SPIFFEID || w.EKFingerprint != admitted.EKFingerprint || w.Addr != "w1:7443" ||
		w.Capacity != src.snap.Capacity || w.Load != src.snap.Load || !w.Placeable {
		t.Errorf("view: got %+v", w)
	}
}

func TestHeartbeatConfig(t *testing.T) {
	st := openStore(t, t.TempDir())
	ctx := testContext(t)
	src := &source{}
	for _, tt := range []struct {
		name string
		cfg  HeartbeatConfig
		want string
	}{
		{"no store", HeartbeatConfig{Node: "w1", Source: src}, "needs Store"},
		{"bad node", HeartbeatConfig{Store: st, Node: "W1!", Source: src}, "invalid node"},
		{"ttl too short", HeartbeatConfig{Store: st, Node: "w1", Source: src, Interval: time.Second, TTL: time.Second}, "shorter than twice"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewHeartbeat(ctx, tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error with %q", err, tt.want)
			}
		})
	}
}

// TestLeave: a worker shutting down ends its lease at once; its next
// heartbeat makes it placeable again.
func TestLeave(t *testing.T) {
	st := openStore(t, t.TempDir())
	clk := newClock()
	reg := newRegistry(t, st, clk)
	ctx := testContext(t)
	admit(t, reg, clk, "w1")
	h := newHeartbeat(t, st, clk, "w1", &source{snap: snapshot(1024, 0, 0)})
	w := waitGen(t, reg, "w1", beat(t, h).Generation)
	if !w.Placeable {
		t.Fatal("not placeable after heartbeat")
	}
	if err := h.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	if w := waitGen(t, reg, "w1", w.Generation+1); w.Live || w.Placeable {
		t.Fatalf("after Leave: got live=%v placeable=%v", w.Live, w.Placeable)
	}
	if w := waitGen(t, reg, "w1", beat(t, h).Generation); !w.Placeable {
		t.Fatal("not placeable after returning")
	}
}

// TestRun: Run beats on its interval and reports state changes.
func TestRun(t *testing.T) {
	st := openStore(t, t.TempDir())
	clk := newClock()
	reg := newRegistry(t, st, clk)
	ctx, cancel := context.WithCancel(testContext(t))
	admit(t, reg, clk, "w1")
	states := make(chan State, 8)
	h, err := NewHeartbeat(ctx, HeartbeatConfig{
		Store: st, Node: "w1", Source: &source{snap: snapshot(1024, 0, 0)}, Now: clk.Now,
		Interval: 5 * time.Millisecond, TTL: time.Second, OnState: func(s State) { states <- s },
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	if s := <-states; s != StateAdmitted {
		t.Fatalf("first state: got %s, want admitted", s)
	}
	if _, err := reg.SetState(ctx, "w1", StateDraining, []string{"maintenance"}); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-states:
		if s != StateDraining {
			t.Fatalf("state: got %s, want draining", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not report the drain")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}
