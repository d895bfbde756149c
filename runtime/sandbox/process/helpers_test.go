//go:build linux

package process

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/zfaas/zfaas/runtime/sandbox"
)

// testCgroupParent is unique per test process so concurrent runs (and
// other users of the host) do not collide; TestMain removes it.
var testCgroupParent = fmt.Sprintf("zfaas-test-%d", os.Getpid())

func TestMain(m *testing.M) {
	Init()
	if os.Getenv(fakeWorkerEnv) != "" {
		runFakeWorker()
		return
	}
	code := m.Run()
	removeTestCgroupParent()
	os.Exit(code)
}

// removeTestCgroupParent removes the parent cgroups New created, in every
// hierarchy where they exist.
func removeTestCgroupParent() {
	mounts, err := readMountinfo("/proc/self/mountinfo")
	if err != nil {
		return
	}
	for _, m := range mounts {
		if m.fsType == "cgroup" || m.fsType == "cgroup2" {
			_ = os.Remove(filepath.Join(m.mountPoint, testCgroupParent))
		}
	}
}

// newTestDriver returns a driver with its own state dir, or skips the test
// when the host cannot run sandboxes.
func newTestDriver(t *testing.T) *Driver {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("process sandboxes need root")
	}
	d, err := New(Config{
		StateDir:     filepath.Join(t.TempDir(), "state"),
		CgroupParent: testCgroupParent,
		Logger:       slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if errors.Is(err, ErrUnsupported) {
		t.Skipf("host cannot run process sandboxes: %v", err)
	}
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return d
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// codeDir creates a function package readable by the sandbox user with the
// given files (name → content; executable when the name ends in ".sh").
func codeDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "code")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// t.TempDir's parents are 0700: fine, only the init (root) resolves the
	// host path; the sandbox sees the bind at /var/task.
	for name, content := range files {
		mode := os.FileMode(0o644)
		if filepath.Ext(name) == ".sh" {
			mode = 0o755
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of the
// output copier and reads of the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// run starts spec, waits for it to exit and stops it; it returns stdout,
// stderr and Err.
func run(t *testing.T, d *Driver, spec sandbox.Spec) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut syncBuffer
	spec.Stdout, spec.Stderr = &out, &errOut
	inst := start(t, d, spec)
	select {
	case <-inst.Done():
	case <-time.After(60 * time.Second):
		t.Fatalf("instance %s did not exit; stdout %q stderr %q", spec.ID, out.String(), errOut.String())
	}
	stop(t, inst)
	return out.String(), errOut.String(), inst.Err()
}

func start(t *testing.T, d *Driver, spec sandbox.Spec) *Instance {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	inst, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatalf("Start(%s): %v", spec.ID, err)
	}
	t.Cleanup(func() { stop(t, inst.(*Instance)) })
	return inst.(*Instance)
}

func stop(t *testing.T, inst *Instance) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := inst.Stop(ctx); err != nil {
		t.Errorf("Stop(%s): %v", inst.ID(), err)
	}
}

// shSpec is a spec running a /bin/sh script.
func shSpec(id, code, script string) sandbox.Spec {
	return sandbox.Spec{
		ID:      id,
		CodeDir: code,
		Args:    []string{"/bin/sh", "-c", script},
		Env:     []string{"PATH=/usr/bin:/bin"},
	}
}
