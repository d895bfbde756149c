# Test policy for the end-to-end tests: every invocation is allowed except
# of the function "guarded".
package zfaas.invoke

decision := {"allow": allow, "reasons": reasons}

default allow := false

allow if input.function.name != "guarded"

reasons := ["guarded is closed"] if not allow

else := ["open"]
