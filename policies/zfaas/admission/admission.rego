# METADATA
# title: Worker admission policy
# description: |
#   Decides whether a worker machine may join, from the claims the identity
#   service verified during node attestation. Deny by default.
#   - method "tpm": the EK certificate chain verified, the AK fixedTPM,
#     restricted and sign-only, the quote's signature verified and its nonce
#     fresh, the EK fingerprint on the allow-list when one is configured,
#     and every PCR with golden values in data matching one of them.
#   - method "join_token": only when data.zfaas.config.admission
#     .allow_join_token is true, a development shortcut that says so in
#     every decision.
#   This policy judges claims; it never verifies signatures or certificates
#   itself. The identity service must only set a claim to true after
#   checking it.
package zfaas.admission

import data.zfaas.lib.spiffe

# Admission methods this policy knows.
methods := {"tpm", "join_token"}

# PCR banks golden values may be given for, and their digest sizes in hex
# characters.
banks := {"sha1": 40, "sha256": 64, "sha384": 96, "sha512": 128, "sm3_256": 64}

# The AK attributes that must all be set, as named in the input.
ak_attributes := {"fixed_tpm", "restricted", "sign"}

fingerprint_pattern := `^sha256:[0-9a-f]{64}$`

# METADATA
# title: Admission decision
# description: |
#   {"allow": bool, "reasons": [string]}. Always defined. On deny, reasons
#   says every check that failed; on allow, how the worker was admitted,
#   with notes on what was not checked (no golden PCRs, no EK allow-list)
#   and, for join tokens, that this is a development shortcut.
# entrypoint: true
decision := {"allow": allow, "reasons": reasons}

default allow := false

allow if {
	count(violations) == 0
	count(grounds) > 0
}

reasons := sort(grounds | notes) if {
	allow
} else := sort(violations) if {
	count(violations) > 0
} else := ["no admission ground applies"]

_input_string(key) := s if {
	s := input[key]
	is_string(s)
} else := ""

_method := _input_string("method")

_node := _input_string("node")

_tpm if _method == "tpm"

_flag(path) if object.get(input, path, false) == true

_admission := a if {
	a := data.zfaas.config.admission
	is_object(a)
} else := {}

_fingerprints := {lower(f) | some f in _admission.ek_fingerprints; is_string(f)}

_golden := g if {
	g := _admission.golden_pcrs
	is_object(g)
} else := {}

_fingerprint := lower(f) if {
	f := input.ek.fingerprint
	is_string(f)
} else := ""

# violations are reasons to refuse the worker.
violations contains msg if {
	not _method in methods
	msg := sprintf("admission method %q is not one of %v", [_method, sort(methods)])
}

violations contains msg if {
	not spiffe.valid_segment(_node)
	msg := sprintf("node %q is not a valid node name", [_node])
}

violations contains msg if {
	_method == "join_token"
	not _admission.allow_join_token == true
	msg := "join token admission is disabled: it is a development shortcut without hardware attestation (admission.allow_join_token is not true)"
}

violations contains "EK certificate chain is not verified" if {
	_tpm
	not _flag(["ek", "chain_verified"])
}

violations contains msg if {
	_tpm
	some attribute in ak_attributes
	not _flag(["ak", attribute])
	msg := sprintf("AK attribute %s is not set", [attribute])
}

violations contains "quote signature is not verified" if {
	_tpm
	not _flag(["quote", "verified"])
}

violations contains "quote nonce is not fresh" if {
	_tpm
	not _flag(["quote", "nonce_fresh"])
}

violations contains msg if {
	_tpm
	_fingerprint != ""
	not regex.match(fingerprint_pattern, _fingerprint)
	msg := sprintf("EK fingerprint %q is not of the form sha256:<64 hex digits>", [_fingerprint])
}

violations contains "EK fingerprint is missing and admission.ek_fingerprints is configured" if {
	_tpm
	count(_fingerprints) > 0
	_fingerprint == ""
}

violations contains msg if {
	_tpm
	count(_fingerprints) > 0
	_fingerprint != ""
	not _fingerprint in _fingerprints
	msg := sprintf("EK fingerprint %q is not in admission.ek_fingerprints", [_fingerprint])
}

violations contains msg if {
	_tpm
	some bank, pcrs in _golden_values
	some index, _ in pcrs
	not _quoted(bank, index)
	msg := sprintf("PCR %s:%s is missing from the quote", [bank, index])
}

