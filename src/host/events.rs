//! Drift events: a long-lived Docker events stream per host, filtered by
//! the stack's label, that reports every die/stop/destroy of the stack's
//! containers so the stack is reconciled at once instead of at the next
//! periodic requeue.
//!
//! The stream is a Docker API request on its own connection over the
//! host's pooled SSH session (see [`crate::host`]). When it ends (the host
//! rebooted, Docker restarted, the network failed) it is started again after a capped
//! exponential backoff. Dropping the [`DriftWatcher`] stops it: its channel
//! closes and Docker drops the subscription.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::models::{EventMessage, EventMessageTypeEnum};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::api::{Tier, STACK_LABEL, TIER_LABEL};

use super::hosts::SshHosts;
use super::{HostTarget, SshKey};

/// Why a drift event was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriftCause {
    /// A container of the stack died, stopped or was removed: Docker's
    /// action (`die`, `stop` or `destroy`).
    Container(String),
    /// The host's event stream itself ended (Docker stopped, or the host
    /// went away).
    StreamLost,
}

impl std::fmt::Display for DriftCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DriftCause::Container(action) => f.write_str(action),
            DriftCause::StreamLost => f.write_str("stream-lost"),
        }
    }
}

/// A container of the stack died, stopped or was removed, or the host's
/// event stream ended ([`DriftCause`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriftEvent {
    /// Value of the `votingstack.dev/stack` label (`namespace/name`).
    pub stack: String,
    pub tier: Tier,
    /// The container's name; empty for [`DriftCause::StreamLost`].
    pub container: String,
    pub cause: DriftCause,
}

/// Delays between attempts to (re)start a stream.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(500), max: Duration::from_secs(30) }
    }
}

impl Backoff {
    /// The delay after `delay`: doubled, at most `max`.
    fn next(&self, delay: Duration) -> Duration {
        (delay * 2).min(self.max).max(self.initial)
    }
}

/// Reads one message of Docker's events stream (one JSON object a line).
fn parse_event(line: &str, fallback_tier: Tier) -> Option<DriftEvent> {
    let message: EventMessage = serde_json::from_str(line.trim()).ok()?;
    if message.typ.is_some_and(|t| t != EventMessageTypeEnum::CONTAINER) {
        return None;
    }
    let attrs: BTreeMap<String, String> = message.actor?.attributes?.into_iter().collect();
    let stack = attrs.get(STACK_LABEL)?.clone();
    let tier = attrs.get(TIER_LABEL).and_then(|t| Tier::parse(t)).unwrap_or(fallback_tier);
    let container = attrs.get("name").cloned().unwrap_or_default();
    // `exec_die`-like verbs come as `verb: detail`; keep the verb
    let action = message.action.unwrap_or_default().split(':').next().unwrap_or_default().trim().to_string();
    Some(DriftEvent { stack, tier, container, cause: DriftCause::Container(action) })
}

/// A running drift stream of one host. Dropping it stops the stream.
pub struct DriftWatcher {
    task: JoinHandle<()>,
    connected: watch::Receiver<bool>,
}

impl std::fmt::Debug for DriftWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriftWatcher").field("connected", &*self.connected.borrow()).finish()
    }
}

impl Drop for DriftWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DriftWatcher {
    /// Watches `target`'s containers of `target.stack`, sending on `events`
    /// until the watcher is dropped or the receiver is gone.
    pub fn spawn(
        hosts: Arc<SshHosts>,
        target: HostTarget,
        key: SshKey,
        events: mpsc::Sender<DriftEvent>,
    ) -> DriftWatcher {
        DriftWatcher::start(hosts, target, key, events, Backoff::default())
    }

    /// [`Self::spawn`] with the delays between attempts given.
    #[cfg(any(test, feature = "test-support"))]
    pub fn spawn_with(
        hosts: Arc<SshHosts>,
        target: HostTarget,
        key: SshKey,
        events: mpsc::Sender<DriftEvent>,
        backoff: Backoff,
    ) -> DriftWatcher {
        DriftWatcher::start(hosts, target, key, events, backoff)
    }

