# Test policy: every control action is allowed.
package zfaas.deploy

decision := {"allow": true, "reasons": ["test policy allows everything"]}
