package zfaas.invoke_test

import data.zfaas.invoke

test_allowed_caller if {
	invoke.decision.allow with input as {"caller": {"spiffe_id": "spiffe://zfaas.test/ns/acme/fn/a"}, "function": {"name": "f"}}
}

test_blocked_caller if {
	not invoke.decision.allow with input as {"caller": {"spiffe_id": "spiffe://zfaas.test/ns/evil/fn/x"}}
}

test_unknown_caller_undefined if {
	not invoke.decision with input as {"caller": {"spiffe_id": "spiffe://zfaas.test/ns/other/fn/y"}}
}
