package zfaas.egress_test

import data.zfaas.egress

dns := {"cidrs": ["10.0.53.0/24"], "ports": [53], "protocol": "udp"}

stripe := {"hosts": ["api.stripe.example"], "ports": [443], "protocol": "tcp", "sni": ["api.stripe.example"]}

partners := {"cidrs": ["203.0.113.0/24", "2001:db8::/32"], "ports": [443, 8443], "protocol": "tcp"}

config := {
	"trust_domain": "zfaas.local",
	"egress": {
		"acme/*": [dns],
		"acme/billing": [stripe, partners],
		"acme/locked": [],
		"acme/mixed": [partners, {"cidrs": ["0.0.0.0/0"], "ports": [0], "protocol": "tcp"}],
		"globex/report": {"cidrs": ["198.51.100.0/24"], "ports": [443], "protocol": "tcp"},
	},
}

fn(tenant, name) := {"function": {"tenant": tenant, "name": name, "version": 1, "qualifier": "live"}}

# Each case: the function asked about, the rules expected and the data key
# they come from.
cases := [
	{
		"name": "function entry, normalised",
		"input": fn("acme", "billing"),
		"source": "acme/billing",
		"want": [
			{"cidrs": [], "hosts": ["api.stripe.example"], "ports": [443], "protocol": "tcp", "sni": ["api.stripe.example"]},
			{"cidrs": ["203.0.113.0/24", "2001:db8::/32"], "hosts": [], "ports": [443, 8443], "protocol": "tcp", "sni": []},
		],
	},
	{
		"name": "tenant default when the function has no entry",
		"input": fn("acme", "hello"),
		"source": "acme/*",
		"want": [{"cidrs": ["10.0.53.0/24"], "hosts": [], "ports": [53], "protocol": "udp", "sni": []}],
	},
	{"name": "empty function entry overrides the tenant default", "input": fn("acme", "locked"), "source": "acme/locked", "want": []},
	{"name": "invalid rule is dropped, valid ones kept", "input": fn("acme", "mixed"), "source": "acme/mixed", "want": [{"cidrs": ["203.0.113.0/24", "2001:db8::/32"], "hosts": [], "ports": [443, 8443], "protocol": "tcp", "sni": []}]},
	{"name": "entry that is not an array gives nothing", "input": fn("globex", "report"), "source": "globex/report", "want": []},
	{"name": "unknown tenant", "input": fn("initech", "hello"), "source": "", "want": []},
	{"name": "function named * is not the tenant default", "input": fn("acme", "*"), "source": "", "want": []},
	{"name": "tenant with a slash", "input": fn("acme/billing", "x"), "source": "", "want": []},
	{"name": "function without name", "input": {"function": {"tenant": "acme"}}, "source": "", "want": []},
	{"name": "function not an object", "input": {"function": "acme/billing"}, "source": "", "want": []},
	{"name": "no input", "input": {}, "source": "", "want": []},
]

_eval(c) := {"rules": r, "source": s} if {
	r := egress.rules with input as c.input with data.zfaas.config as config
	s := egress.source with input as c.input with data.zfaas.config as config
}

test_rules_table if {
	failures := {c.name: got |
		some c in cases
		got := _eval(c)
		got != {"rules": c.want, "source": c.source}
	}
	_report(failures)
	count(failures) == 0
}

test_every_case_evaluates if {
	count({c.name | some c in cases}) == count(cases)
	count({c.name | some c in cases; _eval(c)}) == count(cases)
}

# Every rule handed to the worker has exactly the documented shape.
test_output_shape if {
	every c in cases {
		got := egress.rules with input as c.input with data.zfaas.config as config
		is_array(got)
		every r in got {
			object.keys(r) == egress.rule_keys
			r.protocol in egress.protocols
			every k in ["cidrs", "hosts", "ports", "sni"] {
				is_array(r[k])
			}
			count(r.ports) > 0
			count(r.cidrs) + count(r.hosts) > 0
		}
	}
}

