"""EBS: the fleet as the volumes' hardware. Sparse backing files in the
state directory, loop devices of this machine, and nodes named as on a
Nitro instance inside the hosts."""

import json
import os

from .commands import docker, run
from .ec2 import ACTIVE
from .log import log

GIB = 1024 ** 3
# volume states in which the fleet keeps a volume's device in its host
EBS_ATTACHED = ("attaching", "attached")
# where moto attaches the root volume it makes for every instance, whatever
# the instance's RootDeviceName says
MOTO_ROOT_DEVICE = "/dev/sda1"
# the udev name of an EBS volume on a Nitro instance (the volume id without
# its hyphen is the NVMe serial)
EBS_BY_ID = "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_"


def ebs_link(volume_id):
    return EBS_BY_ID + volume_id.replace("-", "")


# inside a host: the node of a volume (the one its link names, if it is
# there with the right device number), else /dev/nvme<first free N>n1 and the
# link; prints the node
EBS_ATTACH = r"""
set -e
link="$1"; major="$2"; minor="$3"
want=$(printf '%x:%x' "$major" "$minor")
if [ -b "$link" ] && [ "$(stat -L -c %t:%T "$link")" = "$want" ]; then
  readlink -f "$link"; exit 0
fi
n=1
while [ -e "/dev/nvme${n}n1" ]; do n=$((n + 1)); done
node="/dev/nvme${n}n1"
mknod -m 0660 "$node" b "$major" "$minor"
chgrp disk "$node" 2>/dev/null || true
mkdir -p /dev/disk/by-id
ln -sfn "../../nvme${n}n1" "$link"
echo "$node"
"""

# inside a host: unmount (lazily) whatever is mounted from the device, then
# remove its node and every /dev/disk link to it
EBS_DETACH = r"""
node="$1"; link="$2"; majmin="$3"
awk -v d="$majmin" '$3 == d { print $5 }' /proc/self/mountinfo | sort -r | while read -r t; do
  umount -l "$t" 2>/dev/null || true
done
for l in /dev/disk/by-id/* /dev/disk/by-uuid/*; do
  if [ -L "$l" ] && [ "$(readlink -f "$l")" = "$node" ]; then rm -f "$l"; fi
done
rm -f "$node" "$link"
"""

# inside a host: "<link> <node>" for every EBS link there is
EBS_LIST = r"""
for l in "$1"*; do
  if [ -L "$l" ]; then echo "$l $(readlink -f "$l")"; fi
done
"""

# inside a host: the udev link of a filesystem's UUID
EBS_UUID_LINK = r"""
set -e
mkdir -p /dev/disk/by-uuid
ln -sfn "../../$(basename "$1")" "/dev/disk/by-uuid/$2"
"""


def loop_devices():
    """backing file -> loop device, for every loop device of this machine."""
    p = run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"], timeout=30)
    out = {}
    for dev in json.loads(p.stdout or "{}").get("loopdevices", []):
        if dev.get("back-file"):
            out[dev["back-file"]] = dev["name"]
    return out


def loop_detach(dev):
    """Detaches a loop device (a busy one goes when its last user lets go)."""
    run(["losetup", "--detach", dev], timeout=30)


def block_id(dev):
    """(major, minor) of a block device node."""
    st = os.stat(dev)
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def fs_uuid(dev):
    """The UUID of the filesystem on a block device, or '' (none yet)."""
    p = run(["blkid", "-p", "-o", "value", "-s", "UUID", dev], timeout=30, check=False)
    return p.stdout.strip() if p.returncode == 0 else ""


