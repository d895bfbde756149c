package zfaas.lib.caller_test

import data.zfaas.lib.caller

config := {
	"trust_domain": "zfaas.local",
	"admins": ["spiffe://zfaas.local/user/admin"],
}

# Each case gives input.caller and the expected resolution. "problems" lists
# substrings that must each appear in some problem; an empty list means no
# problem at all.
cases := [
	{
		"name": "function derives kind and tenant from its ID",
		"caller": {"spiffe_id": "spiffe://zfaas.local/ns/acme/fn/billing", "authenticated": true, "auth_method": "x509"},
		"want": {"kind": "function", "tenant": "acme", "authenticated": true, "local": true, "admin": false, "ok": true},
		"problems": [],
	},
	{
		"name": "function with consistent input fields",
		"caller": {"spiffe_id": "spiffe://zfaas.local/ns/acme/fn/billing", "authenticated": true, "auth_method": "jwt", "kind": "function", "tenant": "acme", "name": "billing"},
		"want": {"kind": "function", "tenant": "acme", "authenticated": true, "local": true, "admin": false, "ok": true},
		"problems": [],
	},
	{
		"name": "user takes its tenant from input",
		"caller": {"spiffe_id": "spiffe://zfaas.local/user/alice", "authenticated": true, "auth_method": "jwt", "kind": "user", "tenant": "acme"},
		"want": {"kind": "user", "tenant": "acme", "authenticated": true, "local": true, "admin": false, "ok": true},
		"problems": [],
	},
	{
		"name": "user without tenant",
		"caller": {"spiffe_id": "spiffe://zfaas.local/user/alice", "authenticated": true, "auth_method": "x509"},
		"want": {"kind": "user", "tenant": "", "authenticated": true, "local": true, "admin": false, "ok": true},
		"problems": [],
	},
	{
		"name": "admin",
		"caller": {"spiffe_id": "spiffe://zfaas.local/user/admin", "authenticated": true, "auth_method": "x509", "kind": "user"},
		"want": {"kind": "user", "tenant": "", "authenticated": true, "local": true, "admin": true, "ok": true},
		"problems": [],
	},
	{
		"name": "admin ID that is not authenticated is no admin",
		"caller": {"spiffe_id": "spiffe://zfaas.local/user/admin", "authenticated": false, "auth_method": "none", "kind": "user"},
		"want": {"kind": "user", "tenant": "", "authenticated": false, "local": true, "admin": false, "ok": false},
		"problems": [],
	},
	{
		"name": "admin ID with auth_method none is inconsistent",
		"caller": {"spiffe_id": "spiffe://zfaas.local/user/admin", "authenticated": true, "auth_method": "none"},
		"want": {"kind": "user", "tenant": "", "authenticated": false, "local": true, "admin": false, "ok": false},
		"problems": ["auth_method is \"none\""],
	},
	{
		"name": "authenticated without auth_method",
		"caller": {"spiffe_id": "spiffe://zfaas.local/user/admin", "authenticated": true},
		"want": {"kind": "user", "tenant": "", "authenticated": false, "local": true, "admin": false, "ok": false},
		"problems": ["auth_method is \"\""],
	},
	{
		"name": "authenticated must be the boolean true",
		"caller": {"spiffe_id": "spiffe://zfaas.local/user/admin", "authenticated": "true", "auth_method": "x509"},
		"want": {"kind": "user", "tenant": "", "authenticated": false, "local": true, "admin": false, "ok": false},
		"problems": [],
	},
	{
		"name": "foreign trust domain is not local",
		"caller": {"spiffe_id": "spiffe://partner.example/ns/acme/fn/billing", "authenticated": true, "auth_method": "x509"},
		"want": {"kind": "function", "tenant": "acme", "authenticated": true, "local": false, "admin": false, "ok": true},
		"problems": [],
	},
	{
		"name": "foreign layout is kind other",
		"caller": {"spiffe_id": "spiffe://partner.example/payments", "authenticated": true, "auth_method": "x509"},
		"want": {"kind": "other", "tenant": "", "authenticated": true, "local": false, "admin": false, "ok": true},
		"problems": [],
	},
	{
		"name": "kind unknown is treated as absent",
		"caller": {"spiffe_id": "spiffe://partner.example/payments", "authenticated": true, "auth_method": "x509", "kind": "unknown"},
		"want": {"kind": "other", "tenant": "", "authenticated": true, "local": false, "admin": false, "ok": true},
		"problems": [],
	},
	{
		"name": "kind unknown for a zfaas ID",
		"caller": {"spiffe_id": "spiffe://zfaas.local/ns/acme/fn/billing", "authenticated": true, "auth_method": "x509", "kind": "unknown"},
		"want": {"kind": "function", "tenant": "acme", "authenticated": true, "local": true, "admin": false, "ok": true},
		"problems": [],
	},
	{
		"name": "kind other claimed for a zfaas ID",
		"caller": {"spiffe_id": "spiffe://zfaas.local/user/alice", "authenticated": true, "auth_method": "x509", "kind": "other"},
		"want": {"kind": "other", "tenant": "", "authenticated": true, "local": true, "admin": false, "ok": false},
		"problems": ["caller kind \"other\" does not match"],
	},
	{
		"name": "kind contradicts ID",
		"caller": {"spiffe_id": "spiffe://zfaas.local/ns/acme/fn/billing", "authenticated": true, "auth_method": "x509", "kind": "user"},
		"want": {"kind": "user", "tenant": "acme", "authenticated": true, "local": true, "admin": false, "ok": false},
		"problems": ["caller kind \"user\" does not match"],
	},
	{
		"name": "tenant contradicts ID",
		"caller": {"spiffe_id": "spiffe://zfaas.local/ns/acme/fn/billing", "authenticated": true, "auth_method": "x509", "tenant": "globex"},
		"want": {"kind": "function", "tenant": "globex", "authenticated": true, "local": true, "admin": false, "ok": false},
		"problems": ["caller tenant \"globex\" does not match"],
	},
	{
		"name": "unknown kind",
		"caller": {"spiffe_id": "spiffe://zfaas.local/user/alice", "authenticated": true, "auth_method": "x509", "kind": "root"},
		"want": {"kind": "root", "tenant": "", "authenticated": true, "local": true, "admin": false, "ok": false},
		"problems": ["caller kind \"root\" is not one of"],
	},
	{
		"name": "invalid tenant name",
		"caller": {"spiffe_id": "spiffe://zfaas.local/user/alice", "authenticated": true, "auth_method": "x509", "tenant": "acme/*"},
		"want": {"kind": "user", "tenant": "acme/*", "authenticated": true, "local": true, "admin": false, "ok": false},
		"problems": ["not a valid tenant name"],
	},
	{
		"name": "malformed ID",
		"caller": {"spiffe_id": "spiffe://zfaas.local/user/../admin", "authenticated": true, "auth_method": "x509"},
		"want": {"kind": "anonymous", "tenant": "", "authenticated": false, "local": false, "admin": false, "ok": false},
		"problems": ["is malformed"],
	},
	{
		"name": "authenticated without ID",
		"caller": {"authenticated": true, "auth_method": "jwt", "kind": "user"},
		"want": {"kind": "user", "tenant": "", "authenticated": false, "local": false, "admin": false, "ok": false},
		"problems": ["has no SPIFFE ID"],
	},
	{
		"name": "authenticated anonymous",
		"caller": {"spiffe_id": "spiffe://zfaas.local/user/alice", "authenticated": true, "auth_method": "x509", "kind": "anonymous"},
		"want": {"kind": "anonymous", "tenant": "", "authenticated": false, "local": true, "admin": false, "ok": false},
		"problems": ["kind is anonymous"],
	},
	{
		"name": "anonymous",
		"caller": {"spiffe_id": "", "authenticated": false, "auth_method": "none", "kind": "anonymous"},
		"want": {"kind": "anonymous", "tenant": "", "authenticated": false, "local": false, "admin": false, "ok": false},
		"problems": [],
	},
	{
		"name": "empty caller",
		"caller": {},
		"want": {"kind": "anonymous", "tenant": "", "authenticated": false, "local": false, "admin": false, "ok": false},
		"problems": [],
	},
	{
		"name": "caller not an object",
		"caller": "spiffe://zfaas.local/user/admin",
		"want": {"kind": "anonymous", "tenant": "", "authenticated": false, "local": false, "admin": false, "ok": false},
		"problems": [],
	},
]

