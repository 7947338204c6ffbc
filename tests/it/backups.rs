//! Snapshots of the data volume through the engine, over in-memory EC2 and
//! hosts: the schedule, a request, no duplicate after a lost answer, keep,
//! a restore, a postgres image change and the final snapshot on delete.

use std::sync::Arc;
use std::time::Duration;

use votingstack::api::{DeletionPolicy, Phase, VotingStack, VotingStackStatus, SNAPSHOT_REQUEST_ANNOTATION};
use votingstack::engine::{Engine, EngineSettings, Outcome, Teardown};
use votingstack::model::snapshot::FINAL_SLOT;
use votingstack::model::{Action, InfraAction, ObservedSnapshot, SnapshotAction, SnapshotState};

use crate::fakes::{engine, key, FakeCloud, FakeHosts};
use crate::fixtures::stack;

fn with_status(mut s: VotingStack, status: &VotingStackStatus) -> VotingStack {
    s.status = Some(status.clone());
    s
}

fn requested(value: &str) -> VotingStack {
    let mut s = stack();
    s.metadata.annotations = Some([(SNAPSHOT_REQUEST_ANNOTATION.to_string(), value.to_string())].into());
    s
}

fn count(cloud: &FakeCloud, op: &str) -> usize {
    cloud.state.lock().unwrap().operations.iter().filter(|o| **o == op).count()
}

fn snapshot_actions(o: &Outcome) -> Vec<&SnapshotAction> {
    o.applied
        .iter()
        .filter_map(|a| match a {
            Action::Infra(InfraAction::Snapshot(s)) => Some(s),
            _ => None,
        })
        .collect()
}

fn completed(id: &str, start: &str) -> ObservedSnapshot {
    ObservedSnapshot {
        id: id.into(),
        volume_id: "vol-0a".into(),
        state: SnapshotState::Completed,
        start_time: start.into(),
        size_gib: 10,
        slot: Some(format!("scheduled/{start}")),
        message: None,
    }
}

#[tokio::test]
async fn engine_backups_cost_nothing_in_steady_state_and_a_request_takes_exactly_one() {
    let (engine, cloud, _hosts) = engine();
    let first = engine.reconcile(&stack(), Ok(key())).await;
    assert_eq!(first.status.phase, Some(Phase::Ready), "{:#?}", first.status.conditions);
    let backups = first.status.backups.clone().expect("status.backups");
    assert!(backups.last_scheduled.is_some(), "the schedule starts now");
    let second = engine.reconcile(&with_status(stack(), &first.status), Ok(key())).await;
    assert!(second.applied.is_empty(), "{:?}", second.applied);
    assert_eq!(count(&cloud, "DescribeSnapshots") + count(&cloud, "CreateSnapshot"), 0, "no snapshot call");

    let asked = engine.reconcile(&with_status(requested("r1"), &second.status), Ok(key())).await;
    assert!(matches!(snapshot_actions(&asked)[..], [SnapshotAction::Taken { .. }]), "{:?}", asked.applied);
    let pending = asked.status.backups.clone().unwrap();
    assert_eq!(pending.last_request.as_deref(), Some("r1"));
    let id = pending.pending_snapshot_id.clone().expect("pending");
    let done = engine.reconcile(&with_status(requested("r1"), &asked.status), Ok(key())).await;
    let b = done.status.backups.clone().unwrap();
    assert_eq!(b.last_snapshot_id.as_deref(), Some(id.as_str()));
    assert_eq!((b.pending_snapshot_id, b.kept), (None, Some(1)));
    let calm = engine.reconcile(&with_status(requested("r1"), &done.status), Ok(key())).await;
    assert!(snapshot_actions(&calm).is_empty(), "{:?}", calm.applied);
    assert_eq!(count(&cloud, "CreateSnapshot"), 1, "one value, one snapshot");
    let again = engine.reconcile(&with_status(requested("r2"), &calm.status), Ok(key())).await;
    assert!(matches!(snapshot_actions(&again)[..], [SnapshotAction::Taken { .. }]), "{:?}", again.applied);
    assert_eq!(count(&cloud, "CreateSnapshot"), 2, "a new value, one more");
}

