//! Writing status back: by server-side apply through the status
//! subresource, and only when it says something new.

use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::api::{VotingStack, VotingStackStatus};
use crate::engine::status_content;

use super::FIELD_MANAGER;

/// Writes `status` unless it says what the stored status says (timestamps
/// aside): a steady stack costs no write, and so wakes no watcher.
pub async fn write_status_if_changed(
    client: &Client,
    stack: &VotingStack,
    status: &VotingStackStatus,
) -> Result<bool, kube::Error> {
    let stored = stack.status.as_ref().map(status_content);
    if stored.as_ref() == Some(&status_content(status)) {
        return Ok(false);
    }
    write_status(client, stack, status).await?;
    Ok(true)
}

/// Writes status through the status subresource by server-side apply.
pub async fn write_status(client: &Client, stack: &VotingStack, status: &VotingStackStatus) -> Result<(), kube::Error> {
    let ns = stack.namespace().unwrap_or_else(|| "default".into());
    let api: Api<VotingStack> = Api::namespaced(client.clone(), &ns);
    let patch = json!({
        "apiVersion": "votingstack.dev/v1alpha1",
        "kind": "VotingStack",
        "status": status,
    });
    api.patch_status(&stack.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}
