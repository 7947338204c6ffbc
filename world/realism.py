"""EC2 realism layer: an HTTP proxy in front of moto for the local world.

It speaks the EC2 Query API (form-encoded POST or GET with Action=...),
forwards every request unchanged (headers and body as they came, so SigV4
signatures pass) to moto, and makes the answers behave more like EC2's:

* a ClientToken is honoured: the same token with the same parameters returns
  the first answer, with other parameters IdempotentParameterMismatch;
* eventual consistency: a resource just created may be missing from Describe*
  answers and give <Kind>.NotFound to calls that name it, for a while;
* an instance shows as pending for a while after RunInstances/StartInstances;
* faults on request: throttling, 5xx, and lost answers (moto did the work,
  the client gets a 500 or a closed connection);
* EBS: AttachVolume is refused as EC2 refuses it (a volume of another zone,
  one in use, an instance neither running nor stopped, a device name the
  instance already uses), and DetachVolume without InstanceId works (moto
  needs the instance: the layer names the one the volume is attached to).

Knobs come from VS_REALISM_* environment variables at start and can be read
and changed at runtime at /_realism on the same port (see world/README.md,
"Realism layer"). Standard library only.
"""

import argparse
import copy
import http.client
import http.server
import json
import os
import random
import re
import signal
import socketserver
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
import xml.etree.ElementTree as ElementTree
import xml.parsers.expat
from xml.sax.saxutils import escape

DEFAULT_ACCOUNT = "123456789012"
DEFAULT_REGION = "us-east-1"
MAX_CONSISTENCY_SECONDS = 5.0

# faults decided before the request reaches moto, and after moto did it
PRE_FAULTS = ("throttle", "unavailable", "internal")
POST_FAULTS = ("lost", "drop")
FAULTS = PRE_FAULTS + POST_FAULTS

# request fields that do not make a request different for ClientToken purposes
VOLATILE_PARAMS = {
    "ClientToken", "Version", "Signature", "SignatureMethod", "SignatureVersion",
    "Timestamp", "Expires", "AWSAccessKeyId", "SecurityToken",
}

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
    "proxy-authorization", "te", "trailer", "trailers", "transfer-encoding",
    "upgrade", "expect", "content-length",
}

ACTION_RE = re.compile(r"^[A-Z][A-Za-z0-9]{1,100}$")
CREDENTIAL_REGION_RE = re.compile(r"Credential=[^/,\s]+/\d{8}/([a-z0-9-]+)/")


class ConfigError(Exception):
    """A knob has a value the layer cannot use."""


class Kind:
    """A kind of resource that can be hidden for a while after it is created.

    creates: action -> (element path of the container, field with the id);
    describes: action -> (element path of one item, id fields of the item);
    params: request field names (last part, numbers dropped) naming this kind.
    """

    def __init__(self, name, code, noun, params, creates, describes, exempt=()):
        self.name = name
        self.code = code
        self.noun = noun
        self.params = set(params)
        self.creates = creates
        self.describes = describes
        self.exempt = set(exempt)


