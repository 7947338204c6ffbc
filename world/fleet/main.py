"""The fleet simulator's command line and its pass: read EC2, make Docker,
the firewall and the EBS devices match it."""

import argparse
import json
import os
import signal
import time

from . import __doc__ as PACKAGE_DOC
from .commands import docker
from .ebs import EBS_ATTACHED, Ebs
from .ec2 import ACTIVE, STOPPED, Ec2Reads, paged
from .firewall import Firewall, fw_cleanup, fw_ruleset
from .hosts import Hosts
from .log import log, now
from .routing import NetworkReads


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


class Fleet(Ec2Reads, NetworkReads, Hosts):
    """Mirrors EC2 into this machine, one pass at a time (``sync``)."""

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
    ap = argparse.ArgumentParser(prog="fleet", description=PACKAGE_DOC.splitlines()[0])
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
