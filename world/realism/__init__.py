"""EC2 realism layer: an HTTP proxy in front of moto for the local world.

It speaks the EC2 Query API (form-encoded POST or GET with Action=...),
forwards every request unchanged (headers and body as they came, so SigV4
signatures pass) to moto, and makes the answers behave more like EC2's:

* a ClientToken is honoured: the same token with the same parameters returns
  the first answer, with other parameters IdempotentParameterMismatch;
* eventual consistency: a resource just created may be missing from Describe*
  answers and give <Kind>.NotFound to calls that name it, for a while;
* an instance shows as pending for a while after RunInstances/StartInstances;
* faults on request: throttling, 5xx, and lost answers (moto did the work,
  the client gets a 500 or a closed connection);
* EBS: AttachVolume is refused as EC2 refuses it (a volume of another zone,
  one in use, an instance neither running nor stopped, a device name the
  instance already uses), and DetachVolume without InstanceId works (moto
  needs the instance: the layer names the one the volume is attached to);
* instances that die at launch (knob ``unusable_kms``): a launch encrypting a
  volume with the account's default key is terminated at once, with
  StateReason ``Client.InternalError``, as EC2 does with a KMS key the
  caller may not use.

Knobs come from VS_REALISM_* environment variables at start and can be read
and changed at runtime at /_realism on the same port (see world/README.md,
"Realism layer"). Standard library only.

Run ``python -m realism`` (with ``world/`` on the Python path). The package,
one module per job:

* ``main``: the command line;
* ``proxy``: the HTTP server, forwarding to moto and the order in which each
  EC2 call meets the rules below (faults drawn in ``state``);
* ``tokens``: ClientToken idempotency;
* ``consistency``: eventual consistency (hidden new resources) and the
  pending window of new instances;
* ``ebs``: AttachVolume and DetachVolume checked against moto's state;
* ``launch_kms``: launches killed by an unusable default EBS key;
* ``control``: the knobs and counters endpoint ``/_realism``;
* ``config``: the knobs, their checks and their start values;
* ``state``: what the layer remembers (knobs, counters, windows, tokens);
* ``ec2xml``: reading and editing EC2's XML answers, EC2's error answers;
* ``log``: the log.
"""
