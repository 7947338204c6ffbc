//! The region's inventory: one DescribeInstances (and, for converged stacks,
//! one DescribeSecurityGroups) serves every stack this process observes in
//! the region.
//!
//! Each look-up is filtered on the owner tag's *key*, so it returns the
//! instances (or groups) of every stack at once; a stack then keeps those
//! whose owner tag carries its uid. A result is shared:
//!
//! - by observers that arrive while the call is in flight (they wait for it
//!   instead of sending their own);
//! - by observers that arrive within the window of the call's start (the
//!   controller's [`DEFAULT_WINDOW`], configurable; zero for the CLI); an
//!   older result is fetched again;
//! - never after this process changed something in EC2: every mutating call
//!   ([`Ec2Cloud::call`](super::Ec2Cloud) of an operation that is not a
//!   `Describe*`/`Get*`) invalidates both look-ups, so the engine's re-observe
//!   after acting sees fresh data.
//!
//! A failed look-up is shared only with the observers that were waiting for
//! it; the next observer tries again.
//!
//! The trade-off of the window: a change made outside this process (an
//! instance terminated by someone else) can be seen up to one window late,
//! on top of the resync period; in exchange, stacks that reconcile within
//! one window of each other cost one call instead of one each.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use aws_sdk_ec2::types::{Instance, SecurityGroup};

use crate::cloud::{CloudError, StackIdentity, OWNER_TAG};
use crate::model::ObservedInstance;

use super::instances::{observed, state_filter, Placement, OBSERVED_STATES};
use super::{tag_key_filter, tag_value, Ec2Cloud};

/// The window the controller uses unless told otherwise
/// (`--inventory-window-seconds`). A bare [`Ec2Cloud`] (the CLI, tests)
/// has a window of zero: it shares only calls in flight, so every observe
/// that starts after another ended looks again, as before.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(5);

/// True for an EC2 operation that changes nothing (`Describe*`, `Get*`).
pub fn is_read_only(operation: &str) -> bool {
    operation.starts_with("Describe") || operation.starts_with("Get")
}

/// The last look-up: what it returned, when it started, its number among
/// finished look-ups, and the generation it belongs to.
struct Fetched<T> {
    generation: u64,
    started: Instant,
    number: u64,
    result: Result<Arc<T>, CloudError>,
}

/// One look-up shared by concurrent and near-simultaneous callers, with a
/// window and invalidation (see the module docs). The fetch itself is
/// passed to [`Coalesced::get`], so tests can count fetches without EC2.
pub struct Coalesced<T> {
    window: Duration,
    /// Bumped by [`Coalesced::invalidate`]; a result of an older generation
    /// is never handed out again.
    generation: AtomicU64,
    /// Held while a fetch is in flight: later callers wait here, then find
    /// the fresh result.
    last: tokio::sync::Mutex<Option<Fetched<T>>>,
    fetches: AtomicU64,
    /// Look-ups finished so far: a caller that saw n waited for look-up n + 1.
    finished: AtomicU64,
}

impl<T> Coalesced<T> {
    pub fn new(window: Duration) -> Coalesced<T> {
        Coalesced {
            window,
            generation: AtomicU64::new(0),
            last: tokio::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
            finished: AtomicU64::new(0),
        }
    }

    /// Forgets the current result: the next caller fetches. Does not wait
    /// for a fetch in flight (that one's result is not handed out again).
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Fetches started so far.
    #[cfg(any(test, feature = "test-support"))]
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// The shared result, fetching with `fetch` when there is none that
    /// this caller may use.
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<Arc<T>, CloudError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, CloudError>>,
    {
        let seen = self.finished.load(Ordering::SeqCst);
        let mut last = self.last.lock().await;
        let generation = self.generation.load(Ordering::SeqCst);
        if let Some(f) = last.as_ref().filter(|f| f.generation == generation) {
            // In flight when this caller arrived, or started within the window.
            let waited_for_it = f.number > seen;
            match &f.result {
                Ok(v) if waited_for_it || f.started.elapsed() < self.window => return Ok(v.clone()),
                Err(e) if waited_for_it => return Err(e.clone()),
                _ => {}
            }
        }
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result = fetch().await.map(Arc::new);
        let number = self.finished.fetch_add(1, Ordering::SeqCst) + 1;
        *last = Some(Fetched { generation, started, number, result: result.clone() });
        result
    }
}

