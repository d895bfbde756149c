package audit

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Record kinds. Kind is free text (a short dotted name); these are the
// kinds zfaas writes and the exports map.
const (
	KindDecision       = "decision"        // a policy decision (invoke, deploy, admission, envoy)
	KindDeploy         = "deploy"          // a function version published
	KindAlias          = "alias"           // an alias set or deleted
	KindDelete         = "delete"          // a function deleted
	KindPolicyPush     = "policy.push"     // a policy revision pushed and activated
	KindPolicyRefused  = "policy.refused"  // a policy revision refused (compile, tests, signature)
	KindPolicyRollback = "policy.rollback" // an older policy revision made active again
	KindWorkerAdmitted = "worker.admitted" // a worker passed attestation
	KindWorkerRefused  = "worker.refused"  // a worker failed attestation
	KindWorkerRevoked  = "worker.revoked"  // a worker's admission revoked
	KindWorkerDrained  = "worker.drained"  // an operator stopped placing work on a worker
	KindSVIDIssued     = "svid.issued"     // an X.509- or JWT-SVID minted
	KindEgressDeny     = "egress.deny"     // the kernel denied an instance's connection
	KindInvoke         = "invoke"          // an invocation summary (never the payload)
	KindExpired        = "audit.expired"   // records removed by retention (written by this package)
	KindDropped        = "audit.dropped"   // records lost to a full queue (written by this package)
)

// Outcomes. Outcome is free text; these are the values the exports map to a
// status.
const (
	OutcomeAllow   = "allow"
	OutcomeDeny    = "deny"
	OutcomeSuccess = "success"
	OutcomeFailure = "failure"
)

// RecordVersion is the V of records this package writes.
const RecordVersion = 1

// Record is one entry of the audit trail. The caller fills Kind and the
// descriptive fields; the log assigns V, Seq, Time (when zero), Prev and
// Hash. Details must already be masked by the caller: a Masker and the
// built-in deny-list run again before the record is written, but neither
// knows every secret.
//
// The JSON form (the jsonl export line) has the fields in the order below;
// empty optional fields are omitted.
type Record struct {
	// V is the record format version (RecordVersion).
	V int `json:"v"`
	// Seq is the position in the chain: 1 for the first record, then +1,
	// with no gaps.
	Seq uint64 `json:"seq"`
	// Time is when the event happened, encoded RFC 3339 with nanoseconds
	// in UTC.
	Time time.Time `json:"time"`
	// Kind says what happened (KindDecision, KindDeploy, …).
	Kind string `json:"kind"`
	// Actor is the SPIFFE ID of who did it (a user, a function, a worker).
	Actor string `json:"actor,omitempty"`
	// Node names the component that wrote the record (a gateway node).
	Node string `json:"node,omitempty"`
	// PolicyRevision is the policy revision that decided, when one did.
	PolicyRevision int64 `json:"policy_revision,omitempty"`
	// TraceID is the request's trace id; DecisionID the policy decision's.
	TraceID    string `json:"trace_id,omitempty"`
	DecisionID string `json:"decision_id,omitempty"`
	// Subject is what was acted on: a function ("acme/hello"), a worker's
	// or a workload's SPIFFE ID, a policy revision.
	Subject string `json:"subject,omitempty"`
	// Action is the verb ("invoke", "deploy", "alias.set", "connect").
	Action string `json:"action,omitempty"`
	// Outcome is the result (OutcomeAllow, OutcomeDeny, OutcomeSuccess,
	// OutcomeFailure).
	Outcome string `json:"outcome,omitempty"`
	// Details holds further, already masked, facts as a JSON object. Any
	// JSON-marshalable values may be given; the log normalizes them (object
	// keys sorted, numbers kept as written) before hashing.
	Details map[string]any `json:"details,omitempty"`
	// Erased lists the JSON pointers (into the record, "/details/...")
	// the masking removed before the record was written.
	Erased []string `json:"erased,omitempty"`
	// Prev is the hex hash of the record before (64 zeros before seq 1).
	Prev string `json:"prev"`
	// Hash is the hex hash of this record's canonical encoding.
	Hash string `json:"hash"`
}

// canonicalRecord is Record without Hash, in the same order: the encoding
// that is hashed.
type canonicalRecord struct {
	V              int            `json:"v"`
	Seq            uint64         `json:"seq"`
	Time           string         `json:"time"`
	Kind           string         `json:"kind"`
	Actor          string         `json:"actor,omitempty"`
	Node           string         `json:"node,omitempty"`
	PolicyRevision int64          `json:"policy_revision,omitempty"`
	TraceID        string         `json:"trace_id,omitempty"`
	DecisionID     string         `json:"decision_id,omitempty"`
	Subject        string         `json:"subject,omitempty"`
	Action         string         `json:"action,omitempty"`
	Outcome        string         `json:"outcome,omitempty"`
	Details        map[string]any `json:"details,omitempty"`
	Erased         []string       `json:"erased,omitempty"`
	Prev           string         `json:"prev"`
}

