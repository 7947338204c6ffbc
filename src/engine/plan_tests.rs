//! Unit tests of the pure plan step: every drift kind the engine repairs.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::*;
use crate::api::{NetworkStatus, TierStatus, TiersStatus};
use crate::engine::desired::desired_containers;
use crate::fixtures::{recreate_spec, spec};
use crate::model::{NetworkStep, ObservedContainer, ObservedNetwork};

fn key() -> DesiredKeyPair {
    DesiredKeyPair { name: "votingstack-default-demo".into(), public_key: Some("ssh-ed25519 AAAAkey".into()) }
}

fn ip(tier: Tier) -> Ipv4Addr {
    match tier {
        Tier::Database => Ipv4Addr::new(10, 42, 1, 4),
        Tier::Backend => Ipv4Addr::new(10, 42, 1, 5),
        Tier::Frontend => Ipv4Addr::new(10, 42, 1, 6),
    }
}

fn instance(tier: Tier, id: &str, state: InstanceState) -> ObservedInstance {
    ObservedInstance {
        private_ip: Some(ip(tier)),
        ami: spec().instances.ami.unwrap_or_default(),
        instance_type: spec().instances.instance_type,
        launch_time: format!("2026-01-01T00:00:0{}Z", id.len()),
        ..crate::fixtures::instance(tier, id, state)
    }
}

fn infra() -> ObservedInfra {
    ObservedInfra {
        network: NetworkObservation::Trusted(NetworkStatus::default(), Default::default()),
        instances: Tier::ALL.iter().map(|t| instance(*t, &format!("i-{t}"), InstanceState::Running)).collect(),
        data_volumes: None,
    }
}

fn status() -> VotingStackStatus {
    let mut tiers = TiersStatus::default();
    for t in Tier::ALL {
        *tiers.slot(t) = Some(TierStatus { instance_id: Some(format!("i-{t}")), ..Default::default() });
    }
    VotingStackStatus { tiers: Some(tiers), ..Default::default() }
}

fn peers() -> Peers {
    Peers { backend: Some(ip(Tier::Backend)), database: Some(ip(Tier::Database)) }
}

fn converged_host(spec: &VotingStackSpec, tier: Tier) -> ObservedHost {
    ObservedHost {
        docker: DockerState::Running,
        containers: desired_containers(spec, tier, peers())
            .into_iter()
            .map(|d| ObservedContainer {
                name: d.name.clone(),
                image: d.image.clone(),
                state: "running".into(),
                config_hash: d.config_hash(),
                image_digest: None,
                exit_code: None,
            })
            .collect(),
        probes: Vec::new(),
        host_key_fingerprint: "SHA256:x".into(),
    }
}

fn converged_hosts() -> BTreeMap<Tier, ObservedHost> {
    Tier::ALL.iter().map(|t| (*t, converged_host(&spec(), *t))).collect()
}

fn lines(plan: &Plan) -> Vec<String> {
    plan.actions.iter().map(|a| a.to_string()).collect()
}

