//! The database's data volume: an EBS volume of its own, so postgres data
//! outlives the instance it runs on.
//!
//! [`ObservedVolume`] is what DescribeVolumes found, [`AttachedVolume`] what
//! an instance's block device mappings say (no extra call), [`VolumeStep`]
//! what the engine does next, and [`DataVolume`] what the database host
//! mounts before postgres starts.

use std::fmt;

use serde::Serialize;

/// Device name the data volume is attached as. On Nitro instances the host
/// sees it as an NVMe disk, so hosts find it by the volume id, not by this
/// name.
pub const DATA_DEVICE: &str = "/dev/sdf";
/// Where the database host mounts the data volume.
pub const DATA_MOUNT: &str = "/var/lib/votingstack/data";
/// The directory on the volume that holds postgres's data directory (the
/// volume's root has `lost+found`, which initdb refuses).
pub const PGDATA_DIR: &str = "pgdata";
/// Value of the role tag on the data volume.
pub const DATA_VOLUME_ROLE: &str = "postgres-data";

/// EBS volume states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeState {
    Creating,
    Available,
    InUse,
    Deleting,
    Deleted,
    Error,
}

impl VolumeState {
    pub fn parse(s: &str) -> Option<VolumeState> {
        Some(match s {
            "creating" => VolumeState::Creating,
            "available" => VolumeState::Available,
            "in-use" => VolumeState::InUse,
            "deleting" => VolumeState::Deleting,
            "deleted" => VolumeState::Deleted,
            "error" => VolumeState::Error,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VolumeState::Creating => "creating",
            VolumeState::Available => "available",
            VolumeState::InUse => "in-use",
            VolumeState::Deleting => "deleting",
            VolumeState::Deleted => "deleted",
            VolumeState::Error => "error",
        }
    }
}

/// Where a volume's attachment to an instance stands, as EC2 says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttachmentState {
    Attaching,
    Attached,
    Detaching,
    Detached,
    /// Any other word EC2 uses (such as `busy`), kept for messages.
    Other(String),
}

impl AttachmentState {
    pub fn parse(s: &str) -> AttachmentState {
        match s {
            "attaching" => AttachmentState::Attaching,
            "attached" => AttachmentState::Attached,
            "detaching" => AttachmentState::Detaching,
            "detached" => AttachmentState::Detached,
            other => AttachmentState::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            AttachmentState::Attaching => "attaching",
            AttachmentState::Attached => "attached",
            AttachmentState::Detaching => "detaching",
            AttachmentState::Detached => "detached",
            AttachmentState::Other(s) => s,
        }
    }
}

impl fmt::Display for AttachmentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One attachment of a volume, as DescribeVolumes lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeAttachment {
    pub instance_id: String,
    pub device: String,
    pub state: AttachmentState,
}

/// The stack's data volume, as DescribeVolumes found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedVolume {
    pub id: String,
    pub zone: String,
    pub size_gib: i32,
    pub state: VolumeState,
    pub attachments: Vec<VolumeAttachment>,
    /// RFC 3339; the oldest of duplicates is the stack's.
    pub create_time: String,
    /// The volume's `votingstack.dev/formatted` tag: postgres ran on a
    /// filesystem on it, so it is never formatted again (also when status
    /// was lost).
    pub formatted: Option<String>,
}

impl ObservedVolume {
    /// The attachment that still binds the volume to an instance.
    pub fn attachment(&self) -> Option<&VolumeAttachment> {
        self.attachments.iter().find(|a| a.state != AttachmentState::Detached)
    }
}

/// A non-root EBS volume in an instance's block device mappings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedVolume {
    pub device: String,
    pub volume_id: String,
    pub status: AttachmentState,
}

