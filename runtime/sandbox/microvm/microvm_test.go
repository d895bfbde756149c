//go:build linux

package microvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/zfaas/zfaas/identity"
	"github.com/zfaas/zfaas/runtime/guestagent"
	"github.com/zfaas/zfaas/runtime/sandbox"
	"github.com/zfaas/zfaas/runtime/svid"
	"github.com/zfaas/zfaas/runtime/worker"
)

// syncBuffer is a bytes.Buffer safe for the instance's writer goroutine.
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

// goBuild builds pkg statically into dir/name.
func goBuild(t *testing.T, pkg, out string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
}

// kernelDir returns a kernel cache, running scripts/vmkernel.sh into one
// when none exists and apt is there; it skips the test otherwise.
func kernelDir(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("ZFAAS_VMKERNEL_DIR"); d != "" {
		return d
	}
	if _, err := exec.LookPath("apt-get"); err != nil || os.Geteuid() != 0 {
		if _, err := os.Stat(filepath.Join(DefaultKernelDir, "vmlinux")); err == nil {
			return DefaultKernelDir
		}
		t.Skip("no kernel cache at " + DefaultKernelDir + " and no root apt to make one (run make vmkernel)")
	}
	// The script does nothing when the cache is current (same package and
	// layout), so an older cache is refreshed.
	script, _ := filepath.Abs("../../../scripts/vmkernel.sh")
	if b, err := exec.Command("bash", script, DefaultKernelDir).CombinedOutput(); err != nil {
		t.Skipf("no kernel cache and scripts/vmkernel.sh failed: %v\n%s", err, b)
	}
	return DefaultKernelDir
}

var (
	buildOnce sync.Once
	buildDir  string
)

// newDriver returns a TCG driver with the agent and the test function
// built, or skips when QEMU, root or the kernel are missing.
func newDriver(t *testing.T) (*Driver, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("micro-VM tests need root (cgroups)")
	}
	if _, err := exec.LookPath(DefaultQEMU); err != nil {
		t.Skip("qemu-system-x86_64 missing (apt-get install qemu-system-x86)")
	}
	kdir := kernelDir(t)
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "microvm-test-")
		if err != nil {
			t.Fatal(err)
		}
		buildDir = dir
		goBuild(t, "github.com/zfaas/zfaas/runtime/guestagent/cmd/zfaas-agent", filepath.Join(dir, "agent"))
		if err := os.MkdirAll(filepath.Join(dir, "code"), 0o755); err != nil {
			t.Fatal(err)
		}
		goBuild(t, "./testdata/fn", filepath.Join(dir, "code", "fn"))
	})
	if buildDir == "" {
		t.Fatal("build failed earlier")
	}
	d, err := New(Config{
		KernelDir: kdir, AgentPath: filepath.Join(buildDir, "agent"), Accel: "tcg",
		StateDir: filepath.Join(t.TempDir(), "state"), CgroupParent: "zfaas-microvm-test",
		Limits: sandbox.Limits{CPUs: 2},
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return d, filepath.Join(buildDir, "code")
}

func waitDone(t *testing.T, inst sandbox.Instance) {
	t.Helper()
	select {
	case <-inst.Done():
	case <-time.After(60 * time.Second):
		t.Fatal("instance did not end")
	}
}

func TestBootRunsProgramAndForwardsOutput(t *testing.T) {
	d, code := newDriver(t)
	ctx := context.Background()
	var out, errOut syncBuffer
	inst, err := d.Start(ctx, sandbox.Spec{
		ID: "vm-hello", CodeDir: code, Args: []string{"/var/task/fn", "hello"},
		Env: []string{"GREETING=zfaas"}, Stdout: &out, Stderr: &errOut,
	})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer inst.Stop(ctx)
	waitDone(t, inst)
	if err := inst.Err(); err != nil {
		t.Errorf("Err() = %v, want nil", err)
	}
	if got, want := out.String(), "hello from the guest zfaas\n"; got != want {
		t.Errorf("stdout = %q, want %q", got, want)
	}
	if got, want := errOut.String(), "to stderr\n"; got != want {
		t.Errorf("stderr = %q, want %q", got, want)
	}
	b := inst.(*Instance).Boot
	t.Logf("cold start (accel %s): total %v = qemu start %v + kernel→agent %v + agent→ready %v + rest",
		b.Accel, b.Total, b.QEMU, b.KernelToInit, b.InitToReady)

	// A failing program's status is reported.
	inst2, err := d.Start(ctx, sandbox.Spec{ID: "vm-exit", CodeDir: code, Args: []string{"/var/task/fn", "exit"}})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer inst2.Stop(ctx)
	waitDone(t, inst2)
	if err := inst2.Err(); err == nil || !strings.Contains(err.Error(), "exit status 7") {
		t.Errorf("Err() = %v, want exit status 7", err)
	}
}

func TestTunnelsBothWays(t *testing.T) {
	d, code := newDriver(t)
	ctx := context.Background()
	// Guest → host: the runtime API address is served on the host.
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "pong %s", r.URL.Path)
	})}
	go srv.Serve(l)
	defer srv.Close()
	var out syncBuffer
	inst, err := d.Start(ctx, sandbox.Spec{
		ID: "vm-get", CodeDir: code, Args: []string{"/var/task/fn", "get"},
		Env: []string{"AWS_LAMBDA_RUNTIME_API=" + l.Addr().String()}, Stdout: &out, Stderr: &out,
	})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer inst.Stop(ctx)
	waitDone(t, inst)
	if got, want := out.String(), "got 200 pong /ping\n"; got != want {
		t.Errorf("guest output = %q, want %q (err %v)", got, want, inst.Err())
	}

	// Host → guest: HTTP mode, the host's 127.0.0.1:PORT reaches the guest.
	pl, _ := net.Listen("tcp4", "127.0.0.1:0")
	port := pl.Addr().(*net.TCPAddr).Port
	pl.Close()
	var sout syncBuffer
	inst2, err := d.Start(ctx, sandbox.Spec{
		ID: "vm-serve", CodeDir: code, Args: []string{"/var/task/fn", "serve"},
		Env: []string{"PORT=" + strconv.Itoa(port)}, Stdout: &sout, Stderr: &sout,
	})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer inst2.Stop(ctx)
	var body string
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/hi")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest server not reachable: %v, body %q, output %q", err, body, sout.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if want := "served /hi from the guest"; body != want {
		t.Errorf("body = %q, want %q", body, want)
	}
}

