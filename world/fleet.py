"""Fleet simulator of the local world.

Polls the EC2 stand-in (moto) and mirrors its instances into host containers:

* every subnet that has instances becomes a Docker network ``vsw-<subnet-id>``
  whose subnet is the EC2 subnet's CIDR;
* every pending/running instance becomes a container ``vsw-<instance-id>`` on
  that network at the instance's private IP, running sshd (user ``admin``,
  authorised key = the public key of the instance's key pair) and its own
  Docker engine;
* like cloud-init, it reads the instance's user data: a ``#cloud-config``
  with ``ssh_keys`` (``ed25519_private``/``ed25519_public``) becomes the host's
  only SSH host key, so the key is the one its launcher chose;
* stopped instances stop their container, started ones start it again (and
  its engine), terminated or vanished ones lose it.

Only EC2 state is mirrored. Whatever happens inside a running host (a killed
engine, removed containers) is left as it is.

Subnets of one VPC reach each other (like a VPC's local route): a firewall
rule per VPC CIDR lets traffic between its Docker networks pass unmasqueraded.
Security groups are not enforced.

Run ``fleet.py --cleanup-firewall`` to drop those rules.
"""

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import time

FW_COMMENT = "votingstack-world"
ACTIVE = ("pending", "running")
STOPPED = ("stopping", "stopped")

# flags that let a container run its own Docker engine here (--privileged is
# not possible: the machine lacks one capability in its bounding set)
HOST_FLAGS = [
    "--cap-add=ALL",
    "--cap-drop=SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined",
    "--security-opt", "apparmor=unconfined",
    "--device-cgroup-rule=a *:* rwm",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    # a fresh /run on every boot, as on a real machine
    "--tmpfs", "/run:rw,exec,nosuid,mode=755",
    "--tmpfs", "/tmp:rw,exec,nosuid,mode=1777",
]


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%S")


_last_msgs = {}


def log(msg, key=None, every=60.0):
    """Print msg; with a key, at most once per `every` seconds for that key."""
    if key is not None:
        t = time.monotonic()
        if key in _last_msgs and t - _last_msgs[key] < every:
            return
        _last_msgs[key] = t
    print("%s %s" % (now(), msg), flush=True)


def run(args, timeout=120, check=True):
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(args[:3]), p.stderr.strip()))
    return p


def docker(*args, timeout=120, check=True):
    return run(["docker"] + list(args), timeout=timeout, check=check)


# ------------------------------------------------------------- firewall ----

def iptables(*args, check=True):
    return run(["iptables", "-w", "5"] + list(args), timeout=30, check=check)


FW_RULES = [
    ("filter", "DOCKER-USER", "ACCEPT"),
    ("nat", "POSTROUTING", "RETURN"),
]


def fw_rule(cidr, target):
    return ["-s", cidr, "-d", cidr, "-m", "comment", "--comment", FW_COMMENT, "-j", target]


def fw_ensure(cidr):
    for table, chain, target in FW_RULES:
        rule = fw_rule(cidr, target)
        if iptables("-t", table, "-C", chain, *rule, check=False).returncode != 0:
            iptables("-t", table, "-I", chain, "1", *rule)


def fw_remove(cidr):
    for table, chain, target in FW_RULES:
        rule = fw_rule(cidr, target)
        for _ in range(10):
            if iptables("-t", table, "-D", chain, *rule, check=False).returncode != 0:
                break


def fw_list():
    """CIDRs that currently have our rules."""
    found = set()
    for table, chain, _ in FW_RULES:
        p = iptables("-t", table, "-S", chain, check=False)
        for line in p.stdout.splitlines():
            if FW_COMMENT in line:
                parts = line.split()
                if "-s" in parts:
                    found.add(parts[parts.index("-s") + 1])
    return found


def fw_cleanup():
    for cidr in fw_list():
        fw_remove(cidr)


# ---------------------------------------------------------------- fleet ----