/// True when the resource's owner tag names this stack.
fn owned_by(tags: &[aws_sdk_ec2::types::Tag], stack: &StackIdentity) -> bool {
    tag_value(tags, OWNER_TAG) == Some(stack.owner())
}

impl Ec2Cloud {
    /// The stack's instances (any state `observe` lists), from the region's
    /// shared look-up, and whether one had to be adopted (an older operator
    /// launched it without the installation tag).
    pub(super) async fn shared_stack_instances(
        &self,
        stack: &StackIdentity,
    ) -> Result<(Vec<(ObservedInstance, Placement)>, bool), CloudError> {
        let all = self.shared_instances.get(|| self.region_instances()).await?;
        let (owned, adopted) =
            self.claim_instances(stack, all.iter().filter(|i| owned_by(i.tags(), stack)).collect()).await;
        Ok((owned.into_iter().filter_map(observed).collect(), adopted))
    }

    /// The security groups among `ids`, from the region's shared look-up;
    /// None when one of them is not in it (untagged, or not listed yet),
    /// so the caller asks for them by id.
    pub(super) async fn shared_groups(&self, ids: &[String]) -> Result<Option<Vec<SecurityGroup>>, CloudError> {
        let all = self.shared_groups.get(|| self.region_groups()).await?;
        let found: Vec<SecurityGroup> =
            all.iter().filter(|g| g.group_id().is_some_and(|id| ids.iter().any(|i| i == id))).cloned().collect();
        Ok((found.len() == ids.len()).then_some(found))
    }

    /// Every instance carrying an owner tag (any stack's), every page.
    async fn region_instances(&self) -> Result<Vec<Instance>, CloudError> {
        self.describe_instances(vec![tag_key_filter(OWNER_TAG), state_filter(&OBSERVED_STATES)]).await
    }

    /// Every security group carrying an owner tag (any stack's), every page.
    async fn region_groups(&self) -> Result<Vec<SecurityGroup>, CloudError> {
        self.all_pages(
            "DescribeSecurityGroups",
            |token| {
                self.client
                    .describe_security_groups()
                    .filters(tag_key_filter(OWNER_TAG))
                    .max_results(1000)
                    .set_next_token(token)
                    .send()
            },
            |page| (page.security_groups.unwrap_or_default(), page.next_token),
        )
        .await
    }

