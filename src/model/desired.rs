//! What a host must run: containers with the hash of their configuration,
//! and the fixed facts of the workload that both the plan and the adapters
//! need (ports, network and volume names, the postgres login).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::api::Tier;

use super::volume::DataVolume;

/// Name of the Docker network the operator creates on each host.
pub const HOST_NETWORK: &str = "votingstack";
/// Named volume holding redis's append-only file on the backend host.
pub const REDIS_VOLUME: &str = "votingstack-redis-data";
/// Postgres login hardcoded by the upstream worker and result images.
pub const POSTGRES_USER: &str = "postgres";
/// Postgres password hardcoded by the upstream worker and result images. It is
/// why 5432 is open only to the tier security groups.
pub const POSTGRES_PASSWORD: &str = "postgres";
/// Port redis listens on (published on the backend host).
pub const REDIS_PORT: u16 = 6379;
/// Port postgres listens on (published on the database host).
pub const POSTGRES_PORT: u16 = 5432;
/// Container names: the upstream images reach their peers by these host names
/// (`redis`, `db`), so they are part of the contract, not a choice.
pub const DB_CONTAINER: &str = "db";
pub const REDIS_CONTAINER: &str = "redis";
pub const WORKER_CONTAINER: &str = "worker";
pub const VOTE_CONTAINER: &str = "vote";
pub const RESULT_CONTAINER: &str = "result";
/// The proxy that owns the frontend's published ports (`updateStrategy:
/// ZeroDowntime`).
pub const PROXY_CONTAINER: &str = "proxy";

/// Docker's log driver for every container of the stack, and its rotation:
/// without one, json-file logs grow until the root disk is full.
pub const LOG_DRIVER: &str = "json-file";
/// Size at which a container's log file is rotated.
pub const LOG_MAX_SIZE: &str = "10m";
/// Log files kept per container, the current one included.
pub const LOG_MAX_FILES: u32 = 3;

/// How a container's logs are written and rotated (part of the config
/// hash: a container created without rotation is re-created with it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogRotation {
    pub driver: String,
    pub max_size: String,
    pub max_files: u32,
}

impl Default for LogRotation {
    fn default() -> LogRotation {
        LogRotation { driver: LOG_DRIVER.to_string(), max_size: LOG_MAX_SIZE.to_string(), max_files: LOG_MAX_FILES }
    }
}

/// A published port: host port to container port (TCP).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PortMapping {
    pub host: u16,
    pub container: u16,
}

/// One container a host must run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DesiredContainer {
    /// Its name on the host: its role, or for a container rolled out beside
    /// its predecessor `<role>-<first 8 hex of its config hash>`. Not part
    /// of the hash (the role is, under the key `name`).
    #[serde(skip)]
    pub name: String,
    /// What it is: `vote`, `result`, `proxy`, `redis`, `worker`, `db`.
    #[serde(rename = "name")]
    pub role: String,
    pub tier: Tier,
    pub image: String,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<PortMapping>,
    /// `--add-host NAME:IP` entries; None while the peer's IP is not known.
    pub extra_hosts: BTreeMap<String, Option<Ipv4Addr>>,
    pub command: Vec<String>,
    /// Named volume to mount path.
    pub volumes: BTreeMap<String, String>,
    /// The EBS data volume a directory of which the container keeps its
    /// data in (postgres); mounted on the host before the container starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_volume: Option<DataVolume>,
    /// Readiness check run inside the container by its engine (a shell
    /// command that exits 0 when the service answers); its result is read
    /// back with every observation at no extra cost.
    pub health_command: Option<String>,
    /// Log driver and rotation.
    pub logs: LogRotation,
    /// The digest `image` resolved to when the stack first ran it
    /// (`status.images`): every host then runs that digest, also a host
    /// that pulls it later. Not part of the config hash.
    #[serde(skip)]
    pub pinned_digest: Option<String>,
    /// Why the container must stay stopped for now, if it must (the worker
    /// while postgres does not answer or is about to move): a held
    /// container is stopped between votes and neither started nor created
    /// until it is released. Not part of the config hash.
    #[serde(skip)]
    pub held: Option<String>,
    /// Updated beside its predecessor (`updateStrategy: ZeroDowntime`):
    /// named after its hash, switched in by the proxy. Not part of the hash.
    #[serde(skip)]
    pub rolled: bool,
    /// Environment given at creation that is not part of the hash (the
    /// proxy's first targets: they change by a reload, not a re-creation).
    #[serde(skip)]
    pub unhashed_env: BTreeMap<String, String>,
}

impl DesiredContainer {
    /// The reference the engine creates the container from: `image` itself,
    /// or `repository@digest` once the image is pinned.
    pub fn run_reference(&self) -> String {
        match &self.pinned_digest {
            Some(digest) if !self.image.contains('@') => format!("{}@{digest}", repository_of(&self.image)),
            _ => self.image.clone(),
        }
    }

    /// The name a rolled container gets: `<role>-<8 hex of its hash>`; the
    /// role itself for others. None while the hash is unknown.
    pub fn rolled_name(&self) -> Option<String> {
        if !self.rolled {
            return Some(self.role.clone());
        }
        self.config_hash().map(|h| format!("{}-{}", self.role, &h[..8]))
    }

    /// Whether an observed container named `name` plays this container's
    /// role: the role itself, or `<role>-<8 hex>`.
    pub fn plays_role(&self, name: &str) -> bool {
        name == self.role
            || name.strip_prefix(self.role.as_str()).and_then(|rest| rest.strip_prefix('-')).is_some_and(|hex| {
                hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
    }

    /// Hash of everything that requires re-creating the container when it
    /// changes; None while a peer IP is unknown.
    pub fn config_hash(&self) -> Option<String> {
        if self.extra_hosts.values().any(Option::is_none) {
            return None;
        }
        let json = serde_json::to_vec(self).ok()?;
        let digest = Sha256::digest(&json);
        Some(hex::encode(&digest[..8]))
    }
}

/// The repository of an image reference: without its tag or digest
/// (`host:5000/vote:local` → `host:5000/vote`).
pub fn repository_of(image: &str) -> &str {
    if let Some((repo, _)) = image.split_once('@') {
        return repo;
    }
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    }
}

/// IPs of the hosts other tiers point at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peers {
    /// Where `redis` resolves: the backend host.
    pub backend: Option<Ipv4Addr>,
    /// Where `db` resolves: the database host.
    pub database: Option<Ipv4Addr>,
}
