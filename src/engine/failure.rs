//! Why a reconcile failed: one taxonomy for the engine and the controller.
//! The cause labels the error metric and picks the backoff.

use std::time::Duration;

/// The cause of a failed reconcile. The engine reports the first four in
/// [`Outcome::error`](super::Outcome); the controller adds the ones of its
/// own calls to the Kubernetes API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The spec failed validation: nothing was created.
    InvalidSpec,
    /// The SSH key Secret is missing or unreadable.
    Secret,
    /// An EC2 call failed.
    Aws,
    /// A host could not be reached or refused a step.
    Ssh,
    /// A call to the Kubernetes API failed.
    Kube,
    /// A write to the Kubernetes API lost a race (HTTP 409).
    Conflict,
    /// The finalizer could not be added or removed.
    Finalizer,
    /// Tearing the stack's AWS resources down failed.
    Destroy,
    /// The object itself cannot be reconciled (it has no namespace).
    InvalidObject,
}

impl Failure {
    /// Value of the `kind` label of the error metric.
    pub fn metric_label(self) -> &'static str {
        match self {
            Failure::InvalidSpec => "invalid_spec",
            Failure::Secret => "secret",
            Failure::Aws => "aws",
            Failure::Ssh => "ssh",
            Failure::Kube => "kube",
            Failure::Conflict => "conflict",
            Failure::Finalizer => "finalizer",
            Failure::Destroy => "destroy",
            Failure::InvalidObject => "invalid_object",
        }
    }

    /// How long to wait after the `failures`-th failure in a row of this
    /// cause. Hosts that refuse SSH are usually still booting and the
    /// Kubernetes API recovers quickly: those retry within seconds (1 s
    /// doubling to 10 s, or 30 s for the API). The rest use [`backoff`].
    pub fn backoff(self, failures: u32) -> Duration {
        let exp = |base: u64, cap: u64| {
            Duration::from_secs(base.saturating_mul(2u64.saturating_pow(failures.saturating_sub(1).min(16))).min(cap))
        };
        match self {
            Failure::Ssh => exp(1, 10),
            Failure::Kube | Failure::Conflict | Failure::Finalizer => exp(1, 30),
            Failure::InvalidSpec | Failure::Secret | Failure::Aws | Failure::Destroy | Failure::InvalidObject => {
                backoff(failures)
            }
        }
    }
}

/// Exponential backoff: 2 s, 4 s, ... capped at 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let secs = 2u64.saturating_pow(failures.clamp(1, 16)).min(300);
    Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_the_api_retry_within_seconds_the_rest_backs_off() {
        assert_eq!(Failure::Ssh.backoff(1), Duration::from_secs(1));
        assert_eq!(Failure::Ssh.backoff(10), Duration::from_secs(10));
        assert_eq!(Failure::Kube.backoff(3), Duration::from_secs(4));
        assert_eq!(Failure::Conflict.backoff(20), Duration::from_secs(30));
        assert_eq!(Failure::Aws.backoff(1), Duration::from_secs(2));
        assert_eq!(Failure::Destroy.backoff(20), Duration::from_secs(300));
    }

    #[test]
    fn metric_labels_are_distinct() {
        let all = [
            Failure::InvalidSpec,
            Failure::Secret,
            Failure::Aws,
            Failure::Ssh,
            Failure::Kube,
            Failure::Conflict,
            Failure::Finalizer,
            Failure::Destroy,
            Failure::InvalidObject,
        ];
        let labels: std::collections::BTreeSet<_> = all.iter().map(|f| f.metric_label()).collect();
        assert_eq!(labels.len(), all.len());
    }
}
