package gateway

import (
	"context"
	"errors"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/store"
)

func openStore(t *testing.T) *store.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := store.Open(ctx, store.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func newRegistry(t *testing.T, st *store.Store) *Registry {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	r, err := NewRegistry(ctx, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

var testPkg = store.PackageInfo{Digest: "sha256:ab00000000000000000000000000000000000000000000000000000000000000", Size: 1}

func goConfig() api.FunctionConfig {
	c := api.FunctionConfig{Runtime: api.RuntimeGo}
	if err := c.Normalize(); err != nil {
		panic(err)
	}
	return c
}

// TestConcurrentPublishFromTwoGateways: two registries (two gateways) on one
// store publish at once; every deploy gets a distinct number, with no gap,
// and $LATEST is the highest.
func TestConcurrentPublishFromTwoGateways(t *testing.T) {
	st := openStore(t)
	regs := []*Registry{newRegistry(t, st), newRegistry(t, st)}
	const per = 12
	var mu sync.Mutex
	var got []int64
	var wg sync.WaitGroup
	for i := range 2 * per {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := regs[i%2].Publish(context.Background(), "default", "race", goConfig(), testPkg, "")
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			got = append(got, v.Version)
			mu.Unlock()
		}()
	}
	wg.Wait()
	sort.Slice(got, func(i, j int) bool { return got[i] < got[j] })
	for i, n := range got {
		if n != int64(i+1) {
			t.Fatalf("versions %v: want 1..%d without duplicates or gaps", got, 2*per)
		}
	}
	for _, r := range regs {
		f, err := r.loadFunction(context.Background(), "default", "race")
		if err != nil {
			t.Fatal(err)
		}
		if f.LatestVersion != 2*per {
			t.Fatalf("latest %d, want %d", f.LatestVersion, 2*per)
		}
		vers, err := r.Versions(context.Background(), "default", "race")
		if err != nil || len(vers) != 2*per {
			t.Fatalf("versions: %d %v", len(vers), err)
		}
	}
}

func TestResolve(t *testing.T) {
	st := openStore(t)
	r := newRegistry(t, st)
	ctx := context.Background()
	for range 3 {
		if _, err := r.Publish(ctx, "default", "fn", goConfig(), testPkg, ""); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.SetAlias(ctx, "default", "fn", api.Alias{Name: "live", Version: 1, AdditionalVersion: 3, AdditionalWeight: 0.25}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		q    string
		rnd  float64
		want int64
		err  error
	}{
		{"", 0, 3, nil},
		{"$LATEST", 0, 3, nil},
		{"2", 0, 2, nil},
		{"4", 0, 0, ErrVersionNotFound},
		{"0", 0, 0, ErrVersionNotFound},
		{"99999999999999999999", 0, 0, ErrVersionNotFound},
		{"live", 0.1, 3, nil},
		{"live", 0.25, 1, nil},
		{"live", 0.9, 1, nil},
		{"nope", 0, 0, ErrAliasNotFound},
	}
	for _, tt := range tests {
		v, err := r.Resolve(ctx, "default", "fn", tt.q, tt.rnd)
		if !errors.Is(err, tt.err) || (err == nil && v.Version != tt.want) {
			t.Errorf("Resolve(%q, %v) = %d, %v; want %d, %v", tt.q, tt.rnd, v.Version, err, tt.want, tt.err)
		}
	}
	if _, err := r.Resolve(ctx, "default", "ghost", "", 0); !errors.Is(err, ErrFunctionNotFound) {
		t.Errorf("unknown function: got %v", err)
	}
	if _, err := r.SetAlias(ctx, "default", "fn", api.Alias{Name: "bad", Version: 7}); !errors.Is(err, ErrVersionNotFound) {
		t.Errorf("alias to a missing version: got %v", err)
	}
}

// TestCacheFollowsOtherGateway: a change made through one registry is seen
// by another through the watch, without a restart.
func TestCacheFollowsOtherGateway(t *testing.T) {
	st := openStore(t)
	a, b := newRegistry(t, st), newRegistry(t, st)
	ctx := context.Background()
	if _, err := a.Publish(ctx, "default", "fn", goConfig(), testPkg, ""); err != nil {
		t.Fatal(err)
	}
	if v, err := b.Resolve(ctx, "default", "fn", "", 0); err != nil || v.Version != 1 {
		t.Fatalf("b sees %d, %v", v.Version, err)
	}
	if _, err := a.Publish(ctx, "default", "fn", goConfig(), testPkg, ""); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		v, err := b.Resolve(ctx, "default", "fn", "", 0)
		if err == nil && v.Version == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("b still resolves %d, %v", v.Version, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := a.Delete(ctx, "default", "fn"); err != nil {
		t.Fatal(err)
	}
	for {
		_, err := b.Resolve(ctx, "default", "fn", "", 0)
		if errors.Is(err, ErrFunctionNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("b still resolves a deleted function: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
