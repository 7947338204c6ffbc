//! Snapshots of the data volume: on schedule, on request, before a
//! postgres image change, and on delete.
//!
//! [`due`] says from status alone (no EC2 call) which snapshots are owed:
//! the schedule's latest occurrence not yet handled, a new value of the
//! request annotation, a postgres image change. In steady state nothing is
//! owed and the backups phase makes no call. Only when something is owed
//! does DescribeSnapshots list the stack's snapshots, and
//! [`plan_snapshots`] says whether one already taken for the owed slots
//! (after a lost answer or a restart: CreateSnapshot takes no ClientToken)
//! is adopted or a new one is taken. A snapshot not yet `completed` is
//! looked at by id on each pass until it is; then [`prune`] says which of
//! the stack's completed snapshots go beyond `keep`, oldest first.

use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use croner::Cron;
use tracing::{info, warn};

use crate::api::validate::parse_schedule;
use crate::api::{BackupsStatus, Tier, VotingStack, VotingStackSpec, VotingStackStatus, SNAPSHOT_REQUEST_ANNOTATION};
use crate::cloud::{Cloud, CloudError, StackIdentity};
use crate::model::desired::{repository_of, DB_CONTAINER};
use crate::model::snapshot::FINAL_SLOT;
use crate::model::{Action, InfraAction, ObservedSnapshot, Slot, SnapshotAction, SnapshotState};

use super::reconcile::{Engine, Run};

/// What is owed now, from status alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Slots owed a snapshot, the most pressing first (one snapshot taken
    /// now serves them all).
    pub slots: Vec<Slot>,
    /// The schedule's latest occurrence at or before now (RFC 3339): what
    /// `status.backups.lastScheduled` becomes once handled.
    pub occurrence: Option<String>,
    /// The schedule's next occurrence after now.
    pub next: Option<DateTime<Utc>>,
}

/// What [`due`] looks at.
#[derive(Clone, Copy, Debug)]
pub struct BackupView<'a> {
    pub schedule: Option<&'a Cron>,
    pub now: DateTime<Utc>,
    pub status: &'a BackupsStatus,
    /// The `votingstack.dev/snapshot-request` annotation's value.
    pub request: Option<&'a str>,
    /// The postgres image the database is about to move to, when it differs
    /// from the one running ([`upgrade_to`]).
    pub upgrade_to: Option<&'a str>,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
}

/// The snapshots owed now. A schedule never handled before starts now: its
/// latest occurrence is recorded without a snapshot (a new stack's blank
/// volume is not worth one), and the next occurrence takes the first.
pub fn due(view: &BackupView) -> Due {
    let status = view.status;
    let mut slots = Vec::new();
    if let Some(to) = view.upgrade_to {
        if status.last_upgrade.as_deref() != Some(to) {
            slots.push(Slot::BeforeUpgrade { to: to.to_string() });
        }
    }
    if let Some(request) = view.request.map(str::trim).filter(|r| !r.is_empty()) {
        if status.last_request.as_deref() != Some(request) {
            slots.push(Slot::Requested(request.to_string()));
        }
    }
    let latest = view.schedule.and_then(|c| c.find_previous_occurrence(&view.now, true).ok());
    if let Some(latest) = latest {
        let handled = status.last_scheduled.as_deref().and_then(parse_time);
        if handled.is_some_and(|h| h < latest) {
            slots.push(Slot::Scheduled(rfc3339(latest)));
        }
    }
    Due {
        slots,
        occurrence: latest.map(rfc3339),
        next: view.schedule.and_then(|c| c.find_next_occurrence(&view.now, false).ok()),
    }
}

