//! [`SshHosts`]: the [`Hosts`] of real machines, over SSH.
//!
//! The Docker engine of each host is driven through its API, carried over
//! the host's SSH session (`engine_api`); a shell runs only to install or
//! start Docker and to read the host's facts (`bootstrap`).
//!
//! One SSH session per host is kept and reused across calls (a pool keyed
//! by instance id, address, port and user, plus the jump host); a dead
//! session is replaced on the next call. A semaphore per host bounds the
//! commands running on it at once. The private tiers can be reached through
//! the frontend host (a `direct-tcpip` channel of the frontend's session).
//!
//! Host keys: the SHA256 fingerprint the server presents is compared with
//! `HostTarget::expected_host_key`; a different key is refused
//! ([`HostError::HostKeyMismatch`]). Without an expected key, the key is
//! accepted and its fingerprint returned for the engine to pin.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use russh::client::{self, Handle, Msg};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{Channel, ChannelMsg};
use tokio::sync::Semaphore;
use tracing::debug;

use super::bootstrap::{self, Facts, Step};
use super::engine_api::EngineApi;
use super::web::Web;
use super::{HostError, HostTarget, SshKey};
use crate::timeline::{self, Stage};

/// Most bytes kept of a command's stdout or stderr.
const OUTPUT_LIMIT: usize = 4 << 20;

/// Tuning of [`SshHosts`].
#[derive(Clone, Debug)]
pub struct SshOptions {
    /// Commands that may run on one host at once.
    pub max_commands_per_host: usize,
    /// SSH keepalive interval of pooled sessions; three unanswered
    /// keepalives end a session.
    pub keepalive: Duration,
    /// Timeout of each HTTP request (readiness, smoke test).
    pub http_timeout: Duration,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            max_commands_per_host: 4,
            keepalive: Duration::from_secs(15),
            http_timeout: Duration::from_secs(10),
        }
    }
}

/// Output of one remote command.
#[derive(Clone, Default)]
pub struct ExecOutput {
    pub code: u32,
    /// SHA256 fingerprint of the host key of the session the command ran on.
    pub host_key: String,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl fmt::Debug for ExecOutput {
    // the output may carry anything the host printed: show sizes only
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecOutput")
            .field("code", &self.code)
            .field("stdout_bytes", &self.stdout.len())
            .field("stderr_bytes", &self.stderr.len())
            .finish()
    }
}

/// The hosts of a stack, reached over SSH.
pub struct SshHosts {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    commands: AtomicU64,
    /// Requests sent to the hosts' engine APIs.
    api_requests: Arc<AtomicU64>,
    connects: AtomicU64,
    options: SshOptions,
    web: Web,
    /// Per instance id: how far its first contact got, for the timeline.
    first_contact: Mutex<HashMap<String, FirstContact>>,
}

/// When the operator first tried an instance, and when SSH and Docker
/// first answered there.
#[derive(Clone, Copy, Debug)]
struct FirstContact {
    tried: SystemTime,
    ssh: Option<SystemTime>,
    docker: bool,
}

/// Instances remembered for the timeline at most; finished ones go first.
const FIRST_CONTACTS_KEPT: usize = 4096;

impl fmt::Debug for SshHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshHosts")
            .field("commands_run", &self.commands.load(Ordering::Relaxed))
            .field("api_requests", &self.api_requests.load(Ordering::Relaxed))
            .field("sessions_opened", &self.connects.load(Ordering::Relaxed))
            .finish()
    }
}

/// The pool entry of one host: its session (if any), the engine API
/// client riding on it, and its command bound.
struct Slot {
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    engine: tokio::sync::Mutex<Option<HostEngine>>,
    limiter: Semaphore,
}

/// The engine API of a host, bound to the session it rides on.
#[derive(Clone)]
pub(crate) struct HostEngine {
    pub session: Arc<Session>,
    pub api: Arc<EngineApi>,
}

