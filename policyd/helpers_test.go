package policyd

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"testing/fstest"
	"time"

	"github.com/zfaas/zfaas/store"
)

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 120*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func newStore(t *testing.T) *store.Store {
	t.Helper()
	s, err := store.Open(testContext(t), store.Config{
		DataDir:  filepath.Join(t.TempDir(), "nats"),
		SpoolDir: t.TempDir(),
		Logger:   testLogger(t),
	})
	if err != nil {
		t.Fatalf("store.Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("store Close: %v", err)
		}
	})
	return s
}

// newEngine starts an engine on s; cfg.Store, Node and Logger default to s,
// "n1" and the test's output.
func newEngine(t *testing.T, s *store.Store, cfg Config) *Engine {
	t.Helper()
	cfg.Store = s
	if cfg.Node == "" {
		cfg.Node = "n1"
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	ctx, cancel := context.WithCancel(t.Context())
	e, err := New(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		cctx, c := context.WithTimeout(context.Background(), 10*time.Second)
		defer c()
		if err := e.Close(cctx); err != nil {
			t.Errorf("engine Close: %v", err)
		}
		cancel()
	})
	return e
}

// basicFS is the test policy in testdata/basic.
func basicFS() fs.FS { return os.DirFS("testdata/basic") }

// tagged is a policy whose every answer names its tag: the invoke decision's
// reason is "tag N", and the mask erases /input/secret_N only. Decisions
// and log records can so be traced to exactly one revision.
func tagged(tag int) fstest.MapFS {
	return fstest.MapFS{
		"zfaas/config/data.json": {Data: fmt.Appendf(nil, `{"tag": %d}`, tag)},
		"zfaas/invoke/invoke.rego": {Data: []byte(`package zfaas.invoke

decision := {"allow": true, "reasons": [sprintf("tag %d", [data.zfaas.config.tag])]}
`)},
		"zfaas/invoke/invoke_test.rego": {Data: []byte(`package zfaas.invoke_test

test_allows if data.zfaas.invoke.decision.allow
`)},
		"zfaas/log/mask.rego": {Data: []byte(`package zfaas.log.mask

mask contains sprintf("/input/secret_%d", [data.zfaas.config.tag])
`)},
	}
}

func buildFS(t *testing.T, fsys fs.FS) []byte {
	t.Helper()
	raw, err := BuildBundleFS(fsys)
	if err != nil {
		t.Fatalf("BuildBundleFS: %v", err)
	}
	return raw
}

// genKey returns a new ECDSA P-256 key as PKCS#8 private and PKIX public PEM.
func genKey(t *testing.T) (priv, pub []byte) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	pder, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pder})
}

// eventually polls cond until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
