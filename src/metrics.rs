//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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

use crate::engine::ErrorKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
}

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Counter,
    pub reconcile_duration: Histogram,
    pub errors: Family<ErrorLabels, Counter>,
    pub ec2_calls: Counter,
    pub host_round_trips: Counter,
    pub ready_stacks: Gauge,
    /// True once the controller runs (and, with leader election, leads or waits as standby).
    pub ready: AtomicBool,
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
        registry.register("reconcile", "Reconciles run", reconciles.clone());
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
            ready_stacks,
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    /// Records one reconcile.
    pub fn observe_reconcile(&self, took: Duration, error: Option<ErrorKind>) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
        if let Some(kind) = error {
            self.errors.get_or_create(&ErrorLabels { kind: kind.metric_label().to_string() }).inc();
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

async fn render_metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], m.render())
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
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
        m.observe_reconcile(Duration::from_millis(30), Some(ErrorKind::Aws));
        let text = m.render();
        assert!(text.contains("votingstack_reconcile_total 2"), "{text}");
        assert!(text.contains("votingstack_reconcile_errors_total{kind=\"aws\"} 1"), "{text}");
        assert!(text.contains("votingstack_reconcile_duration_seconds_count 2"), "{text}");
    }
}
