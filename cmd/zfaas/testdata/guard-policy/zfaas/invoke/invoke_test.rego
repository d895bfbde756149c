package zfaas.invoke_test

import data.zfaas.invoke

test_guarded_denied if not invoke.decision.allow with input as {"function": {"name": "guarded"}}

test_others_allowed if invoke.decision.allow with input as {"function": {"name": "hello"}}
