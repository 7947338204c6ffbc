"""The hosts: one Docker network per EC2 subnet and one container per
instance, booted with its key pair, host key and security group filter."""

import json

from .commands import docker
from .firewall import SG_LOAD, sg_ruleset
from .log import log

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


class Hosts:
    """The Docker side of the fleet (a part of ``main.Fleet``): uses
    ``self.label``, ``self.image``, ``self.sshd_delay``,
    ``self.enforce_groups`` and the EC2 reads, keeps ``self.sg_loaded`` and
    forgets a removed host in ``self.egress_seen`` too."""

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
