// Package microvm is the "microvm" sandbox driver: every instance is a QEMU
// micro-VM (-M microvm) booted from Debian's kernel with an initramfs that
// holds the static guest agent (PID 1, runtime/guestagent), the virtio
// modules, the function package and the Spec's read-only mounts.
//
// The VM has no NIC. The agent talks to the driver over one channel: a
// virtio-serial port, or AF_VSOCK where the host has vhost-vsock (each VM
// then gets a random context ID of its own and the driver dials it). TCP the function needs is tunnelled over it: the agent listens in
// the guest on the address of AWS_LAMBDA_RUNTIME_API and the driver has a
// host proxy, running inside the instance's cgroup, dial the real address;
// for HTTP mode the proxy listens on the host's 127.0.0.1:PORT and each
// connection is tunnelled to the guest's 127.0.0.1:PORT. Unix sockets in
// Spec.Mounts (the SPIFFE Workload API endpoint) are served by the agent at
// their guest path and each connection is dialled by the proxy to the host
// socket, so the Workload API attests the proxy, in the instance's cgroup,
// as the instance; the guest names only an index, never a host path.
// QEMU and the proxy both run in the instance's cgroup (created before
// either starts and handed to Spec.BeforeStart), so eBPF egress rules keyed
// by that cgroup and the worker's loopback peer checks apply to VMs exactly
// as to processes.
//
// The accelerator is KVM only where a probe VM boots to the agent's Ready
// within Config.ProbeTimeout; otherwise TCG. The driver must never give a
// VM a network device, a host file system share or another VM's channel.
package microvm

import (
	"errors"
	"log/slog"
	"time"

	"github.com/zfaas/zfaas/runtime/sandbox"
)

// Defaults applied by [New] to zero fields of [Config].
const (
	DefaultKernelDir     = "/var/cache/zfaas/vmkernel"
	DefaultQEMU          = "qemu-system-x86_64"
	DefaultCgroupParent  = "zfaas"
	DefaultMemoryBytes   = 256 << 20
	DefaultCPUs          = 1.0
	DefaultOverheadBytes = 320 << 20
	DefaultHostPIDs      = 256
	DefaultPIDs          = 256  // pids.max of the function's cgroup in the guest
	DefaultNoFile        = 1024 // RLIMIT_NOFILE of the function in the guest
	// MinGuestMemoryBytes is the least memory a VM gets: below it the
	// Debian kernel and the agent do not boot. A function with a smaller
	// limit still gets only its limit (the guest cgroup).
	MinGuestMemoryBytes = 128 << 20
	DefaultTCGCacheMiB  = 64
	DefaultBootTimeout  = 60 * time.Second
	DefaultProbeTimeout = 15 * time.Second
	minMemoryBytes      = 16 << 20
	minPIDs             = 8
	maxInitramfsBytes   = 512 << 20
	componentName       = "sandbox/microvm"
	accelKVM, accelTCG  = "kvm", "tcg"
	accelAuto           = "auto"
	transportAuto       = "auto"
	vhostVsockDev       = "/dev/vhost-vsock"
	agentSocketName     = "agent.sock"
	serialLogName       = "serial.log"
	initrdName          = "initrd.cpio"
)

// Sentinel errors, returned wrapped; match them with [errors.Is].
var (
	// ErrUnsupported is returned by New when the host lacks QEMU, the
	// kernel cache, the agent binary, root or a writable cgroup v2 mount.
	ErrUnsupported = errors.New("microvm sandbox unsupported on this host")
	// ErrInstanceExists is returned by Start for an ID in use.
	ErrInstanceExists = sandbox.ErrInstanceExists
	// ErrBootFailed is returned by Start when the VM did not reach the
	// agent's Ready, or the agent could not start Spec.Args.
	ErrBootFailed = errors.New("micro-VM boot failed")
	// ErrStopped is reported by Instance.Err when Stop killed a running VM.
	ErrStopped = errors.New("instance stopped")
	// ErrVMExited is reported by Instance.Err when QEMU ended before the
	// agent reported the function's exit (a crash of the guest).
	ErrVMExited = errors.New("micro-VM exited")
)

// Config configures a [Driver]. Zero fields select their defaults.
type Config struct {
	// KernelDir holds vmlinux, modules/ and modules.load as written by
	// scripts/vmkernel.sh (make vmkernel). Default DefaultKernelDir.
	KernelDir string
	// QEMUPath is the qemu-system-x86_64 binary; a bare name is looked up
	// in PATH. Default DefaultQEMU.
	QEMUPath string
	// AgentPath is the static zfaas-agent binary (CGO_ENABLED=0). It
	// becomes /init in every guest and runs on the host as each
	// instance's socket proxy. Required.
	AgentPath string
	// Accel is "auto" (probe KVM, else TCG), "kvm" or "tcg". Default auto.
	Accel string
	// Transport is the agent channel: "auto" (vsock where /dev/vhost-vsock
	// opens, else serial), "serial" (a virtio-serial port) or "vsock"
	// (AF_VSOCK; New fails without /dev/vhost-vsock). Default auto.
	Transport string
	// StateDir holds a 0700 directory per instance (initramfs, agent
	// socket, serial log). Required; absolute.
	StateDir string
	// CgroupParent is the cgroup (relative to each hierarchy's root) under
	// which instances get <CgroupParent>/<Spec.ID>. Default "zfaas".
	CgroupParent string
	// Limits are the defaults for zero fields of Spec.Limits
	// (DefaultMemoryBytes, DefaultCPUs, DefaultPIDs, DefaultNoFile; /tmp
	// is half the guest memory unless TmpBytes says otherwise). Memory,
	// PIDs, NoFile and TmpBytes are enforced inside the guest: the
	// function runs in a cgroup of its own there. The VM's memory is the
	// function's limit, at least MinGuestMemoryBytes; QEMU's host cgroup
	// adds OverheadBytes to it.
	Limits sandbox.Limits
	// MinCPUs is the least CPU quota an instance's cgroup gets (default 1:
	// the VM's one vCPU): below it a boot mostly waits for its quota.
	MinCPUs float64
	// OverheadBytes is added to the guest memory for the cgroup memory
	// limit of QEMU and the proxy. Default DefaultOverheadBytes.
	OverheadBytes int64
	// TCGCacheMiB is QEMU's TCG translation cache size. Default 64.
	TCGCacheMiB int
	// BootTimeout bounds QEMU start to agent Ready in Start.
	BootTimeout time.Duration
	// ProbeTimeout bounds the KVM probe boot (Accel "auto").
	ProbeTimeout time.Duration
	// TSCKHz is passed as tsc_early_khz (boots without it may hang under
	// TCG). Default: the host's "cpu MHz" × 1000 from /proc/cpuinfo.
	TSCKHz int
	// Logger receives the driver's logs. Default: discarded.
	Logger *slog.Logger
	// UID and GID run the function inside the guest (default 65534, as
	// the process driver); the VM is the boundary, and an unprivileged
	// function inside it is a second one. -1 keeps root.
	UID, GID int
}

var _ sandbox.Driver = (*Driver)(nil)
