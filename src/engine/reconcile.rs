//! The phased reconcile shared by the controller and the CLI:
//! validate → observe → plan → act → status.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, info, warn};

use crate::api::conditions::{find_condition, set_condition};
use crate::api::{
    validate, ConditionType, ConditionUpdate, ConnectVia, ContainerStatus, DataVolumeStatus, HostKeyPolicy,
    NetworkStatus, Phase, Reason, Tier, TierStatus, TiersStatus, VotingStack, VotingStackSpec, VotingStackStatus,
};
use crate::cloud::{Cloud, CloudError, DestroyReport, NetworkLookup, StackIdentity, CLIENT_TOKEN_PREFIX};
use crate::host::{HostError, HostTarget, Hosts, SshKey};
use crate::timeline::{self, Stage};

use crate::model::network::NAT_PENDING;
use crate::model::{
    Action, DesiredContainer, DesiredKeyPair, DockerState, HostAction, InfraAction, InstanceState, NetworkObservation,
    ObservedHost, ObservedInfra, ObservedInstance, ObservedVolume, UserData, VolumeState, VolumeStep,
};

use super::conditions::{Finding, Findings};
use super::desired::{on_data_volume, pinned_containers, record_pins};
use super::network::{network_drift, network_steps, teardown_steps};
use super::plan::{network_lookup, plan, plan_host, plan_infra, HostView, InfraPlan, InstanceDrift, Plan};
use super::volume::{attached_volume, pick_volume, plan_volume};

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
        }
    }
}

/// What kind of failure stopped a reconcile: it decides the backoff and
/// labels the error metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The spec failed validation: nothing was created.
    InvalidSpec,
    /// The SSH key Secret is missing or unreadable.
    Secret,
    /// An EC2 call failed.
    Aws,
    /// A host could not be reached or refused a step.
    Ssh,
}

impl ErrorKind {
    /// Value of the `kind` label of the error metric.
    pub fn metric_label(self) -> &'static str {
        match self {
            ErrorKind::InvalidSpec => "invalid_spec",
            ErrorKind::Secret => "secret",
            ErrorKind::Aws => "aws",
            ErrorKind::Ssh => "ssh",
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
    pub error: Option<ErrorKind>,
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
    cloud: Arc<dyn Cloud>,
    hosts: Arc<dyn Hosts>,
    settings: EngineSettings,
}

/// Result of tearing a stack down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Teardown {
    /// `deletionPolicy: Retain`: nothing was touched; the data volume (when
    /// the stack has one) keeps the database.
    Retained {
        data_volume: Option<String>,
    },
    Deleted(DestroyReport),
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

    /// Brings the stack one step closer to its spec and reports where it is.
    pub async fn reconcile(&self, stack: &VotingStack, key: Result<SshKey, String>) -> Outcome {
        let started = Instant::now();
        let previous = stack.status.clone().unwrap_or_default();
        let mut run = Run {
            status: previous.clone(),
            findings: Findings::default(),
            applied: Vec::new(),
            error: None,
            targets: Vec::new(),
        };
        self.reconcile_into(stack, key, &mut run).await;
        self.finish(stack, previous, run, started)
    }

    async fn reconcile_into(&self, stack: &VotingStack, key: Result<SshKey, String>, run: &mut Run) {
        let spec = &stack.spec;
        let name = stack.metadata.name.as_deref().unwrap_or_default();

        // validate
        run.findings.invalid = validate(name, spec);
        if !run.findings.invalid.is_empty() {
            run.error = Some(ErrorKind::InvalidSpec);
            return;
        }
        let key = match key {
            Ok(k) => k,
            Err(problem) => {
                run.findings.secret_problem = Some(problem);
                run.error = Some(ErrorKind::Secret);
                return;
            }
        };
        run.findings.paused = spec.paused;
        let ident = StackIdentity::of(stack);

        // observe + plan + act: EC2
        let Some(infra_plan) = self.converge_infra(&ident, stack, &key, run).await else { return };

        // observe + plan + act: the database's data volume
        record_instances(&ident.tag_value(), &mut run.status, &infra_plan.keepers);
        let data_volume = match infra_plan.keepers.get(&Tier::Database) {
            Some(db) => self.converge_volume(&ident, spec, db, run).await,
            None => Err(Finding::not(Reason::WaitingForInfrastructure, "the database instance is not up yet")),
        };

        // observe + plan + act: hosts
        let peers = infra_plan.peers();
        let mut changed_hosts = false;
        // Observe every host at once (one round trip each), then act tier by tier.
        let mut targets = Vec::new();
        for tier in Tier::ALL {
            let Some(keeper) = infra_plan.keepers.get(&tier) else { continue };
            if let (Tier::Database, Err(waiting)) = (tier, &data_volume) {
                // postgres starts only on its data volume
                run.findings.tiers.insert(tier, waiting.clone());
                continue;
            }
            match host_target(&ident.tag_value(), spec, &run.status, tier, &infra_plan.keepers, &key) {
                Some(target) => targets.push(target),
                None => {
                    let why = format!("instance {} is {}", keeper.id, keeper.state.as_str());
                    run.findings.tiers.insert(tier, Finding::not(Reason::WaitingForInfrastructure, why));
                }
            }
        }
        // Every host converges at once: the peers' addresses come from EC2,
        // and the apps retry their connections to redis and db, so no tier
        // waits for another (the smoke test still runs last).
        let observations = futures::future::join_all(targets.iter().map(|t| self.hosts.observe(t, &key))).await;
        let desired: Vec<Vec<DesiredContainer>> = targets
            .iter()
            .map(|t| {
                let mut desired = pinned_containers(spec, t.tier, peers, &run.status.images);
                if let Ok(volume_id) = &data_volume {
                    on_data_volume(&mut desired, volume_id);
                }
                desired
            })
            .collect();
        let converging = targets
            .iter()
            .zip(observations)
            .zip(&desired)
            .map(|((target, observed), desired)| self.converge_host(spec, target, &key, observed, desired));
        let outcomes = futures::future::join_all(converging).await;
        for ((target, desired), outcome) in targets.iter().zip(&desired).zip(outcomes) {
            let finding = run.record_host(spec, target, desired, outcome, &mut changed_hosts);
            let finding = match infra_plan.keepers.get(&target.tier) {
                Some(inst) if finding.reason == Reason::HostKeyMismatch => {
                    not_yet_this_host(&run.status, inst, finding)
                }
                _ => finding,
            };
            run.findings.tiers.insert(target.tier, finding);
        }
        self.check_web(spec, &infra_plan.keepers, run).await;
        self.smoke_test(stack, &key, changed_hosts, run).await;
    }

