//! The EC2 phase of a reconcile: observe the network and instances, plan
//! their steps, carry them out, and observe again. Also teardown, with a
//! final snapshot of the data volume when the deletion policy asks for one.

use std::time::{Duration, SystemTime};

use tracing::{debug, info, warn};

use crate::api::{NetworkStatus, ProvidedNetwork, Tier, VotingStack, VotingStackSpec, VotingStackStatus};
use crate::cloud::{Cloud, CloudError, DestroyReport, NetworkLookup, StackIdentity};
use crate::host::SshKey;
use crate::model::snapshot::FINAL_SLOT;
use crate::model::{
    DesiredKeyPair, InfraAction, InstanceLaunch, InstanceState, NetworkObservation, ObservedInfra, Slot, SnapshotState,
    TeardownStep, UserData,
};
use crate::timeline::{self, Stage};

use super::backups::wait_completed;
use super::conditions::infrastructure::infrastructure;
use super::conditions::tiers::launch_failed;
use super::failure::Failure;
use super::network::{network_drift, teardown_steps};
use super::plan::{network_lookup, plan_infra, InfraPlan};
use super::reconcile::{Engine, Run};
use super::status::{mark_running, now, record_burnt_token, record_launch, record_launch_failures};
use super::worker_hold::{infra_moves_database, infra_step_moves_database};

impl Engine {
    /// Observes EC2 and carries out the EC2 half of the plan. Returns the
    /// plan of the instances as they are afterwards (which instance serves
    /// each tier), or None when EC2 failed.
    pub(super) async fn converge_infra(
        &self,
        ident: &StackIdentity,
        stack: &VotingStack,
        key: &SshKey,
        run: &mut Run,
    ) -> Option<InfraPlan> {
        let spec = &stack.spec;
        let calls_before = self.cloud.api_calls();
        let lookup = network_lookup(&run.status, stack.metadata.generation);
        let provided = spec.network.provided();
        let mut infra = match self.observe_infra(ident, &run.status, provided.as_ref(), lookup).await {
            Ok(infra) => infra,
            Err(e) => return run.cloud_failed(e),
        };
        let drift = network_drift(&infra.network, spec, run.status.network.as_ref());
        if let Some(net) = infra.network.complete_ids(spec.network.egress) {
            run.status.network = Some(net);
        }
        if let NetworkObservation::Inventory(found) = &infra.network {
            if let Some(vpc) = found.vpc.as_ref().filter(|v| !found.provided && v.cidr != spec.network.vpc_cidr) {
                // A VPC is never replaced: its instances and groups live in it.
                warn!(stack = %ident.tag_value(), "adopted VPC {} has CIDR {}, not {}", vpc.id, vpc.cidr, spec.network.vpc_cidr);
            }
        }
        for d in &drift {
            warn!(stack = %ident.tag_value(), "network drift: {d}");
        }
        if let Err(e) = self.resolve_ami(ident, spec, &mut run.status, &infra).await {
            return run.cloud_failed(e);
        }
        let key_pair = desired_key_pair(ident, Some(key));
        let generation = stack.metadata.generation;
        let before = plan_infra(spec, &run.status, &infra, &key_pair, generation);
        note_launch_failures(ident, &before, generation, run);
        let mut actions = before.actions.clone();
        if let Some(why) = infra_moves_database(&actions).filter(|_| !spec.paused) {
            // The worker stops between votes before postgres goes away.
            if let Err(e) = self.hold_worker_before(ident, spec, key, &before, &why, run).await {
                warn!(stack = %ident.tag_value(), "{why}: the move waits until the worker is stopped between votes: {e}");
                run.error = Some(Failure::Ssh);
                actions.retain(|a| !moves_database(a));
            }
        }
        if !spec.paused && !actions.is_empty() {
            // An image the hosts cannot run on is refused before anything
            // of the plan (a NAT gateway, an instance) costs money.
            if let Err(e) = self.refuse_unusable_images(spec, &actions).await {
                return run.cloud_failed(e);
            }
            // The network steps start from the ids of what was found.
            let mut ids = match &infra.network {
                NetworkObservation::Trusted(ids, _) => ids.clone(),
                NetworkObservation::Inventory(found) => found.ids(),
            };
            let mut network_began = None;
            for action in &actions {
                if run.stop_at("before an EC2 step of the plan") {
                    return None;
                }
                info!(stack = %ident.tag_value(), "{action}");
                if matches!(action, InfraAction::Network(_)) {
                    network_began.get_or_insert_with(SystemTime::now);
                } else if let Some(began) = network_began.take() {
                    timeline::span(&ident.tag_value(), Stage::Network, "", began);
                }
                match self.act_infra(ident, spec, key, action, &mut ids, run).await {
                    Ok(done) => run.applied.push(done.into()),
                    Err(e) => return run.cloud_failed(e),
                }
            }
            if let Some(began) = network_began {
                timeline::span(&ident.tag_value(), Stage::Network, "", began);
            }
            infra = match self.observe_infra(ident, &run.status, provided.as_ref(), NetworkLookup::TrustStatus).await {
                Ok(infra) => infra,
                Err(e) => return run.cloud_failed(e),
            };
        }
        debug!(stack = %ident.tag_value(), calls = self.cloud.api_calls() - calls_before, "EC2 calls this reconcile");
        let after = plan_infra(spec, &run.status, &infra, &key_pair, generation);
        note_launch_failures(ident, &after, generation, run);
        let finding = infrastructure(&drift, run.status.network.as_ref(), &after);
        run.findings.infrastructure = Some(finding);
        for failure in after.launch_failures.values() {
            run.findings.tiers.insert(failure.tier, launch_failed(failure));
        }
        Some(after)
    }

