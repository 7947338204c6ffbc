//! The validation step: every problem in a spec, each with its field path.
//!
//! The CRD schema and CEL rules refuse most of this at `kubectl apply`; this
//! runs again in the engine (the CLI has no API server, and old objects may
//! predate a rule), before anything is created.

use std::fmt;

use ipnet::Ipv4Net;

use super::spec::{HostKeyPolicy, Tier, VotingStackSpec};

/// One problem in a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, such as `spec.network.subnetCidr`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

struct Problems(Vec<FieldError>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError { path: path.into(), message: message.into() });
    }
}

/// Checks a stack's name and spec; an empty result means valid.
pub fn validate(name: &str, spec: &VotingStackSpec) -> Vec<FieldError> {
    let mut p = Problems(Vec::new());
    check_name(&mut p, name);
    check_aws(&mut p, spec);
    check_network(&mut p, spec);
    check_instances(&mut p, spec);
    check_ssh(&mut p, spec);
    check_app(&mut p, spec);
    check_database(&mut p, spec);
    p.0
}

fn check_name(p: &mut Problems, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        p.push(
            "metadata.name",
            format!("{name:?} must be 1-40 lowercase letters, digits or '-' (it names AWS resources)"),
        );
    }
}

fn check_aws(p: &mut Problems, spec: &VotingStackSpec) {
    let region = &spec.aws.region;
    let region_ok =
        !region.is_empty() && region.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !region_ok {
        p.push("spec.aws.region", format!("{region:?} is not an AWS region name such as us-east-1"));
    }
    if let Some(endpoint) = &spec.aws.endpoint {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            p.push("spec.aws.endpoint", format!("{endpoint:?} must be an http:// or https:// URL"));
        }
    }
}

fn parse_cidr(p: &mut Problems, path: &str, value: &str) -> Option<Ipv4Net> {
    match value.parse::<Ipv4Net>() {
        Ok(net) if net.network() == net.addr() => Some(net),
        Ok(net) => {
            p.push(path, format!("{value:?} has host bits set; did you mean {}?", net.trunc()));
            None
        }
        Err(_) => {
            p.push(path, format!("{value:?} is not an IPv4 CIDR block such as 10.42.0.0/16"));
            None
        }
    }
}

/// `vpcId`, `publicSubnetId` and `privateSubnetId` go together, name
/// ids of their kind, and leave the fields of a network the stack would
/// create (its zone and private block) unset.
fn check_provided_network(p: &mut Problems, spec: &VotingStackSpec) {
    let net = &spec.network;
    let ids = [
        ("spec.network.vpcId", &net.vpc_id, "vpc-"),
        ("spec.network.publicSubnetId", &net.public_subnet_id, "subnet-"),
        ("spec.network.privateSubnetId", &net.private_subnet_id, "subnet-"),
    ];
    let given = ids.iter().filter(|(_, id, _)| id.is_some()).count();
    if given == 0 {
        return;
    }
    if given < ids.len() {
        for (path, _, _) in ids.iter().filter(|(_, id, _)| id.is_none()) {
            p.push(
                *path,
                "vpcId, publicSubnetId and privateSubnetId go together: set all three to use your own network, or none",
            );
        }
    }
    for (path, id, prefix) in ids {
        if let Some(id) = id {
            let hex = id.strip_prefix(prefix).unwrap_or_default();
            if !(8..=17).contains(&hex.len()) || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                p.push(path, format!("{id:?} is not an id of the form {prefix}<8 to 17 hex digits>"));
            }
        }
    }
    if net.public_subnet_id.is_some() && net.public_subnet_id == net.private_subnet_id {
        p.push(
            "spec.network.privateSubnetId",
            "must be another subnet than publicSubnetId: its hosts have no public IPs",
        );
    }
    if net.availability_zone.is_some() {
        p.push("spec.network.availabilityZone", "with vpcId the zone is your subnets': leave it unset");
    }
    if net.private_subnet_cidr.is_some() {
        p.push("spec.network.privateSubnetCidr", "with vpcId the blocks are your subnets': leave it unset");
    }
}

