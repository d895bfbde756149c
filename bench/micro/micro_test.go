package micro

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/gateway"
	"github.com/zfaas/zfaas/runtime/pool"
	"github.com/zfaas/zfaas/store"
)

// inst is a pool.Instance that never dies.
type inst struct{ done chan struct{} }

func (i *inst) Stop(context.Context) error { return nil }
func (i *inst) Done() <-chan struct{}      { return i.done }

func start(context.Context) (pool.Instance, error) { return &inst{done: make(chan struct{})}, nil }

// BenchmarkPool measures a warm Acquire + Release of one key (an idle
// instance is always there), serially and from GOMAXPROCS goroutines, beside
// the floor of what it does: lock, pop from a slice, unlock, lock, push,
// unlock.
func BenchmarkPool(b *testing.B) {
	ctx := context.Background()
	newPool := func(b *testing.B) *pool.Pool {
		p := pool.New(pool.Config{})
		b.Cleanup(func() { _ = p.Close(ctx) })
		l, err := p.Acquire(ctx, "t/fn/1", 0, start)
		if err != nil {
			b.Fatal(err)
		}
		l.Release()
		return p
	}
	b.Run("acquire-release", func(b *testing.B) {
		p := newPool(b)
		b.ReportAllocs()
		for b.Loop() {
			l, err := p.Acquire(ctx, "t/fn/1", 0, start)
			if err != nil {
				b.Fatal(err)
			}
			l.Release()
		}
	})
	b.Run("acquire-release-parallel", func(b *testing.B) {
		p := newPool(b)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				l, err := p.Acquire(ctx, "t/fn/1", 0, start)
				if err != nil {
					b.Error(err)
					return
				}
				l.Release()
			}
		})
	})
	b.Run("baseline-mutex-slice", func(b *testing.B) {
		var mu sync.Mutex
		idle := []*inst{{}}
		b.ReportAllocs()
		for b.Loop() {
			mu.Lock()
			e := idle[len(idle)-1]
			idle = idle[:len(idle)-1]
			mu.Unlock()
			mu.Lock()
			idle = append(idle, e)
			mu.Unlock()
		}
	})
}

// echoInvoker answers every invocation with its payload, at once.
type echoInvoker struct{}

func (echoInvoker) Invoke(_ context.Context, inv api.Invocation) (*api.InvocationResult, error) {
	return &api.InvocationResult{Payload: inv.Payload}, nil
}

// allowAll is a policy that allows everything without evaluating anything,
// so BenchmarkGatewayInvoke measures the gateway, not a policy engine.
type allowAll struct{}

func (allowAll) Decide(context.Context, string, map[string]any) (gateway.Decision, error) {
	return gateway.Decision{ID: "bench", Allow: true}, nil
}

// openStore returns an embedded store in a temporary directory, closed
// when the benchmark ends, and the context bounding it.
func openStore(b *testing.B) (context.Context, *store.Store) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := store.Open(ctx, store.Config{DataDir: b.TempDir()})
	if err != nil {
		cancel()
		b.Fatal(err)
	}
	b.Cleanup(func() { cancel(); _ = st.Close() })
	return ctx, st
}

// publish stores version 1 of "fn" (Lambda mode) and an alias "live" on it.
func publish(ctx context.Context, b *testing.B, reg *gateway.Registry) {
	b.Helper()
	cfg := api.FunctionConfig{Runtime: api.RuntimeGo, Handler: "bootstrap"}
	if err := cfg.Normalize(); err != nil {
		b.Fatal(err)
	}
	pkg := store.PackageInfo{Digest: "sha256:" + strings.Repeat("0", 64), Size: 1}
	if _, err := reg.Publish(ctx, "default", "fn", cfg, pkg, ""); err != nil {
		b.Fatal(err)
	}
	if _, err := reg.SetAlias(ctx, "default", "fn", api.Alias{Name: "live", Version: 1}); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkRegistryResolve measures Resolve answered from the registry's
// cache ($LATEST and an alias), beside the floor: a read-locked map lookup.
func BenchmarkRegistryResolve(b *testing.B) {
	ctx, st := openStore(b)
	reg, err := gateway.NewRegistry(ctx, st, nil)
	if err != nil {
		b.Fatal(err)
	}
	publish(ctx, b, reg)
	for _, q := range []string{"$LATEST", "live"} {
		b.Run("cached-"+strings.TrimPrefix(q, "$"), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := reg.Resolve(ctx, "default", "fn", q, 0.5); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("baseline-rwmutex-map", func(b *testing.B) {
		var mu sync.RWMutex
		m := map[string]api.Version{"default.fn": {Function: "fn", Version: 1}}
		b.ReportAllocs()
		for b.Loop() {
			mu.RLock()
			_, ok := m["default.fn"]
			mu.RUnlock()
			if !ok {
				b.Fatal("missing")
			}
		}
	})
}

// BenchmarkGatewayInvoke measures the gateway's HTTP invoke handler in
// process (no network, an allow-all policy, an invoker that answers at
// once), beside the floor: a ServeMux route that reads a capped body and
// writes it back.
func BenchmarkGatewayInvoke(b *testing.B) {
	ctx, st := openStore(b)
	gw, err := gateway.New(ctx, gateway.Config{Store: st, Invoker: echoInvoker{}, Authorizer: allowAll{}, TempDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	publish(ctx, b, gw.Registry())
	body := []byte(`{"name":"bench"}`)
	serve := func(b *testing.B, h http.Handler, target string) {
		b.ReportAllocs()
		for b.Loop() {
			r := httptest.NewRequest(http.MethodPost, target, bytes.NewReader(body))
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != http.StatusOK {
				b.Fatalf("got status %d, want 200: %s", w.Code, w.Body)
			}
		}
	}
	b.Run("v1-invoke", func(b *testing.B) { serve(b, gw, "/v1/functions/fn/invoke") })
	b.Run("openfaas-route", func(b *testing.B) { serve(b, gw, "/function/fn/") })
	b.Run("baseline-servemux", func(b *testing.B) {
		mux := http.NewServeMux()
		mux.HandleFunc("POST /v1/functions/{target}/invoke", func(w http.ResponseWriter, r *http.Request) {
			p, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 6<<20))
			if err != nil {
				http.Error(w, "bad body", http.StatusBadRequest)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(p)
		})
		serve(b, mux, "/v1/functions/fn/invoke")
	})
}
