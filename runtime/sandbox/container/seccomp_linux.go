//go:build linux

package container

import (
	"fmt"
	"runtime"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// deniedSyscalls fail with EPERM inside every instance: kernel module,
// keyring, mount and namespace management, tracing other processes, clock
// setting, raw I/O ports, BPF, perf, io_uring and other interfaces an
// unprivileged function has no business with (most need capabilities the
// instance lacks anyway; this is the second wall).
var deniedSyscalls = []string{
	"acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module",
	"delete_module", "finit_module", "fanotify_init", "fsconfig", "fsmount", "fsopen",
	"fspick", "get_kernel_syms", "init_module", "io_uring_enter", "io_uring_register",
	"io_uring_setup", "ioperm", "iopl", "kcmp", "kexec_file_load", "kexec_load", "keyctl",
	"lookup_dcookie", "mount", "mount_setattr", "move_mount", "name_to_handle_at",
	"nfsservctl", "open_by_handle_at", "open_tree", "perf_event_open", "pivot_root",
	"process_vm_readv", "process_vm_writev", "ptrace", "query_module", "quotactl",
	"quotactl_fd", "reboot", "request_key", "setns", "settimeofday", "swapoff", "swapon",
	"syslog", "umount2", "unshare", "uselib", "userfaultfd", "ustat", "vhangup",
}

// nsCloneFlags may not be passed to clone: no new namespaces (a user
// namespace would give the function capabilities inside it).
var nsCloneFlags = []uint64{
	unix.CLONE_NEWNS, unix.CLONE_NEWUTS, unix.CLONE_NEWIPC, unix.CLONE_NEWUSER,
	unix.CLONE_NEWPID, unix.CLONE_NEWNET, unix.CLONE_NEWCGROUP,
}

// seccompProfile returns the OCI seccomp profile of every instance: allow
// by default, deny deniedSyscalls with EPERM, clone with namespace flags
// with EPERM, and clone3 (whose flags a filter cannot see) with ENOSYS so
// that libc falls back to clone. Only the native architecture is listed,
// so 32-bit compatibility syscalls are refused altogether.
func seccompProfile() (*specs.LinuxSeccomp, error) {
	var arch specs.Arch
	switch runtime.GOARCH {
	case "amd64":
		arch = specs.ArchX86_64
	case "arm64":
		arch = specs.ArchAARCH64
	default:
		return nil, fmt.Errorf("no seccomp profile for %s", runtime.GOARCH)
	}
	eperm := uint(unix.EPERM)
	enosys := uint(unix.ENOSYS)
	sc := &specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Architectures: []specs.Arch{arch},
		Syscalls: []specs.LinuxSyscall{
			{Names: deniedSyscalls, Action: specs.ActErrno, ErrnoRet: &eperm},
			{Names: []string{"clone3"}, Action: specs.ActErrno, ErrnoRet: &enosys},
		},
	}
	for _, f := range nsCloneFlags {
		sc.Syscalls = append(sc.Syscalls, specs.LinuxSyscall{
			Names: []string{"clone"}, Action: specs.ActErrno, ErrnoRet: &eperm,
			Args: []specs.LinuxSeccompArg{{Index: 0, Value: f, ValueTwo: f, Op: specs.OpMaskedEqual}},
		})
	}
	return sc, nil
}
