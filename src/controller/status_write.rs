//! Writing status back: by server-side apply through the status
//! subresource, only when it says something new, and only over the object
//! it was computed from.
//!
//! Status holds what only the operator knows (pinned host keys, image
//! digests, replacements, whether it created the data volume). A status
//! computed from a cached object that is older than the stored one (a
//! reconcile that runs before the watch delivered the operator's own last
//! write, a new leader whose cache lags) must not replace the newer one: the
//! apply carries the resourceVersion it was computed from, and the API
//! server refuses it with 409 Conflict when the object changed since.

use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::api::{VotingStack, VotingStackStatus};
use crate::engine::status_content;

use super::FIELD_MANAGER;

/// Writes `status` unless it says what the stored status says (timestamps
/// aside): a steady stack costs no write, and so wakes no watcher. Returns
/// the object as stored after the write, or None when nothing was written.
pub async fn write_status_if_changed(
    client: &Client,
    stack: &VotingStack,
    status: &VotingStackStatus,
) -> Result<Option<VotingStack>, kube::Error> {
    let stored = stack.status.as_ref().map(status_content);
    if stored.as_ref() == Some(&status_content(status)) {
        return Ok(None);
    }
    write_status(client, stack, status).await.map(Some)
}

/// Writes status through the status subresource by server-side apply, on
/// condition that the object is still at `stack`'s resourceVersion (409
/// Conflict otherwise). Returns the object as stored after the write.
pub async fn write_status(
    client: &Client,
    stack: &VotingStack,
    status: &VotingStackStatus,
) -> Result<VotingStack, kube::Error> {
    let ns = stack.namespace().unwrap_or_else(|| "default".into());
    let api: Api<VotingStack> = Api::namespaced(client.clone(), &ns);
    let mut patch = json!({
        "apiVersion": "votingstack.dev/v1alpha1",
        "kind": "VotingStack",
        "status": status,
    });
    if let Some(rv) = stack.resource_version() {
        patch["metadata"] = json!({ "resourceVersion": rv });
    }
    api.patch_status(&stack.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await
}

/// Whether the API server refused a status write for what it says rather
/// than for when it was sent: a field or value the installed CRD does not
/// declare. Server-side apply answers an undeclared field with a 500
/// ("field not declared in schema"), a value outside the schema with 422.
pub fn refused_by_schema(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => {
            matches!(s.code, 400 | 422)
                || s.message.contains("not declared in schema")
                || s.message.contains("unknown field")
        }
        _ => false,
    }
}

/// Whether a write lost a race: the object changed since it was read.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}
