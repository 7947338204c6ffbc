"""EC2's network decisions as iptables rules: this machine's chains (VPC
traffic, egress) and the security group chain inside each host."""

from .commands import run

FW_COMMENT = "votingstack-world"

# our chains on this machine: (table, hooked from, chain)
FW_HOOKS = [
    ("filter", "INPUT", "VSW-INPUT"),
    ("filter", "DOCKER-USER", "VSW-FORWARD"),
    ("nat", "POSTROUTING", "VSW-POSTROUTING"),
]
# inside each host: the security group filter (see world/host/.../vs-sg-closed)
SG_CHAIN = "VSW-SG"


PROTOCOLS = {"tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp", "icmp": "icmp", "1": "icmp"}


def protocol_match(perm):
    """The iptables match of one IpPermission's protocol and ports (with a
    trailing space, '' for all traffic), or None when not enforceable."""
    proto = str(perm.get("IpProtocol", "-1")).lower()
    if proto in ("-1", "all"):
        return ""
    name = PROTOCOLS.get(proto)
    lo, hi = perm.get("FromPort"), perm.get("ToPort")
    if name in ("tcp", "udp"):
        if lo is None or lo < 0 or (lo <= 0 and (hi is None or hi < 0 or hi >= 65535)):
            return "-p %s " % name
        hi = lo if hi is None or hi < 0 else hi
        return "-p %s --dport %d%s " % (name, lo, "" if hi == lo else ":%d" % hi)
    if name == "icmp":
        if lo is None or lo < 0:
            return "-p icmp "
        if hi is None or hi < 0:
            return "-p icmp --icmp-type %d " % lo
        return "-p icmp --icmp-type %d/%d " % (lo, hi)
    if proto.isdigit() and 0 < int(proto) < 256:
        return "-p %s " % proto
    return None


def sg_ruleset(rules):
    """iptables-restore input for a host's VSW-SG chain; None rules = no
    filtering (enforcement off)."""
    lines = ["*mangle", ":%s - [0:0]" % SG_CHAIN]
    if rules is None:
        lines.append("-A %s -j RETURN" % SG_CHAIN)
    else:
        lines.append("-A %s -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN" % SG_CHAIN)
        lines.extend("-A %s %s" % (SG_CHAIN, r) for r in rules)
        lines.append("-A %s -j DROP" % SG_CHAIN)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


# load the chain, then hook it once (the host's boot may have hooked it already)
SG_LOAD = (
    "iptables-restore --noflush && "
    "{ iptables -t mangle -C PREROUTING -i eth0 -j %s 2>/dev/null || "
    "iptables -t mangle -I PREROUTING 1 -i eth0 -j %s; }" % (SG_CHAIN, SG_CHAIN)
)


def iptables(*args, check=True):
    return run(["iptables", "-w", "5"] + list(args), timeout=30, check=check)


def fw_hook_rule(chain):
    return ["-m", "comment", "--comment", FW_COMMENT, "-j", chain]


def fw_ruleset(vpc_cidrs, net_cidrs, egress_ips, enforce):
    """iptables-restore input for this machine's chains."""
    f = ["*filter", ":VSW-INPUT - [0:0]", ":VSW-FORWARD - [0:0]"]
    for cidr in sorted(vpc_cidrs):
        f.append("-A VSW-FORWARD -s %s -d %s -j ACCEPT" % (cidr, cidr))
    if enforce:
        f.append("-A VSW-INPUT -i lo -j RETURN")
        for chain in ("VSW-INPUT", "VSW-FORWARD"):
            f.append("-A %s -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN" % chain)
            f.extend("-A %s -s %s/32 -j RETURN" % (chain, ip) for ip in sorted(egress_ips))
            f.extend("-A %s -s %s -j DROP" % (chain, cidr) for cidr in sorted(net_cidrs))
    f.append("COMMIT")
    n = ["*nat", ":VSW-POSTROUTING - [0:0]"]
    n.extend("-A VSW-POSTROUTING -s %s -d %s -j ACCEPT" % (c, c) for c in sorted(vpc_cidrs))
    n.append("COMMIT")
    return "\n".join(f + n) + "\n"


class Firewall:
    """This machine's chains, loaded atomically and only when they change."""

    def __init__(self):
        self.loaded = None

    @staticmethod
    def hook_first(table, hook, chain):
        """Whether our jump is the first rule of `hook` (Docker puts the
        masquerade rule of every new network at the top of POSTROUTING)."""
        p = iptables("-t", table, "-S", hook, check=False)
        rules = [line for line in p.stdout.splitlines() if line.startswith("-A ")]
        return bool(rules) and rules[0].split() == ["-A", hook] + fw_hook_rule(chain)

    def ensure_hooks(self):
        """Puts each jump at the top of its chain; True when one moved."""
        moved = False
        for table, hook, chain in FW_HOOKS:
            if self.hook_first(table, hook, chain):
                continue
            rule = fw_hook_rule(chain)
            for _ in range(10):
                if iptables("-t", table, "-D", hook, *rule, check=False).returncode != 0:
                    break
            iptables("-t", table, "-I", hook, "1", *rule)
            moved = True
        return moved

    def apply(self, ruleset, check_hooks=True):
        """Loads the chains when they changed; keeps the jumps first."""
        changed = ruleset != self.loaded
        if changed:
            run(["iptables-restore", "-w", "5", "--noflush"], input=ruleset, timeout=30)
        moved = self.ensure_hooks() if check_hooks or changed else False
        if changed:
            fw_remove_legacy()
            self.loaded = ruleset
        return changed or moved


def fw_rules_with_comment(table, chain):
    p = iptables("-t", table, "-S", chain, check=False)
    return [line.split() for line in p.stdout.splitlines()
            if line.startswith("-A ") and FW_COMMENT in line]


def fw_delete(table, parts):
    """Delete one rule given as ``iptables -S`` prints it."""
    parts = [x.strip('"') for x in parts]
    iptables("-t", table, "-D", *parts[1:], check=False)


def fw_remove_legacy():
    """Rules of earlier versions (VPC CIDR rules put straight into
    DOCKER-USER and POSTROUTING)."""
    for table, hook, _ in FW_HOOKS:
        for parts in fw_rules_with_comment(table, hook):
            if not any(p.startswith("VSW-") for p in parts):
                fw_delete(table, parts)


def fw_cleanup():
    """Remove our hooks, chains and any rule with our comment."""
    for table, hook, _ in FW_HOOKS:
        for parts in fw_rules_with_comment(table, hook):
            fw_delete(table, parts)
    for table, _, chain in FW_HOOKS:
        if iptables("-t", table, "-F", chain, check=False).returncode == 0:
            iptables("-t", table, "-X", chain, check=False)
