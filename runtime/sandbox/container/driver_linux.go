//go:build linux

package container

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/zfaas/zfaas/runtime/sandbox"
)

const (
	cpuPeriodUsec = 100000
	// connectTimeout bounds how long New waits for containerd's socket.
	connectTimeout = 5 * time.Second
	// cleanupTimeout bounds the teardown of a failed start.
	cleanupTimeout = 30 * time.Second
	// ioDrainTimeout bounds how long an exited instance waits for its
	// output to be copied before Done is closed.
	ioDrainTimeout = 5 * time.Second
)

// Driver starts container sandboxes through containerd. It is safe for
// concurrent use; its configuration is immutable after New.
type Driver struct {
	api      *api
	ns       string
	runtime  string
	stateDir string
	uid, gid int
	limits   sandbox.Limits
	log      *slog.Logger
	cg       *cgroupHost

	active sandbox.IDs // IDs started and not yet stopped
}

// New validates cfg, checks the host (failures wrap ErrUnsupported),
// connects to containerd, and prepares the state directory and the parent
// cgroup. The Driver holds one containerd connection; Close releases it.
func New(cfg Config) (*Driver, error) {
	if cfg.Address == "" {
		return nil, errors.New("container driver: containerd address is required")
	}
	if cfg.StateDir == "" || !filepath.IsAbs(cfg.StateDir) {
		return nil, fmt.Errorf("container driver: state dir %q must be an absolute path", cfg.StateDir)
	}
	if cfg.Namespace == "" {
		cfg.Namespace = DefaultNamespace
	}
	if !namespaceRE.MatchString(cfg.Namespace) {
		return nil, fmt.Errorf("container driver: invalid containerd namespace %q", cfg.Namespace)
	}
	if cfg.Runtime == "" {
		cfg.Runtime = DefaultRuntime
	}
	if !runtimeRE.MatchString(cfg.Runtime) {
		return nil, fmt.Errorf("container driver: invalid runtime %q (want e.g. %s or %s)", cfg.Runtime, RuntimeRunc, RuntimeKata)
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = DefaultCgroupParent
	}
	if !validCgroupParent(cfg.CgroupParent) {
		return nil, fmt.Errorf("container driver: invalid cgroup parent %q", cfg.CgroupParent)
	}
	if cfg.UID == 0 {
		cfg.UID = DefaultUID
	}
	if cfg.GID == 0 {
		cfg.GID = DefaultGID
	}
	if cfg.UID < 0 || cfg.GID < 0 || cfg.UID > math.MaxUint32 || cfg.GID > math.MaxUint32 {
		return nil, fmt.Errorf("container driver: invalid uid/gid %d/%d", cfg.UID, cfg.GID)
	}
	if err := checkLimits(cfg.Limits); err != nil {
		return nil, fmt.Errorf("container driver: default limits: %w", err)
	}
	lim := cfg.Limits.WithDefaults(sandbox.Limits{
		MemoryBytes: DefaultMemoryBytes, CPUs: DefaultCPUs, PIDs: DefaultPIDs,
		NoFile: DefaultNoFile, TmpBytes: DefaultTmpBytes,
	})
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", componentName)

	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("container driver: %w: must run as root (euid %d)", ErrUnsupported, os.Geteuid())
	}
	if err := sandbox.PrepareStateDir(cfg.StateDir); err != nil {
		return nil, fmt.Errorf("container driver: %w", err)
	}
	cg, err := detectCgroups(cfg.CgroupParent)
	if err != nil {
		return nil, fmt.Errorf("container driver: %w", err)
	}
	if _, err := seccompProfile(); err != nil {
		return nil, fmt.Errorf("container driver: %w: %w", ErrUnsupported, err)
	}
	client, err := dialAPI(cfg.Address, cfg.Namespace)
	if err != nil {
		return nil, fmt.Errorf("container driver: connect to containerd at %s: %w", cfg.Address, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	ver, err := client.serverVersion(ctx)
	if err != nil {
		_ = client.close()
		return nil, fmt.Errorf("container driver: %w: containerd at %s: %w", ErrUnsupported, cfg.Address, err)
	}
	log.Info("container sandbox driver ready",
		"containerd", ver, "address", cfg.Address, "namespace", cfg.Namespace,
		"runtime", cfg.Runtime, "state_dir", cfg.StateDir, "cgroup2", cg.unified,
		"cgroup_hybrid", cg.hybrid, "cgroup_parent", cfg.CgroupParent, "uid", cfg.UID, "gid", cfg.GID)
	return &Driver{
		api:      client,
		ns:       cfg.Namespace,
		runtime:  cfg.Runtime,
		stateDir: cfg.StateDir,
		uid:      cfg.UID,
		gid:      cfg.GID,
		limits:   lim,
		log:      log,
		cg:       cg,
	}, nil
}

// Close releases the containerd connection. Instances keep running in
// containerd; stop them first.
func (d *Driver) Close() error { return d.api.close() }

// CgroupV2Parent returns the cgroup v2 directory under which every
// instance's cgroup is created (absolute host path), where programs that
// act on all instances (eBPF egress enforcement) attach once.
func (d *Driver) CgroupV2Parent() string { return filepath.Join(d.cg.unified, d.cg.parent) }

var (
	namespaceRE    = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,74}[A-Za-z0-9])?$`)
	runtimeRE      = regexp.MustCompile(`^[a-z0-9]+(\.[a-z0-9_-]+)+$`)
	cgroupParentRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$`)
)

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

