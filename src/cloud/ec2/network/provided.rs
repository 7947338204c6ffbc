//! A network the user brings (`spec.network.vpcId`, `publicSubnetId`,
//! `privateSubnetId`): found by id, checked usable, and seen by the engine
//! like a network of the stack's own whose VPC and subnets it must never
//! create, change or delete. Nothing here calls EC2.

use aws_sdk_ec2::types::{RouteState, RouteTable, Subnet, Vpc};

use crate::api::{Egress, NetworkStatus, ProvidedNetwork};
use crate::cloud::{CloudError, StackIdentity};
use crate::model::network::{ObservedSubnet, ObservedVpc, DEFAULT_ROUTE};
use crate::model::ObservedNetwork;

use super::inventory::Inventory;

/// What EC2 lists of the user's network: the VPC, the two subnets and
/// every route table of the VPC.
#[derive(Debug, Default)]
pub(in crate::cloud::ec2) struct ProvidedParts {
    pub vpcs: Vec<Vpc>,
    pub subnets: Vec<Subnet>,
    pub route_tables: Vec<RouteTable>,
}

/// The route table that routes a subnet: the one explicitly associated
/// with it, else the VPC's main table.
fn table_of<'a>(tables: &'a [RouteTable], subnet_id: &str) -> Option<&'a RouteTable> {
    tables
        .iter()
        .find(|t| t.associations().iter().any(|a| a.subnet_id() == Some(subnet_id)))
        .or_else(|| tables.iter().find(|t| t.associations().iter().any(|a| a.main() == Some(true))))
}

/// Where a table sends `0.0.0.0/0` while the route is active: the target id.
fn active_default_target(table: &RouteTable) -> Option<&str> {
    let route = table.routes().iter().find(|r| r.destination_cidr_block() == Some(DEFAULT_ROUTE))?;
    if route.state() == Some(&RouteState::Blackhole) {
        return None;
    }
    route
        .nat_gateway_id()
        .or(route.gateway_id())
        .or(route.transit_gateway_id())
        .or(route.network_interface_id())
        .or(route.instance_id())
        .or(route.vpc_peering_connection_id())
}

fn unusable(field: &'static str, id: &str, problem: String) -> CloudError {
    CloudError::ProvidedNetwork { field, id: id.to_owned(), problem }
}

