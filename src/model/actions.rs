//! The steps a plan holds: [`InfraAction`]s for EC2 and [`HostAction`]s for
//! one host each. Every action carries what its executor needs; no executor
//! reads the spec again.

use std::fmt;

use crate::api::Tier;

use super::desired::DesiredContainer;
use super::network::{NetworkStep, SubnetRole};
use super::snapshot::SnapshotAction;
use super::volume::{DataVolume, VolumeStep, DATA_DEVICE};

/// Why an instance is terminated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TerminateReason {
    /// Another live instance already serves the tier.
    Duplicate,
    /// Carries the stack's tags but no known tier.
    UnknownTier,
    /// AMI or type differs from the spec and replacement is allowed.
    Replaced(String),
}

impl fmt::Display for TerminateReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TerminateReason::Duplicate => f.write_str("duplicate of the tier's instance"),
            TerminateReason::UnknownTier => f.write_str("carries the stack's tags but no tier"),
            TerminateReason::Replaced(why) => write!(f, "replaced: {why}"),
        }
    }
}

/// Why a container is (re)created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreateReason {
    Missing,
    /// The running container's config hash differs (old hash, or None when unlabelled).
    ConfigChanged(Option<String>),
}

/// Everything RunInstances needs for one tier's instance, as the plan decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceLaunch {
    pub tier: Tier,
    /// The AMI: the spec's, else the stack's resolved Ubuntu image; None
    /// only in a plan made without EC2 before that image was looked up.
    pub ami: Option<String>,
    pub instance_type: String,
    /// How many instances of the tier came before: part of the ClientToken.
    pub replacement: u32,
    /// Whether the instance gets a public IPv4 address.
    pub public_ip: bool,
    /// The subnet it is launched into: public for the frontend, private for
    /// the backend and database.
    pub subnet: SubnetRole,
    /// KMS key that encrypts its root volume; None: the account's default
    /// EBS key.
    pub kms_key_id: Option<String>,
    /// Set by the engine just before it launches (the plan never holds it):
    /// the user data carrying the instance's SSH host key.
    pub user_data: Option<UserData>,
    /// Set by the engine once EC2 answered (the plan never holds it): the
    /// id of the instance launched, as the reconcile reports what it did.
    pub launched: Option<String>,
}

/// How a plan made before the stack's Ubuntu image was looked up names it.
pub const UNRESOLVED_AMI: &str = "the newest Ubuntu 24.04 LTS";

impl InstanceLaunch {
    /// The AMI as the plan shows it.
    pub fn ami_shown(&self) -> &str {
        self.ami.as_deref().unwrap_or(UNRESOLVED_AMI)
    }
}

/// EC2 user data. It holds key material: Debug shows its size only.
#[derive(Clone, PartialEq, Eq)]
pub struct UserData(pub String);

impl fmt::Debug for UserData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserData({} bytes)", self.0.len())
    }
}

/// One EC2 step of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InfraAction {
    /// One change to the VPC, subnet, gateway, route table, security groups or key pair.
    Network(NetworkStep),
    LaunchInstance(InstanceLaunch),
    StartInstance {
        tier: Tier,
        instance_id: String,
    },
    TerminateInstance {
        tier: Option<Tier>,
        instance_id: String,
        reason: TerminateReason,
    },
    /// A step for the database's data volume (create, attach, detach).
    DataVolume(VolumeStep),
    /// A snapshot of the data volume taken, found, completed or deleted.
    Snapshot(SnapshotAction),
}

/// One step on a host. A plan holds a handful of them, so the size of the
/// container variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostAction {
    InstallDocker {
        tier: Tier,
    },
    StartDocker {
        tier: Tier,
    },
    /// Finds the data volume by its id, formats it only when blank, mounts
    /// it by UUID: before the container that keeps its data there starts.
    MountVolume {
        tier: Tier,
        volume: DataVolume,
    },
    CreateContainer {
        container: DesiredContainer,
        reason: CreateReason,
    },
    StartContainer {
        tier: Tier,
        name: String,
        state: String,
    },
    RemoveContainer {
        tier: Tier,
        name: String,
    },
    /// Stops the worker between two votes and keeps it stopped: redis
    /// writes are paused (the worker then waits in its LPOP, holding no
    /// vote), a write in flight gets a moment to finish, the container is
    /// stopped, and redis writes resume. `why` is the hold's reason.
    HoldWorker {
        tier: Tier,
        name: String,
        why: String,
    },
    /// Brings `container` up beside the containers of its role in
    /// `replaces` (created unless it exists), and once it answers HTTP 200
    /// on the Docker network switches the proxy to it, drains and removes
    /// the replaced ones (`updateStrategy: ZeroDowntime`). Without a running
    /// proxy the replaced ones are removed once it runs.
    RollContainer {
        container: DesiredContainer,
        replaces: Vec<String>,
    },
}

