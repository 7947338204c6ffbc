//! Unit tests of the pure network plan and teardown order.

use std::collections::BTreeMap;

use super::*;
use crate::api::ConnectVia;
use crate::fixtures::spec;
use crate::model::network::{
    Duplicate, DuplicateKind, NatState, ObservedAddress, ObservedGateway, ObservedKeyPair, ObservedNatGateway,
    ObservedSubnet, ObservedVpc, NAT_NONE,
};
use crate::model::teardown::FoundRouteTable;

const KEY: &str = "ssh-ed25519 AAAAcurrent demo@laptop";

fn key() -> DesiredKeyPair {
    DesiredKeyPair { name: "votingstack-default-demo".into(), public_key: Some(KEY.into()) }
}

/// The network as it stands after every step of a fresh plan.
fn complete() -> ObservedNetwork {
    let groups: BTreeMap<Tier, ObservedGroup> = Tier::ALL
        .iter()
        .map(|t| {
            let rules = security_policy(&spec(), *t).into_iter().map(|(r, _)| r).collect();
            (*t, ObservedGroup { id: format!("sg-{t}"), rules })
        })
        .collect();
    let subnet = |id: &str, cidr: &str| ObservedSubnet {
        id: id.into(),
        cidr: cidr.into(),
        availability_zone: Some("us-east-1a".into()),
    };
    ObservedNetwork {
        provided: false,
        vpc: Some(ObservedVpc { id: "vpc-1".into(), cidr: "10.42.0.0/16".into() }),
        subnet: Some(subnet("subnet-1", "10.42.1.0/24")),
        private_subnet: Some(subnet("subnet-2", "10.42.2.0/24")),
        gateway: Some(ObservedGateway { id: "igw-1".into(), attached: true }),
        route_table: Some(ObservedRouteTable {
            id: "rtb-1".into(),
            default_route: Some("igw-1".into()),
            associated: true,
        }),
        private_route_table: Some(ObservedRouteTable {
            id: "rtb-2".into(),
            default_route: Some("nat-1".into()),
            associated: true,
        }),
        nat_gateway: Some(ObservedNatGateway {
            id: "nat-1".into(),
            state: NatState::Available,
            allocation_id: Some("eipalloc-1".into()),
        }),
        failed_nat_gateways: 0,
        elastic_ip: Some(ObservedAddress { allocation_id: "eipalloc-1".into(), associated: true }),
        duplicates: Vec::new(),
        groups,
        key_pair: Some(ObservedKeyPair {
            name: "votingstack-default-demo".into(),
            identity: Some("ssh-ed25519 AAAAcurrent".into()),
        }),
    }
}

/// The plan's lines (a step that adds several rules has one line each).
fn lines(steps: &[NetworkStep]) -> Vec<String> {
    steps.iter().flat_map(|s| s.to_string().lines().map(str::to_owned).collect::<Vec<_>>()).collect()
}

#[test]
fn fresh_network_is_planned_in_full_and_in_order() {
    let steps = network_steps(&ObservedNetwork::default(), &spec(), &key());
    assert_eq!(
        lines(&steps),
        [
            "+ create VPC 10.42.0.0/16",
            "~ enable DNS support and host names in the VPC",
            "+ create public subnet 10.42.1.0/24 in a zone offering t3.small",
            "+ create internet gateway",
            "~ attach internet gateway to the VPC",
            "+ create public route table",
            "+ route 0.0.0.0/0 from the public subnet to the internet gateway",
            "~ associate public route table with the public subnet",
            "+ create private subnet 10.42.2.0/24 in a zone offering t3.small",
            "+ allocate Elastic IP for the NAT gateway",
            "+ create NAT gateway in the public subnet",
            "+ create private route table",
            "+ route 0.0.0.0/0 from the private subnet to the NAT gateway (once it is available)",
            "~ associate private route table with the private subnet",
            "+ create database security group",
            "+ create backend security group",
            "+ create frontend security group",
            "+ allow tcp/22 into database from 203.0.113.0/24",
            "+ allow tcp/22 into database from the frontend group",
            "+ allow tcp/5432 into database from the backend group",
            "+ allow tcp/5432 into database from the frontend group",
            "+ allow tcp/22 into backend from 203.0.113.0/24",
            "+ allow tcp/22 into backend from the frontend group",
            "+ allow tcp/6379 into backend from the backend group",
            "+ allow tcp/6379 into backend from the frontend group",
            "+ allow tcp/22 into frontend from 203.0.113.0/24",
            "+ allow tcp/80 into frontend from 0.0.0.0/0",
            "+ allow tcp/81 into frontend from 0.0.0.0/0",
            "+ import key pair votingstack-default-demo",
        ]
    );
}

