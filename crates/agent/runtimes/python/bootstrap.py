"""Ignition's Python runtime: a client of the AWS Lambda Runtime API.

It imports the handler named by _HANDLER ("module.function", the module relative to
LAMBDA_TASK_ROOT), then loops: fetch the next event, call handler(event, context), post the
result or the error. Output goes to stdout/stderr, which the agent keeps as the invocation's logs.
"""

import http.client
import importlib
import json
import os
import sys
import time
import traceback

API = os.environ["AWS_LAMBDA_RUNTIME_API"]
BASE = "/2018-06-01/runtime"


def request(method, path, body=None, headers=None):
    host, port = API.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=None)
    conn.request(method, BASE + path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    result = (resp.status, dict(resp.getheaders()), data)
    conn.close()
    return result


def error_doc(exc):
    return {
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        "stackTrace": traceback.format_tb(exc.__traceback__),
    }


def post_error(path, exc):
    body = json.dumps(error_doc(exc)).encode()
    request("POST", path, body, {
        "Content-Type": "application/json",
        "Lambda-Runtime-Function-Error-Type": "Unhandled",
    })


class Context:
    def __init__(self, headers):
        self.aws_request_id = headers.get("Lambda-Runtime-Aws-Request-Id", "")
        self.invoked_function_arn = headers.get("Lambda-Runtime-Invoked-Function-Arn", "")
        self._deadline_ms = int(headers.get("Lambda-Runtime-Deadline-Ms", "0"))
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")
        self.log_group_name = "/aws/lambda/" + self.function_name
        self.log_stream_name = "ignition"

    def get_remaining_time_in_millis(self):
        return max(0, self._deadline_ms - int(time.time() * 1000))


def load_handler():
    spec = os.environ["_HANDLER"]
    module_name, _, func_name = spec.rpartition(".")
    if not module_name or not func_name:
        raise ValueError("handler %r is not of the form FILE.FUNCTION" % spec)
    sys.path.insert(0, os.environ.get("LAMBDA_TASK_ROOT", "/var/task"))
    module = importlib.import_module(module_name.replace("/", "."))
    handler = getattr(module, func_name, None)
    if handler is None:
        raise AttributeError("module %r has no function %r" % (module_name, func_name))
    return handler


def main():
    try:
        handler = load_handler()
    except Exception as exc:  # noqa: BLE001 - every init failure is reported to the platform
        traceback.print_exc()
        post_error("/init/error", exc)
        sys.exit(1)
    while True:
        status, headers, event = request("GET", "/invocation/next")
        request_id = headers.get("Lambda-Runtime-Aws-Request-Id", "")
        try:
            result = handler(json.loads(event) if event else None, Context(headers))
            body = json.dumps(result).encode()
        except Exception as exc:  # noqa: BLE001 - the handler's errors go to the caller
            traceback.print_exc()
            post_error("/invocation/%s/error" % request_id, exc)
            continue
        request("POST", "/invocation/%s/response" % request_id, body,
                {"Content-Type": "application/json"})


if __name__ == "__main__":
    main()
