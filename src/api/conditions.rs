//! Condition types and reasons, and the one place conditions are merged into
//! status (so `lastTransitionTime` only moves when `status` changes).

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::spec::Tier;

/// A Kubernetes-style condition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// InfrastructureReady, DatabaseReady, BackendReady, FrontendReady,
    /// SmokeTestPassed or Ready.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: ConditionStatus,
    /// One CamelCase word saying why.
    pub reason: String,
    /// What happened, for people.
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
    /// The generation this condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A condition's status, as Kubernetes spells it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn of(ok: bool) -> ConditionStatus {
        if ok {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

impl fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Condition {
    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }
}

/// The condition types the operator writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConditionType {
    InfrastructureReady,
    DatabaseReady,
    BackendReady,
    FrontendReady,
    SmokeTestPassed,
    Ready,
}

impl ConditionType {
    pub const ALL: [ConditionType; 6] = [
        ConditionType::InfrastructureReady,
        ConditionType::DatabaseReady,
        ConditionType::BackendReady,
        ConditionType::FrontendReady,
        ConditionType::SmokeTestPassed,
        ConditionType::Ready,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::InfrastructureReady => "InfrastructureReady",
            ConditionType::DatabaseReady => "DatabaseReady",
            ConditionType::BackendReady => "BackendReady",
            ConditionType::FrontendReady => "FrontendReady",
            ConditionType::SmokeTestPassed => "SmokeTestPassed",
            ConditionType::Ready => "Ready",
        }
    }

    pub fn for_tier(tier: Tier) -> ConditionType {
        match tier {
            Tier::Database => ConditionType::DatabaseReady,
            Tier::Backend => ConditionType::BackendReady,
            Tier::Frontend => ConditionType::FrontendReady,
        }
    }
}

impl fmt::Display for ConditionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every reason the operator writes. docs/reference.md says what to do about each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    // Ready
    AllTiersReady,
    Progressing,
    InvalidSpec,
    SecretMissing,
    Paused,
    Deleting,
    // InfrastructureReady
    InstancesRunning,
    Provisioning,
    InstanceDrift,
    /// EC2 terminated a tier's instance at launch (StateReason
    /// `Client.InternalError`, `Client.VolumeLimitExceeded`, ...): the tier
    /// is not launched again until the spec changes. Also in the tier's
    /// condition.
    InstanceLaunchFailed,
    /// A subnet's zone or CIDR differs from the spec or status.
    NetworkDrift,
    /// The VPC or subnets the user brings (`spec.network.vpcId`) are
    /// missing, elsewhere, or not routed as the stack needs.
    NetworkUnusable,
    AwsAuthFailed,
    AwsInvalidParameter,
    AwsQuotaExceeded,
    AwsThrottled,
    AwsUnavailable,
    AwsError,
    // tiers
    ContainersRunning,
    WaitingForInfrastructure,
    SshUnreachable,
    HostKeyMismatch,
    DockerMissing,
    /// The host has no Docker and no apt-get to install it: its
    /// `/etc/os-release` is in the message. Terminal: the AMI must change.
    UnsupportedOperatingSystem,
    DockerDown,
    ImagePullFailed,
    ContainerExited,
    NotReady,
    DeployFailed,
    /// Frontend only: a changed vote or result container did not answer
    /// HTTP 200 within the bound (or exited); it was removed and the old one
    /// goes on serving. The message holds its last log lines.
    UpdateFailed,
    /// The database's data volume cannot be used as it is (another zone,
    /// an error state, another volume on its device).
    DataVolumeUnusable,
    /// Backend only: the worker is stopped between votes while postgres
    /// does not answer or moves; votes wait in redis.
    WorkerPaused,
    /// A snapshot of the data volume failed: in `status.backups.failure`
    /// and an Event; in `DatabaseReady` when it was the one taken before a
    /// postgres image change (postgres is not recreated without it).
    SnapshotFailed,
    // smoke test
    VoteCounted,
    VoteNotCounted,
    WaitingForTiers,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::AllTiersReady => "AllTiersReady",
            Reason::Progressing => "Progressing",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::SecretMissing => "SecretMissing",
            Reason::Paused => "Paused",
            Reason::Deleting => "Deleting",
            Reason::InstancesRunning => "InstancesRunning",
            Reason::Provisioning => "Provisioning",
            Reason::InstanceDrift => "InstanceDrift",
            Reason::InstanceLaunchFailed => "InstanceLaunchFailed",
            Reason::NetworkDrift => "NetworkDrift",
            Reason::NetworkUnusable => "NetworkUnusable",
            Reason::AwsAuthFailed => "AwsAuthFailed",
            Reason::AwsInvalidParameter => "AwsInvalidParameter",
            Reason::AwsQuotaExceeded => "AwsQuotaExceeded",
            Reason::AwsThrottled => "AwsThrottled",
            Reason::AwsUnavailable => "AwsUnavailable",
            Reason::AwsError => "AwsError",
            Reason::ContainersRunning => "ContainersRunning",
            Reason::WaitingForInfrastructure => "WaitingForInfrastructure",
            Reason::SshUnreachable => "SshUnreachable",
            Reason::HostKeyMismatch => "HostKeyMismatch",
            Reason::DockerMissing => "DockerMissing",
            Reason::UnsupportedOperatingSystem => "UnsupportedOperatingSystem",
            Reason::DockerDown => "DockerDown",
            Reason::ImagePullFailed => "ImagePullFailed",
            Reason::ContainerExited => "ContainerExited",
            Reason::NotReady => "NotReady",
            Reason::DeployFailed => "DeployFailed",
            Reason::UpdateFailed => "UpdateFailed",
            Reason::DataVolumeUnusable => "DataVolumeUnusable",
            Reason::WorkerPaused => "WorkerPaused",
            Reason::SnapshotFailed => "SnapshotFailed",
            Reason::VoteCounted => "VoteCounted",
            Reason::VoteNotCounted => "VoteNotCounted",
            Reason::WaitingForTiers => "WaitingForTiers",
        }
    }

    /// Reasons no retry can fix: a user has to change the spec, AWS account
    /// or hosts. The stack's phase becomes Failed and retries slow down.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Reason::InvalidSpec
                | Reason::AwsAuthFailed
                | Reason::AwsInvalidParameter
                | Reason::AwsQuotaExceeded
                | Reason::NetworkUnusable
                | Reason::HostKeyMismatch
                | Reason::DataVolumeUnusable
                | Reason::UnsupportedOperatingSystem
                | Reason::InstanceLaunchFailed
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A condition as the engine computes it, before timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionUpdate {
    pub type_: ConditionType,
    pub status: bool,
    pub reason: Reason,
    pub message: String,
}

