package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestLeaseExpiryDropsWorker: a worker that stops heartbeating is marked
// not live once its TTL passes and gets no more placements; the other one
// keeps them.
func TestLeaseExpiryDropsWorker(t *testing.T) {
	st := openStore(t, t.TempDir())
	clk := newClock()
	reg := newRegistry(t, st, clk)
	p := NewPlacer(reg, PlacerConfig{Rand: first})
	v := version("acme", "echo", 1, 128)

	src := &source{snap: snapshot(1024, 0, 0)}
	hb := map[string]*Heartbeat{}
	for _, n := range []string{"w1", "w2"} {
		admit(t, reg, clk, n)
		hb[n] = newHeartbeat(t, st, clk, n, src)
		waitGen(t, reg, n, beat(t, hb[n]).Generation)
	}
	if w, err := p.Pick(v, nil); err != nil || w.Node != "w1" {
		t.Fatalf("Pick: got %q, %v; want w1", w.Node, err)
	}

	// w1 goes silent; w2 keeps beating.
	clk.Advance(6 * time.Second)
	waitGen(t, reg, "w2", beat(t, hb["w2"]).Generation)
	clk.Advance(5 * time.Second) // w1's lease (10 s) has lapsed, w2's has not
	ws := reg.Workers()
	if len(ws) != 2 || ws[0].Node != "w1" || ws[0].Live || ws[0].Placeable || !ws[1].Live || !ws[1].Placeable {
		t.Fatalf("Workers: got %+v; want w1 lapsed, w2 live", ws)
	}
	for range 5 {
		if w, err := p.Pick(v, nil); err != nil || w.Node != "w2" {
			t.Fatalf("Pick: got %q, %v; want w2", w.Node, err)
		}
	}

	// w2 lapses too: nothing to place on, and the error says why.
	clk.Advance(10 * time.Second)
	_, err := p.Pick(v, nil)
	if !errors.Is(err, ErrNoWorker) || !errors.Is(err, ErrNoneAdmitted) {
		t.Fatalf("Pick: got %v, want ErrNoWorker/ErrNoneAdmitted", err)
	}
	if want := "2 known: 2 lease lapsed"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}

	// w1 comes back: one heartbeat makes it placeable again.
	waitGen(t, reg, "w1", beat(t, hb["w1"]).Generation)
	if w, err := p.Pick(v, nil); err != nil || w.Node != "w1" {
		t.Fatalf("Pick after return: got %q, %v; want w1", w.Node, err)
	}
}

// TestLeaseIgnoresClockSkew: a worker whose clock runs an hour ahead (or
// behind) still gets exactly its TTL, measured on the registry's clock
// from when the heartbeat was seen.
func TestLeaseIgnoresClockSkew(t *testing.T) {
	for _, skew := range []time.Duration{time.Hour, -time.Hour} {
		t.Run(skew.String(), func(t *testing.T) {
			st := openStore(t, t.TempDir())
			regClk, workerClk := newClock(), newClock()
			workerClk.Advance(skew)
			reg := newRegistry(t, st, regClk)
			admit(t, reg, regClk, "w1")
			h := newHeartbeat(t, st, workerClk, "w1", &source{snap: snapshot(1024, 0, 0)})
			w := waitGen(t, reg, "w1", beat(t, h).Generation)
			if !w.Live {
				t.Fatalf("fresh heartbeat not live: %+v", w)
			}
			regClk.Advance(9 * time.Second)
			if w, _ := reg.Get("w1"); !w.Live {
				t.Fatal("lease lapsed after 9 s, want 10 s")
			}
			regClk.Advance(time.Second)
			if w, _ := reg.Get("w1"); w.Live {
				t.Fatal("lease still live after 10 s")
			}
		})
	}
}

