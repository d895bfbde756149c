# METADATA
# title: Deploy policy
# description: |
#   Decides who may change functions (deploy a version, delete a function,
#   set or delete an alias) and read them (get, list, versions, logs).
#   Deny by default. Admins may take any of these actions on any tenant;
#   users (kind "user") of the function's tenant may take them, deploying
#   within the limits in data.zfaas.config.deploy; functions may never take
#   them, even when listed as admins.
package zfaas.deploy

import data.zfaas.lib.caller
import data.zfaas.lib.spiffe

# The function actions this package decides. "read" covers getting a
# function, listing versions and aliases, and reading logs; with an empty
# function name it is a tenant-wide read (listing the tenant's functions).
actions := {"deploy", "delete", "alias.set", "alias.delete", "read"} | policy_actions

# Policy administration (push a revision, read status and decisions, roll
# back), issuing user identities and exporting the audit trail are decided
# here too, and only admins may do them.
policy_actions := {"policy.push", "policy.read", "policy.rollback", "identity.issue", "audit.export", "worker.read", "worker.drain"}

# Limits on input.config for action "deploy": the input field, the limit in
# data.zfaas.config.deploy it must not exceed.
numeric_limits := {
	"memoryMB": "max_memory_mb",
	"timeoutSeconds": "max_timeout_seconds",
	"maxConcurrency": "max_concurrency",
}

# METADATA
# title: Deploy decision
# description: |
#   {"allow": bool, "reasons": [string]}. Always defined. On deny, reasons
#   says every reason the action was refused, naming any violated limit; on
#   allow, the grounds it was allowed on.
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
	"%s (kind %q) may not %s functions of tenant %q: only admins and users of that tenant may",
	[caller.display, caller.kind, _action, _tenant],
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

_config := c if {
	c := input.config
	is_object(c)
} else := {}

_deploy_data := d if {
	d := data.zfaas.config.deploy
	is_object(d)
} else := {}

_tenant_limits := l if {
	l := _deploy_data.tenants[_tenant]
	is_object(l)
} else := {}

# limits are the deploy limits in force for the function's tenant:
# data.zfaas.config.deploy with data.zfaas.config.deploy.tenants[tenant]
# laid over it.
limits := object.union(object.remove(_deploy_data, {"tenants"}), _tenant_limits)

_runtimes := {r | some r in limits.runtimes; is_string(r)}

_positive_integer(x) if {
	is_number(x)
	x > 0
	floor(x) == x
}

violations contains msg if {
	not _action in actions
	msg := sprintf("action %q is not one of %v", [_action, sort(actions)])
}

violations contains msg if {
	not spiffe.valid_name(_tenant)
	msg := sprintf("function tenant %q is not a valid tenant name", [_tenant])
}

violations contains msg if {
	not spiffe.valid_name(_name)
	not _tenant_wide_read
	msg := sprintf("function name %q is not a valid function name", [_name])
}

_tenant_wide_read if {
	_action == "read"
	_name == ""
}

_tenant_wide_read if {
	_action in policy_actions
	_name == ""
}

violations contains msg if {
	_action in policy_actions
	not caller.admin
	msg := sprintf("%s may not %s: only admins administer policy", [caller.display, _action])
}

violations contains msg if {
	not caller.authenticated
	msg := caller.unauthenticated_reason
}

violations contains msg if {
	some msg in caller.problems
}

violations contains msg if {
	caller.kind == "function"
	msg := sprintf("%s is a function; functions may never deploy, change or read functions", [caller.display])
}

# Limits bind everyone but admins, and only when deploying.
_limited if {
	_action == "deploy"
	not caller.admin
}

_has_config if is_object(input.config)

violations contains "config is required to deploy" if {
	_limited
	not _has_config
}

_limited_config if {
	_limited
	_has_config
}

violations contains msg if {
	_limited_config
	rt := object.get(_config, "runtime", null)
	not rt in _runtimes
	msg := sprintf("runtime %v is not allowed (deploy.runtimes: %v)", [json.marshal(rt), sort(_runtimes)])
}