#[test]
fn a_network_you_bring_gets_only_the_stacks_groups_and_key_pair() {
    let mut s = spec();
    s.network.vpc_id = Some("vpc-0123456789abcdef0".into());
    s.network.public_subnet_id = Some("subnet-0123456789abcdef0".into());
    s.network.private_subnet_id = Some("subnet-0123456789abcdef1".into());
    let users = ObservedNetwork {
        provided: true,
        vpc: complete().vpc,
        subnet: complete().subnet,
        private_subnet: complete().private_subnet,
        ..ObservedNetwork::default()
    };
    let steps = lines(&network_steps(&users, &s, &key()));
    assert_eq!(steps.first().map(String::as_str), Some("+ create database security group"), "{steps:#?}");
    assert_eq!(steps.last().map(String::as_str), Some("+ import key pair votingstack-default-demo"));
    assert!(
        !steps
            .iter()
            .any(|l| l.contains("VPC") || l.contains("subnet") || l.contains("gateway") || l.contains("route")),
        "nothing of the user's network is created or changed: {steps:#?}"
    );
    assert!(users.complete_ids(Egress::NatGateway).is_none());
    let done = ObservedNetwork { groups: complete().groups, key_pair: complete().key_pair, ..users };
    assert_eq!(network_steps(&done, &s, &key()), []);
    let ids = done.complete_ids(Egress::NatGateway).expect("complete without a NAT gateway of the stack's");
    assert!(ids.provided && ids.nat_gateway_state.is_none() && ids.internet_gateway_id.is_none());
    assert_eq!(network_drift(&NetworkObservation::Inventory(done), &s, Some(&ids)), Vec::<String>::new());
}

#[test]
fn complete_network_needs_no_steps() {
    assert_eq!(network_steps(&complete(), &spec(), &key()), []);
    let ids = complete().complete_ids(Egress::NatGateway).expect("complete");
    assert_eq!(ids.nat_gateway_state.as_deref(), Some(NatState::Available.as_str()));
    assert_eq!(ids.private_subnet_id.as_deref(), Some("subnet-2"));
    assert_eq!(ids.availability_zone.as_deref(), Some("us-east-1a"));
}

#[test]
fn the_subnets_go_to_the_named_zone_or_the_first_offering_every_type() {
    let mut s = spec();
    s.instances.database = Some(crate::api::InstanceOverride { ami: None, instance_type: Some("r6i.large".into()) });
    let zones: Vec<ZoneChoice> = network_steps(&ObservedNetwork::default(), &s, &key())
        .into_iter()
        .filter_map(|step| match step {
            NetworkStep::CreateSubnet { zone, .. } => Some(zone),
            _ => None,
        })
        .collect();
    let offering = ZoneChoice::Offering(vec!["r6i.large".into(), "t3.small".into()]);
    assert_eq!(zones, [offering.clone(), offering]);
    s.network.availability_zone = Some("eu-west-1b".into());
    let steps = network_steps(&ObservedNetwork::default(), &s, &key());
    assert!(lines(&steps).contains(&"+ create private subnet 10.42.2.0/24 in eu-west-1b".to_string()));
}

#[test]
fn a_pending_nat_gateway_is_routed_to_once_available_and_the_network_stays_incomplete() {
    let mut net = complete();
    net.private_route_table.as_mut().expect("rt").default_route = None;
    net.nat_gateway.as_mut().expect("nat").state = NatState::Pending;
    assert_eq!(
        network_steps(&net, &spec(), &key()),
        [NetworkStep::RouteToNatGateway { replaces: None, when_available: true }]
    );
    assert!(net.complete_ids(Egress::NatGateway).is_none());
    assert_eq!(net.ids().nat_gateway_state.as_deref(), Some(NatState::Pending.as_str()));
    // Available now: routed at once.
    net.nat_gateway.as_mut().expect("nat").state = NatState::Available;
    assert_eq!(
        lines(&network_steps(&net, &spec(), &key())),
        ["+ route 0.0.0.0/0 from the private subnet to the NAT gateway"]
    );
}

