//! The Docker API calls on a host, through its client (`docker_api`):
//!
//! - the stack's containers listed, with their health checks' verdicts;
//! - a tier's deploy: typed pull, create, start, stop and remove calls, each
//!   with a deadline that really ends it (its connection closes and Docker
//!   cancels the work), then a bounded wait for new containers' health;
//! - the drift events subscription;
//! - the smoke test's query: an exec in the postgres container.
//!
//! The shell steps on a host are elsewhere: see [`crate::host`].

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime};

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{HealthStatusEnum, NetworkCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    LogsOptionsBuilder, PruneImagesOptionsBuilder, RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use tracing::{debug, info, warn};

use crate::api::{PullPolicy, STACK_LABEL};
use crate::engine::proxy;
use crate::model::desired::{
    repository_of, DB_CONTAINER, HOST_NETWORK, POSTGRES_USER, PROXY_CONTAINER, REDIS_CONTAINER, WORKER_CONTAINER,
};
use crate::model::{DesiredContainer, ObservedContainer};
use crate::timeline::{self, Stage};

use super::bootstrap;
use super::containers;
use super::docker_api::{self, docker_failure, status_of};
use super::hosts::SshHosts;
use super::{HostError, HostTarget, SshKey};

/// The longest an observation may take: it is one list call.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(30);
/// Seconds a container gets to stop on SIGTERM before it is killed.
const STOP_GRACE_SECONDS: i32 = 10;
/// Suffix of a replaced container kept aside until its successor runs.
const PREVIOUS_SUFFIX: &str = "-previous";
/// How Docker says a pull ran out of disk.
const DISK_FULL: &str = "no space left on device";
/// How long redis writes stay paused while the worker is stopped between
/// votes: redis resumes them by itself after this, even when the operator
/// is gone meanwhile. The vote page's RPUSH waits (it is not refused);
/// upstream's redis clients give up after 5 s.
const VOTE_PAUSE_MS: u32 = 2000;
/// How long a vote the worker popped before the pause gets to be written.
const IN_FLIGHT_WRITE: Duration = Duration::from_millis(500);
/// How long a deploy waits for new containers' health checks to settle.
const HEALTH_WAIT: Duration = Duration::from_secs(30);
const HEALTH_POLL: Duration = Duration::from_millis(300);

/// What one list call found.
pub(super) enum Listing {
    /// The stack's containers, and the verdicts of their health checks.
    Listed { containers: Vec<ObservedContainer>, probes: Vec<(String, Result<(), String>)> },
    /// Docker's API gave no answer, and why.
    NoAnswer(String),
}

/// `name` and `tag` for a pull. A reference without a tag or digest means
/// `latest` (an empty tag would pull every tag of the repository).
fn pull_reference(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    let last = image.rfind('/').map_or(0, |i| i + 1);
    match image[last..].rfind(':') {
        Some(i) => (&image[..last + i], &image[last + i + 1..]),
        None => (image, "latest"),
    }
}

fn stack_filter(stack: &str) -> HashMap<&'static str, Vec<String>> {
    HashMap::from([("label", vec![format!("{STACK_LABEL}={stack}")])])
}

impl SshHosts {
    /// Lists the stack's containers (one call). An answer refusing the
    /// list is an error; no answer at all is [`Listing::NoAnswer`].
    pub(super) async fn list_stack(&self, target: &HostTarget, docker: &Docker) -> Result<Listing, HostError> {
        let filters = stack_filter(&target.stack);
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let limit = OBSERVE_TIMEOUT.min(Self::command_limit(target));
        let listed = tokio::time::timeout(limit, docker.list_containers(Some(options))).await;
        match listed {
            Ok(Ok(list)) => {
                let mut containers = Vec::new();
                let mut probes = Vec::new();
                for (container, health) in list.iter().filter_map(|s| containers::observed(&target.stack, s)) {
                    if let Some(h) = health {
                        probes.push((container.name.clone(), h));
                    }
                    containers.push(container);
                }
                containers.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(Listing::Listed { containers, probes })
            }
            Ok(Err(e)) if status_of(&e).is_some() => Err(docker_failure(target, "list the stack's containers", e)),
            Ok(Err(e)) => Ok(Listing::NoAnswer(e.to_string())),
            Err(_) => Ok(Listing::NoAnswer(format!("no answer within {} s", limit.as_secs()))),
        }
    }

