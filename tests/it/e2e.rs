//! End to end in the local world with the real `votingstack` binary and the
//! CLI (apply --wait/--watch, destroy). The controller binary runs against the
//! world's real API server in `kube.rs`. Needs `scripts/world up`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::Filter;
use serde_json::Value;
use votingstack::api::Tier;

use crate::world::World;

const BIN: &str = env!("CARGO_BIN_EXE_votingstack");

/// A stack of the local world driven through the CLI, in its own VPC.
struct Stack {
    name: String,
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
    world: World,
}

/// The world's environment file, plus the allowance for the EC2 endpoint
/// examples/local.yaml names (not an AWS endpoint, so the binary refuses it
/// unless allowed).
pub(crate) fn world_env() -> HashMap<String, String> {
    let dir = std::env::var_os("VS_WORLD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".world"));
    let text = std::fs::read_to_string(dir.join("env")).expect("the e2e tests need `scripts/world up`");
    let mut env: HashMap<String, String> =
        text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect();
    env.insert("VOTINGSTACK_ALLOW_ENDPOINTS".into(), local_example_endpoint());
    env
}

/// `spec.aws.endpoint` of examples/local.yaml: the world's EC2 endpoint.
fn local_example_endpoint() -> String {
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/local.yaml")).unwrap();
    let stack: Value = serde_yaml::from_str(example.split("\n---\n").next().unwrap_or_default()).unwrap();
    stack["spec"]["aws"]["endpoint"].as_str().expect("examples/local.yaml names an endpoint").to_string()
}

impl Stack {
    /// Writes a manifest like examples/local.yaml named `name` in 10.<octet>.0.0/16.
    fn new(name: &str, octet: u8) -> Stack {
        let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/local.yaml")).unwrap();
        let manifest = example
            .replace("name: local\n", &format!("name: {name}\n"))
            .replace("name: local-ssh", &format!("name: {name}-ssh"))
            .replace("10.42.", &format!("10.{octet}."));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stack.yaml"), manifest).unwrap();
        Stack { name: name.into(), dir, env: world_env(), world: World::load() }
    }

    /// Like [`Stack::new`], with `spec.database.restoreFromSnapshot` set.
    fn restoring(name: &str, octet: u8, snapshot: &str) -> Stack {
        let stack = Stack::new(name, octet);
        let path = stack.dir.path().join("stack.yaml");
        let manifest = std::fs::read_to_string(&path).unwrap();
        assert!(manifest.contains("\nspec:\n") && !manifest.contains("\n  database:"), "{manifest}");
        let manifest =
            manifest.replacen("\nspec:\n", &format!("\nspec:\n  database:\n    restoreFromSnapshot: {snapshot}\n"), 1);
        std::fs::write(&path, manifest).unwrap();
        stack
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .arg("-f")
            .arg(self.dir.path().join("stack.yaml"))
            .arg("--state")
            .arg(self.dir.path().join("state.json"))
            .envs(&self.env)
            .env("RUST_LOG", "warn");
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.command(args).output().expect("votingstack runs");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "votingstack {args:?} failed:\n{text}");
        text
    }

    fn apply_wait(&self) -> String {
        self.run(&["apply", "--wait", "--timeout-seconds", "400"])
    }

    /// `apply --watch` in the background, stopped when the guard drops.
    fn watch_log(&self) -> LogOnPanic {
        LogOnPanic(self.dir.path().join("watch.log"))
    }

    fn watch(&self) -> ChildGuard {
        let log = std::fs::File::create(self.dir.path().join("watch.log")).unwrap();
        let child = self
            .command(&["apply", "--watch", "--resync-seconds", "3"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("watcher starts");
        ChildGuard(child)
    }

    fn status(&self) -> Value {
        let text = std::fs::read_to_string(self.dir.path().join("state.json")).expect("state written");
        serde_json::from_str::<Value>(&text).unwrap()["status"].clone()
    }

    fn tier(&self, tier: Tier) -> (String, Ipv4Addr) {
        let t = &self.status()["tiers"][tier.as_str()];
        (t["instanceId"].as_str().unwrap().to_string(), t["privateIp"].as_str().unwrap().parse().unwrap())
    }

    /// Runs a shell command on a tier's host container.
    fn on_host(&self, tier: Tier, script: &str) -> (bool, String) {
        let (id, _) = self.tier(tier);
        let out = Command::new("docker").args(["exec", &format!("vsw-{id}"), "sh", "-c", script]).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn tag(&self) -> String {
        format!("default/{}", self.name)
    }

    /// The stack's VPCs, per moto.
    async fn vpcs(&self) -> usize {
        let f = Filter::builder().name("tag:votingstack.dev/stack").values(self.tag()).build();
        self.world.ec2.describe_vpcs().filters(f).send().await.unwrap().vpcs().len()
    }

    /// Sets `spec.instances.ami` in the stack's manifest.
    fn set_ami(&self, ami: &str) {
        let path = self.dir.path().join("stack.yaml");
        let manifest = std::fs::read_to_string(&path).unwrap();
        assert!(manifest.contains("\n    instanceType: t3.micro\n"), "{manifest}");
        let manifest = manifest.replacen(
            "\n    instanceType: t3.micro\n",
            &format!("\n    ami: {ami}\n    instanceType: t3.micro\n"),
            1,
        );
        std::fs::write(&path, manifest).unwrap();
    }

    /// Live instances carrying the stack's tag, per moto.
    async fn live_instances(&self) -> Vec<String> {
        self.live().await.iter().filter_map(|i| i.instance_id().map(String::from)).collect()
    }

    /// The images of the stack's live instances, per moto.
    async fn live_images(&self) -> Vec<String> {
        self.live().await.iter().filter_map(|i| i.image_id().map(String::from)).collect()
    }

    /// The stack's instances that are neither shutting down nor terminated, per moto.
    async fn live(&self) -> Vec<aws_sdk_ec2::types::Instance> {
        let out = self
            .world
            .ec2
            .describe_instances()
            .filters(Filter::builder().name("tag:votingstack.dev/stack").values(self.tag()).build())
            .filters(
                Filter::builder()
                    .name("instance-state-name")
                    .values("pending")
                    .values("running")
                    .values("stopping")
                    .values("stopped")
                    .build(),
            )
            .send()
            .await
            .unwrap();
        out.reservations().iter().flat_map(|r| r.instances()).cloned().collect()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Best effort, also after a failed assertion.
        let _ = self.command(&["destroy"]).output();
    }
}

/// Prints a log file when the test fails, so a failure shows what the binary saw.
pub(crate) struct LogOnPanic(pub(crate) PathBuf);

impl Drop for LogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.0).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("--- last lines of {}:", self.0.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

pub(crate) struct ChildGuard(pub(crate) Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `check` every 250 ms for at most `limit`; returns the time it took.
pub(crate) async fn within<F: FnMut() -> bool>(limit: Duration, what: &str, mut check: F) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what} did not happen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    start.elapsed()
}

/// A minimal HTTP/1.0 request; returns (status, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {}\r\n", addr.ip());
    if let Some(c) = cookie {
        req.push_str(&format!("Cookie: voter_id={c}\r\n"));
    }
    if let Some(f) = form {
        req.push_str(&format!("Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n", f.len()));
    }
    req.push_str("\r\n");
    if let Some(f) = form {
        req.push_str(f);
    }
    s.write_all(req.as_bytes())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}

fn answers_200(addr: SocketAddr) -> bool {
    http(addr, "GET", "/", None, None).is_ok_and(|(c, _)| c == 200)
}

#[tokio::test]
async fn e2e_cli_converges_counts_100_votes_and_destroys_clean() {
    let stack = Stack::new("e2e-votes", 61);
    let out = stack.apply_wait();
    assert!(out.contains("Ready → True (AllTiersReady)"), "{out}");
    assert!(out.contains("Vote URL"), "{out}");
    let status = stack.status();
    assert_eq!(status["phase"], "Ready");
    // examples/local.yaml names no AMI: the world's newest Ubuntu 24.04
    // from Canonical was looked up, kept, and every host launched from it.
    let newest = stack.env["VS_WORLD_AMI"].clone();
    assert_eq!(status["resolvedAmi"]["imageId"], newest.as_str(), "{status:#}");
    assert!(
        status["resolvedAmi"]["name"].as_str().is_some_and(|n| n.contains("ubuntu-noble-24.04-amd64")),
        "{status:#}"
    );
    assert_eq!(stack.live_images().await, vec![newest; 3]);
    // plan after apply: nothing left to do (exit 0, not 2)
    let plan = stack.run(&["plan", "--detailed-exitcode"]);
    assert!(plan.contains("no changes"), "{plan}");
    let (_, front) = stack.tier(Tier::Frontend);
    let vote = SocketAddr::from((front, 80));
    let result = SocketAddr::from((front, 81));

    // From this machine only SSH and the two pages answer; redis, postgres
    // and the private hosts' SSH are closed to it by their security groups.
    let answers = |addr: SocketAddr| TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok();
    for port in [22, 80, 81] {
        assert!(answers(SocketAddr::from((front, port))), "frontend port {port} must answer");
    }
    let (_, backend) = stack.tier(Tier::Backend);
    let (_, database) = stack.tier(Tier::Database);
    for (host, port) in [(backend, 6379), (database, 5432), (backend, 22), (database, 22)] {
        assert!(!answers(SocketAddr::from((host, port))), "{host}:{port} must not answer this machine");
    }

    for i in 0..100 {
        let choice = if i % 3 == 0 { "b" } else { "a" };
        let (code, _) =
            http(vote, "POST", "/", Some(&format!("e2e-voter-{i}")), Some(&format!("vote={choice}"))).unwrap();
        assert_eq!(code, 200, "vote {i}");
    }
    let count = "docker exec db psql -U postgres -tAc \"SELECT count(*) FROM votes WHERE id LIKE 'e2e-voter-%'\"";
    within(Duration::from_secs(30), "100 votes in postgres", || stack.on_host(Tier::Database, count).1 == "100").await;
    let (b_votes, a_votes) = (34, 66);
    within(Duration::from_secs(10), "the result page to count them", || {
        http(result, "GET", "/api/results", None, None).is_ok_and(|(_, body)| {
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            v["a"].as_i64().unwrap_or(0) >= a_votes && v["b"].as_i64() == Some(b_votes)
        })
    })
    .await;

    let ids: Vec<String> = Tier::ALL.iter().map(|t| stack.tier(*t).0).collect();
    let out = stack.run(&["destroy"]);
    assert!(out.contains("destroyed"), "{out}");
    assert!(stack.live_instances().await.is_empty(), "instances left in moto");
    let vpcs = stack
        .world
        .ec2
        .describe_vpcs()
        .filters(Filter::builder().name("tag:votingstack.dev/stack").values(stack.tag()).build())
        .send()
        .await
        .unwrap();
    assert!(vpcs.vpcs().is_empty(), "VPC left in moto");
    within(Duration::from_secs(90), "the world's hosts to go", || {
        ids.iter().all(|id| {
            let out =
                Command::new("docker").args(["ps", "-aq", "--filter", &format!("name=vsw-{id}")]).output().unwrap();
            out.stdout.is_empty()
        })
    })
    .await;
}

#[tokio::test]
async fn e2e_host_keys_are_known_before_first_contact_and_a_changed_one_is_refused() {
    let stack = Stack::new("e2e-hostkey", 65);
    stack.apply_wait();
    let pinned = |s: &Stack| s.status()["tiers"]["frontend"]["hostKeyFingerprint"].as_str().unwrap_or("").to_string();
    let before = pinned(&stack);
    // The key pinned is the one the operator put in the user data: the host
    // has that key and no other.
    let (ok, served) =
        stack.on_host(Tier::Frontend, "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2");
    assert!(ok, "{served}");
    assert_eq!(served, before);
    let (_, keys) = stack.on_host(Tier::Frontend, "ls /etc/ssh/ssh_host_*_key | wc -l");
    assert_eq!(keys, "1");
    let containers = "docker ps -aq --no-trunc | sort";
    let (_, ids_before) = stack.on_host(Tier::Frontend, containers);

    // Right after first contact, the host's key is replaced (sshd re-reads it on HUP).
    let (ok, out) = stack.on_host(
        Tier::Frontend,
        "rm -f /etc/ssh/ssh_host_ed25519_key* && ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key \
         && kill -HUP 1",
    );
    assert!(ok, "{out}");
    let (_, new_key) =
        stack.on_host(Tier::Frontend, "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2");
    assert_ne!(new_key, before);
    within(Duration::from_secs(30), "sshd to serve the new key", || {
        let (_, scanned) = stack
            .on_host(Tier::Frontend, "ssh-keyscan -t ed25519 127.0.0.1 2>/dev/null | ssh-keygen -lf - | cut -d' ' -f2");
        scanned == new_key
    })
    .await;

    let out = stack.command(&["apply"]).output().expect("votingstack runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let status = stack.status();
    let frontend = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "FrontendReady"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (frontend["status"].as_str(), frontend["reason"].as_str()),
        (Some("False"), Some("HostKeyMismatch")),
        "{text}"
    );
    assert_eq!(pinned(&stack), before, "the pin is not replaced");
    let (_, ids_after) = stack.on_host(Tier::Frontend, containers);
    assert_eq!(ids_after, ids_before, "nothing was touched on the host");
}

#[tokio::test]
async fn e2e_watch_repairs_containers_docker_and_instances() {
    let stack = Stack::new("e2e-drift", 62);
    stack.apply_wait();
    let _watch = stack.watch();
    let log = stack.watch_log();
    let (_, front) = stack.tier(Tier::Frontend);
    let vote = SocketAddr::from((front, 80));
    // The watcher's first pass has run (and started its hosts' event streams).
    within(Duration::from_secs(60), "the watcher's first pass", || {
        std::fs::read_to_string(&log.0).is_ok_and(|t| t.contains("phase Ready"))
    })
    .await;

    // A removed container only comes back through the operator.
    // (vote runs as vote-<hash> behind the proxy, the default strategy)
    let (removed, _) = stack.on_host(Tier::Frontend, "docker rm -f $(docker ps -q --filter name=^vote-) | grep -q .");
    assert!(removed, "no vote container to remove");
    let took = within(Duration::from_secs(10), "vote to be re-created", || answers_200(vote)).await;
    eprintln!("vote re-created and answering after {took:?}");

    // A stopped Docker engine on the backend is started again.
    let (ok, _) =
        stack.on_host(Tier::Backend, "sudo service docker stop >/dev/null 2>&1; ! docker info >/dev/null 2>&1");
    assert!(ok, "docker did not stop");
    within(Duration::from_secs(60), "docker and redis back on the backend", || {
        stack.on_host(Tier::Backend, "docker exec redis redis-cli ping").1 == "PONG"
    })
    .await;

    // A terminated database instance is replaced and redeployed.
    let (old_db, _) = stack.tier(Tier::Database);
    stack.world.ec2.terminate_instances().instance_ids(&old_db).send().await.unwrap();
    within(Duration::from_secs(180), "a new database instance and Ready", || {
        let s = stack.status();
        s["phase"] == "Ready" && s["tiers"]["database"]["instanceId"].as_str().is_some_and(|id| id != old_db)
    })
    .await;
    let (new_db, _) = stack.tier(Tier::Database);
    assert_eq!(stack.status()["tiers"]["database"]["replacements"], 1);
    // Votes flow through the new database.
    let (code, _) = http(vote, "POST", "/", Some("e2e-after-replace"), Some("vote=a")).unwrap();
    assert_eq!(code, 200);
    within(Duration::from_secs(30), "the vote in the new postgres", || {
        stack
            .on_host(
                Tier::Database,
                "docker exec db psql -U postgres -tAc \"SELECT vote FROM votes WHERE id='e2e-after-replace'\"",
            )
            .1
            == "a"
    })
    .await;
    assert_ne!(new_db, old_db);
    assert_eq!(stack.live_instances().await.len(), 3);
}

/// Gives an image already in the world's registry a second tag, through the
/// registry's HTTP API (the manifest is put again under the new tag).
fn retag_in_registry(repository: &str, from: &str, to: &str) {
    let registry = SocketAddr::from(([127, 0, 0, 1], 5052));
    let accept = "application/vnd.docker.distribution.manifest.v2+json";
    let mut s = TcpStream::connect_timeout(&registry, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /v2/{repository}/manifests/{from} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP answer") + 4;
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
    let media = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: ").or_else(|| l.strip_prefix("content-type: ")))
        .unwrap_or(accept)
        .trim()
        .to_string();
    let body = &resp[split..];
    let mut s = TcpStream::connect_timeout(&registry, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "PUT /v2/{repository}/manifests/{to} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: {media}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 201") || answer.starts_with("HTTP/1.1 201"), "{answer}");
}

#[tokio::test]
async fn e2e_redis_recreated_with_votes_queued_loses_none() {
    let stack = Stack::new("e2e-redis", 66);
    stack.apply_wait();
    let (_, front) = stack.tier(Tier::Frontend);
    let vote = SocketAddr::from((front, 80));
    let redis_id = "docker inspect -f '{{.Id}}' redis";
    let (_, redis_before) = stack.on_host(Tier::Backend, redis_id);

    // The worker is stopped: votes queue up in redis.
    let (ok, out) = stack.on_host(Tier::Backend, "docker stop worker >/dev/null");
    assert!(ok, "{out}");
    for i in 0..40 {
        let (code, _) = http(vote, "POST", "/", Some(&format!("queued-{i}")), Some("vote=b")).unwrap();
        assert_eq!(code, 200, "vote {i}");
    }
    within(Duration::from_secs(10), "40 votes queued in redis", || {
        stack.on_host(Tier::Backend, "docker exec redis redis-cli llen votes").1 == "40"
    })
    .await;

    // A new tag for the same redis image: the operator re-creates redis (and
    // starts the worker again only after that).
    retag_in_registry("redis", "local", "e2e-recreate");
    let path = stack.dir.path().join("stack.yaml");
    let manifest = std::fs::read_to_string(&path).unwrap().replace("/redis:local", "/redis:e2e-recreate");
    std::fs::write(&path, manifest).unwrap();
    stack.apply_wait();
    let (_, redis_after) = stack.on_host(Tier::Backend, redis_id);
    assert_ne!(redis_after, redis_before, "redis was re-created");
    let count = "docker exec db psql -U postgres -tAc \"SELECT count(*) FROM votes WHERE id LIKE 'queued-%'\"";
    within(Duration::from_secs(30), "every queued vote in postgres", || stack.on_host(Tier::Database, count).1 == "40")
        .await;
}

#[tokio::test]
async fn e2e_votes_survive_the_database_instance_terminated() {
    let stack = Stack::new("e2e-ebs", 68);
    // EC2 refuses an attachment to a pending instance, across zones, or of
    // a volume in use; the realism layer does too, and counts it.
    let counter =
        |name: &str, action: &str| realism(&stack, "/_realism", None)["counters"][name][action].as_i64().unwrap_or(0);
    let refused_before = counter("refusals", "AttachVolume") + counter("refusals", "DetachVolume");
    let attached_before = counter("calls", "AttachVolume");
    // EBS takes time there as on EC2: creating, attaching, shutting-down.
    let shown = || {
        let v = realism(&stack, "/_realism", None)["counters"]["ebs_shown"].clone();
        let n = |state: &str| v[state].as_i64().unwrap_or(0);
        (n("creating"), n("attaching"), n("shutting-down") + n("releasing"))
    };
    let shown_before = shown();
    let out = stack.apply_wait();
    let volume = stack.status()["dataVolume"]["volumeId"].as_str().expect("a data volume in status").to_string();
    assert!(out.contains(&format!("Data volume {volume} (attached to i-")), "{out}");
    let (db_before, _) = stack.tier(Tier::Database);
    let (ok, out) = stack.on_host(Tier::Database, "findmnt -n -o TARGET --target /var/lib/votingstack/data/pgdata");
    assert!(ok && out == "/var/lib/votingstack/data", "postgres's data directory is on the mounted volume: {out}");

    let (_, front) = stack.tier(Tier::Frontend);
    let vote = SocketAddr::from((front, 80));
    for i in 0..100 {
        let choice = if i % 4 == 0 { "b" } else { "a" };
        let (code, _) = http(vote, "POST", "/", Some(&format!("kept-{i}")), Some(&format!("vote={choice}"))).unwrap();
        assert_eq!(code, 200, "vote {i}");
    }
    let all = "docker exec db psql -U postgres -tAc 'SELECT count(*) FROM votes'";
    within(Duration::from_secs(30), "100 votes in postgres", || stack.on_host(Tier::Database, all).1 == "100").await;

    // The database instance goes; its root disk goes with it.
    stack.world.ec2.terminate_instances().instance_ids(&db_before).send().await.unwrap();
    stack.apply_wait();
    let (db_after, _) = stack.tier(Tier::Database);
    assert_ne!(db_after, db_before, "the database runs on a new instance");
    let status = stack.status();
    assert_eq!(status["dataVolume"]["volumeId"].as_str(), Some(volume.as_str()), "the same volume");
    assert_eq!(status["dataVolume"]["attachedTo"].as_str(), Some(db_after.as_str()));

    // The volume was attached twice (first instance, replacement) and EC2
    // never had to refuse the operator (no stack of these tests attaches
    // early, across zones or twice).
    assert!(counter("calls", "AttachVolume") >= attached_before + 2, "the operator attached the volume twice");
    let refused = counter("refusals", "AttachVolume") + counter("refusals", "DetachVolume");
    assert_eq!(refused, refused_before, "EC2 refused a volume call of the operator");
    // The operator saw the volume creating, the attachment attaching and
    // the terminated instance shutting down while it held the volume, and
    // waited each out rather than being refused.
    let shown_after = shown();
    assert!(shown_after.0 > shown_before.0, "the operator saw the new volume creating");
    assert!(shown_after.1 > shown_before.1, "the operator saw an attachment attaching");
    assert!(shown_after.2 > shown_before.2, "the operator saw the instance shutting down with the volume");

    // Exactly the 100 votes: none lost, and no smoke-test vote among them.
    assert_eq!(stack.on_host(Tier::Database, all).1, "100");
    let result = SocketAddr::from((front, 81));
    within(Duration::from_secs(30), "the result page to count exactly 100", || {
        http(result, "GET", "/api/results", None, None).is_ok_and(|(_, body)| {
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            v["a"].as_i64() == Some(75) && v["b"].as_i64() == Some(25)
        })
    })
    .await;

    // deletionPolicy Delete: the volume goes with the stack.
    stack.run(&["destroy"]);
    let left = stack.world.ec2.describe_volumes().volume_ids(&volume).send().await;
    let gone = match left {
        Err(e) => format!("{e:?}").contains("InvalidVolume.NotFound"),
        Ok(out) => {
            out.volumes().iter().all(|v| v.state().is_some_and(|s| s.as_str() == "deleting" || s.as_str() == "deleted"))
        }
    };
    assert!(gone, "data volume {volume} deleted with the stack");
}

/// Sends `body` (JSON) to the realism layer's control endpoint; returns its answer.
fn realism(stack: &Stack, path: &str, body: Option<&str>) -> Value {
    let endpoint = stack.env.get("AWS_ENDPOINT_URL_EC2").expect("the world's EC2 endpoint");
    let addr: SocketAddr = endpoint.trim_start_matches("http://").trim_end_matches('/').parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = match body {
        Some(b) => format!(
            "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ),
        None => format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"),
    };
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, json) = resp.split_once("\r\n\r\n").unwrap_or_default();
    assert!(head.contains(" 200 "), "{resp}");
    serde_json::from_str(json).unwrap_or_default()
}

/// Turns the faults of one access key off again, also after a failed assertion.
struct FaultsOff<'a>(&'a Stack);

