"""Check of the EC2 realism layer (world/realism/) in front of moto.

Runs in its own moto account (header x-moto-account-id), so the fleet makes
no hosts for it, and proves through the layer's counters and through moto
itself (the truth, when --moto is given) that:

* a replayed ClientToken returns the first instance and launches nothing;
* the same token with other parameters answers IdempotentParameterMismatch;
* a lost answer (500 or a dropped connection) retried with the same token
  gives the same instance;
* a new security group and a new instance are NotFound / missing from
  Describe* while the consistency window lasts, and found after it;
* an instance shows as pending for a while after launch;
* throttling and 5xx are injected when asked, and counted;
* EBS as EC2 has it: AttachVolume is refused for a volume of another zone
  (InvalidVolume.ZoneMismatch), a volume in use (VolumeInUse), an instance
  pending or terminated (IncorrectState) and a device name the instance
  already uses (InvalidParameterValue); DeleteVolume of an attached volume
  answers VolumeInUse; DetachVolume works without InstanceId; an attached
  volume shows in the instance's BlockDeviceMappings; terminating the
  instance leaves the volume available; CreateVolume honours ClientToken.
* a launch encrypting a volume with the default key dies at once with
  StateReason Client.InternalError while unusable_kms is on;
* EBS takes time as on EC2: a new volume is creating (AttachVolume:
  IncorrectState), an attach attaching, a detach detaching (AttachVolume
  elsewhere: VolumeInUse), a terminated instance shutting-down while it
  holds its volume, a snapshot pending (no volume from it: IncorrectState);
  new volumes and snapshots are NotFound in the consistency window.

Every wait is bounded. The layer is reset at the start and at the end.
"""

import argparse
import json
import secrets
import sys
import time
import urllib.error
import urllib.request

ACCOUNT = "000000424242"
VPC_CIDR = "10.43.0.0/16"
SUBNET_CIDR = "10.43.1.0/24"


class Failed(Exception):
    pass


T0 = time.monotonic()


def step(msg):
    print("[realism-selftest %5.1fs] %s" % (time.monotonic() - T0, msg), flush=True)


def check(cond, what):
    if not cond:
        raise Failed(what)


def read_env(path):
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                env[k] = v
    return env


def wait(what, secs, fn, interval=0.2):
    """Call fn until it returns a true value; fail after secs seconds."""
    end = time.monotonic() + secs
    last = None
    while time.monotonic() < end:
        try:
            v = fn()
            if v:
                return v
        except Exception as exc:  # keep trying until the deadline
            last = exc
        time.sleep(interval)
    raise Failed("%s: not within %ss%s" % (what, secs, " (last error: %s)" % last if last else ""))


class Control:
    """The layer's /_realism endpoint."""

    def __init__(self, endpoint):
        self.url = endpoint.rstrip("/") + "/_realism"

    def _call(self, url, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise Failed("%s: HTTP %d (is this the realism layer, not moto itself?) %s"
                         % (url, exc.code, exc.read().decode(errors="replace")[:300]))
        except OSError as exc:
            raise Failed("%s: %s (is the realism layer running?)" % (url, exc))

    def get(self):
        return self._call(self.url)

    def set(self, **changes):
        return self._call(self.url, changes)

    def reset(self):
        return self._call(self.url + "/reset", {})

    def counter(self, name, action, fault=None):
        v = self.get()["counters"][name].get(action, {} if fault else 0)
        return v.get(fault, 0) if fault else v


def client(endpoint, attempts):
    import boto3
    from botocore.config import Config
    c = boto3.client(
        "ec2", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": attempts, "mode": "standard"},
                      connect_timeout=3, read_timeout=30),
    )

    def account(request, **_):
        request.headers["x-moto-account-id"] = ACCOUNT
    c.meta.events.register("before-sign.ec2.*", account)
    return c


def error_of(fn, **kw):
    """(code, HTTP status) of the ClientError fn raises, or None if it succeeds."""
    from botocore.exceptions import ClientError
    try:
        fn(**kw)
    except ClientError as exc:
        return exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"]
    return None


NO_EBS_WINDOWS = {"volume_creating_seconds": 0, "attach_seconds": 0, "detach_seconds": 0,
                  "shutting_down_seconds": 0, "snapshot_seconds": 0}