#[test]
fn fresh_stack_creates_network_instances_then_containers_in_tier_order() {
    let plan = plan(&spec(), &VotingStackStatus::default(), &ObservedInfra::default(), &BTreeMap::new(), &key(), None);
    let tiers: Vec<_> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Host(h) => Some(h.tier()),
            Action::Infra(_) => None,
        })
        .collect();
    let network = plan.actions.iter().take_while(|a| matches!(a, Action::Infra(InfraAction::Network(_)))).count();
    // One Authorize per security group, with all of its rules.
    assert_eq!(network, 21, "every network step: {:?}", lines(&plan));
    assert_eq!(
        plan.actions[0],
        Action::Infra(InfraAction::Network(NetworkStep::CreateVpc { cidr: "10.42.0.0/16".into() }))
    );
    assert_eq!(lines(&plan)[20], "+ import key pair votingstack-default-demo");
    assert!(matches!(
        &plan.actions[network],
        Action::Infra(InfraAction::LaunchInstance(InstanceLaunch { tier: Tier::Database, replacement: 0, .. }))
    ));
    assert!(matches!(
        &plan.actions[network + 1],
        Action::Infra(InfraAction::LaunchInstance(InstanceLaunch { tier: Tier::Backend, .. }))
    ));
    assert!(matches!(
        &plan.actions[network + 2],
        Action::Infra(InfraAction::LaunchInstance(InstanceLaunch { tier: Tier::Frontend, .. }))
    ));
    // The worker is created last, once postgres answers.
    let (db, back, front) = (Tier::Database, Tier::Backend, Tier::Frontend);
    assert_eq!(tiers, [db, back, front, front, front, back], "{:#?}", lines(&plan));
    assert!(
        matches!(plan.actions.last(), Some(Action::Host(HostAction::CreateContainer { container, .. })) if container.name == "worker")
    );
    // The frontend's containers are named after their hash, known once the
    // peers' IPs are: the plan shows them by role, and the host's pass
    // plans them again from what it observes.
    let text = lines(&plan).join("\n");
    assert!(text.contains("+ create frontend container vote (dockersamples/examplevotingapp_vote"), "{text}");
    assert!(text.contains("+ create frontend container proxy (nginx:1.27-alpine"), "{text}");
    let plan = super::plan(
        &recreate_spec(),
        &VotingStackStatus::default(),
        &ObservedInfra::default(),
        &BTreeMap::new(),
        &key(),
        None,
    );
    let text = lines(&plan).join("\n");
    assert!(
        text.contains(
            "+ create frontend container vote (dockersamples/examplevotingapp_vote, config (known after apply))"
        ),
        "{text}"
    );
}

#[test]
fn a_fresh_stack_s_plan_creates_the_data_volume_after_the_instances() {
    let looked_up = ObservedInfra { data_volumes: Some(Vec::new()), ..Default::default() };
    let plan = plan(&spec(), &VotingStackStatus::default(), &looked_up, &BTreeMap::new(), &key(), None);
    let at = plan.actions.iter().position(|a| matches!(a, Action::Infra(InfraAction::DataVolume(_))));
    let last_launch = plan.actions.iter().rposition(|a| matches!(a, Action::Infra(InfraAction::LaunchInstance(_))));
    assert!(at > last_launch, "{:?}", lines(&plan));
    assert_eq!(
        lines(&plan)[at.unwrap_or_default()],
        "+ create the data volume (10 GiB, gp3, in the database instance's zone)"
    );
}

#[test]
fn a_volume_not_looked_up_plans_no_volume_step() {
    let plan = plan(&spec(), &VotingStackStatus::default(), &ObservedInfra::default(), &BTreeMap::new(), &key(), None);
    assert!(!plan.actions.iter().any(|a| matches!(a, Action::Infra(InfraAction::DataVolume(_)))));
}

#[test]
fn converged_stack_plans_nothing() {
    let plan = plan(&spec(), &status(), &infra(), &converged_hosts(), &key(), None);
    assert_eq!(lines(&plan), Vec::<String>::new());
    assert!(plan.drift.is_empty());
}

#[test]
fn missing_container_is_created() {
    let mut hosts = converged_hosts();
    hosts.get_mut(&Tier::Backend).unwrap().containers.retain(|c| c.name != "worker");
    let plan = plan(&spec(), &status(), &infra(), &hosts, &key(), None);
    assert_eq!(plan.actions.len(), 1);
    assert!(
        matches!(&plan.actions[0], Action::Host(HostAction::CreateContainer { container, reason: CreateReason::Missing }) if container.name == "worker")
    );
}

