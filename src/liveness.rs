//! When `/healthz` fails, so that Kubernetes restarts a wedged controller.
//!
//! The controller loop, while this process leads (or runs alone) and its
//! cache has synced, must make progress: its output stream yields a result
//! whenever a reconcile ends, and a heartbeat sent every resync period
//! through the same trigger, scheduler and runner as reconciles yields one
//! too (see `controller::run_controller_until`). So an idle operator with no
//! stacks is healthy, and so is a standby. What fails the check:
//!
//! - the loop stopped advancing for longer than the bound (its task does
//!   not run, or the Controller no longer schedules anything, not even the
//!   heartbeat, for example every slot is taken by reconciles that hang);
//! - a reconcile has been running longer than the bound (a call that
//!   hangs), even while others still finish.
//!
//! The bound is N resync periods (`--liveness-resyncs`, 3 by default, of
//! `--resync-seconds`), and never under 180 s: with a short resync a
//! reconcile that pulls images or waits on EC2 would otherwise count as stuck.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The default N of the bound: N resync periods without progress.
pub const DEFAULT_LIVENESS_RESYNCS: u32 = 3;

/// The bound is never shorter than this (3 resyncs of the default 60 s).
pub const MIN_LIVENESS_BOUND: Duration = Duration::from_secs(180);

/// How long the controller loop may go without progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthRule {
    pub resync: Duration,
    pub resyncs: u32,
}

impl Default for HealthRule {
    fn default() -> Self {
        HealthRule { resync: Duration::from_secs(60), resyncs: DEFAULT_LIVENESS_RESYNCS }
    }
}

impl HealthRule {
    /// N resync periods (N at least 1), at least [`MIN_LIVENESS_BOUND`].
    pub fn bound(&self) -> Duration {
        (self.resync * self.resyncs.max(1)).max(MIN_LIVENESS_BOUND)
    }

