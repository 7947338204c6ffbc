//! The phased reconcile end to end over in-memory EC2 and hosts.

use crate::fixtures::stack;
use votingstack::api::conditions::find_condition;
use votingstack::api::{ConditionType, Phase, Tier, VotingStack, VotingStackStatus};
use votingstack::engine::{Failure, Outcome, Stop, Stopped};
use votingstack::model::DockerState;
use votingstack::model::{Action, HostAction, InfraAction, InstanceLaunch};

use crate::fakes::{engine, key};

fn with_status(mut s: VotingStack, status: &VotingStackStatus) -> VotingStack {
    s.status = Some(status.clone());
    s
}

fn reason(o: &Outcome, t: ConditionType) -> String {
    find_condition(&o.status.conditions, t).map(|c| format!("{} {}", c.status, c.reason)).unwrap_or_default()
}

fn instance_id(o: &Outcome, tier: Tier) -> String {
    o.status.tiers.as_ref().and_then(|t| t.get(tier)).and_then(|t| t.instance_id.clone()).expect("instance recorded")
}

#[tokio::test]
async fn engine_fresh_stack_converges_to_ready_in_one_pass() {
    let (engine, cloud, _hosts) = engine();
    let out = engine.reconcile(&stack(), Ok(key())).await;
    assert_eq!(out.status.phase, Some(Phase::Ready), "{:#?}", out.status.conditions);
    assert_eq!(reason(&out, ConditionType::Ready), "True AllTiersReady");
    assert_eq!(reason(&out, ConditionType::SmokeTestPassed), "True VoteCounted");
    assert_eq!(out.status.observed_generation, Some(1));
    assert_eq!(out.status.vote_url.as_deref(), Some("http://198.51.100.3/"));
    assert_eq!(out.status.result_url.as_deref(), Some("http://198.51.100.3:81/"));
    let launched = out
        .applied
        .iter()
        .filter(|a| matches!(a, Action::Infra(InfraAction::LaunchInstance(InstanceLaunch { .. }))))
        .count();
    assert_eq!(launched, 3);
    assert_eq!(out.transitions.len(), 6, "every condition appears once");
    assert!(cloud.state.lock().unwrap().network.is_some());
}

#[tokio::test]
async fn engine_second_reconcile_changes_nothing_and_costs_one_call_per_side() {
    let (engine, cloud, hosts) = engine();
    let first = engine.reconcile(&stack(), Ok(key())).await;
    let (ec2, ssh) = (cloud_calls(&cloud), hosts_calls(&hosts));
    let second = engine.reconcile(&with_status(stack(), &first.status), Ok(key())).await;
    assert!(second.applied.is_empty(), "{:?}", second.applied);
    assert!(second.transitions.is_empty());
    assert_eq!(cloud_calls(&cloud) - ec2, 1, "one DescribeInstances");
    assert_eq!(hosts_calls(&hosts) - ssh, 3, "one exec per host, no smoke test");
    assert_eq!(second.status.conditions, first.status.conditions, "timestamps kept");
}

/// Terminates an instance of the fake EC2, as someone would in the console.
fn terminate(cloud: &crate::fakes::FakeCloud, id: &str) {
    let mut state = cloud.state.lock().unwrap();
    for i in state.instances.iter_mut().filter(|i| i.id == id) {
        i.state = votingstack::model::InstanceState::Terminated;
        i.volumes.clear();
    }
    // EC2 lets go of the volumes of a terminated instance.
    for v in state.volumes.iter_mut() {
        v.attachments.retain(|a| a.instance_id != id);
        if v.attachments.is_empty() {
            v.state = votingstack::model::VolumeState::Available;
        }
    }
}

fn cloud_calls(c: &crate::fakes::FakeCloud) -> u64 {
    use votingstack::cloud::Cloud;
    c.api_calls()
}

fn hosts_calls(h: &crate::fakes::FakeHosts) -> u64 {
    use votingstack::host::Hosts;
    h.round_trips()
}