/// One authenticated SSH session.
pub(crate) struct Session {
    handle: Handle<Client>,
    pub(crate) fingerprint: String,
    /// The jump host's session this one tunnels through, kept alive with it.
    _via: Option<Arc<Session>>,
}

impl Session {
    fn is_closed(&self) -> bool {
        self.handle.is_closed() || self._via.as_ref().is_some_and(|v| v.is_closed())
    }

    pub(crate) async fn open_channel(&self) -> Result<Channel<Msg>, russh::Error> {
        self.handle.channel_open_session().await
    }
}

/// russh client handler: checks the host key.
struct Client {
    expected: Option<String>,
    seen: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let fingerprint = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.fingerprint(HashAlg::Sha256).to_string(),
            PublicKeyOrCertificate::Certificate(cert) => cert.public_key().fingerprint(HashAlg::Sha256).to_string(),
        };
        let accepted = self.expected.as_deref().is_none_or(|want| same_fingerprint(want, &fingerprint));
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(fingerprint);
        }
        Ok(accepted)
    }
}

/// Compares SHA256 fingerprints, with or without the `SHA256:` prefix and
/// base64 padding.
pub fn same_fingerprint(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.trim().trim_start_matches("SHA256:").trim_end_matches('=').to_string();
    norm(a) == norm(b)
}

fn pool_key(t: &HostTarget) -> String {
    let mut k = format!("{}@{}:{}/{}", t.instance_id, t.address, t.port, t.user);
    if let Some(j) = &t.jump {
        k.push_str(" via ");
        k.push_str(&pool_key(j));
    }
    k
}

impl Default for SshHosts {
    fn default() -> Self {
        SshHosts::new(SshOptions::default())
    }
}

/// A channel that is closed when dropped (a cancelled or timed-out command).
struct OpenChannel(Option<Channel<Msg>>);

impl OpenChannel {
    fn get(&mut self) -> Option<&mut Channel<Msg>> {
        self.0.as_mut()
    }
}

impl Drop for OpenChannel {
    fn drop(&mut self) {
        if let Some(ch) = self.0.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = ch.close().await;
                });
            }
        }
    }
}

/// Where the host-side apply lock lives (world-writable, on every Linux).
const APPLY_LOCK_FILE: &str = "/tmp/votingstack-apply.lock";
/// How long an apply waits for another one on the same host.
const APPLY_LOCK_WAIT_SECS: u32 = 60;

/// The host's apply lock, held until dropped (the channel closes, the
/// command holding the lock ends, the lock is free).
pub(crate) struct ApplyLock {
    _channel: OpenChannel,
}

impl SshHosts {
    pub fn new(options: SshOptions) -> SshHosts {
        let web = Web::new(options.http_timeout);
        SshHosts {
            slots: Mutex::new(HashMap::new()),
            commands: AtomicU64::new(0),
            api_requests: Arc::new(AtomicU64::new(0)),
            connects: AtomicU64::new(0),
            options,
            web,
            first_contact: Mutex::new(HashMap::new()),
        }
    }

    /// The counter of engine API requests.
    pub(crate) fn api_counter(&self) -> &std::sync::atomic::AtomicU64 {
        &self.api_requests
    }

    /// SSH execs plus engine API requests so far.
    pub(crate) fn round_trips_so_far(&self) -> u64 {
        self.commands.load(Ordering::Relaxed) + self.api_requests.load(Ordering::Relaxed)
    }

    /// The HTTP client for readiness checks and the smoke vote.
    pub(crate) fn web(&self) -> &Web {
        &self.web
    }

