package audit

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestCanonicalEncoding(t *testing.T) {
	r := Record{
		V: 1, Seq: 7, Time: time.Date(2025, 3, 1, 12, 0, 0, 120000000, time.FixedZone("x", 3600)),
		Kind: KindDecision, Actor: "spiffe://zfaas.local/user/alice", PolicyRevision: 4, TraceID: "t1",
		Subject: "acme/hello", Action: "invoke", Outcome: OutcomeDeny,
		Details: map[string]any{"z": 1, "a": "<b&c>", "m": map[string]any{"y": true, "b": nil}},
		Prev:    zeroHash, Hash: "ignored",
	}
	d, err := normalizeDetails(r.Details)
	if err != nil {
		t.Fatal(err)
	}
	r.Details = d
	got, err := Canonical(&r)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"v":1,"seq":7,"time":"2025-03-01T11:00:00.12Z","kind":"decision","actor":"spiffe://zfaas.local/user/alice",` +
		`"policy_revision":4,"trace_id":"t1","subject":"acme/hello","action":"invoke","outcome":"deny",` +
		`"details":{"a":"<b&c>","m":{"b":null,"y":true},"z":1},"prev":"` + zeroHash + `"}`
	if string(got) != want {
		t.Fatalf("Canonical:\n got %s\nwant %s", got, want)
	}
	sum := sha256.Sum256([]byte(want))
	h, err := ComputeHash(SHA256, &r)
	if err != nil || h != hex.EncodeToString(sum[:]) {
		t.Fatalf("ComputeHash: got %s, %v; want %x", h, err, sum)
	}
	// A line round-trips to the same canonical bytes.
	r.Hash = h
	line, err := MarshalLine(&r)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseLine(line)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := Canonical(&back)
	if !bytes.Equal(again, got) {
		t.Fatalf("round trip:\n got %s\nwant %s", again, got)
	}
}

func TestAppendExportVerify(t *testing.T) {
	st := newStore(t)
	keyDir := t.TempDir()
	l := openLog(t, st, Config{KeyDir: keyDir, CheckpointEvery: 10, Node: "gw-1"})
	ctx := testContext(t)
	first, err := l.AppendSync(ctx, sample(0, KindDeploy))
	if err != nil {
		t.Fatal(err)
	}
	if first.Seq != 1 || first.Prev != zeroHash || first.Node != "gw-1" || first.V != RecordVersion {
		t.Fatalf("first record: got seq %d prev %s node %q v %d", first.Seq, first.Prev, first.Node, first.V)
	}
	// Flushed in steps, so each step's last batch crosses one multiple of 10.
	for _, n := range []int{9, 10, 10, 5} {
		appendN(t, l, n)
	}
	out := export(t, l, Query{}, FormatJSONL)
	keys, err := ReadPublicKeys(keyDir)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(bytes.NewReader(out), keys...)
	if err != nil {
		t.Fatalf("Verify: %v\n%s", err, out)
	}
	if !rep.OK() || rep.Records != 35 || rep.First != 1 || rep.Last != 35 {
		t.Fatalf("report: got %+v, want 35 records 1..35, OK", rep)
	}
	// Checkpoints at 10, 20, 30 (every 10) and 35 (cut by Export).
	if rep.Checkpoints != 4 || rep.CoveredThrough != 35 || rep.Uncovered != 0 {
		t.Errorf("checkpoints: got %d covering through %d (%d uncovered), want 4 through 35", rep.Checkpoints, rep.CoveredThrough, rep.Uncovered)
	}
	if !strings.HasPrefix(rep.Anchor, "genesis") {
		t.Errorf("anchor: got %q, want genesis", rep.Anchor)
	}
	if s := l.Stats(); s.Appended != 35 || s.Dropped != 0 {
		t.Errorf("stats: got %+v", s)
	}
	// The file's mode and the published key.
	pub, err := l.PublicKeys(ctx)
	if err != nil || len(pub) != 1 || pub[0] != l.Verifier().String() {
		t.Errorf("PublicKeys: got %v, %v; want [%s]", pub, err, l.Verifier())
	}
}

// tamper edits an export; verify must fail at seq.
func TestVerifyDetectsTampering(t *testing.T) {
	st := newStore(t)
	keyDir := t.TempDir()
	l := openLog(t, st, Config{KeyDir: keyDir, CheckpointEvery: 10})
	appendN(t, l, 10) // checkpoint at 10
	appendN(t, l, 10) // and at 20
	good := export(t, l, Query{}, FormatJSONL)
	keys, err := ReadPublicKeys(keyDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(bytes.NewReader(good), keys...); err != nil {
		t.Fatalf("untouched export: %v", err)
	}
	rehash := func(t *testing.T, line string, edit func(*Record)) string {
		t.Helper()
		r, err := ParseLine([]byte(line))
		if err != nil {
			t.Fatal(err)
		}
		edit(&r)
		r.Hash, _ = ComputeHash(SHA256, &r)
		b, _ := MarshalLine(&r)
		return string(b)
	}
	tests := []struct {
		name    string
		edit    func(t *testing.T, ls []string) []string
		wantSeq uint64
		reason  string
	}{
		{"edit a field", func(t *testing.T, ls []string) []string {
			i := recordLine(t, ls, 7)
			ls[i] = strings.Replace(ls[i], `"outcome":"allow"`, `"outcome":"deny"`, 1)
			return ls
		}, 7, "altered"},
		{"edit details", func(t *testing.T, ls []string) []string {
			i := recordLine(t, ls, 12)
			ls[i] = strings.Replace(ls[i], `"i":1,`, `"i":99,`, 1)
			return ls
		}, 12, "altered"},
		{"edit and re-hash", func(t *testing.T, ls []string) []string {
			i := recordLine(t, ls, 5)
			ls[i] = rehash(t, ls[i], func(r *Record) { r.Actor = "spiffe://zfaas.local/user/mallory" })
			return ls
		}, 6, "does not link"},
		{"delete", func(t *testing.T, ls []string) []string {
			i := recordLine(t, ls, 9)
			return append(ls[:i:i], ls[i+1:]...)
		}, 9, "missing"},
		{"reorder", func(t *testing.T, ls []string) []string {
			i, j := recordLine(t, ls, 14), recordLine(t, ls, 15)
			ls[i], ls[j] = ls[j], ls[i]
			return ls
		}, 14, "missing"},
		{"insert a duplicate", func(t *testing.T, ls []string) []string {
			i := recordLine(t, ls, 3)
			return append(ls[:i+1:i+1], append([]string{ls[i]}, ls[i+1:]...)...)
		}, 3, "appears after"},
		{"insert a forged record", func(t *testing.T, ls []string) []string {
			i := recordLine(t, ls, 10)
			forged := rehash(t, ls[i], func(r *Record) {
				r.Seq, r.Prev, r.Kind, r.Details = 11, r.Hash, KindDeploy, map[string]any{"forged": true}
			})
			return append(ls[:i+1:i+1], append([]string{forged}, ls[i+1:]...)...)
		}, 11, "appears after"},
		{"delete and renumber", func(t *testing.T, ls []string) []string {
			// Remove record 4 and rewrite every later record so the chain
			// is consistent again: only the checkpoint catches it.
			i := recordLine(t, ls, 4)
			ls = append(ls[:i:i], ls[i+1:]...)
			prev := ""
			for j, l := range ls {
				if !strings.HasPrefix(l, `{"v":`) {
					continue
				}
				r, _ := ParseLine([]byte(l))
				if r.Seq < 4 {
					prev = r.Hash
					continue
				}
				ls[j] = rehash(t, l, func(r *Record) { r.Seq--; r.Prev = prev })
				r2, _ := ParseLine([]byte(ls[j]))
				prev = r2.Hash
			}
			// The trailer counts one record less now.
			ls[len(ls)-1] = `{"audit":"trailer","records":19,"first":1,"last":19}`
			return ls
		}, 10, "checkpoint at size 10"},
		{"truncate", func(t *testing.T, ls []string) []string {
			return ls[:recordLine(t, ls, 16)]
		}, 16, "trailer"},
		{"remove the last record", func(t *testing.T, ls []string) []string {
			i := recordLine(t, ls, 20)
			return append(ls[:i:i], ls[i+1:]...)
		}, 20, "trailer counts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ls := tt.edit(t, lines(good))
			rep, err := Verify(strings.NewReader(strings.Join(ls, "\n")+"\n"), keys...)
			var b *BrokenLink
			if !errors.As(err, &b) || !errors.Is(err, ErrBroken) {
				t.Fatalf("Verify: got %v, want a *BrokenLink", err)
			}
			if b.Seq != tt.wantSeq || !strings.Contains(b.Reason, tt.reason) {
				t.Errorf("broken link: got seq %d %q, want seq %d containing %q", b.Seq, b.Reason, tt.wantSeq, tt.reason)
			}
			if rep.OK() || rep.Broken != b {
				t.Errorf("report: got OK %v broken %v", rep.OK(), rep.Broken)
			}
		})
	}
}

func TestForgedCheckpointRejected(t *testing.T) {
	st := newStore(t)
	keyDir := t.TempDir()
	l := openLog(t, st, Config{KeyDir: keyDir})
	appendN(t, l, 5)
	good := export(t, l, Query{}, FormatJSONL)
	keys, _ := ReadPublicKeys(keyDir)

	// An attacker's key with the same name.
	evilDir := t.TempDir()
	evil, err := loadOrCreateKey(evilDir, SuiteStandard, DefaultOrigin, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ls := lines(good)
	cpi := -1
	for i, l := range ls {
		if strings.HasPrefix(l, `{"audit":"checkpoint"`) {
			cpi = i
		}
	}
	if cpi < 0 {
		t.Fatalf("no checkpoint in export:\n%s", good)
	}
	r5, _ := ParseLine([]byte(ls[recordLine(t, ls, 5)]))
	hb, _ := hex.DecodeString(r5.Hash)
	forgedNote, err := signNote(rand.Reader, evil, checkpointText(DefaultOrigin, 5, hb))
	if err != nil {
		t.Fatal(err)
	}
	alteredText := strings.Replace(mustCheckpointNote(t, ls[cpi]), "\n5\n", "\n4\n", 1)
	for _, tt := range []struct {
		name, note string
		reason     string
	}{
		{"signed by an unknown key", forgedNote, "no signature by a trusted key"},
		{"text altered", alteredText, "does not verify"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ls := lines(good)
			b, _ := encodeJSON(checkpointLine{Audit: "checkpoint", Size: 5, Note: tt.note})
			ls[cpi] = string(b)
			_, err := Verify(strings.NewReader(strings.Join(ls, "\n")+"\n"), keys...)
			var bl *BrokenLink
			if !errors.As(err, &bl) || bl.Seq != 5 || !strings.Contains(bl.Reason, tt.reason) {
				t.Fatalf("Verify: got %v, want a broken link at 5 containing %q", err, tt.reason)
			}
		})
	}
	// The attacker's key alone does not verify the real checkpoint either.
	if _, err := Verify(bytes.NewReader(good), evil.v); !errors.Is(err, ErrBroken) {
		t.Errorf("Verify with the wrong key: got %v, want ErrBroken", err)
	}
	// Without keys the chain verifies but the report is not OK.
	rep, err := Verify(bytes.NewReader(good))
	if err != nil || rep.SignaturesChecked || rep.OK() {
		t.Errorf("Verify without keys: got %+v, %v; want chain ok, signatures unchecked, not OK", rep, err)
	}
}

func mustCheckpointNote(t *testing.T, line string) string {
	t.Helper()
	var cl checkpointLine
	if err := json.Unmarshal([]byte(line), &cl); err != nil {
		t.Fatal(err)
	}
	return cl.Note
}

func TestConcurrentWritersOneChain(t *testing.T) {
	st := newStore(t)
	const writers, each = 3, 150
	logs := make([]*Log, writers)
	for i := range logs {
		logs[i] = openLog(t, st, Config{Node: "gw-" + string(rune('a'+i)), MaxBatch: 16})
	}
	var wg sync.WaitGroup
	for i, l := range logs {
		for g := range 2 {
			wg.Go(func() {
				for j := range each / 2 {
					if j%10 == 0 {
						if _, err := l.AppendSync(context.Background(), sample(i*1000+g*100+j, KindInvoke)); err != nil {
							t.Errorf("AppendSync: %v", err)
						}
						continue
					}
					for l.Append(sample(i*1000+g*100+j, KindDecision)) != nil {
						time.Sleep(time.Millisecond) // full: retry (the drop is recorded)
					}
				}
			})
		}
	}
	wg.Wait()
	var appended, conflicts, dropped uint64
	for _, l := range logs {
		if err := l.Flush(testContext(t)); err != nil {
			t.Fatal(err)
		}
		s := l.Stats()
		appended, conflicts, dropped = appended+s.Appended, conflicts+s.Conflicts, dropped+s.Dropped
	}
	keyDir := t.TempDir()
	reader := openLog(t, st, Config{KeyDir: keyDir})
	out := export(t, reader, Query{}, FormatJSONL)
	keys, _ := ReadPublicKeys(keyDir)
	rep, err := Verify(bytes.NewReader(out), keys...)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if rep.Records != appended || rep.First != 1 || rep.Last != appended || appended < writers*each {
		t.Fatalf("got %d records %d..%d, %d appended; want at least %d, gap-free", rep.Records, rep.First, rep.Last, appended, writers*each)
	}
	nodes := map[string]int{}
	for _, l := range lines(out) {
		if r, err := ParseLine([]byte(l)); err == nil {
			nodes[r.Node]++
		}
	}
	for i := range writers {
		if n := nodes["gw-"+string(rune('a'+i))]; n < each {
			t.Errorf("writer %d: %d records in the chain, want at least %d", i, n, each)
		}
	}
	t.Logf("%d records, %d conflicts retried, %d dropped (recorded)", appended, conflicts, dropped)
}

func TestRestartContinuesChain(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nats")
	keyDir := t.TempDir()
	ctx := testContext(t)
	for round := range 2 {
		st := openStore(t, dir)
		l, err := Open(ctx, Config{Store: st, KeyDir: keyDir, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		appendN(t, l, 5)
		if round == 1 {
			out := export(t, l, Query{}, FormatJSONL)
			keys, _ := ReadPublicKeys(keyDir)
			rep, err := Verify(bytes.NewReader(out), keys...)
			if err != nil || rep.Records != 10 || rep.Last != 10 || !rep.OK() {
				t.Fatalf("after restart: got %+v, %v; want records 1..10 verified", rep, err)
			}
			if len(keys) != 1 {
				t.Errorf("key reused across restarts: got %d keys, want 1", len(keys))
			}
		}
		if err := l.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRetentionRecordsExpiry(t *testing.T) {
	st := newStore(t)
	now := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	keyDir := t.TempDir()
	l := openLog(t, st, Config{KeyDir: keyDir, Retention: 24 * time.Hour, RetentionInterval: time.Hour, Now: clock})
	ctx := testContext(t)
	for i := range 6 {
		r := sample(i, KindInvoke)
		r.Time = now.Add(-72*time.Hour + time.Duration(i)*time.Minute)
		if _, err := l.AppendSync(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	appendN(t, l, 4) // current
	n, err := l.Expire(ctx)
	if err != nil || n != 6 {
		t.Fatalf("Expire: got %d, %v; want 6", n, err)
	}
	if n, err := l.Expire(ctx); err != nil || n != 0 {
		t.Fatalf("second Expire: got %d, %v; want 0", n, err)
	}
	out := export(t, l, Query{}, FormatJSONL)
	keys, _ := ReadPublicKeys(keyDir)
	rep, err := Verify(bytes.NewReader(out), keys...)
	if err != nil || !rep.OK() {
		t.Fatalf("Verify after expiry: %+v, %v", rep, err)
	}
	if rep.First != 7 || rep.Last != 11 || !strings.HasPrefix(rep.Anchor, "expiry") {
		t.Fatalf("got records %d..%d anchored %q; want 7..11 anchored by the expiry record", rep.First, rep.Last, rep.Anchor)
	}
	exp, err := ParseLine([]byte(lines(out)[recordLine(t, lines(out), 11)]))
	if err != nil || exp.Kind != KindExpired || exp.Details["first_seq"].(json.Number).String() != "1" || exp.Details["last_seq"].(json.Number).String() != "6" {
		t.Fatalf("expiry record: got %+v, %v", exp, err)
	}
	// Tampering with the anchor is caught.
	ls := lines(out)
	i := recordLine(t, ls, 11)
	r, _ := ParseLine([]byte(ls[i]))
	r.Details["last_hash"] = zeroHash
	r.Hash, _ = ComputeHash(SHA256, &r)
	b, _ := MarshalLine(&r)
	ls[i] = string(b)
	if _, err := Verify(strings.NewReader(strings.Join(ls, "\n") + "\n")); !errors.Is(err, ErrBroken) {
		t.Errorf("altered expiry anchor: got %v, want ErrBroken", err)
	}
}

func TestQueueOverflowIsRecorded(t *testing.T) {
	st := newStore(t)
	release := make(chan struct{})
	var once sync.Once
	block := MaskFunc(func(ctx context.Context, r *Record) error {
		once.Do(func() { <-release })
		return nil
	})
	l := openLog(t, st, Config{QueueSize: 4, MaxBatch: 4, Masker: block})
	var full int
	for i := range 20 {
		if err := l.Append(sample(i, KindInvoke)); errors.Is(err, ErrQueueFull) {
			full++
		} else if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			time.Sleep(50 * time.Millisecond) // let the writer take it and block
		}
	}
	close(release)
	if err := l.Flush(testContext(t)); err != nil {
		t.Fatal(err)
	}
	s := l.Stats()
	if full == 0 || s.Dropped != uint64(full) {
		t.Fatalf("got %d ErrQueueFull, %d dropped; want equal and > 0", full, s.Dropped)
	}
	out := export(t, l, Query{Kinds: []string{KindDropped}}, FormatJSONL)
	var found bool
	for _, line := range lines(out) {
		if r, err := ParseLine([]byte(line)); err == nil && r.Kind == KindDropped {
			found = r.Details["count"].(json.Number).String() == strconv.Itoa(full)
		}
	}
	if !found {
		t.Fatalf("no audit.dropped record with count %d in:\n%s", full, out)
	}
}

func TestMasking(t *testing.T) {
	st := newStore(t)
	l := openLog(t, st, Config{Masker: PointerMasker("/input/request/headers/x-api-key", "/details/note", "/nothing/here")})
	r := sample(1, KindDecision)
	r.Details = map[string]any{
		"input": map[string]any{"request": map[string]any{
			"headers": map[string]any{"Authorization": "Bearer x", "x-api-key": "k", "accept": "json"},
			"body":    "secret payload",
		}},
		"note":     "drop me",
		"Password": "hunter2",
		"keep":     []any{map[string]any{"token": "t", "n": 1}},
	}
	got, err := l.AppendSync(testContext(t), r)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := MarshalLine(&got)
	for _, secret := range []string{"Bearer x", `"k"`, "secret payload", "drop me", "hunter2", `"t"`} {
		if bytes.Contains(raw, []byte(secret)) {
			t.Errorf("stored record contains %s: %s", secret, raw)
		}
	}
	if !bytes.Contains(raw, []byte(`"accept":"json"`)) || !bytes.Contains(raw, []byte(`"n":1`)) {
		t.Errorf("masking removed too much: %s", raw)
	}
	want := []string{"/details/input/request/headers/x-api-key", "/details/note", "/details/Password",
		"/details/input/request/body", "/details/input/request/headers/Authorization", "/details/keep/0/token"}
	if strings.Join(got.Erased, " ") != strings.Join(want, " ") {
		t.Errorf("Erased: got %v, want %v", got.Erased, want)
	}
}

func TestSuiteMismatch(t *testing.T) {
	st := newStore(t)
	openLog(t, st, Config{})
	if _, err := Open(testContext(t), Config{Store: st, Suite: SuiteGM}); !errors.Is(err, ErrSuiteMismatch) {
		t.Fatalf("Open gm on a sha256 chain: got %v, want ErrSuiteMismatch", err)
	}
}

func TestInvalidRecord(t *testing.T) {
	l := openLog(t, newStore(t), Config{})
	for _, k := range []string{"", "Deploy", "a b", ".x"} {
		if err := l.Append(Record{Kind: k}); !errors.Is(err, ErrInvalidRecord) {
			t.Errorf("Append kind %q: got %v, want ErrInvalidRecord", k, err)
		}
	}
}

func TestSealMatchesMarshalLine(t *testing.T) {
	l := &Log{hash: SM3}
	r := sample(3, KindDecision)
	r.V, r.Seq, r.Prev, r.Time = 1, 9, zeroHash, time.Unix(1, 5)
	r.Details, _ = normalizeDetails(r.Details)
	line, err := l.seal(&r)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := MarshalLine(&r)
	if !bytes.Equal(line, want) {
		t.Fatalf("seal:\n got %s\nwant %s", line, want)
	}
	if h, _ := ComputeHash(SM3, &r); h != r.Hash {
		t.Fatalf("seal hash %s, ComputeHash %s", r.Hash, h)
	}
}
