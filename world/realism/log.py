"""The realism layer's log: one timestamped line per call or change."""

import time


def log(msg):
    print("%s %s" % (time.strftime("%H:%M:%S"), msg), flush=True)
