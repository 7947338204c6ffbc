"""Eventual consistency and the pending window: a resource just created is
hidden from Describe* answers and NotFound to calls naming it for a while,
and a new or started instance shows as pending for a while."""

from .ec2xml import apply_edits, scan


class Kind:
    """A kind of resource that can be hidden for a while after it is created.

    creates: action -> (element path of the container, field with the id);
    describes: action -> (element path of one item, id fields of the item);
    params: request field names (last part, numbers dropped) naming this kind.
    """

    def __init__(self, name, code, noun, params, creates, describes, exempt=()):
        self.name = name
        self.code = code
        self.noun = noun
        self.params = set(params)
        self.creates = creates
        self.describes = describes
        self.exempt = set(exempt)


KINDS = [
    Kind("instance", "InvalidInstanceID.NotFound", "instance ID",
         {"InstanceId", "ResourceId"},
         {"RunInstances": ("instancesSet/item", ("instanceId",))},
         {"DescribeInstances": ("reservationSet/item/instancesSet/item", ("instanceId",)),
          "DescribeInstanceStatus": ("instanceStatusSet/item", ("instanceId",))}),
    Kind("group", "InvalidGroup.NotFound", "security group",
         {"GroupId", "SecurityGroupId", "ResourceId"},
         {"CreateSecurityGroup": ("", ("groupId",))},
         {"DescribeSecurityGroups": ("securityGroupInfo/item", ("groupId",))}),
    # a retried create of the same key answers Duplicate, a delete always succeeds
    Kind("key", "InvalidKeyPair.NotFound", "key pair",
         {"KeyName", "KeyPairId", "ResourceId"},
         {"CreateKeyPair": ("", ("keyName", "keyPairId")),
          "ImportKeyPair": ("", ("keyName", "keyPairId"))},
         {"DescribeKeyPairs": ("keySet/item", ("keyName", "keyPairId"))},
         exempt={"CreateKeyPair", "ImportKeyPair", "DeleteKeyPair"}),
    Kind("vpc", "InvalidVpcID.NotFound", "VPC ID",
         {"VpcId", "ResourceId"},
         {"CreateVpc": ("vpc", ("vpcId",))},
         {"DescribeVpcs": ("vpcSet/item", ("vpcId",))}),
    Kind("subnet", "InvalidSubnetID.NotFound", "subnet ID",
         {"SubnetId", "ResourceId"},
         {"CreateSubnet": ("subnet", ("subnetId",))},
         {"DescribeSubnets": ("subnetSet/item", ("subnetId",))}),
    Kind("igw", "InvalidInternetGatewayID.NotFound", "internet gateway ID",
         {"InternetGatewayId", "GatewayId", "ResourceId"},
         {"CreateInternetGateway": ("internetGateway", ("internetGatewayId",))},
         {"DescribeInternetGateways": ("internetGatewaySet/item", ("internetGatewayId",))}),
    Kind("nat", "NatGatewayNotFound", "NAT gateway",
         {"NatGatewayId", "ResourceId"},
         {"CreateNatGateway": ("natGateway", ("natGatewayId",))},
         {"DescribeNatGateways": ("natGatewaySet/item", ("natGatewayId",))}),
    Kind("volume", "InvalidVolume.NotFound", "volume",
         {"VolumeId", "ResourceId"},
         {"CreateVolume": ("", ("volumeId",))},
         {"DescribeVolumes": ("volumeSet/item", ("volumeId",))}),
    Kind("snapshot", "InvalidSnapshot.NotFound", "snapshot",
         {"SnapshotId", "ResourceId"},
         {"CreateSnapshot": ("", ("snapshotId",))},
         {"DescribeSnapshots": ("snapshotSet/item", ("snapshotId",))}),
    Kind("rtb", "InvalidRouteTableID.NotFound", "route table ID",
         {"RouteTableId", "ResourceId"},
         {"CreateRouteTable": ("routeTable", ("routeTableId",))},
         {"DescribeRouteTables": ("routeTableSet/item", ("routeTableId",))}),
]

