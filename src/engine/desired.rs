//! Desired state: from the spec (and the hosts' IPs) to the containers each
//! host must run.

use std::collections::BTreeMap;

use crate::api::{Tier, UpdateStrategy, VotingStackSpec};
use crate::model::desired::{
    LogRotation, DB_CONTAINER, POSTGRES_PASSWORD, POSTGRES_PORT, POSTGRES_USER, PROXY_CONTAINER, REDIS_CONTAINER,
    REDIS_PORT, REDIS_VOLUME, RESULT_CONTAINER, VOTE_CONTAINER, WORKER_CONTAINER,
};

use super::proxy;
use crate::model::{DataVolume, DesiredContainer, Peers, PortMapping};

/// The containers of one tier, in start order, each pinned to the digest
/// its image resolved to when the stack first ran it (`status.images`).
pub fn pinned_containers(
    spec: &VotingStackSpec,
    tier: Tier,
    peers: Peers,
    pins: &BTreeMap<String, String>,
) -> Vec<DesiredContainer> {
    let mut containers = desired_containers(spec, tier, peers);
    for c in &mut containers {
        c.pinned_digest = pins.get(&c.image).cloned();
    }
    containers
}

/// Puts postgres's data on the stack's EBS data volume `volume_id`.
pub fn on_data_volume(containers: &mut [DesiredContainer], volume_id: &str, may_format: bool) {
    for c in containers.iter_mut().filter(|c| c.name == DB_CONTAINER) {
        c.data_volume = Some(DataVolume { may_format, ..DataVolume::for_postgres(volume_id) });
    }
}

/// Whether the host may format the data volume when it reads as blank:
/// not once the volume was tagged formatted, and never a volume restored
/// from a snapshot (`spec.database.restoreFromSnapshot`: it holds the data).
pub fn may_format(spec: &VotingStackSpec, status: &crate::api::VotingStackStatus) -> bool {
    spec.database.restore_from_snapshot.is_none() && status.data_volume.as_ref().is_none_or(|v| v.formatted.is_none())
}

/// Records the digests the stack's images run as, for references not yet
/// pinned, and forgets references the spec no longer names. A reference
/// keeps its first digest: a host pulling it later gets the same one.
pub fn record_pins(spec: &VotingStackSpec, pins: &mut BTreeMap<String, String>, running: &[(String, String)]) {
    let images = &spec.app.images;
    let named = [&images.vote, &images.result, &images.worker, &images.redis, &images.postgres, &images.proxy];
    pins.retain(|image, _| named.contains(&image));
    for (image, digest) in running {
        if named.contains(&image) && !image.contains('@') {
            pins.entry(image.clone()).or_insert_with(|| digest.clone());
        }
    }
}