    /// Ok, or the one-line reason `/healthz` answers 503 with. `leading`:
    /// this process runs the Controller and its cache has synced;
    /// `last_progress`: when the loop last advanced (or started);
    /// `oldest_running`: when the longest-running reconcile began.
    pub fn judge(
        &self,
        leading: bool,
        last_progress: Instant,
        oldest_running: Option<Instant>,
        now: Instant,
    ) -> Result<(), String> {
        if !leading {
            return Ok(());
        }
        let bound = self.bound();
        let limit = format!(
            "the bound of {} s ({} resyncs of {} s)",
            bound.as_secs(),
            self.resyncs.max(1),
            self.resync.as_secs()
        );
        if let Some(began) = oldest_running {
            let running = now.saturating_duration_since(began);
            if running > bound {
                return Err(format!("a reconcile has run for {} s, past {limit}: it is stuck", running.as_secs()));
            }
        }
        let idle = now.saturating_duration_since(last_progress);
        if idle > bound {
            return Err(format!("the controller loop has not advanced for {} s, past {limit}", idle.as_secs()));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct State {
    rule: HealthRule,
    leading: bool,
    last_progress: Instant,
    /// Start of each running reconcile, by a number of its own.
    running: BTreeMap<u64, Instant>,
    next: u64,
}

/// What `/healthz` judges: kept by the controller loop and its reconciles.
#[derive(Clone, Debug)]
pub struct Liveness(Arc<Mutex<State>>);

impl Default for Liveness {
    fn default() -> Self {
        Liveness(Arc::new(Mutex::new(State {
            rule: HealthRule::default(),
            leading: false,
            last_progress: Instant::now(),
            running: BTreeMap::new(),
            next: 0,
        })))
    }
}

impl Liveness {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_rule(&self, rule: HealthRule) {
        self.state().rule = rule;
    }

    pub fn rule(&self) -> HealthRule {
        self.state().rule
    }

    /// The Controller runs and its cache has synced: from now on the loop
    /// must make progress.
    pub fn leading(&self, now: Instant) {
        let mut s = self.state();
        s.leading = true;
        s.last_progress = now;
    }

    /// The Controller stopped (shutdown, or the Lease was lost).
    pub fn not_leading(&self) {
        self.state().leading = false;
    }

    /// The loop advanced: a reconcile ended, or the heartbeat came through.
    pub fn progress(&self, now: Instant) {
        self.state().last_progress = now;
    }

    /// A reconcile starts; it counts as running until the guard is dropped,
    /// and its end counts as progress.
    pub fn reconcile_started(&self, now: Instant) -> RunningReconcile {
        let mut s = self.state();
        let id = s.next;
        s.next += 1;
        s.running.insert(id, now);
        RunningReconcile { liveness: self.clone(), id }
    }

    /// Ok, or why the controller counts as wedged.
    pub fn check(&self, now: Instant) -> Result<(), String> {
        let s = self.state();
        let oldest = s.running.values().min().copied();
        s.rule.judge(s.leading, s.last_progress, oldest, now)
    }
}

/// A reconcile that is running; see [`Liveness::reconcile_started`].
pub struct RunningReconcile {
    liveness: Liveness,
    id: u64,
}

impl Drop for RunningReconcile {
    fn drop(&mut self) {
        let mut s = self.liveness.state();
        s.running.remove(&self.id);
        s.last_progress = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn rule() -> HealthRule {
        HealthRule { resync: MINUTE, resyncs: 3 }
    }

    #[test]
    fn a_standby_is_healthy_whatever_the_clock_says() {
        let t0 = Instant::now();
        let much_later = t0 + Duration::from_secs(3600);
        assert_eq!(rule().judge(false, t0, Some(t0), much_later), Ok(()));
    }

    #[test]
    fn an_idle_leader_is_healthy_while_the_loop_advances() {
        let t0 = Instant::now();
        // The heartbeat every resync keeps an operator with no stacks healthy.
        assert_eq!(rule().judge(true, t0, None, t0 + MINUTE), Ok(()));
        assert_eq!(rule().judge(true, t0, None, t0 + 3 * MINUTE), Ok(()), "the bound itself is still healthy");
        let stalled = rule().judge(true, t0, None, t0 + 3 * MINUTE + Duration::from_secs(1));
        let why = "the controller loop has not advanced for 181 s, past the bound of 180 s (3 resyncs of 60 s)";
        assert_eq!(stalled, Err(why.into()));
    }

    #[test]
    fn a_reconcile_running_past_the_bound_fails_although_others_finish() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(200);
        let last_progress = now - Duration::from_secs(1);
        assert_eq!(rule().judge(true, last_progress, Some(t0 + MINUTE), now), Ok(()), "140 s is within the bound");
        let stuck = rule().judge(true, last_progress, Some(t0), now);
        let why = "a reconcile has run for 200 s, past the bound of 180 s (3 resyncs of 60 s): it is stuck";
        assert_eq!(stuck, Err(why.into()));
    }

    #[test]
    fn the_bound_follows_the_resync_and_n_above_a_floor() {
        let slow = HealthRule { resync: Duration::from_secs(120), resyncs: 2 };
        assert_eq!(slow.bound(), Duration::from_secs(240));
        let t0 = Instant::now();
        assert_eq!(slow.judge(true, t0, None, t0 + Duration::from_secs(200)), Ok(()));
        assert!(slow.judge(true, t0, None, t0 + Duration::from_secs(241)).is_err());
        assert_eq!(HealthRule { resyncs: 0, ..slow }.bound(), Duration::from_secs(180), "N is at least 1");
        let fast = HealthRule { resync: Duration::from_secs(5), resyncs: 3 };
        assert_eq!(fast.bound(), MIN_LIVENESS_BOUND, "a 5 s resync does not make a 15 s image pull look stuck");
    }

    #[test]
    fn running_reconciles_are_tracked_until_their_guard_drops() {
        let live = Liveness::default();
        live.set_rule(rule());
        let t0 = Instant::now();
        assert_eq!(live.check(t0 + Duration::from_secs(3600)), Ok(()), "not leading yet");
        live.leading(t0);
        let stuck = live.reconcile_started(t0);
        let quick = live.reconcile_started(t0 + Duration::from_secs(100));
        drop(quick);
        let later = t0 + Duration::from_secs(200);
        live.progress(later);
        assert!(live.check(later).is_err_and(|e| e.contains("a reconcile has run for 200 s")));
        drop(stuck);
        live.progress(later);
        assert_eq!(live.check(later), Ok(()));
        live.not_leading();
        assert_eq!(live.check(later + Duration::from_secs(3600)), Ok(()), "a process that stopped leading");
    }
}
