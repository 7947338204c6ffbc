"""EC2's network decisions: which hosts reach beyond their VPC (route
tables, internet gateways, NAT gateways) and what each host's security
groups let in, decided from what EC2 holds now."""

import ipaddress

from .ec2 import ACTIVE, paged
from .firewall import protocol_match
from .log import log

ANYWHERE = "0.0.0.0/0"


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


class NetworkReads:
    """Reads the Network of a pass (a part of ``main.Fleet``: uses
    ``self.ec2``, ``self.subnet`` and the enforcement switches)."""

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
