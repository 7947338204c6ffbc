//! The cloud side of the engine: what the engine asks of EC2.
//!
//! [`Cloud`] is implemented by [`ec2::Ec2Cloud`] (aws-sdk-ec2) and by test doubles.

pub mod ec2;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::api::{NetworkStatus, ProvidedNetwork, ResolvedAmi, Tier, VotingStack};
use crate::model::{
    InstanceLaunch, NetworkStep, ObservedInfra, ObservedInstance, ObservedSnapshot, ObservedVolume, Slot,
    TeardownInventory, TeardownStep,
};

/// How every ClientToken the operator sends begins: an instance launched
/// with one got its SSH host key from the operator (see `SshKey::host_key_for`).
pub const CLIENT_TOKEN_PREFIX: &str = "vs-";

/// The AWS account Canonical publishes its Ubuntu images from, in every
/// commercial region.
pub const CANONICAL_OWNER_ID: &str = "099720109477";

/// The name pattern of Canonical's Ubuntu 24.04 LTS (noble) amd64 server
/// images on EBS (`hvm-ssd-gp3` since 24.04); not the `-pro-`, `-minimal`
/// or `images-testing` series.
pub const UBUNTU_NOBLE_AMD64_NAME: &str = "ubuntu/images/hvm-ssd*/ubuntu-noble-24.04-amd64-server-*";

/// Tag naming the one stack object that owns a resource: its uid. Look-ups,
/// adoption and deletion go by this tag, so two stacks that share a
/// namespace and name (two clusters, or a CLI state and a cluster) never
/// touch each other's resources.
pub const OWNER_TAG: &str = "votingstack.dev/owner";

/// Tag naming the operator installation that manages a resource (the
/// `--installation` flag, `default` unless given). Every resource the
/// operator creates carries it, the IAM policy lets an installation change
/// only resources that carry its name, and a resource naming another
/// installation is never adopted, changed or deleted.
pub const INSTALLATION_TAG: &str = "votingstack.dev/installation";

/// The name of one operator installation (`--installation`): the value of
/// the [`INSTALLATION_TAG`] on everything it creates. Two installations in
/// one AWS account (two clusters, a cluster and a CLI user) each get a name
/// and an IAM policy scoped to it, so neither can change or delete the
/// other's resources.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Installation(String);

/// Why a name cannot be an installation's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "installation name {name:?} is not valid: {problem}; use 1 to 63 characters of lowercase letters, digits and '-', \
     starting and ending with a letter or digit (it is the value of the votingstack.dev/installation tag and of \
     the matching conditions in the IAM policy), e.g. --installation team-a"
)]
pub struct InvalidInstallation {
    pub name: String,
    pub problem: &'static str,
}

impl Installation {
    /// The name of an installation that was given none.
    pub const DEFAULT: &'static str = "default";