#[test]
fn a_failed_nat_gateway_is_replaced_with_a_new_client_token() {
    let mut net = complete();
    net.nat_gateway = None;
    net.failed_nat_gateways = 1;
    net.elastic_ip.as_mut().expect("eip").associated = false;
    assert_eq!(
        network_steps(&net, &spec(), &key()),
        [
            NetworkStep::CreateNatGateway { attempt: 1 },
            NetworkStep::RouteToNatGateway { replaces: Some("nat-1".into()), when_available: true },
        ]
    );
}

#[test]
fn without_egress_the_private_subnet_gets_no_nat_gateway() {
    let mut s = spec();
    s.network.egress = Egress::None;
    let fresh = lines(&network_steps(&ObservedNetwork::default(), &s, &key()));
    assert!(!fresh.iter().any(|l| l.contains("NAT") || l.contains("Elastic IP")), "{fresh:?}");
    assert!(fresh.contains(&"+ create private route table".to_string()), "{fresh:?}");
    let mut net = complete();
    net.nat_gateway = None;
    net.elastic_ip = None;
    net.private_route_table.as_mut().expect("rt").default_route = None;
    assert_eq!(network_steps(&net, &s, &key()), []);
    let ids = net.complete_ids(Egress::None).expect("complete without egress");
    assert_eq!(ids.nat_gateway_state.as_deref(), Some(NAT_NONE));
    assert!(net.complete_ids(Egress::NatGateway).is_none());
}

#[test]
fn unused_duplicates_are_deleted_after_everything_else() {
    let mut net = complete();
    net.duplicates = vec![
        Duplicate { kind: DuplicateKind::Vpc, id: "vpc-2".into() },
        Duplicate { kind: DuplicateKind::InternetGateway, id: "igw-2".into() },
    ];
    net.key_pair = None;
    assert_eq!(
        lines(&network_steps(&net, &spec(), &key())),
        [
            "+ import key pair votingstack-default-demo",
            "- delete unused duplicate VPC vpc-2 (left by a retried create)",
            "- delete unused duplicate internet gateway igw-2 (left by a retried create)",
        ]
    );
}

#[test]
fn a_subnet_in_another_zone_or_block_is_drift_not_replaced() {
    let mut net = complete();
    let known = net.ids();
    net.private_subnet.as_mut().expect("private").availability_zone = Some("us-east-1c".into());
    net.subnet.as_mut().expect("public").cidr = "10.42.9.0/24".into();
    let observed = NetworkObservation::Inventory(net.clone());
    assert_eq!(
        network_drift(&observed, &spec(), Some(&known)),
        [
            "public subnet subnet-1 has CIDR 10.42.9.0/24, not 10.42.1.0/24",
            "private subnet subnet-2 is in us-east-1c, not in us-east-1a"
        ]
    );
    // Nothing is planned for it: a subnet is never replaced.
    assert_eq!(network_steps(&net, &spec(), &key()), []);
    assert_eq!(network_drift(&NetworkObservation::Inventory(complete()), &spec(), Some(&known)), Vec::<String>::new());
    // The zone the spec names is checked even when the network is trusted.
    let mut s = spec();
    s.network.availability_zone = Some("us-east-1b".into());
    let trusted = NetworkObservation::Trusted(known.clone(), BTreeMap::new());
    assert_eq!(
        network_drift(&trusted, &s, Some(&known)),
        ["the subnets are in us-east-1a, not in availabilityZone us-east-1b"]
    );
}

#[test]
fn a_trusted_network_keeps_its_rules() {
    let mut groups = complete().groups;
    let world = Rule::tcp(5432, Source::Cidr("0.0.0.0/0".into()));
    groups.get_mut(&Tier::Database).expect("group").rules.insert(world.clone());
    assert_eq!(rule_steps(&groups, &spec()), [NetworkStep::Revoke { tier: Tier::Database, rule: world }]);
    groups.remove(&Tier::Database);
    assert_eq!(rule_steps(&groups, &spec()), [], "a group not observed gets no step");
}

