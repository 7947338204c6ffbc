"""Running programs on this machine, the outer Docker engine among them."""

import subprocess


def run(args, timeout=120, check=True, input=None):
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(args[:3]), p.stderr.strip()))
    return p


def docker(*args, timeout=120, check=True, input=None):
    return run(["docker"] + list(args), timeout=timeout, check=check, input=input)