# instance state shown during the pending window: path of the instance item
# and of its state element, per action
PENDING_RULES = {
    "DescribeInstances": "reservationSet/item/instancesSet/item",
    "DescribeInstanceStatus": "instanceStatusSet/item",
}
PENDING_STARTS = {
    "RunInstances": "instancesSet/item",
    "StartInstances": "instancesSet/item",
}
PENDING_STATE = b"<instanceState><code>0</code><name>pending</name></instanceState>"

def base_name(field):
    """"IpPermissions.1.Groups.2.GroupId" -> "GroupId"."""
    parts = [p for p in field.split(".") if not p.isdigit()]
    return parts[-1] if parts else field


def hidden_named(realism, scope, action, params):
    """(code, message) when the request names a resource still hidden."""
    for field, value in params:
        name = base_name(field)
        for kind in KINDS:
            if name in kind.params and action not in kind.exempt \
                    and realism.is_hidden(scope, kind.name, value):
                return kind.code, "The %s '%s' does not exist (yet: %s names a %s created " \
                    "moments ago; EC2 is eventually consistent, retry)" % (
                        kind.noun, value, field, kind.name)
    return None


def record_creates(realism, scope, action, body):
    """Hide resources this answer created, and start pending windows."""
    paths = {}
    for kind in KINDS:
        if action in kind.creates:
            path, fields = kind.creates[action]
            paths.setdefault(path, []).append((kind, fields))
    start_path = PENDING_STARTS.get(action)
    if not paths and start_path is None:
        return
    wanted = set(paths) | ({start_path} if start_path else set())
    for elem in scan(body, wanted):
        for kind, fields in paths.get(elem.path, ()):
            for field in fields:
                value = elem.text.get(field)
                if value:
                    realism.hide(scope, kind.name, value)
        if elem.path == start_path and elem.text.get("instanceId"):
            realism.start_pending(scope, elem.text["instanceId"])


def rewrite_describe(realism, scope, action, body, hide=True):
    """Drop items still hidden from a Describe* answer (unless hide is
    false: the caller is outside the fault scope); show pending states."""
    rules = [(kind, kind.describes[action]) for kind in KINDS if action in kind.describes]
    pending_path = PENDING_RULES.get(action)
    if not rules and pending_path is None:
        return body
    if not realism.anything_hidden_or_pending():
        return body
    item_paths = {path for _, (path, _) in rules}
    wanted = set(item_paths)
    if pending_path:
        wanted |= {pending_path, pending_path + "/instanceState"}
    if action == "DescribeInstances":
        wanted.add("reservationSet/item")
    elems = scan(body, wanted)
    edits = []
    removed = []
    kept_items = []
    for elem in elems:
        if elem.path not in item_paths:
            continue
        gone = False
        for kind, (path, fields) in rules:
            if elem.path == path and any(
                    hide and elem.text.get(f) and realism.is_hidden(scope, kind.name, elem.text[f])
                    for f in fields):
                gone = True
        if gone:
            removed.append(elem)
            edits.append((elem.start, elem.end, b""))
        else:
            kept_items.append(elem)
    if pending_path:
        states = [e for e in elems if e.path == pending_path + "/instanceState"]
        for item in elems:
            if item.path != pending_path or item in removed:
                continue
            iid = item.text.get("instanceId")
            if not iid or not realism.is_pending(scope, iid):
                continue
            for st in states:
                if item.contains(st) and st.text.get("name") == "running":
                    edits.append((st.start, st.end, PENDING_STATE))
                    realism.count("pending_shown", action)
    if action == "DescribeInstances" and removed:
        # a reservation whose instances are all hidden is not shown at all
        for res in (e for e in elems if e.path == "reservationSet/item"):
            inside = [i for i in removed + kept_items if res.contains(i)]
            if inside and all(i in removed for i in inside):
                edits.append((res.start, res.end, b""))
    for _ in removed:
        realism.count("hidden_items", action)
    return apply_edits(body, edits) if edits else body
