package zfaas.invoke_test

import data.zfaas.invoke

config := {
	"trust_domain": "zfaas.local",
	"admins": ["spiffe://zfaas.local/user/admin"],
	"grants": {
		"acme/hello": [
			"spiffe://zfaas.local/ns/globex/fn/report",
			"spiffe://partner.example/payments",
		],
		"acme/*": ["spiffe://zfaas.local/user/auditor"],
		"globex/broken": "spiffe://zfaas.local/user/bob",
	},
}

hello := {"tenant": "acme", "name": "hello", "version": 3, "qualifier": "live"}

billing := {"tenant": "acme", "name": "billing", "version": 1, "qualifier": "$LATEST"}

request := {
	"protocol": "http",
	"method": "POST",
	"path": "/v1/functions/hello:live/invoke",
	"tls": {"protocol": "TLS1.3", "cipher_suite": "TLS_AES_128_GCM_SHA256"},
	"headers": {"content-type": "application/json"},
	"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
}

x509(id) := {"spiffe_id": id, "authenticated": true, "auth_method": "x509"}

call(c, f) := {"caller": c, "function": f, "action": "invoke", "request": request, "time_ns": 1700000000000000000}

# Each case: input, the expected allow, and substrings that must each appear
# in some reason.
cases := [
	# Allowed.
	{
		"name": "admin invokes another tenant's function",
		"input": call(object.union(x509("spiffe://zfaas.local/user/admin"), {"kind": "user"}), {"tenant": "globex", "name": "report"}),
		"allow": true, "reasons": ["caller is an admin"],
	},
	{
		"name": "admin with a JWT-SVID",
		"input": call({"spiffe_id": "spiffe://zfaas.local/user/admin", "authenticated": true, "auth_method": "jwt"}, hello),
		"allow": true, "reasons": ["caller is an admin"],
	},
	{
		"name": "function invokes a function of its own tenant",
		"input": call(x509("spiffe://zfaas.local/ns/acme/fn/billing"), hello),
		"allow": true, "reasons": ["caller belongs to tenant \"acme\""],
	},
	{
		"name": "function with full caller fields",
		"input": call(
			{"spiffe_id": "spiffe://zfaas.local/ns/acme/fn/billing", "authenticated": true, "auth_method": "x509", "kind": "function", "tenant": "acme", "name": "billing"},
			hello,
		),
		"allow": true, "reasons": ["caller belongs to tenant \"acme\""],
	},
	{
		"name": "user of the tenant",
		"input": call({"spiffe_id": "spiffe://zfaas.local/user/alice", "authenticated": true, "auth_method": "jwt", "kind": "user", "tenant": "acme", "name": "alice"}, hello),
		"allow": true, "reasons": ["caller belongs to tenant \"acme\""],
	},
	{
		"name": "granted function of another tenant",
		"input": call(x509("spiffe://zfaas.local/ns/globex/fn/report"), hello),
		"allow": true, "reasons": ["caller is granted acme/hello"],
	},
	{
		"name": "granted workload of a federated trust domain",
		"input": call(x509("spiffe://partner.example/payments"), hello),
		"allow": true, "reasons": ["caller is granted acme/hello"],
	},
	{
		"name": "tenant-wide grant",
		"input": call(x509("spiffe://zfaas.local/user/auditor"), billing),
		"allow": true, "reasons": ["caller is granted acme/*"],
	},
	# Denied.
	{
		"name": "no caller at all",
		"input": {"function": hello, "action": "invoke"},
		"allow": false, "reasons": ["caller is not authenticated (no verified X.509-SVID or JWT-SVID)"],
	},
	{
		"name": "empty input",
		"input": {},
		"allow": false, "reasons": ["caller is not authenticated", "action \"\" is not \"invoke\"", "function tenant \"\"", "function name \"\""],
	},
	{
		"name": "anonymous caller",
		"input": call({"spiffe_id": "", "authenticated": false, "auth_method": "none", "kind": "anonymous"}, hello),
		"allow": false, "reasons": ["caller is not authenticated"],
	},
	{
		"name": "admin ID without authentication",
		"input": call({"spiffe_id": "spiffe://zfaas.local/user/admin", "authenticated": false, "auth_method": "none"}, hello),
		"allow": false, "reasons": ["caller \"spiffe://zfaas.local/user/admin\" is not authenticated"],
	},
	{
		"name": "admin ID claiming authentication with method none",
		"input": call({"spiffe_id": "spiffe://zfaas.local/user/admin", "authenticated": true, "auth_method": "none"}, hello),
		"allow": false, "reasons": ["auth_method is \"none\""],
	},
	{
		"name": "function of another tenant, not granted",
		"input": call(x509("spiffe://zfaas.local/ns/globex/fn/other"), hello),
		"allow": false, "reasons": ["spiffe://zfaas.local/ns/globex/fn/other may not invoke acme/hello"],
	},
	{
		"name": "grant for one function does not cover another",
		"input": call(x509("spiffe://zfaas.local/ns/globex/fn/report"), billing),
		"allow": false, "reasons": ["may not invoke acme/billing"],
	},
	{
		"name": "granted ID without authentication",
		"input": call({"spiffe_id": "spiffe://zfaas.local/ns/globex/fn/report", "authenticated": false, "auth_method": "none"}, hello),
		"allow": false, "reasons": ["is not authenticated"],
	},
	{
		"name": "same tenant path in a foreign trust domain",
		"input": call(x509("spiffe://evil.example/ns/acme/fn/billing"), hello),
		"allow": false, "reasons": ["may not invoke acme/hello"],
	},
	{
		"name": "caller claims a tenant its ID contradicts",
		"input": call(object.union(x509("spiffe://zfaas.local/ns/globex/fn/other"), {"tenant": "acme"}), hello),
		"allow": false, "reasons": ["caller tenant \"acme\" does not match"],
	},
	{
		"name": "caller claims a kind its ID contradicts",
		"input": call(object.union(x509("spiffe://zfaas.local/ns/acme/fn/billing"), {"kind": "gateway"}), hello),
		"allow": false, "reasons": ["caller kind \"gateway\" does not match"],
	},
	{
		"name": "user without a tenant",
		"input": call({"spiffe_id": "spiffe://zfaas.local/user/alice", "authenticated": true, "auth_method": "jwt", "kind": "user"}, hello),
		"allow": false, "reasons": ["may not invoke acme/hello"],
	},
	{
		"name": "user tenant differs only in case",
		"input": call({"spiffe_id": "spiffe://zfaas.local/user/alice", "authenticated": true, "auth_method": "jwt", "kind": "user", "tenant": "ACME"}, hello),
		"allow": false, "reasons": ["caller tenant \"ACME\" is not a valid tenant name"],
	},
	{
		"name": "worker is not in any tenant",
		"input": call(x509("spiffe://zfaas.local/worker/w1"), hello),
		"allow": false, "reasons": ["may not invoke acme/hello"],
	},
	{
		"name": "malformed admin ID",
		"input": call(x509("spiffe://zfaas.local/user/admin/"), hello),
		"allow": false, "reasons": ["is malformed", "is not authenticated"],
	},
	{
		"name": "admin may not use the invoke policy for another action",
		"input": object.union(call(x509("spiffe://zfaas.local/user/admin"), hello), {"action": "deploy"}),
		"allow": false, "reasons": ["action \"deploy\" is not \"invoke\""],
	},
	{
		"name": "missing action",
		"input": object.remove(call(x509("spiffe://zfaas.local/user/admin"), hello), {"action"}),
		"allow": false, "reasons": ["action \"\" is not \"invoke\""],
	},
	{
		"name": "function name cannot reach a tenant-wide grant",
		"input": call(x509("spiffe://zfaas.local/user/auditor"), {"tenant": "acme", "name": "*"}),
		"allow": false, "reasons": ["function name \"*\" is not a valid function name"],
	},
	{
		"name": "function without tenant",
		"input": call(x509("spiffe://zfaas.local/user/admin"), {"name": "hello"}),
		"allow": false, "reasons": ["function tenant \"\" is not a valid tenant name"],
	},
	{
		"name": "function is not an object",
		"input": call(x509("spiffe://zfaas.local/user/admin"), "acme/hello"),
		"allow": false, "reasons": ["function tenant \"\"", "function name \"\""],
	},
	{
		"name": "grant list of the wrong type grants nothing",
		"input": call(x509("spiffe://zfaas.local/user/bob"), {"tenant": "globex", "name": "broken"}),
		"allow": false, "reasons": ["may not invoke globex/broken"],
	},
]

