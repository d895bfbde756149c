package nodeapi

import (
	"context"
	"slices"
	"sync"
	"time"
)

// NodeState is the admission state of a node.
type NodeState string

// Node states.
const (
	// StateAdmitted: the node holds a worker SVID it may renew.
	StateAdmitted NodeState = "admitted"
	// StateRevoked: the node failed a re-attestation or was revoked by an
	// operator. It gets no SVID and its workers' calls are refused until
	// an operator deletes the record (NodeStore.DeleteNode).
	StateRevoked NodeState = "revoked"
)

// NodeRecord is what the server remembers about a node between
// attestations.
type NodeRecord struct {
	// Node is the node name.
	Node string `json:"node"`
	// State is admitted or revoked.
	State NodeState `json:"state"`
	// Method is how the node was last admitted: "tpm" or "join_token".
	Method string `json:"method"`
	// EKFingerprint is the EK of the node's first TPM admission; every
	// later TPM attestation of this node must present the same EK.
	// Empty for join-token nodes.
	EKFingerprint string `json:"ek_fingerprint,omitempty"`
	// SVIDExpiry is the expiry of the last worker SVID issued.
	SVIDExpiry time.Time `json:"svid_expiry"`
	// Reasons are the policy's reasons for the last admission, or why the
	// node was revoked.
	Reasons []string `json:"reasons,omitempty"`
	// UpdatedAt is when the record last changed.
	UpdatedAt time.Time `json:"updated_at"`
}

// NodeStore keeps node records. The lead backs it with the store's
// workers bucket (compare-and-set) in a cluster; NewMemoryNodes is for
// one identity server and tests. Implementations must be safe for
// concurrent use.
type NodeStore interface {
	// Node returns the record of node, and whether there is one.
	Node(ctx context.Context, node string) (NodeRecord, bool, error)
	// PutNode creates or replaces the record of r.Node.
	PutNode(ctx context.Context, r NodeRecord) error
	// DeleteNode forgets a node, so it may join again from scratch.
	DeleteNode(ctx context.Context, node string) error
}

// MemoryNodes is an in-memory NodeStore. Its records are lost when the
// process exits.
type MemoryNodes struct {
	mu    sync.Mutex
	nodes map[string]NodeRecord
}

var _ NodeStore = (*MemoryNodes)(nil)

// NewMemoryNodes returns an empty MemoryNodes.
func NewMemoryNodes() *MemoryNodes { return &MemoryNodes{nodes: make(map[string]NodeRecord)} }

// Node implements NodeStore.
func (m *MemoryNodes) Node(_ context.Context, node string) (NodeRecord, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.nodes[node]
	r.Reasons = slices.Clone(r.Reasons)
	return r, ok, nil
}

// PutNode implements NodeStore.
func (m *MemoryNodes) PutNode(_ context.Context, r NodeRecord) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	r.Reasons = slices.Clone(r.Reasons)
	m.nodes[r.Node] = r
	return nil
}

// DeleteNode implements NodeStore.
func (m *MemoryNodes) DeleteNode(_ context.Context, node string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.nodes, node)
	return nil
}
