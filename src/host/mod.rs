//! The host side of the engine: what the engine asks of each host (over SSH)
//! and of the published web pages.
//!
//! [`Hosts`] is implemented over SSH by [`SshHosts`] (`hosts`) and by test
//! doubles.
//!
//! # What runs on a host, and how
//!
//! Everything runs in channels of the host's one pooled SSH session
//! (`ssh`; the private tiers are reached through the frontend host).
//!
//! Docker is driven through its Engine API: the calls are in `docker`.
//! The API travels over the SSH session by `docker system dial-stdio`, one
//! exec channel per API connection (`docker_api`); each call is an HTTP
//! request on such a connection, with no shell of its own.
//!
//! A shell runs on a host only in these places, for what the API cannot do:
//!
//! - the bootstrap script's steps (`bootstrap.sh`, run by `bootstrap`),
//!   each one `SshHosts::exec` in `ssh`: reading the host's facts (`facts`:
//!   which instance answers, whether Docker runs) before a new Docker API
//!   client is set up and when Docker does not answer; installing or
//!   starting Docker; mounting the data volume;
//! - the apply lock (`lock`): `flock` on a file on the host, held by a
//!   command on a channel of its own for as long as an apply runs and
//!   renews its 30 s lease (a line every 10 s);
//! - the command that starts `docker system dial-stdio` (`docker_api`),
//!   one channel per Docker API connection.
//!
//! The other modules: `containers`, the model as create requests and back
//! (pure); `events`, the drift stream; `web`, HTTP checks and the smoke
//! vote; `keys`, the SSH key pair; `first_contact`, the timeline of each
//! instance's first SSH and Docker answers.

mod bootstrap;
mod containers;
mod docker;
mod docker_api;
pub mod events;
mod facts;
mod first_contact;
mod hosts;
pub mod keys;
mod lock;
mod ssh;
mod web;

use std::net::Ipv4Addr;

use async_trait::async_trait;

use crate::api::{PullPolicy, Tier};
use crate::model::{HostAction, ObservedHost};

pub use events::{DriftCause, DriftEvent, DriftWatcher};
pub use hosts::SshHosts;
pub use keys::{HostKey, KeyError, SshKey};
pub use ssh::SshOptions;

/// How to reach one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostTarget {
    /// Value of the `votingstack.dev/stack` label on the stack's containers
    /// (`namespace/name`).
    pub stack: String,
    pub tier: Tier,
    pub instance_id: String,
    pub address: Ipv4Addr,
    pub port: u16,
    pub user: String,
    /// The fingerprint the host must present; None trusts the first key seen
    /// (which the engine then pins in status).
    pub expected_host_key: Option<String>,
    /// Also accepted while the host was never reached: the key the release
    /// before the HKDF derivation gave the instances it launched (see
    /// [`SshKey::earlier_host_key_fingerprint`]).
    pub earlier_host_key: Option<String>,
    /// Hop through this host first (the frontend, for the private tiers).
    pub jump: Option<Box<HostTarget>>,
    pub connect_timeout_secs: u32,
    pub command_timeout_secs: u32,
}

impl HostTarget {
    /// Whether a host presenting `fingerprint` is the one expected: any key
    /// when none is expected yet (first use), else the expected key or the
    /// earlier release's key for the same launch.
    pub fn accepts(&self, fingerprint: &str) -> bool {
        accepts(self.expected_host_key.as_deref(), self.earlier_host_key.as_deref(), fingerprint)
    }

    /// `tier host <address> (<instance id>)`, for messages.
    pub fn describe(&self) -> String {
        format!("{} host {} ({})", self.tier, self.address, self.instance_id)
    }
}

