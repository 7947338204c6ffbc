//! Wiring shared by the two shells: which Cloud and Hosts the engine runs on.

use crate::api::{VotingStack, VotingStackSpec};
use crate::cli::CliError;
use crate::engine::Engine;
use crate::host::SshKey;

/// The engine for a stack's spec: EC2 in its region, SSH to its hosts.
pub async fn engine_for(_spec: &VotingStackSpec) -> Result<Engine, CliError> {
    Err(CliError::Engine(
        "this build has no EC2 provider yet; use `votingstack plan --offline`".into(),
    ))
}

/// The engine the controller runs (the region comes from each stack).
pub async fn controller_engine() -> Result<Engine, CliError> {
    Err(CliError::Engine("this build has no EC2 provider yet".into()))
}

/// A channel that fires when a host reports container drift, if the hosts
/// support event streams.
pub fn drift_wakeup(_engine: &Engine, _stack: &VotingStack, _key: &SshKey) -> Option<tokio::sync::mpsc::Receiver<()>> {
    None
}