#[tokio::test]
async fn engine_a_snapshot_whose_answer_was_lost_is_adopted_not_taken_twice() {
    let (engine, cloud, _hosts) = engine();
    let ready = engine.reconcile(&stack(), Ok(key())).await;
    let asked = engine.reconcile(&with_status(requested("r1"), &ready.status), Ok(key())).await;
    assert_eq!(count(&cloud, "CreateSnapshot"), 1);
    // The status recording it was never written (a crash, a lost answer):
    // the next pass starts from the status before it.
    let retried = engine.reconcile(&with_status(requested("r1"), &ready.status), Ok(key())).await;
    assert_eq!(count(&cloud, "CreateSnapshot"), 1, "{:?}", retried.applied);
    assert!(matches!(snapshot_actions(&retried)[..], [SnapshotAction::Adopted { .. }]), "{:?}", retried.applied);
    assert_eq!(
        retried.status.backups.as_ref().and_then(|b| b.pending_snapshot_id.clone()),
        asked.status.backups.as_ref().and_then(|b| b.pending_snapshot_id.clone())
    );
}

#[tokio::test]
async fn engine_a_scheduled_snapshot_falls_due_and_the_oldest_beyond_keep_go() {
    let (engine, cloud, _hosts) = engine();
    let ready = engine.reconcile(&stack(), Ok(key())).await;
    {
        let mut s = cloud.state.lock().unwrap();
        s.snapshots.push(completed("snap-000000a1", "2025-12-01T03:00:00Z"));
        s.snapshots.push(completed("snap-000000a2", "2025-12-02T03:00:00Z"));
        s.snapshots.push(completed("snap-000000a3", "2025-12-03T03:00:00Z"));
    }
    let mut status = ready.status.clone();
    status.backups.as_mut().unwrap().last_scheduled = Some("2025-12-03T03:00:00Z".into());
    let mut s = stack();
    s.spec.database.backups.keep = 2;
    let due = engine.reconcile(&with_status(s.clone(), &status), Ok(key())).await;
    assert!(matches!(snapshot_actions(&due)[..], [SnapshotAction::Taken { .. }]), "{:?}", due.applied);
    let recorded = due.status.backups.clone().unwrap().last_scheduled.unwrap();
    assert!(recorded.ends_with("T03:00:00Z") && recorded.as_str() > "2025-12-03", "{recorded}");
    let done = engine.reconcile(&with_status(s.clone(), &due.status), Ok(key())).await;
    let state = cloud.state.lock().unwrap();
    assert_eq!(state.deleted_snapshots, ["snap-000000a1", "snap-000000a2"], "oldest first");
    assert_eq!(done.status.backups.as_ref().and_then(|b| b.kept), Some(2));
    assert!(done.requeue_after <= Duration::from_secs(24 * 3600 + 1));
}

#[tokio::test]
async fn engine_restore_creates_the_data_volume_from_the_snapshot_at_least_its_size() {
    let (engine, cloud, _hosts) = engine();
    let mut snap = completed("snap-0123456789abcdef0", "2026-01-01T03:00:00Z");
    snap.size_gib = 20;
    snap.volume_id = "vol-0ld".into();
    cloud.state.lock().unwrap().snapshots.push(snap);
    let mut s = stack();
    s.spec.database.restore_from_snapshot = Some("snap-0123456789abcdef0".into());
    let out = engine.reconcile(&s, Ok(key())).await;
    assert_eq!(out.status.phase, Some(Phase::Ready), "{:#?}", out.status.conditions);
    let state = cloud.state.lock().unwrap();
    assert_eq!(state.volumes.len(), 1);
    assert_eq!(state.volumes[0].size_gib, 20, "the snapshot is larger than volumeSizeGiB");
    assert_eq!(state.volume_origins.get(&state.volumes[0].id).map(String::as_str), Some("snap-0123456789abcdef0"));
}

#[tokio::test]
async fn engine_a_postgres_image_change_is_snapshotted_before_postgres_is_recreated() {
    let (engine, cloud, _hosts) = engine();
    let ready = engine.reconcile(&stack(), Ok(key())).await;
    let mut s = stack();
    s.spec.app.images.postgres = "postgres:16-alpine".into();
    let out = engine.reconcile(&with_status(s, &ready.status), Ok(key())).await;
    let snapshot_at = out.applied.iter().position(|a| matches!(a, Action::Infra(InfraAction::Snapshot(_))));
    let recreate_at = out.applied.iter().position(
        |a| matches!(a, Action::Host(votingstack::model::HostAction::CreateContainer { container, .. }) if container.name == "db"),
    );
    assert!(snapshot_at.is_some() && recreate_at.is_some() && snapshot_at < recreate_at, "{:?}", out.applied);
    assert_eq!(count(&cloud, "CreateSnapshot"), 1);
    assert_eq!(out.status.backups.as_ref().and_then(|b| b.last_upgrade.as_deref()), Some("postgres:16-alpine"));
}

