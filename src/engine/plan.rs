//! The plan step: desired + observed → ordered actions. Pure: no I/O, no clock.
//!
//! Infrastructure comes first (the network steps, then one instance per
//! tier, then the database's data volume), then the hosts in tier order
//! database → backend → frontend.

use std::collections::BTreeMap;

use crate::api::{Tier, VotingStackSpec, VotingStackStatus};
use crate::cloud::{replacement_in_token, NetworkLookup};
use crate::model::desired::{PROXY_CONTAINER, WORKER_CONTAINER};
use crate::model::network::SubnetRole;
use crate::model::{
    Action, CreateReason, DesiredContainer, DesiredKeyPair, DockerState, HostAction, InfraAction, InstanceLaunch,
    InstanceState, NetworkObservation, ObservedHost, ObservedInfra, ObservedInstance, Peers, TerminateReason,
};

use super::ami::tier_ami;
use super::desired::{may_format, on_data_volume, pinned_containers};
use super::network::{network_steps, rule_steps};
use super::volume::volume_action;
use super::worker_hold::{
    hold_before_moves, hold_worker, host_moves_database, infra_step_moves_database, worker_hold, Database,
};

/// AMI or instance type that no longer matches the spec, left in place
/// because `instances.allowReplacement` is false.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceDrift {
    pub tier: Tier,
    pub instance_id: String,
    pub what: String,
}

/// A tier whose instance EC2 terminated at launch, and which is not
/// launched again for this generation of the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchFailure {
    pub tier: Tier,
    pub instance_id: String,
    /// EC2's StateReason code and message.
    pub code: String,
    pub message: String,
}

/// The EC2 half of a plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InfraPlan {
    pub actions: Vec<InfraAction>,
    pub drift: Vec<InstanceDrift>,
    /// The instance kept for each tier (none while one is to be launched).
    pub keepers: BTreeMap<Tier, ObservedInstance>,
    /// Tiers not launched because their last launch died (no keeper either).
    pub launch_failures: BTreeMap<Tier, LaunchFailure>,
}

impl InfraPlan {
    /// Private IPs of the kept backend and database instances.
    pub fn peers(&self) -> Peers {
        let ip = |t: Tier| self.keepers.get(&t).and_then(|i| i.private_ip);
        Peers { backend: ip(Tier::Backend), database: ip(Tier::Database) }
    }
}

/// What the engine knows of a host when planning its containers.
#[derive(Clone, Copy, Debug)]
pub enum HostView<'a> {
    /// Observed over SSH.
    Observed(&'a ObservedHost),
    /// No instance yet: everything will be created once it runs.
    NotCreated,
    /// Exists but could not be observed (unreachable, wrong host key): no actions.
    Unavailable,
}

/// Replacement number of the next instance launched for a tier: it moves on
/// when the tier's recorded instance has gone, so the ClientToken differs,
/// and it is always past the highest number the tier's own instances carry
/// in their ClientTokens (terminated ones included while EC2 lists them):
/// a token is never sent twice, even when status was lost.
pub fn next_replacement(status: &VotingStackStatus, tier: Tier, infra: &ObservedInfra) -> u32 {
    let recorded = status.tiers.as_ref().and_then(|t| t.get(tier));
    let count = recorded.map_or(0, |t| t.replacements);
    let gone = recorded
        .and_then(|t| t.instance_id.as_deref())
        .is_some_and(|id| !infra.instances.iter().any(|i| i.id == id && i.state.is_alive()));
    let from_status = if gone { count + 1 } else { count };
    let from_tokens = infra
        .instances
        .iter()
        .filter(|i| i.tier == Some(tier))
        .filter_map(|i| i.client_token.as_deref().and_then(replacement_in_token))
        .max()
        .map_or(0, |n| n + 1);
    from_status.max(from_tokens)
}

