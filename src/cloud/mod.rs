//! The cloud side of the engine: what the engine asks of EC2.
//!
//! [`Cloud`] is implemented by [`ec2::Ec2Cloud`] (aws-sdk-ec2) and by test doubles.

pub mod ec2;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::api::{NetworkStatus, Reason, Tier, VotingStack};
use crate::model::{InstanceLaunch, NetworkStep, ObservedInfra, ObservedInstance, TeardownInventory, TeardownStep};

/// How every ClientToken the operator sends begins: an instance launched
/// with one got its SSH host key from the operator (see `SshKey::host_key_for`).
pub const CLIENT_TOKEN_PREFIX: &str = "vs-";

/// Who a stack is, for tags, names and ClientTokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackIdentity {
    pub name: String,
    pub namespace: String,
    /// The object's uid (the CLI keeps one in its state file).
    pub uid: String,
}

impl StackIdentity {
    pub fn of(stack: &VotingStack) -> StackIdentity {
        StackIdentity {
            name: stack.metadata.name.clone().unwrap_or_default(),
            namespace: stack.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            uid: stack.metadata.uid.clone().unwrap_or_default(),
        }
    }

    /// Value of the `votingstack.dev/stack` tag: `namespace/name`, so two
    /// namespaces never share resources.
    pub fn tag_value(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Name of resources such as the key pair: `votingstack-<namespace>-<name>`.
    pub fn resource_name(&self) -> String {
        format!("votingstack-{}-{}", self.namespace, self.name)
    }

    /// Deterministic RunInstances ClientToken for a tier's n-th instance.
    pub fn client_token(&self, tier: Tier, replacement: u32) -> String {
        let digest = Sha256::digest(format!("{}/{}/{}/{tier}/{replacement}", self.uid, self.namespace, self.name));
        format!("{CLIENT_TOKEN_PREFIX}{}", hex::encode(&digest[..16]))
    }
}

/// What kind of EC2 failure this is, which decides the condition reason and
/// whether retrying can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AwsErrorKind {
    Auth,
    InvalidParameter,
    Quota,
    Throttled,
    Unavailable,
    NotFound,
    Other,
}

impl AwsErrorKind {
    /// Classifies an EC2 error code.
    pub fn from_code(code: &str) -> AwsErrorKind {
        match code {
            "AuthFailure"
            | "UnauthorizedOperation"
            | "InvalidClientTokenId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "OptInRequired"
            | "Blocked" => AwsErrorKind::Auth,
            "RequestLimitExceeded" | "Throttling" | "ThrottlingException" => AwsErrorKind::Throttled,
            "InstanceLimitExceeded"
            | "VcpuLimitExceeded"
            | "VpcLimitExceeded"
            | "AddressLimitExceeded"
            | "SecurityGroupLimitExceeded"
            | "RulesPerSecurityGroupLimitExceeded"
            | "InsufficientInstanceCapacity"
            | "MaxSpotInstanceCountExceeded" => AwsErrorKind::Quota,
            "InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable" => AwsErrorKind::Unavailable,
            c if c.starts_with("InvalidAMIID") || c.starts_with("InvalidKeyPair") => AwsErrorKind::InvalidParameter,
            c if c.ends_with(".NotFound") => AwsErrorKind::NotFound,
            c if c.starts_with("Invalid") || c.starts_with("Unsupported") || c == "MissingParameter" => {
                AwsErrorKind::InvalidParameter
            }
            _ => AwsErrorKind::Other,
        }
    }

    pub fn reason(self) -> Reason {
        match self {
            AwsErrorKind::Auth => Reason::AwsAuthFailed,
            AwsErrorKind::InvalidParameter => Reason::AwsInvalidParameter,
            AwsErrorKind::Quota => Reason::AwsQuotaExceeded,
            AwsErrorKind::Throttled => Reason::AwsThrottled,
            AwsErrorKind::Unavailable => Reason::AwsUnavailable,
            AwsErrorKind::NotFound | AwsErrorKind::Other => Reason::AwsError,
        }
    }
}

