//! The `VotingStack` custom resource: its spec, as users write it.
//!
//! Every doc comment here becomes a description in `crds/votingstack.yaml`.

use std::collections::BTreeMap;
use std::fmt;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::VotingStackStatus;

/// Regular expression for an IPv4 CIDR block such as `10.42.0.0/16`.
pub const CIDR_PATTERN: &str = r"^([0-9]{1,3}\.){3}[0-9]{1,3}/([0-9]|[12][0-9]|3[0-2])$";

/// Desired state of one deployment of the voting app on EC2: three hosts
/// (frontend, backend, database), their network, and the containers on them.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "votingstack.dev",
    version = "v1alpha1",
    kind = "VotingStack",
    plural = "votingstacks",
    shortname = "vstack",
    category = "votingstack",
    namespaced,
    doc = "A three-tier voting app deployment on EC2, kept in shape by the votingstack operator. The CEL validation rules use the CIDR library and need Kubernetes 1.34 or later (the oldest release the tests run against).",
    annotation("votingstack.dev/minimum-kubernetes-version", "1.34"),
    // Argo CD: never prune or delete the CRD with the operator's Application
    // (that would delete every VotingStack while no operator is left to run
    // its finalizer), and apply it before the operator's other resources.
    annotation("argocd.argoproj.io/sync-options", "Prune=false,Delete=false"),
    annotation("argocd.argoproj.io/sync-wave", "-1"),
    status = "VotingStackStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Frontend","type":"string","jsonPath":".status.conditions[?(@.type==\"FrontendReady\")].reason"}"#,
    printcolumn = r#"{"name":"Backend","type":"string","jsonPath":".status.conditions[?(@.type==\"BackendReady\")].reason"}"#,
    printcolumn = r#"{"name":"Database","type":"string","jsonPath":".status.conditions[?(@.type==\"DatabaseReady\")].reason"}"#,
    printcolumn = r#"{"name":"Vote URL","type":"string","jsonPath":".status.voteUrl"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VotingStackSpec {
    /// Where the stack lives in AWS.
    #[serde(default)]
    pub aws: AwsSpec,
    /// The VPC, subnet and who may reach the hosts.
    pub network: NetworkSpec,
    /// The EC2 instances, one per tier.
    #[serde(default)]
    pub instances: InstancesSpec,
    /// How the operator reaches the hosts over SSH.
    pub ssh: SshSpec,
    /// The voting app itself: options, images, ports.
    #[serde(default)]
    pub app: AppSpec,
    /// Where postgres keeps its data: an EBS volume of its own.
    #[serde(default)]
    pub database: DatabaseSpec,
    /// When true the operator observes and reports but changes nothing.
    #[serde(default)]
    pub paused: bool,
    /// What happens to the AWS resources when the VotingStack is deleted
    /// (`Snapshot` by default: a final snapshot of the data volume is kept).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// AWS location of the stack. Immutable: the stack's resources live in one
/// region behind one endpoint, and moving would strand them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.endpoint) == has(oldSelf.endpoint) && (!has(self.endpoint) || self.endpoint == oldSelf.endpoint)").message("endpoint is immutable; create a new VotingStack instead"))]
pub struct AwsSpec {
    /// AWS region, for example `eu-west-1`. Immutable.
    #[serde(default = "default_region")]
    #[schemars(length(min = 1))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("region is immutable; create a new VotingStack instead"))]
    pub region: String,
    /// EC2 endpoint URL override (for EC2-compatible endpoints). When unset the
    /// standard AWS_ENDPOINT_URL_EC2 / AWS_ENDPOINT_URL variables apply. Immutable
    /// (neither set, changed nor removed after creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

impl Default for AwsSpec {
    fn default() -> Self {
        Self { region: default_region(), endpoint: None }
    }
}

/// Which address of a host the operator connects to and publishes in URLs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConnectVia {
    /// The frontend's public IP (private tiers through the frontend when
    /// `ssh.jumpThroughFrontend` is set). For operators outside the VPC.
    #[default]
    PublicIp,
    /// Private IPs only. For operators running inside the VPC or a peered network.
    PrivateIp,
}

