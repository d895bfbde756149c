//go:build linux

package container

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"

	"github.com/zfaas/zfaas/runtime/sandbox"
	"github.com/zfaas/zfaas/runtime/sandbox/process"
)

func TestStartOutputAndCredentials(t *testing.T) {
	d, _ := newTestDriver(t)
	code := codeDir(t, map[string]string{"main.sh": `#!/bin/sh
echo "hello from $(cat /var/task/greeting)"
grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status
echo "pwd=$(pwd) path=$PATH"
touch /etc/zfaas-x 2>/dev/null && echo "rootfs writable"
touch /var/task/x 2>/dev/null && echo "task writable"
echo scratch > /tmp/x && echo "tmp=$(cat /tmp/x)"
echo "to stderr" >&2
`, "greeting": "the container"})
	stdout, stderr, err := run(t, d, sandbox.Spec{
		ID: "hello", CodeDir: code, Args: []string{"/var/task/main.sh"},
		Env: []string{"PATH=/usr/bin:/bin"},
	})
	if err != nil {
		t.Fatalf("Err = %v, want nil; stdout %q stderr %q", err, stdout, stderr)
	}
	t.Logf("stdout:\n%s", stdout)
	for _, want := range []string{
		"hello from the container\n",
		"Uid:\t65534\t65534\t65534\t65534\n",
		"Gid:\t65534\t65534\t65534\t65534\n",
		"CapInh:\t0000000000000000\n", "CapPrm:\t0000000000000000\n",
		"CapEff:\t0000000000000000\n", "CapBnd:\t0000000000000000\n",
		"CapAmb:\t0000000000000000\n",
		"NoNewPrivs:\t1\n", "Seccomp:\t2\n",
		"pwd=/var/task path=/usr/bin:/bin\n",
		"tmp=scratch\n",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q", want)
		}
	}
	for _, bad := range []string{"rootfs writable", "task writable"} {
		if strings.Contains(stdout, bad) {
			t.Errorf("stdout has %q", bad)
		}
	}
	if stderr != "to stderr\n" {
		t.Errorf("stderr = %q, want %q", stderr, "to stderr\n")
	}
}

func TestExitStatus(t *testing.T) {
	d, _ := newTestDriver(t)
	code := codeDir(t, map[string]string{"main.sh": "#!/bin/sh\nexit 3\n"})
	_, _, err := run(t, d, sandbox.Spec{ID: "exit3", CodeDir: code, Args: []string{"/var/task/main.sh"}})
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 3 {
		t.Fatalf("Err = %v, want an *ExitError with code 3", err)
	}
}

func TestMemoryLimitKillsHog(t *testing.T) {
	d, _ := newTestDriver(t)
	// The shell keeps a command substitution's whole output in memory.
	code := codeDir(t, map[string]string{"main.sh": "#!/bin/sh\nx=$(head -c 256m /dev/zero | tr '\\0' x)\necho survived\n"})
	_, _, err := run(t, d, sandbox.Spec{
		ID: "hog", CodeDir: code, Args: []string{"/var/task/main.sh"},
		Limits: sandbox.Limits{MemoryBytes: 32 << 20},
	})
	if !errors.Is(err, ErrOOMKilled) {
		t.Fatalf("Err = %v, want ErrOOMKilled", err)
	}
}

func TestBeforeStartSeesCgroupFirst(t *testing.T) {
	d, _ := newTestDriver(t)
	code := codeDir(t, map[string]string{"main.sh": "#!/bin/sh\ncat /proc/self/cgroup\n"})
	var seen string
	stdout, _, err := run(t, d, sandbox.Spec{
		ID: "hooked", CodeDir: code, Args: []string{"/var/task/main.sh"},
		BeforeStart: func(ctx context.Context, cg string) error {
			seen = cg
			procs, err := os.ReadFile(filepath.Join(cg, "cgroup.procs"))
			if err != nil {
				return err
			}
			if len(procs) != 0 {
				return fmt.Errorf("cgroup already has processes: %q", procs)
			}
			// Nothing of the instance exists in containerd yet.
			if _, err := d.api.containers.Get(d.api.ctx(ctx), &containersapi.GetContainerRequest{ID: "hooked"}); !notFound(err) {
				return fmt.Errorf("container exists before BeforeStart returned (err %v)", err)
			}
			return nil
		},
	})
	if err != nil {
		t.Fatalf("Err = %v", err)
	}
	want := filepath.Join(d.cg.unified, testCgroupParent, "hooked")
	if seen != want {
		t.Fatalf("BeforeStart got %q, want %q", seen, want)
	}
	// The function ran inside that v2 cgroup.
	if line := "0::/" + testCgroupParent + "/hooked\n"; !strings.Contains(stdout, "0::/"+testCgroupParent+"/hooked\n") {
		t.Errorf("/proc/self/cgroup = %q, want a line %q", stdout, line)
	}
}

