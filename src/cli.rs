//! The CLI shell: `votingstack plan|apply|destroy|snapshot -f FILE` runs the engine
//! without a cluster, keeping status in a local state file like a
//! Terraform state.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::api::conditions::find_condition;
use crate::api::{ConditionType, Phase, Tier, VotingStack, VotingStackStatus};
use crate::engine::plan::Plan;
use crate::engine::{Engine, Outcome, Teardown};
use crate::host::events::{DriftCause, DriftEvent};
use crate::manifest::{Manifest, ManifestError};
use crate::model::ObservedInfra;
use crate::timeline;

/// Errors of the CLI, each with what to do.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Manifest(Vec<ManifestError>),
    #[error("state file {path}: {message}")]
    State { path: PathBuf, message: String },
    #[error("{0}")]
    Cloud(#[from] crate::cloud::CloudError),
    #[error("{stack} is not Ready after {seconds} s: {message}")]
    Timeout { stack: String, seconds: u64, message: String },
    #[error("{stack} needs you: {message}")]
    Failed { stack: String, message: String },
    #[error("cannot render the CRD: {0}")]
    Crd(#[from] serde_yaml::Error),
    #[error("cannot reach the Kubernetes API (kubeconfig or in-cluster config): {0}")]
    KubeConfig(#[from] kube::Error),
    #[error("{0}")]
    Controller(#[from] crate::controller::ControllerError),
    #[error("{0}; give scheme://host[:port], for example --allow-endpoint http://127.0.0.1:5055")]
    AllowEndpoint(#[from] crate::api::endpoint::AllowEndpointError),
}

/// What the CLI keeps between runs, next to the manifest.
#[derive(Serialize, Deserialize, Default, Debug, Clone)]
pub struct State {
    /// Stands in for the Kubernetes uid (ClientTokens derive from it).
    pub uid: String,
    /// Stands in for metadata.generation: moves when the manifest's spec changes.
    #[serde(default)]
    pub generation: i64,
    /// Hash of the spec `generation` belongs to.
    #[serde(default)]
    pub spec_hash: String,
    #[serde(default)]
    pub status: VotingStackStatus,
}

impl State {
    /// Moves `generation` on when `spec` differs from the last one seen.
    pub fn track_spec(&mut self, spec: &crate::api::VotingStackSpec) {
        use sha2::{Digest, Sha256};
        let hash = serde_json::to_vec(spec).map(|j| hex::encode(Sha256::digest(j))).unwrap_or_default();
        if hash != self.spec_hash {
            self.generation += 1;
            self.spec_hash = hash;
        }
    }
}

/// Default state file: `<manifest dir>/.votingstack/<namespace>.<name>.json`.
pub fn default_state_path(manifest: &Manifest) -> PathBuf {
    let dir = manifest.file.parent().unwrap_or(Path::new("."));
    let m = &manifest.stack.metadata;
    dir.join(".votingstack").join(format!(
        "{}.{}.json",
        m.namespace.as_deref().unwrap_or("default"),
        m.name.as_deref().unwrap_or("stack")
    ))
}

pub fn load_state(path: &Path) -> Result<Option<State>, CliError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| CliError::State { path: path.into(), message: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CliError::State { path: path.into(), message: e.to_string() }),
    }
}

pub fn save_state(path: &Path, state: &State) -> Result<(), CliError> {
    let err = |e: std::io::Error| CliError::State { path: path.into(), message: e.to_string() };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let text = serde_json::to_string_pretty(state)
        .map_err(|e| CliError::State { path: path.into(), message: e.to_string() })?;
    // The state names instances and pinned host keys: readable by its owner only.
    let tmp = path.with_extension("json.tmp");
    // A fresh file (never one planted at that path), private from the start.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(err)?;
    file.write_all(text.as_bytes()).map_err(err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(err)
}

/// A fresh uid for a stack the CLI has not applied before.
fn new_uid() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::thread_rng().gen();
    hex::encode(bytes)
}

/// The manifest's stack with the state's uid and status attached.
pub fn stack_with_state(manifest: &Manifest, state: &State) -> VotingStack {
    let mut stack = manifest.stack.clone();
    stack.metadata.uid = Some(state.uid.clone());
    stack.metadata.generation = Some(state.generation.max(1));
    stack.status = Some(state.status.clone());
    stack
}

/// Renders a plan the way `votingstack plan` prints it.
pub fn render_plan(stack: &VotingStack, plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "VotingStack {}:", stack.key());
    if plan.is_empty() {
        let _ = writeln!(out, "  no changes: the stack matches its spec");
    }
    for action in &plan.actions {
        let _ = writeln!(out, "  {action}");
    }
    for d in &plan.drift {
        let _ = writeln!(
            out,
            "  ! {} instance {} drifted ({}); set instances.allowReplacement to replace it",
            d.tier, d.instance_id, d.what
        );
    }
    let _ = writeln!(out, "{} to change.", plan.actions.len());
    out
}

/// The status table `apply` prints.
pub fn render_status(status: &VotingStackStatus) -> String {
    let mut out = String::new();
    let phase = status.phase.map(Phase::as_str).unwrap_or("Pending");
    let ready = find_condition(&status.conditions, ConditionType::Ready);
    let _ = writeln!(
        out,
        "phase {phase}; Ready={} ({})",
        ready.map_or("Unknown", |c| c.status.as_str()),
        ready.map_or("", |c| c.reason.as_str())
    );
    let _ = writeln!(
        out,
        "{:<9} {:<21} {:<9} {:<15} {:<29} CONDITION",
        "TIER", "INSTANCE", "STATE", "PRIVATE IP", "CONTAINERS"
    );
    for tier in Tier::ALL {
        let t = status.tiers.as_ref().and_then(|t| t.get(tier));
        let cond = find_condition(&status.conditions, ConditionType::for_tier(tier));
        let containers: Vec<String> =
            t.map(|t| t.containers.iter().map(|c| format!("{}:{}", c.name, c.state)).collect()).unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<9} {:<21} {:<9} {:<15} {:<29} {}",
            tier.as_str(),
            t.and_then(|t| t.instance_id.as_deref()).unwrap_or("-"),
            t.and_then(|t| t.instance_state.as_deref()).unwrap_or("-"),
            t.and_then(|t| t.private_ip.as_deref()).unwrap_or("-"),
            if containers.is_empty() { "-".to_string() } else { containers.join(",") },
            cond.map_or("-".to_string(), |c| format!("{} {}", c.status, c.reason)),
        );
    }
    if let Some(v) = &status.data_volume {
        let id = v.volume_id.as_deref().unwrap_or("-");
        let at = v.attached_to.as_deref().map_or("not attached".to_string(), |i| format!("attached to {i}"));
        let _ = writeln!(out, "{:<11} {id} ({at})", "Data volume");
    }
    if let Some(b) = status.backups.as_ref().filter(|b| b.last_snapshot_id.is_some() || b.failure.is_some()) {
        let last = match (&b.last_snapshot_id, &b.last_snapshot_time) {
            (Some(id), Some(at)) => format!("{id} ({at})"),
            (Some(id), None) => id.clone(),
            _ => "-".to_string(),
        };
        let _ = writeln!(out, "{:<11} last {last}, {} kept", "Snapshots", b.kept.unwrap_or(0));
        if let Some(failure) = &b.failure {
            let _ = writeln!(out, "{:<11} {failure}", "");
        }
    }
    for (label, url) in [("Vote URL", &status.vote_url), ("Result URL", &status.result_url)] {
        if let Some(u) = url {
            let _ = writeln!(out, "{label:<11} {u}");
        }
    }
    out
}

