"""EBS refusals: AttachVolume and DetachVolume checked against moto's state
and refused as EC2 refuses them (moto attaches anything anywhere); a
DetachVolume without InstanceId gets the instance added."""

import http.client
import urllib.parse
import xml.etree.ElementTree as ElementTree

# EBS calls the layer checks against moto's state before forwarding them
# (one at a time, so two attaches of one volume cannot both pass)
EBS_CHECKED = ("AttachVolume", "DetachVolume")
# instance states a volume can be attached in
ATTACHABLE = ("running", "stopped")
EC2_API_VERSION = "2016-11-15"


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


class EbsChecks:
    """A part of ``proxy.Handler``: the check of an EBS call before it is
    forwarded."""

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