KINDS = [
    Kind("instance", "InvalidInstanceID.NotFound", "instance ID",
         {"InstanceId", "ResourceId"},
         {"RunInstances": ("instancesSet/item", ("instanceId",))},
         {"DescribeInstances": ("reservationSet/item/instancesSet/item", ("instanceId",)),
          "DescribeInstanceStatus": ("instanceStatusSet/item", ("instanceId",))}),
    Kind("group", "InvalidGroup.NotFound", "security group",
         {"GroupId", "SecurityGroupId", "ResourceId"},
         {"CreateSecurityGroup": ("", ("groupId",))},
         {"DescribeSecurityGroups": ("securityGroupInfo/item", ("groupId",))}),
    # a retried create of the same key answers Duplicate, a delete always succeeds
    Kind("key", "InvalidKeyPair.NotFound", "key pair",
         {"KeyName", "KeyPairId", "ResourceId"},
         {"CreateKeyPair": ("", ("keyName", "keyPairId")),
          "ImportKeyPair": ("", ("keyName", "keyPairId"))},
         {"DescribeKeyPairs": ("keySet/item", ("keyName", "keyPairId"))},
         exempt={"CreateKeyPair", "ImportKeyPair", "DeleteKeyPair"}),
    Kind("vpc", "InvalidVpcID.NotFound", "VPC ID",
         {"VpcId", "ResourceId"},
         {"CreateVpc": ("vpc", ("vpcId",))},
         {"DescribeVpcs": ("vpcSet/item", ("vpcId",))}),
    Kind("subnet", "InvalidSubnetID.NotFound", "subnet ID",
         {"SubnetId", "ResourceId"},
         {"CreateSubnet": ("subnet", ("subnetId",))},
         {"DescribeSubnets": ("subnetSet/item", ("subnetId",))}),
    Kind("igw", "InvalidInternetGatewayID.NotFound", "internet gateway ID",
         {"InternetGatewayId", "GatewayId", "ResourceId"},
         {"CreateInternetGateway": ("internetGateway", ("internetGatewayId",))},
         {"DescribeInternetGateways": ("internetGatewaySet/item", ("internetGatewayId",))}),
    Kind("nat", "NatGatewayNotFound", "NAT gateway",
         {"NatGatewayId", "ResourceId"},
         {"CreateNatGateway": ("natGateway", ("natGatewayId",))},
         {"DescribeNatGateways": ("natGatewaySet/item", ("natGatewayId",))}),
    Kind("rtb", "InvalidRouteTableID.NotFound", "route table ID",
         {"RouteTableId", "ResourceId"},
         {"CreateRouteTable": ("routeTable", ("routeTableId",))},
         {"DescribeRouteTables": ("routeTableSet/item", ("routeTableId",))}),
]

# instance state shown during the pending window: path of the instance item
# and of its state element, per action
PENDING_RULES = {
    "DescribeInstances": "reservationSet/item/instancesSet/item",
    "DescribeInstanceStatus": "instanceStatusSet/item",
}
PENDING_STARTS = {
    "RunInstances": "instancesSet/item",
    "StartInstances": "instancesSet/item",
}
PENDING_STATE = b"<instanceState><code>0</code><name>pending</name></instanceState>"

# EBS calls the layer checks against moto's state before forwarding them
# (one at a time, so two attaches of one volume cannot both pass)
EBS_CHECKED = ("AttachVolume", "DetachVolume")
# instance states a volume can be attached in
ATTACHABLE = ("running", "stopped")
EC2_API_VERSION = "2016-11-15"


def log(msg):
    print("%s %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


# ------------------------------------------------------------------ XML ----

class Element:
    """An element of interest in a response: its byte span and the text and
    spans of its direct children."""

    def __init__(self, path, start):
        self.path = path
        self.start = start
        self.end = start
        self.text = {}
        self.spans = {}

    def contains(self, other):
        return self.start <= other.start and other.end <= self.end


def scan(body, paths):
    """Elements of body whose path below the root is in paths ("" is the root).

    Raises xml.parsers.expat.ExpatError when body is not XML."""
    parser = xml.parsers.expat.ParserCreate()
    parser.buffer_text = True
    stack = []  # [tag, path, Element or None, text parts or None, start]
    found = []

    def start(tag, _attrs):
        idx = parser.CurrentByteIndex
        if stack:
            parent_path = stack[-1][1]
            path = parent_path + "/" + tag if parent_path else tag
        else:
            path = ""
        elem = Element(path, idx) if path in paths else None
        collect = [] if stack and stack[-1][2] is not None else None
        stack.append([tag, path, elem, collect, idx])

    def end(_tag):
        idx = parser.CurrentByteIndex
        tag, _path, elem, text, begin = stack.pop()
        first = body.index(b">", begin)
        if body[first - 1:first] == b"/":  # <tag/>
            stop = first + 1
        else:
            stop = body.index(b">", idx) + 1
        if elem is not None:
            elem.end = stop
            found.append(elem)
        if text is not None:
            parent = stack[-1][2]
            parent.text[tag] = "".join(text)
            parent.spans[tag] = (begin, stop)

    def chars(data):
        if stack and stack[-1][3] is not None:
            stack[-1][3].append(data)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    parser.Parse(body, True)
    return found


def apply_edits(body, edits):
    """Replace (start, end, bytes) spans of body; overlapping edits inside an
    earlier-starting wider one are dropped."""
    edits = sorted(edits, key=lambda e: (e[0], -e[1]))
    kept = []
    for e in edits:
        if kept and e[0] < kept[-1][1]:
            continue
        kept.append(e)
    out = body
    for s, t, rep in reversed(kept):
        out = out[:s] + rep + out[t:]
    return out


def error_body(code, message):
    return ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>"
            "<Code>%s</Code><Message>%s</Message></Error></Errors>"
            "<RequestID>%s</RequestID></Response>"
            % (escape(code), escape(message), uuid.uuid4())).encode()


