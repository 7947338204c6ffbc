//! Kubernetes Events: an instance launched, replaced or terminated, a
//! container created, re-created or started again, a snapshot taken,
//! completed, failed or pruned, a condition that flipped, and the outcome
//! of a deletion (naming the final snapshot).

use kube::runtime::events::{Event, EventType};
use kube::Resource;
use tracing::warn;

use crate::api::{ConditionType, VotingStack};
use crate::engine::Outcome;
use crate::model::{Action, CreateReason, HostAction, InfraAction, SnapshotAction, TerminateReason};

use super::Context;

/// Longest Event note, in bytes (the API server's limit is 1 KiB).
pub const EVENT_NOTE_LIMIT: usize = 1024;

/// An Event about one thing a reconcile did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ActionEvent {
    pub reason: &'static str,
    /// Names what was acted on (the instance or container), so the
    /// Recorder keeps one event series per instance or container rather
    /// than folding, say, three launches into one Event with the first note.
    pub action: String,
    pub note: String,
}

/// One Event per instance launched, replaced or terminated and per
/// container created, re-created or started again, in the order the engine
/// did them. A replacement (a terminate for drift and the launch of its
/// successor in the same pass) is one `InstanceReplaced`. Other actions
/// (network steps, the data volume, Docker, mounts, removals) get none:
/// they show in status and conditions. Notes name tiers, instance ids,
/// container names, config hashes and reasons only: never user data,
/// environment or keys.
pub(super) fn action_events(applied: &[Action]) -> Vec<ActionEvent> {
    // Launches that are the second half of a replacement, by tier.
    let replaced_tiers: Vec<_> = applied
        .iter()
        .filter_map(|a| match a {
            Action::Infra(InfraAction::TerminateInstance {
                tier: Some(tier),
                reason: TerminateReason::Replaced(_),
                ..
            }) => Some(*tier),
            _ => None,
        })
        .collect();
    let successor = |tier| {
        applied.iter().find_map(|a| match a {
            Action::Infra(InfraAction::LaunchInstance(l)) if l.tier == tier => Some(l.launched.as_deref()),
            _ => None,
        })
    };
    let mut out = Vec::new();
    for action in applied {
        let event = match action {
            Action::Infra(InfraAction::LaunchInstance(launch)) => {
                if replaced_tiers.contains(&launch.tier) {
                    continue;
                }
                let id = launch.launched.as_deref().unwrap_or("(id not known)");
                ActionEvent {
                    reason: "InstanceCreated",
                    action: format!("Launch/{id}"),
                    note: format!(
                        "launched the {} instance {id} ({}, {}): the tier had no live instance",
                        launch.tier,
                        launch.ami_shown(),
                        launch.instance_type
                    ),
                }
            }
            Action::Infra(InfraAction::TerminateInstance { tier, instance_id, reason }) => match (tier, reason) {
                (Some(tier), TerminateReason::Replaced(why)) => {
                    let with = match successor(*tier) {
                        Some(Some(new)) => format!("; its successor is {new}"),
                        _ => String::new(),
                    };
                    ActionEvent {
                        reason: "InstanceReplaced",
                        action: format!("Replace/{instance_id}"),
                        note: format!("replaced the {tier} instance {instance_id} ({why}){with}"),
                    }
                }
                (tier, reason) => ActionEvent {
                    reason: "InstanceTerminated",
                    action: format!("Terminate/{instance_id}"),
                    note: match tier {
                        Some(tier) => format!("terminated the {tier} instance {instance_id}: {reason}"),
                        None => format!("terminated instance {instance_id}: {reason}"),
                    },
                },
            },
            Action::Host(HostAction::CreateContainer { container, reason }) => {
                let (tier, name) = (container.tier, &container.name);
                let new = container.config_hash().unwrap_or_else(|| "unknown".into());
                let note = match reason {
                    CreateReason::Missing => format!("created the {tier} container {name}: it was missing"),
                    CreateReason::ConfigChanged(old) => format!(
                        "re-created the {tier} container {name}: its config changed (config {} → {new})",
                        old.as_deref().unwrap_or("unlabelled")
                    ),
                };
                ActionEvent { reason: "ContainerRecreated", action: format!("Recreate/{name}"), note }
            }
            Action::Host(HostAction::RollContainer { container, replaces }) => {
                let (tier, name) = (container.tier, &container.name);
                match replaces.as_slice() {
                    [] => ActionEvent {
                        reason: "ContainerRecreated",
                        action: format!("Recreate/{name}"),
                        note: format!("created the {tier} container {name}: it was missing"),
                    },
                    old => ActionEvent {
                        reason: "ContainerRolledOut",
                        action: format!("Roll/{name}"),
                        note: format!(
                            "rolled the {tier} container {name} out in place of {}: it answered before the proxy \
                             switched to it",
                            old.join(", ")
                        ),
                    },
                }
            }
            Action::Infra(InfraAction::Snapshot(snapshot)) => match snapshot {
                SnapshotAction::Taken { snapshot_id, volume_id, slot } => ActionEvent {
                    reason: "SnapshotTaken",
                    action: format!("Snapshot/{snapshot_id}"),
                    note: format!("took snapshot {snapshot_id} of data volume {volume_id} ({slot})"),
                },
                SnapshotAction::Completed { snapshot_id } => ActionEvent {
                    reason: "SnapshotCompleted",
                    action: format!("Snapshot/{snapshot_id}"),
                    note: format!("snapshot {snapshot_id} is completed"),
                },
                SnapshotAction::Failed { snapshot_id, message } => ActionEvent {
                    reason: "SnapshotFailed",
                    action: format!("Snapshot/{snapshot_id}"),
                    note: format!("snapshot {snapshot_id} failed: {message}"),
                },
                SnapshotAction::Pruned { snapshot_id } => ActionEvent {
                    reason: "SnapshotDeleted",
                    action: format!("Prune/{snapshot_id}"),
                    note: format!("deleted snapshot {snapshot_id}: beyond spec.database.backups.keep"),
                },
                SnapshotAction::Adopted { .. } => continue,
            },
            Action::Host(HostAction::StartContainer { tier, name, state }) => ActionEvent {
                reason: "ContainerStarted",
                action: format!("Start/{name}"),
                note: format!("started the {tier} container {name} again: it was {state}"),
            },
            Action::Host(HostAction::HoldWorker { tier, name, why }) => ActionEvent {
                reason: "WorkerPaused",
                action: format!("Hold/{name}"),
                note: format!("stopped the {tier} container {name} between votes: {why}"),
            },
            _ => continue,
        };
        out.push(event);
    }
    out
}

