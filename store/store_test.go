package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
)

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func openStore(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(testContext(t), Config{
		DataDir:  dir,
		SpoolDir: t.TempDir(),
		Logger:   slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func newStore(t *testing.T) *Store {
	t.Helper()
	s := openStore(t, filepath.Join(t.TempDir(), "data"))
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func newKV(t *testing.T, s *Store, bucket string) *KV {
	t.Helper()
	kv, err := s.KV(testContext(t), bucket)
	if err != nil {
		t.Fatalf("KV(%s): %v", bucket, err)
	}
	return kv
}

func TestOpenDataDirMode(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nested", "data")
	s := openStore(t, dir)
	defer s.Close()
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o700 {
		t.Errorf("data dir mode: got %o, want 700", got)
	}
	if s.Conn() == nil || s.JetStream() == nil {
		t.Fatal("Conn or JetStream is nil")
	}
	if a := s.srv.Addr(); a != nil {
		t.Errorf("embedded server listens on %v, want no listener", a)
	}
	if a := s.srv.MonitorAddr(); a != nil {
		t.Errorf("embedded server monitors on %v, want no listener", a)
	}
}

// TestOpenURL runs a JetStream server on loopback and connects to it the
// way a cluster member would.
func TestOpenURL(t *testing.T) {
	srv, err := server.NewServer(&server.Options{
		Host:       "127.0.0.1",
		Port:       -1, // any free port
		JetStream:  true,
		StoreDir:   t.TempDir(),
		NoSigs:     true,
		ServerName: "external",
	})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("external server not ready")
	}
	ctx := testContext(t)
	s, err := Open(ctx, Config{URL: srv.ClientURL(), SpoolDir: t.TempDir()})
	if err != nil {
		t.Fatalf("Open(URL): %v", err)
	}
	defer s.Close()
	if s.srv != nil {
		t.Fatal("Open with a URL started an embedded server")
	}
	kv := newKV(t, s, "remote")
	if _, err := kv.Create(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	info, err := s.PutPackage(ctx, bytes.NewReader([]byte("pkg")))
	if err != nil {
		t.Fatal(err)
	}
	if got := readPackage(t, s, info.Digest); string(got) != "pkg" {
		t.Errorf("package over URL: got %q", got)
	}
}

func TestOpenURLUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	// Port 1 on loopback: nothing listens there.
	_, err := Open(ctx, Config{URL: "nats://127.0.0.1:1", StartTimeout: 2 * time.Second})
	if err == nil {
		t.Fatal("Open of an unreachable URL: got nil error")
	}
}

func TestOpenNeedsDataDir(t *testing.T) {
	if _, err := Open(t.Context(), Config{}); err == nil {
		t.Fatal("Open without DataDir or URL: got nil error")
	}
}

func TestCloseIdempotent(t *testing.T) {
	s := openStore(t, t.TempDir())
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestRestartPersistence(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	ctx := testContext(t)

	s := openStore(t, dir)
	kv := newKV(t, s, "functions")
	rev, err := kv.Create(ctx, "fn.acme.hello", []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	rev, err = kv.Update(ctx, "fn.acme.hello", []byte("v2"), rev)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, "fn.acme.gone", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, "fn.acme.gone", 0); err != nil {
		t.Fatal(err)
	}
	pkg := randomBytes(t, 300<<10)
	info, err := s.PutPackage(ctx, bytes.NewReader(pkg))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s = openStore(t, dir)
	defer s.Close()
	kv = newKV(t, s, "functions")
	e, err := kv.Get(ctx, "fn.acme.hello")
	if err != nil {
		t.Fatalf("Get after restart: %v", err)
	}
	if string(e.Value) != "v2" || e.Revision != rev {
		t.Errorf("after restart: got %q@%d, want %q@%d", e.Value, e.Revision, "v2", rev)
	}
	if _, err := kv.Get(ctx, "fn.acme.gone"); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted key after restart: got %v, want ErrNotFound", err)
	}
	if got := readPackage(t, s, info.Digest); !bytes.Equal(got, pkg) {
		t.Error("package after restart differs")
	}
	again, err := s.PutPackage(ctx, bytes.NewReader(pkg))
	if err != nil {
		t.Fatal(err)
	}
	if !again.Existed {
		t.Error("PutPackage after restart: Existed = false, want true")
	}
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func readPackage(t *testing.T, s *Store, digest string) []byte {
	t.Helper()
	rc, err := s.OpenPackage(testContext(t), digest)
	if err != nil {
		t.Fatalf("OpenPackage(%s): %v", digest, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read package %s: %v", digest, err)
	}
	return b
}

func TestPackageRoundTrip(t *testing.T) {
	s := newStore(t)
	ctx := testContext(t)
	compressible := bytes.Repeat([]byte("zfaas function package "), 100_000)
	tests := []struct {
		name string
		data []byte
	}{
		{"empty", []byte{}},
		{"small", []byte("hello")},
		{"random 5MiB", randomBytes(t, 5<<20)},
		{"compressible", compressible},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info, err := s.PutPackage(ctx, bytes.NewReader(tt.data))
			if err != nil {
				t.Fatalf("PutPackage: %v", err)
			}
			if want := digestOf(tt.data); info.Digest != want {
				t.Errorf("digest: got %s, want %s", info.Digest, want)
			}
			if info.Size != int64(len(tt.data)) {
				t.Errorf("size: got %d, want %d", info.Size, len(tt.data))
			}
			if info.Existed {
				t.Error("Existed = true on first put")
			}
			ok, err := s.HasPackage(ctx, info.Digest)
			if err != nil || !ok {
				t.Errorf("HasPackage: got %v, %v; want true, nil", ok, err)
			}
			if got := readPackage(t, s, info.Digest); !bytes.Equal(got, tt.data) {
				t.Errorf("round trip: got %d bytes, want %d identical bytes", len(got), len(tt.data))
			}
		})
	}
	info, err := s.PutPackage(ctx, bytes.NewReader(compressible))
	if err != nil {
		t.Fatal(err)
	}
	if info.StoredSize*10 > info.Size {
		t.Errorf("compressible package stored in %d bytes of %d: not compressed", info.StoredSize, info.Size)
	}
}

func TestPackageDedup(t *testing.T) {
	s := newStore(t)
	ctx := testContext(t)
	data := randomBytes(t, 1<<20)
	first, err := s.PutPackage(ctx, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	obs, err := s.packages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st, err := obs.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sizeAfterFirst := st.Size()

	second, err := s.PutPackage(ctx, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if !second.Existed || second.Digest != first.Digest || second.StoredSize != first.StoredSize {
		t.Errorf("second put: got %+v, want Existed with %+v", second, first)
	}
	st, err = obs.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != sizeAfterFirst {
		t.Errorf("bucket grew from %d to %d bytes on a duplicate put", sizeAfterFirst, st.Size())
	}
	list, err := obs.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 {
		t.Errorf("objects: got %d, want 1", len(list))
	}
}

func TestPackageDigestErrors(t *testing.T) {
	s := newStore(t)
	ctx := testContext(t)
	bad := []string{
		"",
		"sha256:",
		"sha256:" + hex.EncodeToString(make([]byte, 31)),
		"sha256:" + hex.EncodeToString(make([]byte, 33)),
		"SHA256:" + hex.EncodeToString(make([]byte, 32)),
		"sha256:" + "AB" + hex.EncodeToString(make([]byte, 31)),
		"sha512:" + hex.EncodeToString(make([]byte, 32)),
		"sha256:../" + hex.EncodeToString(make([]byte, 30)) + "0",
		hex.EncodeToString(make([]byte, 32)),
	}
	for _, d := range bad {
		if _, err := s.OpenPackage(ctx, d); !errors.Is(err, ErrInvalidDigest) {
			t.Errorf("OpenPackage(%q): got %v, want ErrInvalidDigest", d, err)
		}
		if _, err := s.HasPackage(ctx, d); !errors.Is(err, ErrInvalidDigest) {
			t.Errorf("HasPackage(%q): got %v, want ErrInvalidDigest", d, err)
		}
	}

	unknown := digestOf([]byte("never stored"))
	if _, err := s.OpenPackage(ctx, unknown); !errors.Is(err, ErrNotFound) {
		t.Errorf("OpenPackage(unknown): got %v, want ErrNotFound", err)
	}
	if ok, err := s.HasPackage(ctx, unknown); ok || err != nil {
		t.Errorf("HasPackage(unknown): got %v, %v; want false, nil", ok, err)
	}
}

// putRaw stores compressed content under name, bypassing PutPackage.
func putRaw(t *testing.T, s *Store, name string, content []byte, rawSize string) {
	t.Helper()
	ctx := testContext(t)
	obs, err := s.packages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	z := enc.EncodeAll(content, nil)
	_ = enc.Close()
	_, err = obs.Put(ctx, jetstream.ObjectMeta{
		Name:     name,
		Metadata: map[string]string{metaRawSize: rawSize, metaEncoding: "zstd"},
	}, bytes.NewReader(z))
	if err != nil {
		t.Fatal(err)
	}
}

func TestPackageCorrupt(t *testing.T) {
	s := newStore(t)
	ctx := testContext(t)
	want := []byte("the real package")
	other := []byte("something else!!")
	tests := []struct {
		name    string
		content []byte
		rawSize string
	}{
		{"other bytes same size", other, "16"},
		{"truncated", want[:8], "16"},
		{"longer", append(slices.Clone(want), "extra"...), "16"},
		{"size lies", want, "15"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			putRaw(t, s, digestOf(want), tt.content, tt.rawSize)
			rc, err := s.OpenPackage(ctx, digestOf(want))
			if err != nil {
				t.Fatalf("OpenPackage: %v", err)
			}
			defer rc.Close()
			_, err = io.ReadAll(rc)
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("read: got %v, want ErrCorrupt", err)
			}
		})
	}

	t.Run("bad metadata", func(t *testing.T) {
		putRaw(t, s, digestOf(want), want, "x")
		if _, err := s.OpenPackage(ctx, digestOf(want)); !errors.Is(err, ErrCorrupt) {
			t.Errorf("OpenPackage: got %v, want ErrCorrupt", err)
		}
	})

	t.Run("repaired by put", func(t *testing.T) {
		putRaw(t, s, digestOf(want), other, "99")
		info, err := s.PutPackage(ctx, bytes.NewReader(want))
		if err != nil {
			t.Fatal(err)
		}
		if info.Existed {
			t.Error("Existed = true for an object with a wrong size")
		}
		if got := readPackage(t, s, digestOf(want)); !bytes.Equal(got, want) {
			t.Errorf("after repair: got %q, want %q", got, want)
		}
	})
}

func TestPutPackageReadError(t *testing.T) {
	s := newStore(t)
	boom := errors.New("boom")
	_, err := s.PutPackage(testContext(t), io.MultiReader(bytes.NewReader([]byte("abc")), errReader{boom}))
	if !errors.Is(err, boom) {
		t.Fatalf("got %v, want wrapped boom", err)
	}
	entries, err := os.ReadDir(s.cfg.SpoolDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("spool dir holds %d files after a failed put, want 0", len(entries))
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func TestPackageConcurrentPuts(t *testing.T) {
	s := newStore(t)
	ctx := testContext(t)
	data := randomBytes(t, 256<<10)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			if _, err := s.PutPackage(ctx, bytes.NewReader(data)); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent put: %v", err)
	}
	if got := readPackage(t, s, digestOf(data)); !bytes.Equal(got, data) {
		t.Error("package after concurrent puts differs")
	}
}