fn check_network(p: &mut Problems, spec: &VotingStackSpec) {
    let net = &spec.network;
    let vpc = parse_cidr(p, "spec.network.vpcCidr", &net.vpc_cidr);
    let subnet = parse_cidr(p, "spec.network.subnetCidr", &net.subnet_cidr);
    if let Some(vpc) = vpc {
        if !(16..=28).contains(&vpc.prefix_len()) {
            p.push("spec.network.vpcCidr", "AWS allows VPC blocks from /16 to /28");
        }
    }
    if let Some(subnet) = subnet {
        if !(16..=28).contains(&subnet.prefix_len()) {
            p.push("spec.network.subnetCidr", "AWS allows subnet blocks from /16 to /28");
        }
    }
    if let (Some(vpc), Some(subnet)) = (vpc, subnet) {
        if !vpc.contains(&subnet) {
            p.push("spec.network.subnetCidr", format!("{subnet} is not inside vpcCidr {vpc}"));
        }
    }
    check_private_subnet(p, spec, vpc, subnet);
    check_provided_network(p, spec);
    if net.ssh_ingress_cidrs.is_empty() {
        p.push("spec.network.sshIngressCidrs", "needs at least one CIDR, or the operator cannot reach the hosts");
    }
    for (i, c) in net.ssh_ingress_cidrs.iter().enumerate() {
        parse_cidr(p, &format!("spec.network.sshIngressCidrs[{i}]"), c);
    }
    for (i, c) in net.web_ingress_cidrs.iter().enumerate() {
        parse_cidr(p, &format!("spec.network.webIngressCidrs[{i}]"), c);
    }
    let rules = frontend_rule_count(spec);
    if rules > RULES_PER_GROUP {
        p.push(
            "spec.network.webIngressCidrs",
            format!(
                "the frontend's security group would hold {rules} inbound rules (one per sshIngressCidrs entry, \
                 two per webIngressCidrs entry: pages {} and {}), and AWS allows {RULES_PER_GROUP} per group \
                 (quota \"Inbound or outbound rules per security group\"): use fewer or wider blocks",
                spec.app.ports.vote, spec.app.ports.result
            ),
        );
    }
}

/// AWS's default quota of inbound rules per security group.
pub const RULES_PER_GROUP: usize = 60;

/// How many inbound rules the frontend's security group holds: one per
/// distinct SSH block, one per distinct web block and page. The same count
/// as the engine's `security_policy` for the frontend (a test holds them
/// together); the private tiers' groups hold fewer.
pub fn frontend_rule_count(spec: &VotingStackSpec) -> usize {
    let distinct = |v: &[String]| v.iter().collect::<std::collections::BTreeSet<_>>().len();
    distinct(&spec.network.ssh_ingress_cidrs) + 2 * distinct(&spec.network.web_ingress_cidrs)
}

/// The private subnet: given or derived, a /16-/28 block inside the VPC
/// that does not overlap the public subnet.
fn check_private_subnet(p: &mut Problems, spec: &VotingStackSpec, vpc: Option<Ipv4Net>, public: Option<Ipv4Net>) {
    let path = "spec.network.privateSubnetCidr";
    let given = spec.network.private_subnet_cidr.is_some();
    let private = match (&spec.network.private_subnet_cidr, spec.network.private_cidr()) {
        (Some(value), _) => parse_cidr(p, path, value),
        // A derived block is only judged once the public one it follows is fine.
        (None, Some(_)) if public.is_none() || vpc.zip(public).is_some_and(|(v, s)| !v.contains(&s)) => None,
        (None, Some(derived)) => derived.parse::<Ipv4Net>().ok(),
        (None, None) => None,
    };
    let Some(private) = private else { return };
    let how = if given { String::new() } else { " (derived from subnetCidr: set privateSubnetCidr)".to_string() };
    if given && !(16..=28).contains(&private.prefix_len()) {
        p.push(path, "AWS allows subnet blocks from /16 to /28");
    }
    if let Some(vpc) = vpc {
        if !vpc.contains(&private) {
            p.push(path, format!("{private} is not inside vpcCidr {vpc}{how}"));
        }
    }
    if let Some(public) = public {
        if public.contains(&private) || private.contains(&public) {
            p.push(path, format!("{private} overlaps subnetCidr {public}"));
        }
    }
}

