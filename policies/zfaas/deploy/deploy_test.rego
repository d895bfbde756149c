package zfaas.deploy_test

import data.zfaas.deploy

config := {
	"trust_domain": "zfaas.local",
	"admins": [
		"spiffe://zfaas.local/user/admin",
		# A function wrongly listed as admin must still never deploy.
		"spiffe://zfaas.local/ns/ops/fn/deployer",
	],
	"deploy": {
		"runtimes": ["provided", "go", "python3", "nodejs"],
		"max_memory_mb": 10240,
		"max_timeout_seconds": 900,
		"max_concurrency": 1000,
		"tenants": {"small": {"runtimes": ["go"], "max_memory_mb": 512}},
	},
}

admin := {"spiffe_id": "spiffe://zfaas.local/user/admin", "authenticated": true, "auth_method": "x509", "kind": "user", "name": "admin"}

alice := {"spiffe_id": "spiffe://zfaas.local/user/alice", "authenticated": true, "auth_method": "jwt", "kind": "user", "tenant": "acme", "name": "alice"}

tiny := {"spiffe_id": "spiffe://zfaas.local/user/tiny", "authenticated": true, "auth_method": "jwt", "kind": "user", "tenant": "small", "name": "tiny"}

hello := {"tenant": "acme", "name": "hello"}

ok_config := {"runtime": "go", "memoryMB": 128, "timeoutSeconds": 30, "maxConcurrency": 10}

with_config(patch) := object.union(ok_config, patch)

req(c, action, f, cfg) := {"caller": c, "function": f, "action": action, "config": cfg, "time_ns": 0}

deploy_as(c, cfg) := req(c, "deploy", hello, cfg)

act(c, action) := {"caller": c, "function": hello, "action": action}