/// The stack's network.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!isCIDR(self.vpcCidr) || !isCIDR(self.subnetCidr) || cidr(self.vpcCidr).containsCIDR(self.subnetCidr)").message("subnetCidr must lie inside vpcCidr"))]
#[x_kube(validation = Rule::new("!has(self.privateSubnetCidr) || !isCIDR(self.vpcCidr) || !isCIDR(self.privateSubnetCidr) || cidr(self.vpcCidr).containsCIDR(self.privateSubnetCidr)").message("privateSubnetCidr must lie inside vpcCidr"))]
#[x_kube(validation = Rule::new("!has(self.privateSubnetCidr) || !isCIDR(self.subnetCidr) || !isCIDR(self.privateSubnetCidr) || !(cidr(self.subnetCidr).containsCIDR(self.privateSubnetCidr) || cidr(self.privateSubnetCidr).containsCIDR(self.subnetCidr))").message("privateSubnetCidr must not overlap subnetCidr"))]
#[x_kube(validation = Rule::new("has(self.privateSubnetCidr) == has(oldSelf.privateSubnetCidr) && (!has(self.privateSubnetCidr) || self.privateSubnetCidr == oldSelf.privateSubnetCidr)").message("privateSubnetCidr is immutable; create a new VotingStack instead"))]
#[x_kube(validation = Rule::new("has(self.vpcId) == has(self.publicSubnetId) && has(self.vpcId) == has(self.privateSubnetId)").message("vpcId, publicSubnetId and privateSubnetId go together: set all three to use your own network, or none"))]
#[x_kube(validation = Rule::new("!has(self.vpcId) || (!has(self.availabilityZone) && !has(self.privateSubnetCidr))").message("with vpcId the zone and blocks are those of your subnets: leave availabilityZone and privateSubnetCidr unset"))]
#[x_kube(validation = Rule::new("has(self.vpcId) == has(oldSelf.vpcId) && (!has(self.vpcId) || self.vpcId == oldSelf.vpcId)").message("vpcId is immutable; create a new VotingStack instead"))]
#[x_kube(validation = Rule::new("has(self.publicSubnetId) == has(oldSelf.publicSubnetId) && (!has(self.publicSubnetId) || self.publicSubnetId == oldSelf.publicSubnetId)").message("publicSubnetId is immutable; create a new VotingStack instead"))]
#[x_kube(validation = Rule::new("has(self.privateSubnetId) == has(oldSelf.privateSubnetId) && (!has(self.privateSubnetId) || self.privateSubnetId == oldSelf.privateSubnetId)").message("privateSubnetId is immutable; create a new VotingStack instead"))]
pub struct NetworkSpec {
    /// A VPC of yours to run the stack in (bring your own network), with
    /// `publicSubnetId` and `privateSubnetId`: the operator then creates
    /// only the stack's security groups (in this VPC), key pair, instances
    /// and data volume, and never modifies or deletes the VPC, its subnets,
    /// route tables or gateways. `vpcCidr`, `subnetCidr` and `egress`'s
    /// NAT gateway are then not created; `egress` says whether the private
    /// subnet must route to the internet. The way to run many stacks in one
    /// account: the VPC, internet gateway, NAT gateway and Elastic IP quotas
    /// are shared. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^vpc-[0-9a-f]{8,17}$"))]
    pub vpc_id: Option<String>,
    /// With `vpcId`: a subnet of that VPC for the frontend host, whose route
    /// table sends `0.0.0.0/0` to an internet gateway (the host gets a
    /// public IP). Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^subnet-[0-9a-f]{8,17}$"))]
    pub public_subnet_id: Option<String>,
    /// With `vpcId`: a subnet of that VPC for the backend and database
    /// hosts (no public IPs). With `egress: NatGateway` its route table must
    /// send `0.0.0.0/0` somewhere (your NAT gateway, a transit gateway, ...):
    /// the hosts pull their images through it. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^subnet-[0-9a-f]{8,17}$"))]
    pub private_subnet_id: Option<String>,
    /// CIDR block of the VPC. Immutable.
    #[serde(default = "default_vpc_cidr")]
    #[schemars(length(max = 18), regex(pattern = CIDR_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("vpcCidr is immutable; create a new VotingStack instead"))]
    pub vpc_cidr: String,
    /// CIDR block of the public subnet: the frontend host and the NAT gateway,
    /// routed to the internet gateway; inside `vpcCidr`. Immutable.
    #[serde(default = "default_subnet_cidr")]
    #[schemars(length(max = 18), regex(pattern = CIDR_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("subnetCidr is immutable; create a new VotingStack instead"))]
    pub subnet_cidr: String,
    /// CIDR block of the private subnet: the backend and database hosts, without
    /// public IPs, routed to the NAT gateway. Inside `vpcCidr`, not overlapping
    /// `subnetCidr`. When unset: the block of the same size right after
    /// `subnetCidr` (10.42.2.0/24 for 10.42.1.0/24). Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 18), regex(pattern = CIDR_PATTERN))]
    pub private_subnet_cidr: Option<String>,
    /// How the private subnet reaches the internet (image pulls, packages).
    /// Immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("egress is immutable; create a new VotingStack instead"))]
    pub egress: Egress,
    /// Availability zone of both subnets. When unset the operator picks,
    /// when it creates the network, one of the region's availability zones
    /// (never a Local or Wavelength Zone) that offers every instance type of
    /// the stack, by a stable hash of `namespace/name` so that stacks spread
    /// over the zones, and records it in `status.network.availabilityZone`.
    /// A stack never moves out of its recorded zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    /// Who may open SSH (port 22) to the hosts: the operator's egress addresses.
    #[schemars(length(min = 1, max = 50), inner(length(max = 18)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("every entry must be a CIDR block"))]
    pub ssh_ingress_cidrs: Vec<String>,
    /// Who may open the vote (80) and result (81) pages.
    #[serde(default = "default_web_cidrs")]
    #[schemars(length(max = 50), inner(length(max = 18)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("every entry must be a CIDR block"))]
    pub web_ingress_cidrs: Vec<String>,
    /// Which host address the operator uses for SSH, probes and the URLs.
    #[serde(default)]
    pub connect_via: ConnectVia,
}

