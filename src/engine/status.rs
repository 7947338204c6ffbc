//! What a reconcile records in status besides the conditions' decisions:
//! instances, containers, the data volume, and the conditions merged in.
//! Host-key pins are recorded in [`host_keys`](super::host_keys).

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::api::conditions::set_condition;
use crate::api::{
    ConditionType, ConditionUpdate, ContainerStatus, DataVolumeStatus, DeletionPolicy, LaunchFailureStatus, Tier,
    TierStatus, TiersStatus, VotingStack, VotingStackStatus,
};
use crate::model::{InstanceState, ObservedHost, ObservedInstance, ObservedVolume};
use crate::timeline::{self, Stage};

use super::conditions::Findings;
use super::plan::LaunchFailure;

/// The time as status writes it.
pub(super) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Merges the conditions decided from `findings` into status. Returns the
/// ones whose status flipped (worth an Event).
pub(super) fn record_conditions(
    status: &mut VotingStackStatus,
    findings: &Findings,
    generation: Option<i64>,
    now: &str,
) -> Vec<ConditionUpdate> {
    let mut flipped = Vec::new();
    for update in findings.conditions() {
        if set_condition(&mut status.conditions, &update, generation, now) {
            flipped.push(update);
        }
    }
    flipped
}

/// Records the data volume in status.
pub(super) fn record_volume(
    status: &mut VotingStackStatus,
    id: &str,
    found: Option<&ObservedVolume>,
    attached_to: Option<&str>,
) {
    let entry = status.data_volume.get_or_insert_with(DataVolumeStatus::default);
    entry.volume_id = Some(id.to_string());
    if let Some(v) = found {
        entry.availability_zone = Some(v.zone.clone()).filter(|z| !z.is_empty());
        entry.size_gib = Some(v.size_gib).filter(|s| *s > 0);
        if !v.create_time.is_empty() {
            entry.create_time = Some(v.create_time.clone());
        }
        // The tag on the volume outlives status (a state file lost, a
        // stack adopting its volume): a volume tagged formatted stays so.
        if entry.formatted.is_none() {
            entry.formatted = v.formatted.clone();
        }
    }
    entry.attached_to = attached_to.map(str::to_string);
}