/// The containers of one tier, in start order.
pub fn desired_containers(spec: &VotingStackSpec, tier: Tier, peers: Peers) -> Vec<DesiredContainer> {
    let app = &spec.app;
    let base = |name: &str, image: &str| DesiredContainer {
        name: name.to_string(),
        role: name.to_string(),
        tier,
        image: image.to_string(),
        env: BTreeMap::new(),
        ports: Vec::new(),
        extra_hosts: BTreeMap::new(),
        command: Vec::new(),
        volumes: BTreeMap::new(),
        data_volume: None,
        health_command: None,
        logs: LogRotation::default(),
        pinned_digest: None,
        held: None,
        rolled: false,
        unhashed_env: BTreeMap::new(),
    };
    match tier {
        Tier::Database => {
            let mut db = base(DB_CONTAINER, &app.images.postgres);
            db.env.insert("POSTGRES_USER".into(), POSTGRES_USER.into());
            db.env.insert("POSTGRES_PASSWORD".into(), POSTGRES_PASSWORD.into());
            db.ports.push(PortMapping { host: POSTGRES_PORT, container: POSTGRES_PORT });
            db.health_command = Some(format!("psql -U {POSTGRES_USER} -tAc 'SELECT 1'"));
            vec![db]
        }
        Tier::Backend => {
            let mut redis = base(REDIS_CONTAINER, &app.images.redis);
            redis.ports.push(PortMapping { host: REDIS_PORT, container: REDIS_PORT });
            redis.health_command = Some("[ \"$(redis-cli ping)\" = PONG ]".into());
            // Queued votes survive a re-created or restarted redis.
            redis.command = ["--appendonly", "yes"].map(String::from).to_vec();
            redis.volumes.insert(REDIS_VOLUME.into(), "/data".into());
            let mut worker = base(WORKER_CONTAINER, &app.images.worker);
            worker.extra_hosts.insert(REDIS_CONTAINER.into(), peers.backend);
            worker.extra_hosts.insert(DB_CONTAINER.into(), peers.database);
            vec![redis, worker]
        }
        Tier::Frontend => {
            let mut vote = base(VOTE_CONTAINER, &app.images.vote);
            vote.env.insert("OPTION_A".into(), app.option_a.clone());
            vote.env.insert("OPTION_B".into(), app.option_b.clone());
            vote.extra_hosts.insert(REDIS_CONTAINER.into(), peers.backend);
            let mut result = base(RESULT_CONTAINER, &app.images.result);
            result.env.insert("OPTION_A".into(), app.option_a.clone());
            result.env.insert("OPTION_B".into(), app.option_b.clone());
            result.extra_hosts.insert(DB_CONTAINER.into(), peers.database);
            if app.update_strategy == UpdateStrategy::Recreate {
                vote.ports.push(PortMapping { host: app.ports.vote, container: proxy::APP_PORT });
                result.ports.push(PortMapping { host: app.ports.result, container: proxy::APP_PORT });
                return vec![vote, result];
            }
            // ZeroDowntime: vote and result are named after their hash and
            // reached through the proxy, which alone publishes the ports.
            for c in [&mut vote, &mut result] {
                c.rolled = true;
                c.name = c.rolled_name().unwrap_or_else(|| c.role.clone());
            }
            let mut front = base(PROXY_CONTAINER, &app.images.proxy);
            front.ports.push(PortMapping { host: app.ports.vote, container: proxy::VOTE_LISTEN });
            front.ports.push(PortMapping { host: app.ports.result, container: proxy::RESULT_LISTEN });
            front.command = proxy::start_command();
            front.env.insert(proxy::CONF_ENV.into(), proxy::nginx_conf());
            front.health_command = Some(proxy::health_command());
            front.unhashed_env.insert(proxy::VOTE_TARGET_ENV.into(), proxy::target_conf(&vote.role, &vote.name));
            front.unhashed_env.insert(proxy::RESULT_TARGET_ENV.into(), proxy::target_conf(&result.role, &result.name));
            vec![vote, result, front]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::spec;
    use std::net::Ipv4Addr;

    fn peers() -> Peers {
        Peers { backend: Some(Ipv4Addr::new(10, 42, 1, 5)), database: Some(Ipv4Addr::new(10, 42, 1, 4)) }
    }

    #[test]
    fn each_tier_gets_its_containers_in_start_order() {
        let names = |t| desired_containers(&spec(), t, peers()).into_iter().map(|c| c.name).collect::<Vec<_>>();
        assert_eq!(names(Tier::Database), ["db"]);
        assert_eq!(names(Tier::Backend), ["redis", "worker"]);
        let front = names(Tier::Frontend);
        assert!(front[0].starts_with("vote-") && front[1].starts_with("result-"), "{front:?}");
        assert_eq!(front[2], "proxy");
        let recreate = desired_containers(&crate::fixtures::recreate_spec(), Tier::Frontend, peers());
        assert_eq!(recreate.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["vote", "result"]);
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
        let mut unrotated = a[0].clone();
        unrotated.logs.max_files = 1;
        assert_ne!(a[0].config_hash(), unrotated.config_hash(), "log rotation is part of the hash");
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
        let front = desired_containers(&s, Tier::Frontend, peers());
        let vote = &front[0];
        assert_eq!(vote.image, "dockersamples/examplevotingapp_vote");
        assert_eq!(vote.env["OPTION_A"], "Cats");
        assert!(vote.ports.is_empty(), "behind the proxy");
        let proxy = &front[2];
        assert_eq!(proxy.image, "nginx:1.27-alpine");
        let published = [PortMapping { host: 80, container: 80 }, PortMapping { host: 81, container: 81 }];
        assert_eq!(proxy.ports, published);
        assert!(proxy.unhashed_env["VS_PROXY_VOTE"].contains(&vote.name), "{:?}", proxy.unhashed_env);
        let recreate = &desired_containers(&crate::fixtures::recreate_spec(), Tier::Frontend, peers())[0];
        assert_eq!(recreate.ports, [PortMapping { host: 80, container: 80 }]);
    }

    #[test]
    fn repositories_drop_the_tag_or_digest_but_keep_the_registry_port() {
        use crate::model::desired::repository_of;
        assert_eq!(repository_of("registry.local:5052/vote:local"), "registry.local:5052/vote");
        assert_eq!(repository_of("registry.local:5052/vote"), "registry.local:5052/vote");
        assert_eq!(repository_of("postgres:15@sha256:ab"), "postgres:15");
        assert_eq!(repository_of("dockersamples/examplevotingapp_vote"), "dockersamples/examplevotingapp_vote");
    }

    #[test]
    fn a_pinned_container_runs_its_digest_and_keeps_its_hash() {
        let pins = BTreeMap::from([(spec().app.images.postgres.clone(), "sha256:abc".to_string())]);
        let plain = &desired_containers(&spec(), Tier::Database, peers())[0];
        let pinned = &pinned_containers(&spec(), Tier::Database, peers(), &pins)[0];
        assert_eq!(pinned.config_hash(), plain.config_hash(), "a pin alone re-creates nothing");
        assert!(pinned.run_reference().ends_with("@sha256:abc"), "{}", pinned.run_reference());
        assert_eq!(plain.run_reference(), plain.image);
    }

    #[test]
    fn pins_keep_the_first_digest_and_forget_references_no_longer_named() {
        let s = spec();
        let redis = s.app.images.redis.clone();
        let mut pins = BTreeMap::from([("gone:1".to_string(), "sha256:old".to_string())]);
        record_pins(&s, &mut pins, &[(redis.clone(), "sha256:first".into())]);
        record_pins(&s, &mut pins, &[(redis.clone(), "sha256:second".into())]);
        assert_eq!(pins, BTreeMap::from([(redis, "sha256:first".to_string())]));
        record_pins(&s, &mut pins, &[("other@sha256:x".into(), "sha256:x".into())]);
        assert_eq!(pins.len(), 1, "only references the spec names, and never a digest reference");
    }
}