impl Drop for FaultsOff<'_> {
    fn drop(&mut self) {
        let off = r#"{"throttle": {}, "internal": {}, "unavailable": {}, "lost": {}, "drop": {}, "fail_next": {},
                      "consistency_seconds": 0}"#;
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| realism(self.0, "/_realism", Some(off))));
    }
}

/// Resources still carrying `tag`'s stack tag, by kind, per EC2 (through
/// the realism layer, without faults: its key is not the faulty one).
async fn tagged_leftovers(world: &World, tag: &str) -> Vec<String> {
    let by_tag = || Filter::builder().name("tag:votingstack.dev/stack").values(tag).build();
    let ec2 = &world.ec2;
    let mut left = Vec::new();
    let instances = ec2.describe_instances().filters(by_tag()).send().await.unwrap();
    for i in instances.reservations().iter().flat_map(|r| r.instances()) {
        let state = i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default();
        if state != "terminated" {
            left.push(format!("instance {} ({state})", i.instance_id().unwrap_or_default()));
        }
    }
    let vpcs = ec2.describe_vpcs().filters(by_tag()).send().await.unwrap();
    left.extend(vpcs.vpcs().iter().map(|v| format!("vpc {}", v.vpc_id().unwrap_or_default())));
    let subnets = ec2.describe_subnets().filters(by_tag()).send().await.unwrap();
    left.extend(subnets.subnets().iter().map(|v| format!("subnet {}", v.subnet_id().unwrap_or_default())));
    let groups = ec2.describe_security_groups().filters(by_tag()).send().await.unwrap();
    left.extend(groups.security_groups().iter().map(|g| format!("group {}", g.group_id().unwrap_or_default())));
    let igws = ec2.describe_internet_gateways().filters(by_tag()).send().await.unwrap();
    left.extend(
        igws.internet_gateways().iter().map(|g| format!("igw {}", g.internet_gateway_id().unwrap_or_default())),
    );
    let tables = ec2.describe_route_tables().filters(by_tag()).send().await.unwrap();
    left.extend(
        tables.route_tables().iter().map(|t| format!("route table {}", t.route_table_id().unwrap_or_default())),
    );
    // moto answers these two without applying the tag filter: check the tags here.
    let has_tag = |tags: &[aws_sdk_ec2::types::Tag]| {
        tags.iter().any(|t| t.key() == Some("votingstack.dev/stack") && t.value() == Some(tag))
    };
    let nats = ec2.describe_nat_gateways().filter(by_tag()).send().await.unwrap();
    for n in nats.nat_gateways().iter().filter(|n| has_tag(n.tags())) {
        let state = n.state().map(|s| s.as_str().to_string()).unwrap_or_default();
        if state != "deleted" && state != "deleting" {
            left.push(format!("nat gateway {} ({state})", n.nat_gateway_id().unwrap_or_default()));
        }
    }
    let addresses = ec2.describe_addresses().filters(by_tag()).send().await.unwrap();
    left.extend(
        addresses
            .addresses()
            .iter()
            .filter(|a| has_tag(a.tags()))
            .map(|a| format!("address {}", a.allocation_id().unwrap_or_default())),
    );
    let keys = ec2.describe_key_pairs().filters(by_tag()).send().await.unwrap();
    left.extend(keys.key_pairs().iter().map(|k| format!("key pair {}", k.key_name().unwrap_or_default())));
    left
}