# Shape validation of single rules: "errors" lists substrings that must each
# appear in some error; [] means the rule is valid.
rule_cases := [
	{"name": "cidr rule", "rule": partners, "errors": []},
	{"name": "host rule with sni", "rule": stripe, "errors": []},
	{"name": "udp cidr rule", "rule": dns, "errors": []},
	{"name": "wildcard sni", "rule": {"cidrs": ["0.0.0.0/0"], "ports": [443], "protocol": "tcp", "sni": ["*.example.com"]}, "errors": []},
	{"name": "ipv6 cidr", "rule": {"cidrs": ["::/0"], "ports": [443], "protocol": "tcp"}, "errors": []},
	{"name": "lowest and highest port", "rule": {"hosts": ["db.internal"], "ports": [1, 65535], "protocol": "tcp"}, "errors": []},
	{"name": "not an object", "rule": "203.0.113.0/24:443", "errors": ["rule must be an object"]},
	{"name": "empty object", "rule": {}, "errors": ["protocol must be one of", "ports must be a non-empty array", "at least one destination"]},
	{"name": "unknown key", "rule": object.union(partners, {"port": 80}), "errors": ["unknown key \"port\""]},
	{"name": "protocol missing", "rule": object.remove(partners, {"protocol"}), "errors": ["protocol must be one of [\"tcp\", \"udp\"], got null"]},
	{"name": "protocol icmp", "rule": object.union(partners, {"protocol": "icmp"}), "errors": ["got \"icmp\""]},
	{"name": "protocol upper-case", "rule": object.union(partners, {"protocol": "TCP"}), "errors": ["got \"TCP\""]},
	{"name": "ports missing", "rule": object.remove(partners, {"ports"}), "errors": ["ports must be a non-empty array"]},
	{"name": "ports empty", "rule": object.union(partners, {"ports": []}), "errors": ["ports must be a non-empty array"]},
	{"name": "ports not an array", "rule": object.union(partners, {"ports": 443}), "errors": ["ports must be a non-empty array"]},
	{"name": "port zero", "rule": object.union(partners, {"ports": [0]}), "errors": ["port 0 is not an integer in 1-65535"]},
	{"name": "port too high", "rule": object.union(partners, {"ports": [65536]}), "errors": ["port 65536"]},
	{"name": "port as string", "rule": object.union(partners, {"ports": ["443"]}), "errors": ["port \"443\""]},
	{"name": "port fractional", "rule": object.union(partners, {"ports": [443.5]}), "errors": ["port 443.5"]},
	{"name": "port range string", "rule": object.union(partners, {"ports": ["1-1024"]}), "errors": ["port \"1-1024\""]},
	{"name": "cidrs not an array", "rule": object.union(partners, {"cidrs": "203.0.113.0/24"}), "errors": ["cidrs must be an array"]},
	{"name": "bare IP is not a CIDR", "rule": object.union(partners, {"cidrs": ["203.0.113.7"]}), "errors": ["cidrs \"203.0.113.7\" is not a valid CIDR"]},
	{"name": "bad prefix length", "rule": object.union(partners, {"cidrs": ["203.0.113.0/33"]}), "errors": ["is not a valid CIDR"]},
	{"name": "cidr garbage", "rule": object.union(partners, {"cidrs": ["example.com/24"]}), "errors": ["is not a valid CIDR"]},
	{"name": "no destination", "rule": {"cidrs": [], "hosts": [], "ports": [443], "protocol": "tcp"}, "errors": ["at least one destination"]},
	{"name": "hosts not an array", "rule": object.union(stripe, {"hosts": "api.stripe.example"}), "errors": ["hosts must be an array"]},
	{"name": "host wildcard", "rule": object.union(stripe, {"hosts": ["*.stripe.example"]}), "errors": ["hosts \"*.stripe.example\" is not a valid host name"]},
	{"name": "host upper-case", "rule": object.union(stripe, {"hosts": ["API.example.com"]}), "errors": ["is not a valid host name"]},
	{"name": "host is an IP", "rule": object.union(stripe, {"hosts": ["10.0.0.1"]}), "errors": ["hosts \"10.0.0.1\" is not a valid host name"]},
	{"name": "host with port", "rule": object.union(stripe, {"hosts": ["api.example.com:443"]}), "errors": ["is not a valid host name"]},
	{"name": "host with scheme", "rule": object.union(stripe, {"hosts": ["https://api.example.com"]}), "errors": ["is not a valid host name"]},
	{"name": "host trailing dot", "rule": object.union(stripe, {"hosts": ["api.example.com."]}), "errors": ["is not a valid host name"]},
	{"name": "sni not an array", "rule": object.union(stripe, {"sni": "api.stripe.example"}), "errors": ["sni must be an array"]},
	{"name": "sni double wildcard", "rule": object.union(stripe, {"sni": ["*.*.example.com"]}), "errors": ["sni \"*.*.example.com\" is not a valid SNI name"]},
	{"name": "sni bare wildcard", "rule": object.union(stripe, {"sni": ["*"]}), "errors": ["is not a valid SNI name"]},
	{"name": "sni with udp", "rule": object.union(stripe, {"protocol": "udp"}), "errors": ["sni needs protocol \"tcp\""]},
]

_rule_ok(c, got) if {
	count(c.errors) == 0
	count(got) == 0
}

_rule_ok(c, got) if {
	count(c.errors) > 0
	count(got) > 0
	every want in c.errors {
		some e in got
		contains(e, want)
	}
}

test_rule_shape_table if {
	failures := {c.name: got |
		some c in rule_cases
		got := egress.rule_errors(c.rule)
		not _rule_ok(c, got)
	}
	_report(failures)
	count(failures) == 0
}

test_rule_cases_named_uniquely if {
	count({c.name | some c in rule_cases}) == count(rule_cases)
}

test_data_errors_name_entry_and_index if {
	errs := egress.errors with data.zfaas.config as config
	errs == {
		"egress[\"acme/mixed\"][1]: port 0 is not an integer in 1-65535",
		"egress[\"globex/report\"]: must be an array of rules",
	}
}

test_data_errors_bad_keys if {
	cfg := {"egress": {"acme": [], "*/*": [], "acme/billing/x": [], "Acme/*": [], "acme/ok": []}}
	errs := egress.errors with data.zfaas.config as cfg
	errs == {
		"egress[\"acme\"]: key must be \"tenant/function\" or \"tenant/*\"",
		"egress[\"*/*\"]: key must be \"tenant/function\" or \"tenant/*\"",
		"egress[\"acme/billing/x\"]: key must be \"tenant/function\" or \"tenant/*\"",
		"egress[\"Acme/*\"]: key must be \"tenant/function\" or \"tenant/*\"",
	}
}

test_data_errors_egress_not_object if {
	errs := egress.errors with data.zfaas.config as {"egress": []}
	errs == {"egress must be an object of \"tenant/function\" to rules"}
	egress.rules == [] with input as fn("acme", "billing") with data.zfaas.config as {"egress": []}
}

test_deny_by_default_without_config if {
	egress.rules == [] with input as fn("acme", "billing") with data.zfaas.config as {}
	count(egress.errors) == 0 with data.zfaas.config as {}
}

_report(failures) if count(failures) == 0

_report(failures) if {
	count(failures) > 0
	print("failing cases:", failures)
}
