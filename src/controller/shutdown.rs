//! A shutdown with a bound: on the signal the Controller stops starting
//! reconciles and the running ones get a deadline to finish; then they are
//! asked to stop at their next step boundary; a reconcile that reaches none
//! within [`ShutdownTimings::step_grace`] (a call that hangs) is dropped.
//! Only then does the caller release the Lease and the process exit.
//! kube-runtime's own graceful shutdown waits for running reconciles
//! without a bound; this is the bound on top of it.

use std::future::Future;
use std::time::Duration;

use tracing::{info, warn};

use crate::engine::Stop;

/// How long a shutdown may take before the Lease is released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownTimings {
    /// Running reconciles may finish on their own this long
    /// (`--shutdown-deadline-seconds`).
    pub deadline: Duration,
    /// After the deadline, how long a reconcile asked to stop has to reach
    /// its next step boundary before it is dropped.
    pub step_grace: Duration,
}

/// The default `--shutdown-deadline-seconds`.
pub const DEFAULT_SHUTDOWN_DEADLINE: Duration = Duration::from_secs(20);

/// How long a reconcile asked to stop has to reach a step boundary. One EC2
/// call or one host's batch of container changes usually ends well within
/// it; one that hangs is dropped.
pub const STEP_GRACE: Duration = Duration::from_secs(10);

impl ShutdownTimings {
    pub fn with_deadline(deadline: Duration) -> ShutdownTimings {
        ShutdownTimings { deadline, step_grace: STEP_GRACE }
    }

    /// The longest a shutdown takes from the signal until the work is over.
    pub fn bound(&self) -> Duration {
        self.deadline + self.step_grace
    }
}

impl Default for ShutdownTimings {
    fn default() -> Self {
        ShutdownTimings::with_deadline(DEFAULT_SHUTDOWN_DEADLINE)
    }
}

/// How the work ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained {
    /// It ended on its own: before any signal, or within the deadline.
    Finished,
    /// It ended after its reconciles were asked to stop at a step boundary.
    Stopped,
    /// It had not ended a step grace after the stop: it was dropped.
    Abandoned,
}

/// Runs `work` until `signal`; then calls `begin` (the Controller stops
/// starting reconciles and ends once the running ones are done), waits up
/// to the deadline, requests `stop`, waits up to the step grace, and drops
/// `work` if it still runs.
pub async fn drain<W, S>(work: W, signal: S, begin: impl FnOnce(), stop: &Stop, timings: ShutdownTimings) -> Drained
where
    W: Future<Output = ()>,
    S: Future<Output = ()>,
{
    tokio::pin!(work);
    tokio::select! {
        _ = &mut work => return Drained::Finished,
        _ = signal => {}
    }
    info!(deadline_s = timings.deadline.as_secs_f64(), "shutting down: no new reconciles; running ones may finish");
    begin();
    if tokio::time::timeout(timings.deadline, &mut work).await.is_ok() {
        return Drained::Finished;
    }
    info!("shutdown deadline passed: stopping running reconciles at their next step");
    stop.request();
    if tokio::time::timeout(timings.step_grace, &mut work).await.is_ok() {
        return Drained::Stopped;
    }
    warn!(
        grace_s = timings.step_grace.as_secs_f64(),
        "a reconcile reached no step boundary in time (a call that hangs): dropping it"
    );
    Drained::Abandoned
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::time::Instant;

    fn timings() -> ShutdownTimings {
        // Half a step past a boundary, so a deadline never ties with one.
        ShutdownTimings { deadline: Duration::from_millis(20_500), step_grace: Duration::from_secs(10) }
    }

    /// A reconcile of `steps` steps of one second each that looks at `stop`
    /// between them; returns how many steps it made.
    async fn reconcile(steps: u32, stop: Stop) -> u32 {
        for done in 0..steps {
            if stop.requested() {
                return done;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        steps
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_ends_before_the_signal_is_finished() {
        let stop = Stop::default();
        let ended = drain(async {}, std::future::pending(), || {}, &stop, timings()).await;
        assert_eq!(ended, Drained::Finished);
        assert!(!stop.requested());
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_reconcile_finishes_within_the_deadline() {
        let stop = Stop::default();
        let begun = Arc::new(AtomicBool::new(false));
        let b = begun.clone();
        let started = Instant::now();
        let work = async { assert_eq!(reconcile(5, stop.clone()).await, 5, "all steps done") };
        let ended = drain(work, async {}, move || b.store(true, Ordering::SeqCst), &stop, timings()).await;
        assert_eq!(ended, Drained::Finished);
        assert!(begun.load(Ordering::SeqCst), "the Controller was told to stop starting reconciles");
        assert!(!stop.requested(), "nothing was stopped");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_reconcile_stops_at_the_first_boundary_after_the_deadline() {
        let stop = Stop::default();
        let steps = Arc::new(std::sync::Mutex::new(None));
        let s = steps.clone();
        let r = stop.clone();
        let work = async move { *s.lock().unwrap() = Some(reconcile(600, r).await) };
        let started = Instant::now();
        let ended = drain(work, async {}, || {}, &stop, timings()).await;
        assert_eq!(ended, Drained::Stopped);
        assert_eq!(*steps.lock().unwrap(), Some(21), "stopped at the boundary after step 21, not within it");
        assert_eq!(started.elapsed(), Duration::from_secs(21));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_call_is_dropped_after_the_step_grace() {
        let stop = Stop::default();
        let started = Instant::now();
        let ended = drain(std::future::pending::<()>(), async {}, || {}, &stop, timings()).await;
        assert_eq!(ended, Drained::Abandoned);
        assert!(stop.requested());
        assert_eq!(started.elapsed(), timings().bound());
    }
}
