//! The stack's network: found by tag, created or repaired in place.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::{
    AttributeBooleanValue, InternetGateway, IpPermission, IpRange, Ipv6Range, KeyPairInfo, PrefixListId, ResourceType,
    RouteState, RouteTable, SecurityGroup, Subnet, UserIdGroupPair, Vpc,
};
use tracing::{info, warn};

use crate::api::{NetworkStatus, Tier, VotingStackSpec, TIER_LABEL};
use crate::cloud::{CloudError, StackIdentity};
use crate::model::desired::{POSTGRES_PORT, REDIS_PORT};
use crate::model::ObservedInstance;

use super::instances::Placement;
use super::{filter, stack_filter, tag_spec, tag_value, Ec2Cloud};

/// Destination of the route to the internet.
pub(super) const DEFAULT_ROUTE: &str = "0.0.0.0/0";

/// Every resource carrying the stack's tag (and the key pair by name).
#[derive(Debug, Default)]
pub(super) struct Inventory {
    pub vpcs: Vec<Vpc>,
    pub subnets: Vec<Subnet>,
    pub gateways: Vec<InternetGateway>,
    pub route_tables: Vec<RouteTable>,
    pub groups: Vec<SecurityGroup>,
    pub key_pairs: Vec<KeyPairInfo>,
}

/// The one resource of each kind the stack uses, picked from an [`Inventory`].
#[derive(Debug, Default)]
pub(super) struct Chosen<'a> {
    pub vpc: Option<&'a Vpc>,
    pub subnet: Option<&'a Subnet>,
    /// A gateway attached to the chosen VPC, else a detached one of the stack.
    pub gateway: Option<&'a InternetGateway>,
    pub route_table: Option<&'a RouteTable>,
    pub groups: BTreeMap<Tier, &'a SecurityGroup>,
    pub key_pair: Option<&'a KeyPairInfo>,
}

/// True when `known` names every part of the network.
pub(super) fn is_complete(known: &NetworkStatus) -> bool {
    known.vpc_id.is_some()
        && known.subnet_id.is_some()
        && known.internet_gateway_id.is_some()
        && known.route_table_id.is_some()
        && known.key_pair_name.is_some()
        && Tier::ALL.iter().all(|t| known.security_groups.contains_key(t))
}