    /// Checks a name: 1 to 63 characters of `[a-z0-9-]`, starting and
    /// ending with a letter or digit (a DNS label, so it also fits a
    /// Kubernetes label value and an IAM condition value unquoted).
    pub fn parse(name: &str) -> Result<Installation, InvalidInstallation> {
        let invalid = |problem| Err(InvalidInstallation { name: name.to_owned(), problem });
        if name.is_empty() {
            return invalid("it is empty");
        }
        if name.len() > 63 {
            return invalid("it is longer than 63 characters");
        }
        if let Some(c) = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
            return invalid(if c.is_ascii_uppercase() {
                "it has an uppercase letter"
            } else {
                "it has a character other than a-z, 0-9 and '-'"
            });
        }
        if name.starts_with('-') || name.ends_with('-') {
            return invalid("it starts or ends with '-'");
        }
        Ok(Installation(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Installation {
    fn default() -> Installation {
        Installation(Installation::DEFAULT.to_owned())
    }
}

impl std::str::FromStr for Installation {
    type Err = InvalidInstallation;
    fn from_str(s: &str) -> Result<Installation, InvalidInstallation> {
        Installation::parse(s)
    }
}

impl std::fmt::Display for Installation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The replacement number a ClientToken of [`StackIdentity::client_token`]
/// carries (its last `-` field); None for tokens of another form.
pub fn replacement_in_token(token: &str) -> Option<u32> {
    let rest = token.strip_prefix(CLIENT_TOKEN_PREFIX)?;
    let (base, n) = rest.rsplit_once('-')?;
    if base.is_empty() || !base.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    n.parse().ok()
}

/// Who a stack is, for tags, names and ClientTokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackIdentity {
    pub name: String,
    pub namespace: String,
    /// The object's uid (the CLI keeps one in its state file).
    pub uid: String,
}

impl StackIdentity {
    pub fn of(stack: &VotingStack) -> StackIdentity {
        StackIdentity {
            name: stack.metadata.name.clone().unwrap_or_default(),
            namespace: stack.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            uid: stack.metadata.uid.clone().unwrap_or_default(),
        }
    }

    /// Value of the `votingstack.dev/stack` tag: `namespace/name`, so two
    /// namespaces never share resources.
    pub fn tag_value(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Value of the [`OWNER_TAG`]: the object's uid.
    pub fn owner(&self) -> &str {
        &self.uid
    }

    /// Name of resources such as the key pair:
    /// `votingstack-<namespace>-<name>-<8 hex of the uid's hash>`. Key pair
    /// names are unique per account and region, so the suffix keeps two
    /// stacks named alike (in two clusters) apart.
    pub fn resource_name(&self) -> String {
        let digest = Sha256::digest(self.uid.as_bytes());
        format!("votingstack-{}-{}-{}", self.namespace, self.name, hex::encode(&digest[..4]))
    }

    /// Deterministic RunInstances ClientToken for a tier's n-th instance:
    /// `vs-<hash of uid, namespace, name and tier>-<n>`, so the number can be
    /// read back from the instances themselves ([`replacement_in_token`]).
    pub fn client_token(&self, tier: Tier, replacement: u32) -> String {
        let digest = Sha256::digest(format!("{}/{}/{}/{tier}", self.uid, self.namespace, self.name));
        format!("{CLIENT_TOKEN_PREFIX}{}-{replacement}", hex::encode(&digest[..16]))
    }
}

/// What kind of EC2 failure this is, which decides the condition reason and
/// whether retrying can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AwsErrorKind {
    Auth,
    InvalidParameter,
    Quota,
    /// EC2 lacks capacity for the instance type now: transient.
    Capacity,
    Throttled,
    Unavailable,
    NotFound,
    Other,
}

impl AwsErrorKind {
    /// Classifies an EC2 error code.
    pub fn from_code(code: &str) -> AwsErrorKind {
        match code {
            "AuthFailure"
            | "UnauthorizedOperation"
            | "InvalidClientTokenId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "OptInRequired"
            | "Blocked" => AwsErrorKind::Auth,
            "RequestLimitExceeded" | "Throttling" | "ThrottlingException" => AwsErrorKind::Throttled,
            // Rate limits of snapshots: they pass as snapshots complete.
            "SnapshotCreationPerVolumeRateExceeded" | "ConcurrentSnapshotLimitExceeded" => AwsErrorKind::Throttled,
            c if quota(c).is_some() || c == "ResourceLimitExceeded" || c == "MaxSpotInstanceCountExceeded" => {
                AwsErrorKind::Quota
            }
            "InsufficientInstanceCapacity" | "InsufficientHostCapacity" | "InsufficientCapacity" => {
                AwsErrorKind::Capacity
            }
            // Not a parameter of this request that a user could fix: the
            // token's first use had other ones.
            "IdempotentParameterMismatch" => AwsErrorKind::Other,
            "InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable" => AwsErrorKind::Unavailable,
            // The operator imports the stack's key pair itself: a key pair
            // RunInstances cannot find yet was imported moments ago (EC2's
            // eventual consistency), and one that exists already was imported
            // by an earlier, unanswered call. Neither is the user's to fix.
            "InvalidKeyPair.NotFound" => AwsErrorKind::NotFound,
            "InvalidKeyPair.Duplicate" => AwsErrorKind::Other,
            c if c.starts_with("InvalidAMIID") || c.starts_with("InvalidKeyPair") => AwsErrorKind::InvalidParameter,
            c if c.ends_with(".NotFound") => AwsErrorKind::NotFound,
            c if c.starts_with("Invalid") || c.starts_with("Unsupported") || c == "MissingParameter" => {
                AwsErrorKind::InvalidParameter
            }
            _ => AwsErrorKind::Other,
        }
    }
}

/// An account limit EC2 refuses a create with, as the Service Quotas
/// console names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// The quota's name in the Service Quotas console.
    pub name: &'static str,
    /// Its default value, when one value holds for every account.
    pub default: Option<u32>,
    /// The Service Quotas service code it is listed under.
    pub service: &'static str,
    /// A network quota: each stack has a VPC, an internet gateway, a NAT
    /// gateway and an Elastic IP of its own.
    pub network: bool,
}

/// The quota behind an EC2 error code, for the quotas of what the operator
/// creates; None for other codes.
pub fn quota(code: &str) -> Option<Quota> {
    let q = |name, default, service, network| Some(Quota { name, default, service, network });
    match code {
        "VpcLimitExceeded" => q("VPCs per Region", Some(5), "vpc", true),
        "InternetGatewayLimitExceeded" => q("Internet gateways per Region", Some(5), "vpc", true),
        "NatGatewayLimitExceeded" => q("NAT gateways per Availability Zone", Some(5), "vpc", true),
        "AddressLimitExceeded" => q("EC2-VPC Elastic IPs", Some(5), "ec2", true),
        "SubnetLimitExceeded" => q("Subnets per VPC", Some(200), "vpc", true),
        "RouteTableLimitExceeded" => q("Route tables per VPC", Some(200), "vpc", true),
        "RouteLimitExceeded" => q("Routes per route table", Some(50), "vpc", true),
        "SecurityGroupLimitExceeded" => q("VPC security groups per Region", Some(2500), "vpc", true),
        "RulesPerSecurityGroupLimitExceeded" => {
            q("Inbound or outbound rules per security group", Some(60), "vpc", false)
        }
        "SecurityGroupsPerInstanceLimitExceeded" | "SecurityGroupsPerInterfaceLimitExceeded" => {
            q("Security groups per network interface", Some(5), "vpc", false)
        }
        "NetworkInterfaceLimitExceeded" => q("Network interfaces per Region", Some(5000), "vpc", false),
        "InstanceLimitExceeded" | "VcpuLimitExceeded" => {
            q("Running On-Demand instances (vCPUs) of the instance type's family", None, "ec2", false)
        }
        "VolumeLimitExceeded" => q("Storage for General Purpose SSD (gp3) volumes, in TiB", None, "ebs", false),
        "SnapshotLimitExceeded" => q("Snapshots per Region", None, "ebs", false),
        _ => None,
    }
}

/// What a user can do about a quota EC2 refused a create with: the quota,
/// how to raise it, and for the network quotas how stacks can share them.
/// Empty for errors of another kind.
pub fn quota_advice(code: &str, kind: AwsErrorKind) -> String {
    if kind != AwsErrorKind::Quota {
        return String::new();
    }
    let Some(q) = quota(code) else {
        return " (an account quota: see the Service Quotas console for the region, free unused resources or \
                 request an increase)"
            .to_owned();
    };
    let default = q.default.map(|d| format!(", default {d}")).unwrap_or_default();
    let mut advice = format!(
        " (account quota \"{}\"{default}: free unused resources, or raise it in the Service Quotas console or with \
         `aws service-quotas request-service-quota-increase --service-code {} --quota-code CODE --desired-value N`, \
         CODE from `aws service-quotas list-service-quotas --service-code {}`",
        q.name, q.service, q.service
    );
    if q.network {
        advice.push_str(
            "; each stack has a network of its own, so many stacks in one account need a raised quota \
             or stacks can share a VPC you bring (spec.network.vpcId, publicSubnetId, privateSubnetId)",
        );
    }
    advice.push(')');
    advice
}

/// Errors at the EC2 boundary (cloneable: one failed look-up shared by
/// several observers gives each its copy).
#[derive(Clone, Debug, thiserror::Error)]
pub enum CloudError {
    /// EC2 answered with an error code.
    #[error("EC2 {operation} failed with {code}: {message}{}", quota_advice(.code, *.kind))]
    Api { operation: &'static str, code: String, message: String, kind: AwsErrorKind },
    /// No answer: connection, timeout, or credentials could not be loaded.
    #[error("EC2 {operation} could not be sent: {message}")]
    Transport { operation: &'static str, message: String },
    /// EC2 answered something the operator cannot use.
    #[error("EC2 {operation} returned no {missing}")]
    Incomplete { operation: &'static str, missing: &'static str },
    /// Waiting for instances to terminate took too long.
    #[error("instances {ids:?} did not terminate within {seconds} s")]
    TerminateTimeout { ids: Vec<String>, seconds: u64 },
    /// RunInstances found no spare capacity of the instance type: retried
    /// later with backoff.
    #[error(
        "EC2 has no spare {instance_type} capacity for the {tier} instance right now ({code}: {message}); \
         the launch is retried with backoff, and another instance type for the tier (spec.instances.{tier}.instanceType) \
         may succeed sooner"
    )]
    Capacity { tier: Tier, instance_type: String, code: String, message: String },
    /// RunInstances refused a ClientToken whose first use had other
    /// parameters (AMI, type, subnet, user data).
    #[error(
        "RunInstances for the {tier} instance: ClientToken {token} was used before with other parameters \
         (IdempotentParameterMismatch: {message}); the next pass launches with a new replacement number"
    )]
    TokenReused { tier: Tier, token: String, message: String },
    /// EC2 reports a snapshot in state `error`.
    #[error("snapshot {id} failed: {message}")]
    SnapshotFailed { id: String, message: String },
    /// A snapshot was not `completed` within the wait; EC2 goes on copying.
    #[error("snapshot {id} is not completed after {seconds} s; EC2 goes on copying it (look again later)")]
    SnapshotWait { id: String, seconds: u64 },
    /// No availability zone of the region offers every instance type of
    /// the stack (Local and Wavelength Zones are not considered): no subnet
    /// is created; a user has to change a type or the region.
    #[error(
        "no availability zone of {region} offers every instance type of the stack ({}): \
         DescribeInstanceTypeOfferings lists none with all of them; choose types offered together in one zone \
         (spec.instances.instanceType, spec.instances.<tier>.instanceType) or another region (spec.aws.region)",
        types.join(", ")
    )]
    NoZoneOffers { region: String, types: Vec<String> },
    /// The network the user brings (`spec.network.vpcId` and its subnets)
    /// cannot carry the stack: `field` names the spec field, `problem` what
    /// EC2 shows. Nothing is created in it until it is fixed; retried with
    /// backoff, as a route may be added meanwhile.
    #[error("spec.network.{field} {id}: {problem}")]
    ProvidedNetwork { field: &'static str, id: String, problem: String },
    /// The AMI a spec field names runs an operating system the hosts cannot
    /// be provisioned on (they need apt-get and Debian's docker.io).
    #[error(
        "{field} {ami} ({name}) is a {family} image: the hosts need Debian or Ubuntu (apt-get installs Docker); \
         leave spec.instances.ami unset for the newest Ubuntu 24.04 LTS, or name a Debian or Ubuntu AMI; nothing was launched"
    )]
    UnsupportedImage { field: String, ami: String, name: String, family: &'static str },
    /// The image's architecture is not the instance type's: EC2 would refuse
    /// RunInstances (InvalidParameterValue) after the network was made.
    #[error(
        "{field} {ami} is an {architecture} image and {instance_type} does not run {architecture}: \
         name an image of the instance type's architecture, or another instance type; nothing was launched"
    )]
    ArchitectureMismatch { field: String, ami: String, architecture: String, instance_type: String },
    /// The region has no Ubuntu 24.04 LTS amd64 image from Canonical to
    /// stand for an unset `spec.instances.ami`.
    #[error(
        "DescribeImages found no Ubuntu 24.04 LTS amd64 image from Canonical (owner {owner}) in {region}: \
         set spec.instances.ami to a Debian or Ubuntu AMI of the region"
    )]
    NoUbuntuImage { owner: &'static str, region: String },
    /// The stack's `spec.aws.endpoint` is not one the operator sends its
    /// signed requests to (see `api::endpoint`); nothing was sent.
    #[error("{0}")]
    EndpointRefused(String),
}