#[tokio::test]
async fn e2e_apply_converges_through_throttling_5xx_lost_launches_and_lag_and_destroy_leaves_nothing() {
    let mut stack = Stack::new("e2e-faults", 67);
    // This stack signs with a key of its own: the faults are its alone.
    stack.env.insert("AWS_ACCESS_KEY_ID".into(), "faulty-e2e".into());
    let before = realism(&stack, "/_realism", None);
    let _off = FaultsOff(&stack);
    realism(
        &stack,
        "/_realism",
        Some(
            r#"{"fault_access_keys": ["faulty-e2e"], "seed": 11,
                "consistency_seconds": 2, "consistency_random": true,
                "throttle": {"*": 0.15}, "internal": {"*": 0.05}, "unavailable": {"*": 0.05},
                "fail_next": {"RunInstances": ["lost", "drop", "lost"]}}"#,
        ),
    );
    let out = stack.apply_wait();
    assert!(out.contains("Ready → True (AllTiersReady)"), "{out}");
    let live = stack.live_instances().await;
    assert_eq!(live.len(), 3, "exactly one instance per tier: {live:?}");
    let tiers: std::collections::BTreeSet<Ipv4Addr> = Tier::ALL.iter().map(|t| stack.tier(*t).1).collect();
    assert_eq!(tiers.len(), 3);
    let after = realism(&stack, "/_realism", None);
    // Every queued RunInstances fault reached one of this stack's calls.
    assert_eq!(after["config"]["fail_next"], serde_json::json!({}), "{}", after["config"]);
    let faults = &after["counters"]["faults"];
    let launch_faults = |v: &Value| ["lost", "drop"].iter().filter_map(|f| v["RunInstances"][*f].as_i64()).sum::<i64>();
    let lost = launch_faults(faults) - launch_faults(&before["counters"]["faults"]);
    assert_eq!(lost, 3, "three launch answers were lost or dropped: {faults}");
    let throttled: i64 = faults.as_object().map_or(0, |m| m.values().filter_map(|f| f["throttle"].as_i64()).sum());
    assert!(throttled > 0, "calls were throttled: {faults}");
    let hidden =
        after["counters"]["not_found"].as_object().map_or(0, |m| m.values().filter_map(Value::as_i64).sum::<i64>())
            + after["counters"]["hidden_items"]
                .as_object()
                .map_or(0, |m| m.values().filter_map(Value::as_i64).sum::<i64>());
    assert!(hidden > 0, "fresh resources were missing for a while: {}", after["counters"]);

    let out = stack.run(&["destroy"]);
    assert!(out.contains("destroyed"), "{out}");
    let left = tagged_leftovers(&stack.world, &stack.tag()).await;
    assert!(left.is_empty(), "destroy left tagged resources: {left:?}");
}

