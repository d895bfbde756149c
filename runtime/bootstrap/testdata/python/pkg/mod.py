"""A handler inside a package."""


def handle(event, context):
    return {
        "message": "Hello, %s!" % event["name"],
        "requestId": context.aws_request_id,
        "remainingMs": context.get_remaining_time_in_millis(),
    }