func TestBeforeStartErrorLeavesNothing(t *testing.T) {
	d, _ := newTestDriver(t)
	code := codeDir(t, map[string]string{"main.sh": "#!/bin/sh\necho must not run\n"})
	errHook := errors.New("egress rules refused")
	var out syncBuffer
	ctx := context.Background()
	spec := sandbox.Spec{
		ID: "refused", CodeDir: code, Args: []string{"/var/task/main.sh"}, Stdout: &out,
		BeforeStart: func(context.Context, string) error { return errHook },
	}
	if _, err := d.Start(ctx, spec); !errors.Is(err, errHook) {
		t.Fatalf("Start err = %v, want %v", err, errHook)
	}
	assertGone(t, d, "refused")
	if out.String() != "" {
		t.Errorf("function ran: %q", out.String())
	}
	// The ID is free again.
	spec.BeforeStart = nil
	inst, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatalf("second Start: %v", err)
	}
	<-inst.Done()
	if err := inst.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}

// assertGone checks that nothing of instance id remains: no container or
// task in containerd, no cgroup in any hierarchy, no state directory.
func assertGone(t *testing.T, d *Driver, id string) {
	t.Helper()
	ctx := d.api.ctx(context.Background())
	if _, err := d.api.containers.Get(ctx, &containersapi.GetContainerRequest{ID: id}); !notFound(err) {
		t.Errorf("container %s: got err %v, want not found", id, err)
	}
	if _, err := d.api.tasks.Get(ctx, &tasksapi.GetRequest{ContainerID: id}); !notFound(err) {
		t.Errorf("task %s: got err %v, want not found", id, err)
	}
	if left := d.cg.leftovers(id); len(left) != 0 {
		t.Errorf("cgroups left: %v", left)
	}
	if _, err := os.Lstat(filepath.Join(d.stateDir, id)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("state dir left (stat err %v)", err)
	}
}

func TestStopCleansUpConcurrently(t *testing.T) {
	d, c := newTestDriver(t)
	code := codeDir(t, map[string]string{"main.sh": "#!/bin/sh\necho up\nsleep 600 & sleep 600\n"})
	ctx := context.Background()
	up := make(chan struct{})
	inst, err := d.Start(ctx, sandbox.Spec{
		ID: "sleeper", CodeDir: code, Args: []string{"/var/task/main.sh"},
		Stdout: firstWrite(up),
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-up:
	case <-time.After(30 * time.Second):
		t.Fatal("no output")
	}
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for n := range errs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[n] = inst.Stop(ctx) }()
	}
	wg.Wait()
	for n, err := range errs {
		if err != nil {
			t.Errorf("Stop #%d: %v", n, err)
		}
	}
	select {
	case <-inst.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}
	if err := inst.Err(); !errors.Is(err, ErrStopped) {
		t.Errorf("Err = %v, want ErrStopped", err)
	}
	if err := inst.Stop(ctx); err != nil {
		t.Errorf("Stop again: %v", err)
	}
	assertGone(t, d, "sleeper")
	if err := syscall.Kill(inst.(*Instance).Pid(), 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("main process still exists (kill 0: %v)", err)
	}
	// The shim exits once its last container is deleted.
	deadline := time.Now().Add(5 * time.Second)
	for len(c.shims()) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if s := c.shims(); len(s) > 0 {
		t.Errorf("shims left: %v", s)
	}
}

