"""The control endpoint ``/_realism``: read the knobs, counters and state,
change knobs, reset."""

import json

from .config import ConfigError
from .log import log


class ControlEndpoint:
    """A part of ``proxy.Handler``: answers requests under ``/_realism``."""

    def control(self, path):
        realism = self.realism
        try:
            body = self.read_body()
        except (ValueError, OSError) as exc:
            self.close_connection = True
            return self.send_json(400, {"error": "body unreadable: %s" % exc})
        if path == "/_realism" and self.command in ("GET", "HEAD"):
            return self.send_json(200, realism.snapshot())
        if path == "/_realism" and self.command == "POST":
            try:
                changes = json.loads(body.decode("utf-8") or "{}")
            except ValueError as exc:
                return self.send_json(400, {"error": "the body is not JSON: %s" % exc})
            try:
                realism.change(changes)
            except ConfigError as exc:
                return self.send_json(400, {"error": str(exc)})
            log("config changed: %s" % json.dumps(changes, sort_keys=True))
            return self.send_json(200, realism.snapshot())
        if path == "/_realism/reset" and self.command == "POST":
            realism.reset()
            log("reset to the start configuration; counters zeroed")
            return self.send_json(200, realism.snapshot())
        return self.send_json(404, {"error": "%s %s: use GET or POST /_realism, POST "
                                             "/_realism/reset" % (self.command, path)})