    /// Observes EC2, and looks each recorded instance missing from the tag
    /// look-up up by id: it is gone only once EC2 says so (NotFound or
    /// terminated), not while a tag look-up lags a fresh launch. A tier
    /// whose recorded instance was already found gone is not asked again.
    pub(super) async fn observe_infra(
        &self,
        ident: &StackIdentity,
        status: &VotingStackStatus,
        provided: Option<&ProvidedNetwork>,
        lookup: NetworkLookup,
    ) -> Result<ObservedInfra, CloudError> {
        let mut infra = self.cloud.observe(ident, status.network.as_ref(), provided, lookup).await?;
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

    /// Carries out one EC2 step of the plan and records what it made.
    /// Returns the step as it was done: a launch names the instance it
    /// launched (and never carries the user data, which holds key material).
    pub(super) async fn act_infra(
        &self,
        ident: &StackIdentity,
        spec: &VotingStackSpec,
        key: &SshKey,
        action: &InfraAction,
        ids: &mut NetworkStatus,
        run: &mut Run,
    ) -> Result<InfraAction, CloudError> {
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
                let inst = match self.cloud.launch_instance(ident, &network, &launch).await {
                    Ok(inst) => inst,
                    Err(e @ CloudError::TokenReused { .. }) => {
                        record_burnt_token(&mut run.status, launch.tier, launch.replacement);
                        return Err(e);
                    }
                    Err(e) => return Err(e),
                };
                if inst.state == InstanceState::Running {
                    mark_running(&ident.tag_value(), launch.tier, &inst);
                }
                record_launch(&mut run.status, launch.tier, &inst, launch.replacement);
                let launched = Some(inst.id.clone());
                return Ok(InfraAction::LaunchInstance(InstanceLaunch { launched, user_data: None, ..launch }));
            }
            InfraAction::StartInstance { instance_id, .. } => self.cloud.start_instance(instance_id).await?,
            InfraAction::TerminateInstance { instance_id, .. } => {
                self.cloud.terminate_instances(std::slice::from_ref(instance_id)).await?
            }
            InfraAction::DataVolume(step) => {
                self.act_volume(ident, step, spec.instances.kms_key_id.as_deref(), run).await?;
            }
            // Reported by the backups phase, never planned here.
            InfraAction::Snapshot(_) => {}
        }
        Ok(action.clone())
    }
}

/// Records in status the launches a plan found dead, and logs each the
/// first time it is seen.
fn note_launch_failures(ident: &StackIdentity, plan: &InfraPlan, generation: Option<i64>, run: &mut Run) {
    for f in record_launch_failures(&mut run.status, plan.launch_failures.values(), generation, &now()) {
        warn!(stack = %ident.tag_value(), tier = %f.tier, instance = %f.instance_id, code = %f.code, "{}", launch_failed(f).message);
    }
}

/// Whether an EC2 step is part of a planned move of postgres: the
/// database instance's replacement, its termination and its successor's
/// launch both.
fn moves_database(action: &InfraAction) -> bool {
    infra_step_moves_database(action).is_some()
        || matches!(action, InfraAction::LaunchInstance(InstanceLaunch { tier: Tier::Database, .. }))
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
    match tear_down_with(cloud, stack, known, VolumeTeardown::Delete).await? {
        TornDown::Done(report) => Ok(report),
        // Only a teardown that snapshots first waits for one.
        TornDown::SnapshotPending { snapshot_id } => Err(CloudError::SnapshotWait { id: snapshot_id, seconds: 0 }),
    }
}