#[tokio::test]
async fn e2e_operator_killed_after_run_instances_creates_no_duplicate() {
    let stack = Stack::new("e2e-crash", 63);
    let mut first =
        ChildGuard(stack.command(&["apply", "--wait"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    // Kill it as soon as EC2 has an instance: long before its status write.
    let start = Instant::now();
    loop {
        if !stack.live_instances().await.is_empty() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no instance launched");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.0.kill().unwrap();
    let _ = first.0.wait();
    // The state file holds the stack's identity from the start, but no
    // instance was recorded in it before the kill.
    let state = std::fs::read_to_string(stack.dir.path().join("state.json")).unwrap_or_default();
    let recorded: Value = serde_json::from_str(&state).unwrap_or_default();
    assert!(
        Tier::ALL.iter().all(|t| recorded["status"]["tiers"][t.as_str()]["instanceId"].is_null()),
        "an instance was recorded before the kill: {state}"
    );
    let launched_before = stack.live_instances().await;
    assert!(!launched_before.is_empty());

    stack.apply_wait();
    let live = stack.live_instances().await;
    assert_eq!(live.len(), 3, "one instance per tier, no duplicates: {live:?}");
    for id in &launched_before {
        assert!(live.contains(id), "the instance launched before the crash was adopted: {id} not in {live:?}");
    }
}

/// Votes cast through the vote page, one every ~100 ms, from a thread of
/// its own, each with a voter id of its own: which the page accepted with
/// 200. Stops when told (or dropped), and after `limit` at the latest.
struct Voter {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Voter {
    fn start(vote: SocketAddr, prefix: &str, limit: Duration) -> Voter {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (flag, count, prefix) = (stop.clone(), accepted.clone(), prefix.to_string());
        let thread = std::thread::spawn(move || {
            let began = Instant::now();
            let mut ids = Vec::new();
            let mut i = 0u32;
            while !flag.load(Ordering::SeqCst) && began.elapsed() < limit {
                let id = format!("{prefix}-{i}");
                let choice = if i.is_multiple_of(2) { "a" } else { "b" };
                if http(vote, "POST", "/", Some(&id), Some(&format!("vote={choice}"))).is_ok_and(|(c, _)| c == 200) {
                    ids.push(id);
                    count.fetch_add(1, Ordering::SeqCst);
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            ids
        });
        Voter { stop, accepted, thread: Some(thread) }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Stops voting; the voter ids accepted.
    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().map(|t| t.join().expect("the voter thread")).unwrap_or_default()
    }
}

impl Drop for Voter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The voter ids of `accepted` that postgres does not hold.
fn missing_votes(stack: &Stack, prefix: &str, accepted: &[String]) -> Vec<String> {
    let query = format!("docker exec db psql -U postgres -tAc \"SELECT id FROM votes WHERE id LIKE '{prefix}-%'\"");
    let (ok, out) = stack.on_host(Tier::Database, &query);
    if !ok {
        return accepted.to_vec();
    }
    let stored: std::collections::HashSet<&str> = out.lines().map(str::trim).collect();
    accepted.iter().filter(|id| !stored.contains(id.as_str())).cloned().collect()
}

/// Votes queued in redis on the backend host, if redis answers.
fn queued_votes(stack: &Stack) -> Option<u64> {
    let (ok, out) = stack.on_host(Tier::Backend, "docker exec redis redis-cli llen votes");
    ok.then(|| out.parse().ok()).flatten()
}

#[tokio::test]
async fn e2e_planned_database_replacement_loses_no_vote() {
    let stack = Stack::new("e2e-planned", 69);
    stack.apply_wait();
    let (db_before, _) = stack.tier(Tier::Database);
    let (_, front) = stack.tier(Tier::Frontend);
    let voter = Voter::start(SocketAddr::from((front, 80)), "planned", Duration::from_secs(900));
    within(Duration::from_secs(20), "votes accepted before the change", || voter.accepted() >= 20).await;

    // A spec change that replaces the database instance: another type.
    let path = stack.dir.path().join("stack.yaml");
    let manifest = std::fs::read_to_string(&path).unwrap().replace(
        "    instanceType: t3.micro\n",
        "    instanceType: t3.micro\n    allowReplacement: true\n    database:\n      instanceType: t3.small\n",
    );
    assert!(manifest.contains("allowReplacement: true"), "the example names instanceType t3.micro");
    std::fs::write(&path, manifest).unwrap();
    let out = stack.apply_wait();
    assert!(
        out.contains("~ stop backend container worker between votes: database instance"),
        "the worker was stopped before the database instance was replaced:\n{out}"
    );
    let (db_after, _) = stack.tier(Tier::Database);
    assert_ne!(db_after, db_before, "the database runs on a new instance");
    let accepted = voter.finish();
    assert!(accepted.len() >= 100, "votes went on through the replacement: {} accepted", accepted.len());

    // Every vote the page accepted reaches postgres, once the queue drains.
    within(Duration::from_secs(240), "every accepted vote in postgres", || {
        queued_votes(&stack) == Some(0) && missing_votes(&stack, "planned", &accepted).is_empty()
    })
    .await;
    let smoke =
        "docker exec db psql -U postgres -tAc \"SELECT count(*) FROM votes WHERE id LIKE 'votingstack-smoke-%'\"";
    assert_eq!(stack.on_host(Tier::Database, smoke).1, "0", "a smoke vote stayed in postgres");
}

#[tokio::test]
async fn e2e_unplanned_database_loss_loses_at_most_one_vote() {
    let stack = Stack::new("e2e-unplanned", 70);
    stack.apply_wait();
    let _watch = stack.watch();
    let log = stack.watch_log();
    within(Duration::from_secs(60), "the watcher's first pass", || {
        std::fs::read_to_string(&log.0).is_ok_and(|t| t.contains("phase Ready"))
    })
    .await;
    let (db_before, _) = stack.tier(Tier::Database);
    let (_, front) = stack.tier(Tier::Frontend);
    let voter = Voter::start(SocketAddr::from((front, 80)), "unplanned", Duration::from_secs(900));
    within(Duration::from_secs(20), "votes accepted before the loss", || voter.accepted() >= 20).await;

    // The database instance goes behind the operator's back.
    stack.world.ec2.terminate_instances().instance_ids(&db_before).send().await.unwrap();
    within(Duration::from_secs(300), "a new database instance and Ready", || {
        let s = stack.status();
        s["phase"] == "Ready" && s["tiers"]["database"]["instanceId"].as_str().is_some_and(|id| id != db_before)
    })
    .await;
    let accepted = voter.finish();
    assert!(accepted.len() >= 100, "votes went on through the loss: {} accepted", accepted.len());
    within(Duration::from_secs(240), "the queue in redis drained", || queued_votes(&stack) == Some(0)).await;
    // The vote the worker held when the database went may be lost; no other.
    within(Duration::from_secs(15), "all but at most one accepted vote in postgres", || {
        missing_votes(&stack, "unplanned", &accepted).len() <= 1
    })
    .await;
    let missing = missing_votes(&stack, "unplanned", &accepted);
    eprintln!("{} votes accepted, missing: {missing:?}", accepted.len());
}

/// Votes cast through the vote page as `<prefix>-<i>`, each accepted with 200.
fn cast_votes(vote: SocketAddr, prefix: &str, range: std::ops::Range<usize>) {
    for i in range {
        let choice = if i % 2 == 0 { "a" } else { "b" };
        let (code, _) =
            http(vote, "POST", "/", Some(&format!("{prefix}-{i}")), Some(&format!("vote={choice}"))).unwrap();
        assert_eq!(code, 200, "vote {prefix}-{i}");
    }
}

#[tokio::test]
async fn e2e_snapshot_destroy_restore_keeps_every_vote() {
    let first = Stack::new("e2e-backup", 76);
    first.apply_wait();
    let (_, front) = first.tier(Tier::Frontend);
    let vote = SocketAddr::from((front, 80));
    let votes = "docker exec db psql -U postgres -tAc \"SELECT count(*) FROM votes WHERE id LIKE 'snap-voter-%'\"";
    cast_votes(vote, "snap-voter", 0..40);
    within(Duration::from_secs(30), "40 votes in postgres", || first.on_host(Tier::Database, votes).1 == "40").await;

    // votingstack snapshot: waits for completed and prints the id alone.
    let out = first.run(&["snapshot", "--timeout-seconds", "300"]);
    let taken = out.lines().map(str::trim).find(|l| l.starts_with("snap-")).unwrap_or_default().to_string();
    assert!(taken.len() > "snap-".len(), "a snapshot id on its own line:\n{out}");
    let snapshots =
        first.world.ec2.describe_snapshots().snapshot_ids(&taken).send().await.expect("the snapshot is known to EC2");
    let snap = snapshots.snapshots().first().expect("the snapshot").clone();
    assert_eq!(snap.state().map(|s| s.as_str()), Some("completed"));
    let tag = |key: &str| snap.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value()).map(String::from);
    assert_eq!(tag("votingstack.dev/role").as_deref(), Some("postgres-data-snapshot"));
    assert_eq!(tag("votingstack.dev/stack"), Some(first.tag()));

    // More votes after it: only the final snapshot holds them.
    cast_votes(vote, "snap-voter", 40..70);
    within(Duration::from_secs(30), "70 votes in postgres", || first.on_host(Tier::Database, votes).1 == "70").await;

    // destroy, default deletionPolicy Snapshot: a final snapshot once the
    // instances are gone, named in the output, kept after the volume goes.
    let volume = first.status()["dataVolume"]["volumeId"].as_str().expect("a data volume").to_string();
    let out = first.run(&["destroy", "--timeout-seconds", "600"]);
    assert!(out.contains("destroyed"), "{out}");
    let last = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("final snapshot "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("destroy names the final snapshot:\n{out}"))
        .to_string();
    assert_ne!(last, taken, "the final snapshot is a new one");
    let kept = first.world.ec2.describe_snapshots().snapshot_ids(&last).send().await.expect("the final snapshot stays");
    let final_snap = kept.snapshots().first().expect("the final snapshot").clone();
    assert_eq!(final_snap.state().map(|s| s.as_str()), Some("completed"));
    assert_eq!(final_snap.volume_id(), Some(volume.as_str()));
    let final_tag = final_snap.tags().iter().find(|t| t.key() == Some("votingstack.dev/snapshot-slot"));
    assert_eq!(final_tag.and_then(|t| t.value()), Some("final"));
    let left = first.world.ec2.describe_volumes().volume_ids(&volume).send().await;
    let gone = match left {
        Err(e) => format!("{e:?}").contains("InvalidVolume.NotFound"),
        Ok(out) => {
            out.volumes().iter().all(|v| v.state().is_some_and(|s| s.as_str() == "deleting" || s.as_str() == "deleted"))
        }
    };
    assert!(gone, "data volume {volume} deleted after its final snapshot");
    assert!(first.live_instances().await.is_empty(), "instances left in moto");

    // A new stack restored from the final snapshot holds exactly every vote.
    let second = Stack::restoring("e2e-restore", 77, &last);
    let out = second.apply_wait();
    assert!(out.contains("Ready → True (AllTiersReady)"), "{out}");
    let restored = second.status()["dataVolume"]["volumeId"].as_str().expect("a data volume").to_string();
    let described = second.world.ec2.describe_volumes().volume_ids(&restored).send().await.unwrap();
    let v = described.volumes().first().expect("the restored volume").clone();
    assert_eq!(v.snapshot_id(), Some(last.as_str()), "created from the final snapshot");
    let origin = v.tags().iter().find(|t| t.key() == Some("votingstack.dev/origin")).and_then(|t| t.value());
    assert_eq!(origin, Some(format!("snapshot:{last}").as_str()));
    let (ok, count) = second.on_host(Tier::Database, votes);
    assert!(ok, "postgres answers on the restored volume");
    assert_eq!(count, "70", "every vote, from before and after the manual snapshot");
    let per_choice = "docker exec db psql -U postgres -tAc \"SELECT vote, count(*) FROM votes WHERE id LIKE 'snap-voter-%' GROUP BY vote ORDER BY vote\"";
    assert_eq!(second.on_host(Tier::Database, per_choice).1, "a|35\nb|35");
}

/// The condition `kind` in a status, for assertions.
fn condition(status: &Value, kind: &str) -> Value {
    status["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == kind)).cloned().unwrap_or_default()
}

#[tokio::test]
async fn e2e_a_volume_holding_data_blkid_misses_is_refused_not_formatted() {
    let stack = Stack::new("e2e-format", 75);
    stack.apply_wait();
    let volume = stack.status()["dataVolume"]["volumeId"].as_str().expect("a data volume").to_string();
    let dev = format!("$(readlink -f /dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{})", volume.replace('-', ""));
    // The volume loses its filesystem's signature but holds data at 1 MiB
    // that blkid does not recognise; postgres goes, and the mount with it.
    let (ok, out) = stack.on_host(
        Tier::Database,
        &format!(
            "set -e; docker rm -f db >/dev/null; umount /var/lib/votingstack/data; \
             sed -i '\\| /var/lib/votingstack/data |d' /etc/fstab; wipefs -a -q {dev}; \
             head -c 4096 /dev/urandom | dd of={dev} bs=4096 seek=256 conv=notrunc 2>/dev/null; \
             dd if={dev} bs=4096 skip=256 count=1 2>/dev/null | md5sum | cut -d' ' -f1"
        ),
    );
    assert!(ok, "preparing the volume failed: {out}");
    let data = out;
    // As if the volume had never been tagged formatted: only what the host
    // reads may keep it from being formatted.
    let state = stack.dir.path().join("state.json");
    let mut saved: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    if let Some(v) = saved["status"]["dataVolume"].as_object_mut() {
        v.remove("formatted");
    }
    std::fs::write(&state, serde_json::to_string(&saved).unwrap()).unwrap();

    let out = stack.command(&["apply", "--wait", "--timeout-seconds", "90"]).output().unwrap();
    assert!(!out.status.success(), "the stack came up on a volume that holds data");
    let db = condition(&stack.status(), "DatabaseReady");
    assert_eq!(db["reason"], "DataVolumeUnusable", "{db}");
    assert!(db["message"].as_str().unwrap_or("").contains("not zero"), "{db}");
    // Nothing was written: still no filesystem, the data where it was.
    let (_, probed) = stack.on_host(Tier::Database, &format!("blkid -p {dev} >/dev/null 2>&1; echo $?"));
    assert_eq!(probed, "2", "the volume was formatted");
    let (_, after) = stack
        .on_host(Tier::Database, &format!("dd if={dev} bs=4096 skip=256 count=1 2>/dev/null | md5sum | cut -d' ' -f1"));
    assert_eq!(after, data, "the data at 1 MiB changed");
    stack.run(&["destroy"]);
}

/// Puts the database host back in an earlier release's layout: postgres's
/// data in the Docker volume votingstack-db-data, a `db` container on it
/// with another config hash, and `pgdata` on the data volume empty.
const EARLIER_RELEASE_LAYOUT: &str = r#"set -e
docker stop db >/dev/null
net=$(docker inspect -f '{{.HostConfig.NetworkMode}}' db)
image=$(docker inspect -f '{{.Config.Image}}' db)
envs=$(docker inspect -f '{{range .Config.Env}} -e {{.}}{{end}}' db)
labels=$(docker inspect -f '{{range $k, $v := .Config.Labels}}{{if ne $k "votingstack.dev/config-hash"}} --label {{$k}}={{$v}}{{end}}{{end}}' db)
docker volume create votingstack-db-data >/dev/null
old=$(docker volume inspect -f '{{.Mountpoint}}' votingstack-db-data)
cp -a /var/lib/votingstack/data/pgdata/. "$old/"
docker rm db >/dev/null
find /var/lib/votingstack/data/pgdata -mindepth 1 -delete
docker run -d --name db --restart unless-stopped --network "$net" -p 5432:5432 $envs $labels \
  --label votingstack.dev/config-hash=earlier-release -v votingstack-db-data:/var/lib/postgresql/data "$image" >/dev/null
"#;

#[tokio::test]
async fn e2e_upgrade_from_named_volume_keeps_votes() {
    let stack = Stack::new("e2e-upgrade", 78);
    stack.apply_wait();
    let (_, front) = stack.tier(Tier::Frontend);
    let vote = SocketAddr::from((front, 80));
    let count = "docker exec db psql -U postgres -tAc \"SELECT count(*) FROM votes WHERE id LIKE 'old-voter-%'\"";
    cast_votes(vote, "old-voter", 0..30);
    within(Duration::from_secs(30), "30 votes in postgres", || stack.on_host(Tier::Database, count).1 == "30").await;

    let (ok, out) = stack.on_host(Tier::Database, EARLIER_RELEASE_LAYOUT);
    assert!(ok, "putting back the earlier release's layout failed: {out}");
    // Votes go on into the earlier release's database.
    cast_votes(vote, "old-voter", 30..40);
    within(Duration::from_secs(60), "40 votes in the Docker volume's postgres", || {
        stack.on_host(Tier::Database, count).1 == "40"
    })
    .await;

    // The upgrade, with votes cast all through it.
    let voter = Voter::start(vote, "upgrade-voter", Duration::from_secs(600));
    within(Duration::from_secs(20), "votes accepted before the upgrade", || voter.accepted() >= 10).await;
    let out = stack.apply_wait();
    assert!(
        out.contains("~ stop backend container worker between votes: postgres is re-created"),
        "the worker was stopped before postgres moved:\n{out}"
    );
    let accepted = voter.finish();

    let (_, mounts) =
        stack.on_host(Tier::Database, "docker inspect -f '{{range .Mounts}}{{.Type}} {{.Source}}{{end}}' db");
    assert_eq!(mounts, "bind /var/lib/votingstack/data/pgdata", "postgres runs on the data volume");
    assert_eq!(stack.on_host(Tier::Database, count).1, "40", "every vote from before the upgrade");
    within(Duration::from_secs(240), "every vote accepted during the upgrade in postgres", || {
        queued_votes(&stack) == Some(0) && missing_votes(&stack, "upgrade-voter", &accepted).is_empty()
    })
    .await;
    let (kept, _) = stack.on_host(
        Tier::Database,
        "test -e \"$(docker volume inspect -f '{{.Mountpoint}}' votingstack-db-data)/PG_VERSION\"",
    );
    assert!(kept, "the Docker volume votingstack-db-data is kept as it was");
    stack.run(&["destroy"]);
}

/// The world's stacks run side by side: each e2e and kube_ test's stack
/// gets an address range (10.<octet>.0.0/16) no other test uses, or one
/// test's VPC and hosts collide with another's.
#[test]
fn every_world_stack_test_has_its_own_address_range() {
    let mut seen: HashMap<u32, String> = HashMap::new();
    for file in ["e2e.rs", "kube.rs"] {
        let text = std::fs::read_to_string(format!("{}/tests/it/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.starts_with("fn ") || line.starts_with("//") {
                continue;
            }
            let Some(args) = ["Stack::new(", "Stack::restoring(", "stack_manifest("]
                .iter()
                .find_map(|call| line.split_once(call).map(|(_, rest)| rest))
            else {
                continue;
            };
            let args = args.split(')').next().unwrap_or_default();
            let Some(octet) = args.split(',').filter_map(|a| a.trim().parse::<u32>().ok()).next() else {
                continue;
            };
            let at = format!("{file}:{}", n + 1);
            if let Some(before) = seen.insert(octet, at.clone()) {
                panic!("10.{octet}.0.0/16 is used by {before} and {at}");
            }
        }
    }
    assert!(seen.len() >= 15, "the scan found too few stacks: {seen:?}");
}

/// Turns the realism layer's `unusable_kms` off again, also after a failed assertion.
struct UnusableKmsOff<'a>(&'a Stack);

impl Drop for UnusableKmsOff<'_> {
    fn drop(&mut self) {
        let off = r#"{"unusable_kms": false}"#;
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| realism(self.0, "/_realism", Some(off))));
    }
}

#[tokio::test]
async fn e2e_instances_that_die_at_launch_are_launched_once_with_aws_reason_until_kms_key_id_is_set() {
    let mut stack = Stack::new("e2e-kms", 79);
    // This stack signs with a key of its own: the unusable default EBS key is its alone.
    stack.env.insert("AWS_ACCESS_KEY_ID".into(), "kms-e2e".into());
    let killed = |stack: &Stack| {
        realism(stack, "/_realism", None)["counters"]["launches_killed"]["RunInstances"].as_i64().unwrap_or(0)
    };
    let before = killed(&stack);
    let _off = UnusableKmsOff(&stack);
    realism(&stack, "/_realism", Some(r#"{"unusable_kms": ["kms-e2e"]}"#));

    // Every launch encrypts its root volume with the account's default key,
    // which this caller may not use: each instance is terminated at once.
    let out = stack.command(&["apply", "--wait", "--timeout-seconds", "300"]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "apply must fail:\n{text}");
    assert!(text.contains("InstanceLaunchFailed"), "{text}");
    assert!(text.contains("Client.InternalError"), "{text}");
    let status = stack.status();
    assert_eq!(status["phase"], "Failed", "{status:#}");
    for tier in Tier::ALL {
        let t = &status["tiers"][tier.as_str()];
        assert_eq!(t["launchFailures"], 1, "{tier}: {t:#}");
        assert_eq!(t["lastLaunchFailure"]["code"], "Client.InternalError", "{tier}: {t:#}");
        assert_eq!(t["lastLaunchFailure"]["message"], "Client.InternalError: Client error on launch");
    }
    let db = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "DatabaseReady").unwrap();
    assert_eq!(db["reason"], "InstanceLaunchFailed", "{db:#}");
    assert!(db["message"].as_str().unwrap().contains("spec.instances.kmsKeyId"), "{db:#}");
    assert_eq!(killed(&stack) - before, 3, "one launch per tier");
    assert!(stack.live_instances().await.is_empty());

    // No loop: the same spec again launches nothing and says the same.
    let out = stack.command(&["apply", "--wait", "--timeout-seconds", "60"]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && text.contains("InstanceLaunchFailed"), "{text}");
    assert_eq!(killed(&stack) - before, 3, "nothing launched again for the same spec");

    // A key of its own (one the operator may use) is a spec change: one more
    // launch per tier, with that key, and the stack comes up.
    let path = stack.dir.path().join("stack.yaml");
    let manifest = std::fs::read_to_string(&path).unwrap();
    assert!(manifest.contains("\n    instanceType: t3.micro\n"), "{manifest}");
    let manifest = manifest.replacen(
        "\n    instanceType: t3.micro\n",
        "\n    instanceType: t3.micro\n    kmsKeyId: alias/votingstack-e2e\n",
        1,
    );
    std::fs::write(&path, manifest).unwrap();
    let out = stack.apply_wait();
    assert!(out.contains("Ready → True (AllTiersReady)"), "{out}");
    assert_eq!(killed(&stack) - before, 3);
    assert_eq!(stack.live_instances().await.len(), 3);
    let status = stack.status();
    for tier in Tier::ALL {
        let t = &status["tiers"][tier.as_str()];
        assert_eq!((t["launchFailures"].as_i64(), t["replacements"].as_i64()), (Some(1), Some(1)), "{tier}: {t:#}");
    }

    let out = stack.run(&["destroy"]);
    assert!(out.contains("destroyed"), "{out}");
    let left = tagged_leftovers(&stack.world, &stack.tag()).await;
    assert!(left.is_empty(), "destroy left tagged resources: {left:?}");
}

/// The account the quota test's access key acts in: AWS's default quotas,
/// its own default VPC, nobody else's resources.
const QUOTA_ACCOUNT: &str = "210987654321";

/// Puts the realism layer's account knobs back as they were, also after a
/// failed assertion.
struct AccountKnobsBack<'a>(&'a Stack, Value);

impl Drop for AccountKnobsBack<'_> {
    fn drop(&mut self) {
        let back = serde_json::json!({
            "account_quotas": self.1["config"]["account_quotas"],
            "access_key_accounts": self.1["config"]["access_key_accounts"],
        })
        .to_string();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| realism(self.0, "/_realism", Some(&back))));
    }
}

