//! The stack's network as EC2 lists it, and the choice made from it: every
//! resource carrying the stack's tag ([`Inventory`]), the one of each kind
//! the stack uses ([`Chosen`]), what the engine sees of them
//! ([`ObservedNetwork`]), and the names, tokens and rules the steps send.
//! Nothing here calls EC2.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::{
    Address, InternetGateway, IpPermission, IpRange, Ipv6Range, KeyPairInfo, NatGateway, PrefixListId, RouteState,
    RouteTable, SecurityGroup, Subnet, Tag, UserIdGroupPair, Vpc,
};
use sha2::{Digest, Sha256};

use crate::api::{NetworkStatus, Tier, TIER_LABEL};
use crate::cloud::{AwsErrorKind, CloudError, Installation, StackIdentity, INSTALLATION_TAG};
use crate::model::network::{
    key_identity, Duplicate, DuplicateKind, NatState, ObservedAddress, ObservedGateway, ObservedGroup, ObservedKeyPair,
    ObservedNatGateway, ObservedRouteTable, ObservedSubnet, ObservedVpc, SubnetRole, DEFAULT_ROUTE, NAT_NONE,
};
use crate::model::{ObservedInstance, ObservedNetwork, Rule, Source};

use super::super::instances::Placement;
use super::super::{claim, sort_claimed, tag_value, Claim};

/// Every resource carrying the stack's tag (and the key pair by name).
#[derive(Debug, Default)]
pub(in crate::cloud::ec2) struct Inventory {
    pub vpcs: Vec<Vpc>,
    pub subnets: Vec<Subnet>,
    pub gateways: Vec<InternetGateway>,
    pub route_tables: Vec<RouteTable>,
    /// Every state, deleted ones included (EC2 lists them for an hour).
    pub nat_gateways: Vec<NatGateway>,
    pub addresses: Vec<Address>,
    pub groups: Vec<SecurityGroup>,
    pub key_pairs: Vec<KeyPairInfo>,
}

/// The one resource of each kind the stack uses, picked from an [`Inventory`].
#[derive(Debug, Default)]
pub(in crate::cloud::ec2) struct Chosen<'a> {
    pub vpc: Option<&'a Vpc>,
    pub subnet: Option<&'a Subnet>,
    pub private_subnet: Option<&'a Subnet>,
    /// A gateway attached to the chosen VPC, else a detached one of the stack.
    pub gateway: Option<&'a InternetGateway>,
    pub route_table: Option<&'a RouteTable>,
    pub private_route_table: Option<&'a RouteTable>,
    pub nat_gateway: Option<&'a NatGateway>,
    pub elastic_ip: Option<&'a Address>,
    pub groups: BTreeMap<Tier, &'a SecurityGroup>,
    pub key_pair: Option<&'a KeyPairInfo>,
}

/// What the Name tag of a private subnet or route table ends with.
const PRIVATE_SUFFIX: &str = "-private";

/// Name tag of a subnet or route table of `role`.
pub(super) fn role_name(stack: &StackIdentity, role: SubnetRole) -> String {
    match role {
        SubnetRole::Public => stack.resource_name(),
        SubnetRole::Private => format!("{}{PRIVATE_SUFFIX}", stack.resource_name()),
    }
}

/// The role a subnet or route table was created for, by its Name tag.
fn role_of(tags: &[Tag]) -> SubnetRole {
    match tag_value(tags, "Name") {
        Some(name) if name.ends_with(PRIVATE_SUFFIX) => SubnetRole::Private,
        _ => SubnetRole::Public,
    }
}

/// Name tag of the NAT gateway and its Elastic IP.
pub(super) fn nat_name(stack: &StackIdentity) -> String {
    format!("{}-nat", stack.resource_name())
}

/// The gateway's state, None when EC2 named none or one the model does not know.
pub(in crate::cloud::ec2) fn nat_state(nat: &NatGateway) -> Option<NatState> {
    NatState::parse(nat.state()?.as_str())
}