impl CloudError {
    pub fn kind(&self) -> AwsErrorKind {
        match self {
            CloudError::Api { kind, .. } => *kind,
            CloudError::Transport { .. } | CloudError::TerminateTimeout { .. } | CloudError::SnapshotWait { .. } => {
                AwsErrorKind::Unavailable
            }
            CloudError::SnapshotFailed { .. } => AwsErrorKind::Other,
            CloudError::Incomplete { .. } | CloudError::TokenReused { .. } => AwsErrorKind::Other,
            CloudError::EndpointRefused(_)
            | CloudError::NoZoneOffers { .. }
            | CloudError::ProvidedNetwork { .. }
            | CloudError::UnsupportedImage { .. }
            | CloudError::ArchitectureMismatch { .. }
            | CloudError::NoUbuntuImage { .. } => AwsErrorKind::InvalidParameter,
            CloudError::Capacity { .. } => AwsErrorKind::Capacity,
        }
    }
}

/// What `destroy` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DestroyReport {
    /// Resource ids in the order they were deleted.
    pub deleted: Vec<String>,
    /// The final snapshots of the data volume taken before it was deleted
    /// (`deletionPolicy: Snapshot`): kept, they are the backup.
    pub snapshots: Vec<String>,
}

/// How much of the network [`Cloud::observe`] looks up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkLookup {
    /// Trusts the ids in status while they are complete and every tier has
    /// a live instance in the recorded subnet (no call beyond
    /// DescribeInstances); looks everything up by tag otherwise.
    TrustStatus,
    /// Looks everything up by tag (after a spec change).
    Inventory,
}

