//! Leader election on a coordination.k8s.io Lease, so two replicas never
//! reconcile at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use tokio::sync::watch;
use tracing::{info, warn};

/// Settings of one candidate.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub lease_name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a lease holds without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews and a standby retries.
    pub retry_period: Duration,
}

/// A candidate for the Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, config: LeaseConfig) -> LeaderElector {
        LeaderElector { api, config }
    }

    /// One attempt to take or renew the Lease. Ok(true) while this replica leads.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let me = &self.config.identity;
        let duration_secs = self.config.lease_duration.as_secs() as i32;
        let existing = self.api.get_opt(&self.config.lease_name).await?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.config.lease_name.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let held_by_me = spec.holder_identity.as_deref() == Some(me.as_str());
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(MicroTime(renewed)), Some(secs)) => {
                renewed.checked_add(SignedDuration::from_secs(i64::from(secs))).is_ok_and(|until| until < now)
            }
            _ => true,
        };
        if !held_by_me && !expired {
            return Ok(false);
        }
        if !held_by_me {
            spec.holder_identity = Some(me.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(duration_secs);
        // replace carries resourceVersion: a concurrent writer makes this a 409.
        match self.api.replace(&self.config.lease_name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Campaigns forever, publishing leadership on `leading`. Returns when
    /// leadership, once held, is lost: the process should then exit so it
    /// never reconciles beside a new leader.
    pub async fn run(self, leading: watch::Sender<bool>) -> LeadershipLost {
        let mut was_leader = false;
        let mut last_renewal = std::time::Instant::now();
        loop {
            let leader = match self.try_acquire_or_renew().await {
                Ok(l) => {
                    if l {
                        last_renewal = std::time::Instant::now();
                    }
                    l
                }
                Err(e) => {
                    warn!(error = %e, "lease update failed");
                    // Keep leading through a short API outage, never past two
                    // thirds of the lease, when a standby may take over.
                    was_leader && last_renewal.elapsed() < self.config.lease_duration * 2 / 3
                }
            };
            if leader && !was_leader {
                info!(identity = %self.config.identity, lease = %self.config.lease_name, "became leader");
            }
            if was_leader && !leader {
                let _ = leading.send(false);
                return LeadershipLost;
            }
            was_leader = leader;
            let _ = leading.send(leader);
            tokio::time::sleep(self.config.retry_period).await;
        }
    }
}

/// Returned when a leader lost its Lease.
#[derive(Debug, PartialEq, Eq)]
pub struct LeadershipLost;