#[tokio::test]
async fn engine_killed_container_is_started_and_the_smoke_test_reruns() {
    let (engine, _cloud, hosts) = engine();
    let first = engine.reconcile(&stack(), Ok(key())).await;
    let backend = instance_id(&first, Tier::Backend);
    hosts.with_host(&backend, |h| h.containers.get_mut("worker").unwrap().state = "exited".into());
    let cast_before = hosts.state.lock().unwrap().cast.len();
    let out = engine.reconcile(&with_status(stack(), &first.status), Ok(key())).await;
    assert!(
        matches!(&out.applied[..], [Action::Host(HostAction::StartContainer { name, .. })] if name == "worker"),
        "{:?}",
        out.applied
    );
    assert_eq!(out.status.phase, Some(Phase::Ready));
    assert_eq!(hosts.state.lock().unwrap().cast.len(), cast_before + 1, "a second smoke vote");
    assert!(hosts.state.lock().unwrap().votes.is_empty(), "the smoke test leaves no vote behind");
}

#[tokio::test]
async fn engine_smoke_test_deletes_smoke_votes_an_earlier_test_left_behind() {
    let (engine, _cloud, hosts) = engine();
    {
        let mut s = hosts.state.lock().unwrap();
        // A smoke vote that reached postgres after its test's deadline, and a real vote.
        s.votes.insert("votingstack-smoke-1700000000000-0-0badcafe".into(), "a".into());
        s.votes.insert("a1b2c3d4e5".into(), "b".into());
    }
    let out = engine.reconcile(&stack(), Ok(key())).await;
    assert_eq!(out.status.phase, Some(Phase::Ready));
    let votes = hosts.state.lock().unwrap().votes.clone();
    assert_eq!(votes.keys().collect::<Vec<_>>(), ["a1b2c3d4e5"], "only the real vote stays: {votes:?}");
}

#[tokio::test]
async fn engine_data_volume_is_marked_formatted_once_postgres_runs_on_it() {
    let (engine, _cloud, _hosts) = engine();
    let first = engine.reconcile(&stack(), Ok(key())).await;
    assert_eq!(first.status.phase, Some(Phase::Ready));
    let formatted = first.status.data_volume.as_ref().and_then(|v| v.formatted.clone());
    assert!(formatted.is_some(), "{:?}", first.status.data_volume);
    let spec = &stack().spec;
    assert!(!votingstack::engine::desired::may_format(spec, &first.status), "a tagged volume is never formatted");
    let mut restoring = spec.clone();
    restoring.database.restore_from_snapshot = Some("snap-0123456789abcdef0".into());
    let blank = votingstack::api::VotingStackStatus::default();
    assert!(votingstack::engine::desired::may_format(spec, &blank), "a new blank volume may be formatted");
    assert!(
        !votingstack::engine::desired::may_format(&restoring, &blank),
        "a volume restored from a snapshot is never formatted"
    );
    let again = engine.reconcile(&with_status(stack(), &first.status), Ok(key())).await;
    assert_eq!(again.status.data_volume.and_then(|v| v.formatted), formatted, "tagged once");
}