fn is_ami_id(s: &str) -> bool {
    s.strip_prefix("ami-").is_some_and(|hex| {
        (8..=17).contains(&hex.len()) && hex.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    })
}

fn is_instance_type(s: &str) -> bool {
    match s.split_once('.') {
        Some((family, size)) => {
            !family.is_empty()
                && !size.is_empty()
                && family.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && size.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        }
        None => false,
    }
}

/// A KMS key id (`1234abcd-...` or a multi-Region `mrk-...`).
fn is_kms_key_uuid(s: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
    if let Some(rest) = s.strip_prefix("mrk-") {
        return hex(rest, 32);
    }
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5 && parts.iter().zip([8, 4, 4, 4, 12]).all(|(p, n)| hex(p, n))
}

/// An alias as KMS names them: `alias/` and 1-256 letters, digits, `/`, `_`, `-`.
fn is_kms_alias(s: &str) -> bool {
    s.strip_prefix("alias/").is_some_and(|name| {
        (1..=256).contains(&name.len())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-'))
    })
}

/// What EC2 takes as a volume's `KmsKeyId`: a key id, key ARN, alias or
/// alias ARN (`arn:aws:kms:REGION:ACCOUNT:key/ID` or `...:alias/NAME`).
pub fn is_kms_key_ref(s: &str) -> bool {
    if is_kms_key_uuid(s) || is_kms_alias(s) {
        return true;
    }
    let fields: Vec<&str> = s.splitn(6, ':').collect();
    let [arn, partition, service, region, account, resource] = fields[..] else { return false };
    arn == "arn"
        && partition.starts_with("aws")
        && partition.chars().all(|c| c.is_ascii_lowercase() || c == '-')
        && service == "kms"
        && !region.is_empty()
        && region.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && account.len() == 12
        && account.chars().all(|c| c.is_ascii_digit())
        && (resource.strip_prefix("key/").is_some_and(is_kms_key_uuid) || is_kms_alias(resource))
}

fn check_instances(p: &mut Problems, spec: &VotingStackSpec) {
    let inst = &spec.instances;
    if let Some(key) = &inst.kms_key_id {
        if !is_kms_key_ref(key) {
            p.push(
                "spec.instances.kmsKeyId",
                format!(
                    "{key:?} is not a KMS key id, key ARN, alias (alias/NAME) or alias ARN, such as \
                     1234abcd-12ab-34cd-56ef-1234567890ab or arn:aws:kms:us-east-1:111122223333:alias/ebs"
                ),
            );
        }
    }
    if let Some(ami) = inst.ami.as_ref().filter(|a| !is_ami_id(a)) {
        p.push("spec.instances.ami", format!("{ami:?} is not an AMI id such as ami-0abcdef1234567890"));
    }
    if !is_instance_type(&inst.instance_type) {
        p.push(
            "spec.instances.instanceType",
            format!("{:?} is not an instance type such as t3.small", inst.instance_type),
        );
    }
    for tier in Tier::ALL {
        let Some(ov) = inst.override_for(tier) else { continue };
        if let Some(ami) = &ov.ami {
            if !is_ami_id(ami) {
                p.push(format!("spec.instances.{tier}.ami"), format!("{ami:?} is not an AMI id"));
            }
        }
        if let Some(t) = &ov.instance_type {
            if !is_instance_type(t) {
                p.push(format!("spec.instances.{tier}.instanceType"), format!("{t:?} is not an instance type"));
            }
        }
    }
    for tier in Tier::ALL {
        let t = inst.instance_type_for(tier);
        if inst.ami_for(tier).is_none() && is_arm64_type(t) {
            p.push(
                format!("spec.instances.{tier}.ami"),
                format!(
                    "{t} is an arm64 (Graviton) instance type and an unset AMI stands for an amd64 Ubuntu image: \
                     name an arm64 Debian or Ubuntu AMI here, or choose an x86_64 type"
                ),
            );
        }
    }
}