func TestStopRemovesEverythingAndMemoryIsPassed(t *testing.T) {
	d, code := newDriver(t)
	ctx := context.Background()
	var sawCgroup string
	inst, err := d.Start(ctx, sandbox.Spec{
		ID: "vm-stop", CodeDir: code, Args: []string{"/var/task/fn", "serve"}, Env: []string{"PORT=1"},
		Limits: sandbox.Limits{MemoryBytes: 128 << 20},
		BeforeStart: func(_ context.Context, cg string) error {
			sawCgroup = cg
			return nil
		},
	})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	vi := inst.(*Instance)
	if sawCgroup == "" || sawCgroup != inst.CgroupV2Path() {
		t.Errorf("BeforeStart got %q, want %q", sawCgroup, inst.CgroupV2Path())
	}
	pid := vi.QEMUPid()
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if !bytes.Contains(cmdline, []byte("\x00-m\x00128M\x00")) {
		t.Errorf("qemu cmdline %q lacks -m 128M", bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}))
	}
	procs, _ := os.ReadFile(filepath.Join(inst.CgroupV2Path(), "cgroup.procs"))
	if !strings.Contains(string(procs), strconv.Itoa(pid)) {
		t.Errorf("qemu pid %d not in %s (%q)", pid, inst.CgroupV2Path(), procs)
	}
	if rss := rssKiB(pid); rss > 0 {
		t.Logf("idle VM: QEMU RSS %d MiB", rss>>10)
	}
	if err := inst.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := inst.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if !errors.Is(inst.Err(), ErrStopped) {
		t.Errorf("Err() = %v, want ErrStopped", inst.Err())
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
		t.Errorf("qemu pid %d still exists", pid)
	}
	if _, err := os.Stat(inst.CgroupV2Path()); err == nil {
		t.Errorf("cgroup %s still exists", inst.CgroupV2Path())
	}
	if _, err := os.Stat(vi.dir); err == nil {
		t.Errorf("state dir %s still exists", vi.dir)
	}
}

func rssKiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			return n
		}
	}
	return 0
}

