//! The Kubernetes shell: a kube-runtime Controller over VotingStacks (and the
//! Secrets they reference) that runs the engine, writes status by server-side
//! apply, records Events, and tears stacks down through a finalizer.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::{self, Action};
use kube::runtime::events::{EventType, Reporter};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{predicates, watcher, Controller, Predicate, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::api::{ConditionType, VotingStack, FINALIZER};
use crate::cloud::{AwsErrorKind, CloudError};
use crate::engine::{deleting_status, Failure, Teardown};
use crate::host::events::DriftEvent;
use crate::leader::{LeadOutcome, LeaderElector, LeaseConfig};
use crate::liveness::HealthRule;
use crate::manifest::key_from_secret;
use crate::metrics::Metrics;
use crate::wiring::DriftHub;
use shutdown::{Drained, ShutdownTimings};

mod context;
mod events;
pub mod shutdown;
mod status_write;

pub use context::{backoff, jitter, until_next_sweep, Context};
pub use events::{cut_note, EVENT_NOTE_LIMIT};
use events::{publish, publish_outcome};
pub use status_write::{is_conflict, refused_by_schema, write_status, write_status_if_changed};

/// Field manager of the operator's server-side applies.
pub const FIELD_MANAGER: &str = "votingstack-operator";

/// Label that makes a Secret watched: a change to a Secret carrying
/// `votingstack.dev/ssh-key: "true"` reconciles the stacks that use it at
/// once. Unlabelled Secrets still work (they are read when a stack
/// reconciles); their changes are picked up at the next resync.
pub const SECRET_LABEL: &str = "votingstack.dev/ssh-key";

/// Annotation that deletes a VotingStack without tearing anything down in
/// AWS (`"true"`): for stacks whose credentials are gone, or whose resources
/// were adopted elsewhere.
pub const ORPHAN_ANNOTATION: &str = "votingstack.dev/orphan-on-delete";

/// How often a deletion looks at its final snapshot again (each look
/// waits up to `EngineSettings::final_snapshot_wait` itself).
pub const FINAL_SNAPSHOT_POLL: std::time::Duration = std::time::Duration::from_secs(10);

/// Errors of the Kubernetes shell.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer step failed: {0}")]
    Finalizer(String),
    #[error("{stack}: reconcile hit a {} problem; see status.conditions", .kind.metric_label())]
    Transient { stack: String, kind: Failure },
    #[error(
        "{stack}: the API server refused the status write ({source}); the installed VotingStack CRD may be \
         older than the operator: re-apply crds/ (kubectl apply -f crds/votingstack.yaml)"
    )]
    StatusRefused { stack: String, source: kube::Error },
    #[error("{stack}: tearing down AWS resources failed: {source}")]
    Destroy { stack: String, source: CloudError },
    #[error("VotingStack {0} has no namespace")]
    NoNamespace(String),
    /// Deletion waits for the final snapshot: not a failure.
    #[error("{stack}: waiting for the final snapshot {snapshot_id} to complete before deleting the data volume")]
    FinalSnapshotPending { stack: String, snapshot_id: String },
}

impl ControllerError {
    /// Why the reconcile failed: picks the backoff and labels the metric.
    pub fn kind(&self) -> Failure {
        match self {
            ControllerError::Kube(kube::Error::Api(status)) if status.code == 409 => Failure::Conflict,
            ControllerError::Kube(_) | ControllerError::StatusRefused { .. } => Failure::Kube,
            ControllerError::Finalizer(_) => Failure::Finalizer,
            ControllerError::Transient { kind, .. } => *kind,
            ControllerError::Destroy { .. } | ControllerError::FinalSnapshotPending { .. } => Failure::Destroy,
            ControllerError::NoNamespace(_) => Failure::InvalidObject,
        }
    }
}