// TestHeartbeatKeepsControlPlaneState: heartbeats update load and lease
// but never undo a drain or a revocation, even when they race with it.
func TestHeartbeatKeepsControlPlaneState(t *testing.T) {
	st := openStore(t, t.TempDir())
	clk := newClock()
	reg := newRegistry(t, st, clk)
	ctx := testContext(t)
	src := &source{snap: snapshot(1024, 0, 0)}
	h := newHeartbeat(t, st, clk, "w1", src)

	if _, err := h.Beat(ctx); !errors.Is(err, ErrNotAdmitted) {
		t.Fatalf("Beat before admission: got %v, want ErrNotAdmitted", err)
	}
	if _, ok := reg.Get("w1"); ok {
		t.Fatal("a heartbeat created a record")
	}
	admit(t, reg, clk, "w1")
	beat(t, h)

	for _, to := range []State{StateDraining, StateRevoked} {
		// Many heartbeats race the state change; the change must survive.
		var wg sync.WaitGroup
		errs := make(chan error, 40)
		for i := range 8 {
			wg.Go(func() {
				src.Set(snapshot(1024, 128*(i%4), i))
				if _, err := h.Beat(ctx); err != nil {
					errs <- err
				}
			})
		}
		if _, err := reg.SetState(ctx, "w1", to, []string{"test: " + string(to)}); err != nil {
			t.Fatalf("SetState %s: %v", to, err)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("Beat: %v", err)
		}
		src.Set(snapshot(2048, 256, 7))
		rec := beat(t, h)
		if rec.State != to || rec.Capacity.MemoryMB != 2048 || rec.Load.Inflight != 7 {
			t.Fatalf("after heartbeat: got state %s capacity %d inflight %d; want %s 2048 7", rec.State, rec.Capacity.MemoryMB, rec.Load.Inflight, to)
		}
		if !slices.Equal(rec.Reasons, []string{"test: " + string(to)}) {
			t.Errorf("reasons: got %q", rec.Reasons)
		}
		w := waitGen(t, reg, "w1", rec.Generation)
		if w.State != to || w.Placeable || !w.Live {
			t.Fatalf("view: got %s placeable=%v live=%v; want %s, not placeable, live", w.State, w.Placeable, w.Live, to)
		}
	}
}

func TestStateTransitions(t *testing.T) {
	st := openStore(t, t.TempDir())
	clk := newClock()
	reg := newRegistry(t, st, clk)
	ctx := testContext(t)

	tests := []struct {
		from, to State
		ok       bool
	}{
		{StateAdmitted, StateDraining, true},
		{StateAdmitted, StateRevoked, true},
		{StateAdmitted, StateRefused, false},
		{StateDraining, StateAdmitted, true},
		{StateDraining, StateRevoked, true},
		{StateRevoked, StateAdmitted, false},
		{StateRevoked, StateDraining, false},
		{StateRefused, StateAdmitted, false},
		{StateRefused, StateRevoked, true},
	}
	for i, tt := range tests {
		t.Run(fmt.Sprintf("%s-%s", tt.from, tt.to), func(t *testing.T) {
			node := fmt.Sprintf("n%d", i)
			switch tt.from {
			case StateRefused:
				if _, err := reg.SetState(ctx, node, StateRefused, []string{"pcr 7"}); err != nil {
					t.Fatal(err)
				}
			default:
				admit(t, reg, clk, node)
				if tt.from == StateDraining || tt.from == StateRevoked {
					if _, err := reg.SetState(ctx, node, tt.from, nil); err != nil {
						t.Fatal(err)
					}
				}
			}
			rec, err := reg.SetState(ctx, node, tt.to, nil)
			if tt.ok != (err == nil) {
				t.Fatalf("SetState: got %v, want ok=%v", err, tt.ok)
			}
			if !tt.ok && !errors.Is(err, ErrTransition) {
				t.Fatalf("SetState: got %v, want ErrTransition", err)
			}
			if tt.ok && rec.State != tt.to {
				t.Fatalf("state: got %s, want %s", rec.State, tt.to)
			}
		})
	}

	t.Run("unknown", func(t *testing.T) {
		if _, err := reg.SetState(ctx, "ghost", StateDraining, nil); !errors.Is(err, ErrUnknownWorker) {
			t.Fatalf("drain unknown: got %v, want ErrUnknownWorker", err)
		}
		rec, err := reg.SetState(ctx, "ghost", StateRevoked, []string{"stolen"})
		if err != nil || rec.State != StateRevoked {
			t.Fatalf("revoke unknown: got %+v, %v", rec, err)
		}
		if _, err := reg.SetState(ctx, "Bad/Name", StateRevoked, nil); !errors.Is(err, ErrInvalidNode) {
			t.Fatalf("bad name: got %v, want ErrInvalidNode", err)
		}
	})

	t.Run("revoked is sticky until removed", func(t *testing.T) {
		admit(t, reg, clk, "r1")
		if _, err := reg.SetState(ctx, "r1", StateRevoked, []string{"pcr 7 changed"}); err != nil {
			t.Fatal(err)
		}
		_, err := reg.Admit(ctx, Attestation{Node: "r1", Method: AttestTPM, EKFingerprint: "sha256:ek-r1"})
		if !errors.Is(err, ErrRevoked) {
			t.Fatalf("Admit revoked: got %v, want ErrRevoked", err)
		}
		other := newRegistry(t, st, clk) // another control plane, via the watch
		if _, ok := other.Get("r1"); !ok {
			t.Fatal("other registry does not know r1")
		}
		if err := reg.Remove(ctx, "r1"); err != nil {
			t.Fatal(err)
		}
		waitGone(t, other, "r1")
		if _, ok := reg.Get("r1"); ok {
			t.Fatal("removed worker still in view")
		}
		if rec := admit(t, reg, clk, "r1"); rec.State != StateAdmitted {
			t.Fatalf("re-admit: got %s", rec.State)
		}
	})

	t.Run("drained stays drained on re-attestation", func(t *testing.T) {
		admit(t, reg, clk, "d1")
		if _, err := reg.SetState(ctx, "d1", StateDraining, []string{"maintenance"}); err != nil {
			t.Fatal(err)
		}
		clk.Advance(time.Minute)
		rec := admit(t, reg, clk, "d1")
		if rec.State != StateDraining || !rec.AttestedAt.Equal(clk.Now()) {
			t.Fatalf("re-attest drained: got %s at %s", rec.State, rec.AttestedAt)
		}
	})

	t.Run("EK bound to the node", func(t *testing.T) {
		admit(t, reg, clk, "e1")
		for _, ek := range []string{"sha256:other", ""} {
			_, err := reg.Admit(ctx, Attestation{Node: "e1", Method: AttestJoinToken, EKFingerprint: ek})
			if !errors.Is(err, ErrEKMismatch) {
				t.Fatalf("Admit with EK %q: got %v, want ErrEKMismatch", ek, err)
			}
		}
	})
}

