//! The plan for the database's data volume: pure, from what EC2 shows.
//!
//! In steady state the database instance's block device mappings (part of
//! the one DescribeInstances) show the recorded volume attached, and no
//! other call is made ([`attached_volume`]). Otherwise DescribeVolumes finds
//! the stack's volume by tag and [`plan_volume`] says the one next step.
//! [`volume_action`] is that step as an action of the whole plan (what
//! `votingstack plan` shows); the engine's `converge_volume` carries the
//! same steps out within a pass.

use crate::model::volume::{VolumeStep, DATA_DEVICE};
use crate::model::{AttachmentState, InstanceState, ObservedInfra, ObservedInstance, ObservedVolume, VolumeState};

/// The recorded volume when the database instance's block device mappings
/// show it attached at [`DATA_DEVICE`]: nothing to look up or do.
pub fn attached_volume(db: &ObservedInstance, recorded: Option<&str>) -> Option<String> {
    let dev = db.data_device()?;
    (dev.status == AttachmentState::Attached && Some(dev.volume_id.as_str()) == recorded).then(|| dev.volume_id.clone())
}

/// The stack's volume among those found by tag: the one attached to the
/// database instance, else the recorded one, else the oldest.
pub fn pick_volume<'a>(
    found: &'a [ObservedVolume],
    db: &ObservedInstance,
    recorded: Option<&str>,
) -> Option<&'a ObservedVolume> {
    found
        .iter()
        .find(|v| v.attachment().is_some_and(|a| a.instance_id == db.id))
        .or_else(|| found.iter().find(|v| Some(v.id.as_str()) == recorded))
        .or_else(|| found.iter().min_by(|a, b| a.create_time.cmp(&b.create_time).then(a.id.cmp(&b.id))))
}

/// How long a volume the stack recorded may be missing from EC2's answers
/// after its creation before it is taken for deleted (and another created):
/// EC2's consistency lag can exceed the few seconds a look-up by id retries.
pub const FRESH_VOLUME_GRACE: chrono::Duration = chrono::Duration::seconds(60);

