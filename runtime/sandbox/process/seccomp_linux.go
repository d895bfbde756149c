//go:build linux

package process

import (
	"fmt"
	"slices"
	"unsafe"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// deniedSyscalls fail with EPERM inside a sandbox. The list is a deny list
// on top of what an unprivileged user without capabilities may do anyway:
// it removes kernel attack surface and the calls that would act across the
// sandbox boundary. Names unknown on the running architecture are skipped.
func deniedSyscalls() []string {
	return []string{
		// file system and namespace changes
		"mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
		"fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree",
		"open_tree_attr", "mount_setattr",
		"open_by_handle_at", "name_to_handle_at",
		// other processes' memory and tracing
		"ptrace", "process_vm_readv", "process_vm_writev", "process_madvise",
		"pidfd_getfd", "kcmp",
		// kernel modules, kexec, reboot, swap, accounting, quotas, logs
		"init_module", "finit_module", "delete_module", "create_module",
		"kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct",
		"quotactl", "quotactl_fd", "syslog", "vhangup", "lookup_dcookie",
		"uselib", "nfsservctl",
		// kernel attack surface rarely needed by functions
		"bpf", "perf_event_open", "userfaultfd", "fanotify_init",
		"io_uring_setup", "io_uring_enter", "io_uring_register",
		// kernel keyrings are per uid, shared by all instances
		"keyctl", "add_key", "request_key",
		// the clock is the host's
		"settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "stime",
		// host identity and hardware
		"sethostname", "setdomainname", "iopl", "ioperm", "modify_ldt",
	}
}

// cloneNamespaceFlags are the CLONE_NEW* bits clone(2) accepts; clone with
// any of them is refused like unshare. (clone3 passes its flags in memory a
// filter cannot read, so it is refused with ENOSYS, which makes libc fall
// back to clone.)
const cloneNamespaceFlags = unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC |
	unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWCGROUP

// seccompProgram assembles the sandbox's seccomp filter for the running
// architecture.
//
// The policy is built and assembled with go-seccomp-bpf. That library
// returns ENOSYS for the x32 ABI but sends syscalls of any other
// architecture to the default action (allow), which would let the i386 ABI
// (int 0x80) bypass the deny list; the program therefore starts with a
// guard refusing every architecture but the native one with ENOSYS.
func seccompProgram() ([]unix.SockFilter, error) {
	info, err := arch.GetInfo("")
	if err != nil {
		return nil, fmt.Errorf("seccomp: %w", err)
	}
	var names []string
	for _, n := range deniedSyscalls() {
		if _, ok := info.SyscallNames[n]; ok && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	eperm := seccomp.ActionErrno | seccomp.Action(unix.EPERM)
	enosys := seccomp.ActionErrno | seccomp.Action(unix.ENOSYS)
	policy := seccomp.Policy{
		DefaultAction: seccomp.ActionAllow,
		Syscalls: []seccomp.SyscallGroup{
			{Names: names, Action: eperm},
			{
				NamesWithCondtions: []seccomp.NameWithConditions{{
					Name: "clone",
					Conditions: seccomp.ArgumentConditions{{
						Argument: 0, Operation: seccomp.BitsSet, Value: cloneNamespaceFlags,
					}},
				}},
				Action: eperm,
			},
		},
	}
	if _, ok := info.SyscallNames["clone3"]; ok {
		policy.Syscalls = append(policy.Syscalls, seccomp.SyscallGroup{Names: []string{"clone3"}, Action: enosys})
	}
	body, err := policy.Assemble()
	if err != nil {
		return nil, fmt.Errorf("seccomp: assemble policy: %w", err)
	}
	const archOffset = 4 // offsetof(struct seccomp_data, arch)
	prog := append([]bpf.Instruction{
		bpf.LoadAbsolute{Off: archOffset, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(info.ID), SkipTrue: 1},
		bpf.RetConstant{Val: uint32(enosys)},
	}, body...)
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return nil, fmt.Errorf("seccomp: assemble bpf: %w", err)
	}
	if len(raw) > unix.BPF_MAXINSNS {
		return nil, fmt.Errorf("seccomp: program has %d instructions, limit %d", len(raw), unix.BPF_MAXINSNS)
	}
	out := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		out[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	return out, nil
}

// installSeccomp sets no_new_privs on the calling thread and installs prog
// on every thread of the process (SECCOMP_FILTER_FLAG_TSYNC: the Go runtime
// is multithreaded, and the filter must hold whichever thread runs).
func installSeccomp(prog []unix.SockFilter) error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	r, _, errno := unix.RawSyscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER,
		unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog)))
	if errno != 0 {
		return fmt.Errorf("install seccomp filter: %w", errno)
	}
	if r != 0 {
		return fmt.Errorf("install seccomp filter: thread %d cannot be synchronised", r)
	}
	return nil
}
