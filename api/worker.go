package api

import "time"

// Worker states.
const (
	WorkerAdmitted = "admitted" // attested (or admitted by join token) and eligible for work
	WorkerDraining = "draining" // no new work; running invocations finish
	WorkerRevoked  = "revoked"  // failed re-attestation or revoked: no work, no SVID renewal
	WorkerRefused  = "refused"  // never admitted
)

// WorkerInfo is what GET /v1/workers shows of one worker.
type WorkerInfo struct {
	Node     string `json:"node"`
	SPIFFEID string `json:"spiffeId"`
	Addr     string `json:"addr,omitempty"`
	// State is WorkerAdmitted, WorkerDraining, WorkerRevoked or
	// WorkerRefused; Live reports whether its lease is current.
	State string `json:"state"`
	Live  bool   `json:"live"`
	// AttestMethod is "tpm", "join_token" or "local" (the all-in-one
	// worker inside zfaas up).
	AttestMethod  string            `json:"attestMethod"`
	EKFingerprint string            `json:"ekFingerprint,omitempty"`
	PCRs          map[string]string `json:"pcrs,omitempty"`
	AttestedAt    time.Time         `json:"attestedAt,omitzero"`
	SVIDExpiry    time.Time         `json:"svidExpiry,omitzero"`
	LeaseExpiry   time.Time         `json:"leaseExpiry,omitzero"`
	CapacityMB    int               `json:"capacityMB,omitempty"`
	MemoryMB      int               `json:"memoryMB"`
	Instances     int               `json:"instances"`
	Inflight      int               `json:"inflight"`
	Reasons       []string          `json:"reasons,omitempty"`
}
