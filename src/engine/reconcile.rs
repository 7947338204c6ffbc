//! The phased reconcile shared by the controller and the CLI. This file
//! only sequences the phases: validate → EC2 ([`infra`](super::infra)) →
//! data volume ([`volume_converge`](super::volume_converge)) → its
//! snapshots ([`backups`](super::backups)) → hosts
//! ([`hosts`](super::hosts)) → web check and smoke test
//! ([`smoke`](super::smoke)) → status and conditions
//! ([`conditions`](super::conditions), [`status`](super::status)).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::api::{
    validate, ConditionUpdate, DeletionPolicy, EndpointPolicy, Phase, Tier, VotingStack, VotingStackStatus,
};
use crate::cloud::{Cloud, CloudError, DestroyReport, StackIdentity};
use crate::host::{HostTarget, Hosts, SshKey};
use crate::model::Action;

use super::addressing::host_target;
use super::conditions::data_volume::VolumeHold;
use super::conditions::infrastructure::cloud_failed;
use super::conditions::{Finding, Findings};
use super::failure::Failure;
use super::infra::{desired_key_pair, tear_down_with, TornDown, VolumeTeardown};
use super::plan::{network_lookup, plan, plan_infra, InfraPlan, Plan};
use super::status::{now, record_conditions, record_instances};
use super::stop::{Stop, Stopped};
use super::volume::attached_volume;

/// Timing knobs of the engine.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// Requeue of a Ready stack: the safety net behind the event streams.
    pub resync: Duration,
    /// Requeue while converging.
    pub converge_retry: Duration,
    /// Requeue while a user must act.
    pub terminal_retry: Duration,
    /// How long the smoke test waits for its vote to reach postgres.
    pub smoke_timeout: Duration,
    pub smoke_poll: Duration,
    /// How long one pass waits for the data volume to be created or
    /// attached before it leaves the rest to the next pass.
    pub volume_wait: Duration,
    pub volume_poll: Duration,
    /// How often a snapshot being copied is looked at while someone waits
    /// for it (the final snapshot on delete, `votingstack snapshot`).
    pub snapshot_poll: Duration,
    /// How long one teardown waits for the final snapshot to complete
    /// before it leaves the rest to the next attempt.
    pub final_snapshot_wait: Duration,
    /// Which `spec.aws.endpoint` values the engine sends its signed EC2
    /// requests to (`--allow-endpoint`); a stack naming another is refused
    /// in the validate phase, and by `plan` and `destroy`.
    pub endpoints: EndpointPolicy,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(60),
            converge_retry: Duration::from_secs(5),
            terminal_retry: Duration::from_secs(300),
            smoke_timeout: Duration::from_secs(30),
            smoke_poll: Duration::from_millis(500),
            volume_wait: Duration::from_secs(20),
            volume_poll: Duration::from_millis(500),
            snapshot_poll: Duration::from_secs(5),
            final_snapshot_wait: Duration::from_secs(60),
            endpoints: EndpointPolicy::default(),
        }
    }
}

/// What a reconcile did and what to write back.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub status: VotingStackStatus,
    /// Conditions whose status flipped (worth an Event).
    pub transitions: Vec<ConditionUpdate>,
    /// Actions carried out, in order.
    pub applied: Vec<Action>,
    pub requeue_after: Duration,
    /// Set when the reconcile hit an error (for backoff and metrics).
    pub error: Option<Failure>,
    /// The hosts reached this pass (for drift event streams).
    pub targets: Vec<HostTarget>,
}

impl Outcome {
    pub fn is_ready(&self) -> bool {
        self.status.phase == Some(Phase::Ready)
    }
}

/// One engine, two shells: the controller and the CLI both drive this.
#[derive(Clone)]
pub struct Engine {
    pub(super) cloud: Arc<dyn Cloud>,
    pub(super) hosts: Arc<dyn Hosts>,
    pub(super) settings: EngineSettings,
}

