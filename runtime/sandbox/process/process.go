// Package process is the "process" sandbox driver: every instance is one
// process tree isolated with Linux namespaces (PID, mount, IPC, UTS), cgroups
// (v1 controllers on hybrid hosts, v2 otherwise, plus a cgroup v2 directory
// per instance for eBPF), a seccomp filter, rlimits, an unprivileged user and
// no capabilities. It is the fast path for development and for hosts without
// KVM.
//
// An instance sees a fresh root file system: read-only binds of the host's
// system directories (/usr, /bin, /sbin, /lib*, /etc), a minimal /dev, its own
// /proc, a private size-limited /tmp, the function package read-only at
// [sandbox.TaskRoot] and the Spec's extra read-only mounts. It shares the
// host's network namespace, so the worker reaches the function over
// 127.0.0.1; egress is not restricted yet (eBPF programs keyed to
// [Instance.CgroupV2Path] are planned to enforce it).
//
// The driver re-executes its own binary as the sandbox init (see [Init]),
// which must therefore be the first call in main and in TestMain of any test
// that starts instances. The driver requires root and never runs function
// code as root, with capabilities, or before the process is inside all of its
// cgroups. It must never let one instance see another's files, processes or
// scratch space, nor the driver's state directory.
package process

import (
	"errors"
	"log/slog"

	"github.com/zfaas/zfaas/runtime/sandbox"
)

// Defaults applied by [New] to zero fields of [Config] and, for limits, by
// Start to zero fields of [sandbox.Limits].
const (
	DefaultCgroupParent = "zfaas"
	DefaultUID          = 65534
	DefaultGID          = 65534
	DefaultInitPath     = "/proc/self/exe"
	DefaultMemoryBytes  = 256 << 20
	DefaultCPUs         = 1.0
	DefaultPIDs         = 256
	DefaultNoFile       = 1024
	DefaultTmpBytes     = 512 << 20
	Hostname            = "zfaas" // UTS host name inside every instance
	minMemoryBytes      = 16 << 20
	minPIDs             = 8
	componentName       = "sandbox/process"
	initArgv0           = "zfaas-sandbox-init"
)

// Sentinel errors, returned wrapped; match them with [errors.Is].
var (
	// ErrUnsupported is returned by New when the host lacks something the
	// driver needs: root, namespaces, seccomp, or a writable cgroup v2 mount
	// and the memory, cpu and pids controllers.
	ErrUnsupported = errors.New("process sandbox unsupported on this host")
	// ErrInstanceExists is returned by Start when an instance with the same
	// ID is running or was not stopped.
	ErrInstanceExists = sandbox.ErrInstanceExists
	// ErrInitFailed is returned by Start when the sandbox init could not
	// set up the sandbox or exec Spec.Args (for example a missing binary).
	ErrInitFailed = errors.New("sandbox init failed")
	// ErrOOMKilled is reported by Instance.Err when the instance exited
	// unsuccessfully after the kernel's OOM killer acted in its memory cgroup.
	ErrOOMKilled = errors.New("instance killed: out of memory")
	// ErrStopped is reported by Instance.Err when the instance was still
	// running when Stop killed it.
	ErrStopped = errors.New("instance stopped")
)

// Config configures a [Driver]. The zero value of every field but StateDir
// selects its default.
type Config struct {
	// StateDir is the host directory under which each instance gets its
	// scratch directory (the mount point of its root file system). It is
	// created with mode 0700 if missing and must be owned by root and not
	// accessible to group or others. Required; absolute.
	StateDir string
	// CgroupParent is the cgroup, relative to the root of every hierarchy,
	// under which instances get <CgroupParent>/<Spec.ID>. Default "zfaas".
	CgroupParent string
	// UID and GID are the credentials function code runs with. Default
	// 65534/65534 (nobody/nogroup). Root (0) is never used.
	UID, GID int
	// Logger receives the driver's logs, with a component attribute added.
	// Default: logs are discarded.
	Logger *slog.Logger
	// InitPath is the binary re-executed as the sandbox init; it must call
	// [Init] first thing in main. Default "/proc/self/exe".
	InitPath string
	// Limits are the defaults for zero fields of Spec.Limits. Zero fields
	// here select DefaultMemoryBytes, DefaultCPUs, DefaultPIDs,
	// DefaultNoFile and DefaultTmpBytes.
	Limits sandbox.Limits
}

var _ sandbox.Driver = (*Driver)(nil)