/// The allocation id of the gateway's Elastic IP.
fn nat_allocation(nat: &NatGateway) -> Option<&str> {
    nat.nat_gateway_addresses().iter().find_map(|a| a.allocation_id())
}

/// The error of a NAT gateway that is neither pending nor available, under
/// DescribeNatGateways (the call that saw it): EC2's failure code (else
/// NatGatewayNotUsable) and failure message.
pub(super) fn nat_unusable(nat_id: &str, state: NatState, nat: &NatGateway) -> CloudError {
    let code = nat.failure_code().unwrap_or("NatGatewayNotUsable").to_owned();
    let what = match state {
        NatState::Failed => "failed".to_owned(),
        other => format!("is {}", other.as_str()),
    };
    let why = nat.failure_message().map(|m| format!(": {m}")).unwrap_or_default();
    let message = format!("NAT gateway {nat_id} {what} ({code}{why}); a new one is created on the next reconcile");
    CloudError::Api { operation: "DescribeNatGateways", kind: AwsErrorKind::from_code(&code), code, message }
}

/// Deterministic CreateNatGateway ClientToken: a retried create returns
/// the gateway the first one made.
pub(super) fn nat_client_token(stack: &StackIdentity, subnet_id: &str, allocation_id: &str, attempt: u32) -> String {
    let digest = Sha256::digest(format!(
        "{}/{}/{}/nat/{subnet_id}/{allocation_id}/{attempt}",
        stack.uid, stack.namespace, stack.name
    ));
    format!("vs-nat-{}", hex::encode(&digest[..16]))
}

/// True when `known` names every part of the network and its egress is ready.
pub(super) fn is_complete(known: &NetworkStatus) -> bool {
    if known.provided {
        // The user's VPC and subnets; the groups and key pair are the stack's.
        return known.vpc_id.is_some()
            && known.subnet_id.is_some()
            && known.private_subnet_id.is_some()
            && known.key_pair_name.is_some()
            && Tier::ALL.iter().all(|t| known.security_groups.contains_key(t));
    }
    let egress = match known.nat_gateway_state.as_deref() {
        Some(NAT_NONE) => true,
        Some(state) => {
            NatState::parse(state) == Some(NatState::Available)
                && known.nat_gateway_id.is_some()
                && known.elastic_ip_allocation_id.is_some()
        }
        None => false,
    };
    egress
        && known.vpc_id.is_some()
        && known.subnet_id.is_some()
        && known.private_subnet_id.is_some()
        && known.internet_gateway_id.is_some()
        && known.route_table_id.is_some()
        && known.private_route_table_id.is_some()
        && known.key_pair_name.is_some()
        && Tier::ALL.iter().all(|t| known.security_groups.contains_key(t))
}

/// True when every tier has a live instance in one of the known subnets:
/// the stack has converged and its recorded network ids can be trusted.
pub(super) fn serves_every_tier(known: &NetworkStatus, instances: &[(ObservedInstance, Placement)]) -> bool {
    let subnets = [known.subnet_id.as_deref(), known.private_subnet_id.as_deref()];
    Tier::ALL.iter().all(|tier| {
        instances.iter().any(|(inst, placement)| {
            inst.tier == Some(*tier)
                && inst.state.is_alive()
                && placement.subnet_id.is_some()
                && subnets.contains(&placement.subnet_id.as_deref())
        })
    })
}

/// Picks `known` when it is among the candidates, else the first by `key`.
fn pick<'a, T, K: Ord>(
    candidates: impl Iterator<Item = &'a T>,
    id: impl Fn(&T) -> Option<&str>,
    known: Option<&str>,
    key: impl Fn(&T) -> K,
) -> Option<&'a T> {
    let all: Vec<&T> = candidates.collect();
    if let Some(k) = known {
        if let Some(found) = all.iter().find(|c| id(c) == Some(k)) {
            return Some(*found);
        }
    }
    all.into_iter().min_by_key(|c| key(c))
}