/// A wait, when the recorded volume (`recorded`, created at `create_time`)
/// was not found but was created less than [`FRESH_VOLUME_GRACE`] before
/// `now`; None otherwise (nothing recorded, no or an unreadable time, or
/// old enough to be gone for real).
pub fn fresh_volume_missing(
    recorded: Option<&str>,
    create_time: Option<&str>,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<VolumeStep> {
    let id = recorded?;
    let created = chrono::DateTime::parse_from_rfc3339(create_time?).ok()?;
    let age = now.signed_duration_since(created);
    (age < FRESH_VOLUME_GRACE).then(|| VolumeStep::Wait {
        volume_id: Some(id.to_string()),
        why: format!(
            "data volume {id} was created {} s ago and EC2 does not list it yet; it is taken for deleted (and a \
             new one created) only {} s after its creation",
            age.num_seconds().max(0),
            FRESH_VOLUME_GRACE.num_seconds()
        ),
    })
}

/// The next step for the data volume of database instance `db`.
/// `found` is the stack's volume (None when DescribeVolumes found none);
/// `zone` where a new one goes (the instance's zone, else the subnet's).
pub fn plan_volume(
    db: &ObservedInstance,
    found: Option<&ObservedVolume>,
    infra: &ObservedInfra,
    zone: Option<&str>,
    size_gib: i32,
) -> VolumeStep {
    if let Some(dev) = db.data_device() {
        if found.is_none_or(|v| v.id != dev.volume_id) {
            return VolumeStep::Blocked {
                why: format!(
                    "{DATA_DEVICE} of database instance {} holds volume {}, which is not the stack's data volume; \
                     detach it from the instance so the stack's own volume can be attached",
                    db.id, dev.volume_id
                ),
            };
        }
    }
    let Some(v) = found else {
        return match zone {
            Some(zone) => VolumeStep::Create { zone: Some(zone.to_string()), size_gib, from_snapshot: None },
            None => VolumeStep::Wait {
                volume_id: None,
                why: format!("the zone of database instance {} is not known yet", db.id),
            },
        };
    };
    let wait = |why: String| VolumeStep::Wait { volume_id: Some(v.id.clone()), why };
    match v.state {
        VolumeState::Creating => return wait(format!("EC2 is creating data volume {}", v.id)),
        VolumeState::Deleting | VolumeState::Deleted | VolumeState::Error => {
            return VolumeStep::Blocked {
                why: format!(
                    "data volume {} is {} in EC2; restore the database into a new VotingStack with \
                     spec.database.restoreFromSnapshot set to one of this stack's snapshots (status.backups), \
                     or delete the tagged volume to start with an empty database",
                    v.id,
                    v.state.as_str()
                ),
            };
        }
        VolumeState::Available | VolumeState::InUse => {}
    }
    if let Some(db_zone) = db.zone.as_deref() {
        if db_zone != v.zone {
            return VolumeStep::Blocked {
                why: format!(
                    "data volume {} is in {}, database instance {} in {db_zone}: a volume cannot leave its zone; \
                     set spec.network.availabilityZone to {} (or restore a snapshot of it into a new VotingStack \
                     with spec.database.restoreFromSnapshot)",
                    v.id, v.zone, db.id, v.zone
                ),
            };
        }
    }
    match v.attachment() {
        Some(a) if a.instance_id == db.id => match &a.state {
            AttachmentState::Attached => VolumeStep::Ready { volume_id: v.id.clone() },
            AttachmentState::Detaching => wait(format!("data volume {} is detaching from {}", v.id, db.id)),
            other => wait(format!("data volume {} is {other} to {}", v.id, db.id)),
        },
        Some(a) => {
            let holder = infra.instances.iter().find(|i| i.id == a.instance_id);
            match holder.map(|i| i.state) {
                Some(s) if s.is_alive() && a.state != AttachmentState::Detaching => {
                    VolumeStep::Detach { volume_id: v.id.clone(), instance_id: a.instance_id.clone() }
                }
                // Terminating instances let go of their volumes by themselves.
                _ => wait(format!("data volume {} is still attached to {} ({})", v.id, a.instance_id, a.state)),
            }
        }
        None => match db.state {
            InstanceState::Running | InstanceState::Stopped => {
                VolumeStep::Attach { volume_id: v.id.clone(), instance_id: db.id.clone() }
            }
            s => wait(format!("database instance {} is {}", db.id, s.as_str())),
        },
    }
}

/// A creation of the data volume made from `restoreFromSnapshot` when
/// the spec names one (it applies only to a volume the stack creates).
pub fn restoring(step: VolumeStep, restore_from: Option<&str>) -> VolumeStep {
    match step {
        VolumeStep::Create { zone, size_gib, from_snapshot: None } => {
            VolumeStep::Create { zone, size_gib, from_snapshot: restore_from.map(str::to_owned) }
        }
        other => other,
    }
}

/// The data volume's step as an action of the whole plan, from the stack's
/// volumes as DescribeVolumes listed them (`found`): the step
/// [`plan_volume`] gives for the database instance kept, or, while that
/// instance is still to be launched, creating the volume when the stack has
/// none. Waiting, ready and blocked are no actions (the database condition
/// says them).
pub fn volume_action(
    db: Option<&ObservedInstance>,
    found: &[ObservedVolume],
    infra: &ObservedInfra,
    recorded: Option<&str>,
    network_zone: Option<&str>,
    size_gib: i32,
) -> Option<VolumeStep> {
    let step = match db {
        Some(db) if attached_volume(db, recorded).is_some() => return None,
        Some(db) => {
            let volume = pick_volume(found, db, recorded);
            plan_volume(db, volume, infra, db.zone.as_deref().or(network_zone), size_gib)
        }
        None if found.is_empty() && recorded.is_none() => {
            VolumeStep::Create { zone: network_zone.map(str::to_string), size_gib, from_snapshot: None }
        }
        // Attached once the new database instance runs.
        None => return None,
    };
    matches!(step, VolumeStep::Create { .. } | VolumeStep::Attach { .. } | VolumeStep::Detach { .. }).then_some(step)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Tier;
    use crate::model::{AttachedVolume, VolumeAttachment};

    fn db(id: &str, state: InstanceState) -> ObservedInstance {
        crate::fixtures::instance(Tier::Database, id, state)
    }

    fn volume(attached_to: Option<(&str, &str)>) -> ObservedVolume {
        ObservedVolume {
            id: "vol-1".into(),
            zone: "us-east-1a".into(),
            size_gib: 10,
            state: if attached_to.is_some() { VolumeState::InUse } else { VolumeState::Available },
            attachments: attached_to
                .map(|(i, s)| VolumeAttachment {
                    instance_id: i.into(),
                    device: DATA_DEVICE.into(),
                    state: AttachmentState::parse(s),
                })
                .into_iter()
                .collect(),
            create_time: "2026-01-01T00:00:00Z".into(),
            formatted: None,
        }
    }

    fn with_device(mut i: ObservedInstance, vol: &str, status: &str) -> ObservedInstance {
        i.volumes.push(AttachedVolume {
            device: DATA_DEVICE.into(),
            volume_id: vol.into(),
            status: AttachmentState::parse(status),
        });
        i
    }

    fn infra(instances: Vec<ObservedInstance>) -> ObservedInfra {
        ObservedInfra { instances, ..Default::default() }
    }

    #[test]
    fn steady_state_needs_only_the_instance_s_mappings() {
        let i = with_device(db("i-1", InstanceState::Running), "vol-1", "attached");
        assert_eq!(attached_volume(&i, Some("vol-1")).as_deref(), Some("vol-1"));
        assert_eq!(attached_volume(&i, Some("vol-2")), None, "another volume is looked up");
        assert_eq!(attached_volume(&i, None), None, "nothing recorded yet");
        let i = with_device(db("i-1", InstanceState::Running), "vol-1", "attaching");
        assert_eq!(attached_volume(&i, Some("vol-1")), None);
    }

    #[test]
    fn a_missing_volume_is_created_in_the_instance_s_zone() {
        let i = db("i-1", InstanceState::Pending);
        let step = plan_volume(&i, None, &infra(vec![]), Some("us-east-1a"), 10);
        assert_eq!(step, VolumeStep::Create { zone: Some("us-east-1a".into()), size_gib: 10, from_snapshot: None });
    }

    #[test]
    fn an_available_volume_is_attached_once_the_instance_runs() {
        let v = volume(None);
        let step = plan_volume(&db("i-1", InstanceState::Pending), Some(&v), &infra(vec![]), None, 10);
        assert!(matches!(step, VolumeStep::Wait { .. }), "{step}");
        let step = plan_volume(&db("i-1", InstanceState::Running), Some(&v), &infra(vec![]), None, 10);
        assert_eq!(step, VolumeStep::Attach { volume_id: "vol-1".into(), instance_id: "i-1".into() });
    }

    #[test]
    fn attached_is_ready_and_attaching_waits() {
        let i = db("i-1", InstanceState::Running);
        let v = volume(Some(("i-1", "attached")));
        assert_eq!(
            plan_volume(&i, Some(&v), &infra(vec![]), None, 10),
            VolumeStep::Ready { volume_id: "vol-1".into() }
        );
        let v = volume(Some(("i-1", "attaching")));
        assert!(matches!(plan_volume(&i, Some(&v), &infra(vec![]), None, 10), VolumeStep::Wait { .. }));
    }

    #[test]
    fn a_replacement_waits_for_the_terminated_instance_to_let_go() {
        let new = db("i-2", InstanceState::Running);
        let old = db("i-1", InstanceState::ShuttingDown);
        let v = volume(Some(("i-1", "attached")));
        let step = plan_volume(&new, Some(&v), &infra(vec![old]), None, 10);
        assert!(matches!(&step, VolumeStep::Wait { why, .. } if why.contains("i-1")), "{step}");
    }

    #[test]
    fn a_live_instance_that_no_longer_serves_the_database_is_made_to_let_go() {
        let new = db("i-2", InstanceState::Running);
        let old = db("i-1", InstanceState::Stopped);
        let v = volume(Some(("i-1", "attached")));
        let step = plan_volume(&new, Some(&v), &infra(vec![old.clone()]), None, 10);
        assert_eq!(step, VolumeStep::Detach { volume_id: "vol-1".into(), instance_id: "i-1".into() });
        let v = volume(Some(("i-1", "detaching")));
        assert!(matches!(plan_volume(&new, Some(&v), &infra(vec![old]), None, 10), VolumeStep::Wait { .. }));
    }

    #[test]
    fn a_volume_in_another_zone_or_a_foreign_device_blocks() {
        let mut v = volume(None);
        v.zone = "us-east-1b".into();
        let step = plan_volume(&db("i-1", InstanceState::Running), Some(&v), &infra(vec![]), None, 10);
        assert!(
            matches!(&step, VolumeStep::Blocked { why } if why.contains("spec.network.availabilityZone")),
            "{step}"
        );
        let i = with_device(db("i-1", InstanceState::Running), "vol-9", "attached");
        let step = plan_volume(&i, Some(&volume(None)), &infra(vec![]), None, 10);
        assert!(matches!(&step, VolumeStep::Blocked { why } if why.contains("vol-9")), "{step}");
        let mut v = volume(None);
        v.state = VolumeState::Error;
        assert!(matches!(
            plan_volume(&db("i-1", InstanceState::Running), Some(&v), &infra(vec![]), None, 10),
            VolumeStep::Blocked { .. }
        ));
    }

    #[test]
    fn the_attached_recorded_or_oldest_volume_is_the_stack_s() {
        let i = db("i-2", InstanceState::Running);
        let mut a = volume(None);
        a.id = "vol-a".into();
        a.create_time = "2026-01-02T00:00:00Z".into();
        let mut b = volume(None);
        b.id = "vol-b".into();
        let found = vec![a.clone(), b.clone()];
        assert_eq!(pick_volume(&found, &i, None).map(|v| v.id.as_str()), Some("vol-b"));
        assert_eq!(pick_volume(&found, &i, Some("vol-a")).map(|v| v.id.as_str()), Some("vol-a"));
        let mut c = a.clone();
        c.attachments = vec![VolumeAttachment {
            instance_id: "i-2".into(),
            device: DATA_DEVICE.into(),
            state: AttachmentState::Attached,
        }];
        let found = vec![c, b];
        assert_eq!(pick_volume(&found, &i, Some("vol-b")).map(|v| v.id.as_str()), Some("vol-a"));
    }

    #[test]
    fn a_recently_created_volume_that_ec2_does_not_list_yet_is_waited_for() {
        let created = "2026-01-01T00:00:00Z";
        let at =
            |s: i64| chrono::DateTime::parse_from_rfc3339(created).unwrap().to_utc() + chrono::Duration::seconds(s);
        let wait = fresh_volume_missing(Some("vol-1"), Some(created), at(5));
        assert!(
            matches!(&wait, Some(VolumeStep::Wait { volume_id: Some(id), why }) if id == "vol-1" && why.contains("5 s ago")),
            "{wait:?}"
        );
        assert!(fresh_volume_missing(Some("vol-1"), Some(created), at(59)).is_some());
        assert_eq!(fresh_volume_missing(Some("vol-1"), Some(created), at(60)), None, "gone after the grace");
        assert_eq!(fresh_volume_missing(None, Some(created), at(5)), None, "nothing recorded");
        assert_eq!(fresh_volume_missing(Some("vol-1"), None, at(5)), None, "no creation time recorded");
        assert_eq!(fresh_volume_missing(Some("vol-1"), Some("yesterday"), at(5)), None);
    }

    #[test]
    fn a_plan_before_the_database_instance_creates_the_volume_in_its_zone() {
        let step = volume_action(None, &[], &infra(vec![]), None, None, 10);
        assert_eq!(step, Some(VolumeStep::Create { zone: None, size_gib: 10, from_snapshot: None }));
        assert_eq!(
            step.map(|s| s.to_string()).as_deref(),
            Some("create the data volume (10 GiB, gp3, in the database instance's zone)")
        );
        let step = volume_action(None, &[], &infra(vec![]), None, Some("us-east-1b"), 10);
        assert_eq!(
            step,
            Some(VolumeStep::Create { zone: Some("us-east-1b".into()), size_gib: 10, from_snapshot: None })
        );
        let kept = [volume(None)];
        assert_eq!(volume_action(None, &kept, &infra(vec![]), None, None, 10), None);
        assert_eq!(volume_action(None, &[], &infra(vec![]), Some("vol-1"), None, 10), None);
    }

    #[test]
    fn only_a_creation_restores_from_the_snapshot() {
        let create = plan_volume(&db("i-1", InstanceState::Running), None, &infra(vec![]), Some("us-east-1a"), 10);
        let step = restoring(create, Some("snap-0123456789abcdef0"));
        assert_eq!(
            step,
            VolumeStep::Create {
                zone: Some("us-east-1a".into()),
                size_gib: 10,
                from_snapshot: Some("snap-0123456789abcdef0".into())
            }
        );
        assert!(step.to_string().contains("from snapshot snap-0123456789abcdef0"), "{step}");
        let attach = VolumeStep::Attach { volume_id: "vol-1".into(), instance_id: "i-1".into() };
        assert_eq!(restoring(attach.clone(), Some("snap-0123456789abcdef0")), attach);
    }

    #[test]
    fn a_plan_attaches_detaches_or_shows_nothing() {
        let i = db("i-1", InstanceState::Running);
        let free = [volume(None)];
        let step = volume_action(Some(&i), &free, &infra(vec![]), Some("vol-1"), None, 10);
        assert_eq!(step, Some(VolumeStep::Attach { volume_id: "vol-1".into(), instance_id: "i-1".into() }));
        let steady = with_device(i.clone(), "vol-1", "attached");
        assert_eq!(volume_action(Some(&steady), &[], &infra(vec![]), Some("vol-1"), None, 10), None);
        let held = [volume(Some(("i-0", "attached")))];
        let old = db("i-0", InstanceState::Running);
        let step = volume_action(Some(&i), &held, &infra(vec![old]), Some("vol-1"), None, 10);
        assert_eq!(step, Some(VolumeStep::Detach { volume_id: "vol-1".into(), instance_id: "i-0".into() }));
        let creating = [ObservedVolume { state: VolumeState::Creating, ..volume(None) }];
        assert_eq!(volume_action(Some(&i), &creating, &infra(vec![]), None, None, 10), None, "a wait");
        let none = volume_action(Some(&i), &[], &infra(vec![]), None, None, 10);
        assert_eq!(
            none,
            Some(VolumeStep::Create { zone: Some("us-east-1a".into()), size_gib: 10, from_snapshot: None })
        );
    }
}