#[test]
fn stopped_container_is_started_not_recreated() {
    let mut hosts = converged_hosts();
    hosts.get_mut(&Tier::Database).unwrap().containers[0].state = "exited".into();
    let plan = plan(&spec(), &status(), &infra(), &hosts, &key(), None);
    assert_eq!(
        lines(&plan),
        [
            "~ stop backend container worker between votes: postgres does not answer on the database host",
            "~ start database container db (exited)",
            "~ start backend container worker (exited)",
        ]
    );
    let mut hosts = converged_hosts();
    hosts.get_mut(&Tier::Frontend).unwrap().containers[0].state = "exited".into();
    let plan = super::plan(&spec(), &status(), &infra(), &hosts, &key(), None);
    let name = &hosts[&Tier::Frontend].containers[0].name;
    assert!(name.starts_with("vote-"), "{name}");
    assert_eq!(lines(&plan), [format!("~ start frontend container {name} (exited)")]);
}

#[test]
fn wrong_image_recreates_only_that_container() {
    let mut s = recreate_spec();
    let hosts = Tier::ALL.iter().map(|t| (*t, converged_host(&s, *t))).collect();
    s.app.images.result = "registry.example/result:2".into();
    let plan = plan(&s, &status(), &infra(), &hosts, &key(), None);
    assert_eq!(plan.actions.len(), 1);
    assert!(
        matches!(&plan.actions[0], Action::Host(HostAction::CreateContainer { container, reason: CreateReason::ConfigChanged(Some(_)) }) if container.name == "result")
    );
}

#[test]
fn a_changed_image_is_rolled_out_beside_the_old_container_through_the_proxy() {
    let hosts = converged_hosts();
    let old = hosts[&Tier::Frontend].containers.iter().find(|c| c.name.starts_with("result-")).unwrap().name.clone();
    let mut s = spec();
    s.app.images.result = "registry.example/result:2".into();
    let plan = plan(&s, &status(), &infra(), &hosts, &key(), None);
    let [Action::Host(HostAction::RollContainer { container, replaces })] = &plan.actions[..] else {
        panic!("one roll-out, nothing else: {:?}", lines(&plan));
    };
    assert!(container.name.starts_with("result-") && container.name != old, "{}", container.name);
    assert_eq!(replaces, std::slice::from_ref(&old));
    assert!(container.ports.is_empty(), "only the proxy publishes ports");

    // Interrupted after the new one started: the roll-out is finished, the
    // new one not created again.
    let mut hosts = hosts;
    let front = hosts.get_mut(&Tier::Frontend).unwrap();
    front.containers.push(ObservedContainer {
        name: container.name.clone(),
        image: container.image.clone(),
        state: "running".into(),
        config_hash: container.config_hash(),
        image_digest: None,
        exit_code: None,
    });
    let again = super::plan(&s, &status(), &infra(), &hosts, &key(), None);
    assert!(
        matches!(&again.actions[..], [Action::Host(HostAction::RollContainer { replaces, .. })] if replaces == std::slice::from_ref(&old)),
        "{:?}",
        lines(&again)
    );
    // Done: the old one is gone, nothing left to do.
    hosts.get_mut(&Tier::Frontend).unwrap().containers.retain(|c| c.name != old);
    assert_eq!(lines(&super::plan(&s, &status(), &infra(), &hosts, &key(), None)), Vec::<String>::new());
}

#[test]
fn a_stopped_proxy_is_created_afresh_when_a_roll_out_needs_it() {
    let mut hosts = converged_hosts();
    let front = hosts.get_mut(&Tier::Frontend).unwrap();
    front.containers.iter_mut().find(|c| c.name == "proxy").unwrap().state = "exited".into();
    let plan = plan(&spec(), &status(), &infra(), &hosts, &key(), None);
    assert_eq!(lines(&plan), ["~ start frontend container proxy (exited)"], "no roll-out: only started");
    let mut s = spec();
    s.app.option_a = "Tea".into();
    let plan = super::plan(&s, &status(), &infra(), &hosts, &key(), None);
    let text = lines(&plan);
    assert_eq!(text.len(), 3, "{text:?}");
    assert!(
        text[0].starts_with("± roll out frontend container vote-")
            && text[1].starts_with("± roll out frontend container result-")
    );
    assert!(text[2].starts_with("± recreate frontend container proxy"), "{text:?}");
}