impl ConditionUpdate {
    pub fn new(type_: ConditionType, status: bool, reason: Reason, message: impl Into<String>) -> Self {
        Self { type_, status, reason, message: message.into() }
    }
}

/// Merges `update` into `conditions`, keeping `lastTransitionTime` when the
/// status did not change. Returns true when the status flipped (worth an Event).
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    update: &ConditionUpdate,
    generation: Option<i64>,
    now: &str,
) -> bool {
    let fresh = Condition {
        type_: update.type_.as_str().to_string(),
        status: ConditionStatus::of(update.status),
        reason: update.reason.as_str().to_string(),
        message: update.message.clone(),
        last_transition_time: now.to_string(),
        observed_generation: generation,
    };
    match conditions.iter_mut().find(|c| c.type_ == fresh.type_) {
        Some(existing) => {
            let flipped = existing.status != fresh.status;
            let kept_time = existing.last_transition_time.clone();
            *existing = fresh;
            if !flipped {
                existing.last_transition_time = kept_time;
            }
            flipped
        }
        None => {
            conditions.push(fresh);
            conditions
                .sort_by_key(|c| ConditionType::ALL.iter().position(|t| t.as_str() == c.type_).unwrap_or(usize::MAX));
            true
        }
    }
}

/// Finds a condition by type.
pub fn find_condition(conditions: &[Condition], type_: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == type_.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut conds = Vec::new();
        let up = ConditionUpdate::new(ConditionType::Ready, false, Reason::Progressing, "waiting");
        assert!(set_condition(&mut conds, &up, Some(1), "t1"));
        let again = ConditionUpdate::new(ConditionType::Ready, false, Reason::Provisioning, "still");
        assert!(!set_condition(&mut conds, &again, Some(2), "t2"));
        assert_eq!(conds[0].last_transition_time, "t1");
        assert_eq!(conds[0].reason, "Provisioning");
        assert_eq!(conds[0].observed_generation, Some(2));
        let ready = ConditionUpdate::new(ConditionType::Ready, true, Reason::AllTiersReady, "ok");
        assert!(set_condition(&mut conds, &ready, Some(2), "t3"));
        assert_eq!(conds[0].last_transition_time, "t3");
    }

    #[test]
    fn conditions_are_kept_in_a_stable_order() {
        let mut conds = Vec::new();
        for t in [ConditionType::Ready, ConditionType::InfrastructureReady, ConditionType::FrontendReady] {
            set_condition(&mut conds, &ConditionUpdate::new(t, false, Reason::Progressing, ""), None, "t");
        }
        let order: Vec<_> = conds.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(order, ["InfrastructureReady", "FrontendReady", "Ready"]);
    }

    #[test]
    fn terminal_reasons_are_the_ones_a_user_must_fix() {
        assert!(Reason::InvalidSpec.is_terminal());
        assert!(Reason::HostKeyMismatch.is_terminal());
        assert!(Reason::InstanceLaunchFailed.is_terminal());
        assert!(!Reason::SshUnreachable.is_terminal());
        assert!(!Reason::AwsThrottled.is_terminal());
    }
}
