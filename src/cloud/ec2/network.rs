//! The stack's network: found by tag, and changed one planned step at a time.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::{
    Address, AttributeBooleanValue, DomainType, InternetGateway, IpPermission, IpRange, Ipv6Range, KeyPairInfo,
    LocationType, NatGateway, PrefixListId, ResourceType, RouteState, RouteTable, SecurityGroup, Subnet, Tag,
    UserIdGroupPair, Vpc,
};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::api::{NetworkStatus, Tier, STACK_LABEL, TIER_LABEL};
use crate::cloud::{AwsErrorKind, CloudError, NetworkLookup, StackIdentity};
use crate::model::network::{
    key_identity, Duplicate, DuplicateKind, NatState, ObservedAddress, ObservedGateway, ObservedGroup, ObservedKeyPair,
    ObservedNatGateway, ObservedRouteTable, ObservedSubnet, ObservedVpc, SubnetRole, ZoneChoice, DEFAULT_ROUTE,
    NAT_AVAILABLE, NAT_NONE, NAT_PENDING,
};
use crate::model::{DesiredKeyPair, NetworkObservation, NetworkStep, ObservedInstance, ObservedNetwork, Rule, Source};

use super::instances::Placement;
use super::{filter, is_not_found, stack_filter, tag_spec, tag_value, Ec2Cloud};

