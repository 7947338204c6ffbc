"""AWS's default quotas for what a stack's own network needs, per account
and region: VPCs, internet gateways and Elastic IPs (5 per Region each)
and NAT gateways (5 per Availability Zone); and the vCPUs of running
On-Demand instances (5 for the standard families in a new account).
moto creates anything; EC2 refuses the one over the quota with its error
code.

What exists is counted in moto at the time of the call, in the caller's
account: the default VPC counts as a VPC, and its internet gateway (which
moto does not create) as an internet gateway, as on EC2. A NAT gateway
counts while it is pending or available."""

from .ebs import child_text, moto_query

# the create calls checked, their knob, their error code and EC2's words
QUOTA_CHECKED = {
    "CreateVpc": ("vpcs_per_region", "VpcLimitExceeded",
                  "The maximum number of VPCs has been reached."),
    "CreateInternetGateway": ("internet_gateways_per_region", "InternetGatewayLimitExceeded",
                              "The maximum number of internet gateways has been reached."),
    "AllocateAddress": ("elastic_ips_per_region", "AddressLimitExceeded",
                        "The maximum number of addresses has been reached."),
    "CreateNatGateway": ("nat_gateways_per_zone", "NatGatewayLimitExceeded",
                         "Performing this operation would exceed the limit of %d NAT gateways "
                         "in the Availability Zone %s."),
    "RunInstances": ("vcpus_per_region", "VcpuLimitExceeded",
                     "You have requested more vCPU capacity than your current vCPU limit of %d "
                     "allows for the instance bucket that the specified instance type belongs to. "
                     "Please visit http://aws.amazon.com/contact-us/ec2-request to request an "
                     "adjustment to this limit."),
}

# vCPUs of the instance types the world's stacks use (EC2's
# DescribeInstanceTypes); any other counts as 2
VCPUS = {
    "t3.nano": 2, "t3.micro": 2, "t3.small": 2, "t3.medium": 2, "t3.large": 2, "t3.xlarge": 4,
    "t3.2xlarge": 8, "t2.nano": 1, "t2.micro": 1, "t2.small": 1, "t2.medium": 2, "t2.large": 2,
    "m5.large": 2, "m5.xlarge": 4, "c5.large": 2, "c5.xlarge": 4,
}


def limit(realism, scope, knob):
    """The quota of knob in the caller's account: the account's own value
    (account_quotas) or the region-wide default."""
    cfg = realism.config
    return cfg["account_quotas"].get(scope[0], {}).get(knob, cfg[knob])


def _items(host, port, scope, action, set_path, filters=()):
    params = [("Action", action)]
    for i, (name, values) in enumerate(filters, 1):
        params.append(("Filter.%d.Name" % i, name))
        params += [("Filter.%d.Value.%d" % (i, j), v) for j, v in enumerate(values, 1)]
    root = moto_query(host, port, scope, params)
    if root is None:
        raise OSError("moto refused the layer's own %s" % action)
    return root.findall(set_path + "/item")


def count_vpcs(host, port, scope, _params):
    return len(_items(host, port, scope, "DescribeVpcs", "vpcSet")), None


def count_internet_gateways(host, port, scope, _params):
    gateways = _items(host, port, scope, "DescribeInternetGateways", "internetGatewaySet")
    attached = {child_text(a, "vpcId") for g in gateways for a in g.findall("attachmentSet/item")}
    defaults = [child_text(v, "vpcId") for v in _items(host, port, scope, "DescribeVpcs", "vpcSet")
                if child_text(v, "isDefault") == "true"]
    return len(gateways) + sum(1 for v in defaults if v not in attached), None


def count_addresses(host, port, scope, _params):
    return len(_items(host, port, scope, "DescribeAddresses", "addressesSet")), None


def count_nat_gateways(host, port, scope, params):
    subnet = dict(params).get("SubnetId", "")
    found = _items(host, port, scope, "DescribeSubnets", "subnetSet", [("subnet-id", [subnet])])
    if not found:
        return 0, None  # moto refuses the unknown subnet itself
    zone = child_text(found[0], "availabilityZone")
    in_zone = [child_text(s, "subnetId") for s in _items(
        host, port, scope, "DescribeSubnets", "subnetSet", [("availability-zone", [zone])])]
    live = _items(host, port, scope, "DescribeNatGateways", "natGatewaySet",
                  [("subnet-id", in_zone), ("state", ["pending", "available"])])
    return len(live), zone


def count_vcpus(host, port, scope, params):
    """vCPUs of the account's pending and running instances, plus those the
    launch asks for (MinCount of its type): EC2 refuses a launch that would
    go over, whole."""
    live = _items(host, port, scope, "DescribeInstances", "reservationSet",
                  [("instance-state-name", ["pending", "running"])])
    have = sum(VCPUS.get(child_text(i, "instanceType"), 2)
               for r in live for i in r.findall("instancesSet/item"))
    given = dict(params)
    try:
        count = max(1, int(given.get("MinCount", "1")))
    except ValueError:
        count = 1
    return have + count * VCPUS.get(given.get("InstanceType", ""), 2) - 1, None


COUNTERS = {
    "CreateVpc": count_vpcs,
    "CreateInternetGateway": count_internet_gateways,
    "AllocateAddress": count_addresses,
    "CreateNatGateway": count_nat_gateways,
    "RunInstances": count_vcpus,
}


def quota_refusal(realism, host, port, scope, action, params):
    """(code, message) when this create would go over the caller's quota,
    else None. Call it holding realism.quota_lock, and forward under it, so
    two creates cannot both take the last one."""
    knob, code, message = QUOTA_CHECKED[action]
    with realism.lock:
        allowed = int(limit(realism, scope, knob))
    have, zone = COUNTERS[action](host, port, scope, params)
    if have < allowed:
        return None
    if action == "CreateNatGateway":
        message = message % (allowed, zone)
    elif action == "RunInstances":
        message = message % allowed
    return code, "%s (quota: %d; raise it with Service Quotas, or use fewer)" % (message, allowed)
