"""EBS takes time, as on EC2 (moto does everything at once):

* a new volume is ``creating`` for a while, and AttachVolume is refused
  meanwhile (IncorrectState);
* an attach shows ``attaching`` for a while, a detach ``detaching``, and
  the volume stays in use (VolumeInUse) until the detach is done;
* a terminated instance is ``shutting-down`` for a while and holds its
  remaining volumes until then;
* a snapshot is ``pending`` for a while, and no volume is made from it
  meanwhile (IncorrectState);
* snapshots hold data: CreateSnapshot copies the volume's backing file (the
  fleet's, see world/fleet/ebs.py) at that moment, and the fleet makes a
  volume created from the snapshot out of that copy; DeleteSnapshot
  removes it.

Each window is a knob (``*_seconds``; 0 turns it off). Answers are rewritten
within the window; moto's own state moves at once, so Describe* filters on
state see moto's (the operator filters on no such state)."""

import os
import subprocess
import uuid
from xml.sax.saxutils import escape

from .ebs import moto_query, child_text
from .ec2xml import apply_edits, scan
from .log import log

# window kinds: volume id -> creating, attaching (instance), detaching and
# releasing (instance, device); instance id -> shutting; snapshot id -> snapshot
WINDOW_KNOBS = {
    "creating": "volume_creating_seconds",
    "attaching": "attach_seconds",
    "detaching": "detach_seconds",
    "releasing": "shutting_down_seconds",
    "shutting": "shutting_down_seconds",
    "snapshot": "snapshot_seconds",
}

VOLUME_ITEM = "volumeSet/item"
VOLUME_ATTACHMENT = "volumeSet/item/attachmentSet/item"
INSTANCE_ITEM = "reservationSet/item/instancesSet/item"
INSTANCE_STATE = INSTANCE_ITEM + "/instanceState"
INSTANCE_EBS = INSTANCE_ITEM + "/blockDeviceMapping/item/ebs"
SNAPSHOT_ITEM = "snapshotSet/item"
SHUTTING_DOWN = b"<code>32</code><name>shutting-down</name>"


def numbered(params, name):
    """The values of NAME.N request fields, in order."""
    return [v for k, v in params if k == name or (k.startswith(name + ".") and k[len(name) + 1:].isdigit())]


def timing_refusal(realism, scope, action, params):
    """(code, message) when EC2 would refuse this call because an EBS change
    it depends on is still under way, else None."""
    p = dict(params)
    vid = p.get("VolumeId", "")
    if action == "AttachVolume":
        if realism.ebs_window(scope, "creating", vid):
            return ("IncorrectState", "Volume '%s' is in the 'creating' state." % vid)
        for kind in ("detaching", "releasing"):
            w = realism.ebs_window(scope, kind, vid)
            if w:
                return ("VolumeInUse", "%s is already attached to an instance (%s); it is "
                        "'%s'." % (vid, w["instance"], "detaching" if kind == "detaching"
                                   else "in-use: its instance is shutting down"))
        iid = p.get("InstanceId", "")
        if realism.ebs_window(scope, "shutting", iid):
            return ("IncorrectState", "Instance '%s' is not 'running' or 'stopped' (it is "
                    "'shutting-down'); a volume attaches to a running or stopped instance." % iid)
    if action == "DeleteVolume":
        for kind in ("detaching", "releasing"):
            w = realism.ebs_window(scope, kind, vid)
            if w:
                return ("VolumeInUse", "Volume %s is currently attached to %s" % (vid, w["instance"]))
        if realism.ebs_window(scope, "attaching", vid):
            return ("VolumeInUse", "Volume %s is currently attached to an instance" % vid)
    if action == "CreateVolume":
        sid = p.get("SnapshotId", "")
        if sid and realism.ebs_window(scope, "snapshot", sid):
            return ("IncorrectState", "Snapshot is in invalid state - pending")
    return None


def attached_volumes(handler, scope, instance_id):
    """[(volume id, device)] of the volumes attached to an instance that
    outlive it (DeleteOnTermination false)."""
    root = moto_query(handler.moto_host, handler.moto_port, scope,
                      [("Action", "DescribeVolumes"),
                       ("Filter.1.Name", "attachment.instance-id"),
                       ("Filter.1.Value.1", instance_id)])
    out = []
    for item in (root.findall("volumeSet/item") if root is not None else []):
        for a in item.findall("attachmentSet/item"):
            if child_text(a, "instanceId") == instance_id \
                    and child_text(a, "deleteOnTermination") != "true":
                out.append((child_text(item, "volumeId"), child_text(a, "device")))
    return out


