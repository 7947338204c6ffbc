//! `InfrastructureReady`: EC2 failures, the network and the instances.

use std::collections::BTreeMap;

use crate::api::{NetworkStatus, Reason, Tier};
use crate::cloud::{AwsErrorKind, CloudError};
use crate::model::network::NatState;
use crate::model::{InstanceState, ObservedInstance};

use super::Finding;
use crate::engine::plan::{InfraPlan, InstanceDrift};

/// The reason an EC2 error code class shows as.
pub fn aws_reason(kind: AwsErrorKind) -> Reason {
    match kind {
        AwsErrorKind::Auth => Reason::AwsAuthFailed,
        AwsErrorKind::InvalidParameter => Reason::AwsInvalidParameter,
        AwsErrorKind::Quota => Reason::AwsQuotaExceeded,
        AwsErrorKind::Throttled => Reason::AwsThrottled,
        AwsErrorKind::Unavailable | AwsErrorKind::Capacity => Reason::AwsUnavailable,
        AwsErrorKind::NotFound | AwsErrorKind::Other => Reason::AwsError,
    }
}

/// The reason a failed EC2 call shows as.
pub fn cloud_reason(e: &CloudError) -> Reason {
    if let CloudError::ProvidedNetwork { .. } = e {
        return Reason::NetworkUnusable;
    }
    aws_reason(e.kind())
}

/// A failed EC2 call, as the infrastructure's finding.
pub fn cloud_failed(e: &CloudError) -> Finding {
    Finding::not(cloud_reason(e), e.to_string())
}

/// `InfrastructureReady` once EC2 was observed (and acted on): network drift
/// first, then a pending NAT gateway, then the instances.
pub fn infrastructure(network_drift: &[String], network: Option<&NetworkStatus>, plan: &InfraPlan) -> Finding {
    if let Some(f) = network_finding(network_drift, network) {
        return f;
    }
    if !plan.launch_failures.is_empty() {
        let list: Vec<String> = plan
            .launch_failures
            .values()
            .map(|f| format!("{} instance {} ({})", f.tier, f.instance_id, f.code))
            .collect();
        return Finding::not(
            Reason::InstanceLaunchFailed,
            format!(
                "EC2 terminated {} at launch; not launched again until the spec changes (see the tier's condition)",
                list.join(", ")
            ),
        );
    }
    instances_finding(&plan.keepers, &plan.drift)
}

/// A network that drifted from the spec (kept, for a person to resolve), or
/// a NAT gateway still pending (the reconcile comes back soon); None when
/// the network is as it should be.
fn network_finding(drift: &[String], network: Option<&NetworkStatus>) -> Option<Finding> {
    if !drift.is_empty() {
        return Some(Finding::not(Reason::NetworkDrift, format!("{} (kept as found)", drift.join("; "))));
    }
    let net = network?;
    (net.nat_gateway_state.as_deref() == Some(NatState::Pending.as_str())).then(|| {
        let id = net.nat_gateway_id.as_deref().unwrap_or("of the stack");
        Finding::not(
            Reason::Provisioning,
            format!("NAT gateway {id} is pending: the private subnet gets its route to it once it is available"),
        )
    })
}

