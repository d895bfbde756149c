// Package policyd is the zfaas policy engine: it loads, compiles, tests and
// atomically swaps Rego policy revisions, evaluates decisions against the
// active revision, and writes every decision to the decision log.
//
// Revisions are OPA bundles (tar.gz). Push compiles a bundle, runs its
// _test.rego tests and only then stores it: the bytes content-addressed in an
// object store bucket, the record under "rev.<n>" in the KV bucket
// zfaas_policy, and the choice of active revision under "active" (written
// with compare-and-set). Every Engine watches "active" and swaps to the
// revision it names. A revision is compiled once (one prepared query per entry
// point) and published through a single atomic pointer: an evaluation loads
// the pointer once and uses only that revision — its decision, its egress
// rules and its decision-log mask — so no request sees a half-loaded policy
// and a swap never fails a request. A revision that does not compile on a
// node is refused there (the reason is logged and reported in the node's
// status) and the previous one keeps serving.
//
// Decisions deny by default: an undefined or malformed policy result is a
// denial. The package must never evaluate against a half-loaded revision,
// never activate a bundle whose signature it could not verify when a
// verification key is configured, and never write an unmasked input to the
// decision log.
//
// Sub-packages serve decisions to other processes: extauthz (Envoy's
// envoy.service.auth.v3.Authorization) and decisionapi (zfaas.policyd.v1).
package policyd
