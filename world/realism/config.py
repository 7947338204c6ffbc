"""The layer's knobs: their defaults, their checks, and the start values
from VS_REALISM_* variables."""

import copy
import json
import re

MAX_CONSISTENCY_SECONDS = 5.0

# faults decided before the request reaches moto, and after moto did it
PRE_FAULTS = ("throttle", "unavailable", "internal")
POST_FAULTS = ("lost", "drop")
FAULTS = PRE_FAULTS + POST_FAULTS

# the knobs of how long EBS takes, and their VS_REALISM_* variables
EBS_SECONDS = {
    "volume_creating_seconds": "VS_REALISM_VOLUME_CREATING_SECONDS",
    "attach_seconds": "VS_REALISM_ATTACH_SECONDS",
    "detach_seconds": "VS_REALISM_DETACH_SECONDS",
    "shutting_down_seconds": "VS_REALISM_SHUTTING_DOWN_SECONDS",
    "snapshot_seconds": "VS_REALISM_SNAPSHOT_SECONDS",
}

# AWS's default quotas (knob -> VS_REALISM_* variable)
QUOTAS = {
    "vpcs_per_region": "VS_REALISM_VPCS_PER_REGION",
    "internet_gateways_per_region": "VS_REALISM_INTERNET_GATEWAYS_PER_REGION",
    "elastic_ips_per_region": "VS_REALISM_ELASTIC_IPS_PER_REGION",
    "nat_gateways_per_zone": "VS_REALISM_NAT_GATEWAYS_PER_ZONE",
    "vcpus_per_region": "VS_REALISM_VCPUS_PER_REGION",
}
ACCOUNT_RE = re.compile(r"^[0-9]{12}$")

ACTION_RE = re.compile(r"^[A-Z][A-Za-z0-9]{1,100}$")


class ConfigError(Exception):
    """A knob has a value the layer cannot use."""


def default_config():
    return {
        "consistency_seconds": 0.0,
        "consistency_random": False,
        "pending_seconds": 2.0,
        # EBS takes time, as on EC2: a new volume is "creating", an attach
        # "attaching", a detach "detaching", a terminated instance
        # "shutting-down" while it still holds its volumes, a snapshot "pending"
        "volume_creating_seconds": 3.0,
        "attach_seconds": 2.0,
        "detach_seconds": 3.0,
        "shutting_down_seconds": 4.0,
        "snapshot_seconds": 5.0,
        "seed": 0,
        "throttle": {},
        "unavailable": {},
        "internal": {},
        "lost": {},
        "drop": {},
        "fail_next": {},
        "fault_access_keys": [],
        # AWS's default quotas, in every account unless account_quotas
        # raises (or lowers) them for one
        "vpcs_per_region": 5,
        "internet_gateways_per_region": 5,
        "elastic_ips_per_region": 5,
        "nat_gateways_per_zone": 5,
        # Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances
        "vcpus_per_region": 5,
        "account_quotas": {},
        # requests signed with one of these access keys act in that account
        # (moto's x-moto-account-id), as another AWS account's keys would
        "access_key_accounts": {},
        # launches that encrypt a volume with the account's default key die
        # at once (StateReason Client.InternalError), see launch_kms.py: for
        # callers in the fault scope (true), or signing with one of a list of
        # access key ids
        "unusable_kms": False,
    }