fn progress_lines(outcome: &Outcome) -> Vec<String> {
    let mut lines: Vec<String> = outcome.applied.iter().map(|a| format!("  {a}")).collect();
    for t in &outcome.transitions {
        lines.push(format!(
            "  {} → {} ({}): {}",
            t.type_,
            if t.status { "True" } else { "False" },
            t.reason,
            t.message
        ));
    }
    lines
}

/// The longest pause between two passes of `apply --wait` while the stack is
/// not Ready: a host that starts answering SSH is reached within a second.
const NOT_READY_PAUSE: Duration = Duration::from_secs(1);

/// Options of `apply`.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    pub wait: bool,
    pub watch: bool,
    pub timeout: Duration,
    /// Print the deploy's timeline once Ready.
    pub timeline: bool,
}

/// `votingstack apply`: reconciles until Ready (`--wait`), and on (`--watch`).
/// `wake` ends a pause between reconciles early (host drift events).
pub async fn apply(
    engine: &Engine,
    manifest: &Manifest,
    state_path: &Path,
    opts: &ApplyOptions,
    mut wake: impl FnMut(&Outcome, &crate::host::SshKey) -> Option<tokio::sync::mpsc::Receiver<()>>,
) -> Result<VotingStackStatus, CliError> {
    let mut state = load_or_create_state(state_path)?;
    state.track_spec(&manifest.stack.spec);
    let started = Instant::now();
    let began = SystemTime::now();
    if opts.timeline {
        timeline::record(&manifest.stack.key());
    }
    let mut printed_ready = false;
    let mut drift: Option<tokio::sync::mpsc::Receiver<()>> = None;
    let key = manifest.ssh_key().map_err(|e| CliError::Manifest(vec![ManifestError::Key(e, manifest.file.clone())]))?;
    loop {
        let stack = stack_with_state(manifest, &state);
        let outcome = engine.reconcile(&stack, Ok(key.clone())).await;
        state.status = outcome.status.clone();
        save_state(state_path, &state)?;
        for line in progress_lines(&outcome) {
            println!("{line}");
        }
        let ready = find_condition(&state.status.conditions, ConditionType::Ready);
        let message = ready.map(|c| format!("{}: {}", c.reason, c.message)).unwrap_or_default();
        if state.status.phase == Some(Phase::Failed) {
            print!("{}", render_status(&state.status));
            return Err(CliError::Failed { stack: stack.key(), message });
        }
        if outcome.is_ready() && !printed_ready {
            print!("{}", render_status(&state.status));
            if opts.timeline {
                print!("{}", render_timeline(&manifest.stack.key(), began));
            }
            printed_ready = true;
        } else if !outcome.is_ready() {
            printed_ready = false;
        }
        if outcome.is_ready() && !opts.watch {
            return Ok(state.status);
        }
        if !opts.wait && !opts.watch {
            print!("{}", render_status(&state.status));
            return Ok(state.status);
        }
        if !opts.watch && started.elapsed() > opts.timeout {
            print!("{}", render_status(&state.status));
            return Err(CliError::Timeout { stack: stack.key(), seconds: opts.timeout.as_secs(), message });
        }
        if let Some(rx) = wake(&outcome, &key) {
            drift = Some(rx);
        }
        let pause = if outcome.is_ready() { outcome.requeue_after } else { outcome.requeue_after.min(NOT_READY_PAUSE) };
        match drift.as_mut() {
            Some(rx) => {
                tokio::select! {
                    got = rx.recv() => if got.is_none() { drift = None },
                    _ = tokio::time::sleep(pause) => {}
                }
            }
            None => tokio::time::sleep(pause).await,
        }
    }
}