violations contains msg if {
	_tpm
	some bank, pcrs in _golden_values
	some index, want in pcrs
	got := _quoted(bank, index)
	not got in want
	msg := sprintf("PCR %s:%s is %s, want %s", [bank, index, got, _one_of(want)])
}

# Malformed admission data refuses every TPM admission rather than
# silently checking less.
violations contains msg if {
	_tpm
	some problem in errors
	msg := sprintf("admission data is invalid: %s", [problem])
}

_quoted(bank, index) := lower(v) if {
	v := input.pcrs[bank][index]
	is_string(v)
}

_one_of(want) := w if {
	count(want) == 1
	some w in want
} else := sprintf("one of %v", [sort(want)])

# _golden_values[bank][index] is the set of accepted lower-case values.
_golden_values[bank][index] := values if {
	some bank, pcrs in _golden
	is_object(pcrs)
	some index, value in pcrs
	values := _accepted(value)
}

_accepted(value) := {lower(value)} if is_string(value)

_accepted(value) := {lower(v) | some v in value; is_string(v)} if is_array(value)

# grounds are how the worker was admitted.
grounds contains "TPM attestation verified: EK certificate chain, AK attributes, fresh signed quote" if _tpm

grounds contains "development shortcut: admitted with a join token, without TPM attestation; never set admission.allow_join_token in production" if {
	_method == "join_token"
}

# notes say what an allowed TPM admission did not check.
notes contains msg if {
	_tpm
	count(_golden_values) > 0
	msg := sprintf("PCRs match golden values (%d checked)", [count([1 | some _, pcrs in _golden_values; some _ in pcrs])])
}

notes contains "no golden PCR values configured: PCRs were not checked" if {
	_tpm
	count(_golden_values) == 0
}

notes contains "EK fingerprint is allow-listed" if {
	_tpm
	count(_fingerprints) > 0
}

notes contains "no EK allow-list configured: any EK with a verified chain is accepted" if {
	_tpm
	count(_fingerprints) == 0
}

# METADATA
# title: Admission data errors
# description: |
#   Problems with data.zfaas.config.admission, one string each, empty when
#   valid. Any error refuses every TPM admission.
# entrypoint: true
errors contains "admission.allow_join_token must be a boolean" if {
	some v in [object.get(_admission, "allow_join_token", false)]
	not is_boolean(v)
}

errors contains "admission.ek_fingerprints must be an array" if {
	not is_array(object.get(_admission, "ek_fingerprints", []))
}

errors contains msg if {
	some f in object.get(_admission, "ek_fingerprints", [])
	not _valid_fingerprint(f)
	msg := sprintf("admission.ek_fingerprints: %s is not of the form sha256:<64 hex digits>", [json.marshal(f)])
}

errors contains "admission.golden_pcrs must be an object of bank to PCR values" if {
	not is_object(object.get(_admission, "golden_pcrs", {}))
}

errors contains msg if {
	some bank, _ in _golden
	not banks[bank]
	msg := sprintf("admission.golden_pcrs: unknown bank %q (want one of %v)", [bank, sort(object.keys(banks))])
}

errors contains msg if {
	some bank, pcrs in _golden
	not is_object(pcrs)
	msg := sprintf("admission.golden_pcrs.%s must be an object of PCR index to values", [bank])
}

errors contains msg if {
	some bank, pcrs in _golden
	is_object(pcrs)
	some index, _ in pcrs
	not _pcr_index(index)
	msg := sprintf("admission.golden_pcrs.%s: PCR index %q is not 0-23", [bank, index])
}

errors contains msg if {
	some bank, pcrs in _golden
	size := banks[bank]
	is_object(pcrs)
	some index, value in pcrs
	not _golden_entry(value, size)
	msg := sprintf("admission.golden_pcrs.%s.%s must be a %d-digit hex string or a non-empty array of them", [bank, index, size])
}

_valid_fingerprint(f) if {
	is_string(f)
	regex.match(fingerprint_pattern, lower(f))
}

_pcr_index(index) if {
	regex.match(`^(0|[1-9][0-9]?)$`, index)
	to_number(index) <= 23
}

_golden_entry(value, size) if _digest(value, size)

_golden_entry(value, size) if {
	is_array(value)
	count(value) > 0
	every v in value {
		_digest(v, size)
	}
}

_digest(value, size) if {
	is_string(value)
	count(value) == size
	regex.match(`^[0-9a-fA-F]+$`, value)
}
