//! Snapshots of the data volume: CreateSnapshot with the stack's tags and
//! a slot tag, DescribeSnapshots by tag (owner self) or by id, and
//! DeleteSnapshot. CreateSnapshot takes no ClientToken: the engine finds a
//! snapshot it may already have taken by its slot tag before it takes one.

use aws_sdk_ec2::primitives::DateTimeFormat;
use aws_sdk_ec2::types::{ResourceType, Snapshot, Tag, TagSpecification};

use crate::api::Tier;
use crate::cloud::{CloudError, StackIdentity};
use crate::model::snapshot::{Slot, SLOT_TAG, SNAPSHOT_ROLE};
use crate::model::{ObservedSnapshot, SnapshotState};

use crate::cloud::Installation;

use super::{is_not_found, sort_claimed, stack_filter, stack_tags, tag_filter, tag_value, Ec2Cloud, ROLE_TAG};

/// A snapshot as the engine sees it; None without an id.
pub(super) fn observed_snapshot(s: &Snapshot) -> Option<ObservedSnapshot> {
    Some(ObservedSnapshot {
        id: s.snapshot_id()?.to_owned(),
        volume_id: s.volume_id().unwrap_or_default().to_owned(),
        state: SnapshotState::parse(s.state().map(|s| s.as_str()).unwrap_or_default()),
        start_time: s.start_time().and_then(|t| t.fmt(DateTimeFormat::DateTime).ok()).unwrap_or_default(),
        size_gib: s.volume_size().unwrap_or_default(),
        slot: tag_value(s.tags(), SLOT_TAG).map(str::to_owned),
        message: s.state_message().filter(|m| !m.is_empty()).map(str::to_owned),
    })
}

/// Tags of a snapshot of the stack's data volume.
pub(super) fn snapshot_tags(stack: &StackIdentity, installation: &Installation, slot: &Slot) -> Vec<Tag> {
    let name = format!("{}-postgres-data", stack.resource_name());
    let mut tags = stack_tags(stack, installation, &name, Some(Tier::Database));
    tags.push(Tag::builder().key(ROLE_TAG).value(SNAPSHOT_ROLE).build());
    tags.push(Tag::builder().key(SLOT_TAG).value(slot.tag_value()).build());
    tags
}

impl Ec2Cloud {
    /// The stack's snapshots: DescribeSnapshots of this account's own
    /// (`owner self`) with the stack's owner and role tags; another
    /// installation's are left out, and those an older operator took
    /// without the installation tag are adopted.
    pub(super) async fn stack_snapshots(&self, stack: &StackIdentity) -> Result<Vec<ObservedSnapshot>, CloudError> {
        let mut found = self
            .all_pages(
                "DescribeSnapshots",
                |token| {
                    self.client
                        .describe_snapshots()
                        .owner_ids("self")
                        .filters(stack_filter(stack))
                        .filters(tag_filter(ROLE_TAG, SNAPSHOT_ROLE))
                        .max_results(1000)
                        .set_next_token(token)
                        .send()
                },
                |page| (page.snapshots.unwrap_or_default(), page.next_token),
            )
            .await?;
        let mut adopt = Vec::new();
        sort_claimed(&mut found, &mut adopt, |x| self.claim(stack, x.tags()), |x| x.snapshot_id());
        self.adopt(stack, adopt).await;
        Ok(found.iter().filter_map(observed_snapshot).collect())
    }

    /// One snapshot by id, whoever took it; None when EC2 does not know
    /// the id (a fresh one is retried for a few seconds first).
    pub(super) async fn snapshot(&self, id: &str) -> Result<Option<ObservedSnapshot>, CloudError> {
        match self.call("DescribeSnapshots", self.client.describe_snapshots().snapshot_ids(id).send()).await {
            Ok(out) => Ok(out.snapshots().iter().filter_map(observed_snapshot).find(|s| s.id == id)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Takes a snapshot of `volume_id` tagged for the stack and `slot`.
    pub(super) async fn take_snapshot(
        &self,
        stack: &StackIdentity,
        volume_id: &str,
        slot: &Slot,
    ) -> Result<ObservedSnapshot, CloudError> {
        let out = self
            .call(
                "CreateSnapshot",
                self.client
                    .create_snapshot()
                    .volume_id(volume_id)
                    .description(format!("votingstack {}: postgres data ({})", stack.tag_value(), slot.tag_value()))
                    .tag_specifications(
                        TagSpecification::builder()
                            .resource_type(ResourceType::Snapshot)
                            .set_tags(Some(snapshot_tags(stack, &self.installation, slot)))
                            .build(),
                    )
                    .send(),
            )
            .await?;
        let id =
            out.snapshot_id().ok_or(CloudError::Incomplete { operation: "CreateSnapshot", missing: "snapshot id" })?;
        Ok(ObservedSnapshot {
            id: id.to_owned(),
            volume_id: out.volume_id().unwrap_or(volume_id).to_owned(),
            state: out.state().map_or(SnapshotState::Pending, |s| SnapshotState::parse(s.as_str())),
            start_time: out.start_time().and_then(|t| t.fmt(DateTimeFormat::DateTime).ok()).unwrap_or_default(),
            size_gib: out.volume_size().unwrap_or_default(),
            slot: Some(slot.tag_value()),
            message: None,
        })
    }

    /// Deletes a snapshot; one already gone is no error.
    pub(super) async fn remove_snapshot(&self, id: &str) -> Result<(), CloudError> {
        match self.call("DeleteSnapshot", self.client.delete_snapshot().snapshot_id(id).send()).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::OWNER_TAG;

    #[test]
    fn snapshots_carry_the_stack_tags_the_role_and_the_slot() {
        let stack = StackIdentity { name: "demo".into(), namespace: "shop".into(), uid: "u".into() };
        let tags = snapshot_tags(&stack, &Installation::default(), &Slot::Final);
        assert_eq!(tag_value(&tags, OWNER_TAG), Some("u"));
        assert_eq!(tag_value(&tags, crate::cloud::INSTALLATION_TAG), Some("default"));
        assert_eq!(tag_value(&tags, ROLE_TAG), Some(SNAPSHOT_ROLE));
        assert_eq!(tag_value(&tags, SLOT_TAG), Some("final"));
        assert_eq!(tag_value(&tags, crate::api::STACK_LABEL), Some("shop/demo"));
    }
}