/// The state at `path`, or a new one with a fresh identity (saved at once:
/// every AWS resource `apply` creates carries it in its owner tag).
pub fn load_or_create_state(path: &Path) -> Result<State, CliError> {
    if let Some(state) = load_state(path)? {
        if state.uid.is_empty() {
            return Err(CliError::State {
                path: path.into(),
                message: "it has no uid: the stack's AWS resources are found by the owner tag holding it; \
                          restore the file from a backup"
                    .into(),
            });
        }
        return Ok(state);
    }
    let state = State { uid: new_uid(), ..Default::default() };
    save_state(path, &state)?;
    Ok(state)
}

/// The marks of the deploy so far, as `apply --timeline` prints them, with
/// `ready_after_s=` (seconds from the start of apply to Ready) last.
fn render_timeline(stack: &str, began: SystemTime) -> String {
    let marks = timeline::take(stack);
    let ready = began.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let mut out = String::from("Timeline (seconds since apply started):\n");
    out.push_str(&timeline::render(&marks, began));
    out.push_str(&format!("ready_after_s={ready:.2}\n"));
    timeline::record(stack);
    out
}

/// `votingstack plan`: what apply would do; changes nothing. Without a
/// state file the stack owns nothing yet: the plan uses a fresh identity
/// that is not kept (so its key pair name ends in a suffix `apply` draws anew).
pub async fn plan(engine: Option<&Engine>, manifest: &Manifest, state_path: &Path) -> Result<Plan, CliError> {
    let mut state = load_state(state_path)?.unwrap_or_else(|| State { uid: new_uid(), ..Default::default() });
    state.track_spec(&manifest.stack.spec);
    let stack = stack_with_state(manifest, &state);
    match engine {
        Some(engine) => {
            let key = manifest.ssh_key().ok();
            Ok(engine.plan(&stack, key.as_ref()).await?)
        }
        None => {
            // Nothing observed: the whole network is planned from scratch.
            let ident = crate::cloud::StackIdentity::of(&stack);
            let key = crate::engine::desired_key_pair(&ident, manifest.ssh_key().ok().as_ref());
            // Looked up as none: a stack without state owns no data volume yet.
            let nothing = ObservedInfra { data_volumes: Some(Vec::new()), ..Default::default() };
            Ok(crate::engine::plan::plan(
                &stack.spec,
                &state.status,
                &nothing,
                &BTreeMap::new(),
                &key,
                stack.metadata.generation,
            ))
        }
    }
}

