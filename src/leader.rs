//! Leader election on a coordination.k8s.io Lease, so two replicas never
//! reconcile at once.
//!
//! The rules that keep it to one leader:
//!
//! - Every Lease call runs under a timeout, and the leader's renew deadline
//!   is shorter than the lease duration: a leader that has not renewed within
//!   the deadline steps down (and the process exits) before any standby can
//!   consider the Lease expired.
//! - A standby judges expiry by *observed* renewals: the local instant at
//!   which it last saw the Lease record (holder, renewTime, transitions)
//!   change, plus the lease duration. The remote `renewTime` is never compared
//!   with the local clock, so clock skew between nodes cannot make a live
//!   Lease look expired.
//! - Every write carries the `resourceVersion` it read; a 409 Conflict means
//!   someone else wrote the Lease first, and this replica lost the round (a
//!   leader steps down).
//! - Identities are unique per process ([`unique_identity`]), so a restarted
//!   pod never mistakes its predecessor's Lease for its own.
//! - On shutdown the leader stops working first and then releases the Lease
//!   (empty holder), so a standby takes over at once instead of waiting for
//!   expiry.
//!
//! Why not `kube-lease-manager` (0.13 builds on kube 5): it decides expiry by
//! comparing the remote `renewTime` with the local clock (not skew-safe), a
//! holder renews with a merge patch that does not check the holder or the
//! `resourceVersion`, and Lease calls have no timeout of their own. Those
//! are the guarantees this module exists for, so it stays hand-written.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

/// The Lease calls, in the operator's own namespace: read, create when
/// missing, and replace (update) to renew, take over or release.
pub const LEASE_API_USES: &[crate::rbac::ApiUse] = &[
    crate::rbac::ApiUse {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get"],
        file: "src/leader.rs",
        call: "self.store.get(",
    },
    crate::rbac::ApiUse {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["create"],
        file: "src/leader.rs",
        call: "self.store.create(",
    },
    crate::rbac::ApiUse {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["update"],
        file: "src/leader.rs",
        call: "self.store.replace(",
    },
    crate::rbac::ApiUse {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get"],
        file: "src/leader.rs",
        call: "self.get_opt(",
    },
    crate::rbac::ApiUse {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["create"],
        file: "src/leader.rs",
        call: "Api::create(",
    },
    crate::rbac::ApiUse {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["update"],
        file: "src/leader.rs",
        call: "Api::replace(",
    },
];

/// What a Lease call can end in.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Someone else wrote the Lease since it was read (HTTP 409).
    #[error("the Lease was changed by someone else (conflict)")]
    Conflict,
    /// The call did not answer within its timeout.
    #[error("the Lease call timed out")]
    Timeout,
    #[error("Lease API call failed: {0}")]
    Api(#[from] kube::Error),
}

/// The three Lease calls leader election makes. [`Api<Lease>`] in a cluster;
/// an in-memory store in tests.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    async fn get(&self, name: &str) -> Result<Option<Lease>, LeaseError>;
    /// Creates the Lease; [`LeaseError::Conflict`] when it already exists.
    async fn create(&self, lease: &Lease) -> Result<Lease, LeaseError>;
    /// Replaces the Lease; [`LeaseError::Conflict`] when its
    /// `resourceVersion` is no longer current.
    async fn replace(&self, name: &str, lease: &Lease) -> Result<Lease, LeaseError>;
}

fn conflict_or(e: kube::Error) -> LeaseError {
    match e {
        kube::Error::Api(s) if s.code == 409 => LeaseError::Conflict,
        other => LeaseError::Api(other),
    }
}

#[async_trait]
impl LeaseStore for Api<Lease> {
    async fn get(&self, name: &str) -> Result<Option<Lease>, LeaseError> {
        Ok(self.get_opt(name).await?)
    }

    async fn create(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        Api::create(self, &PostParams::default(), lease).await.map_err(conflict_or)
    }

    async fn replace(&self, name: &str, lease: &Lease) -> Result<Lease, LeaseError> {
        Api::replace(self, name, &PostParams::default(), lease).await.map_err(conflict_or)
    }
}