/// The EC2 operations the engine needs.
#[async_trait]
pub trait Cloud: Send + Sync {
    /// Every instance with the stack's tags (one DescribeInstances), and the
    /// network: trusted from `known` or inventoried by tag, per `lookup`.
    /// With `provided` the VPC and subnets are the user's: looked up by id
    /// and checked usable (a [`CloudError::ProvidedNetwork`] otherwise),
    /// never by tag.
    async fn observe(
        &self,
        stack: &StackIdentity,
        known: Option<&NetworkStatus>,
        provided: Option<&ProvidedNetwork>,
        lookup: NetworkLookup,
    ) -> Result<ObservedInfra, CloudError>;

    /// Carries out one planned network step. Reads the ids it needs from
    /// `ids` and records the ids it creates there.
    async fn apply_network_step(
        &self,
        stack: &StackIdentity,
        step: &NetworkStep,
        ids: &mut NetworkStatus,
    ) -> Result<(), CloudError>;

    async fn launch_instance(
        &self,
        stack: &StackIdentity,
        network: &NetworkStatus,
        launch: &InstanceLaunch,
    ) -> Result<ObservedInstance, CloudError>;

    async fn start_instance(&self, instance_id: &str) -> Result<(), CloudError>;

    /// The newest Ubuntu 24.04 LTS amd64 image Canonical
    /// ([`CANONICAL_OWNER_ID`]) publishes in the region: one DescribeImages
    /// by owner, name, architecture and state.
    async fn latest_ubuntu(&self) -> Result<ResolvedAmi, CloudError>;