/// Keeps status in step with the instances kept for each tier.
pub(super) fn record_instances(
    stack: &str,
    status: &mut VotingStackStatus,
    keepers: &BTreeMap<Tier, ObservedInstance>,
) {
    let tiers = status.tiers.get_or_insert_with(TiersStatus::default);
    for tier in Tier::ALL {
        let slot = tiers.slot(tier);
        let Some(inst) = keepers.get(&tier) else {
            if let Some(t) = slot.as_mut() {
                t.instance_state = Some(InstanceState::Terminated.as_str().into());
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

/// Records a freshly launched instance for its tier (what earlier launches
/// that died is kept).
pub(super) fn record_launch(status: &mut VotingStackStatus, tier: Tier, inst: &ObservedInstance, replacement: u32) {
    let slot = status.tiers.get_or_insert_with(TiersStatus::default).slot(tier);
    let before = slot.take().unwrap_or_default();
    *slot = Some(TierStatus {
        instance_id: Some(inst.id.clone()),
        instance_state: Some(inst.state.as_str().into()),
        private_ip: inst.private_ip.map(|ip| ip.to_string()),
        public_ip: inst.public_ip.map(|ip| ip.to_string()),
        replacements: replacement,
        launch_failures: before.launch_failures,
        last_launch_failure: before.last_launch_failure,
        ..Default::default()
    });
}

/// Records the launches the plan found dead: each instance once (counted in
/// `launchFailures`), with the generation it was seen at. Returns the ones
/// recorded now (worth a log line and an Event).
pub(super) fn record_launch_failures<'a>(
    status: &mut VotingStackStatus,
    failures: impl IntoIterator<Item = &'a LaunchFailure>,
    generation: Option<i64>,
    now: &str,
) -> Vec<&'a LaunchFailure> {
    let mut fresh = Vec::new();
    for f in failures {
        let entry =
            status.tiers.get_or_insert_with(TiersStatus::default).slot(f.tier).get_or_insert_with(Default::default);
        if entry.last_launch_failure.as_ref().is_some_and(|r| r.instance_id == f.instance_id) {
            continue;
        }
        entry.launch_failures += 1;
        entry.last_launch_failure = Some(LaunchFailureStatus {
            instance_id: f.instance_id.clone(),
            code: f.code.clone(),
            message: f.message.clone(),
            generation,
            seen_at: now.to_string(),
        });
        fresh.push(f);
    }
    fresh
}

/// A launch whose ClientToken is burnt: the next pass launches with the
/// next number.
pub(super) fn record_burnt_token(status: &mut VotingStackStatus, tier: Tier, replacement: u32) {
    let slot = status.tiers.get_or_insert_with(TiersStatus::default).slot(tier);
    let entry = slot.get_or_insert_with(TierStatus::default);
    entry.instance_id = None;
    entry.replacements = entry.replacements.max(replacement + 1);
}

/// The timeline's mark of an instance seen running for the first time:
/// from EC2's launch time until now.
pub(super) fn mark_running(stack: &str, tier: Tier, inst: &ObservedInstance) {
    if let Ok(launched) = chrono::DateTime::parse_from_rfc3339(&inst.launch_time) {
        timeline::span(stack, Stage::InstanceRunning, tier.as_str(), SystemTime::from(launched));
    }
}

pub(super) fn record_containers(status: &mut VotingStackStatus, tier: Tier, observed: &ObservedHost) {
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

/// The status of a stack being deleted: Ready=False reason Deleting, phase
/// Deleting; `problem` (a failed teardown) goes into the message. The other
/// conditions keep what they last said.
pub fn deleting_status(stack: &VotingStack, problem: Option<&str>) -> (VotingStackStatus, Vec<ConditionUpdate>) {
    let mut status = stack.status.clone().unwrap_or_default();
    if stack.spec.deletion_policy == DeletionPolicy::Retain {
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
    let flipped = set_condition(&mut status.conditions, &update, stack.metadata.generation, &now());
    status.phase = Some(findings.phase(status.phase));
    status.observed_generation = stack.metadata.generation;
    (status, if flipped { vec![update] } else { Vec::new() })
}

/// Status without the fields every pass rewrites (when and how long): two
/// statuses equal under this say the same thing about the stack.
pub fn status_content(status: &VotingStackStatus) -> VotingStackStatus {
    VotingStackStatus { last_reconcile_time: None, last_reconcile_duration_ms: None, ..status.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ObservedVolume, VolumeState};

    #[test]
    fn a_volume_tagged_formatted_stays_formatted_in_status() {
        let v = ObservedVolume {
            id: "vol-1".into(),
            zone: "us-east-1a".into(),
            size_gib: 10,
            state: VolumeState::Available,
            attachments: Vec::new(),
            create_time: "2026-01-01T00:00:00Z".into(),
            formatted: Some("2026-02-02T00:00:00Z".into()),
        };
        let mut status = VotingStackStatus::default();
        record_volume(&mut status, "vol-1", Some(&v), None);
        let recorded = status.data_volume.as_ref().and_then(|d| d.formatted.clone());
        assert_eq!(recorded.as_deref(), Some("2026-02-02T00:00:00Z"), "status lost, the tag remembers");
        // A value already in status is kept; an untagged answer clears nothing.
        let untagged = ObservedVolume { formatted: None, ..v };
        record_volume(&mut status, "vol-1", Some(&untagged), None);
        assert_eq!(status.data_volume.and_then(|d| d.formatted).as_deref(), Some("2026-02-02T00:00:00Z"));
    }
}
