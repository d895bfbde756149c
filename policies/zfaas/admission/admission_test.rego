package zfaas.admission_test

import data.zfaas.admission

ek1 := "sha256:cbe2b2e4772717a1778023f4f40e54d24147f3793326abec70288f3f5e2589f7"

ek2 := "sha256:cc7df0a6e1b4aafb1d51b39144a8ad909cc84c5060dea548427ad7dc492e6cf1"

pcr0 := "588cafc2dd350e6259cd7479edd78dcb08cb9389c4a18ebba28d074f8630c2e6"

pcr7a := "db5c45f14582848e29bad67c28d7393a1120805a9ecab15992b30ce14dab65b4"

# A second accepted PCR 7 value, as during a firmware or Secure Boot
# database roll-out.
pcr7b := "3f814235b46bcefc77fb4e24941a57de41987bd93a4a5e48fd6ab186a855d618"

config := {
	"trust_domain": "zfaas.local",
	"admission": {
		"allow_join_token": false,
		"ek_fingerprints": [ek1],
		"golden_pcrs": {"sha256": {"0": pcr0, "7": [pcr7a, pcr7b]}},
	},
}

# Nothing configured beyond the defaults shipped in data.json.
open_config := {"admission": {"allow_join_token": false, "ek_fingerprints": [], "golden_pcrs": {}}}

dev_config := {"admission": {"allow_join_token": true, "ek_fingerprints": [], "golden_pcrs": {}}}

tpm := {
	"node": "w1",
	"method": "tpm",
	"ek": {"fingerprint": ek1, "chain_verified": true},
	"ak": {"fixed_tpm": true, "restricted": true, "sign": true},
	"quote": {"verified": true, "nonce_fresh": true},
	"pcrs": {"sha256": {"0": pcr0, "4": pcr7b, "7": pcr7a}},
}

# patch(overrides) deep-merges overrides into the good TPM claims.
patch(overrides) := object.union(tpm, overrides)

join := {"node": "dev-1", "method": "join_token"}