fn instances_finding(keepers: &BTreeMap<Tier, ObservedInstance>, drift: &[InstanceDrift]) -> Finding {
    let not_running: Vec<String> = Tier::ALL
        .iter()
        .filter_map(|t| match keepers.get(t) {
            Some(i) if i.state == InstanceState::Running && i.private_ip.is_some() => None,
            Some(i) => Some(format!("{t} instance {} is {}", i.id, i.state.as_str())),
            None => Some(format!("{t} instance is being launched")),
        })
        .collect();
    if !not_running.is_empty() {
        return Finding::not(Reason::Provisioning, not_running.join(", "));
    }
    if !drift.is_empty() {
        let list: Vec<String> = drift.iter().map(|d| format!("{} {}: {}", d.tier, d.instance_id, d.what)).collect();
        return Finding::not(
            Reason::InstanceDrift,
            format!("{} (set instances.allowReplacement to replace)", list.join("; ")),
        );
    }
    Finding::ok(Reason::InstancesRunning, "network and three instances are up")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::conditions::tiers::tests::instance;

    fn running() -> BTreeMap<Tier, ObservedInstance> {
        Tier::ALL.iter().map(|t| (*t, instance(*t, InstanceState::Running))).collect()
    }

    fn infrastructure(
        drift: &[String],
        network: Option<&NetworkStatus>,
        keepers: &BTreeMap<Tier, ObservedInstance>,
        instance_drift: &[InstanceDrift],
    ) -> Finding {
        let plan = InfraPlan { keepers: keepers.clone(), drift: instance_drift.to_vec(), ..Default::default() };
        super::infrastructure(drift, network, &plan)
    }

    #[test]
    fn a_launch_that_died_is_terminal_and_named() {
        let mut keepers = running();
        keepers.remove(&Tier::Database);
        let failure = crate::engine::plan::LaunchFailure {
            tier: Tier::Database,
            instance_id: "i-0dead".into(),
            code: "Client.InternalError".into(),
            message: "Client.InternalError: Client error on launch".into(),
        };
        let plan = InfraPlan {
            keepers,
            launch_failures: [(Tier::Database, failure)].into_iter().collect(),
            ..Default::default()
        };
        let f = super::infrastructure(&[], None, &plan);
        assert_eq!(f.reason, Reason::InstanceLaunchFailed);
        assert!(f.reason.is_terminal());
        assert!(f.message.contains("database instance i-0dead (Client.InternalError)"), "{}", f.message);
    }

    #[test]
    fn aws_codes_map_to_reasons_a_user_can_act_on() {
        assert_eq!(aws_reason(AwsErrorKind::from_code("InvalidAMIID.NotFound")), Reason::AwsInvalidParameter);
        assert_eq!(aws_reason(AwsErrorKind::from_code("UnauthorizedOperation")), Reason::AwsAuthFailed);
        assert_eq!(aws_reason(AwsErrorKind::from_code("RequestLimitExceeded")), Reason::AwsThrottled);
        assert_eq!(aws_reason(AwsErrorKind::from_code("VcpuLimitExceeded")), Reason::AwsQuotaExceeded);
        assert_eq!(aws_reason(AwsErrorKind::Capacity), Reason::AwsUnavailable);
        assert!(!aws_reason(AwsErrorKind::Capacity).is_terminal());
        let e = CloudError::TokenReused { tier: Tier::Database, token: "vs-ab-1".into(), message: "m".into() };
        assert!(!cloud_reason(&e).is_terminal());
        assert_eq!(cloud_failed(&e).message, e.to_string());
    }

    #[test]
    fn a_quota_refusal_says_which_quota_and_how_to_raise_it() {
        for code in [
            "NatGatewayLimitExceeded",
            "InternetGatewayLimitExceeded",
            "RouteTableLimitExceeded",
            "VolumeLimitExceeded",
        ] {
            let e = CloudError::Api {
                operation: "Create",
                code: code.into(),
                message: "limit reached".into(),
                kind: AwsErrorKind::from_code(code),
            };
            let f = cloud_failed(&e);
            assert_eq!(f.reason, Reason::AwsQuotaExceeded, "{code}");
            assert!(f.reason.is_terminal());
            assert!(f.message.contains("request-service-quota-increase"), "{}", f.message);
        }
    }

    #[test]
    fn three_running_instances_are_ready() {
        let f = infrastructure(&[], None, &running(), &[]);
        assert_eq!((f.ok, f.reason), (true, Reason::InstancesRunning));
    }

    #[test]
    fn network_drift_wins_and_is_kept() {
        let f = infrastructure(&["VPC CIDR differs".into()], None, &running(), &[]);
        assert_eq!(f.reason, Reason::NetworkDrift);
        assert_eq!(f.message, "VPC CIDR differs (kept as found)");
    }

    #[test]
    fn a_pending_nat_gateway_is_provisioning() {
        let net = NetworkStatus {
            nat_gateway_id: Some("nat-1".into()),
            nat_gateway_state: Some(NatState::Pending.as_str().into()),
            ..Default::default()
        };
        let f = infrastructure(&[], Some(&net), &running(), &[]);
        assert_eq!(f.reason, Reason::Provisioning);
        assert!(f.message.contains("nat-1"), "{}", f.message);
    }

    #[test]
    fn an_instance_not_running_or_missing_is_provisioning() {
        let mut keepers = running();
        keepers.insert(Tier::Backend, instance(Tier::Backend, InstanceState::Pending));
        keepers.remove(&Tier::Frontend);
        let f = infrastructure(&[], None, &keepers, &[]);
        assert_eq!(f.reason, Reason::Provisioning);
        assert!(f.message.contains("backend instance i-backend is pending"), "{}", f.message);
        assert!(f.message.contains("frontend instance is being launched"), "{}", f.message);
    }

    #[test]
    fn instance_drift_names_the_instance_and_the_way_out() {
        let drift =
            [InstanceDrift { tier: Tier::Database, instance_id: "i-database".into(), what: "AMI a → b".into() }];
        let f = infrastructure(&[], None, &running(), &drift);
        assert_eq!(f.reason, Reason::InstanceDrift);
        assert!(f.message.contains("allowReplacement"), "{}", f.message);
    }
}