def unusable_kms_checks(ctl, ec2, truth, launch, made):
    """unusable_kms: a launch encrypting its root volume with the default key
    dies at once with StateReason Client.InternalError; one naming a key runs."""
    before = ctl.get()["config"]
    ctl.set(unusable_kms=True, pending_seconds=0, consistency_seconds=0, throttle={})
    root = ec2.describe_images(ImageIds=[launch.ami])["Images"][0]["RootDeviceName"]

    def encrypted(**ebs):
        return [{"DeviceName": root, "Ebs": dict(Encrypted=True, VolumeType="gp3", VolumeSize=8,
                                                 DeleteOnTermination=True, **ebs)}]

    def described(iid):
        return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    dead = launch(ec2, BlockDeviceMappings=encrypted())["Instances"][0]["InstanceId"]
    inst = described(dead)
    check(inst["State"]["Name"] == "terminated",
          "unusable_kms: a launch with the default key must be terminated, is %s" % inst["State"])
    check(inst.get("StateReason") == {"Code": "Client.InternalError",
                                      "Message": "Client.InternalError: Client error on launch"},
          "unusable_kms: StateReason %s" % inst.get("StateReason"))
    listed = ec2.describe_instances(Filters=[{"Name": "subnet-id", "Values": [made["subnet"]]}])
    reasons = [i.get("StateReason", {}).get("Code") for r in listed["Reservations"]
               for i in r["Instances"] if i["InstanceId"] == dead]
    check(reasons == ["Client.InternalError"], "a filtered listing shows the reason too: %s" % reasons)
    check(ctl.counter("launches_killed", "RunInstances") == 1, "the killed launch is not counted")
    if truth:
        check(truth.describe_instances(InstanceIds=[dead])["Reservations"][0]["Instances"][0]
              ["State"]["Name"] == "terminated", "moto itself must say terminated")
    key = "arn:aws:kms:us-east-1:%s:key/1234abcd-12ab-34cd-56ef-1234567890ab" % ACCOUNT
    alive = launch(ec2, BlockDeviceMappings=encrypted(KmsKeyId=key))["Instances"][0]["InstanceId"]
    check(described(alive)["State"]["Name"] == "running", "a launch naming a KMS key must run")
    plain = launch(ec2)["Instances"][0]["InstanceId"]
    check(described(plain)["State"]["Name"] == "running", "a launch without encryption must run")
    # a list of access keys: only calls signed with one of them die
    ctl.set(unusable_kms=["someone-else"])
    other = launch(ec2, BlockDeviceMappings=encrypted())["Instances"][0]["InstanceId"]
    check(described(other)["State"]["Name"] == "running",
          "unusable_kms for another access key must not kill this caller's launch")
    ctl.set(unusable_kms=["testing"])
    mine = launch(ec2, BlockDeviceMappings=encrypted())["Instances"][0]["InstanceId"]
    check(described(mine)["State"]["Name"] == "terminated",
          "unusable_kms for this caller's access key must kill its launch")
    ctl.set(unusable_kms=False, pending_seconds=before["pending_seconds"],
            consistency_seconds=before["consistency_seconds"])
    back = launch(ec2, BlockDeviceMappings=encrypted())["Instances"][0]["InstanceId"]
    check(described(back)["State"]["Name"] in ("pending", "running"),
          "unusable_kms off: the launch must run, is %s" % described(back)["State"])
    step("unusable_kms: %s terminated at launch (Client.InternalError), also for a listed "
         "access key; with a key, another access key, "
         "unencrypted or knob off they run" % dead)


