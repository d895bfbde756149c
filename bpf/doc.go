// Package bpf enforces function instances' egress in the kernel: eBPF
// programs attached once at the cgroup v2 parent of all instances check
// every connect(), unconnected UDP sendmsg(), socket() and the first TLS
// ClientHello of connections to SNI-restricted destinations against
// per-instance allow maps keyed by the instance's cgroup id, and report
// every refusal on a ring buffer (see docs/egress.md).
//
// An Enforcer owns the programs and maps, pinned in bpffs so that
// enforcement outlives the worker process and a restarted worker re-adopts
// it. Apply replaces one instance's rules atomically: the programs read the
// instance's active generation once per decision, so no decision ever sees
// rules from two revisions, or from none.
//
// The C sources are in c/ and the compiled object is committed with its
// bpf2go Go wrapper, so building this package never needs clang. This
// package must never widen a rule it cannot encode: invalid rules are an
// error, never dropped silently.
package bpf
