package zfaas.lib.spiffe_test

import data.zfaas.lib.spiffe

# Each case names an ID and what parse should return; "want": null means
# parse must be undefined (and valid false).
parse_cases := [
	{
		"name": "function",
		"id": "spiffe://zfaas.local/ns/acme/fn/billing",
		"want": {"id": "spiffe://zfaas.local/ns/acme/fn/billing", "trust_domain": "zfaas.local", "path": "/ns/acme/fn/billing", "kind": "function", "tenant": "acme", "name": "billing"},
	},
	{
		"name": "user",
		"id": "spiffe://zfaas.local/user/admin",
		"want": {"id": "spiffe://zfaas.local/user/admin", "trust_domain": "zfaas.local", "path": "/user/admin", "kind": "user", "tenant": "", "name": "admin"},
	},
	{
		"name": "worker",
		"id": "spiffe://zfaas.local/worker/w1",
		"want": {"id": "spiffe://zfaas.local/worker/w1", "trust_domain": "zfaas.local", "path": "/worker/w1", "kind": "worker", "tenant": "", "name": "w1"},
	},
	{
		"name": "gateway",
		"id": "spiffe://zfaas.local/gateway/gw-0",
		"want": {"id": "spiffe://zfaas.local/gateway/gw-0", "trust_domain": "zfaas.local", "path": "/gateway/gw-0", "kind": "gateway", "tenant": "", "name": "gw-0"},
	},
	{
		"name": "policyd",
		"id": "spiffe://zfaas.local/policyd/p1",
		"want": {"id": "spiffe://zfaas.local/policyd/p1", "trust_domain": "zfaas.local", "path": "/policyd/p1", "kind": "policyd", "tenant": "", "name": "p1"},
	},
	{
		"name": "foreign layout is other",
		"id": "spiffe://partner.example/payments/api",
		"want": {"id": "spiffe://partner.example/payments/api", "trust_domain": "partner.example", "path": "/payments/api", "kind": "other", "tenant": "", "name": ""},
	},
	{
		"name": "function with extra segment is other",
		"id": "spiffe://zfaas.local/ns/acme/fn/billing/v2",
		"want": {"id": "spiffe://zfaas.local/ns/acme/fn/billing/v2", "trust_domain": "zfaas.local", "path": "/ns/acme/fn/billing/v2", "kind": "other", "tenant": "", "name": ""},
	},
	{
		"name": "upper-case tenant is not a function",
		"id": "spiffe://zfaas.local/ns/ACME/fn/billing",
		"want": {"id": "spiffe://zfaas.local/ns/ACME/fn/billing", "trust_domain": "zfaas.local", "path": "/ns/ACME/fn/billing", "kind": "other", "tenant": "", "name": ""},
	},
	{
		"name": "unknown single-segment kind is other",
		"id": "spiffe://zfaas.local/robot/r2",
		"want": {"id": "spiffe://zfaas.local/robot/r2", "trust_domain": "zfaas.local", "path": "/robot/r2", "kind": "other", "tenant": "", "name": ""},
	},
	{"name": "empty string", "id": "", "want": null},
	{"name": "not a string", "id": 42, "want": null},
	{"name": "null", "id": null, "want": null},
	{"name": "wrong scheme", "id": "https://zfaas.local/user/admin", "want": null},
	{"name": "upper-case scheme", "id": "SPIFFE://zfaas.local/user/admin", "want": null},
	{"name": "trust domain only", "id": "spiffe://zfaas.local", "want": null},
	{"name": "trailing slash", "id": "spiffe://zfaas.local/user/admin/", "want": null},
	{"name": "empty segment", "id": "spiffe://zfaas.local/ns//fn/x", "want": null},
	{"name": "dot segment", "id": "spiffe://zfaas.local/ns/acme/fn/.", "want": null},
	{"name": "dot-dot segment", "id": "spiffe://zfaas.local/ns/acme/../user/admin", "want": null},
	{"name": "upper-case trust domain", "id": "spiffe://ZFAAS.local/user/admin", "want": null},
	{"name": "port in trust domain", "id": "spiffe://zfaas.local:8443/user/admin", "want": null},
	{"name": "user info", "id": "spiffe://eve@zfaas.local/user/admin", "want": null},
	{"name": "query", "id": "spiffe://zfaas.local/user/admin?x=1", "want": null},
	{"name": "fragment", "id": "spiffe://zfaas.local/user/admin#x", "want": null},
	{"name": "percent-encoded", "id": "spiffe://zfaas.local/user/ad%6Din", "want": null},
	{"name": "whitespace", "id": "spiffe://zfaas.local/user/admin ", "want": null},
	{"name": "too long", "id": concat("", ["spiffe://zfaas.local/user/", concat("", [x | some _ in numbers.range(1, 2030); x := "a"])]), "want": null},
]

