//! The hosts' phase of a reconcile: every host is observed with one round
//! trip, planned and converged at once, and its outcome recorded.

use tracing::{info, warn};

use crate::api::{PullPolicy, Reason, Tier, VotingStackSpec};
use crate::cloud::StackIdentity;
use crate::host::{HostError, HostTarget, SshKey};
use crate::model::{Action, DesiredContainer, HostAction, InstanceState, ObservedHost};

use super::addressing::host_target;
use super::conditions::data_volume::{volume_finding, VolumeHold};
use super::conditions::tiers::{host_failed, host_key_mismatch, instance_not_up, not_observed, tier_finding};
use super::conditions::Finding;
use super::desired::{may_format, on_data_volume, pinned_containers, record_pins};
use super::failure::Failure;
use super::host_keys::{is_young, pin_host_key, was_reached};
use super::plan::{plan_host, HostView, InfraPlan};
use super::reconcile::{Engine, Run};
use super::status::record_containers;
use super::stop::Stop;
use super::worker_hold::{database_answers, hold_worker, host_moves_database, worker_hold, Database};

impl Engine {
    /// Converges every host whose instance runs, all at once: the peers'
    /// addresses come from EC2, and the apps retry their connections to
    /// redis and db, so no tier waits for another (the smoke test still
    /// runs last). The database waits for its data volume. Returns whether
    /// any host was changed.
    pub(super) async fn converge_hosts(
        &self,
        ident: &StackIdentity,
        spec: &VotingStackSpec,
        key: &SshKey,
        infra_plan: &InfraPlan,
        data_volume: &Result<String, VolumeHold>,
        run: &mut Run,
    ) -> bool {
        let peers = infra_plan.peers();
        let mut targets = Vec::new();
        // Why postgres cannot answer, when the database host is not reached.
        let mut db_not_served = "the database instance is not up yet".to_string();
        for tier in Tier::ALL {
            let Some(keeper) = infra_plan.keepers.get(&tier) else { continue };
            if let (Tier::Database, Err(hold)) = (tier, data_volume) {
                // postgres starts only on its data volume
                let finding = volume_finding(hold);
                db_not_served = finding.message.clone();
                run.findings.tiers.insert(tier, finding);
                continue;
            }
            match host_target(&ident.tag_value(), spec, &run.status, tier, &infra_plan.keepers, key) {
                Some(target) => targets.push(target),
                None => {
                    let finding = instance_not_up(keeper);
                    if tier == Tier::Database {
                        db_not_served = finding.message.clone();
                    }
                    run.findings.tiers.insert(tier, finding);
                }
            }
        }
        let observations = futures::future::join_all(targets.iter().map(|t| self.hosts.observe(t, key))).await;
        let formattable = may_format(spec, &run.status);
        let mut desired: Vec<Vec<DesiredContainer>> = targets
            .iter()
            .map(|t| {
                let mut desired = pinned_containers(spec, t.tier, peers, &run.status.images);
                if let Ok(volume_id) = data_volume {
                    on_data_volume(&mut desired, volume_id, formattable);
                }
                desired
            })
            .collect();
        // The worker is held while postgres does not answer or is about
        // to be re-created; the backend's hold then comes before the
        // database host's changes.
        let index = |tier: Tier| targets.iter().position(|t| t.tier == tier);
        let (db, backend) = (index(Tier::Database), index(Tier::Backend));
        let planned = |i: usize, desired: &[DesiredContainer]| match &observations[i] {
            Ok(o) => plan_host(targets[i].tier, desired, HostView::Observed(o)),
            Err(_) => Vec::new(),
        };
        let moving = db.filter(|_| !spec.paused).and_then(|i| host_moves_database(&planned(i, &desired[i])));
        let db_failed = db.and_then(|i| observations[i].as_ref().err()).map(ToString::to_string);
        let database = match (db, &db_failed) {
            (Some(_), Some(why)) => Database::NotServing(why),
            (Some(i), None) => match &observations[i] {
                Ok(o) => Database::Observed(o, &desired[i]),
                Err(_) => Database::NotServing(&db_not_served),
            },
            (None, _) => Database::NotServing(&db_not_served),
        };
        // A postgres image change held for its snapshot leaves postgres on
        // its old image, serving: the worker goes on.
        let untouched = matches!(data_volume, Err(VolumeHold::SnapshotFirst(_)));
        let held = if untouched { None } else { worker_hold(database, moving.clone()) };
        if let Some(b) = backend {
            hold_worker(&mut desired[b], held.as_deref());
        }
        let holds_first =
            backend.is_some_and(|b| planned(b, &desired[b]).iter().any(|a| matches!(a, HostAction::HoldWorker { .. })));
        let stop = run.stop.clone();
        // How hosts are changed: not at all while the stack is paused.
        let acting = (!spec.paused).then_some(spec.app.image_pull_policy);
        let mut observations: Vec<Option<_>> = observations.into_iter().map(Some).collect();
        let mut outcomes: Vec<Option<HostOutcome>> = targets.iter().map(|_| None).collect();
        let mut hold_failed = false;
        if let (Some(b), true) = (backend, holds_first) {
            let observed = observations[b].take().unwrap_or_else(|| Err(not_observed_error(&targets[b])));
            let outcome = self.converge_host(&targets[b], key, observed, &desired[b], &stop, acting).await;
            hold_failed = outcome.failed.is_some();
            outcomes[b] = Some(outcome);
        }
        let converging = targets.iter().enumerate().filter(|(i, _)| outcomes[*i].is_none()).map(|(i, target)| {
            let observed = observations[i].take().unwrap_or_else(|| Err(not_observed_error(target)));
            // A planned move of postgres waits for a worker that could not be stopped.
            let held_back = Some(i) == db && moving.is_some() && hold_failed;
            self.converge_host(target, key, observed, &desired[i], &stop, acting.filter(|_| !held_back))
        });
        let rest = futures::future::join_all(converging).await;
        let mut rest = rest.into_iter();
        for slot in outcomes.iter_mut().filter(|o| o.is_none()) {
            *slot = rest.next();
        }
        let mut outcomes: Vec<HostOutcome> = outcomes.into_iter().map(Option::unwrap_or_default).collect();
        // Released as soon as postgres answers (on its new address, when it moved).
        let answers =
            db.is_some_and(|i| outcomes[i].observed.as_ref().is_some_and(|o| database_answers(o, &desired[i])));
        if let (Some(b), Some(_), true) = (backend, &held, answers) {
            if outcomes[b].failed.is_none() && !outcomes[b].stopped {
                if let Some(observed) = outcomes[b].observed.take() {
                    hold_worker(&mut desired[b], None);
                    let released = self.converge_host(&targets[b], key, Ok(observed), &desired[b], &stop, acting).await;
                    outcomes[b].absorb(released);
                }
            }
        }
        if outcomes.iter().any(|o| o.stopped) && run.stop_at("before a host's changes") {
            return false;
        }
        let mut changed = false;
        for ((target, desired), outcome) in targets.iter().zip(&desired).zip(outcomes) {
            changed |= outcome.changed;
            let finding = run.record_host(spec, target, desired, outcome);
            let finding = match infra_plan.keepers.get(&target.tier) {
                Some(inst) if finding.reason == Reason::HostKeyMismatch => {
                    host_key_mismatch(inst, was_reached(&run.status, inst), is_young(inst), finding)
                }
                _ => finding,
            };
            run.findings.tiers.insert(target.tier, finding);
        }
        if let Ok(volume_id) = data_volume {
            self.tag_formatted(spec, volume_id, run).await;
        }
        changed
    }

