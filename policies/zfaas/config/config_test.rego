# Tests of the data document shipped in data.json (data.zfaas.config).
#
# test_data_is_valid must hold for any data a deployment uses: it fails when
# an entry is malformed, before a malformed entry can silently grant less
# (or, through a bug, more) than intended.
#
# The other tests pin the documented defaults. When you change data.json on
# purpose, change the expectations here and docs/policy.md in the same
# review, so the reviewer approves the change in behaviour, not just a JSON
# diff.
package zfaas.config_test

import data.zfaas.admission
import data.zfaas.deploy
import data.zfaas.egress
import data.zfaas.invoke
import data.zfaas.lib.caller
import data.zfaas.log.mask

test_data_is_valid if {
	problems := {"identity": caller.errors, "grants": invoke.errors, "deploy": deploy.errors, "egress": egress.errors, "admission": admission.errors, "log": mask.errors}
	failures := {name: errs | some name, errs in problems; count(errs) > 0}
	_report(failures)
	count(failures) == 0
}

test_defaults_as_documented if {
	data.zfaas.config == {
		"trust_domain": "zfaas.local",
		"admins": ["spiffe://zfaas.local/user/admin"],
		"grants": {},
		"deploy": {
			"runtimes": ["provided", "go", "python3", "nodejs"],
			"max_memory_mb": 10240,
			"max_timeout_seconds": 900,
			"max_concurrency": 1000,
			"tenants": {},
		},
		"egress": {},
		"admission": {"allow_join_token": false, "ek_fingerprints": [], "golden_pcrs": {}},
		"log": {"extra_mask": []},
	}
}

x509(id) := {"spiffe_id": id, "authenticated": true, "auth_method": "x509"}

alice := {"spiffe_id": "spiffe://zfaas.local/user/alice", "authenticated": true, "auth_method": "jwt", "kind": "user", "tenant": "acme"}

test_default_invoke if {
	hello := {"tenant": "acme", "name": "hello"}
	invoke.decision.allow with input as {"caller": x509("spiffe://zfaas.local/ns/acme/fn/billing"), "function": hello, "action": "invoke"}
	not invoke.decision.allow with input as {"caller": x509("spiffe://zfaas.local/ns/globex/fn/report"), "function": hello, "action": "invoke"}
	invoke.decision == {"allow": true, "reasons": ["caller is an admin"]} with input as {"caller": x509("spiffe://zfaas.local/user/admin"), "function": {"tenant": "globex", "name": "report"}, "action": "invoke"}
}

test_default_deploy if {
	ok := {"runtime": "go", "memoryMB": 128, "timeoutSeconds": 30, "maxConcurrency": 10}
	req := {"caller": alice, "function": {"tenant": "acme", "name": "hello"}, "action": "deploy", "config": ok}
	deploy.decision.allow with input as req
	not deploy.decision.allow with input as object.union(req, {"config": {"runtime": "java"}})
	not deploy.decision.allow with input as object.union(req, {"config": {"memoryMB": 10241}})
}

test_default_egress_denies_everything if {
	egress.rules == [] with input as {"function": {"tenant": "acme", "name": "hello"}}
}

test_default_admission_refuses_join_tokens if {
	d := admission.decision with input as {"node": "dev-1", "method": "join_token"}
	d.allow == false
}

test_default_admission_checks_no_pcrs if {
	d := admission.decision with input as {
		"node": "w1", "method": "tpm",
		"ek": {"fingerprint": "sha256:cbe2b2e4772717a1778023f4f40e54d24147f3793326abec70288f3f5e2589f7", "chain_verified": true},
		"ak": {"fixed_tpm": true, "restricted": true, "sign": true},
		"quote": {"verified": true, "nonce_fresh": true},
		"pcrs": {"sha256": {}},
	}
	d.allow == true
	"no golden PCR values configured: PCRs were not checked" in d.reasons
}

test_default_mask if {
	mask.mask == mask.always
}

_report(failures) if count(failures) == 0

_report(failures) if {
	count(failures) > 0
	print("failing:", failures)
}

# Only verified credentials authenticate: an auth method the gateway never
# sets (such as the removed "local" development shortcut) does not.
test_unknown_auth_method_does_not_authenticate if {
	admin := {"spiffe_id": "spiffe://zfaas.local/user/admin", "authenticated": true, "kind": "user"}
	fn := {"tenant": "acme", "name": "hello"}
	invoke.decision.allow with input as {"caller": object.union(admin, {"auth_method": "x509"}), "function": fn, "action": "invoke"}
	not invoke.decision.allow with input as {"caller": object.union(admin, {"auth_method": "local"}), "function": fn, "action": "invoke"}
}
