# METADATA
# title: Caller resolution
# description: |
#   Turns input.caller (as built by the gateway or policyd) into the
#   effective principal that zfaas.invoke and zfaas.deploy judge: its SPIFFE
#   ID, kind, tenant, whether it is authenticated, whether it belongs to the
#   local trust domain, whether it is an admin, and any inconsistencies
#   between what the input says and what the SPIFFE ID says. It never
#   allows anything on its own.
package zfaas.lib.caller

import data.zfaas.lib.spiffe

# Authentication methods that prove a SPIFFE ID: a verified X.509-SVID
# (mutual TLS) or JWT-SVID (bearer token).
auth_methods := {"x509", "jwt"}

# Kinds a caller may have in input.caller.kind ("other": a valid ID outside
# the zfaas layout).
kinds := spiffe.kinds | {"anonymous", "other"}

_caller := c if {
	c := input.caller
	is_object(c)
} else := {}

_string(key) := s if {
	s := _caller[key]
	is_string(s)
} else := ""

_trust_domain := td if {
	td := data.zfaas.config.trust_domain
	is_string(td)
} else := ""

# spiffe_id is the caller's SPIFFE ID as given, "" when missing.
spiffe_id := _string("spiffe_id")

# parsed is spiffe.parse(spiffe_id); undefined when the ID is malformed.
parsed := spiffe.parse(spiffe_id)

# _given_kind is input.caller.kind, "" when absent. "unknown" is what an
# engine may send when it could not classify the ID; it claims nothing, so
# it is treated as absent.
_given_kind := k if {
	k := _string("kind")
	not k in {"", "unknown"}
} else := ""

# kind is input.caller.kind when given, else derived from the SPIFFE ID
# ("other" for a valid ID outside the zfaas layout), else "anonymous".
kind := k if {
	k := _given_kind
	k != ""
} else := parsed.kind

default kind := "anonymous"

# tenant is input.caller.tenant when given, else the tenant in a function's
# SPIFFE ID, else "". Users carry their tenant only in the input (the
# gateway takes it from the user's registration or JWT-SVID claims).
tenant := t if {
	t := _string("tenant")
	t != ""
} else := parsed.tenant

default tenant := ""

# local is true when the caller's ID belongs to the configured trust domain.
default local := false

local if {
	_trust_domain != ""
	parsed.trust_domain == _trust_domain
}

# authenticated is true only when the input says so, with a method that
# proves an identity, a well-formed SPIFFE ID and a non-anonymous kind.
default authenticated := false

authenticated if {
	_caller.authenticated == true
	_string("auth_method") in auth_methods
	parsed
	kind != "anonymous"
}

# problems are contradictions inside input.caller. Any problem denies.
problems contains msg if {
	given := _given_kind
	given != ""
	not given in kinds
	msg := sprintf("caller kind %q is not one of %v", [given, sort(kinds)])
}

problems contains msg if {
	given := _given_kind
	given != ""
	parsed.kind in spiffe.kinds
	given != parsed.kind
	msg := sprintf("caller kind %q does not match its SPIFFE ID %q (kind %q)", [given, spiffe_id, parsed.kind])
}

problems contains msg if {
	given := _string("tenant")
	given != ""
	parsed.kind == "function"
	given != parsed.tenant
	msg := sprintf("caller tenant %q does not match its SPIFFE ID %q (tenant %q)", [given, spiffe_id, parsed.tenant])
}

problems contains msg if {
	tenant != ""
	not spiffe.valid_name(tenant)
	msg := sprintf("caller tenant %q is not a valid tenant name", [tenant])
}

problems contains msg if {
	_caller.authenticated == true
	not _string("auth_method") in auth_methods
	msg := sprintf("caller is marked authenticated but auth_method is %q (want one of %v)", [_string("auth_method"), sort(auth_methods)])
}

problems contains msg if {
	_caller.authenticated == true
	spiffe_id != ""
	not parsed
	msg := sprintf("caller SPIFFE ID %q is malformed", [spiffe_id])
}

problems contains msg if {
	_caller.authenticated == true
	spiffe_id == ""
	msg := "caller is marked authenticated but has no SPIFFE ID"
}

problems contains msg if {
	_caller.authenticated == true
	_string("kind") == "anonymous"
	msg := "caller is marked authenticated but its kind is anonymous"
}

# ok is true when the caller is authenticated and consistent: the minimum
# for any allow.
default ok := false

ok if {
	authenticated
	count(problems) == 0
}

# admin is true when an ok caller's SPIFFE ID is listed in
# data.zfaas.config.admins.
default admin := false

admin if {
	ok
	some id in _admins
	id == spiffe_id
}

_admins := a if {
	a := data.zfaas.config.admins
	is_array(a)
} else := []

# unauthenticated_reason explains why an unauthenticated caller is refused.
unauthenticated_reason := "caller is not authenticated (no verified X.509-SVID or JWT-SVID)" if {
	spiffe_id == ""
} else := sprintf("caller %q is not authenticated", [spiffe_id])

# display names the caller in reasons.
display := spiffe_id if spiffe_id != ""

default display := "anonymous caller"

_config := c if {
	c := data.zfaas.config
	is_object(c)
} else := {}

# METADATA
# title: Identity data errors
# description: |
#   Problems with data.zfaas.config.trust_domain and .admins, one string
#   each, empty when valid. With an invalid trust domain no caller is local;
#   invalid admin entries match nobody.
errors contains msg if {
	td := object.get(_config, "trust_domain", null)
	not spiffe.valid_trust_domain(td)
	msg := sprintf("trust_domain %s is not a trust domain name such as \"zfaas.local\"", [json.marshal(td)])
}

errors contains "admins must be an array of SPIFFE IDs" if {
	not is_array(object.get(_config, "admins", []))
}

errors contains msg if {
	some id in _admins
	not spiffe.valid(id)
	msg := sprintf("admins: %s is not a valid SPIFFE ID", [json.marshal(id)])
}