/// True when every tier has a live instance in the known subnet: the stack
/// has converged and its recorded network ids can be trusted as they are.
pub(super) fn serves_every_tier(known: &NetworkStatus, instances: &[(ObservedInstance, Placement)]) -> bool {
    Tier::ALL.iter().all(|tier| {
        instances.iter().any(|(inst, placement)| {
            inst.tier == Some(*tier)
                && inst.state.is_alive()
                && placement.subnet_id.is_some()
                && placement.subnet_id == known.subnet_id
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

fn has_default_route_to(rt: &RouteTable, gateway_id: &str) -> bool {
    rt.routes().iter().any(|r| {
        r.destination_cidr_block() == Some(DEFAULT_ROUTE)
            && r.gateway_id() == Some(gateway_id)
            && r.state() != Some(&RouteState::Blackhole)
    })
}

fn is_associated_with(rt: &RouteTable, subnet_id: &str) -> bool {
    rt.associations().iter().any(|a| a.subnet_id() == Some(subnet_id))
}

fn attached_to(gw: &InternetGateway, vpc_id: &str) -> bool {
    gw.attachments().iter().any(|a| a.vpc_id() == Some(vpc_id))
}

impl Inventory {
    /// Chooses the resources the stack uses, preferring the ids in `known`.
    pub fn choose(&self, stack: &StackIdentity, known: Option<&NetworkStatus>) -> Chosen<'_> {
        let known = known.cloned().unwrap_or_default();
        // With several tagged VPCs (a lost CreateVpc answer), the one holding
        // the most of the stack's resources wins.
        let children = |vpc: &Vpc| {
            let id = vpc.vpc_id();
            let n = self.subnets.iter().filter(|s| s.vpc_id() == id).count()
                + self.route_tables.iter().filter(|r| r.vpc_id() == id).count()
                + self.groups.iter().filter(|g| g.vpc_id() == id).count();
            (std::cmp::Reverse(n), id.map(str::to_owned))
        };
        let vpc = pick(self.vpcs.iter(), |v| v.vpc_id(), known.vpc_id.as_deref(), children);
        let mut chosen = Chosen { vpc, ..Default::default() };
        let by_id = |id: Option<&str>| id.map(str::to_owned);
        if let Some(vpc_id) = vpc.and_then(|v| v.vpc_id()) {
            chosen.subnet = pick(
                self.subnets.iter().filter(|s| s.vpc_id() == Some(vpc_id)),
                |s| s.subnet_id(),
                known.subnet_id.as_deref(),
                |s| by_id(s.subnet_id()),
            );
            chosen.route_table = pick(
                self.route_tables.iter().filter(|r| r.vpc_id() == Some(vpc_id)),
                |r| r.route_table_id(),
                known.route_table_id.as_deref(),
                |r| by_id(r.route_table_id()),
            );
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
        }
        if chosen.gateway.is_none() {
            chosen.gateway = pick(
                self.gateways.iter().filter(|g| g.attachments().is_empty()),
                |g| g.internet_gateway_id(),
                known.internet_gateway_id.as_deref(),
                |g| by_id(g.internet_gateway_id()),
            );
        }
        let key_name = stack.resource_name();
        chosen.key_pair = self.key_pairs.iter().find(|k| k.key_name() == Some(key_name.as_str()));
        chosen
    }

    /// The network's ids when every part exists and is wired up (gateway
    /// attached, default route, subnet association); None otherwise.
    pub fn complete_network(&self, stack: &StackIdentity, known: Option<&NetworkStatus>) -> Option<NetworkStatus> {
        let c = self.choose(stack, known);
        let vpc_id = c.vpc?.vpc_id()?;
        let subnet_id = c.subnet?.subnet_id()?;
        let gw = c.gateway?;
        let gw_id = gw.internet_gateway_id()?;
        let rt = c.route_table?;
        if !attached_to(gw, vpc_id) || !has_default_route_to(rt, gw_id) || !is_associated_with(rt, subnet_id) {
            return None;
        }
        let mut groups = BTreeMap::new();
        for tier in Tier::ALL {
            groups.insert(tier, c.groups.get(&tier)?.group_id()?.to_owned());
        }
        Some(NetworkStatus {
            vpc_id: Some(vpc_id.to_owned()),
            subnet_id: Some(subnet_id.to_owned()),
            internet_gateway_id: Some(gw_id.to_owned()),
            route_table_id: Some(rt.route_table_id()?.to_owned()),
            security_groups: groups,
            key_pair_name: Some(c.key_pair?.key_name()?.to_owned()),
        })
    }
}

/// Where a security group rule lets traffic come from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Source {
    Cidr(String),
    Cidr6(String),
    Group(String),
    PrefixList(String),
}

/// One ingress rule, flattened to a single source.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Rule {
    pub protocol: String,
    pub from: i32,
    pub to: i32,
    pub source: Source,
}

impl Rule {
    fn tcp(port: u16, source: Source) -> Rule {
        Rule { protocol: "tcp".into(), from: i32::from(port), to: i32::from(port), source }
    }

    pub fn to_permission(&self, description: Option<&str>) -> IpPermission {
        let p = IpPermission::builder().ip_protocol(&self.protocol).from_port(self.from).to_port(self.to);
        match &self.source {
            Source::Cidr(c) => {
                p.ip_ranges(IpRange::builder().cidr_ip(c).set_description(description.map(Into::into)).build())
            }
            Source::Cidr6(c) => p.ipv6_ranges(Ipv6Range::builder().cidr_ipv6(c).build()),
            Source::Group(g) => p.user_id_group_pairs(
                UserIdGroupPair::builder().group_id(g).set_description(description.map(Into::into)).build(),
            ),
            Source::PrefixList(id) => p.prefix_list_ids(PrefixListId::builder().prefix_list_id(id).build()),
        }
        .build()
    }
}

/// The ingress rules a security group holds, one per source.
pub(super) fn existing_rules(group: &SecurityGroup) -> BTreeSet<Rule> {
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
        p.ip_ranges().iter().filter_map(|r| r.cidr_ip()).for_each(|c| add(Source::Cidr(c.into())));
        p.ipv6_ranges().iter().filter_map(|r| r.cidr_ipv6()).for_each(|c| add(Source::Cidr6(c.into())));
        p.user_id_group_pairs().iter().filter_map(|g| g.group_id()).for_each(|g| add(Source::Group(g.into())));
        p.prefix_list_ids().iter().filter_map(|l| l.prefix_list_id()).for_each(|l| add(Source::PrefixList(l.into())));
    }
    rules
}

/// The ingress rules of a tier's security group. Redis and postgres are
/// reachable only from the stack's own groups, never from a CIDR.
pub(super) fn desired_rules(
    spec: &VotingStackSpec,
    tier: Tier,
    groups: &BTreeMap<Tier, String>,
) -> BTreeSet<(Rule, &'static str)> {
    let mut rules = BTreeSet::new();
    for cidr in &spec.network.ssh_ingress_cidrs {
        rules.insert((Rule::tcp(spec.ssh.port, Source::Cidr(cidr.clone())), "SSH from the operator"));
    }
    let group = |t: Tier| groups.get(&t).map(|id| Source::Group(id.clone()));
    if spec.jumps_through_frontend() && !tier.is_public() {
        if let Some(front) = group(Tier::Frontend) {
            rules.insert((Rule::tcp(spec.ssh.port, front), "SSH through the frontend host"));
        }
    }
    match tier {
        Tier::Frontend => {
            for cidr in &spec.network.web_ingress_cidrs {
                rules.insert((Rule::tcp(spec.app.ports.vote, Source::Cidr(cidr.clone())), "vote page"));
                rules.insert((Rule::tcp(spec.app.ports.result, Source::Cidr(cidr.clone())), "result page"));
            }
        }
        Tier::Backend => {
            for from in [Tier::Frontend, Tier::Backend].into_iter().filter_map(group) {
                rules.insert((Rule::tcp(REDIS_PORT, from), "redis for vote and worker"));
            }
        }
        Tier::Database => {
            for from in [Tier::Backend, Tier::Frontend].into_iter().filter_map(group) {
                rules.insert((Rule::tcp(POSTGRES_PORT, from), "postgres for worker and result"));
            }
        }
    }
    rules
}

/// `type base64` of an OpenSSH public key, without its comment.
fn key_identity(openssh: &str) -> String {
    openssh.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
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

    /// Creates whatever part of the network is missing and repairs what is
    /// mis-wired, adopting every resource found by tag.
    pub(super) async fn ensure(
        &self,
        stack: &StackIdentity,
        spec: &VotingStackSpec,
        public_key: &str,
        known: Option<&NetworkStatus>,
    ) -> Result<NetworkStatus, CloudError> {
        let inv = self.inventory(stack, known).await?;
        let chosen = inv.choose(stack, known);
        let name = stack.resource_name();
        let c = &self.client;
        let created = |what: &str, id: &str| info!(stack = %stack.tag_value(), "created {what} {id}");

        // VPC, with DNS support and host names on.
        let vpc_id = match chosen.vpc.and_then(|v| v.vpc_id()) {
            Some(id) => id.to_owned(),
            None => {
                let out = self
                    .call(
                        "CreateVpc",
                        c.create_vpc()
                            .cidr_block(&spec.network.vpc_cidr)
                            .tag_specifications(tag_spec(ResourceType::Vpc, stack, &name, None))
                            .send(),
                    )
                    .await?;
                let id = out
                    .vpc
                    .and_then(|v| v.vpc_id)
                    .ok_or(CloudError::Incomplete { operation: "CreateVpc", missing: "VpcId" })?;
                created("VPC", &id);
                id
            }
        };
        if let Some(v) = chosen.vpc.and_then(|v| v.cidr_block()) {
            if v != spec.network.vpc_cidr {
                warn!(stack = %stack.tag_value(), "adopted VPC {vpc_id} has CIDR {v}, not {}", spec.network.vpc_cidr);
            }
        }
        let on = || AttributeBooleanValue::builder().value(true).build();
        self.call("ModifyVpcAttribute", c.modify_vpc_attribute().vpc_id(&vpc_id).enable_dns_support(on()).send())
            .await?;
        self.call("ModifyVpcAttribute", c.modify_vpc_attribute().vpc_id(&vpc_id).enable_dns_hostnames(on()).send())
            .await?;

        // Subnet.
        let subnet_id = match chosen.subnet.and_then(|s| s.subnet_id()) {
            Some(id) => id.to_owned(),
            None => {
                let out = self
                    .call(
                        "CreateSubnet",
                        c.create_subnet()
                            .vpc_id(&vpc_id)
                            .cidr_block(&spec.network.subnet_cidr)
                            .set_availability_zone(spec.network.availability_zone.clone())
                            .tag_specifications(tag_spec(ResourceType::Subnet, stack, &name, None))
                            .send(),
                    )
                    .await?;
                let id = out
                    .subnet
                    .and_then(|s| s.subnet_id)
                    .ok_or(CloudError::Incomplete { operation: "CreateSubnet", missing: "SubnetId" })?;
                created("subnet", &id);
                id
            }
        };

        // Internet gateway, attached.
        let gateway_id = match chosen.gateway.and_then(|g| g.internet_gateway_id()) {
            Some(id) => id.to_owned(),
            None => {
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
                id
            }
        };
        if !chosen.gateway.is_some_and(|g| attached_to(g, &vpc_id)) {
            self.call(
                "AttachInternetGateway",
                c.attach_internet_gateway().internet_gateway_id(&gateway_id).vpc_id(&vpc_id).send(),
            )
            .await?;
        }

        // Route table: default route to the gateway, associated with the subnet.
        let route_table_id = match chosen.route_table.and_then(|r| r.route_table_id()) {
            Some(id) => id.to_owned(),
            None => {
                let out = self
                    .call(
                        "CreateRouteTable",
                        c.create_route_table()
                            .vpc_id(&vpc_id)
                            .tag_specifications(tag_spec(ResourceType::RouteTable, stack, &name, None))
                            .send(),
                    )
                    .await?;
                let id = out
                    .route_table
                    .and_then(|r| r.route_table_id)
                    .ok_or(CloudError::Incomplete { operation: "CreateRouteTable", missing: "RouteTableId" })?;
                created("route table", &id);
                id
            }
        };
        let rt = chosen.route_table;
        if !rt.is_some_and(|r| has_default_route_to(r, &gateway_id)) {
            let has_other_default =
                rt.is_some_and(|r| r.routes().iter().any(|r| r.destination_cidr_block() == Some(DEFAULT_ROUTE)));
            if has_other_default {
                // A stale default route (to a deleted gateway): replace it.
                self.call(
                    "DeleteRoute",
                    c.delete_route().route_table_id(&route_table_id).destination_cidr_block(DEFAULT_ROUTE).send(),
                )
                .await?;
            }
            self.call(
                "CreateRoute",
                c.create_route()
                    .route_table_id(&route_table_id)
                    .destination_cidr_block(DEFAULT_ROUTE)
                    .gateway_id(&gateway_id)
                    .send(),
            )
            .await?;
        }
        if !rt.is_some_and(|r| is_associated_with(r, &subnet_id)) {
            self.call(
                "AssociateRouteTable",
                c.associate_route_table().route_table_id(&route_table_id).subnet_id(&subnet_id).send(),
            )
            .await?;
        }

        // Security groups: first all three exist, then their rules (which
        // refer to each other).
        let mut group_ids = BTreeMap::new();
        for tier in Tier::ALL {
            let id = match chosen.groups.get(&tier).and_then(|g| g.group_id()) {
                Some(id) => id.to_owned(),
                None => {
                    let group_name = format!("{name}-{tier}");
                    let out = self
                        .call(
                            "CreateSecurityGroup",
                            c.create_security_group()
                                .group_name(&group_name)
                                .description(group_description(stack, tier))
                                .vpc_id(&vpc_id)
                                .tag_specifications(tag_spec(
                                    ResourceType::SecurityGroup,
                                    stack,
                                    &group_name,
                                    Some(tier),
                                ))
                                .send(),
                        )
                        .await?;
                    let id = out
                        .group_id
                        .ok_or(CloudError::Incomplete { operation: "CreateSecurityGroup", missing: "GroupId" })?;
                    created(&format!("{tier} security group"), &id);
                    id
                }
            };
            group_ids.insert(tier, id);
        }
        for tier in Tier::ALL {
            let Some(group_id) = group_ids.get(&tier) else { continue };
            let existing = chosen.groups.get(&tier).map(|g| existing_rules(g)).unwrap_or_default();
            self.sync_rules(group_id, &existing, &desired_rules(spec, tier, &group_ids)).await?;
        }

        // Key pair.
        let key_name = name.clone();
        let stale = chosen
            .key_pair
            .and_then(|k| k.public_key())
            .is_some_and(|present| key_identity(present) != key_identity(public_key));
        if stale {
            warn!(stack = %stack.tag_value(), "key pair {key_name} holds another public key; importing the current one");
            self.call("DeleteKeyPair", c.delete_key_pair().key_name(&key_name).send()).await?;
        }
        if chosen.key_pair.is_none() || stale {
            self.call(
                "ImportKeyPair",
                c.import_key_pair()
                    .key_name(&key_name)
                    .public_key_material(Blob::new(public_key.trim().as_bytes()))
                    .tag_specifications(tag_spec(ResourceType::KeyPair, stack, &key_name, None))
                    .send(),
            )
            .await?;
            created("key pair", &key_name);
        }

        Ok(NetworkStatus {
            vpc_id: Some(vpc_id),
            subnet_id: Some(subnet_id),
            internet_gateway_id: Some(gateway_id),
            route_table_id: Some(route_table_id),
            security_groups: group_ids,
            key_pair_name: Some(key_name),
        })
    }

    /// Authorizes missing ingress rules and revokes those the spec no longer asks for.
    async fn sync_rules(
        &self,
        group_id: &str,
        existing: &BTreeSet<Rule>,
        desired: &BTreeSet<(Rule, &'static str)>,
    ) -> Result<(), CloudError> {
        let wanted: BTreeSet<&Rule> = desired.iter().map(|(r, _)| r).collect();
        let missing: Vec<IpPermission> =
            desired.iter().filter(|(r, _)| !existing.contains(r)).map(|(r, why)| r.to_permission(Some(why))).collect();
        let extra: Vec<IpPermission> =
            existing.iter().filter(|r| !wanted.contains(r)).map(|r| r.to_permission(None)).collect();
        if !extra.is_empty() {
            info!(group_id, rules = extra.len(), "revoking ingress rules the spec does not ask for");
            self.call(
                "RevokeSecurityGroupIngress",
                self.client.revoke_security_group_ingress().group_id(group_id).set_ip_permissions(Some(extra)).send(),
            )
            .await?;
        }
        if !missing.is_empty() {
            self.call(
                "AuthorizeSecurityGroupIngress",
                self.client
                    .authorize_security_group_ingress()
                    .group_id(group_id)
                    .set_ip_permissions(Some(missing))
                    .send(),
            )
            .await?;
        }
        Ok(())
    }
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
    use crate::fixtures;

    fn groups() -> BTreeMap<Tier, String> {
        [(Tier::Frontend, "sg-f"), (Tier::Backend, "sg-b"), (Tier::Database, "sg-d")]
            .into_iter()
            .map(|(t, id)| (t, id.to_string()))
            .collect()
    }

    fn rules(tier: Tier) -> Vec<Rule> {
        desired_rules(&fixtures::spec(), tier, &groups()).into_iter().map(|(r, _)| r).collect()
    }

    #[test]
    fn redis_and_postgres_are_open_only_to_the_stack_groups() {
        let backend = rules(Tier::Backend);
        let redis: Vec<&Source> = backend.iter().filter(|r| r.from == 6379).map(|r| &r.source).collect();
        assert_eq!(redis, [&Source::Group("sg-b".into()), &Source::Group("sg-f".into())]);
        let database = rules(Tier::Database);
        let pg: Vec<&Source> = database.iter().filter(|r| r.from == 5432).map(|r| &r.source).collect();
        assert_eq!(pg, [&Source::Group("sg-b".into()), &Source::Group("sg-f".into())]);
        for r in backend.iter().chain(&database).chain(&rules(Tier::Frontend)) {
            if matches!(r.source, Source::Cidr(_)) {
                assert!(r.from != 6379 && r.from != 5432, "{r:?}");
            }
        }
    }

    #[test]
    fn frontend_opens_the_web_ports_to_the_web_cidrs_and_ssh_to_the_ssh_cidrs() {
        let front = rules(Tier::Frontend);
        assert_eq!(
            front,
            vec![
                Rule::tcp(22, Source::Cidr("203.0.113.0/24".into())),
                Rule::tcp(80, Source::Cidr("0.0.0.0/0".into())),
                Rule::tcp(81, Source::Cidr("0.0.0.0/0".into())),
            ]
        );
    }

    #[test]
    fn private_tiers_take_ssh_from_the_frontend_group_when_the_operator_jumps() {
        let ssh_from_front =
            |rules: &[Rule]| rules.iter().any(|r| r.from == 22 && r.source == Source::Group("sg-f".into()));
        // The fixture connects via public IPs, so it jumps through the frontend.
        assert!(ssh_from_front(&rules(Tier::Backend)));
        assert!(ssh_from_front(&rules(Tier::Database)));
        assert!(!ssh_from_front(&rules(Tier::Frontend)));
    }

    #[test]
    fn key_identity_ignores_the_comment() {
        assert_eq!(key_identity("ssh-ed25519 AAAA demo@x\n"), key_identity("ssh-ed25519 AAAA"));
        assert_ne!(key_identity("ssh-ed25519 AAAA"), key_identity("ssh-ed25519 BBBB"));
    }
}