/// Whether an instance type is one of AWS's arm64 (Graviton) types: `a1`,
/// or a family whose letters after the generation include `g` (t4g, m7g,
/// c7gn, r8g, im4gn, is4gen), unlike g4dn or p5 whose `g` leads.
pub fn is_arm64_type(instance_type: &str) -> bool {
    let family = instance_type.split('.').next().unwrap_or("");
    if family == "a1" {
        return true;
    }
    let after_generation = family.trim_start_matches(|c: char| c.is_ascii_lowercase());
    let attributes = after_generation.trim_start_matches(|c: char| c.is_ascii_digit());
    attributes.contains('g')
}

fn is_dns_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn check_ssh(p: &mut Problems, spec: &VotingStackSpec) {
    let ssh = &spec.ssh;
    let user_ok = !ssh.user.is_empty()
        && ssh.user.len() <= 32
        && ssh.user.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !ssh.user.starts_with('-');
    if !user_ok {
        p.push("spec.ssh.user", format!("{:?} is not a valid login name", ssh.user));
    }
    if ssh.port == 0 {
        p.push("spec.ssh.port", "must be between 1 and 65535");
    }
    if !is_dns_label_name(&ssh.private_key_secret_ref.name) {
        p.push(
            "spec.ssh.privateKeySecretRef.name",
            format!("{:?} is not a Secret name", ssh.private_key_secret_ref.name),
        );
    }
    if ssh.private_key_secret_ref.key.is_empty() {
        p.push("spec.ssh.privateKeySecretRef.key", "must not be empty");
    }
    if ssh.connect_timeout_seconds == 0 {
        p.push("spec.ssh.connectTimeoutSeconds", "must be at least 1");
    }
    if ssh.command_timeout_seconds < 5 {
        p.push("spec.ssh.commandTimeoutSeconds", "must be at least 5");
    }
    let pins = ssh.pinned_host_keys.as_ref();
    if ssh.host_key_policy == HostKeyPolicy::Pinned {
        // A tier without a pin would trust whatever key its host presents.
        let missing: Vec<&str> =
            Tier::ALL.iter().map(|t| t.as_str()).filter(|t| pins.is_none_or(|m| !m.contains_key(*t))).collect();
        if !missing.is_empty() {
            p.push(
                "spec.ssh.pinnedHostKeys",
                format!("hostKeyPolicy Pinned needs a fingerprint for every tier; missing: {}", missing.join(", ")),
            );
        }
    }
    if let Some(pins) = pins {
        for (tier, fp) in pins {
            if Tier::parse(tier).is_none() {
                p.push(format!("spec.ssh.pinnedHostKeys.{tier}"), "key must be one of frontend, backend, database");
            }
            if !fp.starts_with("SHA256:") {
                p.push(
                    format!("spec.ssh.pinnedHostKeys.{tier}"),
                    "must be a SHA256:... fingerprint as printed by ssh-keygen -lf",
                );
            }
        }
    }
}

fn check_app(p: &mut Problems, spec: &VotingStackSpec) {
    let app = &spec.app;
    for (path, v) in [("spec.app.optionA", &app.option_a), ("spec.app.optionB", &app.option_b)] {
        if v.trim().is_empty() {
            p.push(path, "must not be empty");
        } else if v.len() > 64 {
            p.push(path, "must be at most 64 characters");
        } else if v.chars().any(|c| c.is_control()) {
            p.push(path, "must not contain control characters");
        }
    }
    if !app.option_a.is_empty() && app.option_a == app.option_b {
        p.push("spec.app.optionB", "must differ from optionA");
    }
    let images = [
        ("vote", &app.images.vote),
        ("result", &app.images.result),
        ("worker", &app.images.worker),
        ("redis", &app.images.redis),
        ("postgres", &app.images.postgres),
    ];
    for (name, image) in images {
        let ok = !image.is_empty()
            && image.len() <= 255
            && image.chars().all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c))
            && !image.starts_with(['-', ':', '/', '@']);
        if !ok {
            p.push(format!("spec.app.images.{name}"), format!("{image:?} is not an image reference"));
        }
    }
    let ports = &app.ports;
    for (path, port) in [("spec.app.ports.vote", ports.vote), ("spec.app.ports.result", ports.result)] {
        if port == 0 {
            p.push(path, "must be between 1 and 65535");
        } else if port == spec.ssh.port {
            p.push(path, format!("{port} is the SSH port of the hosts"));
        }
    }
    if ports.vote == ports.result {
        p.push("spec.app.ports.result", "must differ from spec.app.ports.vote");
    }
}