/// Result of tearing a stack down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Teardown {
    /// `deletionPolicy: Retain`: nothing was touched; the data volume (when
    /// the stack has one) keeps the database.
    Retained { data_volume: Option<String> },
    /// Deleted; with `deletionPolicy: Snapshot` the report names the final
    /// snapshot(s), which stay.
    Deleted(DestroyReport),
    /// `deletionPolicy: Snapshot`: the instances are gone and the final
    /// snapshot is still being copied; tear down again to go on (the data
    /// volume and the network stay until it is completed).
    SnapshotPending { snapshot_id: String },
}

/// Mutable state of one reconcile, filled in by the phases.
pub(super) struct Run {
    pub(super) status: VotingStackStatus,
    pub(super) findings: Findings,
    pub(super) applied: Vec<Action>,
    pub(super) error: Option<Failure>,
    pub(super) targets: Vec<HostTarget>,
    /// Asked to stop early (shutdown): looked at on step boundaries only.
    pub(super) stop: Stop,
    /// The step boundary the pass stopped at, once it did.
    pub(super) stopped: Option<&'static str>,
    /// Until the backup schedule's next occurrence: the pass is requeued by then.
    pub(super) next_backup: Option<Duration>,
}

impl Run {
    /// Whether the pass ends here because a stop was asked for; notes the
    /// boundary. Call only between steps, never within one.
    pub(super) fn stop_at(&mut self, boundary: &'static str) -> bool {
        if self.stopped.is_none() && self.stop.requested() {
            self.stopped = Some(boundary);
        }
        self.stopped.is_some()
    }

    /// EC2 failed: said in `InfrastructureReady`; the pass ends.
    pub(super) fn cloud_failed(&mut self, e: CloudError) -> Option<InfraPlan> {
        self.findings.infrastructure = Some(cloud_failed(&e));
        self.error = Some(Failure::Aws);
        None
    }
}

impl Engine {
    pub fn new(cloud: Arc<dyn Cloud>, hosts: Arc<dyn Hosts>, settings: EngineSettings) -> Engine {
        Engine { cloud, hosts, settings }
    }

    pub fn cloud(&self) -> &Arc<dyn Cloud> {
        &self.cloud
    }