/// A network the user brings (`spec.network.vpcId` and its two subnets):
/// used, looked at, never changed or deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvidedNetwork {
    pub vpc_id: String,
    pub public_subnet_id: String,
    pub private_subnet_id: String,
    /// `NatGateway`: the private subnet must route `0.0.0.0/0` somewhere.
    pub egress: Egress,
}

/// Outbound internet access of the private subnet.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Egress {
    /// A NAT gateway in the public subnet with an Elastic IP; the private
    /// subnet's default route points at it. AWS bills it by the hour (about
    /// $0.045 in us-east-1) plus per GB processed.
    #[default]
    NatGateway,
    /// No route to the internet from the private subnet: for stacks whose
    /// hosts get packages and images from a VPC endpoint or a mirror.
    None,
}

/// The three EC2 instances.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstancesSpec {
    /// AMI for every tier: a Debian or Ubuntu image (Docker is installed
    /// when missing). Unset, the newest Ubuntu 24.04 LTS amd64 image
    /// Canonical publishes in the region is used, looked up once and kept
    /// in `status.resolvedAmi` so it does not move under a running stack.
    /// Windows, Amazon Linux, RHEL and SUSE images are refused before any
    /// launch (`AwsInvalidParameter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^ami-[0-9a-f]{8,17}$"))]
    pub ami: Option<String>,
    /// Instance type for every tier.
    #[serde(default = "default_instance_type")]
    #[schemars(length(min = 1))]
    pub instance_type: String,
    /// Replace an instance whose AMI or type no longer matches the spec. When
    /// false such drift is only reported in InfrastructureReady.
    #[serde(default)]
    pub allow_replacement: bool,
    /// KMS key that encrypts the hosts' root volumes and the database's
    /// data volume: a key id, key ARN, alias (`alias/NAME`) or alias ARN.
    /// Unset, EC2 uses the account's default EBS encryption key. Set it
    /// when that default is a customer-managed key the operator may not use
    /// (instances then die at launch: `InstanceLaunchFailed`). It applies to
    /// volumes created after it is set or changed: instances launched from
    /// then on and a data volume created from then on; existing volumes
    /// keep the key they were encrypted with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 2048),
        regex(
            pattern = r"^(alias/[a-zA-Z0-9/_-]{1,256}|(mrk-[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})|arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:(key/(mrk-[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})|alias/[a-zA-Z0-9/_-]{1,256}))$"
        )
    )]
    pub kms_key_id: Option<String>,
    /// Overrides for the frontend host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend: Option<InstanceOverride>,
    /// Overrides for the backend host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<InstanceOverride>,
    /// Overrides for the database host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<InstanceOverride>,
}

/// Per-tier instance settings that win over the stack-wide ones.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceOverride {
    /// AMI for this tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^ami-[0-9a-f]{8,17}$"))]
    pub ami: Option<String>,
    /// Instance type for this tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
}

