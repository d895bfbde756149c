//go:build linux

package process

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/zfaas/zfaas/runtime/sandbox"
)

const python = "/usr/bin/python3"

func needPython(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(python); err != nil {
		t.Skipf("%s not available: %v", python, err)
	}
}

func TestOutput(t *testing.T) {
	d := newTestDriver(t)
	code := codeDir(t, nil)
	big := strings.Repeat("x", 1<<20)
	tests := []struct {
		name, script        string
		wantStdout, wantErr string
	}{
		{"stdout", "echo out", "out\n", ""},
		{"stderr", "echo err >&2", "", "err\n"},
		{"both", "echo out; echo err >&2", "out\n", "err\n"},
		{"large", "head -c 1048576 /dev/zero | tr '\\0' x", big, ""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, err := run(t, d, shSpec(fmt.Sprintf("out%d", i), code, tt.script))
			if err != nil {
				t.Fatalf("Err() = %v, want nil", err)
			}
			if stdout != tt.wantStdout {
				t.Errorf("stdout = %.80q (%d bytes), want %.80q (%d bytes)", stdout, len(stdout), tt.wantStdout, len(tt.wantStdout))
			}
			if stderr != tt.wantErr {
				t.Errorf("stderr = %q, want %q", stderr, tt.wantErr)
			}
		})
	}
}

// TestSandboxView checks what a function sees from inside its sandbox.
func TestSandboxView(t *testing.T) {
	d := newTestDriver(t)
	code := codeDir(t, map[string]string{"hello.txt": "hi\n"})
	hostOnly := []string{d.stateDir, code, "/work", "/root", "/sys", "/var/lib", "/home"}
	tests := []struct {
		name    string
		script  string
		workDir string
		want    string
	}{
		{"pid 1", "echo $$", "", "1"},
		{"hostname", "cat /proc/sys/kernel/hostname", "", Hostname},
		{"only own processes", "for p in /proc/[0-9]*; do echo ${p#/proc/}; done", "", "1"},
		{"credentials", `grep -E '^(Uid|Gid|Groups|NoNewPrivs|Seccomp|Cap(Inh|Prm|Eff|Bnd|Amb)):' /proc/self/status | tr -s '\t ' ' '`, "",
			"Uid: 65534 65534 65534 65534\nGid: 65534 65534 65534 65534\nGroups: \n" +
				"CapInh: 0000000000000000\nCapPrm: 0000000000000000\nCapEff: 0000000000000000\n" +
				"CapBnd: 0000000000000000\nCapAmb: 0000000000000000\nNoNewPrivs: 1\nSeccomp: 2"},
		{"task root has package", "cat /var/task/hello.txt", "", "hi"},
		{"default work dir", "pwd", "", sandbox.TaskRoot},
		{"work dir", "pwd", "/tmp", "/tmp"},
		{"read-only dirs", `for d in / /var/task /etc /usr /dev /proc/sys; do touch $d/x 2>/dev/null && echo "$d writable" || echo "$d read-only"; done`, "",
			"/ read-only\n/var/task read-only\n/etc read-only\n/usr read-only\n/dev read-only\n/proc/sys read-only"},
		{"task root nosuid nodev", `grep ' /var/task ' /proc/self/mountinfo | grep -c 'ro,nosuid,nodev'`, "", "1"},
		{"tmp writable and owned", "echo data > /tmp/f && cat /tmp/f && stat -c %u:%g /tmp", "", "data\n65534:65534"},
		{"tmp size", "df -k /tmp | tail -1 | tr -s ' ' | cut -d' ' -f2", "", strconv.Itoa(DefaultTmpBytes / 1024)},
		{"dev", "ls /dev | tr '\\n' ' '", "", "fd full null random shm stderr stdin stdout urandom zero"},
		{"dev null works", "echo x > /dev/null && head -c 4 /dev/zero | wc -c", "", "4"},
		{"host paths hidden", "for p in " + strings.Join(hostOnly, " ") + "; do test -e $p && echo \"$p visible\"; done; echo done", "", "done"},
		{"rlimits", "ulimit -n; ulimit -c", "", fmt.Sprintf("%d\n0", DefaultNoFile)},
		{"env is exactly Spec.Env", "echo $FOO; env | grep -v -E '^(FOO|PATH|PWD)=' | wc -l", "", "bar\n0"},
		{"cannot regain root", "/usr/bin/su -c true root </dev/null 2>/dev/null && echo root || echo denied", "", "denied"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := shSpec(fmt.Sprintf("view%d", i), code, tt.script)
			spec.Env = append(spec.Env, "FOO=bar")
			spec.WorkDir = tt.workDir
			stdout, stderr, err := run(t, d, spec)
			if err != nil {
				t.Fatalf("Err() = %v, want nil (stderr %q)", err, stderr)
			}
			if got := strings.TrimSpace(stdout); got != tt.want {
				t.Errorf("got %q, want %q (stderr %q)", got, tt.want, stderr)
			}
		})
	}
}

