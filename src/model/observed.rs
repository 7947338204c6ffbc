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
    /// Why EC2 last changed its state, when EC2 says (its StateReason).
    pub state_reason: Option<StateReason>,
}

/// EC2's StateReason of an instance: a code such as
/// `Client.InternalError` and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateReason {
    pub code: String,
    pub message: String,
}

/// `Client.*` codes of a shutdown someone asked for (a user, the instance
/// itself, a hibernation), or of an instance terminated while an image was
/// made of it: they say nothing about the launch.
const ASKED_FOR: [&str; 4] = [
    "Client.UserInitiatedShutdown",
    "Client.InstanceInitiatedShutdown",
    "Client.UserInitiatedHibernate",
    "Client.InstanceTerminated",
];

impl StateReason {
    /// Whether EC2 ended the instance because it could not launch (or
    /// start) it as asked: a `Client.*` code other than a shutdown someone
    /// asked for. `Client.InternalError` is an EBS encryption key the
    /// instance may not use; `Client.VolumeLimitExceeded` the account's EBS
    /// limit; `Client.InvalidSnapshot.NotFound` a block device's snapshot.
    pub fn is_launch_failure(&self) -> bool {
        self.code.starts_with("Client.") && !ASKED_FOR.contains(&self.code.as_str())
    }

    /// What a person can do about this code, when there is something to say.
    pub fn hint(&self) -> Option<&'static str> {
        match self.code.as_str() {
            "Client.InternalError" => Some(
                "the account's default EBS encryption key is most likely a customer-managed KMS key the \
                 operator may not use: grant the operator's role the KMS statements of docs/iam-policy.json on \
                 that key (and allow them in its key policy), or set spec.instances.kmsKeyId to a key it may use",
            ),
            "Client.VolumeLimitExceeded" => Some(
                "the account's EBS volume or storage limit in this region is reached: free some or raise the quota",
            ),
            "Client.InvalidSnapshot.NotFound" => Some("a snapshot of the AMI's block devices is gone: use another AMI"),
            _ => None,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(code: &str) -> StateReason {
        StateReason { code: code.into(), message: String::new() }
    }

    #[test]
    fn launch_failures_are_client_codes_nobody_asked_for() {
        for code in ["Client.InternalError", "Client.VolumeLimitExceeded", "Client.InvalidSnapshot.NotFound"] {
            assert!(reason(code).is_launch_failure(), "{code}");
            assert!(reason(code).hint().is_some(), "{code}");
        }
        for code in [
            "Client.UserInitiatedShutdown",
            "Client.InstanceInitiatedShutdown",
            "Client.UserInitiatedHibernate",
            "Client.InstanceTerminated",
            "Server.InternalError",
            "Server.SpotInstanceTermination",
            "",
        ] {
            assert!(!reason(code).is_launch_failure(), "{code}");
        }
        assert!(reason("Client.InternalError").hint().is_some_and(|h| h.contains("spec.instances.kmsKeyId")));
    }
}