/// True when the route table is associated with the subnet.
fn is_associated_with(rt: &RouteTable, subnet_id: &str) -> bool {
    rt.associations().iter().any(|a| a.subnet_id() == Some(subnet_id))
}

/// True when the gateway is attached to the VPC.
fn attached_to(gw: &InternetGateway, vpc_id: &str) -> bool {
    gw.attachments().iter().any(|a| a.vpc_id() == Some(vpc_id))
}

/// An id as a sort key.
fn by_id(id: Option<&str>) -> Option<String> {
    id.map(str::to_owned)
}

impl Inventory {
    /// Drops what is not the stack's (see [`Claim`]): what carries another
    /// stack's owner tag (a recorded id looked up after it lost the stack's
    /// tags may name a resource that is not the stack's: a VPC a user
    /// brought, another stack's subnet) or another installation's tag.
    /// Returns the ids of what is left that an older operator created
    /// without the installation tag, to adopt (deleted NAT gateways aside).
    /// The key pair, found by its name, is dropped only for another
    /// installation's tag.
    pub fn sort_out(&mut self, stack: &StackIdentity, installation: &Installation) -> Vec<String> {
        let mut adopt = Vec::new();
        let of = |tags: &[Tag]| claim(tags, stack, installation);
        sort_claimed(&mut self.vpcs, &mut adopt, |v| of(v.tags()), |v| v.vpc_id());
        sort_claimed(&mut self.subnets, &mut adopt, |v| of(v.tags()), |v| v.subnet_id());
        sort_claimed(&mut self.gateways, &mut adopt, |v| of(v.tags()), |v| v.internet_gateway_id());
        sort_claimed(&mut self.route_tables, &mut adopt, |v| of(v.tags()), |v| v.route_table_id());
        sort_claimed(
            &mut self.nat_gateways,
            &mut adopt,
            |v| of(v.tags()),
            |v| v.nat_gateway_id().filter(|_| nat_state(v) != Some(NatState::Deleted)),
        );
        sort_claimed(&mut self.addresses, &mut adopt, |v| of(v.tags()), |v| v.allocation_id());
        sort_claimed(&mut self.groups, &mut adopt, |v| of(v.tags()), |v| v.group_id());
        let key_claim = |k: &KeyPairInfo| {
            if tag_value(k.tags(), INSTALLATION_TAG).is_some_and(|i| i != installation.as_str()) {
                Claim::Theirs
            } else if of(k.tags()) == Claim::Adopt {
                Claim::Adopt
            } else {
                Claim::Ours
            }
        };
        sort_claimed(&mut self.key_pairs, &mut adopt, key_claim, |k| k.key_pair_id());
        adopt
    }