/// The tier's recorded instance (the one the engine launched last), when
/// EC2 ended it at launch: shutting down or terminated with a launch
/// failure's StateReason (a `Client.*` code other than a shutdown someone
/// asked for, so never an instance the engine terminated itself, which
/// says `Client.UserInitiatedShutdown`), and never seen running nor reached
/// over SSH (an instance that ran for a while did not die at launch).
pub fn died_at_launch<'a>(
    status: &VotingStackStatus,
    tier: Tier,
    infra: &'a ObservedInfra,
) -> Option<&'a ObservedInstance> {
    let recorded = status.tiers.as_ref()?.get(tier)?;
    let id = recorded.instance_id.as_deref()?;
    let ran = recorded.instance_state.as_deref() == Some(InstanceState::Running.as_str())
        || recorded.host_key_fingerprint.is_some();
    if ran {
        return None;
    }
    infra
        .instances
        .iter()
        .find(|i| i.id == id && !i.state.is_alive() && i.state_reason.as_ref().is_some_and(|r| r.is_launch_failure()))
}

/// Whether a tier without a live instance is held back from launching: its
/// last launch died ([`died_at_launch`]) and that failure is new (it is
/// recorded now, for this generation) or was recorded for this
/// `generation`. A failure recorded for an older generation lets one launch
/// go: the spec changed since, perhaps to fix it. So each generation gets
/// one launch per tier that dies at launch, never a loop of them.
pub fn launch_held(
    status: &VotingStackStatus,
    tier: Tier,
    infra: &ObservedInfra,
    generation: Option<i64>,
) -> Option<LaunchFailure> {
    let died = died_at_launch(status, tier, infra)?;
    let reason = died.state_reason.as_ref()?;
    let recorded = status.tiers.as_ref().and_then(|t| t.get(tier)).and_then(|t| t.last_launch_failure.as_ref());
    if recorded.is_some_and(|r| r.instance_id == died.id && r.generation != generation) {
        return None;
    }
    Some(LaunchFailure {
        tier,
        instance_id: died.id.clone(),
        code: reason.code.clone(),
        message: reason.message.clone(),
    })
}

/// What RunInstances gets for a tier's n-th instance.
pub fn instance_launch(
    spec: &VotingStackSpec,
    status: &VotingStackStatus,
    tier: Tier,
    replacement: u32,
) -> InstanceLaunch {
    InstanceLaunch {
        tier,
        ami: tier_ami(spec, status, tier),
        instance_type: spec.instances.instance_type_for(tier).to_string(),
        replacement,
        public_ip: tier.is_public(),
        subnet: SubnetRole::of(tier),
        kms_key_id: spec.instances.kms_key_id.clone(),
        user_data: None,
        launched: None,
    }
}