// checkLimits rejects limits this driver cannot start an instance with.
func checkLimits(l sandbox.Limits) error { return l.Check(minMemoryBytes, minPIDs) }

// validateSpec checks spec; errors wrap sandbox.ErrInvalidSpec.
func (d *Driver) validateSpec(spec *sandbox.Spec) error {
	return sandbox.ValidateSpec(spec, d.uid, d.gid, checkLimits)
}

// Start creates the container for spec and starts spec.Args in it. It
// returns once the task runs, or an error: sandbox.ErrInvalidSpec for a
// malformed spec, ErrInstanceExists for an ID in use, the error of
// Spec.BeforeStart, or containerd's. On error nothing of the instance
// remains.
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

	dir := filepath.Join(d.stateDir, spec.ID)
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("%w: state dir %s exists", ErrInstanceExists, dir)
		}
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	inst := &Instance{
		id:      spec.ID,
		drv:     d,
		log:     d.log.With("instance", spec.ID),
		dir:     dir,
		done:    make(chan struct{}),
		stopSem: make(chan struct{}, 1),
	}
	defer func() {
		if err != nil {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
			defer cancel()
			if cerr := inst.teardown(cctx); cerr != nil {
				inst.log.Error("clean up failed start", "err", cerr)
			}
		}
	}()
	rootDir := filepath.Join(dir, "rootfs")
	if err := buildRootSkeleton(rootDir); err != nil {
		return nil, err
	}
	cgPath, err := d.cg.create(spec.ID)
	if err != nil {
		return nil, err
	}
	inst.cgPath = cgPath

	if spec.BeforeStart != nil {
		if err := spec.BeforeStart(ctx, cgPath); err != nil {
			return nil, fmt.Errorf("before start: %w", err)
		}
	}

	ociSpec, err := d.ociSpec(spec, lim, rootDir)
	if err != nil {
		return nil, err
	}
	labels := map[string]string{LabelDriver: "container", LabelInstance: spec.ID}
	if err := d.api.createContainer(ctx, spec.ID, d.runtime, labels, ociSpec); err != nil {
		return nil, fmt.Errorf("create container: %w", err)
	}
	inst.created = true

	out, err := openOutput(ctx, filepath.Join(dir, "io"), spec.Stdout, spec.Stderr)
	if err != nil {
		return nil, err
	}
	inst.out = out
	pid, err := d.api.createTask(ctx, spec.ID, out.stdout, out.stderr)
	if err != nil {
		return nil, fmt.Errorf("create task: %w", err)
	}
	inst.hasTask = true
	inst.pid = pid
	// The task's init exists but has not executed the function yet (runc
	// holds it until Start). With v1 limit controllers runc placed it only
	// in the v1 hierarchies: join the v2 directory, which its children
	// inherit. On a pure v2 host runc already put it there.
	if d.cg.hybrid {
		if err := d.cg.join(spec.ID, pid); err != nil {
			return nil, err
		}
	}
	// Wait before Start, so a process that exits at once is not missed.
	exitC := make(chan exitResult, 1)
	waitCtx, cancelWait := context.WithCancel(context.WithoutCancel(ctx))
	inst.cancelWait = cancelWait
	go func() {
		code, err := d.api.waitTask(waitCtx, spec.ID)
		exitC <- exitResult{code: code, err: err}
	}()
	if err := d.api.startTask(ctx, spec.ID); err != nil {
		return nil, fmt.Errorf("start task: %w", err)
	}
	inst.waiting.Store(true)
	go inst.wait(exitC)
	inst.log.Info("instance started", "pid", pid, "cgroup", cgPath, "runtime", d.runtime,
		"memory", lim.MemoryBytes, "cpus", lim.CPUs, "pids", lim.PIDs)
	return inst, nil
}

// exitResult is the outcome of waiting for a task.
type exitResult struct {
	code uint32
	err  error
}

// hostDirs are the host directories bound read-only into every root file
// system; those that are symlinks on the host (merged /usr) are recreated
// as the same symlinks.
var hostDirs = []string{"/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/etc"}