#[test]
fn switching_strategies_replaces_the_frontend_containers() {
    // Recreate → ZeroDowntime: the new containers come beside the plain
    // ones, which go before the proxy takes their ports.
    let old: BTreeMap<Tier, ObservedHost> =
        Tier::ALL.iter().map(|t| (*t, converged_host(&recreate_spec(), *t))).collect();
    let plan = plan(&spec(), &status(), &infra(), &old, &key(), None);
    let text = lines(&plan);
    assert_eq!(text.len(), 3, "{text:?}");
    assert!(text[0].contains("vote-") && text[0].contains("beside vote,"), "{text:?}");
    assert!(text[2].starts_with("+ create frontend container proxy"), "{text:?}");
    // ZeroDowntime → Recreate: the proxy and the hash-named ones go first.
    let plan = super::plan(&recreate_spec(), &status(), &infra(), &converged_hosts(), &key(), None);
    let text = lines(&plan);
    assert!(text.iter().any(|l| l == "- remove frontend container proxy (not part of the stack)"), "{text:?}");
    assert!(text.iter().any(|l| l.starts_with("+ create frontend container vote (")), "{text:?}");
}

#[test]
fn changed_option_recreates_vote_and_result_only() {
    let mut s = recreate_spec();
    let hosts = Tier::ALL.iter().map(|t| (*t, converged_host(&s, *t))).collect();
    s.app.option_b = "Birds".into();
    let plan = plan(&s, &status(), &infra(), &hosts, &key(), None);
    let names: Vec<_> = plan
        .actions
        .iter()
        .map(|a| match a {
            Action::Host(HostAction::CreateContainer { container, .. }) => container.name.as_str(),
            other => panic!("unexpected {other}"),
        })
        .collect();
    assert_eq!(names, ["vote", "result"]);
}

#[test]
fn orphan_container_is_removed() {
    let mut hosts = converged_hosts();
    let extra = ObservedContainer {
        name: "old-worker".into(),
        image: "x".into(),
        state: "running".into(),
        config_hash: None,
        image_digest: None,
        exit_code: None,
    };
    hosts.get_mut(&Tier::Backend).unwrap().containers.push(extra);
    let plan = plan(&spec(), &status(), &infra(), &hosts, &key(), None);
    assert_eq!(lines(&plan), ["- remove backend container old-worker (not part of the stack)"]);
}