/// The Events of a reconcile: what it did, then the conditions that flipped.
pub(super) async fn publish_outcome(ctx: &Context, stack: &VotingStack, outcome: &Outcome) {
    for e in action_events(&outcome.applied) {
        let type_ = if e.reason == "SnapshotFailed" { EventType::Warning } else { EventType::Normal };
        publish_as(ctx, stack, type_, e.reason, &e.action, &e.note).await;
    }
    publish_transitions(ctx, stack, outcome).await;
}

async fn publish_transitions(ctx: &Context, stack: &VotingStack, outcome: &Outcome) {
    for t in &outcome.transitions {
        // A condition turning False is worth a warning when it needs a
        // person: a terminal reason, or the stack as a whole not Ready.
        let needs_attention = !t.status && (t.reason.is_terminal() || t.type_ == ConditionType::Ready);
        let type_ = if needs_attention { EventType::Warning } else { EventType::Normal };
        let note = format!("{} is {}: {}", t.type_, if t.status { "True" } else { "False" }, t.message);
        // The action names the condition, so the Recorder keeps one event
        // series per condition and reason.
        publish_as(ctx, stack, type_, t.reason.as_str(), t.type_.as_str(), &note).await;
    }
}

pub(super) async fn publish(ctx: &Context, stack: &VotingStack, type_: EventType, reason: &str, note: &str) {
    publish_as(ctx, stack, type_, reason, "Delete", note).await
}

