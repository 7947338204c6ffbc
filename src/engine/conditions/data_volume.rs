//! The database's data volume, said in `DatabaseReady`: postgres starts
//! only on it, so the database tier waits while the volume cannot be used.

use crate::api::Reason;
use crate::cloud::CloudError;
use crate::model::VolumeStep;

use super::infrastructure::cloud_reason;
use super::Finding;

/// Why the database tier waits for its data volume.
#[derive(Clone, Debug)]
pub enum VolumeHold {
    /// No database instance serves the tier yet.
    NoInstance,
    /// The plan's step is a wait (EC2 is creating or attaching it) or one
    /// that cannot be taken; the next pass looks again.
    Step(VolumeStep),
    /// The stack is paused before this step.
    Paused(VolumeStep),
    /// This pass acted and the volume is on its way.
    OnItsWay,
    /// An EC2 call about the volume failed.
    Failed(CloudError),
    /// postgres is about to move to another image and the snapshot that
    /// must come first could not be taken.
    SnapshotFirst(String),
}

/// The database tier's finding while its data volume holds it back.
pub fn volume_finding(hold: &VolumeHold) -> Finding {
    match hold {
        VolumeHold::NoInstance => Finding::not(Reason::WaitingForInfrastructure, "the database instance is not up yet"),
        VolumeHold::Step(VolumeStep::Blocked { why }) => Finding::not(Reason::DataVolumeUnusable, why.clone()),
        VolumeHold::Step(VolumeStep::Wait { why, .. }) => Finding::not(Reason::WaitingForInfrastructure, why.clone()),
        VolumeHold::Step(step) => Finding::not(Reason::WaitingForInfrastructure, step.to_string()),
        VolumeHold::Paused(step) => Finding::not(Reason::Paused, format!("paused before: {step}")),
        VolumeHold::OnItsWay => Finding::not(Reason::WaitingForInfrastructure, "the data volume is on its way"),
        VolumeHold::Failed(e) => Finding::not(cloud_reason(e), format!("data volume: {e}")),
        VolumeHold::SnapshotFirst(why) => Finding::not(Reason::SnapshotFailed, why.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hold_has_its_reason() {
        let blocked = VolumeStep::Blocked { why: "in another zone".into() };
        let f = volume_finding(&VolumeHold::Step(blocked));
        assert_eq!((f.reason, f.message.as_str()), (Reason::DataVolumeUnusable, "in another zone"));
        let wait = VolumeStep::Wait { volume_id: None, why: "EC2 is creating it".into() };
        assert_eq!(volume_finding(&VolumeHold::Step(wait)).reason, Reason::WaitingForInfrastructure);
        let create = VolumeStep::Create { zone: Some("us-east-1a".into()), size_gib: 10, from_snapshot: None };
        let f = volume_finding(&VolumeHold::Paused(create));
        assert_eq!(f.reason, Reason::Paused);
        assert!(f.message.starts_with("paused before: create the data volume"), "{}", f.message);
        assert_eq!(volume_finding(&VolumeHold::NoInstance).reason, Reason::WaitingForInfrastructure);
        assert_eq!(volume_finding(&VolumeHold::OnItsWay).message, "the data volume is on its way");
        let e = CloudError::Api {
            operation: "AttachVolume",
            code: "UnauthorizedOperation".into(),
            message: "no".into(),
            kind: crate::cloud::AwsErrorKind::Auth,
        };
        let f = volume_finding(&VolumeHold::Failed(e));
        assert_eq!(f.reason, Reason::AwsAuthFailed);
        assert!(f.message.starts_with("data volume: EC2 AttachVolume"), "{}", f.message);
    }
}
