"""End-to-end check of a running local world (scripts/world selftest).

Through the EC2 stand-in it makes a VPC 10.42.0.0/16, a subnet 10.42.1.0/24,
a key pair from the world's SSH key and one instance; then it checks that the
host appears at the instance's private IP, answers SSH, runs Docker, pulls
from the world registry, runs all five workloads so that a vote cast over
HTTP lands in postgres and shows in the result, survives a stop/start, and
goes away on terminate. Whatever it made is removed at the end.
Every wait is bounded.
"""

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

VPC_CIDR = "10.42.0.0/16"
SUBNET_CIDR = "10.42.1.0/24"
TAG = "votingstack-world-selftest"


class Failed(Exception):
    pass


def read_env(path):
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                env[k] = v
    return env


T0 = time.monotonic()


def step(msg):
    print("[selftest %5.1fs] %s" % (time.monotonic() - T0, msg), flush=True)


def wait(what, secs, fn, interval=0.5):
    """Call fn until it returns a true value; fail after secs seconds."""
    end = time.monotonic() + secs
    last = None
    while time.monotonic() < end:
        try:
            v = fn()
            if v:
                return v
        except Exception as exc:  # keep trying until the deadline
            last = exc
        time.sleep(interval)
    raise Failed("%s: not within %ss%s" % (what, secs, " (last error: %s)" % last if last else ""))


def sh(args, timeout=60, check=True):
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise Failed("%s failed (%d): %s" % (" ".join(args[:6]), p.returncode,
                                            (p.stderr or p.stdout).strip()[-500:]))
    return p


def container(name):
    p = sh(["docker", "inspect", name], check=False)
    if p.returncode != 0:
        return None
    return json.loads(p.stdout)[0]