/// `note` cut to at most `limit` bytes, on a character boundary.
pub fn cut_note(note: &str, limit: usize) -> &str {
    if note.len() <= limit {
        return note;
    }
    let mut end = limit;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    &note[..end]
}

async fn publish_as(ctx: &Context, stack: &VotingStack, type_: EventType, reason: &str, action: &str, note: &str) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(cut_note(note, EVENT_NOTE_LIMIT).to_string()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &stack.object_ref(&())).await {
        warn!(stack = %stack.key(), error = %e, "could not record an Event");
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::api::Tier;
    use crate::engine::desired::desired_containers;
    use crate::engine::plan::instance_launch;
    use crate::fixtures::spec;
    use crate::model::{Peers, UserData};

    fn launch(tier: Tier, id: &str) -> Action {
        let mut l = instance_launch(&spec(), &Default::default(), tier, 0);
        l.launched = Some(id.into());
        Action::Infra(InfraAction::LaunchInstance(l))
    }

    fn reasons(events: &[ActionEvent]) -> Vec<&str> {
        events.iter().map(|e| e.reason).collect()
    }

    #[test]
    fn each_launch_is_one_instance_created_event_naming_tier_and_id() {
        let applied = [launch(Tier::Database, "i-db"), launch(Tier::Backend, "i-be"), launch(Tier::Frontend, "i-fe")];
        let events = action_events(&applied);
        assert_eq!(reasons(&events), ["InstanceCreated"; 3]);
        assert_eq!(
            events[0].note,
            "launched the database instance i-db (ami-0abcdef1234567890, t3.small): the tier had no live instance"
        );
        let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["Launch/i-db", "Launch/i-be", "Launch/i-fe"], "one event series per instance");
    }

    #[test]
    fn a_replacement_is_one_event_naming_both_instances_and_why() {
        let applied = [
            Action::Infra(InfraAction::TerminateInstance {
                tier: Some(Tier::Backend),
                instance_id: "i-old".into(),
                reason: TerminateReason::Replaced("type t3.small → t3.medium".into()),
            }),
            launch(Tier::Backend, "i-new"),
            Action::Infra(InfraAction::TerminateInstance {
                tier: Some(Tier::Frontend),
                instance_id: "i-dup".into(),
                reason: TerminateReason::Duplicate,
            }),
            Action::Infra(InfraAction::TerminateInstance {
                tier: None,
                instance_id: "i-stray".into(),
                reason: TerminateReason::UnknownTier,
            }),
        ];
        let events = action_events(&applied);
        assert_eq!(reasons(&events), ["InstanceReplaced", "InstanceTerminated", "InstanceTerminated"]);
        assert_eq!(
            events[0].note,
            "replaced the backend instance i-old (type t3.small → t3.medium); its successor is i-new"
        );
        assert_eq!(events[1].note, "terminated the frontend instance i-dup: duplicate of the tier's instance");
        assert_eq!(events[2].note, "terminated instance i-stray: carries the stack's tags but no tier");
    }

    #[test]
    fn containers_created_recreated_and_started_each_get_one_event_with_why() {
        let peers = Peers { backend: Some(Ipv4Addr::new(10, 42, 2, 5)), database: Some(Ipv4Addr::new(10, 42, 2, 4)) };
        let frontend = desired_containers(&spec(), Tier::Frontend, peers);
        let mut vote = frontend.iter().find(|c| c.role == "vote").unwrap().clone();
        vote.name = "vote".into();
        let hash = vote.config_hash().unwrap();
        let applied = [
            Action::Host(HostAction::CreateContainer { container: vote.clone(), reason: CreateReason::Missing }),
            Action::Host(HostAction::CreateContainer {
                container: vote,
                reason: CreateReason::ConfigChanged(Some("0123abcd".into())),
            }),
            Action::Host(HostAction::StartContainer {
                tier: Tier::Backend,
                name: "worker".into(),
                state: "exited".into(),
            }),
            Action::Host(HostAction::InstallDocker { tier: Tier::Backend }),
            Action::Host(HostAction::RemoveContainer { tier: Tier::Backend, name: "stray".into() }),
        ];
        let events = action_events(&applied);
        assert_eq!(reasons(&events), ["ContainerRecreated", "ContainerRecreated", "ContainerStarted"]);
        assert_eq!(events[0].note, "created the frontend container vote: it was missing");
        assert_eq!(
            events[1].note,
            format!("re-created the frontend container vote: its config changed (config 0123abcd → {hash})")
        );
        assert_eq!(events[2].note, "started the backend container worker again: it was exited");
    }

    #[test]
    fn a_rolled_container_is_created_or_rolled_out_in_place_of_the_old_ones() {
        let peers = Peers { backend: Some(Ipv4Addr::new(10, 42, 2, 5)), database: Some(Ipv4Addr::new(10, 42, 2, 4)) };
        let frontend = desired_containers(&spec(), Tier::Frontend, peers);
        let vote = frontend.iter().find(|c| c.role == "vote").unwrap().clone();
        let applied = [
            Action::Host(HostAction::RollContainer { container: vote.clone(), replaces: vec![] }),
            Action::Host(HostAction::RollContainer { container: vote.clone(), replaces: vec!["vote-0123abcd".into()] }),
        ];
        let events = action_events(&applied);
        assert_eq!(reasons(&events), ["ContainerRecreated", "ContainerRolledOut"]);
        assert_eq!(events[0].note, format!("created the frontend container {}: it was missing", vote.name));
        assert_eq!(events[1].action, format!("Roll/{}", vote.name));
        assert_eq!(
            events[1].note,
            format!(
                "rolled the frontend container {} out in place of vote-0123abcd: it answered before the proxy \
                 switched to it",
                vote.name
            )
        );
    }

    #[test]
    fn notes_never_carry_user_data_or_environment() {
        let mut l = instance_launch(&spec(), &Default::default(), Tier::Frontend, 0);
        l.user_data = Some(UserData("ssh_keys: PRIVATE KEY MATERIAL".into()));
        l.launched = Some("i-fe".into());
        let mut db = desired_containers(&spec(), Tier::Database, Peers::default()).remove(0);
        db.env.insert("SECRET_SETTING".into(), "hunter2".into());
        let applied = [
            Action::Infra(InfraAction::LaunchInstance(l)),
            Action::Host(HostAction::CreateContainer { container: db, reason: CreateReason::Missing }),
        ];
        for e in action_events(&applied) {
            assert!(!e.note.contains("PRIVATE") && !e.note.contains("hunter2"), "{}", e.note);
        }
    }

    #[test]
    fn snapshots_taken_completed_failed_and_pruned_each_get_an_event_naming_the_snapshot() {
        let snap = |a: SnapshotAction| Action::Infra(InfraAction::Snapshot(a));
        let applied = [
            snap(SnapshotAction::Taken {
                snapshot_id: "snap-1".into(),
                volume_id: "vol-1".into(),
                slot: "request/r1".into(),
            }),
            snap(SnapshotAction::Adopted { snapshot_id: "snap-0".into(), slot: "request/r0".into() }),
            snap(SnapshotAction::Completed { snapshot_id: "snap-1".into() }),
            snap(SnapshotAction::Failed { snapshot_id: "snap-2".into(), message: "internal error".into() }),
            snap(SnapshotAction::Pruned { snapshot_id: "snap-3".into() }),
        ];
        let events = action_events(&applied);
        assert_eq!(reasons(&events), ["SnapshotTaken", "SnapshotCompleted", "SnapshotFailed", "SnapshotDeleted"]);
        assert!(events[0].note.contains("snap-1") && events[0].note.contains("vol-1"), "{}", events[0].note);
        assert!(events[2].note.contains("internal error"), "{}", events[2].note);
        assert!(events[3].note.contains("keep"), "{}", events[3].note);
    }
}
