//! Snapshots of the database's data volume: what DescribeSnapshots found
//! ([`ObservedSnapshot`]) and the tags that tell the stack's own apart.
//!
//! Every snapshot the operator takes carries the stack's tags, the role
//! tag [`SNAPSHOT_ROLE`] and a slot tag ([`SLOT_TAG`]) naming why it was
//! taken: a scheduled time, an annotation request, the CLI, a postgres
//! upgrade, or [`FINAL_SLOT`] on delete. CreateSnapshot takes no
//! ClientToken, so the slot tag is what finds a snapshot again after a lost
//! answer or a restart instead of taking a second one.

use std::fmt;

/// Value of the role tag on the data volume's snapshots.
pub const SNAPSHOT_ROLE: &str = "postgres-data-snapshot";
/// Tag naming the slot a snapshot fills (see [`Slot`]).
pub const SLOT_TAG: &str = "votingstack.dev/snapshot-slot";
/// Slot of the snapshot taken when the stack is deleted
/// (`deletionPolicy: Snapshot`).
pub const FINAL_SLOT: &str = "final";
/// Tag on a data volume created from a snapshot:
/// `snapshot:<snapshot id>`. Such a volume holds a file system and is
/// never formatted.
pub const ORIGIN_TAG: &str = "votingstack.dev/origin";

/// EBS snapshot states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotState {
    Pending,
    Completed,
    Error,
    /// `recoverable`, `recovering` and states EC2 may add.
    Other,
}

impl SnapshotState {
    pub fn parse(s: &str) -> SnapshotState {
        match s {
            "pending" => SnapshotState::Pending,
            "completed" => SnapshotState::Completed,
            "error" => SnapshotState::Error,
            _ => SnapshotState::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotState::Pending => "pending",
            SnapshotState::Completed => "completed",
            SnapshotState::Error => "error",
            SnapshotState::Other => "other",
        }
    }
}

/// One of the stack's snapshots, as DescribeSnapshots found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedSnapshot {
    pub id: String,
    /// The volume it was taken of.
    pub volume_id: String,
    pub state: SnapshotState,
    /// When EC2 took it (RFC 3339, UTC, seconds): the data is as of this moment.
    pub start_time: String,
    pub size_gib: i32,
    /// Value of the [`SLOT_TAG`], when it has one.
    pub slot: Option<String>,
    /// EC2's state message (set when the snapshot failed).
    pub message: Option<String>,
}

pub use crate::api::validate::valid_snapshot_id;

/// Why a snapshot is taken: its [`SLOT_TAG`] value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slot {
    /// The schedule's occurrence it stands for (RFC 3339, UTC).
    Scheduled(String),
    /// The value of the `votingstack.dev/snapshot-request` annotation.
    Requested(String),
    /// `votingstack snapshot`, at this time (RFC 3339).
    Cli(String),
    /// Before postgres moves from one image to another.
    BeforeUpgrade { to: String },
    /// On delete.
    Final,
}

impl Slot {
    /// The tag value (at most 256 characters, as EC2 allows): long
    /// request values and image references are shortened to a hash.
    pub fn tag_value(&self) -> String {
        let short = |prefix: &str, v: &str| {
            if v.len() <= 200 {
                format!("{prefix}/{v}")
            } else {
                use sha2::{Digest, Sha256};
                format!("{prefix}/sha256:{}", hex::encode(Sha256::digest(v.as_bytes())))
            }
        };
        match self {
            Slot::Scheduled(at) => short("scheduled", at),
            Slot::Requested(v) => short("request", v),
            Slot::Cli(at) => short("cli", at),
            Slot::BeforeUpgrade { to } => short("upgrade", to),
            Slot::Final => FINAL_SLOT.to_string(),
        }
    }
}

/// What the engine did about the data volume's snapshots (reported in
/// the reconcile's actions and Events).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotAction {
    /// CreateSnapshot of the volume for a slot.
    Taken { snapshot_id: String, volume_id: String, slot: String },
    /// A snapshot of the slot was found (taken by a pass whose answer was
    /// lost, or before a restart): no second one was taken.
    Adopted { snapshot_id: String, slot: String },
    /// EC2 finished copying it.
    Completed { snapshot_id: String },
    /// EC2 says it failed.
    Failed { snapshot_id: String, message: String },
    /// Deleted as one beyond `keep`.
    Pruned { snapshot_id: String },
}

impl fmt::Display for SnapshotAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotAction::Taken { snapshot_id, volume_id, slot } => {
                write!(f, "+ snapshot {snapshot_id} of data volume {volume_id} ({slot})")
            }
            SnapshotAction::Adopted { snapshot_id, slot } => {
                write!(f, "~ snapshot {snapshot_id} already taken for {slot}")
            }
            SnapshotAction::Completed { snapshot_id } => write!(f, "~ snapshot {snapshot_id} completed"),
            SnapshotAction::Failed { snapshot_id, message } => write!(f, "! snapshot {snapshot_id} failed: {message}"),
            SnapshotAction::Pruned { snapshot_id } => write!(f, "- delete snapshot {snapshot_id} (beyond keep)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_ids_are_checked() {
        assert!(valid_snapshot_id("snap-0123456789abcdef0"));
        assert!(!valid_snapshot_id("snap-"));
        assert!(!valid_snapshot_id("snap-XYZ12345"));
        assert!(!valid_snapshot_id("vol-0123456789abcdef0"));
    }

    #[test]
    fn slots_fit_in_a_tag() {
        assert_eq!(Slot::Scheduled("2026-12-07T03:00:00Z".into()).tag_value(), "scheduled/2026-12-07T03:00:00Z");
        assert_eq!(Slot::Final.tag_value(), "final");
        let long = Slot::Requested("x".repeat(300)).tag_value();
        assert!(long.starts_with("request/sha256:") && long.len() <= 256, "{long}");
        assert_ne!(long, Slot::Requested("y".repeat(300)).tag_value());
    }
}