    /// Observes EC2 and carries out the EC2 half of the plan. Returns the
    /// plan of the instances as they are afterwards (which instance serves
    /// each tier), or None when EC2 failed.
    async fn converge_infra(
        &self,
        ident: &StackIdentity,
        stack: &VotingStack,
        key: &SshKey,
        run: &mut Run,
    ) -> Option<InfraPlan> {
        let spec = &stack.spec;
        let calls_before = self.cloud.api_calls();
        let lookup = network_lookup(&run.status, stack.metadata.generation);
        let mut infra = match self.observe_infra(ident, &run.status, lookup).await {
            Ok(infra) => infra,
            Err(e) => return run.cloud_failed(e),
        };
        let drift = network_drift(&infra.network, spec, run.status.network.as_ref());
        if let Some(net) = infra.network.complete_ids(spec.network.egress) {
            run.status.network = Some(net);
        }
        if let NetworkObservation::Inventory(found) = &infra.network {
            if let Some(vpc) = found.vpc.as_ref().filter(|v| v.cidr != spec.network.vpc_cidr) {
                // A VPC is never replaced: its instances and groups live in it.
                warn!(stack = %ident.tag_value(), "adopted VPC {} has CIDR {}, not {}", vpc.id, vpc.cidr, spec.network.vpc_cidr);
            }
        }
        for d in &drift {
            warn!(stack = %ident.tag_value(), "network drift: {d}");
        }
        let key_pair = desired_key_pair(ident, Some(key));
        let actions = plan_infra(spec, &run.status, &infra, &key_pair).actions;
        if !spec.paused && !actions.is_empty() {
            // The network steps start from the ids of what was found.
            let mut ids = match &infra.network {
                NetworkObservation::Trusted(ids, _) => ids.clone(),
                NetworkObservation::Inventory(found) => found.ids(),
            };
            let mut network_began = None;
            for action in &actions {
                info!(stack = %ident.tag_value(), "{action}");
                if matches!(action, InfraAction::Network(_)) {
                    network_began.get_or_insert_with(SystemTime::now);
                } else if let Some(began) = network_began.take() {
                    timeline::span(&ident.tag_value(), Stage::Network, "", began);
                }
                if let Err(e) = self.act_infra(ident, key, action, &mut ids, run).await {
                    return run.cloud_failed(e);
                }
                run.applied.push(action.clone().into());
            }
            if let Some(began) = network_began {
                timeline::span(&ident.tag_value(), Stage::Network, "", began);
            }
            infra = match self.observe_infra(ident, &run.status, NetworkLookup::TrustStatus).await {
                Ok(infra) => infra,
                Err(e) => return run.cloud_failed(e),
            };
        }
        debug!(stack = %ident.tag_value(), calls = self.cloud.api_calls() - calls_before, "EC2 calls this reconcile");
        let after = plan_infra(spec, &run.status, &infra, &key_pair);
        let finding = match network_finding(&drift, run.status.network.as_ref()) {
            Some(f) => f,
            None => infra_finding(&after.keepers, &after.drift),
        };
        run.findings.infrastructure = Some(finding);
        Some(after)
    }