    fn start(
        hosts: Arc<SshHosts>,
        target: HostTarget,
        key: SshKey,
        events: mpsc::Sender<DriftEvent>,
        backoff: Backoff,
    ) -> DriftWatcher {
        let (connected_tx, connected) = watch::channel(false);
        let task = tokio::spawn(run(hosts, target, key, events, backoff, connected_tx));
        DriftWatcher { task, connected }
    }

    /// Whether the stream is up right now.
    #[cfg(any(test, feature = "test-support"))]
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Waits (at most `timeout`) until the stream is up.
    #[cfg(any(test, feature = "test-support"))]
    pub async fn wait_connected(&mut self, timeout: Duration) -> bool {
        let wait = self.connected.wait_for(|c| *c);
        matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(_)))
    }

    /// Whether the watcher has ended (its receiver was dropped).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

async fn run(
    hosts: Arc<SshHosts>,
    target: HostTarget,
    key: SshKey,
    events: mpsc::Sender<DriftEvent>,
    backoff: Backoff,
    connected: watch::Sender<bool>,
) {
    let host = target.describe();
    let mut delay = backoff.initial;
    let mut was_up = false;
    loop {
        match hosts.events(&target, &key).await {
            Ok(mut body) => {
                // Docker answers once it has subscribed: from here on no event is missed.
                debug!(%host, "drift event stream up");
                was_up = true;
                let _ = connected.send(true);
                delay = backoff.initial;
                let mut pending: Vec<u8> = Vec::new();
                let why = loop {
                    let data = match body.frame().await {
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(data) => data,
                            Err(_) => continue,
                        },
                        Some(Err(e)) => break e.to_string(),
                        None => break "Docker closed the stream".to_string(),
                    };
                    pending.extend_from_slice(&data);
                    while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=pos).collect();
                        let line = String::from_utf8_lossy(&line);
                        if let Some(ev) = parse_event(&line, target.tier) {
                            if ev.stack == target.stack && events.send(ev).await.is_err() {
                                return;
                            }
                        }
                    }
                    if pending.len() > 1 << 20 {
                        pending.clear();
                    }
                };
                let _ = connected.send(false);
                debug!(%host, %why, "drift event stream ended");
            }
            Err(e) => {
                let _ = connected.send(false);
                warn!(%host, "drift event stream: {e}");
            }
        }
        // A stream that was up and ended means Docker stopped or the
        // host went away (a stopped or terminated instance): worth a
        // reconcile now rather than at the next resync.
        if std::mem::take(&mut was_up) {
            let lost = DriftEvent {
                stack: target.stack.clone(),
                tier: target.tier,
                container: String::new(),
                cause: DriftCause::StreamLost,
            };
            if events.send(lost).await.is_err() {
                return;
            }
        }
        if events.is_closed() {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = backoff.next(delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_event_lines_become_drift_events() {
        let line = r#"{"status":"die","id":"abc","from":"r/vote:local","Type":"container","Action":"die","Actor":{"ID":"abc","Attributes":{"exitCode":"137","image":"r/vote:local","name":"vote","votingstack.dev/stack":"default/demo","votingstack.dev/tier":"frontend"}},"scope":"local","time":1,"timeNano":1}"#;
        let ev = parse_event(line, Tier::Database).unwrap();
        assert_eq!(
            ev,
            DriftEvent {
                stack: "default/demo".into(),
                tier: Tier::Frontend,
                container: "vote".into(),
                cause: DriftCause::Container("die".into())
            }
        );
        assert_eq!(parse_event("", Tier::Database), None);
        assert_eq!(
            parse_event(r#"{"Type":"network","Action":"destroy","Actor":{"Attributes":{}}}"#, Tier::Database),
            None
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = Backoff { initial: Duration::from_millis(100), max: Duration::from_millis(350) };
        assert_eq!(b.next(Duration::from_millis(100)), Duration::from_millis(200));
        assert_eq!(b.next(Duration::from_millis(200)), Duration::from_millis(350));
        assert_eq!(b.next(Duration::from_millis(350)), Duration::from_millis(350));
    }
}