    /// Chooses the resources the stack uses, preferring the ids in `known`.
    pub fn choose(&self, stack: &StackIdentity, known: Option<&NetworkStatus>) -> Chosen<'_> {
        let known = known.cloned().unwrap_or_default();
        // With several tagged VPCs (a lost CreateVpc answer), the one holding
        // the most of the stack's resources wins, then the lowest id.
        let children = |vpc: &Vpc| {
            let n = self.children_of(vpc.vpc_id());
            (std::cmp::Reverse(n), vpc.vpc_id().map(str::to_owned))
        };
        let vpc = pick(self.vpcs.iter(), |v| v.vpc_id(), known.vpc_id.as_deref(), children);
        let mut chosen = Chosen { vpc, ..Default::default() };
        if let Some(vpc_id) = vpc.and_then(|v| v.vpc_id()) {
            let subnet = |role: SubnetRole, known: Option<&str>| {
                pick(
                    self.subnets.iter().filter(|s| s.vpc_id() == Some(vpc_id) && role_of(s.tags()) == role),
                    |s| s.subnet_id(),
                    known,
                    |s| by_id(s.subnet_id()),
                )
            };
            chosen.subnet = subnet(SubnetRole::Public, known.subnet_id.as_deref());
            chosen.private_subnet = subnet(SubnetRole::Private, known.private_subnet_id.as_deref());
            let table = |role: SubnetRole, known: Option<&str>| {
                pick(
                    self.route_tables.iter().filter(|r| r.vpc_id() == Some(vpc_id) && role_of(r.tags()) == role),
                    |r| r.route_table_id(),
                    known,
                    |r| by_id(r.route_table_id()),
                )
            };
            chosen.route_table = table(SubnetRole::Public, known.route_table_id.as_deref());
            chosen.private_route_table = table(SubnetRole::Private, known.private_route_table_id.as_deref());
            for tier in Tier::ALL {
                let group = pick(
                    self.groups.iter().filter(|g| {
                        g.vpc_id() == Some(vpc_id) && tag_value(g.tags(), TIER_LABEL) == Some(tier.as_str())
                    }),
                    |g| g.group_id(),
                    known.security_groups.get(&tier).map(String::as_str),
                    |g| by_id(g.group_id()),
                );
                if let Some(g) = group {
                    chosen.groups.insert(tier, g);
                }
            }
            chosen.gateway = pick(
                self.gateways.iter().filter(|g| attached_to(g, vpc_id)),
                |g| g.internet_gateway_id(),
                known.internet_gateway_id.as_deref(),
                |g| by_id(g.internet_gateway_id()),
            );
            chosen.nat_gateway = pick(
                self.nat_gateways
                    .iter()
                    .filter(|n| n.vpc_id() == Some(vpc_id) && nat_state(n).is_some_and(NatState::is_usable)),
                |n| n.nat_gateway_id(),
                known.nat_gateway_id.as_deref(),
                |n| by_id(n.nat_gateway_id()),
            );
        }
        if chosen.gateway.is_none() {
            chosen.gateway = pick(
                self.gateways.iter().filter(|g| g.attachments().is_empty()),
                |g| g.internet_gateway_id(),
                known.internet_gateway_id.as_deref(),
                |g| by_id(g.internet_gateway_id()),
            );
        }
        // The NAT gateway's own address, else the recorded one, else a free one.
        let nat_address = chosen.nat_gateway.and_then(nat_allocation);
        chosen.elastic_ip = match nat_address {
            Some(id) => self.addresses.iter().find(|a| a.allocation_id() == Some(id)),
            None => pick(
                self.addresses.iter().filter(|a| a.association_id().is_none()),
                |a| a.allocation_id(),
                known.elastic_ip_allocation_id.as_deref(),
                |a| by_id(a.allocation_id()),
            ),
        };
        let key_name = stack.resource_name();
        chosen.key_pair = self.key_pairs.iter().find(|k| k.key_name() == Some(key_name.as_str()));
        chosen
    }

    /// How many of the stack's subnets, route tables, groups and NAT
    /// gateways live in a VPC.
    fn children_of(&self, vpc_id: Option<&str>) -> usize {
        self.subnets.iter().filter(|s| s.vpc_id() == vpc_id).count()
            + self.route_tables.iter().filter(|r| r.vpc_id() == vpc_id).count()
            + self.groups.iter().filter(|g| g.vpc_id() == vpc_id).count()
            + self
                .nat_gateways
                .iter()
                .filter(|n| n.vpc_id() == vpc_id && nat_state(n) != Some(NatState::Deleted))
                .count()
    }

    /// Resources with the stack's tag that the chosen network does not use
    /// and nothing depends on: VPCs without children or gateway, detached
    /// gateways, route tables without associations in the chosen VPC, and
    /// unassociated Elastic IPs. Sorted by kind and id.
    fn duplicates(&self, c: &Chosen<'_>) -> Vec<Duplicate> {
        let mut out = Vec::new();
        let mut add = |kind, id: Option<&str>| {
            if let Some(id) = id {
                out.push(Duplicate { kind, id: id.to_owned() });
            }
        };
        let vpc_id = c.vpc.and_then(|v| v.vpc_id());
        for v in self.vpcs.iter().filter(|v| v.vpc_id() != vpc_id) {
            let id = v.vpc_id();
            let gateway = self.gateways.iter().any(|g| id.is_some_and(|id| attached_to(g, id)));
            if self.children_of(id) == 0 && !gateway {
                add(DuplicateKind::Vpc, id);
            }
        }
        let gateway_id = c.gateway.and_then(|g| g.internet_gateway_id());
        for g in self.gateways.iter().filter(|g| g.internet_gateway_id() != gateway_id && g.attachments().is_empty()) {
            add(DuplicateKind::InternetGateway, g.internet_gateway_id());
        }
        let used = [c.route_table, c.private_route_table].map(|r| r.and_then(|r| r.route_table_id()));
        for r in self.route_tables.iter().filter(|r| {
            vpc_id.is_some()
                && r.vpc_id() == vpc_id
                && !used.contains(&r.route_table_id())
                && r.associations().is_empty()
        }) {
            add(DuplicateKind::RouteTable, r.route_table_id());
        }
        let address = c.elastic_ip.and_then(|a| a.allocation_id());
        for a in self.addresses.iter().filter(|a| a.allocation_id() != address && a.association_id().is_none()) {
            add(DuplicateKind::ElasticIp, a.allocation_id());
        }
        out.sort();
        out
    }

    /// What the engine needs of the chosen resources. Rules naming one of
    /// the chosen groups name it by tier.
    pub fn observe(&self, stack: &StackIdentity, known: Option<&NetworkStatus>) -> ObservedNetwork {
        let c = self.choose(stack, known);
        let vpc_id = c.vpc.and_then(|v| v.vpc_id());
        let tier_ids: BTreeMap<Tier, String> =
            c.groups.iter().filter_map(|(t, g)| Some((*t, g.group_id()?.to_owned()))).collect();
        let subnet = |s: Option<&Subnet>| {
            s.and_then(|s| {
                Some(ObservedSubnet {
                    id: s.subnet_id()?.to_owned(),
                    cidr: s.cidr_block().unwrap_or_default().to_owned(),
                    availability_zone: s.availability_zone().map(str::to_owned),
                })
            })
        };
        let table = |r: Option<&RouteTable>, subnet: Option<&Subnet>| {
            let subnet_id = subnet.and_then(|s| s.subnet_id());
            r.and_then(|r| {
                Some(ObservedRouteTable {
                    id: r.route_table_id()?.to_owned(),
                    default_route: default_route_target(r),
                    associated: subnet_id.is_some_and(|s| is_associated_with(r, s)),
                })
            })
        };
        let failed = self.nat_gateways.iter().filter(|n| nat_state(n) == Some(NatState::Failed)).count();
        ObservedNetwork {
            provided: false,
            vpc: c.vpc.and_then(|v| {
                Some(ObservedVpc { id: v.vpc_id()?.to_owned(), cidr: v.cidr_block().unwrap_or_default().to_owned() })
            }),
            subnet: subnet(c.subnet),
            private_subnet: subnet(c.private_subnet),
            gateway: c.gateway.and_then(|g| {
                Some(ObservedGateway {
                    id: g.internet_gateway_id()?.to_owned(),
                    attached: vpc_id.is_some_and(|v| attached_to(g, v)),
                })
            }),
            route_table: table(c.route_table, c.subnet),
            private_route_table: table(c.private_route_table, c.private_subnet),
            nat_gateway: c.nat_gateway.and_then(|n| {
                Some(ObservedNatGateway {
                    id: n.nat_gateway_id()?.to_owned(),
                    state: nat_state(n)?,
                    allocation_id: nat_allocation(n).map(str::to_owned),
                })
            }),
            failed_nat_gateways: u32::try_from(failed).unwrap_or(u32::MAX),
            elastic_ip: c.elastic_ip.and_then(|a| {
                Some(ObservedAddress {
                    allocation_id: a.allocation_id()?.to_owned(),
                    associated: a.association_id().is_some(),
                })
            }),
            groups: c
                .groups
                .iter()
                .filter_map(|(t, g)| {
                    Some((*t, ObservedGroup { id: g.group_id()?.to_owned(), rules: existing_rules(g, &tier_ids) }))
                })
                .collect(),
            key_pair: c.key_pair.and_then(|k| {
                Some(ObservedKeyPair { name: k.key_name()?.to_owned(), identity: k.public_key().map(key_identity) })
            }),
            duplicates: self.duplicates(&c),
        }
    }
}

