# METADATA
# title: Egress policy
# description: |
#   The network destinations a function's instances may reach, as rules the
#   worker writes into the eBPF maps of those instances. Deny by default:
#   with no rules an instance may open no outbound connection at all.
#   Rules come from data.zfaas.config.egress: the entry "tenant/function"
#   when there is one (even an empty one), else the tenant default
#   "tenant/*", else none. Malformed rules are dropped, never widened, and
#   reported by data.zfaas.egress.errors.
package zfaas.egress

import data.zfaas.lib.spiffe

# Keys a rule may have.
rule_keys := {"cidrs", "hosts", "ports", "protocol", "sni"}

# Transport protocols a rule may name.
protocols := {"tcp", "udp"}

_function := f if {
	f := input.function
	is_object(f)
} else := {}

_tenant := t if {
	t := _function.tenant
	is_string(t)
} else := ""

_name := n if {
	n := _function.name
	is_string(n)
} else := ""

_egress_data := e if {
	e := data.zfaas.config.egress
	is_object(e)
} else := {}

_named if {
	spiffe.valid_name(_tenant)
	spiffe.valid_name(_name)
}

# source is the key of data.zfaas.config.egress the rules come from, "" when
# none applies.
source := key if {
	_named
	key := sprintf("%s/%s", [_tenant, _name])
	_egress_data[key]
} else := key if {
	_named
	key := sprintf("%s/*", [_tenant])
	_egress_data[key]
} else := ""

_raw := r if {
	r := _egress_data[source]
	is_array(r)
} else := []

# METADATA
# title: Egress rules
# description: |
#   [{"cidrs": [string], "hosts": [string], "ports": [number],
#     "protocol": "tcp"|"udp", "sni": [string]}] for input.function, every
#   key always present. Always defined; [] denies all egress.
# entrypoint: true
rules := [normalize(r) | some r in _raw; count(rule_errors(r)) == 0]

# normalize(r) gives a valid rule every key, empty lists for those left out.
normalize(r) := {
	"cidrs": object.get(r, "cidrs", []),
	"hosts": object.get(r, "hosts", []),
	"ports": r.ports,
	"protocol": r.protocol,
	"sni": object.get(r, "sni", []),
}

# rule_errors(r) is the set of problems with one rule, empty when valid:
#   - only the keys in rule_keys;
#   - protocol "tcp" or "udp", stated explicitly;
#   - ports a non-empty array of integers 1-65535;
#   - cidrs (optional) an array of IPv4 or IPv6 CIDRs;
#   - hosts (optional) an array of lower-case DNS names, no wildcards,
#     no IP addresses (use cidrs);
#   - at least one destination in cidrs or hosts;
#   - sni (optional) an array of lower-case DNS names, each optionally
#     starting with "*." (one label), and only with protocol "tcp".
rule_errors(r) := {"rule must be an object"} if {
	not is_object(r)
} else := (((((_key_errors(r) | _protocol_errors(r)) | _port_errors(r)) | _cidr_errors(r)) | _host_errors(r)) | _sni_errors(r)) | _destination_errors(r)

_key_errors(r) := {msg |
	some key, _ in r
	not key in rule_keys
	msg := sprintf("unknown key %q (want %v)", [key, sort(rule_keys)])
}

_protocol_errors(r) := {msg |
	p := object.get(r, "protocol", null)
	not p in protocols
	msg := sprintf("protocol must be one of %v, got %s", [sort(protocols), json.marshal(p)])
}

_port_errors(r) := {"ports must be a non-empty array of port numbers"} if {
	not _non_empty_array(object.get(r, "ports", null))
} else := {msg |
	some p in r.ports
	not _port(p)
	msg := sprintf("port %s is not an integer in 1-65535", [json.marshal(p)])
}

_cidr_errors(r) := _list_errors(r, "cidrs", "CIDR", _cidrs_bad(r))

_cidrs_bad(r) := {c |
	some c in _list(r, "cidrs")
	not _cidr(c)
}

_host_errors(r) := _list_errors(r, "hosts", "host name", _hosts_bad(r))

_hosts_bad(r) := {h |
	some h in _list(r, "hosts")
	not _host(h)
}

_sni_errors(r) := _list_errors(r, "sni", "SNI name", _sni_bad(r)) | _sni_protocol_errors(r)

_sni_bad(r) := {s |
	some s in _list(r, "sni")
	not _sni(s)
}

_sni_protocol_errors(r) := {"sni needs protocol \"tcp\""} if {
	count(_list(r, "sni")) > 0
	object.get(r, "protocol", null) != "tcp"
} else := set()

_destination_errors(r) := {"rule needs at least one destination in cidrs or hosts"} if {
	count(_list(r, "cidrs")) + count(_list(r, "hosts")) == 0
} else := set()

# _list_errors reports an optional list key that is not an array, or the
# entries of it that are bad.
_list_errors(r, key, what, bad_entries) := {sprintf("%s must be an array", [key])} if {
	not is_array(object.get(r, key, []))
} else := {msg |
	some bad in bad_entries
	msg := sprintf("%s %s is not a valid %s", [key, json.marshal(bad), what])
}

_list(r, key) := l if {
	l := object.get(r, key, [])
	is_array(l)
} else := []

_non_empty_array(x) if {
	is_array(x)
	count(x) > 0
}

_port(p) if {
	is_number(p)
	floor(p) == p
	p >= 1
	p <= 65535
}

_cidr(c) if {
	is_string(c)
	net.cidr_is_valid(c)
}

_dns_name := `^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`

_host(h) if {
	is_string(h)
	count(h) <= 253
	regex.match(_dns_name, h)
	not regex.match(`^[0-9.]+$`, h)
}

_sni(s) if _host(s)

_sni(s) if {
	is_string(s)
	startswith(s, "*.")
	_host(substring(s, 2, -1))
}

# METADATA
# title: Egress data errors
# description: |
#   Problems with data.zfaas.config.egress as a whole, one string each,
#   empty when every entry is valid. A revision with errors should be
#   refused; the tests fail on the shipped data when it has any.
# entrypoint: true
errors contains msg if {
	some key, _ in _egress_data
	not spiffe.valid_function_key(key)
	msg := sprintf("egress[%q]: key must be \"tenant/function\" or \"tenant/*\"", [key])
}

errors contains msg if {
	some key, entry in _egress_data
	not is_array(entry)
	msg := sprintf("egress[%q]: must be an array of rules", [key])
}

errors contains msg if {
	some key, entry in _egress_data
	is_array(entry)
	some i, r in entry
	some problem in rule_errors(r)
	msg := sprintf("egress[%q][%d]: %s", [key, i, problem])
}

errors contains "egress must be an object of \"tenant/function\" to rules" if {
	e := data.zfaas.config.egress
	not is_object(e)
}
