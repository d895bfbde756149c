# Test policy: a malformed decision (allow is not a boolean).
package zfaas.deploy

decision := {"allow": "yes", "reasons": ["looks fine"]}
