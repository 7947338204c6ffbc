//! Desired state: from the spec (and the hosts' IPs) to the containers each
//! host must run, each with the hash of its configuration.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::api::{Tier, VotingStackSpec};

/// Name of the Docker network the operator creates on each host.
pub const HOST_NETWORK: &str = "votingstack";
/// Named volume holding postgres data on the database host.
pub const DB_VOLUME: &str = "votingstack-db-data";
/// Postgres login hardcoded by the upstream worker and result images.
pub const POSTGRES_USER: &str = "postgres";
/// Postgres password hardcoded by the upstream worker and result images. It is
/// why 5432 is open only to the tier security groups.
pub const POSTGRES_PASSWORD: &str = "postgres";

/// A published port: host port to container port (TCP).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PortMapping {
    pub host: u16,
    pub container: u16,
}

/// One container a host must run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DesiredContainer {
    pub name: String,
    pub tier: Tier,
    pub image: String,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<PortMapping>,
    /// `--add-host NAME:IP` entries; None while the peer's IP is not known.
    pub extra_hosts: BTreeMap<String, Option<Ipv4Addr>>,
    pub command: Vec<String>,
    /// Named volume to mount path.
    pub volumes: BTreeMap<String, String>,
}

impl DesiredContainer {
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

/// IPs of the hosts other tiers point at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peers {
    /// Where `redis` resolves: the backend host.
    pub backend: Option<Ipv4Addr>,
    /// Where `db` resolves: the database host.
    pub database: Option<Ipv4Addr>,
}

/// The containers of one tier, in start order.
pub fn desired_containers(spec: &VotingStackSpec, tier: Tier, peers: Peers) -> Vec<DesiredContainer> {
    let app = &spec.app;
    let base = |name: &str, image: &str| DesiredContainer {
        name: name.to_string(),
        tier,
        image: image.to_string(),
        env: BTreeMap::new(),
        ports: Vec::new(),
        extra_hosts: BTreeMap::new(),
        command: Vec::new(),
        volumes: BTreeMap::new(),
    };
    match tier {
        Tier::Database => {
            let mut db = base("db", &app.images.postgres);
            db.env.insert("POSTGRES_USER".into(), POSTGRES_USER.into());
            db.env.insert("POSTGRES_PASSWORD".into(), POSTGRES_PASSWORD.into());
            db.ports.push(PortMapping { host: 5432, container: 5432 });
            db.volumes.insert(DB_VOLUME.into(), "/var/lib/postgresql/data".into());
            vec![db]
        }
        Tier::Backend => {
            let mut redis = base("redis", &app.images.redis);
            redis.ports.push(PortMapping { host: 6379, container: 6379 });
            let mut worker = base("worker", &app.images.worker);
            worker.extra_hosts.insert("redis".into(), peers.backend);
            worker.extra_hosts.insert("db".into(), peers.database);
            vec![redis, worker]
        }
        Tier::Frontend => {
            let mut vote = base("vote", &app.images.vote);
            vote.env.insert("OPTION_A".into(), app.option_a.clone());
            vote.env.insert("OPTION_B".into(), app.option_b.clone());
            vote.ports.push(PortMapping { host: app.ports.vote, container: 80 });
            vote.extra_hosts.insert("redis".into(), peers.backend);
            let mut result = base("result", &app.images.result);
            result.env.insert("OPTION_A".into(), app.option_a.clone());
            result.env.insert("OPTION_B".into(), app.option_b.clone());
            result.ports.push(PortMapping { host: app.ports.result, container: 80 });
            result.extra_hosts.insert("db".into(), peers.database);
            vec![vote, result]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::fixtures::spec;

    fn peers() -> Peers {
        Peers { backend: Some(Ipv4Addr::new(10, 42, 1, 5)), database: Some(Ipv4Addr::new(10, 42, 1, 4)) }
    }

    #[test]
    fn each_tier_gets_its_containers_in_start_order() {
        let names = |t| desired_containers(&spec(), t, peers()).into_iter().map(|c| c.name).collect::<Vec<_>>();
        assert_eq!(names(Tier::Database), ["db"]);
        assert_eq!(names(Tier::Backend), ["redis", "worker"]);
        assert_eq!(names(Tier::Frontend), ["vote", "result"]);
    }

    #[test]
    fn cross_host_names_point_at_the_peer_hosts() {
        let front = desired_containers(&spec(), Tier::Frontend, peers());
        assert_eq!(front[0].extra_hosts["redis"], Some(Ipv4Addr::new(10, 42, 1, 5)));
        assert_eq!(front[1].extra_hosts["db"], Some(Ipv4Addr::new(10, 42, 1, 4)));
        let worker = &desired_containers(&spec(), Tier::Backend, peers())[1];
        assert_eq!(worker.extra_hosts.len(), 2);
    }

    #[test]
    fn the_hash_is_stable_and_moves_with_the_config() {
        let a = desired_containers(&spec(), Tier::Frontend, peers());
        let b = desired_containers(&spec(), Tier::Frontend, peers());
        assert_eq!(a[0].config_hash(), b[0].config_hash());
        assert_eq!(a[0].config_hash().map(|h| h.len()), Some(16));
        let mut s = spec();
        s.app.option_a = "Tea".into();
        let c = desired_containers(&s, Tier::Frontend, peers());
        assert_ne!(a[0].config_hash(), c[0].config_hash());
    }

    #[test]
    fn the_hash_is_unknown_until_peer_ips_are() {
        let c = desired_containers(&spec(), Tier::Frontend, Peers::default());
        assert_eq!(c[0].config_hash(), None);
        let db = desired_containers(&spec(), Tier::Database, Peers::default());
        assert!(db[0].config_hash().is_some(), "postgres needs no peer");
    }

    #[test]
    fn upstream_defaults_are_deployed() {
        let s = spec();
        let db = &desired_containers(&s, Tier::Database, peers())[0];
        assert_eq!(db.image, "postgres:15-alpine");
        assert_eq!(db.ports, [PortMapping { host: 5432, container: 5432 }]);
        let vote = &desired_containers(&s, Tier::Frontend, peers())[0];
        assert_eq!(vote.image, "dockersamples/examplevotingapp_vote");
        assert_eq!(vote.env["OPTION_A"], "Cats");
        assert_eq!(vote.ports, [PortMapping { host: 80, container: 80 }]);
    }
}