    /// Refuses, before anything is launched from it, an image the hosts
    /// cannot run on: Windows, Amazon Linux, RHEL, SUSE
    /// ([`CloudError::UnsupportedImage`], naming `field`), or one whose
    /// architecture `instance_type` lacks ([`CloudError::ArchitectureMismatch`]).
    /// One DescribeImages per AMI, shared with the launch's root-device
    /// look-up. An AMI EC2 does not know passes: RunInstances then says so
    /// (InvalidAMIID).
    async fn check_image(&self, ami: &str, field: &str, instance_type: &str) -> Result<(), CloudError>;

    async fn terminate_instances(&self, instance_ids: &[String]) -> Result<(), CloudError>;

    /// The instances EC2 knows by these ids, in any state, whatever their
    /// tags; an id EC2 does not know is left out. The engine asks before it
    /// takes a recorded instance missing from [`Cloud::observe`] for gone
    /// (a tag look-up may lag a fresh launch). A double without this call
    /// knows no instance beyond what it observes.
    async fn instances_by_id(&self, _ids: &[String]) -> Result<Vec<ObservedInstance>, CloudError> {
        Ok(Vec::new())
    }

    /// The stack's data volumes (DescribeVolumes by owner and role tag),
    /// not yet deleted, and the `known` one (recorded in status) by id when
    /// the tag look-up does not list it: it may lag a fresh create, and a
    /// volume that is there must never be taken for missing (a second one
    /// would be created).
    async fn data_volumes(&self, stack: &StackIdentity, known: Option<&str>)
        -> Result<Vec<ObservedVolume>, CloudError>;

