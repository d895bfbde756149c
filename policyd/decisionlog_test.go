package policyd

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestDecisionLogMasks(t *testing.T) {
	e := newEngine(t, newStore(t), Config{Default: basicFS(), DecisionLog: true})
	ctx := testContext(t)
	start := time.Now().Add(-time.Second)
	input := map[string]any{
		"caller":   map[string]any{"spiffe_id": "spiffe://zfaas.test/ns/acme/fn/a"},
		"function": map[string]any{"name": "hello"},
		"password": "hunter2",
		"request": map[string]any{
			"method": "POST",
			"headers": map[string]any{
				"authorization": "Bearer secret-token",
				"cookie":        []any{"session=abc"},
				"content-type":  "application/json",
				"Traceparent":   "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
			},
		},
	}
	allowed, err := e.Decide(ctx, EntryInvoke, input)
	if err != nil || !allowed.Allow {
		t.Fatalf("Decide: got %+v, %v", allowed, err)
	}
	denied, err := e.Decide(ctx, EntryInvoke, map[string]any{"caller": map[string]any{"spiffe_id": "spiffe://zfaas.test/ns/evil/fn/x"}})
	if err != nil || denied.Allow {
		t.Fatalf("Decide: got %+v, %v", denied, err)
	}
	// The caller's map is untouched by masking.
	if input["request"].(map[string]any)["headers"].(map[string]any)["authorization"] != "Bearer secret-token" {
		t.Fatal("masking changed the caller's input")
	}
	if err := e.FlushDecisionLog(ctx); err != nil {
		t.Fatal(err)
	}

	recs := map[string]DecisionRecord{}
	if err := e.Decisions(ctx, DecisionFilter{Since: start}, func(r DecisionRecord) { recs[r.DecisionID] = r }); err != nil {
		t.Fatalf("Decisions: %v", err)
	}
	if len(recs) != 2 {
		t.Fatalf("got %d records, want 2", len(recs))
	}
	r, ok := recs[allowed.ID]
	if !ok {
		t.Fatalf("no record of decision %s", allowed.ID)
	}
	in := r.Input.(map[string]any)
	headers := in["request"].(map[string]any)["headers"].(map[string]any)
	if _, ok := headers["authorization"]; ok {
		t.Errorf("authorization header logged: %v", headers)
	}
	if _, ok := headers["cookie"]; ok {
		t.Errorf("cookie header logged: %v", headers)
	}
	if headers["content-type"] != "application/json" {
		t.Errorf("unmasked header lost: %v", headers)
	}
	if in["password"] != "**REDACTED**" {
		t.Errorf("password: got %v, want it redacted", in["password"])
	}
	wantErased := []string{"/input/password", "/input/request/headers/authorization", "/input/request/headers/cookie"}
	if !slices.Equal(r.Erased, wantErased) {
		t.Errorf("erased: got %v, want %v", r.Erased, wantErased)
	}
	if r.Caller != "spiffe://zfaas.test/ns/acme/fn/a" || r.TraceID != "4bf92f3577b34da6a3ce929d0e0e4736" || r.SpanID != "00f067aa0ba902b7" {
		t.Errorf("caller/trace: got %q %q %q", r.Caller, r.TraceID, r.SpanID)
	}
	if r.Revision != 0 || r.Entry != EntryInvoke || r.Query != QueryInvoke || !r.Allow || r.Node != "n1" || r.Digest == "" || r.MaskFailed {
		t.Errorf("record: got %+v", r)
	}
	if res, ok := r.Result.(map[string]any); !ok || res["allow"] != true {
		t.Errorf("result: got %v", r.Result)
	}

	var denies []DecisionRecord
	if err := e.Decisions(ctx, DecisionFilter{DenyOnly: true}, func(r DecisionRecord) { denies = append(denies, r) }); err != nil {
		t.Fatal(err)
	}
	if len(denies) != 1 || denies[0].DecisionID != denied.ID || denies[0].Reasons[0] != "caller is blocked" {
		t.Errorf("deny-only: got %+v", denies)
	}
	var limited int
	if err := e.Decisions(ctx, DecisionFilter{Limit: 1, Entry: EntryInvoke}, func(DecisionRecord) { limited++ }); err != nil || limited != 1 {
		t.Errorf("limit 1: got %d records, %v", limited, err)
	}
	var none int
	if err := e.Decisions(ctx, DecisionFilter{Since: time.Now().Add(time.Hour)}, func(DecisionRecord) { none++ }); err != nil || none != 0 {
		t.Errorf("future since: got %d records, %v", none, err)
	}
	if st := e.LogStats(); st.Sent != 2 || st.Dropped != 0 {
		t.Errorf("log stats: got %+v", st)
	}
}

func TestDecisionLogWithoutPolicy(t *testing.T) {
	e := newEngine(t, newStore(t), Config{DecisionLog: true})
	ctx := testContext(t)
	d, err := e.Decide(ctx, EntryInvoke, map[string]any{"secret": "x"})
	if !errors.Is(err, ErrNoPolicy) {
		t.Fatal(err)
	}
	if err := e.FlushDecisionLog(ctx); err != nil {
		t.Fatal(err)
	}
	var got []DecisionRecord
	if err := e.Decisions(ctx, DecisionFilter{}, func(r DecisionRecord) { got = append(got, r) }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].DecisionID != d.ID || got[0].Input != nil || got[0].Allow || got[0].Error != "no_policy" {
		t.Errorf("records: got %+v, want one denial without input", got)
	}
}