#[test]
fn a_rule_opened_by_hand_is_revoked() {
    let mut net = complete();
    let world = Rule::tcp(5432, Source::Cidr("0.0.0.0/0".into()));
    net.groups.get_mut(&Tier::Database).expect("group").rules.insert(world.clone());
    let steps = network_steps(&net, &spec(), &key());
    assert_eq!(steps, [NetworkStep::Revoke { tier: Tier::Database, rule: world }]);
    assert_eq!(lines(&steps), ["- revoke tcp/5432 into database from 0.0.0.0/0"]);
}

#[test]
fn missing_or_stale_default_route_is_routed_to_the_gateway() {
    let mut net = complete();
    net.route_table.as_mut().expect("rt").default_route = None;
    assert_eq!(
        lines(&network_steps(&net, &spec(), &key())),
        ["+ route 0.0.0.0/0 from the public subnet to the internet gateway"]
    );
    assert!(net.complete_ids(Egress::NatGateway).is_none());

    net.route_table.as_mut().expect("rt").default_route = Some("blackhole".into());
    assert_eq!(
        network_steps(&net, &spec(), &key()),
        [NetworkStep::RouteToGateway { replaces: Some("blackhole".into()) }]
    );
}

#[test]
fn a_deleted_gateway_is_created_attached_and_routed_to() {
    let mut net = complete();
    net.gateway = None;
    assert_eq!(
        lines(&network_steps(&net, &spec(), &key())),
        [
            "+ create internet gateway",
            "~ attach internet gateway to the VPC",
            "± route 0.0.0.0/0 from the public subnet to the internet gateway (replacing the route to igw-1)",
        ]
    );
}

#[test]
fn a_changed_ssh_cidr_allows_the_new_and_revokes_the_old() {
    let mut s = spec();
    s.network.ssh_ingress_cidrs = vec!["198.51.100.7/32".into()];
    let steps = network_steps(&complete(), &s, &key());
    let mut expected = Vec::new();
    for tier in Tier::ALL {
        expected.push(format!("- revoke tcp/22 into {tier} from 203.0.113.0/24"));
        expected.push(format!("+ allow tcp/22 into {tier} from 198.51.100.7/32"));
    }
    assert_eq!(lines(&steps), expected);
}

#[test]
fn a_key_pair_with_another_public_key_is_reimported() {
    let mut net = complete();
    net.key_pair.as_mut().expect("key").identity = Some("ssh-ed25519 AAAAold".into());
    assert_eq!(network_steps(&net, &spec(), &key()), [NetworkStep::ReimportKeyPair { key: key() }]);
    // The comment does not count, and without the key nothing is compared.
    net.key_pair.as_mut().expect("key").identity = Some("ssh-ed25519 AAAAcurrent".into());
    assert_eq!(network_steps(&net, &spec(), &key()), []);
    net.key_pair.as_mut().expect("key").identity = Some("ssh-ed25519 AAAAold".into());
    let unknown = DesiredKeyPair { public_key: None, ..key() };
    assert_eq!(network_steps(&net, &spec(), &unknown), []);
}

fn rules(tier: Tier) -> Vec<Rule> {
    security_policy(&spec(), tier).into_iter().map(|(r, _)| r).collect()
}

#[test]
fn redis_and_postgres_are_open_only_to_the_stack_groups() {
    let backend = rules(Tier::Backend);
    let redis: Vec<&Source> = backend.iter().filter(|r| r.from == 6379).map(|r| &r.source).collect();
    assert_eq!(redis, [&Source::TierGroup(Tier::Backend), &Source::TierGroup(Tier::Frontend)]);
    let database = rules(Tier::Database);
    let pg: Vec<&Source> = database.iter().filter(|r| r.from == 5432).map(|r| &r.source).collect();
    assert_eq!(pg, [&Source::TierGroup(Tier::Backend), &Source::TierGroup(Tier::Frontend)]);
    for tier in Tier::ALL {
        for rule in rules(tier) {
            if rule.from == i32::from(REDIS_PORT) || rule.from == i32::from(POSTGRES_PORT) {
                assert!(matches!(rule.source, Source::TierGroup(_)), "{tier}: {rule:?}");
            }
        }
    }
}