_decide(c) := d if {
	d := invoke.decision with input as c.input with data.zfaas.config as config
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

test_invoke_table if {
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

test_table_covers_allow_and_deny if {
	some a in cases
	a.allow
	some d in cases
	not d.allow
}

test_deny_by_default_without_config if {
	d := invoke.decision with input as call(x509("spiffe://zfaas.local/user/admin"), hello)
		with data.zfaas.config as {}
	d.allow == false
	d.reasons == ["spiffe://zfaas.local/user/admin may not invoke acme/hello: not an admin, not in tenant \"acme\", and not granted"]
}

test_deny_reasons_are_all_listed if {
	d := invoke.decision with input as {"caller": x509("spiffe://zfaas.local/user/admin/"), "function": {"tenant": "Acme"}, "action": "call"}
		with data.zfaas.config as config
	d.allow == false
	count(d.reasons) == 5
}

# Data validation: each case is a grants object and the errors wanted.
data_cases := [
	{"name": "valid", "grants": {"acme/hello": ["spiffe://zfaas.local/user/bob"], "acme/*": []}, "errors": set()},
	{"name": "empty", "grants": {}, "errors": set()},
	{"name": "not an object", "grants": [], "errors": {"grants must be an object of \"tenant/function\" to SPIFFE IDs"}},
	{"name": "bad key", "grants": {"*/*": []}, "errors": {"grants[\"*/*\"]: key must be \"tenant/function\" or \"tenant/*\""}},
	{"name": "value not an array", "grants": {"acme/hello": "spiffe://zfaas.local/user/bob"}, "errors": {"grants[\"acme/hello\"]: must be an array of SPIFFE IDs"}},
	{"name": "bad ID", "grants": {"acme/hello": ["bob"]}, "errors": {"grants[\"acme/hello\"]: \"bob\" is not a valid SPIFFE ID"}},
]

test_data_errors_table if {
	failures := {c.name: got |
		some c in data_cases
		got := invoke.errors with data.zfaas.config as {"grants": c.grants}
		got != c.errors
	}
	_report(failures)
	count(failures) == 0
}

test_errors_of_the_test_config if {
	invoke.errors == {"grants[\"globex/broken\"]: must be an array of SPIFFE IDs"} with data.zfaas.config as config
}

_report(failures) if count(failures) == 0

_report(failures) if {
	count(failures) > 0
	print("failing cases:", failures)
}
