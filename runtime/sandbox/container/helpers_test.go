//go:build linux

package container

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/zfaas/zfaas/runtime/sandbox"
	"github.com/zfaas/zfaas/runtime/sandbox/process"
)

// testCgroupParent is unique per test process so concurrent runs (and
// other users of the host) do not collide; TestMain removes it.
var testCgroupParent = fmt.Sprintf("zfaas-ctr-test-%d", os.Getpid())

func TestMain(m *testing.M) {
	process.Init() // the cold-start comparison starts process sandboxes
	code := m.Run()
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		if h, err := parseCgroupMounts(b, testCgroupParent); err == nil {
			for _, mp := range h.all {
				_ = os.Remove(filepath.Join(mp, testCgroupParent))
			}
		}
	}
	os.Exit(code)
}

// testContainerd is a private containerd started for one test: its own
// root, state directory and sockets under a temporary directory.
type testContainerd struct {
	address string
	cmd     *exec.Cmd
}

// startContainerd starts a private containerd, or skips the test when the
// host cannot run one (not root, containerd or runc missing). Cleanup kills
// it and the shims it started.
func startContainerd(t *testing.T) *testContainerd {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("container sandboxes need root")
	}
	for _, bin := range []string{"containerd", "containerd-shim-runc-v2", "runc"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("container sandboxes need %s (apt-get install containerd runc): %v", bin, err)
		}
	}
	// Short paths: Unix socket names are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "zctr")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "c.sock")
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, sock+".ttrpc", filepath.Join(dir, "opt"))
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("containerd", "--config", cfgPath, "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Skipf("cannot start containerd: %v", err)
	}
	c := &testContainerd{address: sock, cmd: cmd}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
		c.killShims(t)
		if t.Failed() {
			if b, err := os.ReadFile(logf.Name()); err == nil {
				t.Logf("containerd log:\n%s", b)
			}
		}
		_ = os.RemoveAll(dir)
	})
	a, err := dialAPI(sock, "probe")
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		if _, err := os.Stat(sock); err == nil {
			if _, err := a.serverVersion(ctx); err == nil {
				break
			}
		}
		if cmd.ProcessState != nil || ctx.Err() != nil {
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("containerd did not come up: %v\n%s", ctx.Err(), b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return c
}

// killShims kills shims this containerd started that outlived it (a shim
// normally exits once its last container is deleted). They are found by
// the containerd address on their command line, and killed by PID.
func (c *testContainerd) killShims(t *testing.T) {
	t.Helper()
	for _, pid := range c.shims() {
		t.Logf("killing leftover shim %d", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// shims returns the PIDs of the shims this containerd started that still
// run, found by the containerd address on their command line.
func (c *testContainerd) shims() []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if !strings.Contains(args[0], "containerd-shim") {
			continue
		}
		for j, a := range args {
			if a == "-address" && j+1 < len(args) && args[j+1] == c.address {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// newTestDriver starts a private containerd and a driver on it.
func newTestDriver(t *testing.T) (*Driver, *testContainerd) {
	t.Helper()
	c := startContainerd(t)
	d, err := New(Config{
		Address: c.address,
		// runc keeps its state under /run/containerd/runc/<namespace>/<id>
		// whichever containerd started it: a namespace of this test process
		// keeps concurrent test runs (and a running platform) apart.
		Namespace:    fmt.Sprintf("zfaas-test-%d", os.Getpid()),
		StateDir:     filepath.Join(t.TempDir(), "state"),
		CgroupParent: testCgroupParent,
		Logger:       slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if errors.Is(err, ErrUnsupported) {
		t.Skipf("host cannot run container sandboxes: %v", err)
	}
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d, c
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
	dir, err := os.MkdirTemp("", "zctr-code")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// syncBuffer is a goroutine-safe bytes.Buffer.
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

// run starts spec, waits for it to exit (bounded) and stops it.
func run(t *testing.T, d *Driver, s sandbox.Spec) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut syncBuffer
	s.Stdout, s.Stderr = &out, &errOut
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	inst, serr := d.Start(ctx, s)
	if serr != nil {
		t.Fatalf("Start: %v", serr)
	}
	defer func() {
		if err := inst.Stop(ctx); err != nil {
			t.Errorf("Stop: %v", err)
		}
	}()
	select {
	case <-inst.Done():
	case <-ctx.Done():
		t.Fatalf("instance did not exit; stdout %q stderr %q", out.String(), errOut.String())
	}
	return out.String(), errOut.String(), inst.Err()
}
