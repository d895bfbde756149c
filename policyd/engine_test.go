package policyd

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"
)

func TestTestDir(t *testing.T) {
	ctx := testContext(t)
	rep, err := Test(ctx, basicFS())
	if err != nil {
		t.Fatalf("Test(testdata/basic): %v", err)
	}
	if rep.Passed != 5 || !rep.OK() {
		t.Errorf("report: got %+v, want 5 passed", rep.TestSummary)
	}

	failing := tagged(1)
	failing["zfaas/invoke/fail_test.rego"] = &fstest.MapFile{Data: []byte("package zfaas.invoke_test\n\ntest_fails if data.zfaas.invoke.decision.allow == false\n")}
	rep, err = Test(ctx, failing)
	var re *RefusedError
	if !errors.As(err, &re) || !errors.Is(err, ErrTestsFailed) {
		t.Fatalf("Test(failing): got %v, want a RefusedError wrapping ErrTestsFailed", err)
	}
	if rep.Failed != 1 || rep.Passed != 1 || re.Tests == nil || !strings.Contains(err.Error(), "test_fails") {
		t.Errorf("failing report: got %+v, err %q", rep.TestSummary, err)
	}

	broken := fstest.MapFS{"p.rego": {Data: []byte("package p\n\nallow := {\n")}}
	if _, err := Test(ctx, broken); !errors.Is(err, ErrCompile) {
		t.Errorf("Test(syntax error): got %v, want ErrCompile", err)
	}
}

func tarNames(t *testing.T, raw []byte) []string {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, normPath(h.Name))
	}
	slices.Sort(names)
	return names
}

func TestBuildBundle(t *testing.T) {
	a, err := BuildBundle("testdata/basic")
	if err != nil {
		t.Fatalf("BuildBundle: %v", err)
	}
	b, err := BuildBundle("testdata/basic")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Error("BuildBundle is not deterministic")
	}
	names := tarNames(t, a)
	if slices.Contains(names, "README.md") {
		t.Errorf("bundle holds README.md: %v", names)
	}
	for _, want := range []string{".manifest", "data.json", "zfaas/invoke/invoke.rego", "zfaas/invoke/invoke_test.rego", "envoy/authz.rego"} {
		if !slices.Contains(names, want) {
			t.Errorf("bundle lacks %s: %v", want, names)
		}
	}
	if _, err := BuildBundle("testdata/nonexistent"); err == nil {
		t.Error("BuildBundle of a missing directory: got nil error")
	}
}

func TestDecide(t *testing.T) {
	e := newEngine(t, newStore(t), Config{Default: basicFS()})
	ctx := testContext(t)
	caller := func(id string) map[string]any {
		return map[string]any{"caller": map[string]any{"spiffe_id": id}, "function": map[string]any{"name": "hello"}}
	}
	tests := []struct {
		name    string
		entry   string
		input   map[string]any
		allow   bool
		reasons []string
		err     error
	}{
		{"allowed caller", EntryInvoke, caller("spiffe://zfaas.test/ns/acme/fn/a"), true, []string{"spiffe://zfaas.test/ns/acme/fn/a may invoke hello"}, nil},
		{"blocked caller", EntryInvoke, caller("spiffe://zfaas.test/ns/evil/fn/x"), false, []string{"caller is blocked"}, nil},
		{"unknown caller is undefined", EntryInvoke, caller("spiffe://zfaas.test/ns/other/fn/y"), false, []string{reasonUndefined}, nil},
		{"no caller at all", EntryInvoke, nil, false, []string{reasonUndefined}, nil},
		{"malformed result", EntryDeploy, caller("spiffe://zfaas.test/user/alice"), false, []string{reasonMalformed}, nil},
		{"no admission policy", EntryAdmission, map[string]any{"node": "w1"}, false, []string{reasonUndefined}, nil},
		{"unknown entry", "delete-everything", caller("spiffe://zfaas.test/ns/acme/fn/a"), false, nil, ErrUnknownEntry},
		{"egress is not a decision", EntryEgress, nil, false, nil, ErrUnknownEntry},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := e.Decide(ctx, tt.entry, tt.input)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err: got %v, want %v", err, tt.err)
			}
			if d.Allow != tt.allow {
				t.Errorf("allow: got %v, want %v", d.Allow, tt.allow)
			}
			if tt.reasons != nil && !slices.Equal(d.Reasons, tt.reasons) {
				t.Errorf("reasons: got %q, want %q", d.Reasons, tt.reasons)
			}
			if d.ID == "" {
				t.Error("decision has no id")
			}
			if tt.err == nil && d.Revision != 0 {
				t.Errorf("revision: got %d, want 0 (default policy)", d.Revision)
			}
		})
	}
}