// buildRootSkeleton creates the instance's root directory with the
// symlinks of the host's merged-/usr layout. runc creates the mount points
// in it and then makes it read-only inside the container.
func buildRootSkeleton(root string) error {
	if err := os.Mkdir(root, 0o755); err != nil {
		return fmt.Errorf("create rootfs: %w", err)
	}
	for _, p := range hostDirs {
		fi, err := os.Lstat(p)
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			continue
		}
		target, err := os.Readlink(p)
		if err != nil {
			return fmt.Errorf("create rootfs: %w", err)
		}
		if err := os.Symlink(target, filepath.Join(root, p)); err != nil {
			return fmt.Errorf("create rootfs: %w", err)
		}
	}
	return nil
}

// ociSpec builds the container's OCI runtime spec.
func (d *Driver) ociSpec(spec sandbox.Spec, lim sandbox.Limits, rootDir string) (*specs.Spec, error) {
	workDir := spec.WorkDir
	if workDir == "" {
		workDir = sandbox.TaskRoot
	}
	env := spec.Env
	if env == nil {
		env = []string{}
	}
	roBind := []string{"bind", "ro", "nosuid", "nodev"}
	mounts := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
	}
	for _, p := range hostDirs {
		fi, err := os.Lstat(p)
		if err != nil || !fi.IsDir() {
			continue // missing, or a symlink recreated in the skeleton
		}
		mounts = append(mounts, specs.Mount{Destination: p, Type: "bind", Source: p, Options: roBind})
	}
	mounts = append(mounts,
		specs.Mount{Destination: sandbox.TmpDir, Type: "tmpfs", Source: "tmpfs", Options: []string{
			"nosuid", "nodev", "mode=1777", "size=" + strconv.FormatInt(lim.TmpBytes, 10),
			"uid=" + strconv.Itoa(d.uid), "gid=" + strconv.Itoa(d.gid)}},
		specs.Mount{Destination: sandbox.TaskRoot, Type: "bind", Source: spec.CodeDir, Options: roBind},
	)
	// Parents before children, so nested targets land on top.
	extra := slices.Clone(spec.Mounts)
	slices.SortStableFunc(extra, func(a, b sandbox.Mount) int {
		return strings.Count(a.Target, "/") - strings.Count(b.Target, "/")
	})
	for _, m := range extra {
		mounts = append(mounts, specs.Mount{Destination: m.Target, Type: "bind", Source: m.Source, Options: roBind})
	}

	mem := lim.MemoryBytes
	quota := int64(math.Ceil(lim.CPUs * cpuPeriodUsec))
	period := uint64(cpuPeriodUsec)
	pids := lim.PIDs
	s := &specs.Spec{
		Version:  specs.Version,
		Root:     &specs.Root{Path: rootDir, Readonly: true},
		Hostname: Hostname,
		Mounts:   mounts,
		Process: &specs.Process{
			Args:            slices.Clone(spec.Args),
			Env:             slices.Clone(env),
			Cwd:             workDir,
			User:            specs.User{UID: uint32(d.uid), GID: uint32(d.gid)},
			NoNewPrivileges: true,
			Capabilities: &specs.LinuxCapabilities{
				Bounding: []string{}, Effective: []string{}, Permitted: []string{},
				Inheritable: []string{}, Ambient: []string{},
			},
			Rlimits: []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: lim.NoFile, Soft: lim.NoFile}},
		},
		Linux: &specs.Linux{
			CgroupsPath: d.cg.rel(spec.ID),
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.MountNamespace},
				{Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
				// No network namespace: the host's, see the package doc.
			},
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
				Memory:  &specs.LinuxMemory{Limit: &mem, Swap: &mem},
				CPU:     &specs.LinuxCPU{Quota: &quota, Period: &period},
				Pids:    &specs.LinuxPids{Limit: &pids},
			},
			MaskedPaths: []string{
				"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
				"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
				"/sys/firmware", "/sys/devices/virtual/powercap",
			},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
	}
	sc, err := seccompProfile()
	if err != nil {
		return nil, err
	}
	s.Linux.Seccomp = sc
	if d.runtime == RuntimeKata {
		s.Annotations = kataAnnotations(lim)
	}
	return s, nil
}

// kataAnnotations sizes a Kata VM from the instance's limits: memory in MiB
// (rounded up) and whole vCPUs (rounded up, at least 1).
func kataAnnotations(lim sandbox.Limits) map[string]string {
	mib := (lim.MemoryBytes + (1<<20 - 1)) >> 20
	vcpus := max(int64(math.Ceil(lim.CPUs)), 1)
	return map[string]string{
		KataAnnotationMemory: strconv.FormatInt(mib, 10),
		KataAnnotationVCPUs:  strconv.FormatInt(vcpus, 10),
	}
}
