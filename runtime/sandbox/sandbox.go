// Package sandbox defines the contract between the worker and the drivers that
// isolate function instances (process, micro-VM, container).
//
// A driver starts one instance per Spec: one isolated process tree with its own
// limits, its own cgroup and a read-only view of the function's package. The
// worker owns everything above that (the Lambda Runtime API, HTTP proxying,
// pooling); a driver must never let one instance reach another's files,
// processes or identity.
package sandbox

import (
	"context"
	"errors"
	"io"
)

// Paths inside every sandbox.
const (
	// TaskRoot is where the function package is mounted, read-only.
	TaskRoot = "/var/task"
	// RuntimeRoot is where the worker's runtime bootstraps are mounted, read-only.
	RuntimeRoot = "/opt/zfaas"
	// TmpDir is the instance's private writable scratch space.
	TmpDir = "/tmp"
)

// Driver starts sandboxed instances. Implementations are safe for concurrent use.
type Driver interface {
	// Start creates the sandbox for spec and starts spec.Args in it. It
	// returns once the process runs; the caller must call Stop eventually,
	// also after the instance exited by itself.
	Start(ctx context.Context, spec Spec) (Instance, error)
}

// Instance is one running sandbox.
type Instance interface {
	// ID returns Spec.ID.
	ID() string
	// Done is closed when the instance's main process has exited.
	Done() <-chan struct{}
	// Err reports why the main process exited; valid after Done is closed.
	Err() error
	// Stop kills every process of the instance and removes what the driver
	// created for it (cgroups, mounts, scratch space). It is idempotent and
	// safe to call concurrently.
	Stop(ctx context.Context) error
	// CgroupV2Path returns the instance's cgroup v2 directory (absolute path
	// under the unified hierarchy), to which eBPF programs can be keyed.
	CgroupV2Path() string
}

// Spec describes one instance.
type Spec struct {
	// ID identifies the instance; it is unique per worker and safe to use
	// as a file or cgroup name ([a-zA-Z0-9_-], at most 64 bytes).
	ID string
	// CodeDir is the host directory with the extracted package, mounted
	// read-only at TaskRoot.
	CodeDir string
	// Mounts are further read-only bind mounts (host path → sandbox path).
	Mounts []Mount
	// Args is the command to run; Args[0] is an absolute path inside the
	// sandbox.
	Args []string
	// Env is the complete environment of the process ("K=V").
	Env []string
	// WorkDir is the working directory inside the sandbox; default TaskRoot.
	WorkDir string
	// Limits bound the instance's resources.
	Limits Limits
	// Stdout and Stderr receive the instance's output. They may be nil.
	Stdout, Stderr io.Writer
	// BeforeStart, when set, is called with the instance's cgroup v2
	// directory once it exists and before any process of the instance runs
	// (for example to install the instance's egress rules, which are keyed
	// by that cgroup). An error aborts the start; nothing of the instance
	// remains.
	BeforeStart func(ctx context.Context, cgroupV2Path string) error
}

// Mount is a read-only bind mount into the sandbox.
type Mount struct {
	Source string // host path
	Target string // absolute path inside the sandbox
}

// Limits bound one instance. Zero values mean the driver's default.
type Limits struct {
	MemoryBytes int64   // memory (and swap) limit of the cgroup
	CPUs        float64 // CPU bandwidth in cores, e.g. 0.5
	PIDs        int64   // maximum tasks in the cgroup
	NoFile      uint64  // RLIMIT_NOFILE
	TmpBytes    int64   // size of the private /tmp
}

var (
	// ErrInvalidSpec is returned (wrapped) by Start when the Spec is malformed.
	ErrInvalidSpec = errors.New("invalid sandbox spec")
	// ErrInstanceExists is returned (wrapped) by Start when an instance
	// with the same ID is running or was not stopped. Every driver's own
	// ErrInstanceExists is this error.
	ErrInstanceExists = errors.New("instance already exists")
)
