"""What the layer remembers: its knobs, counters, the consistency and
pending windows open now, and the ClientTokens it has seen."""

import copy
import random
import threading
import time

from .config import FAULTS, apply_changes
from .tokens import TokenEntry


class Realism:
    """Configuration, counters and what the layer remembers; thread-safe."""

    def __init__(self, start_config, moto_url):
        self.start_config = start_config
        self.moto_url = moto_url
        self.lock = threading.RLock()
        self.tokens = {}  # (account, region, token) -> TokenEntry
        self.ebs_lock = threading.Lock()
        self.quota_lock = threading.Lock()
        # (account, region, instance id) of instances killed at launch: moto
        # keeps them terminated, so this outlives a reset of the knobs
        self.killed_at_launch = set()
        self.reset()

    def reset(self):
        with self.lock:
            self.config = copy.deepcopy(self.start_config)
            self.rng = random.Random(self.config["seed"])
            self.hidden = {}  # (account, region, kind, value) -> monotonic deadline
            self.pending = {}  # (account, region, instance id) -> monotonic deadline
            # (account, region, kind, id) -> {"until": monotonic deadline, ...}:
            # the EBS windows open now (see ebs_timing.py)
            self.ebs_windows = {}
            self.counters = {"calls": {}, "faults": {}, "replays": {}, "mismatches": {},
                             "not_found": {}, "hidden_items": {}, "pending_shown": {},
                             "refusals": {}, "ebs_shown": {}, "quota_refusals": {},
                             "launches_killed": {}}

    def forget_moto_state(self):
        """moto was reset: tokens and hidden resources refer to nothing now."""
        with self.lock:
            self.tokens.clear()
            self.hidden.clear()
            self.pending.clear()
            self.ebs_windows.clear()
            self.killed_at_launch.clear()

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
                    "ebs_windows": sum(1 for w in self.ebs_windows.values() if w["until"] > now),
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

    def open_ebs_window(self, scope, kind, ident, knob, **info):
        """Opens an EBS window of kind for resource ident, lasting the knob's
        seconds (none when the knob is 0); returns whether one opened."""
        with self.lock:
            secs = self.config[knob]
            if secs <= 0:
                return False
            self.ebs_windows[scope + (kind, ident)] = dict(info, until=time.monotonic() + secs)
            return True

    def ebs_window(self, scope, kind, ident):
        """The info of an open EBS window, or None (an expired one is dropped)."""
        with self.lock:
            key = scope + (kind, ident)
            w = self.ebs_windows.get(key)
            if w is None:
                return None
            if w["until"] <= time.monotonic():
                del self.ebs_windows[key]
                return None
            return dict(w)

    def close_ebs_window(self, scope, kind, ident):
        with self.lock:
            self.ebs_windows.pop(scope + (kind, ident), None)

    def ebs_windows_open(self, scope, kind):
        """{id: info} of the open EBS windows of a kind in a scope."""
        with self.lock:
            now = time.monotonic()
            for key in [k for k, w in self.ebs_windows.items() if w["until"] <= now]:
                del self.ebs_windows[key]
            return {k[3]: dict(w) for k, w in self.ebs_windows.items()
                    if k[:2] == scope and k[2] == kind}

    def kill_at_launch(self, scope, instance_id):
        with self.lock:
            self.killed_at_launch.add(scope + (instance_id,))

    def was_killed_at_launch(self, scope, instance_id):
        with self.lock:
            return scope + (instance_id,) in self.killed_at_launch

    def killed_at_launch_any(self, scope):
        with self.lock:
            return any(k[:2] == scope for k in self.killed_at_launch)

    def token_entry(self, key, fingerprint):
        """The entry of a token, made for this fingerprint if it is new."""
        with self.lock:
            entry = self.tokens.get(key)
            if entry is None:
                entry = TokenEntry(fingerprint)
                self.tokens[key] = entry
            return entry

    def token_seen(self, key):
        """Whether a ClientToken already has an answer (a retry replays it)."""
        with self.lock:
            entry = self.tokens.get(key)
            return entry is not None and entry.response is not None

    def drop_token(self, key, entry):
        with self.lock:
            if self.tokens.get(key) is entry:
                del self.tokens[key]