    /// Creates the stack's `n`-th data volume (gp3, encrypted, tagged) in
    /// `zone`, with a ClientToken made of the stack and `n`; from the
    /// snapshot `from_snapshot` when given, tagged with its origin
    /// ([`crate::model::snapshot::ORIGIN_TAG`]) so it is never formatted;
    /// encrypted with `kms_key_id`, else the account's default EBS key.
    async fn create_data_volume(
        &self,
        stack: &StackIdentity,
        zone: &str,
        size_gib: i32,
        n: u32,
        from_snapshot: Option<&str>,
        kms_key_id: Option<&str>,
    ) -> Result<ObservedVolume, CloudError>;

    /// The stack's snapshots of its data volume (DescribeSnapshots of the
    /// account's own, by owner and role tags), in any state.
    async fn snapshots(&self, stack: &StackIdentity) -> Result<Vec<ObservedSnapshot>, CloudError>;

    /// One snapshot by id, whoever took it; None when EC2 does not know it
    /// (a snapshot taken moments ago may not be known yet).
    async fn snapshot_by_id(&self, id: &str) -> Result<Option<ObservedSnapshot>, CloudError>;

    /// CreateSnapshot of `volume_id`, tagged with the stack's tags, the
    /// snapshot role and `slot`. It takes no ClientToken: look for the
    /// slot's snapshot first.
    async fn create_snapshot(
        &self,
        stack: &StackIdentity,
        volume_id: &str,
        slot: &Slot,
    ) -> Result<ObservedSnapshot, CloudError>;

    /// Deletes a snapshot; one already gone is no error.
    async fn delete_snapshot(&self, id: &str) -> Result<(), CloudError>;

    /// Tags the data volume `votingstack.dev/formatted=<value>` once it
    /// holds a filesystem postgres runs on: a tagged volume is never
    /// formatted. A double without this call tags nothing.
    async fn tag_volume_formatted(&self, _volume_id: &str, _value: &str) -> Result<(), CloudError> {
        Ok(())
    }

    /// Attaches a volume as [`crate::model::volume::DATA_DEVICE`].
    async fn attach_volume(&self, volume_id: &str, instance_id: &str) -> Result<(), CloudError>;

    async fn detach_volume(&self, volume_id: &str, instance_id: &str) -> Result<(), CloudError>;

    /// What deleting the stack has to remove: its instances and network,
    /// found by tag and by the ids in `known`.
    async fn teardown_inventory(
        &self,
        stack: &StackIdentity,
        known: Option<&NetworkStatus>,
    ) -> Result<TeardownInventory, CloudError>;

    /// Carries out teardown steps in order: skips what is already gone,
    /// waits out dependencies that are letting go, reports what it deleted.
    async fn destroy(&self, stack: &StackIdentity, steps: &[TeardownStep]) -> Result<DestroyReport, CloudError>;

