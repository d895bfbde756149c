// Package cluster is the membership and placement layer of a multi-worker
// zfaas: the record every worker keeps in the store under a lease, the
// control plane's view of those records, and the gateway's decision of which
// worker runs an invocation.
//
// Three parts share one KV bucket (DefaultBucket, key = node name):
//
//   - Heartbeat runs on a worker. It renews the worker's lease and reports
//     its capacity, load and warm instances every interval. It never creates
//     a record and never changes a record's state: a worker cannot admit
//     itself, nor undo a drain or a revocation.
//   - Registry runs in the control plane (gateway, identity). It watches the
//     bucket into an in-memory view, and it is the only writer of admission
//     state: Admit after a successful attestation, SetState for drains and
//     revocations, Remove and Prune to forget nodes.
//   - Placer runs in the gateway. It picks an admitted worker with a live
//     lease for one invocation, warm instance first, then least loaded with
//     room for the function's memory.
//
// Every write is a compare-and-set on the key's store revision, so a
// heartbeat racing a drain never loses the drain, and two gateways never
// half-apply a state change.
//
// The package must never decide admission (that is identity/attest and the
// zfaas.admission policy) and never trust a record as proof of identity: the
// gateway still checks that the peer at WorkerRecord.Addr presents
// WorkerRecord.SPIFFEID on the mTLS connection.
package cluster
