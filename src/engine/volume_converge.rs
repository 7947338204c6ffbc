//! The data volume's phase of a reconcile: looks the volume up (unless the
//! database instance's block device mappings already show it attached),
//! plans its next step with [`plan_volume`], and carries it out with
//! [`Engine::act_volume`] (the executor `act_infra` uses for the same
//! steps), waiting within the pass only for what EC2 finishes in seconds.

use std::time::Instant;

use tracing::info;

use crate::api::VotingStackSpec;
use crate::cloud::{CloudError, StackIdentity};
use crate::host::SshKey;
use crate::model::{
    Action, AttachmentState, InfraAction, InstanceState, ObservedInfra, ObservedInstance, ObservedVolume, VolumeState,
    VolumeStep,
};

use super::conditions::data_volume::VolumeHold;
use super::failure::Failure;
use super::plan::InfraPlan;
use super::reconcile::{Engine, Run};
use super::status::record_volume;
use super::volume::{attached_volume, fresh_volume_missing, pick_volume, plan_volume, restoring};
use super::worker_hold::volume_step_moves_database;

impl Engine {
    /// Brings the data volume to the database instance: nothing beyond the
    /// instance's block device mappings while it is attached; otherwise
    /// DescribeVolumes, then create, attach or detach, a step at a time.
    /// Returns the attached volume's id, or why the database tier waits.
    pub(super) async fn converge_volume(
        &self,
        ident: &StackIdentity,
        spec: &VotingStackSpec,
        db: &ObservedInstance,
        key: &SshKey,
        infra_plan: &InfraPlan,
        run: &mut Run,
    ) -> Result<String, VolumeHold> {
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
                    Err(e) => return Err(volume_failed(run, e)),
                },
            };
            let volume = pick_volume(&found, db, recorded.as_deref());
            let holders = match volume.and_then(|v| v.attachment()).filter(|a| a.instance_id != db.id) {
                Some(a) => match self.cloud.instances_by_id(std::slice::from_ref(&a.instance_id)).await {
                    Ok(found) => found,
                    Err(e) => return Err(volume_failed(run, e)),
                },
                None => Vec::new(),
            };
            let infra = ObservedInfra { instances: holders, ..Default::default() };
            let create_time = run.status.data_volume.as_ref().and_then(|v| v.create_time.clone());
            let fresh = volume
                .is_none()
                .then(|| fresh_volume_missing(recorded.as_deref(), create_time.as_deref(), chrono::Utc::now()))
                .flatten();
            let step = match fresh {
                Some(wait) => wait,
                None => plan_volume(db, volume, &infra, zone.as_deref(), spec.database.volume_size_gib),
            };
            let step = restoring(step, spec.database.restore_from_snapshot.as_deref());
            // Worth waiting for within the pass: EC2 finishing what this
            // stack asked for (a create, an attachment to the instance, a
            // detach it sent). A terminating instance letting go takes as
            // long as its shutdown: the next pass looks again.
            let soon = volume.is_some_and(|v| {
                v.state == VolumeState::Creating
                    || v.attachment()
                        .is_some_and(|a| a.instance_id == db.id || (acted && a.state == AttachmentState::Detaching))
            });
            if let Some(v) = volume {
                let attached = v.attachment().map(|a| a.instance_id.as_str());
                record_volume(&mut run.status, &v.id, Some(v), attached);
            }
            match &step {
                VolumeStep::Ready { volume_id } => return Ok(volume_id.clone()),
                VolumeStep::Blocked { .. } => return Err(VolumeHold::Step(step)),
                // Waits out EC2's own transitions within the pass; an
                // instance still pending is the next pass's.
                VolumeStep::Wait { .. }
                    if Instant::now() >= deadline
                        || spec.paused
                        || !soon
                        || !matches!(db.state, InstanceState::Running | InstanceState::Stopped) =>
                {
                    return Err(VolumeHold::Step(step));
                }
                VolumeStep::Wait { .. } => {
                    if run.stop_at("while waiting for the data volume") {
                        return Err(VolumeHold::Step(step));
                    }
                    tokio::time::sleep(self.settings.volume_poll).await;
                    continue;
                }
                _ if spec.paused => return Err(VolumeHold::Paused(step)),
                _ => {}
            }
            if run.stop_at("before a data volume step") {
                return Err(VolumeHold::Step(step));
            }
            if let Some(why) = volume_step_moves_database(&step) {
                // The worker stops between votes before postgres goes away.
                if let Err(e) = self.hold_worker_before(ident, spec, key, infra_plan, &why, run).await {
                    run.error = Some(Failure::Ssh);
                    let why = format!("{why}: the move waits until the worker is stopped between votes: {e}");
                    return Err(VolumeHold::Step(VolumeStep::Wait { volume_id: volume.map(|v| v.id.clone()), why }));
                }
            }
            info!(stack = %ident.tag_value(), "{step}");
            match self.act_volume(ident, &step, spec.instances.kms_key_id.as_deref(), run).await {
                Ok(fresh) => created = fresh,
                Err(e) => return Err(volume_failed(run, e)),
            }
            acted = true;
            run.applied.push(Action::Infra(InfraAction::DataVolume(step)));
            if Instant::now() >= deadline {
                return Err(VolumeHold::OnItsWay);
            }
        }
    }

    /// Carries out one step of the data volume's plan (for the loop above,
    /// and for [`Engine::act_infra`]) and records it. Returns the volume
    /// CreateVolume answered with: a fresh volume may not be listed yet.
    pub(super) async fn act_volume(
        &self,
        ident: &StackIdentity,
        step: &VolumeStep,
        kms_key_id: Option<&str>,
        run: &mut Run,
    ) -> Result<Option<ObservedVolume>, CloudError> {
        match step {
            VolumeStep::Create { zone, size_gib, from_snapshot } => {
                // Only a plan made before the database instance exists lacks
                // the zone; the reconcile plans with the instance's.
                let zone = zone.as_deref().ok_or(CloudError::Incomplete {
                    operation: "DescribeInstances",
                    missing: "the database instance's availability zone",
                })?;
                // A volume from a snapshot is at least as large as the
                // snapshot; a snapshot EC2 does not know is CreateVolume's
                // to refuse (InvalidSnapshot.NotFound).
                let size_gib = match from_snapshot {
                    Some(id) => match self.cloud.snapshot_by_id(id).await? {
                        Some(snap) => (*size_gib).max(snap.size_gib),
                        None => *size_gib,
                    },
                    None => *size_gib,
                };
                let n = run.status.data_volume.as_ref().map_or(0, |v| v.created);
                let asked = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                let v = self
                    .cloud
                    .create_data_volume(ident, zone, size_gib, n, from_snapshot.as_deref(), kms_key_id)
                    .await?;
                let entry = run.status.data_volume.get_or_insert_with(Default::default);
                entry.created = n + 1;
                entry.create_time = Some(asked);
                record_volume(&mut run.status, &v.id, Some(&v), None);
                Ok(Some(v))
            }
            VolumeStep::Attach { volume_id, instance_id } => {
                self.cloud.attach_volume(volume_id, instance_id).await.map(|()| None)
            }
            VolumeStep::Detach { volume_id, instance_id } => {
                self.cloud.detach_volume(volume_id, instance_id).await.map(|()| None)
            }
            VolumeStep::Ready { .. } | VolumeStep::Wait { .. } | VolumeStep::Blocked { .. } => Ok(None),
        }
    }
}

/// An EC2 failure about the data volume: said in the database tier's
/// condition (and counted as an AWS error); the other tiers go on.
fn volume_failed(run: &mut Run, e: CloudError) -> VolumeHold {
    run.error = Some(Failure::Aws);
    VolumeHold::Failed(e)
}