/// Plans the EC2 side: the network steps when the network was inventoried
/// (a trusted network needs only its security group rules kept), then the
/// instances. `generation` is the stack's `metadata.generation` (None for a
/// manifest file): a tier whose launch died is launched again only once it
/// moves on ([`launch_held`]).
pub fn plan_infra(
    spec: &VotingStackSpec,
    status: &VotingStackStatus,
    infra: &ObservedInfra,
    key: &DesiredKeyPair,
    generation: Option<i64>,
) -> InfraPlan {
    let mut plan = InfraPlan::default();
    let steps = match &infra.network {
        NetworkObservation::Inventory(found) => network_steps(found, spec, key),
        NetworkObservation::Trusted(_, groups) => rule_steps(groups, spec),
    };
    plan.actions.extend(steps.into_iter().map(InfraAction::Network));
    for inst in infra.instances.iter().filter(|i| i.tier.is_none() && i.state.is_alive()) {
        plan.actions.push(InfraAction::TerminateInstance {
            tier: None,
            instance_id: inst.id.clone(),
            reason: TerminateReason::UnknownTier,
        });
    }
    for tier in Tier::ALL {
        let live = infra.live(tier);
        let recorded_id = status.tiers.as_ref().and_then(|t| t.get(tier)).and_then(|t| t.instance_id.clone());
        let keeper = live
            .iter()
            .find(|i| Some(&i.id) == recorded_id.as_ref())
            .or_else(|| live.iter().find(|i| i.state == InstanceState::Running))
            .or_else(|| live.first())
            .copied();
        for dup in live.iter().filter(|i| Some(&i.id) != keeper.map(|k| &k.id)) {
            plan.actions.push(InfraAction::TerminateInstance {
                tier: Some(tier),
                instance_id: dup.id.clone(),
                reason: TerminateReason::Duplicate,
            });
        }
        let ami = tier_ami(spec, status, tier);
        let instance_type = spec.instances.instance_type_for(tier).to_string();
        let mut replacement = next_replacement(status, tier, infra);
        let launch = |replacement| InfraAction::LaunchInstance(instance_launch(spec, status, tier, replacement));
        let Some(keeper) = keeper else {
            match launch_held(status, tier, infra, generation) {
                Some(failure) => {
                    plan.launch_failures.insert(tier, failure);
                }
                None => plan.actions.push(launch(replacement)),
            }
            continue;
        };
        let mut drift = Vec::new();
        if let Some(ami) = ami.as_ref().filter(|ami| **ami != keeper.ami) {
            drift.push(format!("AMI {} → {ami}", keeper.ami));
        }
        if keeper.instance_type != instance_type {
            drift.push(format!("type {} → {instance_type}", keeper.instance_type));
        }
        if !drift.is_empty() {
            let what = drift.join(", ");
            if spec.instances.allow_replacement {
                plan.actions.push(InfraAction::TerminateInstance {
                    tier: Some(tier),
                    instance_id: keeper.id.clone(),
                    reason: TerminateReason::Replaced(what),
                });
                if recorded_id.as_deref() == Some(keeper.id.as_str()) {
                    let count = status.tiers.as_ref().and_then(|t| t.get(tier)).map_or(0, |t| t.replacements);
                    replacement = replacement.max(count + 1);
                }
                plan.actions.push(launch(replacement));
                continue;
            }
            plan.drift.push(InstanceDrift { tier, instance_id: keeper.id.clone(), what });
        }
        if keeper.state == InstanceState::Stopped {
            plan.actions.push(InfraAction::StartInstance { tier, instance_id: keeper.id.clone() });
        }
        plan.keepers.insert(tier, keeper.clone());
    }
    plan
}

/// How much of the network to look up: everything after a spec change
/// (generation moved past the one status describes: ingress CIDRs, ports
/// and the key pair may have changed), else only what is not trusted.
pub fn network_lookup(status: &VotingStackStatus, generation: Option<i64>) -> NetworkLookup {
    let changed = status.observed_generation.is_some() && status.observed_generation != generation;
    if changed {
        NetworkLookup::Inventory
    } else {
        NetworkLookup::TrustStatus
    }
}

/// Plans one host's containers.
pub fn plan_host(tier: Tier, desired: &[DesiredContainer], view: HostView<'_>) -> Vec<HostAction> {
    let mut actions = Vec::new();
    let observed = match view {
        HostView::Unavailable => return actions,
        HostView::NotCreated => None,
        HostView::Observed(host) => match &host.docker {
            DockerState::Running => Some(host),
            DockerState::Missing => {
                actions.push(HostAction::InstallDocker { tier });
                None
            }
            DockerState::Down(_) => {
                // Containers come back with the daemon (restart unless-stopped);
                // the next observation plans the rest.
                actions.push(HostAction::StartDocker { tier });
                return actions;
            }
        },
    };
    // Rolled containers first: a stopped proxy about to forward to a new
    // one is created afresh, so it starts with the new targets.
    let mut rolling = false;
    for want in desired.iter().filter(|d| d.rolled) {
        let before = actions.len();
        plan_rolled(tier, want, observed, &mut actions);
        rolling |= actions.len() > before;
    }
    // The proxy's first targets are the rolled containers' names: on a
    // running host it waits until they are known (the peers' IPs are part
    // of their hashes). A host still to come shows it in the plan; its
    // containers are planned again from what is observed once it is up.
    let targets_known = observed.is_none() || desired.iter().filter(|d| d.rolled).all(|d| d.config_hash().is_some());
    for want in desired.iter().filter(|d| !d.rolled && (targets_known || d.role != PROXY_CONTAINER)) {
        let before = actions.len();
        plan_container(tier, want, observed, &mut actions);
        if rolling && want.role == PROXY_CONTAINER {
            let stopped = observed.and_then(|h| h.container(&want.name)).filter(|c| !c.is_running());
            if let (Some(stopped), Some(hash)) = (stopped, want.config_hash()) {
                if stopped.config_hash.as_deref() == Some(hash.as_str()) {
                    actions.truncate(before);
                    actions.push(HostAction::CreateContainer {
                        container: want.clone(),
                        reason: CreateReason::ConfigChanged(stopped.config_hash.clone()),
                    });
                }
            }
        }
        // A container on the data volume needs it mounted before it starts.
        if let Some(volume) = want.data_volume.as_ref().filter(|_| actions.len() > before) {
            actions.insert(before, HostAction::MountVolume { tier, volume: volume.clone() });
        }
    }
    if let Some(host) = observed {
        let ours = |name: &str| desired.iter().any(|d| d.name == name || (d.rolled && d.plays_role(name)));
        for orphan in host.containers.iter().filter(|c| !ours(&c.name)) {
            actions.push(HostAction::RemoveContainer { tier, name: orphan.name.clone() });
        }
    }
    actions
}