_resolve(c) := got if {
	got := {
		"kind": caller.kind,
		"tenant": caller.tenant,
		"authenticated": caller.authenticated,
		"local": caller.local,
		"admin": caller.admin,
		"ok": caller.ok,
		"problems": caller.problems,
	} with input as {"caller": c.caller}
		with data.zfaas.config as config
}

_ok(c, got) if {
	object.remove(got, {"problems"}) == c.want
	count(c.problems) == 0
	count(got.problems) == 0
}

_ok(c, got) if {
	count(c.problems) > 0
	object.remove(got, {"problems"}) == c.want
	every want in c.problems {
		some p in got.problems
		contains(p, want)
	}
}

test_resolve_table if {
	failures := {c.name: got |
		some c in cases
		got := _resolve(c)
		not _ok(c, got)
	}
	_report(failures)
	count(failures) == 0
}

test_cases_cover_every_case if {
	count({c.name | some c in cases}) == count(cases)
	count({c.name | some c in cases; _resolve(c)}) == count(cases)
}

test_no_input_at_all if {
	caller.kind == "anonymous" with input as {} with data.zfaas.config as config
	not caller.ok with input as {} with data.zfaas.config as config
	caller.display == "anonymous caller" with input as {} with data.zfaas.config as config
}

test_no_config_means_no_admin_and_nothing_local if {
	req := {"caller": {"spiffe_id": "spiffe://zfaas.local/user/admin", "authenticated": true, "auth_method": "x509"}}
	caller.ok with input as req with data.zfaas.config as {}
	not caller.admin with input as req with data.zfaas.config as {}
	not caller.local with input as req with data.zfaas.config as {}
}