/// Every resource carrying the stack's tag (and the key pair by name).
#[derive(Debug, Default)]
pub(super) struct Inventory {
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
pub(super) struct Chosen<'a> {
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
fn role_name(stack: &StackIdentity, role: SubnetRole) -> String {
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
fn nat_name(stack: &StackIdentity) -> String {
    format!("{}-nat", stack.resource_name())
}

fn nat_state(nat: &NatGateway) -> Option<NatState> {
    NatState::parse(nat.state()?.as_str())
}

fn nat_allocation(nat: &NatGateway) -> Option<&str> {
    nat.nat_gateway_addresses().iter().find_map(|a| a.allocation_id())
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
    let egress = match known.nat_gateway_state.as_deref() {
        Some(NAT_AVAILABLE) => known.nat_gateway_id.is_some() && known.elastic_ip_allocation_id.is_some(),
        Some(NAT_NONE) => true,
        _ => false,
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

fn is_associated_with(rt: &RouteTable, subnet_id: &str) -> bool {
    rt.associations().iter().any(|a| a.subnet_id() == Some(subnet_id))
}

fn attached_to(gw: &InternetGateway, vpc_id: &str) -> bool {
    gw.attachments().iter().any(|a| a.vpc_id() == Some(vpc_id))
}

fn by_id(id: Option<&str>) -> Option<String> {
    id.map(str::to_owned)
}

impl Inventory {
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
pub(super) fn permission(
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
pub(super) fn existing_rules(group: &SecurityGroup, tier_groups: &BTreeMap<Tier, String>) -> BTreeSet<Rule> {
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

impl Ec2Cloud {
    /// Fills the stack's subnets, route tables and security groups in (by tag).
    pub(super) async fn describe_vpc_children(
        &self,
        stack: &StackIdentity,
        inv: &mut Inventory,
    ) -> Result<(), CloudError> {
        let c = &self.client;
        inv.subnets = self
            .call("DescribeSubnets", c.describe_subnets().filters(stack_filter(stack)).send())
            .await?
            .subnets
            .unwrap_or_default();
        inv.route_tables = self
            .call("DescribeRouteTables", c.describe_route_tables().filters(stack_filter(stack)).send())
            .await?
            .route_tables
            .unwrap_or_default();
        inv.groups = self
            .call("DescribeSecurityGroups", c.describe_security_groups().filters(stack_filter(stack)).send())
            .await?
            .security_groups
            .unwrap_or_default();
        // Tag filters are applied here too: not every EC2-compatible
        // endpoint filters NAT gateways by tag.
        let tag = stack.tag_value();
        inv.nat_gateways = self
            .call("DescribeNatGateways", c.describe_nat_gateways().filter(stack_filter(stack)).send())
            .await?
            .nat_gateways
            .unwrap_or_default()
            .into_iter()
            .filter(|n| tag_value(n.tags(), STACK_LABEL) == Some(tag.as_str()))
            .collect();
        Ok(())
    }

    /// Looks up every resource with the stack's tag: one Describe call per
    /// kind (the children only when a VPC exists).
    pub(super) async fn inventory(
        &self,
        stack: &StackIdentity,
        known: Option<&NetworkStatus>,
    ) -> Result<Inventory, CloudError> {
        let c = &self.client;
        let vpcs = self
            .call("DescribeVpcs", c.describe_vpcs().filters(stack_filter(stack)).send())
            .await?
            .vpcs
            .unwrap_or_default();
        let mut inv = Inventory { vpcs, ..Default::default() };
        if !inv.vpcs.is_empty() {
            self.describe_vpc_children(stack, &mut inv).await?;
        }
        inv.gateways = self
            .call("DescribeInternetGateways", c.describe_internet_gateways().filters(stack_filter(stack)).send())
            .await?
            .internet_gateways
            .unwrap_or_default();
        inv.addresses = self
            .call("DescribeAddresses", c.describe_addresses().filters(stack_filter(stack)).send())
            .await?
            .addresses
            .unwrap_or_default();
        let mut names = vec![stack.resource_name()];
        if let Some(k) = known.and_then(|k| k.key_pair_name.clone()) {
            if !names.contains(&k) {
                names.push(k);
            }
        }
        inv.key_pairs = self
            .call(
                "DescribeKeyPairs",
                c.describe_key_pairs().filters(filter("key-name", names)).include_public_key(true).send(),
            )
            .await?
            .key_pairs
            .unwrap_or_default();
        Ok(inv)
    }

    /// The network as [`crate::cloud::Cloud::observe`] reports it. A
    /// converged stack (complete ids in status, every tier live in one of
    /// its subnets) is trusted with one call more: DescribeSecurityGroups of
    /// its three groups (shared by the region's stacks, see `inventory`),
    /// whose rules are kept. Anything else, or a group that is gone, is
    /// looked up in full by tag.
    pub(super) async fn observe_network(
        &self,
        stack: &StackIdentity,
        known: Option<&NetworkStatus>,
        lookup: NetworkLookup,
        instances: &[(ObservedInstance, Placement)],
    ) -> Result<NetworkObservation, CloudError> {
        let trusted = match lookup {
            NetworkLookup::TrustStatus => known.filter(|k| is_complete(k) && serves_every_tier(k, instances)),
            NetworkLookup::Inventory => None,
        };
        if let Some(k) = trusted {
            if let Some(groups) = self.observe_groups(k).await? {
                return Ok(NetworkObservation::Trusted(k.clone(), groups));
            }
            info!(stack = %stack.tag_value(), "a security group of the stack is gone: looking the network up");
        }
        Ok(NetworkObservation::Inventory(self.inventory(stack, known).await?.observe(stack, known)))
    }

    /// The three groups of `known` with their rules, or None when one is gone.
    async fn observe_groups(&self, known: &NetworkStatus) -> Result<Option<BTreeMap<Tier, ObservedGroup>>, CloudError> {
        let ids: Vec<String> = known.security_groups.values().cloned().collect();
        // The region's shared look-up first; a group missing from it
        // (untagged, or not listed yet) is asked for by id.
        let found = match self.shared_groups(&ids).await? {
            Some(found) => found,
            // A filter, not GroupIds: a missing group is left out instead of failing the call.
            None => self
                .call(
                    "DescribeSecurityGroups",
                    self.client.describe_security_groups().filters(filter("group-id", ids)).send(),
                )
                .await?
                .security_groups
                .unwrap_or_default(),
        };
        let mut groups = BTreeMap::new();
        for (tier, id) in &known.security_groups {
            let Some(g) = found.iter().find(|g| g.group_id() == Some(id.as_str())) else { return Ok(None) };
            groups.insert(*tier, ObservedGroup { id: id.clone(), rules: existing_rules(g, &known.security_groups) });
        }
        Ok(Some(groups))
    }

    /// The zone a new subnet goes to.
    async fn resolve_zone(&self, zone: &ZoneChoice, ids: &NetworkStatus) -> Result<String, CloudError> {
        let types = match zone {
            ZoneChoice::Named(az) => return Ok(az.clone()),
            ZoneChoice::Offering(_) if ids.availability_zone.is_some() => {
                return Ok(ids.availability_zone.clone().unwrap_or_default())
            }
            ZoneChoice::Offering(types) => types,
        };
        let operation = "DescribeInstanceTypeOfferings";
        let mut offered: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .call(
                    operation,
                    self.client
                        .describe_instance_type_offerings()
                        .location_type(LocationType::AvailabilityZone)
                        .filters(filter("instance-type", types.iter().cloned()))
                        .set_next_token(token.take())
                        .send(),
                )
                .await?;
            for o in page.instance_type_offerings() {
                if let (Some(zone), Some(t)) = (o.location(), o.instance_type()) {
                    offered.entry(zone.to_owned()).or_default().insert(t.as_str().to_owned());
                }
            }
            match page.next_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        let zone = first_zone_offering(&offered, types).ok_or(CloudError::Incomplete {
            operation,
            missing: "availability zone offering every instance type of the stack",
        })?;
        info!(%zone, ?types, "chose the first availability zone offering every instance type");
        Ok(zone)
    }

    /// Carries out one network step, filling the ids it creates into `ids`.
    pub(super) async fn apply_step(
        &self,
        stack: &StackIdentity,
        step: &NetworkStep,
        ids: &mut NetworkStatus,
    ) -> Result<(), CloudError> {
        let c = &self.client;
        let name = stack.resource_name();
        let created = |what: &str, id: &str| info!(stack = %stack.tag_value(), "created {what} {id}");
        let need = |id: &Option<String>, operation: &'static str, missing: &'static str| {
            id.clone().ok_or(CloudError::Incomplete { operation, missing })
        };
        match step {
            NetworkStep::CreateVpc { cidr } => {
                let out = self
                    .call(
                        "CreateVpc",
                        c.create_vpc()
                            .cidr_block(cidr)
                            .tag_specifications(tag_spec(ResourceType::Vpc, stack, &name, None))
                            .send(),
                    )
                    .await?;
                let id = out
                    .vpc
                    .and_then(|v| v.vpc_id)
                    .ok_or(CloudError::Incomplete { operation: "CreateVpc", missing: "VpcId" })?;
                created("VPC", &id);
                ids.vpc_id = Some(id);
            }
            NetworkStep::EnableVpcDns => {
                let vpc_id = need(&ids.vpc_id, "ModifyVpcAttribute", "VPC id")?;
                let on = || AttributeBooleanValue::builder().value(true).build();
                self.call(
                    "ModifyVpcAttribute",
                    c.modify_vpc_attribute().vpc_id(&vpc_id).enable_dns_support(on()).send(),
                )
                .await?;
                self.call(
                    "ModifyVpcAttribute",
                    c.modify_vpc_attribute().vpc_id(&vpc_id).enable_dns_hostnames(on()).send(),
                )
                .await?;
            }
            NetworkStep::CreateSubnet { role, cidr, zone } => {
                let vpc_id = need(&ids.vpc_id, "CreateSubnet", "VPC id")?;
                let az = self.resolve_zone(zone, ids).await?;
                let subnet_name = role_name(stack, *role);
                let made = self
                    .call(
                        "CreateSubnet",
                        c.create_subnet()
                            .vpc_id(&vpc_id)
                            .cidr_block(cidr)
                            .availability_zone(&az)
                            .tag_specifications(tag_spec(ResourceType::Subnet, stack, &subnet_name, None))
                            .send(),
                    )
                    .await;
                let subnet = match made {
                    Ok(out) => out.subnet,
                    // A retried create whose first answer was lost: the block is taken.
                    Err(e) if has_code(&e, "InvalidSubnet.Conflict") => {
                        let found = self
                            .call(
                                "DescribeSubnets",
                                c.describe_subnets()
                                    .filters(filter("vpc-id", [vpc_id.clone()]))
                                    .filters(filter("cidr-block", [cidr.clone()]))
                                    .filters(stack_filter(stack))
                                    .send(),
                            )
                            .await?;
                        let Some(subnet) = found.subnets.unwrap_or_default().into_iter().next() else { return Err(e) };
                        info!(stack = %stack.tag_value(), "{role} subnet {cidr} exists already: adopting it");
                        Some(subnet)
                    }
                    Err(e) => return Err(e),
                };
                let subnet = subnet.ok_or(CloudError::Incomplete { operation: "CreateSubnet", missing: "Subnet" })?;
                let id = subnet
                    .subnet_id
                    .ok_or(CloudError::Incomplete { operation: "CreateSubnet", missing: "SubnetId" })?;
                created(&format!("{role} subnet in {az}"), &id);
                ids.availability_zone = Some(subnet.availability_zone.unwrap_or(az));
                match role {
                    SubnetRole::Public => ids.subnet_id = Some(id),
                    SubnetRole::Private => ids.private_subnet_id = Some(id),
                }
            }
            NetworkStep::CreateInternetGateway => {
                let out = self
                    .call(
                        "CreateInternetGateway",
                        c.create_internet_gateway()
                            .tag_specifications(tag_spec(ResourceType::InternetGateway, stack, &name, None))
                            .send(),
                    )
                    .await?;
                let id = out.internet_gateway.and_then(|g| g.internet_gateway_id).ok_or(CloudError::Incomplete {
                    operation: "CreateInternetGateway",
                    missing: "InternetGatewayId",
                })?;
                created("internet gateway", &id);
                ids.internet_gateway_id = Some(id);
            }
            NetworkStep::AttachInternetGateway => {
                let vpc_id = need(&ids.vpc_id, "AttachInternetGateway", "VPC id")?;
                let gw_id = need(&ids.internet_gateway_id, "AttachInternetGateway", "internet gateway id")?;
                self.call(
                    "AttachInternetGateway",
                    c.attach_internet_gateway().internet_gateway_id(&gw_id).vpc_id(&vpc_id).send(),
                )
                .await?;
            }
            NetworkStep::CreateRouteTable { role } => {
                let vpc_id = need(&ids.vpc_id, "CreateRouteTable", "VPC id")?;
                let table_name = role_name(stack, *role);
                let out = self
                    .call(
                        "CreateRouteTable",
                        c.create_route_table()
                            .vpc_id(&vpc_id)
                            .tag_specifications(tag_spec(ResourceType::RouteTable, stack, &table_name, None))
                            .send(),
                    )
                    .await?;
                let id = out
                    .route_table
                    .and_then(|r| r.route_table_id)
                    .ok_or(CloudError::Incomplete { operation: "CreateRouteTable", missing: "RouteTableId" })?;
                created(&format!("{role} route table"), &id);
                match role {
                    SubnetRole::Public => ids.route_table_id = Some(id),
                    SubnetRole::Private => ids.private_route_table_id = Some(id),
                }
            }
            NetworkStep::RouteToGateway { replaces } => {
                let rt_id = need(&ids.route_table_id, "CreateRoute", "route table id")?;
                let gw_id = need(&ids.internet_gateway_id, "CreateRoute", "internet gateway id")?;
                self.replace_default_route(stack, &rt_id, replaces.as_deref()).await?;
                self.call(
                    "CreateRoute",
                    c.create_route()
                        .route_table_id(&rt_id)
                        .destination_cidr_block(DEFAULT_ROUTE)
                        .gateway_id(&gw_id)
                        .send(),
                )
                .await?;
            }
            NetworkStep::AssociateRouteTable { role } => {
                let operation = "AssociateRouteTable";
                let (rt_id, subnet_id) = match role {
                    SubnetRole::Public => (
                        need(&ids.route_table_id, operation, "public route table id")?,
                        need(&ids.subnet_id, operation, "public subnet id")?,
                    ),
                    SubnetRole::Private => (
                        need(&ids.private_route_table_id, operation, "private route table id")?,
                        need(&ids.private_subnet_id, operation, "private subnet id")?,
                    ),
                };
                self.call(operation, c.associate_route_table().route_table_id(&rt_id).subnet_id(&subnet_id).send())
                    .await?;
            }
            NetworkStep::AllocateElasticIp => {
                let out = self
                    .call(
                        "AllocateAddress",
                        c.allocate_address()
                            .domain(DomainType::Vpc)
                            .tag_specifications(tag_spec(ResourceType::ElasticIp, stack, &nat_name(stack), None))
                            .send(),
                    )
                    .await?;
                let id = out
                    .allocation_id
                    .ok_or(CloudError::Incomplete { operation: "AllocateAddress", missing: "AllocationId" })?;
                created("Elastic IP", &id);
                ids.elastic_ip_allocation_id = Some(id);
            }
            NetworkStep::CreateNatGateway { attempt } => {
                let operation = "CreateNatGateway";
                let subnet_id = need(&ids.subnet_id, operation, "public subnet id")?;
                let allocation_id = need(&ids.elastic_ip_allocation_id, operation, "Elastic IP allocation id")?;
                let out = self
                    .call(
                        operation,
                        c.create_nat_gateway()
                            .subnet_id(&subnet_id)
                            .allocation_id(&allocation_id)
                            .client_token(nat_client_token(stack, &subnet_id, &allocation_id, *attempt))
                            .tag_specifications(tag_spec(ResourceType::Natgateway, stack, &nat_name(stack), None))
                            .send(),
                    )
                    .await?;
                let id = out
                    .nat_gateway
                    .and_then(|n| n.nat_gateway_id)
                    .ok_or(CloudError::Incomplete { operation, missing: "NatGatewayId" })?;
                created("NAT gateway", &id);
                ids.nat_gateway_id = Some(id);
                ids.nat_gateway_state = Some(NAT_PENDING.into());
            }
            NetworkStep::RouteToNatGateway { replaces, when_available } => {
                let rt_id = need(&ids.private_route_table_id, "CreateRoute", "private route table id")?;
                let nat_id = need(&ids.nat_gateway_id, "CreateRoute", "NAT gateway id")?;
                if *when_available && !self.nat_available(stack, &nat_id).await? {
                    ids.nat_gateway_state = Some(NAT_PENDING.into());
                    return Ok(());
                }
                self.replace_default_route(stack, &rt_id, replaces.as_deref()).await?;
                self.call(
                    "CreateRoute",
                    c.create_route()
                        .route_table_id(&rt_id)
                        .destination_cidr_block(DEFAULT_ROUTE)
                        .nat_gateway_id(&nat_id)
                        .send(),
                )
                .await?;
                ids.nat_gateway_state = Some(NAT_AVAILABLE.into());
            }
            NetworkStep::DeleteDuplicate { duplicate } => {
                warn!(stack = %stack.tag_value(), "deleting unused duplicate {} {}", duplicate.kind, duplicate.id);
                let id = duplicate.id.as_str();
                let done = match duplicate.kind {
                    DuplicateKind::Vpc => self.call("DeleteVpc", c.delete_vpc().vpc_id(id).send()).await.map(drop),
                    DuplicateKind::InternetGateway => self
                        .call("DeleteInternetGateway", c.delete_internet_gateway().internet_gateway_id(id).send())
                        .await
                        .map(drop),
                    DuplicateKind::RouteTable => {
                        self.call("DeleteRouteTable", c.delete_route_table().route_table_id(id).send()).await.map(drop)
                    }
                    DuplicateKind::ElasticIp => {
                        self.call("ReleaseAddress", c.release_address().allocation_id(id).send()).await.map(drop)
                    }
                };
                match done {
                    Err(e) if !is_not_found(&e) => return Err(e),
                    _ => {}
                }
            }
            NetworkStep::CreateSecurityGroup { tier } => {
                let vpc_id = need(&ids.vpc_id, "CreateSecurityGroup", "VPC id")?;
                let group_name = format!("{name}-{tier}");
                let made = self
                    .call(
                        "CreateSecurityGroup",
                        c.create_security_group()
                            .group_name(&group_name)
                            .description(group_description(stack, *tier))
                            .vpc_id(&vpc_id)
                            .tag_specifications(tag_spec(ResourceType::SecurityGroup, stack, &group_name, Some(*tier)))
                            .send(),
                    )
                    .await;
                let id = match made {
                    Ok(out) => out.group_id,
                    // A retried create whose first answer was lost: learn the id.
                    Err(e) if has_code(&e, "InvalidGroup.Duplicate") => {
                        let found = self
                            .call(
                                "DescribeSecurityGroups",
                                c.describe_security_groups()
                                    .filters(filter("vpc-id", [vpc_id.clone()]))
                                    .filters(filter("group-name", [group_name.clone()]))
                                    .send(),
                            )
                            .await?;
                        let Some(id) = found.security_groups().iter().find_map(|g| g.group_id()) else { return Err(e) };
                        info!(stack = %stack.tag_value(), "{tier} security group {group_name} exists already: adopting {id}");
                        Some(id.to_owned())
                    }
                    Err(e) => return Err(e),
                };
                let id = id.ok_or(CloudError::Incomplete { operation: "CreateSecurityGroup", missing: "GroupId" })?;
                created(&format!("{tier} security group"), &id);
                ids.security_groups.insert(*tier, id);
            }
            NetworkStep::Authorize { tier, rule, description } => {
                let operation = "AuthorizeSecurityGroupIngress";
                let group_id = need(&ids.security_groups.get(tier).cloned(), operation, "security group of the tier")?;
                let perm = permission(operation, rule, &ids.security_groups, Some(description))?;
                let done = self
                    .call(
                        operation,
                        c.authorize_security_group_ingress().group_id(&group_id).ip_permissions(perm).send(),
                    )
                    .await;
                match done {
                    // The rule is there already (a retried call): what was asked holds.
                    Err(e) if has_code(&e, "InvalidPermission.Duplicate") => {
                        info!(stack = %stack.tag_value(), %tier, "rule {rule} from {} exists already", rule.source)
                    }
                    other => {
                        other?;
                    }
                }
            }
            NetworkStep::Revoke { tier, rule } => {
                let operation = "RevokeSecurityGroupIngress";
                let group_id = need(&ids.security_groups.get(tier).cloned(), operation, "security group of the tier")?;
                let perm = permission(operation, rule, &ids.security_groups, None)?;
                info!(stack = %stack.tag_value(), %tier, "revoking an ingress rule the spec does not ask for: {rule} from {}", rule.source);
                let done = self
                    .call(operation, c.revoke_security_group_ingress().group_id(&group_id).ip_permissions(perm).send())
                    .await;
                match done {
                    Err(e) if has_code(&e, "InvalidPermission.NotFound") => {}
                    other => {
                        other?;
                    }
                }
            }
            NetworkStep::ImportKeyPair { key } => {
                self.import_key_pair(stack, key).await?;
                ids.key_pair_name = Some(key.name.clone());
            }
            NetworkStep::ReimportKeyPair { key } => {
                warn!(stack = %stack.tag_value(), "key pair {} holds another public key; importing the current one", key.name);
                self.call("DeleteKeyPair", c.delete_key_pair().key_name(&key.name).send()).await?;
                self.import_key_pair(stack, key).await?;
                ids.key_pair_name = Some(key.name.clone());
            }
        }
        Ok(())
    }

    /// Deletes a stale default route of a table before a new one is added.
    async fn replace_default_route(
        &self,
        stack: &StackIdentity,
        rt_id: &str,
        replaces: Option<&str>,
    ) -> Result<(), CloudError> {
        let Some(old) = replaces else { return Ok(()) };
        warn!(stack = %stack.tag_value(), "replacing the default route of {rt_id} to {old}");
        self.call(
            "DeleteRoute",
            self.client.delete_route().route_table_id(rt_id).destination_cidr_block(DEFAULT_ROUTE).send(),
        )
        .await?;
        Ok(())
    }

    /// Whether a NAT gateway is available: false while it is pending (or not
    /// yet visible, right after its creation); an error once it failed.
    async fn nat_available(&self, stack: &StackIdentity, nat_id: &str) -> Result<bool, CloudError> {
        let operation = "DescribeNatGateways";
        let out = match self.call(operation, self.client.describe_nat_gateways().nat_gateway_ids(nat_id).send()).await {
            Ok(out) => out,
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        let Some(nat) = out.nat_gateways().iter().find(|n| n.nat_gateway_id() == Some(nat_id)) else {
            return Ok(false);
        };
        match nat_state(nat) {
            Some(NatState::Available) => Ok(true),
            Some(NatState::Pending) | None => {
                info!(stack = %stack.tag_value(), "NAT gateway {nat_id} is pending: the private subnet's route to it follows on a later reconcile");
                Ok(false)
            }
            Some(state) => {
                let code = nat.failure_code().unwrap_or("NatGatewayNotUsable").to_owned();
                let message = format!(
                    "NAT gateway {nat_id} is {}: {}",
                    state.as_str(),
                    nat.failure_message().unwrap_or("a new one is created on the next reconcile")
                );
                Err(CloudError::Api {
                    operation: "CreateNatGateway",
                    kind: AwsErrorKind::from_code(&code),
                    code,
                    message,
                })
            }
        }
    }

    async fn import_key_pair(&self, stack: &StackIdentity, key: &DesiredKeyPair) -> Result<(), CloudError> {
        let public_key = key
            .public_key
            .as_deref()
            .ok_or(CloudError::Incomplete { operation: "ImportKeyPair", missing: "public key to import" })?;
        self.call(
            "ImportKeyPair",
            self.client
                .import_key_pair()
                .key_name(&key.name)
                .public_key_material(Blob::new(public_key.trim().as_bytes()))
                .tag_specifications(tag_spec(ResourceType::KeyPair, stack, &key.name, None))
                .send(),
        )
        .await?;
        info!(stack = %stack.tag_value(), "imported key pair {}", key.name);
        Ok(())
    }
}

/// True when EC2 answered with this error code.
fn has_code(e: &CloudError, wanted: &str) -> bool {
    matches!(e, CloudError::Api { code, .. } if code == wanted)
}

/// The first zone by name that offers every one of `types`.
fn first_zone_offering(offered: &BTreeMap<String, BTreeSet<String>>, types: &[String]) -> Option<String> {
    offered.iter().find(|(_, have)| types.iter().all(|t| have.contains(t))).map(|(zone, _)| zone.clone())
}

fn group_description(stack: &StackIdentity, tier: Tier) -> String {
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
