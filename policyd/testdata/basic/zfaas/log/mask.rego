# Test policy: erase credentials from the decision log.
package zfaas.log.mask

mask contains "/input/request/headers/authorization"

mask contains "/input/request/headers/cookie"

mask contains {"op": "upsert", "path": "/input/password", "value": "**REDACTED**"} if {
	input.input.password
}