test_unauthenticated_reason if {
	caller.unauthenticated_reason == "caller is not authenticated (no verified X.509-SVID or JWT-SVID)" with input as {} with data.zfaas.config as config
	r := caller.unauthenticated_reason with input as {"caller": {"spiffe_id": "spiffe://zfaas.local/user/bob"}} with data.zfaas.config as config
	r == "caller \"spiffe://zfaas.local/user/bob\" is not authenticated"
}

# Data validation: each case is a config and the errors wanted.
data_cases := [
	{"name": "valid", "config": config, "errors": set()},
	{"name": "trust domain missing", "config": {"admins": []}, "errors": {"trust_domain null is not a trust domain name such as \"zfaas.local\""}},
	{"name": "trust domain with scheme", "config": {"trust_domain": "spiffe://zfaas.local"}, "errors": {"trust_domain \"spiffe://zfaas.local\" is not a trust domain name such as \"zfaas.local\""}},
	{"name": "admins not an array", "config": {"trust_domain": "zfaas.local", "admins": "spiffe://zfaas.local/user/admin"}, "errors": {"admins must be an array of SPIFFE IDs"}},
	{
		"name": "admin entries malformed",
		"config": {"trust_domain": "zfaas.local", "admins": ["spiffe://zfaas.local/user/admin", "admin", "spiffe://zfaas.local/user/*"]},
		"errors": {"admins: \"admin\" is not a valid SPIFFE ID", "admins: \"spiffe://zfaas.local/user/*\" is not a valid SPIFFE ID"},
	},
]

test_data_errors_table if {
	failures := {c.name: got |
		some c in data_cases
		got := caller.errors with data.zfaas.config as c.config
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
