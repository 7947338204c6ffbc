//! [`SshHosts`]: the [`Hosts`] of real machines. Each method is made of the
//! host's Docker API calls (`docker`) and, where Docker cannot answer for
//! itself, shell steps over SSH (see [`crate::host`] for which and why).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::api::{PullPolicy, Tier};
use crate::model::{DataVolume, DesiredContainer, DockerState, HostAction, ObservedHost};

use super::bootstrap::Step;
use super::containers;
use super::docker::Listing;
use super::first_contact::FirstContacts;
use super::ssh::{Slot, SshOptions};
use super::web::Web;
use super::{HostError, HostTarget, Hosts, SshKey};

/// The hosts of a stack, reached over SSH.
pub struct SshHosts {
    /// The SSH pool: one entry per host (see `ssh`).
    pub(super) slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// Commands run on hosts (execs, the apply lock).
    pub(super) commands: AtomicU64,
    /// Requests sent to the hosts' Docker APIs.
    pub(super) api_requests: Arc<AtomicU64>,
    /// SSH sessions opened.
    pub(super) connects: AtomicU64,
    pub(super) options: SshOptions,
    web: Web,
    /// How far each instance's first contact got, for the timeline.
    pub(super) first_contact: FirstContacts,
}

impl fmt::Debug for SshHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshHosts")
            .field("commands_run", &self.commands.load(Ordering::Relaxed))
            .field("api_requests", &self.api_requests.load(Ordering::Relaxed))
            .field("sessions_opened", &self.connects.load(Ordering::Relaxed))
            .finish()
    }
}

impl Default for SshHosts {
    fn default() -> Self {
        SshHosts::new(SshOptions::default())
    }
}

impl SshHosts {
    pub fn new(options: SshOptions) -> SshHosts {
        let web = Web::new(options.http_timeout);
        SshHosts {
            slots: Mutex::new(HashMap::new()),
            commands: AtomicU64::new(0),
            api_requests: Arc::new(AtomicU64::new(0)),
            connects: AtomicU64::new(0),
            options,
            web,
            first_contact: FirstContacts::default(),
        }
    }

    /// The counter of Docker API requests.
    pub(super) fn api_counter(&self) -> &AtomicU64 {
        &self.api_requests
    }

    /// SSH sessions opened so far (a steady pool opens none).
    #[cfg(any(test, feature = "test-support"))]
    pub fn sessions_opened(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }
}

/// What one tier's actions ask of its host, sorted by kind.
#[derive(Default)]
struct HostWork<'a> {
    bootstrap: Option<Step>,
    mount: Option<&'a DataVolume>,
    remove: Vec<&'a str>,
    create: Vec<&'a DesiredContainer>,
    /// Containers rolled out beside the ones they replace.
    roll: Vec<(&'a DesiredContainer, &'a [String])>,
    start: Vec<&'a str>,
    /// Containers to stop between votes (the worker).
    hold: Vec<&'a str>,
}

impl<'a> HostWork<'a> {
    fn of(tier: Tier, actions: &'a [HostAction]) -> HostWork<'a> {
        let mut work = HostWork::default();
        for action in actions.iter().filter(|a| a.tier() == tier) {
            match action {
                HostAction::InstallDocker { .. } => work.bootstrap = Some(Step::Install),
                HostAction::StartDocker { .. } => {
                    work.bootstrap.get_or_insert(Step::Start);
                }
                HostAction::MountVolume { volume, .. } => work.mount = Some(volume),
                HostAction::CreateContainer { container, .. } => work.create.push(container),
                HostAction::StartContainer { name, .. } => work.start.push(name),
                HostAction::RemoveContainer { name, .. } => work.remove.push(name),
                HostAction::HoldWorker { name, .. } => work.hold.push(name),
                HostAction::RollContainer { container, replaces } => work.roll.push((container, replaces)),
            }
        }
        work
    }

    fn touches_containers(&self) -> bool {
        !(self.remove.is_empty()
            && self.create.is_empty()
            && self.roll.is_empty()
            && self.start.is_empty()
            && self.hold.is_empty())
    }
}

/// `s` as an SQL string literal.
fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[async_trait]
impl Hosts for SshHosts {
    async fn observe(&self, target: &HostTarget, key: &SshKey) -> Result<ObservedHost, HostError> {
        let client = self.docker_api(target, key).await?;
        let fingerprint = client.session.fingerprint.clone();
        let why = match self.list_stack(target, &client.api.docker).await? {
            Listing::Listed { containers, probes } => {
                self.first_contact.docker_answered(target);
                return Ok(ObservedHost {
                    docker: DockerState::Running,
                    containers,
                    probes,
                    host_key_fingerprint: fingerprint,
                });
            }
            Listing::NoAnswer(why) => why,
        };
        // Docker did not answer through dial-stdio: ask the host why.
        self.forget_docker_api(target).await;
        let facts = self.facts(target, key).await?;
        match facts.docker {
            DockerState::Running => Err(HostError::Unreachable {
                host: target.describe(),
                message: format!("Docker runs but its API did not answer over SSH: {why}"),
            }),
            docker => Ok(ObservedHost {
                docker,
                containers: Vec::new(),
                probes: Vec::new(),
                host_key_fingerprint: fingerprint,
            }),
        }
    }