#[test]
fn changed_backend_ip_recreates_what_points_at_redis() {
    let mut infra = infra();
    for i in infra.instances.iter_mut().filter(|i| i.tier == Some(Tier::Backend)) {
        i.private_ip = Some(Ipv4Addr::new(10, 42, 1, 9));
    }
    let plan = plan(&spec(), &status(), &infra, &converged_hosts(), &key(), None);
    let roles: Vec<_> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Host(HostAction::CreateContainer { container, .. })
            | Action::Host(HostAction::RollContainer { container, .. }) => Some(container.role.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(roles, ["worker", "vote"], "redis itself and result (db only) stay");
}

#[test]
fn terminated_instance_is_replaced_with_the_next_client_token() {
    let mut infra = infra();
    infra.instances[0].state = InstanceState::Terminated;
    let plan = plan_infra(&spec(), &status(), &infra, &key(), None);
    assert!(matches!(
        &plan.actions[..],
        [InfraAction::LaunchInstance(InstanceLaunch { tier: Tier::Database, replacement: 1, .. })]
    ));
    assert!(!plan.keepers.contains_key(&Tier::Database));
    assert_eq!(plan.peers().database, None);
}

#[test]
fn instance_found_by_tag_is_adopted_not_launched_again() {
    // RunInstances answered but the status write was lost: status knows nothing.
    let plan = plan_infra(&spec(), &VotingStackStatus::default(), &infra(), &key(), None);
    assert_eq!(plan.actions, []);
    assert_eq!(plan.keepers.len(), 3);
}

#[test]
fn stopped_instance_is_started() {
    let mut infra = infra();
    infra.instances[2].state = InstanceState::Stopped;
    let plan = plan_infra(&spec(), &status(), &infra, &key(), None);
    assert_eq!(plan.actions, [InfraAction::StartInstance { tier: Tier::Frontend, instance_id: "i-frontend".into() }]);
}

#[test]
fn duplicate_instances_keep_the_recorded_one() {
    let mut infra = infra();
    let mut dup = instance(Tier::Backend, "i-0", InstanceState::Running);
    dup.launch_time = "2025-01-01T00:00:00Z".into();
    infra.instances.push(dup);
    let plan = plan_infra(&spec(), &status(), &infra, &key(), None);
    assert_eq!(
        lines(&Plan { actions: plan.actions.into_iter().map(Action::Infra).collect(), drift: vec![] }),
        ["- terminate backend instance i-0 (duplicate of the tier's instance)"]
    );
}

#[test]
fn untiered_instances_with_the_stack_tags_are_terminated() {
    let mut infra = infra();
    let mut stray = instance(Tier::Backend, "i-stray", InstanceState::Running);
    stray.tier = None;
    infra.instances.push(stray);
    let plan = plan_infra(&spec(), &status(), &infra, &key(), None);
    assert!(matches!(
        &plan.actions[..],
        [InfraAction::TerminateInstance { tier: None, reason: TerminateReason::UnknownTier, .. }]
    ));
}

#[test]
fn ami_drift_is_reported_unless_replacement_is_allowed() {
    let mut s = spec();
    s.instances.ami = Some("ami-0fedcba9876543210".into());
    let plan = plan_infra(&s, &status(), &infra(), &key(), None);
    assert!(plan.actions.is_empty());
    assert_eq!(plan.drift.len(), 3);
    assert!(plan.drift[0].what.starts_with("AMI ami-0abcdef1234567890 → ami-0fedcba9876543210"));

    s.instances.allow_replacement = true;
    let plan = plan_infra(&s, &status(), &infra(), &key(), None);
    assert!(matches!(&plan.actions[0], InfraAction::TerminateInstance { reason: TerminateReason::Replaced(_), .. }));
    assert!(matches!(
        &plan.actions[1],
        InfraAction::LaunchInstance(InstanceLaunch { tier: Tier::Database, replacement: 1, .. })
    ));
    assert_eq!(plan.actions.len(), 6);
}

#[test]
fn docker_missing_installs_then_deploys_docker_down_only_starts_it() {
    let mut hosts = converged_hosts();
    hosts.get_mut(&Tier::Database).unwrap().docker = DockerState::Missing;
    hosts.get_mut(&Tier::Backend).unwrap().docker = DockerState::Down("socket closed".into());
    let plan = plan(&spec(), &status(), &infra(), &hosts, &key(), None);
    assert_eq!(
        lines(&plan)[..],
        [
            "+ install Docker on the database host".to_string(),
            format!(
                "+ create database container db (postgres:15-alpine, config {})",
                desired_containers(&spec(), Tier::Database, peers())[0].config_hash().unwrap()
            ),
            "~ start Docker on the backend host".to_string(),
        ]
    );
}

#[test]
fn unreachable_host_gets_no_actions() {
    let mut hosts = converged_hosts();
    hosts.remove(&Tier::Frontend);
    let plan = plan(&spec(), &status(), &infra(), &hosts, &key(), None);
    assert!(plan.is_empty());
}

#[test]
fn missing_network_is_created_first() {
    let mut infra = infra();
    infra.network = NetworkObservation::Inventory(ObservedNetwork::default());
    let plan = plan(&spec(), &status(), &infra, &converged_hosts(), &key(), None);
    let steps = network_steps(&ObservedNetwork::default(), &spec(), &key());
    assert_eq!(plan.actions, steps.into_iter().map(|s| Action::Infra(InfraAction::Network(s))).collect::<Vec<_>>());
}

#[test]
fn a_spec_change_inventories_the_network_once() {
    let mut st = status();
    st.observed_generation = Some(1);
    assert_eq!(network_lookup(&st, Some(1)), NetworkLookup::TrustStatus);
    assert_eq!(network_lookup(&st, Some(2)), NetworkLookup::Inventory);
    assert_eq!(network_lookup(&VotingStackStatus::default(), Some(1)), NetworkLookup::TrustStatus, "first reconcile");
}

#[test]
fn an_inventoried_network_that_matches_plans_only_what_differs() {
    let mut infra = infra();
    let found = ObservedNetwork {
        vpc: Some(crate::model::network::ObservedVpc { id: "vpc-1".into(), cidr: "10.42.0.0/16".into() }),
        ..Default::default()
    };
    infra.network = NetworkObservation::Inventory(found);
    let plan = plan(&spec(), &status(), &infra, &converged_hosts(), &key(), None);
    assert!(plan.actions.iter().all(|a| matches!(a, Action::Infra(InfraAction::Network(_)))));
    assert!(!lines(&plan).iter().any(|l| l.starts_with("+ create VPC")), "{:?}", lines(&plan));
    assert!(lines(&plan).contains(&"+ create public subnet 10.42.1.0/24 in a zone offering t3.small".to_string()));
}

fn database_type(instance_type: &str) -> VotingStackSpec {
    let mut s = spec();
    s.instances.allow_replacement = true;
    s.instances.database =
        Some(crate::api::InstanceOverride { instance_type: Some(instance_type.into()), ..Default::default() });
    s
}

#[test]
fn a_planned_replacement_of_the_database_instance_stops_the_worker_first() {
    let plan = plan(&database_type("t3.large"), &status(), &infra(), &converged_hosts(), &key(), None);
    let text = lines(&plan);
    assert_eq!(
        text[..2],
        [
            "~ stop backend container worker between votes: database instance i-database is replaced \
             (type t3.small → t3.large)"
                .to_string(),
            "- terminate database instance i-database (replaced: type t3.small → t3.large)".to_string(),
        ],
        "{text:?}"
    );
    assert!(text[2].starts_with("+ launch database instance"), "{text:?}");
    assert!(text[3].starts_with("+ create database container db"), "{text:?}");
    assert_eq!(text.len(), 4, "the worker's new config is known with the new address: a later pass: {text:?}");
}

#[test]
fn a_held_worker_is_neither_started_nor_re_created_until_postgres_answers() {
    // The replacement under way: the new database instance is pending.
    let mut infra = infra();
    for i in infra.instances.iter_mut().filter(|i| i.tier == Some(Tier::Database)) {
        i.state = InstanceState::Pending;
        i.private_ip = Some(Ipv4Addr::new(10, 42, 1, 40));
    }
    let mut hosts = converged_hosts();
    hosts.remove(&Tier::Database);
    let worker = hosts.get_mut(&Tier::Backend).unwrap().containers.iter_mut().find(|c| c.name == "worker").unwrap();
    worker.state = "exited".into();
    let plan = plan(&spec(), &status(), &infra, &hosts, &key(), None);
    let text = lines(&plan);
    assert!(!text.iter().any(|l| l.contains("container worker")), "{text:?}");
    assert!(text.iter().any(|l| l.starts_with("± roll out frontend container result-")), "{text:?}");

    // postgres answers on the new address: the worker comes back with it.
    let mut hosts = converged_hosts();
    let worker = hosts.get_mut(&Tier::Backend).unwrap().containers.iter_mut().find(|c| c.name == "worker").unwrap();
    worker.state = "exited".into();
    let mut infra = self::infra();
    for i in infra.instances.iter_mut().filter(|i| i.tier == Some(Tier::Database)) {
        i.private_ip = Some(Ipv4Addr::new(10, 42, 1, 40));
    }
    let plan = super::plan(&spec(), &status(), &infra, &hosts, &key(), None);
    let text = lines(&plan);
    assert!(text.iter().any(|l| l.starts_with("± recreate backend container worker")), "{text:?}");
    assert!(!text.iter().any(|l| l.contains("between votes")), "{text:?}");
}

#[test]
fn re_creating_postgres_stops_the_worker_first_and_starts_it_after() {
    let mut s = spec();
    s.app.images.postgres = "postgres:16-alpine".into();
    let plan = plan(&s, &status(), &infra(), &converged_hosts(), &key(), None);
    let text = lines(&plan);
    assert_eq!(text.len(), 3, "{text:?}");
    assert!(text[0].starts_with("~ stop backend container worker between votes: postgres is re-created"), "{text:?}");
    assert!(text[1].starts_with("± recreate database container db"), "{text:?}");
    assert_eq!(text[2], "~ start backend container worker (exited)");
}

#[test]
fn an_unplanned_loss_of_the_database_instance_stops_the_worker() {
    let mut infra = infra();
    infra.instances[0].state = InstanceState::Terminated;
    let mut hosts = converged_hosts();
    hosts.remove(&Tier::Database);
    let plan = plan(&spec(), &status(), &infra, &hosts, &key(), None);
    let text = lines(&plan);
    // Seen in the pass that launches its successor: the worker stops then.
    assert_eq!(
        text[..2],
        [
            "+ launch database instance (ami-0abcdef1234567890, t3.small), replacement #1".to_string(),
            "~ stop backend container worker between votes: postgres does not answer: the database instance is not \
             up yet"
                .to_string(),
        ],
        "{text:?}"
    );
}

/// The database's recorded instance, ended by EC2 with `code`.
fn died(code: &str) -> ObservedInfra {
    let mut infra = infra();
    infra.instances[0].state = InstanceState::Terminated;
    infra.instances[0].state_reason =
        Some(crate::model::StateReason { code: code.into(), message: format!("{code}: Client error on launch") });
    infra
}

/// Launches of a plan's infra actions, by tier.
fn launches(plan: &InfraPlan) -> Vec<Tier> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            InfraAction::LaunchInstance(l) => Some(l.tier),
            _ => None,
        })
        .collect()
}

