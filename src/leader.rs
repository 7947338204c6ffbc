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
#[path = "leader_tests.rs"]
mod tests;
