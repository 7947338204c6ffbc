//! The Kubernetes shell: a kube-runtime Controller over VotingStacks (and the
//! Secrets they reference) that runs the engine, writes status by server-side
//! apply, records Events, and tears stacks down through a finalizer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::api::{VotingStack, VotingStackStatus, FINALIZER};
use crate::cloud::CloudError;
use crate::engine::{ErrorKind, Outcome, Teardown};
use crate::host::events::DriftEvent;
use crate::leader::{LeadOutcome, LeaderElector, LeaseConfig};
use crate::manifest::key_from_secret;
use crate::metrics::Metrics;
use crate::wiring::{DriftHub, Engines};

/// Field manager of the operator's server-side applies.
pub const FIELD_MANAGER: &str = "votingstack-operator";

/// Errors of the Kubernetes shell.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer step failed: {0}")]
    Finalizer(String),
    #[error("{stack}: reconcile hit a {} problem; see status.conditions", .kind.metric_label())]
    Transient { stack: String, kind: ErrorKind },
    #[error("{stack}: tearing down AWS resources failed: {source}")]
    Destroy { stack: String, source: CloudError },
    #[error("VotingStack {0} has no namespace")]
    NoNamespace(String),
}

impl ControllerError {
    pub fn kind(&self) -> &'static str {
        match self {
            ControllerError::Kube(_) => "kube",
            ControllerError::Finalizer(_) => "finalizer",
            ControllerError::Transient { kind, .. } => kind.metric_label(),
            ControllerError::Destroy { .. } => "destroy",
            ControllerError::NoNamespace(_) => "invalid_object",
        }
    }
}

/// Shared state of the reconcilers.
pub struct Context {
    pub client: Client,
    pub engines: Arc<dyn Engines>,
    /// Host event streams, when the hosts support them.
    pub drift: Option<Arc<DriftHub>>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Consecutive failures per stack, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Host drift events send the stack to reconcile here.
    pub drift_tx: mpsc::Sender<ObjectRef<VotingStack>>,
}

impl Context {
    pub fn new(
        client: Client,
        engines: Arc<dyn Engines>,
        metrics: Arc<Metrics>,
        reporter: Reporter,
        drift: Option<Arc<DriftHub>>,
        drift_tx: mpsc::Sender<ObjectRef<VotingStack>>,
    ) -> Arc<Context> {
        Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            engines,
            drift,
            metrics,
            failures: Mutex::new(HashMap::new()),
            drift_tx,
        })
    }

    fn failure_count(&self, key: &str, bump: bool) -> u32 {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if bump {
            let n = map.entry(key.to_string()).or_insert(0);
            *n += 1;
            *n
        } else {
            map.remove(key);
            0
        }
    }
}

/// Exponential backoff per object: 2 s, 4 s, ... capped at 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let secs = 2u64.saturating_pow(failures.clamp(1, 16)).min(300);
    Duration::from_secs(secs)
}

