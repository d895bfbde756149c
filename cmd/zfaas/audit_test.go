package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zfaas/zfaas/audit"
	"github.com/zfaas/zfaas/store"
)

func TestAuditVerifyCommand(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	st, err := store.Open(ctx, store.Config{DataDir: filepath.Join(t.TempDir(), "nats"), SpoolDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	keyDir := t.TempDir()
	lg, err := audit.Open(ctx, audit.Config{Store: st, KeyDir: keyDir})
	if err != nil {
		t.Fatal(err)
	}
	defer lg.Close(ctx)
	for i := range 12 {
		kind := audit.KindDecision
		if i%3 == 0 {
			kind = audit.KindDeploy
		}
		if err := lg.Append(audit.Record{Kind: kind, Actor: "spiffe://zfaas.local/user/admin", Subject: "acme/f", Outcome: audit.OutcomeAllow}); err != nil {
			t.Fatal(err)
		}
	}
	if err := lg.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// The export as GET /v1/audit/export streams it (gateway/audit_test.go
	// covers the endpoint and the client).
	dir := t.TempDir()
	exportTo := func(name string, q audit.Query) string {
		var buf bytes.Buffer
		if err := lg.Export(ctx, &buf, q, audit.FormatJSONL); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, buf.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	file := exportTo("trail.jsonl", audit.Query{})
	pub := filepath.Join(keyDir, audit.PublicKeysFile)

	verify := func(args ...string) (string, error) {
		var out, errOut bytes.Buffer
		err := runAudit(ctx, append([]string{"verify"}, args...), noEnv, &out, &errOut)
		return out.String() + errOut.String(), err
	}
	got, err := verify(file, "--key", pub)
	if err != nil || !strings.HasPrefix(got, "OK: 12 records, seq 1..12 of zfaas/audit, sha256 chain intact") || !strings.Contains(got, "through size 12") {
		t.Fatalf("verify: %v\n%s", err, got)
	}
	if got, err := verify(file, "--key", pub, "-o", "json"); err != nil || !strings.Contains(got, `"covered_through": 12`) {
		t.Errorf("verify -o json: %v\n%s", err, got)
	}

	// Delete record 5: the first broken link is seq 5, exit status 1.
	raw, _ := os.ReadFile(file)
	var kept []string
	for _, l := range strings.SplitAfter(string(raw), "\n") {
		if !strings.HasPrefix(l, `{"v":1,"seq":5,`) {
			kept = append(kept, l)
		}
	}
	bad := filepath.Join(dir, "bad.jsonl")
	if err := os.WriteFile(bad, []byte(strings.Join(kept, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err = verify(bad, "--key", pub)
	if !errors.Is(err, errNotVerified) || exitCode(err) != 1 || !strings.Contains(got, "FAIL: first broken link at seq 5") {
		t.Fatalf("verify tampered: got %v\n%s", err, got)
	}

	// A kind-filtered export fails unless allowed.
	filtered := exportTo("deploys.jsonl", audit.Query{Kinds: []string{audit.KindDeploy}})
	if got, err := verify(filtered, "--key", pub); !errors.Is(err, errNotVerified) || !strings.Contains(got, "filtered by kind (deploy)") {
		t.Errorf("verify filtered: got %v\n%s", err, got)
	}
	if got, err := verify(filtered, "--key", pub, "--allow-filtered"); err != nil || !strings.HasPrefix(got, "OK: 4 records") {
		t.Errorf("verify filtered, allowed: got %v\n%s", err, got)
	}

	// No key is a usage error unless asked for the chain only.
	if _, err := verify(file); !errors.Is(err, errUsage) {
		t.Errorf("verify without --key: got %v, want errUsage", err)
	}
	if got, err := verify(file, "--no-signatures"); err != nil || !strings.Contains(got, "signatures NOT checked") {
		t.Errorf("verify --no-signatures: got %v\n%s", err, got)
	}
	// A key file that is not one.
	if _, err := verify(file, "--key", file); err == nil || errors.Is(err, errNotVerified) {
		t.Errorf("verify with a bad key file: got %v, want a key error", err)
	}
	var out, errOut bytes.Buffer
	if err := runAudit(ctx, []string{"export", "--format", "xml"}, noEnv, &out, &errOut); !errors.Is(err, errUsage) {
		t.Errorf("export --format xml: got %v, want errUsage", err)
	}
}

func TestAuditRotateKeyCommand(t *testing.T) {
	dir := t.TempDir()
	var out, errOut bytes.Buffer
	for range 2 {
		if err := runAudit(t.Context(), []string{"rotate-key", "--data-dir", dir, "--suite", "gm"}, noEnv, &out, &errOut); err != nil {
			t.Fatalf("rotate-key: %v\n%s", err, errOut.String())
		}
	}
	keys, err := audit.ReadPublicKeys(filepath.Join(dir, "audit"))
	if err != nil || len(keys) != 2 || keys[0].Algorithm() != "sm2" {
		t.Fatalf("after two rotations: %v, %v; want two SM2 keys", keys, err)
	}
	if !strings.Contains(out.String(), "(sm2)") {
		t.Errorf("output: %s", out.String())
	}
}