/// A process-unique identity: `base` (the pod name) plus a random suffix,
/// so two processes never share one, even with the same pod name.
pub fn unique_identity(base: Option<&str>) -> String {
    use rand::Rng;
    let base = base.map(str::trim).filter(|b| !b.is_empty()).unwrap_or("votingstack-operator");
    let suffix: u32 = rand::thread_rng().gen();
    format!("{base}_{suffix:08x}")
}

/// Timings that break the one-leader guarantee.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    #[error("the renew deadline must be shorter than the lease duration")]
    RenewDeadlineNotShorter,
    #[error("the call timeout and the retry period must be shorter than the renew deadline")]
    StepsTooLong,
    #[error("every timing must be positive")]
    Zero,
}

/// Settings of one candidate. Build with [`LeaseConfig::new`] (the defaults)
/// or [`LeaseConfig::with_timings`], which refuses unsafe timings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    lease_name: String,
    identity: String,
    lease_duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
    call_timeout: Duration,
}

impl LeaseConfig {
    /// Lease duration 15 s, renew deadline 10 s, retry period 2 s, call timeout 5 s.
    pub fn new(lease_name: impl Into<String>, identity: impl Into<String>) -> LeaseConfig {
        LeaseConfig {
            lease_name: lease_name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            call_timeout: Duration::from_secs(5),
        }
    }

    /// Other timings: the renew deadline must be shorter than the lease
    /// duration, and the call timeout and retry period shorter than the
    /// renew deadline.
    pub fn with_timings(
        mut self,
        lease_duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
        call_timeout: Duration,
    ) -> Result<LeaseConfig, TimingError> {
        if [lease_duration, renew_deadline, retry_period, call_timeout].contains(&Duration::ZERO) {
            return Err(TimingError::Zero);
        }
        if renew_deadline >= lease_duration {
            return Err(TimingError::RenewDeadlineNotShorter);
        }
        if call_timeout >= renew_deadline || retry_period >= renew_deadline {
            return Err(TimingError::StepsTooLong);
        }
        self.lease_duration = lease_duration;
        self.renew_deadline = renew_deadline;
        self.retry_period = retry_period;
        self.call_timeout = call_timeout;
        Ok(self)
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn lease_name(&self) -> &str {
        &self.lease_name
    }

    pub fn lease_duration(&self) -> Duration {
        self.lease_duration
    }

    pub fn renew_deadline(&self) -> Duration {
        self.renew_deadline
    }

    /// Whole seconds written to `leaseDurationSeconds` (rounded up, at least 1).
    fn duration_secs(&self) -> i32 {
        let d = self.lease_duration;
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
    }
}

/// The part of a Lease whose change counts as a renewal.
#[derive(Clone, Debug, PartialEq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    acquire_time: Option<Timestamp>,
    transitions: Option<i32>,
    duration_secs: Option<i32>,
}

impl Record {
    fn of(lease: &Lease) -> Record {
        let spec = lease.spec.clone().unwrap_or_default();
        Record {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.map(|t| t.0),
            acquire_time: spec.acquire_time.map(|t| t.0),
            transitions: spec.lease_transitions,
            duration_secs: spec.lease_duration_seconds,
        }
    }
}

/// A candidate for the Lease.
pub struct LeaderElector {
    store: Box<dyn LeaseStore>,
    config: LeaseConfig,
    /// The last record seen and the local instant it was first seen.
    observed: Option<(Record, Instant)>,
}