class Ebs:
    """The fleet's EBS hardware: backing files, loop devices and the nodes
    inside hosts."""

    def __init__(self, state_dir):
        self.dir = os.path.join(os.path.realpath(state_dir), "ebs")
        os.makedirs(self.dir, exist_ok=True)
        # volume id -> {iid, name, started, node, loop, uuid} of the devices
        # the hosts have now
        self.nodes = {}
        self.adopted = False

    def path(self, volume_id):
        return os.path.join(self.dir, volume_id + ".img")

    def snapshot_path(self, snapshot_id):
        """Where the realism layer keeps a snapshot's data (its CreateSnapshot
        copies the volume's backing file there)."""
        return os.path.join(self.dir, "snapshots", snapshot_id + ".img")

    def ensure_file(self, vol):
        """The volume's sparse backing file, made or grown to its size; a new
        volume created from a snapshot starts as a copy of its data."""
        path, size = self.path(vol["VolumeId"]), int(vol["Size"]) * GIB
        have = os.path.getsize(path) if os.path.exists(path) else None
        snap = vol.get("SnapshotId") or ""
        if have is None and snap:
            src = self.snapshot_path(snap)
            if os.path.exists(src):
                tmp = path + ".restoring"
                run(["cp", "--sparse=always", src, tmp], timeout=600)
                os.replace(tmp, path)
                have = os.path.getsize(path)
                log("volume %s: backing file from snapshot %s" % (vol["VolumeId"], snap))
            else:
                log("volume %s: snapshot %s holds no data here (made outside the world): "
                    "starts blank" % (vol["VolumeId"], snap), key="ebss" + snap)
        if have is None or have < size:
            with open(path, "ab"):
                pass
            os.truncate(path, size)
            log("volume %s: backing file %s, %d GiB" % (vol["VolumeId"], path, vol["Size"]))
        return path

    def remove_file(self, volume_id, loops):
        path = self.path(volume_id)
        if path in loops:
            loop_detach(loops.pop(path))
        os.unlink(path)
        log("volume %s deleted: backing file removed" % volume_id)

    def loop_for(self, volume_id, loops):
        """The loop device of the volume's file, set up when it has none."""
        path = self.path(volume_id)
        if path not in loops:
            loops[path] = run(["losetup", "--find", "--show", path], timeout=30).stdout.strip()
        return loops[path]

    def adopt(self, conts):
        """Learns the devices hosts already have (from a fleet run before
        this one), so that their detach is seen."""
        for iid, c in conts.items():
            if c["state"] != "running":
                continue
            p = docker("exec", c["name"], "sh", "-c", EBS_LIST, "sh", EBS_BY_ID,
                       timeout=30, check=False)
            for line in p.stdout.splitlines():
                link, _, node = line.partition(" ")
                hexid = link[len(EBS_BY_ID):]
                if hexid.startswith("vol") and node:
                    vid = "vol-" + hexid[3:]
                    self.nodes[vid] = {"iid": iid, "name": c["name"], "started": c["started"],
                                       "node": node, "loop": None, "uuid": None}
        self.adopted = True

    def attach(self, vol, iid, c, loops, why):
        vid = vol["VolumeId"]
        loop = self.loop_for(vid, loops)
        major, minor = block_id(loop)
        node = docker("exec", c["name"], "sh", "-c", EBS_ATTACH, "sh", ebs_link(vid),
                      str(major), str(minor), timeout=30).stdout.strip()
        self.nodes[vid] = {"iid": iid, "name": c["name"], "started": c["started"],
                           "node": node, "loop": loop, "uuid": None}
        device = next((a.get("Device") for a in vol.get("Attachments", [])
                       if a.get("InstanceId") == iid), "?")
        log("volume %s attached to host %s as %s (%s; %s, %s)"
            % (vid, iid, node, device, loop, why))

    def detach(self, vid, conts, why):
        """Takes a volume's device away from the host that has it."""
        have = self.nodes.pop(vid)
        c = conts.get(have["iid"])
        if c is not None and c["state"] == "running" and c["started"] == have["started"]:
            majmin = "%d:%d" % block_id(have["loop"]) if have["loop"] else ""
            if not majmin:  # adopted: the node tells
                p = docker("exec", c["name"], "stat", "-c", "%t:%T", have["node"],
                           timeout=30, check=False)
                parts = p.stdout.strip().split(":")
                if len(parts) == 2:
                    majmin = "%d:%d" % (int(parts[0], 16), int(parts[1], 16))
            docker("exec", c["name"], "sh", "-c", EBS_DETACH, "sh", have["node"],
                   ebs_link(vid), majmin, timeout=30)
        log("volume %s detached from host %s (%s; %s)" % (vid, have["iid"], have["node"], why))

    def link_uuid(self, vid, have):
        """Adds /dev/disk/by-uuid/<uuid> once the volume holds a filesystem."""
        if have["uuid"] or not have["loop"]:
            return
        uuid = fs_uuid(have["loop"])
        if not uuid:
            return
        docker("exec", have["name"], "sh", "-c", EBS_UUID_LINK, "sh", have["node"], uuid,
               timeout=30)
        have["uuid"] = uuid
        log("volume %s: filesystem %s on %s in host %s" % (vid, uuid, have["node"], have["iid"]))

    def sync(self, vols, insts, conts):
        """One pass: files for every volume, devices for attached ones."""
        if not self.adopted:
            self.adopt(conts)
        loops = {f: d for f, d in loop_devices().items() if os.path.dirname(f) == self.dir}
        known, wanted, attached_to = set(), {}, {}
        for vol in vols:
            vid = vol["VolumeId"]
            att = [a for a in vol.get("Attachments", []) if a.get("State") in EBS_ATTACHED]
            if att:
                attached_to[vid] = att[0]["InstanceId"]
            inst = insts.get(att[0]["InstanceId"]) if att else None
            if inst is not None and att[0].get("Device") in (inst.get("RootDeviceName"),
                                                             MOTO_ROOT_DEVICE):
                continue  # the root disk: the host container itself
            known.add(vid)
            try:
                self.ensure_file(vol)
            except Exception as exc:  # keep the others
                log("volume %s: backing file: %s" % (vid, exc), key="ebsf" + vid + str(exc)[:80])
                continue
            if inst is None or inst["State"]["Name"] not in ACTIVE:
                continue
            c = conts.get(inst["InstanceId"])
            if c is not None and c["state"] == "running":
                wanted[vid] = (inst["InstanceId"], c, vol)

        rebooted = set()
        for vid, have in list(self.nodes.items()):
            w = wanted.get(vid)
            if w is not None and w[0] == have["iid"] and w[1]["started"] == have["started"]:
                continue
            if w is not None and w[0] == have["iid"]:
                self.nodes.pop(vid)  # the host booted again: its /dev is new
                rebooted.add(vid)
                continue
            now_on = attached_to.get(vid)
            inst = insts.get(have["iid"])
            st = inst["State"]["Name"] if inst else "gone"
            if now_on is not None and now_on != have["iid"]:
                why = "attached to %s now" % now_on
            elif st not in ACTIVE:
                why = "instance %s" % st
            else:
                why = "detached in EC2" if vid in known else "volume gone"
            try:
                self.detach(vid, conts, why)
            except Exception as exc:
                log("volume %s: detach: %s" % (vid, exc), key="ebsd" + vid + str(exc)[:80])

        for vid, (iid, c, vol) in sorted(wanted.items()):
            try:
                have = self.nodes.get(vid)
                if have is None:
                    self.attach(vol, iid, c, loops,
                                "host booted again" if vid in rebooted else "attached in EC2")
                    have = self.nodes[vid]
                if have["loop"] is None:  # adopted
                    have["loop"] = self.loop_for(vid, loops)
                self.link_uuid(vid, have)
            except Exception as exc:  # keep the others
                log("volume %s: attach to %s: %s" % (vid, iid, exc), key="ebsa" + vid + str(exc)[:80])

        for path, dev in list(loops.items()):
            vid = os.path.basename(path)[:-len(".img")]
            if vid not in wanted:
                try:
                    loop_detach(dev)
                    del loops[path]
                    log("volume %s: loop device %s detached" % (vid, dev))
                except Exception as exc:
                    log("volume %s: losetup -d %s: %s" % (vid, dev, exc), key="ebsl" + dev)
        for name in os.listdir(self.dir):
            if name.endswith(".img") and name[:-len(".img")] not in known:
                try:
                    self.remove_file(name[:-len(".img")], loops)
                except Exception as exc:
                    log("volume %s: removing its file: %s" % (name, exc), key="ebsr" + name)