def new_request_id(body):
    return re.sub(rb"<requestId>[^<]*</requestId>",
                  ("<requestId>%s</requestId>" % uuid.uuid4()).encode(), body, count=1)


# --------------------------------------------------------------- config ----

def default_config():
    return {
        "consistency_seconds": 0.0,
        "consistency_random": False,
        "pending_seconds": 2.0,
        "seed": 0,
        "throttle": {},
        "unavailable": {},
        "internal": {},
        "lost": {},
        "drop": {},
        "fail_next": {},
        "fault_access_keys": [],
    }


def _number(key, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError("%s must be a number, not %r" % (key, value))
    if not lo <= value <= hi:
        raise ConfigError("%s must be between %s and %s, not %s" % (key, lo, hi, value))
    return float(value)


def _action_key(key, action):
    if action != "*" and not ACTION_RE.match(str(action)):
        raise ConfigError("%s: %r is neither an EC2 action name nor \"*\"" % (key, action))
    return str(action)


def apply_changes(cfg, changes):
    """Validate changes (a dict of knobs) and apply them to a copy of cfg.

    Fault maps are replaced; fail_next replaces the queue of each action named."""
    if not isinstance(changes, dict):
        raise ConfigError("the body must be a JSON object of knobs")
    new = copy.deepcopy(cfg)
    for key, value in changes.items():
        if key == "consistency_seconds":
            new[key] = _number(key, value, 0, MAX_CONSISTENCY_SECONDS)
        elif key == "pending_seconds":
            new[key] = _number(key, value, 0, 600)
        elif key == "consistency_random":
            if not isinstance(value, bool):
                raise ConfigError("consistency_random must be true or false, not %r" % (value,))
            new[key] = value
        elif key == "seed":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError("seed must be an integer, not %r" % (value,))
            new[key] = value
        elif key in FAULTS:
            if not isinstance(value, dict):
                value = {"*": value}
            new[key] = {_action_key(key, a): _number("%s.%s" % (key, a), p, 0, 1)
                        for a, p in value.items()}
        elif key == "fault_access_keys":
            if not isinstance(value, list) or not all(isinstance(k, str) and k for k in value):
                raise ConfigError("fault_access_keys must be a list of access key ids, not %r" % (value,))
            new[key] = list(value)
        elif key == "fail_next":
            if not isinstance(value, dict):
                raise ConfigError("fail_next must map an action (or \"*\") to a list of faults")
            for action, faults in value.items():
                action = _action_key(key, action)
                if isinstance(faults, str):
                    faults = [faults]
                if not isinstance(faults, list) or any(f not in FAULTS for f in faults):
                    raise ConfigError("fail_next.%s must be a list of faults out of %s, not %r"
                                      % (action, ", ".join(FAULTS), faults))
                if faults:
                    new[key][action] = list(faults)
                else:
                    new[key].pop(action, None)
        else:
            raise ConfigError("unknown knob %r (known: %s)"
                              % (key, ", ".join(sorted(default_config()))))
    return new


def parse_probabilities(var, text):
    """"0.1" or "RunInstances=0.5,*=0.05" -> {action: probability}."""
    text = text.strip()
    if not text:
        return {}
    if "=" not in text:
        try:
            return {"*": float(text)}
        except ValueError:
            raise ConfigError("%s=%r: expected a probability or ACTION=P,..." % (var, text))
    out = {}
    for part in text.split(","):
        action, _, p = part.partition("=")
        try:
            out[action.strip()] = float(p)
        except ValueError:
            raise ConfigError("%s: %r is not ACTION=PROBABILITY" % (var, part))
    return out


def config_from_env(env):
    """The start configuration from VS_REALISM_* variables."""
    changes = {}
    for var, key in (("VS_REALISM_CONSISTENCY_SECONDS", "consistency_seconds"),
                     ("VS_REALISM_PENDING_SECONDS", "pending_seconds")):
        if env.get(var, "").strip():
            try:
                changes[key] = float(env[var])
            except ValueError:
                raise ConfigError("%s=%r is not a number of seconds" % (var, env[var]))
    if env.get("VS_REALISM_CONSISTENCY_RANDOM", "").strip():
        v = env["VS_REALISM_CONSISTENCY_RANDOM"].strip().lower()
        if v not in ("0", "1", "true", "false", "yes", "no"):
            raise ConfigError("VS_REALISM_CONSISTENCY_RANDOM=%r: use 1 or 0" % v)
        changes["consistency_random"] = v in ("1", "true", "yes")
    if env.get("VS_REALISM_SEED", "").strip():
        try:
            changes["seed"] = int(env["VS_REALISM_SEED"])
        except ValueError:
            raise ConfigError("VS_REALISM_SEED=%r is not an integer" % env["VS_REALISM_SEED"])
    for fault in FAULTS:
        var = "VS_REALISM_" + fault.upper()
        if env.get(var, "").strip():
            changes[fault] = parse_probabilities(var, env[var])
    if env.get("VS_REALISM_FAIL_NEXT", "").strip():
        try:
            changes["fail_next"] = json.loads(env["VS_REALISM_FAIL_NEXT"])
        except ValueError as exc:
            raise ConfigError("VS_REALISM_FAIL_NEXT is not JSON: %s" % exc)
    try:
        return apply_changes(default_config(), changes)
    except ConfigError as exc:
        raise ConfigError("environment: %s" % exc)


# ---------------------------------------------------------------- state ----

class TokenEntry:
    """What a ClientToken was first used for, and the answer it got."""

    def __init__(self, fingerprint):
        self.fingerprint = fingerprint
        self.lock = threading.Lock()
        self.response = None  # (status, headers, body)


class Realism:
    """Configuration, counters and what the layer remembers; thread-safe."""

    def __init__(self, start_config, moto_url):
        self.start_config = start_config
        self.moto_url = moto_url
        self.lock = threading.RLock()
        self.tokens = {}  # (account, region, token) -> TokenEntry
        self.ebs_lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.config = copy.deepcopy(self.start_config)
            self.rng = random.Random(self.config["seed"])
            self.hidden = {}  # (account, region, kind, value) -> monotonic deadline
            self.pending = {}  # (account, region, instance id) -> monotonic deadline
            self.counters = {"calls": {}, "faults": {}, "replays": {}, "mismatches": {},
                             "not_found": {}, "hidden_items": {}, "pending_shown": {},
                             "refusals": {}}

    def forget_moto_state(self):
        """moto was reset: tokens and hidden resources refer to nothing now."""
        with self.lock:
            self.tokens.clear()
            self.hidden.clear()
            self.pending.clear()

    def change(self, changes):
        with self.lock:
            new = apply_changes(self.config, changes)
            if "seed" in changes:
                self.rng = random.Random(new["seed"])
            self.config = new
            return copy.deepcopy(new)

    def count(self, counter, action, fault=None):
        with self.lock:
            table = self.counters[counter]
            if fault is None:
                table[action] = table.get(action, 0) + 1
            else:
                per = table.setdefault(action, {})
                per[fault] = per.get(fault, 0) + 1

    def snapshot(self):
        with self.lock:
            now = time.monotonic()
            return {
                "config": copy.deepcopy(self.config),
                "counters": copy.deepcopy(self.counters),
                "state": {
                    "tokens": len(self.tokens),
                    "hidden": sum(1 for d in self.hidden.values() if d > now),
                    "pending": sum(1 for d in self.pending.values() if d > now),
                },
                "moto": self.moto_url,
            }

    def in_fault_scope(self, access_key):
        """Whether faults and eventual consistency apply to a caller."""
        with self.lock:
            keys = self.config["fault_access_keys"]
            return not keys or access_key in keys

    def pick_fault(self, action, access_key):
        """The fault this call gets, if any: a queued one first, else a draw.
        With fault_access_keys set, only calls signed with one of those keys
        get faults (so one test's faults do not hit another's calls)."""
        with self.lock:
            keys = self.config["fault_access_keys"]
            if keys and access_key not in keys:
                return None
            queue = self.config["fail_next"]
            for key in (action, "*"):
                if queue.get(key):
                    fault = queue[key].pop(0)
                    if not queue[key]:
                        del queue[key]
                    return fault
            for fault in FAULTS:
                table = self.config[fault]
                p = table.get(action, table.get("*", 0.0))
                if p > 0 and self.rng.random() < p:
                    return fault
            return None

    def hide(self, scope, kind, value):
        with self.lock:
            window = self.config["consistency_seconds"]
            if window <= 0:
                return
            if self.config["consistency_random"]:
                window = self.rng.uniform(0, window)
            self.hidden[scope + (kind, value)] = time.monotonic() + window

    def is_hidden(self, scope, kind, value):
        with self.lock:
            key = scope + (kind, value)
            deadline = self.hidden.get(key)
            if deadline is None:
                return False
            if deadline <= time.monotonic():
                del self.hidden[key]
                return False
            return True

    def anything_hidden_or_pending(self):
        """Whether any window is still open (expired entries are dropped)."""
        with self.lock:
            now = time.monotonic()
            for table in (self.hidden, self.pending):
                for key in [k for k, d in table.items() if d <= now]:
                    del table[key]
            return bool(self.hidden or self.pending)

    def start_pending(self, scope, instance_id):
        with self.lock:
            secs = self.config["pending_seconds"]
            if secs > 0:
                self.pending[scope + (instance_id,)] = time.monotonic() + secs

    def is_pending(self, scope, instance_id):
        with self.lock:
            key = scope + (instance_id,)
            deadline = self.pending.get(key)
            if deadline is None:
                return False
            if deadline <= time.monotonic():
                del self.pending[key]
                return False
            return True

    def token_entry(self, key, fingerprint):
        """The entry of a token, made for this fingerprint if it is new."""
        with self.lock:
            entry = self.tokens.get(key)
            if entry is None:
                entry = TokenEntry(fingerprint)
                self.tokens[key] = entry
            return entry

    def drop_token(self, key, entry):
        with self.lock:
            if self.tokens.get(key) is entry:
                del self.tokens[key]


# --------------------------------------------------------- EC2 behaviour ----

def base_name(field):
    """"IpPermissions.1.Groups.2.GroupId" -> "GroupId"."""
    parts = [p for p in field.split(".") if not p.isdigit()]
    return parts[-1] if parts else field


def fingerprint(params):
    return tuple(sorted((k, v) for k, v in params
                        if k not in VOLATILE_PARAMS and not k.startswith("X-Amz-")))


def hidden_named(realism, scope, action, params):
    """(code, message) when the request names a resource still hidden."""
    for field, value in params:
        name = base_name(field)
        for kind in KINDS:
            if name in kind.params and action not in kind.exempt \
                    and realism.is_hidden(scope, kind.name, value):
                return kind.code, "The %s '%s' does not exist (yet: %s names a %s created " \
                    "moments ago; EC2 is eventually consistent, retry)" % (
                        kind.noun, value, field, kind.name)
    return None


def record_creates(realism, scope, action, body):
    """Hide resources this answer created, and start pending windows."""
    paths = {}
    for kind in KINDS:
        if action in kind.creates:
            path, fields = kind.creates[action]
            paths.setdefault(path, []).append((kind, fields))
    start_path = PENDING_STARTS.get(action)
    if not paths and start_path is None:
        return
    wanted = set(paths) | ({start_path} if start_path else set())
    for elem in scan(body, wanted):
        for kind, fields in paths.get(elem.path, ()):
            for field in fields:
                value = elem.text.get(field)
                if value:
                    realism.hide(scope, kind.name, value)
        if elem.path == start_path and elem.text.get("instanceId"):
            realism.start_pending(scope, elem.text["instanceId"])


def rewrite_describe(realism, scope, action, body, hide=True):
    """Drop items still hidden from a Describe* answer (unless hide is
    false: the caller is outside the fault scope); show pending states."""
    rules = [(kind, kind.describes[action]) for kind in KINDS if action in kind.describes]
    pending_path = PENDING_RULES.get(action)
    if not rules and pending_path is None:
        return body
    if not realism.anything_hidden_or_pending():
        return body
    item_paths = {path for _, (path, _) in rules}
    wanted = set(item_paths)
    if pending_path:
        wanted |= {pending_path, pending_path + "/instanceState"}
    if action == "DescribeInstances":
        wanted.add("reservationSet/item")
    elems = scan(body, wanted)
    edits = []
    removed = []
    kept_items = []
    for elem in elems:
        if elem.path not in item_paths:
            continue
        gone = False
        for kind, (path, fields) in rules:
            if elem.path == path and any(
                    hide and elem.text.get(f) and realism.is_hidden(scope, kind.name, elem.text[f])
                    for f in fields):
                gone = True
        if gone:
            removed.append(elem)
            edits.append((elem.start, elem.end, b""))
        else:
            kept_items.append(elem)
    if pending_path:
        states = [e for e in elems if e.path == pending_path + "/instanceState"]
        for item in elems:
            if item.path != pending_path or item in removed:
                continue
            iid = item.text.get("instanceId")
            if not iid or not realism.is_pending(scope, iid):
                continue
            for st in states:
                if item.contains(st) and st.text.get("name") == "running":
                    edits.append((st.start, st.end, PENDING_STATE))
                    realism.count("pending_shown", action)
    if action == "DescribeInstances" and removed:
        # a reservation whose instances are all hidden is not shown at all
        for res in (e for e in elems if e.path == "reservationSet/item"):
            inside = [i for i in removed + kept_items if res.contains(i)]
            if inside and all(i in removed for i in inside):
                edits.append((res.start, res.end, b""))
    for _ in removed:
        realism.count("hidden_items", action)
    return apply_edits(body, edits) if edits else body


# ------------------------------------------------------------------ EBS ----

def strip_ns(root):
    """Drop the XML namespace from every tag of an ElementTree."""
    for el in root.iter():
        el.tag = el.tag.rpartition("}")[2]
    return root


def moto_query(host, port, scope, params):
    """A Query API call of the layer's own to moto, in the caller's account
    and region; the answer's root element (namespaces dropped), or None when
    moto answers with an error (e.g. the resource does not exist)."""
    account, region = scope
    body = urllib.parse.urlencode([("Action", params[0][1]), ("Version", EC2_API_VERSION)]
                                  + list(params[1:])).encode()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        # moto reads the region from the credential scope and checks no signature
        "Authorization": "AWS4-HMAC-SHA256 Credential=realism/20200101/%s/ec2/aws4_request, "
                         "SignedHeaders=host, Signature=0" % region,
        "x-moto-account-id": account,
    }
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request("POST", "/", body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        return None
    return strip_ns(ElementTree.fromstring(data))


def child_text(el, path, default=""):
    found = el.find(path)
    return found.text or default if found is not None else default


def volume_facts(host, port, scope, volume_id):
    """{state, zone, attachments: [(instance id, device, state)]} of a
    volume as moto has it, or None when moto does not know it."""
    root = moto_query(host, port, scope, [("Action", "DescribeVolumes"),
                                          ("VolumeId.1", volume_id)])
    item = root.find("volumeSet/item") if root is not None else None
    if item is None:
        return None
    return {
        "state": child_text(item, "status"),
        "zone": child_text(item, "availabilityZone"),
        "attachments": [(child_text(a, "instanceId"), child_text(a, "device"),
                         child_text(a, "status"))
                        for a in item.findall("attachmentSet/item")],
    }


def instance_facts(host, port, scope, instance_id):
    """{state, zone, devices} of an instance as moto has it (devices: the
    names its block device mappings and its root device use), or None."""
    root = moto_query(host, port, scope, [("Action", "DescribeInstances"),
                                          ("InstanceId.1", instance_id)])
    item = root.find("reservationSet/item/instancesSet/item") if root is not None else None
    if item is None:
        return None
    devices = {child_text(m, "deviceName") for m in item.findall("blockDeviceMapping/item")}
    devices.add(child_text(item, "rootDeviceName"))
    return {
        "state": child_text(item, "instanceState/name"),
        "zone": child_text(item, "placement/availabilityZone"),
        "devices": devices - {""},
    }


def attach_refusal(realism, host, port, scope, params):
    """(code, message) when EC2 would refuse this AttachVolume, else None
    (also when the volume or the instance does not exist: moto says so)."""
    p = dict(params)
    vid, iid, device = p.get("VolumeId", ""), p.get("InstanceId", ""), p.get("Device", "")
    vol = volume_facts(host, port, scope, vid)
    inst = instance_facts(host, port, scope, iid)
    if vol is None or inst is None:
        return None
    state = "pending" if realism.is_pending(scope, iid) else inst["state"]
    if state not in ATTACHABLE:
        return ("IncorrectState",
                "Instance '%s' is not 'running' or 'stopped' (it is '%s'); a volume "
                "attaches to a running or stopped instance." % (iid, state))
    if vol["state"] != "available" or vol["attachments"]:
        on = ", ".join(a[0] for a in vol["attachments"]) or "-"
        return ("VolumeInUse",
                "%s is already attached to an instance (%s); it is '%s'."
                % (vid, on, vol["state"]))
    if vol["zone"] != inst["zone"]:
        return ("InvalidVolume.ZoneMismatch",
                "The volume '%s' is not in the same availability zone as instance '%s' "
                "(%s, %s)." % (vid, iid, vol["zone"], inst["zone"]))
    if device in inst["devices"]:
        return ("InvalidParameterValue",
                "Invalid value '%s' for unixDevice. Attachment point %s is already in use"
                % (device, device))
    return None


def detach_instance(host, port, scope, params):
    """For a DetachVolume without InstanceId (EC2 takes it; moto fails
    without it): (instance id, None) of the volume's attachment, or
    (None, (code, message)) when the volume is not attached; (None, None)
    when moto does not know the volume (moto answers)."""
    vid = dict(params).get("VolumeId", "")
    vol = volume_facts(host, port, scope, vid)
    if vol is None:
        return None, None
    if not vol["attachments"]:
        return None, ("IncorrectState", "Volume '%s' is in the '%s' state." % (vid, vol["state"]))
    return vol["attachments"][0][0], None


# ------------------------------------------------------------------ HTTP ----

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "votingstack-realism"
    timeout = 300  # idle keep-alive connections

    # set on the class by serve()
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

    def scope(self):
        account = self.headers.get("x-moto-account-id") or DEFAULT_ACCOUNT
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

        token = dict(params).get("ClientToken")
        replayed = False
        if action in EBS_CHECKED:
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

        if status == 200 and not replayed:
            try:
                record_creates(realism, scope, action, data)
                data = rewrite_describe(realism, scope, action, data, hide=lagging)
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

    def ebs_check(self, action, params, body, scope):
        """(refusal or None, body, path) for an EBS call: the error EC2
        would give, or the request to forward (a DetachVolume without
        InstanceId gets the instance the volume is attached to)."""
        host, port = self.moto_host, self.moto_port
        if action == "AttachVolume":
            return attach_refusal(self.realism, host, port, scope, params), body, None
        if "InstanceId" in dict(params):
            return None, body, None
        iid, refusal = detach_instance(host, port, scope, params)
        if iid is None:
            return refusal, body, None
        extra = urllib.parse.urlencode({"InstanceId": iid})
        split = urllib.parse.urlsplit(self.path)
        if "Action=" in split.query:  # the parameters came in the query string
            return None, body, self.path + "&" + extra
        return None, body + b"&" + extra.encode(), None

    def idempotent(self, action, params, body, scope, token):
        """Forward a request carrying a ClientToken at most once per token and
        parameters; (status, headers, body, replayed), status None when the
        parameters differ from the first use (the error is sent)."""
        realism = self.realism
        key = scope + (token,)
        fp = fingerprint(params)
        entry = realism.token_entry(key, fp)
        if entry.fingerprint != fp:
            realism.count("mismatches", action)
            first, now = dict(entry.fingerprint), dict(fp)
            differ = sorted(k for k in set(first) | set(now) if first.get(k) != now.get(k))
            self.send_error_xml(400, "IdempotentParameterMismatch",
                                "ClientToken '%s' was first used with other parameters; "
                                "these differ: %s. Use a new token for a different request."
                                % (token, ", ".join(differ[:10])))
            return None, None, None, False
        with entry.lock:
            if entry.response is not None:
                realism.count("replays", action)
                status, headers, data = entry.response
                return status, headers, new_request_id(data), True
            try:
                status, headers, data = self.forward(body)
            except OSError:
                realism.drop_token(key, entry)
                raise
            if status == 200:
                entry.response = (status, headers, data)
            else:  # a failed request does not use up its token
                realism.drop_token(key, entry)
            return status, headers, data, False

    # -- control endpoint

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


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def parse_hostport(text, what):
    host, _, port = text.rpartition(":")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise ConfigError("%s %r is not HOST:PORT" % (what, text))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:5055", help="HOST:PORT to serve EC2 on")
    ap.add_argument("--moto", default="http://127.0.0.1:5056", help="moto's URL")
    ap.add_argument("--pid-file", help="write this process's pid here")
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


if __name__ == "__main__":
    sys.exit(main())