/// A backup schedule: exactly five cron fields (minute, hour, day of
/// month, month, day of week), read in UTC. Empty means no schedule.
pub fn parse_schedule(schedule: &str) -> Result<Option<croner::Cron>, String> {
    let schedule = schedule.trim();
    if schedule.is_empty() {
        return Ok(None);
    }
    let fields = schedule.split_whitespace().count();
    if fields != 5 {
        return Err(format!(
            "{schedule:?} has {fields} fields; give 5 (minute hour day-of-month month day-of-week, in UTC), \
             such as \"0 3 * * *\", or \"\" for no scheduled snapshots"
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(schedule)
        .map(Some)
        .map_err(|e| format!("{schedule:?} is not a cron expression: {e}"))
}

/// A snapshot id as EC2 writes them: `snap-` and 8 to 32 lowercase hex
/// digits. Anything else never reaches EC2.
pub fn valid_snapshot_id(id: &str) -> bool {
    id.strip_prefix("snap-").is_some_and(|h| {
        (8..=32).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

fn check_database(p: &mut Problems, spec: &VotingStackSpec) {
    let db = &spec.database;
    if !(1..=16384).contains(&db.volume_size_gib) {
        p.push("spec.database.volumeSizeGiB", "must be between 1 and 16384");
    }
    if let Err(problem) = parse_schedule(&db.backups.schedule) {
        p.push("spec.database.backups.schedule", problem);
    }
    if db.backups.keep == 0 {
        p.push("spec.database.backups.keep", "must be at least 1");
    }
    if let Some(id) = &db.restore_from_snapshot {
        if !valid_snapshot_id(id) {
            p.push(
                "spec.database.restoreFromSnapshot",
                format!("{id:?} is not a snapshot id such as snap-0123456789abcdef0"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::spec;

    fn paths(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn an_arm64_tier_without_an_ami_of_its_own_is_refused_for_the_amd64_default() {
        for (t, arm) in [
            ("t4g.small", true),
            ("m7g.large", true),
            ("c7gn.xlarge", true),
            ("a1.medium", true),
            ("is4gen.large", true),
            ("g4dn.xlarge", false),
            ("t3.small", false),
            ("m6in.large", false),
        ] {
            assert_eq!(is_arm64_type(t), arm, "{t}");
        }
        let mut s = spec();
        s.instances.ami = None;
        s.instances.backend = Some(crate::api::InstanceOverride { ami: None, instance_type: Some("t4g.small".into()) });
        let errors = validate("demo", &s);
        assert_eq!(paths(&errors), ["spec.instances.backend.ami"]);
        assert!(errors[0].message.contains("t4g.small is an arm64"), "{}", errors[0].message);
        s.instances.backend = Some(crate::api::InstanceOverride {
            ami: Some("ami-0f00d24040000b001".into()),
            instance_type: Some("t4g.small".into()),
        });
        assert_eq!(validate("demo", &s), vec![]);
    }

    #[test]
    fn a_frontend_group_over_60_rules_is_refused_before_ec2_refuses_it() {
        let mut s = spec();
        s.network.ssh_ingress_cidrs = vec!["198.51.100.0/24".into(); 2];
        s.network.web_ingress_cidrs = (0..29).map(|i| format!("203.0.{i}.0/24")).collect();
        assert_eq!(frontend_rule_count(&s), 59, "duplicates count once");
        assert_eq!(validate("demo", &s), vec![]);
        s.network.ssh_ingress_cidrs.push("192.0.2.0/24".into());
        assert_eq!(validate("demo", &s), vec![]);
        s.network.ssh_ingress_cidrs.push("192.0.2.128/25".into());
        let errors = validate("demo", &s);
        assert_eq!(paths(&errors), ["spec.network.webIngressCidrs"]);
        assert!(errors[0].message.contains("61 inbound rules"), "{}", errors[0].message);
    }

    #[test]
    fn the_example_spec_is_valid() {
        assert_eq!(validate("demo", &spec()), vec![]);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let mut s = spec();
        s.network.subnet_cidr = "10.99.1.0/24".into();
        s.network.web_ingress_cidrs = vec!["nope".into()];
        s.instances.ami = Some("ubuntu".into());
        s.app.option_b = s.app.option_a.clone();
        s.app.ports.result = 22;
        let errors = validate("demo", &s);
        assert_eq!(
            paths(&errors),
            [
                "spec.network.subnetCidr",
                "spec.network.webIngressCidrs[0]",
                "spec.instances.ami",
                "spec.app.optionB",
                "spec.app.ports.result",
            ]
        );
        assert!(errors[0].message.contains("not inside vpcCidr 10.42.0.0/16"), "{}", errors[0]);
    }

    #[test]
    fn a_network_you_bring_needs_all_three_ids_and_nothing_of_an_own_network() {
        let mut s = spec();
        s.network.vpc_id = Some("vpc-0123456789abcdef0".into());
        let errors = validate("demo", &s);
        assert_eq!(paths(&errors), ["spec.network.publicSubnetId", "spec.network.privateSubnetId"]);
        s.network.public_subnet_id = Some("subnet-0123456789abcdef0".into());
        s.network.private_subnet_id = Some("subnet-0123456789abcdef1".into());
        assert_eq!(validate("demo", &s), vec![], "a complete network of one's own");
        s.network.availability_zone = Some("us-east-1a".into());
        s.network.private_subnet_id = Some("subnet-0123456789abcdef0".into());
        s.network.vpc_id = Some("vpc-nope".into());
        let errors = validate("demo", &s);
        assert_eq!(
            paths(&errors),
            ["spec.network.vpcId", "spec.network.privateSubnetId", "spec.network.availabilityZone"]
        );
    }

    #[test]
    fn the_private_subnet_lies_inside_the_vpc_apart_from_the_public_one() {
        let mut s = spec();
        assert_eq!(s.network.private_cidr().as_deref(), Some("10.42.2.0/24"));
        s.network.private_subnet_cidr = Some("10.42.1.128/25".into());
        let errors = validate("demo", &s);
        assert_eq!(paths(&errors), ["spec.network.privateSubnetCidr"]);
        assert!(errors[0].message.contains("overlaps subnetCidr 10.42.1.0/24"), "{}", errors[0]);
        s.network.private_subnet_cidr = Some("10.43.2.0/24".into());
        assert!(validate("demo", &s)[0].message.contains("not inside vpcCidr"), "{:?}", validate("demo", &s));
        s.network.private_subnet_cidr = Some("10.42.200.0/24".into());
        assert_eq!(validate("demo", &s), vec![]);
        // A derived block outside the VPC asks for an explicit one.
        s.network.private_subnet_cidr = None;
        s.network.subnet_cidr = "10.42.255.0/24".into();
        let errors = validate("demo", &s);
        assert_eq!(paths(&errors), ["spec.network.privateSubnetCidr"]);
        assert!(errors[0].message.contains("set privateSubnetCidr"), "{}", errors[0]);
    }

    #[test]
    fn host_bits_in_a_cidr_get_a_suggestion() {
        let mut s = spec();
        s.network.vpc_cidr = "10.42.3.7/16".into();
        let errors = validate("demo", &s);
        assert!(errors[0].message.contains("did you mean 10.42.0.0/16"), "{errors:?}");
    }

    #[test]
    fn pinned_policy_needs_fingerprints() {
        let mut s = spec();
        s.ssh.host_key_policy = HostKeyPolicy::Pinned;
        assert_eq!(paths(&validate("demo", &s)), ["spec.ssh.pinnedHostKeys"]);
        s.ssh.pinned_host_keys = Some([("web".to_string(), "md5".to_string())].into());
        assert_eq!(
            paths(&validate("demo", &s)),
            ["spec.ssh.pinnedHostKeys", "spec.ssh.pinnedHostKeys.web", "spec.ssh.pinnedHostKeys.web"]
        );
    }

    #[test]
    fn pinned_policy_needs_every_tier() {
        let mut s = spec();
        s.ssh.host_key_policy = HostKeyPolicy::Pinned;
        let pin = |t: &str| (t.to_string(), format!("SHA256:{t}"));
        s.ssh.pinned_host_keys = Some([pin("frontend"), pin("backend")].into());
        let problems = validate("demo", &s);
        assert_eq!(paths(&problems), ["spec.ssh.pinnedHostKeys"]);
        assert!(problems[0].message.contains("missing: database"), "{problems:?}");
        s.ssh.pinned_host_keys = Some([pin("frontend"), pin("backend"), pin("database")].into());
        assert!(validate("demo", &s).is_empty());
    }

    #[test]
    fn names_that_cannot_name_aws_resources_are_refused() {
        assert_eq!(paths(&validate("Demo_1", &spec())), ["metadata.name"]);
        assert_eq!(paths(&validate(&"a".repeat(41), &spec())), ["metadata.name"]);
    }

    #[test]
    fn backups_need_a_five_field_schedule_and_keep_at_least_one() {
        let mut s = spec();
        assert_eq!(s.database.backups.schedule, "0 3 * * *");
        assert_eq!(s.database.backups.keep, 7);
        for ok in ["", "*/15 * * * *", "30 2 * * 1-5", "0 3 1 * *"] {
            s.database.backups.schedule = ok.into();
            assert_eq!(validate("demo", &s), vec![], "{ok:?}");
        }
        for bad in ["0 3 * *", "0 0 3 * * *", "61 3 * * *", "0 3 * * mon-", "every day"] {
            s.database.backups.schedule = bad.into();
            assert_eq!(paths(&validate("demo", &s)), ["spec.database.backups.schedule"], "{bad:?}");
        }
        s.database.backups.schedule = "0 3 * *".into();
        assert!(validate("demo", &s)[0].message.contains("has 4 fields"), "{:?}", validate("demo", &s));
        s.database.backups.schedule = String::new();
        s.database.backups.keep = 0;
        assert_eq!(paths(&validate("demo", &s)), ["spec.database.backups.keep"]);
    }

    #[test]
    fn a_kms_key_is_an_id_an_arn_or_an_alias() {
        for good in [
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            "mrk-1234abcd12ab34cd56ef1234567890ab",
            "alias/ebs-votingstack",
            "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws-us-gov:kms:us-gov-west-1:111122223333:alias/ebs/team_a",
        ] {
            let mut s = spec();
            s.instances.kms_key_id = Some(good.into());
            assert_eq!(validate("demo", &s), vec![], "{good}");
        }
        for bad in [
            "",
            "my-key",
            "1234ABCD-12ab-34cd-56ef-1234567890ab",
            "alias/",
            "alias/with space",
            "arn:aws:kms:us-east-1:1111:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:ec2:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:us-east-1:111122223333:key/alias",
        ] {
            let mut s = spec();
            s.instances.kms_key_id = Some(bad.into());
            let errors = validate("demo", &s);
            assert_eq!(paths(&errors), ["spec.instances.kmsKeyId"], "{bad:?}");
        }
    }

    #[test]
    fn a_restore_names_a_snapshot_id() {
        let mut s = spec();
        s.database.restore_from_snapshot = Some("snap-0123456789abcdef0".into());
        assert_eq!(validate("demo", &s), vec![]);
        s.database.restore_from_snapshot = Some("vol-0123456789abcdef0".into());
        assert_eq!(paths(&validate("demo", &s)), ["spec.database.restoreFromSnapshot"]);
    }

    #[test]
    fn per_tier_overrides_are_checked() {
        let mut s = spec();
        s.instances.database = Some(crate::api::InstanceOverride { ami: None, instance_type: Some("large".into()) });
        assert_eq!(paths(&validate("demo", &s)), ["spec.instances.database.instanceType"]);
    }
}