#[tokio::test]
async fn engine_terminated_instance_is_replaced_and_peers_follow() {
    let (engine, cloud, hosts) = engine();
    let first = engine.reconcile(&stack(), Ok(key())).await;
    let db = instance_id(&first, Tier::Database);
    terminate(&cloud, &db);
    let out = engine.reconcile(&with_status(stack(), &first.status), Ok(key())).await;
    let new_db = instance_id(&out, Tier::Database);
    assert_ne!(new_db, db);
    assert_eq!(out.status.tiers.as_ref().unwrap().database.as_ref().unwrap().replacements, 1);
    // worker and result point at db: they are re-created with the new IP
    // (result rolled out behind the proxy).
    let recreated: Vec<String> = out
        .applied
        .iter()
        .filter_map(|a| match a {
            Action::Host(HostAction::CreateContainer { container, .. }) => Some(container.name.clone()),
            Action::Host(HostAction::RollContainer { container, .. }) => Some(container.role.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(recreated, ["db", "worker", "result"]);
    assert_eq!(out.status.phase, Some(Phase::Ready));
    assert!(hosts.state.lock().unwrap().hosts.contains_key(&new_db));
}

#[tokio::test]
async fn engine_images_keep_their_first_digest_on_a_replacement_host() {
    let (engine, cloud, _hosts) = engine();
    let first = engine.reconcile(&stack(), Ok(key())).await;
    let images = &stack().spec.app.images;
    let postgres = images.postgres.clone();
    assert_eq!(first.status.images.len(), 6, "vote, result, proxy, worker, redis, postgres: {:?}", first.status.images);
    assert_eq!(first.status.images[&postgres], crate::fakes::fake_digest(&postgres));
    let db_status = first.status.tiers.as_ref().and_then(|t| t.database.clone()).unwrap();
    assert_eq!(db_status.containers[0].image_digest.as_deref(), Some(first.status.images[&postgres].as_str()));

    // The tag may point elsewhere by now: the new host runs the pinned digest.
    let db = instance_id(&first, Tier::Database);
    terminate(&cloud, &db);
    let out = engine.reconcile(&with_status(stack(), &first.status), Ok(key())).await;
    let created = out
        .applied
        .iter()
        .find_map(|a| match a {
            Action::Host(HostAction::CreateContainer { container, .. }) if container.name == "db" => Some(container),
            _ => None,
        })
        .expect("db created on the new host");
    let pin = &first.status.images[&postgres];
    assert_eq!(created.pinned_digest.as_ref(), Some(pin));
    assert!(created.run_reference().ends_with(&format!("@{pin}")), "{}", created.run_reference());
    assert_eq!(out.status.images, first.status.images, "pins are kept");

    // A new reference in the spec is the way to roll out a new digest.
    let mut changed = with_status(stack(), &out.status);
    changed.spec.app.images.postgres = format!("{postgres}-next");
    let next = engine.reconcile(&changed, Ok(key())).await;
    assert!(!next.status.images.contains_key(&postgres), "the old reference is forgotten");
    assert_eq!(
        next.status.images.get(&changed.spec.app.images.postgres),
        Some(&crate::fakes::fake_digest(&changed.spec.app.images.postgres))
    );
}

#[tokio::test]
async fn engine_marks_the_deploy_phases_it_sees_on_the_timeline() {
    use votingstack::timeline::{self, Stage};
    let (engine, _cloud, _hosts) = engine();
    let mut s = stack();
    s.metadata.name = Some("timeline".into());
    timeline::record("default/timeline");
    let out = engine.reconcile(&s, Ok(key())).await;
    assert_eq!(out.status.phase, Some(Phase::Ready));
    let marks = timeline::take("default/timeline");
    let count = |stage: Stage| marks.iter().filter(|m| m.phase == stage).count();
    assert_eq!(count(Stage::Network), 1, "{marks:?}");
    assert_eq!(count(Stage::InstanceRunning), 3, "{marks:?}");
    assert_eq!(count(Stage::SmokeTest), 1, "{marks:?}");
    // A second pass over a Ready stack has nothing to mark.
    timeline::record("default/timeline");
    engine.reconcile(&with_status(s, &out.status), Ok(key())).await;
    assert!(timeline::take("default/timeline").is_empty());
}

#[tokio::test]
async fn engine_invalid_spec_creates_nothing() {
    let (engine, cloud, _) = engine();
    let mut s = stack();
    s.spec.network.subnet_cidr = "192.168.0.0/24".into();
    let out = engine.reconcile(&s, Ok(key())).await;
    assert_eq!(reason(&out, ConditionType::Ready), "False InvalidSpec");
    assert_eq!(out.status.phase, Some(Phase::Failed));
    assert_eq!(out.status.conditions.len(), 1);
    assert!(out.status.conditions[0].message.contains("spec.network.subnetCidr"));
    assert_eq!(cloud_calls(&cloud), 0);
}

#[tokio::test]
async fn engine_missing_secret_waits_without_touching_aws() {
    let (engine, cloud, _) = engine();
    let out = engine.reconcile(&stack(), Err("Secret demo-ssh was not found".into())).await;
    assert_eq!(reason(&out, ConditionType::Ready), "False SecretMissing");
    assert_eq!(out.status.phase, Some(Phase::Pending));
    assert_eq!(cloud_calls(&cloud), 0);
}

#[tokio::test]
async fn engine_aws_errors_become_conditions_with_the_code() {
    let (engine, cloud, _) = engine();
    cloud.state.lock().unwrap().fail_with = Some("UnauthorizedOperation".into());
    let out = engine.reconcile(&stack(), Ok(key())).await;
    let infra = find_condition(&out.status.conditions, ConditionType::InfrastructureReady).unwrap();
    assert_eq!(infra.reason, "AwsAuthFailed");
    assert!(infra.message.contains("UnauthorizedOperation"), "{}", infra.message);
    assert_eq!(out.status.phase, Some(Phase::Failed));
    assert_eq!(out.error, Some(Failure::Aws));

    cloud.state.lock().unwrap().fail_with = Some("RequestLimitExceeded".into());
    let out = engine.reconcile(&stack(), Ok(key())).await;
    assert_eq!(reason(&out, ConditionType::InfrastructureReady), "False AwsThrottled");
    assert_eq!(out.status.phase, Some(Phase::Provisioning), "throttling is retried, not terminal");
}

#[tokio::test]
async fn engine_paused_stack_is_observed_not_changed() {
    let (engine, _cloud, hosts) = engine();
    let first = engine.reconcile(&stack(), Ok(key())).await;
    let backend = instance_id(&first, Tier::Backend);
    hosts.with_host(&backend, |h| h.containers.remove("redis"));
    let mut s = with_status(stack(), &first.status);
    s.spec.paused = true;
    let out = engine.reconcile(&s, Ok(key())).await;
    assert!(out.applied.is_empty());
    assert_eq!(out.status.phase, Some(Phase::Paused));
    assert_eq!(reason(&out, ConditionType::BackendReady), "False NotReady");
}

/// Ages every pin past the settle window.
fn settled(mut status: VotingStackStatus) -> VotingStackStatus {
    for tier in Tier::ALL {
        if let Some(t) = status.tiers.as_mut().and_then(|t| t.slot(tier).as_mut()) {
            t.host_key_pinned_at = Some("2020-01-01T00:00:00Z".into());
        }
    }
    status
}

#[tokio::test]
async fn engine_host_key_change_is_refused_and_terminal() {
    let (engine, _cloud, hosts) = engine();
    let first = engine.reconcile(&stack(), Ok(key())).await;
    let front = instance_id(&first, Tier::Frontend);
    hosts.with_host(&front, |h| h.fingerprint = "SHA256:someone-else".into());
    let out = engine.reconcile(&with_status(stack(), &settled(first.status)), Ok(key())).await;
    assert_eq!(reason(&out, ConditionType::FrontendReady), "False HostKeyMismatch");
    assert_eq!(reason(&out, ConditionType::Ready), "False HostKeyMismatch");
    assert_eq!(out.status.phase, Some(Phase::Failed));
}

#[tokio::test]
async fn engine_host_key_change_right_after_first_contact_is_refused_and_not_repinned() {
    // No settle window: an instance's first key is its key.
    let (engine, _cloud, hosts) = engine();
    let first = engine.reconcile(&stack(), Ok(key())).await;
    let db = instance_id(&first, Tier::Database);
    let pinned = first.status.tiers.as_ref().unwrap().database.as_ref().unwrap().clone();
    assert_eq!(pinned.host_key_fingerprint.as_deref(), Some(format!("SHA256:{db}").as_str()));
    assert!(pinned.host_key_pinned_at.is_some());
    hosts.with_host(&db, |h| h.fingerprint = "SHA256:someone-else".into());
    let out = engine.reconcile(&with_status(stack(), &first.status), Ok(key())).await;
    assert_eq!(reason(&out, ConditionType::DatabaseReady), "False HostKeyMismatch");
    let still = out.status.tiers.as_ref().unwrap().database.as_ref().unwrap();
    assert_eq!(still.host_key_fingerprint, pinned.host_key_fingerprint, "not re-pinned");
    // Nothing is done on the database host; postgres cannot be seen to
    // answer there, so the worker is held (votes wait in redis).
    assert!(
        out.applied.iter().all(|a| matches!(a, Action::Host(HostAction::HoldWorker { tier: Tier::Backend, .. }))),
        "nothing but the worker's hold was done: {:?}",
        out.applied
    );
}

#[tokio::test]
async fn engine_unreachable_host_then_recovery() {
    let (engine, _cloud, hosts) = engine();
    let first = engine.reconcile(&stack(), Ok(key())).await;
    let db = instance_id(&first, Tier::Database);
    hosts.state.lock().unwrap().unreachable.push(db.clone());
    let down = engine.reconcile(&with_status(stack(), &first.status), Ok(key())).await;
    assert_eq!(reason(&down, ConditionType::DatabaseReady), "False SshUnreachable");
    assert_eq!(down.status.phase, Some(Phase::Degraded));
    hosts.state.lock().unwrap().unreachable.clear();
    let up = engine.reconcile(&with_status(stack(), &down.status), Ok(key())).await;
    assert_eq!(up.status.phase, Some(Phase::Ready));
}

#[tokio::test]
async fn engine_docker_down_is_started() {
    let (engine, _cloud, hosts) = engine();
    let first = engine.reconcile(&stack(), Ok(key())).await;
    let backend = instance_id(&first, Tier::Backend);
    hosts.with_host(&backend, |h| h.docker = DockerState::Down("Cannot connect to the Docker daemon".into()));
    let out = engine.reconcile(&with_status(stack(), &first.status), Ok(key())).await;
    assert!(
        matches!(&out.applied[..], [Action::Host(HostAction::StartDocker { tier: Tier::Backend })]),
        "{:?}",
        out.applied
    );
    assert_eq!(out.status.phase, Some(Phase::Ready));
}

#[tokio::test]
async fn engine_destroy_honours_retain() {
    let (engine, cloud, _) = engine();
    engine.reconcile(&stack(), Ok(key())).await;
    let mut s = stack();
    s.spec.deletion_policy = votingstack::api::DeletionPolicy::Retain;
    assert_eq!(engine.destroy(&s).await.unwrap(), votingstack::engine::Teardown::Retained { data_volume: None });
    assert_eq!(cloud.state.lock().unwrap().instances.len(), 3);
    s.spec.deletion_policy = votingstack::api::DeletionPolicy::Delete;
    assert!(matches!(engine.destroy(&s).await.unwrap(), votingstack::engine::Teardown::Deleted(_)));
    assert!(cloud.state.lock().unwrap().instances.is_empty());
}

#[test]
fn engine_smoke_voter_ids_are_unique_and_recognisable() {
    let ids: std::collections::HashSet<String> = (0..1000).map(|_| votingstack::engine::smoke_voter_id()).collect();
    assert_eq!(ids.len(), 1000, "every id is new, even within one millisecond");
    assert!(ids.iter().all(|id| id.starts_with("votingstack-smoke-")), "{ids:?}");
}

#[tokio::test]
async fn engine_terminal_aws_error_still_records_the_generation() {
    let (engine, cloud, _) = engine();
    cloud.state.lock().unwrap().fail_with = Some("UnauthorizedOperation".into());
    let mut s = stack();
    s.metadata.generation = Some(3);
    let out = engine.reconcile(&s, Ok(key())).await;
    assert_eq!(out.status.phase, Some(Phase::Failed));
    assert_eq!(out.status.observed_generation, Some(3), "a terminal answer is the answer for this generation");

    cloud.state.lock().unwrap().fail_with = Some("RequestLimitExceeded".into());
    s.metadata.generation = Some(4);
    let out = engine.reconcile(&with_status(s, &out.status), Ok(key())).await;
    assert_eq!(out.status.observed_generation, Some(3), "a retried EC2 failure redoes the generation");
}

#[tokio::test]
async fn engine_stop_asked_before_a_pass_touches_nothing() {
    let (engine, cloud, hosts) = engine();
    let stop = Stop::default();
    stop.request();
    let out = engine.reconcile_or_stop(&stack(), Ok(key()), &stop).await;
    assert_eq!(out.err(), Some(Stopped { at: "before the EC2 phase" }));
    assert_eq!((cloud_calls(&cloud), hosts_calls(&hosts)), (0, 0));
}

#[tokio::test]
async fn engine_stop_during_the_ec2_steps_ends_before_the_next_step_and_the_next_pass_goes_on() {
    let (engine, cloud, hosts) = engine();
    let stop = Stop::default();
    cloud.state.lock().unwrap().stop_on_launch = Some(stop.clone());
    let out = engine.reconcile_or_stop(&stack(), Ok(key()), &stop).await;
    assert_eq!(out.err(), Some(Stopped { at: "before an EC2 step of the plan" }), "no half-made status comes back");
    let launched: Vec<String> = cloud.state.lock().unwrap().instances.iter().map(|i| i.id.clone()).collect();
    assert_eq!(launched.len(), 1, "the launch under way finished; no other began: {launched:?}");
    assert_eq!(hosts_calls(&hosts), 0, "no host was contacted");

    // The next pass starts from the same (unwritten) status and finds the
    // launched instance by its tags instead of launching another.
    cloud.state.lock().unwrap().stop_on_launch = None;
    let next = engine.reconcile_or_stop(&stack(), Ok(key()), &Stop::default()).await.expect("not stopped");
    assert_eq!(next.status.phase, Some(Phase::Ready), "{:#?}", next.status.conditions);
    assert_eq!(cloud.state.lock().unwrap().instances.len(), 3, "one instance per tier");
    let recorded: Vec<String> = Tier::ALL.iter().map(|t| instance_id(&next, *t)).collect();
    assert!(recorded.contains(&launched[0]), "{launched:?} kept, not replaced: {recorded:?}");
}

#[tokio::test]
async fn engine_stop_during_the_host_changes_leaves_the_other_hosts_alone_and_skips_the_smoke_test() {
    let (engine, cloud, hosts) = engine();
    let stop = Stop::default();
    hosts.state.lock().unwrap().stop_on_apply = Some(stop.clone());
    let out = engine.reconcile_or_stop(&stack(), Ok(key()), &stop).await;
    assert_eq!(out.err(), Some(Stopped { at: "before a host's changes" }));
    assert_eq!(cloud.state.lock().unwrap().instances.len(), 3, "the EC2 phase was done before the stop");
    let state = hosts.state.lock().unwrap();
    let changed: Vec<usize> = state.hosts.values().map(|h| h.containers.len()).filter(|n| *n > 0).collect();
    assert_eq!(changed.len(), 1, "the host whose changes ran has them all; the others none: {changed:?}");
    assert!(state.cast.is_empty(), "no smoke vote");
}

#[tokio::test]
async fn engine_reconcile_without_a_stop_is_the_same_pass() {
    let (engine, _cloud, _hosts) = engine();
    let out = engine.reconcile_or_stop(&stack(), Ok(key()), &Stop::default()).await.expect("never stopped");
    assert_eq!(out.status.phase, Some(Phase::Ready));
    assert_eq!(reason(&out, ConditionType::SmokeTestPassed), "True VoteCounted");
}

/// An engine over fresh fakes that allows `allowed` besides AWS's endpoints.
fn engine_allowing(allowed: &[&str]) -> (votingstack::engine::Engine, crate::fakes::FakeCloud) {
    use std::sync::Arc;
    let cloud = crate::fakes::FakeCloud::default();
    let settings = votingstack::engine::EngineSettings {
        smoke_timeout: std::time::Duration::from_secs(2),
        endpoints: votingstack::api::EndpointPolicy::allowing(allowed).unwrap(),
        ..Default::default()
    };
    let hosts = Arc::new(crate::fakes::FakeHosts::default());
    (votingstack::engine::Engine::new(Arc::new(cloud.clone()), hosts, settings), cloud)
}

fn with_endpoint(endpoint: &str) -> VotingStack {
    let mut s = stack();
    s.spec.aws.endpoint = Some(endpoint.into());
    s
}

#[tokio::test]
async fn engine_refuses_an_endpoint_outside_aws_before_any_ec2_call() {
    use votingstack::cloud::Cloud;
    let (engine, cloud) = engine_allowing(&[]);
    let stack = with_endpoint("http://127.0.0.1:5055");
    let out = engine.reconcile(&stack, Ok(key())).await;
    assert_eq!(reason(&out, ConditionType::Ready), "False InvalidSpec");
    assert_eq!(out.status.phase, Some(Phase::Failed));
    let message = find_condition(&out.status.conditions, ConditionType::Ready).unwrap().message.clone();
    for part in ["spec.aws.endpoint", "http://127.0.0.1:5055", "not https://", "--allow-endpoint http://127.0.0.1:5055"]
    {
        assert!(message.contains(part), "{part:?} missing from {message}");
    }
    let refused = engine.plan(&stack, Some(&key())).await.expect_err("plan refused");
    assert!(refused.to_string().starts_with("spec.aws.endpoint: "), "{refused}");
    let refused = engine.destroy(&stack).await.expect_err("destroy refused");
    assert!(refused.to_string().contains("--allow-endpoint"), "{refused}");
    assert_eq!(cloud.api_calls(), 0, "no request was signed for the refused endpoint");
}

#[tokio::test]
async fn engine_uses_an_allowed_endpoint_and_still_refuses_its_neighbours() {
    use votingstack::cloud::Cloud;
    let (engine, cloud) = engine_allowing(&["http://127.0.0.1:5055"]);
    let out = engine.reconcile(&with_endpoint("http://127.0.0.1:5055"), Ok(key())).await;
    assert_eq!(out.status.phase, Some(Phase::Ready), "{:#?}", out.status.conditions);
    let calls = cloud.api_calls();
    assert!(calls > 0);
    let out = engine.reconcile(&with_endpoint("http://127.0.0.1:5056"), Ok(key())).await;
    assert_eq!(reason(&out, ConditionType::Ready), "False InvalidSpec");
    assert_eq!(cloud.api_calls(), calls, "nothing more was sent");
}

#[tokio::test]
async fn engine_instances_that_die_at_launch_are_launched_once_per_generation_with_aws_reason() {
    let (engine, cloud, _) = engine();
    let code = "Client.InternalError";
    cloud.state.lock().unwrap().default_key_unusable =
        Some((code.into(), "Client.InternalError: Client error on launch".into()));
    let mut s = stack();
    s.metadata.generation = Some(1);
    let out = engine.reconcile(&s, Ok(key())).await;
    assert_eq!(out.status.phase, Some(Phase::Failed), "{:#?}", out.status.conditions);
    assert_eq!(reason(&out, ConditionType::Ready), "False InstanceLaunchFailed");
    assert_eq!(reason(&out, ConditionType::InfrastructureReady), "False InstanceLaunchFailed");
    let db = find_condition(&out.status.conditions, ConditionType::DatabaseReady).expect("DatabaseReady");
    assert_eq!(db.reason, "InstanceLaunchFailed");
    assert!(db.message.contains("(Client.InternalError: Client error on launch)"), "{}", db.message);
    assert!(db.message.contains("spec.instances.kmsKeyId"), "{}", db.message);
    assert_eq!(out.requeue_after, engine.settings().terminal_retry);
    let launches = |cloud: &crate::fakes::FakeCloud| cloud.state.lock().unwrap().launch_keys.len();
    assert_eq!(launches(&cloud), 3, "one launch per tier");
    let tier = out.status.tiers.as_ref().unwrap().database.clone().unwrap();
    assert_eq!(tier.launch_failures, 1);
    let last = tier.last_launch_failure.expect("the failure is recorded");
    assert_eq!((last.code.as_str(), last.generation), (code, Some(1)));

    // No loop: passes of the same generation launch nothing.
    let mut status = out.status;
    for _ in 0..3 {
        let again = engine.reconcile(&with_status(s.clone(), &status), Ok(key())).await;
        assert_eq!(again.applied, [], "nothing is launched again");
        assert_eq!(reason(&again, ConditionType::Ready), "False InstanceLaunchFailed");
        status = again.status;
    }
    assert_eq!(launches(&cloud), 3);
    assert_eq!(status.tiers.as_ref().unwrap().database.as_ref().unwrap().launch_failures, 1, "counted once");

    // Setting a key the operator may use is a spec change: one more launch
    // per tier, with that key, and the stack comes up.
    s.spec.instances.kms_key_id = Some("alias/votingstack-ebs".into());
    s.metadata.generation = Some(2);
    let out = engine.reconcile(&with_status(s.clone(), &status), Ok(key())).await;
    assert_eq!(out.status.phase, Some(Phase::Ready), "{:#?}", out.status.conditions);
    let keys = cloud.state.lock().unwrap().launch_keys.clone();
    assert_eq!(keys.len(), 6);
    assert!(keys[3..].iter().all(|k| k.as_deref() == Some("alias/votingstack-ebs")), "{keys:?}");
    let db = out.status.tiers.as_ref().unwrap().database.clone().unwrap();
    assert_eq!(db.replacements, 1, "a new ClientToken");
    assert_eq!(db.launch_failures, 1, "the history stays");
}
