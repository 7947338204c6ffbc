//! What observation found: the EC2 side and each host.

use std::net::Ipv4Addr;

use crate::api::Tier;

use super::network::NetworkObservation;
use super::volume::{AttachedVolume, AttachmentState, ObservedVolume, DATA_DEVICE};

/// EC2 instance states the engine tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceState {
    Pending,
    Running,
    Stopping,
    Stopped,
    ShuttingDown,
    Terminated,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::ShuttingDown => "shutting-down",
            InstanceState::Terminated => "terminated",
        }
    }

    pub fn parse(s: &str) -> Option<InstanceState> {
        Some(match s {
            "pending" => InstanceState::Pending,
            "running" => InstanceState::Running,
            "stopping" => InstanceState::Stopping,
            "stopped" => InstanceState::Stopped,
            "shutting-down" => InstanceState::ShuttingDown,
            "terminated" => InstanceState::Terminated,
            _ => return None,
        })
    }

    /// Pending, running, stopping or stopped: the instance still exists.
    pub fn is_alive(self) -> bool {
        !matches!(self, InstanceState::ShuttingDown | InstanceState::Terminated)
    }
}

/// One EC2 instance carrying the stack's tags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedInstance {
    pub id: String,
    /// From the tier tag; None when the tag is missing or unknown.
    pub tier: Option<Tier>,
    pub state: InstanceState,
    pub private_ip: Option<Ipv4Addr>,
    pub public_ip: Option<Ipv4Addr>,
    pub ami: String,
    pub instance_type: String,
    /// RFC 3339 launch time; the oldest of duplicates is kept.
    pub launch_time: String,
    /// The RunInstances ClientToken it was launched with, if any.
    pub client_token: Option<String>,
    /// Its availability zone.
    pub zone: Option<String>,
    /// Its EBS volumes beyond the root device, from its block device
    /// mappings.
    pub volumes: Vec<AttachedVolume>,
}

impl ObservedInstance {
    /// The volume attached at [`DATA_DEVICE`], in any attachment state.
    pub fn data_device(&self) -> Option<&AttachedVolume> {
        self.volumes.iter().find(|v| v.device == DATA_DEVICE && v.status != AttachmentState::Detached)
    }
}

/// The EC2 side of the stack.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedInfra {
    /// The network: trusted from status, or looked up by tag.
    pub network: NetworkObservation,
    pub instances: Vec<ObservedInstance>,
    /// The stack's data volumes as DescribeVolumes listed them; None when
    /// they were not looked up (in steady state the database instance's
    /// block device mappings show its volume attached, and nothing is asked).
    pub data_volumes: Option<Vec<ObservedVolume>>,
}

impl ObservedInfra {
    /// Live instances of a tier, oldest first.
    pub fn live(&self, tier: Tier) -> Vec<&ObservedInstance> {
        let mut v: Vec<_> = self.instances.iter().filter(|i| i.tier == Some(tier) && i.state.is_alive()).collect();
        v.sort_by(|a, b| a.launch_time.cmp(&b.launch_time).then(a.id.cmp(&b.id)));
        v
    }
}

/// Docker daemon state on a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DockerState {
    Running,
    /// No docker binary on the host.
    Missing,
    /// Installed, but the daemon does not answer.
    Down(String),
}

/// One container with the stack's labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedContainer {
    pub name: String,
    pub image: String,
    /// running, exited, created, restarting, paused, dead
    pub state: String,
    pub config_hash: Option<String>,
    /// Digest of the image it runs (from its label), when known.
    pub image_digest: Option<String>,
    /// Exit code when not running.
    pub exit_code: Option<i64>,
}

impl ObservedContainer {
    pub fn is_running(&self) -> bool {
        self.state == "running" || self.state == "restarting"
    }
}

/// What one SSH round trip found on a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedHost {
    pub docker: DockerState,
    pub containers: Vec<ObservedContainer>,
    /// Each container's health, as its Docker HEALTHCHECK (redis PING,
    /// postgres SELECT 1) reports it in the one container list, by
    /// container name: Ok or the failure text.
    pub probes: Vec<(String, Result<(), String>)>,
    /// SHA256 fingerprint of the host key the host presented.
    pub host_key_fingerprint: String,
}

impl ObservedHost {
    pub fn container(&self, name: &str) -> Option<&ObservedContainer> {
        self.containers.iter().find(|c| c.name == name)
    }

    pub fn probe(&self, name: &str) -> Option<&Result<(), String>> {
        self.probes.iter().find(|(n, _)| n == name).map(|(_, r)| r)
    }
}
