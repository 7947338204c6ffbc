"""End-to-end check of a running local world (scripts/world selftest).

Through the EC2 stand-in it makes a VPC 10.42.0.0/16 with a public subnet
10.42.1.0/24 (internet gateway route in the main table) and a private subnet
10.42.2.0/24 (a table of its own), security groups, a key pair from the
world's SSH key and three instances:

* ``web``: public subnet, public IP, groups web + app;
* ``db``: private subnet, no public IP, group db (5432 from app only);
* ``lone``: public subnet, no public IP, group db.

Then it checks that each host appears at its instance's private IP and
answers SSH; that egress follows EC2's rules (web reaches the registry, lone
and db do not; db does behind a NAT gateway with an Elastic IP in the public
subnet, and no longer once that route is deleted); that security groups
filter inbound traffic (5432 on db from a member of app only, published
ports on web by the port EC2 sees, a revoked rule closes the port); that web
pulls from the world registry and runs all five workloads so that a vote cast
over HTTP lands in postgres and shows in the result; that an EBS volume
attached as /dev/sdf shows in the host as /dev/nvme<N>n1 under its volume id
(/dev/disk/by-id), takes a filesystem mounted by UUID, goes away on detach and
brings its file to another host; that a stop/start keeps the disk, the host
key, the filter and the volume's device; and that terminate removes the host
and its disk and leaves the volume available, with no loop device; a deleted
volume's backing file goes. Whatever it made is removed at the end. Every
wait is bounded.
"""

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

VPC_CIDR = "10.42.0.0/16"
PUBLIC_CIDR = "10.42.1.0/24"
PRIVATE_CIDR = "10.42.2.0/24"
TAG = "votingstack-world-selftest"
ANYWHERE = "0.0.0.0/0"
# a few fleet passes (0.5 s each) plus an exec
FIREWALL_SECS = 15


class Failed(Exception):
    pass


def read_env(path):
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                env[k] = v
    return env


T0 = time.monotonic()


def step(msg):
    print("[selftest %5.1fs] %s" % (time.monotonic() - T0, msg), flush=True)


def wait(what, secs, fn, interval=0.5):
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


def sh(args, timeout=60, check=True):
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise Failed("%s failed (%d): %s" % (" ".join(args[:6]), p.returncode,
                                            (p.stderr or p.stdout).strip()[-500:]))
    return p


def container(name):
    p = sh(["docker", "inspect", name], check=False)
    if p.returncode != 0:
        return None
    return json.loads(p.stdout)[0]


def volume_exists(name):
    return sh(["docker", "volume", "inspect", name], check=False).returncode == 0


def http(url, data=None, headers=None, timeout=5):
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, resp.read().decode(), resp.headers


def tcp_open(ip, port, timeout=2.0):
    """Whether this machine can open a TCP connection to ip:port."""
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