    /// Stops the backend's worker between votes before a planned move of
    /// postgres (`why`) that the EC2 or data volume phase is about to make.
    /// Nothing to do when the backend instance does not run (no worker
    /// pops votes) or the worker is stopped already. An error means the
    /// worker may still run: the move waits.
    pub(super) async fn hold_worker_before(
        &self,
        ident: &StackIdentity,
        spec: &VotingStackSpec,
        key: &SshKey,
        infra_plan: &InfraPlan,
        why: &str,
        run: &mut Run,
    ) -> Result<(), HostError> {
        let keepers = &infra_plan.keepers;
        let Some(backend) = keepers.get(&Tier::Backend).filter(|b| b.state == InstanceState::Running) else {
            return Ok(());
        };
        let Some(target) = host_target(&ident.tag_value(), spec, &run.status, Tier::Backend, keepers, key) else {
            return Err(HostError::Unreachable {
                host: format!("backend host ({})", backend.id),
                message: "no address to reach it at yet".into(),
            });
        };
        let observed = self.hosts.observe(&target, key).await?;
        let mut desired = pinned_containers(spec, Tier::Backend, infra_plan.peers(), &run.status.images);
        hold_worker(&mut desired, Some(why));
        let actions: Vec<HostAction> = plan_host(Tier::Backend, &desired, HostView::Observed(&observed))
            .into_iter()
            .filter(|a| matches!(a, HostAction::HoldWorker { .. }))
            .collect();
        if actions.is_empty() {
            return Ok(());
        }
        for a in &actions {
            info!(host = %target.describe(), "{a}");
        }
        self.hosts.apply(&target, key, &actions, spec.app.image_pull_policy).await?;
        run.applied.extend(actions.into_iter().map(Action::Host));
        Ok(())
    }

