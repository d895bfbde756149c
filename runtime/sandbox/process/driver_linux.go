//go:build linux

package process

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"golang.org/x/sys/unix"

	"github.com/zfaas/zfaas/runtime/sandbox"
)

// handshakeTimeout bounds how long Start waits for the re-executed binary
// to show it is a sandbox init (a binary whose main does not call Init
// would otherwise run its normal main).
const handshakeTimeout = 10 * time.Second

// Driver starts process sandboxes. It is safe for concurrent use; its
// configuration is immutable after New.
type Driver struct {
	stateDir string
	uid, gid int
	initPath string
	limits   sandbox.Limits
	log      *slog.Logger
	cg       *cgroupHost
	spawner  *spawner

	active sandbox.IDs // IDs started and not yet stopped
}

// New validates cfg, checks that the host supports the driver (failures
// wrap ErrUnsupported) and prepares the state directory and the parent
// cgroups.
func New(cfg Config) (*Driver, error) {
	if cfg.StateDir == "" || !filepath.IsAbs(cfg.StateDir) {
		return nil, fmt.Errorf("process driver: state dir %q must be an absolute path", cfg.StateDir)
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = DefaultCgroupParent
	}
	if !validCgroupParent(cfg.CgroupParent) {
		return nil, fmt.Errorf("process driver: invalid cgroup parent %q", cfg.CgroupParent)
	}
	if cfg.UID == 0 {
		cfg.UID = DefaultUID
	}
	if cfg.GID == 0 {
		cfg.GID = DefaultGID
	}
	if cfg.UID < 0 || cfg.GID < 0 {
		return nil, fmt.Errorf("process driver: invalid uid/gid %d/%d", cfg.UID, cfg.GID)
	}
	if cfg.InitPath == "" {
		cfg.InitPath = DefaultInitPath
	}
	if !filepath.IsAbs(cfg.InitPath) {
		return nil, fmt.Errorf("process driver: init path %q must be absolute", cfg.InitPath)
	}
	if fi, err := os.Stat(cfg.InitPath); err != nil {
		return nil, fmt.Errorf("process driver: init path: %w", err)
	} else if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return nil, fmt.Errorf("process driver: init path %s is not an executable file", cfg.InitPath)
	}
	lim := cfg.Limits
	if err := checkLimits(lim); err != nil {
		return nil, fmt.Errorf("process driver: default limits: %w", err)
	}
	lim = lim.WithDefaults(sandbox.Limits{
		MemoryBytes: DefaultMemoryBytes, CPUs: DefaultCPUs, PIDs: DefaultPIDs,
		NoFile: DefaultNoFile, TmpBytes: DefaultTmpBytes,
	})
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", componentName)

	if err := checkHost(); err != nil {
		return nil, err
	}
	if _, err := seccompProgram(); err != nil {
		return nil, fmt.Errorf("process driver: %w", err)
	}
	if err := sandbox.PrepareStateDir(cfg.StateDir); err != nil {
		return nil, fmt.Errorf("process driver: %w", err)
	}
	cg, err := detectCgroups(cfg.CgroupParent)
	if err != nil {
		return nil, fmt.Errorf("process driver: %w", err)
	}
	log.Info("process sandbox driver ready",
		"state_dir", cfg.StateDir, "cgroup_mode", cg.mode(), "cgroup2", cg.unified,
		"cgroup_parent", cfg.CgroupParent, "uid", cfg.UID, "gid", cfg.GID)
	return &Driver{
		stateDir: cfg.StateDir,
		uid:      cfg.UID,
		gid:      cfg.GID,
		initPath: cfg.InitPath,
		limits:   lim,
		log:      log,
		cg:       cg,
		spawner:  newSpawner(),
	}, nil
}

var cgroupParentRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$`)

func validCgroupParent(p string) bool {
	if !cgroupParentRE.MatchString(p) {
		return false
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "." || seg == ".." {
			return false
		}
	}
	return true
}

// checkHost verifies root with the capabilities the driver uses,
// namespaces and seccomp.
func checkHost() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("process driver: %w: must run as root (euid %d)", ErrUnsupported, os.Geteuid())
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var caps [2]unix.CapUserData
	if err := unix.Capget(&hdr, &caps[0]); err != nil {
		return fmt.Errorf("process driver: read capabilities: %w", err)
	}
	for _, c := range []struct {
		bit  uint
		name string
	}{
		{unix.CAP_SYS_ADMIN, "CAP_SYS_ADMIN"}, // namespaces, mounts, pivot_root
		{unix.CAP_SETUID, "CAP_SETUID"},
		{unix.CAP_SETGID, "CAP_SETGID"},
		{unix.CAP_SETPCAP, "CAP_SETPCAP"},           // empty the bounding set
		{unix.CAP_KILL, "CAP_KILL"},                 // kill the unprivileged instances
		{unix.CAP_DAC_OVERRIDE, "CAP_DAC_OVERRIDE"}, // cgroup and state files
	} {
		if caps[c.bit/32].Effective&(1<<(c.bit%32)) == 0 {
			return fmt.Errorf("process driver: %w: %s missing from the effective capabilities", ErrUnsupported, c.name)
		}
	}
	for _, ns := range []string{"pid", "mnt", "ipc", "uts"} {
		if _, err := os.Stat("/proc/self/ns/" + ns); err != nil {
			return fmt.Errorf("process driver: %w: %s namespaces: %w", ErrUnsupported, ns, err)
		}
	}
	if !seccomp.Supported() {
		return fmt.Errorf("process driver: %w: seccomp filters not supported by the kernel", ErrUnsupported)
	}
	return nil
}

// checkLimits rejects limits this driver cannot start an instance with.
func checkLimits(l sandbox.Limits) error { return l.Check(minMemoryBytes, minPIDs) }

// validateSpec checks spec; errors wrap sandbox.ErrInvalidSpec.
func (d *Driver) validateSpec(spec *sandbox.Spec) error {
	return sandbox.ValidateSpec(spec, d.uid, d.gid, checkLimits)
}

// Start creates the sandbox for spec and starts spec.Args in it. It returns
// once the function's program runs (the sandbox init has executed it), or
// an error: sandbox.ErrInvalidSpec for a malformed spec, ErrInstanceExists
// for an ID in use, ErrInitFailed when the sandbox could not be set up or
// spec.Args[0] not executed. On error nothing of the instance remains.
func (d *Driver) Start(ctx context.Context, spec sandbox.Spec) (sandbox.Instance, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("start instance %s: %w", spec.ID, err)
	}
	if err := d.validateSpec(&spec); err != nil {
		return nil, fmt.Errorf("start instance %s: %w", spec.ID, err)
	}
	if err := d.active.Reserve(spec.ID); err != nil {
		return nil, fmt.Errorf("start instance: %w", err)
	}
	inst, err := d.start(ctx, spec)
	if err != nil {
		d.active.Release(spec.ID)
		return nil, fmt.Errorf("start instance %s: %w", spec.ID, err)
	}
	return inst, nil
}

func (d *Driver) start(ctx context.Context, spec sandbox.Spec) (_ *Instance, err error) {
	lim := spec.Limits.WithDefaults(d.limits)
	workDir := spec.WorkDir
	if workDir == "" {
		workDir = sandbox.TaskRoot
	}
	dir := filepath.Join(d.stateDir, spec.ID)
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("%w: state dir %s exists", ErrInstanceExists, dir)
		}
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	rootDir := filepath.Join(dir, "rootfs")
	if err := os.Mkdir(rootDir, 0o700); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	cg, err := d.cg.create(spec.ID, lim)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	inst := &Instance{
		id:      spec.ID,
		drv:     d,
		log:     d.log.With("instance", spec.ID),
		dir:     dir,
		cg:      cg,
		done:    make(chan struct{}),
		stopSem: make(chan struct{}, 1),
	}
	defer func() {
		if err != nil {
			// Bounded: everything is killed, so only the cgroup removal
			// retries take time.
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if cerr := inst.teardown(cctx); cerr != nil {
				inst.log.Error("clean up failed start", "err", cerr)
			}
		}
	}()

	if spec.BeforeStart != nil {
		if err := spec.BeforeStart(ctx, cg.v2Path); err != nil {
			return nil, fmt.Errorf("before start: %w", err)
		}
	}

	cfg := initConfig{
		RootDir:  rootDir,
		CodeDir:  spec.CodeDir,
		Mounts:   spec.Mounts,
		Args:     spec.Args,
		Env:      spec.Env,
		WorkDir:  workDir,
		Hostname: Hostname,
		UID:      d.uid,
		GID:      d.gid,
		NoFile:   lim.NoFile,
		TmpBytes: lim.TmpBytes,
	}
	if cfg.Env == nil {
		cfg.Env = []string{}
	}
	cfgJSON, err := json.Marshal(&cfg)
	if err != nil {
		return nil, fmt.Errorf("encode init config: %w", err)
	}

	cmd, pipes, err := d.spawn(spec, cg)
	if err != nil {
		return nil, err
	}
	inst.cmd = cmd
	go inst.wait()
	defer pipes.close()

	if err := cg.addV1(cmd.Process.Pid); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("%w: %s exited at once (does its main call process.Init first?)", ErrInitFailed, d.initPath)
		}
		return nil, err
	}
	deadline := time.Now().Add(handshakeTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	stopAfter := context.AfterFunc(ctx, func() {
		_ = pipes.configW.SetDeadline(time.Now())
		_ = pipes.statusR.SetDeadline(time.Now())
	})
	defer stopAfter()
	ctxErr := func(err error) error {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		return err
	}

	// The config goes only after the process is in all its cgroups.
	_ = pipes.configW.SetWriteDeadline(deadline)
	if _, err := pipes.configW.Write(cfgJSON); err != nil {
		if errors.Is(err, unix.EPIPE) {
			// The process went away before reading its config.
			return nil, ctxErr(fmt.Errorf("%w: %s exited before taking its config (does its main call process.Init first?)", ErrInitFailed, d.initPath))
		}
		return nil, ctxErr(fmt.Errorf("%w: send config: %w", ErrInitFailed, err))
	}
	if err := pipes.configW.Close(); err != nil {
		return nil, fmt.Errorf("%w: send config: %w", ErrInitFailed, err)
	}
	_ = pipes.statusR.SetReadDeadline(deadline)
	hello := make([]byte, 1)
	if _, err := io.ReadFull(pipes.statusR, hello); err != nil || hello[0] != initHello {
		if errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() == nil {
			err = fmt.Errorf("no handshake within %v", handshakeTimeout)
		}
		return nil, ctxErr(fmt.Errorf("%w: %s did not act as sandbox init (does its main call process.Init first?): %v",
			ErrInitFailed, d.initPath, err))
	}
	_ = pipes.statusR.SetReadDeadline(time.Time{})
	msg, err := io.ReadAll(io.LimitReader(pipes.statusR, maxStatusMsg))
	if err != nil {
		return nil, ctxErr(fmt.Errorf("%w: read status: %w", ErrInitFailed, err))
	}
	if len(msg) > 0 {
		return nil, fmt.Errorf("%w: %s", ErrInitFailed, msg)
	}
	inst.log.Info("instance started", "pid", cmd.Process.Pid, "cgroup", cg.v2Path,
		"memory", lim.MemoryBytes, "cpus", lim.CPUs, "pids", lim.PIDs)
	return inst, nil
}

// initPipes are the parent's ends of the init protocol pipes.
type initPipes struct {
	configW *os.File
	statusR *os.File
}

func (p *initPipes) close() {
	_ = p.configW.Close()
	_ = p.statusR.Close()
}

// spawn starts the sandbox init in new namespaces, inside the instance's
// cgroup v2 directory.
func (d *Driver) spawn(spec sandbox.Spec, cg *instanceCgroups) (*exec.Cmd, *initPipes, error) {
	configR, configW, err := os.Pipe()
	if err != nil {
		return nil, nil, fmt.Errorf("create pipe: %w", err)
	}
	statusR, statusW, err := os.Pipe()
	if err != nil {
		configR.Close()
		configW.Close()
		return nil, nil, fmt.Errorf("create pipe: %w", err)
	}
	defer configR.Close()
	defer statusW.Close()
	pipes := &initPipes{configW: configW, statusR: statusR}

	cgDir, err := os.Open(cg.v2Path)
	if err != nil {
		pipes.close()
		return nil, nil, fmt.Errorf("open cgroup: %w", err)
	}
	defer cgDir.Close()

	newCmd := func(intoCgroup bool) *exec.Cmd {
		return &exec.Cmd{
			Path: d.initPath,
			Args: []string{initArgv0},
			// The init is a Go program too: keep its thread count low, it
			// already counts against the pids limit.
			Env:    []string{"GOMAXPROCS=1"},
			Stdout: spec.Stdout,
			Stderr: spec.Stderr,
			// The PID namespace dies with its init, so the output pipes
			// close right after; bound it anyway against a stuck writer.
			WaitDelay:  5 * time.Second,
			ExtraFiles: []*os.File{configR, statusW}, // fds 3 and 4
			SysProcAttr: &syscall.SysProcAttr{
				Cloneflags:  syscall.CLONE_NEWPID | syscall.CLONE_NEWNS | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS,
				Setsid:      true,
				Pdeathsig:   syscall.SIGKILL, // see spawner
				UseCgroupFD: intoCgroup,
				CgroupFD:    int(cgDir.Fd()),
			},
		}
	}
	cmd := newCmd(true)
	err = d.spawner.start(cmd)
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.E2BIG) {
		// No clone3 CLONE_INTO_CGROUP (Linux < 5.7): place it by pid. The
		// init blocks on the config pipe until then.
		d.log.Debug("clone into cgroup unsupported, moving by pid", "err", err)
		cmd = newCmd(false)
		if err = d.spawner.start(cmd); err == nil {
			if aerr := cg.addV2(cmd.Process.Pid); aerr != nil {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
				pipes.close()
				return nil, nil, aerr
			}
		}
	}
	if err != nil {
		pipes.close()
		return nil, nil, fmt.Errorf("start sandbox init %s: %w", d.initPath, err)
	}
	return cmd, pipes, nil
}

// CgroupV2Parent returns the cgroup v2 directory under which every
// instance's cgroup is created (absolute host path), where programs that
// act on all instances (eBPF egress enforcement) attach once.
func (d *Driver) CgroupV2Parent() string {
	return filepath.Join(d.cg.unified, d.cg.parent)
}
