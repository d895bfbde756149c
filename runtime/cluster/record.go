package cluster

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/store"
)

// DefaultBucket is the KV bucket that holds worker records.
const DefaultBucket = "zfaas_workers"

// Errors of this package. Match them with errors.Is.
var (
	// ErrInvalidNode: a node name is not a valid worker name.
	ErrInvalidNode = errors.New("cluster: invalid node name")
	// ErrNotAdmitted: the worker has no record. A worker gets one only when
	// the control plane admits it (Registry.Admit); Heartbeat never creates it.
	ErrNotAdmitted = errors.New("cluster: worker not admitted")
	// ErrUnknownWorker: the node has no record.
	ErrUnknownWorker = errors.New("cluster: unknown worker")
	// ErrRevoked: the node was revoked; it stays revoked until an operator
	// removes its record, and must then attest again.
	ErrRevoked = errors.New("cluster: worker revoked")
	// ErrTransition: the requested state change is not allowed from the
	// record's current state.
	ErrTransition = errors.New("cluster: state change not allowed")
	// ErrContention: a compare-and-set kept losing to concurrent writers.
	ErrContention = errors.New("cluster: too many concurrent updates")
)

// casAttempts bounds the read-modify-write retries of one update.
const casAttempts = 16

// State is a worker's admission state. Only the control plane changes it.
type State string

// Worker states.
const (
	// StateAdmitted: attested and allowed by policy; eligible for placement
	// while its lease is live.
	StateAdmitted State = "admitted"
	// StateDraining: an operator took the worker out of placement; its
	// in-flight invocations finish, no new ones arrive.
	StateDraining State = "draining"
	// StateRevoked: a re-attestation failed (or an operator revoked it). No
	// placement, no SVID renewal; sticky until the record is removed.
	StateRevoked State = "revoked"
	// StateRefused: the first attestation was refused; the worker never got
	// an SVID.
	StateRefused State = "refused"
)

// Valid reports whether s is one of the four states.
func (s State) Valid() bool {
	switch s {
	case StateAdmitted, StateDraining, StateRevoked, StateRefused:
		return true
	}
	return false
}

// Attestation methods recorded in WorkerRecord.AttestMethod.
const (
	AttestTPM       = "tpm"
	AttestJoinToken = "join_token"
)

// Capacity is what a worker offers.
type Capacity struct {
	// MemoryMB is the memory available to instances. Zero means the worker
	// offers none: it receives no cold starts.
	MemoryMB int `json:"memoryMB"`
	// MaxInstances caps live instances; zero means no cap beyond memory.
	MaxInstances int `json:"maxInstances,omitempty"`
}

// Load is what a worker uses now.
type Load struct {
	// MemoryMB is the memory configured for every live instance (idle,
	// busy and starting).
	MemoryMB int `json:"memoryMB"`
	// Instances counts live instances.
	Instances int `json:"instances"`
	// Inflight counts invocations running now.
	Inflight int `json:"inflight"`
}

// Warm advertises idle instances of one function version.
type Warm struct {
	// Version is VersionKey of the function version.
	Version string `json:"version"`
	// Idle is how many instances of it wait for an invocation.
	Idle int `json:"idle"`
}

// VersionKey names a function version as "tenant/function/version", the
// same key the worker's instance pool uses.
func VersionKey(v api.Version) string {
	return v.Tenant + "/" + v.Function + "/" + strconv.FormatInt(v.Version, 10)
}