class EbsTiming:
    """A part of ``proxy.Handler``: the EBS windows and snapshot data."""

    # set on the class by main(): the fleet's EBS directory (backing files)
    ebs_dir = None

    def snapshot_path(self, snapshot_id):
        return os.path.join(self.ebs_dir, "snapshots", snapshot_id + ".img")

    def ebs_before(self, action, params, scope):
        """What an EBS call needs known before moto does it: the volume's
        attachment for DetachVolume, the volumes a terminated instance
        holds, the copy of the volume's data for CreateSnapshot."""
        if action == "DetachVolume":
            vid = dict(params).get("VolumeId", "")
            root = moto_query(self.moto_host, self.moto_port, scope,
                              [("Action", "DescribeVolumes"), ("VolumeId.1", vid)])
            att = root.find("volumeSet/item/attachmentSet/item") if root is not None else None
            if att is not None:
                return {"instance": child_text(att, "instanceId"), "device": child_text(att, "device")}
        if action == "TerminateInstances":
            return {iid: attached_volumes(self, scope, iid)
                    for iid in numbered(params, "InstanceId")}
        if action == "CreateSnapshot" and self.ebs_dir:
            vid = dict(params).get("VolumeId", "")
            src = os.path.join(self.ebs_dir, vid + ".img")
            if not os.path.exists(src):
                return None  # not a volume of the fleet's (another account)
            staging = os.path.join(self.ebs_dir, "snapshots", ".staging-%s.img" % uuid.uuid4().hex)
            os.makedirs(os.path.dirname(staging), exist_ok=True)
            # What a host wrote is in the filesystem's page cache on this
            # machine until written back through the loop device (a
            # terminated host's filesystem may still be being written back):
            # sync first, so the copy holds every write made before this
            # moment, as an EBS snapshot does. A host still writing during
            # the copy's split second can tear it; EC2's cannot be torn.
            subprocess.run(["sync"], check=True, timeout=600)
            subprocess.run(["cp", "--sparse=always", src, staging], check=True, timeout=600)
            return {"staging": staging, "volume": vid}
        return None

    def ebs_after(self, action, params, scope, status, data, before):
        """Open the windows of a call moto carried out, and show its answer
        as EC2 would; the answer."""
        realism = self.realism
        if status != 200:
            if before and before.get("staging"):
                os.unlink(before["staging"])
            return data
        if action == "CreateVolume":
            el = next(iter(scan(data, {""})), None)
            vid = el.text.get("volumeId") if el else None
            if vid and realism.open_ebs_window(scope, "creating", vid, WINDOW_KNOBS["creating"]):
                data = replace_child(data, el, "status", b"creating")
        elif action == "AttachVolume":
            el = next(iter(scan(data, {""})), None)
            vid = dict(params).get("VolumeId", "")
            if realism.open_ebs_window(scope, "attaching", vid, WINDOW_KNOBS["attaching"],
                                       instance=dict(params).get("InstanceId", "")) and el:
                data = replace_child(data, el, "status", b"attaching")
        elif action == "DetachVolume" and before:
            el = next(iter(scan(data, {""})), None)
            vid = dict(params).get("VolumeId", "")
            realism.close_ebs_window(scope, "attaching", vid)
            if realism.open_ebs_window(scope, "detaching", vid, WINDOW_KNOBS["detaching"],
                                       **before) and el:
                data = replace_child(data, el, "status", b"detaching")
        elif action == "TerminateInstances":
            for iid, vols in (before or {}).items():
                realism.open_ebs_window(scope, "shutting", iid, WINDOW_KNOBS["shutting"])
                for vid, device in vols:
                    realism.open_ebs_window(scope, "releasing", vid, WINDOW_KNOBS["releasing"],
                                            instance=iid, device=device)
            edits = []
            for st in scan(data, {"instancesSet/item/currentState"}):
                if st.text.get("name") == "terminated":
                    s, _ = st.spans["code"]
                    _, e = st.spans["name"]
                    edits.append((s, e, SHUTTING_DOWN))
            data = apply_edits(data, edits) if edits else data
        elif action == "CreateSnapshot":
            el = next(iter(scan(data, {""})), None)
            sid = el.text.get("snapshotId") if el else None
            if before and before.get("staging"):
                if sid:
                    os.replace(before["staging"], self.snapshot_path(sid))
                    log("snapshot %s: data of %s copied" % (sid, before["volume"]))
                else:
                    os.unlink(before["staging"])
            if sid and realism.open_ebs_window(scope, "snapshot", sid, WINDOW_KNOBS["snapshot"]):
                data = replace_child(data, el, "status", b"pending")
                el = next(iter(scan(data, {""})))
                data = replace_child(data, el, "progress", b"0%")
        elif action == "DeleteSnapshot" and self.ebs_dir:
            sid = dict(params).get("SnapshotId", "")
            path = self.snapshot_path(sid)
            if os.path.exists(path):
                os.unlink(path)
                log("snapshot %s deleted: its data removed" % sid)
        return data

    def ebs_rewrite(self, action, scope, data):
        """A Describe* answer as EC2 shows it while EBS windows are open."""
        realism = self.realism
        if action == "DescribeVolumes":
            return self.rewrite_volumes(scope, data)
        if action == "DescribeInstances":
            shutting = realism.ebs_windows_open(scope, "shutting")
            attaching = realism.ebs_windows_open(scope, "attaching")
            if not shutting and not attaching:
                return data
            edits = []
            elems = scan(data, {INSTANCE_ITEM, INSTANCE_STATE, INSTANCE_EBS})
            for item in (e for e in elems if e.path == INSTANCE_ITEM):
                if item.text.get("instanceId") not in shutting:
                    continue
                for st in elems:
                    if st.path == INSTANCE_STATE and item.contains(st) \
                            and st.text.get("name") == "terminated":
                        edits.append((st.spans["code"][0], st.spans["name"][1], SHUTTING_DOWN))
                        realism.count("ebs_shown", "shutting-down")
            for ebs in (e for e in elems if e.path == INSTANCE_EBS):
                w = attaching.get(ebs.text.get("volumeId"))
                if w and ebs.text.get("status") == "attached" and "status" in ebs.spans:
                    s, e = ebs.spans["status"]
                    edits.append((s, e, b"<status>attaching</status>"))
                    realism.count("ebs_shown", "attaching")
            return apply_edits(data, edits) if edits else data
        if action == "DescribeSnapshots":
            pending = realism.ebs_windows_open(scope, "snapshot")
            if not pending:
                return data
            edits = []
            for item in scan(data, {SNAPSHOT_ITEM}):
                if item.text.get("snapshotId") in pending:
                    for tag, value in (("status", b"pending"), ("progress", b"0%")):
                        if tag in item.spans:
                            s, e = item.spans[tag]
                            edits.append((s, e, b"<%s>%s</%s>" % (tag.encode(), value, tag.encode())))
                    realism.count("ebs_shown", "pending")
            return apply_edits(data, edits) if edits else data
        return data

    def rewrite_volumes(self, scope, data):
        realism = self.realism
        windows = {kind: realism.ebs_windows_open(scope, kind)
                   for kind in ("creating", "attaching", "detaching", "releasing")}
        if not any(windows.values()):
            return data
        edits = []
        elems = scan(data, {VOLUME_ITEM, VOLUME_ATTACHMENT})
        for item in (e for e in elems if e.path == VOLUME_ITEM):
            vid = item.text.get("volumeId")
            if vid in windows["creating"] and item.text.get("status") == "available":
                edits.append(span_edit(item, "status", b"creating"))
                realism.count("ebs_shown", "creating")
            if vid in windows["attaching"]:
                for att in elems:
                    if att.path == VOLUME_ATTACHMENT and item.contains(att) \
                            and att.text.get("status") == "attached":
                        edits.append(span_edit(att, "status", b"attaching"))
                        realism.count("ebs_shown", "attaching")
            held = windows["detaching"].get(vid) or windows["releasing"].get(vid)
            if held and item.text.get("status") == "available" and "attachmentSet" in item.spans:
                state = b"detaching" if vid in windows["detaching"] else b"attached"
                edits.append(span_edit(item, "status", b"in-use"))
                s, e = item.spans["attachmentSet"]
                edits.append((s, e, attachment_set(vid, held, state)))
                realism.count("ebs_shown", "detaching" if state == b"detaching" else "releasing")
        return apply_edits(data, edits) if edits else data


def span_edit(elem, tag, value):
    s, e = elem.spans[tag]
    return (s, e, b"<%s>%s</%s>" % (tag.encode(), value, tag.encode()))


def replace_child(data, elem, tag, value):
    """data with the direct child tag of elem holding value (as is when elem
    has no such child)."""
    if elem is None or tag not in elem.spans:
        return data
    return apply_edits(data, [span_edit(elem, tag, value)])


def attachment_set(vid, held, state):
    return ("<attachmentSet><item><volumeId>%s</volumeId><instanceId>%s</instanceId>"
            "<device>%s</device><status>%s</status><deleteOnTermination>false"
            "</deleteOnTermination></item></attachmentSet>"
            % (escape(vid), escape(held["instance"]), escape(held.get("device", "")),
               state.decode())).encode()


def ebs_dir_arg(text):
    """--ebs-dir: made absolute (the fleet's path is a real path too)."""
    return os.path.realpath(text)

