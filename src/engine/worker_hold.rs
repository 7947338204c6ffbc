//! The worker held while postgres does not answer or is about to move.
//! Pure: the reconcile and the plan both decide with these functions.
//!
//! Upstream's worker takes a vote off the redis queue before it writes it,
//! and exits on a database error: the vote it holds then is lost. So the
//! worker runs only while postgres answers, and before the engine takes
//! postgres away on purpose it stops the worker between two votes
//! ([`HostAction::HoldWorker`]). The planned moves are:
//! - the database instance replaced (a spec change with `allowReplacement`);
//! - the data volume detached from an instance to move to the tier's own;
//! - postgres re-created for a config or image change.
//!
//! Votes wait in redis (kept with AOF) meanwhile; the worker is started
//! again once postgres answers on its new address.

use crate::api::Tier;
use crate::model::desired::{DB_CONTAINER, WORKER_CONTAINER};
use crate::model::{
    Action, CreateReason, DesiredContainer, DockerState, HostAction, InfraAction, ObservedHost, TerminateReason,
    VolumeStep,
};

/// Why an EC2 step of the plan takes postgres away, if it does: the
/// database instance replaced.
pub fn infra_step_moves_database(action: &InfraAction) -> Option<String> {
    match action {
        InfraAction::TerminateInstance {
            tier: Some(Tier::Database),
            instance_id,
            reason: TerminateReason::Replaced(what),
        } => Some(format!("database instance {instance_id} is replaced ({what})")),
        InfraAction::DataVolume(step) => volume_step_moves_database(step),
        _ => None,
    }
}

/// Why the EC2 half of a plan takes postgres away, if it does.
pub fn infra_moves_database(actions: &[InfraAction]) -> Option<String> {
    actions.iter().find_map(infra_step_moves_database)
}

/// Why a data volume step takes postgres away, if it does: the volume
/// detached from the instance that holds it.
pub fn volume_step_moves_database(step: &VolumeStep) -> Option<String> {
    match step {
        VolumeStep::Detach { volume_id, instance_id } => {
            Some(format!("data volume {volume_id} moves from instance {instance_id}"))
        }
        _ => None,
    }
}

/// Why the database host's actions take a running postgres away, if they
/// do: postgres re-created for a config or image change.
pub fn host_moves_database(actions: &[HostAction]) -> Option<String> {
    actions.iter().find_map(|a| match a {
        HostAction::CreateContainer { container, reason: CreateReason::ConfigChanged(old) }
            if container.name == DB_CONTAINER =>
        {
            let new = container.config_hash().unwrap_or_else(|| "unknown".into());
            Some(format!("postgres is re-created (config {} → {new})", old.as_deref().unwrap_or("unlabelled")))
        }
        _ => None,
    })
}

/// What the engine knows of postgres when it decides the worker's hold.
#[derive(Clone, Copy, Debug)]
pub enum Database<'a> {
    /// The database host was observed; its desired containers.
    Observed(&'a ObservedHost, &'a [DesiredContainer]),
    /// No host to observe, or it could not be observed: why.
    NotServing(&'a str),
}

/// Whether postgres answers on the observed database host: Docker runs,
/// and the postgres container runs its current configuration with its
/// readiness check (`SELECT 1`) passing.
pub fn database_answers(observed: &ObservedHost, desired: &[DesiredContainer]) -> bool {
    if observed.docker != DockerState::Running {
        return false;
    }
    let Some(want) = desired.iter().find(|d| d.name == DB_CONTAINER) else { return false };
    let Some(have) = observed.container(DB_CONTAINER) else { return false };
    have.state == "running"
        && want.config_hash().is_some_and(|h| have.config_hash.as_deref() == Some(h.as_str()))
        && observed.probe(DB_CONTAINER).is_none_or(Result::is_ok)
}

/// Why the worker must be stopped now, if it must: postgres does not
/// answer, or this pass is about to take it away (`moving`, the first
/// planned move found).
pub fn worker_hold(db: Database<'_>, moving: Option<String>) -> Option<String> {
    let not_answering = match db {
        Database::NotServing(why) => Some(format!("postgres does not answer: {why}")),
        Database::Observed(observed, desired) if !database_answers(observed, desired) => {
            Some("postgres does not answer on the database host".to_string())
        }
        Database::Observed(..) => None,
    };
    moving.or(not_answering)
}

/// Holds the worker among a tier's desired containers (`why` Some), or
/// lets it run (None).
pub fn hold_worker(desired: &mut [DesiredContainer], why: Option<&str>) {
    for c in desired.iter_mut().filter(|c| c.name == WORKER_CONTAINER) {
        c.held = why.map(str::to_string);
    }
}

