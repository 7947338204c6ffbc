//! Unit tests of leader election against an in-memory Lease store.
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

/// The leader's work as `votingstack controller` runs it: a reconcile of
/// 50 ms steps (or one that hangs), drained within `timings` on the signal.
/// Logs what happened, in order, with the Lease holder at the time.
fn draining_work(
    store: &Memory,
    signal: tokio::sync::oneshot::Receiver<()>,
    timings: crate::controller::shutdown::ShutdownTimings,
    hangs: bool,
    log: &Arc<Mutex<Vec<String>>>,
) -> impl Future<Output = ()> + Send + 'static {
    let (store, log) = (store.clone(), log.clone());
    async move {
        let stop = crate::engine::Stop::default();
        let (steps, begun) = (log.clone(), log.clone());
        let (holder, at_stop) = (store.clone(), stop.clone());
        let reconcile = async move {
            if hangs {
                std::future::pending::<()>().await;
            }
            while !at_stop.requested() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            steps.lock().unwrap().push(format!("stopped at a step boundary, lease held by {:?}", holder.holder()));
        };
        let signal = async move {
            let _ = signal.await;
        };
        let no_new = move || begun.lock().unwrap().push("no new reconciles".to_string());
        let drained = crate::controller::shutdown::drain(reconcile, signal, no_new, &stop, timings).await;
        log.lock().unwrap().push(format!("{drained:?}, lease held by {:?}", store.holder()));
    }
}

/// Leads as "a" with one reconcile under way (`hangs`: one that never
/// reaches a step boundary), signals shutdown, and returns how the lead ended
/// and how long after the signal.
async fn lead_then_shut_down(
    store: &Memory,
    timings: crate::controller::shutdown::ShutdownTimings,
    hangs: bool,
    log: &Arc<Mutex<Vec<String>>>,
) -> (LeadOutcome, Duration) {
    let a = elector(store, "a");
    let (signal_tx, signal_rx) = tokio::sync::oneshot::channel();
    let work = draining_work(store, signal_rx, timings, hangs, log);
    let led = tokio::spawn(lead(a, std::future::pending(), work));
    assert!(eventually(Duration::from_secs(2), || store.holder().as_deref() == Some("a")).await);
    let signalled = Instant::now();
    let _ = signal_tx.send(());
    let outcome = tokio::time::timeout(Duration::from_secs(3), led).await.expect("bounded shutdown").unwrap();
    (outcome, signalled.elapsed())
}

#[tokio::test]
async fn leader_shutdown_stops_reconciles_at_a_step_then_releases_the_lease() {
    let store = Memory::default();
    let log = Arc::new(Mutex::new(Vec::new()));
    let timings = crate::controller::shutdown::ShutdownTimings {
        deadline: Duration::from_millis(300),
        step_grace: Duration::from_secs(1),
    };
    let (outcome, took) = lead_then_shut_down(&store, timings, false, &log).await;
    assert_eq!(outcome, LeadOutcome::Finished);
    assert!(took >= timings.deadline, "the running reconcile had its deadline: {took:?}");
    // Stopped at the next step, not dropped after the grace: the log says which.
    assert_eq!(
        *log.lock().unwrap(),
        [
            "no new reconciles",
            "stopped at a step boundary, lease held by Some(\"a\")",
            "Stopped, lease held by Some(\"a\")",
        ]
    );
    assert_eq!(store.holder(), None, "released once the work was over");
}

#[tokio::test]
async fn leader_shutdown_drops_a_hung_reconcile_and_still_releases_the_lease() {
    let store = Memory::default();
    let log = Arc::new(Mutex::new(Vec::new()));
    let timings = crate::controller::shutdown::ShutdownTimings {
        deadline: Duration::from_millis(200),
        step_grace: Duration::from_millis(300),
    };
    let (outcome, took) = lead_then_shut_down(&store, timings, true, &log).await;
    assert_eq!(outcome, LeadOutcome::Finished);
    assert!(took >= timings.bound(), "{took:?}");
    assert_eq!(*log.lock().unwrap(), ["no new reconciles", "Abandoned, lease held by Some(\"a\")"]);
    assert_eq!(store.holder(), None, "released although a reconcile hung");
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
    assert_eq!(base.clone().with_timings(s(10), s(10), s(1), s(1)).unwrap_err(), TimingError::RenewDeadlineNotShorter);
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
