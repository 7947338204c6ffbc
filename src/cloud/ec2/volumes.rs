//! The database's data volume: found by tag, created with a ClientToken in
//! the database instance's zone. Attaching and detaching it are one call
//! each, in `Cloud for Ec2Cloud` (`ec2.rs`).

use aws_sdk_ec2::primitives::DateTimeFormat;
use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification, Volume, VolumeType};
use sha2::{Digest, Sha256};

use crate::api::Tier;
use crate::cloud::{CloudError, StackIdentity};
use crate::model::snapshot::ORIGIN_TAG;
use crate::model::volume::DATA_VOLUME_ROLE;
use crate::model::{AttachmentState, ObservedVolume, VolumeAttachment, VolumeState};

use super::{
    filter, is_not_found, sort_claimed, stack_filter, stack_tags, tag_filter, Ec2Cloud, FRESH_ID_RETRY_DELAY,
    MAX_ATTEMPTS,
};

/// Tag telling the data volume from other volumes of the stack (the
/// instances' root volumes carry the stack tags too).
pub const ROLE_TAG: &str = "votingstack.dev/role";
/// Tag the operator puts on the data volume once postgres runs on a
/// filesystem on it (the time, RFC 3339): such a volume is never formatted.
pub const FORMATTED_TAG: &str = "votingstack.dev/formatted";

/// A volume as the engine sees it; None without an id or a known state.
pub(super) fn observed_volume(v: &Volume) -> Option<ObservedVolume> {
    Some(ObservedVolume {
        id: v.volume_id()?.to_owned(),
        zone: v.availability_zone().unwrap_or_default().to_owned(),
        size_gib: v.size().unwrap_or_default(),
        state: VolumeState::parse(v.state()?.as_str())?,
        attachments: v
            .attachments()
            .iter()
            .filter_map(|a| {
                Some(VolumeAttachment {
                    instance_id: a.instance_id()?.to_owned(),
                    device: a.device().unwrap_or_default().to_owned(),
                    state: AttachmentState::parse(a.state().map(|s| s.as_str()).unwrap_or_default()),
                })
            })
            .collect(),
        create_time: v.create_time().and_then(|t| t.fmt(DateTimeFormat::DateTime).ok()).unwrap_or_default(),
        formatted: v.tags().iter().find(|t| t.key() == Some(FORMATTED_TAG)).and_then(|t| t.value()).map(str::to_owned),
    })
}

/// CreateVolume's ClientToken for the stack's `n`-th data volume.
pub fn volume_token(stack: &StackIdentity, n: u32) -> String {
    let digest = Sha256::digest(format!("{}/{}/{}/data-volume", stack.uid, stack.namespace, stack.name));
    format!("vs-{}-v{n}", hex::encode(&digest[..16]))
}

impl Ec2Cloud {
    /// The stack's data volumes (owner and role tags), not yet deleted;
    /// another installation's are left out, and those an older operator
    /// created without the installation tag are adopted.
    pub(super) async fn stack_volumes(&self, stack: &StackIdentity) -> Result<Vec<ObservedVolume>, CloudError> {
        let mut found = self
            .all_pages(
                "DescribeVolumes",
                |token| {
                    self.client
                        .describe_volumes()
                        .filters(stack_filter(stack))
                        .filters(tag_filter(ROLE_TAG, DATA_VOLUME_ROLE))
                        .filters(filter("status", ["creating", "available", "in-use", "error"]))
                        .max_results(500)
                        .set_next_token(token)
                        .send()
                },
                |page| (page.volumes.unwrap_or_default(), page.next_token),
            )
            .await?;
        let mut adopt = Vec::new();
        sort_claimed(&mut found, &mut adopt, |x| self.claim(stack, x.tags()), |x| x.volume_id());
        self.adopt(stack, adopt).await;
        Ok(found.iter().filter_map(observed_volume).collect())
    }