    /// Once postgres runs on the data volume, it holds a filesystem: tags
    /// it `votingstack.dev/formatted` (once), so no host formats it again.
    async fn tag_formatted(&self, spec: &VotingStackSpec, volume_id: &str, run: &mut Run) {
        let ready = run.findings.tiers.get(&Tier::Database).is_some_and(|f| f.ok);
        if !ready || !may_format(spec, &run.status) {
            return;
        }
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        match self.cloud.tag_volume_formatted(volume_id, &now).await {
            Ok(()) => {
                run.status.data_volume.get_or_insert_with(Default::default).formatted = Some(now);
            }
            Err(e) => {
                warn!(volume = %volume_id, "tagging the data volume formatted failed (tried again next pass): {e}")
            }
        }
    }

    /// Carries out one host's plan from its observation. Touches nothing
    /// but the host, so all hosts converge at once; [`Run::record_host`]
    /// records the outcome. A stop asked for before the host's changes
    /// leaves the host as it is (the changes are one batch on the host).
    /// `acting` None observes only (a paused stack, or a planned move held
    /// back).
    async fn converge_host(
        &self,
        target: &HostTarget,
        key: &SshKey,
        observed: Result<ObservedHost, HostError>,
        desired: &[DesiredContainer],
        stop: &Stop,
        acting: Option<PullPolicy>,
    ) -> HostOutcome {
        let mut outcome = HostOutcome::default();
        let first = match observed {
            Ok(o) => o,
            Err(e) => {
                outcome.failed = Some(e);
                return outcome;
            }
        };
        outcome.fingerprint = Some(first.host_key_fingerprint.clone());
        let actions = plan_host(target.tier, desired, HostView::Observed(&first));
        let Some(pull) = acting.filter(|_| !actions.is_empty()) else {
            outcome.observed = Some(first);
            return outcome;
        };
        if stop.requested() {
            outcome.stopped = true;
            return outcome;
        }
        for a in &actions {
            info!(host = %target.describe(), "{a}");
        }
        outcome.changed = true;
        if let Err(e) = self.hosts.apply(target, key, &actions, pull).await {
            outcome.failed = Some(e);
            return outcome;
        }
        outcome.applied = actions;
        match self.hosts.observe(target, key).await {
            Ok(o) => outcome.observed = Some(o),
            Err(e) => outcome.failed = Some(e),
        }
        outcome
    }
}

/// What converging one host did, recorded by [`Run::record_host`].
#[derive(Debug, Default)]
pub(super) struct HostOutcome {
    /// The host key the host presented, once it was observed.
    fingerprint: Option<String>,
    /// Whether the host was changed (or a change was attempted).
    changed: bool,
    /// The actions carried out.
    applied: Vec<HostAction>,
    /// The host as it is afterwards.
    observed: Option<ObservedHost>,
    /// Why the host could not be observed or changed.
    failed: Option<HostError>,
    /// A stop was asked for before the host's changes were made.
    stopped: bool,
}

impl HostOutcome {
    /// Takes in what a second converge of the same host did (the worker
    /// released once postgres answers).
    fn absorb(&mut self, later: HostOutcome) {
        self.fingerprint = later.fingerprint.or(self.fingerprint.take());
        self.changed |= later.changed;
        self.applied.extend(later.applied);
        self.observed = later.observed;
        self.failed = later.failed;
        self.stopped |= later.stopped;
    }
}

/// Stands in for an observation already handed to a converge.
fn not_observed_error(target: &HostTarget) -> HostError {
    HostError::Parse { host: target.describe(), message: "the host's observation was used up".into() }
}

impl Run {
    /// Records what converging one host did (its key pin, actions,
    /// containers, image digests) and says how ready the tier is.
    fn record_host(
        &mut self,
        spec: &VotingStackSpec,
        target: &HostTarget,
        desired: &[DesiredContainer],
        outcome: HostOutcome,
    ) -> Finding {
        if let Some(fingerprint) = &outcome.fingerprint {
            pin_host_key(&mut self.status, target.tier, fingerprint);
            let mut pinned = target.clone();
            pinned.expected_host_key = Some(fingerprint.clone());
            pinned.earlier_host_key = None;
            self.targets.push(pinned);
        }
        self.applied.extend(outcome.applied.into_iter().map(Action::Host));
        if let Some(e) = outcome.failed {
            self.error = Some(Failure::Ssh);
            return host_failed(&e);
        }
        let Some(observed) = outcome.observed else {
            return not_observed();
        };
        record_containers(&mut self.status, target.tier, &observed);
        record_pins(spec, &mut self.status.images, &running_digests(desired, &observed));
        tier_finding(target, &observed, desired)
    }
}

/// (image reference, digest) of each desired container the host runs in
/// its current configuration.
fn running_digests(desired: &[DesiredContainer], observed: &ObservedHost) -> Vec<(String, String)> {
    desired
        .iter()
        .filter_map(|d| {
            let have = observed.containers.iter().find(|c| c.name == d.name)?;
            let current = have.config_hash.is_some() && have.config_hash == d.config_hash();
            Some((d.image.clone(), have.image_digest.clone().filter(|_| current)?))
        })
        .collect()
}
