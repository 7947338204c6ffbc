"""Instances that die at launch, as EC2 ends them when a volume's KMS key
may not be used (knob ``unusable_kms``): RunInstances succeeds, the
instance is terminated at once, and only its StateReason says why,
``Client.InternalError``.

The knob stands for an account whose default EBS encryption key is a
customer-managed key the caller may not use: a launch that encrypts a
volume without naming a key (no ``KmsKeyId`` in its block device mapping)
dies; one that names a key goes through."""

import re
from xml.sax.saxutils import escape

from .ebs import moto_query
from .ec2xml import apply_edits, scan
from .log import log

CODE = "Client.InternalError"
MESSAGE = "Client.InternalError: Client error on launch"

ENCRYPTED_RE = re.compile(r"^BlockDeviceMapping\.(\d+)\.Ebs\.Encrypted$")
LAUNCHED_ITEM = "instancesSet/item"
DESCRIBED_ITEM = "reservationSet/item/instancesSet/item"
STATE_REASON = ("<stateReason><code>%s</code><message>%s</message></stateReason>"
                % (escape(CODE), escape(MESSAGE))).encode()


def uses_default_key(params):
    """Whether a RunInstances request encrypts a volume with the account's
    default key: a block device mapping Encrypted=true without KmsKeyId."""
    given = dict(params)
    for field, value in params:
        m = ENCRYPTED_RE.match(field)
        if m and value.strip().lower() == "true" \
                and not given.get("BlockDeviceMapping.%s.Ebs.KmsKeyId" % m.group(1), "").strip():
            return True
    return False


class LaunchKms:
    """A part of ``proxy.Handler``: kills launches the knob says die, and
    shows their StateReason in DescribeInstances."""

    def kill_at_launch(self, action, params, scope, status, data):
        """After moto launched: terminate the instances of a launch that
        uses the unusable default key, and remember why they died."""
        realism = self.realism
        if action != "RunInstances" or status != 200 or not self.hit_by_unusable_kms():
            return
        if not uses_default_key(params):
            return
        ids = [e.text["instanceId"] for e in scan(data, {LAUNCHED_ITEM}) if e.text.get("instanceId")]
        if not ids:
            return
        query = [("Action", "TerminateInstances")]
        query += [("InstanceId.%d" % (i + 1), iid) for i, iid in enumerate(ids)]
        if moto_query(self.moto_host, self.moto_port, scope, query) is None:
            log("RunInstances: moto refused to terminate %s (unusable_kms)" % ", ".join(ids))
            return
        for iid in ids:
            realism.kill_at_launch(scope, iid)
            realism.count("launches_killed", action)
        log("RunInstances: %s terminated at launch, %s (unusable_kms)" % (", ".join(ids), CODE))

    def hit_by_unusable_kms(self):
        """Whether the knob applies to this caller: true, for callers in the
        fault scope; a list, for calls signed with one of its access keys."""
        knob = self.realism.config["unusable_kms"]
        if isinstance(knob, list):
            return self.access_key() in knob
        return bool(knob) and self.realism.in_fault_scope(self.access_key())

    def launch_kms_rewrite(self, action, scope, data):
        """DescribeInstances: an instance killed at launch carries EC2's
        StateReason (moto's says the user terminated it)."""
        realism = self.realism
        if action != "DescribeInstances" or not realism.killed_at_launch_any(scope):
            return data
        edits = []
        for item in scan(data, {DESCRIBED_ITEM}):
            if not realism.was_killed_at_launch(scope, item.text.get("instanceId")):
                continue
            if "stateReason" in item.spans:
                start, end = item.spans["stateReason"]
                edits.append((start, end, STATE_REASON))
            elif "instanceState" in item.spans:
                end = item.spans["instanceState"][1]
                edits.append((end, end, STATE_REASON))
        return apply_edits(data, edits) if edits else data