#[tokio::test]
async fn e2e_own_network_over_an_account_quota_is_refused_and_leaves_nothing_billing() {
    let in_quota_account = |mut s: Stack| {
        s.env.insert("AWS_ACCESS_KEY_ID".into(), "quota-e2e".into());
        s
    };
    let nat = &in_quota_account(Stack::new("e2e-quota", 82));
    let own = &[
        in_quota_account(Stack::new("e2e-quota-own1", 83)),
        in_quota_account(Stack::new("e2e-quota-own2", 90)),
        in_quota_account(Stack::new("e2e-quota-own3", 91)),
        in_quota_account(Stack::new("e2e-quota-own4", 92)),
    ];
    let fifth = &in_quota_account(Stack::new("e2e-quota-fifth", 93));
    let before = realism(nat, "/_realism", None);
    let _back = AccountKnobsBack(nat, before.clone());
    let set = |quotas: Value| {
        let mut quotas_now = before["config"]["account_quotas"].clone();
        quotas_now[QUOTA_ACCOUNT] = quotas;
        let mut keys = before["config"]["access_key_accounts"].clone();
        keys["quota-e2e"] = Value::from(QUOTA_ACCOUNT);
        realism(
            nat,
            "/_realism",
            Some(&serde_json::json!({"account_quotas": quotas_now, "access_key_accounts": keys}).to_string()),
        );
    };
    let mut account = World::load();
    account.ec2 = crate::world::ec2_client_as(&account.endpoint, "quota-e2e");

    // The zone's NAT gateways are used up: refused at CreateNatGateway, and
    // the Elastic IP allocated for it is not left billing.
    set(serde_json::json!({"nat_gateways_per_zone": 0}));
    let out = nat.command(&["apply", "--wait", "--timeout-seconds", "120"]).output().unwrap();
    assert!(!out.status.success(), "a stack over the NAT quota came up");
    let infra = condition(&nat.status(), "InfrastructureReady");
    assert_eq!(infra["reason"], "AwsQuotaExceeded", "{infra}");
    assert!(infra["message"].as_str().unwrap_or("").contains("NatGatewayLimitExceeded"), "{infra}");
    let left = tagged_leftovers(&account, &nat.tag()).await;
    assert!(
        !left.iter().any(|l| l.starts_with("address") || l.starts_with("nat gateway")),
        "a refused NAT gateway left {left:?}"
    );
    assert!(left.iter().any(|l| l.starts_with("vpc")), "the refusal came after the VPC: {left:?}");
    nat.run(&["destroy", "--timeout-seconds", "300"]);
    let left = tagged_leftovers(&account, &nat.tag()).await;
    assert!(left.is_empty(), "destroy left {left:?}");

    // AWS's default network quotas (5 VPCs with the default one, 5
    // internet gateways, 5 Elastic IPs, 5 NAT gateways per zone): four
    // stacks each create their own network. No instance is launched: the
    // account's vCPU quota is 0 (refused as VcpuLimitExceeded after the
    // network), which keeps them off the world's hosts.
    set(serde_json::json!({"vcpus_per_region": 0}));
    for s in own {
        let out = s.command(&["apply", "--wait", "--timeout-seconds", "120"]).output().unwrap();
        assert!(!out.status.success(), "{}: launched over a vCPU quota of 0", s.name);
        let infra = condition(&s.status(), "InfrastructureReady");
        assert_eq!(infra["reason"], "AwsQuotaExceeded", "{}: {infra}", s.name);
        assert!(infra["message"].as_str().unwrap_or("").contains("VcpuLimitExceeded"), "{infra}");
        let left = tagged_leftovers(&account, &s.tag()).await;
        for kind in ["vpc", "igw", "address", "nat gateway"] {
            assert!(left.iter().any(|l| l.starts_with(kind)), "{}: no {kind} of its own: {left:?}", s.name);
        }
        assert!(!left.iter().any(|l| l.starts_with("instance")), "{}: {left:?}", s.name);
    }
    let vpcs = account.ec2.describe_vpcs().send().await.expect("DescribeVpcs in the account").vpcs().len();
    assert_eq!(vpcs, 5, "the default VPC and four stacks' fill the default quota");

    // The fifth own network is refused at CreateVpc and creates nothing:
    // no Elastic IP or NAT gateway is left billing.
    let out = fifth.command(&["apply", "--wait", "--timeout-seconds", "120"]).output().unwrap();
    assert!(!out.status.success(), "a stack over the VPC quota came up");
    let infra = condition(&fifth.status(), "InfrastructureReady");
    assert_eq!(infra["reason"], "AwsQuotaExceeded", "{infra}");
    let message = infra["message"].as_str().unwrap_or("");
    assert!(message.contains("VpcLimitExceeded") && message.contains("spec.network.vpcId"), "{infra}");
    let left = tagged_leftovers(&account, &fifth.tag()).await;
    assert!(left.is_empty(), "a stack refused its VPC left {left:?}");

    for s in std::iter::once(fifth).chain(own) {
        s.run(&["destroy", "--timeout-seconds", "300"]);
        let left = tagged_leftovers(&account, &s.tag()).await;
        assert!(left.is_empty(), "{}: destroy left {left:?}", s.name);
    }
}