/// The reconcile the Controller runs for each VotingStack.
pub async fn reconcile(stack: Arc<VotingStack>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    let ns = stack.namespace().ok_or_else(|| ControllerError::NoNamespace(stack.name_any()))?;
    let api: Api<VotingStack> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, stack, |event| async {
        match event {
            Finalizer::Apply(stack) => apply(stack, ctx.clone()).await,
            Finalizer::Cleanup(stack) => cleanup(stack, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(inner) | kube::runtime::finalizer::Error::CleanupFailed(inner) => {
            inner
        }
        other => ControllerError::Finalizer(other.to_string()),
    })
}

/// Requeue after an error, with per-object exponential backoff.
pub fn error_policy(stack: Arc<VotingStack>, err: &ControllerError, ctx: Arc<Context>) -> Action {
    let n = ctx.failure_count(&stack.key(), true);
    let wait = backoff(n);
    warn!(stack = %stack.key(), error = %err, retry_in_s = wait.as_secs(), "reconcile failed");
    ctx.metrics.errors.get_or_create(&crate::metrics::ErrorLabels { kind: err.kind().into() }).inc();
    Action::requeue(wait)
}

async fn read_key(ctx: &Context, stack: &VotingStack) -> Result<crate::host::SshKey, String> {
    let ns = stack.namespace().unwrap_or_else(|| "default".into());
    let r = &stack.spec.ssh.private_key_secret_ref;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    match secrets.get_opt(&r.name).await {
        Ok(Some(secret)) => key_from_secret(&secret, &r.key).map_err(|e| e.to_string()),
        Ok(None) => Err(format!("Secret {} was not found in namespace {ns}", r.name)),
        Err(e) => Err(format!("Secret {} could not be read: {e}", r.name)),
    }
}

async fn apply(stack: Arc<VotingStack>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    let started = Instant::now();
    let key = read_key(&ctx, &stack).await;
    let engine = ctx.engines.for_spec(&stack.spec).await;
    let ec2_before = engine.cloud().api_calls();
    let ssh_before = engine.hosts().round_trips();
    let outcome = engine.reconcile(&stack, key.clone()).await;
    ctx.metrics.ec2_calls.inc_by(engine.cloud().api_calls().saturating_sub(ec2_before));
    ctx.metrics.host_round_trips.inc_by(engine.hosts().round_trips().saturating_sub(ssh_before));
    if let (Some(hub), Ok(key)) = (&ctx.drift, &key) {
        hub.ensure(&outcome.targets, key);
    }
    write_status(&ctx.client, &stack, &outcome.status).await?;
    publish_transitions(&ctx, &stack, &outcome).await;
    ctx.metrics.observe_reconcile(started.elapsed(), outcome.error);
    let ready_before = stack.status.as_ref().and_then(|s| s.phase) == Some(crate::api::Phase::Ready);
    match (ready_before, outcome.is_ready()) {
        (false, true) => ctx.metrics.ready_stacks.inc(),
        (true, false) => ctx.metrics.ready_stacks.dec(),
        _ => 0,
    };
    let terminal = outcome.status.phase == Some(crate::api::Phase::Failed);
    match outcome.error {
        Some(kind) if !terminal && kind != ErrorKind::Secret => {
            Err(ControllerError::Transient { stack: stack.key(), kind })
        }
        _ => {
            ctx.failure_count(&stack.key(), false);
            Ok(Action::requeue(outcome.requeue_after))
        }
    }
}

async fn cleanup(stack: Arc<VotingStack>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    if let Some(hub) = &ctx.drift {
        hub.forget(&crate::cloud::StackIdentity::of(&stack).tag_value());
    }
    let engine = ctx.engines.for_spec(&stack.spec).await;
    match engine.destroy(&stack).await {
        Ok(Teardown::Retained) => {
            publish(&ctx, &stack, EventType::Normal, "Retained", "deletionPolicy Retain: AWS resources left in place")
                .await;
            Ok(Action::await_change())
        }
        Ok(Teardown::Deleted(report)) => {
            let note = format!("deleted {} AWS resources", report.deleted.len());
            publish(&ctx, &stack, EventType::Normal, "Deleted", &note).await;
            info!(stack = %stack.key(), deleted = ?report.deleted, "stack torn down");
            Ok(Action::await_change())
        }
        Err(source) => {
            publish(&ctx, &stack, EventType::Warning, "DeleteFailed", &source.to_string()).await;
            Err(ControllerError::Destroy { stack: stack.key(), source })
        }
    }
}

/// Writes status through the status subresource by server-side apply.
pub async fn write_status(client: &Client, stack: &VotingStack, status: &VotingStackStatus) -> Result<(), kube::Error> {
    let ns = stack.namespace().unwrap_or_else(|| "default".into());
    let api: Api<VotingStack> = Api::namespaced(client.clone(), &ns);
    let patch = json!({
        "apiVersion": "votingstack.dev/v1alpha1",
        "kind": "VotingStack",
        "status": status,
    });
    api.patch_status(&stack.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

async fn publish_transitions(ctx: &Context, stack: &VotingStack, outcome: &Outcome) {
    for t in &outcome.transitions {
        // A condition turning False is worth a warning when it needs a
        // person: a terminal reason, or the stack as a whole not Ready.
        let needs_attention = !t.status && (t.reason.is_terminal() || t.type_ == crate::api::ConditionType::Ready);
        let type_ = if needs_attention { EventType::Warning } else { EventType::Normal };
        let note = format!("{} is {}: {}", t.type_, if t.status { "True" } else { "False" }, t.message);
        // The action names the condition, so the Recorder keeps one event
        // series per condition and reason.
        publish_as(ctx, stack, type_, t.reason.as_str(), t.type_.as_str(), &note).await;
    }
}

async fn publish(ctx: &Context, stack: &VotingStack, type_: EventType, reason: &str, note: &str) {
    publish_as(ctx, stack, type_, reason, "Delete", note).await
}

async fn publish_as(ctx: &Context, stack: &VotingStack, type_: EventType, reason: &str, action: &str, note: &str) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &stack.object_ref(&())).await {
        warn!(stack = %stack.key(), error = %e, "could not record an Event");
    }
}

/// The stacks whose spec names a Secret.
fn stacks_using(store: &kube::runtime::reflector::Store<VotingStack>, secret: &Secret) -> Vec<ObjectRef<VotingStack>> {
    let (name, ns) = (secret.name_any(), secret.namespace());
    store
        .state()
        .iter()
        .filter(|s| s.namespace() == ns && s.spec.ssh.private_key_secret_ref.name == name)
        .map(|s| ObjectRef::from_obj(&**s))
        .collect()
}

/// Runs the Controller until shutdown. `drift_rx` carries stacks that host
/// event streams want reconciled at once.
pub async fn run_controller(ctx: Arc<Context>, drift_rx: mpsc::Receiver<ObjectRef<VotingStack>>) {
    let client = ctx.client.clone();
    let stacks: Api<VotingStack> = Api::all(client.clone());
    let secrets: Api<Secret> = Api::all(client);
    let controller = Controller::new(stacks, watcher::Config::default().any_semantic());
    let store = controller.store();
    let drift = tokio_stream_from(drift_rx);
    ctx.metrics.ready.store(true, Ordering::Relaxed);
    controller
        .watches(secrets, watcher::Config::default().any_semantic(), move |secret| stacks_using(&store, &secret))
        .reconcile_on(drift)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(stack = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "controller event"),
            }
        })
        .await;
}