impl HostAction {
    /// The host the action runs on.
    pub fn tier(&self) -> Tier {
        match self {
            HostAction::InstallDocker { tier }
            | HostAction::StartDocker { tier }
            | HostAction::MountVolume { tier, .. } => *tier,
            HostAction::CreateContainer { container, .. } | HostAction::RollContainer { container, .. } => {
                container.tier
            }
            HostAction::StartContainer { tier, .. }
            | HostAction::RemoveContainer { tier, .. }
            | HostAction::HoldWorker { tier, .. } => *tier,
        }
    }
}

/// A step of a whole plan, as `votingstack plan` lists it and as a
/// reconcile reports what it did.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Infra(InfraAction),
    Host(HostAction),
}

impl From<InfraAction> for Action {
    fn from(a: InfraAction) -> Action {
        Action::Infra(a)
    }
}

impl From<HostAction> for Action {
    fn from(a: HostAction) -> Action {
        Action::Host(a)
    }
}

impl fmt::Display for InfraAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InfraAction::Network(step) => step.fmt(f),
            InfraAction::LaunchInstance(
                launch @ InstanceLaunch { tier, instance_type, replacement, public_ip, .. },
            ) => {
                let ami = launch.ami_shown();
                write!(f, "+ launch {tier} instance ({ami}, {instance_type}")?;
                if *public_ip {
                    f.write_str(", public IP")?;
                }
                f.write_str(")")?;
                if *replacement > 0 {
                    write!(f, ", replacement #{replacement}")?;
                }
                Ok(())
            }
            InfraAction::StartInstance { tier, instance_id } => {
                write!(f, "~ start {tier} instance {instance_id} (stopped)")
            }
            InfraAction::TerminateInstance { tier, instance_id, reason } => match tier {
                Some(t) => write!(f, "- terminate {t} instance {instance_id} ({reason})"),
                None => write!(f, "- terminate instance {instance_id} ({reason})"),
            },
            InfraAction::DataVolume(step) => match step {
                VolumeStep::Create { .. } => write!(f, "+ {step}"),
                VolumeStep::Detach { .. } => write!(f, "- {step}"),
                _ => write!(f, "~ {step}"),
            },
            InfraAction::Snapshot(action) => action.fmt(f),
        }
    }
}

impl fmt::Display for HostAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostAction::InstallDocker { tier } => write!(f, "+ install Docker on the {tier} host"),
            HostAction::StartDocker { tier } => write!(f, "~ start Docker on the {tier} host"),
            HostAction::MountVolume { tier, volume } => write!(
                f,
                "~ mount data volume {} ({DATA_DEVICE}) at {} on the {tier} host",
                volume.volume_id, volume.mount
            ),
            HostAction::CreateContainer { container, reason } => {
                let hash = container.config_hash().unwrap_or_else(|| "(known after apply)".into());
                match reason {
                    CreateReason::Missing => write!(
                        f,
                        "+ create {} container {} ({}, config {hash})",
                        container.tier, container.name, container.image
                    ),
                    CreateReason::ConfigChanged(old) => write!(
                        f,
                        "± recreate {} container {} (config {} → {hash})",
                        container.tier,
                        container.name,
                        old.as_deref().unwrap_or("unlabelled")
                    ),
                }
            }
            HostAction::StartContainer { tier, name, state } => write!(f, "~ start {tier} container {name} ({state})"),
            HostAction::RemoveContainer { tier, name } => {
                write!(f, "- remove {tier} container {name} (not part of the stack)")
            }
            HostAction::HoldWorker { tier, name, why } => {
                write!(f, "~ stop {tier} container {name} between votes: {why}")
            }
            HostAction::RollContainer { container, replaces } if replaces.is_empty() => write!(
                f,
                "+ create {} container {} ({}) and switch the proxy to it",
                container.tier, container.name, container.image
            ),
            HostAction::RollContainer { container, replaces } => write!(
                f,
                "± roll out {} container {} ({}) beside {}, switch the proxy to it, drain and remove the old",
                container.tier,
                container.name,
                container.image,
                replaces.join(", ")
            ),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Infra(a) => a.fmt(f),
            Action::Host(a) => a.fmt(f),
        }
    }
}
