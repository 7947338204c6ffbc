//! The hosts' phase of a reconcile: every host is observed with one round
//! trip, planned and converged at once, and its outcome recorded.

use tracing::{info, warn};

use crate::api::{Reason, Tier, VotingStackSpec};
use crate::cloud::StackIdentity;
use crate::host::{HostError, HostTarget, SshKey};
use crate::model::{Action, DesiredContainer, HostAction, ObservedHost};

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
        for tier in Tier::ALL {
            let Some(keeper) = infra_plan.keepers.get(&tier) else { continue };
            if let (Tier::Database, Err(hold)) = (tier, data_volume) {
                // postgres starts only on its data volume
                run.findings.tiers.insert(tier, volume_finding(hold));
                continue;
            }
            match host_target(&ident.tag_value(), spec, &run.status, tier, &infra_plan.keepers, key) {
                Some(target) => targets.push(target),
                None => {
                    run.findings.tiers.insert(tier, instance_not_up(keeper));
                }
            }
        }
        let observations = futures::future::join_all(targets.iter().map(|t| self.hosts.observe(t, key))).await;
        let formattable = may_format(&run.status);
        let desired: Vec<Vec<DesiredContainer>> = targets
            .iter()
            .map(|t| {
                let mut desired = pinned_containers(spec, t.tier, peers, &run.status.images);
                if let Ok(volume_id) = data_volume {
                    on_data_volume(&mut desired, volume_id, formattable);
                }
                desired
            })
            .collect();
        let stop = run.stop.clone();
        let converging = targets
            .iter()
            .zip(observations)
            .zip(&desired)
            .map(|((target, observed), desired)| self.converge_host(spec, target, key, observed, desired, &stop));
        let outcomes = futures::future::join_all(converging).await;
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
            self.tag_formatted(volume_id, run).await;
        }
        changed
    }

    /// Once postgres runs on the data volume, it holds a filesystem: tags
    /// it `votingstack.dev/formatted` (once), so no host formats it again.
    async fn tag_formatted(&self, volume_id: &str, run: &mut Run) {
        let ready = run.findings.tiers.get(&Tier::Database).is_some_and(|f| f.ok);
        if !ready || !may_format(&run.status) {
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
    async fn converge_host(
        &self,
        spec: &VotingStackSpec,
        target: &HostTarget,
        key: &SshKey,
        observed: Result<ObservedHost, HostError>,
        desired: &[DesiredContainer],
        stop: &Stop,
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
        if spec.paused || actions.is_empty() {
            outcome.observed = Some(first);
            return outcome;
        }
        if stop.requested() {
            outcome.stopped = true;
            return outcome;
        }
        for a in &actions {
            info!(host = %target.describe(), "{a}");
        }
        outcome.changed = true;
        if let Err(e) = self.hosts.apply(target, key, &actions, spec.app.image_pull_policy).await {
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
