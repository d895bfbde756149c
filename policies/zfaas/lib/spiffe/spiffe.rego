# METADATA
# title: SPIFFE ID helpers
# description: |
#   Parses SPIFFE IDs laid out the zfaas way. Pure functions of their
#   arguments: they never read input or data, and never decide anything.
#   An argument that is not a well-formed workload SPIFFE ID makes every
#   function here undefined (or false for valid), never an error.
package zfaas.lib.spiffe

# Kinds of workload that zfaas names in its SPIFFE IDs:
#   spiffe://<td>/ns/<tenant>/fn/<name>   function
#   spiffe://<td>/user/<name>             user (people, CI)
#   spiffe://<td>/worker/<node>           worker
#   spiffe://<td>/gateway/<node>          gateway
#   spiffe://<td>/policyd/<node>          policyd
kinds := {"function", "user", "worker", "gateway", "policyd"}

# Kinds whose ID is "/<kind>/<name>".
_single_segment_kinds := {"user", "worker", "gateway", "policyd"}

# Longest SPIFFE ID accepted, in bytes (SPIFFE ID specification).
max_length := 2048

# Tenant and function names: 1-64 lower-case letters, digits and inner
# hyphens (the same rule the gateway applies to names).
name_pattern := `^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$`

# A workload ID: scheme, trust domain (lower-case letters, digits, ".", "-",
# "_"), and a non-empty path of segments made of letters, digits, ".", "-"
# and "_". No port, user info, query or fragment; no empty segment.
_id_pattern := `^spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)+$`

_scheme := "spiffe://"

# valid(id) is true when id is a well-formed SPIFFE workload ID.
valid(id) if {
	is_string(id)
	count(id) <= max_length
	regex.match(_id_pattern, id)
	not _has_dot_segment(id)
}

_has_dot_segment(id) if {
	some segment in _segments(id)
	segment in {".", ".."}
}

_parts(id) := split(substring(id, count(_scheme), -1), "/")

_segments(id) := array.slice(parts, 1, count(parts)) if {
	parts := _parts(id)
}

# trust_domain(id) is the trust domain name of a valid ID.
trust_domain(id) := _parts(id)[0] if valid(id)

# parse(id) describes a valid ID as an object with the same keys for every
# kind:
#   {"id", "trust_domain", "path", "kind", "tenant", "name"}
# kind is one of kinds, or "other" for a valid ID that does not follow the
# zfaas layout (for example a federated partner's workload). tenant is set
# only for functions and is "" otherwise; name is the function, user or node
# name, "" for "other".
parse(id) := object.union(_base(id), _layout_or_empty(_segments(id))) if valid(id)

_base(id) := {
	"id": id,
	"trust_domain": trust_domain(id),
	"path": concat("", ["/", concat("/", _segments(id))]),
	"kind": "other",
	"tenant": "",
	"name": "",
}

_layout_or_empty(segments) := layout if {
	layout := _layout(segments)
} else := {}

_layout(segments) := {"kind": "function", "tenant": segments[1], "name": segments[3]} if {
	count(segments) == 4
	segments[0] == "ns"
	segments[2] == "fn"
	regex.match(name_pattern, segments[1])
	regex.match(name_pattern, segments[3])
}

_layout(segments) := {"kind": segments[0], "tenant": "", "name": segments[1]} if {
	count(segments) == 2
	segments[0] in _single_segment_kinds
}

# kind(id) is parse(id).kind.
kind(id) := parse(id).kind

# tenant(id) is the tenant of a function ID, "" for other kinds.
tenant(id) := parse(id).tenant

# function_id(td, tenant, name) builds the SPIFFE ID of a function.
function_id(td, tenant, name) := sprintf("spiffe://%s/ns/%s/fn/%s", [td, tenant, name])

# valid_name(s) is true when s is a valid tenant or function name.
valid_name(s) if {
	is_string(s)
	regex.match(name_pattern, s)
}

# valid_segment(s) is true when s can be one segment of a SPIFFE ID path,
# such as a user or node name.
valid_segment(s) if {
	is_string(s)
	regex.match(`^[A-Za-z0-9._-]+$`, s)
	not s in {".", ".."}
}

# valid_trust_domain(td) is true when td can be the trust domain of a
# SPIFFE ID.
valid_trust_domain(td) if {
	is_string(td)
	count(td) <= 255
	regex.match(`^[a-z0-9._-]+$`, td)
}

# valid_function_key(key) is true for the keys zfaas data uses to name one
# function ("tenant/function") or every function of a tenant ("tenant/*").
valid_function_key(key) if {
	is_string(key)
	parts := split(key, "/")
	count(parts) == 2
	valid_name(parts[0])
	_key_function(parts[1])
}

_key_function("*")

_key_function(name) if valid_name(name)
