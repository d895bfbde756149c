package audit

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/emmansun/gmsm/sm3"
)

// parseCEF splits a CEF line into its 7 header fields and extensions,
// undoing the escaping of the CEF specification.
func parseCEF(t *testing.T, line string) ([]string, map[string]string) {
	t.Helper()
	var hdr []string
	var cur strings.Builder
	i := 0
	for ; i < len(line) && len(hdr) < 7; i++ {
		switch c := line[i]; {
		case c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '|':
			hdr = append(hdr, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	if len(hdr) != 7 {
		t.Fatalf("CEF header: got %d fields in %q", len(hdr), line)
	}
	ext := map[string]string{}
	rest := line[i:]
	// Split on unescaped '=': the key is the word before it.
	type tok struct{ key, raw string }
	var toks []tok
	start := 0
	for j := 0; j < len(rest); j++ {
		if rest[j] == '\\' {
			j++
			continue
		}
		if rest[j] == '=' {
			k := strings.LastIndexByte(rest[:j], ' ') + 1
			if len(toks) > 0 {
				toks[len(toks)-1].raw = strings.TrimSuffix(rest[start:k], " ")
			}
			toks = append(toks, tok{key: rest[k:j]})
			start = j + 1
		}
	}
	if len(toks) > 0 {
		toks[len(toks)-1].raw = rest[start:]
	}
	un := strings.NewReplacer(`\\`, `\`, `\=`, `=`, `\n`, "\n", `\r`, "\r")
	for _, tk := range toks {
		if _, dup := ext[tk.key]; dup {
			t.Errorf("CEF extension %s twice", tk.key)
		}
		ext[tk.key] = un.Replace(tk.raw)
	}
	return hdr, ext
}

func TestCEFExport(t *testing.T) {
	st := newStore(t)
	keyDir := t.TempDir()
	l := openLog(t, st, Config{KeyDir: keyDir, ProductVersion: "1.2|3"})
	r := sample(1, KindDecision)
	r.Outcome = OutcomeDeny
	r.Subject = `acme/he=llo\ x` + "\nsecond line"
	r.DecisionID = "d-1"
	stored, err := l.AppendSync(testContext(t), r)
	if err != nil {
		t.Fatal(err)
	}
	out := export(t, l, Query{}, FormatCEF)
	ls := lines(out)
	if len(ls) != 2 {
		t.Fatalf("CEF export: got %d lines, want a record and a checkpoint:\n%s", len(ls), out)
	}
	hdr, ext := parseCEF(t, ls[0])
	wantHdr := []string{"CEF:0", "zfaas", "zfaas", "1.2|3", KindDecision, "policy decision", "6"}
	if strings.Join(hdr, "\x00") != strings.Join(wantHdr, "\x00") {
		t.Errorf("CEF header: got %q, want %q", hdr, wantHdr)
	}
	want := map[string]string{
		"rt": strconv.FormatInt(stored.Time.UnixMilli(), 10), "externalId": "1", "suser": r.Actor, "act": "invoke", "outcome": "deny",
		"cs1Label": "subject", "cs1": r.Subject, "cs3Label": "traceId", "cs3": r.TraceID, "cs4Label": "decisionId", "cs4": "d-1",
		"cs5Label": "hash", "cs5": stored.Hash, "cs6Label": "details", "cs6": `{"i":1,"reasons":["caller is an admin"]}`,
		"cn1Label": "policyRevision", "cn1": "3", "cn2Label": "seq", "cn2": "1", "flexString1Label": "prevHash", "flexString1": zeroHash,
	}
	for k, v := range want {
		if ext[k] != v {
			t.Errorf("CEF %s: got %q, want %q", k, ext[k], v)
		}
	}
	for k := range ext {
		if _, ok := want[k]; !ok {
			t.Errorf("CEF: undocumented extension %s", k)
		}
	}
	if strings.Contains(ls[0], "\n") || !strings.Contains(ls[0], `cs1=acme/he\=llo\\ x\nsecond line`) {
		t.Errorf("CEF escaping: %s", ls[0])
	}
	hdr, ext = parseCEF(t, ls[1])
	if hdr[4] != "audit.checkpoint" || ext["cn2"] != "1" || ext["cs5"] != stored.Hash || !strings.HasPrefix(ext["cs6"], DefaultOrigin+"\n1\n") {
		t.Errorf("CEF checkpoint: got %q %v", hdr, ext)
	}
	if got := CEFHeaderEscape(`a|b\c` + "\nd"); got != `a\|b\\c d` {
		t.Errorf("CEFHeaderEscape: got %q", got)
	}
}

// ocsfRequired are the fields every exported OCSF event must have, per
// class (docs/audit.md lists them).
var ocsfRequired = map[int][]string{
	0: {"class_uid", "class_name", "category_uid", "category_name", "activity_id", "activity_name", "type_uid", "type_name",
		"severity_id", "severity", "time", "status_id", "status", "message", "actor", "metadata.version", "metadata.product.name",
		"metadata.product.vendor_name", "metadata.product.version", "metadata.uid", "metadata.event_code", "unmapped.zfaas"},
	OCSFClassAPIActivity:      {"api.operation", "api.service.name", "src_endpoint"},
	OCSFClassAuthentication:   {"user.uid", "auth_protocol_id", "service.name"},
	OCSFClassAuthorizeSession: {"user.uid"},
}

func lookupPath(m map[string]any, path string) (any, bool) {
	var cur any = m
	for p := range strings.SplitSeq(path, ".") {
		mm, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = mm[p]; !ok {
			return nil, false
		}
	}
	return cur, true
}

func TestOCSFExport(t *testing.T) {
	st := newStore(t)
	l := openLog(t, st, Config{KeyDir: t.TempDir()})
	kinds := map[string][2]int{
		KindDeploy: {6003, 1}, KindAlias: {6003, 3}, KindDelete: {6003, 4}, KindInvoke: {6003, 99}, KindPolicyPush: {6003, 1},
		KindPolicyRefused: {6003, 1}, KindPolicyRollback: {6003, 3}, KindWorkerAdmitted: {3002, 1}, KindWorkerRefused: {3002, 1},
		KindWorkerRevoked: {3002, 2}, KindSVIDIssued: {3002, 3}, KindDecision: {3003, 99}, KindEgressDeny: {3003, 99},
		"custom.thing": {6003, 99},
	}
	for k := range kinds {
		r := sample(1, k)
		if k == KindWorkerRefused {
			r.Outcome = OutcomeFailure
		}
		if err := l.Append(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Flush(testContext(t)); err != nil {
		t.Fatal(err)
	}
	out := export(t, l, Query{}, FormatOCSF)
	seen := map[string]bool{}
	for _, line := range lines(out) {
		var ev map[string]any
		dec := json.NewDecoder(strings.NewReader(line))
		dec.UseNumber()
		if err := dec.Decode(&ev); err != nil {
			t.Fatalf("OCSF line %q: %v", line, err)
		}
		class, _ := strconv.Atoi(ev["class_uid"].(json.Number).String())
		activity, _ := strconv.Atoi(ev["activity_id"].(json.Number).String())
		typeUID, _ := strconv.Atoi(ev["type_uid"].(json.Number).String())
		for _, f := range append(ocsfRequired[0], ocsfRequired[class]...) {
			if _, ok := lookupPath(ev, f); !ok {
				t.Errorf("OCSF class %d: %s missing in %s", class, f, line)
			}
		}
		if typeUID != class*100+activity {
			t.Errorf("type_uid %d, want %d", typeUID, class*100+activity)
		}
		if v, _ := lookupPath(ev, "metadata.version"); v != OCSFVersion {
			t.Errorf("metadata.version: got %v", v)
		}
		code, _ := lookupPath(ev, "metadata.event_code")
		kind := code.(string)
		seen[kind] = true
		if kind == "audit.checkpoint" {
			continue
		}
		if want := kinds[kind]; want != [2]int{class, activity} {
			t.Errorf("kind %s: got class %d activity %d, want %v", kind, class, activity, want)
		}
		status, _ := ev["status_id"].(json.Number).Int64()
		if wantStatus := map[bool]int64{true: 2, false: 1}[kind == KindWorkerRefused]; status != wantStatus {
			t.Errorf("kind %s: status_id %d, want %d", kind, status, wantStatus)
		}
		if h, _ := lookupPath(ev, "unmapped.zfaas.hash"); h == "" || h == nil {
			t.Errorf("kind %s: no hash in unmapped.zfaas", kind)
		}
	}
	for k := range kinds {
		if !seen[k] {
			t.Errorf("kind %s not exported", k)
		}
	}
	if !seen["audit.checkpoint"] {
		t.Error("no checkpoint event")
	}
}

func TestFilteredExport(t *testing.T) {
	st := newStore(t)
	keyDir := t.TempDir()
	l := openLog(t, st, Config{KeyDir: keyDir, CheckpointEvery: 5})
	appendN(t, l, 5)
	appendN(t, l, 5)
	appendN(t, l, 5)
	keys, _ := ReadPublicKeys(keyDir)
	out := export(t, l, Query{Kinds: []string{KindDecision, "svid.*"}}, FormatJSONL)
	rep, err := Verify(bytes.NewReader(out), keys...)
	if err != nil {
		t.Fatalf("Verify filtered: %v\n%s", err, out)
	}
	if !rep.Filtered || rep.OK() || rep.Records != 6 {
		t.Fatalf("filtered report: got %+v, want filtered, 6 records, not OK", rep)
	}
	for _, line := range lines(out) {
		if r, err := ParseLine([]byte(line)); err == nil && r.Kind != KindDecision && r.Kind != KindSVIDIssued {
			t.Errorf("kind %s in a decision/svid export", r.Kind)
		}
	}
	// Deleting a record from a filtered export is not caught by the chain:
	// that is why a filtered export is never OK.
	if !strings.Contains(string(out), `"kinds":["decision","svid.*"]`) {
		t.Errorf("header does not state the filter:\n%s", out)
	}
	// A time window is contiguous and verifies.
	ls := lines(out)
	r3, _ := ParseLine([]byte(ls[recordLine(t, ls, 4)]))
	win := export(t, l, Query{Since: r3.Time}, FormatJSONL)
	rep, err = Verify(bytes.NewReader(win), keys...)
	if err != nil || rep.Filtered || rep.First > 4 || rep.Last != 15 || !strings.HasPrefix(rep.Anchor, "unanchored") && rep.First != 1 {
		t.Fatalf("since export: got %+v, %v", rep, err)
	}
}

func TestGMSuiteEndToEnd(t *testing.T) {
	st := newStore(t)
	keyDir := t.TempDir()
	l := openLog(t, st, Config{Suite: SuiteGM, KeyDir: keyDir, Origin: "zfaas.example/audit"})
	appendN(t, l, 7)
	out := export(t, l, Query{}, FormatJSONL)
	if !strings.Contains(lines(out)[0], `"hash":"sm3"`) {
		t.Fatalf("header: %s", lines(out)[0])
	}
	// Record hashes are SM3 of the canonical encoding.
	ls := lines(out)
	r, err := ParseLine([]byte(ls[recordLine(t, ls, 3)]))
	if err != nil {
		t.Fatal(err)
	}
	c, _ := Canonical(&r)
	if sum := sm3.Sum(c); hex.EncodeToString(sum[:]) != r.Hash {
		t.Fatalf("record 3 hash is not SM3 of its canonical encoding")
	}
	// The key is SM2, 0600, and verifies the checkpoints.
	pem, err := os.ReadFile(filepath.Join(keyDir, keyFileSM2))
	if err != nil || !bytes.Contains(pem, []byte("PRIVATE KEY")) {
		t.Fatalf("SM2 key file: %v", err)
	}
	if fi, _ := os.Stat(filepath.Join(keyDir, keyFileSM2)); fi.Mode().Perm() != 0o600 {
		t.Errorf("key mode %o, want 600", fi.Mode().Perm())
	}
	keys, err := ReadPublicKeys(keyDir)
	if err != nil || len(keys) != 1 || keys[0].Algorithm() != "sm2" {
		t.Fatalf("public keys: %v, %v", keys, err)
	}
	rep, err := Verify(bytes.NewReader(out), keys...)
	if err != nil || !rep.OK() || rep.Checkpoints == 0 || rep.Uncovered != 0 {
		t.Fatalf("Verify: got %+v, %v", rep, err)
	}
	// The checkpoint's signature is SM2: an ECDSA key of the same name does not verify it.
	other := t.TempDir()
	ecdsaKey, err := loadOrCreateKey(other, SuiteStandard, "zfaas.example/audit", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(bytes.NewReader(out), ecdsaKey.v); !errors.Is(err, ErrBroken) {
		t.Errorf("Verify with an ECDSA key: got %v, want ErrBroken", err)
	}
	// The verifier key round-trips through its text form.
	v2, err := ParseVerifier(keys[0].String())
	if err != nil || v2.KeyID() != keys[0].KeyID() {
		t.Errorf("ParseVerifier: %v", err)
	}
}

func TestKeyRotation(t *testing.T) {
	st := newStore(t)
	keyDir := t.TempDir()
	l := openLog(t, st, Config{KeyDir: keyDir})
	appendN(t, l, 3)
	if _, err := l.Checkpoint(testContext(t)); err != nil {
		t.Fatal(err)
	}
	oldKey := l.Verifier()
	if err := l.Close(testContext(t)); err != nil {
		t.Fatal(err)
	}
	newKey, err := RotateKey(keyDir, SuiteStandard, DefaultOrigin, nil)
	if err != nil {
		t.Fatal(err)
	}
	if newKey.KeyID() == oldKey.KeyID() {
		t.Fatal("rotation kept the key id")
	}
	l2 := openLog(t, st, Config{KeyDir: keyDir})
	if l2.Verifier().String() != newKey.String() {
		t.Fatalf("reopened log signs with %s, want the new key %s", l2.Verifier(), newKey)
	}
	appendN(t, l2, 3)
	out := export(t, l2, Query{}, FormatJSONL)
	keys, err := ReadPublicKeys(keyDir)
	if err != nil || len(keys) != 2 || keys[0].String() != newKey.String() || keys[1].String() != oldKey.String() {
		t.Fatalf("audit.pub after rotation: got %v, %v; want the new key then the old", keys, err)
	}
	rep, err := Verify(bytes.NewReader(out), keys...)
	if err != nil || !rep.OK() || rep.Checkpoints != 2 || len(rep.Signers) != 2 {
		t.Fatalf("Verify with both keys: got %+v, %v", rep, err)
	}
	// The old checkpoint needs the old key.
	if _, err := Verify(bytes.NewReader(out), newKey); !errors.Is(err, ErrBroken) {
		t.Errorf("Verify with only the new key: got %v, want ErrBroken", err)
	}
	pub, err := l2.PublicKeys(testContext(t))
	if err != nil || len(pub) != 2 {
		t.Errorf("published keys: got %v, %v; want both", pub, err)
	}
}

func TestParseVerifierRejects(t *testing.T) {
	s, err := loadOrCreateKey(t.TempDir(), SuiteStandard, "a/b", nil)
	if err != nil {
		t.Fatal(err)
	}
	good := s.v.String()
	name, rest, _ := strings.Cut(good, "+")
	id, key, _ := strings.Cut(rest, "+")
	for _, bad := range []string{
		"", "a/b", name + "+" + id, name + "+zzzzzzzz+" + key, name + "+00000000+" + key, // wrong id
		"other+" + id + "+" + key + "x", name + "+" + id + "+AQID",
	} {
		if _, err := ParseVerifier(bad); err == nil {
			t.Errorf("ParseVerifier(%q): want an error", bad)
		}
	}
}
