//! The reconcilers' shared state, and when a stack reconciles next: backoff
//! per stack and cause, jitter, and the shared sweep of Ready stacks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::api::VotingStack;
use crate::engine::{Failure, Stop};
use crate::metrics::Metrics;
use crate::wiring::{DriftHub, Engines};

/// Exponential backoff per object: 2 s, 4 s, ... capped at 5 minutes.
pub use crate::engine::failure::backoff;

/// The failures of one stack since its last progress.
#[derive(Clone, Copy, Debug)]
struct Failures {
    /// What failed ([`ControllerError::kind`]); another cause starts over.
    cause: Failure,
    count: u32,
    /// When `count` last grew.
    bumped: Instant,
}

impl Failures {
    /// The failures after one more of `cause` at `now`: another cause starts
    /// over, and a failure within the current backoff window (a burst of
    /// triggers) does not count again.
    fn after(previous: Option<Failures>, cause: Failure, now: Instant) -> Failures {
        match previous {
            Some(p) if p.cause == cause && now.duration_since(p.bumped) < cause.backoff(p.count) => p,
            Some(p) if p.cause == cause => Failures { cause, count: p.count.saturating_add(1), bumped: now },
            _ => Failures { cause, count: 1, bumped: now },
        }
    }
}

/// This process's last status write of one stack.
struct LastWrite {
    /// The resourceVersion of the object the status was computed from.
    from: String,
    /// The object as the API server stored it after the write.
    written: Arc<VotingStack>,
}

/// Shared state of the reconcilers.
pub struct Context {
    pub client: Client,
    pub engines: Arc<dyn Engines>,
    /// Host event streams, when the hosts support them.
    pub drift: Option<Arc<DriftHub>>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Failures per stack, for backoff.
    failures: Mutex<HashMap<String, Failures>>,
    /// The last status written per stack, until the stack is gone.
    last_writes: Mutex<HashMap<String, LastWrite>>,
    /// Host drift events send the stack to reconcile here.
    pub drift_tx: mpsc::Sender<ObjectRef<VotingStack>>,
    /// Each requeue waits up to this fraction longer, so stacks that became
    /// Ready together do not reconcile in lockstep forever.
    requeue_jitter: f64,
    /// Ready stacks requeue onto one shared sweep per resync period (see
    /// [`until_next_sweep`]) instead of a jittered delay of their own.
    sweeps: AtomicBool,
    /// Asked on shutdown once the deadline has passed: running reconciles
    /// end at their next step boundary (see [`crate::engine::stop`]).
    pub stop: Stop,
}

impl Context {
    /// A context whose requeues are exact (tests).
    #[cfg(any(test, feature = "test-support"))]
    pub fn new(
        client: Client,
        engines: Arc<dyn Engines>,
        metrics: Arc<Metrics>,
        reporter: Reporter,
        drift: Option<Arc<DriftHub>>,
        drift_tx: mpsc::Sender<ObjectRef<VotingStack>>,
    ) -> Arc<Context> {
        Context::with_jitter(client, engines, metrics, reporter, drift, drift_tx, 0.0)
    }

    /// A context whose requeues wait up to `jitter` (a fraction) longer.
    pub fn with_jitter(
        client: Client,
        engines: Arc<dyn Engines>,
        metrics: Arc<Metrics>,
        reporter: Reporter,
        drift: Option<Arc<DriftHub>>,
        drift_tx: mpsc::Sender<ObjectRef<VotingStack>>,
        jitter: f64,
    ) -> Arc<Context> {
        Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            engines,
            drift,
            metrics,
            failures: Mutex::new(HashMap::new()),
            last_writes: Mutex::new(HashMap::new()),
            drift_tx,
            requeue_jitter: jitter.clamp(0.0, 1.0),
            sweeps: AtomicBool::new(false),
            stop: Stop::default(),
        })
    }

    /// From now on Ready stacks reconcile together, at the next multiple of
    /// their resync period, so one look-up of the region's inventory serves
    /// them all.
    pub fn sweep_ready_stacks(&self) {
        self.sweeps.store(true, Ordering::Relaxed);
    }

    /// How long a stack waits for its next reconcile: a Ready stack, with
    /// sweeps on, until the next sweep; otherwise `wait`, jittered.
    pub fn requeue_after(&self, wait: Duration, ready: bool) -> Duration {
        if ready && self.sweeps.load(Ordering::Relaxed) {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            until_next_sweep(now, wait)
        } else {
            self.jittered(wait)
        }
    }

    /// Counts a failure of `key` and returns how long to wait, and how many
    /// failures of this cause in a row it makes. Failures of one cause within
    /// one backoff window (a burst of triggers) count once, so a burst never
    /// stalls a stack for minutes.
    pub(super) fn record_failure(&self, key: &str, cause: Failure) -> (Duration, u32) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let next = Failures::after(map.get(key).copied(), cause, Instant::now());
        map.insert(key.to_string(), next);
        (cause.backoff(next.count), next.count)
    }

    /// Remembers that a status computed from `from` was written, and the
    /// object the API server stored.
    pub(super) fn remember_write(&self, from: &VotingStack, written: VotingStack) {
        let Some(rv) = from.resource_version() else { return };
        let entry = LastWrite { from: rv, written: Arc::new(written) };
        self.last_writes.lock().unwrap_or_else(|p| p.into_inner()).insert(from.key(), entry);
    }

    /// The stack as it is after this process's last status write of it,
    /// when `stack` is the very object that write was made from (the cache
    /// has not seen the write yet); `stack` itself otherwise. A reconcile on
    /// the older object would compute status without what the write
    /// recorded, and its write would be refused (409) anyway.
    pub fn caught_up(&self, stack: Arc<VotingStack>) -> Arc<VotingStack> {
        let map = self.last_writes.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&stack.key()) {
            Some(last)
                if stack.resource_version().as_deref() == Some(last.from.as_str())
                    && last.written.uid() == stack.uid() =>
            {
                last.written.clone()
            }
            _ => stack,
        }
    }

    /// The stack is gone: nothing of it is kept.
    pub(super) fn forget(&self, key: &str) {
        self.last_writes.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        self.clear_failures(key);
    }

    /// The stack made progress: its backoff starts over.
    pub(super) fn clear_failures(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    pub(super) fn jittered(&self, wait: Duration) -> Duration {
        jitter(wait, self.requeue_jitter)
    }
}