#[tokio::test]
async fn engine_a_postgres_image_change_waits_when_its_snapshot_cannot_be_taken() {
    let (engine, cloud, _hosts) = engine();
    let ready = engine.reconcile(&stack(), Ok(key())).await;
    let mut s = stack();
    s.spec.app.images.postgres = "postgres:16-alpine".into();
    cloud.state.lock().unwrap().fail_with = Some("UnauthorizedOperation".into());
    let out = engine.reconcile(&with_status(s, &ready.status), Ok(key())).await;
    let db = votingstack::api::conditions::find_condition(
        &out.status.conditions,
        votingstack::api::ConditionType::DatabaseReady,
    )
    .unwrap();
    assert_eq!((db.status.as_str(), db.reason.as_str()), ("False", "SnapshotFailed"), "{}", db.message);
    assert!(db.message.contains("UnauthorizedOperation"), "{}", db.message);
    assert!(!out.applied.iter().any(|a| matches!(a, Action::Host(_))), "postgres untouched: {:?}", out.applied);
}

fn engine_waiting(cloud: &FakeCloud, hosts: &FakeHosts) -> Engine {
    let settings = EngineSettings {
        smoke_timeout: Duration::from_secs(2),
        snapshot_poll: Duration::from_millis(10),
        final_snapshot_wait: Duration::from_millis(50),
        ..Default::default()
    };
    Engine::new(Arc::new(cloud.clone()), Arc::new(hosts.clone()), settings)
}

#[tokio::test]
async fn engine_destroy_takes_a_final_snapshot_waits_for_it_then_deletes_the_volume() {
    let (cloud, hosts) = (FakeCloud::default(), FakeHosts::default());
    let engine = engine_waiting(&cloud, &hosts);
    let ready = engine.reconcile(&stack(), Ok(key())).await;
    assert_eq!(ready.status.phase, Some(Phase::Ready), "{:#?}", ready.status.conditions);
    let s = with_status(stack(), &ready.status);
    assert_eq!(s.spec.deletion_policy, DeletionPolicy::Snapshot, "the default");
    cloud.state.lock().unwrap().snapshot_polls_pending = 1000;
    let first = engine.destroy(&s).await.unwrap();
    let Teardown::SnapshotPending { snapshot_id } = first else { panic!("pending: {first:?}") };
    {
        let state = cloud.state.lock().unwrap();
        assert_eq!(state.volumes.len(), 1, "the volume stays while its snapshot is copied");
        assert!(state.instances.is_empty(), "the instances went first");
        assert_eq!(state.snapshots[0].slot.as_deref(), Some(FINAL_SLOT));
    }
    cloud.state.lock().unwrap().snapshot_polls_pending = 0;
    let second = engine.destroy(&s).await.unwrap();
    let Teardown::Deleted(report) = second else { panic!("deleted: {second:?}") };
    assert_eq!(report.snapshots, std::slice::from_ref(&snapshot_id), "found again by its tag");
    assert_eq!(count(&cloud, "CreateSnapshot"), 1, "no second final snapshot");
    let state = cloud.state.lock().unwrap();
    assert!(state.volumes.is_empty());
    assert!(state.snapshots.iter().any(|x| x.id == snapshot_id), "the snapshot stays");
}

#[tokio::test]
async fn engine_destroy_with_delete_takes_no_snapshot() {
    let (engine, cloud, _hosts) = engine();
    let ready = engine.reconcile(&stack(), Ok(key())).await;
    let mut s = with_status(stack(), &ready.status);
    s.spec.deletion_policy = DeletionPolicy::Delete;
    let Teardown::Deleted(report) = engine.destroy(&s).await.unwrap() else { panic!("deleted") };
    assert!(report.snapshots.is_empty());
    assert_eq!(count(&cloud, "CreateSnapshot") + count(&cloud, "DescribeSnapshots"), 0);
    assert!(cloud.state.lock().unwrap().volumes.is_empty());
}

#[tokio::test]
async fn engine_snapshot_now_waits_for_completed_and_names_the_snapshot() {
    let (cloud, hosts) = (FakeCloud::default(), FakeHosts::default());
    let engine = engine_waiting(&cloud, &hosts);
    let ready = engine.reconcile(&stack(), Ok(key())).await;
    cloud.state.lock().unwrap().snapshot_polls_pending = 2;
    let snap = engine.snapshot_now(&with_status(stack(), &ready.status), Duration::from_secs(5)).await.unwrap();
    assert_eq!(snap.state, SnapshotState::Completed);
    assert!(snap.slot.as_deref().is_some_and(|s| s.starts_with("cli/")), "{snap:?}");
    cloud.state.lock().unwrap().snapshot_polls_pending = 1000;
    let e = engine.snapshot_now(&with_status(stack(), &ready.status), Duration::from_millis(30)).await.unwrap_err();
    assert!(e.to_string().contains("not completed after"), "{e}");
}
