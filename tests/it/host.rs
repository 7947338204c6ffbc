//! The host side against real hosts of the local world (sshd + their own
//! Docker engine, workload images from the world's registry): deploy,
//! steady state, drift repair, host keys, outages, drift events, smoke test.
//! Needs `scripts/world up`.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::fixtures;
use tokio::sync::mpsc;
use votingstack::api::{ConnectVia, PullPolicy, Reason, Tier, VotingStack, VotingStackSpec};
use votingstack::cloud::ec2::Ec2Cloud;
use votingstack::cloud::StackIdentity;
use votingstack::engine::conditions::tiers::host_reason;
use votingstack::engine::desired::desired_containers;
use votingstack::engine::plan::{plan_host, HostView};
use votingstack::engine::tear_down;
use votingstack::engine::{Engine, EngineSettings};
use votingstack::host::events::Backoff;
use votingstack::host::{DriftCause, DriftEvent, DriftWatcher, HostError, HostTarget, Hosts, SshHosts, SshKey};
use votingstack::model::{Action, CreateReason, HostAction};
use votingstack::model::{DesiredContainer, Peers};
use votingstack::model::{DockerState, ObservedHost};

use crate::world::{ec2_client, observe_until, wait_docker, World};

/// Every desired container runs with its config hash, and every probe passes.
fn converged(o: &ObservedHost, desired: &[DesiredContainer]) -> bool {
    o.docker == DockerState::Running
        && desired
            .iter()
            .all(|d| o.container(&d.name).is_some_and(|c| c.state == "running" && c.config_hash == d.config_hash()))
        && o.probes.iter().all(|(_, r)| r.is_ok())
}

fn names(actions: &[HostAction]) -> Vec<String> {
    actions.iter().map(name).collect()
}

/// Host actions as [`name`] says them, EC2 actions as `plan` prints them.
fn all_names(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            Action::Host(h) => name(h),
            Action::Infra(i) => i.to_string(),
        })
        .collect()
}

fn name(action: &HostAction) -> String {
    match action {
        HostAction::CreateContainer { container, reason: CreateReason::Missing } => {
            format!("create {}", container.name)
        }
        HostAction::CreateContainer { container, .. } => format!("recreate {}", container.name),
        HostAction::StartContainer { name, .. } => format!("start {name}"),
        HostAction::RemoveContainer { name, .. } => format!("remove {name}"),
        HostAction::RollContainer { container, .. } => format!("roll {}", container.role),
        other => other.to_string(),
    }
}

/// Observe, plan, apply one host; returns what was planned.
async fn converge(hosts: &SshHosts, key: &SshKey, t: &HostTarget, desired: &[DesiredContainer]) -> Vec<HostAction> {
    let observed = hosts.observe(t, key).await.unwrap_or_else(|e| panic!("observe: {e}"));
    let actions = plan_host(t.tier, desired, HostView::Observed(&observed));
    if !actions.is_empty() {
        hosts
            .apply(t, key, &actions, PullPolicy::IfNotPresent)
            .await
            .unwrap_or_else(|e| panic!("apply {actions:?}: {e}"));
    }
    observe_until(hosts, t, key, Duration::from_secs(90), "converged", |o| converged(o, desired)).await;
    actions
}

async fn plan_now(hosts: &SshHosts, key: &SshKey, t: &HostTarget, desired: &[DesiredContainer]) -> Vec<HostAction> {
    let observed = hosts.observe(t, key).await.unwrap_or_else(|e| panic!("observe: {e}"));
    plan_host(t.tier, desired, HostView::Observed(&observed))
}