cases := [
	# Allowed.
	{"name": "user deploys in own tenant", "input": deploy_as(alice, ok_config), "allow": true, "reasons": ["caller is a user of tenant \"acme\""]},
	{
		"name": "user deploys exactly at every limit",
		"input": deploy_as(alice, {"runtime": "provided", "memoryMB": 10240, "timeoutSeconds": 900, "maxConcurrency": 1000}),
		"allow": true, "reasons": ["caller is a user of tenant \"acme\""],
	},
	{"name": "user deletes in own tenant", "input": act(alice, "delete"), "allow": true, "reasons": ["tenant \"acme\""]},
	{"name": "user sets an alias", "input": act(alice, "alias.set"), "allow": true, "reasons": ["tenant \"acme\""]},
	{"name": "user deletes an alias", "input": act(alice, "alias.delete"), "allow": true, "reasons": ["tenant \"acme\""]},
	{"name": "user reads a function of own tenant", "input": act(alice, "read"), "allow": true, "reasons": ["caller is a user of tenant \"acme\""]},
	{"name": "user lists own tenant", "input": {"caller": alice, "function": {"tenant": "acme", "name": ""}, "action": "read"}, "allow": true, "reasons": ["tenant \"acme\""]},
	{"name": "admin lists any tenant", "input": {"caller": admin, "function": {"tenant": "globex", "name": ""}, "action": "read"}, "allow": true, "reasons": ["caller is an admin"]},
	{"name": "admin deploys in any tenant", "input": req(admin, "deploy", {"tenant": "globex", "name": "x"}, ok_config), "allow": true, "reasons": ["caller is an admin"]},
	{
		"name": "admin is not bound by limits",
		"input": deploy_as(admin, {"runtime": "java", "memoryMB": 20480, "timeoutSeconds": 3600, "maxConcurrency": 5000}),
		"allow": true, "reasons": ["caller is an admin"],
	},
	{"name": "admin deletes", "input": act(admin, "delete"), "allow": true, "reasons": ["caller is an admin"]},
	{
		"name": "per-tenant limits allow within them",
		"input": req(tiny, "deploy", {"tenant": "small", "name": "f"}, with_config({"memoryMB": 512})),
		"allow": true, "reasons": ["tenant \"small\""],
	},
	# Denied: who.
	{
		"name": "function may not deploy in its own tenant",
		"input": deploy_as({"spiffe_id": "spiffe://zfaas.local/ns/acme/fn/billing", "authenticated": true, "auth_method": "x509"}, ok_config),
		"allow": false, "reasons": ["functions may never deploy"],
	},
	{
		"name": "function listed as admin may still not deploy",
		"input": deploy_as({"spiffe_id": "spiffe://zfaas.local/ns/ops/fn/deployer", "authenticated": true, "auth_method": "x509", "kind": "function"}, ok_config),
		"allow": false, "reasons": ["functions may never deploy"],
	},
	{
		"name": "function may not move an alias",
		"input": act({"spiffe_id": "spiffe://zfaas.local/ns/acme/fn/billing", "authenticated": true, "auth_method": "jwt", "kind": "function", "tenant": "acme"}, "alias.set"),
		"allow": false, "reasons": ["functions may never deploy, change or read functions"],
	},
	{
		"name": "user of another tenant",
		"input": req(alice, "deploy", {"tenant": "globex", "name": "x"}, ok_config),
		"allow": false, "reasons": ["may not deploy functions of tenant \"globex\""],
	},
	{
		"name": "user of another tenant may not delete",
		"input": {"caller": alice, "function": {"tenant": "globex", "name": "x"}, "action": "delete"},
		"allow": false, "reasons": ["may not delete functions of tenant \"globex\""],
	},
	{"name": "user without tenant", "input": deploy_as(object.remove(alice, {"tenant"}), ok_config), "allow": false, "reasons": ["only admins and users of that tenant may"]},
	{"name": "unauthenticated user", "input": deploy_as(object.union(alice, {"authenticated": false, "auth_method": "none"}), ok_config), "allow": false, "reasons": ["is not authenticated"]},
	{"name": "no caller", "input": {"function": hello, "action": "deploy", "config": ok_config}, "allow": false, "reasons": ["caller is not authenticated"]},
	{"name": "empty input", "input": {}, "allow": false, "reasons": ["caller is not authenticated", "action \"\" is not one of"]},
	{
		"name": "gateway of the tenant is not a user",
		"input": deploy_as({"spiffe_id": "spiffe://zfaas.local/gateway/gw1", "authenticated": true, "auth_method": "x509", "tenant": "acme"}, ok_config),
		"allow": false, "reasons": ["(kind \"gateway\") may not deploy"],
	},
	{
		"name": "user of a foreign trust domain",
		"input": deploy_as(object.union(alice, {"spiffe_id": "spiffe://evil.example/user/alice"}), ok_config),
		"allow": false, "reasons": ["may not deploy functions of tenant \"acme\""],
	},
	{
		"name": "caller claims to be a user but its ID is a function's",
		"input": deploy_as(object.union(alice, {"spiffe_id": "spiffe://zfaas.local/ns/acme/fn/billing"}), ok_config),
		"allow": false, "reasons": ["caller kind \"user\" does not match its SPIFFE ID"],
	},
	{"name": "user may not list another tenant", "input": {"caller": alice, "function": {"tenant": "globex", "name": ""}, "action": "read"}, "allow": false, "reasons": ["may not read functions of tenant \"globex\""]},
	{
		"name": "function may not read the control plane",
		"input": act({"spiffe_id": "spiffe://zfaas.local/ns/acme/fn/billing", "authenticated": true, "auth_method": "x509"}, "read"),
		"allow": false, "reasons": ["functions may never deploy, change or read functions"],
	},
	{"name": "empty name is only for reads", "input": {"caller": admin, "function": {"tenant": "acme", "name": ""}, "action": "delete"}, "allow": false, "reasons": ["function name \"\" is not a valid function name"]},
	{"name": "admin may push policy", "input": {"caller": admin, "function": {"tenant": "acme", "name": ""}, "action": "policy.push"}, "allow": true, "reasons": ["caller is an admin"]},
	{"name": "user may not push policy", "input": {"caller": alice, "function": {"tenant": "acme", "name": ""}, "action": "policy.push"}, "allow": false, "reasons": ["only admins administer policy"]},
	{"name": "user may not roll back policy", "input": {"caller": alice, "function": {"tenant": "acme", "name": ""}, "action": "policy.rollback"}, "allow": false, "reasons": ["only admins administer policy"]},
	{"name": "admin may issue identities", "input": {"caller": admin, "function": {"tenant": "acme", "name": ""}, "action": "identity.issue"}, "allow": true, "reasons": ["caller is an admin"]},
	{"name": "user may not issue identities", "input": {"caller": alice, "function": {"tenant": "acme", "name": ""}, "action": "identity.issue"}, "allow": false, "reasons": ["only admins"]},
	{"name": "admin may list workers", "input": {"caller": admin, "function": {"tenant": "acme", "name": ""}, "action": "worker.read"}, "allow": true, "reasons": ["caller is an admin"]},
	{"name": "user may not drain workers", "input": {"caller": alice, "function": {"tenant": "acme", "name": ""}, "action": "worker.drain"}, "allow": false, "reasons": ["only admins"]},
	{"name": "admin may export the audit trail", "input": {"caller": admin, "function": {"tenant": "acme", "name": ""}, "action": "audit.export"}, "allow": true, "reasons": ["caller is an admin"]},
	{"name": "user may not export the audit trail", "input": {"caller": alice, "function": {"tenant": "acme", "name": ""}, "action": "audit.export"}, "allow": false, "reasons": ["only admins"]},
	{
		"name": "function listed as admin may not export the audit trail",
		"input": {"caller": {"spiffe_id": "spiffe://zfaas.local/ns/ops/fn/deployer", "authenticated": true, "auth_method": "x509", "kind": "function"}, "function": {"tenant": "acme", "name": ""}, "action": "audit.export"},
		"allow": false, "reasons": ["functions may never deploy, change or read functions"],
	},
	{"name": "admin with unknown action", "input": act(admin, "policy.rewrite"), "allow": false, "reasons": ["action \"policy.rewrite\" is not one of"]},
	{"name": "admin with action invoke", "input": act(admin, "invoke"), "allow": false, "reasons": ["action \"invoke\" is not one of"]},
	{"name": "invalid function name", "input": req(admin, "delete", {"tenant": "acme", "name": "../x"}, null), "allow": false, "reasons": ["function name \"../x\""]},
	# Denied: limits.
	{"name": "memory over limit", "input": deploy_as(alice, with_config({"memoryMB": 10241})), "allow": false, "reasons": ["config.memoryMB 10241 exceeds deploy.max_memory_mb 10240"]},
	{"name": "timeout over limit", "input": deploy_as(alice, with_config({"timeoutSeconds": 901})), "allow": false, "reasons": ["config.timeoutSeconds 901 exceeds deploy.max_timeout_seconds 900"]},
	{"name": "concurrency over limit", "input": deploy_as(alice, with_config({"maxConcurrency": 1001})), "allow": false, "reasons": ["config.maxConcurrency 1001 exceeds deploy.max_concurrency 1000"]},
	{"name": "runtime not allowed", "input": deploy_as(alice, with_config({"runtime": "java"})), "allow": false, "reasons": ["runtime \"java\" is not allowed"]},
	{"name": "runtime missing", "input": deploy_as(alice, object.remove(ok_config, {"runtime"})), "allow": false, "reasons": ["runtime null is not allowed"]},
	{"name": "memory zero", "input": deploy_as(alice, with_config({"memoryMB": 0})), "allow": false, "reasons": ["config.memoryMB must be a positive integer, got 0"]},
	{"name": "timeout negative", "input": deploy_as(alice, with_config({"timeoutSeconds": -1})), "allow": false, "reasons": ["config.timeoutSeconds must be a positive integer, got -1"]},
	{"name": "memory fractional", "input": deploy_as(alice, with_config({"memoryMB": 128.5})), "allow": false, "reasons": ["config.memoryMB must be a positive integer, got 128.5"]},
	{"name": "memory as string", "input": deploy_as(alice, with_config({"memoryMB": "128"})), "allow": false, "reasons": ["config.memoryMB must be a positive integer, got \"128\""]},
	{"name": "concurrency missing", "input": deploy_as(alice, object.remove(ok_config, {"maxConcurrency"})), "allow": false, "reasons": ["config.maxConcurrency must be a positive integer, got null"]},
	{"name": "config missing", "input": object.remove(deploy_as(alice, ok_config), {"config"}), "allow": false, "reasons": ["config is required to deploy"]},
	{
		"name": "several limits at once are all named",
		"input": deploy_as(alice, {"runtime": "java", "memoryMB": 99999, "timeoutSeconds": 99999, "maxConcurrency": 99999}),
		"allow": false,
		"reasons": ["runtime \"java\"", "deploy.max_memory_mb", "deploy.max_timeout_seconds", "deploy.max_concurrency"],
	},
	{
		"name": "per-tenant memory limit",
		"input": req(tiny, "deploy", {"tenant": "small", "name": "f"}, with_config({"memoryMB": 513})),
		"allow": false, "reasons": ["config.memoryMB 513 exceeds deploy.max_memory_mb 512"],
	},
	{
		"name": "per-tenant runtimes",
		"input": req(tiny, "deploy", {"tenant": "small", "name": "f"}, with_config({"runtime": "python3"})),
		"allow": false, "reasons": ["runtime \"python3\" is not allowed (deploy.runtimes: [\"go\"])"],
	},
	{
		"name": "per-tenant override keeps the other defaults",
		"input": req(tiny, "deploy", {"tenant": "small", "name": "f"}, with_config({"timeoutSeconds": 901})),
		"allow": false, "reasons": ["deploy.max_timeout_seconds 900"],
	},
]