/// How host keys are trusted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum HostKeyPolicy {
    /// Trust the first key an instance presents and pin it in status; refuse
    /// any other key for that instance later.
    #[default]
    PinOnFirstUse,
    /// Trust only the fingerprints in `ssh.pinnedHostKeys`.
    Pinned,
}

/// SSH access to the hosts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.hostKeyPolicy != 'Pinned' || (has(self.pinnedHostKeys) && ['frontend', 'backend', 'database'].all(t, t in self.pinnedHostKeys))").message("hostKeyPolicy Pinned needs pinnedHostKeys for every tier: frontend, backend and database"))]
pub struct SshSpec {
    /// Login user on the AMI (`ubuntu` on Ubuntu, `admin` on Debian).
    #[serde(default = "default_ssh_user")]
    #[schemars(length(min = 1))]
    pub user: String,
    /// SSH port on the hosts.
    #[serde(default = "default_ssh_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Secret (same namespace) holding the OpenSSH private key. Its public half
    /// is imported as the EC2 key pair.
    pub private_key_secret_ref: SecretKeyRef,
    /// How host keys are trusted.
    #[serde(default)]
    pub host_key_policy: HostKeyPolicy,
    /// Tier name (frontend, backend, database) to the SHA256 fingerprint of the
    /// host key it must present, as printed by `ssh-keygen -lf`. Used with
    /// `hostKeyPolicy: Pinned`, which needs all three tiers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_host_keys: Option<BTreeMap<String, String>>,
    /// Reach the backend and database hosts through the frontend host.
    #[serde(default)]
    pub jump_through_frontend: bool,
    /// Seconds to wait for a TCP connection and the SSH handshake.
    #[serde(default = "default_connect_timeout")]
    #[schemars(range(min = 1, max = 300))]
    pub connect_timeout_seconds: u32,
    /// Seconds one remote command may run (image pulls included).
    #[serde(default = "default_command_timeout")]
    #[schemars(range(min = 5, max = 3600))]
    pub command_timeout_seconds: u32,
}

/// A key inside a Secret in the VotingStack's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key in the Secret's data.
    #[serde(default = "default_secret_key")]
    pub key: String,
}

/// The voting app.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.optionA != self.optionB").message("optionA and optionB must differ"))]
pub struct AppSpec {
    /// Label of the first option.
    #[serde(default = "default_option_a")]
    #[schemars(length(min = 1, max = 64))]
    pub option_a: String,
    /// Label of the second option.
    #[serde(default = "default_option_b")]
    #[schemars(length(min = 1, max = 64))]
    pub option_b: String,
    /// Container images of the five services.
    #[serde(default)]
    pub images: Images,
    /// When images are pulled.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    /// Published ports on the frontend host.
    #[serde(default)]
    pub ports: Ports,
    /// How a changed vote or result container is rolled out.
    #[serde(default)]
    pub update_strategy: UpdateStrategy,
}

impl Default for AppSpec {
    fn default() -> Self {
        Self {
            option_a: default_option_a(),
            option_b: default_option_b(),
            images: Images::default(),
            image_pull_policy: PullPolicy::default(),
            ports: Ports::default(),
            update_strategy: UpdateStrategy::default(),
        }
    }
}

/// How the frontend's vote and result containers are updated.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum UpdateStrategy {
    /// A proxy container (`images.proxy`) owns the published ports and
    /// forwards to the current vote and result containers, which publish
    /// none. A changed container is started beside the old one under a new
    /// name, checked to answer HTTP 200, switched in by a graceful reload
    /// of the proxy, and the old one is drained and removed: no request
    /// fails.
    #[default]
    ZeroDowntime,
    /// No proxy: vote and result publish the ports themselves, and a
    /// changed container is removed and then created again (the ports
    /// refuse connections in between, the pull included).
    Recreate,
}

/// Images of the five services and of the frontend's proxy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Images {
    /// The vote web app (frontend host).
    #[serde(default = "default_vote_image")]
    #[schemars(length(min = 1))]
    pub vote: String,
    /// The result web app (frontend host).
    #[serde(default = "default_result_image")]
    #[schemars(length(min = 1))]
    pub result: String,
    /// The worker moving votes from redis to postgres (backend host).
    #[serde(default = "default_worker_image")]
    #[schemars(length(min = 1))]
    pub worker: String,
    /// Redis (backend host).
    #[serde(default = "default_redis_image")]
    #[schemars(length(min = 1))]
    pub redis: String,
    /// Postgres (database host).
    #[serde(default = "default_postgres_image")]
    #[schemars(length(min = 1))]
    pub postgres: String,
    /// The proxy in front of vote and result with `updateStrategy:
    /// ZeroDowntime` (frontend host): an nginx image with `sh` and `wget`
    /// or `curl`, such as the official one.
    #[serde(default = "default_proxy_image")]
    #[schemars(length(min = 1))]
    pub proxy: String,
}

