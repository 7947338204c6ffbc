"""AWS's default quotas for what a stack's own network needs, per account
and region: VPCs, internet gateways and Elastic IPs (5 per Region each)
and NAT gateways (5 per Availability Zone). moto creates anything; EC2
refuses the sixth with the quota's error code.

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


COUNTERS = {
    "CreateVpc": count_vpcs,
    "CreateInternetGateway": count_internet_gateways,
    "AllocateAddress": count_addresses,
    "CreateNatGateway": count_nat_gateways,
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
    return code, "%s (quota: %d; raise it with Service Quotas, or use fewer)" % (message, allowed)