def ebs_timing_checks(ctl, ec2, launch, made):
    """EBS takes time (see the module's docstring): every window shown and
    every refusal within it, then the state after it."""
    ctl.set(throttle={}, consistency_seconds=0, pending_seconds=1, volume_creating_seconds=2,
            attach_seconds=2, detach_seconds=2, shutting_down_seconds=3, snapshot_seconds=3)

    def vol(vid):
        return ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]

    def inst(iid):
        return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]

    first = launch(ec2)["Instances"][0]
    a, zone = first["InstanceId"], first["Placement"]["AvailabilityZone"]
    wait("instance %s running" % a, 10, lambda: inst(a)["State"]["Name"] == "running")
    made_vol = ec2.create_volume(AvailabilityZone=zone, Size=1, VolumeType="gp3")
    va = made_vol["VolumeId"]
    made["volumes"].append(va)
    check(made_vol["State"] == "creating" and vol(va)["State"] == "creating",
          "a new volume: want creating, got %s then %s" % (made_vol["State"], vol(va)["State"]))
    err = error_of(ec2.attach_volume, VolumeId=va, InstanceId=a, Device="/dev/sdf")
    check(err == ("IncorrectState", 400), "AttachVolume of a creating volume: want "
          "IncorrectState, got %s" % (err,))
    wait("volume %s available" % va, 10, lambda: vol(va)["State"] == "available")
    step("CreateVolume -> creating, AttachVolume refused (IncorrectState), then available")

    ans = ec2.attach_volume(VolumeId=va, InstanceId=a, Device="/dev/sdf")
    states = [x["State"] for x in vol(va)["Attachments"]]
    bdm = {m["DeviceName"]: m["Ebs"]["Status"] for m in inst(a).get("BlockDeviceMappings", [])}
    check(ans["State"] == "attaching" and states == ["attaching"] and bdm.get("/dev/sdf") == "attaching",
          "AttachVolume: want attaching in its answer, DescribeVolumes and the mappings; got "
          "%s, %s, %s" % (ans["State"], states, bdm))
    wait("%s attached" % va, 10, lambda: [x["State"] for x in vol(va)["Attachments"]] == ["attached"])
    step("AttachVolume -> attaching (answer, volume, instance mappings), then attached")

    b = launch(ec2)["Instances"][0]["InstanceId"]
    wait("instance %s running" % b, 10, lambda: inst(b)["State"]["Name"] == "running")
    ans = ec2.detach_volume(VolumeId=va)
    v = vol(va)
    check(ans["State"] == "detaching" and v["State"] == "in-use"
          and [(x["InstanceId"], x["State"]) for x in v["Attachments"]] == [(a, "detaching")],
          "DetachVolume: want detaching, the volume in use by %s; got %s, %s %s"
          % (a, ans["State"], v["State"], v["Attachments"]))
    err = error_of(ec2.attach_volume, VolumeId=va, InstanceId=b, Device="/dev/sdf")
    check(err == ("VolumeInUse", 400), "AttachVolume while detaching: want VolumeInUse, got %s" % (err,))
    wait("volume %s available" % va, 10, lambda: vol(va)["State"] == "available"
         and not vol(va)["Attachments"])
    step("DetachVolume -> detaching, in use (AttachVolume elsewhere: VolumeInUse), then available")

    ec2.attach_volume(VolumeId=va, InstanceId=a, Device="/dev/sdf")
    wait("%s attached" % va, 10, lambda: [x["State"] for x in vol(va)["Attachments"]] == ["attached"])
    ans = ec2.terminate_instances(InstanceIds=[a])["TerminatingInstances"][0]
    v = vol(va)
    check(ans["CurrentState"]["Name"] == "shutting-down"
          and inst(a)["State"]["Name"] == "shutting-down"
          and v["State"] == "in-use" and [x["InstanceId"] for x in v["Attachments"]] == [a],
          "TerminateInstances: want shutting-down and the volume still held; got %s, %s, %s %s"
          % (ans["CurrentState"], inst(a)["State"], v["State"], v["Attachments"]))
    err = error_of(ec2.attach_volume, VolumeId=va, InstanceId=b, Device="/dev/sdf")
    check(err == ("VolumeInUse", 400), "AttachVolume of a volume of a shutting-down instance: "
          "want VolumeInUse, got %s" % (err,))
    wait("instance %s terminated and volume %s available" % (a, va), 10,
         lambda: inst(a)["State"]["Name"] == "terminated" and vol(va)["State"] == "available")
    step("TerminateInstances -> shutting-down, the volume held (VolumeInUse), then let go")

    snap = ec2.create_snapshot(VolumeId=va, TagSpecifications=[
        {"ResourceType": "snapshot", "Tags": [{"Key": "Name", "Value": "realism-selftest"}]}])
    sid = snap["SnapshotId"]
    made["snapshots"].append(sid)
    listed = ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]
    check(snap["State"] == "pending" and listed["State"] == "pending",
          "CreateSnapshot: want pending, got %s then %s" % (snap["State"], listed["State"]))
    err = error_of(ec2.create_volume, AvailabilityZone=zone, SnapshotId=sid, VolumeType="gp3")
    check(err == ("IncorrectState", 400), "CreateVolume from a pending snapshot: want "
          "IncorrectState, got %s" % (err,))
    wait("snapshot %s completed" % sid, 10,
         lambda: ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]["State"] == "completed")
    vr = ec2.create_volume(AvailabilityZone=zone, SnapshotId=sid, VolumeType="gp3")["VolumeId"]
    made["volumes"].append(vr)
    check(vol(vr).get("SnapshotId") == sid, "a volume from %s names it: %s" % (sid, vol(vr)))
    step("CreateSnapshot -> pending (no volume from it: IncorrectState), then completed; "
         "a volume from it")

    ctl.set(consistency_seconds=2, consistency_random=False)
    vh = ec2.create_volume(AvailabilityZone=zone, Size=1, VolumeType="gp3")["VolumeId"]
    made["volumes"].append(vh)
    sh = ec2.create_snapshot(VolumeId=va)["SnapshotId"]
    made["snapshots"].append(sh)
    err = error_of(ec2.describe_volumes, VolumeIds=[vh])
    check(err == ("InvalidVolume.NotFound", 400), "a new volume in the consistency window: "
          "want InvalidVolume.NotFound, got %s" % (err,))
    err = error_of(ec2.describe_snapshots, SnapshotIds=[sh])
    check(err == ("InvalidSnapshot.NotFound", 400), "a new snapshot in the consistency window: "
          "want InvalidSnapshot.NotFound, got %s" % (err,))
    wait("volume %s and snapshot %s visible" % (vh, sh), 10,
         lambda: vol(vh) and ec2.describe_snapshots(SnapshotIds=[sh])["Snapshots"])
    ctl.set(consistency_seconds=0)
    step("a new volume and a new snapshot are NotFound in the consistency window, then found")


