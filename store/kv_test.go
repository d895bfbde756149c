package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestKVCreateGet(t *testing.T) {
	s := newStore(t)
	kv := newKV(t, s, "functions")
	ctx := testContext(t)

	if _, err := kv.Get(ctx, "fn.acme.a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get missing: got %v, want ErrNotFound", err)
	}
	rev, err := kv.Create(ctx, "fn.acme.a", []byte("one"))
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if rev == 0 {
		t.Fatal("Create returned revision 0")
	}
	if _, err := kv.Create(ctx, "fn.acme.a", []byte("two")); !errors.Is(err, ErrExists) {
		t.Fatalf("second Create: got %v, want ErrExists", err)
	}
	e, err := kv.Get(ctx, "fn.acme.a")
	if err != nil {
		t.Fatal(err)
	}
	if e.Key != "fn.acme.a" || string(e.Value) != "one" || e.Revision != rev || e.Deleted {
		t.Errorf("Get: got %+v, want one@%d", e, rev)
	}

	// Create works again after a delete.
	if err := kv.Delete(ctx, "fn.acme.a", rev); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := kv.Get(ctx, "fn.acme.a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get deleted: got %v, want ErrNotFound", err)
	}
	if _, err := kv.Create(ctx, "fn.acme.a", []byte("three")); err != nil {
		t.Fatalf("Create after delete: %v", err)
	}
}

func TestKVUpdateConflict(t *testing.T) {
	s := newStore(t)
	kv := newKV(t, s, "functions")
	ctx := testContext(t)

	rev, err := kv.Create(ctx, "k", []byte("0"))
	if err != nil {
		t.Fatal(err)
	}
	// Two updaters read the same revision; exactly one wins.
	var wg sync.WaitGroup
	results := make([]error, 2)
	for i := range 2 {
		wg.Go(func() {
			_, results[i] = kv.Update(ctx, "k", fmt.Appendf(nil, "writer %d", i), rev)
		})
	}
	wg.Wait()
	var wins, conflicts int
	for _, err := range results {
		switch {
		case err == nil:
			wins++
		case errors.Is(err, ErrConflict):
			conflicts++
		default:
			t.Errorf("Update: unexpected error %v", err)
		}
	}
	if wins != 1 || conflicts != 1 {
		t.Fatalf("got %d wins and %d conflicts, want 1 and 1", wins, conflicts)
	}

	e, err := kv.Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Update(ctx, "k", []byte("x"), e.Revision); err != nil {
		t.Errorf("Update at latest revision: %v", err)
	}
	if _, err := kv.Update(ctx, "missing", []byte("x"), 1); !errors.Is(err, ErrConflict) {
		t.Errorf("Update missing key: got %v, want ErrConflict", err)
	}
	if _, err := kv.Update(ctx, "k", []byte("x"), 0); err == nil {
		t.Error("Update at revision 0: got nil error")
	}
}

func TestKVDelete(t *testing.T) {
	s := newStore(t)
	kv := newKV(t, s, "functions")
	ctx := testContext(t)

	rev1, err := kv.Create(ctx, "k", []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	rev2, err := kv.Update(ctx, "k", []byte("2"), rev1)
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, "k", rev1); !errors.Is(err, ErrConflict) {
		t.Fatalf("Delete with stale revision: got %v, want ErrConflict", err)
	}
	if e, err := kv.Get(ctx, "k"); err != nil || string(e.Value) != "2" {
		t.Fatalf("after refused delete: got %+v, %v; want value 2", e, err)
	}
	if err := kv.Delete(ctx, "k", rev2); err != nil {
		t.Fatalf("Delete at latest revision: %v", err)
	}
	if err := kv.Delete(ctx, "never", 0); err != nil {
		t.Errorf("unconditional Delete of a missing key: %v", err)
	}
	if _, err := kv.Create(ctx, "u", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, "u", 0); err != nil {
		t.Errorf("unconditional Delete: %v", err)
	}
	if _, err := kv.Get(ctx, "u"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after Delete: got %v, want ErrNotFound", err)
	}
}

