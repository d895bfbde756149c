# Test policy: callers on the allow list may invoke; blocked callers are
# denied with a reason; anyone else gets an undefined decision.
package zfaas.invoke

decision := {"allow": true, "reasons": [sprintf("%s may invoke %s", [input.caller.spiffe_id, input.function.name])]} if {
	input.caller.spiffe_id in data.zfaas.config.allowed_callers
}

decision := {"allow": false, "reasons": ["caller is blocked"]} if {
	input.caller.spiffe_id in data.zfaas.config.blocked_callers
}