/// Whether `snapshot` was taken for `slot`: it carries the slot's tag, or
/// (for a scheduled slot) it is a snapshot of `volume_id` EC2 took at or
/// after the occurrence.
fn serves(snapshot: &ObservedSnapshot, slot: &Slot, volume_id: &str) -> bool {
    if snapshot.state == SnapshotState::Error {
        return false;
    }
    if snapshot.slot.as_deref() == Some(slot.tag_value().as_str()) {
        return true;
    }
    match slot {
        Slot::Scheduled(at) => {
            snapshot.volume_id == volume_id
                && parse_time(&snapshot.start_time).zip(parse_time(at)).is_some_and(|(taken, at)| taken >= at)
        }
        _ => false,
    }
}

/// What to do about the owed slots, given the stack's snapshots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotPlan {
    /// Nothing owed.
    Nothing,
    /// Every owed slot already has its snapshot: take no other.
    Adopt(ObservedSnapshot),
    /// Take one snapshot of the volume for this slot (it serves every
    /// owed slot: it is taken after each of them fell due).
    Take(Slot),
}

/// Adopts a snapshot already taken for the owed slots, or takes one.
pub fn plan_snapshots(owed: &[Slot], found: &[ObservedSnapshot], volume_id: &str) -> SnapshotPlan {
    let Some(first) = owed.first() else { return SnapshotPlan::Nothing };
    if owed.iter().all(|slot| found.iter().any(|s| serves(s, slot, volume_id))) {
        let newest = found
            .iter()
            .filter(|s| owed.iter().any(|slot| serves(s, slot, volume_id)))
            .max_by(|a, b| a.start_time.cmp(&b.start_time).then(a.id.cmp(&b.id)))
            .cloned();
        if let Some(s) = newest {
            return SnapshotPlan::Adopt(s);
        }
    }
    SnapshotPlan::Take(first.clone())
}

/// The stack's completed snapshots beyond the `keep` newest, oldest first.
/// Pending and failed ones, and a final snapshot, are never pruned.
pub fn prune(found: &[ObservedSnapshot], keep: u32) -> Vec<String> {
    let mut done: Vec<&ObservedSnapshot> =
        found.iter().filter(|s| s.state == SnapshotState::Completed && s.slot.as_deref() != Some(FINAL_SLOT)).collect();
    done.sort_by(|a, b| b.start_time.cmp(&a.start_time).then(b.id.cmp(&a.id)));
    done.into_iter().skip(keep as usize).rev().map(|s| s.id.clone()).collect()
}

