//! The stack's network: found by tag, and changed one planned step at a time.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::{
    AttributeBooleanValue, InternetGateway, IpPermission, IpRange, Ipv6Range, KeyPairInfo, PrefixListId, ResourceType,
    RouteState, RouteTable, SecurityGroup, Subnet, UserIdGroupPair, Vpc,
};
use tracing::{info, warn};

use crate::api::{NetworkStatus, Tier, TIER_LABEL};
use crate::cloud::{CloudError, StackIdentity};
use crate::model::network::{
    key_identity, ObservedGateway, ObservedGroup, ObservedKeyPair, ObservedRouteTable, ObservedSubnet, ObservedVpc,
    DEFAULT_ROUTE,
};
use crate::model::{DesiredKeyPair, NetworkStep, ObservedInstance, ObservedNetwork, Rule, Source};

use super::instances::Placement;
use super::{filter, stack_filter, tag_spec, tag_value, Ec2Cloud};

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

    /// What the engine needs of the chosen resources. Rules naming one of
    /// the chosen groups name it by tier.
    pub fn observe(&self, stack: &StackIdentity, known: Option<&NetworkStatus>) -> ObservedNetwork {
        let c = self.choose(stack, known);
        let vpc_id = c.vpc.and_then(|v| v.vpc_id());
        let subnet_id = c.subnet.and_then(|s| s.subnet_id());
        let tier_ids: BTreeMap<Tier, String> =
            c.groups.iter().filter_map(|(t, g)| Some((*t, g.group_id()?.to_owned()))).collect();
        ObservedNetwork {
            vpc: c.vpc.and_then(|v| {
                Some(ObservedVpc { id: v.vpc_id()?.to_owned(), cidr: v.cidr_block().unwrap_or_default().to_owned() })
            }),
            subnet: c.subnet.and_then(|s| {
                Some(ObservedSubnet {
                    id: s.subnet_id()?.to_owned(),
                    cidr: s.cidr_block().unwrap_or_default().to_owned(),
                    availability_zone: s.availability_zone().map(str::to_owned),
                })
            }),
            gateway: c.gateway.and_then(|g| {
                Some(ObservedGateway {
                    id: g.internet_gateway_id()?.to_owned(),
                    attached: vpc_id.is_some_and(|v| attached_to(g, v)),
                })
            }),
            route_table: c.route_table.and_then(|r| {
                Some(ObservedRouteTable {
                    id: r.route_table_id()?.to_owned(),
                    default_route: default_route_target(r),
                    associated: subnet_id.is_some_and(|s| is_associated_with(r, s)),
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
            NetworkStep::CreateSubnet { cidr, availability_zone } => {
                let vpc_id = need(&ids.vpc_id, "CreateSubnet", "VPC id")?;
                let out = self
                    .call(
                        "CreateSubnet",
                        c.create_subnet()
                            .vpc_id(&vpc_id)
                            .cidr_block(cidr)
                            .set_availability_zone(availability_zone.clone())
                            .tag_specifications(tag_spec(ResourceType::Subnet, stack, &name, None))
                            .send(),
                    )
                    .await?;
                let id = out
                    .subnet
                    .and_then(|s| s.subnet_id)
                    .ok_or(CloudError::Incomplete { operation: "CreateSubnet", missing: "SubnetId" })?;
                created("subnet", &id);
                ids.subnet_id = Some(id);
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
            NetworkStep::CreateRouteTable => {
                let vpc_id = need(&ids.vpc_id, "CreateRouteTable", "VPC id")?;
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
                ids.route_table_id = Some(id);
            }
            NetworkStep::RouteToGateway { replaces } => {
                let rt_id = need(&ids.route_table_id, "CreateRoute", "route table id")?;
                let gw_id = need(&ids.internet_gateway_id, "CreateRoute", "internet gateway id")?;
                if let Some(old) = replaces {
                    warn!(stack = %stack.tag_value(), "replacing the default route to {old}");
                    self.call(
                        "DeleteRoute",
                        c.delete_route().route_table_id(&rt_id).destination_cidr_block(DEFAULT_ROUTE).send(),
                    )
                    .await?;
                }
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
            NetworkStep::AssociateRouteTable => {
                let rt_id = need(&ids.route_table_id, "AssociateRouteTable", "route table id")?;
                let subnet_id = need(&ids.subnet_id, "AssociateRouteTable", "subnet id")?;
                self.call(
                    "AssociateRouteTable",
                    c.associate_route_table().route_table_id(&rt_id).subnet_id(&subnet_id).send(),
                )
                .await?;
            }
            NetworkStep::CreateSecurityGroup { tier } => {
                let vpc_id = need(&ids.vpc_id, "CreateSecurityGroup", "VPC id")?;
                let group_name = format!("{name}-{tier}");
                let out = self
                    .call(
                        "CreateSecurityGroup",
                        c.create_security_group()
                            .group_name(&group_name)
                            .description(group_description(stack, *tier))
                            .vpc_id(&vpc_id)
                            .tag_specifications(tag_spec(ResourceType::SecurityGroup, stack, &group_name, Some(*tier)))
                            .send(),
                    )
                    .await?;
                let id = out
                    .group_id
                    .ok_or(CloudError::Incomplete { operation: "CreateSecurityGroup", missing: "GroupId" })?;
                created(&format!("{tier} security group"), &id);
                ids.security_groups.insert(*tier, id);
            }
            NetworkStep::Authorize { tier, rule, description } => {
                let operation = "AuthorizeSecurityGroupIngress";
                let group_id = need(&ids.security_groups.get(tier).cloned(), operation, "security group of the tier")?;
                let perm = permission(operation, rule, &ids.security_groups, Some(description))?;
                self.call(
                    operation,
                    c.authorize_security_group_ingress().group_id(&group_id).ip_permissions(perm).send(),
                )
                .await?;
            }
            NetworkStep::Revoke { tier, rule } => {
                let operation = "RevokeSecurityGroupIngress";
                let group_id = need(&ids.security_groups.get(tier).cloned(), operation, "security group of the tier")?;
                let perm = permission(operation, rule, &ids.security_groups, None)?;
                info!(stack = %stack.tag_value(), %tier, "revoking an ingress rule the spec does not ask for: {rule} from {}", rule.source);
                self.call(operation, c.revoke_security_group_ingress().group_id(&group_id).ip_permissions(perm).send())
                    .await?;
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