func TestNoPolicyDeniesByDefault(t *testing.T) {
	e := newEngine(t, newStore(t), Config{})
	d, err := e.Decide(testContext(t), EntryInvoke, map[string]any{"caller": map[string]any{"spiffe_id": "spiffe://zfaas.test/user/alice"}})
	if !errors.Is(err, ErrNoPolicy) {
		t.Fatalf("err: got %v, want ErrNoPolicy", err)
	}
	if d.Allow || d.Revision != -1 || len(d.Reasons) == 0 {
		t.Errorf("decision: got %+v, want a denial at revision -1 with a reason", d)
	}
	if _, ok := e.Active(); ok {
		t.Error("Active: got ok with no policy")
	}
	if _, _, err := e.EgressRules(testContext(t), nil); !errors.Is(err, ErrNoPolicy) {
		t.Errorf("EgressRules: got %v, want ErrNoPolicy", err)
	}
}

func TestEgressRules(t *testing.T) {
	e := newEngine(t, newStore(t), Config{Default: basicFS()})
	ctx := testContext(t)
	rules, rev, err := e.EgressRules(ctx, map[string]any{"function": map[string]any{"name": "fetcher"}})
	if err != nil {
		t.Fatal(err)
	}
	var hosts []string
	for _, r := range rules {
		hosts = append(hosts, r["host"].(string))
	}
	slices.Sort(hosts)
	if rev != 0 || !slices.Equal(hosts, []string{"api.example.com", "files.example.com"}) {
		t.Errorf("rules: got %v at revision %d", rules, rev)
	}
	rules, _, err = e.EgressRules(ctx, map[string]any{"function": map[string]any{"name": "other"}})
	if err != nil || len(rules) != 0 {
		t.Errorf("rules of a function without egress: got %v, %v; want none", rules, err)
	}
}

func reasonOf(t *testing.T, e *Engine) (int64, string) {
	t.Helper()
	d, err := e.Decide(testContext(t), EntryInvoke, map[string]any{})
	if err != nil {
		t.Fatalf("Decide: %v", err)
	}
	if !d.Allow || len(d.Reasons) != 1 {
		t.Fatalf("Decide: got %+v, want allow with one reason", d)
	}
	return d.Revision, d.Reasons[0]
}

func TestPushAndRollback(t *testing.T) {
	e := newEngine(t, newStore(t), Config{Default: tagged(0)})
	ctx := testContext(t)
	if rev, reason := reasonOf(t, e); rev != 0 || reason != "tag 0" {
		t.Fatalf("default: got %d %q", rev, reason)
	}
	r1, err := e.PushFS(ctx, tagged(1), "alice")
	if err != nil {
		t.Fatalf("push 1: %v", err)
	}
	r2, err := e.Push(ctx, buildFS(t, tagged(2)), "bob")
	if err != nil {
		t.Fatalf("push 2: %v", err)
	}
	if r1.Revision != 1 || r2.Revision != 2 || r2.PushedBy != "bob" || r2.Tests.Passed != 1 || r2.Signed {
		t.Errorf("revision infos: got %+v and %+v", r1, r2)
	}
	if rev, reason := reasonOf(t, e); rev != 2 || reason != "tag 2" {
		t.Fatalf("after push: got %d %q, want 2 %q", rev, reason, "tag 2")
	}

	back, err := e.Rollback(ctx, 1, "carol")
	if err != nil {
		t.Fatalf("Rollback: %v", err)
	}
	if back.Revision != 1 || back.Digest != r1.Digest {
		t.Errorf("Rollback returned %+v, want revision 1", back)
	}
	if rev, reason := reasonOf(t, e); rev != 1 || reason != "tag 1" {
		t.Fatalf("after rollback: got %d %q, want 1 %q", rev, reason, "tag 1")
	}
	st, err := e.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Active == nil || st.Active.Revision != 1 || st.Active.Action != "rollback" || st.Active.Previous != 2 || st.Active.PushedBy != "carol" {
		t.Errorf("status active: got %+v", st.Active)
	}
	if len(st.Nodes) != 1 || st.Nodes[0].Node != "n1" || st.Nodes[0].Revision != 1 || st.Nodes[0].Error != "" {
		t.Errorf("status nodes: got %+v", st.Nodes)
	}
	revs, err := e.Revisions(ctx)
	if err != nil || len(revs) != 2 || revs[0].Revision != 1 || revs[1].Revision != 2 {
		t.Errorf("Revisions: got %+v, %v", revs, err)
	}
	if _, err := e.Rollback(ctx, 99, "carol"); !errors.Is(err, ErrRevisionNotFound) {
		t.Errorf("Rollback(99): got %v, want ErrRevisionNotFound", err)
	}
	// Pushing the same bytes again stores them once and makes a new revision.
	r3, err := e.Push(ctx, buildFS(t, tagged(2)), "bob")
	if err != nil || r3.Revision != 3 || r3.Digest != r2.Digest {
		t.Errorf("re-push: got %+v, %v", r3, err)
	}
}