func TestKVKeys(t *testing.T) {
	s := newStore(t)
	kv := newKV(t, s, "functions")
	ctx := testContext(t)

	keys, err := kv.Keys(ctx, "")
	if err != nil {
		t.Fatalf("Keys on empty bucket: %v", err)
	}
	if keys == nil || len(keys) != 0 {
		t.Fatalf("Keys on empty bucket: got %#v, want empty non-nil slice", keys)
	}

	for _, k := range []string{"fn.acme.b", "fn.acme.a", "fn.acme2.c", "fn.other.d", "ver.acme.a.1", "fnx"} {
		if _, err := kv.Create(ctx, k, []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	if err := kv.Delete(ctx, "fn.acme.b", 0); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		prefix string
		want   []string
	}{
		{"", []string{"fn.acme.a", "fn.acme2.c", "fn.other.d", "fnx", "ver.acme.a.1"}},
		{"fn.acme.", []string{"fn.acme.a"}},
		{"fn.acme", []string{"fn.acme.a", "fn.acme2.c"}},
		{"fn", []string{"fn.acme.a", "fn.acme2.c", "fn.other.d", "fnx"}},
		{"fn.", []string{"fn.acme.a", "fn.acme2.c", "fn.other.d"}},
		{"ver.acme.a.1", []string{"ver.acme.a.1"}},
		{"nothing", []string{}},
		{"fn..", []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.prefix, func(t *testing.T) {
			got, err := kv.Keys(ctx, tt.prefix)
			if err != nil {
				t.Fatalf("Keys(%q): %v", tt.prefix, err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Keys(%q): got %q, want %q", tt.prefix, got, tt.want)
			}
		})
	}
	if _, err := kv.Keys(ctx, "fn.*"); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("Keys with wildcard: got %v, want ErrInvalidKey", err)
	}
}

func TestKVInvalidKeys(t *testing.T) {
	s := newStore(t)
	kv := newKV(t, s, "functions")
	ctx := testContext(t)
	for _, k := range []string{"", ".a", "a.", "a..b", "a b", "a*", "a>", "ä", "a\x00"} {
		if _, err := kv.Create(ctx, k, nil); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("Create(%q): got %v, want ErrInvalidKey", k, err)
		}
		if _, err := kv.Get(ctx, k); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("Get(%q): got %v, want ErrInvalidKey", k, err)
		}
	}
	for _, p := range []string{"", "a.*x", "a.>.b", "a..*", "*>"} {
		if _, err := kv.Watch(ctx, p); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("Watch(%q): got %v, want ErrInvalidKey", p, err)
		}
	}
	for _, b := range []string{"", "a.b", "a b", "a/b"} {
		if _, err := s.KV(ctx, b); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("KV(%q): got %v, want ErrInvalidKey", b, err)
		}
	}
	for _, k := range []string{"a", "fn.acme.hello", "A-Z_a/b=c.0-9"} {
		if !ValidKey(k) {
			t.Errorf("ValidKey(%q) = false, want true", k)
		}
	}
}

func recvEntry(t *testing.T, ch <-chan Entry) Entry {
	t.Helper()
	select {
	case e, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed early")
		}
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for a watch entry")
	}
	return Entry{}
}

func TestKVWatch(t *testing.T) {
	s := newStore(t)
	kv := newKV(t, s, "aliases")
	ctx := testContext(t)

	rev, err := kv.Create(ctx, "alias.acme.fn.live", []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, "alias.acme.fn.old", []byte("0")); err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, "alias.acme.fn.old", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, "other.key", []byte("x")); err != nil {
		t.Fatal(err)
	}

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := kv.Watch(wctx, "alias.acme.>")
	if err != nil {
		t.Fatal(err)
	}
	// The current value comes first; the deleted key does not.
	if e := recvEntry(t, ch); e.Key != "alias.acme.fn.live" || string(e.Value) != "1" || e.Deleted || e.Revision != rev {
		t.Fatalf("initial entry: got %+v, want alias.acme.fn.live=1@%d", e, rev)
	}

	rev2, err := kv.Update(ctx, "alias.acme.fn.live", []byte("2"), rev)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, "other.key2", []byte("y")); err != nil {
		t.Fatal(err)
	}
	if e := recvEntry(t, ch); e.Key != "alias.acme.fn.live" || string(e.Value) != "2" || e.Revision != rev2 || e.Deleted {
		t.Fatalf("update entry: got %+v, want alias.acme.fn.live=2@%d", e, rev2)
	}
	if err := kv.Delete(ctx, "alias.acme.fn.live", rev2); err != nil {
		t.Fatal(err)
	}
	if e := recvEntry(t, ch); e.Key != "alias.acme.fn.live" || !e.Deleted || e.Value != nil {
		t.Fatalf("delete entry: got %+v, want a deletion of alias.acme.fn.live", e)
	}

	cancel()
	select {
	case _, ok := <-ch:
		for ok {
			_, ok = <-ch
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch channel not closed after cancel")
	}
}

func TestKVWatchEndsOnClose(t *testing.T) {
	s := openStore(t, t.TempDir())
	kv := newKV(t, s, "b")
	ch, err := kv.Watch(t.Context(), ">")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case _, ok := <-ch:
		if ok {
			t.Fatal("got an entry from an empty bucket")
		}
	case <-time.After(15 * time.Second):
		t.Fatal("watch channel not closed after Store.Close")
	}
}

func TestKVBindExisting(t *testing.T) {
	s := newStore(t)
	ctx := testContext(t)
	a := newKV(t, s, "shared")
	if _, err := a.Create(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	b := newKV(t, s, "shared")
	if e, err := b.Get(ctx, "k"); err != nil || string(e.Value) != "v" {
		t.Fatalf("Get through second handle: got %+v, %v", e, err)
	}
	if b.Bucket() != "shared" {
		t.Errorf("Bucket: got %q, want shared", b.Bucket())
	}
}