/// Target of a route table's default route: the gateway (or other target)
/// id, `blackhole` when the target is gone.
fn default_route_target(rt: &RouteTable) -> Option<String> {
    let route = rt.routes().iter().find(|r| r.destination_cidr_block() == Some(DEFAULT_ROUTE))?;
    if route.state() == Some(&RouteState::Blackhole) {
        return Some("blackhole".into());
    }
    let target = route
        .gateway_id()
        .or(route.nat_gateway_id())
        .or(route.network_interface_id())
        .or(route.instance_id())
        .unwrap_or("another target");
    Some(target.to_owned())
}

/// An ingress rule as EC2 takes it; a tier's group is resolved through `groups`.
pub(in crate::cloud::ec2) fn permission(
    operation: &'static str,
    rule: &Rule,
    groups: &BTreeMap<Tier, String>,
    description: Option<&str>,
) -> Result<IpPermission, CloudError> {
    let p = IpPermission::builder().ip_protocol(&rule.protocol).from_port(rule.from).to_port(rule.to);
    let group = |id: &str| UserIdGroupPair::builder().group_id(id).set_description(description.map(Into::into)).build();
    Ok(match &rule.source {
        Source::Cidr(c) => {
            p.ip_ranges(IpRange::builder().cidr_ip(c).set_description(description.map(Into::into)).build())
        }
        Source::Cidr6(c) => p.ipv6_ranges(Ipv6Range::builder().cidr_ipv6(c).build()),
        Source::TierGroup(t) => {
            let id =
                groups.get(t).ok_or(CloudError::Incomplete { operation, missing: "security group of the tier" })?;
            p.user_id_group_pairs(group(id))
        }
        Source::Group(g) => p.user_id_group_pairs(group(g)),
        Source::PrefixList(id) => p.prefix_list_ids(PrefixListId::builder().prefix_list_id(id).build()),
    }
    .build())
}

