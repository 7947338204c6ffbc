"""The fleet's log: timestamped lines on stdout, repeated ones at most once
per period."""

import time


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%S")


_last_msgs = {}


def log(msg, key=None, every=60.0):
    """Print msg; with a key, at most once per `every` seconds for that key."""
    if key is not None:
        t = time.monotonic()
        if key in _last_msgs and t - _last_msgs[key] < every:
            return
        _last_msgs[key] = t
    print("%s %s" % (now(), msg), flush=True)
