"""Fleet simulator of the local world.

Polls the EC2 stand-in and mirrors its instances into host containers:

* every subnet that has instances becomes a Docker network ``vsw-<subnet-id>``
  whose subnet is the EC2 subnet's CIDR;
* every pending/running instance becomes a container ``vsw-<instance-id>`` on
  that network at the instance's private IP, running sshd (user ``admin``,
  authorised key = the public key of the instance's key pair) and its own
  Docker engine; sshd answers VS_WORLD_SSHD_DELAY_S seconds after the
  container starts, as a booting machine would;
* like cloud-init, it reads the instance's user data: a ``#cloud-config``
  with ``ssh_keys`` (``ed25519_private``/``ed25519_public``) becomes the host's
  only SSH host key, so the key is the one its launcher chose;
* stopped instances stop their container (disk and host keys are kept),
  started ones start it again (and its engine), terminated or vanished ones
  lose it and its disk.

The network is held to EC2's rules, re-evaluated on every pass and applied
only when something changed:

* Egress: a host reaches anything outside its VPC (the world's registry
  stands for the internet) only when EC2 would let it: it has a public IP and
  its subnet's route table (explicit association, else the VPC's main table)
  sends 0.0.0.0/0 to an internet gateway attached to the VPC; or that table
  sends 0.0.0.0/0 to an ``available`` public NAT gateway that has an Elastic
  IP and sits in a subnet with such an internet route. Other hosts may only
  answer and talk within their VPC; their new connections elsewhere are
  dropped, so they time out as in a private subnet. Enforced on this machine
  in chains VSW-INPUT (from INPUT: the machine's own services) and
  VSW-FORWARD (from DOCKER-USER: forwarded traffic). Off with
  VS_WORLD_ENFORCE_EGRESS=0.
* Subnets of one VPC reach each other (a VPC's local route): VSW-FORWARD
  accepts traffic within a VPC CIDR and VSW-POSTROUTING (nat table) keeps it
  unmasqueraded.
* Security groups: each host drops new inbound connections on its eth0 that
  no ingress rule of its instance's groups allows (CIDR sources, and group
  sources as the private IPs of the groups' pending/running members).
  Stateful: replies pass. The rules live inside the host, in chain VSW-SG of
  its mangle table, hooked from PREROUTING, so ports published by the host's
  own engine are matched by the port EC2 would see. Traffic from this machine
  arrives from the bridge gateway of the host's subnet network (the first
  address of the subnet, e.g. 10.42.1.1) and is filtered like any other. Off
  with VS_WORLD_ENFORCE_SECURITY_GROUPS=0.

EBS: the fleet is the volumes' hardware (with --state-dir). Every volume
has a sparse backing file ``<state dir>/ebs/<volume id>.img`` of its size,
removed once EC2 no longer has the volume. A volume attached to an instance
whose host runs becomes a block device in that host, named as on a Nitro
instance whatever device name the attach gave: ``/dev/nvme<N>n1`` (N = 1, 2,
...; the root disk would be nvme0) with the udev link
``/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol<hex>``, backed by a loop
device of this machine; ``/dev/disk/by-uuid/<uuid>`` follows once the volume
holds a filesystem. A host's /dev is new on every boot, so its nodes are made
again after a stop/start. A detach (or a terminated instance) lazily unmounts
what the host mounted from the device, removes the node and links and
detaches the loop device; the data stays in the backing file. Root volumes
(those at an instance's root device name) are the host container itself and
get neither file nor device.

Only EC2 state is mirrored. Whatever happens inside a running host (a killed
engine, removed containers) is left as it is.

Run ``fleet.py --cleanup-firewall`` to remove every rule and chain it added on
this machine.
"""

import argparse
import base64
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time

FW_COMMENT = "votingstack-world"
ACTIVE = ("pending", "running")
STOPPED = ("stopping", "stopped")
ANYWHERE = "0.0.0.0/0"

# our chains on this machine: (table, hooked from, chain)
FW_HOOKS = [
    ("filter", "INPUT", "VSW-INPUT"),
    ("filter", "DOCKER-USER", "VSW-FORWARD"),
    ("nat", "POSTROUTING", "VSW-POSTROUTING"),
]
# inside each host: the security group filter (see world/host/.../vs-sg-closed)
SG_CHAIN = "VSW-SG"

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


class ConfigError(Exception):
    """A knob of the environment holds a value the fleet cannot use."""