violations contains msg if {
	_limited_config
	some field, _ in numeric_limits
	value := object.get(_config, field, null)
	not _positive_integer(value)
	msg := sprintf("config.%s must be a positive integer, got %v", [field, json.marshal(value)])
}

violations contains msg if {
	_limited
	some _, limit in numeric_limits
	not _positive_integer(object.get(limits, limit, null))
	msg := sprintf("deploy.%s is not configured: deploys are refused until it is", [limit])
}

violations contains msg if {
	_limited
	some field, limit in numeric_limits
	value := _config[field]
	ceiling := limits[limit]
	_positive_integer(value)
	_positive_integer(ceiling)
	value > ceiling
	msg := sprintf("config.%s %v exceeds deploy.%s %v", [field, value, limit, ceiling])
}

# grounds are the reasons an ok caller may take the action.
grounds contains "caller is an admin" if caller.admin

grounds contains msg if {
	caller.ok
	caller.local
	caller.kind == "user"
	caller.tenant != ""
	caller.tenant == _tenant
	msg := sprintf("caller is a user of tenant %q", [_tenant])
}

# METADATA
# title: Deploy data errors
# description: |
#   Problems with data.zfaas.config.deploy, one string each, empty when
#   valid. A missing or malformed limit refuses every non-admin deploy.
# entrypoint: true
errors contains "deploy must be an object of limits" if {
	d := data.zfaas.config.deploy
	not is_object(d)
}

errors contains msg if {
	some msg in _limit_errors("deploy", object.remove(_deploy_data, {"tenants"}))
}

errors contains msg if {
	some msg in _missing_limits
}

errors contains "deploy.tenants must be an object of tenant to limits" if {
	not is_object(object.get(_deploy_data, "tenants", {}))
}

errors contains msg if {
	some tenant, _ in _tenant_overrides
	not spiffe.valid_name(tenant)
	msg := sprintf("deploy.tenants: %q is not a valid tenant name", [tenant])
}

errors contains msg if {
	some tenant, override in _tenant_overrides
	not is_object(override)
	msg := sprintf("deploy.tenants.%s must be an object of limits", [tenant])
}

errors contains msg if {
	some tenant, override in _tenant_overrides
	is_object(override)
	some msg in _limit_errors(sprintf("deploy.tenants.%s", [tenant]), override)
}

# Runtime names in deploy.runtimes: lower-case letters, digits, "." and "-".
runtime_pattern := `^[a-z0-9]([a-z0-9.-]{0,62}[a-z0-9])?$`

_limit_keys := {"runtimes"} | {limit | some _, limit in numeric_limits}

_tenant_overrides := t if {
	t := _deploy_data.tenants
	is_object(t)
} else := {}

_missing_limits := {msg |
	some key in _limit_keys
	not key in object.keys(_deploy_data)
	msg := sprintf("deploy.%s is required", [key])
}

# _limit_errors checks the limits present in obj; prefix names obj in
# messages.
_limit_errors(prefix, obj) := (_unknown_limit_keys(prefix, obj) | _runtime_errors(prefix, obj)) | _numeric_limit_errors(prefix, obj)

_unknown_limit_keys(prefix, obj) := {msg |
	some key, _ in obj
	not key in _limit_keys
	msg := sprintf("%s: unknown key %q (want %v)", [prefix, key, sort(_limit_keys)])
}

_runtime_errors(prefix, obj) := {sprintf("%s.runtimes must be a non-empty array of runtime names", [prefix])} if {
	runtimes := obj.runtimes
	not _runtime_list(runtimes)
} else := set()

_runtime_list(runtimes) if {
	is_array(runtimes)
	count(runtimes) > 0
	every r in runtimes {
		is_string(r)
		regex.match(runtime_pattern, r)
	}
}

_numeric_limit_errors(prefix, obj) := {msg |
	some _, limit in numeric_limits
	value := obj[limit]
	not _positive_integer(value)
	msg := sprintf("%s.%s must be a positive integer, got %s", [prefix, limit, json.marshal(value)])
}