/// Errors at the host boundary. Each names the host.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{host}: SSH connection failed: {message}")]
    Unreachable { host: String, message: String },
    #[error("{host}: SSH login as {user:?} was refused; is the key pair's public key authorised?")]
    AuthRefused { host: String, user: String },
    #[error("{host}: host key {presented} does not match the pinned {expected}; if the instance was rebuilt on purpose, clear status.tiers.*.hostKeyFingerprint or replace the instance")]
    HostKeyMismatch { host: String, expected: String, presented: String },
    #[error("{host}: `{step}` exited with {code}: {stderr}")]
    CommandFailed { host: String, step: String, code: u32, stderr: String },
    #[error("{host}: the Docker engine refused to {step}: {message}")]
    Docker { host: String, step: String, status: Option<u16>, message: String },
    #[error("{host}: pulling {image} failed: {message}")]
    ImagePull { host: String, image: String, message: String },
    #[error("{host}: {what} timed out after {seconds} s")]
    Timeout { host: String, what: String, seconds: u32 },
    #[error("{host}: another apply held the host's lock (/tmp/votingstack-apply.lock) for {seconds} s; is a second operator or CLI run changing this stack?")]
    Busy { host: String, seconds: u32 },
    #[error("{host}: {message}; nothing was formatted or mounted: check the volume (restore it, or attach the right one) before postgres may start on it")]
    DataVolumeUnusable { host: String, message: String },
    #[error("{host}: the new container {container} was not switched in and is removed; the old one serves on: {why}; its last log lines: {logs}")]
    UpdateFailed { host: String, container: String, why: String, logs: String },
    #[error("{host}: {os}. Use a Debian or Ubuntu AMI (leave spec.instances.ami unset for the newest Ubuntu 24.04 LTS), or one with Docker installed")]
    UnsupportedOs { host: String, os: String },
    #[error("{host}: unreadable observation: {message}")]
    Parse { host: String, message: String },
    #[error("{url}: {message}")]
    Http { url: String, message: String },
}

/// What the engine does on hosts.
#[async_trait]
pub trait Hosts: Send + Sync {
    /// One round trip: Docker daemon state, the stack's containers with
    /// their readiness, and the host key fingerprint.
    async fn observe(&self, target: &HostTarget, key: &SshKey) -> Result<ObservedHost, HostError>;

    /// Runs a tier's planned actions on its host, under the host's apply lock.
    async fn apply(
        &self,
        target: &HostTarget,
        key: &SshKey,
        actions: &[HostAction],
        pull: PullPolicy,
    ) -> Result<(), HostError>;

    /// HTTP status of a GET on `url` (vote and result readiness).
    async fn http_status(&self, url: &str) -> Result<u16, HostError>;

    /// Casts `vote` (a or b) as `voter_id` through the vote page.
    async fn cast_vote(&self, vote_url: &str, voter_id: &str, vote: &str) -> Result<(), HostError>;

    /// The vote postgres holds for `voter_id`, if any.
    async fn recorded_vote(&self, db: &HostTarget, key: &SshKey, voter_id: &str) -> Result<Option<String>, HostError>;

    /// Deletes from postgres every vote whose voter id starts with `prefix`:
    /// the smoke test's own, once counted, and any an earlier smoke test
    /// left behind (one that reached postgres after its deadline).
    async fn delete_smoke_votes(&self, db: &HostTarget, key: &SshKey, prefix: &str) -> Result<(), HostError>;

    /// How many votes wait in redis's `votes` list on the backend host (the
    /// smoke test waits for those ahead of its own). Doubles without redis
    /// have none.
    async fn queued_votes(&self, _backend: &HostTarget, _key: &SshKey) -> Result<u64, HostError> {
        Ok(0)
    }

    /// Round trips to hosts so far: SSH commands and Docker API requests
    /// (for metrics and the steady-state budget).
    fn round_trips(&self) -> u64;
}

/// [`HostTarget::accepts`] on its parts (the SSH handler holds copies).
pub(crate) fn accepts(expected: Option<&str>, earlier: Option<&str>, fingerprint: &str) -> bool {
    match expected {
        None => true,
        Some(want) => {
            ssh::same_fingerprint(want, fingerprint) || earlier.is_some_and(|e| ssh::same_fingerprint(e, fingerprint))
        }
    }
}