/// Time from `now` (since the Unix epoch) to the next multiple of `period`:
/// every Ready stack with the same period reconciles at the same instants
/// (bounded by the Controller's concurrency), so their observes fall into
/// one window of the shared inventory. At least 1 s, so a reconcile that
/// ends just before a sweep does not run twice within it.
pub fn until_next_sweep(now: Duration, period: Duration) -> Duration {
    let period_ms = period.as_millis().max(1000);
    let into = now.as_millis() % period_ms;
    let mut wait = period_ms - into;
    if wait < 1000 {
        wait += period_ms;
    }
    Duration::from_millis(wait as u64)
}

/// `wait` plus a random part of up to `fraction` of it.
pub fn jitter(wait: Duration, fraction: f64) -> Duration {
    if fraction <= 0.0 {
        return wait;
    }
    wait.mul_f64(1.0 + rand::random::<f64>() * fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_failures_counts_once() {
        let t0 = Instant::now();
        let mut f = Failures::after(None, Failure::Aws, t0);
        for ms in [1, 5, 50, 200] {
            f = Failures::after(Some(f), Failure::Aws, t0 + Duration::from_millis(ms));
        }
        assert_eq!(f.count, 1, "fifty failures within 200 ms are one");
        assert_eq!(f.cause.backoff(f.count), Duration::from_secs(2));
        let later = Failures::after(Some(f), Failure::Aws, t0 + Duration::from_secs(2));
        assert_eq!(later.count, 2, "a failure after the backoff counts");
    }

    #[test]
    fn another_cause_starts_over() {
        let t0 = Instant::now();
        let mut f = Failures::after(None, Failure::Aws, t0);
        for s in 1..6 {
            f = Failures::after(Some(f), Failure::Aws, t0 + Duration::from_secs(100 * s));
        }
        assert_eq!(f.count, 6);
        let ssh = Failures::after(Some(f), Failure::Ssh, t0 + Duration::from_secs(601));
        assert_eq!((ssh.cause, ssh.count), (Failure::Ssh, 1));
        assert_eq!(ssh.cause.backoff(ssh.count), Duration::from_secs(1));
    }

    #[test]
    fn ready_stacks_meet_at_the_next_multiple_of_the_period() {
        let minute = Duration::from_secs(60);
        // Two stacks that finished at different moments wake together.
        let a = Duration::from_secs(6_000_012);
        let b = Duration::from_secs(6_000_047);
        assert_eq!(a + until_next_sweep(a, minute), b + until_next_sweep(b, minute));
        assert_eq!(until_next_sweep(a, minute), Duration::from_secs(48));
        // Just before a sweep: the one after it.
        let c = Duration::from_millis(6_000_059_500);
        assert_eq!(until_next_sweep(c, minute), Duration::from_millis(60_500));
        // On a sweep: the next one.
        assert_eq!(until_next_sweep(Duration::from_secs(6_000_000), minute), minute);
    }

    #[test]
    fn jitter_only_lengthens_and_stays_bounded() {
        let base = Duration::from_secs(10);
        assert_eq!(jitter(base, 0.0), base);
        for _ in 0..100 {
            let j = jitter(base, 0.1);
            assert!(j >= base && j <= Duration::from_secs(11), "{j:?}");
        }
    }
}