/// Checks that the user's network can carry the stack:
/// - the VPC and both subnets exist, and the subnets lie in the VPC;
/// - the public subnet routes `0.0.0.0/0` to an internet gateway (the
///   frontend host serves the pages through it);
/// - with `egress: NatGateway`, the private subnet routes `0.0.0.0/0`
///   somewhere other than an internet gateway (its hosts have no public
///   IPs and pull their images through that route).
///
/// The first problem found is the error, naming the spec field.
pub(in crate::cloud::ec2) fn check(p: &ProvidedNetwork, parts: &ProvidedParts) -> Result<(), CloudError> {
    if !parts.vpcs.iter().any(|v| v.vpc_id() == Some(p.vpc_id.as_str())) {
        return Err(unusable("vpcId", &p.vpc_id, "DescribeVpcs lists no such VPC in the stack's region".into()));
    }
    let subnets = [("publicSubnetId", &p.public_subnet_id), ("privateSubnetId", &p.private_subnet_id)];
    for (field, id) in subnets {
        let Some(subnet) = parts.subnets.iter().find(|s| s.subnet_id() == Some(id.as_str())) else {
            return Err(unusable(field, id, "DescribeSubnets lists no such subnet in the stack's region".into()));
        };
        if subnet.vpc_id() != Some(p.vpc_id.as_str()) {
            let other = subnet.vpc_id().unwrap_or("another VPC");
            return Err(unusable(field, id, format!("the subnet is in {other}, not in vpcId {}", p.vpc_id)));
        }
    }
    let public = table_of(&parts.route_tables, &p.public_subnet_id);
    match public.and_then(active_default_target) {
        Some(target) if target.starts_with("igw-") => {}
        found => {
            let table = public.and_then(|t| t.route_table_id()).unwrap_or("no route table");
            let sends = found
                .map(|t| format!("sends {DEFAULT_ROUTE} to {t}"))
                .unwrap_or_else(|| format!("has no active route to {DEFAULT_ROUTE}"));
            return Err(unusable(
                "publicSubnetId",
                &p.public_subnet_id,
                format!(
                    "its route table ({table}) {sends}, not to an internet gateway: the frontend host serves the \
                     vote and result pages through it; use a public subnet"
                ),
            ));
        }
    }
    if p.egress == Egress::NatGateway {
        let private = table_of(&parts.route_tables, &p.private_subnet_id);
        match private.and_then(active_default_target) {
            Some(target) if !target.starts_with("igw-") => {}
            found => {
                let table = private.and_then(|t| t.route_table_id()).unwrap_or("no route table");
                let sends = match found {
                    Some(igw) => format!(
                        "sends {DEFAULT_ROUTE} to internet gateway {igw}, which hosts without public IPs cannot use"
                    ),
                    None => format!("has no active route to {DEFAULT_ROUTE}"),
                };
                return Err(unusable(
                    "privateSubnetId",
                    &p.private_subnet_id,
                    format!(
                        "its route table ({table}) {sends}: the backend and database hosts pull their images \
                         through it; add a default route to your NAT gateway, or set spec.network.egress: None \
                         when they reach a registry mirror or VPC endpoints without one"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The network as the engine sees it: the user's VPC and subnets, with the
/// stack's own security groups (in that VPC) and key pair from `own`, the
/// stack's resources by tag. No gateway, route table or NAT gateway is the
/// stack's, so the engine plans none; a VPC of the stack's own found by
/// tag (none should exist) is left to the teardown.
pub(in crate::cloud::ec2) fn observe(
    p: &ProvidedNetwork,
    parts: &ProvidedParts,
    mut own: Inventory,
    stack: &StackIdentity,
    known: Option<&NetworkStatus>,
) -> Result<ObservedNetwork, CloudError> {
    check(p, parts)?;
    let vpc = parts.vpcs.iter().find(|v| v.vpc_id() == Some(p.vpc_id.as_str()));
    // Chosen as the stack's VPC, so its groups are found in it.
    own.vpcs = vpc.into_iter().cloned().collect();
    own.subnets.clear();
    own.route_tables.clear();
    own.gateways.clear();
    own.nat_gateways.clear();
    own.addresses.clear();
    let mut observed = own.observe(stack, known);
    let subnet = |id: &str| {
        parts.subnets.iter().find(|s| s.subnet_id() == Some(id)).map(|s| ObservedSubnet {
            id: id.to_owned(),
            cidr: s.cidr_block().unwrap_or_default().to_owned(),
            availability_zone: s.availability_zone().map(str::to_owned),
        })
    };
    observed.provided = true;
    observed.vpc =
        vpc.map(|v| ObservedVpc { id: p.vpc_id.clone(), cidr: v.cidr_block().unwrap_or_default().to_owned() });
    observed.subnet = subnet(&p.public_subnet_id);
    observed.private_subnet = subnet(&p.private_subnet_id);
    observed.duplicates.clear();
    Ok(observed)
}

/// True when the recorded network is the provided one.
pub(super) fn is_recorded(known: &NetworkStatus, p: &ProvidedNetwork) -> bool {
    known.provided
        && known.vpc_id.as_deref() == Some(p.vpc_id.as_str())
        && known.subnet_id.as_deref() == Some(p.public_subnet_id.as_str())
        && known.private_subnet_id.as_deref() == Some(p.private_subnet_id.as_str())
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::types::{Route, RouteTableAssociation};

    use super::*;

    fn provided(egress: Egress) -> ProvidedNetwork {
        ProvidedNetwork {
            vpc_id: "vpc-1".into(),
            public_subnet_id: "subnet-pub".into(),
            private_subnet_id: "subnet-priv".into(),
            egress,
        }
    }

    fn subnet(id: &str, vpc: &str) -> Subnet {
        Subnet::builder().subnet_id(id).vpc_id(vpc).cidr_block("10.0.1.0/24").availability_zone("us-east-1b").build()
    }

    fn table(id: &str, subnet: Option<&str>, main: bool, target: Option<&str>, state: RouteState) -> RouteTable {
        let assoc = RouteTableAssociation::builder().main(main).set_subnet_id(subnet.map(Into::into)).build();
        let mut t = RouteTable::builder().route_table_id(id).vpc_id("vpc-1").associations(assoc);
        if let Some(target) = target {
            let r = Route::builder().destination_cidr_block(DEFAULT_ROUTE).state(state);
            let r = if target.starts_with("nat-") { r.nat_gateway_id(target) } else { r.gateway_id(target) };
            t = t.routes(r.build());
        }
        t.build()
    }

    fn parts(tables: Vec<RouteTable>) -> ProvidedParts {
        ProvidedParts {
            vpcs: vec![Vpc::builder().vpc_id("vpc-1").cidr_block("10.0.0.0/16").build()],
            subnets: vec![subnet("subnet-pub", "vpc-1"), subnet("subnet-priv", "vpc-1")],
            route_tables: tables,
        }
    }

    fn good() -> Vec<RouteTable> {
        vec![
            table("rtb-pub", Some("subnet-pub"), false, Some("igw-1"), RouteState::Active),
            table("rtb-priv", Some("subnet-priv"), false, Some("nat-1"), RouteState::Active),
        ]
    }

    fn problem(p: &ProvidedNetwork, parts: &ProvidedParts) -> (&'static str, String) {
        match check(p, parts) {
            Err(CloudError::ProvidedNetwork { field, problem, .. }) => (field, problem),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_public_subnet_to_a_gateway_and_a_private_one_routed_out_are_usable() {
        assert!(check(&provided(Egress::NatGateway), &parts(good())).is_ok());
        // The main table routes a subnet without a table of its own.
        let main = vec![
            table("rtb-pub", Some("subnet-pub"), false, Some("igw-1"), RouteState::Active),
            table("rtb-main", None, true, Some("tgw-1"), RouteState::Active),
        ];
        assert!(check(&provided(Egress::NatGateway), &parts(main)).is_ok());
    }

    #[test]
    fn missing_or_misplaced_parts_name_the_field() {
        let p = provided(Egress::NatGateway);
        let mut none = parts(good());
        none.vpcs.clear();
        assert_eq!(problem(&p, &none).0, "vpcId");
        let mut gone = parts(good());
        gone.subnets.retain(|s| s.subnet_id() != Some("subnet-priv"));
        assert_eq!(problem(&p, &gone).0, "privateSubnetId");
        let mut elsewhere = parts(good());
        elsewhere.subnets[0] = subnet("subnet-pub", "vpc-2");
        let (field, why) = problem(&p, &elsewhere);
        assert_eq!(field, "publicSubnetId");
        assert!(why.contains("vpc-2"), "{why}");
    }

    #[test]
    fn a_public_subnet_without_an_internet_gateway_is_refused() {
        let p = provided(Egress::NatGateway);
        let tables = vec![
            table("rtb-pub", Some("subnet-pub"), false, Some("nat-1"), RouteState::Active),
            table("rtb-priv", Some("subnet-priv"), false, Some("nat-1"), RouteState::Active),
        ];
        let (field, why) = problem(&p, &parts(tables));
        assert_eq!(field, "publicSubnetId");
        assert!(why.contains("rtb-pub") && why.contains("nat-1"), "{why}");
    }

    #[test]
    fn a_private_subnet_with_no_way_out_is_refused_unless_egress_is_none() {
        let blackhole = vec![
            table("rtb-pub", Some("subnet-pub"), false, Some("igw-1"), RouteState::Active),
            table("rtb-priv", Some("subnet-priv"), false, Some("nat-gone"), RouteState::Blackhole),
        ];
        let (field, why) = problem(&provided(Egress::NatGateway), &parts(blackhole.clone()));
        assert_eq!(field, "privateSubnetId");
        assert!(why.contains("no active route") && why.contains("egress: None"), "{why}");
        assert!(check(&provided(Egress::None), &parts(blackhole)).is_ok());
        let to_igw = vec![
            table("rtb-pub", Some("subnet-pub"), false, Some("igw-1"), RouteState::Active),
            table("rtb-priv", Some("subnet-priv"), false, Some("igw-1"), RouteState::Active),
        ];
        let (_, why) = problem(&provided(Egress::NatGateway), &parts(to_igw));
        assert!(why.contains("public IPs"), "{why}");
    }

    #[test]
    fn the_engine_sees_the_users_subnets_and_only_the_stacks_groups() {
        let stack = StackIdentity { name: "s".into(), namespace: "n".into(), uid: "u".into() };
        let p = provided(Egress::NatGateway);
        let seen = observe(&p, &parts(good()), Inventory::default(), &stack, None).unwrap();
        assert!(seen.provided);
        assert_eq!(seen.vpc.as_ref().map(|v| v.id.as_str()), Some("vpc-1"));
        assert_eq!(seen.subnet.as_ref().map(|s| s.id.as_str()), Some("subnet-pub"));
        assert_eq!(seen.private_subnet.as_ref().map(|s| s.id.as_str()), Some("subnet-priv"));
        assert!(seen.gateway.is_none() && seen.route_table.is_none() && seen.nat_gateway.is_none());
        let ids = seen.ids();
        assert!(ids.provided && ids.internet_gateway_id.is_none() && ids.route_table_id.is_none());
        assert!(is_recorded(&ids, &p));
        assert!(seen.complete_ids(Egress::NatGateway).is_none(), "no groups or key pair yet");
    }
}
