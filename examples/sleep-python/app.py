"""Sleeps for event["sleep"] seconds (default 1) and echoes event["i"]: a stand-in for a
function that waits on I/O, used by the cluster tests and scripts/measure-cluster.sh."""

import time


def handler(event, context):
    seconds = float(event.get("sleep", 1))
    time.sleep(seconds)
    return {"i": event.get("i"), "slept": seconds}
