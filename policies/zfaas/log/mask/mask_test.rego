package zfaas.log.mask_test

import data.zfaas.log.mask

# A decision log event as OPA hands it to the mask policy.
event := {
	"decision_id": "4ca636c1-55e4-417a-b1d8-4aceb67960d1",
	"path": "zfaas/invoke/decision",
	"input": {
		"caller": {"spiffe_id": "spiffe://zfaas.local/user/alice", "authenticated": true, "auth_method": "jwt"},
		"request": {"headers": {"authorization": "Bearer eyJ...", "cookie": "s=1"}, "body": "secret"},
	},
	"result": {"allow": true, "reasons": ["caller belongs to tenant \"acme\""]},
}

credentials := {
	"/input/request/headers/authorization",
	"/input/request/headers/proxy-authorization",
	"/input/request/headers/cookie",
	"/input/request/body",
	"/input/attributes/request/http/headers/authorization",
	"/input/attributes/request/http/headers/cookie",
	"/input/attributes/request/http/body",
}

# Each case: the extra_mask configured, pointers that must be masked, and
# pointers that must not be.
cases := [
	{"name": "defaults", "extra": [], "masked": credentials, "kept": {"/input/caller", "/result"}},
	{"name": "no log config", "config": {}, "masked": credentials, "kept": set()},
	{
		"name": "extra pointers",
		"extra": ["/input/request/headers/x-api-key", "/result/reasons", "/input/request/headers/x%2Fweird"],
		"masked": (credentials | {"/input/request/headers/x-api-key", "/result/reasons", "/input/request/headers/x%2Fweird"}),
		"kept": set(),
	},
	{
		"name": "invalid extras are dropped, defaults kept",
		"extra": ["input/request", "/decision_id", "/input//x", "/input/", "", 7, "/requested_by"],
		"masked": credentials,
		"kept": {"input/request", "/decision_id", "/input//x", "/input/", "", "/requested_by"},
	},
	{"name": "extra_mask not an array", "extra": "/input/caller", "masked": credentials, "kept": {"/input/caller"}},
	{"name": "extras cannot unmask", "extra": ["/input/request/headers/authorization"], "masked": credentials, "kept": set()},
]

_config(c) := c.config

_config(c) := {"log": {"extra_mask": c.extra}} if not c.config

_mask(c) := m if {
	m := mask.mask with input as event with data.zfaas.config as _config(c)
}

_ok(c, m) if {
	every p in c.masked {
		p in m
	}
	every p in c.kept {
		not p in m
	}
	every p in m {
		mask.valid_pointer(p)
	}
}

test_mask_table if {
	failures := {c.name: m |
		some c in cases
		m := _mask(c)
		not _ok(c, m)
	}
	_report(failures)
	count(failures) == 0
}

test_every_case_evaluates if {
	count({c.name | some c in cases}) == count(cases)
	count({c.name | some c in cases; _mask(c)}) == count(cases)
}

test_mask_does_not_depend_on_event if {
	mask.mask == mask.always with input as {} with data.zfaas.config as {}
	mask.mask == mask.always with input as event with data.zfaas.config as {}
}

test_always_pointers_are_valid if {
	every p in mask.always {
		mask.valid_pointer(p)
	}
}

test_errors_table if {
	mask.errors == set() with data.zfaas.config as {"log": {"extra_mask": ["/input/x"]}}
	mask.errors == set() with data.zfaas.config as {}
	mask.errors == {"log.extra_mask must be an array of JSON pointers"} with data.zfaas.config as {"log": {"extra_mask": "/input/x"}}
	mask.errors == {
		"log.extra_mask: \"/decision_id\" is not a pointer under /input, /result or /nd_builtin_cache",
		"log.extra_mask: 7 is not a pointer under /input, /result or /nd_builtin_cache",
	} with data.zfaas.config as {"log": {"extra_mask": ["/decision_id", 7, "/result"]}}
}

_report(failures) if count(failures) == 0

_report(failures) if {
	count(failures) > 0
	print("failing cases:", failures)
}