impl LeaderElector {
    pub fn new(store: impl LeaseStore + 'static, config: LeaseConfig) -> LeaderElector {
        LeaderElector { store: Box::new(store), config, observed: None }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// Runs one Lease call under the call timeout.
    async fn call<T>(&self, f: impl Future<Output = Result<T, LeaseError>>) -> Result<T, LeaseError> {
        tokio::time::timeout(self.config.call_timeout, f).await.unwrap_or(Err(LeaseError::Timeout))
    }

    /// Notes `lease` as seen now; returns whether its holder has been silent
    /// for a whole lease duration of *local* time.
    fn observe(&mut self, lease: &Lease, now: Instant) -> bool {
        let record = Record::of(lease);
        let seen_at = match &self.observed {
            Some((last, at)) if *last == record => *at,
            _ => now,
        };
        let secs = record.duration_secs.filter(|s| *s > 0).map(|s| Duration::from_secs(s as u64));
        let duration = secs.unwrap_or(self.config.lease_duration).max(self.config.lease_duration);
        self.observed = Some((record, seen_at));
        now.duration_since(seen_at) >= duration
    }

    /// One attempt to take or renew the Lease. Ok(true) while this replica
    /// leads; Ok(false) when another holds it or won this round (409).
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaseError> {
        let started = Instant::now();
        let now = MicroTime(Timestamp::now());
        let me = self.config.identity.clone();
        let name = self.config.lease_name.clone();
        let duration_secs = self.config.duration_secs();
        let Some(mut lease) = self.call(self.store.get(&name)).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(name.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.call(self.store.create(&lease)).await {
                Ok(created) => {
                    self.observe(&created, started);
                    Ok(true)
                }
                Err(LeaseError::Conflict) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let expired = self.observe(&lease, started);
        let record = Record::of(&lease);
        let held_by_me = record.holder.as_deref() == Some(me.as_str());
        let free = record.holder.is_none();
        if !held_by_me && !free && !expired {
            return Ok(false);
        }
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if !held_by_me {
            spec.holder_identity = Some(me);
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(duration_secs);
        // replace carries the resourceVersion read above: a concurrent writer makes this a 409.
        match self.call(self.store.replace(&name, &lease)).await {
            Ok(written) => {
                self.observe(&written, started);
                Ok(true)
            }
            Err(LeaseError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Campaigns, publishing leadership on `leading`. Returns only when
    /// leadership, once held, is lost: another replica holds the Lease, a
    /// write lost to a conflict, or no renewal succeeded within the renew
    /// deadline. `leading` turns false before this returns, and always
    /// before the lease duration has passed since the last renewal.
    pub async fn campaign(&mut self, leading: &watch::Sender<bool>) -> LeadershipLost {
        // Start of the last successful renewal, while leading.
        let mut renewed: Option<Instant> = None;
        loop {
            let started = Instant::now();
            let deadline = renewed.map(|at| at + self.config.renew_deadline);
            if deadline.is_some_and(|d| started >= d) {
                warn!(lease = %self.config.lease_name, "could not renew the lease within the renew deadline");
                let _ = leading.send(false);
                return LeadershipLost;
            }
            let attempt = self.try_acquire_or_renew();
            let result = match deadline {
                Some(d) => tokio::time::timeout_at(d, attempt).await.unwrap_or(Err(LeaseError::Timeout)),
                None => attempt.await,
            };
            match result {
                Ok(true) => {
                    if renewed.is_none() {
                        info!(identity = %self.config.identity, lease = %self.config.lease_name, "became leader");
                        let _ = leading.send(true);
                    }
                    renewed = Some(started);
                }
                Ok(false) if renewed.is_some() => {
                    warn!(identity = %self.config.identity, lease = %self.config.lease_name, "another replica took the lease");
                    let _ = leading.send(false);
                    return LeadershipLost;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, lease = %self.config.lease_name, "lease update failed"),
            }
            let next = Instant::now() + self.config.retry_period;
            let wake = match renewed.map(|at| at + self.config.renew_deadline) {
                Some(d) => next.min(d),
                None => next,
            };
            tokio::time::sleep_until(wake).await;
        }
    }

    /// Gives the Lease up if this replica holds it: empty holder, so a
    /// standby may take it at once. Call only once this replica has stopped
    /// working. Bounded by the call timeout per attempt.
    pub async fn release(&mut self) -> Result<(), LeaseError> {
        let name = self.config.lease_name.clone();
        for _ in 0..3 {
            let Some(mut lease) = self.call(self.store.get(&name)).await? else { return Ok(()) };
            if Record::of(&lease).holder.as_deref() != Some(self.config.identity.as_str()) {
                return Ok(());
            }
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            spec.holder_identity = None;
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            spec.lease_duration_seconds = Some(1);
            match self.call(self.store.replace(&name, &lease)).await {
                Ok(_) => {
                    info!(identity = %self.config.identity, lease = %name, "released the lease");
                    return Ok(());
                }
                // An in-flight renewal of ours landed in between: read again.
                Err(LeaseError::Conflict) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(LeaseError::Conflict)
    }
}

/// Returned when a leader lost its Lease.
#[derive(Debug, PartialEq, Eq)]
pub struct LeadershipLost;

/// How [`lead`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum LeadOutcome {
    /// Shutdown came while waiting as a standby; nothing was done.
    ShutdownAsStandby,
    /// The work finished (a graceful shutdown); the Lease was released.
    Finished,
    /// Leadership was lost; the work was stopped. The process should exit so
    /// it never works beside the new leader.
    Lost,
}

/// Waits to lead (returning at once on `shutdown`), then runs `work` while
/// the Lease is held. When `work` ends the Lease is released; when the Lease
/// is lost `work` is dropped at once.
pub async fn lead<S, W>(mut elector: LeaderElector, shutdown: S, work: W) -> LeadOutcome
where
    S: Future<Output = ()>,
    W: Future<Output = ()>,
{
    let (leading_tx, mut leading_rx) = watch::channel(false);
    let outcome = {
        let campaign = elector.campaign(&leading_tx);
        tokio::pin!(campaign, shutdown, work);
        loop {
            tokio::select! {
                // The campaign returns only once it led: it became leader and
                // lost the Lease again before the work started.
                _ = &mut campaign => return LeadOutcome::Lost,
                _ = &mut shutdown => return LeadOutcome::ShutdownAsStandby,
                changed = leading_rx.changed() => {
                    if changed.is_err() || *leading_rx.borrow_and_update() {
                        break;
                    }
                }
            }
        }
        tokio::select! {
            _ = &mut campaign => LeadOutcome::Lost,
            _ = &mut work => LeadOutcome::Finished,
        }
    };
    if outcome == LeadOutcome::Finished {
        // Bounded as a whole too: a hung API must not hold up the exit.
        let limit = elector.config.call_timeout * 2;
        match tokio::time::timeout(limit, elector.release()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "could not release the lease; it expires on its own"),
            Err(_) => warn!("releasing the lease timed out; it expires on its own"),
        }
    }
    outcome
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    /// An in-memory Lease API with resourceVersion checks, plus switches to
    /// make calls hang or conflict.
    #[derive(Clone, Default)]
    struct Memory {
        lease: Arc<Mutex<Option<Lease>>>,
        version: Arc<AtomicU32>,
        hang: Arc<AtomicBool>,
        conflicts: Arc<AtomicU32>,
    }

    impl Memory {
        fn holder(&self) -> Option<String> {
            let lease = self.lease.lock().unwrap().clone();
            lease.and_then(|l| Record::of(&l).holder)
        }

        fn set_holder(&self, holder: &str, renew_time: Timestamp) {
            let mut slot = self.lease.lock().unwrap();
            let v = self.version.fetch_add(1, Ordering::SeqCst) + 1;
            let mut lease = slot.clone().unwrap_or_default();
            lease.metadata.name = Some("l".into());
            lease.metadata.resource_version = Some(v.to_string());
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            spec.holder_identity = Some(holder.into());
            spec.renew_time = Some(MicroTime(renew_time));
            spec.lease_duration_seconds = Some(1);
            *slot = Some(lease);
        }

        async fn gate(&self) {
            if self.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
        }
    }

    #[async_trait]
    impl LeaseStore for Memory {
        async fn get(&self, _name: &str) -> Result<Option<Lease>, LeaseError> {
            self.gate().await;
            Ok(self.lease.lock().unwrap().clone())
        }

        async fn create(&self, lease: &Lease) -> Result<Lease, LeaseError> {
            self.gate().await;
            let mut slot = self.lease.lock().unwrap();
            if slot.is_some() {
                return Err(LeaseError::Conflict);
            }
            let mut lease = lease.clone();
            lease.metadata.resource_version = Some((self.version.fetch_add(1, Ordering::SeqCst) + 1).to_string());
            *slot = Some(lease.clone());
            Ok(lease)
        }

        async fn replace(&self, _name: &str, lease: &Lease) -> Result<Lease, LeaseError> {
            self.gate().await;
            if self.conflicts.load(Ordering::SeqCst) > 0 {
                self.conflicts.fetch_sub(1, Ordering::SeqCst);
                return Err(LeaseError::Conflict);
            }
            let mut slot = self.lease.lock().unwrap();
            let current = slot.as_ref().and_then(|l| l.metadata.resource_version.clone());
            if current != lease.metadata.resource_version {
                return Err(LeaseError::Conflict);
            }
            let mut lease = lease.clone();
            lease.metadata.resource_version = Some((self.version.fetch_add(1, Ordering::SeqCst) + 1).to_string());
            *slot = Some(lease.clone());
            Ok(lease)
        }
    }

    /// Fast timings: lease 1 s, renew deadline 600 ms, retry 50 ms, call timeout 200 ms.
    fn config(identity: &str) -> LeaseConfig {
        LeaseConfig::new("l", identity)
            .with_timings(
                Duration::from_secs(1),
                Duration::from_millis(600),
                Duration::from_millis(50),
                Duration::from_millis(200),
            )
            .unwrap()
    }

    fn elector(store: &Memory, identity: &str) -> LeaderElector {
        LeaderElector::new(store.clone(), config(identity))
    }

    /// Polls `f` every 10 ms for at most `limit`.
    async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        f()
    }

    #[tokio::test]
    async fn leader_acquire_creates_the_lease_when_absent() {
        let store = Memory::default();
        let mut a = elector(&store, "a");
        assert!(a.try_acquire_or_renew().await.unwrap());
        assert_eq!(store.holder().as_deref(), Some("a"));
        let mut b = elector(&store, "b");
        assert!(!b.try_acquire_or_renew().await.unwrap(), "a live lease is not taken");
    }

    #[tokio::test]
    async fn leader_renew_moves_renew_time_and_keeps_the_holder() {
        let store = Memory::default();
        let mut a = elector(&store, "a");
        assert!(a.try_acquire_or_renew().await.unwrap());
        let first = Record::of(&store.lease.lock().unwrap().clone().unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(a.try_acquire_or_renew().await.unwrap());
        let second = Record::of(&store.lease.lock().unwrap().clone().unwrap());
        assert_eq!(second.holder.as_deref(), Some("a"));
        assert!(second.renew_time > first.renew_time);
        assert_eq!(second.transitions, Some(0), "a renewal is not a transition");
    }

    #[tokio::test]
    async fn leader_steal_only_after_a_lease_duration_without_observed_renewal() {
        let store = Memory::default();
        // The holder's renewTime is an hour in the past (clock skew, or a
        // dead holder): a standby still waits a lease duration of its own time.
        store.set_holder("old", Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_hours(1));
        let mut b = elector(&store, "b");
        let started = Instant::now();
        assert!(!b.try_acquire_or_renew().await.unwrap(), "not expired on first sight");
        let mut took = false;
        while started.elapsed() < Duration::from_secs(3) && !took {
            took = b.try_acquire_or_renew().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(took, "the standby takes an unrenewed lease");
        assert!(started.elapsed() >= Duration::from_secs(1), "not before a lease duration: {:?}", started.elapsed());
        let record = Record::of(&store.lease.lock().unwrap().clone().unwrap());
        assert_eq!(record.holder.as_deref(), Some("b"));
        assert_eq!(record.transitions, Some(1));
    }

    #[tokio::test]
    async fn leader_standby_never_steals_a_lease_it_sees_renewed() {
        let store = Memory::default();
        // renewTime far in the future (skew the other way) must not matter either.
        let future = Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_hours(1);
        store.set_holder("a", future);
        let mut b = elector(&store, "b");
        let until = Instant::now() + Duration::from_millis(2500);
        let mut n = 0;
        while Instant::now() < until {
            // The holder renews (a changed record) every 300 ms.
            if n % 6 == 0 {
                store.set_holder("a", future + k8s_openapi::jiff::SignedDuration::from_secs(n));
            }
            assert!(!b.try_acquire_or_renew().await.unwrap(), "stole a renewed lease");
            tokio::time::sleep(Duration::from_millis(50)).await;
            n += 1;
        }
        assert_eq!(store.holder().as_deref(), Some("a"));
    }

    #[tokio::test]
    async fn leader_conflict_is_lost_this_round() {
        let store = Memory::default();
        let mut a = elector(&store, "a");
        assert!(a.try_acquire_or_renew().await.unwrap());
        store.conflicts.store(1, Ordering::SeqCst);
        assert!(!a.try_acquire_or_renew().await.unwrap(), "a 409 on renew is a lost round");
        // A campaigning leader steps down on it.
        let mut a = elector(&store, "a2");
        store.lease.lock().unwrap().take();
        let (tx, rx) = watch::channel(false);
        let campaign = tokio::spawn(async move { a.campaign(&tx).await });
        assert!(eventually(Duration::from_secs(2), || *rx.borrow()).await, "a2 leads");
        store.conflicts.store(1, Ordering::SeqCst);
        let lost = tokio::time::timeout(Duration::from_secs(2), campaign).await.expect("steps down").unwrap();
        assert_eq!(lost, LeadershipLost);
        assert!(!*rx.borrow());
    }

    #[tokio::test]
    async fn leader_lose_when_another_replica_holds_the_lease() {
        let store = Memory::default();
        let mut a = elector(&store, "a");
        let (tx, rx) = watch::channel(false);
        let campaign = tokio::spawn(async move { a.campaign(&tx).await });
        assert!(eventually(Duration::from_secs(2), || *rx.borrow()).await);
        store.set_holder("intruder", Timestamp::now());
        let lost = tokio::time::timeout(Duration::from_secs(2), campaign).await.expect("steps down").unwrap();
        assert_eq!(lost, LeadershipLost);
        assert!(!*rx.borrow());
    }

    #[tokio::test]
    async fn leader_timeout_bounds_every_call() {
        let store = Memory::default();
        store.hang.store(true, Ordering::SeqCst);
        let mut a = elector(&store, "a");
        let started = Instant::now();
        let err = a.try_acquire_or_renew().await.unwrap_err();
        assert!(matches!(err, LeaseError::Timeout), "{err:?}");
        assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn leader_that_cannot_renew_stops_before_the_lease_expires() {
        let store = Memory::default();
        let mut a = elector(&store, "a");
        let (tx, rx) = watch::channel(false);
        let campaign = tokio::spawn(async move { a.campaign(&tx).await });
        assert!(eventually(Duration::from_secs(2), || *rx.borrow()).await);
        // The API hangs; a standby would see no renewal from now on.
        store.hang.store(true, Ordering::SeqCst);
        let hung_at = Instant::now();
        let lost = tokio::time::timeout(Duration::from_secs(2), campaign).await.expect("steps down").unwrap();
        assert_eq!(lost, LeadershipLost);
        assert!(!*rx.borrow());
        // Renew deadline (600 ms) after the last renewal, which is before the
        // hang: well before the 1 s lease a standby would wait from then.
        assert!(hung_at.elapsed() < Duration::from_secs(1), "stepped down after {:?}", hung_at.elapsed());
    }

    #[tokio::test]
    async fn leader_two_candidates_never_lead_at_once() {
        let store = Memory::default();
        let (tx_a, rx_a) = watch::channel(false);
        let (tx_b, rx_b) = watch::channel(false);
        let mut a = elector(&store, "a");
        let mut b = elector(&store, "b");
        let ca = tokio::spawn(async move { a.campaign(&tx_a).await });
        let cb = tokio::spawn(async move { b.campaign(&tx_b).await });
        let until = Instant::now() + Duration::from_millis(1500);
        let mut someone = false;
        while Instant::now() < until {
            let (la, lb) = (*rx_a.borrow(), *rx_b.borrow());
            assert!(!(la && lb), "two leaders");
            someone |= la || lb;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(someone, "one of them leads");
        ca.abort();
        cb.abort();
    }

    #[tokio::test]
    async fn leader_release_on_shutdown_lets_a_standby_take_over_at_once() {
        let store = Memory::default();
        let a = elector(&store, "a");
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let (worked_tx, worked_rx) = tokio::sync::oneshot::channel::<()>();
        let work = async move {
            let _ = worked_tx.send(());
            let _ = done_rx.await;
        };
        let led = tokio::spawn(lead(a, std::future::pending(), work));
        tokio::time::timeout(Duration::from_secs(2), worked_rx).await.expect("a works").unwrap();
        assert_eq!(store.holder().as_deref(), Some("a"));
        let _ = done_tx.send(());
        let outcome = tokio::time::timeout(Duration::from_secs(2), led).await.expect("a ends").unwrap();
        assert_eq!(outcome, LeadOutcome::Finished);
        assert_eq!(store.holder(), None, "released");
        let mut b = elector(&store, "b");
        assert!(b.try_acquire_or_renew().await.unwrap(), "a released lease is free at once");
    }

    #[tokio::test]
    async fn leader_release_is_bounded_when_the_api_hangs() {
        let store = Memory::default();
        let a = elector(&store, "a");
        let hang = store.hang.clone();
        let work = async move { hang.store(true, Ordering::SeqCst) };
        let started = Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(3), lead(a, std::future::pending(), work))
            .await
            .expect("lead returns although the API hangs");
        assert_eq!(outcome, LeadOutcome::Finished);
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        assert_eq!(store.holder().as_deref(), Some("a"), "not released: it expires on its own");
    }

    #[tokio::test]
    async fn leader_standby_exits_promptly_on_shutdown() {
        let store = Memory::default();
        store.set_holder("a", Timestamp::now());
        // Keep a's lease looking renewed.
        let keeper = {
            let store = store.clone();
            tokio::spawn(async move {
                loop {
                    store.set_holder("a", Timestamp::now());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let b = elector(&store, "b");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let worked = Arc::new(AtomicBool::new(false));
        let w = worked.clone();
        let led = tokio::spawn(lead(
            b,
            async move {
                let _ = stop_rx.await;
            },
            async move { w.store(true, Ordering::SeqCst) },
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stopped = Instant::now();
        let _ = stop_tx.send(());
        let outcome = tokio::time::timeout(Duration::from_millis(500), led).await.expect("prompt exit").unwrap();
        assert_eq!(outcome, LeadOutcome::ShutdownAsStandby);
        assert!(stopped.elapsed() < Duration::from_millis(500));
        assert!(!worked.load(Ordering::SeqCst), "a standby never works");
        assert_eq!(store.holder().as_deref(), Some("a"));
        keeper.abort();
    }

    #[tokio::test]
    async fn leader_lost_lease_stops_the_work() {
        let store = Memory::default();
        let a = elector(&store, "a");
        let led = tokio::spawn(lead(a, std::future::pending(), std::future::pending::<()>()));
        assert!(eventually(Duration::from_secs(2), || store.holder().as_deref() == Some("a")).await);
        store.set_holder("intruder", Timestamp::now());
        let outcome = tokio::time::timeout(Duration::from_secs(2), led).await.expect("work stopped").unwrap();
        assert_eq!(outcome, LeadOutcome::Lost);
        assert_eq!(store.holder().as_deref(), Some("intruder"), "a lost lease is not released");
    }

    #[test]
    fn leader_timings_refuse_a_renew_deadline_not_shorter_than_the_lease() {
        let base = LeaseConfig::new("l", "a");
        let s = Duration::from_secs;
        assert_eq!(
            base.clone().with_timings(s(10), s(10), s(1), s(1)).unwrap_err(),
            TimingError::RenewDeadlineNotShorter
        );
        assert_eq!(base.clone().with_timings(s(15), s(10), s(1), s(10)).unwrap_err(), TimingError::StepsTooLong);
        assert_eq!(base.clone().with_timings(s(15), s(10), s(0), s(1)).unwrap_err(), TimingError::Zero);
        let d = LeaseConfig::new("l", "a");
        assert!(d.renew_deadline() < d.lease_duration());
        assert!(d.call_timeout < d.renew_deadline() && d.retry_period < d.renew_deadline());
    }

    #[test]
    fn leader_api_409_maps_to_conflict_and_others_stay_errors() {
        let status = |code| kube::Error::Api(Box::new(kube::core::Status { code, ..Default::default() }));
        assert!(matches!(conflict_or(status(409)), LeaseError::Conflict));
        assert!(matches!(conflict_or(status(403)), LeaseError::Api(_)));
        assert!(matches!(conflict_or(status(500)), LeaseError::Api(_)));
    }

    #[test]
    fn leader_identity_is_unique_per_process() {
        let a = unique_identity(Some("votingstack-operator-7d9f"));
        let b = unique_identity(Some("votingstack-operator-7d9f"));
        assert_ne!(a, b);
        assert!(a.starts_with("votingstack-operator-7d9f_"));
        assert!(unique_identity(None).starts_with("votingstack-operator_"));
        assert_ne!(unique_identity(Some("")), "votingstack-operator");
    }
}
