"""A sample Ignition function: greets the caller and reports where it ran."""

import os
import platform


def handler(event, context):
    name = (event or {}).get("name", "world")
    return {
        "message": "Hello, %s!" % name,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "request_id": context.aws_request_id,
        "memory_mib": context.memory_limit_in_mb,
        "pid": os.getpid(),
    }
