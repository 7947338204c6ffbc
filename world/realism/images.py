"""DescribeImages as EC2 answers it. moto gives every image the owner alias
`amazon` and neither `platformDetails` nor `usageOperation`; EC2 gives the
alias only to images Amazon's own accounts publish, and names every image's
billing product: `Linux/UNIX` (`RunInstances`), `Windows`
(`RunInstances:0002`), `Red Hat Enterprise Linux` (`RunInstances:0010`),
`SUSE Linux` (`RunInstances:000g`). And RunInstances refused, as EC2
refuses it, when the image's architecture is not one the instance type
supports (an arm64 image on t3, an x86_64 one on t4g)."""

from xml.sax.saxutils import escape

from .ebs import child_text, moto_query
from .ec2xml import apply_edits, scan

# accounts whose images EC2 shows with the alias `amazon`: Amazon Linux's and
# the Windows images'
AMAZON_OWNERS = {"137112412989", "801119661308"}

# billing product by name prefix, for images moto knows no platform of
PRODUCTS = [
    ("RHEL-", "Red Hat Enterprise Linux", "RunInstances:0010"),
    ("suse-sles", "SUSE Linux", "RunInstances:000g"),
]


def product(item):
    """(platformDetails, usageOperation) of one image."""
    if item.text.get("platform") == "windows":
        return "Windows", "RunInstances:0002"
    name = item.text.get("name", "")
    for prefix, details, operation in PRODUCTS:
        if name.startswith(prefix):
            return details, operation
    return "Linux/UNIX", "RunInstances"


def rewrite_images(action, data):
    """A DescribeImages answer with EC2's aliases and billing products."""
    if action != "DescribeImages":
        return data
    edits = []
    for item in scan(data, {"imagesSet/item"}):
        owner = item.text.get("imageOwnerId", "")
        if owner not in AMAZON_OWNERS and "imageOwnerAlias" in item.spans:
            start, stop = item.spans["imageOwnerAlias"]
            edits.append((start, stop, b""))
        if "platformDetails" not in item.text:
            details, operation = product(item)
            extra = "<platformDetails>%s</platformDetails><usageOperation>%s</usageOperation>" % (
                escape(details), escape(operation))
            close = data.rindex(b"</item>", item.start, item.end)
            edits.append((close, close, extra.encode()))
    return apply_edits(data, edits) if edits else data


def architecture_refusal(host, port, scope, action, params):
    """(code, message) when RunInstances names an image whose architecture
    the instance type does not support, else None (also when moto does not
    know the image or the type: it refuses those itself)."""
    if action != "RunInstances":
        return None
    given = dict(params)
    images = moto_query(host, port, scope, [("Action", "DescribeImages"),
                                            ("ImageId.1", given.get("ImageId", ""))])
    types = moto_query(host, port, scope, [("Action", "DescribeInstanceTypes"),
                                           ("InstanceType.1", given.get("InstanceType", ""))])
    if images is None or types is None:
        return None
    image = images.find("imagesSet/item")
    itype = types.find("instanceTypeSet/item")
    if image is None or itype is None:
        return None
    arch = child_text(image, "architecture")
    supported = [a.text for a in itype.findall("processorInfo/supportedArchitectures/item")]
    if not arch or not supported or arch in supported:
        return None
    return ("InvalidParameterValue",
            "The architecture '%s' of the specified instance type does not match the architecture "
            "'%s' of the specified AMI. Specify an instance type and an AMI that have matching "
            "architectures, and try again. You can use 'describe-instance-types' or "
            "'describe-images' to discover the architecture of the instance type or AMI."
            % (supported[0], arch))
