//! Unit tests of the pure network plan and teardown order.

use std::collections::BTreeMap;

use super::*;
use crate::api::ConnectVia;
use crate::fixtures::spec;
use crate::model::network::{
    FoundRouteTable, ObservedGateway, ObservedGroup, ObservedKeyPair, ObservedRouteTable, ObservedSubnet, ObservedVpc,
};

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
    ObservedNetwork {
        vpc: Some(ObservedVpc { id: "vpc-1".into(), cidr: "10.42.0.0/16".into() }),
        subnet: Some(ObservedSubnet { id: "subnet-1".into(), cidr: "10.42.1.0/24".into(), availability_zone: None }),
        gateway: Some(ObservedGateway { id: "igw-1".into(), attached: true }),
        route_table: Some(ObservedRouteTable {
            id: "rtb-1".into(),
            default_route: Some("igw-1".into()),
            associated: true,
        }),
        groups,
        key_pair: Some(ObservedKeyPair {
            name: "votingstack-default-demo".into(),
            identity: Some("ssh-ed25519 AAAAcurrent".into()),
        }),
    }
}

fn lines(steps: &[NetworkStep]) -> Vec<String> {
    steps.iter().map(ToString::to_string).collect()
}

#[test]
fn fresh_network_is_planned_in_full_and_in_order() {
    let steps = network_steps(&ObservedNetwork::default(), &spec(), &key());
    assert_eq!(
        lines(&steps),
        [
            "+ create VPC 10.42.0.0/16",
            "~ enable DNS support and host names in the VPC",
            "+ create subnet 10.42.1.0/24",
            "+ create internet gateway",
            "~ attach internet gateway to the VPC",
            "+ create route table",
            "+ route 0.0.0.0/0 to the internet gateway",
            "~ associate route table with the subnet",
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
fn complete_network_needs_no_steps() {
    assert_eq!(network_steps(&complete(), &spec(), &key()), []);
    assert!(complete().complete_ids().is_some());
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
    assert_eq!(lines(&network_steps(&net, &spec(), &key())), ["+ route 0.0.0.0/0 to the internet gateway"]);
    assert!(net.complete_ids().is_none());

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
            "± route 0.0.0.0/0 to the internet gateway (replacing the route to igw-1)",
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
fn teardown_goes_leaves_first_and_the_key_pair_last() {
    let found = TeardownInventory {
        instances: vec!["i-1".into(), "i-2".into()],
        groups: vec![("sg-b".into(), vec![Rule::tcp(6379, Source::Group("sg-f".into()))]), ("sg-f".into(), vec![])],
        route_tables: vec![
            FoundRouteTable { id: "rtb-main".into(), main: true, association_ids: vec!["rtbassoc-m".into()] },
            FoundRouteTable { id: "rtb-1".into(), main: false, association_ids: vec!["rtbassoc-1".into()] },
        ],
        gateways: vec![("igw-1".into(), vec!["vpc-1".into()])],
        subnets: vec!["subnet-1".into()],
        vpcs: vec!["vpc-1".into()],
        key_pairs: vec!["votingstack-default-demo".into()],
    };
    let steps: Vec<String> = teardown_steps(&found).iter().map(ToString::to_string).collect();
    assert_eq!(
        steps,
        [
            "- terminate instances i-1, i-2",
            "- revoke 1 rules of sg-b that name another group",
            "- delete security group sg-b",
            "- delete security group sg-f",
            "- disassociate route table (rtbassoc-1)",
            "- delete route table rtb-1",
            "- detach internet gateway igw-1 from vpc-1",
            "- delete internet gateway igw-1",
            "- delete subnet subnet-1",
            "- delete VPC vpc-1",
            "- delete key pair votingstack-default-demo",
        ]
    );
    assert_eq!(teardown_steps(&TeardownInventory::default()), []);
}