fn tokio_stream_from<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Options of `votingstack controller`.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    pub metrics_addr: SocketAddr,
    pub leader_election: bool,
    pub lease_namespace: String,
    pub identity: String,
    /// Requeue of a Ready stack.
    pub resync: Duration,
}

/// Turns host drift events into reconcile requests for their stacks.
pub fn forward_drift(mut events: mpsc::Receiver<DriftEvent>, to: mpsc::Sender<ObjectRef<VotingStack>>) {
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let Some((ns, name)) = event.stack.split_once('/') else { continue };
            info!(stack = %event.stack, tier = %event.tier, container = %event.container, action = %event.action, "container drift: reconciling now");
            if to.send(ObjectRef::new(name).within(ns)).await.is_err() {
                return;
            }
        }
    });
}

/// `votingstack controller`: metrics server, optional leader election, the Controller.
pub async fn main(client: Client, opts: ControllerOptions) -> Result<(), ControllerError> {
    let metrics = Arc::new(Metrics::default());
    let server_metrics = metrics.clone();
    let addr = opts.metrics_addr;
    tokio::spawn(async move {
        if let Err(e) = crate::metrics::serve(addr, server_metrics).await {
            error!(%addr, error = %e, "metrics server stopped");
        }
    });
    let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: Some(opts.identity.clone()) };
    let (drift_tx, drift_rx) = mpsc::channel(256);
    let (event_tx, event_rx) = mpsc::channel(256);
    forward_drift(event_rx, drift_tx.clone());
    let hosts = crate::wiring::ssh_hosts();
    let settings = crate::engine::EngineSettings { resync: opts.resync, ..Default::default() };
    let engines = Arc::new(crate::wiring::RegionalEngines::new(hosts.clone(), settings));
    let hub = Arc::new(DriftHub::new(hosts, event_tx));
    let ctx = Context::new(client.clone(), engines, metrics.clone(), reporter, Some(hub), drift_tx);
    if !opts.leader_election {
        run_controller(ctx, drift_rx).await;
        return Ok(());
    }
    let elector = LeaderElector::new(
        Api::<Lease>::namespaced(client, &opts.lease_namespace),
        LeaseConfig::new(FIELD_MANAGER, opts.identity.clone()),
    );
    // A standby is healthy and ready; it just does not reconcile.
    metrics.ready.store(true, Ordering::Relaxed);
    info!(identity = %opts.identity, "waiting to lead");
    match crate::leader::lead(elector, crate::leader::shutdown_signal(), run_controller(ctx, drift_rx)).await {
        LeadOutcome::Lost => {
            error!("lost the leader lease; exiting so a new leader takes over alone");
            std::process::exit(1);
        }
        LeadOutcome::ShutdownAsStandby | LeadOutcome::Finished => Ok(()),
    }
}