/// A network a user built outside the operator in 10.<octet>.0.0/16: a
/// public subnet 10.<octet>.1.0/24 routed to an internet gateway, and a
/// private one 10.<octet>.2.0/24 routed to a NAT gateway of theirs.
struct UsersNetwork {
    vpc: String,
    public: String,
    private: String,
    gateway: String,
    tables: Vec<String>,
    address: String,
    nat: String,
}

impl UsersNetwork {
    async fn create(ec2: &aws_sdk_ec2::Client, octet: u8) -> UsersNetwork {
        let vpc = ec2.create_vpc().cidr_block(format!("10.{octet}.0.0/16")).send().await.expect("CreateVpc");
        let vpc = vpc.vpc().and_then(|v| v.vpc_id()).expect("a VPC id").to_owned();
        let mut subnets = Vec::new();
        for n in [1, 2] {
            let out = ec2
                .create_subnet()
                .vpc_id(&vpc)
                .cidr_block(format!("10.{octet}.{n}.0/24"))
                .availability_zone("us-east-1a")
                .send()
                .await
                .expect("CreateSubnet");
            subnets.push(out.subnet().and_then(|s| s.subnet_id()).expect("a subnet id").to_owned());
        }
        let gateway = ec2.create_internet_gateway().send().await.expect("CreateInternetGateway");
        let gateway = gateway.internet_gateway().and_then(|g| g.internet_gateway_id()).expect("an id").to_owned();
        ec2.attach_internet_gateway().internet_gateway_id(&gateway).vpc_id(&vpc).send().await.expect("attach");
        let address = ec2
            .allocate_address()
            .domain(aws_sdk_ec2::types::DomainType::Vpc)
            .send()
            .await
            .expect("AllocateAddress")
            .allocation_id()
            .expect("an allocation id")
            .to_owned();
        let nat = ec2
            .create_nat_gateway()
            .subnet_id(&subnets[0])
            .allocation_id(&address)
            .send()
            .await
            .expect("CreateNatGateway");
        let nat = nat.nat_gateway().and_then(|n| n.nat_gateway_id()).expect("a NAT gateway id").to_owned();
        let mut tables = Vec::new();
        for (subnet, route) in [(&subnets[0], &gateway), (&subnets[1], &nat)] {
            let t = ec2.create_route_table().vpc_id(&vpc).send().await.expect("CreateRouteTable");
            let t = t.route_table().and_then(|t| t.route_table_id()).expect("a route table id").to_owned();
            let r = ec2.create_route().route_table_id(&t).destination_cidr_block("0.0.0.0/0");
            let r = if route.starts_with("nat-") { r.nat_gateway_id(route) } else { r.gateway_id(route) };
            r.send().await.expect("CreateRoute");
            ec2.associate_route_table().route_table_id(&t).subnet_id(subnet).send().await.expect("associate");
            tables.push(t);
        }
        let private = subnets.pop().expect("two subnets");
        let public = subnets.pop().expect("two subnets");
        UsersNetwork { vpc, public, private, gateway, tables, address, nat }
    }

