"""Fleet simulator of the local world.

Polls the EC2 stand-in and mirrors its instances into host containers:

* every subnet that has instances becomes a Docker network ``vsw-<subnet-id>``
  whose subnet is the EC2 subnet's CIDR;
* every pending/running instance becomes a container ``vsw-<instance-id>`` on
  that network at the instance's private IP, running sshd (user ``admin``,
  authorised key = the public key of the instance's key pair) and its own
  Docker engine; sshd answers VS_WORLD_SSHD_DELAY_S seconds after the
  container starts, as a booting machine would;
* like cloud-init, it reads the instance's user data: a ``#cloud-config``
  with ``ssh_keys`` (``ed25519_private``/``ed25519_public``) becomes the host's
  only SSH host key, so the key is the one its launcher chose;
* stopped instances stop their container (disk and host keys are kept),
  started ones start it again (and its engine), terminated or vanished ones
  lose it and its disk.

The network is held to EC2's rules, re-evaluated on every pass and applied
only when something changed:

* Egress: a host reaches anything outside its VPC (the world's registry
  stands for the internet) only when EC2 would let it: it has a public IP and
  its subnet's route table (explicit association, else the VPC's main table)
  sends 0.0.0.0/0 to an internet gateway attached to the VPC; or that table
  sends 0.0.0.0/0 to an ``available`` public NAT gateway that has an Elastic
  IP and sits in a subnet with such an internet route. Other hosts may only
  answer and talk within their VPC; their new connections elsewhere are
  dropped, so they time out as in a private subnet. Enforced on this machine
  in chains VSW-INPUT (from INPUT: the machine's own services) and
  VSW-FORWARD (from DOCKER-USER: forwarded traffic). Off with
  VS_WORLD_ENFORCE_EGRESS=0.
* Subnets of one VPC reach each other (a VPC's local route): VSW-FORWARD
  accepts traffic within a VPC CIDR and VSW-POSTROUTING (nat table) keeps it
  unmasqueraded.
* Security groups: each host drops new inbound connections on its eth0 that
  no ingress rule of its instance's groups allows (CIDR sources, and group
  sources as the private IPs of the groups' pending/running members).
  Stateful: replies pass. The rules live inside the host, in chain VSW-SG of
  its mangle table, hooked from PREROUTING, so ports published by the host's
  own engine are matched by the port EC2 would see. Traffic from this machine
  arrives from the bridge gateway of the host's subnet network (the first
  address of the subnet, e.g. 10.42.1.1) and is filtered like any other. Off
  with VS_WORLD_ENFORCE_SECURITY_GROUPS=0.

EBS: the fleet is the volumes' hardware (with --state-dir). Every volume
has a sparse backing file ``<state dir>/ebs/<volume id>.img`` of its size,
removed once EC2 no longer has the volume. A volume attached to an instance
whose host runs becomes a block device in that host, named as on a Nitro
instance whatever device name the attach gave: ``/dev/nvme<N>n1`` (N = 1, 2,
...; the root disk would be nvme0) with the udev link
``/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol<hex>``, backed by a loop
device of this machine; ``/dev/disk/by-uuid/<uuid>`` follows once the volume
holds a filesystem. A host's /dev is new on every boot, so its nodes are made
again after a stop/start. A detach (or a terminated instance) lazily unmounts
what the host mounted from the device, removes the node and links and
detaches the loop device; the data stays in the backing file. Root volumes
(those at an instance's root device name) are the host container itself and
get neither file nor device.

Only EC2 state is mirrored. Whatever happens inside a running host (a killed
engine, removed containers) is left as it is.

Run ``python -m fleet --cleanup-firewall`` (with ``world/`` on the Python
path) to remove every rule and chain it added on this machine.

The package, one module per job:

* ``main``: the command line and the pass that makes Docker match EC2;
* ``ec2``: what the fleet reads from EC2 (instances, subnets, key pairs,
  user data);
* ``routing``: EC2's network decisions (route tables, internet and NAT
  gateways, security groups' ingress rules) from what EC2 holds;
* ``firewall``: those decisions as iptables rules, on this machine and in
  each host;
* ``hosts``: the Docker networks and host containers;
* ``ebs``: EBS volumes as backing files, loop devices and nodes in hosts;
* ``commands`` and ``log``: running programs, and the log.
"""