impl Default for Images {
    fn default() -> Self {
        Self {
            vote: default_vote_image(),
            result: default_result_image(),
            worker: default_worker_image(),
            redis: default_redis_image(),
            postgres: default_postgres_image(),
            proxy: default_proxy_image(),
        }
    }
}

/// When the hosts pull images.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// Pull on every container (re)creation.
    Always,
    /// Pull only when the host lacks the image.
    #[default]
    IfNotPresent,
    /// Never pull; the image must already be on the host.
    Never,
}

/// Published ports on the frontend host.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.vote != self.result").message("vote and result ports must differ"))]
pub struct Ports {
    /// Host port of the vote page.
    #[serde(default = "default_vote_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub vote: u16,
    /// Host port of the result page.
    #[serde(default = "default_result_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub result: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Self { vote: default_vote_port(), result: default_result_port() }
    }
}

/// The database's storage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.restoreFromSnapshot) == has(oldSelf.restoreFromSnapshot) && (!has(self.restoreFromSnapshot) || self.restoreFromSnapshot == oldSelf.restoreFromSnapshot)").message("restoreFromSnapshot is immutable: it applies only when the stack creates its data volume; create a new VotingStack instead"))]
pub struct DatabaseSpec {
    /// Size of the data volume (gp3, encrypted) in GiB, used when the
    /// volume is created. An existing volume keeps its size. Spelled
    /// `volumeSizeGib` before; that spelling is still read from manifest files.
    #[serde(rename = "volumeSizeGiB", alias = "volumeSizeGib", default = "default_volume_size_gib")]
    #[schemars(range(min = 1, max = 16384))]
    pub volume_size_gib: i32,
    /// Scheduled EBS snapshots of the data volume.
    #[serde(default)]
    pub backups: BackupsSpec,
    /// EBS snapshot (`snap-...`) the stack's data volume is created from,
    /// in the database instance's zone, at least as large as the snapshot.
    /// It applies only when the stack creates its data volume, so it is
    /// immutable: neither set, changed nor removed after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^snap-[0-9a-f]{8,32}$"))]
    pub restore_from_snapshot: Option<String>,
}

fn default_volume_size_gib() -> i32 {
    10
}

impl Default for DatabaseSpec {
    fn default() -> Self {
        Self {
            volume_size_gib: default_volume_size_gib(),
            backups: BackupsSpec::default(),
            restore_from_snapshot: None,
        }
    }
}

/// Scheduled snapshots of the data volume.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupsSpec {
    /// When to snapshot the data volume: a 5-field cron expression
    /// (minute hour day-of-month month day-of-week) in UTC. An empty
    /// string turns scheduled snapshots off.
    #[serde(default = "default_backup_schedule")]
    #[schemars(length(max = 128))]
    pub schedule: String,
    /// How many of the stack's completed snapshots to keep: older ones are
    /// deleted, oldest first (the final snapshot taken on delete is never
    /// deleted by the operator).
    #[serde(default = "default_backup_keep")]
    #[schemars(range(min = 1, max = 1000))]
    pub keep: u32,
}

fn default_backup_schedule() -> String {
    "0 3 * * *".into()
}

fn default_backup_keep() -> u32 {
    7
}

impl Default for BackupsSpec {
    fn default() -> Self {
        Self { schedule: default_backup_schedule(), keep: default_backup_keep() }
    }
}

/// What deletion of the VotingStack does to AWS.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Terminate the instances, take a final snapshot of the database's
    /// data volume and wait until it is completed, then delete the volume,
    /// the network and the key pair. The snapshots stay: they are the backup.
    #[default]
    Snapshot,
    /// Terminate the instances, then delete the database's data volume
    /// (without a final snapshot), the network and the key pair.
    Delete,
    /// Leave every AWS resource in place, the data volume included.
    Retain,
}

/// The three hosts, in deployment order.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// postgres
    Database,
    /// redis and worker
    Backend,
    /// vote and result
    Frontend,
}