/// Errors at the EC2 boundary.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// EC2 answered with an error code.
    #[error("EC2 {operation} failed with {code}: {message}")]
    Api { operation: &'static str, code: String, message: String, kind: AwsErrorKind },
    /// No answer: connection, timeout, or credentials could not be loaded.
    #[error("EC2 {operation} could not be sent: {message}")]
    Transport { operation: &'static str, message: String },
    /// EC2 answered something the operator cannot use.
    #[error("EC2 {operation} returned no {missing}")]
    Incomplete { operation: &'static str, missing: &'static str },
    /// Waiting for instances to terminate took too long.
    #[error("instances {ids:?} did not terminate within {seconds} s")]
    TerminateTimeout { ids: Vec<String>, seconds: u64 },
}

impl CloudError {
    pub fn kind(&self) -> AwsErrorKind {
        match self {
            CloudError::Api { kind, .. } => *kind,
            CloudError::Transport { .. } | CloudError::TerminateTimeout { .. } => AwsErrorKind::Unavailable,
            CloudError::Incomplete { .. } => AwsErrorKind::Other,
        }
    }

    pub fn reason(&self) -> Reason {
        self.kind().reason()
    }
}

/// What `destroy` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DestroyReport {
    /// Resource ids in the order they were deleted.
    pub deleted: Vec<String>,
}

/// How much of the network [`Cloud::observe`] looks up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkLookup {
    /// Trusts the ids in status while they are complete and every tier has
    /// a live instance in the recorded subnet (no call beyond
    /// DescribeInstances); looks everything up by tag otherwise.
    TrustStatus,
    /// Looks everything up by tag (after a spec change).
    Inventory,
}

/// The EC2 operations the engine needs.
#[async_trait]
pub trait Cloud: Send + Sync {
    /// Every instance with the stack's tags (one DescribeInstances), and the
    /// network: trusted from `known` or inventoried by tag, per `lookup`.
    async fn observe(
        &self,
        stack: &StackIdentity,
        known: Option<&NetworkStatus>,
        lookup: NetworkLookup,
    ) -> Result<ObservedInfra, CloudError>;

    /// Carries out one planned network step. Reads the ids it needs from
    /// `ids` and records the ids it creates there.
    async fn apply_network_step(
        &self,
        stack: &StackIdentity,
        step: &NetworkStep,
        ids: &mut NetworkStatus,
    ) -> Result<(), CloudError>;

    async fn launch_instance(
        &self,
        stack: &StackIdentity,
        network: &NetworkStatus,
        launch: &InstanceLaunch,
    ) -> Result<ObservedInstance, CloudError>;

    async fn start_instance(&self, instance_id: &str) -> Result<(), CloudError>;

    async fn terminate_instances(&self, instance_ids: &[String]) -> Result<(), CloudError>;

    /// What deleting the stack has to remove: its instances and network,
    /// found by tag and by the ids in `known`.
    async fn teardown_inventory(
        &self,
        stack: &StackIdentity,
        known: Option<&NetworkStatus>,
    ) -> Result<TeardownInventory, CloudError>;

    /// Carries out teardown steps in order: skips what is already gone,
    /// waits out dependencies that are letting go, reports what it deleted.
    async fn destroy(&self, stack: &StackIdentity, steps: &[TeardownStep]) -> Result<DestroyReport, CloudError>;

    /// EC2 API calls made so far (for metrics and the steady-state budget).
    fn api_calls(&self) -> u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_tokens_are_deterministic_and_distinct() {
        let id = StackIdentity { name: "demo".into(), namespace: "default".into(), uid: "u1".into() };
        assert_eq!(id.client_token(Tier::Backend, 0), id.client_token(Tier::Backend, 0));
        assert_ne!(id.client_token(Tier::Backend, 0), id.client_token(Tier::Backend, 1));
        assert_ne!(id.client_token(Tier::Backend, 0), id.client_token(Tier::Frontend, 0));
        assert!(id.client_token(Tier::Backend, 0).len() <= 64);
    }

    #[test]
    fn aws_codes_map_to_reasons_a_user_can_act_on() {
        assert_eq!(AwsErrorKind::from_code("InvalidAMIID.NotFound").reason(), Reason::AwsInvalidParameter);
        assert_eq!(AwsErrorKind::from_code("InvalidVpcID.NotFound"), AwsErrorKind::NotFound);
        assert_eq!(AwsErrorKind::from_code("InvalidAMIID.Malformed"), AwsErrorKind::InvalidParameter);
        assert_eq!(AwsErrorKind::from_code("InvalidParameterValue"), AwsErrorKind::InvalidParameter);
        assert_eq!(AwsErrorKind::from_code("UnauthorizedOperation").reason(), Reason::AwsAuthFailed);
        assert_eq!(AwsErrorKind::from_code("RequestLimitExceeded").reason(), Reason::AwsThrottled);
        assert_eq!(AwsErrorKind::from_code("VcpuLimitExceeded").reason(), Reason::AwsQuotaExceeded);
    }
}