/// What the engine does about the data volume this pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeStep {
    /// Attached to the database instance: postgres may start on it.
    Ready {
        volume_id: String,
    },
    /// Creates the volume in the database instance's zone (None in a plan
    /// made before that instance exists: its zone is not known yet), from
    /// `from_snapshot` when `spec.database.restoreFromSnapshot` names one.
    Create {
        zone: Option<String>,
        size_gib: i32,
        from_snapshot: Option<String>,
    },
    Attach {
        volume_id: String,
        instance_id: String,
    },
    /// Detaches it from an instance that no longer serves the database.
    Detach {
        volume_id: String,
        instance_id: String,
    },
    /// Nothing to do but wait (EC2 is creating, attaching or detaching).
    Wait {
        volume_id: Option<String>,
        why: String,
    },
    /// Cannot go on without a person: said in the Database condition.
    Blocked {
        why: String,
    },
}

impl fmt::Display for VolumeStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VolumeStep::Ready { volume_id } => write!(f, "data volume {volume_id} is attached"),
            VolumeStep::Create { zone, size_gib, from_snapshot } => {
                let zone = zone.as_deref().unwrap_or("the database instance's zone");
                match from_snapshot {
                    Some(snap) => write!(
                        f,
                        "create the data volume from snapshot {snap} (at least {size_gib} GiB, gp3, in {zone})"
                    ),
                    None => write!(f, "create the data volume ({size_gib} GiB, gp3, in {zone})"),
                }
            }
            VolumeStep::Attach { volume_id, instance_id } => {
                write!(f, "attach data volume {volume_id} to {instance_id} as {DATA_DEVICE}")
            }
            VolumeStep::Detach { volume_id, instance_id } => {
                write!(f, "detach data volume {volume_id} from {instance_id}")
            }
            VolumeStep::Wait { why, .. } => write!(f, "wait: {why}"),
            VolumeStep::Blocked { why } => write!(f, "blocked: {why}"),
        }
    }
}

/// The data volume as the database host mounts it. Part of the postgres
/// container's configuration: another volume means another container.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct DataVolume {
    pub volume_id: String,
    /// Mount point on the host ([`DATA_MOUNT`]).
    pub mount: String,
    /// The directory on the volume bound into the container.
    pub subdir: String,
    /// Where the container sees it.
    pub container_path: String,
    /// Whether the host may format the volume when it reads as blank: only
    /// a volume this stack created blank and never formatted (not from a
    /// snapshot, no `votingstack.dev/formatted` tag). Not part of the
    /// container's configuration.
    #[serde(skip)]
    pub may_format: bool,
}

impl DataVolume {
    pub fn for_postgres(volume_id: &str) -> DataVolume {
        DataVolume {
            volume_id: volume_id.to_string(),
            mount: DATA_MOUNT.to_string(),
            subdir: PGDATA_DIR.to_string(),
            container_path: "/var/lib/postgresql/data".to_string(),
            may_format: false,
        }
    }

    /// The argument the host's mount step takes for [`DataVolume::may_format`].
    pub fn format_arg(&self) -> &'static str {
        if self.may_format {
            "may-format"
        } else {
            "never-format"
        }
    }

    /// The host directory bound into the container.
    pub fn source(&self) -> String {
        format!("{}/{}", self.mount, self.subdir)
    }

    /// A volume id as EC2 writes them: `vol-` and hex digits. Anything else
    /// never reaches a host's command line.
    pub fn valid_id(id: &str) -> bool {
        id.strip_prefix("vol-")
            .is_some_and(|h| !h.is_empty() && h.len() <= 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_ids_are_checked_before_they_reach_a_host() {
        assert!(DataVolume::valid_id("vol-0123456789abcdef0"));
        assert!(!DataVolume::valid_id("vol-"));
        assert!(!DataVolume::valid_id("vol-12; rm -rf /"));
        assert!(!DataVolume::valid_id("snap-0123"));
    }

    #[test]
    fn postgres_sees_a_directory_on_the_volume() {
        let v = DataVolume::for_postgres("vol-0abc");
        assert_eq!(v.source(), "/var/lib/votingstack/data/pgdata");
        assert_eq!(v.container_path, "/var/lib/postgresql/data");
    }
}