    async fn apply(
        &self,
        target: &HostTarget,
        key: &SshKey,
        actions: &[HostAction],
        pull: PullPolicy,
    ) -> Result<(), HostError> {
        let work = HostWork::of(target.tier, actions);
        if work.bootstrap.is_none() && !work.touches_containers() {
            return Ok(());
        }
        let _lock = self.apply_lock(target, key).await?;
        if let Some(step) = work.bootstrap {
            self.prepare_docker(target, key, step).await?;
            // Docker (re)started: its API connection starts afresh
            self.forget_docker_api(target).await;
        }
        if !work.touches_containers() {
            return Ok(());
        }
        if let Some(volume) = work.mount {
            self.mount_volume(target, key, volume).await?;
        }
        for c in work.create.iter().chain(work.roll.iter().map(|(c, _)| c)) {
            containers::check(c).map_err(|e| HostError::Docker {
                host: target.describe(),
                step: format!("prepare container {}", c.name),
                status: None,
                message: e.0,
            })?;
        }
        let client = self.docker_api(target, key).await?;
        for name in &work.hold {
            self.stop_between_votes(target, &client.api.docker, name).await?;
        }
        let (remove, create, start) = (&work.remove, &work.create, &work.start);
        self.deploy(target, &client.api.docker, remove, &work.roll, create, start, pull).await
    }

    async fn http_status(&self, url: &str) -> Result<u16, HostError> {
        self.web.status(url).await
    }

    async fn cast_vote(&self, vote_url: &str, voter_id: &str, vote: &str) -> Result<(), HostError> {
        self.web.cast_vote(vote_url, voter_id, vote).await
    }

    async fn recorded_vote(&self, db: &HostTarget, key: &SshKey, voter_id: &str) -> Result<Option<String>, HostError> {
        let sql = format!("SELECT vote FROM votes WHERE id = {}", sql_literal(voter_id));
        let out = self.psql(db, key, &sql, "read the smoke test's vote from postgres").await?;
        Ok(out.and_then(|o| o.lines().map(str::trim).find(|l| !l.is_empty()).map(str::to_string)))
    }

    async fn delete_smoke_votes(&self, db: &HostTarget, key: &SshKey, prefix: &str) -> Result<(), HostError> {
        let sql = smoke_cleanup_sql(prefix);
        self.psql(db, key, &sql, "remove the smoke tests' votes from postgres").await.map(drop)
    }

    async fn queued_votes(&self, backend: &HostTarget, key: &SshKey) -> Result<u64, HostError> {
        let client = self.docker_api(backend, key).await?;
        self.queue_length(backend, &client.api.docker).await
    }

    fn round_trips(&self) -> u64 {
        self.commands.load(Ordering::Relaxed) + self.api_requests.load(Ordering::Relaxed)
    }
}

/// Deletes the votes whose id starts with `prefix` (compared as text, so
/// no character of the prefix is a pattern).
fn smoke_cleanup_sql(prefix: &str) -> String {
    format!("DELETE FROM votes WHERE left(id, {}) = {}", prefix.chars().count(), sql_literal(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::desired::desired_containers;
    use crate::fixtures::spec;
    use crate::model::{CreateReason, Peers};
    use std::net::Ipv4Addr;

    fn target() -> HostTarget {
        crate::fixtures::host_target()
    }

    #[test]
    fn voter_ids_are_quoted_as_sql_literals() {
        assert_eq!(sql_literal("x' OR '1'='1"), "'x'' OR ''1''=''1'");
    }

    #[test]
    fn smoke_votes_are_deleted_by_their_prefix_only() {
        assert_eq!(
            smoke_cleanup_sql("votingstack-smoke-"),
            "DELETE FROM votes WHERE left(id, 18) = 'votingstack-smoke-'"
        );
        assert_eq!(smoke_cleanup_sql("a_%"), "DELETE FROM votes WHERE left(id, 3) = 'a_%'", "no LIKE pattern");
    }

    #[test]
    fn a_tier_s_actions_are_sorted_by_kind() {
        let db = desired_containers(&spec(), Tier::Database, Peers::default()).remove(0);
        let actions = vec![
            HostAction::CreateContainer { container: db, reason: CreateReason::Missing },
            HostAction::RemoveContainer { tier: Tier::Database, name: "old".into() },
            HostAction::StartDocker { tier: Tier::Database },
            HostAction::StartContainer { tier: Tier::Backend, name: "worker".into(), state: "exited".into() },
        ];
        let work = HostWork::of(Tier::Database, &actions);
        assert_eq!(work.bootstrap, Some(Step::Start));
        assert_eq!(work.remove, ["old"]);
        assert_eq!(work.create.len(), 1);
        assert!(work.start.is_empty(), "another tier's action is not this host's");
        assert!(work.touches_containers());
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let mut t = target();
        t.address = Ipv4Addr::LOCALHOST;
        t.port = port;
        let key = crate::fixtures::test_key();
        let hosts = SshHosts::default();
        let err = hosts.observe(&t, &key).await.unwrap_err();
        assert!(matches!(err, HostError::Unreachable { .. }), "{err}");
        assert_eq!(hosts.round_trips(), 0);
    }
}