/// The reconcile the Controller runs for each VotingStack.
pub async fn reconcile(stack: Arc<VotingStack>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    let _running = ctx.metrics.liveness.reconcile_started(tokio::time::Instant::now());
    let ns = stack.namespace().ok_or_else(|| ControllerError::NoNamespace(stack.name_any()))?;
    let api: Api<VotingStack> = Api::namespaced(ctx.client.clone(), &ns);
    // The cache may not have delivered this process's last status write yet.
    let stack = ctx.caught_up(stack);
    finalizer(&api, FINALIZER, stack, |event| async {
        match event {
            Finalizer::Apply(stack) => apply(stack, ctx.clone()).await,
            Finalizer::Cleanup(stack) => {
                let key = stack.key();
                let done = cleanup(stack, ctx.clone()).await;
                if done.is_ok() {
                    ctx.forget(&key);
                }
                done
            }
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(inner) | kube::runtime::finalizer::Error::CleanupFailed(inner) => {
            inner
        }
        kube::runtime::finalizer::Error::AddFinalizer(e) | kube::runtime::finalizer::Error::RemoveFinalizer(e) => {
            ControllerError::Kube(e)
        }
        other => ControllerError::Finalizer(other.to_string()),
    })
}

/// Requeue after an error, with backoff per stack and cause.
pub fn error_policy(stack: Arc<VotingStack>, err: &ControllerError, ctx: Arc<Context>) -> Action {
    if let ControllerError::FinalSnapshotPending { .. } = err {
        // Progress, not a failure: no backoff, no error counted.
        info!(stack = %stack.key(), "{err}");
        return Action::requeue(ctx.jittered(FINAL_SNAPSHOT_POLL));
    }
    let (wait, in_a_row) = ctx.record_failure(&stack.key(), err.kind());
    let wait = ctx.jittered(wait);
    if err.kind() == Failure::Conflict && in_a_row == 1 {
        // The stack changed while it reconciled (or the cache lagged behind
        // it): normal, and the next reconcile reads it afresh.
        info!(stack = %stack.key(), retry_in_ms = wait.as_millis() as u64, "stack changed since it was read; reconciling again");
    } else {
        warn!(stack = %stack.key(), error = %err, cause = err.kind().metric_label(), retry_in_ms = wait.as_millis() as u64, "reconcile failed");
    }
    // Engine failures were counted with their reconcile; count the rest here.
    if !matches!(err, ControllerError::Transient { .. }) {
        ctx.metrics.errors.get_or_create(&crate::metrics::ErrorLabels { kind: err.kind().metric_label().into() }).inc();
    }
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
    let started = std::time::Instant::now();
    let key = read_key(&ctx, &stack).await;
    let engine = ctx.engines.for_spec(&stack.spec).await;
    let outcome = engine.reconcile_or_stop(&stack, key.clone(), &ctx.stop).await;
    count_calls(&ctx.metrics, &engine);
    // Stopped for shutdown: nothing half made is written; the next leader
    // reconciles the stack from what EC2 and the hosts show.
    let Ok(outcome) = outcome else { return Ok(Action::await_change()) };
    if let (Some(hub), Ok(key)) = (&ctx.drift, &key) {
        hub.ensure(&crate::cloud::StackIdentity::of(&stack).tag_value(), &outcome.targets, key);
    }
    let written = write_status_remembered(&ctx, &stack, &outcome.status).await;
    // One error per reconcile: a failed status write is counted (as `kube`
    // or `conflict`) by the error policy instead of what the engine found.
    ctx.metrics.observe_reconcile(started.elapsed(), if written.is_ok() { outcome.error } else { None });
    written.map_err(|source| match source {
        e if refused_by_schema(&e) => ControllerError::StatusRefused { stack: stack.key(), source: e },
        e => ControllerError::Kube(e),
    })?;
    publish_outcome(&ctx, &stack, &outcome).await;
    if !outcome.applied.is_empty() {
        // Something was created or repaired: whatever failed before, this
        // stack is moving again.
        ctx.clear_failures(&stack.key());
    }
    let terminal = outcome.status.phase == Some(crate::api::Phase::Failed);
    match outcome.error {
        Some(kind) if !terminal && kind != Failure::Secret => {
            Err(ControllerError::Transient { stack: stack.key(), kind })
        }
        _ => {
            ctx.clear_failures(&stack.key());
            let ready = outcome.status.phase == Some(crate::api::Phase::Ready) && outcome.error.is_none();
            Ok(Action::requeue(ctx.requeue_after(outcome.requeue_after, ready)))
        }
    }
}

/// Writes status if it changed (see [`write_status_if_changed`]) and
/// remembers what was stored, for a reconcile that runs before the cache
/// has seen the write ([`Context::caught_up`]).
async fn write_status_remembered(
    ctx: &Context,
    stack: &VotingStack,
    status: &crate::api::VotingStackStatus,
) -> Result<bool, kube::Error> {
    match write_status_if_changed(&ctx.client, stack, status).await? {
        Some(written) => {
            ctx.remember_write(stack, written);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Logs a status write that deletion goes on without: the status is for
/// people, and the finalizer must not wait on it (an installed CRD older
/// than the operator would otherwise keep the stack forever).
fn status_not_recorded(stack: &VotingStack, what: &str, e: &kube::Error) {
    if is_conflict(e) {
        info!(stack = %stack.key(), "{what} not recorded in status: the stack changed since it was read");
    } else if refused_by_schema(e) {
        warn!(stack = %stack.key(), error = %e, "{what} not recorded in status: the installed VotingStack CRD may be older than the operator (re-apply crds/); deleting all the same");
    } else {
        warn!(stack = %stack.key(), error = %e, "{what} not recorded in status; deleting all the same");
    }
}

/// Adds the engine's EC2 calls and host round trips since last counted to
/// the metrics (each call once, however many reconciles ran at once).
fn count_calls(metrics: &Metrics, engine: &crate::engine::Engine) {
    let cloud = Arc::as_ptr(engine.cloud()) as *const () as usize;
    let hosts = Arc::as_ptr(engine.hosts()) as *const () as usize;
    metrics.catch_up(crate::metrics::Total::Ec2Calls, cloud, engine.cloud().api_calls());
    metrics.catch_up(crate::metrics::Total::HostRoundTrips, hosts, engine.hosts().round_trips());
}

/// Whether the operator never recorded an AWS resource for the stack.
fn nothing_recorded(stack: &VotingStack) -> bool {
    let Some(status) = &stack.status else { return true };
    let network = status.network.as_ref().is_some_and(|n| n.vpc_id.is_some() || n.subnet_id.is_some());
    let instances = status.tiers.as_ref().is_some_and(|t| {
        crate::api::Tier::ALL.iter().any(|tier| t.get(*tier).is_some_and(|s| s.instance_id.is_some()))
    });
    !network && !instances
}

/// A teardown failure that cannot be retried away for a stack that never
/// recorded anything: its spec is invalid (so it never reached AWS under
/// this spec) or the credentials are refused or gone.
fn nothing_to_tear_down(stack: &VotingStack, e: &CloudError) -> bool {
    let hopeless = e.kind() == AwsErrorKind::Auth
        || matches!(e, CloudError::EndpointRefused(_))
        || matches!(e, CloudError::Transport { message, .. } if message.to_lowercase().contains("credential"))
        || !crate::api::validate(stack.metadata.name.as_deref().unwrap_or_default(), &stack.spec).is_empty();
    hopeless && nothing_recorded(stack)
}

async fn cleanup(stack: Arc<VotingStack>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    if let Some(hub) = &ctx.drift {
        hub.forget(&crate::cloud::StackIdentity::of(&stack).tag_value());
    }
    let (status, _) = deleting_status(&stack, None);
    if let Err(e) = write_status_remembered(&ctx, &stack, &status).await {
        status_not_recorded(&stack, "Deleting", &e);
    }
    // A later write (a failed teardown) goes over the one just made.
    let stack = ctx.caught_up(stack);
    let orphan = stack.annotations().get(ORPHAN_ANNOTATION).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if orphan {
        let note = format!("{ORPHAN_ANNOTATION} is true: AWS resources left in place, teardown skipped");
        publish(&ctx, &stack, EventType::Warning, "Orphaned", &note).await;
        info!(stack = %stack.key(), "deleted without teardown ({ORPHAN_ANNOTATION})");
        return Ok(Action::await_change());
    }
    let engine = ctx.engines.for_spec(&stack.spec).await;
    match engine.destroy(&stack).await {
        Ok(Teardown::Retained { data_volume }) => {
            let mut note = "deletionPolicy Retain: AWS resources left in place".to_string();
            if let Some(id) = data_volume {
                note.push_str(&format!("; data volume {id} keeps the database"));
            }
            publish(&ctx, &stack, EventType::Normal, "Retained", &note).await;
            Ok(Action::await_change())
        }
        Ok(Teardown::Deleted(report)) => {
            let mut note = format!("deleted {} AWS resources", report.deleted.len());
            if !report.snapshots.is_empty() {
                note.push_str(&format!(
                    "; final snapshot {} of the data volume keeps the database (restore it with spec.database.restoreFromSnapshot)",
                    report.snapshots.join(", ")
                ));
            }
            publish(&ctx, &stack, EventType::Normal, "Deleted", &note).await;
            info!(stack = %stack.key(), deleted = ?report.deleted, "stack torn down");
            Ok(Action::await_change())
        }
        Ok(Teardown::SnapshotPending { snapshot_id }) => {
            let note = format!(
                "final snapshot {snapshot_id} of the data volume is being copied; the volume and network are deleted once it is completed"
            );
            publish(&ctx, &stack, EventType::Normal, "FinalSnapshotPending", &note).await;
            // An error keeps the finalizer; the error policy looks again soon.
            Err(ControllerError::FinalSnapshotPending { stack: stack.key(), snapshot_id })
        }
        Err(source) if nothing_to_tear_down(&stack, &source) => {
            let note =
                format!("nothing was recorded as created and teardown cannot run ({source}); deleting without it");
            publish(&ctx, &stack, EventType::Warning, "DeleteSkipped", &note).await;
            warn!(stack = %stack.key(), error = %source, "deleted without teardown: nothing recorded");
            Ok(Action::await_change())
        }
        Err(source) => {
            let (status, _) = deleting_status(&stack, Some(&format!("teardown failed: {source}")));
            if let Err(e) = write_status_remembered(&ctx, &stack, &status).await {
                status_not_recorded(&stack, "the failed teardown", &e);
            }
            publish(&ctx, &stack, EventType::Warning, "DeleteFailed", &source.to_string()).await;
            Err(ControllerError::Destroy { stack: stack.key(), source })
        }
    }
}

/// The stacks whose spec names a Secret.
fn stacks_using(store: &Store<VotingStack>, secret: &Secret) -> Vec<ObjectRef<VotingStack>> {
    let (name, ns) = (secret.name_any(), secret.namespace());
    store
        .state()
        .iter()
        .filter(|s| s.namespace() == ns && s.spec.ssh.private_key_secret_ref.name == name)
        .map(|s| ObjectRef::from_obj(&**s))
        .collect()
}

/// Hash of whether deletion started (the deletion mark may leave generation alone).
fn deletion_started(stack: &VotingStack) -> Option<u64> {
    Some(u64::from(stack.metadata.deletion_timestamp.is_some()))
}

/// Whether a stack's Ready condition is True.
fn is_ready(stack: &VotingStack) -> bool {
    stack
        .status
        .as_ref()
        .and_then(|s| crate::api::conditions::find_condition(&s.conditions, ConditionType::Ready))
        .is_some_and(|c| c.is_true())
}

/// Names a watcher error's likely cause for the log and /readyz.
pub fn describe_watch_error(watch: &str, e: &watcher::Error) -> String {
    let code = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    };
    let hint = match code {
        Some(403) => format!(": the operator may not list/watch {watch} (check its Role or ClusterRole)"),
        Some(404) => format!(": {watch} are not served (is the CRD installed?)"),
        Some(410) => ": the watch expired; listing again".to_string(),
        _ if matches!(
            e,
            watcher::Error::InitialListFailed(kube::Error::SerdeError(_))
                | watcher::Error::WatchFailed(kube::Error::SerdeError(_))
        ) =>
        {
            format!(": an object of {watch} could not be decoded")
        }
        _ => String::new(),
    };
    format!("{e}{hint}")
}

/// Keeps the watch's health in the metrics (and so in /readyz) and logs its failures.
fn track_watch<K>(
    metrics: Arc<Metrics>,
    watch: &'static str,
) -> impl FnMut(&Result<watcher::Event<K>, watcher::Error>) {
    metrics.watch_started(watch);
    move |event| match event {
        Ok(watcher::Event::InitDone) => {
            metrics.watch_synced(watch);
            info!(watch, "cache synced");
        }
        Ok(_) => metrics.watch_ok(watch),
        Err(e) => {
            let why = describe_watch_error(watch, e);
            let gone = matches!(e, watcher::Error::WatchError(s) if s.code == 410);
            if gone {
                warn!(watch, reason = %why, "watch failed; retrying");
            } else {
                error!(watch, reason = %why, "watch failed; retrying with backoff");
            }
            metrics.watch_failed(watch, why);
        }
    }
}

/// Stacks reconciled at once unless told otherwise (`--concurrency`). A
/// reconcile mostly waits on EC2 and SSH, so this is about how many stacks
/// may be in flight, not about cores; it also bounds the SSH connects and
/// EC2 calls one burst of reconciles (a restart, a sweep) starts at once.
pub const DEFAULT_CONCURRENCY: u16 = 8;

/// Where and how the Controller runs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Watch these namespaces only (Roles in each suffice); empty: the whole
    /// cluster.
    pub namespaces: Vec<String>,
    /// Stacks reconciled at once.
    pub concurrency: u16,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { namespaces: Vec::new(), concurrency: DEFAULT_CONCURRENCY }
    }
}

/// What one watch covers: a namespace, or (None) the whole cluster.
type Scope = Option<String>;

/// The scopes to watch: each namespace named, or the whole cluster when none is.
fn scopes(namespaces: &[String]) -> Vec<Scope> {
    if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().cloned().map(Some).collect()
    }
}