// firstWrite returns a writer that closes ch on its first write.
func firstWrite(ch chan struct{}) io.Writer {
	var once sync.Once
	return writerFunc(func(p []byte) (int, error) {
		once.Do(func() { close(ch) })
		return len(p), nil
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func TestInstancesAreIsolated(t *testing.T) {
	d, _ := newTestDriver(t)
	secretDir := codeDir(t, map[string]string{"secret": "b's secret\n", "main.sh": "#!/bin/sh\nsleep 600\n"})
	ctx := context.Background()
	b, err := d.Start(ctx, sandbox.Spec{ID: "b", CodeDir: secretDir, Args: []string{"/var/task/main.sh"}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Stop(ctx)
	probe := fmt.Sprintf(`#!/bin/sh
ls /var/task
cat %[1]s/secret 2>/dev/null && echo "READ HOST PATH"
ls %[2]s 2>/dev/null && echo "SAW STATE DIR"
echo "procs=$(ls -d /proc/[0-9]* | wc -l)"
kill -0 %[3]d 2>/dev/null && echo "SAW B"
ls /tmp
`, secretDir, d.stateDir, b.(*Instance).Pid())
	code := codeDir(t, map[string]string{"main.sh": probe})
	stdout, stderr, err := run(t, d, sandbox.Spec{ID: "a", CodeDir: code, Args: []string{"/var/task/main.sh"}})
	if err != nil {
		t.Fatalf("Err = %v (stderr %q)", err, stderr)
	}
	t.Logf("a saw:\n%s", stdout)
	if !strings.HasPrefix(stdout, "main.sh\n") {
		t.Errorf("a's /var/task listing: %q, want only main.sh", stdout)
	}
	for _, bad := range []string{"READ HOST PATH", "SAW STATE DIR", "SAW B", "secret"} {
		if strings.Contains(stdout, bad) {
			t.Errorf("a's output has %q", bad)
		}
	}
	// ls, wc and the shell: at most a handful of processes.
	if !regexp.MustCompile(`procs=[1-4]\n`).MatchString(stdout) {
		t.Errorf("a sees more processes than its own: %q", stdout)
	}
}

func TestColdStartVsProcessDriver(t *testing.T) {
	if testing.Short() {
		t.Skip("measurement")
	}
	d, _ := newTestDriver(t)
	pd, err := process.New(process.Config{
		StateDir:     filepath.Join(t.TempDir(), "pstate"),
		CgroupParent: testCgroupParent,
	})
	if err != nil {
		t.Skipf("process driver unavailable for the comparison: %v", err)
	}
	code := codeDir(t, map[string]string{"main.sh": "#!/bin/sh\necho ready\nsleep 600\n"})
	const n = 10
	measure := func(drv sandbox.Driver, id string) time.Duration {
		ctx := context.Background()
		up := make(chan struct{})
		t0 := time.Now()
		inst, err := drv.Start(ctx, sandbox.Spec{ID: id, CodeDir: code, Args: []string{"/var/task/main.sh"}, Stdout: firstWrite(up)})
		if err != nil {
			t.Fatalf("Start %s: %v", id, err)
		}
		select {
		case <-up:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: no output", id)
		}
		el := time.Since(t0)
		if err := inst.Stop(ctx); err != nil {
			t.Fatalf("Stop %s: %v", id, err)
		}
		return el
	}
	var ct, pt []time.Duration
	for i := range n {
		ct = append(ct, measure(d, fmt.Sprintf("c%d", i)))
		pt = append(pt, measure(pd, fmt.Sprintf("p%d", i)))
	}
	slices.Sort(ct)
	slices.Sort(pt)
	p50 := func(s []time.Duration) time.Duration { return s[len(s)/2] }
	t.Logf("cold start (Start → first output), n=%d: container p50 %v min %v max %v; process p50 %v min %v max %v; ratio %.1fx",
		n, p50(ct), ct[0], ct[n-1], p50(pt), pt[0], pt[n-1], float64(p50(ct))/float64(p50(pt)))
}
