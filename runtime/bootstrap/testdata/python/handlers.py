"""Handlers for the bootstrap tests."""
import os


class BadInput(Exception):
    pass


def ok(event, context):
    print("handling", context.aws_request_id)
    cc = context.client_context
    return {
        "message": "Hello, %s!" % (event.get("name") or "world"),
        "requestId": context.aws_request_id,
        "functionName": context.function_name,
        "functionVersion": context.function_version,
        "memoryMB": context.memory_limit_in_mb,
        "arn": context.invoked_function_arn,
        "remainingMs": context.get_remaining_time_in_millis(),
        "custom": cc.custom if cc else None,
        "trace": os.environ.get("_X_AMZN_TRACE_ID"),
    }


def fail(event, context):
    raise BadInput("bad input: %s" % event.get("name"))


def unserializable(event, context):
    return {1, 2}


def big(event, context):
    return "x" * event["size"]


not_callable = 42
