"""DescribeImages as EC2 answers it. moto gives every image the owner alias
`amazon` and neither `platformDetails` nor `usageOperation`; EC2 gives the
alias only to images Amazon's own accounts publish, and names every image's
billing product: `Linux/UNIX` (`RunInstances`), `Windows`
(`RunInstances:0002`), `Red Hat Enterprise Linux` (`RunInstances:0010`),
`SUSE Linux` (`RunInstances:000g`)."""

from xml.sax.saxutils import escape

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
