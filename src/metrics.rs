//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints
//! (what `/healthz` judges is in `liveness`).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::engine::Failure;
use crate::liveness::Liveness;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

/// Buckets of the deploy phases: 50 ms to about 100 s.
fn phase_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 12))
}

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Counter,
    pub reconcile_duration: Histogram,
    pub errors: Family<ErrorLabels, Counter>,
    pub ec2_calls: Counter,
    pub host_round_trips: Counter,
    /// How long each phase of a deploy took (see `timeline`).
    pub deploy_phases: Family<PhaseLabels, Histogram, fn() -> Histogram>,
    pub ready_stacks: Gauge,
    /// True once the controller runs (and, with leader election, leads or waits as standby).
    pub ready: AtomicBool,
    /// Whether the controller loop makes progress: judged by /healthz.
    pub liveness: Liveness,
    /// The state of each watch the controller runs; /readyz needs every one synced and healthy.
    watches: Mutex<BTreeMap<&'static str, WatchHealth>>,
    /// Counts the Ready stacks when the metrics are rendered.
    ready_source: Mutex<Option<ReadySource>>,
    /// The last total seen of each call counter (by counter and source), so
    /// calls made by reconciles running at once are counted once.
    totals_seen: Mutex<HashMap<(Total, usize), u64>>,
}

/// Which counter a source's running total feeds.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Total {
    Ec2Calls,
    HostRoundTrips,
}

type ReadySource = Box<dyn Fn() -> i64 + Send + Sync>;

/// How one watch is doing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct WatchHealth {
    /// The first full list arrived: the cache holds the cluster's state.
    synced: bool,
    /// Why the watch fails right now, if it does.
    failing: Option<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("votingstack");
        let reconciles = Counter::default();
        let reconcile_duration = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        let errors = Family::<ErrorLabels, Counter>::default();
        let ec2_calls = Counter::default();
        let host_round_trips = Counter::default();
        let ready_stacks = Gauge::default();
        let deploy_phases = Family::<PhaseLabels, Histogram, fn() -> Histogram>::new_with_constructor(phase_histogram);
        registry.register("reconcile", "Reconciles run", reconciles.clone());
        registry.register(
            "deploy_phase_seconds",
            "How long each phase of a deploy took: network, instance_running, ssh_answering, docker_ready, \
             image_pulled, container_started, readiness_passed, smoke_test",
            deploy_phases.clone(),
        );
        registry.register("reconcile_duration_seconds", "Reconcile duration", reconcile_duration.clone());
        registry.register("reconcile_errors", "Reconciles that hit an error, by kind", errors.clone());
        registry.register("ec2_calls", "EC2 API calls made", ec2_calls.clone());
        registry.register(
            "host_round_trips",
            "Round trips to hosts: SSH execs and Docker engine API requests",
            host_round_trips.clone(),
        );
        registry.register("ready_stacks", "VotingStacks whose last reconcile found them Ready", ready_stacks.clone());
        Metrics {
            registry,
            reconciles,
            reconcile_duration,
            errors,
            ec2_calls,
            host_round_trips,
            deploy_phases,
            ready_stacks,
            ready: AtomicBool::new(false),
            liveness: Liveness::default(),
            watches: Mutex::new(BTreeMap::new()),
            ready_source: Mutex::new(None),
            totals_seen: Mutex::new(HashMap::new()),
        }
    }
}

impl Metrics {
    /// Makes the deploy phases every stack goes through (see `timeline`)
    /// observations of `votingstack_deploy_phase_seconds`.
    pub fn observe_deploy_phases(&self) {
        let phases = self.deploy_phases.clone();
        crate::timeline::set_sink(move |stage, seconds| {
            phases.get_or_create(&PhaseLabels { phase: stage.as_str().to_string() }).observe(seconds);
        });
    }

