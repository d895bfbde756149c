#!/usr/bin/env python3
"""zfaas runtime bootstrap for Python "module.function" handlers.

The zfaas worker runs this file as the function's main process. It imports
the handler named by _HANDLER from LAMBDA_TASK_ROOT and then loops over the
AWS Lambda Runtime API at AWS_LAMBDA_RUNTIME_API: fetch an event, call
handler(event, context), post the JSON-encoded result or the error.

Only the standard library is used, so it runs on any python3 >= 3.8.
"""

import http.client
import importlib
import json
import os
import sys
import time
import traceback

API_VERSION = "2018-06-01"
ERROR_TYPE_HEADER = "Lambda-Runtime-Function-Error-Type"


class RuntimeAPIError(Exception):
    """The Runtime API refused a request or could not be reached.

    fatal is True when the runtime cannot go on: the API is unreachable or
    will not hand out events.
    """

    def __init__(self, message, fatal):
        super().__init__(message)
        self.fatal = fatal


class RuntimeClient:
    """A minimal client for the Lambda Runtime API over one keep-alive connection."""

    def __init__(self, address):
        self.address = address
        self.conn = None

    def _request(self, method, path, body=None, headers=None):
        """Sends one request; raises RuntimeAPIError(fatal=False) when it fails."""
        url = "/%s/runtime/%s" % (API_VERSION, path)
        for attempt in range(2):
            reused = self.conn is not None
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.address, timeout=None)
            conn = self.conn
            try:
                try:
                    conn.request(method, url, body=body, headers=headers or {})
                except OSError:
                    # The server may have answered (e.g. 413) and closed the
                    # connection before reading the whole body.
                    resp = conn.getresponse()
                else:
                    resp = conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    conn.close()
                    self.conn = None
                return resp, data
            except (http.client.HTTPException, OSError) as e:
                conn.close()
                self.conn = None
                # Retry once if a kept-alive connection had gone stale.
                if not reused or attempt > 0:
                    raise RuntimeAPIError("%s %s: %s" % (method, url, e), fatal=False)

    def next(self):
        try:
            resp, data = self._request("GET", "invocation/next")
        except RuntimeAPIError as e:
            raise RuntimeAPIError(str(e), fatal=True)
        if resp.status != 200:
            raise RuntimeAPIError("GET next: status %d: %r" % (resp.status, data[:512]), fatal=True)
        return resp.headers, data

    def _post(self, path, payload, content_type, error_type=None):
        # A failed answer is never fatal: the next GET next tells whether
        # the Runtime API is still there.
        headers = {"Content-Type": content_type}
        if error_type:
            headers[ERROR_TYPE_HEADER] = error_type
        resp, data = self._request("POST", path, body=payload, headers=headers)
        if resp.status != 202:
            raise RuntimeAPIError("POST %s: status %d: %r" % (path, resp.status, data[:512]), fatal=False)

    def post_response(self, request_id, payload):
        self._post("invocation/%s/response" % request_id, payload, "application/json")

    def post_error(self, request_id, error):
        self._post("invocation/%s/error" % request_id, _encode(error),
                   "application/json", error["errorType"])

    def post_init_error(self, error):
        self._post("init/error", _encode(error), "application/json", error["errorType"])


def _encode(obj):
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def _log_error(error):
    print(json.dumps(error, ensure_ascii=False), file=sys.stderr, flush=True)


def error_report(exc, error_type=None):
    """Returns the Runtime API error body for an exception."""
    tb = traceback.extract_tb(exc.__traceback__)
    return {
        "errorMessage": str(exc),
        "errorType": error_type or type(exc).__name__,
        "stackTrace": [line.rstrip("\n") for line in traceback.format_list(tb)],
    }


class _Namespace:
    """An object whose attributes come from a dict, like Lambda's context parts."""

    def __init__(self, **attrs):
        self.__dict__.update(attrs)

    def __repr__(self):
        return "%s(%r)" % (type(self).__name__, self.__dict__)


class ClientContext(_Namespace):
    pass


class CognitoIdentity(_Namespace):
    pass


class LambdaContext:
    """The context object passed to handlers, modelled on AWS Lambda's."""

    def __init__(self, request_id, deadline_ms, invoked_function_arn, client_context, identity):
        self.aws_request_id = request_id
        self.invoked_function_arn = invoked_function_arn
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        try:
            self.memory_limit_in_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "0"))
        except ValueError:
            self.memory_limit_in_mb = 0
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME")
        self.client_context = client_context
        self.identity = identity
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self):
        """Milliseconds left before the invocation times out (never negative)."""
        return max(0, self._deadline_ms - int(time.time() * 1000))

    def __repr__(self):
        return "LambdaContext(aws_request_id=%r, function_name=%r, function_version=%r)" % (
            self.aws_request_id, self.function_name, self.function_version)


def _parse_client_context(raw):
    if not raw:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    client = doc.get("client") or doc.get("Client")
    return ClientContext(
        client=_Namespace(**client) if isinstance(client, dict) else None,
        custom=doc.get("custom"),
        env=doc.get("env"),
    )