class Fleet:
    def __init__(self, ec2, host_image, label):
        self.ec2 = ec2
        self.image = host_image
        self.label = label
        self.key_cache = {}      # key name -> public key text
        self.subnet_cache = {}   # subnet id -> (cidr, vpc id)
        self.vpc_cache = {}      # vpc id -> cidr
        self.fw = set()

    # --- EC2 side

    def instances(self):
        out = {}
        token = None
        while True:
            kw = {"MaxResults": 1000}
            if token:
                kw["NextToken"] = token
            resp = self.ec2.describe_instances(**kw)
            for res in resp.get("Reservations", []):
                for inst in res.get("Instances", []):
                    out[inst["InstanceId"]] = inst
            token = resp.get("NextToken")
            if not token:
                return out

    def subnet(self, subnet_id):
        if subnet_id not in self.subnet_cache:
            s = self.ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"][0]
            self.subnet_cache[subnet_id] = (s["CidrBlock"], s["VpcId"])
        return self.subnet_cache[subnet_id]

    def vpc_cidr(self, vpc_id):
        if vpc_id not in self.vpc_cache:
            v = self.ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"][0]
            self.vpc_cache[vpc_id] = v["CidrBlock"]
        return self.vpc_cache[vpc_id]

    def public_key(self, key_name):
        """Public key of an EC2 key pair, as EC2 returns it."""
        if key_name in self.key_cache:
            return self.key_cache[key_name]
        resp = self.ec2.describe_key_pairs(KeyNames=[key_name], IncludePublicKey=True)
        kp = resp["KeyPairs"][0]
        key = (kp.get("PublicKey") or "").strip()
        if not key:
            raise RuntimeError("EC2 returned no public key for key pair %s" % key_name)
        self.key_cache[key_name] = key
        return key

    def user_data(self, iid):
        """The instance's user data as text ('' when it has none). A failed
        read raises: the host is not booted without its user data (the
        next pass tries again), as cloud-init would not skip it."""
        resp = self.ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
        value = (resp.get("UserData") or {}).get("Value") or ""
        text = base64.b64decode(value).decode("utf-8", "replace") if value else ""
        if text and not text.startswith("#cloud-config"):
            # user data sent already encoded (boto3 encodes it once more)
            try:
                text = base64.b64decode(text).decode("utf-8", "replace")
            except ValueError:
                pass
        return text

    def host_key(self, iid):
        """(private, public) ed25519 host key from the instance's
        #cloud-config ssh_keys, or None."""
        text = self.user_data(iid)
        if not text.startswith("#cloud-config"):
            return None
        import yaml
        try:
            cfg = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            log("instance %s: user data is not valid YAML: %s" % (iid, exc), key="udy" + iid)
            return None
        keys = cfg.get("ssh_keys") or {}
        private, public = keys.get("ed25519_private"), keys.get("ed25519_public")
        if not private or not public:
            return None
        return private.strip(), public.strip()

    # --- Docker side

    def containers(self):
        """instance id -> {name, state, ip} for our host containers."""
        lab = self.label
        fmt = "{{.Names}}\t{{.State}}\t{{.Label \"%s.instance\"}}\t{{.Label \"%s.ip\"}}" % (lab, lab)
        p = docker("ps", "-a", "--filter", "label=%s.instance" % lab, "--format", fmt)
        out = {}
        for line in p.stdout.splitlines():
            parts = line.split("\t")
            if len(parts) == 4:
                out[parts[2]] = {"name": parts[0], "state": parts[1], "ip": parts[3]}
        return out

    def networks(self):
        """network name -> {cidr, vpc_cidr} for our networks."""
        lab = self.label
        fmt = "{{.Name}}\t{{.Label \"%s.cidr\"}}\t{{.Label \"%s.vpc-cidr\"}}" % (lab, lab)
        p = docker("network", "ls", "--filter", "label=%s.subnet" % lab, "--format", fmt)
        out = {}
        for line in p.stdout.splitlines():
            parts = line.split("\t")
            if len(parts) == 3:
                out[parts[0]] = {"cidr": parts[1], "vpc_cidr": parts[2]}
        return out

    def ensure_network(self, subnet_id, nets):
        cidr, vpc_id = self.subnet(subnet_id)
        vpc_cidr = self.vpc_cidr(vpc_id)
        name = "vsw-" + subnet_id
        have = nets.get(name)
        if have is not None and have["cidr"] == cidr:
            return name, vpc_cidr
        if have is not None:
            docker("network", "rm", name, check=False)
        lab = self.label
        docker("network", "create", "--driver", "bridge", "--subnet", cidr,
               "--label", "%s=1" % lab,
               "--label", "%s.subnet=%s" % (lab, subnet_id),
               "--label", "%s.cidr=%s" % (lab, cidr),
               "--label", "%s.vpc=%s" % (lab, vpc_id),
               "--label", "%s.vpc-cidr=%s" % (lab, vpc_cidr),
               name)
        nets[name] = {"cidr": cidr, "vpc_cidr": vpc_cidr}
        log("network %s %s (vpc %s %s)" % (name, cidr, vpc_id, vpc_cidr))
        return name, vpc_cidr

    def start_engine(self, name):
        docker("exec", "-d", name, "/usr/local/sbin/vs-start-dockerd")

    def create_host(self, inst, net):
        iid = inst["InstanceId"]
        ip = inst["PrivateIpAddress"]
        name = "vsw-" + iid
        lab = self.label
        keys = ""
        if inst.get("KeyName"):
            keys = self.public_key(inst["KeyName"])
        vol = name + "-docker"
        host_key = self.host_key(iid)
        key_env = []
        if host_key is not None:
            key_env = ["-e", "VS_HOST_KEY_ED25519=" + host_key[0],
                       "-e", "VS_HOST_KEY_ED25519_PUB=" + host_key[1]]
        docker("volume", "create", "--label", "%s=1" % lab,
               "--label", "%s.instance=%s" % (lab, iid), vol)
        docker("run", "-d", "--name", name, "--hostname", iid,
               "--network", net, "--ip", ip,
               "--add-host", "registry.votingstack.local:host-gateway",
               "--label", "%s=1" % lab,
               "--label", "%s.instance=%s" % (lab, iid),
               "--label", "%s.ip=%s" % (lab, ip),
               "--label", "%s.subnet=%s" % (lab, inst.get("SubnetId", "")),
               *HOST_FLAGS,
               # the instance's disk: kept across stop/start like an EBS volume
               "-v", "%s:/var/lib/docker" % vol,
               "-e", "VS_AUTHORIZED_KEYS=" + keys,
               *key_env,
               self.image)
        self.start_engine(name)
        log("host %s up at %s (key pair %s, host key %s)"
            % (iid, ip, inst.get("KeyName") or "-", "from user data" if host_key else "generated"))

    def remove_host(self, iid, c):
        docker("rm", "-f", "-v", c["name"], check=False)
        docker("volume", "rm", "-f", c["name"] + "-docker", check=False)
        log("host %s removed" % iid)

    # --- one pass

    def sync(self):
        insts = self.instances()
        conts = self.containers()
        nets = self.networks()

        # gone or terminated instances lose their host
        for iid, c in conts.items():
            inst = insts.get(iid)
            st = inst["State"]["Name"] if inst else "gone"
            if st not in ACTIVE and st not in STOPPED:
                self.remove_host(iid, c)

        wanted_nets = set()
        wanted_vpcs = set()
        for iid, inst in sorted(insts.items()):
            st = inst["State"]["Name"]
            if st not in ACTIVE and st not in STOPPED:
                continue
            subnet_id = inst.get("SubnetId")
            ip = inst.get("PrivateIpAddress")
            if not subnet_id or not ip:
                log("instance %s has no subnet or private IP; skipped" % iid, key="noip" + iid)
                continue
            c = conts.get(iid)
            try:
                if c is not None:
                    wanted_nets.add("vsw-" + subnet_id)
                    wanted_vpcs.add(nets.get("vsw-" + subnet_id, {}).get("vpc_cidr"))
                if st in ACTIVE:
                    net, vpc_cidr = self.ensure_network(subnet_id, nets)
                    wanted_nets.add(net)
                    wanted_vpcs.add(vpc_cidr)
                    if vpc_cidr not in self.fw:
                        fw_ensure(vpc_cidr)
                        self.fw.add(vpc_cidr)
                    if c is None:
                        self.create_host(inst, net)
                    elif c["ip"] != ip:
                        self.remove_host(iid, c)
                        self.create_host(inst, net)
                    elif c["state"] != "running":
                        docker("start", c["name"])
                        self.start_engine(c["name"])
                        log("host %s started" % iid)
                elif c is not None and c["state"] == "running":
                    docker("stop", "-t", "5", c["name"], timeout=60)
                    log("host %s stopped" % iid)
            except Exception as exc:  # keep mirroring the others
                log("instance %s: %s" % (iid, exc), key="err" + iid + str(exc)[:80])

        for name in set(nets) - wanted_nets:
            if docker("network", "rm", name, check=False).returncode == 0:
                log("network %s removed" % name)
        for cidr in set(self.fw) - wanted_vpcs:
            fw_remove(cidr)
            self.fw.discard(cidr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", default="http://127.0.0.1:5055")
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("--host-image")
    ap.add_argument("--label", default="votingstack.world")
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--ready-file")
    ap.add_argument("--cleanup-firewall", action="store_true",
                    help="remove the firewall rules this program adds, then exit")
    args = ap.parse_args()

    if args.cleanup_firewall:
        fw_cleanup()
        return 0
    if not args.host_image:
        ap.error("--host-image is required")

    import boto3
    from botocore.config import Config

    ec2 = boto3.client(
        "ec2", endpoint_url=args.endpoint, region_name=args.region,
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}, connect_timeout=3, read_timeout=20),
    )
    fleet = Fleet(ec2, args.host_image, args.label)

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))

    # rules from an earlier run are re-made as needed
    fw_cleanup()
    log("fleet simulator: endpoint %s, host image %s" % (args.endpoint, args.host_image))
    ready = False
    while not stopping:
        try:
            fleet.sync()
            if not ready and args.ready_file:
                with open(args.ready_file, "w") as f:
                    f.write(json.dumps({"pid": os.getpid(), "since": now()}) + "\n")
                ready = True
        except Exception as exc:
            log("sync failed: %s" % exc, key="sync" + str(exc)[:80], every=30)
        time.sleep(args.interval)
    log("fleet simulator: stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