    /// Records one reconcile.
    pub fn observe_reconcile(&self, took: Duration, error: Option<Failure>) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
        if let Some(kind) = error {
            self.errors.get_or_create(&ErrorLabels { kind: kind.metric_label().to_string() }).inc();
        }
    }

    /// Brings a counter up to date with a source's running total (an EC2
    /// client's or the SSH pool's call count; `source` tells sources apart).
    /// Reconciles that run at once share their sources, so adding each
    /// one's before/after difference would count the others' calls too.
    pub fn catch_up(&self, which: Total, source: usize, total: u64) {
        let mut seen = self.totals_seen.lock().unwrap_or_else(|p| p.into_inner());
        let last = seen.entry((which, source)).or_insert(0);
        if total > *last {
            let counter = match which {
                Total::Ec2Calls => &self.ec2_calls,
                Total::HostRoundTrips => &self.host_round_trips,
            };
            counter.inc_by(total - *last);
            *last = total;
        }
    }

    /// Counts Ready stacks with `count` (over the controller's cache) each
    /// time the metrics are rendered, instead of keeping deltas.
    pub fn count_ready_with(&self, count: impl Fn() -> i64 + Send + Sync + 'static) {
        *self.ready_source.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(count));
    }

    /// A watch starts: not synced until its first list arrives.
    pub fn watch_started(&self, watch: &'static str) {
        self.watches.lock().unwrap_or_else(|p| p.into_inner()).insert(watch, WatchHealth::default());
    }

    /// A watch delivered its first full list (again, after a relist).
    pub fn watch_synced(&self, watch: &'static str) {
        let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        let w = watches.entry(watch).or_default();
        w.synced = true;
        w.failing = None;
    }

    /// A watch delivered an event: whatever failed before works again.
    pub fn watch_ok(&self, watch: &'static str) {
        if let Some(w) = self.watches.lock().unwrap_or_else(|p| p.into_inner()).get_mut(watch) {
            w.failing = None;
        }
    }

    /// A watch failed; it is retried with backoff.
    pub fn watch_failed(&self, watch: &'static str, why: String) {
        self.watches.lock().unwrap_or_else(|p| p.into_inner()).entry(watch).or_default().failing = Some(why);
    }

    /// Ok when the process may take traffic: started, every watch synced and none failing.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.ready.load(Ordering::Relaxed) {
            return Err("starting".into());
        }
        let watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        let problems: Vec<String> = watches
            .iter()
            .filter_map(|(name, w)| match (&w.failing, w.synced) {
                (Some(why), _) => Some(format!("watch of {name} fails: {why}")),
                (None, false) => Some(format!("watch of {name} has not synced yet")),
                (None, true) => None,
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        if let Some(count) = self.ready_source.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            self.ready_stacks.set(count());
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

async fn render_metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], m.render())
}

async fn healthz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    match m.liveness.check(tokio::time::Instant::now()) {
        Ok(()) => (StatusCode::OK, "ok".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn readyz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    match m.readiness() {
        Ok(()) => (StatusCode::OK, "ready".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// The router serving the three endpoints.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(metrics)
}

/// Serves the endpoints on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router(metrics)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_and_errors_are_counted() {
        let m = Metrics::default();
        m.observe_reconcile(Duration::from_millis(20), None);
        m.observe_reconcile(Duration::from_millis(30), Some(Failure::Aws));
        let text = m.render();
        assert!(text.contains("votingstack_reconcile_total 2"), "{text}");
        assert!(text.contains("votingstack_reconcile_errors_total{kind=\"aws\"} 1"), "{text}");
        assert!(text.contains("votingstack_reconcile_duration_seconds_count 2"), "{text}");
    }

    #[test]
    fn readiness_needs_every_watch_synced_and_healthy() {
        let m = Metrics::default();
        assert_eq!(m.readiness(), Err("starting".into()));
        m.ready.store(true, Ordering::Relaxed);
        assert_eq!(m.readiness(), Ok(()), "a standby runs no watch");
        m.watch_started("votingstacks");
        assert!(m.readiness().is_err_and(|e| e.contains("not synced")));
        m.watch_synced("votingstacks");
        assert_eq!(m.readiness(), Ok(()));
        m.watch_failed("votingstacks", "403 Forbidden".into());
        assert!(m.readiness().is_err_and(|e| e.contains("votingstacks fails: 403 Forbidden")));
        m.watch_ok("votingstacks");
        assert_eq!(m.readiness(), Ok(()));
    }

    #[test]
    fn running_totals_are_counted_once_whoever_reports_them() {
        let m = Metrics::default();
        // Two reconciles at once on one EC2 client: each sees the total grow
        // by the other's calls too.
        m.catch_up(Total::Ec2Calls, 1, 2);
        m.catch_up(Total::Ec2Calls, 1, 4);
        m.catch_up(Total::Ec2Calls, 1, 3);
        // Another region's client has its own total.
        m.catch_up(Total::Ec2Calls, 2, 5);
        m.catch_up(Total::HostRoundTrips, 7, 6);
        let text = m.render();
        assert!(text.contains("votingstack_ec2_calls_total 9"), "{text}");
        assert!(text.contains("votingstack_host_round_trips_total 6"), "{text}");
    }

    #[test]
    fn ready_stacks_are_counted_when_rendered() {
        let m = Metrics::default();
        m.count_ready_with(|| 3);
        assert!(m.render().contains("votingstack_ready_stacks 3"), "{}", m.render());
    }
}