    pub fn hosts(&self) -> &Arc<dyn Hosts> {
        &self.hosts
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// Refuses a stack whose `spec.aws.endpoint` the policy does not allow,
    /// before any request is signed for it.
    fn check_endpoint(&self, stack: &VotingStack) -> Result<(), CloudError> {
        match self.settings.endpoints.check(&stack.spec) {
            Some(problem) => Err(CloudError::EndpointRefused(problem.to_string())),
            None => Ok(()),
        }
    }

    /// Brings the stack one step closer to its spec and reports where it is.
    pub async fn reconcile(&self, stack: &VotingStack, key: Result<SshKey, String>) -> Outcome {
        let started = Instant::now();
        let previous = stack.status.clone().unwrap_or_default();
        let run = self.pass(stack, key, previous.clone(), Stop::default()).await;
        self.finish(stack, previous, run, started)
    }

    /// [`Engine::reconcile`] that ends at the next step boundary once `stop`
    /// is requested: between phases, before an EC2, data volume or host step,
    /// or while the smoke test waits (never within a call). A pass that
    /// stopped returns nothing to write back: its status would be half made.
    /// What it created is found again by the next pass (by tag, by client
    /// token), as after a crash.
    pub async fn reconcile_or_stop(
        &self,
        stack: &VotingStack,
        key: Result<SshKey, String>,
        stop: &Stop,
    ) -> Result<Outcome, Stopped> {
        let started = Instant::now();
        let previous = stack.status.clone().unwrap_or_default();
        let run = self.pass(stack, key, previous.clone(), stop.clone()).await;
        if let Some(at) = run.stopped {
            info!(stack = %stack.key(), "reconcile stopped {at}: shutting down");
            return Err(Stopped { at });
        }
        Ok(self.finish(stack, previous, run, started))
    }

    async fn pass(
        &self,
        stack: &VotingStack,
        key: Result<SshKey, String>,
        previous: VotingStackStatus,
        stop: Stop,
    ) -> Run {
        let mut run = Run {
            status: previous,
            findings: Findings::default(),
            applied: Vec::new(),
            error: None,
            targets: Vec::new(),
            stop,
            stopped: None,
            next_backup: None,
        };
        self.reconcile_into(stack, key, &mut run).await;
        run
    }

    async fn reconcile_into(&self, stack: &VotingStack, key: Result<SshKey, String>, run: &mut Run) {
        let spec = &stack.spec;
        let name = stack.metadata.name.as_deref().unwrap_or_default();

        // validate
        run.findings.invalid = validate(name, spec);
        run.findings.invalid.extend(self.settings.endpoints.check(spec));
        if !run.findings.invalid.is_empty() {
            run.error = Some(Failure::InvalidSpec);
            return;
        }
        let key = match key {
            Ok(k) => k,
            Err(problem) => {
                run.findings.secret_problem = Some(problem);
                run.error = Some(Failure::Secret);
                return;
            }
        };
        run.findings.paused = spec.paused;
        let ident = StackIdentity::of(stack);

        // EC2: observe, plan, act, observe again
        if run.stop_at("before the EC2 phase") {
            return;
        }
        let Some(infra_plan) = self.converge_infra(&ident, stack, &key, run).await else { return };
        record_instances(&ident.tag_value(), &mut run.status, &infra_plan.keepers);

        // the database's data volume
        if run.stop_at("before the data volume phase") {
            return;
        }
        let mut data_volume = match infra_plan.keepers.get(&Tier::Database) {
            Some(db) => self.converge_volume(&ident, spec, db, &key, &infra_plan, run).await,
            None => Err(VolumeHold::NoInstance),
        };

        // its snapshots: owed ones taken (before a postgres image change
        // too), a pending one followed, those beyond keep pruned
        if run.stop_at("before the backups phase") {
            return;
        }
        if let Ok(volume_id) = &data_volume {
            if let Err(held) = self.converge_backups(&ident, stack, volume_id, run).await {
                data_volume = Err(VolumeHold::SnapshotFirst(held.0));
            }
        }

        // hosts, all at once
        if run.stop_at("before the hosts phase") {
            return;
        }
        let changed_hosts = self.converge_hosts(&ident, spec, &key, &infra_plan, &data_volume, run).await;

        // readiness
        if run.stop_at("before the web check") {
            return;
        }
        self.check_web(spec, &infra_plan.keepers, run).await;
        if run.stop_at("before the smoke test") {
            return;
        }
        self.smoke_test(stack, &key, changed_hosts, run).await;
    }

    fn finish(&self, stack: &VotingStack, previous: VotingStackStatus, run: Run, started: Instant) -> Outcome {
        let Run { mut status, findings, applied, error, targets, next_backup, .. } = run;
        let generation = stack.metadata.generation;
        let now = now();
        let transitions = record_conditions(&mut status, &findings, generation, &now);
        let phase = findings.phase(previous.phase);
        status.phase = Some(phase);
        let ready = findings.ready();
        // A failed EC2 step may have left a spec change half done (such as a
        // network sync): keep the old generation so the next pass redoes it.
        // A terminal failure (auth, quota, invalid parameter) is the answer
        // for this generation, though: record it, so tools that compare
        // generations (Argo CD) see a failed stack, not one still progressing.
        if error != Some(Failure::Aws) || ready.reason.is_terminal() {
            status.observed_generation = generation;
        }
        status.last_reconcile_time = Some(now);
        status.last_reconcile_duration_ms = Some(started.elapsed().as_millis() as u64);
        let requeue_after = if ready.ok {
            self.settings.resync
        } else if ready.reason.is_terminal() || phase == Phase::Paused {
            self.settings.terminal_retry
        } else {
            self.settings.converge_retry
        };
        // A snapshot falls due at the schedule's next occurrence.
        let requeue_after = next_backup.map_or(requeue_after, |due| requeue_after.min(due + Duration::from_secs(1)));
        if let Some(kind) = error {
            log_failure(stack, kind, &ready, previous.phase);
        }
        Outcome { status, transitions, applied, requeue_after, error, targets }
    }

    /// What `plan` would do now: observes EC2, the data volume and the
    /// hosts, changes nothing.
    pub async fn plan(&self, stack: &VotingStack, key: Option<&SshKey>) -> Result<Plan, CloudError> {
        self.check_endpoint(stack)?;
        let spec = &stack.spec;
        let mut status = stack.status.clone().unwrap_or_default();
        let ident = StackIdentity::of(stack);
        let lookup = network_lookup(&status, stack.metadata.generation);
        let mut infra = self.observe_infra(&ident, &status, spec.network.provided().as_ref(), lookup).await?;
        self.resolve_ami(&ident, spec, &mut status, &infra).await?;
        let key_pair = desired_key_pair(&ident, key);
        let keepers = plan_infra(spec, &status, &infra, &key_pair, stack.metadata.generation).keepers;
        let recorded = status.data_volume.as_ref().and_then(|v| v.volume_id.as_deref());
        let steady = keepers.get(&Tier::Database).is_some_and(|db| attached_volume(db, recorded).is_some());
        if !steady {
            infra.data_volumes = Some(self.cloud.data_volumes(&ident, recorded).await?);
        }
        let mut hosts = BTreeMap::new();
        if let Some(key) = key {
            for tier in Tier::ALL {
                let Some(target) = host_target(&ident.tag_value(), spec, &status, tier, &keepers, key) else {
                    continue;
                };
                match self.hosts.observe(&target, key).await {
                    Ok(o) => {
                        hosts.insert(tier, o);
                    }
                    Err(e) => warn!("{e}"),
                }
            }
        }
        Ok(plan(spec, &status, &infra, &hosts, &key_pair, stack.metadata.generation))
    }

    /// Tears the stack down per its deletion policy.
    pub async fn destroy(&self, stack: &VotingStack) -> Result<Teardown, CloudError> {
        if stack.spec.deletion_policy == DeletionPolicy::Retain {
            let data_volume =
                stack.status.as_ref().and_then(|s| s.data_volume.as_ref()).and_then(|v| v.volume_id.clone());
            info!(stack = %stack.key(), data_volume = ?data_volume, "deletionPolicy Retain: leaving every AWS resource in place");
            return Ok(Teardown::Retained { data_volume });
        }
        self.check_endpoint(stack)?;
        let status = stack.status.clone().unwrap_or_default();
        let volume = match stack.spec.deletion_policy {
            DeletionPolicy::Snapshot => VolumeTeardown::SnapshotFirst {
                wait: self.settings.final_snapshot_wait,
                poll: self.settings.snapshot_poll,
            },
            DeletionPolicy::Delete | DeletionPolicy::Retain => VolumeTeardown::Delete,
        };
        let ident = StackIdentity::of(stack);
        match tear_down_with(self.cloud.as_ref(), &ident, status.network.as_ref(), volume).await? {
            TornDown::Done(report) => Ok(Teardown::Deleted(report)),
            TornDown::SnapshotPending { snapshot_id } => Ok(Teardown::SnapshotPending { snapshot_id }),
        }
    }
}

/// Logs why a pass did not get the stack Ready. Hosts that do not answer
/// SSH yet while a stack is first brought up are booting: progress, logged
/// at info. Everything else is a warning.
fn log_failure(stack: &VotingStack, kind: Failure, ready: &Finding, previous: Option<Phase>) {
    let was_up = matches!(previous, Some(Phase::Ready | Phase::Degraded));
    if kind == Failure::Ssh && !ready.reason.is_terminal() && !was_up {
        info!(stack = %stack.key(), "waiting for the hosts: {}", ready.message);
    } else {
        warn!(stack = %stack.key(), kind = kind.metric_label(), reason = %ready.reason, "{}", ready.message);
    }
}