/// The ingress rules a security group holds, one per source; a source that
/// is one of `tier_groups` is named by its tier.
pub(in crate::cloud::ec2) fn existing_rules(
    group: &SecurityGroup,
    tier_groups: &BTreeMap<Tier, String>,
) -> BTreeSet<Rule> {
    let mut rules = BTreeSet::new();
    for p in group.ip_permissions() {
        let protocol = match p.ip_protocol().unwrap_or("-1") {
            "6" => "tcp",
            "17" => "udp",
            other => other,
        }
        .to_owned();
        let (from, to) = (p.from_port().unwrap_or(-1), p.to_port().unwrap_or(-1));
        let mut add = |source| {
            rules.insert(Rule { protocol: protocol.clone(), from, to, source });
        };
        let group_source = |id: &str| match tier_groups.iter().find(|(_, g)| g.as_str() == id) {
            Some((t, _)) => Source::TierGroup(*t),
            None => Source::Group(id.into()),
        };
        p.ip_ranges().iter().filter_map(|r| r.cidr_ip()).for_each(|c| add(Source::Cidr(c.into())));
        p.ipv6_ranges().iter().filter_map(|r| r.cidr_ipv6()).for_each(|c| add(Source::Cidr6(c.into())));
        p.user_id_group_pairs().iter().filter_map(|g| g.group_id()).for_each(|g| add(group_source(g)));
        p.prefix_list_ids().iter().filter_map(|l| l.prefix_list_id()).for_each(|l| add(Source::PrefixList(l.into())));
    }
    rules
}

