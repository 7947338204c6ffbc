"""What the fleet reads from EC2: instances, subnets, VPCs, key pairs and
user data (with the caches that spare repeated look-ups)."""

import base64

from .log import log

# instance states in which a host runs, and in which it is kept but stopped
ACTIVE = ("pending", "running")
STOPPED = ("stopping", "stopped")


def paged(ec2, operation, key, **kw):
    """Every item of a paginated Describe call."""
    out = []
    for page in ec2.get_paginator(operation).paginate(**kw):
        out.extend(page.get(key, []))
    return out


class Ec2Reads:
    """The EC2 side of the fleet (a part of ``main.Fleet``): reads through
    ``self.ec2`` into ``self.key_cache``, ``self.subnet_cache`` and
    ``self.vpc_cache``."""

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