def _number(key, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError("%s must be a number, not %r" % (key, value))
    if not lo <= value <= hi:
        raise ConfigError("%s must be between %s and %s, not %s" % (key, lo, hi, value))
    return float(value)


def _count(key, value):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100000:
        raise ConfigError("%s must be a whole number between 0 and 100000, not %r" % (key, value))
    return value


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
        elif key == "pending_seconds" or key in EBS_SECONDS:
            new[key] = _number(key, value, 0, 600)
        elif key == "consistency_random":
            if not isinstance(value, bool):
                raise ConfigError("consistency_random must be true or false, not %r" % (value,))
            new[key] = value
        elif key == "unusable_kms":
            ok = isinstance(value, bool) or (
                isinstance(value, list) and all(isinstance(k, str) and k for k in value))
            if not ok:
                raise ConfigError("unusable_kms must be true, false or a list of access key ids, "
                                  "not %r" % (value,))
            new[key] = list(value) if isinstance(value, list) else value
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
        elif key in QUOTAS:
            new[key] = _count(key, value)
        elif key == "account_quotas":
            if not isinstance(value, dict):
                raise ConfigError("account_quotas must map an account id to {quota: count}")
            new[key] = {}
            for account, quotas in value.items():
                if not ACCOUNT_RE.match(str(account)) or not isinstance(quotas, dict):
                    raise ConfigError("account_quotas: %r must be a 12-digit account id mapped to "
                                      "{quota: count}" % (account,))
                for q, n in quotas.items():
                    if q not in QUOTAS:
                        raise ConfigError("account_quotas.%s: unknown quota %r (known: %s)"
                                          % (account, q, ", ".join(sorted(QUOTAS))))
                new[key][str(account)] = {q: _count("account_quotas.%s.%s" % (account, q), n)
                                          for q, n in quotas.items()}
        elif key == "access_key_accounts":
            if not isinstance(value, dict) or not all(
                    isinstance(k, str) and k and ACCOUNT_RE.match(str(a)) for k, a in value.items()):
                raise ConfigError("access_key_accounts must map access key ids to 12-digit "
                                  "account ids, not %r" % (value,))
            new[key] = {k: str(a) for k, a in value.items()}
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
    seconds = [("VS_REALISM_CONSISTENCY_SECONDS", "consistency_seconds"),
               ("VS_REALISM_PENDING_SECONDS", "pending_seconds")]
    seconds += [(var, key) for key, var in EBS_SECONDS.items()]
    for var, key in seconds:
        if env.get(var, "").strip():
            try:
                changes[key] = float(env[var])
            except ValueError:
                raise ConfigError("%s=%r is not a number of seconds" % (var, env[var]))
    for var, key in (("VS_REALISM_CONSISTENCY_RANDOM", "consistency_random"),
                     ("VS_REALISM_UNUSABLE_KMS", "unusable_kms")):
        if env.get(var, "").strip():
            v = env[var].strip().lower()
            if v not in ("0", "1", "true", "false", "yes", "no"):
                raise ConfigError("%s=%r: use 1 or 0" % (var, v))
            changes[key] = v in ("1", "true", "yes")
    if env.get("VS_REALISM_SEED", "").strip():
        try:
            changes["seed"] = int(env["VS_REALISM_SEED"])
        except ValueError:
            raise ConfigError("VS_REALISM_SEED=%r is not an integer" % env["VS_REALISM_SEED"])
    for fault in FAULTS:
        var = "VS_REALISM_" + fault.upper()
        if env.get(var, "").strip():
            changes[fault] = parse_probabilities(var, env[var])
    for key, var in QUOTAS.items():
        if env.get(var, "").strip():
            try:
                changes[key] = int(env[var])
            except ValueError:
                raise ConfigError("%s=%r is not a whole number" % (var, env[var]))
    for key, var in (("account_quotas", "VS_REALISM_ACCOUNT_QUOTAS"),
                     ("access_key_accounts", "VS_REALISM_ACCESS_KEY_ACCOUNTS")):
        if env.get(var, "").strip():
            try:
                changes[key] = json.loads(env[var])
            except ValueError as exc:
                raise ConfigError("%s is not JSON: %s" % (var, exc))
    if env.get("VS_REALISM_FAIL_NEXT", "").strip():
        try:
            changes["fail_next"] = json.loads(env["VS_REALISM_FAIL_NEXT"])
        except ValueError as exc:
            raise ConfigError("VS_REALISM_FAIL_NEXT is not JSON: %s" % exc)
    try:
        return apply_changes(default_config(), changes)
    except ConfigError as exc:
        raise ConfigError("environment: %s" % exc)