def env_flag(name, default):
    """Boolean knob: 1/true/yes/on or 0/false/no/off."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError("%s=%r: expected 1 or 0" % (name, raw))


def env_seconds(name, default):
    """Non-negative number of seconds."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise ConfigError("%s=%r: expected a number of seconds >= 0" % (name, raw))
    return value


def run(args, timeout=120, check=True, input=None):
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(args[:3]), p.stderr.strip()))
    return p


def docker(*args, timeout=120, check=True, input=None):
    return run(["docker"] + list(args), timeout=timeout, check=check, input=input)


# ------------------------------------------------------- EC2's decisions ----

def paged(ec2, operation, key, **kw):
    """Every item of a paginated Describe call."""
    out = []
    for page in ec2.get_paginator(operation).paginate(**kw):
        out.extend(page.get(key, []))
    return out


class Network:
    """What EC2 knows of routes, gateways and security groups, read once per
    pass, and the decisions EC2 would take from it."""

    def __init__(self, instances, subnets, route_tables=(), gateways=(),
                 nat_gateways=(), groups=()):
        self.instances = instances            # instance id -> instance
        self.subnets = subnets                # subnet id -> (cidr, vpc id)
        self.route_tables = list(route_tables)
        self.gateways = {g["InternetGatewayId"]: g for g in gateways}
        self.nats = {n["NatGatewayId"]: n for n in nat_gateways}
        self.groups = {g["GroupId"]: g for g in groups}
        self.members = {}                     # group id -> private IPs
        for inst in instances.values():
            ip = inst.get("PrivateIpAddress")
            if inst["State"]["Name"] in ACTIVE and ip:
                for gid in instance_groups(inst):
                    self.members.setdefault(gid, set()).add(ip)

    # --- routes

    def route_table(self, subnet_id, vpc_id):
        """The subnet's route table: its explicit association, else the
        VPC's main table (None when EC2 gave neither)."""
        main = None
        for rt in self.route_tables:
            for assoc in rt.get("Associations", []):
                state = (assoc.get("AssociationState") or {}).get("State", "associated")
                if state != "associated":
                    continue
                if assoc.get("SubnetId") == subnet_id:
                    return rt
                if assoc.get("Main") and rt.get("VpcId") == vpc_id:
                    main = rt
        return main

    def default_route(self, subnet_id):
        """(route table id, the 0.0.0.0/0 route or None), or (None, None)."""
        cidr_vpc = self.subnets.get(subnet_id)
        if cidr_vpc is None:
            return None, None
        rt = self.route_table(subnet_id, cidr_vpc[1])
        if rt is None:
            return None, None
        for route in rt.get("Routes", []):
            if route.get("DestinationCidrBlock") == ANYWHERE and route.get("State", "active") == "active":
                return rt["RouteTableId"], route
        return rt["RouteTableId"], None

    def attached_gateway(self, gateway_id, vpc_id):
        g = self.gateways.get(gateway_id)
        if g is None:
            return False
        return any(a.get("VpcId") == vpc_id and a.get("State") in ("available", "attached")
                   for a in g.get("Attachments", []))

    def subnet_default_route(self, subnet_id):
        """(route table id, its 0.0.0.0/0 route, VPC id), or (None, why not, None)."""
        cidr_vpc = self.subnets.get(subnet_id)
        if cidr_vpc is None:
            return None, "subnet %s unknown to EC2" % subnet_id, None
        rt_id, route = self.default_route(subnet_id)
        if rt_id is None:
            return None, "subnet %s has no route table" % subnet_id, None
        if route is None:
            return None, "%s has no route to 0.0.0.0/0" % rt_id, None
        return rt_id, route, cidr_vpc[1]

    def internet_route(self, subnet_id):
        """(True, igw id) when the subnet's table sends 0.0.0.0/0 to an
        internet gateway attached to its VPC, else (False, why not)."""
        rt_id, route, vpc_id = self.subnet_default_route(subnet_id)
        if rt_id is None:
            return False, route
        gw = route.get("GatewayId") or ""
        if not gw.startswith("igw-"):
            return False, "%s sends 0.0.0.0/0 to %s, not an internet gateway" % (rt_id, route_target(route))
        if not self.attached_gateway(gw, vpc_id):
            return False, "%s is not attached to %s" % (gw, vpc_id)
        return True, gw

    def nat_ok(self, nat_id, vpc_id):
        """(True, nat id) when the NAT gateway can take a private subnet's
        traffic out, else (False, why not)."""
        nat = self.nats.get(nat_id)
        if nat is None:
            return False, "NAT gateway %s unknown to EC2" % nat_id
        if nat.get("State") != "available":
            return False, "NAT gateway %s is %s" % (nat_id, nat.get("State"))
        if nat.get("VpcId") not in (None, vpc_id):
            return False, "NAT gateway %s is in %s" % (nat_id, nat.get("VpcId"))
        if nat.get("ConnectivityType", "public") != "public":
            return False, "NAT gateway %s is private" % nat_id
        if not any(a.get("AllocationId") and a.get("PublicIp") for a in nat.get("NatGatewayAddresses", [])):
            return False, "NAT gateway %s has no Elastic IP" % nat_id
        public, why = self.internet_route(nat.get("SubnetId", ""))
        if not public:
            return False, "NAT gateway %s sits in a subnet without internet route (%s)" % (nat_id, why)
        return True, nat_id

    def egress(self, inst):
        """(True, how) when the instance reaches beyond its VPC, else
        (False, why not)."""
        subnet_id = inst.get("SubnetId", "")
        rt_id, route, vpc_id = self.subnet_default_route(subnet_id)
        if rt_id is None:
            return False, route
        if route.get("NatGatewayId"):
            ok, why = self.nat_ok(route["NatGatewayId"], vpc_id)
            return ok, ("via %s (%s)" % (why, rt_id)) if ok else why
        public, why = self.internet_route(subnet_id)
        if not public:
            return False, why
        if not public_ip(inst):
            return False, "no public IP (subnet routes to %s)" % why
        return True, "public IP via %s (%s)" % (why, rt_id)

    # --- security groups

    def ingress_rules(self, inst):
        """iptables rule bodies (after ``-A VSW-SG``) that let in what the
        instance's security groups allow; and the group ids."""
        rules, gids = [], sorted(instance_groups(inst))
        for gid in gids:
            group = self.groups.get(gid)
            if group is None:
                log("instance %s: security group %s unknown to EC2; it lets nothing in"
                    % (inst["InstanceId"], gid), key="nosg" + inst["InstanceId"] + gid)
                continue
            for perm in group.get("IpPermissions", []):
                match = protocol_match(perm)
                if match is None:
                    log("security group %s: protocol %r is not enforced here; rule skipped"
                        % (gid, perm.get("IpProtocol")), key="proto" + gid + str(perm.get("IpProtocol")))
                    continue
                sources = []
                for r in perm.get("IpRanges", []):
                    cidr = normal_cidr(r.get("CidrIp"))
                    if cidr is None:
                        log("security group %s: source %r is not an IPv4 CIDR; skipped"
                            % (gid, r.get("CidrIp")), key="cidr" + gid + str(r.get("CidrIp")))
                        continue
                    sources.append(cidr)
                for pair in perm.get("UserIdGroupPairs", []):
                    sources.extend(ip + "/32" for ip in sorted(self.members.get(pair.get("GroupId"), ())))
                for src in sources:
                    rule = "-s %s %s-j RETURN" % (src, match)
                    if rule not in rules:
                        rules.append(rule)
        return rules, gids