/// The name a watch's health goes by in the metrics and /readyz:
/// `votingstacks`, or `votingstacks in team-a` when watching namespaces.
fn watch_name(resource: &'static str, scope: &Scope) -> &'static str {
    match scope {
        None => resource,
        // Made once per watch at start-up, and kept for the process's life.
        Some(ns) => Box::leak(format!("{resource} in {ns}").into_boxed_str()),
    }
}

/// Whether an object belongs to what a watch covers.
fn in_scope(stack: &VotingStack, scope: &Scope) -> bool {
    scope.as_ref().is_none_or(|ns| stack.namespace().as_deref() == Some(ns.as_str()))
}

/// One reflector store fed by one watch per namespace. A watch's (re)list
/// replaces the objects of its own namespace only: given to the store's
/// writer as it comes, one namespace's list would replace the whole cache.
struct MergedStore {
    writer: reflector::store::Writer<VotingStack>,
    store: Store<VotingStack>,
    /// The objects of the list each scope is in the middle of.
    listing: std::collections::HashMap<Scope, Vec<VotingStack>>,
}

impl MergedStore {
    fn new(writer: reflector::store::Writer<VotingStack>) -> MergedStore {
        MergedStore { store: writer.as_reader(), writer, listing: Default::default() }
    }

    fn apply(&mut self, scope: &Scope, event: &watcher::Event<VotingStack>) {
        match event {
            watcher::Event::Apply(_) | watcher::Event::Delete(_) => self.writer.apply_watcher_event(event),
            watcher::Event::Init => {
                self.listing.insert(scope.clone(), Vec::new());
            }
            watcher::Event::InitApply(stack) => self.listing.entry(scope.clone()).or_default().push(stack.clone()),
            watcher::Event::InitDone => {
                let listed = self.listing.remove(scope).unwrap_or_default();
                let others: Vec<VotingStack> =
                    self.store.state().iter().filter(|s| !in_scope(s, scope)).map(|s| (**s).clone()).collect();
                self.writer.apply_watcher_event(&watcher::Event::Init);
                for stack in others.into_iter().chain(listed) {
                    self.writer.apply_watcher_event(&watcher::Event::InitApply(stack));
                }
                self.writer.apply_watcher_event(&watcher::Event::InitDone);
            }
        }
    }
}

/// Runs the Controller over every namespace until SIGTERM or SIGINT.
/// `drift_rx` carries stacks that host event streams want reconciled at once.
pub async fn run_controller(ctx: Arc<Context>, drift_rx: mpsc::Receiver<ObjectRef<VotingStack>>) {
    run_controller_with(ctx, drift_rx, RunOptions::default()).await
}

/// [`run_controller_until`] SIGTERM or SIGINT, with the default shutdown timings.
pub async fn run_controller_with(
    ctx: Arc<Context>,
    drift_rx: mpsc::Receiver<ObjectRef<VotingStack>>,
    opts: RunOptions,
) {
    let timings = ShutdownTimings::default();
    run_controller_until(ctx, drift_rx, opts, crate::leader::shutdown_signal(), timings).await;
}

/// Names no VotingStack can have (a stack always has a namespace): the
/// heartbeat the loop sends itself through the Controller's trigger,
/// scheduler and runner, found missing and yielded like a reconcile's end.
const HEARTBEAT: &str = "votingstack-operator-heartbeat";

/// Runs the Controller until `signal`, then ends it within `timings`
/// (see [`shutdown`]). A stack reconciles when its generation, finalizers,
/// annotations or deletion mark change (not on the operator's own status
/// writes), when a labelled Secret it uses changes, when a host reports
/// drift, and at its requeue. The loop keeps `/healthz` informed (see
/// [`crate::liveness`]).
pub async fn run_controller_until(
    ctx: Arc<Context>,
    drift_rx: mpsc::Receiver<ObjectRef<VotingStack>>,
    opts: RunOptions,
    signal: impl Future<Output = ()>,
    timings: ShutdownTimings,
) -> Drained {
    let client = ctx.client.clone();
    let scopes = scopes(&opts.namespaces);
    let (store, writer) = reflector::store();
    let trigger = predicates::generation
        .combine(predicates::finalizers)
        .combine(predicates::annotations)
        .combine(deletion_started);
    // One watch per namespace (or one over the cluster), merged into one
    // stream of triggers and one cache.
    let stack_watches = scopes.iter().map(|scope| {
        let stacks: Api<VotingStack> = match scope {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let scope = scope.clone();
        watcher(stacks, watcher::Config::default().any_semantic())
            .default_backoff()
            .inspect(track_watch(ctx.metrics.clone(), watch_name("votingstacks", &scope)))
            .map(move |event| (scope.clone(), event))
            .boxed()
    });
    let mut cache = MergedStore::new(writer);
    let stack_events = futures::stream::select_all(stack_watches)
        .map(move |(scope, event)| {
            if let Ok(e) = &event {
                cache.apply(&scope, e);
            }
            event
        })
        .touched_objects()
        .predicate_filter(trigger, Default::default());
    let secret_config = watcher::Config::default().labels(&format!("{SECRET_LABEL}=true")).any_semantic();
    let secret_watches = scopes.iter().map(|scope| {
        let secrets: Api<Secret> = match scope {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        watcher(secrets, secret_config.clone())
            .default_backoff()
            .inspect(track_watch(ctx.metrics.clone(), watch_name("secrets", scope)))
            .boxed()
    });
    let secret_events = futures::stream::select_all(secret_watches)
        .touched_objects()
        .predicate_filter(predicates::resource_version, Default::default());
    let ready_store = store.clone();
    ctx.metrics.count_ready_with(move || ready_store.state().iter().filter(|s| is_ready(s)).count() as i64);
    let drift = tokio_stream_from(drift_rx);
    let liveness = ctx.metrics.liveness.clone();
    let heartbeat_every = liveness.rule().resync;
    let heartbeats = futures::stream::unfold((), move |()| async move {
        tokio::time::sleep(heartbeat_every).await;
        Some((ObjectRef::<VotingStack>::new(HEARTBEAT), ()))
    });
    ctx.metrics.ready.store(true, Ordering::Relaxed);
    let mapper_store = store.clone();
    let synced_store = store.clone();
    let (begin_tx, begin_rx) = futures::channel::oneshot::channel::<()>();
    let stop = ctx.stop.clone();
    let controller = Controller::for_stream(stack_events, store)
        .with_config(controller::Config::default().concurrency(opts.concurrency.max(1)))
        .watches_stream(secret_events, move |secret| stacks_using(&mapper_store, &secret))
        .reconcile_on(drift)
        .reconcile_on(heartbeats)
        .graceful_shutdown_on(async move {
            let _ = begin_rx.await;
        })
        .run(reconcile, error_policy, ctx);
    let progress = liveness.clone();
    let results = controller.for_each(move |res| {
        // Whatever comes out of the Controller is the loop advancing.
        progress.progress(tokio::time::Instant::now());
        match res {
            Ok((obj, _)) => tracing::debug!(stack = %obj, "reconciled"),
            Err(controller::Error::ObjectNotFound(obj)) if obj.name == HEARTBEAT => {}
            Err(e) => tracing::debug!(error = %e, "controller event"),
        }
        futures::future::ready(())
    });
    let work = async {
        let synced = async {
            if synced_store.wait_until_ready().await.is_ok() {
                liveness.leading(tokio::time::Instant::now());
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = results => {}
            _ = synced => {}
        }
    };
    let drained = shutdown::drain(
        work,
        signal,
        move || {
            let _ = begin_tx.send(());
        },
        &stop,
        timings,
    )
    .await;
    liveness.not_leading();
    drained
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
    /// Watch only these namespaces (the operator then needs a Role in each,
    /// not a ClusterRole); empty: every namespace.
    pub watch_namespaces: Vec<String>,
    /// Stacks reconciled at once.
    pub concurrency: u16,
    /// How long one look-up of a region's instances and security groups
    /// serves the stacks observed after it (see `cloud::ec2::inventory`).
    pub inventory_window: Duration,
    /// How long running reconciles may go on after SIGTERM before they are
    /// stopped at a step boundary.
    pub shutdown_deadline: Duration,
    /// `/healthz` fails after this many resyncs without progress.
    pub liveness_resyncs: u32,
    /// Endpoints besides AWS's that stacks may name (`--allow-endpoint`).
    pub endpoints: crate::api::EndpointPolicy,
    /// The installation (`--installation`): the tag value of everything
    /// it creates, and the only installation whose resources it changes.
    pub installation: crate::cloud::Installation,
}

/// Turns host drift events into reconcile requests for their stacks.
pub fn forward_drift(mut events: mpsc::Receiver<DriftEvent>, to: mpsc::Sender<ObjectRef<VotingStack>>) {
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let Some((ns, name)) = event.stack.split_once('/') else { continue };
            info!(stack = %event.stack, tier = %event.tier, container = %event.container, action = %event.cause, "container drift: reconciling now");
            if to.send(ObjectRef::new(name).within(ns)).await.is_err() {
                return;
            }
        }
    });
}

/// `votingstack controller`: metrics server, leader election (unless off), the Controller.
pub async fn main(client: Client, opts: ControllerOptions) -> Result<(), ControllerError> {
    let metrics = Arc::new(Metrics::default());
    metrics.observe_deploy_phases();
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
    let allowed = opts.endpoints.allowed();
    if !allowed.is_empty() {
        info!(?allowed, "EC2 endpoints allowed besides AWS's");
    }
    let settings =
        crate::engine::EngineSettings { resync: opts.resync, endpoints: opts.endpoints.clone(), ..Default::default() };
    let engines = Arc::new(
        crate::wiring::RegionalEngines::new(hosts.clone(), settings)
            .with_inventory_window(opts.inventory_window)
            .with_installation(opts.installation.clone()),
    );
    let hub = Arc::new(DriftHub::new(hosts, event_tx));
    let ctx = Context::with_jitter(client.clone(), engines, metrics.clone(), reporter, Some(hub), drift_tx, 0.1);
    ctx.sweep_ready_stacks();
    info!(
        installation = %opts.installation,
        concurrency = opts.concurrency,
        inventory_window_ms = opts.inventory_window.as_millis() as u64,
        "reconciling stacks"
    );
    let run = RunOptions { namespaces: opts.watch_namespaces.clone(), concurrency: opts.concurrency };
    if !run.namespaces.is_empty() {
        info!(namespaces = %run.namespaces.join(","), "watching these namespaces only");
    }
    metrics.liveness.set_rule(HealthRule { resync: opts.resync, resyncs: opts.liveness_resyncs });
    let timings = ShutdownTimings::with_deadline(opts.shutdown_deadline);
    // One listener for SIGTERM/SIGINT, heard by the standby and the leader alike.
    let (signal_tx, signal_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::leader::shutdown_signal().await;
        let _ = signal_tx.send(true);
    });
    let signalled = move || {
        let mut rx = signal_rx.clone();
        async move {
            // A closed channel (the listener gone) also means: shut down.
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    if !opts.leader_election {
        info!("leader election is off: this process reconciles alone");
        let drained = run_controller_until(ctx, drift_rx, run, signalled(), timings).await;
        info!(?drained, "controller stopped");
        return Ok(());
    }
    let elector = LeaderElector::new(
        Api::<Lease>::namespaced(client, &opts.lease_namespace),
        LeaseConfig::new(FIELD_MANAGER, opts.identity.clone()),
    );
    // A standby is healthy and ready; it just does not reconcile.
    metrics.ready.store(true, Ordering::Relaxed);
    info!(identity = %opts.identity, "waiting to lead");
    // The work ends (reconciles finished, stopped or dropped, within the
    // timings) before lead() releases the Lease.
    let work = async {
        let drained = run_controller_until(ctx, drift_rx, run, signalled(), timings).await;
        info!(?drained, "controller stopped; releasing the lease");
    };
    match crate::leader::lead(elector, signalled(), work).await {
        LeadOutcome::Lost => {
            error!("lost the leader lease; exiting so a new leader takes over alone");
            std::process::exit(1);
        }
        LeadOutcome::ShutdownAsStandby | LeadOutcome::Finished => Ok(()),
    }
}