// WorkerRecord is one worker's entry in the bucket, stored as JSON under
// its node name. Fields are owned by one side: the worker's Heartbeat
// writes Addr, Capacity, Load, Warm and LeaseExpiry; the control plane
// (Registry) writes State, Reasons and the attestation fields. Both bump
// Generation and UpdatedAt. A WorkerRecord returned by this package is a
// copy the caller may keep.
type WorkerRecord struct {
	Node string `json:"node"`
	// SPIFFEID is the worker's SVID identity, set at admission; the gateway
	// requires it of the peer at Addr.
	SPIFFEID string `json:"spiffeID,omitempty"`
	// Addr is host:port of the worker's gRPC API.
	Addr  string `json:"addr,omitempty"`
	State State  `json:"state"`
	// AttestMethod is AttestTPM or AttestJoinToken.
	AttestMethod string `json:"attestMethod,omitempty"`
	// EKFingerprint is "sha256:<hex>" of the TPM's EK public key.
	EKFingerprint string `json:"ekFingerprint,omitempty"`
	// PCRSummary maps PCR index to a short hex prefix of its value (see
	// SummarizePCRs); the full values are in the audit record.
	PCRSummary map[int]string `json:"pcrSummary,omitempty"`
	AttestedAt time.Time      `json:"attestedAt,omitzero"`
	SVIDExpiry time.Time      `json:"svidExpiry,omitzero"`
	// LeaseExpiry is when the lease lapses, by the worker's clock. Zero
	// until the first heartbeat.
	LeaseExpiry time.Time `json:"leaseExpiry,omitzero"`
	Capacity    Capacity  `json:"capacity"`
	Load        Load      `json:"load"`
	Warm        []Warm    `json:"warm,omitempty"`
	// Reasons explain the last state change (refusal, revocation, drain).
	Reasons   []string  `json:"reasons,omitempty"`
	UpdatedAt time.Time `json:"updatedAt"`
	// Generation increases by one with every write of the record.
	Generation uint64 `json:"generation"`
}

// clone returns a deep copy of r.
func (r WorkerRecord) clone() WorkerRecord {
	r.PCRSummary = maps.Clone(r.PCRSummary)
	r.Warm = slices.Clone(r.Warm)
	r.Reasons = slices.Clone(r.Reasons)
	return r
}

// idle returns the advertised idle instances of version key.
func (r *WorkerRecord) idle(key string) int {
	for _, w := range r.Warm {
		if w.Version == key {
			return w.Idle
		}
	}
	return 0
}

// leaseTTL is the lease length the worker declared with its last heartbeat,
// measured on its own clock so clock skew between machines cancels out.
func (r *WorkerRecord) leaseTTL() time.Duration {
	if r.LeaseExpiry.IsZero() || !r.LeaseExpiry.After(r.UpdatedAt) {
		return 0
	}
	return r.LeaseExpiry.Sub(r.UpdatedAt)
}

// nodeRE matches identity's name grammar so that a node name is also a
// valid SPIFFE ID segment (spiffe://TD/worker/NODE).
var nodeRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ValidNode reports whether node may name a worker: lower-case letters,
// digits, '.', '_' and '-', at most 63 characters, starting with a letter
// or digit, and a valid store key (no "..", no trailing '.').
func ValidNode(node string) bool {
	return nodeRE.MatchString(node) && store.ValidKey(node)
}

func checkNode(node string) error {
	if !ValidNode(node) {
		return fmt.Errorf("%w: %q", ErrInvalidNode, node)
	}
	return nil
}

func decode(e store.Entry) (WorkerRecord, error) {
	var r WorkerRecord
	if err := json.Unmarshal(e.Value, &r); err != nil {
		return WorkerRecord{}, fmt.Errorf("decode worker %s: %w", e.Key, err)
	}
	if r.Node != e.Key {
		return WorkerRecord{}, fmt.Errorf("decode worker %s: record names node %q", e.Key, r.Node)
	}
	return r, nil
}

// SummarizePCRs shortens PCR values (index → raw digest) to the first 8
// bytes in hex, enough to see at a glance which PCRs differ between
// workers.
func SummarizePCRs(pcrs map[int][]byte) map[int]string {
	if len(pcrs) == 0 {
		return nil
	}
	out := make(map[int]string, len(pcrs))
	for i, v := range pcrs {
		out[i] = hex.EncodeToString(v[:min(len(v), 8)])
	}
	return out
}

// SummarizeHexPCRs is SummarizePCRs for values already in hex, as in
// identity/attest.Claims.PCRs.
func SummarizeHexPCRs(pcrs map[int]string) map[int]string {
	if len(pcrs) == 0 {
		return nil
	}
	out := make(map[int]string, len(pcrs))
	for i, v := range pcrs {
		out[i] = v[:min(len(v), 16)]
	}
	return out
}