def public_ip(inst):
    if inst.get("PublicIpAddress"):
        return inst["PublicIpAddress"]
    for eni in inst.get("NetworkInterfaces", []):
        ip = (eni.get("Association") or {}).get("PublicIp")
        if ip:
            return ip
    return None


def instance_groups(inst):
    """Security group ids of the instance and of its network interfaces."""
    gids = {g["GroupId"] for g in inst.get("SecurityGroups", []) if g.get("GroupId")}
    for eni in inst.get("NetworkInterfaces", []):
        gids.update(g["GroupId"] for g in eni.get("Groups", []) if g.get("GroupId"))
    return gids


def route_target(route):
    for k in ("GatewayId", "NatGatewayId", "InstanceId", "NetworkInterfaceId",
              "VpcPeeringConnectionId", "TransitGatewayId"):
        if route.get(k):
            return route[k]
    return "nowhere"


def normal_cidr(text):
    try:
        return str(ipaddress.IPv4Network(text or "", strict=False))
    except ValueError:
        return None


PROTOCOLS = {"tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp", "icmp": "icmp", "1": "icmp"}


def protocol_match(perm):
    """The iptables match of one IpPermission's protocol and ports (with a
    trailing space, '' for all traffic), or None when not enforceable."""
    proto = str(perm.get("IpProtocol", "-1")).lower()
    if proto in ("-1", "all"):
        return ""
    name = PROTOCOLS.get(proto)
    lo, hi = perm.get("FromPort"), perm.get("ToPort")
    if name in ("tcp", "udp"):
        if lo is None or lo < 0 or (lo <= 0 and (hi is None or hi < 0 or hi >= 65535)):
            return "-p %s " % name
        hi = lo if hi is None or hi < 0 else hi
        return "-p %s --dport %d%s " % (name, lo, "" if hi == lo else ":%d" % hi)
    if name == "icmp":
        if lo is None or lo < 0:
            return "-p icmp "
        if hi is None or hi < 0:
            return "-p icmp --icmp-type %d " % lo
        return "-p icmp --icmp-type %d/%d " % (lo, hi)
    if proto.isdigit() and 0 < int(proto) < 256:
        return "-p %s " % proto
    return None