    /// A tier's container work: orphans removed first (one may hold a port
    /// a new container needs), the network and images made present (every
    /// pull before anything is replaced: the old containers serve
    /// meanwhile), rolled containers brought up beside the ones they
    /// replace, each other new container put in place of the old one,
    /// stopped ones started; then a bounded wait for the new containers'
    /// health checks.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn deploy(
        &self,
        target: &HostTarget,
        docker: &Docker,
        remove: &[&str],
        roll: &[(&DesiredContainer, &[String])],
        create: &[&DesiredContainer],
        start: &[&str],
        pull: PullPolicy,
    ) -> Result<(), HostError> {
        for name in remove {
            self.remove_container(target, docker, name).await?;
        }
        if !create.is_empty() || !roll.is_empty() {
            self.ensure_network(target, docker).await?;
            let images: BTreeSet<String> =
                create.iter().chain(roll.iter().map(|(c, _)| c)).map(|c| c.run_reference()).collect();
            let pulls = images.iter().map(|image| self.ensure_image(target, docker, image, pull));
            futures::future::try_join_all(pulls).await?;
            for (c, replaces) in roll {
                let began = SystemTime::now();
                self.roll_container(target, docker, c, replaces).await?;
                timeline::span(&target.stack, Stage::ContainerStarted, format!("{}/{}", target.tier, c.name), began);
            }
            for c in create {
                let began = SystemTime::now();
                self.replace_container(target, docker, c).await?;
                timeline::span(&target.stack, Stage::ContainerStarted, format!("{}/{}", target.tier, c.name), began);
            }
        }
        for name in start {
            let what = format!("start container {name}");
            match self.bounded(target, &what, Self::command_limit(target), docker.start_container(name, None)).await {
                Ok(()) => {}
                // A stopped container Docker refuses to start (such as a
                // stale task left by a daemon restart) is removed, so the
                // next pass creates it anew from its configuration.
                Err(e @ HostError::Docker { .. }) => {
                    warn!(host = %target.describe(), container = %name, "{e}; removing it to create it anew");
                    self.remove_container(target, docker, name).await?;
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
        self.await_health(target, docker, create).await;
        Ok(())
    }

    /// Stops a container (SIGTERM, then SIGKILL after the grace period) and
    /// removes it; one that is already gone is fine.
    async fn remove_container(&self, target: &HostTarget, docker: &Docker, name: &str) -> Result<(), HostError> {
        self.stop_container(target, docker, name).await?;
        let limit = Self::command_limit(target);
        let remove = RemoveContainerOptionsBuilder::default().force(true).build();
        match self
            .bounded(target, &format!("remove container {name}"), limit, docker.remove_container(name, Some(remove)))
            .await
        {
            Ok(()) | Err(HostError::Docker { status: Some(404), .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Stops a container (SIGTERM, then SIGKILL after the grace period).
    /// Returns whether there was one.
    async fn stop_container(&self, target: &HostTarget, docker: &Docker, name: &str) -> Result<bool, HostError> {
        let limit = Self::command_limit(target);
        let stop = StopContainerOptionsBuilder::default().t(STOP_GRACE_SECONDS).build();
        match self
            .bounded(target, &format!("stop container {name}"), limit, docker.stop_container(name, Some(stop)))
            .await
        {
            // 304: already stopped
            Ok(()) | Err(HostError::Docker { status: Some(304), .. }) => Ok(true),
            Err(HostError::Docker { status: Some(404), .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Stops the worker `name` between two votes. Upstream's worker takes a
    /// vote off the queue (LPOP) before it writes it and ends at once on
    /// SIGTERM, so it must not be stopped while it holds one: redis writes
    /// are paused first (`CLIENT PAUSE .. WRITE`, redis 6.2 or later; LPOP
    /// is a write, so the worker waits in it holding nothing), a vote popped
    /// just before gets [`IN_FLIGHT_WRITE`] to be written, the container is
    /// stopped, and writes resume. Should redis refuse the pause, the worker
    /// is stopped all the same: it must not go on popping votes it cannot
    /// write.
    pub(super) async fn stop_between_votes(
        &self,
        target: &HostTarget,
        docker: &Docker,
        name: &str,
    ) -> Result<(), HostError> {
        let pause = ["CLIENT", "PAUSE", &VOTE_PAUSE_MS.to_string(), "WRITE"].map(String::from);
        let paused = self.redis_cli(target, docker, &pause, "pause redis writes").await;
        match &paused {
            Ok(()) => tokio::time::sleep(IN_FLIGHT_WRITE).await,
            Err(e) => warn!(host = %target.describe(), "stopping {name} without pausing redis: {e}"),
        }
        let stopped = self.stop_container(target, docker, name).await;
        if paused.is_ok() {
            let unpause = ["CLIENT", "UNPAUSE"].map(String::from);
            if let Err(e) = self.redis_cli(target, docker, &unpause, "resume redis writes").await {
                warn!(host = %target.describe(), "{e}; redis resumes writes by itself within {VOTE_PAUSE_MS} ms");
            }
        }
        stopped?;
        info!(host = %target.describe(), container = %name, "stopped between votes");
        Ok(())
    }

    /// `LLEN votes` in the redis container: the votes waiting for the worker.
    pub(super) async fn queue_length(&self, target: &HostTarget, docker: &Docker) -> Result<u64, HostError> {
        let what = "count the votes queued in redis";
        let cmd = ["redis-cli", "LLEN", "votes"].map(String::from).to_vec();
        let (code, stdout, stderr) = self.exec_in(target, docker, REDIS_CONTAINER, cmd, what).await?;
        match stdout.trim().parse() {
            Ok(n) if code == 0 => Ok(n),
            _ => Err(HostError::Docker {
                host: target.describe(),
                step: what.into(),
                status: None,
                message: format!(
                    "redis-cli LLEN votes exited with {code}: {}",
                    bootstrap::tail(format!("{stdout}{stderr}").as_bytes())
                ),
            }),
        }
    }

    /// Brings `c` up beside the containers it replaces (created unless it
    /// exists), and when the proxy runs: waits until `c` answers HTTP 200
    /// on the Docker network (bounded), switches the proxy to it by a
    /// graceful reload, and lets the replaced ones drain before they are
    /// removed. A new container that does not answer (or exits) is removed
    /// with the old ones left serving: `UpdateFailed` with its last logs.
    /// Without a running proxy (the first deploy, or the one that brings
    /// the proxy in) the replaced ones go as soon as `c` runs: the proxy,
    /// created next, starts with `c` as its target.
    async fn roll_container(
        &self,
        target: &HostTarget,
        docker: &Docker,
        c: &DesiredContainer,
        replaces: &[String],
    ) -> Result<(), HostError> {
        match self.container_state(target, docker, &c.name).await {
            None => self.create_and_start(target, docker, c).await?,
            Some(state) if state != "running" => {
                let what = format!("start container {}", c.name);
                self.bounded(target, &what, Self::command_limit(target), docker.start_container(&c.name, None)).await?;
            }
            Some(_) => {}
        }
        if self.is_running(target, docker, PROXY_CONTAINER).await {
            if let Err(why) = self.await_answer(target, docker, c).await {
                return Err(self.update_failed(target, docker, c, why).await);
            }
            let what = format!("switch the proxy to {}", c.name);
            let switch = proxy::switch_command(&c.role, &c.name);
            let (code, stdout, stderr) = self.exec_in(target, docker, PROXY_CONTAINER, switch, &what).await?;
            if code != 0 {
                let why = format!(
                    "the proxy refused the switch (exit {code}): {}",
                    bootstrap::tail(format!("{stdout}{stderr}").as_bytes())
                );
                return Err(self.update_failed(target, docker, c, why).await);
            }
            info!(host = %target.describe(), container = %c.name, replaces = ?replaces, "proxy switched");
            if !replaces.is_empty() {
                // The proxy's earlier workers finish the requests they hold.
                tokio::time::sleep(Duration::from_secs(proxy::DRAIN_SECONDS)).await;
            }
        }
        for old in replaces {
            self.remove_container(target, docker, old).await?;
        }
        Ok(())
    }

    /// Waits (at most `proxy::ANSWER_SECONDS`) until `c` answers HTTP 200
    /// through the Docker network, asked from the proxy; the reason when
    /// it does not, or stops running.
    async fn await_answer(&self, target: &HostTarget, docker: &Docker, c: &DesiredContainer) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(proxy::ANSWER_SECONDS);
        loop {
            let what = format!("ask {} over the Docker network", c.name);
            let last = match self.exec_in(target, docker, PROXY_CONTAINER, proxy::answers_command(&c.name), &what).await
            {
                Ok((0, _, _)) => return Ok(()),
                Ok((code, stdout, stderr)) => {
                    format!("exit {code}: {}", bootstrap::tail(format!("{stdout}{stderr}").as_bytes()))
                }
                Err(e) => e.to_string(),
            };
            if let Some(state) = self.container_state(target, docker, &c.name).await.filter(|s| s != "running") {
                return Err(format!("it is {state} instead of answering"));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "it did not answer HTTP 200 on port {} within {} s ({last})",
                    proxy::APP_PORT,
                    proxy::ANSWER_SECONDS
                ));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Removes a new container that failed its roll-out, keeping its last
    /// log lines for the error.
    async fn update_failed(
        &self,
        target: &HostTarget,
        docker: &Docker,
        c: &DesiredContainer,
        why: String,
    ) -> HostError {
        let logs = self.last_logs(target, docker, &c.name).await;
        if let Err(e) = self.remove_container(target, docker, &c.name).await {
            warn!(host = %target.describe(), container = %c.name, "removing the failed new container: {e}");
        }
        warn!(host = %target.describe(), container = %c.name, "update failed: {why}; the old container serves on");
        HostError::UpdateFailed { host: target.describe(), container: c.name.clone(), why, logs }
    }

    /// The last lines a container wrote (stdout and stderr), empty when
    /// Docker cannot give them.
    async fn last_logs(&self, target: &HostTarget, docker: &Docker, name: &str) -> String {
        let options = LogsOptionsBuilder::new().stdout(true).stderr(true).tail("10").build();
        let read = async {
            let mut out = Vec::new();
            let mut stream = docker.logs(name, Some(options));
            while let Some(Ok(chunk)) = stream.next().await {
                out.extend_from_slice(&chunk.into_bytes());
            }
            out
        };
        match tokio::time::timeout(Self::command_limit(target), read).await {
            Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
            Err(_) => String::new(),
        }
    }

    /// The state of container `name` (running, exited, ...), None when
    /// there is none or Docker cannot tell.
    async fn container_state(&self, target: &HostTarget, docker: &Docker, name: &str) -> Option<String> {
        let what = format!("inspect container {name}");
        let inspected =
            self.bounded(target, &what, Self::command_limit(target), docker.inspect_container(name, None)).await;
        inspected.ok().and_then(|i| i.state).and_then(|s| s.status).map(|s| s.to_string())
    }

    /// Whether container `name` runs; false when Docker cannot tell.
    async fn is_running(&self, target: &HostTarget, docker: &Docker, name: &str) -> bool {
        let what = format!("inspect container {name}");
        let inspected =
            self.bounded(target, &what, Self::command_limit(target), docker.inspect_container(name, None)).await;
        inspected.ok().and_then(|i| i.state).and_then(|s| s.running).unwrap_or(false)
    }

    /// Runs `redis-cli ARGS` in the redis container; it must answer OK.
    async fn redis_cli(
        &self,
        target: &HostTarget,
        docker: &Docker,
        args: &[String],
        what: &str,
    ) -> Result<(), HostError> {
        let cmd = std::iter::once("redis-cli".to_string()).chain(args.iter().cloned()).collect();
        let (code, stdout, stderr) = self.exec_in(target, docker, REDIS_CONTAINER, cmd, what).await?;
        if code == 0 && stdout.trim() == "OK" {
            return Ok(());
        }
        Err(HostError::Docker {
            host: target.describe(),
            step: what.into(),
            status: None,
            message: format!(
                "redis-cli {} exited with {code}: {}",
                args.join(" "),
                bootstrap::tail(format!("{stdout}{stderr}").as_bytes())
            ),
        })
    }

    async fn rename_container(
        &self,
        target: &HostTarget,
        docker: &Docker,
        from: &str,
        to: &str,
    ) -> Result<(), HostError> {
        let options = RenameContainerOptionsBuilder::default().name(to).build();
        let what = format!("rename container {from} to {to}");
        self.bounded(target, &what, Self::command_limit(target), docker.rename_container(from, options)).await
    }

    /// Creates the stack's network on the host unless it is there (the
    /// Docker would make a second one with the same name).
    async fn ensure_network(&self, target: &HostTarget, docker: &Docker) -> Result<(), HostError> {
        let limit = Self::command_limit(target);
        let filters = HashMap::from([("name", vec![HOST_NETWORK.to_string()])]);
        let list = ListNetworksOptionsBuilder::default().filters(&filters).build();
        let found = self.bounded(target, "list networks", limit, docker.list_networks(Some(list))).await?;
        if found.iter().any(|n| n.name.as_deref() == Some(HOST_NETWORK)) {
            return Ok(());
        }
        let request = NetworkCreateRequest {
            name: HOST_NETWORK.to_string(),
            driver: Some("bridge".into()),
            labels: Some(HashMap::from([(STACK_LABEL.to_string(), target.stack.clone())])),
            ..Default::default()
        };
        self.bounded(target, &format!("create network {HOST_NETWORK}"), limit, docker.create_network(request)).await?;
        Ok(())
    }

    /// Makes `image` present per the pull policy.
    async fn ensure_image(
        &self,
        target: &HostTarget,
        docker: &Docker,
        image: &str,
        pull: PullPolicy,
    ) -> Result<(), HostError> {
        let pull_error =
            |message: String| HostError::ImagePull { host: target.describe(), image: image.to_string(), message };
        if pull != PullPolicy::Always {
            let limit = Self::command_limit(target);
            match self.bounded(target, &format!("inspect image {image}"), limit, docker.inspect_image(image)).await {
                Ok(_) => return Ok(()),
                Err(HostError::Docker { status: Some(404), .. }) if pull == PullPolicy::IfNotPresent => {}
                Err(HostError::Docker { status: Some(404), .. }) => {
                    return Err(pull_error("the image is not on the host and imagePullPolicy is Never".into()))
                }
                Err(e) => return Err(e),
            }
        }
        let (name, tag) = pull_reference(image);
        let pulling = || async {
            let options = CreateImageOptionsBuilder::default().from_image(name).tag(tag).build();
            let mut progress = docker.create_image(Some(options), None, None);
            while let Some(step) = progress.next().await {
                step?;
            }
            Ok(())
        };
        let started = Instant::now();
        let pull_began = SystemTime::now();
        let what = format!("pull {image}");
        let mut pulled = self.bounded(target, &what, Self::command_limit(target), pulling()).await;
        if matches!(&pulled, Err(HostError::Docker { message, .. }) if message.contains(DISK_FULL)) {
            // A full disk: images no container uses go, then one more try.
            self.prune_images(target, docker).await?;
            pulled = self.bounded(target, &what, Self::command_limit(target), pulling()).await;
        }
        match pulled {
            Ok(()) => {
                debug!(host = %target.describe(), image, took_ms = started.elapsed().as_millis() as u64, "pulled");
                timeline::span(&target.stack, Stage::ImagePulled, format!("{}/{image}", target.tier), pull_began);
                Ok(())
            }
            Err(HostError::Docker { message, .. }) => Err(pull_error(message)),
            Err(e) => Err(e),
        }
    }

    /// The digest of the image `c` is created from: the pin, else the
    /// registry digest the host recorded when it pulled the image (its
    /// `RepoDigests` entry for the repository), else the image id. None
    /// when Docker cannot tell; the container is created all the same.
    async fn image_digest(&self, target: &HostTarget, docker: &Docker, c: &DesiredContainer) -> Option<String> {
        if let Some(pin) = &c.pinned_digest {
            return Some(pin.clone());
        }
        if let Some((_, digest)) = c.image.split_once('@') {
            return Some(digest.to_string());
        }
        let what = format!("inspect image {}", c.image);
        let image = self.bounded(target, &what, Self::command_limit(target), docker.inspect_image(&c.image)).await;
        let image = image.map_err(|e| debug!(host = %target.describe(), "{e}")).ok()?;
        let repository = repository_of(&c.image);
        let from_registry = image
            .repo_digests
            .unwrap_or_default()
            .into_iter()
            .find_map(|rd| rd.split_once('@').filter(|(repo, _)| *repo == repository).map(|(_, d)| d.to_string()));
        from_registry.or(image.id)
    }

    /// Removes every image no container uses (old versions left by earlier
    /// deploys), when a pull found the host's disk full.
    async fn prune_images(&self, target: &HostTarget, docker: &Docker) -> Result<(), HostError> {
        let filters = HashMap::from([("dangling", vec!["false"])]);
        let options = PruneImagesOptionsBuilder::default().filters(&filters).build();
        let what = "remove unused images from a full disk";
        let pruned =
            self.bounded(target, what, Self::command_limit(target), docker.prune_images(Some(options))).await?;
        warn!(
            host = %target.describe(),
            images = pruned.images_deleted.map_or(0, |d| d.len()),
            freed_bytes = pruned.space_reclaimed.unwrap_or(0),
            "disk full: removed unused images"
        );
        Ok(())
    }

    /// Replaces whatever holds `c`'s name with a new container, and starts it.
    async fn replace_container(
        &self,
        target: &HostTarget,
        docker: &Docker,
        c: &DesiredContainer,
    ) -> Result<(), HostError> {
        // The container it replaces is stopped and kept aside until the new
        // one runs; if the new one cannot start, the old one comes back.
        let previous = format!("{}{PREVIOUS_SUFFIX}", c.name);
        self.remove_container(target, docker, &previous).await?;
        if c.name == WORKER_CONTAINER && self.is_running(target, docker, &c.name).await {
            // A running worker may hold a vote: it stops between two.
            self.stop_between_votes(target, docker, &c.name).await?;
        }
        let kept = self.stop_container(target, docker, &c.name).await?;
        if kept {
            self.rename_container(target, docker, &c.name, &previous).await?;
        }
        match self.create_and_start(target, docker, c).await {
            Ok(()) => {
                if kept {
                    self.remove_container(target, docker, &previous).await?;
                }
                info!(host = %target.describe(), container = %c.name, image = %c.image, "container started");
                Ok(())
            }
            Err(e) if kept => {
                let restored = async {
                    self.remove_container(target, docker, &c.name).await?;
                    self.rename_container(target, docker, &previous, &c.name).await?;
                    let what = format!("start the previous {}", c.name);
                    self.bounded(target, &what, Self::command_limit(target), docker.start_container(&c.name, None))
                        .await
                };
                let outcome = match restored.await {
                    Ok(()) => "the previous configuration runs again".to_string(),
                    Err(again) => format!("restoring the previous configuration failed too: {again}"),
                };
                warn!(host = %target.describe(), container = %c.name, "new configuration failed: {e}; {outcome}");
                Err(HostError::Docker {
                    host: target.describe(),
                    step: format!("replace container {}", c.name),
                    status: None,
                    message: format!("{e}; {outcome}"),
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn create_and_start(
        &self,
        target: &HostTarget,
        docker: &Docker,
        c: &DesiredContainer,
    ) -> Result<(), HostError> {
        let limit = Self::command_limit(target);
        let options = CreateContainerOptionsBuilder::default().name(&c.name).build();
        let digest = self.image_digest(target, docker, c).await;
        let body = containers::create_body(&target.stack, c, digest.as_deref());
        let what = format!("create container {}", c.name);
        self.bounded(target, &what, limit, docker.create_container(Some(options), body)).await?;
        let what = format!("start container {}", c.name);
        self.bounded(target, &what, limit, docker.start_container(&c.name, None)).await
    }

    /// Waits (bounded) until the health checks of new containers have a
    /// verdict, so the observation after a deploy can call the tier ready.
    async fn await_health(&self, target: &HostTarget, docker: &Docker, created: &[&DesiredContainer]) {
        let deadline = Instant::now() + HEALTH_WAIT;
        let began = SystemTime::now();
        for c in created.iter().filter(|c| c.health_command.is_some()) {
            loop {
                let inspected = tokio::time::timeout(HEALTH_POLL * 10, docker.inspect_container(&c.name, None)).await;
                let status = match inspected {
                    Ok(Ok(info)) => info.state.and_then(|s| s.health).and_then(|h| h.status),
                    _ => return,
                };
                if status == Some(HealthStatusEnum::HEALTHY) {
                    let subject = format!("{}/{}", target.tier, c.name);
                    timeline::span(&target.stack, Stage::ReadinessPassed, subject, began);
                }
                if status != Some(HealthStatusEnum::STARTING) || Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(HEALTH_POLL).await;
            }
        }
        debug!(host = %target.describe(), "health checks settled");
    }

    /// Subscribes to the host's drift events (die, stop, destroy of the
    /// stack's containers): Docker's raw stream, once Docker has subscribed.
    pub(super) async fn events(&self, target: &HostTarget, key: &SshKey) -> Result<hyper::body::Incoming, HostError> {
        let client = self.docker_api(target, key).await?;
        let label = format!("{STACK_LABEL}={}", target.stack);
        let subscribe = docker_api::events(&client.session, &label, self.api_counter());
        match tokio::time::timeout(Self::command_limit(target).min(OBSERVE_TIMEOUT), subscribe).await {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(e)) => Err(docker_failure(target, "watch the stack's container events", e)),
            Err(_) => Err(HostError::Timeout {
                host: target.describe(),
                what: "subscribing to container events".into(),
                seconds: u32::try_from(OBSERVE_TIMEOUT.as_secs()).unwrap_or(u32::MAX),
            }),
        }
    }

    /// Runs one SQL statement in the postgres container; None while the
    /// worker has not created the votes table yet.
    pub(super) async fn psql(
        &self,
        db: &HostTarget,
        key: &SshKey,
        sql: &str,
        what: &str,
    ) -> Result<Option<String>, HostError> {
        let client = self.docker_api(db, key).await?;
        let cmd = ["psql", "-U", POSTGRES_USER, "-tAc", sql].map(String::from).to_vec();
        let (code, stdout, stderr) = self.exec_in(db, &client.api.docker, DB_CONTAINER, cmd, what).await?;
        if code == 0 {
            return Ok(Some(stdout));
        }
        if stderr.contains("relation \"votes\" does not exist") {
            return Ok(None);
        }
        Err(HostError::Docker {
            host: db.describe(),
            step: what.into(),
            status: None,
            message: format!("psql exited with {code}: {}", bootstrap::tail(stderr.as_bytes())),
        })
    }

    /// Runs `cmd` in container `name` and returns its exit code, stdout and stderr.
    async fn exec_in(
        &self,
        target: &HostTarget,
        docker: &Docker,
        name: &str,
        cmd: Vec<String>,
        what: &str,
    ) -> Result<(i64, String, String), HostError> {
        let run = async {
            let options = CreateExecOptions {
                cmd: Some(cmd),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            };
            let exec = docker.create_exec(name, options).await?;
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            if let StartExecResults::Attached { mut output, .. } = docker.start_exec(&exec.id, None).await? {
                while let Some(chunk) = output.next().await {
                    match chunk? {
                        LogOutput::StdOut { message } => stdout.extend_from_slice(&message),
                        LogOutput::StdErr { message } => stderr.extend_from_slice(&message),
                        LogOutput::StdIn { .. } | LogOutput::Console { .. } => {}
                    }
                }
            }
            let code = docker.inspect_exec(&exec.id).await?.exit_code.unwrap_or(-1);
            Ok((code, String::from_utf8_lossy(&stdout).into_owned(), String::from_utf8_lossy(&stderr).into_owned()))
        };
        self.bounded(target, what, Self::command_limit(target), run).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_references_name_one_tag() {
        assert_eq!(pull_reference("redis:alpine"), ("redis", "alpine"));
        assert_eq!(
            pull_reference("dockersamples/examplevotingapp_vote"),
            ("dockersamples/examplevotingapp_vote", "latest")
        );
        assert_eq!(pull_reference("10.42.0.1:5000/vote:local"), ("10.42.0.1:5000/vote", "local"));
        assert_eq!(pull_reference("10.42.0.1:5000/vote"), ("10.42.0.1:5000/vote", "latest"));
        assert_eq!(pull_reference("postgres@sha256:abc"), ("postgres@sha256:abc", ""));
    }
}