def tcp_perm(port, cidr=None, group=None, to_port=None):
    perm = {"IpProtocol": "tcp", "FromPort": port, "ToPort": to_port or port}
    if cidr:
        perm["IpRanges"] = [{"CidrIp": cidr}]
    if group:
        perm["UserIdGroupPairs"] = [{"GroupId": group}]
    return perm


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--env", required=True)
    args = ap.parse_args()
    env = read_env(args.env)

    import boto3
    from botocore.config import Config

    ec2 = boto3.client(
        "ec2", endpoint_url=env["AWS_ENDPOINT_URL_EC2"], region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        config=Config(retries={"max_attempts": 4, "mode": "standard"}, connect_timeout=3, read_timeout=30),
    )
    key = env["VS_WORLD_SSH_KEY"]
    pub_path = key + ".pub"
    if os.path.exists(pub_path):
        pub = open(pub_path).read().strip()
    else:
        pub = sh(["ssh-keygen", "-y", "-f", key]).stdout.strip()
    registry = env["VS_WORLD_REGISTRY"]
    user = env.get("VS_WORLD_SSH_USER", "admin")
    kh = tempfile.NamedTemporaryFile(prefix="vsw-known-hosts-", delete=False)
    kh.close()
    made = {"instances": [], "key": None, "subnets": [], "vpc": None, "igw": None,
            "route_table": None, "association": None, "nat": None, "eip": None, "groups": [],
            "volumes": [], "snapshots": []}

    def ssh(ip, command, timeout=60, check=True):
        return sh(["ssh", "-i", key, "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                   "-o", "StrictHostKeyChecking=accept-new",
                   "-o", "UserKnownHostsFile=" + kh.name, "-o", "LogLevel=ERROR",
                   "%s@%s" % (user, ip), command], timeout=timeout, check=check)

    def reaches_registry(ip):
        """True when the host at ip gets HTTP 200 from the registry (the
        world's internet), False when its attempt times out (as from a
        private subnet); anything else fails the selftest."""
        p = ssh(ip, "curl -s -o /dev/null -m 2 -w '%%{http_code}' http://%s/v2/" % registry,
                timeout=30, check=False)
        if p.returncode == 0 and p.stdout.strip() == "200":
            return True
        if p.returncode == 28:  # curl: operation timed out
            return False
        raise Failed("curl on %s to the registry: exit %d, HTTP %r, %s"
                     % (ip, p.returncode, p.stdout.strip(), p.stderr.strip()))

    def host_reaches(ip, target, port):
        """True when the host at ip opens a TCP connection to target:port
        within 2 s, False when it cannot; a failed ssh or a missing nc fails
        the selftest."""
        p = ssh(ip, "nc -z -w 2 %s %d" % (target, port), timeout=30, check=False)
        if p.returncode in (0, 1):
            return p.returncode == 0
        raise Failed("nc on %s to %s:%d: exit %d, %s"
                     % (ip, target, port, p.returncode, p.stderr.strip()))

    try:
        step("EC2: VPC %s, public subnet %s, private subnet %s" % (VPC_CIDR, PUBLIC_CIDR, PRIVATE_CIDR))
        tags = [{"Key": "Name", "Value": TAG}]
        vpc = ec2.create_vpc(CidrBlock=VPC_CIDR, TagSpecifications=[
            {"ResourceType": "vpc", "Tags": tags}])["Vpc"]["VpcId"]
        made["vpc"] = vpc
        public = ec2.create_subnet(VpcId=vpc, CidrBlock=PUBLIC_CIDR)["Subnet"]["SubnetId"]
        made["subnets"].append(public)
        private = ec2.create_subnet(VpcId=vpc, CidrBlock=PRIVATE_CIDR)["Subnet"]["SubnetId"]
        made["subnets"].append(private)
        igw = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
        made["igw"] = igw
        ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
        main_rt = ec2.describe_route_tables(Filters=[
            {"Name": "vpc-id", "Values": [vpc]},
            {"Name": "association.main", "Values": ["true"]}])["RouteTables"][0]["RouteTableId"]
        ec2.create_route(RouteTableId=main_rt, DestinationCidrBlock=ANYWHERE, GatewayId=igw)
        private_rt = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
        made["route_table"] = private_rt
        made["association"] = ec2.associate_route_table(
            RouteTableId=private_rt, SubnetId=private)["AssociationId"]

        def group(name, perms):
            gid = ec2.create_security_group(GroupName="%s-%s-%s" % (TAG, name, secrets.token_hex(3)),
                                            Description="selftest " + name, VpcId=vpc)["GroupId"]
            made["groups"].append(gid)
            if perms:
                ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=perms)
            return gid
        # SSH from this machine (it arrives from the subnets' bridge gateways)
        sg_app = group("app", [])
        sg_web = group("web", [tcp_perm(22, cidr=VPC_CIDR), tcp_perm(80, cidr=ANYWHERE, to_port=81)])
        db_pg = tcp_perm(5432, group=sg_app)
        sg_db = group("db", [tcp_perm(22, cidr=VPC_CIDR), db_pg])

        key_name = "%s-%s" % (TAG, secrets.token_hex(4))
        ec2.import_key_pair(KeyName=key_name, PublicKeyMaterial=pub.encode())
        made["key"] = key_name
        kp = ec2.describe_key_pairs(KeyNames=[key_name], IncludePublicKey=True)["KeyPairs"][0]
        if kp.get("PublicKey", "").split()[:2] != pub.split()[:2]:
            raise Failed("EC2 does not give back the imported public key")

        def launch(role, subnet, public_ip, groups):
            inst = ec2.run_instances(
                ImageId=env["VS_WORLD_AMI"], InstanceType=env["VS_WORLD_INSTANCE_TYPE"],
                MinCount=1, MaxCount=1, KeyName=key_name,
                NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": subnet,
                                    "AssociatePublicIpAddress": public_ip, "Groups": groups}],
                TagSpecifications=[{"ResourceType": "instance",
                                    "Tags": tags + [{"Key": "role", "Value": role}]}],
            )["Instances"][0]
            made["instances"].append(inst["InstanceId"])
            if bool(inst.get("PublicIpAddress")) != public_ip:
                raise Failed("%s: public IP %r, asked for %s" % (role, inst.get("PublicIpAddress"), public_ip))
            return inst["InstanceId"], inst["PrivateIpAddress"]
        web, web_ip = launch("web", public, True, [sg_web, sg_app])
        db, db_ip = launch("db", private, False, [sg_db])
        lone, lone_ip = launch("lone", public, False, [sg_db])
        step("instances web %s %s, db %s %s, lone %s %s" % (web, web_ip, db, db_ip, lone, lone_ip))

        def host_up(iid, ip):
            c = container("vsw-" + iid)
            if not c or not c["State"]["Running"]:
                return False
            nets = c["NetworkSettings"]["Networks"]
            return any(n.get("IPAddress") == ip for n in nets.values())

        def docker_info(ip):
            p = ssh(ip, "docker info --format '{{.ServerVersion}} {{.Driver}}'", check=False)
            return p.stdout.strip() if p.returncode == 0 else None
        for iid, ip in ((web, web_ip), (db, db_ip), (lone, lone_ip)):
            wait("host container vsw-%s at %s" % (iid, ip), 60, lambda: host_up(iid, ip))
        for ip in (web_ip, db_ip, lone_ip):
            info = wait("ssh %s@%s docker info" % (user, ip), 90, lambda: docker_info(ip), interval=1)
        step("three hosts answer SSH and run Docker (%s)" % info)

        # --- egress
        if not reaches_registry(web_ip):
            raise Failed("web (public IP, internet gateway route) cannot reach the registry")
        if reaches_registry(lone_ip):
            raise Failed("lone (public subnet, no public IP) reaches the registry")
        if reaches_registry(db_ip):
            raise Failed("db (private subnet, no NAT gateway) reaches the registry")
        step("egress: web reaches the registry; lone (no public IP) and db (private) time out")

        eip = ec2.allocate_address(Domain="vpc")["AllocationId"]
        made["eip"] = eip
        nat = ec2.create_nat_gateway(SubnetId=public, AllocationId=eip)["NatGateway"]["NatGatewayId"]
        made["nat"] = nat
        wait("NAT gateway %s available" % nat, 60, lambda: ec2.describe_nat_gateways(
            NatGatewayIds=[nat])["NatGateways"][0]["State"] == "available")
        ec2.create_route(RouteTableId=private_rt, DestinationCidrBlock=ANYWHERE, NatGatewayId=nat)
        wait("db reaches the registry through %s" % nat, FIREWALL_SECS, lambda: reaches_registry(db_ip))
        step("egress: db reaches the registry through NAT gateway %s" % nat)
        ec2.delete_route(RouteTableId=private_rt, DestinationCidrBlock=ANYWHERE)
        wait("db cut off after the route's deletion", FIREWALL_SECS, lambda: not reaches_registry(db_ip))
        step("egress: route deleted -> db cut off")

        # --- security groups
        sh(["docker", "exec", "-d", "vsw-" + db, "nc", "-lk", "5432"])
        wait("web (group app) reaches db:5432", FIREWALL_SECS, lambda: host_reaches(web_ip, db_ip, 5432))
        if host_reaches(lone_ip, db_ip, 5432):
            raise Failed("lone (not in group app) reaches db:5432")
        if tcp_open(db_ip, 5432):
            raise Failed("this machine (not in group app) reaches db:5432")
        if not tcp_open(db_ip, 22):
            raise Failed("this machine cannot reach db:22, which group db allows from %s" % VPC_CIDR)
        step("security groups: db:5432 open to group app only")
        ec2.revoke_security_group_ingress(GroupId=sg_db, IpPermissions=[db_pg])
        wait("db:5432 closed after the rule's revocation", FIREWALL_SECS,
             lambda: not host_reaches(web_ip, db_ip, 5432))
        step("security groups: revoked rule -> db:5432 closed to web too")

        # --- the workload on web
        images = {n: "%s/%s:local" % (registry, n)
                  for n in ("vote", "result", "worker", "redis", "postgres")}
        ssh(web_ip, "docker pull -q %s" % images["vote"], timeout=300)
        step("pulled %s" % images["vote"])
        for n in ("result", "worker", "redis", "postgres"):
            ssh(web_ip, "docker pull -q %s" % images[n], timeout=300)
        step("pulled the other four")

        hosts = "--add-host redis:%s --add-host db:%s" % (web_ip, web_ip)
        runs = [
            "docker run -d --name vs-db %s -p 5432:5432 -e POSTGRES_USER=postgres "
            "-e POSTGRES_PASSWORD=postgres %s" % (hosts, images["postgres"]),
            "docker run -d --name vs-redis %s -p 6379:6379 %s" % (hosts, images["redis"]),
            "docker run -d --name vs-worker %s %s" % (hosts, images["worker"]),
            "docker run -d --name vs-vote %s -p 80:80 -e OPTION_A=Cats -e OPTION_B=Dogs %s"
            % (hosts, images["vote"]),
            "docker run -d --name vs-result %s -p 81:80 %s" % (hosts, images["result"]),
        ]
        ssh(web_ip, " && ".join(runs), timeout=120)
        step("five workloads started")

        def vote_page():
            status, body, _ = http("http://%s:80/" % web_ip)
            return status == 200 and "Cats" in body and "Dogs" in body
        wait("vote page on %s:80" % web_ip, 60, vote_page)
        voter = "selftest-" + secrets.token_hex(6)
        status, body, _ = http("http://%s:80/" % web_ip, data={"vote": "b"},
                               headers={"Cookie": "voter_id=" + voter})
        if status != 200:
            raise Failed("POST vote: HTTP %s" % status)
        step("voted b as %s" % voter)

        def row():
            p = ssh(web_ip, "docker exec vs-db psql -U postgres -tAc 'select * from votes'",
                    check=False)
            return ("%s|b" % voter) in p.stdout.split()
        wait("vote row in postgres", 60, row, interval=1)
        step("row %s|b in postgres" % voter)

        def result():
            _, body, _ = http("http://%s:81/api/results" % web_ip)
            return json.loads(body).get("b", 0) >= 1
        wait("result on %s:81" % web_ip, 30, result)
        step("result page counts it")

        def published_closed():
            # redis and postgres run on web, published on 6379 and 5432,
            # which no group of web opens
            return not tcp_open(web_ip, 6379) and not tcp_open(web_ip, 5432)
        if not published_closed():
            raise Failed("web's published 6379/5432 answer this machine; its groups open 22, 80, 81 only")
        step("security groups: web's published 6379 and 5432 stay closed, 80 and 81 open")

        # --- an EBS volume: a block device found by its volume id, moved between hosts
        web_zone = ec2.describe_instances(InstanceIds=[web])["Reservations"][0]["Instances"][0][
            "Placement"]["AvailabilityZone"]
        vol = ec2.create_volume(AvailabilityZone=web_zone, Size=1, VolumeType="gp3",
                                TagSpecifications=[{"ResourceType": "volume", "Tags": tags}]
                                )["VolumeId"]
        made["volumes"].append(vol)
        link = "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_" + vol.replace("-", "")
        backing = os.path.join(env["VS_WORLD_DIR"], "ebs", vol + ".img")
        wait("backing file %s" % backing, FIREWALL_SECS, lambda: os.path.exists(backing))

        def volume_state():
            return ec2.describe_volumes(VolumeIds=[vol])["Volumes"][0]["State"]

        def device(ip):
            """The volume's node in the host at ip (via its by-id link), or None."""
            p = ssh(ip, "test -b %s && readlink -f %s" % (link, link), check=False)
            node = p.stdout.strip()
            return node if p.returncode == 0 and node.startswith("/dev/nvme") else None

        wait("volume %s available (EC2 creates it first)" % vol, 30,
             lambda: volume_state() == "available")
        ec2.attach_volume(VolumeId=vol, InstanceId=lone, Device="/dev/sdf")
        node = wait("%s in lone" % link, FIREWALL_SECS, lambda: device(lone_ip))
        if ssh(lone_ip, "ls /dev/sdf /dev/xvdf", check=False).returncode == 0:
            raise Failed("lone has /dev/sdf or /dev/xvdf: a Nitro instance has neither")
        if ssh(lone_ip, "sudo blkid -p %s" % node, check=False).stdout.strip():
            raise Failed("a new volume already holds a filesystem")
        ssh(lone_ip, "sudo mkfs.ext4 -q %s" % node, timeout=120)
        uuid = ssh(lone_ip, "sudo blkid -p -o value -s UUID %s" % node).stdout.strip()
        marker = "ebs-" + secrets.token_hex(6)
        ssh(lone_ip, "sudo mkdir -p /mnt/ebs && sudo mount UUID=%s /mnt/ebs && "
                     "findmnt -n -o SOURCE /mnt/ebs && echo %s | sudo tee /mnt/ebs/marker && "
                     "sudo umount /mnt/ebs" % (uuid, marker))
        step("volume %s attached to lone as /dev/sdf: %s (%s), ext4 %s mounted by UUID, file written"
             % (vol, node, link, uuid))

        # --- a snapshot holds the volume's data of its moment; a volume made from it, that data
        snap = ec2.create_snapshot(VolumeId=vol, TagSpecifications=[
            {"ResourceType": "snapshot", "Tags": tags}])["SnapshotId"]
        made["snapshots"].append(snap)
        snap_file = os.path.join(env["VS_WORLD_DIR"], "ebs", "snapshots", snap + ".img")
        ssh(lone_ip, "sudo mount UUID=%s /mnt/ebs && echo after-the-snapshot | sudo tee "
                     "/mnt/ebs/marker && sudo umount /mnt/ebs" % uuid)
        wait("snapshot %s completed" % snap, 60, lambda: ec2.describe_snapshots(
            SnapshotIds=[snap])["Snapshots"][0]["State"] == "completed")
        restored = ec2.create_volume(AvailabilityZone=web_zone, SnapshotId=snap, VolumeType="gp3",
                                     TagSpecifications=[{"ResourceType": "volume", "Tags": tags}]
                                     )["VolumeId"]
        made["volumes"].append(restored)
        wait("volume %s available" % restored, 30, lambda: ec2.describe_volumes(
            VolumeIds=[restored])["Volumes"][0]["State"] == "available")
        ec2.attach_volume(VolumeId=restored, InstanceId=lone, Device="/dev/sdg")
        rlink = "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_" + restored.replace("-", "")

        def restored_node():
            p = ssh(lone_ip, "test -b %s && readlink -f %s" % (rlink, rlink), check=False)
            return p.stdout.strip() if p.returncode == 0 else None
        rnode = wait("%s in lone" % rlink, FIREWALL_SECS, restored_node)
        got = ssh(lone_ip, "sudo mkdir -p /mnt/restored && sudo mount -o ro %s /mnt/restored && "
                           "cat /mnt/restored/marker; sudo umount /mnt/restored" % rnode).stdout.strip()
        if got != marker:
            raise Failed("volume %s from snapshot %s reads %r; the volume held %r when the "
                         "snapshot was taken" % (restored, snap, got, marker))
        ec2.detach_volume(VolumeId=restored)
        wait("volume %s deleted" % restored, 30, lambda: deleted(
            lambda: ec2.delete_volume(VolumeId=restored), "InvalidVolume.NotFound"))
        made["volumes"].remove(restored)
        ec2.delete_snapshot(SnapshotId=snap)
        made["snapshots"].remove(snap)
        if os.path.exists(snap_file):
            raise Failed("snapshot %s deleted, its data %s stays" % (snap, snap_file))
        ssh(lone_ip, "sudo mount UUID=%s /mnt/ebs && echo %s | sudo tee /mnt/ebs/marker && "
                     "sudo umount /mnt/ebs" % (uuid, marker))
        step("snapshot %s: pending, then completed; volume %s from it holds the data of its "
             "moment, not the later write; deleted -> its data gone" % (snap, restored))

        ec2.detach_volume(VolumeId=vol)
        wait("volume %s available" % vol, 30, lambda: volume_state() == "available")
        wait("%s gone from lone" % node, FIREWALL_SECS,
             lambda: ssh(lone_ip, "test -e %s || test -e %s" % (node, link),
                         check=False).returncode == 1)
        ec2.attach_volume(VolumeId=vol, InstanceId=web, Device="/dev/sdf")
        node = wait("%s in web" % link, FIREWALL_SECS, lambda: device(web_ip))
        got = ssh(web_ip, "sudo mkdir -p /mnt/ebs && sudo mount UUID=%s /mnt/ebs && "
                          "cat /mnt/ebs/marker && sudo umount /mnt/ebs" % uuid).stdout.strip()
        if got != marker:
            raise Failed("the volume's file on web reads %r, lone wrote %r" % (got, marker))
        step("detached: gone from lone; attached to web as %s, the file is there" % node)

        # --- stop/start keeps the disk, the host key and the filter
        name = "vsw-" + web
        marker = "selftest-" + secrets.token_hex(6)
        sh(["docker", "exec", name, "sh", "-c", "echo %s > /var/lib/docker/selftest-marker" % marker])
        key_before = sh(["docker", "exec", name, "cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).stdout
        ec2.stop_instances(InstanceIds=[web])
        wait("host stopped", 30, lambda: not container(name)["State"]["Running"])
        step("instance stopped -> host stopped")
        ec2.start_instances(InstanceIds=[web])
        wait("host started", 30, lambda: host_up(web, web_ip))
        wait("docker info after start", 90, lambda: docker_info(web_ip), interval=1)
        disk = sh(["docker", "exec", name, "cat", "/var/lib/docker/selftest-marker"], check=False).stdout
        if disk.strip() != marker:
            raise Failed("the disk lost its content over stop/start (read %r)" % disk.strip())
        key_after = sh(["docker", "exec", name, "cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).stdout
        if key_after != key_before:
            raise Failed("the host key changed over stop/start")
        if tcp_open(web_ip, 6379):
            raise Failed("after stop/start web's 6379 answers this machine: the filter was not loaded again")
        step("instance started -> host back with its disk, host key and filter")
        wait("%s in web after the start" % link, FIREWALL_SECS, lambda: device(web_ip))
        step("instance started -> the volume's device is back in web")

        ec2.terminate_instances(InstanceIds=[web])
        wait("host removed", 30, lambda: container(name) is None)
        if volume_exists(name + "-docker"):
            raise Failed("terminate left the host's disk (volume %s-docker)" % name)
        step("instance terminated -> host and its disk removed")
        wait("volume %s available after web's termination" % vol, 30,
             lambda: volume_state() == "available")

        def loop_gone():
            return not sh(["losetup", "--associated", backing]).stdout.strip()
        wait("no loop device on %s" % backing, FIREWALL_SECS, loop_gone)
        ec2.delete_volume(VolumeId=vol)
        made["volumes"].remove(vol)
        wait("backing file %s removed" % backing, FIREWALL_SECS, lambda: not os.path.exists(backing))
        step("volume %s: available after the termination, no loop device; deleted -> file gone"
             % vol)
        print("selftest: passed", flush=True)
        return 0
    except Failed as exc:
        print("selftest: FAILED: %s" % exc, flush=True)
        return 1
    finally:
        cleanup(ec2, made)
        for f in (kh.name, kh.name + ".old"):  # ssh-keygen -R leaves a backup
            if os.path.exists(f):
                os.unlink(f)


def deleted(fn, not_found):
    """Whether a delete call went through (or found nothing to delete)."""
    from botocore.exceptions import ClientError
    try:
        fn()
    except ClientError as exc:
        return exc.response["Error"]["Code"] == not_found
    return True


def cleanup(ec2, made):
    """Removes what the selftest made, in the order EC2 needs."""
    def attempt(what, fn):
        try:
            fn()
        except Exception as exc:
            print("selftest: cleanup: %s: %s" % (what, exc), flush=True)

    if made["instances"]:
        attempt("terminate", lambda: ec2.terminate_instances(InstanceIds=made["instances"]))
        for iid in made["instances"]:
            attempt("host %s" % iid, lambda: wait("host %s removed" % iid, 30,
                                                  lambda: container("vsw-" + iid) is None))
    for vid in made["volumes"]:  # detached by the terminations, once they are done
        attempt("volume %s" % vid, lambda: wait("volume %s deleted" % vid, 30, lambda: deleted(
            lambda: ec2.delete_volume(VolumeId=vid), "InvalidVolume.NotFound")))
    for sid in made["snapshots"]:
        attempt("snapshot %s" % sid, lambda: ec2.delete_snapshot(SnapshotId=sid))
    if made["nat"]:
        attempt("NAT gateway", lambda: ec2.delete_nat_gateway(NatGatewayId=made["nat"]))
    if made["eip"]:
        attempt("Elastic IP", lambda: ec2.release_address(AllocationId=made["eip"]))
    if made["key"]:
        attempt("key pair", lambda: ec2.delete_key_pair(KeyName=made["key"]))
    for gid in made["groups"]:
        attempt("group %s" % gid, lambda: ec2.delete_security_group(GroupId=gid))
    if made["igw"] and made["vpc"]:
        attempt("internet gateway", lambda: ec2.detach_internet_gateway(
            InternetGatewayId=made["igw"], VpcId=made["vpc"]))
        attempt("internet gateway", lambda: ec2.delete_internet_gateway(InternetGatewayId=made["igw"]))
    if made["association"]:
        attempt("route table association",
                lambda: ec2.disassociate_route_table(AssociationId=made["association"]))
    for sid in made["subnets"]:
        attempt("subnet %s" % sid, lambda: ec2.delete_subnet(SubnetId=sid))
    if made["route_table"]:
        attempt("route table", lambda: ec2.delete_route_table(RouteTableId=made["route_table"]))
    if made["vpc"]:
        attempt("VPC", lambda: ec2.delete_vpc(VpcId=made["vpc"]))


if __name__ == "__main__":
    sys.exit(main())