#[test]
fn an_instance_that_died_at_launch_holds_the_tier_with_aws_reason() {
    let infra = died("Client.InternalError");
    let plan = plan_infra(&spec(), &status(), &infra, &key(), Some(3));
    assert_eq!(launches(&plan), [], "no launch after a launch that died");
    let failure = &plan.launch_failures[&Tier::Database];
    assert_eq!(failure.instance_id, "i-database");
    assert_eq!(failure.code, "Client.InternalError");
    assert_eq!(failure.message, "Client.InternalError: Client error on launch");
    assert!(!plan.keepers.contains_key(&Tier::Database));
    assert_eq!(plan.keepers.len(), 2, "the other tiers keep their instances");
    let volumes = plan_infra(&spec(), &status(), &died("Client.VolumeLimitExceeded"), &key(), Some(3));
    assert!(volumes.launch_failures.contains_key(&Tier::Database));
    // The whole plan touches no host of the held tier either.
    let whole = super::plan(&spec(), &status(), &infra, &converged_hosts(), &key(), Some(3));
    assert!(!whole.actions.iter().any(|a| matches!(a, Action::Host(h) if h.tier() == Tier::Database)), "{whole:?}");
}

#[test]
fn instances_ended_on_request_or_after_running_are_replaced_not_held() {
    for code in ["Client.UserInitiatedShutdown", "Client.InstanceInitiatedShutdown", "Server.InternalError"] {
        let plan = plan_infra(&spec(), &status(), &died(code), &key(), Some(1));
        assert_eq!(launches(&plan), [Tier::Database], "{code}");
        assert!(plan.launch_failures.is_empty(), "{code}");
    }
    // Seen running by an earlier pass, or reached over SSH: it ran a while.
    let mut ran = status();
    ran.tiers.as_mut().unwrap().database.as_mut().unwrap().instance_state = Some("running".into());
    let plan = plan_infra(&spec(), &ran, &died("Client.InternalError"), &key(), Some(1));
    assert_eq!(launches(&plan), [Tier::Database]);
    let mut reached = status();
    reached.tiers.as_mut().unwrap().database.as_mut().unwrap().host_key_fingerprint = Some("SHA256:k".into());
    let plan = plan_infra(&spec(), &reached, &died("Client.InternalError"), &key(), Some(1));
    assert_eq!(launches(&plan), [Tier::Database]);
    // A dead instance that is not the tier's recorded one (a duplicate the
    // engine terminated, a stale one) says nothing about the last launch.
    let mut infra = died("Client.InternalError");
    infra.instances[0].id = "i-other".into();
    let plan = plan_infra(&spec(), &status(), &infra, &key(), Some(1));
    assert_eq!(launches(&plan), [Tier::Database]);
}

