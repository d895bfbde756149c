package policydv1

import "time"

// RevisionInfo describes one stored, immutable policy revision.
type RevisionInfo struct {
	// Revision is the revision number, 1, 2, … in push order. 0 names the
	// built-in default policy a node serves before any revision was pushed.
	Revision int64 `json:"revision"`
	// Digest is "sha256:<hex>" of the revision's bundle (tar.gz) bytes.
	Digest string `json:"digest"`
	// Size is the bundle's size in bytes.
	Size int64 `json:"size"`
	// PushedBy names who pushed it (a SPIFFE ID or user name).
	PushedBy string `json:"pushedBy"`
	// Time is when it was pushed.
	Time time.Time `json:"time"`
	// Signed is set when the bundle carried a signature that was verified.
	Signed bool `json:"signed"`
	// KeyID is the verification key id the signature was checked with.
	KeyID string `json:"keyId,omitempty"`
	// Tests counts the policy's tests run before it was stored.
	Tests TestSummary `json:"tests"`
}

// TestSummary counts the results of a policy test run.
type TestSummary struct {
	Passed  int `json:"passed"`
	Failed  int `json:"failed"`
	Errored int `json:"errored"`
	Skipped int `json:"skipped"`
}

// Activation is the cluster's choice of active revision (the policy KV key
// "active"). Every engine watches it and swaps to the revision it names.
type Activation struct {
	Revision int64  `json:"revision"`
	Digest   string `json:"digest"`
	// PushedBy names who activated it: the pusher, or who rolled back.
	PushedBy string    `json:"pushedBy"`
	Time     time.Time `json:"time"`
	// Action is "push" or "rollback".
	Action string `json:"action"`
	// Previous is the revision that was active before, 0 if none.
	Previous int64 `json:"previous,omitempty"`
}

// NodeStatus is what one engine reports about itself (KV key
// "status.<node>").
type NodeStatus struct {
	Node string `json:"node"`
	// Revision is the revision the node serves (0: built-in default; -1:
	// none, the node denies everything).
	Revision int64  `json:"revision"`
	Digest   string `json:"digest,omitempty"`
	// Time is when the node last changed or reported its state.
	Time time.Time `json:"time"`
	// Error is why the node refused the last revision it was asked to
	// activate (ErrorRevision), empty when it serves the active one.
	Error         string `json:"error,omitempty"`
	ErrorRevision int64  `json:"errorRevision,omitempty"`
}

// Status is the cluster's policy state: the active revision and what each
// node serves.
type Status struct {
	// Active is nil when no revision was ever pushed.
	Active *Activation  `json:"active,omitempty"`
	Nodes  []NodeStatus `json:"nodes"`
}

// DecisionRecord is one entry of the decision log (stream ZFAAS_DECISIONS,
// subject zfaas.decisions.<entry>). Input and Result are masked by the
// zfaas.log.mask policy of the same revision that decided.
type DecisionRecord struct {
	DecisionID string    `json:"decisionId"`
	Time       time.Time `json:"timestamp"`
	Node       string    `json:"node"`
	Revision   int64     `json:"revision"`
	Digest     string    `json:"digest,omitempty"`
	// Entry is the entry point: invoke, deploy, admission or envoy.
	Entry string `json:"entry"`
	// Query is the Rego query that was evaluated.
	Query   string   `json:"query"`
	Allow   bool     `json:"allow"`
	Reasons []string `json:"reasons,omitempty"`
	// Caller is the caller's SPIFFE ID when the input names one.
	Caller string `json:"caller,omitempty"`
	// TraceID and SpanID come from a W3C traceparent header in the input.
	TraceID string `json:"traceId,omitempty"`
	SpanID  string `json:"spanId,omitempty"`
	Input   any    `json:"input,omitempty"`
	Result  any    `json:"result,omitempty"`
	// Erased lists the JSON pointers the mask policy erased.
	Erased []string `json:"erased,omitempty"`
	// MaskFailed is set when the mask policy could not be applied; the
	// input and result are then left out entirely.
	MaskFailed bool `json:"maskFailed,omitempty"`
	// Error names the class of evaluation failure, if any (the decision is
	// then a denial).
	Error string `json:"error,omitempty"`
}