/// Description of a tier's security group: what it lets in.
pub(super) fn group_description(stack: &StackIdentity, tier: Tier) -> String {
    let what = match tier {
        Tier::Frontend => "vote and result pages, SSH",
        Tier::Backend => "redis from the stack groups, SSH",
        Tier::Database => "postgres from the stack groups, SSH",
    };
    format!("VotingStack {} {tier}: {what}", stack.tag_value())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> BTreeMap<Tier, String> {
        [(Tier::Frontend, "sg-f"), (Tier::Backend, "sg-b"), (Tier::Database, "sg-d")]
            .into_iter()
            .map(|(t, id)| (t, id.to_string()))
            .collect()
    }

    #[test]
    fn rules_naming_the_stack_groups_round_trip_through_their_tier() {
        let rule = Rule::tcp(6379, Source::TierGroup(Tier::Frontend));
        let perm = permission("AuthorizeSecurityGroupIngress", &rule, &groups(), Some("redis")).unwrap();
        assert_eq!(perm.user_id_group_pairs()[0].group_id(), Some("sg-f"));
        let foreign = IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(22)
            .to_port(22)
            .user_id_group_pairs(UserIdGroupPair::builder().group_id("sg-other").build())
            .build();
        let group = SecurityGroup::builder().ip_permissions(perm).ip_permissions(foreign).build();
        let rules = existing_rules(&group, &groups());
        assert!(rules.contains(&rule));
        assert!(rules.contains(&Rule::tcp(22, Source::Group("sg-other".into()))));
        assert!(permission("X", &Rule::tcp(1, Source::TierGroup(Tier::Backend)), &BTreeMap::new(), None).is_err());
    }

    #[test]
    fn a_failed_nat_gateway_is_an_error_of_the_describe_that_saw_it() {
        use aws_sdk_ec2::types::NatGatewayState;
        let failed = NatGateway::builder()
            .nat_gateway_id("nat-1")
            .state(NatGatewayState::Failed)
            .failure_code("Gateway.NotAttached")
            .failure_message("Network vpc-1 has no Internet gateway attached")
            .build();
        let CloudError::Api { operation, code, message, .. } = nat_unusable("nat-1", NatState::Failed, &failed) else {
            panic!("an EC2 answer")
        };
        assert_eq!(operation, "DescribeNatGateways");
        assert_eq!(code, "Gateway.NotAttached");
        assert!(
            message.starts_with("NAT gateway nat-1 failed (Gateway.NotAttached: Network vpc-1 has no"),
            "{message}"
        );
        let deleting = NatGateway::builder().nat_gateway_id("nat-2").state(NatGatewayState::Deleting).build();
        let CloudError::Api { code, message, .. } = nat_unusable("nat-2", NatState::Deleting, &deleting) else {
            panic!("an EC2 answer")
        };
        assert_eq!(code, "NatGatewayNotUsable");
        assert!(message.starts_with("NAT gateway nat-2 is deleting (NatGatewayNotUsable)"), "{message}");
    }

    #[test]
    fn a_network_is_complete_with_every_id_and_its_egress_ready() {
        let some = |s: &str| Some(s.to_owned());
        let full = NetworkStatus {
            vpc_id: some("vpc-1"),
            subnet_id: some("subnet-1"),
            private_subnet_id: some("subnet-2"),
            internet_gateway_id: some("igw-1"),
            route_table_id: some("rtb-1"),
            private_route_table_id: some("rtb-2"),
            elastic_ip_allocation_id: some("eipalloc-1"),
            nat_gateway_id: some("nat-1"),
            nat_gateway_state: some("available"),
            key_pair_name: some("key"),
            security_groups: groups(),
            ..Default::default()
        };
        assert!(is_complete(&full));
        assert!(!is_complete(&NetworkStatus { nat_gateway_state: some("pending"), ..full.clone() }));
        assert!(!is_complete(&NetworkStatus { nat_gateway_state: None, ..full.clone() }));
        assert!(!is_complete(&NetworkStatus { nat_gateway_id: None, ..full.clone() }));
        let no_egress = NetworkStatus {
            nat_gateway_state: some(NAT_NONE),
            nat_gateway_id: None,
            elastic_ip_allocation_id: None,
            ..full
        };
        assert!(is_complete(&no_egress));
        assert!(!is_complete(&NetworkStatus { key_pair_name: None, ..no_egress }));
    }

    #[test]
    fn sorting_out_keeps_the_stacks_own_and_adopts_what_has_no_installation() {
        use crate::cloud::OWNER_TAG;
        let stack = StackIdentity { name: "demo".into(), namespace: "shop".into(), uid: "u".into() };
        let team = Installation::parse("team-a").unwrap();
        let tags = |owner: Option<&str>, installation: Option<&str>| {
            let mut t = Vec::new();
            if let Some(o) = owner {
                t.push(Tag::builder().key(OWNER_TAG).value(o).build());
            }
            if let Some(i) = installation {
                t.push(Tag::builder().key(INSTALLATION_TAG).value(i).build());
            }
            Some(t)
        };
        let vpc = |id: &str, owner, installation| Vpc::builder().vpc_id(id).set_tags(tags(owner, installation)).build();
        let mut inv = Inventory {
            vpcs: vec![
                vpc("vpc-ours", Some("u"), Some("team-a")),
                vpc("vpc-old", Some("u"), None),
                vpc("vpc-team-b", Some("u"), Some("team-b")),
                vpc("vpc-other-stack", Some("v"), Some("team-a")),
                vpc("vpc-recorded", None, None),
            ],
            groups: vec![
                SecurityGroup::builder().group_id("sg-old").set_tags(tags(Some("u"), None)).build(),
                SecurityGroup::builder().group_id("sg-team-b").set_tags(tags(Some("u"), Some("team-b"))).build(),
            ],
            nat_gateways: vec![NatGateway::builder()
                .nat_gateway_id("nat-deleted")
                .state(aws_sdk_ec2::types::NatGatewayState::Deleted)
                .set_tags(tags(Some("u"), None))
                .build()],
            key_pairs: vec![
                KeyPairInfo::builder().key_pair_id("key-old").set_tags(tags(Some("u"), None)).build(),
                KeyPairInfo::builder().key_pair_id("key-team-b").set_tags(tags(Some("u"), Some("team-b"))).build(),
                KeyPairInfo::builder().key_pair_id("key-untagged").build(),
            ],
            ..Default::default()
        };
        let adopt = inv.sort_out(&stack, &team);
        assert_eq!(adopt, ["vpc-old", "sg-old", "key-old"]);
        let vpcs: Vec<_> = inv.vpcs.iter().filter_map(|v| v.vpc_id()).collect();
        assert_eq!(vpcs, ["vpc-ours", "vpc-old", "vpc-recorded"]);
        let groups: Vec<_> = inv.groups.iter().filter_map(|g| g.group_id()).collect();
        assert_eq!(groups, ["sg-old"]);
        assert_eq!(inv.nat_gateways.len(), 1, "a deleted gateway is kept, not tagged");
        let keys: Vec<_> = inv.key_pairs.iter().filter_map(|k| k.key_pair_id()).collect();
        assert_eq!(keys, ["key-old", "key-untagged"]);
        // Everything tagged: nothing more to adopt.
        assert!(Inventory::default().sort_out(&stack, &team).is_empty());
    }

    #[test]
    fn a_blackhole_default_route_is_told_from_a_live_one() {
        let route = |gw: &str, state| {
            aws_sdk_ec2::types::Route::builder()
                .destination_cidr_block(DEFAULT_ROUTE)
                .gateway_id(gw)
                .state(state)
                .build()
        };
        let rt = RouteTable::builder().routes(route("igw-1", RouteState::Active)).build();
        assert_eq!(default_route_target(&rt).as_deref(), Some("igw-1"));
        let rt = RouteTable::builder().routes(route("igw-1", RouteState::Blackhole)).build();
        assert_eq!(default_route_target(&rt).as_deref(), Some("blackhole"));
        assert_eq!(default_route_target(&RouteTable::builder().build()), None);
    }
}