#[test]
fn a_launch_that_dies_is_retried_once_per_generation_never_in_a_loop() {
    use crate::engine::status::{record_launch, record_launch_failures};
    // EC2 as it is with an unusable default EBS key: every launch dies.
    let mut ec2 = infra();
    ec2.instances.retain(|i| i.tier != Some(Tier::Database));
    let mut status = status();
    status.tiers.as_mut().unwrap().database = None;
    let mut launched = Vec::new();
    let mut pass = |status: &mut VotingStackStatus, ec2: &mut ObservedInfra, generation: i64| {
        let plan = plan_infra(&spec(), status, ec2, &key(), Some(generation));
        record_launch_failures(status, plan.launch_failures.values(), Some(generation), "t");
        for action in &plan.actions {
            if let InfraAction::LaunchInstance(l) = action {
                let id = format!("i-db-{}", l.replacement);
                let mut dead = instance(Tier::Database, &id, InstanceState::Pending);
                record_launch(status, l.tier, &dead, l.replacement);
                dead.state = InstanceState::Terminated;
                dead.state_reason = Some(crate::model::StateReason {
                    code: "Client.InternalError".into(),
                    message: "Client.InternalError: Client error on launch".into(),
                });
                ec2.instances.push(dead);
                launched.push((generation, id));
            }
        }
        // The pass observes again after acting, as the engine does.
        let after = plan_infra(&spec(), status, ec2, &key(), Some(generation));
        record_launch_failures(status, after.launch_failures.values(), Some(generation), "t");
        after
    };
    for _ in 0..10 {
        let after = pass(&mut status, &mut ec2, 1);
        assert!(after.launch_failures.contains_key(&Tier::Database));
        assert!(launches(&after).is_empty());
    }
    // A spec change lets exactly one more launch go, with a new token.
    for _ in 0..10 {
        pass(&mut status, &mut ec2, 2);
    }
    assert_eq!(launched, [(1, "i-db-0".to_string()), (2, "i-db-1".to_string())]);
    let db = status.tiers.as_ref().unwrap().database.as_ref().unwrap();
    assert_eq!(db.launch_failures, 2, "each dead instance counted once");
    let last = db.last_launch_failure.as_ref().unwrap();
    assert_eq!(
        (last.instance_id.as_str(), last.code.as_str(), last.generation),
        ("i-db-1", "Client.InternalError", Some(2))
    );
}

#[test]
fn a_launch_after_a_failure_that_runs_clears_the_hold() {
    use crate::engine::status::record_launch_failures;
    let dead = died("Client.InternalError");
    let mut status = status();
    let plan = plan_infra(&spec(), &status, &dead, &key(), Some(1));
    record_launch_failures(&mut status, plan.launch_failures.values(), Some(1), "t");
    // The spec changed (kmsKeyId set): the next launch runs.
    let mut healthy = dead.clone();
    let plan = plan_infra(&spec(), &status, &healthy, &key(), Some(2));
    assert_eq!(launches(&plan), [Tier::Database]);
    healthy.instances.push(instance(Tier::Database, "i-db-new", InstanceState::Running));
    status.tiers.as_mut().unwrap().database.as_mut().unwrap().instance_id = Some("i-db-new".into());
    let plan = plan_infra(&spec(), &status, &healthy, &key(), Some(2));
    assert_eq!(plan.actions, []);
    assert!(plan.launch_failures.is_empty());
    assert_eq!(plan.keepers[&Tier::Database].id, "i-db-new");
}