#[test]
fn frontend_opens_the_web_ports_to_the_web_cidrs_and_ssh_to_the_ssh_cidrs() {
    assert_eq!(
        rules(Tier::Frontend),
        vec![
            Rule::tcp(22, Source::Cidr("203.0.113.0/24".into())),
            Rule::tcp(80, Source::Cidr("0.0.0.0/0".into())),
            Rule::tcp(81, Source::Cidr("0.0.0.0/0".into())),
        ]
    );
}

#[test]
fn ssh_through_the_frontend_group_follows_the_jump_rule() {
    let from_front = |s: &VotingStackSpec, tier| {
        security_policy(s, tier).iter().any(|(r, _)| r.from == 22 && r.source == Source::TierGroup(Tier::Frontend))
    };
    let mut s = spec();
    assert!(s.jumps_through_frontend());
    assert!(from_front(&s, Tier::Backend) && from_front(&s, Tier::Database) && !from_front(&s, Tier::Frontend));
    s.network.connect_via = ConnectVia::PrivateIp;
    s.ssh.jump_through_frontend = false;
    assert!(!s.jumps_through_frontend());
    assert!(Tier::ALL.iter().all(|t| !from_front(&s, *t)));
}

#[test]
fn teardown_goes_leaves_first_the_data_volume_after_the_instances_the_nat_gateway_before_its_address_and_the_key_pair_last(
) {
    let found = TeardownInventory {
        instances: vec!["i-1".into(), "i-2".into()],
        volumes: vec!["vol-1".into()],
        groups: vec![("sg-b".into(), vec![Rule::tcp(6379, Source::Group("sg-f".into()))]), ("sg-f".into(), vec![])],
        route_tables: vec![
            FoundRouteTable { id: "rtb-main".into(), main: true, association_ids: vec!["rtbassoc-m".into()] },
            FoundRouteTable { id: "rtb-1".into(), main: false, association_ids: vec!["rtbassoc-1".into()] },
        ],
        nat_gateways: vec!["nat-1".into()],
        elastic_ips: vec!["eipalloc-1".into()],
        gateways: vec![("igw-1".into(), vec!["vpc-1".into()])],
        subnets: vec!["subnet-1".into(), "subnet-2".into()],
        vpcs: vec!["vpc-1".into()],
        key_pairs: vec!["votingstack-default-demo".into()],
    };
    let steps: Vec<String> = teardown_steps(&found).iter().map(ToString::to_string).collect();
    assert_eq!(
        steps,
        [
            "- terminate instances i-1, i-2",
            "- delete data volume vol-1",
            "- delete NAT gateways nat-1 and wait until they are deleted",
            "- release Elastic IP eipalloc-1",
            "- revoke 1 rules of sg-b that name another group",
            "- delete security group sg-b",
            "- delete security group sg-f",
            "- disassociate route table (rtbassoc-1)",
            "- delete route table rtb-1",
            "- detach internet gateway igw-1 from vpc-1",
            "- delete internet gateway igw-1",
            "- delete subnet subnet-1",
            "- delete subnet subnet-2",
            "- delete VPC vpc-1",
            "- delete key pair votingstack-default-demo",
        ]
    );
    assert_eq!(teardown_steps(&TeardownInventory::default()), []);
}

#[test]
fn the_validate_phase_counts_the_frontend_rules_the_policy_makes_and_no_group_holds_more() {
    let mut s = spec();
    s.network.ssh_ingress_cidrs = vec!["198.51.100.0/24".into(), "198.51.100.0/24".into(), "192.0.2.0/24".into()];
    s.network.web_ingress_cidrs = (0..7).map(|i| format!("203.0.{i}.0/24")).collect();
    let counted = crate::api::validate::frontend_rule_count(&s);
    assert_eq!(security_policy(&s, Tier::Frontend).len(), counted);
    // The private tiers: SSH blocks, SSH through the frontend and two tier
    // groups; at most 53 with the CRD's 50 SSH blocks, under AWS's 60.
    for tier in [Tier::Backend, Tier::Database] {
        assert!(security_policy(&s, tier).len() <= 2 + 3, "{tier}: {:?}", security_policy(&s, tier));
    }
}