/// `votingstack destroy`: tears down per the deletion policy and forgets the
/// state. Without a state file nothing is known to belong to the stack (its
/// resources carry the owner id kept there), so nothing is deleted. With
/// `deletionPolicy: Snapshot` it waits (bounded by `timeout`) for the final
/// snapshot to complete before the data volume goes; past `timeout` the
/// state is kept and running destroy again goes on from there.
pub async fn destroy(
    engine: &Engine,
    manifest: &Manifest,
    state_path: &Path,
    timeout: Duration,
) -> Result<Teardown, CliError> {
    let Some(state) = load_state(state_path)? else {
        println!(
            "no state file at {}: nothing is known to belong to {} (its AWS resources carry the owner id kept there)",
            state_path.display(),
            manifest.stack.key()
        );
        return Ok(Teardown::Deleted(Default::default()));
    };
    let stack = stack_with_state(manifest, &state);
    let started = Instant::now();
    let teardown = loop {
        match engine.destroy(&stack).await? {
            Teardown::SnapshotPending { snapshot_id } if started.elapsed() < timeout => {
                println!("  final snapshot {snapshot_id} of the data volume is being copied; waiting");
            }
            Teardown::SnapshotPending { snapshot_id } => {
                return Err(CliError::Cloud(crate::cloud::CloudError::SnapshotWait {
                    id: snapshot_id,
                    seconds: timeout.as_secs(),
                }))
            }
            done => break done,
        }
    };
    if let Teardown::Deleted(_) = teardown {
        match std::fs::remove_file(state_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CliError::State { path: state_path.into(), message: e.to_string() }),
        }
    }
    Ok(teardown)
}

/// `votingstack snapshot`: takes a snapshot of the stack's data volume now,
/// waits (bounded by `timeout`) until it is `completed`, records it in the
/// state file and returns its id.
pub async fn snapshot(
    engine: &Engine,
    manifest: &Manifest,
    state_path: &Path,
    timeout: Duration,
) -> Result<String, CliError> {
    let Some(mut state) = load_state(state_path)? else {
        return Err(CliError::State {
            path: state_path.into(),
            message: format!(
                "no state file: nothing is known to belong to {} (apply it first, or name its state with --state)",
                manifest.stack.key()
            ),
        });
    };
    let stack = stack_with_state(manifest, &state);
    let snap = engine.snapshot_now(&stack, timeout).await?;
    let backups = state.status.backups.get_or_insert_with(Default::default);
    backups.last_snapshot_id = Some(snap.id.clone());
    backups.last_snapshot_time = Some(snap.start_time.clone());
    save_state(state_path, &state)?;
    Ok(snap.id)
}

/// Prints each drift event the hosts' event streams report, and wakes the
/// apply loop (at most one wake-up waits; more would add nothing).
pub async fn report_drift(mut events: tokio::sync::mpsc::Receiver<DriftEvent>, wake: tokio::sync::mpsc::Sender<()>) {
    while let Some(e) = events.recv().await {
        match &e.cause {
            DriftCause::StreamLost => {
                println!("  ! {}: lost the event stream of the {} host; checking", e.stack, e.tier)
            }
            DriftCause::Container(action) => {
                println!("  ! {} container {} on the {} host: {action}; repairing", e.stack, e.container, e.tier)
            }
        }
        let _ = wake.try_send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_is_private_to_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".votingstack").join("default.demo.json");
        let state = State { uid: "u".into(), ..Default::default() };
        save_state(&path, &state).unwrap();
        save_state(&path, &state).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_state(&path).unwrap().map(|s| s.uid), Some("u".into()));
    }

    #[test]
    fn a_new_state_keeps_one_identity_from_the_first_run_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("default.demo.json");
        let first = load_or_create_state(&path).unwrap();
        assert_eq!(first.uid.len(), 32);
        assert_eq!(load_or_create_state(&path).unwrap().uid, first.uid);
        let other = load_or_create_state(&dir.path().join("other.json")).unwrap();
        assert_ne!(other.uid, first.uid);
        save_state(&path, &State::default()).unwrap();
        let err = load_or_create_state(&path).unwrap_err().to_string();
        assert!(err.contains("no uid"), "{err}");
    }
}