    /// Look-ups of the region's instances and groups sent so far.
    #[cfg(any(test, feature = "test-support"))]
    pub fn inventory_fetches(&self) -> u64 {
        self.shared_instances.fetches() + self.shared_groups.fetches()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::AwsErrorKind;
    use std::sync::atomic::AtomicU32;

    fn throttled() -> CloudError {
        CloudError::Api {
            operation: "DescribeInstances",
            code: "RequestLimitExceeded".into(),
            message: "slow down".into(),
            kind: AwsErrorKind::Throttled,
        }
    }

    /// A fetch that counts itself, takes `took`, and answers the count.
    async fn counted(n: &AtomicU32, took: Duration) -> Result<u32, CloudError> {
        let me = n.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(took).await;
        Ok(me)
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_fetch_in_flight() {
        let shared = Coalesced::new(Duration::ZERO);
        let n = AtomicU32::new(0);
        let got =
            futures::future::join_all((0..5).map(|_| shared.get(|| counted(&n, Duration::from_millis(200))))).await;
        assert_eq!(n.load(Ordering::SeqCst), 1, "one fetch for five concurrent callers");
        assert!(
            got.iter().all(|r| matches!(r.as_deref(), Ok(&1))),
            "{:?}",
            got.iter().map(|r| r.is_ok()).collect::<Vec<_>>()
        );
        assert_eq!(shared.fetches(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_result_serves_the_window_then_is_fetched_again() {
        let shared = Coalesced::new(Duration::from_secs(5));
        let n = AtomicU32::new(0);
        assert_eq!(*shared.get(|| counted(&n, Duration::ZERO)).await.unwrap(), 1);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(*shared.get(|| counted(&n, Duration::ZERO)).await.unwrap(), 1, "within the window");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(*shared.get(|| counted(&n, Duration::ZERO)).await.unwrap(), 2, "older than the window");
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_counts_from_the_start_of_the_fetch() {
        let shared = Coalesced::new(Duration::from_secs(5));
        let n = AtomicU32::new(0);
        // A slow fetch: 4 s of its 5 s window are gone when it answers.
        assert_eq!(*shared.get(|| counted(&n, Duration::from_secs(4))).await.unwrap(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(*shared.get(|| counted(&n, Duration::ZERO)).await.unwrap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn invalidation_forces_the_next_fetch() {
        let shared = Coalesced::new(Duration::from_secs(60));
        let n = AtomicU32::new(0);
        assert_eq!(*shared.get(|| counted(&n, Duration::ZERO)).await.unwrap(), 1);
        assert_eq!(*shared.get(|| counted(&n, Duration::ZERO)).await.unwrap(), 1);
        shared.invalidate();
        assert_eq!(*shared.get(|| counted(&n, Duration::ZERO)).await.unwrap(), 2, "after a change");
        assert_eq!(*shared.get(|| counted(&n, Duration::ZERO)).await.unwrap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_during_a_fetch_is_not_hidden_by_it() {
        let shared = Arc::new(Coalesced::new(Duration::from_secs(60)));
        let n = Arc::new(AtomicU32::new(0));
        let (s, c) = (shared.clone(), n.clone());
        let slow = tokio::spawn(async move { *s.get(|| counted(&c, Duration::from_secs(1))).await.unwrap() });
        while n.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Something is launched while the look-up runs; whoever observes
        // after the launch must not get the look-up that started before it.
        shared.invalidate();
        let after = shared.get(|| counted(&n, Duration::ZERO)).await.unwrap();
        assert_eq!(slow.await.unwrap(), 1);
        assert_eq!(*after, 2);
        assert_eq!(*shared.get(|| counted(&n, Duration::ZERO)).await.unwrap(), 2, "the fresh result is shared");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_is_shared_with_its_waiters_only() {
        let shared = Coalesced::<u32>::new(Duration::from_secs(60));
        let n = AtomicU32::new(0);
        let failing = || async {
            n.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            Err(throttled())
        };
        let got = futures::future::join_all((0..3).map(|_| shared.get(failing))).await;
        assert!(got.iter().all(|r| matches!(r, Err(CloudError::Api { code, .. }) if code == "RequestLimitExceeded")));
        assert_eq!(n.load(Ordering::SeqCst), 1, "the waiters took the same answer");
        // A later caller does not inherit the failure.
        assert_eq!(*shared.get(|| counted(&n, Duration::ZERO)).await.unwrap(), 2);
    }

    #[test]
    fn only_describe_and_get_count_as_read_only() {
        assert!(is_read_only("DescribeInstances"));
        assert!(is_read_only("DescribeSecurityGroups"));
        assert!(is_read_only("GetConsoleOutput"));
        assert!(!is_read_only("RunInstances"));
        assert!(!is_read_only("TerminateInstances"));
        assert!(!is_read_only("AuthorizeSecurityGroupIngress"));
        assert!(!is_read_only("CreateVolume"));
        assert!(!is_read_only("AttachVolume"));
    }
}
