//! SSH sessions to hosts and [`SshHosts::exec`], the one way a shell runs
//! on a host (what runs there, and why, is listed in [`crate::host`]).
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
//! accepted and its fingerprint returned for the reconcile engine to pin.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle, Msg};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{Channel, ChannelMsg};
use tokio::sync::Semaphore;
use tracing::debug;

use super::docker_api::DockerClient;
use super::hosts::SshHosts;
use super::{HostError, HostTarget, SshKey};

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

/// The pool entry of one host: its session (if any), the Docker API
/// client riding on it, and its command bound.
pub(super) struct Slot {
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    pub(super) docker: tokio::sync::Mutex<Option<DockerClient>>,
    limiter: Semaphore,
}

/// One authenticated SSH session.
pub(super) struct Session {
    handle: Handle<Client>,
    pub(super) fingerprint: String,
    /// The jump host's session this one tunnels through, kept alive with it.
    _via: Option<Arc<Session>>,
}

impl Session {
    fn is_closed(&self) -> bool {
        self.handle.is_closed() || self._via.as_ref().is_some_and(|v| v.is_closed())
    }

    pub(super) async fn open_channel(&self) -> Result<Channel<Msg>, russh::Error> {
        self.handle.channel_open_session().await
    }
}

/// russh client handler: checks the host key.
struct Client {
    expected: Option<String>,
    earlier: Option<String>,
    seen: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let fingerprint = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.fingerprint(HashAlg::Sha256).to_string(),
            PublicKeyOrCertificate::Certificate(cert) => cert.public_key().fingerprint(HashAlg::Sha256).to_string(),
        };
        let accepted = super::accepts(self.expected.as_deref(), self.earlier.as_deref(), &fingerprint);
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(fingerprint);
        }
        Ok(accepted)
    }
}

/// Compares SHA256 fingerprints, with or without the `SHA256:` prefix and
/// base64 padding.
pub(super) fn same_fingerprint(a: &str, b: &str) -> bool {
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

/// A channel that is closed when dropped (a cancelled or timed-out command).
pub(super) struct OpenChannel(Option<Channel<Msg>>);

impl OpenChannel {
    pub(super) fn new(channel: Channel<Msg>) -> OpenChannel {
        OpenChannel(Some(channel))
    }

    pub(super) fn get(&mut self) -> Option<&mut Channel<Msg>> {
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

impl SshHosts {
    pub(super) fn slot(&self, target: &HostTarget) -> Arc<Slot> {
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
                    docker: tokio::sync::Mutex::new(None),
                    limiter: Semaphore::new(self.options.max_commands_per_host.max(1)),
                })
            })
            .clone()
    }

    /// The pooled session of `target`, connecting when there is none or it died.
    pub(super) async fn session(&self, target: &HostTarget, key: &SshKey) -> Result<Arc<Session>, HostError> {
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
                    if !target.accepts(&s.fingerprint) {
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
        let handler = Client {
            expected: target.expected_host_key.clone(),
            earlier: target.earlier_host_key.clone(),
            seen: seen.clone(),
        };
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
        self.first_contact.tried(target);
        let outcome = tokio::time::timeout(Duration::from_secs(u64::from(seconds)), attempt).await;
        let presented = seen.lock().ok().and_then(|s| s.clone());
        let (handle, authenticated) = match outcome {
            Err(_) => return Err(HostError::Timeout { host, what: "SSH connection".into(), seconds }),
            Ok(Err(e)) => {
                if let (Some(expected), Some(presented)) = (&target.expected_host_key, &presented) {
                    if !target.accepts(presented) {
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
        self.first_contact.ssh_answered(target);
        Ok(Session { handle, fingerprint, _via: via })
    }

    /// Opens a session channel on the pooled session, reconnecting once
    /// when the pooled session turns out to be dead.
    pub(super) async fn channel(
        &self,
        target: &HostTarget,
        key: &SshKey,
    ) -> Result<(Arc<Session>, Channel<Msg>), HostError> {
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
    pub(super) async fn discard(&self, target: &HostTarget, session: &Arc<Session>) {
        let slot = self.slot(target);
        let mut pooled = slot.session.lock().await;
        if pooled.as_ref().is_some_and(|p| Arc::ptr_eq(p, session)) {
            *pooled = None;
        }
    }

    /// Runs `command` on the host (with `stdin`, then end of input).
    pub(super) async fn exec(
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
}

pub(super) fn append(buf: &mut Vec<u8>, data: &[u8]) {
    let room = OUTPUT_LIMIT.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> HostTarget {
        crate::fixtures::host_target()
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
}
