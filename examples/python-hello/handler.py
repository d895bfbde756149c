"""A zfaas function in Python: answers {"name": "x"} with a greeting."""


def handle(event, context):
    name = event.get("name") if isinstance(event, dict) else None
    return {"message": "Hello, %s from Python!" % (name or "world")}
