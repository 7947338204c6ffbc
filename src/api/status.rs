//! What the operator reports back: `.status` of a VotingStack.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions::Condition;
use super::spec::Tier;

/// Observed state of a VotingStack.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct VotingStackStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Summary of where the stack is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// InfrastructureReady, DatabaseReady, BackendReady, FrontendReady,
    /// SmokeTestPassed and the aggregate Ready. A list map keyed by `type`:
    /// at most one condition per type, merged per entry by server-side apply.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// AWS ids of the network the operator created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkStatus>,
    /// Image reference → the digest it resolved to when the stack first ran
    /// it. Every host runs that digest, replacement hosts included; a new
    /// digest behind the same tag is rolled out only when the reference in
    /// the spec changes (see docs/reference.md, "Images and digests").
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<String, String>,
    /// The image tiers without an AMI in the spec run: the newest Ubuntu
    /// 24.04 LTS amd64 image Canonical published in the region when the
    /// stack first needed one. Kept, so a newer image never moves under a
    /// running stack; set `spec.instances.ami` to choose another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_ami: Option<ResolvedAmi>,
    /// Per-tier host and container state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiers: Option<TiersStatus>,
    /// The EBS volume holding postgres's data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_volume: Option<DataVolumeStatus>,
    /// Snapshots of the data volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups: Option<BackupsStatus>,
    /// URL of the vote page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vote_url: Option<String>,
    /// URL of the result page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_url: Option<String>,
    /// When the last reconcile finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reconcile_time: Option<String>,
    /// How long the last reconcile took, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reconcile_duration_ms: Option<u64>,
}

/// The image an unset `spec.instances.ami` stands for.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedAmi {
    /// The AMI id.
    pub image_id: String,
    /// Its name, such as ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20261120.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// Summary of the stack's life cycle.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Accepted, nothing created yet.
    Pending,
    /// Network and instances are being created.
    Provisioning,
    /// Instances run; containers are being deployed or checked.
    Deploying,
    /// Every tier is ready and the smoke test passed.
    Ready,
    /// Something that worked is broken and being repaired.
    Degraded,
    /// The operator cannot go on until a user acts (see the Ready condition).
    Failed,
    /// `spec.paused` is set.
    Paused,
    /// The stack is being torn down.
    Deleting,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Provisioning => "Provisioning",
            Phase::Deploying => "Deploying",
            Phase::Ready => "Ready",
            Phase::Degraded => "Degraded",
            Phase::Failed => "Failed",
            Phase::Paused => "Paused",
            Phase::Deleting => "Deleting",
        }
    }
}

/// AWS ids of the stack's network, kept so a reconcile need not look them up.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStatus {
    /// True when the VPC and subnets are the user's (`spec.network.vpcId`):
    /// the operator created only the security groups and the key pair here,
    /// and deletes nothing else. Such a network has no gateway, route table
    /// or NAT ids of the stack.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub provided: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    /// The public subnet (frontend host, NAT gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
    /// The private subnet (backend and database hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_subnet_id: Option<String>,
    /// Availability zone of the subnets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internet_gateway_id: Option<String>,
    /// Route table of the public subnet (default route to the internet gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_table_id: Option<String>,
    /// Route table of the private subnet (default route to the NAT gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_route_table_id: Option<String>,
    /// Allocation id of the NAT gateway's Elastic IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elastic_ip_allocation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_gateway_id: Option<String>,
    /// `available` once the NAT gateway is available and the private subnet
    /// routes to it; `pending` until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_gateway_state: Option<String>,
    /// Security group id per tier.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub security_groups: BTreeMap<Tier, String>,
    /// Name of the imported EC2 key pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pair_name: Option<String>,
}

/// Status of the three tiers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TiersStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend: Option<TierStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<TierStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<TierStatus>,
}

impl TiersStatus {
    pub fn get(&self, tier: Tier) -> Option<&TierStatus> {
        match tier {
            Tier::Frontend => self.frontend.as_ref(),
            Tier::Backend => self.backend.as_ref(),
            Tier::Database => self.database.as_ref(),
        }
    }