    /// Every part of it is still there as the user made it.
    async fn assert_untouched(&self, ec2: &aws_sdk_ec2::Client) {
        let by = |name: &str, id: &str| Filter::builder().name(name).values(id).build();
        let vpcs = ec2.describe_vpcs().filters(by("vpc-id", &self.vpc)).send().await.unwrap();
        assert_eq!(vpcs.vpcs().len(), 1, "the VPC {} is gone", self.vpc);
        let subnets = ec2.describe_subnets().filters(by("vpc-id", &self.vpc)).send().await.unwrap();
        let ids: Vec<&str> = subnets.subnets().iter().filter_map(|s| s.subnet_id()).collect();
        assert!(ids.contains(&self.public.as_str()) && ids.contains(&self.private.as_str()), "{ids:?}");
        let gw = ec2.describe_internet_gateways().filters(by("internet-gateway-id", &self.gateway)).send().await;
        let gw = gw.unwrap();
        assert_eq!(gw.internet_gateways()[0].attachments()[0].vpc_id(), Some(self.vpc.as_str()));
        for (table, target) in self.tables.iter().zip([&self.gateway, &self.nat]) {
            let t = ec2.describe_route_tables().filters(by("route-table-id", table)).send().await.unwrap();
            let t = &t.route_tables()[0];
            let routes = t.routes();
            assert!(
                routes.iter().any(|r| r.gateway_id() == Some(target) || r.nat_gateway_id() == Some(target)),
                "{table} lost its route to {target}: {routes:?}"
            );
            assert_eq!(t.associations().len(), 1, "{table}: {:?}", t.associations());
        }
        let nat = ec2.describe_nat_gateways().filter(by("nat-gateway-id", &self.nat)).send().await.unwrap();
        let state = nat.nat_gateways()[0].state().map(|s| s.as_str().to_owned());
        assert!(matches!(state.as_deref(), Some("pending" | "available")), "{}: {state:?}", self.nat);
    }

    /// Deletes it, in the order EC2 needs (bounded wait for the NAT gateway).
    async fn remove(&self, ec2: &aws_sdk_ec2::Client) {
        let _ = ec2.delete_nat_gateway().nat_gateway_id(&self.nat).send().await;
        let by = Filter::builder().name("nat-gateway-id").values(&self.nat).build();
        let until = Instant::now() + Duration::from_secs(180);
        while Instant::now() < until {
            let out = ec2.describe_nat_gateways().filter(by.clone()).send().await;
            let gone = out.map(|o| o.nat_gateways().iter().all(|n| n.state().map(|s| s.as_str()) == Some("deleted")));
            if gone.unwrap_or(false) {
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let _ = ec2.release_address().allocation_id(&self.address).send().await;
        for t in &self.tables {
            let found = ec2.describe_route_tables().route_table_ids(t).send().await;
            for a in found.iter().flat_map(|f| f.route_tables()).flat_map(|t| t.associations()) {
                if let Some(id) = a.route_table_association_id() {
                    let _ = ec2.disassociate_route_table().association_id(id).send().await;
                }
            }
            let _ = ec2.delete_route_table().route_table_id(t).send().await;
        }
        let _ = ec2.detach_internet_gateway().internet_gateway_id(&self.gateway).vpc_id(&self.vpc).send().await;
        let _ = ec2.delete_internet_gateway().internet_gateway_id(&self.gateway).send().await;
        for s in [&self.public, &self.private] {
            let _ = ec2.delete_subnet().subnet_id(s).send().await;
        }
        let _ = ec2.delete_vpc().vpc_id(&self.vpc).send().await;
    }
}

#[tokio::test]
async fn e2e_a_stack_in_a_network_you_bring_runs_and_leaves_it_untouched() {
    let stack = Stack::new("e2e-byo", 94);
    let users = UsersNetwork::create(&stack.world.ec2, 94).await;
    let path = stack.dir.path().join("stack.yaml");
    let manifest = std::fs::read_to_string(&path).unwrap();
    let private_block = "    privateSubnetCidr: 10.94.2.0/24\n";
    assert!(manifest.contains(private_block), "{manifest}");
    let ids = format!(
        "    vpcId: {}\n    publicSubnetId: {}\n    privateSubnetId: {}\n",
        users.vpc, users.public, users.private
    );
    std::fs::write(&path, manifest.replace(private_block, &ids)).unwrap();

    stack.apply_wait();
    let status = stack.status();
    assert_eq!(status["phase"], "Ready", "{status}");
    let net = &status["network"];
    assert_eq!(net["provided"], true, "{net}");
    assert_eq!(net["vpcId"], users.vpc.as_str(), "{net}");
    assert!(net.get("natGatewayId").is_none() && net.get("internetGatewayId").is_none(), "{net}");
    let left = tagged_leftovers(&stack.world, &stack.tag()).await;
    assert!(!left.iter().any(|l| l.starts_with("vpc") || l.starts_with("subnet") || l.starts_with("nat")), "{left:?}");
    assert_eq!(left.iter().filter(|l| l.starts_with("group")).count(), 3, "{left:?}");

    stack.run(&["destroy", "--timeout-seconds", "300"]);
    let left = tagged_leftovers(&stack.world, &stack.tag()).await;
    assert!(left.is_empty(), "destroy left {left:?}");
    users.assert_untouched(&stack.world.ec2).await;
    users.remove(&stack.world.ec2).await;
}

/// Requests a user would send while the frontend is updated, about 20 a
/// second from a thread of its own: GET of the vote page, GET of the result
/// page and a POSTed vote in turn, each vote with a voter id of its own.
/// Counts every request and every one that failed (not 200, or no answer),
/// and keeps the voter ids accepted with 200. Stops when told, and after
/// `limit` at the latest.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<(Vec<String>, Vec<String>)>>,
}

impl Traffic {
    fn start(vote: SocketAddr, result: SocketAddr, prefix: &str, limit: Duration) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let (flag, count, prefix) = (stop.clone(), sent.clone(), prefix.to_string());
        let thread = std::thread::spawn(move || {
            let began = Instant::now();
            let (mut accepted, mut failed) = (Vec::new(), Vec::new());
            let mut i = 0u32;
            while !flag.load(Ordering::SeqCst) && began.elapsed() < limit {
                let id = format!("{prefix}-{i}");
                let (what, answer) = match i % 3 {
                    0 => ("GET vote", http(vote, "GET", "/", None, None)),
                    1 => ("GET result", http(result, "GET", "/", None, None)),
                    _ => {
                        let choice = if i.is_multiple_of(2) { "a" } else { "b" };
                        ("POST vote", http(vote, "POST", "/", Some(&id), Some(&format!("vote={choice}"))))
                    }
                };
                match answer {
                    Ok((200, _)) if what == "POST vote" => accepted.push(id),
                    Ok((200, _)) => {}
                    Ok((code, _)) => failed.push(format!("{what} at {:?}: HTTP {code}", began.elapsed())),
                    Err(e) => failed.push(format!("{what} at {:?}: {e}", began.elapsed())),
                }
                count.fetch_add(1, Ordering::SeqCst);
                i += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            (accepted, failed)
        });
        Traffic { stop, sent, thread: Some(thread) }
    }

    fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }

    /// Stops; the voter ids accepted and the requests that failed.
    fn finish(mut self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().map(|t| t.join().expect("the traffic thread")).unwrap_or_default()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Stack {
    /// Rewrites the manifest: `from` (which must be there) becomes `to`.
    fn edit(&self, from: &str, to: &str) {
        let path = self.dir.path().join("stack.yaml");
        let manifest = std::fs::read_to_string(&path).unwrap();
        assert!(manifest.contains(from), "{from:?} not in\n{manifest}");
        std::fs::write(&path, manifest.replacen(from, to, 1)).unwrap();
    }

    /// Names of the containers on a tier's host, running or not.
    fn containers(&self, tier: Tier) -> Vec<String> {
        let (ok, out) = self.on_host(tier, "docker ps -a --format '{{.Names}} {{.Image}} {{.State}}'");
        assert!(ok, "docker ps on the {tier} host");
        out.lines().map(str::to_string).collect()
    }
}

#[tokio::test]
async fn e2e_vote_and_result_updates_under_load_fail_no_request_and_lose_no_vote() {
    let stack = Stack::new("e2e-update", 95);
    stack.apply_wait();
    let (_, front) = stack.tier(Tier::Frontend);
    let (vote, result) = (SocketAddr::from((front, 80)), SocketAddr::from((front, 81)));
    let before = stack.containers(Tier::Frontend);
    assert!(before.iter().any(|c| c.starts_with("proxy ")), "{before:?}");
    let old_vote = before.iter().find(|c| c.starts_with("vote-")).cloned().expect("a vote container");

    let traffic = Traffic::start(vote, result, "update-voter", Duration::from_secs(900));
    within(Duration::from_secs(20), "requests before the update", || traffic.sent() >= 40).await;
    stack.edit("/vote:local", "/vote:v2");
    stack.apply_wait();
    let after = stack.containers(Tier::Frontend);
    assert!(!after.contains(&old_vote), "the old vote container is gone: {after:?}");
    assert!(after.iter().any(|c| c.starts_with("vote-") && c.contains("/vote:v2")), "{after:?}");
    stack.edit("/result:local", "/result:v2");
    stack.apply_wait();
    let sent = traffic.sent();
    within(Duration::from_secs(20), "requests after the update", || traffic.sent() >= sent + 40).await;
    let (accepted, failed) = traffic.finish();
    assert!(failed.is_empty(), "{} of the requests failed during the updates: {failed:#?}", failed.len());
    assert!(accepted.len() >= 30, "votes accepted during the updates: {}", accepted.len());
    let containers = stack.containers(Tier::Frontend);
    assert_eq!(containers.len(), 3, "proxy, vote and result, nothing left over: {containers:?}");
    assert!(containers.iter().any(|c| c.starts_with("result-") && c.contains("/result:v2")), "{containers:?}");
    let status = stack.status();
    let listed = status["tiers"]["frontend"]["containers"].to_string();
    assert!(listed.contains("proxy"), "status shows the proxy: {listed}");
    let mut missing = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            missing = missing_votes(&stack, "update-voter", &accepted);
            if missing.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    assert!(missing.is_empty(), "accepted votes not counted: {missing:?}");

    // The proxy is one of the stack's containers: killed, it is put back.
    let (ok, _) = stack.on_host(Tier::Frontend, "docker rm -f proxy");
    assert!(ok, "removing the proxy");
    stack.apply_wait();
    assert!(answers_200(vote) && answers_200(result), "the pages answer through the proxy again");
    stack.run(&["destroy", "--timeout-seconds", "300"]);
}

#[tokio::test]
async fn e2e_a_vote_image_that_exits_leaves_the_old_one_serving() {
    let stack = Stack::new("e2e-update-fails", 96);
    stack.apply_wait();
    let (_, front) = stack.tier(Tier::Frontend);
    let (vote, result) = (SocketAddr::from((front, 80)), SocketAddr::from((front, 81)));
    let old_vote = stack.containers(Tier::Frontend).into_iter().find(|c| c.starts_with("vote-")).expect("vote");

    let traffic = Traffic::start(vote, result, "broken-voter", Duration::from_secs(600));
    within(Duration::from_secs(20), "requests before the update", || traffic.sent() >= 40).await;
    stack.edit("/vote:local", "/vote-exits:local");
    let out = stack.command(&["apply", "--wait", "--timeout-seconds", "60"]).output().unwrap();
    assert!(!out.status.success(), "an update to an image that exits came up");
    let frontend = condition(&stack.status(), "FrontendReady");
    assert_eq!(frontend["reason"], "UpdateFailed", "{frontend}");
    let message = frontend["message"].as_str().unwrap_or_default();
    assert!(message.contains("ModuleNotFoundError"), "the new container's last log lines: {message}");
    let sent = traffic.sent();
    within(Duration::from_secs(20), "requests after the failed update", || traffic.sent() >= sent + 40).await;
    let (accepted, failed) = traffic.finish();
    assert!(failed.is_empty(), "{} requests failed: {failed:#?}", failed.len());
    assert!(!accepted.is_empty());
    let containers = stack.containers(Tier::Frontend);
    assert!(containers.contains(&old_vote), "the old vote container serves on: {containers:?}");
    assert!(!containers.iter().any(|c| c.contains("vote-exits")), "the failed one is removed: {containers:?}");
    stack.run(&["destroy", "--timeout-seconds", "300"]);
}

#[tokio::test]
async fn e2e_recreate_runs_without_a_proxy() {
    let stack = Stack::new("e2e-recreate", 97);
    stack.edit("\n  app:\n", "\n  app:\n    updateStrategy: Recreate\n");
    stack.apply_wait();
    let containers = stack.containers(Tier::Frontend);
    let names: Vec<&str> = containers.iter().filter_map(|c| c.split_whitespace().next()).collect();
    assert_eq!(names.len(), 2, "{containers:?}");
    assert!(names.contains(&"vote") && names.contains(&"result"), "vote and result publish the ports: {names:?}");
    let (_, front) = stack.tier(Tier::Frontend);
    stack.edit("optionB: Dogs", "optionB: Birds");
    stack.apply_wait();
    assert!(answers_200(SocketAddr::from((front, 80))), "the vote page answers after the re-creation");
    let (ok, env) = stack.on_host(Tier::Frontend, "docker inspect vote --format '{{json .Config.Env}}'");
    assert!(ok && env.contains("OPTION_B=Birds"), "{env}");
    stack.run(&["destroy", "--timeout-seconds", "300"]);
}

#[tokio::test]
async fn e2e_amazon_linux_windows_and_arm64_on_x86_images_are_refused_before_anything_is_created() {
    for (name, octet, variable, family) in [
        ("e2e-ami-al", 84, "VS_WORLD_AMI_AMAZON_LINUX", "Amazon Linux"),
        ("e2e-ami-win", 85, "VS_WORLD_AMI_WINDOWS", "Windows"),
        ("e2e-ami-arm", 86, "VS_WORLD_AMI_ARM64", "arm64 image and t3.micro"),
    ] {
        let stack = Stack::new(name, octet);
        let ami = stack.env[variable].clone();
        stack.set_ami(&ami);
        let out = stack.command(&["apply", "--wait", "--timeout-seconds", "120"]).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "apply must fail:\n{text}");
        assert!(text.contains("AwsInvalidParameter"), "{text}");
        assert!(text.contains(&format!("spec.instances.ami {ami}")) && text.contains(family), "{text}");
        let status = stack.status();
        assert_eq!(status["phase"], "Failed", "{status:#}");
        assert_eq!(stack.vpcs().await, 0, "no VPC, so no NAT gateway or Elastic IP either");
        assert!(stack.live_instances().await.is_empty(), "no instance was launched");
    }
}