# Each case: input, optionally config (default: config above), the expected
# allow, and substrings that must each appear in some reason.
cases := [
	# Allowed.
	{
		"name": "fully attested worker",
		"input": tpm,
		"allow": true,
		"reasons": ["TPM attestation verified", "PCRs match golden values (2 checked)", "EK fingerprint is allow-listed"],
	},
	{"name": "second accepted PCR value", "input": patch({"pcrs": {"sha256": {"7": pcr7b}}}), "allow": true, "reasons": ["PCRs match golden values"]},
	{
		"name": "hex case does not matter",
		"input": patch({"ek": {"fingerprint": upper(ek1)}, "pcrs": {"sha256": {"0": upper(pcr0)}}}),
		"allow": true, "reasons": ["TPM attestation verified"],
	},
	{
		"name": "no allow-list and no golden values",
		"input": patch({"ek": {"fingerprint": ek2}}),
		"config": open_config,
		"allow": true,
		"reasons": ["no golden PCR values configured", "no EK allow-list configured"],
	},
	{
		"name": "fingerprint is optional without an allow-list",
		"input": _without_fingerprint(tpm),
		"config": open_config,
		"allow": true, "reasons": ["TPM attestation verified"],
	},
	{"name": "join token when enabled", "input": join, "config": dev_config, "allow": true, "reasons": ["development shortcut"]},
	# Denied: TPM claims.
	{"name": "EK chain not verified", "input": patch({"ek": {"chain_verified": false}}), "allow": false, "reasons": ["EK certificate chain is not verified"]},
	{"name": "EK chain flag must be boolean true", "input": patch({"ek": {"chain_verified": "true"}}), "allow": false, "reasons": ["EK certificate chain is not verified"]},
	{"name": "AK not fixedTPM", "input": patch({"ak": {"fixed_tpm": false}}), "allow": false, "reasons": ["AK attribute fixed_tpm is not set"]},
	{"name": "AK not restricted", "input": patch({"ak": {"restricted": false}}), "allow": false, "reasons": ["AK attribute restricted is not set"]},
	{"name": "AK not a signing key", "input": patch({"ak": {"sign": false}}), "allow": false, "reasons": ["AK attribute sign is not set"]},
	{
		"name": "AK claims missing",
		"input": object.remove(tpm, {"ak"}),
		"allow": false,
		"reasons": ["AK attribute fixed_tpm", "AK attribute restricted", "AK attribute sign"],
	},
	{"name": "quote not verified", "input": patch({"quote": {"verified": false}}), "allow": false, "reasons": ["quote signature is not verified"]},
	{"name": "quote nonce replayed", "input": patch({"quote": {"nonce_fresh": false}}), "allow": false, "reasons": ["quote nonce is not fresh"]},
	{"name": "EK not allow-listed", "input": patch({"ek": {"fingerprint": ek2}}), "allow": false, "reasons": ["is not in admission.ek_fingerprints"]},
	{"name": "EK fingerprint missing with an allow-list", "input": _without_fingerprint(tpm), "allow": false, "reasons": ["EK fingerprint is missing"]},
	{"name": "EK fingerprint malformed", "input": patch({"ek": {"fingerprint": "sha1:abcd"}}), "config": open_config, "allow": false, "reasons": ["is not of the form sha256:<64 hex digits>"]},
	{"name": "PCR 0 differs", "input": patch({"pcrs": {"sha256": {"0": pcr7a}}}), "allow": false, "reasons": [sprintf("PCR sha256:0 is %s, want %s", [pcr7a, pcr0])]},
	{"name": "PCR 7 not an accepted value", "input": patch({"pcrs": {"sha256": {"7": pcr0}}}), "allow": false, "reasons": ["PCR sha256:7 is", "want one of"]},
	{"name": "PCR 7 missing", "input": object.union(object.remove(tpm, {"pcrs"}), {"pcrs": {"sha256": {"0": pcr0}}}), "allow": false, "reasons": ["PCR sha256:7 is missing from the quote"]},
	{"name": "PCR bank missing", "input": object.union(object.remove(tpm, {"pcrs"}), {"pcrs": {"sha1": {"0": pcr0}}}), "allow": false, "reasons": ["PCR sha256:0 is missing", "PCR sha256:7 is missing"]},
	{"name": "PCR value not a string", "input": patch({"pcrs": {"sha256": {"0": 0}}}), "allow": false, "reasons": ["PCR sha256:0 is missing"]},
	{
		"name": "every failed check is listed",
		"input": {"node": "w1", "method": "tpm"},
		"allow": false,
		"reasons": [
			"EK certificate chain", "AK attribute fixed_tpm", "AK attribute restricted", "AK attribute sign",
			"quote signature", "quote nonce", "EK fingerprint is missing", "PCR sha256:0", "PCR sha256:7",
		],
	},
	# Denied: method, node, data.
	{"name": "join token disabled", "input": join, "allow": false, "reasons": ["join token admission is disabled: it is a development shortcut"]},
	{"name": "join token flag must be boolean true", "input": join, "config": {"admission": {"allow_join_token": "true"}}, "allow": false, "reasons": ["join token admission is disabled"]},
	{"name": "unknown method", "input": patch({"method": "aws_iid"}), "allow": false, "reasons": ["admission method \"aws_iid\" is not one of"]},
	{"name": "method missing", "input": object.remove(tpm, {"method"}), "allow": false, "reasons": ["admission method \"\" is not one of"]},
	{"name": "empty input", "input": {}, "allow": false, "reasons": ["admission method \"\"", "node \"\" is not a valid node name"]},
	{"name": "node with a slash", "input": patch({"node": "w1/../gateway"}), "allow": false, "reasons": ["is not a valid node name"]},
	{"name": "node missing", "input": object.remove(tpm, {"node"}), "allow": false, "reasons": ["node \"\" is not a valid node name"]},
	{
		"name": "malformed golden data refuses TPM admission",
		"input": tpm,
		"config": {"admission": {"golden_pcrs": {"sha256": {"0": "abc"}}}},
		"allow": false, "reasons": ["admission data is invalid: admission.golden_pcrs.sha256.0 must be a 64-digit hex string"],
	},
	{
		"name": "unknown bank in golden data refuses TPM admission",
		"input": tpm,
		"config": {"admission": {"golden_pcrs": {"md5": {"0": "abc"}}}},
		"allow": false, "reasons": ["unknown bank \"md5\""],
	},
]

_without_fingerprint(x) := object.union(object.remove(x, {"ek"}), {"ek": object.remove(x.ek, {"fingerprint"})})