def _parse_identity(raw):
    if not raw:
        return CognitoIdentity(cognito_identity_id=None, cognito_identity_pool_id=None)
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    return CognitoIdentity(
        cognito_identity_id=doc.get("cognitoIdentityId"),
        cognito_identity_pool_id=doc.get("cognitoIdentityPoolId"),
    )


class InitFailure(Exception):
    """The handler could not be loaded; carries the Runtime API error body."""

    def __init__(self, report):
        super().__init__(report["errorMessage"])
        self.report = report


def load_handler(task_root, spec):
    """Imports "module.function" (module may be "pkg.mod" or "dir/mod") from task_root."""
    module_name, sep, func_name = spec.rpartition(".")
    if not sep or not module_name or not func_name:
        raise InitFailure({
            "errorMessage": "Bad handler '%s': want module.function" % spec,
            "errorType": "Runtime.MalformedHandlerName",
            "stackTrace": [],
        })
    module_name = module_name.replace("/", ".")
    if task_root not in sys.path:
        sys.path.insert(0, task_root)
    try:
        module = importlib.import_module(module_name)
    except SyntaxError as e:
        raise InitFailure(error_report(e, "Runtime.UserCodeSyntaxError"))
    except ImportError as e:
        report = error_report(e, "Runtime.ImportModuleError")
        report["errorMessage"] = "Unable to import module '%s': %s" % (module_name, e)
        raise InitFailure(report)
    except Exception as e:
        report = error_report(e, "Runtime.ImportModuleError")
        report["errorMessage"] = "Unable to import module '%s': %s: %s" % (
            module_name, type(e).__name__, e)
        raise InitFailure(report)
    handler = getattr(module, func_name, None)
    if handler is None:
        raise InitFailure({
            "errorMessage": "Handler '%s' missing on module '%s'" % (func_name, module_name),
            "errorType": "Runtime.HandlerNotFound",
            "stackTrace": [],
        })
    if not callable(handler):
        raise InitFailure({
            "errorMessage": "Handler '%s' on module '%s' is not callable" % (func_name, module_name),
            "errorType": "Runtime.HandlerNotFound",
            "stackTrace": [],
        })
    return handler


def handle_one(client, handler, headers, body):
    request_id = headers.get("Lambda-Runtime-Aws-Request-Id", "")
    try:
        deadline_ms = int(headers.get("Lambda-Runtime-Deadline-Ms", "0"))
    except ValueError:
        deadline_ms = 0
    trace_id = headers.get("Lambda-Runtime-Trace-Id")
    if trace_id:
        os.environ["_X_AMZN_TRACE_ID"] = trace_id
    else:
        os.environ.pop("_X_AMZN_TRACE_ID", None)
    context = LambdaContext(
        request_id, deadline_ms,
        headers.get("Lambda-Runtime-Invoked-Function-Arn", ""),
        _parse_client_context(headers.get("Lambda-Runtime-Client-Context")),
        _parse_identity(headers.get("Lambda-Runtime-Cognito-Identity")),
    )
    try:
        event = json.loads(body) if body else None
    except ValueError as e:
        report = error_report(e, "Runtime.UnmarshalError")
        report["errorMessage"] = "Unable to parse the event as JSON: %s" % e
        _log_error(report)
        client.post_error(request_id, report)
        return
    try:
        result = handler(event, context)
    except Exception as e:
        report = error_report(e)
        _log_error(report)
        client.post_error(request_id, report)
        return
    try:
        payload = _encode(result)
    except (TypeError, ValueError) as e:
        report = error_report(e, "Runtime.MarshalError")
        report["errorMessage"] = "Unable to marshal the response: %s" % e
        _log_error(report)
        client.post_error(request_id, report)
        return
    client.post_response(request_id, payload)


def main():
    # The task root is read-only: do not try to cache bytecode there.
    sys.dont_write_bytecode = True
    # Logs reach the worker promptly, a line at a time.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except (AttributeError, ValueError):
            pass
    address = os.environ.get("AWS_LAMBDA_RUNTIME_API")
    if not address:
        print("bootstrap: AWS_LAMBDA_RUNTIME_API is not set", file=sys.stderr)
        return 1
    client = RuntimeClient(address)
    task_root = os.environ.get("LAMBDA_TASK_ROOT") or os.getcwd()
    try:
        handler = load_handler(task_root, os.environ.get("_HANDLER", ""))
    except InitFailure as e:
        _log_error(e.report)
        try:
            client.post_init_error(e.report)
        except RuntimeAPIError as err:
            print("bootstrap: report init error: %s" % err, file=sys.stderr)
        return 1
    while True:
        try:
            headers, body = client.next()
            handle_one(client, handler, headers, body)
        except RuntimeAPIError as e:
            # A refused answer (e.g. a response over the size limit) leaves
            # the instance usable; a lost API does not.
            print("bootstrap: %s" % e, file=sys.stderr, flush=True)
            if e.fatal:
                return 1


if __name__ == "__main__":
    sys.exit(main())
