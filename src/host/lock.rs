//! The host's apply lock: one apply at a time on a host, whoever runs it.
//! It is taken with `flock` in a shell on the host (see [`crate::host`]).

use std::sync::atomic::Ordering;
use std::time::Duration;

use russh::ChannelMsg;

use super::hosts::SshHosts;
use super::ssh::{append, OpenChannel};
use super::{HostError, HostTarget, SshKey};

/// Where the host-side apply lock lives (world-writable, on every Linux).
const APPLY_LOCK_FILE: &str = "/tmp/votingstack-apply.lock";
/// How long an apply waits for another one on the same host.
const APPLY_LOCK_WAIT_SECS: u32 = 60;

/// The host's apply lock, held until dropped (the channel closes, the
/// command holding the lock ends, the lock is free).
pub(super) struct ApplyLock {
    _channel: OpenChannel,
}

impl SshHosts {
    /// Takes the host's apply lock: `flock` on a file on the host, held by a
    /// command that lives as long as the returned guard's channel. Two
    /// operators (say the controller and a CLI run) never change one host at
    /// once; the lock goes with the channel, also when this process dies.
    pub(super) async fn apply_lock(&self, target: &HostTarget, key: &SshKey) -> Result<ApplyLock, HostError> {
        let wait = target.command_timeout_secs.clamp(1, APPLY_LOCK_WAIT_SECS);
        let command = format!(
            "flock -w {wait} {APPLY_LOCK_FILE} sh -c 'echo locked; exec cat >/dev/null' || {{ echo busy; exit 75; }}"
        );
        let (_session, channel) = self.channel(target, key).await?;
        self.commands.fetch_add(1, Ordering::Relaxed);
        let mut channel = OpenChannel::new(channel);
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
}