/// A container rolled out beside its predecessors: created under its
/// hash-named name unless it runs, then switched in and the others of its
/// role removed. On a running host, nothing while its hash is unknown (a
/// peer's IP).
fn plan_rolled(tier: Tier, want: &DesiredContainer, observed: Option<&ObservedHost>, actions: &mut Vec<HostAction>) {
    if want.config_hash().is_none() && observed.is_some() {
        return;
    }
    let replaces: Vec<String> = observed
        .map(|h| {
            h.containers.iter().filter(|c| c.name != want.name && want.plays_role(&c.name)).map(|c| c.name.clone())
        })
        .into_iter()
        .flatten()
        .collect();
    match observed.and_then(|h| h.container(&want.name)) {
        Some(have) if replaces.is_empty() => {
            if !have.is_running() {
                actions.push(HostAction::StartContainer { tier, name: have.name.clone(), state: have.state.clone() });
            }
        }
        _ => actions.push(HostAction::RollContainer { container: want.clone(), replaces }),
    }
}

/// What one desired container needs on a host with a running engine (or on
/// one about to get it, `observed` None).
fn plan_container(tier: Tier, want: &DesiredContainer, observed: Option<&ObservedHost>, actions: &mut Vec<HostAction>) {
    {
        let have = observed.and_then(|h| h.container(&want.name));
        if let Some(why) = &want.held {
            // Held: stopped between votes if it runs; neither started nor
            // created (nor re-created) until it is released.
            if have.is_some_and(|h| h.is_running()) {
                actions.push(HostAction::HoldWorker { tier, name: want.name.clone(), why: why.clone() });
            }
            return;
        }
        match have {
            None => {
                actions.push(HostAction::CreateContainer { container: want.clone(), reason: CreateReason::Missing })
            }
            Some(have) => {
                let Some(hash) = want.config_hash() else {
                    // A peer's IP is unknown: leave the container until it is.
                    return;
                };
                if have.config_hash.as_deref() != Some(hash.as_str()) {
                    actions.push(HostAction::CreateContainer {
                        container: want.clone(),
                        reason: CreateReason::ConfigChanged(have.config_hash.clone()),
                    });
                } else if !have.is_running() {
                    actions.push(HostAction::StartContainer {
                        tier,
                        name: have.name.clone(),
                        state: have.state.clone(),
                    });
                }
            }
        }
    }
}

