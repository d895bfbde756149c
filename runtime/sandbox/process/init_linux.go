//go:build linux

package process

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/zfaas/zfaas/runtime/sandbox"
)

// The init protocol. The driver starts InitPath with argv[0] initArgv0 in
// new PID, mount, IPC and UTS namespaces, already inside the instance's
// cgroup v2 directory, with two pipes:
//
//   - configFD (read end): the driver writes the JSON initConfig and closes
//     it only after it has placed the process in its v1 cgroups, so nothing
//     of the function runs outside its limits;
//   - statusFD (write end): the init writes initHello as soon as it runs,
//     then either an error message (and exits with initExitCode) or nothing:
//     the pipe is close-on-exec, so EOF after the hello means the function
//     was executed.
const (
	configFD     = 3
	statusFD     = 4
	initHello    = 'I'
	initExitCode = 125
	maxConfig    = 4 << 20
	maxStatusMsg = 64 << 10
)

// initConfig is what the sandbox init needs to build the sandbox. It is
// internal to one binary (driver and init are the same executable).
type initConfig struct {
	RootDir  string          `json:"root_dir"` // host dir to build the root on
	CodeDir  string          `json:"code_dir"`
	Mounts   []sandbox.Mount `json:"mounts"`
	Args     []string        `json:"args"`
	Env      []string        `json:"env"`
	WorkDir  string          `json:"work_dir"`
	Hostname string          `json:"hostname"`
	UID      int             `json:"uid"`
	GID      int             `json:"gid"`
	NoFile   uint64          `json:"nofile"`
	TmpBytes int64           `json:"tmp_bytes"`
}

// Init turns the process into a sandbox init when the process driver started
// it that way (argv[0] is "zfaas-sandbox-init" and the driver's pipes are
// open on fds 3 and 4): it then builds the sandbox and executes the function,
// and never returns. In any other process Init returns immediately without
// side effects.
//
// Init must be the first call in main of every binary that creates a
// [Driver] (its InitPath, by default the binary itself), and the first call
// in TestMain of every test package that starts instances:
//
//	func main() {
//		process.Init()
//		...
//	}
//
// Package initialisation (init functions, package-level variables) of that
// binary runs before Init in the sandbox init as well, as root; it must not
// have side effects such as opening files or connections or starting work.
func Init() {
	if len(os.Args) == 0 || os.Args[0] != initArgv0 || !isPipe(configFD) || !isPipe(statusFD) {
		return
	}
	// Per-thread state (credentials, capability bounding set, no_new_privs,
	// parent-death signal) is set on this thread, which also calls execve.
	runtime.LockOSThread()
	if _, err := unix.Write(statusFD, []byte{initHello}); err != nil {
		os.Exit(initExitCode)
	}
	err := runInit()
	msg := []byte(err.Error())
	if len(msg) > maxStatusMsg {
		msg = msg[:maxStatusMsg]
	}
	_, _ = unix.Write(statusFD, msg)
	os.Exit(initExitCode)
}

func isPipe(fd int) bool {
	var st unix.Stat_t
	return unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFIFO
}

// runInit sets up the sandbox and executes the function. It returns only on
// failure.
func runInit() error {
	c, err := readInitConfig()
	if err != nil {
		return err
	}
	prog, err := seccompProgram()
	if err != nil {
		return err
	}
	unix.Umask(0o022)
	if err := unix.Sethostname([]byte(c.Hostname)); err != nil {
		return fmt.Errorf("set host name: %w", err)
	}
	if err := setupRootfs(c); err != nil {
		return fmt.Errorf("set up root file system: %w", err)
	}
	if err := unix.Chdir(c.WorkDir); err != nil {
		return fmt.Errorf("change to work dir %s: %w", c.WorkDir, err)
	}
	// syscall.Setrlimit (not x/sys) so the runtime does not restore its
	// saved RLIMIT_NOFILE on exec.
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: c.NoFile, Max: c.NoFile}); err != nil {
		return fmt.Errorf("set RLIMIT_NOFILE to %d: %w", c.NoFile, err)
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_CORE, &syscall.Rlimit{}); err != nil {
		return fmt.Errorf("set RLIMIT_CORE: %w", err)
	}
	if err := dropPrivileges(c.UID, c.GID); err != nil {
		return err
	}
	// Changing credentials cleared the parent-death signal.
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		return fmt.Errorf("set parent-death signal: %w", err)
	}
	if err := installSeccomp(prog); err != nil {
		return err
	}
	// Only stdin, stdout and stderr may reach the function; this includes
	// the status pipe, closed by a successful execve.
	if err := unix.CloseRange(3, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return fmt.Errorf("mark descriptors close-on-exec: %w", err)
	}
	err = syscall.Exec(c.Args[0], c.Args, c.Env)
	return fmt.Errorf("exec %s: %w", c.Args[0], err)
}

func readInitConfig() (*initConfig, error) {
	var buf []byte
	chunk := make([]byte, 32<<10)
	for {
		n, err := unix.Read(configFD, chunk)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read config: %w", err)
		}
		if n == 0 {
			break
		}
		buf = append(buf, chunk[:n]...)
		if len(buf) > maxConfig {
			return nil, errors.New("read config: too large")
		}
	}
	_ = unix.Close(configFD)
	var c initConfig
	if err := json.Unmarshal(buf, &c); err != nil {
		return nil, fmt.Errorf("decode config: %w", err)
	}
	if len(c.Args) == 0 || c.RootDir == "" || c.UID <= 0 || c.GID <= 0 {
		return nil, errors.New("decode config: incomplete")
	}
	return &c, nil
}

// dropPrivileges empties the capability bounding and ambient sets of the
// calling thread, switches it to uid/gid with no supplementary groups, and
// clears the capabilities that survive a uid change (inheritable). The raw
// syscalls act on this thread only, which is the one that calls execve.
func dropPrivileges(uid, gid int) error {
	for c := 0; ; c++ {
		err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0)
		if errors.Is(err, unix.EINVAL) {
			break // past the last capability
		}
		if err != nil {
			return fmt.Errorf("drop capability %d from bounding set: %w", c, err)
		}
	}
	// EINVAL: no ambient capabilities before Linux 4.3.
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, 0, 0, 0); e != 0 {
		return fmt.Errorf("setgroups: %w", e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(gid), uintptr(gid), uintptr(gid)); e != 0 {
		return fmt.Errorf("setresgid %d: %w", gid, e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)); e != 0 {
		return fmt.Errorf("setresuid %d: %w", uid, e)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("clear capabilities: %w", err)
	}
	return nil
}
