# METADATA
# title: Invoke policy
# description: |
#   Decides who may invoke which function. Deny by default: a call is
#   allowed only when at least one ground below holds and nothing is wrong
#   with the input.
#     - the caller is an admin (data.zfaas.config.admins);
#     - the caller is authenticated, in the local trust domain, and its
#       tenant is the function's tenant;
#     - the caller's SPIFFE ID is granted the function, or every function
#       of its tenant, in data.zfaas.config.grants.
package zfaas.invoke

import data.zfaas.lib.caller
import data.zfaas.lib.spiffe

# METADATA
# title: Invoke decision
# description: |
#   {"allow": bool, "reasons": [string]}. Always defined. On deny, reasons
#   says every reason the call was refused; on allow, the grounds it was
#   allowed on.
# entrypoint: true
decision := {"allow": allow, "reasons": reasons}

default allow := false

allow if {
	count(violations) == 0
	count(grounds) > 0
}

reasons := sort(grounds) if {
	allow
} else := sort(violations) if {
	count(violations) > 0
} else := [sprintf(
	"%s may not invoke %s/%s: not an admin, not in tenant %q, and not granted",
	[caller.display, _tenant, _name, _tenant],
)]

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

_action := a if {
	a := input.action
	is_string(a)
} else := ""

# violations are reasons to deny whatever the grounds.
violations contains msg if {
	_action != "invoke"
	msg := sprintf("action %q is not \"invoke\"", [_action])
}

violations contains msg if {
	not spiffe.valid_name(_tenant)
	msg := sprintf("function tenant %q is not a valid tenant name", [_tenant])
}

violations contains msg if {
	not spiffe.valid_name(_name)
	msg := sprintf("function name %q is not a valid function name", [_name])
}

violations contains msg if {
	not caller.authenticated
	msg := caller.unauthenticated_reason
}

violations contains msg if {
	some msg in caller.problems
}

# grounds are the reasons an ok caller may invoke the function.
grounds contains "caller is an admin" if caller.admin

grounds contains msg if {
	caller.ok
	caller.local
	caller.tenant != ""
	caller.tenant == _tenant
	msg := sprintf("caller belongs to tenant %q", [_tenant])
}

grounds contains msg if {
	caller.ok
	some key in _grant_keys
	caller.spiffe_id in _granted(key)
	msg := sprintf("caller is granted %s", [key])
}

_grant_keys := {
	sprintf("%s/%s", [_tenant, _name]),
	sprintf("%s/*", [_tenant]),
}

_granted(key) := ids if {
	ids := _grants[key]
	is_array(ids)
} else := []

_grants := g if {
	g := data.zfaas.config.grants
	is_object(g)
} else := {}

# METADATA
# title: Grant data errors
# description: |
#   Problems with data.zfaas.config.grants, one string each, empty when
#   valid. A malformed grant grants nothing.
# entrypoint: true
errors contains "grants must be an object of \"tenant/function\" to SPIFFE IDs" if {
	g := data.zfaas.config.grants
	not is_object(g)
}

errors contains msg if {
	some key, _ in _grants
	not spiffe.valid_function_key(key)
	msg := sprintf("grants[%q]: key must be \"tenant/function\" or \"tenant/*\"", [key])
}

errors contains msg if {
	some key, ids in _grants
	not is_array(ids)
	msg := sprintf("grants[%q]: must be an array of SPIFFE IDs", [key])
}

errors contains msg if {
	some key, ids in _grants
	is_array(ids)
	some id in ids
	not spiffe.valid(id)
	msg := sprintf("grants[%q]: %s is not a valid SPIFFE ID", [key, json.marshal(id)])
}