def sg_ruleset(rules):
    """iptables-restore input for a host's VSW-SG chain; None rules = no
    filtering (enforcement off)."""
    lines = ["*mangle", ":%s - [0:0]" % SG_CHAIN]
    if rules is None:
        lines.append("-A %s -j RETURN" % SG_CHAIN)
    else:
        lines.append("-A %s -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN" % SG_CHAIN)
        lines.extend("-A %s %s" % (SG_CHAIN, r) for r in rules)
        lines.append("-A %s -j DROP" % SG_CHAIN)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


# load the chain, then hook it once (the host's boot may have hooked it already)
SG_LOAD = (
    "iptables-restore --noflush && "
    "{ iptables -t mangle -C PREROUTING -i eth0 -j %s 2>/dev/null || "
    "iptables -t mangle -I PREROUTING 1 -i eth0 -j %s; }" % (SG_CHAIN, SG_CHAIN)
)


# ------------------------------------------------------------- firewall ----

def iptables(*args, check=True):
    return run(["iptables", "-w", "5"] + list(args), timeout=30, check=check)


def fw_hook_rule(chain):
    return ["-m", "comment", "--comment", FW_COMMENT, "-j", chain]


def fw_ruleset(vpc_cidrs, net_cidrs, egress_ips, enforce):
    """iptables-restore input for this machine's chains."""
    f = ["*filter", ":VSW-INPUT - [0:0]", ":VSW-FORWARD - [0:0]"]
    for cidr in sorted(vpc_cidrs):
        f.append("-A VSW-FORWARD -s %s -d %s -j ACCEPT" % (cidr, cidr))
    if enforce:
        f.append("-A VSW-INPUT -i lo -j RETURN")
        for chain in ("VSW-INPUT", "VSW-FORWARD"):
            f.append("-A %s -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN" % chain)
            f.extend("-A %s -s %s/32 -j RETURN" % (chain, ip) for ip in sorted(egress_ips))
            f.extend("-A %s -s %s -j DROP" % (chain, cidr) for cidr in sorted(net_cidrs))
    f.append("COMMIT")
    n = ["*nat", ":VSW-POSTROUTING - [0:0]"]
    n.extend("-A VSW-POSTROUTING -s %s -d %s -j ACCEPT" % (c, c) for c in sorted(vpc_cidrs))
    n.append("COMMIT")
    return "\n".join(f + n) + "\n"


class Firewall:
    """This machine's chains, loaded atomically and only when they change."""

    def __init__(self):
        self.loaded = None

    @staticmethod
    def hook_first(table, hook, chain):
        """Whether our jump is the first rule of `hook` (Docker puts the
        masquerade rule of every new network at the top of POSTROUTING)."""
        p = iptables("-t", table, "-S", hook, check=False)
        rules = [line for line in p.stdout.splitlines() if line.startswith("-A ")]
        return bool(rules) and rules[0].split() == ["-A", hook] + fw_hook_rule(chain)

    def ensure_hooks(self):
        """Puts each jump at the top of its chain; True when one moved."""
        moved = False
        for table, hook, chain in FW_HOOKS:
            if self.hook_first(table, hook, chain):
                continue
            rule = fw_hook_rule(chain)
            for _ in range(10):
                if iptables("-t", table, "-D", hook, *rule, check=False).returncode != 0:
                    break
            iptables("-t", table, "-I", hook, "1", *rule)
            moved = True
        return moved

    def apply(self, ruleset, check_hooks=True):
        """Loads the chains when they changed; keeps the jumps first."""
        changed = ruleset != self.loaded
        if changed:
            run(["iptables-restore", "-w", "5", "--noflush"], input=ruleset, timeout=30)
        moved = self.ensure_hooks() if check_hooks or changed else False
        if changed:
            fw_remove_legacy()
            self.loaded = ruleset
        return changed or moved