// tamper rewrites a bundle's tar.gz, changing the file named name with
// edit (or adding it when absent) and keeping every other entry,
// .signatures.json included.
func tamper(t *testing.T, raw []byte, name string, edit func([]byte) []byte) []byte {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	tw := tar.NewWriter(zw)
	found := false
	write := func(n string, data []byte) {
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o600, Typeflag: tar.TypeReg, Size: int64(len(data))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		if normPath(h.Name) == name {
			data, found = edit(data), true
		}
		write(h.Name, data)
	}
	if !found {
		write("/"+name, edit(nil))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func withFile(fsys fstest.MapFS, name, content string) fstest.MapFS {
	out := maps.Clone(fsys)
	out[name] = &fstest.MapFile{Data: []byte(content)}
	return out
}

func TestBrokenRevisionsRefused(t *testing.T) {
	priv, pub := genKey(t)
	otherPriv, _ := genKey(t)
	s := newStore(t)
	plain := newEngine(t, s, Config{Node: "plain", Default: tagged(0)})
	signedOnly := newEngine(t, newStore(t), Config{Node: "signed", Default: tagged(0), VerifyKey: pub})
	ctx := testContext(t)

	good := buildFS(t, tagged(7))
	sign := func(raw []byte, key []byte) []byte {
		t.Helper()
		out, err := SignBundle(raw, key, "test", "")
		if err != nil {
			t.Fatalf("SignBundle: %v", err)
		}
		return out
	}
	signedGood := sign(good, priv)
	tests := []struct {
		name   string
		engine *Engine
		raw    func() []byte
		want   error
	}{
		{"syntax error", plain, func() []byte {
			return mustRaw(t, withFile(tagged(7), "zfaas/invoke/invoke.rego", "package zfaas.invoke\n\ndecision := {\n"))
		}, ErrCompile},
		{"undefined function", plain, func() []byte {
			return mustRaw(t, withFile(tagged(7), "zfaas/invoke/invoke.rego", "package zfaas.invoke\n\ndecision := no_such_function(1)\n"))
		}, ErrCompile},
		{"network builtin", plain, func() []byte {
			return mustRaw(t, withFile(tagged(7), "zfaas/invoke/invoke.rego", "package zfaas.invoke\n\ndecision := http.send({\"method\": \"get\", \"url\": \"http://127.0.0.1:1\"})\n"))
		}, ErrCompile},
		{"failing test", plain, func() []byte {
			return mustRaw(t, withFile(tagged(7), "zfaas/invoke/x_test.rego", "package zfaas.invoke_test\n\ntest_no if false\n"))
		}, ErrTestsFailed},
		{"erroring test", plain, func() []byte {
			return mustRaw(t, withFile(tagged(7), "zfaas/invoke/x_test.rego", "package zfaas.invoke_test\n\ntest_err if 1 / 0 == 1\n"))
		}, ErrTestsFailed},
		{"not gzip", plain, func() []byte { return []byte("hello") }, ErrBundle},
		{"too large", plain, func() []byte { return make([]byte, DefaultMaxBundleBytes+1) }, ErrTooLarge},
		{"unsigned with a key configured", signedOnly, func() []byte { return good }, ErrSignature},
		{"signed with another key", signedOnly, func() []byte { return sign(good, otherPriv) }, ErrSignature},
		{"signed file changed", signedOnly, func() []byte {
			return tamper(t, signedGood, "zfaas/invoke/invoke.rego", func([]byte) []byte {
				return []byte("package zfaas.invoke\n\ndecision := {\"allow\": true, \"reasons\": [\"tag 666\"]}\n")
			})
		}, ErrSignature},
		{"file added after signing", signedOnly, func() []byte {
			return tamper(t, signedGood, "zfaas/extra/x.rego", func([]byte) []byte {
				return []byte("package zfaas.extra\n\nx := 1\n")
			})
		}, ErrSignature},
		{"data changed after signing", signedOnly, func() []byte {
			return tamper(t, signedGood, "data.json", func([]byte) []byte {
				return []byte(`{"zfaas": {"config": {"tag": 666}}}`)
			})
		}, ErrSignature},
		{"signatures file emptied", signedOnly, func() []byte {
			return tamper(t, signedGood, ".signatures.json", func([]byte) []byte { return []byte(`{"signatures": []}`) })
		}, ErrSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := tt.engine.Active()
			_, err := tt.engine.Push(ctx, tt.raw(), "mallory")
			var re *RefusedError
			if !errors.As(err, &re) || !errors.Is(err, tt.want) {
				t.Fatalf("Push: got %v, want a RefusedError wrapping %v", err, tt.want)
			}
			if rev, reason := reasonOf(t, tt.engine); rev != before.Revision || reason != "tag 0" {
				t.Errorf("after refusal: got %d %q, want %d %q", rev, reason, before.Revision, "tag 0")
			}
			revs, err := tt.engine.Revisions(ctx)
			if err != nil || len(revs) != 0 {
				t.Errorf("Revisions after refusal: got %v, %v; want none", revs, err)
			}
		})
	}
	if _, err := signedOnly.PushFS(ctx, tagged(7), "mallory"); !errors.Is(err, ErrSignature) {
		t.Errorf("PushFS with a key configured: got %v, want ErrSignature", err)
	}
	info, err := signedOnly.Push(ctx, signedGood, "alice")
	if err != nil {
		t.Fatalf("Push of a well-signed bundle: %v", err)
	}
	if !info.Signed || info.KeyID != DefaultKeyID {
		t.Errorf("signed revision info: got %+v", info)
	}
	if rev, reason := reasonOf(t, signedOnly); rev != info.Revision || reason != "tag 7" {
		t.Errorf("after signed push: got %d %q", rev, reason)
	}
}

func mustRaw(t *testing.T, fsys fstest.MapFS) []byte {
	t.Helper()
	raw, err := BuildBundleFS(fsys)
	if err != nil {
		// A syntax error is caught while building; push the files raw so
		// the engine's own check is what refuses them.
		return rawTarGz(t, fsys)
	}
	return raw
}

func rawTarGz(t *testing.T, fsys fstest.MapFS) []byte {
	t.Helper()
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	tw := tar.NewWriter(zw)
	for _, name := range slices.Sorted(maps.Keys(fsys)) {
		data := fsys[name].Data
		if err := tw.WriteHeader(&tar.Header{Name: "/" + name, Mode: 0o600, Typeflag: tar.TypeReg, Size: int64(len(data))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func TestTwoEnginesConverge(t *testing.T) {
	s := newStore(t)
	priv, pub := genKey(t)
	a := newEngine(t, s, Config{Node: "a", Default: tagged(0)})
	b := newEngine(t, s, Config{Node: "b", Default: tagged(0)})
	strict := newEngine(t, s, Config{Node: "strict", Default: tagged(0), VerifyKey: pub})
	ctx := testContext(t)

	info, err := a.PushFS(ctx, tagged(1), "alice")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b serving revision 1", func() bool {
		got, _ := b.Active()
		return got.Revision == info.Revision
	})
	if rev, reason := reasonOf(t, b); rev != 1 || reason != "tag 1" {
		t.Errorf("b: got %d %q", rev, reason)
	}
	// The strict node requires signatures: it refuses the unsigned revision
	// and keeps serving what it had, saying why in its status.
	eventually(t, 10*time.Second, "strict reporting its refusal", func() bool {
		st, err := a.Status(ctx)
		if err != nil {
			return false
		}
		for _, n := range st.Nodes {
			if n.Node == "strict" && n.ErrorRevision == 1 && strings.Contains(n.Error, "not signed") && n.Revision == 0 {
				return true
			}
		}
		return false
	})
	if rev, reason := reasonOf(t, strict); rev != 0 || reason != "tag 0" {
		t.Errorf("strict after refusing: got %d %q, want 0 %q", rev, reason, "tag 0")
	}

	// A signed revision pushed on b reaches all three.
	signed, err := SignBundle(buildFS(t, tagged(2)), priv, "ci", "")
	if err != nil {
		t.Fatal(err)
	}
	info2, err := b.Push(ctx, signed, "ci")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []*Engine{a, b, strict} {
		eventually(t, 10*time.Second, e.Node()+" serving revision 2", func() bool {
			got, _ := e.Active()
			return got.Revision == info2.Revision
		})
		if rev, reason := reasonOf(t, e); rev != 2 || reason != "tag 2" {
			t.Errorf("%s: got %d %q", e.Node(), rev, reason)
		}
	}
	eventually(t, 10*time.Second, "status of every node at revision 2 without error", func() bool {
		st, err := a.Status(ctx)
		if err != nil || len(st.Nodes) != 3 || st.Active == nil || st.Active.Revision != 2 {
			return false
		}
		for _, n := range st.Nodes {
			if n.Revision != 2 || n.Error != "" {
				return false
			}
		}
		return true
	})

	// A node started later serves the active revision, not its default.
	late := newEngine(t, s, Config{Node: "late", Default: tagged(0)})
	if rev, reason := reasonOf(t, late); rev != 2 || reason != "tag 2" {
		t.Errorf("late node: got %d %q", rev, reason)
	}
}

func TestShippedPolicies(t *testing.T) {
	const dir = "../policies"
	if _, err := os.Stat(dir); err != nil {
		t.Skipf("no shipped policies at %s: %v", dir, err)
	}
	ctx := testContext(t)
	rep, err := Test(ctx, os.DirFS(dir))
	if err != nil {
		t.Fatalf("Test(%s): %v", dir, err)
	}
	t.Logf("shipped policies: %+v", rep.TestSummary)
	e := newEngine(t, newStore(t), Config{Default: os.DirFS(dir), DecisionLog: true})
	if _, err := e.PushFS(ctx, os.DirFS(dir), "test"); err != nil {
		t.Fatalf("PushFS(%s): %v", dir, err)
	}
	d, err := e.Decide(ctx, EntryInvoke, map[string]any{
		"caller":  map[string]any{"spiffe_id": "spiffe://unknown.test/nobody"},
		"request": map[string]any{"headers": map[string]any{"authorization": "Bearer x", "accept": "*/*"}},
	})
	if err != nil {
		t.Fatalf("Decide: %v", err)
	}
	if d.Allow {
		t.Errorf("shipped policy allowed an unknown caller from another trust domain: %+v", d)
	}
	t.Logf("shipped policy's decision: %+v", d)
	if err := e.FlushDecisionLog(ctx); err != nil {
		t.Fatal(err)
	}
	var recs []DecisionRecord
	if err := e.Decisions(ctx, DecisionFilter{}, func(r DecisionRecord) { recs = append(recs, r) }); err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].MaskFailed || !slices.Contains(recs[0].Erased, "/input/request/headers/authorization") {
		t.Fatalf("record under the shipped mask: %+v", recs)
	}
	headers := recs[0].Input.(map[string]any)["request"].(map[string]any)["headers"].(map[string]any)
	if _, ok := headers["authorization"]; ok || headers["accept"] != "*/*" {
		t.Errorf("masked headers: got %v", headers)
	}
	if recs[0].Caller != "spiffe://unknown.test/nobody" {
		t.Errorf("caller: got %q", recs[0].Caller)
	}
}

func TestMask(t *testing.T) {
	doc := func() map[string]any {
		return map[string]any{
			"input": map[string]any{
				"a":    map[string]any{"b": "x", "c~d": "y", "e/f": "z"},
				"list": []any{"0", "1", "2", "3"},
			},
			"result": map[string]any{"allow": true},
		}
	}
	tests := []struct {
		name   string
		mask   []any
		erased []string
		check  func(map[string]any) bool
	}{
		{"remove key", []any{"/input/a/b"}, []string{"/input/a/b"}, func(d map[string]any) bool {
			_, ok := d["input"].(map[string]any)["a"].(map[string]any)["b"]
			return !ok
		}},
		{"escaped tokens", []any{"/input/a/c~0d", "/input/a/e~1f"}, []string{"/input/a/c~0d", "/input/a/e~1f"}, func(d map[string]any) bool {
			return len(d["input"].(map[string]any)["a"].(map[string]any)) == 1
		}},
		{"array elements from the back", []any{"/input/list/1", "/input/list/3"}, []string{"/input/list/1", "/input/list/3"}, func(d map[string]any) bool {
			return slices.Equal(d["input"].(map[string]any)["list"].([]any), []any{"0", "2"})
		}},
		{"missing path", []any{"/input/nope/x"}, nil, func(map[string]any) bool { return true }},
		{"whole input", []any{"/input"}, []string{"/input"}, func(d map[string]any) bool {
			_, ok := d["input"]
			return !ok
		}},
		{"other roots ignored", []any{"/nd_builtin_cache"}, nil, func(map[string]any) bool { return true }},
		{"upsert", []any{map[string]any{"op": "upsert", "path": "/result/note/x", "value": "masked"}}, []string{"/result/note/x"}, func(d map[string]any) bool {
			return d["result"].(map[string]any)["note"].(map[string]any)["x"] == "masked"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ops, err := parseMask(tt.mask)
			if err != nil {
				t.Fatal(err)
			}
			d := doc()
			if got := applyMask(d, ops); !slices.Equal(got, tt.erased) {
				t.Errorf("erased: got %v, want %v", got, tt.erased)
			}
			if !tt.check(d) {
				t.Errorf("document after mask: %v", d)
			}
		})
	}
	for _, bad := range []any{"not-a-set", []any{"no-slash"}, []any{42}, []any{map[string]any{"op": "explode", "path": "/input/a"}}} {
		if _, err := parseMask(bad); err == nil {
			t.Errorf("parseMask(%v): got nil error", bad)
		}
	}
}

// TestBuiltinMaskWithoutRevisionMask: a revision that defines no
// zfaas.log.mask still never logs credentials.
func TestBuiltinMaskWithoutRevisionMask(t *testing.T) {
	ctx := testContext(t)
	fsys := fstest.MapFS{
		"zfaas/invoke/invoke.rego": &fstest.MapFile{Data: []byte("package zfaas.invoke\n\ndecision := {\"allow\": true, \"reasons\": [\"open\"]}\n")},
	}
	e := newEngine(t, newStore(t), Config{DecisionLog: true})
	if _, err := e.PushFS(ctx, fsys, "test"); err != nil {
		t.Fatalf("PushFS: %v", err)
	}
	if _, err := e.Decide(ctx, EntryInvoke, map[string]any{
		"request": map[string]any{"headers": map[string]any{"authorization": "Bearer s3cret", "cookie": "a=b", "accept": "*/*"}},
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.FlushDecisionLog(ctx); err != nil {
		t.Fatal(err)
	}
	var recs []DecisionRecord
	if err := e.Decisions(ctx, DecisionFilter{}, func(r DecisionRecord) { recs = append(recs, r) }); err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 {
		t.Fatalf("got %d records, want 1", len(recs))
	}
	headers := recs[0].Input.(map[string]any)["request"].(map[string]any)["headers"].(map[string]any)
	if _, ok := headers["authorization"]; ok {
		t.Errorf("authorization logged without a revision mask: %v", headers)
	}
	if _, ok := headers["cookie"]; ok {
		t.Errorf("cookie logged without a revision mask: %v", headers)
	}
	if headers["accept"] != "*/*" {
		t.Errorf("unmasked header lost: %v", headers)
	}
}
