//! The host's facts: which instance answers at the address, and whether
//! Docker is installed and running there. They are read by the `facts`
//! step of the bootstrap script, a shell on the host (see [`crate::host`]).

use serde::Deserialize;

use super::bootstrap::{self, Step};
use super::hosts::SshHosts;
use super::{HostError, HostTarget, SshKey};
use crate::model::DockerState;

/// A host's facts, as the `facts` step prints them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Facts {
    /// The instance id the host reports, when it can tell.
    pub instance: Option<String>,
    pub docker: DockerState,
}

#[derive(Deserialize)]
struct RawFacts {
    #[serde(default)]
    instance: String,
    docker: String,
    #[serde(default)]
    why: String,
}

/// Reads the `facts` output (login scripts may print before it: the
/// document is the last non-empty line).
pub(super) fn parse_facts(stdout: &[u8]) -> Result<Facts, String> {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    let raw: RawFacts = serde_json::from_str(line).map_err(|e| {
        let shown: String = line.chars().take(200).collect();
        format!("{e} in {shown:?}")
    })?;
    let docker = match raw.docker.as_str() {
        "running" => DockerState::Running,
        "missing" => DockerState::Missing,
        "down" if raw.why.is_empty() => DockerState::Down("the Docker engine does not answer".into()),
        "down" => DockerState::Down(raw.why),
        other => return Err(format!("unknown docker state {other:?}")),
    };
    Ok(Facts { instance: Some(raw.instance).filter(|i| !i.is_empty()), docker })
}

impl SshHosts {
    /// The host's facts: which instance answers, and whether Docker runs.
    pub(super) async fn facts(&self, target: &HostTarget, key: &SshKey) -> Result<Facts, HostError> {
        let out = self.run_bootstrap(target, key, Step::Facts, target.connect_timeout_secs.max(30)).await?;
        if out.code != 0 {
            return Err(HostError::CommandFailed {
                host: target.describe(),
                step: Step::Facts.describe().into(),
                code: out.code,
                stderr: bootstrap::tail(&out.stderr),
            });
        }
        parse_facts(&out.stdout).map_err(|message| HostError::Parse { host: target.describe(), message })
    }
}

/// Refuses a host that says it is another instance: a replacement can get
/// its predecessor's private IP while the old host still answers there.
pub(super) fn check_instance(target: &HostTarget, facts: &Facts) -> Result<(), HostError> {
    match &facts.instance {
        Some(other) if *other != target.instance_id => Err(HostError::Unreachable {
            host: target.describe(),
            message: format!("the address still answers as instance {other}; waiting for it to pass to this one"),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_read_from_the_last_line() {
        let f = parse_facts(b"motd\n{\"instance\":\"i-0abc\",\"docker\":\"down\",\"why\":\"\"}\n").unwrap();
        assert_eq!(f.instance.as_deref(), Some("i-0abc"));
        assert_eq!(f.docker, DockerState::Down("the Docker engine does not answer".into()));
        assert!(parse_facts(b"garbage").is_err());
    }
}