def fw_rules_with_comment(table, chain):
    p = iptables("-t", table, "-S", chain, check=False)
    return [line.split() for line in p.stdout.splitlines()
            if line.startswith("-A ") and FW_COMMENT in line]


def fw_delete(table, parts):
    """Delete one rule given as ``iptables -S`` prints it."""
    parts = [x.strip('"') for x in parts]
    iptables("-t", table, "-D", *parts[1:], check=False)


def fw_remove_legacy():
    """Rules of earlier versions (VPC CIDR rules put straight into
    DOCKER-USER and POSTROUTING)."""
    for table, hook, _ in FW_HOOKS:
        for parts in fw_rules_with_comment(table, hook):
            if not any(p.startswith("VSW-") for p in parts):
                fw_delete(table, parts)


def fw_cleanup():
    """Remove our hooks, chains and any rule with our comment."""
    for table, hook, _ in FW_HOOKS:
        for parts in fw_rules_with_comment(table, hook):
            fw_delete(table, parts)
    for table, _, chain in FW_HOOKS:
        if iptables("-t", table, "-F", chain, check=False).returncode == 0:
            iptables("-t", table, "-X", chain, check=False)


# ------------------------------------------------------------------ EBS ----

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

    def ensure_file(self, vol):
        """The volume's sparse backing file, made or grown to its size."""
        path, size = self.path(vol["VolumeId"]), int(vol["Size"]) * GIB
        have = os.path.getsize(path) if os.path.exists(path) else None
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


# ---------------------------------------------------------------- fleet ----