// TestWorkloadAPIInGuest serves the worker's real Workload API endpoint
// (runtime/svid over a CA in a temp dir, attested by the instance's
// cgroup) through Spec.Mounts; a go-spiffe client in the guest fetches
// its X.509-SVID over the tunnelled socket and must get its function's ID.
func TestWorkloadAPIInGuest(t *testing.T) {
	d, _ := newDriver(t)
	code := t.TempDir()
	goBuild(t, "./testdata/svidfn", filepath.Join(code, "svidfn"))
	ctx := context.Background()
	const td, tenant, function = "zfaas.test", "acme", "hello"
	prov, err := svid.Start(ctx, svid.Config{Dir: t.TempDir(), TrustDomain: td})
	if err != nil {
		t.Fatalf("svid.Start: %v", err)
	}
	defer prov.Close()

	// The cgroup is known only once the driver made it (BeforeStart), as
	// in runtime/worker.
	var cgDir string
	known := make(chan struct{})
	cgroupOf := func() (string, error) {
		select {
		case <-known:
			return cgDir, nil
		case <-time.After(60 * time.Second):
			return "", errors.New("instance never started")
		}
	}
	epDir, closeEP, err := prov.Endpoint(ctx, worker.EndpointSpec{
		InstanceID: "vm-svid", Tenant: tenant, Function: function, CgroupDir: cgroupOf,
	})
	if err != nil {
		t.Fatalf("Endpoint: %v", err)
	}
	defer closeEP()

	var out, errOut syncBuffer
	inst, err := d.Start(ctx, sandbox.Spec{
		ID: "vm-svid", CodeDir: code, Args: []string{"/var/task/svidfn"},
		Env:    []string{"SPIFFE_ENDPOINT_SOCKET=unix://" + worker.EndpointMountDir + "/" + worker.EndpointSocket},
		Mounts: []sandbox.Mount{{Source: epDir, Target: worker.EndpointMountDir}},
		Stdout: &out, Stderr: &errOut,
		BeforeStart: func(_ context.Context, cg string) error {
			cgDir = cg
			close(known)
			return nil
		},
	})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer inst.Stop(ctx)
	waitDone(t, inst)
	want, err := identity.FunctionID(spiffeid.RequireTrustDomainFromString(td), tenant, function)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(out.String()); got != want.String() {
		t.Errorf("guest's SPIFFE ID = %q, want %q (stderr %q, err %v)", got, want, errOut.String(), inst.Err())
	}
	if err := inst.Err(); err != nil {
		t.Errorf("Err() = %v, want nil", err)
	}
	// The same socket refuses this test process (outside the instance's
	// cgroup): the guest got its SVID through the proxy in the cgroup.
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	addr := "unix://" + filepath.Join(epDir, worker.EndpointSocket)
	if s, err := workloadapi.FetchX509SVID(fctx, workloadapi.WithAddr(addr)); err == nil {
		t.Errorf("host process outside the cgroup got %s, want refusal", s.ID)
	} else if status.Code(err) != codes.PermissionDenied {
		t.Errorf("host process outside the cgroup: %v, want PermissionDenied", err)
	}
}

// TestGuestLimits checks that the limits reach the function inside the
// guest (its own cgroup, RLIMIT_NOFILE, the size of /tmp) and that a
// function smaller than a bootable VM still gets a VM of
// MinGuestMemoryBytes, with its own limit applied in the guest.
func TestGuestLimits(t *testing.T) {
	d, code := newDriver(t)
	ctx := context.Background()
	var out, errOut syncBuffer
	inst, err := d.Start(ctx, sandbox.Spec{
		ID: "vm-limits", CodeDir: code, Args: []string{"/var/task/fn", "limits"},
		Limits: sandbox.Limits{MemoryBytes: 64 << 20, PIDs: 40, NoFile: 333, TmpBytes: 8 << 20},
		Stdout: &out, Stderr: &errOut,
	})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer inst.Stop(ctx)
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", inst.(*Instance).QEMUPid()))
	if want := fmt.Sprintf("\x00-m\x00%dM\x00", MinGuestMemoryBytes>>20); !bytes.Contains(cmdline, []byte(want)) {
		t.Errorf("qemu cmdline %q: want the VM at %d MiB", bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}), MinGuestMemoryBytes>>20)
	}
	waitDone(t, inst)
	want := fmt.Sprintf("nofile=333 tmp=%d cgroup=/function memory=%d pids=40\n", 8<<20, 64<<20)
	if got := out.String(); got != want {
		t.Errorf("function saw %q, want %q (stderr %q, err %v)", got, want, errOut.String(), inst.Err())
	}
	if b := inst.(*Instance).Boot; b.Transport != guestagent.TransportSerial {
		t.Errorf("boot transport %q, want serial on a host without vhost-vsock", b.Transport)
	}
}