def http(url, data=None, headers=None, timeout=5):
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, resp.read().decode(), resp.headers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--env", required=True)
    args = ap.parse_args()
    env = read_env(args.env)

    import boto3
    from botocore.config import Config

    ec2 = boto3.client(
        "ec2", endpoint_url=env["AWS_ENDPOINT_URL_EC2"], region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        config=Config(retries={"max_attempts": 2}, connect_timeout=3, read_timeout=30),
    )
    key = env["VS_WORLD_SSH_KEY"]
    pub_path = key + ".pub"
    if os.path.exists(pub_path):
        pub = open(pub_path).read().strip()
    else:
        pub = sh(["ssh-keygen", "-y", "-f", key]).stdout.strip()
    registry = env["VS_WORLD_REGISTRY"]
    user = env.get("VS_WORLD_SSH_USER", "admin")
    kh = tempfile.NamedTemporaryFile(prefix="vsw-known-hosts-", delete=False)
    kh.close()
    made = {"instances": [], "key": None, "subnet": None, "vpc": None}

    def ssh(ip, command, timeout=60, check=True):
        return sh(["ssh", "-i", key, "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                   "-o", "StrictHostKeyChecking=accept-new",
                   "-o", "UserKnownHostsFile=" + kh.name, "-o", "LogLevel=ERROR",
                   "%s@%s" % (user, ip), command], timeout=timeout, check=check)

    try:
        step("EC2: VPC %s, subnet %s, key pair, instance" % (VPC_CIDR, SUBNET_CIDR))
        tags = [{"Key": "Name", "Value": TAG}]
        vpc = ec2.create_vpc(CidrBlock=VPC_CIDR, TagSpecifications=[
            {"ResourceType": "vpc", "Tags": tags}])["Vpc"]["VpcId"]
        made["vpc"] = vpc
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=SUBNET_CIDR)["Subnet"]["SubnetId"]
        made["subnet"] = subnet
        key_name = "%s-%s" % (TAG, secrets.token_hex(4))
        ec2.import_key_pair(KeyName=key_name, PublicKeyMaterial=pub.encode())
        made["key"] = key_name
        kp = ec2.describe_key_pairs(KeyNames=[key_name], IncludePublicKey=True)["KeyPairs"][0]
        if kp.get("PublicKey", "").split()[:2] != pub.split()[:2]:
            raise Failed("EC2 does not give back the imported public key")
        inst = ec2.run_instances(
            ImageId=env["VS_WORLD_AMI"], InstanceType=env["VS_WORLD_INSTANCE_TYPE"],
            MinCount=1, MaxCount=1, KeyName=key_name, SubnetId=subnet,
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )["Instances"][0]
        iid = inst["InstanceId"]
        made["instances"].append(iid)
        ip = inst["PrivateIpAddress"]
        name = "vsw-" + iid
        step("instance %s at %s" % (iid, ip))

        def host_up():
            c = container(name)
            if not c or not c["State"]["Running"]:
                return False
            nets = c["NetworkSettings"]["Networks"]
            return any(n.get("IPAddress") == ip for n in nets.values())
        wait("host container %s at %s" % (name, ip), 60, host_up)
        step("host container %s running at %s" % (name, ip))

        def docker_info():
            p = ssh(ip, "docker info --format '{{.ServerVersion}} {{.Driver}}'", check=False)
            return p.stdout.strip() if p.returncode == 0 else None
        info = wait("ssh %s@%s docker info" % (user, ip), 90, docker_info, interval=1)
        step("ssh + docker info: %s" % info)

        images = {n: "%s/%s:local" % (registry, n)
                  for n in ("vote", "result", "worker", "redis", "postgres")}
        ssh(ip, "docker pull -q %s" % images["vote"], timeout=300)
        step("pulled %s" % images["vote"])
        for n in ("result", "worker", "redis", "postgres"):
            ssh(ip, "docker pull -q %s" % images[n], timeout=300)
        step("pulled the other four")

        hosts = "--add-host redis:%s --add-host db:%s" % (ip, ip)
        runs = [
            "docker run -d --name vs-db %s -p 5432:5432 -e POSTGRES_USER=postgres "
            "-e POSTGRES_PASSWORD=postgres %s" % (hosts, images["postgres"]),
            "docker run -d --name vs-redis %s -p 6379:6379 %s" % (hosts, images["redis"]),
            "docker run -d --name vs-worker %s %s" % (hosts, images["worker"]),
            "docker run -d --name vs-vote %s -p 80:80 -e OPTION_A=Cats -e OPTION_B=Dogs %s"
            % (hosts, images["vote"]),
            "docker run -d --name vs-result %s -p 81:80 %s" % (hosts, images["result"]),
        ]
        ssh(ip, " && ".join(runs), timeout=120)
        step("five workloads started")

        def vote_page():
            status, body, _ = http("http://%s:80/" % ip)
            return status == 200 and "Cats" in body and "Dogs" in body
        wait("vote page on %s:80" % ip, 60, vote_page)
        voter = "selftest-" + secrets.token_hex(6)
        status, body, _ = http("http://%s:80/" % ip, data={"vote": "b"},
                               headers={"Cookie": "voter_id=" + voter})
        if status != 200:
            raise Failed("POST vote: HTTP %s" % status)
        step("voted b as %s" % voter)

        def row():
            p = ssh(ip, "docker exec vs-db psql -U postgres -tAc 'select * from votes'",
                    check=False)
            return ("%s|b" % voter) in p.stdout.split()
        wait("vote row in postgres", 60, row, interval=1)
        step("row %s|b in postgres" % voter)

        def result():
            _, body, _ = http("http://%s:81/api/results" % ip)
            return json.loads(body).get("b", 0) >= 1
        wait("result on %s:81" % ip, 30, result)
        step("result page counts it")
        sh(["ssh-keygen", "-R", ip, "-f", kh.name], check=False)

        ec2.stop_instances(InstanceIds=[iid])
        wait("host stopped", 30, lambda: not container(name)["State"]["Running"])
        step("instance stopped -> host stopped")
        ec2.start_instances(InstanceIds=[iid])
        wait("host started", 30, host_up)
        wait("docker info after start", 90, docker_info, interval=1)
        step("instance started -> host and its engine back")

        ec2.terminate_instances(InstanceIds=[iid])
        wait("host removed", 30, lambda: container(name) is None)
        step("instance terminated -> host removed")
        print("selftest: passed", flush=True)
        return 0
    except Failed as exc:
        print("selftest: FAILED: %s" % exc, flush=True)
        return 1
    finally:
        try:
            if made["instances"]:
                ec2.terminate_instances(InstanceIds=made["instances"])
                for iid in made["instances"]:
                    wait("host %s removed" % iid, 30, lambda: container("vsw-" + iid) is None)
            if made["key"]:
                ec2.delete_key_pair(KeyName=made["key"])
            if made["subnet"]:
                ec2.delete_subnet(SubnetId=made["subnet"])
            if made["vpc"]:
                ec2.delete_vpc(VpcId=made["vpc"])
        except Exception as exc:
            print("selftest: cleanup: %s" % exc, flush=True)
        for f in (kh.name, kh.name + ".old"):  # ssh-keygen -R leaves a backup
            if os.path.exists(f):
                os.unlink(f)


if __name__ == "__main__":
    sys.exit(main())
