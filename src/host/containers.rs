//! From the model to the Docker API and back, with no I/O: what a desired
//! container looks like as a create request, and what a listed container
//! means to the operator (its config hash, state and health).

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, ContainerSummary, ContainerSummaryStateEnum, HealthConfig, HostConfig, HostConfigLogConfig,
    Mount, MountType, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};

use crate::api::{CONFIG_HASH_LABEL, IMAGE_DIGEST_LABEL, STACK_LABEL, TIER_LABEL};
use crate::model::desired::HOST_NETWORK;
use crate::model::{DesiredContainer, ObservedContainer};

/// How often Docker runs a container's health command, and how long one run may take.
const HEALTH_INTERVAL_NS: i64 = 2_000_000_000;
const HEALTH_TIMEOUT_NS: i64 = 5_000_000_000;
/// Failed runs in a row before a container counts as unhealthy.
const HEALTH_RETRIES: i64 = 3;

/// Why a desired container cannot be sent to Docker.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidContainer(pub String);

/// Refuses names Docker would refuse, before any request.
pub fn check(c: &DesiredContainer) -> Result<(), InvalidContainer> {
    let name_ok = c.name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && c.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !name_ok {
        return Err(InvalidContainer(format!("{:?} is not a valid container name", c.name)));
    }
    if let Some(k) = c.env.keys().find(|k| k.is_empty() || k.contains(['=', '\0'])) {
        return Err(InvalidContainer(format!("container {}: env name {k:?} is not a valid variable name", c.name)));
    }
    Ok(())
}

/// The labels every container of the stack carries, with the digest of
/// the image it is created from when known.
pub fn labels(stack: &str, c: &DesiredContainer, digest: Option<&str>) -> HashMap<String, String> {
    let mut l = HashMap::from([
        (STACK_LABEL.to_string(), stack.to_string()),
        (TIER_LABEL.to_string(), c.tier.as_str().to_string()),
    ]);
    if let Some(hash) = c.config_hash() {
        l.insert(CONFIG_HASH_LABEL.to_string(), hash);
    }
    if let Some(d) = digest {
        l.insert(IMAGE_DIGEST_LABEL.to_string(), d.to_string());
    }
    l
}