    /// SSH sessions opened so far (a steady pool opens none).
    pub fn sessions_opened(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Drops every pooled session (they close once idle).
    pub fn forget_sessions(&self) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.clear();
        }
    }

    fn slot(&self, target: &HostTarget) -> Arc<Slot> {
        let key = pool_key(target);
        let mut slots = match self.slots.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !slots.contains_key(&key) {
            // forget hosts without a live session (terminated instances, old addresses)
            slots.retain(|_, slot| match slot.session.try_lock() {
                Ok(s) => s.as_ref().is_some_and(|s| !s.is_closed()),
                Err(_) => true,
            });
        }
        slots
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Slot {
                    session: tokio::sync::Mutex::new(None),
                    engine: tokio::sync::Mutex::new(None),
                    limiter: Semaphore::new(self.options.max_commands_per_host.max(1)),
                })
            })
            .clone()
    }

    /// The pooled session of `target`, connecting when there is none or it died.
    async fn session(&self, target: &HostTarget, key: &SshKey) -> Result<Arc<Session>, HostError> {
        let via = match &target.jump {
            Some(jump) => {
                if jump.jump.is_some() {
                    return Err(HostError::Unreachable {
                        host: target.describe(),
                        message: "a jump host reached through another jump host is not supported".into(),
                    });
                }
                Some(self.direct_session(jump, key, None).await?)
            }
            None => None,
        };
        self.direct_session(target, key, via).await
    }

    async fn direct_session(
        &self,
        target: &HostTarget,
        key: &SshKey,
        via: Option<Arc<Session>>,
    ) -> Result<Arc<Session>, HostError> {
        let slot = self.slot(target);
        let mut pooled = slot.session.lock().await;
        if let Some(s) = pooled.as_ref() {
            let via_changed = match (&via, &s._via) {
                (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                _ => false,
            };
            if !s.is_closed() && !via_changed {
                if let Some(want) = &target.expected_host_key {
                    if !same_fingerprint(want, &s.fingerprint) {
                        let presented = s.fingerprint.clone();
                        *pooled = None;
                        return Err(HostError::HostKeyMismatch {
                            host: target.describe(),
                            expected: want.clone(),
                            presented,
                        });
                    }
                }
                return Ok(s.clone());
            }
            *pooled = None;
        }
        let session = Arc::new(self.connect(target, key, via).await?);
        *pooled = Some(session.clone());
        Ok(session)
    }

    async fn connect(
        &self,
        target: &HostTarget,
        key: &SshKey,
        via: Option<Arc<Session>>,
    ) -> Result<Session, HostError> {
        let host = target.describe();
        let seconds = target.connect_timeout_secs.max(1);
        let seen = Arc::new(Mutex::new(None));
        let handler = Client { expected: target.expected_host_key.clone(), seen: seen.clone() };
        let config = Arc::new(client::Config {
            keepalive_interval: Some(self.options.keepalive),
            keepalive_max: 3,
            inactivity_timeout: None,
            nodelay: true,
            ..Default::default()
        });
        let attempt = async {
            let mut handle = match &via {
                None => client::connect(config, (target.address, target.port), handler).await?,
                Some(jump) => {
                    let tunnel = jump
                        .handle
                        .channel_open_direct_tcpip(target.address.to_string(), u32::from(target.port), "127.0.0.1", 0)
                        .await?;
                    client::connect_stream(config, tunnel.into_stream(), handler).await?
                }
            };
            let hash = handle.best_supported_rsa_hash().await?.flatten();
            let auth = handle
                .authenticate_publickey(target.user.clone(), PrivateKeyWithHashAlg::new(key.private(), hash))
                .await?;
            Ok::<_, russh::Error>((handle, auth.success()))
        };
        self.connects.fetch_add(1, Ordering::Relaxed);
        self.contact(target, |_| {});
        let outcome = tokio::time::timeout(Duration::from_secs(u64::from(seconds)), attempt).await;
        let presented = seen.lock().ok().and_then(|s| s.clone());
        let (handle, authenticated) = match outcome {
            Err(_) => return Err(HostError::Timeout { host, what: "SSH connection".into(), seconds }),
            Ok(Err(e)) => {
                if let (Some(expected), Some(presented)) = (&target.expected_host_key, &presented) {
                    if !same_fingerprint(expected, presented) {
                        return Err(HostError::HostKeyMismatch {
                            host,
                            expected: expected.clone(),
                            presented: presented.clone(),
                        });
                    }
                }
                let message = match &via {
                    Some(_) => {
                        format!("{e} (through {})", target.jump.as_ref().map(|j| j.describe()).unwrap_or_default())
                    }
                    None => e.to_string(),
                };
                return Err(HostError::Unreachable { host, message });
            }
            Ok(Ok(pair)) => pair,
        };
        if !authenticated {
            return Err(HostError::AuthRefused { host, user: target.user.clone() });
        }
        let fingerprint = presented.unwrap_or_default();
        debug!(host = %target.describe(), %fingerprint, "SSH session opened");
        self.contact(target, |c| {
            if c.ssh.is_none() {
                c.ssh = Some(SystemTime::now());
                timeline::span(&target.stack, Stage::SshAnswering, target.tier.as_str(), c.tried);
            }
        });
        Ok(Session { handle, fingerprint, _via: via })
    }

    /// Updates the first-contact record of the target's instance (made at
    /// the first attempt).
    fn contact(&self, target: &HostTarget, update: impl FnOnce(&mut FirstContact)) {
        let mut contacts = self.first_contact.lock().unwrap_or_else(|p| p.into_inner());
        if contacts.len() >= FIRST_CONTACTS_KEPT && !contacts.contains_key(&target.instance_id) {
            contacts.retain(|_, c| !c.docker);
            if contacts.len() >= FIRST_CONTACTS_KEPT {
                contacts.clear();
            }
        }
        let entry = contacts.entry(target.instance_id.clone()).or_insert(FirstContact {
            tried: SystemTime::now(),
            ssh: None,
            docker: false,
        });
        update(entry);
    }

    /// The host's Docker engine answered its API: the first time for an
    /// instance, the timeline gets the phase from SSH to Docker.
    pub(crate) fn docker_answered(&self, target: &HostTarget) {
        self.contact(target, |c| {
            if let (false, Some(ssh)) = (c.docker, c.ssh) {
                c.docker = true;
                timeline::span(&target.stack, Stage::DockerReady, target.tier.as_str(), ssh);
            }
        });
    }

    /// Opens a session channel on the pooled session, reconnecting once
    /// when the pooled session turns out to be dead.
    async fn channel(&self, target: &HostTarget, key: &SshKey) -> Result<(Arc<Session>, Channel<Msg>), HostError> {
        let open_timeout = Duration::from_secs(u64::from(target.connect_timeout_secs.max(1)));
        let mut last = String::new();
        for _ in 0..2 {
            let session = self.session(target, key).await?;
            match tokio::time::timeout(open_timeout, session.open_channel()).await {
                Ok(Ok(ch)) => return Ok((session, ch)),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "opening a channel timed out".into(),
            }
            self.discard(target, &session).await;
        }
        Err(HostError::Unreachable { host: target.describe(), message: last })
    }

    /// Drops `session` from the pool if it is still the pooled one.
    async fn discard(&self, target: &HostTarget, session: &Arc<Session>) {
        let slot = self.slot(target);
        let mut pooled = slot.session.lock().await;
        if pooled.as_ref().is_some_and(|p| Arc::ptr_eq(p, session)) {
            *pooled = None;
        }
    }

    /// Runs one step of the bootstrap script: one exec. Returns its output
    /// whatever its exit code; errors are connection failures and timeouts.
    pub(crate) async fn run_bootstrap(
        &self,
        target: &HostTarget,
        key: &SshKey,
        step: Step,
        seconds: u32,
    ) -> Result<ExecOutput, HostError> {
        let text = bootstrap::script_text();
        self.exec(target, key, &bootstrap::command(step, seconds), Some(text.as_bytes()), step.describe(), seconds)
            .await
    }

    /// Runs `command` on the host (with `stdin`, then end of input).
    pub async fn exec(
        &self,
        target: &HostTarget,
        key: &SshKey,
        command: &str,
        stdin: Option<&[u8]>,
        what: &str,
        seconds: u32,
    ) -> Result<ExecOutput, HostError> {
        let slot = self.slot(target);
        let _permit = slot.limiter.acquire().await.map_err(|_| HostError::Unreachable {
            host: target.describe(),
            message: "the host's command queue is closed".into(),
        })?;
        let (session, channel) = self.channel(target, key).await?;
        self.commands.fetch_add(1, Ordering::Relaxed);
        let mut channel = OpenChannel(Some(channel));
        let run = async {
            let ch = channel.get().ok_or(russh::Error::SendError)?;
            ch.exec(true, command).await?;
            if let Some(input) = stdin {
                ch.data(input).await?;
            }
            ch.eof().await?;
            let mut out = ExecOutput::default();
            let mut code = None;
            while let Some(msg) = ch.wait().await {
                match msg {
                    ChannelMsg::Data { data } => append(&mut out.stdout, &data),
                    ChannelMsg::ExtendedData { data, ext: 1 } => append(&mut out.stderr, &data),
                    ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status),
                    ChannelMsg::ExitSignal { signal_name, .. } => {
                        append(&mut out.stderr, format!("killed by signal {signal_name:?}").as_bytes());
                        code = Some(128);
                    }
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            Ok::<_, russh::Error>((out, code))
        };
        let result = tokio::time::timeout(Duration::from_secs(u64::from(seconds.max(1))), run).await;
        match result {
            Err(_) => Err(HostError::Timeout { host: target.describe(), what: what.to_string(), seconds }),
            Ok(Err(e)) => {
                self.discard(target, &session).await;
                Err(HostError::Unreachable { host: target.describe(), message: format!("{what}: {e}") })
            }
            Ok(Ok((mut out, Some(code)))) => {
                out.code = code;
                out.host_key = session.fingerprint.clone();
                Ok(out)
            }
            Ok(Ok((_, None))) => {
                // the channel ended without an exit status: the session died
                self.discard(target, &session).await;
                Err(HostError::Unreachable {
                    host: target.describe(),
                    message: format!("{what}: the connection closed before the command finished"),
                })
            }
        }
    }

    /// Takes the host's apply lock: `flock` on a file on the host, held by a
    /// command that lives as long as the returned guard's channel. Two
    /// operators (say the controller and a CLI run) never change one host at
    /// once; the lock goes with the channel, also when this process dies.
    pub(crate) async fn apply_lock(&self, target: &HostTarget, key: &SshKey) -> Result<ApplyLock, HostError> {
        let wait = target.command_timeout_secs.clamp(1, APPLY_LOCK_WAIT_SECS);
        let command = format!(
            "flock -w {wait} {APPLY_LOCK_FILE} sh -c 'echo locked; exec cat >/dev/null' || {{ echo busy; exit 75; }}"
        );
        let (_session, channel) = self.channel(target, key).await?;
        self.commands.fetch_add(1, Ordering::Relaxed);
        let mut channel = OpenChannel(Some(channel));
        let take = async {
            let ch = channel.get().ok_or(russh::Error::SendError)?;
            ch.exec(true, command.as_str()).await?;
            let mut said = Vec::new();
            while let Some(msg) = ch.wait().await {
                match msg {
                    ChannelMsg::Data { data } => {
                        append(&mut said, &data);
                        if said.starts_with(b"locked") {
                            return Ok(true);
                        }
                    }
                    ChannelMsg::ExitStatus { .. } | ChannelMsg::Close => return Ok(false),
                    _ => {}
                }
            }
            Ok::<_, russh::Error>(false)
        };
        let limit = Duration::from_secs(u64::from(wait) + u64::from(target.connect_timeout_secs.max(1)));
        match tokio::time::timeout(limit, take).await {
            Ok(Ok(true)) => Ok(ApplyLock { _channel: channel }),
            Ok(Ok(false)) | Err(_) => Err(HostError::Busy { host: target.describe(), seconds: wait }),
            Ok(Err(e)) => Err(HostError::Unreachable {
                host: target.describe(),
                message: format!("take the host's apply lock: {e}"),
            }),
        }
    }

    /// The host's engine API client, on the pooled session. A new session
    /// first proves it reached the right instance (see [`Self::facts`]).
    pub(crate) async fn engine(&self, target: &HostTarget, key: &SshKey) -> Result<HostEngine, HostError> {
        let session = self.session(target, key).await?;
        let slot = self.slot(target);
        let mut cached = slot.engine.lock().await;
        if let Some(engine) = cached.as_ref().filter(|e| Arc::ptr_eq(&e.session, &session)) {
            return Ok(engine.clone());
        }
        *cached = None;
        let facts = self.facts(target, key).await?;
        check_instance(target, &facts)?;
        let timeout = Duration::from_secs(u64::from(target.command_timeout_secs.max(1)));
        let api = EngineApi::over(session.clone(), timeout, self.api_requests.clone()).map_err(|e| {
            HostError::Unreachable {
                host: target.describe(),
                message: format!("cannot set up the Docker engine API client: {e}"),
            }
        })?;
        let engine = HostEngine { session, api: Arc::new(api) };
        *cached = Some(engine.clone());
        Ok(engine)
    }

    /// Forgets the host's engine API client (its connection is dead, or a
    /// request on it timed out): the next call opens a new one.
    pub(crate) async fn forget_engine(&self, target: &HostTarget) {
        *self.slot(target).engine.lock().await = None;
    }

    /// The host's facts: which instance answers, and whether Docker runs.
    pub(crate) async fn facts(&self, target: &HostTarget, key: &SshKey) -> Result<Facts, HostError> {
        let out = self.run_bootstrap(target, key, Step::Facts, target.connect_timeout_secs.max(30)).await?;
        if out.code != 0 {
            return Err(HostError::CommandFailed {
                host: target.describe(),
                step: Step::Facts.describe().into(),
                code: out.code,
                stderr: bootstrap::tail(&out.stderr),
            });
        }
        bootstrap::parse_facts(&out.stdout).map_err(|message| HostError::Parse { host: target.describe(), message })
    }
}

/// Refuses a host that says it is another instance: a replacement can get
/// its predecessor's private IP while the old host still answers there.
fn check_instance(target: &HostTarget, facts: &Facts) -> Result<(), HostError> {
    match &facts.instance {
        Some(other) if *other != target.instance_id => Err(HostError::Unreachable {
            host: target.describe(),
            message: format!("the address still answers as instance {other}; waiting for it to pass to this one"),
        }),
        _ => Ok(()),
    }
}

fn append(buf: &mut Vec<u8>, data: &[u8]) {
    let room = OUTPUT_LIMIT.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Tier;
    use crate::host::Hosts;
    use std::net::Ipv4Addr;

    fn target() -> HostTarget {
        HostTarget {
            stack: "default/demo".into(),
            tier: Tier::Database,
            instance_id: "i-1".into(),
            address: Ipv4Addr::new(10, 0, 0, 4),
            port: 22,
            user: "admin".into(),
            expected_host_key: None,
            jump: None,
            connect_timeout_secs: 1,
            command_timeout_secs: 5,
        }
    }

    #[test]
    fn fingerprints_compare_with_or_without_prefix_and_padding() {
        assert!(same_fingerprint("SHA256:abc", "abc="));
        assert!(!same_fingerprint("SHA256:abc", "SHA256:abd"));
    }

    #[test]
    fn the_pool_key_names_instance_address_user_and_jump() {
        let mut t = target();
        assert_eq!(pool_key(&t), "i-1@10.0.0.4:22/admin");
        let mut j = target();
        j.instance_id = "i-f".into();
        t.jump = Some(Box::new(j));
        assert_eq!(pool_key(&t), "i-1@10.0.0.4:22/admin via i-f@10.0.0.4:22/admin");
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let mut t = target();
        t.address = Ipv4Addr::LOCALHOST;
        t.port = port;
        let key = crate::fixtures::test_key();
        let hosts = SshHosts::default();
        let err = hosts.observe(&t, &key).await.unwrap_err();
        assert!(matches!(err, HostError::Unreachable { .. }), "{err}");
        assert_eq!(hosts.round_trips(), 0);
    }
}