// TestCASTwoWriters: two control planes (registries on one store) write the
// same record at once; no write is lost.
func TestCASTwoWriters(t *testing.T) {
	st := openStore(t, t.TempDir())
	clk := newClock()
	regs := []*Registry{newRegistry(t, st, clk), newRegistry(t, st, clk)}
	ctx := testContext(t)

	t.Run("drain races revoke", func(t *testing.T) {
		for i := range 5 {
			node := fmt.Sprintf("w%d", i)
			admit(t, regs[0], clk, node)
			var wg sync.WaitGroup
			var drainErr, revokeErr error
			wg.Go(func() { _, drainErr = regs[0].SetState(ctx, node, StateDraining, []string{"operator"}) })
			wg.Go(func() { _, revokeErr = regs[1].SetState(ctx, node, StateRevoked, []string{"pcr 7 changed"}) })
			wg.Wait()
			if revokeErr != nil {
				t.Fatalf("revoke: %v", revokeErr)
			}
			// The drain either came first or was refused after the revocation.
			if drainErr != nil && !errors.Is(drainErr, ErrTransition) {
				t.Fatalf("drain: %v", drainErr)
			}
			e, err := regs[0].kv.Get(ctx, node)
			if err != nil {
				t.Fatal(err)
			}
			rec, err := decode(e)
			if err != nil {
				t.Fatal(err)
			}
			wantGen := uint64(2)
			if drainErr == nil {
				wantGen = 3
			}
			if rec.State != StateRevoked || rec.Generation != wantGen {
				t.Fatalf("final: got %s generation %d; want revoked generation %d", rec.State, rec.Generation, wantGen)
			}
			for _, r := range regs {
				if w := waitGen(t, r, node, wantGen); w.State != StateRevoked {
					t.Fatalf("view: got %s, want revoked", w.State)
				}
			}
		}
	})

	t.Run("two admissions with different EKs", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i := range 2 {
			wg.Go(func() {
				_, errs[i] = regs[i].Admit(ctx, Attestation{Node: "twin", Method: AttestTPM, EKFingerprint: fmt.Sprintf("sha256:ek%d", i)})
			})
		}
		wg.Wait()
		var ok, mismatch int
		for _, err := range errs {
			switch {
			case err == nil:
				ok++
			case errors.Is(err, ErrEKMismatch):
				mismatch++
			default:
				t.Fatalf("Admit: %v", err)
			}
		}
		if ok != 1 || mismatch != 1 {
			t.Fatalf("got %d admitted, %d mismatched; want 1 and 1 (%v)", ok, mismatch, errs)
		}
	})
}