    /// EC2 API calls made so far (for metrics and the steady-state budget).
    fn api_calls(&self) -> u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_tokens_are_deterministic_and_distinct() {
        let id = StackIdentity { name: "demo".into(), namespace: "default".into(), uid: "u1".into() };
        assert_eq!(id.client_token(Tier::Backend, 0), id.client_token(Tier::Backend, 0));
        assert_ne!(id.client_token(Tier::Backend, 0), id.client_token(Tier::Backend, 1));
        assert_ne!(id.client_token(Tier::Backend, 0), id.client_token(Tier::Frontend, 0));
        assert!(id.client_token(Tier::Backend, 0).len() <= 64);
    }

    #[test]
    fn a_token_tells_its_replacement_number() {
        let id = StackIdentity { name: "demo".into(), namespace: "default".into(), uid: "u1".into() };
        assert_eq!(replacement_in_token(&id.client_token(Tier::Frontend, 0)), Some(0));
        assert_eq!(replacement_in_token(&id.client_token(Tier::Frontend, 17)), Some(17));
        assert_eq!(replacement_in_token("vs-0123456789abcdef0123456789abcdef"), None, "the older form");
        assert_eq!(replacement_in_token("someone-else-3"), None);
    }

    #[test]
    fn owner_and_names_differ_between_stacks_named_alike() {
        let a = StackIdentity { name: "demo".into(), namespace: "default".into(), uid: "u1".into() };
        let b = StackIdentity { uid: "u2".into(), ..a.clone() };
        assert_eq!(a.tag_value(), b.tag_value());
        assert_ne!(a.owner(), b.owner());
        assert_ne!(a.resource_name(), b.resource_name());
        assert!(a.resource_name().starts_with("votingstack-default-demo-"));
        assert_eq!(a.resource_name(), a.clone().resource_name());
        assert_ne!(a.client_token(Tier::Backend, 0), b.client_token(Tier::Backend, 0));
    }

    #[test]
    fn no_capacity_is_transient_and_a_reused_token_says_what_happens_next() {
        assert_eq!(AwsErrorKind::from_code("InsufficientInstanceCapacity"), AwsErrorKind::Capacity);
        let e = CloudError::Capacity {
            tier: Tier::Backend,
            instance_type: "t3.small".into(),
            code: "InsufficientInstanceCapacity".into(),
            message: "no capacity in us-east-1a".into(),
        };
        assert!(e.to_string().contains("spec.instances.backend.instanceType"), "{e}");
        assert_eq!(AwsErrorKind::from_code("IdempotentParameterMismatch"), AwsErrorKind::Other);
        let e = CloudError::TokenReused { tier: Tier::Database, token: "vs-ab-1".into(), message: "m".into() };
        assert_eq!(e.kind(), AwsErrorKind::Other);
        assert!(e.to_string().contains("vs-ab-1") && e.to_string().contains("new replacement number"), "{e}");
    }

    #[test]
    fn aws_codes_are_classified() {
        assert_eq!(AwsErrorKind::from_code("InvalidAMIID.NotFound"), AwsErrorKind::InvalidParameter);
        assert_eq!(AwsErrorKind::from_code("InvalidVpcID.NotFound"), AwsErrorKind::NotFound);
        assert_eq!(AwsErrorKind::from_code("InvalidAMIID.Malformed"), AwsErrorKind::InvalidParameter);
        assert_eq!(AwsErrorKind::from_code("InvalidParameterValue"), AwsErrorKind::InvalidParameter);
        assert_eq!(AwsErrorKind::from_code("UnauthorizedOperation"), AwsErrorKind::Auth);
        assert_eq!(AwsErrorKind::from_code("RequestLimitExceeded"), AwsErrorKind::Throttled);
        assert_eq!(AwsErrorKind::from_code("VcpuLimitExceeded"), AwsErrorKind::Quota);
    }