/// The create request of a container: restarted unless stopped, on the
/// stack's network, its env in the request body (never in a command line).
pub fn create_body(stack: &str, c: &DesiredContainer, digest: Option<&str>) -> ContainerCreateBody {
    let port_key = |p: u16| format!("{p}/tcp");
    let port_bindings = c
        .ports
        .iter()
        .map(|p| {
            let binding = PortBinding { host_ip: None, host_port: Some(p.host.to_string()) };
            (port_key(p.container), Some(vec![binding]))
        })
        .collect::<HashMap<_, _>>();
    let extra_hosts: Vec<String> =
        c.extra_hosts.iter().filter_map(|(name, ip)| ip.map(|ip| format!("{name}:{ip}"))).collect();
    let binds: Vec<String> = c.volumes.iter().map(|(volume, path)| format!("{volume}:{path}")).collect();
    // A bind mount (not a bind): Docker refuses to start the container
    // when the directory is missing (the data volume is not mounted),
    // rather than creating an empty one on the root disk.
    let mounts = c.data_volume.as_ref().map(|v| {
        vec![Mount {
            target: Some(v.container_path.clone()),
            source: Some(v.source()),
            typ: Some(MountType::BIND),
            ..Default::default()
        }]
    });
    ContainerCreateBody {
        image: Some(c.run_reference()),
        env: Some(c.env.iter().chain(&c.unhashed_env).map(|(k, v)| format!("{k}={v}")).collect()),
        cmd: (!c.command.is_empty()).then(|| c.command.clone()),
        labels: Some(labels(stack, c, digest)),
        exposed_ports: Some(c.ports.iter().map(|p| port_key(p.container)).collect()),
        healthcheck: c.health_command.as_ref().map(|cmd| HealthConfig {
            test: Some(vec!["CMD-SHELL".into(), cmd.clone()]),
            interval: Some(HEALTH_INTERVAL_NS),
            timeout: Some(HEALTH_TIMEOUT_NS),
            retries: Some(HEALTH_RETRIES),
            ..Default::default()
        }),
        host_config: Some(HostConfig {
            port_bindings: Some(port_bindings),
            extra_hosts: Some(extra_hosts),
            binds: Some(binds),
            mounts,
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            network_mode: Some(HOST_NETWORK.to_string()),
            log_config: Some(HostConfigLogConfig {
                typ: Some(c.logs.driver.clone()),
                config: Some(HashMap::from([
                    ("max-size".to_string(), c.logs.max_size.clone()),
                    ("max-file".to_string(), c.logs.max_files.to_string()),
                ])),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A listed container as Docker shows it, with its health when it has a
/// health check; None when it does not carry exactly `stack`'s label.
pub fn observed(stack: &str, s: &ContainerSummary) -> Option<(ObservedContainer, Option<Result<(), String>>)> {
    let labels = s.labels.as_ref()?;
    if labels.get(STACK_LABEL).map(String::as_str) != Some(stack) {
        return None;
    }
    let name = s.names.as_ref()?.first()?.trim_start_matches('/').to_string();
    let state = match s.state {
        Some(ContainerSummaryStateEnum::EMPTY) | None => "unknown".to_string(),
        Some(state) => state.to_string(),
    };
    let status = s.status.as_deref().unwrap_or_default();
    let running = state == "running" || state == "restarting";
    let container = ObservedContainer {
        name,
        image: s.image.clone().unwrap_or_default(),
        config_hash: labels.get(CONFIG_HASH_LABEL).cloned(),
        image_digest: labels.get(IMAGE_DIGEST_LABEL).cloned(),
        exit_code: if running { None } else { exit_code(status) },
        state,
    };
    Some((container, health(status)))
}

/// The health Docker shows in a container's status line
/// (`Up 2 minutes (healthy)`); None for a container without a health check.
pub fn health(status: &str) -> Option<Result<(), String>> {
    if status.contains("(healthy)") {
        Some(Ok(()))
    } else if status.contains("(health: starting)") {
        Some(Err("its health check has not passed yet".into()))
    } else if status.contains("(unhealthy)") {
        Some(Err(format!("its health check fails ({HEALTH_RETRIES} times in a row)")))
    } else {
        None
    }
}

/// The exit code in a status line such as `Exited (137) 5 seconds ago`.
fn exit_code(status: &str) -> Option<i64> {
    let rest = status.strip_prefix("Exited (")?;
    rest.split(')').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Tier;
    use crate::engine::desired::desired_containers;
    use crate::fixtures::spec;
    use crate::model::Peers;
    use std::net::Ipv4Addr;

    fn peers() -> Peers {
        Peers { backend: Some(Ipv4Addr::new(10, 42, 1, 5)), database: Some(Ipv4Addr::new(10, 42, 1, 4)) }
    }

    #[test]
    fn a_create_request_carries_env_ports_hosts_labels_and_restart_policy() {
        let mut s = crate::fixtures::recreate_spec();
        s.app.option_a = "it's $(rm -rf /)".into();
        let vote = desired_containers(&s, Tier::Frontend, peers()).remove(0);
        let body = create_body("default/demo", &vote, None);
        let env = body.env.unwrap();
        assert!(env.contains(&"OPTION_A=it's $(rm -rf /)".to_string()), "{env:?}");
        let labels = body.labels.unwrap();
        assert_eq!(labels[STACK_LABEL], "default/demo");
        assert_eq!(labels[TIER_LABEL], "frontend");
        assert_eq!(labels.get(CONFIG_HASH_LABEL), vote.config_hash().as_ref());
        let host = body.host_config.unwrap();
        assert_eq!(host.extra_hosts.unwrap(), ["redis:10.42.1.5"]);
        assert_eq!(host.port_bindings.unwrap()["80/tcp"].as_ref().unwrap()[0].host_port.as_deref(), Some("80"));
        assert_eq!(host.restart_policy.unwrap().name, Some(RestartPolicyNameEnum::UNLESS_STOPPED));
        assert_eq!(host.network_mode.as_deref(), Some(HOST_NETWORK));
        assert!(body.healthcheck.is_none());
    }

    #[test]
    fn every_container_s_logs_are_rotated() {
        for tier in Tier::ALL {
            for c in desired_containers(&spec(), tier, peers()) {
                let logs = create_body("s", &c, None).host_config.unwrap().log_config.unwrap();
                assert_eq!(logs.typ.as_deref(), Some("json-file"), "{}", c.name);
                let config = logs.config.unwrap();
                assert_eq!(config.get("max-size").map(String::as_str), Some("10m"), "{}", c.name);
                assert_eq!(config.get("max-file").map(String::as_str), Some("3"), "{}", c.name);
            }
        }
    }

    #[test]
    fn postgres_keeps_its_data_on_the_data_volume_and_redis_and_postgres_have_health_checks() {
        let mut db = desired_containers(&spec(), Tier::Database, peers());
        crate::engine::desired::on_data_volume(&mut db, "vol-0abc", true);
        let body = create_body("s", &db[0], None);
        let host = body.host_config.unwrap();
        assert_eq!(host.binds.unwrap(), Vec::<String>::new());
        let mount = &host.mounts.unwrap()[0];
        assert_eq!(mount.source.as_deref(), Some("/var/lib/votingstack/data/pgdata"));
        assert_eq!(mount.target.as_deref(), Some("/var/lib/postgresql/data"));
        assert_eq!(mount.typ, Some(MountType::BIND));
        let test = body.healthcheck.unwrap().test.unwrap();
        assert_eq!(test, ["CMD-SHELL", "psql -U postgres -tAc 'SELECT 1'"]);
        let redis = desired_containers(&spec(), Tier::Backend, peers()).remove(0);
        assert!(create_body("s", &redis, None).healthcheck.is_some());
    }

    #[test]
    fn listed_containers_are_read_with_health_and_exit_code() {
        let summary = |name: &str, stack: &str, state, status: &str| ContainerSummary {
            names: Some(vec![format!("/{name}")]),
            image: Some("img".into()),
            labels: Some(HashMap::from([
                (STACK_LABEL.to_string(), stack.to_string()),
                (CONFIG_HASH_LABEL.to_string(), "abc".to_string()),
            ])),
            state: Some(state),
            status: Some(status.into()),
            ..Default::default()
        };
        let (db, health) = observed(
            "ns/demo",
            &summary("db", "ns/demo", ContainerSummaryStateEnum::RUNNING, "Up 2 minutes (healthy)"),
        )
        .unwrap();
        assert_eq!((db.name.as_str(), db.state.as_str(), db.config_hash.as_deref()), ("db", "running", Some("abc")));
        assert_eq!(health, Some(Ok(())));
        let (x, _) = observed(
            "ns/demo",
            &summary("x", "ns/demo", ContainerSummaryStateEnum::EXITED, "Exited (137) 5 seconds ago"),
        )
        .unwrap();
        assert_eq!(x.exit_code, Some(137));
        assert!(observed("ns/demo", &summary("y", "ns/demo-2", ContainerSummaryStateEnum::RUNNING, "Up")).is_none());
    }

    #[test]
    fn health_is_read_from_the_status_line() {
        assert_eq!(health("Up 3 seconds (health: starting)").map(|h| h.is_ok()), Some(false));
        assert_eq!(health("Up 3 minutes (unhealthy)").map(|h| h.is_ok()), Some(false));
        assert_eq!(health("Up 3 minutes"), None);
    }

    #[test]
    fn names_docker_would_refuse_are_refused_first() {
        let mut c = desired_containers(&spec(), Tier::Database, peers()).remove(0);
        assert!(check(&c).is_ok());
        c.env.insert("A=B".into(), "x".into());
        assert!(check(&c).is_err());
        c.env.remove("A=B");
        c.name = "db; rm -rf /".into();
        assert!(check(&c).is_err());
    }
}