// TestRegistryRestart: a new registry on the same store, and one on a
// reopened store, sees the current workers, their states and leases.
func TestRegistryRestart(t *testing.T) {
	dir := t.TempDir()
	clk := newClock()
	ctx := testContext(t)

	st := openStore(t, dir)
	ctx1, stop1 := context.WithCancel(ctx)
	reg1, err := NewRegistry(ctx1, RegistryConfig{Store: st, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	src := &source{snap: snapshot(1024, 128, 1, Warm{Version: "acme/echo/1", Idle: 1})}
	for _, n := range []string{"w1", "w2", "w3"} {
		admit(t, reg1, clk, n)
		beat(t, newHeartbeat(t, st, clk, n, src))
	}
	if _, err := reg1.SetState(ctx, "w2", StateDraining, []string{"maintenance"}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(4 * time.Second)
	beat(t, newHeartbeat(t, st, clk, "w3", src))
	stop1()

	check := func(t *testing.T, reg *Registry) {
		t.Helper()
		ws := reg.Workers()
		if len(ws) != 3 {
			t.Fatalf("Workers: got %d, want 3", len(ws))
		}
		want := map[string]State{"w1": StateAdmitted, "w2": StateDraining, "w3": StateAdmitted}
		for _, w := range ws {
			if w.State != want[w.Node] || !w.Live || w.Addr != w.Node+":7443" || len(w.Warm) != 1 {
				t.Errorf("%s: got %+v", w.Node, w)
			}
		}
		// The leases were written before the restart: they keep their
		// expiry (w1 at +10 s, w3 at +14 s), not a fresh TTL.
		clk.Advance(7 * time.Second)
		defer clk.Advance(-7 * time.Second)
		if w, _ := reg.Get("w1"); w.Live {
			t.Error("w1's lease did not lapse at its recorded expiry")
		}
		if w, _ := reg.Get("w3"); !w.Live {
			t.Error("w3's lease lapsed early")
		}
	}
	t.Run("same store", func(t *testing.T) { check(t, newRegistry(t, st, clk)) })

	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	t.Run("reopened store", func(t *testing.T) { check(t, newRegistry(t, openStore(t, dir), clk)) })
}

// TestPrune: records of admitted workers whose lease lapsed long ago are
// deleted; draining and revoked ones stay.
func TestPrune(t *testing.T) {
	st := openStore(t, t.TempDir())
	clk := newClock()
	ctx := testContext(t)
	reg, err := NewRegistry(ctx, RegistryConfig{Store: st, Now: clk.Now, ForgetAfter: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	src := &source{snap: snapshot(1024, 0, 0)}
	hb := map[string]*Heartbeat{}
	for _, n := range []string{"alive", "dead", "drained", "revoked"} {
		admit(t, reg, clk, n)
		hb[n] = newHeartbeat(t, st, clk, n, src)
		waitGen(t, reg, n, beat(t, hb[n]).Generation)
	}
	for n, s := range map[string]State{"drained": StateDraining, "revoked": StateRevoked} {
		if _, err := reg.SetState(ctx, n, s, nil); err != nil {
			t.Fatal(err)
		}
	}
	clk.Advance(30 * time.Minute)
	if got, err := reg.Prune(ctx); err != nil || len(got) != 0 {
		t.Fatalf("Prune early: got %v, %v", got, err)
	}
	clk.Advance(31 * time.Minute)
	waitGen(t, reg, "alive", beat(t, hb["alive"]).Generation)
	got, err := reg.Prune(ctx)
	if err != nil || !slices.Equal(got, []string{"dead"}) {
		t.Fatalf("Prune: got %v, %v; want [dead]", got, err)
	}
	if _, err := hb["dead"].Beat(ctx); !errors.Is(err, ErrNotAdmitted) {
		t.Fatalf("Beat after prune: got %v, want ErrNotAdmitted", err)
	}
	other := newRegistry(t, st, clk)
	var names []string
	for _, w := range other.Workers() {
		names = append(names, w.Node)
	}
	if !slices.Equal(names, []string{"alive", "drained", "revoked"}) {
		t.Fatalf("after prune: got %v", names)
	}
}
