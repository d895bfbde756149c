// Package attest is the verifier side of zfaas node attestation: it
// decides, from a worker's TPM, whether the machine is the one it claims
// to be and what it booted, before the worker may be given an SVID.
//
// The protocol has two round trips and is transport-agnostic: the message
// types (Hello, Challenge, Evidence) are plain structs with JSON encodings,
// so they can ride on gRPC, HTTP or a test's function call.
//
//  1. The attester sends a Hello: node name, EK certificate (plus any
//     intermediates), the EK public area and the AK public area
//     (TPM2B_PUBLIC bytes).
//  2. Verifier.Challenge checks the EK certificate chain against the
//     configured manufacturer roots, that the EK public area carries the
//     certified key, and the AK's attributes (fixedTPM, fixedParent,
//     sensitiveDataOrigin, restricted, sign, not decrypt, ECDSA P-256
//     SHA-256). It answers with a credential (TPM2_MakeCredential done in
//     Go) that only the certified EK can unwrap and only for that AK's
//     name, a fresh nonce and the PCR selection to quote.
//  3. The attester returns the activated secret, a quote (TPMS_ATTEST and
//     signature) over the PCRs with the nonce as qualifying data, the PCR
//     values and, where it has one, the TCG event log.
//  4. Verifier.Verify checks the secret, the quote's signature with the
//     AK, magic and type, the nonce, the PCR digest against the reported
//     values, replays the event log, and hands the resulting Claims to the
//     consumer's Admitter (the zfaas.admission policy).
//
// Every challenge is single-use and expires (30 s by default); EK, AK,
// nonce and secret of one attestation are bound together in the
// verifier's state and never taken again from the attester. Message
// sizes are bounded and decoders never panic on hostile input.
//
// This package only verifies; it never talks to a TPM, holds no signing
// keys and never issues certificates. It imports no gateway, runtime or
// cmd package.
package attest
