# METADATA
# title: Decision log masking
# description: |
#   The parts of a decision log event to erase before it is stored or sent
#   to the audit log, as JSON pointers into the event in OPA's masking
#   convention ("/input/...", "/result/..."; segments are path-escaped, a
#   pointer that is not in the event is ignored). Credentials and request
#   bodies are always erased, for zfaas's own input and for the input of
#   Envoy ext_authz checks; data.zfaas.config.log.extra_mask adds more.
package zfaas.log.mask

# Pointers erased from every event, whatever the configuration says.
always := {
	# zfaas gateway input (zfaas.invoke, zfaas.deploy).
	"/input/request/headers/authorization",
	"/input/request/headers/proxy-authorization",
	"/input/request/headers/cookie",
	"/input/request/body",
	"/input/request/raw_body",
	# Function environment, should an engine ever put it into a deploy input.
	"/input/config/environment",
	# Envoy ext_authz CheckRequest input served by policyd.
	"/input/attributes/request/http/headers/authorization",
	"/input/attributes/request/http/headers/proxy-authorization",
	"/input/attributes/request/http/headers/cookie",
	"/input/attributes/request/http/body",
	"/input/attributes/request/http/raw_body",
	"/input/parsed_body",
}

# A pointer OPA accepts: "/input", "/result" or "/nd_builtin_cache",
# followed by non-empty segments.
pointer_pattern := `^/(input|result|nd_builtin_cache)(/[^/]+)*$`

_extra := e if {
	e := data.zfaas.config.log.extra_mask
	is_array(e)
} else := []

# METADATA
# title: Mask
# description: |
#   The set of JSON pointers to erase from a decision log event. Always
#   defined and never empty.
# entrypoint: true
mask contains pointer if {
	some pointer in always
}

mask contains pointer if {
	some pointer in _extra
	valid_pointer(pointer)
}

# valid_pointer(p) is true when OPA can apply p as a mask.
valid_pointer(p) if {
	is_string(p)
	regex.match(pointer_pattern, p)
}

# METADATA
# title: Log data errors
# description: |
#   Problems with data.zfaas.config.log, one string each, empty when valid.
#   Invalid extra pointers are left out of mask.
# entrypoint: true
errors contains "log.extra_mask must be an array of JSON pointers" if {
	e := data.zfaas.config.log.extra_mask
	not is_array(e)
}

errors contains msg if {
	some pointer in _extra
	not valid_pointer(pointer)
	msg := sprintf("log.extra_mask: %s is not a pointer under /input, /result or /nd_builtin_cache", [json.marshal(pointer)])
}
