package audit

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zfaas/zfaas/store"
)

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// openStore opens an embedded store in dir; the caller closes it.
func openStore(t *testing.T, dir string) *store.Store {
	t.Helper()
	s, err := store.Open(testContext(t), store.Config{DataDir: dir, SpoolDir: t.TempDir(), Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("store.Open: %v", err)
	}
	return s
}

func newStore(t *testing.T) *store.Store {
	t.Helper()
	s := openStore(t, filepath.Join(t.TempDir(), "nats"))
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("store Close: %v", err)
		}
	})
	return s
}

// openLog opens a log on st with keys in keyDir; it is closed at cleanup.
func openLog(t *testing.T, st *store.Store, cfg Config) *Log {
	t.Helper()
	cfg.Store = st
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	l, err := Open(testContext(t), cfg)
	if err != nil {
		t.Fatalf("audit.Open: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := l.Close(ctx); err != nil {
			t.Errorf("audit Close: %v", err)
		}
	})
	return l
}

// sample returns a record of kind k numbered i.
func sample(i int, k string) Record {
	return Record{
		Kind: k, Actor: "spiffe://zfaas.local/user/alice", PolicyRevision: 3,
		TraceID: fmt.Sprintf("trace-%d", i), Subject: "acme/hello", Action: "invoke", Outcome: OutcomeAllow,
		Details: map[string]any{"i": i, "reasons": []string{"caller is an admin"}},
	}
}

func appendN(t *testing.T, l *Log, n int) {
	t.Helper()
	kinds := []string{KindDecision, KindInvoke, KindDeploy, KindSVIDIssued, KindEgressDeny}
	for i := range n {
		if err := l.Append(sample(i, kinds[i%len(kinds)])); err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
	}
	if err := l.Flush(testContext(t)); err != nil {
		t.Fatalf("Flush: %v", err)
	}
}

func export(t *testing.T, l *Log, q Query, f Format) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := l.Export(testContext(t), &buf, q, f); err != nil {
		t.Fatalf("Export: %v", err)
	}
	return buf.Bytes()
}

func lines(b []byte) []string {
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// recordLine returns the index of the line of record seq.
func recordLine(t *testing.T, ls []string, seq uint64) int {
	t.Helper()
	for i, l := range ls {
		if strings.HasPrefix(l, `{"v":`) {
			r, err := ParseLine([]byte(l))
			if err == nil && r.Seq == seq {
				return i
			}
		}
	}
	t.Fatalf("record %d not in export", seq)
	return -1
}