def ebs_checks(ctl, ec2, truth, launch, made):
    """AttachVolume, DetachVolume, DeleteVolume and CreateVolume as EC2 has
    them (see the module's docstring)."""
    ctl.set(throttle={}, consistency_seconds=0, pending_seconds=2, **NO_EBS_WINDOWS)

    def volume(zone, **kw):
        vid = ec2.create_volume(AvailabilityZone=zone, Size=1, VolumeType="gp3", **kw)["VolumeId"]
        made["volumes"].append(vid)
        return vid

    def vol(vid):
        return ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]

    def inst(iid):
        return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]

    def refused(code, what, **kw):
        err = error_of(ec2.attach_volume, **kw)
        check(err == (code, 400), "%s: want %s/400, got %s" % (what, code, err))
        if truth:
            t = truth.describe_volumes(VolumeIds=[kw["VolumeId"]])["Volumes"][0]
            check(not [a for a in t["Attachments"] if a["InstanceId"] == kw["InstanceId"]],
                  "%s: the refused attach reached moto" % what)

    first = launch(ec2)["Instances"][0]
    a, zone = first["InstanceId"], first["Placement"]["AvailabilityZone"]
    zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]]
    other = [z for z in zones if z != zone][0]
    va = volume(zone, TagSpecifications=[{"ResourceType": "volume",
                                          "Tags": [{"Key": "Name", "Value": "realism-selftest"}]}])
    refused("IncorrectState", "attach to a pending instance",
            VolumeId=va, InstanceId=a, Device="/dev/sdf")
    wait("instance %s running" % a, 10, lambda: inst(a)["State"]["Name"] == "running")
    step("AttachVolume to a pending instance -> IncorrectState")

    vz = volume(other)
    refused("InvalidVolume.ZoneMismatch", "attach a volume of %s to an instance in %s" % (other, zone),
            VolumeId=vz, InstanceId=a, Device="/dev/sdf")
    step("AttachVolume across zones (%s, %s) -> InvalidVolume.ZoneMismatch" % (other, zone))

    ec2.attach_volume(VolumeId=va, InstanceId=a, Device="/dev/sdf")
    v = vol(va)
    check(v["State"] == "in-use" and [(x["InstanceId"], x["Device"]) for x in v["Attachments"]]
          == [(a, "/dev/sdf")], "after AttachVolume: %s %s" % (v["State"], v["Attachments"]))
    bdm = {m["DeviceName"]: m.get("Ebs", {}) for m in inst(a).get("BlockDeviceMappings", [])}
    sdf = bdm.get("/dev/sdf", {})
    check(sdf.get("VolumeId") == va and sdf.get("Status") == "attached"
          and sdf.get("DeleteOnTermination") is False,
          "BlockDeviceMappings of %s: want /dev/sdf -> %s attached, DeleteOnTermination "
          "false; got %s" % (a, va, bdm))
    step("AttachVolume %s -> in-use, in the instance's BlockDeviceMappings as /dev/sdf" % va)

    b = launch(ec2)["Instances"][0]["InstanceId"]
    wait("instance %s running" % b, 10, lambda: inst(b)["State"]["Name"] == "running")
    refused("VolumeInUse", "attach a volume in use to another instance",
            VolumeId=va, InstanceId=b, Device="/dev/sdf")
    vb = volume(zone)
    refused("InvalidParameterValue", "attach at a device name in use",
            VolumeId=vb, InstanceId=a, Device="/dev/sdf")
    err = error_of(ec2.delete_volume, VolumeId=va)
    check(err == ("VolumeInUse", 400), "DeleteVolume of an attached volume: want VolumeInUse, "
          "got %s" % (err,))
    step("attached volume: AttachVolume elsewhere -> VolumeInUse, DeleteVolume -> VolumeInUse; "
         "its device name -> InvalidParameterValue")

    ec2.detach_volume(VolumeId=va)  # no InstanceId, as EC2 allows
    wait("volume %s available" % va, 10, lambda: vol(va)["State"] == "available")
    err = error_of(ec2.detach_volume, VolumeId=va)
    check(err == ("IncorrectState", 400), "DetachVolume of an available volume: want "
          "IncorrectState, got %s" % (err,))
    ec2.stop_instances(InstanceIds=[b])
    wait("instance %s stopped" % b, 10, lambda: inst(b)["State"]["Name"] == "stopped")
    ec2.attach_volume(VolumeId=va, InstanceId=b, Device="/dev/sdf")
    ec2.detach_volume(VolumeId=va, InstanceId=b)
    step("DetachVolume without InstanceId works; a stopped instance takes a volume")

    ec2.attach_volume(VolumeId=vb, InstanceId=a, Device="/dev/sdg")
    ec2.terminate_instances(InstanceIds=[a])
    wait("volume %s available after its instance's termination" % vb, 10,
         lambda: vol(vb)["State"] == "available" and not vol(vb)["Attachments"])
    refused("IncorrectState", "attach to a terminated instance",
            VolumeId=va, InstanceId=a, Device="/dev/sdf")
    step("TerminateInstances: the attached volume %s stays, available; attaching to the "
         "terminated instance -> IncorrectState" % vb)
    refusals = ctl.get()["counters"]["refusals"]
    check(refusals == {"AttachVolume": 5, "DetachVolume": 1},
          "want 5 AttachVolume and 1 DetachVolume refusals counted, got %s" % refusals)

    token = "realism-selftest-" + secrets.token_hex(8)
    one = volume(zone, ClientToken=token)
    two = ec2.create_volume(AvailabilityZone=zone, Size=1, VolumeType="gp3",
                            ClientToken=token)["VolumeId"]
    check(one == two, "CreateVolume with one ClientToken twice: %s, then %s" % (one, two))
    err = error_of(ec2.create_volume, AvailabilityZone=zone, Size=2, VolumeType="gp3",
                   ClientToken=token)
    check(err == ("IdempotentParameterMismatch", 400), "CreateVolume, same token, other size: "
          "want IdempotentParameterMismatch, got %s" % (err,))
    if truth:
        mine = [x["VolumeId"] for x in truth.describe_volumes()["Volumes"]
                if x["VolumeId"] not in made["volumes"] and x["AvailabilityZone"] == zone
                and x["Size"] in (1, 2) and not x["Attachments"]]
        check(not mine, "moto holds volumes the replays should not have made: %s" % mine)
    step("CreateVolume: same ClientToken -> the same volume %s; other size -> "
         "IdempotentParameterMismatch" % one)