// TestSwapUnderLoad evaluates on two engines while revisions are pushed
// over and over. Every policy names its tag in its decision and masks only
// its own secret, so each decision and each log record must be consistent
// with exactly one revision.
func TestSwapUnderLoad(t *testing.T) {
	s := newStore(t)
	const secrets = 12
	a := newEngine(t, s, Config{Node: "a", Default: tagged(0), DecisionLog: true, DecisionLogQueue: 1 << 17})
	b := newEngine(t, s, Config{Node: "b", Default: tagged(0), DecisionLog: true, DecisionLogQueue: 1 << 17})
	ctx := testContext(t)

	input := map[string]any{}
	for i := range secrets + 1 {
		input[fmt.Sprintf("secret_%d", i)] = "s"
	}
	type obs struct {
		rev    int64
		reason string
	}
	var (
		stop     atomic.Bool
		wg       sync.WaitGroup
		mu       sync.Mutex
		seen     []obs
		failures atomic.Int64
	)
	for g := range 6 {
		e := a
		if g%2 == 1 {
			e = b
		}
		wg.Go(func() {
			var local []obs
			last := int64(-1)
			for !stop.Load() {
				d, err := e.Decide(ctx, EntryInvoke, input)
				if err != nil || !d.Allow || len(d.Reasons) != 1 {
					failures.Add(1)
					t.Errorf("%s: Decide during swaps: %+v, %v", e.Node(), d, err)
					return
				}
				if d.Revision < last {
					t.Errorf("%s: revision went back from %d to %d", e.Node(), last, d.Revision)
				}
				last = d.Revision
				local = append(local, obs{d.Revision, d.Reasons[0]})
				time.Sleep(time.Millisecond)
			}
			mu.Lock()
			seen = append(seen, local...)
			mu.Unlock()
		})
	}

	tagOf := map[int64]int{0: 0}
	for tag := 1; tag <= secrets; tag++ {
		pusher := a
		if tag%3 == 0 {
			pusher = b
		}
		info, err := pusher.PushFS(ctx, tagged(tag), "load-test")
		if err != nil {
			t.Fatalf("push %d: %v", tag, err)
		}
		tagOf[info.Revision] = tag
		time.Sleep(20 * time.Millisecond)
	}
	eventually(t, 10*time.Second, "both engines on the last revision", func() bool {
		ra, _ := a.Active()
		rb, _ := b.Active()
		return ra.Revision == int64(secrets) && rb.Revision == int64(secrets)
	})
	time.Sleep(50 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	if failures.Load() != 0 {
		t.Fatalf("%d decisions failed during swaps", failures.Load())
	}

	revsSeen := map[int64]int{}
	for _, o := range seen {
		tag, ok := tagOf[o.rev]
		if !ok {
			t.Fatalf("decision at unknown revision %d", o.rev)
		}
		if want := fmt.Sprintf("tag %d", tag); o.reason != want {
			t.Fatalf("decision at revision %d said %q, want %q", o.rev, o.reason, want)
		}
		revsSeen[o.rev]++
	}
	t.Logf("%d decisions over %d revisions: %v", len(seen), len(revsSeen), revsSeen)
	if len(revsSeen) < 3 {
		t.Errorf("decisions saw only revisions %v: the test did not overlap swaps", slices.Sorted(maps.Keys(revsSeen)))
	}

	for _, e := range []*Engine{a, b} {
		if err := e.FlushDecisionLog(ctx); err != nil {
			t.Fatal(err)
		}
	}
	var records int
	err := a.Decisions(ctx, DecisionFilter{}, func(r DecisionRecord) {
		records++
		tag, ok := tagOf[r.Revision]
		if !ok {
			t.Errorf("record %s at unknown revision %d", r.DecisionID, r.Revision)
			return
		}
		if want := fmt.Sprintf("tag %d", tag); len(r.Reasons) != 1 || r.Reasons[0] != want {
			t.Errorf("record at revision %d says %q, want %q", r.Revision, r.Reasons, want)
		}
		in, _ := r.Input.(map[string]any)
		for i := range secrets + 1 {
			_, present := in[fmt.Sprintf("secret_%d", i)]
			if want := i != tag; present != want {
				t.Errorf("record at revision %d (tag %d): secret_%d present=%v, want %v (mask of another revision applied)", r.Revision, tag, i, present, want)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	sa, sb := a.LogStats(), b.LogStats()
	if want := int(sa.Sent + sb.Sent); records != want || records < len(seen) {
		t.Errorf("read %d records, sent %d, decided %d", records, want, len(seen))
	}
	if sa.Dropped+sb.Dropped+sa.Failed+sb.Failed != 0 {
		t.Errorf("log stats: a %+v, b %+v", sa, sb)
	}
}