/// A whole plan: EC2 first, then each host in tier order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub drift: Vec<InstanceDrift>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// Plans everything from one observation: the EC2 steps, the data volume's
/// step (when its volumes were looked up), then each host. `hosts` holds
/// the hosts that were observed; a tier missing from it is treated as not
/// created when its instance is to be launched, and as unavailable
/// otherwise.
pub fn plan(
    spec: &VotingStackSpec,
    status: &VotingStackStatus,
    infra: &ObservedInfra,
    hosts: &BTreeMap<Tier, ObservedHost>,
    key: &DesiredKeyPair,
    generation: Option<i64>,
) -> Plan {
    let infra_plan = plan_infra(spec, status, infra, key, generation);
    let peers = infra_plan.peers();
    let mut actions: Vec<Action> = infra_plan.actions.iter().cloned().map(Action::Infra).collect();
    if let Some(found) = &infra.data_volumes {
        let recorded = status.data_volume.as_ref().and_then(|v| v.volume_id.as_deref());
        let zone = status.network.as_ref().and_then(|n| n.availability_zone.as_deref());
        let db = infra_plan.keepers.get(&Tier::Database);
        let size = spec.database.volume_size_gib;
        if let Some(step) = volume_action(db, found, infra, recorded, zone, size) {
            let step = super::volume::restoring(step, spec.database.restore_from_snapshot.as_deref());
            actions.push(Action::Infra(InfraAction::DataVolume(step)));
        }
    }
    let view_of = |tier: Tier| match (hosts.get(&tier), infra_plan.keepers.get(&tier)) {
        (Some(host), Some(_)) => HostView::Observed(host),
        // A tier held back after its launch died gets nothing planned.
        (_, None) if infra_plan.launch_failures.contains_key(&tier) => HostView::Unavailable,
        (_, None) => HostView::NotCreated,
        (None, Some(_)) => HostView::Unavailable,
    };
    let desired_of = |tier: Tier| {
        let mut desired = pinned_containers(spec, tier, peers, &status.images);
        if let Some(id) = status.data_volume.as_ref().and_then(|v| v.volume_id.as_deref()) {
            on_data_volume(&mut desired, id, may_format(spec, status));
        }
        desired
    };
    // The database host first: whether postgres answers, or is about to
    // move, decides whether the backend's worker is held.
    let db_desired = desired_of(Tier::Database);
    let db_actions = plan_host(Tier::Database, &db_desired, view_of(Tier::Database));
    let moving = actions
        .iter()
        .find_map(|a| match a {
            Action::Infra(step) => infra_step_moves_database(step),
            Action::Host(_) => None,
        })
        .or_else(|| host_moves_database(&db_actions));
    let database = match view_of(Tier::Database) {
        HostView::Observed(host) => Database::Observed(host, &db_desired),
        HostView::NotCreated => Database::NotServing("the database instance is not up yet"),
        HostView::Unavailable => Database::NotServing("the database host could not be observed"),
    };
    let held = worker_hold(database, moving);
    // The engine releases the worker in the same pass once postgres,
    // brought up by this plan, answers.
    let db_comes_up = !db_actions.is_empty() || matches!(view_of(Tier::Database), HostView::NotCreated);
    actions.extend(db_actions.into_iter().map(Action::Host));
    for tier in [Tier::Backend, Tier::Frontend] {
        let mut desired = desired_of(tier);
        hold_worker(&mut desired, held.as_deref());
        actions.extend(plan_host(tier, &desired, view_of(tier)).into_iter().map(Action::Host));
    }
    if held.is_some() && db_comes_up {
        actions
            .extend(released_worker(&desired_of(Tier::Backend), view_of(Tier::Backend)).into_iter().map(Action::Host));
    }
    hold_before_moves(&mut actions);
    Plan { actions, drift: infra_plan.drift }
}

/// The worker's actions once it is released: on the backend as it is after
/// the hold (its worker stopped).
fn released_worker(desired: &[DesiredContainer], backend: HostView<'_>) -> Vec<HostAction> {
    let after_hold = match backend {
        HostView::Observed(host) => {
            let mut host = host.clone();
            for c in host.containers.iter_mut().filter(|c| c.name == WORKER_CONTAINER && c.is_running()) {
                c.state = "exited".into();
            }
            Some(host)
        }
        HostView::NotCreated => None,
        HostView::Unavailable => return Vec::new(),
    };
    let view = after_hold.as_ref().map_or(HostView::NotCreated, HostView::Observed);
    let worker: Vec<DesiredContainer> = desired.iter().filter(|c| c.name == WORKER_CONTAINER).cloned().collect();
    plan_host(Tier::Backend, &worker, view)
        .into_iter()
        .filter(|a| matches!(a, HostAction::CreateContainer { .. } | HostAction::StartContainer { .. }))
        .collect()
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