def image_checks(ec2, ami, windows, arm64, itype, made):
    """DescribeImages as EC2 answers it: owner alias only on Amazon's images,
    a billing product on every image, Canonical's newest noble amd64 image
    found by owner and name."""
    ubuntu = ec2.describe_images(ImageIds=[ami])["Images"][0]
    check("ImageOwnerAlias" not in ubuntu and ubuntu.get("PlatformDetails") == "Linux/UNIX"
          and ubuntu.get("UsageOperation") == "RunInstances",
          "Canonical's image has no alias and is Linux/UNIX: %s" % ubuntu)
    win = ec2.describe_images(ImageIds=[windows])["Images"][0]
    check(win.get("ImageOwnerAlias") == "amazon" and win.get("Platform") == "windows"
          and win.get("PlatformDetails") == "Windows" and win.get("UsageOperation") == "RunInstances:0002",
          "the Windows image: alias amazon, platform and product Windows: %s" % win)
    found = ec2.describe_images(Owners=["099720109477"], Filters=[
        {"Name": "name", "Values": ["ubuntu/images/hvm-ssd*/ubuntu-noble-24.04-amd64-server-*"]},
        {"Name": "architecture", "Values": ["x86_64"]},
        {"Name": "state", "Values": ["available"]}])["Images"]
    newest = max(found, key=lambda i: i["CreationDate"])["ImageId"] if found else None
    check(newest == ami, "Canonical's newest noble amd64 image is %s, not %s (%d found)"
          % (ami, newest, len(found)))
    step("images: Canonical's newest Ubuntu 24.04 is %s among %d; aliases and billing products as EC2's"
         % (ami, len(found)))
    before = len(ec2.describe_instances(Filters=[{"Name": "subnet-id", "Values": [made["subnet"]]}])["Reservations"])
    err = error_of(ec2.run_instances, ImageId=arm64, InstanceType=itype, MinCount=1, MaxCount=1,
                   SubnetId=made["subnet"])
    check(err == ("InvalidParameterValue", 400),
          "RunInstances of arm64 image %s on %s: want InvalidParameterValue, got %s" % (arm64, itype, err))
    after = len(ec2.describe_instances(Filters=[{"Name": "subnet-id", "Values": [made["subnet"]]}])["Reservations"])
    check(after == before, "a RunInstances refused for its architecture launched")
    step("RunInstances of an arm64 image on %s refused: InvalidParameterValue, nothing launched" % itype)