    #[test]
    fn every_quota_of_what_the_operator_creates_is_a_quota() {
        for code in [
            "VpcLimitExceeded",
            "InternetGatewayLimitExceeded",
            "NatGatewayLimitExceeded",
            "AddressLimitExceeded",
            "SubnetLimitExceeded",
            "RouteTableLimitExceeded",
            "RouteLimitExceeded",
            "SecurityGroupLimitExceeded",
            "RulesPerSecurityGroupLimitExceeded",
            "SecurityGroupsPerInterfaceLimitExceeded",
            "NetworkInterfaceLimitExceeded",
            "InstanceLimitExceeded",
            "VcpuLimitExceeded",
            "VolumeLimitExceeded",
            "SnapshotLimitExceeded",
            "ResourceLimitExceeded",
        ] {
            assert_eq!(AwsErrorKind::from_code(code), AwsErrorKind::Quota, "{code}");
        }
        assert_eq!(AwsErrorKind::from_code("SnapshotCreationPerVolumeRateExceeded"), AwsErrorKind::Throttled);
        assert_eq!(AwsErrorKind::from_code("RequestLimitExceeded"), AwsErrorKind::Throttled);
    }

    #[test]
    fn a_quota_error_names_the_quota_and_how_to_raise_it() {
        let api = |code: &str| CloudError::Api {
            operation: "CreateNatGateway",
            code: code.into(),
            message: "The maximum number of NAT gateways has been reached.".into(),
            kind: AwsErrorKind::from_code(code),
        };
        let nat = api("NatGatewayLimitExceeded").to_string();
        assert!(nat.contains("NAT gateways per Availability Zone\", default 5"), "{nat}");
        assert!(nat.contains("request-service-quota-increase --service-code vpc"), "{nat}");
        assert!(nat.contains("Service Quotas console"), "{nat}");
        assert!(nat.contains("spec.network.vpcId"), "{nat}");
        let eip = api("AddressLimitExceeded").to_string();
        assert!(eip.contains("EC2-VPC Elastic IPs") && eip.contains("--service-code ec2"), "{eip}");
        let vcpu = api("VcpuLimitExceeded").to_string();
        assert!(vcpu.contains("--service-code ec2") && !vcpu.contains("vpcId"), "{vcpu}");
        let other = api("ResourceLimitExceeded").to_string();
        assert!(other.contains("Service Quotas console"), "{other}");
        let plain = api("InvalidParameterValue").to_string();
        assert!(!plain.contains("quota"), "{plain}");
    }

    #[test]
    fn a_key_pair_imported_moments_ago_is_not_the_users_error() {
        assert_eq!(AwsErrorKind::from_code("InvalidKeyPair.NotFound"), AwsErrorKind::NotFound);
        assert_eq!(AwsErrorKind::from_code("InvalidKeyPair.Duplicate"), AwsErrorKind::Other);
        assert_eq!(AwsErrorKind::from_code("InvalidKeyPair.Format"), AwsErrorKind::InvalidParameter);
    }

    #[test]
    fn installation_names_are_dns_labels() {
        assert_eq!(Installation::default().as_str(), "default");
        for good in ["default", "a", "team-a", "prod-eu-1", "0", &"x".repeat(63)] {
            assert_eq!(Installation::parse(good).map(|i| i.to_string()).as_deref(), Ok(good));
        }
        for (bad, problem) in [
            ("", "empty"),
            (&"x".repeat(64) as &str, "longer than 63"),
            ("Team-A", "uppercase"),
            ("team_a", "other than a-z"),
            ("team a", "other than a-z"),
            ("team/a", "other than a-z"),
            ("équipe", "other than a-z"),
            ("-team", "'-'"),
            ("team-", "'-'"),
        ] {
            let err = Installation::parse(bad).expect_err(bad);
            let message = err.to_string();
            assert!(message.contains(problem), "{bad:?}: {message}");
            assert!(message.contains("--installation") && message.contains("63 characters"), "{message}");
        }
        assert_eq!("team-b".parse::<Installation>().map(|i| i.as_str().to_owned()), Ok("team-b".to_owned()));
    }
}