_parse_ok(c) if {
	c.want == null
	not spiffe.parse(c.id)
	not spiffe.valid(c.id)
}

_parse_ok(c) if {
	c.want != null
	spiffe.valid(c.id)
	spiffe.parse(c.id) == c.want
}

_parsed(id) := p if {
	p := spiffe.parse(id)
} else := "undefined"

test_parse_table if {
	failures := {c.name: got |
		some c in parse_cases
		not _parse_ok(c)
		got := _parsed(c.id)
	}
	_report(failures)
	count(failures) == 0
}

test_parse_table_names_unique if {
	count({c.name | some c in parse_cases}) == count(parse_cases)
}

test_longest_id_accepted if {
	id := concat("", ["spiffe://zfaas.local/user/", concat("", [x | some _ in numbers.range(1, 2048 - 26); x := "a"])])
	count(id) == 2048
	spiffe.valid(id)
}

test_helpers if {
	spiffe.kind("spiffe://zfaas.local/ns/acme/fn/billing") == "function"
	spiffe.tenant("spiffe://zfaas.local/ns/acme/fn/billing") == "acme"
	spiffe.tenant("spiffe://zfaas.local/user/admin") == ""
	spiffe.trust_domain("spiffe://zfaas.local/user/admin") == "zfaas.local"
	not spiffe.kind("spiffe://zfaas.local")
	spiffe.function_id("zfaas.local", "acme", "hello") == "spiffe://zfaas.local/ns/acme/fn/hello"
	spiffe.parse(spiffe.function_id("zfaas.local", "acme", "hello")).kind == "function"
}

test_valid_name_table if {
	good := ["a", "acme", "a-b", "0", "x1", concat("", [x | some _ in numbers.range(1, 64); x := "a"])]
	bad := ["", "-a", "a-", "A", "a_b", "a.b", "a/b", "*", " a", 7, null, concat("", [x | some _ in numbers.range(1, 65); x := "a"])]
	failures := {n | some n in good; not spiffe.valid_name(n)} | {n | some n in bad; spiffe.valid_name(n)}
	_report(failures)
	count(failures) == 0
}

test_valid_segment_table if {
	good := ["w1", "worker-01.dc1", "Alice_Smith", "..."]
	bad := ["", ".", "..", "a/b", "a b", "a@b", "ü", 1, null]
	failures := {n | some n in good; not spiffe.valid_segment(n)} | {n | some n in bad; spiffe.valid_segment(n)}
	_report(failures)
	count(failures) == 0
}

test_valid_trust_domain_table if {
	good := ["zfaas.local", "example.org", "td_1", "a"]
	bad := ["", "Zfaas.local", "zfaas.local:443", "zfaas.local/x", "spiffe://zfaas.local", 1, null]
	failures := {n | some n in good; not spiffe.valid_trust_domain(n)} | {n | some n in bad; spiffe.valid_trust_domain(n)}
	_report(failures)
	count(failures) == 0
}

test_valid_function_key_table if {
	good := ["acme/hello", "acme/*", "a/b"]
	bad := ["acme", "acme/", "/hello", "*/*", "*/hello", "acme/hello/x", "Acme/hello", "acme/**", "acme/h*", "", 1]
	failures := {n | some n in good; not spiffe.valid_function_key(n)} | {n | some n in bad; spiffe.valid_function_key(n)}
	_report(failures)
	count(failures) == 0
}

_report(failures) if count(failures) == 0

_report(failures) if {
	count(failures) > 0
	print("failing cases:", failures)
}