def quota_checks(ctl, ec2, endpoint, launch, made):
    """AWS's default quotas per account: the sixth VPC, internet gateway or
    Elastic IP of a Region and the sixth NAT gateway of a zone are refused
    with EC2's codes (knobs lowered here so a few calls show it); the
    default VPC counts; an account's own quota beats the default; an access
    key mapped to another account acts there."""
    import boto3
    vpcs = len(ec2.describe_vpcs()["Vpcs"])
    check(vpcs >= 2, "the account has its default VPC and the selftest's: %d VPCs" % vpcs)
    ctl.set(vpcs_per_region=vpcs)
    err = error_of(ec2.create_vpc, CidrBlock="10.44.0.0/16")
    check(err == ("VpcLimitExceeded", 400), "VPC %d of a quota of %d: got %s" % (vpcs + 1, vpcs, err))
    check(len(ec2.describe_vpcs()["Vpcs"]) == vpcs, "a refused CreateVpc created a VPC")
    check(ctl.counter("quota_refusals", "CreateVpc") == 1, "quota refusal not counted")
    ctl.set(account_quotas={ACCOUNT: {"vpcs_per_region": vpcs + 1}})
    extra = ec2.create_vpc(CidrBlock="10.44.0.0/16")["Vpc"]["VpcId"]
    ec2.delete_vpc(VpcId=extra)
    step("VPCs: number %d refused (VpcLimitExceeded, the default VPC counts); an account's "
         "own quota of %d lets it be created" % (vpcs + 1, vpcs + 1))

    ctl.set(account_quotas={}, internet_gateways_per_region=1)
    err = error_of(ec2.create_internet_gateway)
    check(err == ("InternetGatewayLimitExceeded", 400),
          "the default VPC's gateway fills a quota of 1: got %s" % (err,))
    ctl.set(elastic_ips_per_region=1)
    first = ec2.allocate_address(Domain="vpc")["AllocationId"]
    try:
        err = error_of(ec2.allocate_address, Domain="vpc")
        check(err == ("AddressLimitExceeded", 400), "a second Elastic IP of 1: got %s" % (err,))
        ctl.set(nat_gateways_per_zone=0)
        err = error_of(ec2.create_nat_gateway, SubnetId=made["subnet"], AllocationId=first)
        check(err == ("NatGatewayLimitExceeded", 400), "a NAT gateway over 0: got %s" % (err,))
    finally:
        ec2.release_address(AllocationId=first)
    step("internet gateways, Elastic IPs and NAT gateways refused over their quotas "
         "(InternetGatewayLimitExceeded, AddressLimitExceeded, NatGatewayLimitExceeded)")

    live = [i for r in ec2.describe_instances(Filters=[
        {"Name": "instance-state-name", "Values": ["pending", "running"]}])["Reservations"]
        for i in r["Instances"]]
    ctl.set(vcpus_per_region=0)
    before = len(live)
    err = error_of(launch, c=ec2)
    check(err == ("VcpuLimitExceeded", 400),
          "a launch over the vCPU quota (%d running): got %s" % (before, err))
    after = ec2.describe_instances(Filters=[
        {"Name": "instance-state-name", "Values": ["pending", "running"]}])["Reservations"]
    check(sum(len(r["Instances"]) for r in after) == before, "a refused RunInstances launched")
    step("RunInstances over the account's vCPU quota (0, with %d running) refused: "
         "VcpuLimitExceeded, nothing launched" % before)

    other = "000000434343"
    ctl.set(access_key_accounts={"realism-selftest-other": other})
    c = boto3.client("ec2", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id="realism-selftest-other", aws_secret_access_key="x")
    owners = {v["OwnerId"] for v in c.describe_vpcs()["Vpcs"]}
    check(owners == {other}, "an access key mapped to %s sees VPCs of %s" % (other, owners))
    step("access key mapped to account %s: acts in that account" % other)
    ctl.reset()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--env", help="the world's env file (AWS_ENDPOINT_URL_EC2, VS_WORLD_MOTO, ...)")
    ap.add_argument("--endpoint", help="the realism layer's URL")
    ap.add_argument("--moto", help="moto's own URL, to check what really happened")
    ap.add_argument("--ami", default="ami-0f00d24040000a002")
    ap.add_argument("--instance-type", default="t3.micro")
    args = ap.parse_args()
    env = read_env(args.env) if args.env else {}
    endpoint = args.endpoint or env.get("AWS_ENDPOINT_URL_EC2")
    moto_url = args.moto or env.get("VS_WORLD_MOTO")
    ami = env.get("VS_WORLD_AMI", args.ami)
    itype = env.get("VS_WORLD_INSTANCE_TYPE", args.instance_type)
    if not endpoint:
        print("realism-selftest: give --endpoint or --env", file=sys.stderr)
        return 2

    ctl = Control(endpoint)
    ec2 = client(endpoint, 1)      # no retries: every error is seen
    ec2r = client(endpoint, 5)     # retries like an SDK does
    truth = client(moto_url, 1) if moto_url else None
    made = {"instances": [], "groups": [], "subnet": None, "vpc": None, "volumes": [],
            "snapshots": []}

    def launch(c, **kw):
        r = c.run_instances(ImageId=ami, InstanceType=itype, MinCount=1, MaxCount=1,
                            SubnetId=made["subnet"], **kw)
        made["instances"] += [i["InstanceId"] for i in r["Instances"]]
        return r
    launch.ami = ami

    def instances_in_subnet(c):
        res = c.describe_instances(Filters=[{"Name": "subnet-id", "Values": [made["subnet"]]}])
        return [i["InstanceId"] for r in res["Reservations"] for i in r["Instances"]]

    try:
        snap = ctl.reset()
        step("layer at %s, moto %s; reset" % (endpoint, snap["moto"]))
        check(snap["counters"]["calls"] == {}, "counters not zero after reset: %s" % snap)
        # the selftest launches more than AWS's default 5 vCPUs in its account
        ctl.set(vcpus_per_region=1000)

        made["vpc"] = ec2.create_vpc(CidrBlock=VPC_CIDR)["Vpc"]["VpcId"]
        made["subnet"] = ec2.create_subnet(VpcId=made["vpc"],
                                           CidrBlock=SUBNET_CIDR)["Subnet"]["SubnetId"]
        step("account %s: VPC %s, subnet %s" % (ACCOUNT, made["vpc"], made["subnet"]))

        # -- ClientToken
        token = "realism-selftest-" + secrets.token_hex(8)
        first = launch(ec2, ClientToken=token)
        again = launch(ec2, ClientToken=token)
        iid = first["Instances"][0]["InstanceId"]
        check(again["Instances"][0]["InstanceId"] == iid,
              "replayed ClientToken launched %s, not the first instance %s"
              % (again["Instances"][0]["InstanceId"], iid))
        check(again["ReservationId"] == first["ReservationId"], "replay: other reservation")
        check(ctl.counter("replays", "RunInstances") == 1, "replay not counted")
        if truth:
            ids = instances_in_subnet(truth)
            check(ids == [iid], "moto has %s after a replay, want just %s" % (ids, iid))
        step("same ClientToken twice -> the same instance %s, one launch" % iid)

        err = error_of(launch, c=ec2, ClientToken=token, Monitoring={"Enabled": True})
        check(err == ("IdempotentParameterMismatch", 400),
              "same token, other parameters: want IdempotentParameterMismatch/400, got %s"
              % (err,))
        check(ctl.counter("mismatches", "RunInstances") == 1, "mismatch not counted")
        if truth:
            check(len(instances_in_subnet(truth)) == 1, "a mismatched request launched")
        step("same token, other parameters -> IdempotentParameterMismatch (400)")

        # -- lost answers, retried by the SDK with the same token
        ctl.set(fail_next={"RunInstances": ["lost", "drop"]})
        token2 = "realism-selftest-" + secrets.token_hex(8)
        got = launch(ec2r, ClientToken=token2)
        iid2 = got["Instances"][0]["InstanceId"]
        check(ctl.counter("faults", "RunInstances", "lost") == 1, "lost answer not injected")
        check(ctl.counter("faults", "RunInstances", "drop") == 1, "dropped answer not injected")
        # the dropped answer and the last one were both replays of the first launch
        check(ctl.counter("replays", "RunInstances") == 3, "the retries were not replays")
        if truth:
            ids = sorted(instances_in_subnet(truth))
            check(ids == sorted([iid, iid2]),
                  "after two lost answers moto has %s, want %s" % (ids, sorted([iid, iid2])))
        step("answer lost (500), then dropped; the retry returned %s, launched once" % iid2)

        # -- eventual consistency
        window = 2.0
        ctl.set(consistency_seconds=window, consistency_random=False, pending_seconds=0)
        sg = ec2.create_security_group(GroupName="realism-selftest-" + secrets.token_hex(4),
                                       Description="realism selftest",
                                       VpcId=made["vpc"])["GroupId"]
        t_sg = time.monotonic()
        made["groups"].append(sg)
        rule = dict(GroupId=sg, IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22,
                                                "ToPort": 22,
                                                "IpRanges": [{"CidrIp": "10.43.0.0/16"}]}])
        err = error_of(ec2.describe_security_groups, GroupIds=[sg])
        check(err == ("InvalidGroup.NotFound", 400),
              "DescribeSecurityGroups right after create: want InvalidGroup.NotFound, got %s"
              % (err,))
        err = error_of(ec2.authorize_security_group_ingress, **rule)
        check(err == ("InvalidGroup.NotFound", 400),
              "AuthorizeSecurityGroupIngress right after create: want InvalidGroup.NotFound, "
              "got %s" % (err,))
        listed = ec2.describe_security_groups(
            Filters=[{"Name": "vpc-id", "Values": [made["vpc"]]}])["SecurityGroups"]
        check(sg not in [g["GroupId"] for g in listed] and listed,
              "a new group must be missing from a filtered listing (the default stays): %s"
              % [g["GroupId"] for g in listed])
        check(time.monotonic() - t_sg < window, "the checks took longer than the window")
        wait("group %s visible" % sg, window + 5,
             lambda: ec2.describe_security_groups(GroupIds=[sg])["SecurityGroups"])
        ec2.authorize_security_group_ingress(**rule)
        step("new group %s: NotFound and unlisted for a while, found after %.1fs"
             % (sg, time.monotonic() - t_sg))

        r = launch(ec2)
        iid3 = r["Instances"][0]["InstanceId"]
        t_i = time.monotonic()
        err = error_of(ec2.describe_instances, InstanceIds=[iid3])
        check(err == ("InvalidInstanceID.NotFound", 400),
              "DescribeInstances right after launch: want InvalidInstanceID.NotFound, got %s"
              % (err,))
        err = error_of(ec2.create_tags, Resources=[iid3], Tags=[{"Key": "k", "Value": "v"}])
        check(err == ("InvalidInstanceID.NotFound", 400),
              "CreateTags right after launch: want InvalidInstanceID.NotFound, got %s" % (err,))
        res = ec2.describe_instances(
            Filters=[{"Name": "subnet-id", "Values": [made["subnet"]]}])["Reservations"]
        check(r["ReservationId"] not in [x["ReservationId"] for x in res],
              "the new instance's reservation must be missing from the listing")
        check(sorted(i["InstanceId"] for x in res for i in x["Instances"]) == sorted([iid, iid2]),
              "the listing must still hold the older instances")
        check(time.monotonic() - t_i < window, "the checks took longer than the window")
        wait("instance %s visible" % iid3, window + 5,
             lambda: ec2.describe_instances(InstanceIds=[iid3])["Reservations"])
        check(ctl.counter("not_found", "DescribeInstances") >= 1
              and ctl.counter("hidden_items", "DescribeInstances") >= 1,
              "NotFound / hidden items not counted")
        step("new instance %s: NotFound, unlisted, found after %.1fs"
             % (iid3, time.monotonic() - t_i))

        # -- pending after launch
        ctl.set(consistency_seconds=0, pending_seconds=2)
        iid4 = launch(ec2)["Instances"][0]["InstanceId"]

        def state():
            return ec2.describe_instances(
                InstanceIds=[iid4])["Reservations"][0]["Instances"][0]["State"]
        st = state()
        check(st == {"Code": 0, "Name": "pending"}, "right after launch: want pending, got %s" % st)
        wait("instance %s running" % iid4, 10, lambda: state()["Name"] == "running")
        if truth:
            check(truth.describe_instances(InstanceIds=[iid4])["Reservations"][0]["Instances"][0]
                  ["State"]["Name"] == "running", "moto itself must say running")
        step("new instance %s: pending, then running" % iid4)

        # -- throttling and 5xx
        ctl.set(throttle={"DescribeVpcs": 1.0})
        err = error_of(ec2.describe_vpcs)
        check(err == ("RequestLimitExceeded", 503),
              "throttled DescribeVpcs: want RequestLimitExceeded/503, got %s" % (err,))
        ctl.set(throttle={})
        check(error_of(ec2.describe_vpcs) is None, "DescribeVpcs fails with throttling off")
        check(ctl.counter("faults", "DescribeVpcs", "throttle") == 1, "throttle not counted")
        step("throttling injected and counted")

        ctl.set(fail_next={"DescribeVpcs": ["unavailable", "internal"]})
        errs = [error_of(ec2.describe_vpcs) for _ in range(3)]
        check(errs == [("Unavailable", 503), ("InternalError", 500), None],
              "fail_next unavailable, internal: got %s" % errs)
        step("fail_next: Unavailable (503), InternalError (500), then success")

        ctl.set(seed=7, throttle={"DescribeSubnets": 0.5})
        errs = [error_of(ec2.describe_subnets) for _ in range(20)]
        throttled = sum(1 for e in errs if e == ("RequestLimitExceeded", 503))
        counted = ctl.counter("faults", "DescribeSubnets", "throttle")
        check(0 < throttled < 20 and throttled == counted
              and all(e in (None, ("RequestLimitExceeded", 503)) for e in errs),
              "throttle 0.5 over 20 calls: %d throttled, %d counted, %s"
              % (throttled, counted, errs))
        ctl.set(seed=7, throttle={"DescribeSubnets": 0.5})
        again = [error_of(ec2.describe_subnets) for _ in range(20)]
        check(again == errs, "the same seed must give the same faults")
        step("throttle 0.5 with seed 7: %d of 20 throttled, counted, same again" % throttled)

        unusable_kms_checks(ctl, ec2, truth, launch, made)
        ebs_checks(ctl, ec2, truth, launch, made)
        ebs_timing_checks(ctl, ec2, launch, made)
        image_checks(ec2, ami, env.get("VS_WORLD_AMI_WINDOWS", "ami-0b1b20220000a0001"),
                     env.get("VS_WORLD_AMI_ARM64", "ami-0f00d24040000b001"), itype, made)
        quota_checks(ctl, ec2, endpoint, launch, made)

        print("realism-selftest: passed", flush=True)
        return 0
    except Failed as exc:
        print("realism-selftest: FAILED: %s" % exc, flush=True)
        return 1
    finally:
        try:
            ctl.reset()
            if made["instances"]:
                ec2.terminate_instances(InstanceIds=sorted(set(made["instances"])))
            for v in made["volumes"]:  # detached by the terminations, once they are done
                wait("volume %s deleted" % v, 15, lambda: error_of(
                    ec2.delete_volume, VolumeId=v) in (None, ("InvalidVolume.NotFound", 400)))
            for sid in made["snapshots"]:
                ec2.delete_snapshot(SnapshotId=sid)
            for g in made["groups"]:
                ec2.delete_security_group(GroupId=g)
            if made["subnet"]:
                ec2.delete_subnet(SubnetId=made["subnet"])
            if made["vpc"]:
                ec2.delete_vpc(VpcId=made["vpc"])
        except Exception as exc:
            print("realism-selftest: cleanup: %s" % exc, flush=True)


if __name__ == "__main__":
    sys.exit(main())