/// How many completed snapshots [`prune`] leaves.
fn kept_after(found: &[ObservedSnapshot], pruned: &[String]) -> u32 {
    let n = found
        .iter()
        .filter(|s| s.state == SnapshotState::Completed && s.slot.as_deref() != Some(FINAL_SLOT))
        .filter(|s| !pruned.contains(&s.id))
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The image postgres is about to move to: the reference the engine
/// would create the `db` container from, when the running one (as last
/// recorded) runs another. None when nothing runs yet.
pub fn upgrade_to(spec: &VotingStackSpec, status: &VotingStackStatus) -> Option<String> {
    let running =
        status.tiers.as_ref()?.get(Tier::Database)?.containers.iter().find(|c| c.name == DB_CONTAINER)?.image.clone();
    let image = &spec.app.images.postgres;
    let wanted = match status.images.get(image) {
        Some(digest) if !image.contains('@') => format!("{}@{digest}", repository_of(image)),
        _ => image.clone(),
    };
    (!running.is_empty() && running != wanted && running != *image).then_some(wanted)
}

/// How long a pending snapshot EC2 does not know is taken for its
/// consistency lag; past it, for deleted.
pub const PENDING_UNKNOWN_GRACE: chrono::Duration = chrono::Duration::minutes(10);

/// Whether a pending snapshot EC2 does not list (since `since`) is gone
/// rather than not listed yet.
pub fn given_up(since: Option<&str>, now: DateTime<Utc>) -> bool {
    since.and_then(parse_time).is_none_or(|since| now - since > PENDING_UNKNOWN_GRACE)
}

/// The snapshot a backups phase leaves the database waiting on: postgres
/// is not re-created on another image before its data is snapshotted.
#[derive(Clone, Debug)]
pub struct UpgradeHeld(pub String);

impl Engine {
    /// The backups phase: takes what is owed, follows a pending snapshot to
    /// `completed`, prunes beyond `keep`. No EC2 call unless something is
    /// owed or pending. Err when a postgres image change must wait: the
    /// snapshot taken before it could not be.
    pub(super) async fn converge_backups(
        &self,
        ident: &StackIdentity,
        stack: &VotingStack,
        volume_id: &str,
        run: &mut Run,
    ) -> Result<(), UpgradeHeld> {
        let spec = &stack.spec;
        let schedule = parse_schedule(&spec.database.backups.schedule).ok().flatten();
        let now = Utc::now();
        let request = stack.metadata.annotations.as_ref().and_then(|a| a.get(SNAPSHOT_REQUEST_ANNOTATION));
        let upgrade = upgrade_to(spec, &run.status);
        let mut backups = run.status.backups.clone().unwrap_or_default();
        let owed = due(&BackupView {
            schedule: schedule.as_ref(),
            now,
            status: &backups,
            request: request.map(String::as_str),
            upgrade_to: upgrade.as_deref(),
        });
        run.next_backup = owed.next.and_then(|next| (next - now).to_std().ok());
        if backups.last_scheduled.is_none() || schedule.is_none() {
            // The schedule starts now (or is off).
            backups.last_scheduled = owed.occurrence.clone();
        }
        if spec.paused {
            run.status.backups = Some(backups);
            return Ok(());
        }
        let mut found: Option<Vec<ObservedSnapshot>> = None;
        let mut completed = false;
        if let Some(pending) = backups.pending_snapshot_id.clone() {
            match self.cloud.snapshot_by_id(&pending).await {
                Ok(Some(s)) => completed |= self.follow(&s, &mut backups, run),
                // Not known yet: EC2's consistency lag after a create.
                Ok(None) if !given_up(backups.pending_since.as_deref(), now) => {
                    info!(stack = %ident.tag_value(), snapshot = %pending, "snapshot not listed yet")
                }
                Ok(None) => {
                    warn!(stack = %ident.tag_value(), snapshot = %pending, "snapshot no longer known to EC2");
                    backups.pending_snapshot_id = None;
                    backups.pending_since = None;
                    backups.failure = Some(format!(
                        "SnapshotFailed: snapshot {pending} is not known to EC2 {} minutes after it was taken \
                         (deleted by hand?)",
                        PENDING_UNKNOWN_GRACE.num_minutes()
                    ));
                }
                Err(e) => warn!(stack = %ident.tag_value(), snapshot = %pending, error = %e, "snapshot look-up failed"),
            }
        }
        let mut held = None;
        if !owed.slots.is_empty() {
            match self.owe(ident, volume_id, &owed.slots, &mut backups, run).await {
                Ok(list) => {
                    found = Some(list);
                    for slot in &owed.slots {
                        match slot {
                            Slot::Scheduled(at) => backups.last_scheduled = Some(at.clone()),
                            Slot::Requested(v) => backups.last_request = Some(v.clone()),
                            Slot::BeforeUpgrade { to } => backups.last_upgrade = Some(to.clone()),
                            Slot::Cli(_) | Slot::Final => {}
                        }
                    }
                }
                Err(e) => {
                    warn!(stack = %ident.tag_value(), error = %e, "snapshot of the data volume failed");
                    backups.failure = Some(format!("SnapshotFailed: {e}"));
                    if owed.slots.iter().any(|s| matches!(s, Slot::BeforeUpgrade { .. })) {
                        held = Some(UpgradeHeld(format!(
                            "postgres moves to another image only after a snapshot of data volume {volume_id}: {e}"
                        )));
                    }
                }
            }
        }
        if completed {
            let list = match found {
                Some(list) => Ok(list),
                None => self.cloud.snapshots(ident).await,
            };
            match list {
                Ok(list) => self.prune_beyond_keep(ident, &list, spec.database.backups.keep, &mut backups, run).await,
                Err(e) => warn!(stack = %ident.tag_value(), error = %e, "listing snapshots to prune failed"),
            }
        }
        run.status.backups = Some(backups);
        match held {
            Some(h) => Err(h),
            None => Ok(()),
        }
    }

    /// Records what a look-up of a snapshot shows; true once it completed.
    fn follow(&self, s: &ObservedSnapshot, backups: &mut BackupsStatus, run: &mut Run) -> bool {
        match s.state {
            SnapshotState::Completed => {
                backups.pending_snapshot_id = None;
                backups.pending_since = None;
                backups.last_snapshot_id = Some(s.id.clone());
                backups.last_snapshot_time = Some(s.start_time.clone());
                backups.failure = None;
                run.applied.push(Action::Infra(InfraAction::Snapshot(SnapshotAction::Completed {
                    snapshot_id: s.id.clone(),
                })));
                true
            }
            SnapshotState::Error => {
                backups.pending_snapshot_id = None;
                backups.pending_since = None;
                let message = s.message.clone().unwrap_or_else(|| "EC2 reports the snapshot in state error".into());
                backups.failure = Some(format!("SnapshotFailed: snapshot {}: {message}", s.id));
                run.applied.push(Action::Infra(InfraAction::Snapshot(SnapshotAction::Failed {
                    snapshot_id: s.id.clone(),
                    message,
                })));
                false
            }
            SnapshotState::Pending | SnapshotState::Other => false,
        }
    }

    /// Lists the stack's snapshots and adopts or takes one for the owed
    /// slots. Returns the list (with a snapshot taken now added).
    async fn owe(
        &self,
        ident: &StackIdentity,
        volume_id: &str,
        owed: &[Slot],
        backups: &mut BackupsStatus,
        run: &mut Run,
    ) -> Result<Vec<ObservedSnapshot>, CloudError> {
        let mut found = self.cloud.snapshots(ident).await?;
        match plan_snapshots(owed, &found, volume_id) {
            SnapshotPlan::Nothing => {}
            SnapshotPlan::Adopt(s) => {
                info!(stack = %ident.tag_value(), snapshot = %s.id, "snapshot already taken for {}", owed[0].tag_value());
                run.applied.push(Action::Infra(InfraAction::Snapshot(SnapshotAction::Adopted {
                    snapshot_id: s.id.clone(),
                    slot: owed[0].tag_value(),
                })));
                if s.state == SnapshotState::Completed {
                    if backups.last_snapshot_time.as_deref() < Some(s.start_time.as_str()) {
                        backups.last_snapshot_id = Some(s.id.clone());
                        backups.last_snapshot_time = Some(s.start_time.clone());
                    }
                } else {
                    backups.pending_snapshot_id = Some(s.id.clone());
                    backups.pending_since = Some(rfc3339(Utc::now()));
                }
            }
            SnapshotPlan::Take(slot) => {
                let s = self.cloud.create_snapshot(ident, volume_id, &slot).await?;
                info!(stack = %ident.tag_value(), snapshot = %s.id, volume = volume_id, "took a snapshot for {}", slot.tag_value());
                run.applied.push(Action::Infra(InfraAction::Snapshot(SnapshotAction::Taken {
                    snapshot_id: s.id.clone(),
                    volume_id: volume_id.to_string(),
                    slot: slot.tag_value(),
                })));
                backups.pending_snapshot_id = Some(s.id.clone());
                backups.pending_since = Some(rfc3339(Utc::now()));
                found.push(s);
            }
        }
        Ok(found)
    }

    async fn prune_beyond_keep(
        &self,
        ident: &StackIdentity,
        found: &[ObservedSnapshot],
        keep: u32,
        backups: &mut BackupsStatus,
        run: &mut Run,
    ) {
        let extra = prune(found, keep);
        let mut gone = Vec::new();
        for id in &extra {
            match self.cloud.delete_snapshot(id).await {
                Ok(()) => {
                    run.applied
                        .push(Action::Infra(InfraAction::Snapshot(SnapshotAction::Pruned { snapshot_id: id.clone() })));
                    gone.push(id.clone());
                }
                Err(e) => {
                    warn!(stack = %ident.tag_value(), snapshot = %id, error = %e, "deleting a snapshot beyond keep failed")
                }
            }
        }
        backups.kept = Some(kept_after(found, &gone));
    }

    /// `votingstack snapshot`: takes a snapshot of the stack's data volume
    /// now and waits (bounded by `timeout`) until it is `completed`.
    pub async fn snapshot_now(&self, stack: &VotingStack, timeout: Duration) -> Result<ObservedSnapshot, CloudError> {
        let ident = StackIdentity::of(stack);
        let status = stack.status.clone().unwrap_or_default();
        let recorded = status.data_volume.as_ref().and_then(|v| v.volume_id.clone());
        let volumes = self.cloud.data_volumes(&ident, recorded.as_deref()).await?;
        let volume = recorded
            .filter(|id| volumes.iter().any(|v| v.id == *id))
            .or_else(|| volumes.iter().min_by(|a, b| a.create_time.cmp(&b.create_time)).map(|v| v.id.clone()))
            .ok_or(CloudError::Incomplete { operation: "DescribeVolumes", missing: "data volume of the stack" })?;
        let slot = Slot::Cli(rfc3339(Utc::now()));
        let taken = self.cloud.create_snapshot(&ident, &volume, &slot).await?;
        info!(stack = %ident.tag_value(), snapshot = %taken.id, volume = %volume, "took a snapshot");
        wait_completed(self.cloud.as_ref(), &taken.id, timeout, self.settings.snapshot_poll).await
    }
}

/// Polls a snapshot until it is `completed`, bounded by `timeout`. A
/// snapshot EC2 does not list yet (its consistency lag) counts as pending.
pub async fn wait_completed(
    cloud: &dyn Cloud,
    id: &str,
    timeout: Duration,
    poll: Duration,
) -> Result<ObservedSnapshot, CloudError> {
    let started = Instant::now();
    loop {
        match cloud.snapshot_by_id(id).await? {
            Some(s) if s.state == SnapshotState::Completed => return Ok(s),
            Some(s) if s.state == SnapshotState::Error => {
                return Err(CloudError::SnapshotFailed {
                    id: id.to_string(),
                    message: s.message.unwrap_or_else(|| "state error".into()),
                })
            }
            _ => {}
        }
        if started.elapsed() + poll > timeout {
            return Err(CloudError::SnapshotWait { id: id.to_string(), seconds: timeout.as_secs() });
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ContainerStatus, TierStatus, TiersStatus};

    fn at(s: &str) -> DateTime<Utc> {
        parse_time(s).unwrap()
    }

    fn cron(s: &str) -> Cron {
        parse_schedule(s).unwrap().unwrap()
    }

    fn snap(id: &str, start: &str, state: SnapshotState, slot: Option<&str>) -> ObservedSnapshot {
        ObservedSnapshot {
            id: id.into(),
            volume_id: "vol-1".into(),
            state,
            start_time: start.into(),
            size_gib: 10,
            slot: slot.map(str::to_owned),
            message: None,
        }
    }

    fn view<'a>(c: Option<&'a Cron>, now: &str, status: &'a BackupsStatus) -> BackupView<'a> {
        BackupView { schedule: c, now: at(now), status, request: None, upgrade_to: None }
    }

    #[test]
    fn a_schedule_never_handled_starts_now_without_a_snapshot() {
        let c = cron("0 3 * * *");
        let status = BackupsStatus::default();
        let d = due(&view(Some(&c), "2026-12-07T10:00:00Z", &status));
        assert_eq!(d.slots, vec![]);
        assert_eq!(d.occurrence.as_deref(), Some("2026-12-07T03:00:00Z"));
        assert_eq!(d.next, Some(at("2026-12-08T03:00:00Z")));
    }

    #[test]
    fn the_latest_occurrence_not_yet_handled_is_due_once() {
        let c = cron("0 3 * * *");
        let mut status = BackupsStatus { last_scheduled: Some("2026-12-07T03:00:00Z".into()), ..Default::default() };
        assert_eq!(due(&view(Some(&c), "2026-12-08T02:59:59Z", &status)).slots, vec![], "not yet");
        let d = due(&view(Some(&c), "2026-12-08T03:00:00Z", &status));
        assert_eq!(d.slots, vec![Slot::Scheduled("2026-12-08T03:00:00Z".into())]);
        // Two missed occurrences (the operator was down) owe one snapshot.
        let d = due(&view(Some(&c), "2026-12-10T04:00:00Z", &status));
        assert_eq!(d.slots, vec![Slot::Scheduled("2026-12-10T03:00:00Z".into())]);
        status.last_scheduled = d.occurrence;
        assert_eq!(due(&view(Some(&c), "2026-12-10T23:00:00Z", &status)).slots, vec![]);
        assert_eq!(due(&view(None, "2026-12-11T23:00:00Z", &status)).slots, vec![], "no schedule: off");
    }

    #[test]
    fn a_new_request_value_is_due_once_and_an_upgrade_comes_first() {
        let status = BackupsStatus { last_request: Some("one".into()), ..Default::default() };
        let mut v = view(None, "2026-12-07T10:00:00Z", &status);
        v.request = Some("one");
        assert_eq!(due(&v).slots, vec![]);
        v.request = Some(" ");
        assert_eq!(due(&v).slots, vec![]);
        v.request = Some("two");
        v.upgrade_to = Some("postgres:16-alpine");
        assert_eq!(
            due(&v).slots,
            vec![Slot::BeforeUpgrade { to: "postgres:16-alpine".into() }, Slot::Requested("two".into())]
        );
    }

    #[test]
    fn a_snapshot_taken_for_the_slot_is_adopted_not_taken_again() {
        let owed = [Slot::Scheduled("2026-12-08T03:00:00Z".into())];
        assert_eq!(plan_snapshots(&owed, &[], "vol-1"), SnapshotPlan::Take(owed[0].clone()));
        // A lost answer: the snapshot is there with the slot's tag.
        let tagged =
            snap("snap-a", "2026-12-08T03:00:02Z", SnapshotState::Pending, Some("scheduled/2026-12-08T03:00:00Z"));
        assert_eq!(plan_snapshots(&owed, std::slice::from_ref(&tagged), "vol-1"), SnapshotPlan::Adopt(tagged));
        // Any snapshot of the volume taken since the occurrence serves it.
        let later = snap("snap-b", "2026-12-08T03:05:00Z", SnapshotState::Completed, Some("cli/2026-12-08T03:05:00Z"));
        assert_eq!(plan_snapshots(&owed, std::slice::from_ref(&later), "vol-1"), SnapshotPlan::Adopt(later.clone()));
        assert_eq!(plan_snapshots(&owed, std::slice::from_ref(&later), "vol-2"), SnapshotPlan::Take(owed[0].clone()));
        let earlier = snap("snap-c", "2026-12-08T02:59:00Z", SnapshotState::Completed, None);
        assert_eq!(plan_snapshots(&owed, &[earlier], "vol-1"), SnapshotPlan::Take(owed[0].clone()));
        let failed =
            snap("snap-d", "2026-12-08T03:00:02Z", SnapshotState::Error, Some("scheduled/2026-12-08T03:00:00Z"));
        assert_eq!(
            plan_snapshots(&owed, &[failed], "vol-1"),
            SnapshotPlan::Take(owed[0].clone()),
            "a failed one is no backup"
        );
        assert_eq!(plan_snapshots(&[], &[later], "vol-1"), SnapshotPlan::Nothing);
    }

    #[test]
    fn a_request_is_served_only_by_its_own_snapshot() {
        let owed = [Slot::Requested("r1".into()), Slot::Scheduled("2026-12-08T03:00:00Z".into())];
        let scheduled =
            snap("snap-a", "2026-12-08T03:00:02Z", SnapshotState::Completed, Some("scheduled/2026-12-08T03:00:00Z"));
        assert_eq!(
            plan_snapshots(&owed, std::slice::from_ref(&scheduled), "vol-1"),
            SnapshotPlan::Take(owed[0].clone())
        );
        let requested = snap("snap-b", "2026-12-08T03:01:00Z", SnapshotState::Pending, Some("request/r1"));
        assert_eq!(plan_snapshots(&owed, &[scheduled, requested.clone()], "vol-1"), SnapshotPlan::Adopt(requested));
    }

    #[test]
    fn pruning_keeps_the_newest_completed_and_deletes_the_oldest_first() {
        let found = [
            snap("snap-3", "2026-12-03T03:00:00Z", SnapshotState::Completed, None),
            snap("snap-1", "2026-12-01T03:00:00Z", SnapshotState::Completed, None),
            snap("snap-5", "2026-12-05T03:00:00Z", SnapshotState::Pending, None),
            snap("snap-2", "2026-12-02T03:00:00Z", SnapshotState::Completed, None),
            snap("snap-0", "2026-11-30T03:00:00Z", SnapshotState::Error, None),
            snap("snap-f", "2026-11-01T03:00:00Z", SnapshotState::Completed, Some(FINAL_SLOT)),
            snap("snap-4", "2026-12-04T03:00:00Z", SnapshotState::Completed, None),
        ];
        assert_eq!(prune(&found, 2), ["snap-1", "snap-2"]);
        assert_eq!(kept_after(&found, &prune(&found, 2)), 2);
        assert_eq!(prune(&found, 7), Vec::<String>::new());
        assert_eq!(prune(&found, 1), ["snap-1", "snap-2", "snap-3"]);
    }

    #[test]
    fn a_pending_snapshot_ec2_does_not_know_is_given_up_only_after_the_grace() {
        let now = at("2026-12-07T10:00:00Z");
        assert!(!given_up(Some("2026-12-07T09:55:00Z"), now), "consistency lag");
        assert!(given_up(Some("2026-12-07T09:49:00Z"), now));
        assert!(given_up(None, now), "recorded by an older operator: no time to wait for");
    }

    #[test]
    fn an_image_change_of_postgres_is_an_upgrade() {
        let mut spec = crate::fixtures::spec();
        let mut status = VotingStackStatus::default();
        assert_eq!(upgrade_to(&spec, &status), None, "nothing runs yet");
        let db = |image: &str| TierStatus {
            containers: vec![ContainerStatus { name: "db".into(), image: image.into(), ..Default::default() }],
            ..Default::default()
        };
        status.tiers = Some(TiersStatus { database: Some(db("postgres:15-alpine")), ..Default::default() });
        assert_eq!(upgrade_to(&spec, &status), None);
        status.images.insert("postgres:15-alpine".into(), "sha256:aa".into());
        status.tiers = Some(TiersStatus { database: Some(db("postgres@sha256:aa")), ..Default::default() });
        assert_eq!(upgrade_to(&spec, &status), None, "the pinned digest of the same reference");
        spec.app.images.postgres = "postgres:16-alpine".into();
        assert_eq!(upgrade_to(&spec, &status).as_deref(), Some("postgres:16-alpine"));
    }
}
