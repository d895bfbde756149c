package pool

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type fakeInst struct {
	done    chan struct{}
	stopped atomic.Bool
	once    sync.Once
}

func newFake() *fakeInst { return &fakeInst{done: make(chan struct{})} }

func (f *fakeInst) Stop(context.Context) error {
	f.stopped.Store(true)
	f.die()
	return nil
}
func (f *fakeInst) Done() <-chan struct{} { return f.done }
func (f *fakeInst) die()                  { f.once.Do(func() { close(f.done) }) }

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func newPool(t *testing.T, c *clock) *Pool {
	t.Helper()
	p := New(Config{IdleTimeout: time.Minute, ReapInterval: time.Hour, Now: c.Now})
	t.Cleanup(func() { _ = p.Close(context.Background()) })
	return p
}

func TestWarmReuse(t *testing.T) {
	p := newPool(t, &clock{t: time.Unix(0, 0)})
	starts := 0
	start := func(context.Context) (Instance, error) { starts++; return newFake(), nil }
	l1, err := p.Acquire(context.Background(), "k", 1, start)
	if err != nil || !l1.Cold {
		t.Fatalf("first acquire: cold=%v err=%v, want cold start", l1 != nil && l1.Cold, err)
	}
	inst := l1.Instance()
	l1.Release()
	l2, err := p.Acquire(context.Background(), "k", 1, start)
	if err != nil {
		t.Fatal(err)
	}
	if l2.Cold || l2.Instance() != inst {
		t.Fatalf("second acquire: cold=%v same=%v, want the warm instance", l2.Cold, l2.Instance() == inst)
	}
	if starts != 1 {
		t.Fatalf("got %d starts, want 1", starts)
	}
	l2.Release()
}

func TestLimitWaitsThenNoCapacity(t *testing.T) {
	p := newPool(t, &clock{t: time.Unix(0, 0)})
	start := func(context.Context) (Instance, error) { return newFake(), nil }
	l1, err := p.Acquire(context.Background(), "k", 1, start)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := p.Acquire(ctx, "k", 1, start); !errors.Is(err, ErrNoCapacity) {
		t.Fatalf("got %v, want ErrNoCapacity", err)
	}
	// A waiter gets the instance as soon as it is released.
	got := make(chan *Lease, 1)
	go func() {
		l, err := p.Acquire(context.Background(), "k", 1, start)
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	time.Sleep(10 * time.Millisecond)
	inst := l1.Instance()
	l1.Release()
	l2 := <-got
	if l2.Instance() != inst || l2.Cold {
		t.Fatalf("waiter got a different or cold instance")
	}
	l2.Release()
}

func TestDiscardNeverReused(t *testing.T) {
	p := newPool(t, &clock{t: time.Unix(0, 0)})
	start := func(context.Context) (Instance, error) { return newFake(), nil }
	l1, _ := p.Acquire(context.Background(), "k", 1, start)
	bad := l1.Instance().(*fakeInst)
	l1.Discard("timeout")
	if !bad.stopped.Load() {
		t.Fatal("discarded instance was not stopped")
	}
	l2, err := p.Acquire(context.Background(), "k", 1, start)
	if err != nil {
		t.Fatal(err)
	}
	if l2.Instance() == Instance(bad) || !l2.Cold {
		t.Fatal("discarded instance was handed out again")
	}
	l2.Release()
}

func TestDeadIdleInstanceSkipped(t *testing.T) {
	p := newPool(t, &clock{t: time.Unix(0, 0)})
	start := func(context.Context) (Instance, error) { return newFake(), nil }
	l1, _ := p.Acquire(context.Background(), "k", 1, start)
	f := l1.Instance().(*fakeInst)
	l1.Release()
	f.die() // crashed while idle
	l2, err := p.Acquire(context.Background(), "k", 1, start)
	if err != nil {
		t.Fatal(err)
	}
	if !l2.Cold {
		t.Fatal("got the dead instance, want a fresh one")
	}
	l2.Release()
}

func TestReapIdle(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	p := newPool(t, c)
	var stopped []string
	var mu sync.Mutex
	p.cfg.OnStop = func(_ string, reason string) { mu.Lock(); stopped = append(stopped, reason); mu.Unlock() }
	start := func(context.Context) (Instance, error) { return newFake(), nil }
	l, _ := p.Acquire(context.Background(), "k", 0, start)
	l.Release()
	c.Add(30 * time.Second)
	p.Reap()
	if s := p.Stats()["k"]; s.Idle != 1 {
		t.Fatalf("got %d idle after 30s, want 1", s.Idle)
	}
	c.Add(31 * time.Second)
	p.Reap()
	if s, ok := p.Stats()["k"]; ok {
		t.Fatalf("got %+v after idle timeout, want scaled to zero", s)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(stopped) != 1 || stopped[0] != "idle" {
		t.Fatalf("got stop reasons %v, want [idle]", stopped)
	}
}

func TestStartErrorFreesSlot(t *testing.T) {
	p := newPool(t, &clock{t: time.Unix(0, 0)})
	boom := errors.New("boom")
	if _, err := p.Acquire(context.Background(), "k", 1, func(context.Context) (Instance, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Fatalf("got %v, want boom", err)
	}
	l, err := p.Acquire(context.Background(), "k", 1, func(context.Context) (Instance, error) { return newFake(), nil })
	if err != nil {
		t.Fatalf("slot not freed after failed start: %v", err)
	}
	l.Release()
}

func TestConcurrentNeverExceedsLimit(t *testing.T) {
	p := newPool(t, &clock{t: time.Unix(0, 0)})
	var live, maxLive atomic.Int32
	start := func(context.Context) (Instance, error) { return newFake(), nil }
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := p.Acquire(context.Background(), "k", 3, start)
			if err != nil {
				t.Error(err)
				return
			}
			n := live.Add(1)
			for {
				m := maxLive.Load()
				if n <= m || maxLive.CompareAndSwap(m, n) {
					break
				}
			}
			time.Sleep(time.Millisecond)
			live.Add(-1)
			l.Release()
		}()
	}
	wg.Wait()
	if m := maxLive.Load(); m > 3 {
		t.Fatalf("got %d concurrent leases, want at most 3", m)
	}
	if s := p.Stats()["k"]; s.Total > 3 {
		t.Fatalf("got %d instances, want at most 3", s.Total)
	}
}

func TestEvictStopsIdleAndBusyOnRelease(t *testing.T) {
	p := newPool(t, &clock{t: time.Unix(0, 0)})
	start := func(context.Context) (Instance, error) { return newFake(), nil }
	idle, _ := p.Acquire(context.Background(), "k", 0, start)
	busy, _ := p.Acquire(context.Background(), "k", 0, start)
	idleInst := idle.Instance().(*fakeInst)
	idle.Release()
	p.Evict("k")
	if !idleInst.stopped.Load() {
		t.Fatal("idle instance survived Evict")
	}
	busyInst := busy.Instance().(*fakeInst)
	if busyInst.stopped.Load() {
		t.Fatal("busy instance stopped mid-invocation")
	}
	busy.Release()
	if !busyInst.stopped.Load() {
		t.Fatal("busy instance of an evicted key was kept after release")
	}
	if s, ok := p.Stats()["k"]; ok && s.Total != 0 {
		t.Fatalf("got %+v after evict, want nothing", s)
	}
	// A new instance for the same key (a redeploy) is kept as usual.
	l, _ := p.Acquire(context.Background(), "k", 0, start)
	l.Release()
	if s := p.Stats()["k"]; s.Idle != 1 {
		t.Fatalf("got %+v, want the new instance idle", s)
	}
}