_decide(c) := d if {
	d := deploy.decision with input as c.input with data.zfaas.config as config
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

test_deploy_table if {
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

test_limit_violation_is_the_only_reason if {
	d := deploy.decision with input as deploy_as(alice, with_config({"memoryMB": 10241})) with data.zfaas.config as config
	d == {"allow": false, "reasons": ["config.memoryMB 10241 exceeds deploy.max_memory_mb 10240"]}
}

test_unconfigured_limits_refuse_deploys if {
	cfg := object.remove(config, {"deploy"})
	d := deploy.decision with input as deploy_as(alice, ok_config) with data.zfaas.config as cfg
	d.allow == false
	some r in d.reasons
	r == "deploy.max_memory_mb is not configured: deploys are refused until it is"
	some r2 in d.reasons
	startswith(r2, "runtime \"go\" is not allowed")
}

test_unconfigured_limits_still_allow_deletes if {
	cfg := object.remove(config, {"deploy"})
	d := deploy.decision with input as act(alice, "delete") with data.zfaas.config as cfg
	d.allow == true
}

test_deny_by_default_without_config if {
	d := deploy.decision with input as act(admin, "delete") with data.zfaas.config as {}
	d.allow == false
}

# Data validation: each case is a deploy object and the errors wanted.
data_cases := [
	{"name": "valid", "deploy": config.deploy, "errors": set()},
	{"name": "dotted runtime names", "deploy": object.union(config.deploy, {"runtimes": ["python3.12", "nodejs20.x"]}), "errors": set()},
	{"name": "not an object", "deploy": [], "errors": {
		"deploy must be an object of limits",
		"deploy.runtimes is required", "deploy.max_memory_mb is required",
		"deploy.max_timeout_seconds is required", "deploy.max_concurrency is required",
	}},
	{"name": "limit missing", "deploy": object.remove(config.deploy, {"max_concurrency"}), "errors": {"deploy.max_concurrency is required"}},
	{"name": "unknown key", "deploy": object.union(config.deploy, {"max_memory": 1}), "errors": {"deploy: unknown key \"max_memory\" (want [\"max_concurrency\", \"max_memory_mb\", \"max_timeout_seconds\", \"runtimes\"])"}},
	{"name": "runtimes empty", "deploy": object.union(config.deploy, {"runtimes": []}), "errors": {"deploy.runtimes must be a non-empty array of runtime names"}},
	{"name": "runtimes not names", "deploy": object.union(config.deploy, {"runtimes": ["Go", 1]}), "errors": {"deploy.runtimes must be a non-empty array of runtime names"}},
	{"name": "limit as string", "deploy": object.union(config.deploy, {"max_memory_mb": "10240"}), "errors": {"deploy.max_memory_mb must be a positive integer, got \"10240\""}},
	{"name": "limit zero", "deploy": object.union(config.deploy, {"max_timeout_seconds": 0}), "errors": {"deploy.max_timeout_seconds must be a positive integer, got 0"}},
	{"name": "tenants not an object", "deploy": object.union(config.deploy, {"tenants": []}), "errors": {"deploy.tenants must be an object of tenant to limits"}},
	{"name": "tenant name invalid", "deploy": object.union(config.deploy, {"tenants": {"Small": {}}}), "errors": {"deploy.tenants: \"Small\" is not a valid tenant name"}},
	{"name": "tenant override not an object", "deploy": object.union(config.deploy, {"tenants": {"small": 512}}), "errors": {"deploy.tenants.small must be an object of limits"}},
	{
		"name": "tenant override checked like the defaults",
		"deploy": object.union(config.deploy, {"tenants": {"small": {"max_memory_mb": -1, "tenants": {}}}}),
		"errors": {
			"deploy.tenants.small.max_memory_mb must be a positive integer, got -1",
			"deploy.tenants.small: unknown key \"tenants\" (want [\"max_concurrency\", \"max_memory_mb\", \"max_timeout_seconds\", \"runtimes\"])",
		},
	},
]

test_data_errors_table if {
	failures := {c.name: got |
		some c in data_cases
		got := deploy.errors with data.zfaas.config as {"deploy": c.deploy}
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