impl Tier {
    /// Deployment order: database, then backend, then frontend.
    pub const ALL: [Tier; 3] = [Tier::Database, Tier::Backend, Tier::Frontend];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Database => "database",
            Tier::Backend => "backend",
            Tier::Frontend => "frontend",
        }
    }

    pub fn parse(s: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Only the frontend faces the internet: it alone gets a public IP.
    pub fn is_public(self) -> bool {
        self == Tier::Frontend
    }
}

impl VotingStackSpec {
    /// Whether the operator reaches the private tiers through the frontend
    /// host: when it connects over public IPs (the private tiers have none),
    /// or when `ssh.jumpThroughFrontend` asks for it. The security groups
    /// and the SSH side both follow this one rule.
    pub fn jumps_through_frontend(&self) -> bool {
        self.network.connect_via == ConnectVia::PublicIp || self.ssh.jump_through_frontend
    }
}

impl NetworkSpec {
    /// The network the user brings (`vpcId` with both subnets), None when
    /// the stack creates its own.
    pub fn provided(&self) -> Option<ProvidedNetwork> {
        Some(ProvidedNetwork {
            vpc_id: self.vpc_id.clone()?,
            public_subnet_id: self.public_subnet_id.clone()?,
            private_subnet_id: self.private_subnet_id.clone()?,
            egress: self.egress,
        })
    }

    /// The private subnet's CIDR block: `privateSubnetCidr`, else the block of
    /// the same size right after `subnetCidr`. None when neither parses or the
    /// next block would leave the IPv4 space.
    pub fn private_cidr(&self) -> Option<String> {
        if let Some(cidr) = &self.private_subnet_cidr {
            return Some(cidr.clone());
        }
        let public: ipnet::Ipv4Net = self.subnet_cidr.parse().ok()?;
        let size = 1u64 << (32 - u32::from(public.prefix_len()));
        let next = u64::from(u32::from(public.network())) + size;
        let next = u32::try_from(next).ok()?;
        let net = ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(next), public.prefix_len()).ok()?;
        Some(net.to_string())
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for InstancesSpec {
    fn default() -> Self {
        InstancesSpec {
            ami: None,
            instance_type: default_instance_type(),
            allow_replacement: false,
            kms_key_id: None,
            frontend: None,
            backend: None,
            database: None,
        }
    }
}

impl InstancesSpec {
    /// AMI the spec names for a tier, with its override applied; None when
    /// neither names one (the stack's resolved Ubuntu image is used, see
    /// [`crate::engine::ami`]).
    pub fn ami_for(&self, tier: Tier) -> Option<&str> {
        self.override_for(tier).and_then(|o| o.ami.as_deref()).or(self.ami.as_deref())
    }

    /// Instance type for a tier, with its override applied.
    pub fn instance_type_for(&self, tier: Tier) -> &str {
        self.override_for(tier).and_then(|o| o.instance_type.as_deref()).unwrap_or(&self.instance_type)
    }

    /// The tier's overrides, when the spec has any.
    pub fn override_for(&self, tier: Tier) -> Option<&InstanceOverride> {
        match tier {
            Tier::Frontend => self.frontend.as_ref(),
            Tier::Backend => self.backend.as_ref(),
            Tier::Database => self.database.as_ref(),
        }
    }
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_vpc_cidr() -> String {
    "10.42.0.0/16".into()
}
fn default_subnet_cidr() -> String {
    "10.42.1.0/24".into()
}
fn default_web_cidrs() -> Vec<String> {
    vec!["0.0.0.0/0".into()]
}
fn default_instance_type() -> String {
    "t3.small".into()
}
fn default_ssh_user() -> String {
    "ubuntu".into()
}
fn default_ssh_port() -> u16 {
    22
}
fn default_secret_key() -> String {
    "ssh-privatekey".into()
}
fn default_connect_timeout() -> u32 {
    10
}
fn default_command_timeout() -> u32 {
    600
}
fn default_option_a() -> String {
    "Cats".into()
}
fn default_option_b() -> String {
    "Dogs".into()
}
fn default_vote_image() -> String {
    "dockersamples/examplevotingapp_vote".into()
}
fn default_result_image() -> String {
    "dockersamples/examplevotingapp_result".into()
}
fn default_worker_image() -> String {
    "dockersamples/examplevotingapp_worker".into()
}
fn default_redis_image() -> String {
    "redis:alpine".into()
}
fn default_postgres_image() -> String {
    "postgres:15-alpine".into()
}
fn default_proxy_image() -> String {
    "nginx:1.27-alpine".into()
}
fn default_vote_port() -> u16 {
    80
}
fn default_result_port() -> u16 {
    81
}