    /// One volume by id, with the `volume-id` filter (VolumeIds would fail
    /// the call with NotFound); None once EC2 does not list it or lists it
    /// deleted. A volume created moments ago may not be listed yet: it is
    /// asked for again, a second apart, within the same window as a fresh
    /// id's NotFound ([`MAX_ATTEMPTS`] looks in all).
    pub(super) async fn volume_by_id(&self, id: &str) -> Result<Option<ObservedVolume>, CloudError> {
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(FRESH_ID_RETRY_DELAY).await;
            }
            let request = self.client.describe_volumes().filters(filter("volume-id", [id])).send();
            let out = match self.call("DescribeVolumes", request).await {
                Ok(out) => out,
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(e) => return Err(e),
            };
            // Another installation's volume is not this stack's, whatever was recorded.
            let found = out.volumes().iter().filter(|v| !self.foreign(v.tags()));
            if let Some(v) = found.filter_map(observed_volume).find(|v| v.id == id) {
                return Ok((!matches!(v.state, VolumeState::Deleting | VolumeState::Deleted)).then_some(v));
            }
        }
        Ok(None)
    }

    /// Creates the data volume: gp3, encrypted (with `kms_key_id`, else the
    /// account's default EBS key), tagged, in `zone`; from `from_snapshot`
    /// when given (tagged with its origin).
    pub(super) async fn create_volume(
        &self,
        stack: &StackIdentity,
        zone: &str,
        size_gib: i32,
        n: u32,
        from_snapshot: Option<&str>,
        kms_key_id: Option<&str>,
    ) -> Result<ObservedVolume, CloudError> {
        let name = format!("{}-postgres-data", stack.resource_name());
        let mut tags = stack_tags(stack, &self.installation, &name, Some(Tier::Database));
        tags.push(Tag::builder().key(ROLE_TAG).value(DATA_VOLUME_ROLE).build());
        if let Some(snapshot) = from_snapshot {
            // Holds a file system: never formatted.
            tags.push(Tag::builder().key(ORIGIN_TAG).value(format!("snapshot:{snapshot}")).build());
        }
        let out = self
            .call(
                "CreateVolume",
                self.client
                    .create_volume()
                    .availability_zone(zone)
                    .size(size_gib)
                    .volume_type(VolumeType::Gp3)
                    .encrypted(true)
                    .set_kms_key_id(kms_key_id.map(str::to_owned))
                    .set_snapshot_id(from_snapshot.map(str::to_owned))
                    .client_token(volume_token(stack, n))
                    .tag_specifications(
                        TagSpecification::builder().resource_type(ResourceType::Volume).set_tags(Some(tags)).build(),
                    )
                    .send(),
            )
            .await?;
        let id = out.volume_id().ok_or(CloudError::Incomplete { operation: "CreateVolume", missing: "volume id" })?;
        Ok(ObservedVolume {
            id: id.to_owned(),
            zone: out.availability_zone().unwrap_or(zone).to_owned(),
            size_gib: out.size().unwrap_or(size_gib),
            state: out.state().and_then(|s| VolumeState::parse(s.as_str())).unwrap_or(VolumeState::Creating),
            attachments: Vec::new(),
            create_time: out.create_time().and_then(|t| t.fmt(DateTimeFormat::DateTime).ok()).unwrap_or_default(),
            formatted: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_formatted_tag_is_read_back_from_describe_volumes() {
        use aws_sdk_ec2::types::{Tag, Volume, VolumeState as Ec2State};
        let tagged = Volume::builder()
            .volume_id("vol-1")
            .state(Ec2State::Available)
            .tags(Tag::builder().key(FORMATTED_TAG).value("2026-12-07T00:00:00Z").build())
            .build();
        let v = observed_volume(&tagged).unwrap();
        assert_eq!(v.formatted.as_deref(), Some("2026-12-07T00:00:00Z"));
        let untagged = Volume::builder().volume_id("vol-2").state(Ec2State::Available).build();
        assert_eq!(observed_volume(&untagged).unwrap().formatted, None);
    }

    #[test]
    fn volume_tokens_are_per_stack_and_per_volume() {
        let a = StackIdentity { name: "demo".into(), namespace: "default".into(), uid: "u1".into() };
        let b = StackIdentity { uid: "u2".into(), ..a.clone() };
        assert_eq!(volume_token(&a, 0), volume_token(&a, 0));
        assert_ne!(volume_token(&a, 0), volume_token(&a, 1));
        assert_ne!(volume_token(&a, 0), volume_token(&b, 0));
        assert!(volume_token(&a, 0).len() <= 64);
    }
}