async fn wait_http_200(hosts: &SshHosts, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = hosts.http_status(url).await;
        if matches!(last, Ok(200)) {
            return;
        }
        assert!(Instant::now() < deadline, "{url} did not answer 200 within 60 s: {last:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn wait_vote(hosts: &SshHosts, key: &SshKey, db: &HostTarget, voter: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = hosts.recorded_vote(db, key, voter).await.unwrap_or_else(|e| panic!("recorded_vote: {e}"));
        if got.as_deref() == Some("a") {
            return;
        }
        assert!(Instant::now() < deadline, "the vote of {voter} did not reach postgres within 60 s (last {got:?})");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

const CONVERGE_STACK: &str = "host-it/converge";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn host_three_tiers_deploy_converge_and_repair() {
    let world = World::load();
    let fleet = world.fleet("converge", 221, 3).await;
    let key = &world.key;
    let hosts = SshHosts::default();
    let (db_host, be_host, fe_host) = (&fleet.hosts[0], &fleet.hosts[1], &fleet.hosts[2]);
    let db = fleet.target(0, CONVERGE_STACK, Tier::Database, &world.user);
    let be = fleet.target(1, CONVERGE_STACK, Tier::Backend, &world.user);
    let fe = fleet.target(2, CONVERGE_STACK, Tier::Frontend, &world.user);
    // Recreate: vote and result keep their names and publish the ports, so
    // the host layer's create, kill, start and re-create steps are seen on
    // them directly (the proxy's roll-outs are the e2e tests' part).
    let mut spec = fixtures::recreate_spec();
    spec.app.images = world.images();
    let peers = Peers { backend: Some(be_host.ip), database: Some(db_host.ip) };
    let desired = |spec: &VotingStackSpec, tier, peers| desired_containers(spec, tier, peers);

    // fresh deploy, in tier order
    for (i, t) in [&db, &be, &fe].into_iter().enumerate() {
        let o = wait_docker(&hosts, t, key).await;
        assert!(o.containers.is_empty(), "{:?}", o.containers);
        assert!(
            fleet.hosts[i].host_key_fingerprints().contains(&o.host_key_fingerprint),
            "{} is not one of the host's keys",
            o.host_key_fingerprint
        );
        let want = desired(&spec, t.tier, peers);
        let actions = converge(&hosts, key, t, &want).await;
        let expected: Vec<String> = want.iter().map(|c| format!("create {}", c.name)).collect();
        assert_eq!(names(&actions), expected);
    }
    // no env file is left behind
    let (_, left) = fe_host.sh("ls /tmp/votingstack.* 2>/dev/null | wc -l");
    assert_eq!(left.trim(), "0");
    let vote_url = format!("http://{}/", fe_host.ip);
    let result_url = format!("http://{}:81/", fe_host.ip);
    wait_http_200(&hosts, &vote_url).await;
    wait_http_200(&hosts, &result_url).await;

    // steady state: nothing to do, one exec per host, no new session
    let (c0, s0) = (hosts.round_trips(), hosts.sessions_opened());
    for t in [&db, &be, &fe] {
        let actions = plan_now(&hosts, key, t, &desired(&spec, t.tier, peers)).await;
        assert!(actions.is_empty(), "{}: {actions:?}", t.describe());
    }
    assert_eq!(hosts.round_trips() - c0, 3, "one exec per host");
    assert_eq!(hosts.sessions_opened(), s0, "pooled sessions are reused");

    // smoke test path: a vote through the vote page reaches postgres
    let voter = format!("host-it-{}", std::process::id());
    hosts.cast_vote(&vote_url, &voter, "a").await.unwrap_or_else(|e| panic!("cast_vote: {e}"));
    wait_vote(&hosts, key, &db, &voter).await;
    assert_eq!(hosts.recorded_vote(&db, key, "nobody-voted-this").await.unwrap(), None);

    // drift events: a kill is reported within 2 s
    let hosts = Arc::new(hosts);
    let (tx, mut rx) = mpsc::channel::<DriftEvent>(16);
    let mut watcher = DriftWatcher::spawn(hosts.clone(), fe.clone(), key.clone(), tx);
    assert!(watcher.wait_connected(Duration::from_secs(20)).await, "the event stream did not start");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    let (code, out) = fe_host.sh("docker kill vote");
    assert_eq!(code, 0, "{out}");
    let ev = tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .expect("a drift event within 2 s of the kill")
        .expect("the watcher is alive");
    assert_eq!(
        ev,
        DriftEvent {
            stack: CONVERGE_STACK.into(),
            tier: Tier::Frontend,
            container: "vote".into(),
            cause: DriftCause::Container("die".into())
        }
    );
    eprintln!("drift event after {:?}", killed.elapsed());

    // the killed container is started again
    let want_fe = desired(&spec, Tier::Frontend, peers);
    let actions = plan_now(&hosts, key, &fe, &want_fe).await;
    if !actions.is_empty() {
        assert_eq!(names(&actions), ["start vote"]);
        hosts.apply(&fe, key, &actions, PullPolicy::IfNotPresent).await.unwrap();
    }
    observe_until(&*hosts, &fe, key, Duration::from_secs(30), "vote running", |o| converged(o, &want_fe)).await;

    // the remote `docker events` ends with the watcher
    drop(watcher);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, n) = fe_host.sh("ps -eo args | grep -c '^docker events' || true");
        if n.trim() == "0" {
            break;
        }
        assert!(Instant::now() < deadline, "docker events still runs on the host after the watcher stopped");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // an orphan with the stack's label is removed
    let (code, out) = fe_host.sh(&format!(
        "docker run -d --name stray --label votingstack.dev/stack={CONVERGE_STACK} --label votingstack.dev/tier=frontend {}",
        world.images().vote
    ));
    assert_eq!(code, 0, "{out}");
    let actions = converge(&hosts, key, &fe, &want_fe).await;
    assert_eq!(names(&actions), ["remove stray"]);
    let o = hosts.observe(&fe, key).await.unwrap();
    assert!(o.container("stray").is_none());

    // a changed option re-creates vote and result (both carry the options), nothing else
    let mut tea = spec.clone();
    tea.app.option_a = "Tea 'n' \"biscuits\" $(x)".into();
    assert!(plan_now(&hosts, key, &db, &desired(&tea, Tier::Database, peers)).await.is_empty());
    assert!(plan_now(&hosts, key, &be, &desired(&tea, Tier::Backend, peers)).await.is_empty());
    let actions = converge(&hosts, key, &fe, &desired(&tea, Tier::Frontend, peers)).await;
    assert_eq!(names(&actions), ["recreate vote", "recreate result"]);
    let (_, env) = fe_host.sh("docker exec vote printenv OPTION_A");
    assert_eq!(env.trim_end_matches('\n'), "Tea 'n' \"biscuits\" $(x)");

    // a changed backend IP re-creates the containers that point at it: vote and worker
    let moved = Peers { backend: Some(Ipv4Addr::new(10, 221, 1, 250)), database: peers.database };
    assert!(plan_now(&hosts, key, &db, &desired(&tea, Tier::Database, moved)).await.is_empty());
    assert_eq!(names(&plan_now(&hosts, key, &be, &desired(&tea, Tier::Backend, moved)).await), ["recreate worker"]);
    let actions = converge(&hosts, key, &fe, &desired(&tea, Tier::Frontend, moved)).await;
    assert_eq!(names(&actions), ["recreate vote"]);
    let (_, h) = fe_host.sh("docker exec vote getent hosts redis");
    assert!(h.starts_with("10.221.1.250"), "{h}");
    let actions = converge(&hosts, key, &fe, &desired(&tea, Tier::Frontend, peers)).await;
    assert_eq!(names(&actions), ["recreate vote"]);

    fleet.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_key_change_is_refused() {
    let world = World::load();
    let fleet = world.fleet("hostkey", 223, 1).await;
    let key = &world.key;
    let hosts = SshHosts::default();
    let t = fleet.target(0, "host-it/hostkey", Tier::Database, &world.user);
    let first = wait_docker(&hosts, &t, key).await;
    let pinned = first.host_key_fingerprint.clone();
    assert!(pinned.starts_with("SHA256:"), "{pinned}");
    assert!(fleet.hosts[0].host_key_fingerprints().contains(&pinned));

    let mut wrong = t.clone();
    wrong.expected_host_key = Some("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into());
    // against the pooled session
    let err = hosts.observe(&wrong, key).await.unwrap_err();
    assert!(matches!(&err, HostError::HostKeyMismatch { presented, .. } if *presented == pinned), "{err}");
    assert_eq!(host_reason(&err), Reason::HostKeyMismatch);
    // and on a new connection
    let fresh = SshHosts::default();
    let err = fresh.observe(&wrong, key).await.unwrap_err();
    assert!(matches!(&err, HostError::HostKeyMismatch { presented, .. } if *presented == pinned), "{err}");
    assert_eq!(fresh.round_trips(), 0, "nothing ran on a host with the wrong key");

    let mut right = t.clone();
    right.expected_host_key = Some(pinned.clone());
    assert_eq!(fresh.observe(&right, key).await.unwrap().host_key_fingerprint, pinned);

    // a wrong login key is refused as such
    let other = SshKey::parse(crate::fixtures::TEST_KEY, "s", "k").unwrap();
    let err = SshHosts::default().observe(&right, &other).await.unwrap_err();
    assert!(matches!(err, HostError::AuthRefused { .. }), "{err}");

    fleet.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_ssh_outage_then_pool_reconnects() {
    let world = World::load();
    let fleet = world.fleet("outage", 224, 1).await;
    let key = &world.key;
    let hosts = SshHosts::default();
    let t = fleet.target(0, "host-it/outage", Tier::Backend, &world.user);
    wait_docker(&hosts, &t, key).await;
    let (code, out) = fleet.hosts[0].sh(&format!(
        "docker run -d --name redis --label votingstack.dev/stack=host-it/outage --label votingstack.dev/tier=backend {}",
        world.images().redis
    ));
    assert_eq!(code, 0, "{out}");
    let hosts = Arc::new(hosts);
    let (tx, mut rx) = mpsc::channel::<DriftEvent>(16);
    let backoff = Backoff { initial: Duration::from_millis(200), max: Duration::from_secs(2) };
    let mut watcher = DriftWatcher::spawn_with(hosts.clone(), t.clone(), key.clone(), tx, backoff);
    assert!(watcher.wait_connected(Duration::from_secs(20)).await, "the event stream did not start");
    let opened = hosts.sessions_opened();

    let rule = "INPUT -p tcp --dport 22 -j REJECT --reject-with tcp-reset";
    let (code, out) = fleet.hosts[0].sh(&format!("iptables -I {rule}"));
    assert_eq!(code, 0, "{out}");
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(30), hosts.observe(&t, key))
        .await
        .expect("observe gives up within 30 s")
        .unwrap_err();
    assert_eq!(host_reason(&err), Reason::SshUnreachable, "{err}");
    assert!(matches!(err, HostError::Unreachable { .. } | HostError::Timeout { .. }), "{err}");
    eprintln!("SSH down reported after {:?}: {err}", started.elapsed());
    let deadline = Instant::now() + Duration::from_secs(10);
    while watcher.is_connected() {
        assert!(Instant::now() < deadline, "the event stream did not notice the outage");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // the lost stream itself is reported, so a reconcile looks at the host now
    let lost = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a stream-lost event")
        .expect("the watcher is alive");
    assert_eq!(lost.cause, DriftCause::StreamLost, "{lost:?}");

    let (code, out) = fleet.hosts[0].sh(&format!("iptables -D {rule}"));
    assert_eq!(code, 0, "{out}");
    let o = observe_until(&*hosts, &t, key, Duration::from_secs(30), "SSH back", |_| true).await;
    assert_eq!(o.docker, DockerState::Running);
    assert!(hosts.sessions_opened() > opened, "a new session replaced the dead one");
    // and it is reused again
    let again = hosts.sessions_opened();
    hosts.observe(&t, key).await.unwrap();
    assert_eq!(hosts.sessions_opened(), again);

    // the event stream came back too: a stop is reported
    assert!(watcher.wait_connected(Duration::from_secs(20)).await, "the event stream did not come back");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, out) = fleet.hosts[0].sh("docker stop -t 1 redis");
    assert_eq!(code, 0, "{out}");
    let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a drift event after the stream reconnected")
        .expect("the watcher is alive");
    assert_eq!((ev.container.as_str(), ev.tier), ("redis", Tier::Backend));
    assert!(matches!(&ev.cause, DriftCause::Container(a) if a == "die" || a == "stop"), "{ev:?}");
    drop(watcher);

    fleet.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_docker_missing_is_reported_and_a_stopped_engine_started() {
    let world = World::load();
    let fleet = world.fleet("docker", 225, 1).await;
    let key = &world.key;
    let hosts = SshHosts::default();
    let t = fleet.target(0, "host-it/docker", Tier::Database, &world.user);
    let host = &fleet.hosts[0];
    wait_docker(&hosts, &t, key).await;
    let mut spec = fixtures::spec();
    spec.app.images = world.images();
    let want = desired_containers(&spec, Tier::Database, Peers::default());

    // a stopped engine: observed as down, started by StartDocker
    let (code, out) = host.sh("service docker stop");
    assert_eq!(code, 0, "{out}");
    let o = observe_until(&hosts, &t, key, Duration::from_secs(30), "Docker down", |o| {
        matches!(o.docker, DockerState::Down(_))
    })
    .await;
    let DockerState::Down(why) = &o.docker else { unreachable!() };
    assert!(!why.is_empty());
    let actions = plan_host(Tier::Database, &want, HostView::Observed(&o));
    assert_eq!(actions, [HostAction::StartDocker { tier: Tier::Database }]);
    hosts.apply(&t, key, &actions, PullPolicy::IfNotPresent).await.unwrap_or_else(|e| panic!("start Docker: {e}"));
    let o = hosts.observe(&t, key).await.unwrap();
    assert_eq!(o.docker, DockerState::Running);

    // no Docker at all (no docker command, no engine): observed as missing;
    // installing needs a package mirror, which the world's hosts have none
    // of (no sources): a clear error
    let (code, out) = host.sh(
        "service docker stop && mv /usr/bin/docker /usr/bin/docker.hidden && : > /etc/apt/sources.list && rm -f /etc/apt/sources.list.d/*",
    );
    assert_eq!(code, 0, "{out}");
    let o = hosts.observe(&t, key).await.unwrap();
    assert_eq!(o.docker, DockerState::Missing);
    let actions = plan_host(Tier::Database, &want, HostView::Observed(&o));
    assert_eq!(names(&actions), ["+ install Docker on the database host", "create db"]);
    let err = hosts.apply(&t, key, &actions, PullPolicy::IfNotPresent).await.unwrap_err();
    match &err {
        HostError::CommandFailed { step, stderr, .. } => {
            assert_eq!(step, "install Docker (apt-get install docker.io)");
            assert!(stderr.contains("docker"), "{stderr}");
        }
        other => panic!("expected CommandFailed, got {other}"),
    }
    eprintln!("install without a mirror: {err}");

    let (code, out) = host.sh("mv /usr/bin/docker.hidden /usr/bin/docker && service docker start");
    assert_eq!(code, 0, "{out}");
    let o =
        observe_until(&hosts, &t, key, Duration::from_secs(60), "Docker back", |o| o.docker == DockerState::Running)
            .await;
    assert_eq!(o.docker, DockerState::Running);

    fleet.cleanup().await;
}

/// Destroys the stack's AWS resources if the test ends early.
struct StackGuard {
    endpoint: String,
    stack: Arc<Mutex<VotingStack>>,
    done: bool,
}

impl Drop for StackGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let stack = self.stack.lock().map(|s| s.clone()).ok();
        let endpoint = self.endpoint.clone();
        let _ = std::thread::spawn(move || {
            let (Some(stack), Ok(rt)) = (stack, tokio::runtime::Builder::new_current_thread().enable_all().build())
            else {
                return;
            };
            rt.block_on(async {
                let cloud = Ec2Cloud::from_client(ec2_client(&endpoint))
                    .with_waits(Duration::from_millis(500), Duration::from_secs(60));
                let network = stack.status.as_ref().and_then(|s| s.network.clone());
                let _ = tear_down(&cloud, &StackIdentity::of(&stack), network.as_ref()).await;
            });
        })
        .join();
    }
}

/// The whole engine over the world's EC2 and hosts, with the private tiers
/// reached through the frontend.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn host_engine_reconcile_over_ec2_through_the_frontend() {
    let world = World::load();
    let cloud = Ec2Cloud::from_client(ec2_client(&world.endpoint))
        .with_waits(Duration::from_millis(500), Duration::from_secs(120));
    let hosts = Arc::new(SshHosts::default());
    let settings = EngineSettings { smoke_timeout: Duration::from_secs(60), ..Default::default() };
    let engine = Engine::new(Arc::new(cloud), hosts.clone(), settings);

    let mut spec = fixtures::spec();
    spec.instances.ami = Some(world.ami.clone());
    spec.instances.instance_type = world.instance_type.clone();
    spec.network.vpc_cidr = "10.222.0.0/16".into();
    spec.network.subnet_cidr = "10.222.1.0/24".into();
    spec.network.ssh_ingress_cidrs = vec!["10.0.0.0/8".into()];
    spec.network.connect_via = ConnectVia::PrivateIp;
    spec.ssh.user = world.user.clone();
    spec.ssh.jump_through_frontend = true;
    spec.ssh.connect_timeout_seconds = 5;
    spec.app.images = world.images();
    let mut stack = VotingStack::new("engine", spec);
    stack.metadata.namespace = Some("host-it".into());
    stack.metadata.uid = Some(format!("host-it-engine-{}", std::process::id()));
    stack.metadata.generation = Some(1);
    let shared = Arc::new(Mutex::new(stack.clone()));
    let mut guard = StackGuard { endpoint: world.endpoint.clone(), stack: shared.clone(), done: false };

    async fn until_ready(
        engine: &Engine,
        stack: &mut VotingStack,
        key: &SshKey,
        shared: &Mutex<VotingStack>,
    ) -> Vec<Action> {
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut applied = Vec::new();
        loop {
            let outcome = engine.reconcile(stack, Ok(key.clone())).await;
            applied.extend(outcome.applied.clone());
            stack.status = Some(outcome.status.clone());
            if let Ok(mut s) = shared.lock() {
                *s = stack.clone();
            }
            if outcome.is_ready() {
                return applied;
            }
            let conds: Vec<String> = outcome
                .status
                .conditions
                .iter()
                .map(|c| format!("{}={} {}: {}", c.type_, c.status, c.reason, c.message))
                .collect();
            assert!(Instant::now() < deadline, "not Ready within 300 s: {conds:#?}");
            tokio::time::sleep(outcome.requeue_after.min(Duration::from_secs(2))).await;
        }
    }

    let applied = until_ready(&engine, &mut stack, &world.key, &shared).await;
    let creates = applied.iter().filter(|a| matches!(a, Action::Host(HostAction::CreateContainer { .. }))).count();
    let rolled = applied.iter().filter(|a| matches!(a, Action::Host(HostAction::RollContainer { .. }))).count();
    assert_eq!((creates, rolled), (4, 2), "db, redis, worker, proxy; vote and result rolled in: {applied:#?}");
    let status = stack.status.clone().unwrap();
    let tiers = status.tiers.clone().unwrap();
    for tier in Tier::ALL {
        let t = tiers.get(tier).unwrap_or_else(|| panic!("{tier} in status"));
        assert!(t.host_key_fingerprint.as_deref().is_some_and(|f| f.starts_with("SHA256:")), "{tier}: {t:?}");
        assert!(t.containers.iter().all(|c| c.state == "running"), "{tier}: {t:?}");
    }
    assert!(status.vote_url.as_deref().is_some_and(|u| u.starts_with("http://10.222.1.")), "{:?}", status.vote_url);

    // steady state: nothing applied, one exec per host, pooled sessions reused
    let (c0, s0) = (hosts.round_trips(), hosts.sessions_opened());
    let outcome = engine.reconcile(&stack, Ok(world.key.clone())).await;
    assert!(outcome.is_ready());
    assert!(outcome.applied.is_empty(), "{:?}", outcome.applied);
    assert_eq!(hosts.round_trips() - c0, 3, "one exec per host in a steady reconcile");
    assert_eq!(hosts.sessions_opened(), s0);
    stack.status = Some(outcome.status);

    // a changed option rolls out new vote and result containers behind the
    // proxy, nothing else (the new generation also inventories the network
    // and plans its steps: none, as it matches)
    stack.spec.app.option_a = "Tea".into();
    stack.metadata.generation = Some(2);
    let calls = engine.cloud().api_calls();
    let applied = until_ready(&engine, &mut stack, &world.key, &shared).await;
    assert_eq!(all_names(&applied), ["roll vote", "roll result"]);
    assert!(engine.cloud().api_calls() - calls > 2, "the new generation looked the network up");

    let report = engine.destroy(&stack).await.unwrap_or_else(|e| panic!("destroy: {e}"));
    eprintln!("destroyed: {report:?}");
    guard.done = true;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_a_replacement_that_cannot_start_brings_the_previous_container_back() {
    let world = World::load();
    let fleet = world.fleet("rollback", 226, 1).await;
    let key = &world.key;
    let hosts = SshHosts::default();
    let t = fleet.target(0, "host-it/rollback", Tier::Database, &world.user);
    let host = &fleet.hosts[0];
    wait_docker(&hosts, &t, key).await;
    let mut spec = fixtures::spec();
    spec.app.images = world.images();
    let want = desired_containers(&spec, Tier::Database, Peers::default());
    converge(&hosts, key, &t, &want).await;
    let running_id = "docker inspect --format '{{.Id}} {{.State.Status}}' db";
    let (_, before) = host.sh(running_id);

    // Another program holds the port the new configuration publishes.
    let (code, out) = host.sh(&format!(
        "docker run -d --name port-holder -p 15432:5432 --entrypoint sleep {} 600",
        spec.app.images.postgres
    ));
    assert_eq!(code, 0, "{out}");
    let mut moved = want.clone();
    moved[0].ports[0].host = 15432;
    let actions = plan_now(&hosts, key, &t, &moved).await;
    assert_eq!(names(&actions), ["recreate db"]);
    let err = hosts.apply(&t, key, &actions, PullPolicy::IfNotPresent).await.unwrap_err();
    assert!(err.to_string().contains("the previous configuration runs again"), "{err}");

    // The old container runs again, as it was, and nothing is left aside.
    let (_, after) = host.sh(running_id);
    assert_eq!(after.trim(), before.trim());
    assert!(before.trim().ends_with("running"), "{before}");
    let o = hosts.observe(&t, key).await.unwrap();
    let names_now: Vec<&str> = o.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names_now, ["db"]);
    assert!(plan_now(&hosts, key, &t, &want).await.is_empty());
    host.sh("docker rm -f port-holder");
    fleet.cleanup().await;
}