// lineRecord is canonicalRecord with the hash: the stored and exported line.
type lineRecord struct {
	canonicalRecord
	Hash string `json:"hash"`
}

// FormatTime formats t as records do: RFC 3339 with nanoseconds (trailing
// zeros dropped) in UTC.
func FormatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

func (r *Record) canonical() canonicalRecord {
	return canonicalRecord{
		V: r.V, Seq: r.Seq, Time: FormatTime(r.Time), Kind: r.Kind, Actor: r.Actor, Node: r.Node,
		PolicyRevision: r.PolicyRevision, TraceID: r.TraceID, DecisionID: r.DecisionID,
		Subject: r.Subject, Action: r.Action, Outcome: r.Outcome, Details: r.Details,
		Erased: r.Erased, Prev: r.Prev,
	}
}

// Canonical returns the bytes a record's hash is computed over: the record
// as one compact JSON object with the fields in the order of Record, Hash
// left out, empty optional fields omitted, object keys inside Details
// sorted by their UTF-8 bytes, numbers as written, and strings escaped as
// Go's encoding/json does without HTML escaping (", \ and control
// characters escaped; U+2028 and U+2029 as \u2028 and \u2029; invalid UTF-8
// replaced by U+FFFD). No trailing newline.
func Canonical(r *Record) ([]byte, error) {
	return encodeJSON(r.canonical())
}

// MarshalLine returns the record's jsonl line (canonical encoding plus the
// hash as the last member), without the newline.
func MarshalLine(r *Record) ([]byte, error) {
	return encodeJSON(lineRecord{canonicalRecord: r.canonical(), Hash: r.Hash})
}

// ParseLine decodes a record line. Numbers in Details stay json.Number, so
// the canonical encoding of the result is the one that was hashed.
func ParseLine(line []byte) (Record, error) {
	var lr struct {
		V              *int           `json:"v"`
		Seq            uint64         `json:"seq"`
		Time           string         `json:"time"`
		Kind           string         `json:"kind"`
		Actor          string         `json:"actor"`
		Node           string         `json:"node"`
		PolicyRevision int64          `json:"policy_revision"`
		TraceID        string         `json:"trace_id"`
		DecisionID     string         `json:"decision_id"`
		Subject        string         `json:"subject"`
		Action         string         `json:"action"`
		Outcome        string         `json:"outcome"`
		Details        map[string]any `json:"details"`
		Erased         []string       `json:"erased"`
		Prev           string         `json:"prev"`
		Hash           string         `json:"hash"`
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	dec.DisallowUnknownFields()
	if err := dec.Decode(&lr); err != nil {
		return Record{}, fmt.Errorf("decode record: %w", err)
	}
	if lr.V == nil {
		return Record{}, fmt.Errorf("decode record: no \"v\"")
	}
	t, err := time.Parse(time.RFC3339Nano, lr.Time)
	if err != nil {
		return Record{}, fmt.Errorf("decode record: time: %w", err)
	}
	return Record{
		V: *lr.V, Seq: lr.Seq, Time: t, Kind: lr.Kind, Actor: lr.Actor, Node: lr.Node,
		PolicyRevision: lr.PolicyRevision, TraceID: lr.TraceID, DecisionID: lr.DecisionID,
		Subject: lr.Subject, Action: lr.Action, Outcome: lr.Outcome, Details: lr.Details,
		Erased: lr.Erased, Prev: lr.Prev, Hash: lr.Hash,
	}, nil
}

// ComputeHash returns the hex hash of r's canonical encoding under hash h.
func ComputeHash(h HashAlg, r *Record) (string, error) {
	c, err := Canonical(r)
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(c)), nil
}

// encodeJSON is json.Marshal without HTML escaping and without the newline.
func encodeJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte{'\n'}), nil
}

// normalizeDetails turns any JSON-marshalable map into plain JSON values
// (map[string]any, []any, string, bool, nil, json.Number), so that the
// canonical encoding survives a round trip through an export.
func normalizeDetails(d map[string]any) (map[string]any, error) {
	if len(d) == 0 {
		return nil, nil
	}
	raw, err := encodeJSON(d)
	if err != nil {
		return nil, fmt.Errorf("details: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var out map[string]any
	if err := dec.Decode(&out); err != nil {
		return nil, fmt.Errorf("details: %w", err)
	}
	return out, nil
}

// ValidKind reports whether k can be a record kind: 1 to 64 of a-z, 0-9,
// ".", "_" and "-", not starting or ending with ".".
func ValidKind(k string) bool { return validKind(k) }

// validKind reports whether k is a short dotted name.
func validKind(k string) bool {
	if k == "" || len(k) > 64 {
		return false
	}
	for _, c := range k {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return !strings.HasPrefix(k, ".") && !strings.HasSuffix(k, ".")
}