    pub fn slot(&mut self, tier: Tier) -> &mut Option<TierStatus> {
        match tier {
            Tier::Frontend => &mut self.frontend,
            Tier::Backend => &mut self.backend,
            Tier::Database => &mut self.database,
        }
    }
}

/// One host and its containers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TierStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// EC2 instance state (pending, running, stopped, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    /// SHA256 fingerprint of the host key pinned for `instanceId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key_fingerprint: Option<String>,
    /// When the key was first seen (RFC 3339). During the first minutes a
    /// new instance's address may still answer from its predecessor, so the
    /// pin is held firmly only once this is older than two minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key_pinned_at: Option<String>,
    /// How many times this tier's instance was replaced (part of the EC2 ClientToken).
    #[serde(default)]
    pub replacements: u32,
    /// How many of this tier's instances EC2 terminated at launch (see
    /// `lastLaunchFailure`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub launch_failures: u32,
    /// The last instance of this tier that EC2 terminated at launch. While
    /// it was recorded for the stack's current generation the tier is not
    /// launched again: any change to the spec (such as setting
    /// `spec.instances.kmsKeyId`) allows one more launch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_launch_failure: Option<LaunchFailureStatus>,
    /// The stack's containers on this host.
    #[serde(default)]
    pub containers: Vec<ContainerStatus>,
}

/// An instance EC2 terminated at launch, and why.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LaunchFailureStatus {
    pub instance_id: String,
    /// EC2's StateReason code, such as `Client.InternalError`.
    pub code: String,
    /// EC2's StateReason message.
    #[serde(default)]
    pub message: String,
    /// The `metadata.generation` the failure was seen at: no launch of the
    /// tier follows until the generation moves on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// When the operator saw the instance terminated (RFC 3339).
    #[serde(default)]
    pub seen_at: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The database's data volume.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    /// Size of the volume in GiB (spelled `sizeGib` before; still read).
    #[serde(rename = "sizeGiB", alias = "sizeGib", default, skip_serializing_if = "Option::is_none")]
    pub size_gib: Option<i32>,
    /// The instance it is attached to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_to: Option<String>,
    /// How many data volumes the stack has created: part of the
    /// CreateVolume ClientToken, so a volume deleted by hand is replaced by
    /// a new one rather than answered with the old id.
    #[serde(default)]
    pub created: u32,
    /// When EC2 created the volume (RFC 3339; when this stack created it
    /// and EC2 did not say, when it asked). A volume created less than a
    /// minute ago that EC2 does not list yet is waited for, not replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<String>,
    /// The `votingstack.dev/formatted` tag the operator put on the volume
    /// once postgres ran on a filesystem on it: from then on the host
    /// never formats it, whatever it reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formatted: Option<String>,
    /// True once the stack was deleted with `deletionPolicy: Retain`: the
    /// volume and its data were kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retained: bool,
}

/// Snapshots of the data volume (see docs/operations.md, "Backups and restore").
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupsStatus {
    /// The latest completed snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot_id: Option<String>,
    /// When EC2 took it (RFC 3339): the data is as of this moment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot_time: Option<String>,
    /// How many of the stack's completed snapshots are kept (at most
    /// `spec.database.backups.keep`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<u32>,
    /// A snapshot taken and not yet completed: looked at on each reconcile
    /// until it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_snapshot_id: Option<String>,
    /// When that snapshot was taken or found (RFC 3339): one EC2 still does
    /// not know ten minutes later (deleted by hand) is given up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_since: Option<String>,
    /// The occurrence of the schedule last handled (RFC 3339): the next
    /// snapshot is due at the schedule's first occurrence after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scheduled: Option<String>,
    /// The value of the `votingstack.dev/snapshot-request` annotation last
    /// handled: a new value takes one snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request: Option<String>,
    /// The postgres image a snapshot was taken for before postgres moved
    /// to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_upgrade: Option<String>,
    /// Why the last snapshot failed (reason `SnapshotFailed`); cleared by
    /// the next one that completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// One container on a host.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: String,
    pub image: String,
    /// Docker state: running, exited, created, restarting, ...
    pub state: String,
    /// The config hash label the container carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// Digest of the image the container runs (`sha256:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
}