// TestOnlyStdioInherited checks that no descriptor of the driver or the
// init reaches the function.
func TestOnlyStdioInherited(t *testing.T) {
	needPython(t)
	d := newTestDriver(t)
	const script = `
import os
for fd in range(1024):
    try:
        os.fstat(fd)
        print(fd, os.readlink("/proc/self/fd/%d" % fd))
    except OSError:
        pass
`
	stdout, stderr, err := run(t, d, sandbox.Spec{ID: "fds", CodeDir: codeDir(t, nil), Args: []string{python, "-c", script}})
	if err != nil {
		t.Fatalf("Err() = %v (stderr %q)", err, stderr)
	}
	var fds []string
	for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
		fds = append(fds, strings.Fields(line)[0])
	}
	if got := strings.Join(fds, " "); got != "0 1 2" {
		t.Errorf("open descriptors:\n%s\nwant only 0 1 2", stdout)
	}
}

func TestExtraMounts(t *testing.T) {
	d := newTestDriver(t)
	code := codeDir(t, nil)
	rt := codeDir(t, map[string]string{"bootstrap": "runtime\n"})
	file := filepath.Join(t.TempDir(), "data.txt")
	if err := os.WriteFile(file, []byte("file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := shSpec("mounts", code, `cat /opt/zfaas/bootstrap /srv/data.txt
touch /opt/zfaas/new 2>/dev/null && echo dir writable || echo dir read-only
echo x 2>/dev/null >/srv/data.txt && echo file writable || echo file read-only`)
	spec.Mounts = []sandbox.Mount{
		{Source: rt, Target: sandbox.RuntimeRoot},
		{Source: file, Target: "/srv/data.txt"},
	}
	stdout, stderr, err := run(t, d, spec)
	if err != nil {
		t.Fatalf("Err() = %v, want nil (stderr %q)", err, stderr)
	}
	if want := "runtime\nfile\ndir read-only\nfile read-only\n"; stdout != want {
		t.Errorf("got %q, want %q (stderr %q)", stdout, want, stderr)
	}
}

// TestIsolationBetweenInstances runs A and, while A runs, B: B must see
// neither A's /tmp, processes nor code.
func TestIsolationBetweenInstances(t *testing.T) {
	d := newTestDriver(t)
	codeA := codeDir(t, map[string]string{"secret-a": "A\n"})
	codeB := codeDir(t, nil)
	var outA syncBuffer
	specA := shSpec("iso-a", codeA, "echo A > /tmp/a-was-here; echo ready; exec sleep 600")
	specA.Stdout = &outA
	a := start(t, d, specA)
	waitFor(t, 10*time.Second, "A ready", func() bool { return strings.Contains(outA.String(), "ready") })

	script := fmt.Sprintf(`test -e /tmp/a-was-here && echo "A's tmp visible"
for p in /proc/[0-9]*; do test "$p" = /proc/1 || echo "foreign process ${p#/proc/}"; done
kill -0 %d 2>/dev/null && echo "A's pid signalable"
for p in %s %s /var/task/secret-a; do test -e $p && echo "$p visible"; done
echo done`, a.Pid(), codeA, filepath.Join(d.stateDir, "iso-a"))
	stdout, stderr, err := run(t, d, shSpec("iso-b", codeB, script))
	if err != nil {
		t.Fatalf("B: Err() = %v (stderr %q)", err, stderr)
	}
	if got := strings.TrimSpace(stdout); got != "done" {
		t.Errorf("B saw A:\n%s", got)
	}
	if closed(a.Done()) {
		t.Errorf("A exited early: %v", a.Err())
	}
}

func TestMemoryLimit(t *testing.T) {
	needPython(t)
	d := newTestDriver(t)
	code := codeDir(t, nil)
	tests := []struct {
		name    string
		mib     int
		wantOOM bool
	}{
		{"within limit", 8, false},
		{"over limit", 256, true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := sandbox.Spec{
				ID:      fmt.Sprintf("mem%d", i),
				CodeDir: code,
				// Touches every page, so the memory is really charged.
				Args:   []string{python, "-c", fmt.Sprintf("b = b'x' * (%d << 20); print(len(b) >> 20)", tt.mib)},
				Limits: sandbox.Limits{MemoryBytes: 64 << 20},
			}
			stdout, _, err := run(t, d, spec)
			if got := errors.Is(err, ErrOOMKilled); got != tt.wantOOM {
				t.Fatalf("errors.Is(Err(), ErrOOMKilled) = %v, want %v (Err() = %v)", got, tt.wantOOM, err)
			}
			if !tt.wantOOM && strings.TrimSpace(stdout) != strconv.Itoa(tt.mib) {
				t.Errorf("stdout = %q, want %d", stdout, tt.mib)
			}
		})
	}
}

func TestPidsLimit(t *testing.T) {
	needPython(t)
	d := newTestDriver(t)
	code := codeDir(t, nil)
	const limit = 16
	script := `
import errno, os, time
n = 0
for i in range(100):
    try:
        pid = os.fork()
    except OSError as e:
        print("fork failed", errno.errorcode[e.errno])
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    n += 1
print("forked", n)
`
	spec := sandbox.Spec{ID: "pids", CodeDir: code, Args: []string{python, "-c", script},
		Limits: sandbox.Limits{PIDs: limit}}
	stdout, stderr, err := run(t, d, spec)
	if err != nil {
		t.Fatalf("Err() = %v (stderr %q)", err, stderr)
	}
	var forked int
	if !strings.Contains(stdout, "fork failed EAGAIN") || func() bool {
		_, serr := fmt.Sscanf(stdout[strings.Index(stdout, "forked"):], "forked %d", &forked)
		return serr != nil
	}() {
		t.Fatalf("stdout = %q, want a failed fork and a count", stdout)
	}
	if forked >= limit {
		t.Errorf("forked %d children, want < %d", forked, limit)
	}
}

func TestCgroupLimits(t *testing.T) {
	d := newTestDriver(t)
	code := codeDir(t, nil)
	var out syncBuffer
	spec := shSpec("limits", code, "cat /proc/self/cgroup; exec sleep 600")
	spec.Limits = sandbox.Limits{MemoryBytes: 100 << 20, CPUs: 0.5, PIDs: 42}
	spec.Stdout = &out
	inst := start(t, d, spec)
	waitFor(t, 10*time.Second, "output", func() bool { return strings.Contains(out.String(), "0::") })

	// The first command already runs in the instance's cgroups.
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			t.Fatalf("bad /proc/self/cgroup line %q", line)
		}
		ctrl := parts[1]
		inOurs := ctrl == "" || ctrl == "memory" || ctrl == "pids" || strings.Contains(ctrl, "cpu")
		if inOurs && ctrl != "cpuacct" && ctrl != "cpuset" {
			if want := "/" + testCgroupParent + "/limits"; parts[2] != want {
				t.Errorf("cgroup %q: path %q, want %q", ctrl, parts[2], want)
			}
		}
	}
	if got, want := inst.CgroupV2Path(), filepath.Join(d.cg.unified, testCgroupParent, "limits"); got != want {
		t.Errorf("CgroupV2Path() = %q, want %q", got, want)
	}

	want := map[string]map[string]string{ // controller → file → value, per hierarchy
		"memory": {"memory.limit_in_bytes": "104857600", "memory.max": "104857600"},
		"cpu":    {"cpu.cfs_quota_us": "50000", "cpu.max": "50000 100000"},
		"pids":   {"pids.max": "42"},
	}
	for ctrl, files := range want {
		dir := inst.CgroupV2Path()
		if slices.Contains(d.cg.v1Name, ctrl) {
			dir = inst.cg.v1Path(ctrl)
		}
		found := false
		for f, v := range files {
			b, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				continue
			}
			found = true
			if got := strings.TrimSpace(string(b)); got != v {
				t.Errorf("%s/%s = %q, want %q", dir, f, got, v)
			}
		}
		if !found {
			t.Errorf("no %s limit file in %s", ctrl, dir)
		}
	}
}

// TestSeccomp calls syscalls the filter denies through libc's syscall(3);
// without the filter each would succeed or fail differently for an
// unprivileged user.
func TestSeccomp(t *testing.T) {
	needPython(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("syscall numbers below are for amd64")
	}
	d := newTestDriver(t)
	code := codeDir(t, nil)
	const call = `
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
args = [ctypes.c_long(int(a, 0)) for a in sys.argv[1:]]
r = libc.syscall(*args)
print(r, ctypes.get_errno())
`
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"getpid allowed", []string{"39"}, "1 0"},
		{"ptrace", []string{"101", "0", "0", "0", "0"}, "-1 1"},
		{"unshare user ns", []string{"272", "0x10000000"}, "-1 1"},
		{"clone with new user ns", []string{"56", "0x10000011", "0", "0", "0", "0"}, "-1 1"},
		{"clone3", []string{"435", "0", "0"}, "-1 38"},
		{"keyctl", []string{"250", "0", "-3", "0"}, "-1 1"},
		{"add_key", []string{"248", "0", "0", "0", "0", "0"}, "-1 1"},
		{"userfaultfd", []string{"323", "1"}, "-1 1"},
		{"bpf", []string{"321", "0", "0", "0"}, "-1 1"},
		{"perf_event_open", []string{"298", "0", "0", "-1", "-1", "0"}, "-1 1"},
		{"io_uring_setup", []string{"425", "1", "0"}, "-1 1"},
		{"mount", []string{"165", "0", "0", "0", "0", "0"}, "-1 1"},
		{"name_to_handle_at", []string{"303", "-100", "0", "0", "0", "0"}, "-1 1"},
		{"setns", []string{"308", "0", "0"}, "-1 1"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := sandbox.Spec{ID: fmt.Sprintf("sc%d", i), CodeDir: code,
				Args: append([]string{python, "-c", call}, tt.args...)}
			stdout, stderr, err := run(t, d, spec)
			if err != nil {
				t.Fatalf("Err() = %v (stderr %q)", err, stderr)
			}
			if got := strings.TrimSpace(stdout); got != tt.want {
				t.Errorf("syscall %v: got %q, want %q (stderr %q)", tt.args, got, tt.want, stderr)
			}
		})
	}

	t.Run("x86 32-bit ABI refused", func(t *testing.T) {
		// getpid (i386 number 20) through int 0x80 from machine code.
		const int80 = `
import ctypes, mmap, os
m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
m.write(bytes([0xb8, 20, 0, 0, 0, 0xcd, 0x80, 0xc3]))  # mov eax,20; int 0x80; ret
f = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))
print(f() == os.getpid(), f())
`
		host, err := exec.Command(python, "-c", int80).Output()
		if err != nil || !strings.HasPrefix(string(host), "True") {
			t.Skipf("the host does not run i386 syscalls (%q, %v)", host, err)
		}
		stdout, stderr, err := run(t, d, sandbox.Spec{ID: "sc-int80", CodeDir: code, Args: []string{python, "-c", int80}})
		if err != nil {
			t.Fatalf("Err() = %v (stderr %q)", err, stderr)
		}
		if got, want := strings.TrimSpace(stdout), fmt.Sprintf("False %d", -int(syscall.ENOSYS)); got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	})
}

func TestExitStatus(t *testing.T) {
	d := newTestDriver(t)
	code := codeDir(t, nil)

	t.Run("zero", func(t *testing.T) {
		if _, _, err := run(t, d, shSpec("exit0", code, "exit 0")); err != nil {
			t.Errorf("Err() = %v, want nil", err)
		}
	})
	t.Run("non-zero", func(t *testing.T) {
		_, _, err := run(t, d, shSpec("exit3", code, "exit 3"))
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 {
			t.Errorf("Err() = %v, want exit status 3", err)
		}
		if errors.Is(err, ErrStopped) || errors.Is(err, ErrOOMKilled) {
			t.Errorf("Err() = %v, want neither ErrStopped nor ErrOOMKilled", err)
		}
	})
	t.Run("stopped", func(t *testing.T) {
		inst := start(t, d, shSpec("exit-stop", code, "exec sleep 600"))
		if inst.Err() != nil {
			t.Errorf("Err() before Done = %v, want nil", inst.Err())
		}
		stop(t, inst)
		if !closed(inst.Done()) {
			t.Fatal("Done not closed after Stop")
		}
		if err := inst.Err(); !errors.Is(err, ErrStopped) {
			t.Errorf("Err() = %v, want ErrStopped", err)
		}
	})
}

// TestStopCleansUp checks that Stop leaves no process, cgroup, mount or
// state behind, and that it is idempotent and safe concurrently.
func TestStopCleansUp(t *testing.T) {
	d := newTestDriver(t)
	code := codeDir(t, nil)
	var out syncBuffer
	spec := shSpec("stop", code, "sleep 600 & sleep 600 & (sleep 600 &) ; echo ready; wait")
	spec.Stdout = &out
	ctx := context.Background()
	si, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	inst := si.(*Instance)
	waitFor(t, 10*time.Second, "ready", func() bool { return strings.Contains(out.String(), "ready") })

	pids, err := readPids(filepath.Join(inst.CgroupV2Path(), "cgroup.procs"))
	if err != nil || len(pids) < 4 {
		t.Fatalf("cgroup.procs = %v, %v; want at least 4 processes", pids, err)
	}
	dirs := inst.cg.procDirs()
	stateDir := filepath.Join(d.stateDir, "stop")

	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = inst.Stop(ctx)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("concurrent Stop #%d: %v", i, err)
		}
	}
	if err := inst.Stop(ctx); err != nil {
		t.Errorf("second Stop: %v", err)
	}

	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("pid %d still exists (kill 0: %v)", pid, err)
		}
	}
	for _, dir := range append(dirs, stateDir) {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists (%v)", dir, err)
		}
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mi), d.stateDir) {
		t.Errorf("mounts under %s remain:\n%s", d.stateDir, mi)
	}

	// The ID is free again.
	inst2 := start(t, d, shSpec("stop", code, "true"))
	<-inst2.Done()
	stop(t, inst2)
}

func TestConcurrentStarts(t *testing.T) {
	d := newTestDriver(t)
	code := codeDir(t, nil)
	const n = 8
	var wg sync.WaitGroup
	outs := make([]string, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("conc%d", i)
			var out syncBuffer
			spec := shSpec(id, code, "echo $ID $$; grep '^0::' /proc/self/cgroup")
			spec.Env = append(spec.Env, "ID="+id)
			spec.Stdout = &out
			inst, err := d.Start(context.Background(), spec)
			if err != nil {
				errs[i] = err
				return
			}
			<-inst.Done()
			errs[i] = errors.Join(inst.Err(), inst.Stop(context.Background()))
			outs[i] = out.String()
		}()
	}
	wg.Wait()
	for i := range n {
		want := fmt.Sprintf("conc%d 1\n0::/%s/conc%d\n", i, testCgroupParent, i)
		if errs[i] != nil {
			t.Errorf("instance %d: %v", i, errs[i])
		} else if outs[i] != want {
			t.Errorf("instance %d: got %q, want %q", i, outs[i], want)
		}
	}
}

func TestStartErrors(t *testing.T) {
	d := newTestDriver(t)
	code := codeDir(t, nil)
	private := filepath.Join(t.TempDir(), "private")
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}
	withLink := codeDir(t, nil)
	if err := os.Symlink("/etc", filepath.Join(withLink, "link")); err != nil {
		t.Fatal(err)
	}
	valid := func(id string) sandbox.Spec { return shSpec(id, code, "true") }
	tests := []struct {
		name   string
		mutate func(*sandbox.Spec)
		want   error
	}{
		{"empty id", func(s *sandbox.Spec) { s.ID = "" }, sandbox.ErrInvalidSpec},
		{"id with slash", func(s *sandbox.Spec) { s.ID = "a/b" }, sandbox.ErrInvalidSpec},
		{"id too long", func(s *sandbox.Spec) { s.ID = strings.Repeat("a", 65) }, sandbox.ErrInvalidSpec},
		{"no args", func(s *sandbox.Spec) { s.Args = nil }, sandbox.ErrInvalidSpec},
		{"relative args[0]", func(s *sandbox.Spec) { s.Args = []string{"sh"} }, sandbox.ErrInvalidSpec},
		{"bad env", func(s *sandbox.Spec) { s.Env = []string{"NOEQUALS"} }, sandbox.ErrInvalidSpec},
		{"relative code dir", func(s *sandbox.Spec) { s.CodeDir = "code" }, sandbox.ErrInvalidSpec},
		{"missing code dir", func(s *sandbox.Spec) { s.CodeDir = "/nonexistent" }, sandbox.ErrInvalidSpec},
		{"unreadable code dir", func(s *sandbox.Spec) { s.CodeDir = private }, sandbox.ErrInvalidSpec},
		{"relative work dir", func(s *sandbox.Spec) { s.WorkDir = "tmp" }, sandbox.ErrInvalidSpec},
		{"negative memory", func(s *sandbox.Spec) { s.Limits.MemoryBytes = -1 }, sandbox.ErrInvalidSpec},
		{"tiny memory", func(s *sandbox.Spec) { s.Limits.MemoryBytes = 1 << 20 }, sandbox.ErrInvalidSpec},
		{"tiny pids", func(s *sandbox.Spec) { s.Limits.PIDs = 2 }, sandbox.ErrInvalidSpec},
		{"mount over /proc", func(s *sandbox.Spec) { s.Mounts = []sandbox.Mount{{Source: code, Target: "/proc"}} }, sandbox.ErrInvalidSpec},
		{"mount under /dev", func(s *sandbox.Spec) { s.Mounts = []sandbox.Mount{{Source: code, Target: "/dev/x"}} }, sandbox.ErrInvalidSpec},
		{"mount unclean target", func(s *sandbox.Spec) { s.Mounts = []sandbox.Mount{{Source: code, Target: "/opt/../x"}} }, sandbox.ErrInvalidSpec},
		{"mount missing source", func(s *sandbox.Spec) { s.Mounts = []sandbox.Mount{{Source: "/nonexistent", Target: "/opt/x"}} }, sandbox.ErrInvalidSpec},
		{"missing binary", func(s *sandbox.Spec) { s.Args = []string{"/nonexistent"} }, ErrInitFailed},
		{"work dir missing", func(s *sandbox.Spec) { s.WorkDir = "/nonexistent" }, ErrInitFailed},
		{"mount target through symlink", func(s *sandbox.Spec) {
			s.CodeDir = withLink
			s.Mounts = []sandbox.Mount{{Source: code, Target: "/var/task/link"}}
		}, ErrInitFailed},
		{"mount target in read-only dir", func(s *sandbox.Spec) { s.Mounts = []sandbox.Mount{{Source: code, Target: "/usr/zfaas-nonexistent"}} }, ErrInitFailed},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := valid(fmt.Sprintf("bad%d", i))
			tt.mutate(&spec)
			inst, err := d.Start(context.Background(), spec)
			if !errors.Is(err, tt.want) {
				if inst != nil {
					_ = inst.Stop(context.Background())
				}
				t.Fatalf("Start() error = %v, want %v", err, tt.want)
			}
			assertNoLeftovers(t, d, spec.ID)
		})
	}

	t.Run("duplicate id", func(t *testing.T) {
		inst := start(t, d, shSpec("dup", code, "exec sleep 600"))
		_, err := d.Start(context.Background(), shSpec("dup", code, "true"))
		if !errors.Is(err, ErrInstanceExists) {
			t.Errorf("second Start() error = %v, want ErrInstanceExists", err)
		}
		if closed(inst.Done()) {
			t.Errorf("first instance exited: %v", inst.Err())
		}
	})

	t.Run("canceled context", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := d.Start(ctx, valid("canceled")); !errors.Is(err, context.Canceled) {
			t.Errorf("Start() error = %v, want context.Canceled", err)
		}
		assertNoLeftovers(t, d, "canceled")
	})
}

// TestInitPathWithoutInit checks the handshake: a binary whose main does
// not call Init is reported, not left running.
func TestInitPathWithoutInit(t *testing.T) {
	d := newTestDriver(t)
	d.initPath = "/bin/true"
	_, err := d.Start(context.Background(), shSpec("noinit", codeDir(t, nil), "true"))
	if !errors.Is(err, ErrInitFailed) || !strings.Contains(err.Error(), "process.Init") {
		t.Errorf("Start() error = %v, want ErrInitFailed naming process.Init", err)
	}
	assertNoLeftovers(t, d, "noinit")
}

func assertNoLeftovers(t *testing.T, d *Driver, id string) {
	t.Helper()
	if !sandbox.ValidID(id) {
		return // nothing can have been created
	}
	paths := []string{filepath.Join(d.stateDir, id), d.cg.v2Path(id)}
	for _, ctrl := range d.cg.v1Name {
		paths = append(paths, filepath.Join(d.cg.v1Root, ctrl, testCgroupParent, id))
	}
	for _, p := range paths {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind (%v)", p, err)
		}
	}
}

func TestNewErrors(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("New needs root")
	}
	wide := filepath.Join(t.TempDir(), "wide")
	if err := os.Mkdir(wide, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(wide, 0o755); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(t.TempDir(), "state")
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no state dir", Config{}},
		{"relative state dir", Config{StateDir: "state"}},
		{"state dir open to others", Config{StateDir: wide}},
		{"cgroup parent escapes", Config{StateDir: state, CgroupParent: "../x"}},
		{"cgroup parent absolute", Config{StateDir: state, CgroupParent: "/x"}},
		{"negative uid", Config{StateDir: state, UID: -1}},
		{"missing init", Config{StateDir: state, InitPath: "/nonexistent"}},
		{"relative init", Config{StateDir: state, InitPath: "exe"}},
		{"negative limit", Config{StateDir: state, Limits: sandbox.Limits{PIDs: -1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.CgroupParent = cmp.Or(tt.cfg.CgroupParent, testCgroupParent)
			if _, err := New(tt.cfg); err == nil {
				t.Errorf("New(%+v) = nil error, want an error", tt.cfg)
			}
		})
	}
}

// TestBeforeStart: the hook sees the instance's cgroup before any process
// runs in it, and its error aborts the start without leaving anything.
func TestBeforeStart(t *testing.T) {
	d := newTestDriver(t)
	code := codeDir(t, nil)
	var seen string
	var procsAtHook []int
	spec := shSpec("hooked", code, "cat /proc/self/cgroup")
	spec.BeforeStart = func(_ context.Context, cg string) error {
		seen = cg
		var err error
		procsAtHook, err = readPids(filepath.Join(cg, "cgroup.procs"))
		return err
	}
	inst := start(t, d, spec)
	<-inst.Done()
	if seen == "" || seen != inst.CgroupV2Path() {
		t.Fatalf("hook saw cgroup %q, instance has %q", seen, inst.CgroupV2Path())
	}
	if len(procsAtHook) != 0 {
		t.Fatalf("processes in the cgroup when the hook ran: %v", procsAtHook)
	}
	stop(t, inst)

	refused := shSpec("refused", code, "echo should not run")
	var out syncBuffer
	refused.Stdout = &out
	var cg string
	refused.BeforeStart = func(_ context.Context, dir string) error {
		cg = dir
		return errors.New("no rules for you")
	}
	if _, err := d.Start(context.Background(), refused); err == nil || !strings.Contains(err.Error(), "no rules for you") {
		t.Fatalf("Start with a failing hook: %v", err)
	}
	if out.String() != "" {
		t.Fatalf("the program ran: %q", out.String())
	}
	if _, err := os.Stat(cg); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("cgroup %s remains (%v)", cg, err)
	}
	if _, err := os.Stat(filepath.Join(d.stateDir, "refused")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("state dir remains (%v)", err)
	}
}
