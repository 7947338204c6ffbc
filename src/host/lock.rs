//! The host's apply lock: one apply at a time on a host, whoever runs it.
//! It is taken with `flock` in a shell on the host (see [`crate::host`]).
//!
//! The lock is a lease: the command holding it on the host lets go when it
//! has heard nothing from its holder for [`LEASE_SECS`] (the holder sends a
//! line every [`HEARTBEAT`]), or when its channel closes. An operator that
//! dies or is partitioned away therefore releases the lock within
//! [`LEASE_SECS`], whatever the host's sshd or TCP keepalive settings; the
//! instances the operator launches also drop a silent client within about
//! 45 s (`ClientAliveInterval 15`, `ClientAliveCountMax 3`, from their user
//! data, see [`crate::host::HostKey::user_data`]).

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
/// The host lets go of the lock after this long without a heartbeat.
const LEASE_SECS: u32 = 30;
/// How often the holder renews its lease.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// The host's apply lock, held until dropped (the heartbeats stop, the
/// channel closes, the command holding the lock ends, the lock is free).
pub(super) struct ApplyLock {
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Drop for ApplyLock {
    fn drop(&mut self) {
        // The task owns the channel: aborting it closes the channel.
        self.heartbeat.abort();
    }
}

/// The command that holds the lock `file` on the host: takes it (waiting
/// up to `wait` s), says `locked`, then holds it while a line arrives at
/// least every `lease` s; silence or end of input ends it, and the lock
/// with it.
fn lock_command(file: &str, wait: u32, lease: u32) -> String {
    format!(
        "flock -w {wait} {file} sh -c 'echo locked; \
         while l=$(timeout {lease} head -n 1) && [ -n \"$l\" ]; do :; done' || {{ echo busy; exit 75; }}"
    )
}

/// Renews the lease every [`HEARTBEAT`] until aborted or the channel fails.
async fn renew(mut channel: OpenChannel) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let Some(ch) = channel.get() else { return };
        if ch.data(&b"alive\n"[..]).await.is_err() {
            return;
        }
    }
}

impl SshHosts {
    /// Takes the host's apply lock: `flock` on a file on the host, held by a
    /// command that lives as long as the returned guard's channel. Two
    /// operators (say the controller and a CLI run) never change one host at
    /// once; the lock goes with the channel, also when this process dies.
    pub(super) async fn apply_lock(&self, target: &HostTarget, key: &SshKey) -> Result<ApplyLock, HostError> {
        let wait = target.command_timeout_secs.clamp(1, APPLY_LOCK_WAIT_SECS);
        let command = lock_command(APPLY_LOCK_FILE, wait, LEASE_SECS);
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
            Ok(Ok(true)) => Ok(ApplyLock { heartbeat: tokio::spawn(renew(channel)) }),
            Ok(Ok(false)) | Err(_) => Err(HostError::Busy { host: target.describe(), seconds: wait }),
            Ok(Err(e)) => Err(HostError::Unreachable {
                host: target.describe(),
                message: format!("take the host's apply lock: {e}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    use std::time::Instant;

    fn have(tool: &str) -> bool {
        Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
    }

    /// Takes the lock as the host would; returns the holder once it said `locked`.
    fn hold(file: &str, lease: u32) -> std::process::Child {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(lock_command(file, 5, lease))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "locked");
        child
    }

    fn free(file: &str) -> bool {
        Command::new("flock").args(["-n", file, "true"]).status().unwrap().success()
    }

    #[test]
    fn the_lock_is_a_lease_that_lapses_when_its_holder_falls_silent() {
        if !have("flock") || !have("timeout") {
            eprintln!("skipped: flock or timeout is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("apply.lock").display().to_string();
        let mut holder = hold(&file, 1);
        let mut stdin = holder.stdin.take().unwrap();
        // Renewed more often than the lease: held well past one lease.
        let renewing = Instant::now() + Duration::from_millis(2500);
        while Instant::now() < renewing {
            stdin.write_all(b"alive\n").unwrap();
            stdin.flush().unwrap();
            std::thread::sleep(Duration::from_millis(200));
            assert!(holder.try_wait().unwrap().is_none(), "a renewed lease lapsed");
        }
        assert!(!free(&file), "the lock is free while its lease is renewed");
        // Silent (the input stays open, as over a partitioned connection): it lapses.
        let deadline = Instant::now() + Duration::from_secs(10);
        while holder.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the lease did not lapse");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(free(&file));
        drop(stdin);
        // End of input (the channel closed) lets go at once.
        let mut holder = hold(&file, 30);
        drop(holder.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while holder.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the lock outlived its channel");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(free(&file));
    }
}