/// Puts the worker's hold of a whole plan before the first step that takes
/// postgres away or changes the database host, so `votingstack plan` lists
/// them in the order the engine carries them out.
pub fn hold_before_moves(actions: &mut Vec<Action>) {
    let Some(hold) = actions.iter().position(|a| matches!(a, Action::Host(HostAction::HoldWorker { .. }))) else {
        return;
    };
    let first_move = actions.iter().position(|a| match a {
        Action::Infra(step) => infra_step_moves_database(step).is_some(),
        Action::Host(h) => h.tier() == Tier::Database,
    });
    if let Some(at) = first_move.filter(|at| *at < hold) {
        let step = actions.remove(hold);
        actions.insert(at, step);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::desired::desired_containers;
    use crate::fixtures::spec;
    use crate::model::{ObservedContainer, Peers};
    use std::net::Ipv4Addr;

    fn peers() -> Peers {
        Peers { backend: Some(Ipv4Addr::new(10, 42, 1, 5)), database: Some(Ipv4Addr::new(10, 42, 1, 4)) }
    }

    fn db_host(state: &str, probe: Option<Result<(), String>>) -> (ObservedHost, Vec<DesiredContainer>) {
        let desired = desired_containers(&spec(), Tier::Database, peers());
        let host = ObservedHost {
            docker: DockerState::Running,
            containers: vec![ObservedContainer {
                name: DB_CONTAINER.into(),
                image: desired[0].image.clone(),
                state: state.into(),
                config_hash: desired[0].config_hash(),
                image_digest: None,
                exit_code: None,
            }],
            probes: probe.map(|p| (DB_CONTAINER.to_string(), p)).into_iter().collect(),
            host_key_fingerprint: "SHA256:x".into(),
        };
        (host, desired)
    }

    #[test]
    fn postgres_answers_only_running_its_config_with_its_check_passing() {
        let (host, desired) = db_host("running", Some(Ok(())));
        assert!(database_answers(&host, &desired));
        let (host, desired) = db_host("running", Some(Err("starting".into())));
        assert!(!database_answers(&host, &desired));
        let (host, desired) = db_host("restarting", Some(Ok(())));
        assert!(!database_answers(&host, &desired));
        let (mut host, desired) = db_host("running", Some(Ok(())));
        host.containers[0].config_hash = Some("old".into());
        assert!(!database_answers(&host, &desired), "an outdated postgres is about to be re-created");
        let (mut host, desired) = db_host("running", Some(Ok(())));
        host.docker = DockerState::Down("refused".into());
        assert!(!database_answers(&host, &desired));
    }

    #[test]
    fn the_worker_is_held_while_postgres_does_not_answer_or_moves() {
        let (host, desired) = db_host("running", Some(Ok(())));
        assert_eq!(worker_hold(Database::Observed(&host, &desired), None), None);
        let moving = Some("postgres is re-created (config a → b)".to_string());
        assert_eq!(worker_hold(Database::Observed(&host, &desired), moving.clone()), moving);
        let (down, desired) = db_host("exited", None);
        let why = worker_hold(Database::Observed(&down, &desired), None);
        assert_eq!(why.as_deref(), Some("postgres does not answer on the database host"));
        let why = worker_hold(Database::NotServing("instance i-2 is pending"), None);
        assert_eq!(why.as_deref(), Some("postgres does not answer: instance i-2 is pending"));
    }

    #[test]
    fn replacing_the_database_instance_or_detaching_its_volume_moves_postgres() {
        let replaced = InfraAction::TerminateInstance {
            tier: Some(Tier::Database),
            instance_id: "i-1".into(),
            reason: TerminateReason::Replaced("type t3.micro → t3.small".into()),
        };
        let why = infra_moves_database(std::slice::from_ref(&replaced));
        assert_eq!(why.as_deref(), Some("database instance i-1 is replaced (type t3.micro → t3.small)"));
        let duplicate = InfraAction::TerminateInstance {
            tier: Some(Tier::Database),
            instance_id: "i-9".into(),
            reason: TerminateReason::Duplicate,
        };
        assert_eq!(infra_moves_database(&[duplicate]), None, "a duplicate serves no one");
        let backend = InfraAction::TerminateInstance {
            tier: Some(Tier::Backend),
            instance_id: "i-5".into(),
            reason: TerminateReason::Replaced("type".into()),
        };
        assert_eq!(infra_moves_database(&[backend]), None);
        let detach = VolumeStep::Detach { volume_id: "vol-1".into(), instance_id: "i-1".into() };
        assert_eq!(
            infra_moves_database(&[InfraAction::DataVolume(detach)]).as_deref(),
            Some("data volume vol-1 moves from instance i-1")
        );
        let attach = VolumeStep::Attach { volume_id: "vol-1".into(), instance_id: "i-2".into() };
        assert_eq!(volume_step_moves_database(&attach), None, "postgres is not on the new instance yet");
    }

    #[test]
    fn re_creating_postgres_moves_it_and_creating_it_does_not() {
        let db = desired_containers(&spec(), Tier::Database, peers()).remove(0);
        let recreate = HostAction::CreateContainer { container: db.clone(), reason: CreateReason::ConfigChanged(None) };
        let why = host_moves_database(&[recreate]).unwrap_or_default();
        assert!(why.starts_with("postgres is re-created (config unlabelled → "), "{why}");
        let create = HostAction::CreateContainer { container: db, reason: CreateReason::Missing };
        assert_eq!(host_moves_database(&[create]), None);
    }

    #[test]
    fn only_the_worker_is_held() {
        let mut backend = desired_containers(&spec(), Tier::Backend, peers());
        hold_worker(&mut backend, Some("postgres moves"));
        let held: Vec<_> = backend.iter().map(|c| (c.name.as_str(), c.held.as_deref())).collect();
        assert_eq!(held, [("redis", None), ("worker", Some("postgres moves"))]);
        let hash = backend[1].config_hash();
        hold_worker(&mut backend, None);
        assert_eq!(backend[1].held, None);
        assert_eq!(backend[1].config_hash(), hash, "holding it re-creates nothing");
    }
}
