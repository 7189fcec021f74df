"""Ignition's Python runtime: a client of the AWS Lambda Runtime API.

It imports the handler named by _HANDLER ("module.function", the module relative to
LAMBDA_TASK_ROOT), then loops: fetch the next event, call handler(event, context), post the
result or the error. Output goes to stdout/stderr, which the agent keeps as the invocation's logs.
"""

import importlib
import json
import os
import socket
import sys
import time
import traceback

BASE = "/2018-06-01/runtime"


class Api:
    """A minimal HTTP/1.1 client on one kept-alive connection.

    http.client would do, but it parses headers with the email package: a lot of Python code to
    run cold in a VM just restored from a snapshot, where every code path is new to the CPU
    emulator or the caches. This is the part of HTTP the Runtime API needs and no more.
    """

    def __init__(self, address, unix_path=None):
        host, port = address.rsplit(":", 1)
        self.address = (host, int(port))
        self.unix_path = unix_path
        self.sock = None
        self.buf = b""

    def _connect(self):
        if self.unix_path:
            # The same API on a Unix socket: far less kernel code than TCP over loopback to run
            # cold in a VM just restored from a snapshot.
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.unix_path)
            except OSError:
                sock.close()
                raise
            self.sock = sock
        else:
            self.sock = socket.create_connection(self.address)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def _read_until(self, marker):
        while marker not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("runtime API closed the connection")
            self.buf += chunk
        head, _, self.buf = self.buf.partition(marker)
        return head

    def _read_exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buf)))
            if not chunk:
                raise ConnectionError("runtime API closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def request(self, method, path, body=b"", headers=None):
        for attempt in (0, 1):
            try:
                if self.sock is None:
                    self._connect()
                lines = ["%s %s%s HTTP/1.1" % (method, BASE, path), "Host: runtime",
                         "Content-Length: %d" % len(body)]
                for k, v in (headers or {}).items():
                    lines.append("%s: %s" % (k, v))
                self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
                head = self._read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
                status = int(head[0].split(" ", 2)[1])
                hdrs = {}
                for line in head[1:]:
                    k, _, v = line.partition(":")
                    hdrs[k.strip().lower()] = v.strip()
                data = self._read_exact(int(hdrs.get("content-length", "0")))
                if hdrs.get("connection", "").lower() == "close":
                    self.sock.close()
                    self.sock = None
                return status, hdrs, data
            except (ConnectionError, OSError):
                if self.sock is not None:
                    self.sock.close()
                self.sock = None
                if attempt:
                    raise


API = Api(os.environ["AWS_LAMBDA_RUNTIME_API"], os.environ.get("IGNITION_RUNTIME_API_SOCKET"))


def request(method, path, body=b"", headers=None):
    return API.request(method, path, body, headers)


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


class ClientContext:
    """What the caller sent as X-Amz-Client-Context, as Lambda's Python runtime offers it."""

    def __init__(self, doc):
        doc = doc if isinstance(doc, dict) else {}
        self.client = doc.get("client")
        self.custom = doc.get("custom")
        self.env = doc.get("env")


class Context:
    def __init__(self, headers):
        self.aws_request_id = headers.get("lambda-runtime-aws-request-id", "")
        self.invoked_function_arn = headers.get("lambda-runtime-invoked-function-arn", "")
        self._deadline_ms = int(headers.get("lambda-runtime-deadline-ms", "0"))
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.identity = None
        raw = headers.get("lambda-runtime-client-context")
        try:
            self.client_context = ClientContext(json.loads(raw)) if raw else None
        except ValueError:
            self.client_context = None

    def get_remaining_time_in_millis(self):
        return max(0, self._deadline_ms - int(time.time() * 1000))


def load_handler():
    spec = os.environ["_HANDLER"]
    module_name, _, func_name = spec.rpartition(".")
    if not module_name or not func_name:
        raise ValueError("handler %r is not of the form FILE.FUNCTION" % spec)
    # Lambda's order: the function's own code, then its layers' Python packages.
    sys.path[0:0] = [
        os.environ.get("LAMBDA_TASK_ROOT", "/var/task"),
        "/opt/python/lib/python%d.%d/site-packages" % sys.version_info[:2],
        "/opt/python",
    ]
    module = importlib.import_module(module_name.replace("/", "."))
    handler = getattr(module, func_name, None)
    if handler is None:
        raise AttributeError("module %r has no function %r" % (module_name, func_name))
    return handler


def reseed_after_restore(vm_id, last):
    """A VM restored from a snapshot inherits the interpreter's state, including the `random`
    module's generator: reseed it from the (already reseeded) kernel RNG when the VM changed."""
    if vm_id != last and "random" in sys.modules:
        sys.modules["random"].seed()
    return vm_id


def main():
    vm_id = None
    try:
        handler = load_handler()
    except Exception as exc:  # noqa: BLE001 - every init failure is reported to the platform
        traceback.print_exc()
        post_error("/init/error", exc)
        sys.exit(1)
    while True:
        status, headers, event = request("GET", "/invocation/next")
        request_id = headers.get("lambda-runtime-aws-request-id", "")
        if headers.get("ignition-warmup") == "1":
            # The platform warming a fresh VM: run the loop's own path, never the handler.
            json.dumps(json.loads(event) if event else None)
            Context(headers).get_remaining_time_in_millis()
            request("POST", "/invocation/%s/response" % request_id, b"null",
                    {"Content-Type": "application/json"})
            continue
        vm_id = reseed_after_restore(headers.get("ignition-vm-id"), vm_id)
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
