//! Host-key trust: which key each host must present, and the pin recorded
//! once a host was reached. The condition a mismatch gives is decided in
//! [`conditions::tiers`](super::conditions::tiers).

use tracing::warn;

use crate::api::{Tier, TiersStatus, VotingStackStatus};
use crate::cloud::CLIENT_TOKEN_PREFIX;
use crate::host::SshKey;
use crate::model::ObservedInstance;

/// How long after launch an instance that was never reached may present
/// another key than the one it was launched with and count as not up yet
/// rather than as a host-key mismatch: a replacement can get its
/// predecessor's private IP, and for a moment the old host may still answer
/// there. The other key is refused either way.
pub const YOUNG_INSTANCE: chrono::Duration = chrono::Duration::minutes(2);

/// The host key an instance must present:
/// - the key pinned for this very instance, once it has been reached (a pin
///   is never replaced while the instance id stays);
/// - before the first connection, for an instance the operator launched (its
///   ClientToken is one of ours): the key the operator derived for that
///   token and gave it in its user data;
/// - otherwise (an adopted instance, first contact): none, and the first
///   key seen is pinned.
pub(super) fn expected_host_key(
    status: &VotingStackStatus,
    tier: Tier,
    inst: &ObservedInstance,
    key: &SshKey,
) -> Option<String> {
    let pinned = pinned_key(status, tier, inst);
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

/// The key pinned for this very instance of the tier, once it was reached.
fn pinned_key(status: &VotingStackStatus, tier: Tier, inst: &ObservedInstance) -> Option<String> {
    status
        .tiers
        .as_ref()
        .and_then(|t| t.get(tier))
        .filter(|t| t.instance_id.as_deref() == Some(inst.id.as_str()))
        .and_then(|t| t.host_key_fingerprint.clone())
}

/// The key the release before the HKDF derivation gave an instance it
/// launched, accepted besides [`expected_host_key`] until the instance is
/// first reached (and pinned): an upgrade must not turn hosts launched but
/// not yet reached into host-key mismatches. None once pinned, and for
/// instances the operator did not launch.
pub(super) fn earlier_host_key(
    status: &VotingStackStatus,
    tier: Tier,
    inst: &ObservedInstance,
    key: &SshKey,
) -> Option<String> {
    if pinned_key(status, tier, inst).is_some() {
        return None;
    }
    let token = inst.client_token.as_deref().filter(|t| t.starts_with(CLIENT_TOKEN_PREFIX))?;
    key.earlier_host_key_fingerprint(token).ok()
}

/// Whether this very instance was reached before (its key is pinned).
pub(super) fn was_reached(status: &VotingStackStatus, inst: &ObservedInstance) -> bool {
    status
        .tiers
        .as_ref()
        .and_then(|t| inst.tier.and_then(|tier| t.get(tier)))
        .is_some_and(|t| t.instance_id.as_deref() == Some(inst.id.as_str()) && t.host_key_fingerprint.is_some())
}

/// Whether the instance was launched less than [`YOUNG_INSTANCE`] ago.
pub(super) fn is_young(inst: &ObservedInstance) -> bool {
    chrono::DateTime::parse_from_rfc3339(&inst.launch_time)
        .is_ok_and(|at| chrono::Utc::now().signed_duration_since(at) < YOUNG_INSTANCE)
}

/// Records the key a host presented. The connection already checked it
/// against the expected key; an instance's first key is pinned and never
/// replaced (a new instance id clears the pin, see
/// [`record_instances`](super::status::record_instances)).
pub(super) fn pin_host_key(status: &mut VotingStackStatus, tier: Tier, fingerprint: &str) {
    if let Some(t) = status.tiers.get_or_insert_with(TiersStatus::default).slot(tier).as_mut() {
        if t.host_key_fingerprint.is_none() {
            t.host_key_fingerprint = Some(fingerprint.to_string());
            t.host_key_pinned_at = Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TierStatus;
    use crate::model::InstanceState;

    #[test]
    fn the_earlier_releases_key_is_accepted_only_before_the_first_contact_with_our_launch() {
        let key = crate::fixtures::test_key();
        let mut inst = crate::fixtures::instance(Tier::Database, "i-db", InstanceState::Running);
        inst.client_token = Some("vs-launch-1".into());
        let mut status = VotingStackStatus::default();
        let earlier = earlier_host_key(&status, Tier::Database, &inst, &key);
        assert_eq!(earlier, key.earlier_host_key_fingerprint("vs-launch-1").ok(), "launched by us, never reached");
        assert_ne!(earlier, expected_host_key(&status, Tier::Database, &inst, &key));

        *status.tiers.get_or_insert_with(TiersStatus::default).slot(Tier::Database) =
            Some(TierStatus { instance_id: Some("i-db".into()), ..Default::default() });
        pin_host_key(&mut status, Tier::Database, "SHA256:pinned");
        assert_eq!(earlier_host_key(&status, Tier::Database, &inst, &key), None, "pinned: only the pin");

        let mut adopted = inst.clone();
        adopted.id = "i-other".into();
        adopted.client_token = Some("someone-elses".into());
        assert_eq!(earlier_host_key(&status, Tier::Database, &adopted, &key), None, "not launched by us");
    }
}