class Fleet:
    def __init__(self, ec2, host_image, label, enforce_egress=True, enforce_groups=True,
                 sshd_delay=2.0, state_dir=None):
        self.ec2 = ec2
        self.image = host_image
        self.label = label
        self.enforce_egress = enforce_egress
        self.enforce_groups = enforce_groups
        self.sshd_delay = sshd_delay
        self.key_cache = {}      # key name -> public key text
        self.subnet_cache = {}   # subnet id -> (cidr, vpc id)
        self.vpc_cache = {}      # vpc id -> cidr
        self.firewall = Firewall()
        self.egress_seen = {}    # instance id -> (allowed, how)
        self.sg_loaded = {}      # instance id -> (container start, ruleset)
        self.ebs = Ebs(state_dir) if state_dir else None

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

    def network_view(self, insts):
        """Routes, gateways and groups as EC2 has them now (only what the
        enabled checks need, and nothing while no instance is active)."""
        active = [i for i in insts.values() if i["State"]["Name"] in ACTIVE]
        subnets = {}
        for inst in active:
            if inst.get("SubnetId"):
                subnets[inst["SubnetId"]] = self.subnet(inst["SubnetId"])
        if not active:
            return Network(insts, subnets)
        kw = {}
        if self.enforce_egress:
            kw["route_tables"] = paged(self.ec2, "describe_route_tables", "RouteTables")
            kw["gateways"] = paged(self.ec2, "describe_internet_gateways", "InternetGateways")
            kw["nat_gateways"] = paged(self.ec2, "describe_nat_gateways", "NatGateways")
            # NAT gateways' subnets need their CIDR and VPC too
            for nat in kw["nat_gateways"]:
                sid = nat.get("SubnetId")
                if sid and sid not in subnets and nat.get("State") == "available":
                    try:
                        subnets[sid] = self.subnet(sid)
                    except Exception as exc:  # a NAT in a subnet EC2 no longer has
                        log("NAT gateway %s: subnet %s: %s" % (nat["NatGatewayId"], sid, exc),
                            key="natsub" + sid)
        if self.enforce_groups:
            kw["groups"] = paged(self.ec2, "describe_security_groups", "SecurityGroups")
        return Network(insts, subnets, **kw)

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
        """instance id -> {name, state, ip, started} for our host containers."""
        lab = self.label
        ids = docker("ps", "-aq", "--filter", "label=%s.instance" % lab).stdout.split()
        out = {}
        if not ids:
            return out
        p = docker("inspect", *ids, check=False)  # one may vanish meanwhile
        for c in json.loads(p.stdout or "[]"):
            labels = c.get("Config", {}).get("Labels") or {}
            iid = labels.get(lab + ".instance")
            if iid:
                out[iid] = {"name": c["Name"].lstrip("/"), "state": c["State"]["Status"],
                            "ip": labels.get(lab + ".ip", ""), "started": c["State"].get("StartedAt", "")}
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
            return name
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
        return name

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
               "-e", "VS_BOOT_DELAY=%g" % self.sshd_delay,
               # closed to new inbound connections until sync_groups loads the rules
               "-e", "VS_SG_FILTER=%d" % int(self.enforce_groups),
               *key_env,
               self.image)
        log("host %s up at %s (key pair %s, host key %s)"
            % (iid, ip, inst.get("KeyName") or "-", "from user data" if host_key else "generated"))

    def remove_host(self, iid, c):
        docker("rm", "-f", "-v", c["name"], check=False)
        docker("volume", "rm", "-f", c["name"] + "-docker", check=False)
        self.sg_loaded.pop(iid, None)
        self.egress_seen.pop(iid, None)
        log("host %s removed" % iid)

    def container_started(self, name):
        p = docker("inspect", "--format", "{{.State.StartedAt}}", name, check=False)
        return p.stdout.strip()

    def sync_groups(self, inst, name, started, view):
        """Loads the host's security group filter when it differs from what
        its current boot has."""
        iid = inst["InstanceId"]
        if self.enforce_groups:
            rules, gids = view.ingress_rules(inst)
        else:
            rules, gids = None, []
        ruleset = sg_ruleset(rules)
        if self.sg_loaded.get(iid) == (started, ruleset):
            return
        docker("exec", "-i", name, "sh", "-c", SG_LOAD, input=ruleset, timeout=30)
        self.sg_loaded[iid] = (started, ruleset)
        if rules is None:
            log("host %s: security groups not enforced" % iid)
        else:
            log("host %s: security groups %s, %d ingress rule(s) loaded"
                % (iid, ", ".join(gids) or "none", len(rules)))

    # --- one pass

    def sync(self):
        insts = self.instances()
        view = self.network_view(insts)
        conts = self.containers()
        nets = self.networks()

        # gone or terminated instances lose their host
        for iid, c in list(conts.items()):
            inst = insts.get(iid)
            st = inst["State"]["Name"] if inst else "gone"
            if st not in ACTIVE and st not in STOPPED:
                self.remove_host(iid, c)
                del conts[iid]

        # networks first, so the firewall knows them before a host starts
        wanted_nets = set()
        hosted = []
        for iid, inst in sorted(insts.items()):
            st = inst["State"]["Name"]
            if st not in ACTIVE and st not in STOPPED:
                continue
            subnet_id = inst.get("SubnetId")
            ip = inst.get("PrivateIpAddress")
            if not subnet_id or not ip:
                log("instance %s has no subnet or private IP; skipped" % iid, key="noip" + iid)
                continue
            if iid in conts:
                wanted_nets.add("vsw-" + subnet_id)
            if st in ACTIVE:
                try:
                    wanted_nets.add(self.ensure_network(subnet_id, nets))
                except Exception as exc:  # keep mirroring the others
                    log("instance %s: network: %s" % (iid, exc), key="net" + iid + str(exc)[:80])
                    continue
            hosted.append(inst)

        self.apply_firewall(insts, view, nets, check_hooks=True)

        for inst in hosted:
            iid = inst["InstanceId"]
            st = inst["State"]["Name"]
            c = conts.get(iid)
            try:
                if st in ACTIVE:
                    net = "vsw-" + inst["SubnetId"]
                    if c is not None and c["ip"] != inst["PrivateIpAddress"]:
                        self.remove_host(iid, c)
                        c = None
                    if c is None:
                        # the host boots closed (vs-sg-closed); its engine
                        # starts first, so a failed load is retried next pass
                        self.create_host(inst, net)
                        self.start_engine("vsw-" + iid)
                        started = self.container_started("vsw-" + iid)
                        self.sync_groups(inst, "vsw-" + iid, started, view)
                    elif c["state"] != "running":
                        docker("start", c["name"])
                        self.start_engine(c["name"])
                        log("host %s started" % iid)
                        started = self.container_started(c["name"])
                        self.sync_groups(inst, c["name"], started, view)
                    else:
                        self.sync_groups(inst, c["name"], c["started"], view)
                elif c is not None and c["state"] == "running":
                    docker("stop", "-t", "5", c["name"], timeout=60)
                    log("host %s stopped" % iid)
            except Exception as exc:  # keep mirroring the others
                log("instance %s: %s" % (iid, exc), key="err" + iid + str(exc)[:80])

        for name in set(nets) - wanted_nets:
            if docker("network", "rm", name, check=False).returncode == 0:
                log("network %s removed" % name)
                del nets[name]
        self.apply_firewall(insts, view, nets, check_hooks=False)
        if self.ebs is not None:
            self.sync_volumes(insts, conts)

    def sync_volumes(self, insts, conts):
        """EBS: backing files, and devices in the hosts (see Ebs)."""
        try:
            vols = paged(self.ec2, "describe_volumes", "Volumes")
            attached = any(a.get("State") in EBS_ATTACHED
                           for v in vols for a in v.get("Attachments", []))
            if attached or self.ebs.nodes or not self.ebs.adopted:
                conts = self.containers()  # as the host loop left them
            self.ebs.sync(vols, insts, conts)
        except Exception as exc:  # the hosts are mirrored all the same
            log("EBS: %s" % exc, key="ebs" + str(exc)[:80], every=30)

    def apply_firewall(self, insts, view, nets, check_hooks):
        """Loads this machine's chains for the networks there are and the
        hosts EC2 lets out."""
        egress_ips = set()
        for iid, inst in insts.items():
            if inst["State"]["Name"] not in ACTIVE or not inst.get("PrivateIpAddress"):
                continue
            if self.enforce_egress:
                allowed, how = view.egress(inst)
                if self.egress_seen.get(iid) != (allowed, how):
                    self.egress_seen[iid] = (allowed, how)
                    log("host %s egress: %s, %s" % (iid, "yes" if allowed else "no", how))
                if allowed:
                    egress_ips.add(inst["PrivateIpAddress"])
        vpcs = {n["vpc_cidr"] for n in nets.values() if n.get("vpc_cidr")}
        cidrs = {n["cidr"] for n in nets.values() if n.get("cidr")}
        ruleset = fw_ruleset(vpcs, cidrs, egress_ips, self.enforce_egress)
        if self.firewall.apply(ruleset, check_hooks):
            log("firewall: %d VPC(s), %d network(s), %s"
                % (len(vpcs), len(cidrs), "%d host(s) with egress" % len(egress_ips)
                   if self.enforce_egress else "egress not enforced"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", default="http://127.0.0.1:5055")
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("--host-image")
    ap.add_argument("--label", default="votingstack.world")
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--ready-file")
    ap.add_argument("--state-dir",
                    help="the world's state directory: EBS volumes' backing files go to its ebs/")
    ap.add_argument("--cleanup-firewall", action="store_true",
                    help="remove the firewall rules and chains this program adds, then exit")
    args = ap.parse_args()

    if args.cleanup_firewall:
        fw_cleanup()
        return 0
    if not args.host_image:
        ap.error("--host-image is required")
    try:
        enforce_egress = env_flag("VS_WORLD_ENFORCE_EGRESS", True)
        enforce_groups = env_flag("VS_WORLD_ENFORCE_SECURITY_GROUPS", True)
        sshd_delay = env_seconds("VS_WORLD_SSHD_DELAY_S", 2.0)
    except ConfigError as exc:
        ap.error(str(exc))

    import boto3
    from botocore.config import Config

    ec2 = boto3.client(
        "ec2", endpoint_url=args.endpoint, region_name=args.region,
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}, connect_timeout=3, read_timeout=20),
    )
    fleet = Fleet(ec2, args.host_image, args.label, enforce_egress=enforce_egress,
                  enforce_groups=enforce_groups, sshd_delay=sshd_delay,
                  state_dir=args.state_dir)

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))

    log("fleet simulator: endpoint %s, host image %s, egress %s, security groups %s, sshd delay %gs, "
        "EBS %s" % (args.endpoint, args.host_image, "enforced" if enforce_egress else "open",
                    "enforced" if enforce_groups else "open", sshd_delay,
                    fleet.ebs.dir if fleet.ebs else "off (no --state-dir)"))
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
