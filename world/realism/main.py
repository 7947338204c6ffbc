"""The realism layer's command line: listen, forward to moto, stop on
SIGTERM."""

import argparse
import json
import os
import signal
import sys
import threading
import urllib.parse

from . import __doc__ as PACKAGE_DOC
from .config import ConfigError, config_from_env
from .log import log
from .proxy import Handler, Server
from .state import Realism


def parse_hostport(text, what):
    host, _, port = text.rpartition(":")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise ConfigError("%s %r is not HOST:PORT" % (what, text))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="realism", description=PACKAGE_DOC.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:5055", help="HOST:PORT to serve EC2 on")
    ap.add_argument("--moto", default="http://127.0.0.1:5056", help="moto's URL")
    ap.add_argument("--pid-file", help="write this process's pid here")
    ap.add_argument("--ebs-dir", help="the fleet's EBS directory (volume backing files): "
                                      "snapshots copy their data from there")
    args = ap.parse_args(argv)
    try:
        start = config_from_env(os.environ)
        listen = parse_hostport(args.listen, "--listen")
        moto = urllib.parse.urlsplit(args.moto)
        if moto.scheme != "http" or not moto.hostname or not moto.port:
            raise ConfigError("--moto %r must be http://HOST:PORT" % args.moto)
    except ConfigError as exc:
        print("realism: %s" % exc, file=sys.stderr)
        return 2

    Handler.realism = Realism(start, args.moto)
    Handler.moto_host, Handler.moto_port = moto.hostname, moto.port
    if args.ebs_dir:
        Handler.ebs_dir = os.path.realpath(args.ebs_dir)
    try:
        server = Server(listen, Handler)
    except OSError as exc:
        print("realism: cannot listen on %s:%d: %s" % (listen[0], listen[1], exc),
              file=sys.stderr)
        return 1
    if args.pid_file:
        with open(args.pid_file, "w") as f:
            f.write("%d\n" % os.getpid())

    def stop(_signum, _frame):
        threading.Thread(target=server.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log("EC2 on http://%s:%d -> moto %s; config %s"
        % (listen[0], listen[1], args.moto, json.dumps(start, sort_keys=True)))
    try:
        server.serve_forever()
    finally:
        server.server_close()
        if args.pid_file:
            try:
                with open(args.pid_file) as f:
                    if f.read().strip() == str(os.getpid()):
                        os.unlink(args.pid_file)
            except OSError:
                pass
        log("stopped")
    return 0
