// Package audit is zfaas's compliance trail: an append-only, hash-chained
// log of every policy decision, deployment, admission, identity issuance,
// eBPF deny and invocation summary, kept in a NATS JetStream stream, with
// periodic signed checkpoints, exports in JSON Lines, CEF and OCSF, and an
// offline verifier that needs only the audit public key.
//
// Each Record carries a gap-free sequence number and the hash of the
// previous record (SHA-256, or SM3 under the GM suite) over a documented
// canonical encoding (see Canonical). Writers on several gateways append to
// one chain: each batch is published with JetStream's expected-last-sequence
// and, on a conflict, re-chained onto the new head and retried. Checkpoints
// are C2SP signed notes (tlog-checkpoint text: origin, size, head hash)
// signed with ECDSA P-256 or SM2. docs/audit.md is the reference for the
// record schema, the formats and the verification procedure.
//
// The package must never store request bodies or secrets (the caller masks
// details, a Masker and the built-in key deny-list mask again before a
// record is written), never drop a record silently (drops are counted and
// recorded), and never let records expire without an audit.expired record.
package audit