/// What a teardown does with the data volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeTeardown {
    /// Deletes it with the rest.
    Delete,
    /// Once the instances are terminated (postgres wrote its last),
    /// snapshots it and waits up to `wait` for the snapshot to complete
    /// before deleting it.
    SnapshotFirst { wait: Duration, poll: Duration },
}

/// How far a teardown got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TornDown {
    Done(DestroyReport),
    /// The instances are gone and the final snapshot is being copied: the
    /// volume and network stay until it is completed (the next attempt
    /// finds the snapshot by its tag and goes on).
    SnapshotPending {
        snapshot_id: String,
    },
}

/// [`tear_down`], with a final snapshot of the data volume when asked
/// for. The snapshot is found again by its slot tag ([`FINAL_SLOT`]), so a
/// teardown repeated after a restart or a pending answer takes no second one.
pub async fn tear_down_with(
    cloud: &dyn Cloud,
    stack: &StackIdentity,
    known: Option<&NetworkStatus>,
    volume: VolumeTeardown,
) -> Result<TornDown, CloudError> {
    let found = cloud.teardown_inventory(stack, known).await?;
    let steps = teardown_steps(&found);
    for step in &steps {
        info!(stack = %stack.tag_value(), "{step}");
    }
    let VolumeTeardown::SnapshotFirst { wait, poll } = volume else {
        return Ok(TornDown::Done(cloud.destroy(stack, &steps).await?));
    };
    if found.volumes.is_empty() {
        return Ok(TornDown::Done(cloud.destroy(stack, &steps).await?));
    }
    let split = steps.iter().position(|s| !matches!(s, TeardownStep::TerminateInstances { .. })).unwrap_or(steps.len());
    let mut report = if split > 0 { cloud.destroy(stack, &steps[..split]).await? } else { DestroyReport::default() };
    let existing = cloud.snapshots(stack).await?;
    for volume_id in &found.volumes {
        let earlier = existing
            .iter()
            .filter(|s| {
                s.volume_id == *volume_id && s.slot.as_deref() == Some(FINAL_SLOT) && s.state != SnapshotState::Error
            })
            .max_by(|a, b| a.start_time.cmp(&b.start_time));
        let snapshot = match earlier {
            Some(s) => s.clone(),
            None => {
                let s = cloud.create_snapshot(stack, volume_id, &Slot::Final).await?;
                info!(stack = %stack.tag_value(), snapshot = %s.id, volume = %volume_id, "took the final snapshot of the data volume");
                s
            }
        };
        match wait_completed(cloud, &snapshot.id, wait, poll).await {
            Ok(s) => report.snapshots.push(s.id),
            Err(CloudError::SnapshotWait { .. }) => {
                info!(stack = %stack.tag_value(), snapshot = %snapshot.id, "the final snapshot is still being copied; the volume stays until it is completed");
                return Ok(TornDown::SnapshotPending { snapshot_id: snapshot.id });
            }
            Err(e) => return Err(e),
        }
    }
    let rest = cloud.destroy(stack, &steps[split..]).await?;
    report.deleted.extend(rest.deleted);
    Ok(TornDown::Done(report))
}

/// Brings the network alone in line with the spec: inventories it, plans
/// its steps and carries them out. Returns the network's ids. For tests
/// that build a network without instances.
#[cfg(any(test, feature = "test-support"))]
pub async fn converge_network(
    cloud: &dyn Cloud,
    stack: &StackIdentity,
    spec: &crate::api::VotingStackSpec,
    key: &SshKey,
    known: Option<&NetworkStatus>,
) -> Result<NetworkStatus, CloudError> {
    let provided = spec.network.provided();
    let found = match cloud.observe(stack, known, provided.as_ref(), NetworkLookup::Inventory).await?.network {
        NetworkObservation::Inventory(found) => found,
        NetworkObservation::Trusted(ids, _) => return Ok(ids),
    };
    let mut ids = found.ids();
    for step in super::network::network_steps(&found, spec, &desired_key_pair(stack, Some(key))) {
        info!(stack = %stack.tag_value(), "{step}");
        cloud.apply_network_step(stack, &step, &mut ids).await?;
    }
    Ok(ids)
}