_decide(c) := d if {
	d := admission.decision with input as c.input with data.zfaas.config as object.get(c, "config", config)
}

_ok(c, d) if {
	object.keys(d) == {"allow", "reasons"}
	d.allow == c.allow
	is_array(d.reasons)
	count(d.reasons) > 0
	every want in c.reasons {
		some got in d.reasons
		contains(got, want)
	}
}

test_admission_table if {
	failures := {c.name: d |
		some c in cases
		d := _decide(c)
		not _ok(c, d)
	}
	_report(failures)
	count(failures) == 0
}

test_every_case_decides if {
	count({c.name | some c in cases}) == count(cases)
	count({c.name | some c in cases; _decide(c)}) == count(cases)
}

test_join_token_allow_is_loud if {
	d := admission.decision with input as join with data.zfaas.config as dev_config
	d == {"allow": true, "reasons": ["development shortcut: admitted with a join token, without TPM attestation; never set admission.allow_join_token in production"]}
}

test_join_token_never_bypasses_node_name if {
	d := admission.decision with input as {"method": "join_token", "node": "../x"} with data.zfaas.config as dev_config
	d.allow == false
}

test_join_token_enabled_does_not_weaken_tpm if {
	d := admission.decision with input as patch({"quote": {"nonce_fresh": false}}) with data.zfaas.config as dev_config
	d.allow == false
}

test_deny_by_default_without_config if {
	admission.decision.allow == false with input as join with data.zfaas.config as {}
}

# Data validation: each case is an admission object and the errors wanted.
data_cases := [
	{"name": "valid", "admission": config.admission, "errors": set()},
	{"name": "empty", "admission": {}, "errors": set()},
	{"name": "join token flag not boolean", "admission": {"allow_join_token": "yes"}, "errors": {"admission.allow_join_token must be a boolean"}},
	{"name": "fingerprints not an array", "admission": {"ek_fingerprints": ek1}, "errors": {"admission.ek_fingerprints must be an array"}},
	{
		"name": "fingerprint malformed",
		"admission": {"ek_fingerprints": ["sha256:xyz", 7]},
		"errors": {
			"admission.ek_fingerprints: \"sha256:xyz\" is not of the form sha256:<64 hex digits>",
			"admission.ek_fingerprints: 7 is not of the form sha256:<64 hex digits>",
		},
	},
	{"name": "golden not an object", "admission": {"golden_pcrs": [pcr0]}, "errors": {"admission.golden_pcrs must be an object of bank to PCR values"}},
	{"name": "bank not an object", "admission": {"golden_pcrs": {"sha256": [pcr0]}}, "errors": {"admission.golden_pcrs.sha256 must be an object of PCR index to values"}},
	{"name": "PCR index out of range", "admission": {"golden_pcrs": {"sha256": {"24": pcr0}}}, "errors": {"admission.golden_pcrs.sha256: PCR index \"24\" is not 0-23"}},
	{"name": "PCR index with leading zero", "admission": {"golden_pcrs": {"sha256": {"07": pcr0}}}, "errors": {"admission.golden_pcrs.sha256: PCR index \"07\" is not 0-23"}},
	{"name": "sha1 value with sha256 length", "admission": {"golden_pcrs": {"sha1": {"0": pcr0}}}, "errors": {"admission.golden_pcrs.sha1.0 must be a 40-digit hex string or a non-empty array of them"}},
	{"name": "empty list of values", "admission": {"golden_pcrs": {"sha256": {"0": []}}}, "errors": {"admission.golden_pcrs.sha256.0 must be a 64-digit hex string or a non-empty array of them"}},
	{"name": "non-hex value", "admission": {"golden_pcrs": {"sha256": {"0": concat("", ["zz", substring(pcr0, 2, -1)])}}}, "errors": {"admission.golden_pcrs.sha256.0 must be a 64-digit hex string or a non-empty array of them"}},
]

test_data_errors_table if {
	failures := {c.name: got |
		some c in data_cases
		got := admission.errors with data.zfaas.config as {"admission": c.admission}
		got != c.errors
	}
	_report(failures)
	count(failures) == 0
}

_report(failures) if count(failures) == 0

_report(failures) if {
	count(failures) > 0
	print("failing cases:", failures)
}