    /// Brings the data volume to the database instance: nothing beyond the
    /// instance's block device mappings while it is attached; otherwise
    /// DescribeVolumes, then create, attach or detach, a step at a time.
    /// Returns the attached volume's id, or the database tier's finding
    /// while postgres cannot start yet.
    async fn converge_volume(
        &self,
        ident: &StackIdentity,
        spec: &VotingStackSpec,
        db: &ObservedInstance,
        run: &mut Run,
    ) -> Result<String, Finding> {
        let recorded = run.status.data_volume.as_ref().and_then(|v| v.volume_id.clone());
        if let Some(id) = attached_volume(db, recorded.as_deref()) {
            record_volume(&mut run.status, &id, None, Some(&db.id));
            return Ok(id);
        }
        let zone = db.zone.clone().or_else(|| run.status.network.as_ref().and_then(|n| n.availability_zone.clone()));
        let mut created: Option<ObservedVolume> = None;
        let mut acted = false;
        let deadline = Instant::now() + self.settings.volume_wait;
        loop {
            let recorded = run.status.data_volume.as_ref().and_then(|v| v.volume_id.clone());
            let found = match created.take() {
                // A fresh volume may not be listed yet: go on from the answer.
                Some(v) => vec![v],
                None => match self.cloud.data_volumes(ident, recorded.as_deref()).await {
                    Ok(found) => found,
                    Err(e) => return Err(self.volume_failed(run, e)),
                },
            };
            let volume = pick_volume(&found, db, recorded.as_deref());
            let holders = match volume.and_then(|v| v.attachment()).filter(|a| a.instance_id != db.id) {
                Some(a) => match self.cloud.instances_by_id(std::slice::from_ref(&a.instance_id)).await {
                    Ok(found) => found,
                    Err(e) => return Err(self.volume_failed(run, e)),
                },
                None => Vec::new(),
            };
            let infra = ObservedInfra { instances: holders, ..Default::default() };
            let step = plan_volume(db, volume, &infra, zone.as_deref(), spec.database.volume_size_gib);
            // Worth waiting for within the pass: EC2 finishing what this
            // stack asked for (a create, an attachment to the instance, a
            // detach it sent). A terminating instance letting go takes as
            // long as its shutdown: the next pass looks again.
            let soon = volume.is_some_and(|v| {
                v.state == VolumeState::Creating
                    || v.attachment().is_some_and(|a| a.instance_id == db.id || (acted && a.state == "detaching"))
            });
            if let Some(v) = volume {
                let attached = v.attachment().map(|a| a.instance_id.as_str());
                record_volume(&mut run.status, &v.id, Some(v), attached);
            }
            match &step {
                VolumeStep::Ready { volume_id } => return Ok(volume_id.clone()),
                VolumeStep::Blocked { why } => {
                    return Err(Finding::not(Reason::DataVolumeUnusable, why.clone()));
                }
                // Waits out EC2's own transitions within the pass; an
                // instance still pending is the next pass's.
                VolumeStep::Wait { why, .. }
                    if Instant::now() >= deadline
                        || spec.paused
                        || !soon
                        || !matches!(db.state, InstanceState::Running | InstanceState::Stopped) =>
                {
                    return Err(Finding::not(Reason::WaitingForInfrastructure, why.clone()));
                }
                VolumeStep::Wait { .. } => {
                    tokio::time::sleep(self.settings.volume_poll).await;
                    continue;
                }
                _ if spec.paused => {
                    return Err(Finding::not(Reason::Paused, format!("paused before: {step}")));
                }
                _ => {}
            }
            info!(stack = %ident.tag_value(), "{step}");
            let result = match &step {
                VolumeStep::Create { zone, size_gib } => {
                    let n = run.status.data_volume.as_ref().map_or(0, |v| v.created);
                    match self.cloud.create_data_volume(ident, zone, *size_gib, n).await {
                        Ok(v) => {
                            let entry = run.status.data_volume.get_or_insert_with(Default::default);
                            entry.created = n + 1;
                            record_volume(&mut run.status, &v.id, Some(&v), None);
                            created = Some(v);
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
                VolumeStep::Attach { volume_id, instance_id } => self.cloud.attach_volume(volume_id, instance_id).await,
                VolumeStep::Detach { volume_id, instance_id } => self.cloud.detach_volume(volume_id, instance_id).await,
                _ => Ok(()),
            };
            if let Err(e) = result {
                return Err(self.volume_failed(run, e));
            }
            acted = true;
            run.applied.push(Action::Infra(InfraAction::DataVolume(step)));
            if Instant::now() >= deadline {
                return Err(Finding::not(Reason::WaitingForInfrastructure, "the data volume is on its way"));
            }
        }
    }

    /// An EC2 failure about the data volume: said in the database tier's
    /// condition (and counted as an AWS error), the other tiers go on.
    fn volume_failed(&self, run: &mut Run, e: CloudError) -> Finding {
        run.error = Some(ErrorKind::Aws);
        Finding::not(e.reason(), format!("data volume: {e}"))
    }

    /// Observes EC2, and looks each recorded instance missing from the tag
    /// look-up up by id: it is gone only once EC2 says so (NotFound or
    /// terminated), not while a tag look-up lags a fresh launch. A tier
    /// whose recorded instance was already found gone is not asked again.
    async fn observe_infra(
        &self,
        ident: &StackIdentity,
        status: &VotingStackStatus,
        lookup: NetworkLookup,
    ) -> Result<ObservedInfra, CloudError> {
        let mut infra = self.cloud.observe(ident, status.network.as_ref(), lookup).await?;
        let missing: Vec<(Tier, String)> = Tier::ALL
            .iter()
            .filter_map(|tier| {
                let t = status.tiers.as_ref()?.get(*tier)?;
                let id = t.instance_id.clone()?;
                let confirmed_gone = t.instance_state.as_deref() == Some(InstanceState::Terminated.as_str());
                let listed = infra.instances.iter().any(|i| i.id == id);
                (!listed && !confirmed_gone).then_some((*tier, id))
            })
            .collect();
        if missing.is_empty() {
            return Ok(infra);
        }
        let ids: Vec<String> = missing.iter().map(|(_, id)| id.clone()).collect();
        for mut inst in self.cloud.instances_by_id(&ids).await? {
            // Its tags may lag too: the tier is the one it was recorded for.
            if inst.tier.is_none() {
                inst.tier = missing.iter().find(|(_, id)| *id == inst.id).map(|(tier, _)| *tier);
            }
            debug!(stack = %ident.tag_value(), instance = %inst.id, state = inst.state.as_str(), "recorded instance found by id");
            infra.instances.push(inst);
        }
        Ok(infra)
    }

    async fn act_infra(
        &self,
        ident: &StackIdentity,
        key: &SshKey,
        action: &InfraAction,
        ids: &mut NetworkStatus,
        run: &mut Run,
    ) -> Result<(), CloudError> {
        match action {
            InfraAction::Network(step) => {
                let applied = self.cloud.apply_network_step(ident, step, ids).await;
                // Whatever was created is recorded, even when a later step fails.
                run.status.network = Some(ids.clone());
                applied?;
            }
            InfraAction::LaunchInstance(launch) => {
                let network = run.status.network.clone().unwrap_or_default();
                // The instance's SSH host key, known before it boots.
                let token = ident.client_token(launch.tier, launch.replacement);
                let mut launch = launch.clone();
                match key.host_key_for(&token) {
                    Ok(host_key) => launch.user_data = Some(UserData(host_key.user_data())),
                    Err(e) => warn!(tier = %launch.tier, "launching without a host key: {e}"),
                }
                let launch = &launch;
                let inst = match self.cloud.launch_instance(ident, &network, launch).await {
                    Ok(inst) => inst,
                    Err(e @ CloudError::TokenReused { .. }) => {
                        // The token is burnt: the next pass launches with the next number.
                        let slot = run.status.tiers.get_or_insert_with(TiersStatus::default).slot(launch.tier);
                        let entry = slot.get_or_insert_with(TierStatus::default);
                        entry.instance_id = None;
                        entry.replacements = entry.replacements.max(launch.replacement + 1);
                        return Err(e);
                    }
                    Err(e) => return Err(e),
                };
                if inst.state == InstanceState::Running {
                    mark_running(&ident.tag_value(), launch.tier, &inst);
                }
                let slot = run.status.tiers.get_or_insert_with(TiersStatus::default).slot(launch.tier);
                *slot = Some(TierStatus {
                    instance_id: Some(inst.id.clone()),
                    instance_state: Some(inst.state.as_str().into()),
                    private_ip: inst.private_ip.map(|ip| ip.to_string()),
                    public_ip: inst.public_ip.map(|ip| ip.to_string()),
                    replacements: launch.replacement,
                    ..Default::default()
                });
            }
            InfraAction::StartInstance { instance_id, .. } => self.cloud.start_instance(instance_id).await?,
            InfraAction::TerminateInstance { instance_id, .. } => {
                self.cloud.terminate_instances(std::slice::from_ref(instance_id)).await?
            }
            // Planned and carried out by `converge_volume`, not here.
            InfraAction::DataVolume(_) => {}
        }
        Ok(())
    }

    /// Carries out one host's plan from its observation. Touches nothing
    /// but the host, so all hosts converge at once; [`Run::record_host`]
    /// records the outcome.
    async fn converge_host(
        &self,
        spec: &VotingStackSpec,
        target: &HostTarget,
        key: &SshKey,
        observed: Result<ObservedHost, HostError>,
        desired: &[DesiredContainer],
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

    /// HTTP 200 from vote and result, once the frontend's containers run.
    async fn check_web(&self, spec: &VotingStackSpec, keepers: &BTreeMap<Tier, ObservedInstance>, run: &mut Run) {
        let Some(address) = keepers.get(&Tier::Frontend).and_then(|f| web_address(spec, f)) else {
            run.status.vote_url = None;
            run.status.result_url = None;
            return;
        };
        let vote_url = url(address, spec.app.ports.vote);
        let result_url = url(address, spec.app.ports.result);
        run.status.vote_url = Some(vote_url.clone());
        run.status.result_url = Some(result_url.clone());
        if !run.findings.tiers.get(&Tier::Frontend).is_some_and(|f| f.ok) {
            return;
        }
        for u in [&vote_url, &result_url] {
            let problem = match self.hosts.http_status(u).await {
                Ok(200) => continue,
                Ok(code) => format!("{u} answered HTTP {code}"),
                Err(e) => e.to_string(),
            };
            run.findings.tiers.insert(Tier::Frontend, Finding::not(Reason::NotReady, problem));
            return;
        }
    }

    /// Casts a vote with a unique voter id and waits for it in postgres. Runs
    /// only when something changed; a steady stack keeps its last result.
    async fn smoke_test(&self, stack: &VotingStack, key: &SshKey, changed_hosts: bool, run: &mut Run) {
        let spec = &stack.spec;
        let all_ready = Tier::ALL.iter().all(|t| run.findings.tiers.get(t).is_some_and(|f| f.ok));
        if !all_ready {
            run.findings.smoke = Some(Finding::not(Reason::WaitingForTiers, "waits for all three tiers"));
            return;
        }
        let previous = find_condition(&run.status.conditions, ConditionType::SmokeTestPassed);
        let still_valid = previous.is_some_and(|c| {
            c.status == "True" && c.observed_generation == stack.metadata.generation && !changed_hosts
        });
        if still_valid || spec.paused {
            let p = previous.map(|c| (c.status == "True", c.message.clone()));
            run.findings.smoke = Some(match p {
                Some((true, msg)) => Finding::ok(Reason::VoteCounted, msg),
                _ => Finding::not(Reason::WaitingForTiers, "paused before a smoke test ran"),
            });
            return;
        }
        // The database host as reached this pass, its key pinned.
        let db = run.targets.iter().find(|t| t.tier == Tier::Database).cloned();
        let (Some(vote_url), Some(db)) = (run.status.vote_url.clone(), db) else {
            return;
        };
        let voter = smoke_voter_id();
        let began = SystemTime::now();
        let finding = self.cast_and_find(&vote_url, &db, key, &voter).await;
        if finding.ok {
            timeline::span(&db.stack, Stage::SmokeTest, "", began);
        }
        run.findings.smoke = Some(finding);
    }

    async fn cast_and_find(&self, vote_url: &str, db: &HostTarget, key: &SshKey, voter: &str) -> Finding {
        if let Err(e) = self.hosts.cast_vote(vote_url, voter, "a").await {
            return Finding::not(Reason::VoteNotCounted, format!("casting a vote failed: {e}"));
        }
        let deadline = Instant::now() + self.settings.smoke_timeout;
        loop {
            match self.hosts.recorded_vote(db, key, voter).await {
                Ok(Some(v)) if v == "a" => {
                    // Counted: take it back out, so the results show only real votes.
                    if let Err(e) = self.hosts.delete_vote(db, key, voter).await {
                        warn!("the smoke test's vote stays in postgres: {e}");
                    }
                    return Finding::ok(Reason::VoteCounted, format!("vote of {voter} reached postgres"));
                }
                Ok(_) => {}
                Err(e) => return Finding::not(Reason::VoteNotCounted, format!("reading the vote back failed: {e}")),
            }
            if Instant::now() >= deadline {
                return Finding::not(
                    Reason::VoteNotCounted,
                    format!(
                        "vote of {voter} did not reach postgres within {} s: is the worker running and can it resolve redis and db?",
                        self.settings.smoke_timeout.as_secs()
                    ),
                );
            }
            tokio::time::sleep(self.settings.smoke_poll).await;
        }
    }

    fn finish(&self, stack: &VotingStack, previous: VotingStackStatus, run: Run, started: Instant) -> Outcome {
        let Run { mut status, findings, applied, error, targets } = run;
        let generation = stack.metadata.generation;
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut transitions = Vec::new();
        for update in findings.conditions() {
            if set_condition(&mut status.conditions, &update, generation, &now) {
                transitions.push(update);
            }
        }
        let phase = findings.phase(previous.phase);
        status.phase = Some(phase);
        let ready = findings.ready();
        // A failed EC2 step may have left a spec change half done (such as a
        // network sync): keep the old generation so the next pass redoes it.
        // A terminal failure (auth, quota, invalid parameter) is the answer
        // for this generation, though: record it, so tools that compare
        // generations (Argo CD) see a failed stack, not one still progressing.
        if error != Some(ErrorKind::Aws) || ready.reason.is_terminal() {
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
        if let Some(kind) = error {
            warn!(stack = %stack.key(), kind = kind.metric_label(), reason = %ready.reason, "{}", ready.message);
        }
        Outcome { status, transitions, applied, requeue_after, error, targets }
    }

    /// What `plan` would do now: observes EC2 and the hosts, changes nothing.
    pub async fn plan(&self, stack: &VotingStack, key: Option<&SshKey>) -> Result<Plan, CloudError> {
        let spec = &stack.spec;
        let status = stack.status.clone().unwrap_or_default();
        let ident = StackIdentity::of(stack);
        let lookup = network_lookup(&status, stack.metadata.generation);
        let infra = self.observe_infra(&ident, &status, lookup).await?;
        let key_pair = desired_key_pair(&ident, key);
        let keepers = plan_infra(spec, &status, &infra, &key_pair).keepers;
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
        Ok(plan(spec, &status, &infra, &hosts, &key_pair))
    }

    /// Tears the stack down per its deletion policy.
    pub async fn destroy(&self, stack: &VotingStack) -> Result<Teardown, CloudError> {
        if stack.spec.deletion_policy == crate::api::DeletionPolicy::Retain {
            let data_volume =
                stack.status.as_ref().and_then(|s| s.data_volume.as_ref()).and_then(|v| v.volume_id.clone());
            info!(stack = %stack.key(), data_volume = ?data_volume, "deletionPolicy Retain: leaving every AWS resource in place");
            return Ok(Teardown::Retained { data_volume });
        }
        let status = stack.status.clone().unwrap_or_default();
        let report = tear_down(self.cloud.as_ref(), &StackIdentity::of(stack), status.network.as_ref()).await?;
        Ok(Teardown::Deleted(report))
    }
}

/// The status of a stack being deleted: Ready=False reason Deleting, phase
/// Deleting; `problem` (a failed teardown) goes into the message. The other
/// conditions keep what they last said.
pub fn deleting_status(stack: &VotingStack, problem: Option<&str>) -> (VotingStackStatus, Vec<ConditionUpdate>) {
    let mut status = stack.status.clone().unwrap_or_default();
    if stack.spec.deletion_policy == crate::api::DeletionPolicy::Retain {
        if let Some(v) = status.data_volume.as_mut() {
            v.retained = true;
        }
    }
    let findings = Findings { deleting: true, ..Default::default() };
    let mut ready = findings.ready();
    if let Some(problem) = problem {
        ready.message = format!("{}: {problem}", ready.message);
    }
    let update = ConditionUpdate::new(ConditionType::Ready, ready.ok, ready.reason, ready.message);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let flipped = set_condition(&mut status.conditions, &update, stack.metadata.generation, &now);
    status.phase = Some(findings.phase(status.phase));
    status.observed_generation = stack.metadata.generation;
    (status, if flipped { vec![update] } else { Vec::new() })
}

/// Status without the fields every pass rewrites (when and how long): two
/// statuses equal under this say the same thing about the stack.
pub fn status_content(status: &VotingStackStatus) -> VotingStackStatus {
    VotingStackStatus { last_reconcile_time: None, last_reconcile_duration_ms: None, ..status.clone() }
}

/// A voter id no other smoke test of this process has used, whatever the
/// clock says: the time plus a process-wide sequence and a random suffix
/// (another operator process may test the same stack).
pub fn smoke_voter_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let salt: u32 = rand::random();
    format!("votingstack-smoke-{}-{n}-{salt:08x}", chrono::Utc::now().timestamp_millis())
}

/// The stack's key pair as the plan wants it (the public key when known).
pub fn desired_key_pair(ident: &StackIdentity, key: Option<&SshKey>) -> DesiredKeyPair {
    DesiredKeyPair { name: ident.resource_name(), public_key: key.map(|k| k.public_openssh().to_owned()) }
}

/// Deletes the stack's instances and network: finds what is there, orders
/// the teardown steps, and has the cloud carry them out.
pub async fn tear_down(
    cloud: &dyn Cloud,
    stack: &StackIdentity,
    known: Option<&NetworkStatus>,
) -> Result<DestroyReport, CloudError> {
    let found = cloud.teardown_inventory(stack, known).await?;
    let steps = teardown_steps(&found);
    for step in &steps {
        info!(stack = %stack.tag_value(), "{step}");
    }
    cloud.destroy(stack, &steps).await
}

/// Brings the network alone in line with the spec: inventories it, plans
/// its steps and carries them out. Returns the network's ids.
pub async fn converge_network(
    cloud: &dyn Cloud,
    stack: &StackIdentity,
    spec: &VotingStackSpec,
    key: &SshKey,
    known: Option<&NetworkStatus>,
) -> Result<NetworkStatus, CloudError> {
    let found = match cloud.observe(stack, known, NetworkLookup::Inventory).await?.network {
        NetworkObservation::Inventory(found) => found,
        NetworkObservation::Trusted(ids, _) => return Ok(ids),
    };
    let mut ids = found.ids();
    for step in network_steps(&found, spec, &desired_key_pair(stack, Some(key))) {
        info!(stack = %stack.tag_value(), "{step}");
        cloud.apply_network_step(stack, &step, &mut ids).await?;
    }
    Ok(ids)
}

/// Mutable state of one reconcile.
struct Run {
    status: VotingStackStatus,
    findings: Findings,
    applied: Vec<Action>,
    error: Option<ErrorKind>,
    targets: Vec<HostTarget>,
}

impl Run {
    fn cloud_failed(&mut self, e: CloudError) -> Option<InfraPlan> {
        self.findings.infrastructure = Some(Finding::not(e.reason(), e.to_string()));
        self.error = Some(ErrorKind::Aws);
        None
    }

    fn host_failed(&mut self, e: HostError) -> Finding {
        self.error = Some(ErrorKind::Ssh);
        Finding::not(e.reason(), e.to_string())
    }

    /// Records what converging one host did (its key pin, actions,
    /// containers, image digests) and says how ready the tier is.
    fn record_host(
        &mut self,
        spec: &VotingStackSpec,
        target: &HostTarget,
        desired: &[DesiredContainer],
        outcome: HostOutcome,
        changed: &mut bool,
    ) -> Finding {
        *changed |= outcome.changed;
        if let Some(fingerprint) = &outcome.fingerprint {
            pin_host_key(&mut self.status, target.tier, fingerprint);
            let mut pinned = target.clone();
            pinned.expected_host_key = Some(fingerprint.clone());
            self.targets.push(pinned);
        }
        self.applied.extend(outcome.applied.into_iter().map(Action::Host));
        if let Some(e) = outcome.failed {
            return self.host_failed(e);
        }
        let Some(observed) = outcome.observed else {
            return Finding::not(Reason::NotReady, "the host was not observed");
        };
        record_containers(&mut self.status, target.tier, &observed);
        record_pins(spec, &mut self.status.images, &running_digests(desired, &observed));
        tier_finding(target, &observed, desired)
    }
}

/// A network that drifted from the spec (kept, for a person to resolve), or
/// a NAT gateway still pending (the reconcile comes back soon); None when
/// the network is as it should be.
fn network_finding(drift: &[String], network: Option<&NetworkStatus>) -> Option<Finding> {
    if !drift.is_empty() {
        return Some(Finding::not(Reason::NetworkDrift, format!("{} (kept as found)", drift.join("; "))));
    }
    let net = network?;
    (net.nat_gateway_state.as_deref() == Some(NAT_PENDING)).then(|| {
        let id = net.nat_gateway_id.as_deref().unwrap_or("of the stack");
        Finding::not(
            Reason::Provisioning,
            format!("NAT gateway {id} is pending: the private subnet gets its route to it once it is available"),
        )
    })
}

fn infra_finding(keepers: &BTreeMap<Tier, ObservedInstance>, drift: &[InstanceDrift]) -> Finding {
    let not_running: Vec<String> = Tier::ALL
        .iter()
        .filter_map(|t| match keepers.get(t) {
            Some(i) if i.state == InstanceState::Running && i.private_ip.is_some() => None,
            Some(i) => Some(format!("{t} instance {} is {}", i.id, i.state.as_str())),
            None => Some(format!("{t} instance is being launched")),
        })
        .collect();
    if !not_running.is_empty() {
        return Finding::not(Reason::Provisioning, not_running.join(", "));
    }
    if !drift.is_empty() {
        let list: Vec<String> = drift.iter().map(|d| format!("{} {}: {}", d.tier, d.instance_id, d.what)).collect();
        return Finding::not(
            Reason::InstanceDrift,
            format!("{} (set instances.allowReplacement to replace)", list.join("; ")),
        );
    }
    Finding::ok(Reason::InstancesRunning, "network and three instances are up")
}

fn tier_finding(target: &HostTarget, observed: &ObservedHost, desired: &[DesiredContainer]) -> Finding {
    let host = target.describe();
    match &observed.docker {
        DockerState::Missing => {
            return Finding::not(Reason::DockerMissing, format!("Docker is not installed on the {host}"))
        }
        DockerState::Down(why) => {
            return Finding::not(Reason::DockerDown, format!("Docker on the {host} does not answer: {why}"))
        }
        DockerState::Running => {}
    }
    for want in desired {
        match observed.container(&want.name) {
            None => return Finding::not(Reason::NotReady, format!("container {} is missing on the {host}", want.name)),
            Some(c) if !c.is_running() => {
                let code = c.exit_code.map(|c| format!(" (exit code {c})")).unwrap_or_default();
                return Finding::not(Reason::ContainerExited, format!("container {} is {}{code}", c.name, c.state));
            }
            Some(c) if want.config_hash().is_some() && c.config_hash != want.config_hash() => {
                return Finding::not(Reason::NotReady, format!("container {} runs an outdated config", c.name));
            }
            Some(_) => {}
        }
        if let Some(Err(why)) = observed.probe(&want.name) {
            return Finding::not(Reason::NotReady, format!("{} is not ready: {why}", want.name));
        }
    }
    let names: Vec<&str> = desired.iter().map(|d| d.name.as_str()).collect();
    Finding::ok(Reason::ContainersRunning, format!("{} running and answering", names.join(" and ")))
}

/// Keeps status in step with the instances kept for each tier.
/// Records the data volume in status.
fn record_volume(status: &mut VotingStackStatus, id: &str, found: Option<&ObservedVolume>, attached_to: Option<&str>) {
    let entry = status.data_volume.get_or_insert_with(DataVolumeStatus::default);
    entry.volume_id = Some(id.to_string());
    if let Some(v) = found {
        entry.availability_zone = Some(v.zone.clone()).filter(|z| !z.is_empty());
        entry.size_gib = Some(v.size_gib).filter(|s| *s > 0);
    }
    entry.attached_to = attached_to.map(str::to_string);
}

fn record_instances(stack: &str, status: &mut VotingStackStatus, keepers: &BTreeMap<Tier, ObservedInstance>) {
    let tiers = status.tiers.get_or_insert_with(TiersStatus::default);
    for tier in Tier::ALL {
        let slot = tiers.slot(tier);
        let Some(inst) = keepers.get(&tier) else {
            if let Some(t) = slot.as_mut() {
                t.instance_state = Some("terminated".into());
                t.containers.clear();
            }
            continue;
        };
        let entry = slot.get_or_insert_with(TierStatus::default);
        if entry.instance_id.as_deref() != Some(inst.id.as_str()) {
            // A new instance: a new host key will be pinned on first contact.
            entry.host_key_fingerprint = None;
            entry.host_key_pinned_at = None;
            entry.containers.clear();
            entry.instance_id = Some(inst.id.clone());
            entry.instance_state = None;
        }
        let running = inst.state == InstanceState::Running;
        if running && entry.instance_state.as_deref() != Some(InstanceState::Running.as_str()) {
            mark_running(stack, tier, inst);
        }
        entry.instance_state = Some(inst.state.as_str().into());
        entry.private_ip = inst.private_ip.map(|ip| ip.to_string());
        entry.public_ip = inst.public_ip.map(|ip| ip.to_string());
    }
}

/// The timeline's mark of an instance seen running for the first time:
/// from EC2's launch time until now.
fn mark_running(stack: &str, tier: Tier, inst: &ObservedInstance) {
    if let Ok(launched) = chrono::DateTime::parse_from_rfc3339(&inst.launch_time) {
        timeline::span(stack, Stage::InstanceRunning, tier.as_str(), SystemTime::from(launched));
    }
}

/// How long after launch an instance that was never reached may present
/// another key than the one it was launched with and count as not up yet
/// rather than as a host-key mismatch: a replacement can get its
/// predecessor's private IP, and for a moment the old host may still answer
/// there. The other key is refused either way.
pub const YOUNG_INSTANCE: chrono::Duration = chrono::Duration::minutes(2);

/// A host-key mismatch of a young instance never reached before is most
/// likely the previous holder of its address: refused, but transient. Once
/// an instance has been reached (its key pinned), or after
/// [`YOUNG_INSTANCE`], a mismatch stays a mismatch.
fn not_yet_this_host(status: &VotingStackStatus, inst: &ObservedInstance, mismatch: Finding) -> Finding {
    let reached = status
        .tiers
        .as_ref()
        .and_then(|t| inst.tier.and_then(|tier| t.get(tier)))
        .is_some_and(|t| t.instance_id.as_deref() == Some(inst.id.as_str()) && t.host_key_fingerprint.is_some());
    if reached || !is_young(inst) {
        return mismatch;
    }
    Finding::not(
        Reason::SshUnreachable,
        format!(
            "instance {} is not reachable yet: {} (refused; the address may still belong to its predecessor)",
            inst.id, mismatch.message
        ),
    )
}

/// The host key an instance must present:
/// - the key pinned for this very instance, once it has been reached (a pin
///   is never replaced while the instance id stays);
/// - before the first connection, for an instance the operator launched (its
///   ClientToken is one of ours): the key the operator derived for that
///   token and gave it in its user data;
/// - otherwise (an adopted instance, first contact): none, and the first
///   key seen is pinned.
fn expected_host_key(status: &VotingStackStatus, tier: Tier, inst: &ObservedInstance, key: &SshKey) -> Option<String> {
    let pinned = status
        .tiers
        .as_ref()
        .and_then(|t| t.get(tier))
        .filter(|t| t.instance_id.as_deref() == Some(inst.id.as_str()))
        .and_then(|t| t.host_key_fingerprint.clone());
    if pinned.is_some() {
        return pinned;
    }
    let token = inst.client_token.as_deref().filter(|t| t.starts_with(CLIENT_TOKEN_PREFIX))?;
    match key.host_key_for(token) {
        Ok(host_key) => Some(host_key.fingerprint),
        Err(e) => {
            warn!(%tier, instance = %inst.id, "cannot derive the host key: {e}");
            None
        }
    }
}

fn is_young(inst: &ObservedInstance) -> bool {
    chrono::DateTime::parse_from_rfc3339(&inst.launch_time)
        .is_ok_and(|at| chrono::Utc::now().signed_duration_since(at) < YOUNG_INSTANCE)
}

/// Records the key a host presented. The connection already checked it
/// against the expected key; an instance's first key is pinned and never
/// replaced (a new instance id clears the pin, see `record_instances`).
fn pin_host_key(status: &mut VotingStackStatus, tier: Tier, fingerprint: &str) {
    if let Some(t) = status.tiers.get_or_insert_with(TiersStatus::default).slot(tier).as_mut() {
        if t.host_key_fingerprint.is_none() {
            t.host_key_fingerprint = Some(fingerprint.to_string());
            t.host_key_pinned_at = Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
    }
}

/// What converging one host did, recorded by [`Run::record_host`].
#[derive(Debug, Default)]
struct HostOutcome {
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

fn record_containers(status: &mut VotingStackStatus, tier: Tier, observed: &ObservedHost) {
    if let Some(t) = status.tiers.get_or_insert_with(TiersStatus::default).slot(tier).as_mut() {
        t.containers = observed
            .containers
            .iter()
            .map(|c| ContainerStatus {
                name: c.name.clone(),
                image: c.image.clone(),
                state: c.state.clone(),
                config_hash: c.config_hash.clone(),
                image_digest: c.image_digest.clone(),
            })
            .collect();
    }
}

/// The address the operator uses for a host, per `network.connectVia`.
fn connect_address(spec: &VotingStackSpec, inst: &ObservedInstance) -> Option<Ipv4Addr> {
    match spec.network.connect_via {
        ConnectVia::PrivateIp => inst.private_ip,
        ConnectVia::PublicIp => inst.public_ip,
    }
}

fn web_address(spec: &VotingStackSpec, frontend: &ObservedInstance) -> Option<Ipv4Addr> {
    if frontend.state != InstanceState::Running {
        return None;
    }
    connect_address(spec, frontend)
}

fn url(address: Ipv4Addr, port: u16) -> String {
    if port == 80 {
        format!("http://{address}/")
    } else {
        format!("http://{address}:{port}/")
    }
}

/// How to reach a tier's host, or None while it has no usable address.
pub fn host_target(
    stack_label: &str,
    spec: &VotingStackSpec,
    status: &VotingStackStatus,
    tier: Tier,
    keepers: &BTreeMap<Tier, ObservedInstance>,
    key: &SshKey,
) -> Option<HostTarget> {
    let inst = keepers.get(&tier).filter(|i| i.state == InstanceState::Running)?;
    let expected = |tier: Tier, inst: &ObservedInstance| match spec.ssh.host_key_policy {
        HostKeyPolicy::Pinned => spec.ssh.pinned_host_keys.as_ref().and_then(|m| m.get(tier.as_str()).cloned()),
        HostKeyPolicy::PinOnFirstUse => expected_host_key(status, tier, inst, key),
    };
    let make = |tier: Tier, inst: &ObservedInstance, address: Ipv4Addr, jump: Option<Box<HostTarget>>| HostTarget {
        stack: stack_label.to_string(),
        tier,
        instance_id: inst.id.clone(),
        address,
        port: spec.ssh.port,
        user: spec.ssh.user.clone(),
        expected_host_key: expected(tier, inst),
        jump,
        connect_timeout_secs: spec.ssh.connect_timeout_seconds,
        command_timeout_secs: spec.ssh.command_timeout_seconds,
    };
    if !tier.is_public() && spec.jumps_through_frontend() {
        let front = keepers.get(&Tier::Frontend).filter(|i| i.state == InstanceState::Running)?;
        let jump = make(Tier::Frontend, front, connect_address(spec, front)?, None);
        return Some(make(tier, inst, inst.private_ip?, Some(Box::new(jump))));
    }
    Some(make(tier, inst, connect_address(spec, inst)?, None))
}
