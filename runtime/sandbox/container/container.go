// Package container is the "container" sandbox driver: every instance is one
// OCI container run by containerd, with a configurable runtime class —
// io.containerd.runc.v2 (namespaces, cgroups, seccomp, as runc applies them)
// or io.containerd.kata.v2 where an operator runs Kata Containers (the same
// container inside a lightweight VM).
//
// No image and no registry is involved: the container's root file system is
// an empty per-instance directory made read-only, onto which the host's
// system directories (/usr, /lib*, /etc and the merged-/usr symlinks /bin,
// /sbin, ...) are bound read-only, like the process driver's sandbox. The
// function package is bound read-only at [sandbox.TaskRoot], Spec.Mounts are
// further read-only binds, and /tmp is a private size-limited tmpfs. The
// function runs as an unprivileged user (65534 by default) with no
// capabilities, no_new_privs, containerd's default seccomp profile, its own
// PID, mount, IPC and UTS namespaces, and memory, CPU and PID limits. It
// shares the host's network namespace (the worker's Runtime API is on host
// loopback); egress is meant to be enforced by eBPF programs keyed to
// [Instance.CgroupV2Path].
//
// Each instance gets a cgroup v2 directory <cgroup2 mount>/<CgroupParent>/<ID>
// that the driver creates before the container exists, hands to
// Spec.BeforeStart, and names as the OCI spec's cgroupsPath. On hosts in
// cgroup v1 "hybrid" mode runc applies the limits in the v1 hierarchies at
// the same relative path and the driver moves the container's init into the
// v2 directory between task creation and task start, so no function code
// ever runs outside it.
//
// The driver must never run function code as root, with capabilities, or
// before it is inside its cgroups, and must never let one instance see
// another's files or the driver's state directory. It needs a running
// containerd (see [Config.Address]) and root for the cgroup and state
// directories.
package container

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/zfaas/zfaas/runtime/sandbox"
)

// Runtime classes known to the driver.
const (
	RuntimeRunc = "io.containerd.runc.v2"
	RuntimeKata = "io.containerd.kata.v2"
)

// Kata Containers' documented OCI annotations that size the VM of a
// sandbox (memory in MiB, number of vCPUs). Kata honours them only when its
// configuration lists them in the hypervisor's enable_annotations.
const (
	KataAnnotationMemory = "io.katacontainers.config.hypervisor.default_memory"
	KataAnnotationVCPUs  = "io.katacontainers.config.hypervisor.default_vcpus"
)

// Labels set on every container the driver creates.
const (
	LabelDriver   = "io.zfaas.sandbox"          // value "container"
	LabelInstance = "io.zfaas.sandbox.instance" // value Spec.ID
)

// Defaults applied by [New] to zero fields of [Config] and, for limits, by
// Start to zero fields of [sandbox.Limits].
const (
	DefaultNamespace    = "zfaas"
	DefaultRuntime      = RuntimeRunc
	DefaultCgroupParent = "zfaas"
	DefaultUID          = 65534
	DefaultGID          = 65534
	DefaultMemoryBytes  = 256 << 20
	DefaultCPUs         = 1.0
	DefaultPIDs         = 256
	DefaultNoFile       = 1024
	DefaultTmpBytes     = 512 << 20
	Hostname            = "zfaas" // UTS host name inside every instance
	minMemoryBytes      = 16 << 20
	minPIDs             = 8
	componentName       = "sandbox/container"
)

// Sentinel errors, returned wrapped; match them with [errors.Is].
var (
	// ErrUnsupported is returned by New when the host lacks something the
	// driver needs: root, a reachable containerd, or a writable cgroup v2
	// mount.
	ErrUnsupported = errors.New("container sandbox unsupported on this host")
	// ErrInstanceExists is returned by Start when an instance with the same
	// ID is running or was not stopped.
	ErrInstanceExists = sandbox.ErrInstanceExists
	// ErrOOMKilled is reported by Instance.Err when the instance exited
	// unsuccessfully after the kernel's OOM killer acted in its memory cgroup.
	ErrOOMKilled = errors.New("instance killed: out of memory")
	// ErrStopped is reported by Instance.Err when the instance was still
	// running when Stop killed it.
	ErrStopped = errors.New("instance stopped")
)

// ExitError is reported (wrapped) by Instance.Err when the container's main
// process exited with a non-zero status. A process killed by a signal has
// Code 128+signal, as containerd reports it.
type ExitError struct {
	Code uint32
}

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// Config configures a [Driver]. The zero value of every field but Address
// and StateDir selects its default.
type Config struct {
	// Address is containerd's gRPC socket, e.g.
	// /run/containerd/containerd.sock. Required.
	Address string
	// Namespace is the containerd namespace of every container the driver
	// creates. Default "zfaas".
	Namespace string
	// Runtime is the containerd runtime (shim) class: RuntimeRunc (default)
	// or RuntimeKata. With RuntimeKata the VM is sized from the instance's
	// limits through KataAnnotationMemory and KataAnnotationVCPUs.
	Runtime string
	// StateDir is the host directory under which each instance gets its
	// root file system mount point and its output FIFOs. It is created with
	// mode 0700 if missing and must be owned by root and not accessible to
	// group or others. Required; absolute.
	StateDir string
	// CgroupParent is the cgroup, relative to the root of every hierarchy,
	// under which instances get <CgroupParent>/<Spec.ID>. Default "zfaas".
	CgroupParent string
	// UID and GID are the credentials function code runs with. Default
	// 65534/65534 (nobody/nogroup). Root (0) is never used.
	UID, GID int
	// Limits are the defaults for zero fields of Spec.Limits. Zero fields
	// here select DefaultMemoryBytes, DefaultCPUs, DefaultPIDs,
	// DefaultNoFile and DefaultTmpBytes.
	Limits sandbox.Limits
	// Logger receives the driver's logs, with a component attribute added.
	// Default: logs are discarded.
	Logger *slog.Logger
}

var _ sandbox.Driver = (*Driver)(nil)
