package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Sentinel errors. Match them with errors.Is.
var (
	// ErrUnsupported is returned by Open when the host lacks what the
	// enforcer needs (root, BPF, cgroup v2, bpffs).
	ErrUnsupported = errors.New("egress enforcement unsupported on this host")
	// ErrInvalidRule is returned by Apply for a rule it cannot encode.
	ErrInvalidRule = errors.New("invalid egress rule")
	// ErrClosed is returned by methods of a closed Enforcer.
	ErrClosed = errors.New("enforcer closed")
)

// Protocol is an IP transport protocol number.
type Protocol uint8

// The protocols a rule may allow.
const (
	TCP Protocol = 6
	UDP Protocol = 17
)

func (p Protocol) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// Rule allows one instance to reach Port/Protocol on the addresses in
// Prefix. With SNI set (TCP only), the first write on such a connection
// must be a complete TLS ClientHello naming one of the SNI names; a name
// "*.example.com" allows exactly one label in front of example.com.
// Overlapping rules add up: a destination is allowed with the union of the
// SNI names of every rule covering it, and without an SNI check if any of
// them has none.
type Rule struct {
	Prefix   netip.Prefix
	Port     uint16
	Protocol Protocol
	SNI      []string
}

func (r Rule) String() string {
	s := fmt.Sprintf("%s %s/%d", r.Protocol, r.Prefix, r.Port)
	if len(r.SNI) > 0 {
		s += " sni=" + strings.Join(r.SNI, ",")
	}
	return s
}

// InstanceMeta names an enforced instance in deny events. It is stored
// beside the rules (in a pinned map), so a restarted worker resolves events
// of instances it did not start.
type InstanceMeta struct {
	SPIFFEID string // the function's SPIFFE ID
	Revision string // the policy revision the rules come from
	Instance string // the instance id
}

// Reason says why a deny event was raised.
type Reason uint8

// Deny reasons, as raised by the programs in c/egress.c.
const (
	ReasonConnect    Reason = 1  // connect(): destination not allowed
	ReasonSendmsg    Reason = 2  // unconnected UDP sendmsg(): destination not allowed
	ReasonSocket     Reason = 3  // socket(): family, type or protocol refused
	ReasonSNI        Reason = 4  // ClientHello server name not allowed
	ReasonNoSNI      Reason = 5  // ClientHello without a server name
	ReasonECH        Reason = 6  // ClientHello with encrypted_client_hello
	ReasonIncomplete Reason = 7  // first write not one complete ClientHello
	ReasonNotTLS     Reason = 8  // first write not a TLS ClientHello
	ReasonUnverified Reason = 9  // payload sent before the ClientHello check
	ReasonNoRules    Reason = 10 // instance cgroup without rules (Config.DenyUnknown)
	maxReason               = ReasonNoRules
)

var reasonNames = [...]string{
	ReasonConnect:    "connect",
	ReasonSendmsg:    "sendmsg",
	ReasonSocket:     "socket",
	ReasonSNI:        "sni",
	ReasonNoSNI:      "no-sni",
	ReasonECH:        "ech",
	ReasonIncomplete: "incomplete-client-hello",
	ReasonNotTLS:     "not-tls",
	ReasonUnverified: "unverified-payload",
	ReasonNoRules:    "no-rules",
}

func (r Reason) String() string {
	if r >= 1 && r <= maxReason {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// DenyEvent is one refusal reported by the kernel.
type DenyEvent struct {
	Time     time.Time
	CgroupID uint64
	PID      uint32 // process that was refused (the connecting one for unverified payload)
	// Meta is the instance's metadata for the rules the decision used;
	// zero when the instance is unknown to this enforcer.
	Meta   InstanceMeta
	Reason Reason
	// Dst is the destination; invalid for ReasonSocket.
	Dst      netip.AddrPort
	Protocol Protocol
	// SNI is the start (at most 64 bytes) of the refused server name.
	SNI string
	// For ReasonSocket: the refused socket's family, type and protocol.
	SocketFamily, SocketType, SocketProtocol int
	// Generation is the instance's rule generation the decision used (0
	// when none applied).
	Generation uint32
}
