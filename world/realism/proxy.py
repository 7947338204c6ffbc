"""The HTTP proxy in front of moto: every request forwarded as it came, and
each EC2 call taken through the rules in order (hidden resources, faults,
EBS checks, ClientTokens, then the answer rewritten)."""

import http.client
import http.server
import json
import re
import socketserver
import time
import traceback
import urllib.parse
import xml.parsers.expat

from .config import PRE_FAULTS
from .consistency import hidden_named, record_creates, rewrite_describe
from .control import ControlEndpoint
from .ebs import EBS_CHECKED, EbsChecks
from .ebs_timing import EbsTiming, timing_refusal
from .ec2xml import error_body
from .images import architecture_refusal, rewrite_images
from .launch_kms import LaunchKms
from .log import log
from .quotas import QUOTA_CHECKED, quota_refusal
from .tokens import ClientTokens

DEFAULT_ACCOUNT = "123456789012"
DEFAULT_REGION = "us-east-1"

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
    "proxy-authorization", "te", "trailer", "trailers", "transfer-encoding",
    "upgrade", "expect", "content-length",
}

CREDENTIAL_REGION_RE = re.compile(r"Credential=[^/,\s]+/\d{8}/([a-z0-9-]+)/")


class Handler(ClientTokens, EbsChecks, EbsTiming, LaunchKms, ControlEndpoint,
              http.server.BaseHTTPRequestHandler):
    """One client connection: EC2 calls forwarded to moto under the rules
    above, moto's own API passed through, ``/_realism`` answered."""

    protocol_version = "HTTP/1.1"
    server_version = "votingstack-realism"
    timeout = 300  # idle keep-alive connections

    # set on the class by main()
    realism = None
    moto_host = "127.0.0.1"
    moto_port = 5056

    def log_message(self, fmt, *args):  # the request log is written by handle_any
        pass

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = lambda self: self.handle_any()

    # -- plumbing

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def send(self, status, body, headers=(), content_type=None):
        self.sent = True
        self.send_response(status)
        seen_type = False
        for k, v in headers:
            if k.lower() in HOP_BY_HOP or k.lower() in ("server", "date"):
                continue
            if k.lower() == "content-type":
                seen_type = True
            self.send_header(k, v)
        if not seen_type and content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error_xml(self, status, code, message):
        self.send(status, error_body(code, message), content_type="text/xml;charset=UTF-8")

    def send_json(self, status, obj):
        self.send(status, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode(),
                  content_type="application/json")

    def forward(self, body, path=None):
        """Send the request as it came (or with the body and path given) to
        moto; (status, headers, body)."""
        conn = http.client.HTTPConnection(self.moto_host, self.moto_port, timeout=120)
        try:
            conn.putrequest(self.command, path or self.path, skip_host=True,
                            skip_accept_encoding=True)
            for k, v in self.headers.items():
                if k.lower() not in HOP_BY_HOP:
                    conn.putheader(k, v)
            mapped = self.mapped_account()
            if mapped and not self.headers.get("x-moto-account-id"):
                conn.putheader("x-moto-account-id", mapped)
            if body or self.command in ("POST", "PUT"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.getheaders(), data
        finally:
            conn.close()

    # -- request

    def handle_any(self):
        self.sent = False
        t0 = time.monotonic()
        split = urllib.parse.urlsplit(self.path)
        if split.path == "/_realism" or split.path.startswith("/_realism/"):
            return self.control(split.path)
        try:
            body = self.read_body()
        except (ValueError, OSError) as exc:
            self.close_connection = True
            return self.send_error_xml(400, "MalformedQueryString",
                                       "the request body could not be read: %s" % exc)
        params = urllib.parse.parse_qsl(split.query, keep_blank_values=True)
        ctype = self.headers.get("Content-Type", "")
        if body and ctype.lower().startswith("application/x-www-form-urlencoded"):
            try:
                params += urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True)
            except UnicodeDecodeError:
                return self.send_error_xml(400, "MalformedQueryString",
                                           "the form body is not UTF-8")
        action = dict(params).get("Action")
        if not action:
            return self.passthrough(body, split.path, t0)
        try:
            outcome = self.ec2(action, params, body)
        except OSError as exc:
            outcome = "moto unreachable: %s" % exc
            if not self.sent:
                self.send_error_xml(503, "Unavailable",
                                    "the realism layer could not reach moto at %s: %s"
                                    % (self.realism.moto_url, exc))
        except Exception as exc:  # a bug here must not look like an EC2 answer
            outcome = "realism layer failed: %r" % exc
            traceback.print_exc()
            self.close_connection = True
            if not self.sent:
                self.send_error_xml(500, "InternalError",
                                    "the realism layer failed on %s: %r (see realism.log)"
                                    % (action, exc))
        log("%s %s %.0fms" % (action, outcome, (time.monotonic() - t0) * 1000))

    def passthrough(self, body, path, t0):
        """Non-EC2 requests (moto's own API) go through untouched."""
        try:
            status, headers, data = self.forward(body)
        except OSError as exc:
            return self.send_error_xml(503, "Unavailable", "moto at %s: %s"
                                       % (self.realism.moto_url, exc))
        if path == "/moto-api/reset" and self.command == "POST" and status == 200:
            self.realism.forget_moto_state()
            log("moto reset: tokens and hidden resources forgotten")
        self.send(status, data, headers)
        log("%s %s -> %d %.0fms" % (self.command, path, status, (time.monotonic() - t0) * 1000))

    def access_key(self):
        """The access key id the request was signed with ('' if none)."""
        auth = self.headers.get("Authorization", "")
        m = re.search(r"Credential=([^/,\s]+)/", auth)
        if m:
            return m.group(1)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        return (query.get("X-Amz-Credential", [""])[0].split("/") or [""])[0]

    def mapped_account(self):
        """The account an access key stands for (access_key_accounts), if any."""
        with self.realism.lock:
            return self.realism.config["access_key_accounts"].get(self.access_key())

    def scope(self):
        account = (self.headers.get("x-moto-account-id") or self.mapped_account()
                   or DEFAULT_ACCOUNT)
        auth = self.headers.get("Authorization", "")
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        cred = query.get("X-Amz-Credential", [""])[0]
        m = CREDENTIAL_REGION_RE.search(auth) or re.search(r"^[^/]+/\d{8}/([a-z0-9-]+)/", cred)
        return (account, m.group(1) if m else DEFAULT_REGION)

    def ec2(self, action, params, body):
        """Answer one EC2 call; returns a short outcome for the log."""
        realism = self.realism
        realism.count("calls", action)
        scope = self.scope()
        # A call naming a resource not visible yet fails before any fault is
        # drawn, so a queued fault is never used up by it.
        lagging = realism.in_fault_scope(self.access_key())
        missing = hidden_named(realism, scope, action, params) if lagging else None
        if missing:
            realism.count("not_found", action)
            self.send_error_xml(400, missing[0], missing[1])
            return "%s (not visible yet)" % missing[0]
        # EBS changes under way are EC2's state, for every caller
        waiting = timing_refusal(realism, scope, action, params)
        if waiting:
            realism.count("refusals", action)
            self.send_error_xml(400, waiting[0], waiting[1])
            return "%s (EBS change under way)" % waiting[0]

        wrong = architecture_refusal(self.moto_host, self.moto_port, scope, action, params)
        if wrong:
            realism.count("refusals", action)
            self.send_error_xml(400, wrong[0], wrong[1])
            return "%s (image and instance type differ in architecture)" % wrong[0]

        fault = realism.pick_fault(action, self.access_key())
        if fault in PRE_FAULTS:
            realism.count("faults", action, fault)
            if fault == "throttle":
                self.send_error_xml(503, "RequestLimitExceeded",
                                    "Request rate exceeded for %s (injected by the realism "
                                    "layer); back off and retry" % action)
            elif fault == "unavailable":
                self.send_error_xml(503, "Unavailable",
                                    "The service is unavailable for %s (injected); retry"
                                    % action)
            else:
                self.send_error_xml(500, "InternalError",
                                    "An internal error occurred in %s (injected); retry"
                                    % action)
            return "fault " + fault

        before = self.ebs_before(action, params, scope)
        token = dict(params).get("ClientToken")
        replayed = False
        if action in QUOTA_CHECKED and not (token and realism.token_seen(scope + (token,))):
            # checked and carried out one at a time: two creates cannot both
            # take the last of a quota
            with realism.quota_lock:
                refusal = quota_refusal(realism, self.moto_host, self.moto_port, scope, action,
                                        params)
                if refusal:
                    realism.count("quota_refusals", action)
                    self.send_error_xml(400, refusal[0], refusal[1])
                    return "%s (over the account's quota)" % refusal[0]
                if token:
                    status, headers, data, replayed = self.idempotent(action, params, body, scope,
                                                                      token)
                    if status is None:
                        return "IdempotentParameterMismatch"
                else:
                    status, headers, data = self.forward(body)
        elif action in EBS_CHECKED:
            with realism.ebs_lock:
                refusal, body, path = self.ebs_check(action, params, body, scope)
                if refusal:
                    realism.count("refusals", action)
                    self.send_error_xml(400, refusal[0], refusal[1])
                    return "%s (refused as EC2 would)" % refusal[0]
                status, headers, data = self.forward(body, path)
        elif token:
            status, headers, data, replayed = self.idempotent(action, params, body, scope, token)
            if status is None:
                return "IdempotentParameterMismatch"
        else:
            status, headers, data = self.forward(body)

        if not replayed:
            try:
                data = self.ebs_after(action, params, scope, status, data, before)
                self.kill_at_launch(action, params, scope, status, data)
            except (xml.parsers.expat.ExpatError, ValueError) as exc:
                log("%s: answer left as is, not EC2 XML: %s" % (action, exc))
        if status == 200 and not replayed:
            try:
                record_creates(realism, scope, action, data)
                data = rewrite_describe(realism, scope, action, data, hide=lagging)
                data = self.ebs_rewrite(action, scope, data)
                data = self.launch_kms_rewrite(action, scope, data)
                data = rewrite_images(action, data)
            except (xml.parsers.expat.ExpatError, ValueError) as exc:
                log("%s: answer left as is, not EC2 XML: %s" % (action, exc))

        if fault == "lost":
            realism.count("faults", action, fault)
            self.send_error_xml(500, "InternalError",
                                "An internal error occurred (injected: %s was carried out "
                                "but its answer was lost); retry" % action)
            return "moto %d, answer lost (500)" % status
        if fault == "drop":
            realism.count("faults", action, fault)
            self.close_connection = True
            return "moto %d, connection dropped" % status
        self.send(status, data, headers)
        return "%d%s" % (status, " (replay of ClientToken)" if replayed else "")


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

