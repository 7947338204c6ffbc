//! The stack's network as the engine sees it: what an inventory found
//! ([`ObservedNetwork`]), the steps that bring it in line with the spec
//! ([`NetworkStep`]); the steps that delete it are in
//! [`teardown`](super::teardown).
//!
//! Security group rules name the stack's own groups by tier
//! ([`Source::TierGroup`]), so steps can be planned before the groups exist;
//! the executor resolves a tier to its group id.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::api::{Egress, NetworkStatus, Tier};

/// Destination of the route to the internet.
pub const DEFAULT_ROUTE: &str = "0.0.0.0/0";

/// Where a security group rule lets traffic come from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Cidr(String),
    Cidr6(String),
    /// The security group of one of the stack's tiers.
    TierGroup(Tier),
    /// Any other security group, by id.
    Group(String),
    PrefixList(String),
}

/// One ingress rule, flattened to a single source.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    /// `tcp`, `udp`, `icmp`, or `-1` for all traffic.
    pub protocol: String,
    pub from: i32,
    pub to: i32,
    pub source: Source,
}

impl Rule {
    pub fn tcp(port: u16, source: Source) -> Rule {
        Rule { protocol: "tcp".into(), from: i32::from(port), to: i32::from(port), source }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Cidr(c) | Source::Cidr6(c) => f.write_str(c),
            Source::TierGroup(t) => write!(f, "the {t} group"),
            Source::Group(id) => write!(f, "group {id}"),
            Source::PrefixList(id) => write!(f, "prefix list {id}"),
        }
    }
}

impl fmt::Display for Rule {
    /// `tcp/5432`, `tcp/8000-8080`, or `all traffic`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.protocol == "-1" {
            return f.write_str("all traffic");
        }
        if self.from == self.to {
            write!(f, "{}/{}", self.protocol, self.from)
        } else {
            write!(f, "{}/{}-{}", self.protocol, self.from, self.to)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedVpc {
    pub id: String,
    pub cidr: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedSubnet {
    pub id: String,
    pub cidr: String,
    pub availability_zone: Option<String>,
}

/// Which of the stack's two subnets (and route tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SubnetRole {
    /// The frontend host and the NAT gateway; routed to the internet gateway.
    Public,
    /// The backend and database hosts; routed to the NAT gateway.
    Private,
}

impl SubnetRole {
    pub fn as_str(self) -> &'static str {
        match self {
            SubnetRole::Public => "public",
            SubnetRole::Private => "private",
        }
    }

    /// The subnet a tier's instance lives in.
    pub fn of(tier: Tier) -> SubnetRole {
        if tier.is_public() {
            SubnetRole::Public
        } else {
            SubnetRole::Private
        }
    }
}

impl fmt::Display for SubnetRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// States of a NAT gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatState {
    Pending,
    Available,
    Failed,
    Deleting,
    Deleted,
}

impl NatState {
    pub fn parse(s: &str) -> Option<NatState> {
        Some(match s {
            "pending" => NatState::Pending,
            "available" => NatState::Available,
            "failed" => NatState::Failed,
            "deleting" => NatState::Deleting,
            "deleted" => NatState::Deleted,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NatState::Pending => "pending",
            NatState::Available => "available",
            NatState::Failed => "failed",
            NatState::Deleting => "deleting",
            NatState::Deleted => "deleted",
        }
    }

    /// Pending or available: the gateway serves (or will serve) the stack.
    pub fn is_usable(self) -> bool {
        matches!(self, NatState::Pending | NatState::Available)
    }
}

/// `status.network.natGatewayState` of a stack with `egress: None`: no NAT
/// gateway by design. Otherwise the field holds a [`NatState`]'s word.
pub const NAT_NONE: &str = "none";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedNatGateway {
    pub id: String,
    pub state: NatState,
    /// Allocation id of its Elastic IP.
    pub allocation_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedAddress {
    pub allocation_id: String,
    /// Associated with a network interface (the NAT gateway's).
    pub associated: bool,
}

/// Kinds of resource a retried create (no ClientToken) can double.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DuplicateKind {
    Vpc,
    InternetGateway,
    RouteTable,
    ElasticIp,
}

impl fmt::Display for DuplicateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DuplicateKind::Vpc => "VPC",
            DuplicateKind::InternetGateway => "internet gateway",
            DuplicateKind::RouteTable => "route table",
            DuplicateKind::ElasticIp => "Elastic IP",
        })
    }
}

/// A resource with the stack's tag that the stack does not use and nothing
/// depends on: an extra copy from a retried create.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duplicate {
    pub kind: DuplicateKind,
    pub id: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedGateway {
    pub id: String,
    /// Attached to the stack's VPC.
    pub attached: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedRouteTable {
    pub id: String,
    /// Target of the `0.0.0.0/0` route: a gateway id, or `blackhole` when
    /// its target is gone; None without such a route.
    pub default_route: Option<String>,
    /// Associated with the subnet of its role.
    pub associated: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedGroup {
    pub id: String,
    pub rules: BTreeSet<Rule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedKeyPair {
    pub name: String,
    /// `type base64` of the public key EC2 holds, when it told.
    pub identity: Option<String>,
}

/// The one resource of each kind the stack uses, as an inventory by tag
/// found it. A missing part is None; children of a missing VPC are missing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedNetwork {
    /// The VPC and subnets are the user's (`spec.network.vpcId`), checked
    /// usable when observed: only the groups and the key pair are the stack's.
    pub provided: bool,
    pub vpc: Option<ObservedVpc>,
    /// The public subnet.
    pub subnet: Option<ObservedSubnet>,
    pub private_subnet: Option<ObservedSubnet>,
    pub gateway: Option<ObservedGateway>,
    /// The public subnet's route table.
    pub route_table: Option<ObservedRouteTable>,
    pub private_route_table: Option<ObservedRouteTable>,
    /// A pending or available NAT gateway of the stack.
    pub nat_gateway: Option<ObservedNatGateway>,
    /// NAT gateways of the stack that failed: part of the next one's ClientToken.
    pub failed_nat_gateways: u32,
    /// The NAT gateway's Elastic IP, or an unassociated one of the stack.
    pub elastic_ip: Option<ObservedAddress>,
    pub groups: BTreeMap<Tier, ObservedGroup>,
    pub key_pair: Option<ObservedKeyPair>,
    /// Unused extra copies of the stack's resources.
    pub duplicates: Vec<Duplicate>,
}

impl ObservedNetwork {
    /// The ids of whatever exists.
    pub fn ids(&self) -> NetworkStatus {
        if self.provided {
            return NetworkStatus {
                provided: true,
                vpc_id: self.vpc.as_ref().map(|v| v.id.clone()),
                subnet_id: self.subnet.as_ref().map(|s| s.id.clone()),
                private_subnet_id: self.private_subnet.as_ref().map(|s| s.id.clone()),
                availability_zone: self.private_subnet.as_ref().and_then(|s| s.availability_zone.clone()),
                security_groups: self.groups.iter().map(|(t, g)| (*t, g.id.clone())).collect(),
                key_pair_name: self.key_pair.as_ref().map(|k| k.name.clone()),
                ..NetworkStatus::default()
            };
        }
        NetworkStatus {
            provided: false,
            vpc_id: self.vpc.as_ref().map(|v| v.id.clone()),
            subnet_id: self.subnet.as_ref().map(|s| s.id.clone()),
            private_subnet_id: self.private_subnet.as_ref().map(|s| s.id.clone()),
            availability_zone: self
                .subnet
                .as_ref()
                .and_then(|s| s.availability_zone.clone())
                .or_else(|| self.private_subnet.as_ref().and_then(|s| s.availability_zone.clone())),
            internet_gateway_id: self.gateway.as_ref().map(|g| g.id.clone()),
            route_table_id: self.route_table.as_ref().map(|r| r.id.clone()),
            private_route_table_id: self.private_route_table.as_ref().map(|r| r.id.clone()),
            elastic_ip_allocation_id: self.elastic_ip.as_ref().map(|a| a.allocation_id.clone()),
            nat_gateway_id: self.nat_gateway.as_ref().map(|n| n.id.clone()),
            nat_gateway_state: self.nat_gateway.as_ref().map(|_| {
                if self.routes_to_nat() { NatState::Available } else { NatState::Pending }.as_str().to_string()
            }),
            security_groups: self.groups.iter().map(|(t, g)| (*t, g.id.clone())).collect(),
            key_pair_name: self.key_pair.as_ref().map(|k| k.name.clone()),
        }
    }

    /// True when the NAT gateway is available and the private subnet's
    /// default route points at it.
    pub fn routes_to_nat(&self) -> bool {
        match (&self.nat_gateway, &self.private_route_table) {
            (Some(nat), Some(rt)) => {
                nat.state == NatState::Available && rt.default_route.as_deref() == Some(nat.id.as_str())
            }
            _ => false,
        }
    }

    /// The ids when every part exists and is wired up (gateway attached,
    /// default routes to it and to the NAT gateway, subnets associated);
    /// None otherwise.
    pub fn complete_ids(&self, egress: Egress) -> Option<NetworkStatus> {
        if self.provided {
            let complete = self.vpc.is_some()
                && self.subnet.is_some()
                && self.private_subnet.is_some()
                && self.key_pair.is_some()
                && Tier::ALL.iter().all(|t| self.groups.contains_key(t));
            return complete.then(|| self.ids());
        }
        let gw = self.gateway.as_ref()?;
        let rt = self.route_table.as_ref()?;
        let private_rt = self.private_route_table.as_ref()?;
        let wired = gw.attached
            && rt.default_route.as_deref() == Some(gw.id.as_str())
            && rt.associated
            && private_rt.associated;
        let egress_ready = match egress {
            Egress::NatGateway => self.elastic_ip.is_some() && self.routes_to_nat(),
            Egress::None => true,
        };
        let complete = wired
            && egress_ready
            && self.vpc.is_some()
            && self.subnet.is_some()
            && self.private_subnet.is_some()
            && self.key_pair.is_some()
            && Tier::ALL.iter().all(|t| self.groups.contains_key(t));
        complete.then(|| {
            let mut ids = self.ids();
            if egress == Egress::None {
                ids.nat_gateway_state = Some(NAT_NONE.into());
            }
            ids
        })
    }
}

/// What observation says of the network.
// One observation per reconcile: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetworkObservation {
    /// The ids recorded in status, trusted without a look-up of the rest
    /// (every tier has a live instance in one of the recorded subnets), and
    /// the security groups as they are now, by tier: their rules are kept.
    Trusted(NetworkStatus, BTreeMap<Tier, ObservedGroup>),
    /// Everything found by tag.
    Inventory(ObservedNetwork),
}

impl Default for NetworkObservation {
    /// Nothing found.
    fn default() -> Self {
        NetworkObservation::Inventory(ObservedNetwork::default())
    }
}

impl NetworkObservation {
    /// The ids when the network is complete.
    pub fn complete_ids(&self, egress: Egress) -> Option<NetworkStatus> {
        match self {
            NetworkObservation::Trusted(ids, _) => Some(ids.clone()),
            NetworkObservation::Inventory(found) => found.complete_ids(egress),
        }
    }
}

/// The key pair the stack's instances get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredKeyPair {
    /// `votingstack-<namespace>-<name>`.
    pub name: String,
    /// The public key in OpenSSH format; None when the planner has no key
    /// (a plan without the SSH key): a present key pair is then left alone.
    pub public_key: Option<String>,
}

/// `type base64` of an OpenSSH public key, without its comment.
pub fn key_identity(openssh: &str) -> String {
    openssh.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// Where a subnet goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ZoneChoice {
    /// The zone the spec names.
    Named(String),
    /// The zone recorded in status (the other subnet's); without one, an
    /// availability zone (not a Local or Wavelength Zone) that offers every
    /// one of these instance types, picked by a stable hash of the stack's
    /// `namespace/name` so that stacks spread over the region's zones.
    Offering(Vec<String>),
}

impl fmt::Display for ZoneChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZoneChoice::Named(az) => write!(f, "in {az}"),
            ZoneChoice::Offering(types) => write!(f, "in a zone offering {}", types.join(", ")),
        }
    }
}

/// One EC2 change to the network. The executor fills the ids it creates
/// into the stack's [`NetworkStatus`] and reads the ids a step needs from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetworkStep {
    CreateVpc {
        cidr: String,
    },
    /// DNS support and host names on (after creating the VPC).
    EnableVpcDns,
    CreateSubnet {
        role: SubnetRole,
        cidr: String,
        zone: ZoneChoice,
    },
    CreateInternetGateway,
    AttachInternetGateway,
    CreateRouteTable {
        role: SubnetRole,
    },
    /// Default route of the public table to the gateway; `replaces` names
    /// the target of a stale default route that is deleted first.
    RouteToGateway {
        replaces: Option<String>,
    },
    AssociateRouteTable {
        role: SubnetRole,
    },
    /// An Elastic IP (domain vpc) for the NAT gateway.
    AllocateElasticIp,
    /// A NAT gateway in the public subnet with the Elastic IP. `attempt`
    /// (earlier gateways that failed) is part of its ClientToken.
    CreateNatGateway {
        attempt: u32,
    },
    /// Default route of the private table to the NAT gateway. With
    /// `when_available` the gateway was pending when planned: the executor
    /// looks at it first and leaves the route to a later reconcile while it
    /// is still pending.
    RouteToNatGateway {
        replaces: Option<String>,
        when_available: bool,
    },
    /// Deletes an unused extra copy of a resource.
    DeleteDuplicate {
        duplicate: Duplicate,
    },
    CreateSecurityGroup {
        tier: Tier,
    },
    /// Adds the missing ingress rules of a tier's group, each with its
    /// description, in one call (one step per group, never empty).
    Authorize {
        tier: Tier,
        rules: Vec<(Rule, &'static str)>,
    },
    Revoke {
        tier: Tier,
        rule: Rule,
    },
    ImportKeyPair {
        key: DesiredKeyPair,
    },
    /// Deletes the key pair holding another public key and imports the current one.
    ReimportKeyPair {
        key: DesiredKeyPair,
    },
}

impl fmt::Display for NetworkStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetworkStep::CreateVpc { cidr } => write!(f, "+ create VPC {cidr}"),
            NetworkStep::EnableVpcDns => f.write_str("~ enable DNS support and host names in the VPC"),
            NetworkStep::CreateSubnet { role, cidr, zone } => write!(f, "+ create {role} subnet {cidr} {zone}"),
            NetworkStep::CreateInternetGateway => f.write_str("+ create internet gateway"),
            NetworkStep::AttachInternetGateway => f.write_str("~ attach internet gateway to the VPC"),
            NetworkStep::CreateRouteTable { role } => write!(f, "+ create {role} route table"),
            NetworkStep::RouteToGateway { replaces: None } => {
                write!(f, "+ route {DEFAULT_ROUTE} from the public subnet to the internet gateway")
            }
            NetworkStep::RouteToGateway { replaces: Some(old) } => write!(
                f,
                "± route {DEFAULT_ROUTE} from the public subnet to the internet gateway (replacing the route to {old})"
            ),
            NetworkStep::AssociateRouteTable { role } => {
                write!(f, "~ associate {role} route table with the {role} subnet")
            }
            NetworkStep::AllocateElasticIp => f.write_str("+ allocate Elastic IP for the NAT gateway"),
            NetworkStep::CreateNatGateway { .. } => f.write_str("+ create NAT gateway in the public subnet"),
            NetworkStep::RouteToNatGateway { replaces, when_available } => {
                let verb = if replaces.is_some() { "±" } else { "+" };
                write!(f, "{verb} route {DEFAULT_ROUTE} from the private subnet to the NAT gateway")?;
                if *when_available {
                    f.write_str(" (once it is available)")?;
                }
                match replaces {
                    Some(old) => write!(f, " (replacing the route to {old})"),
                    None => Ok(()),
                }
            }
            NetworkStep::DeleteDuplicate { duplicate } => {
                write!(f, "- delete unused duplicate {} {} (left by a retried create)", duplicate.kind, duplicate.id)
            }
            NetworkStep::CreateSecurityGroup { tier } => write!(f, "+ create {tier} security group"),
            // One line per rule, as each would be planned alone.
            NetworkStep::Authorize { tier, rules } => {
                for (n, (rule, _)) in rules.iter().enumerate() {
                    if n > 0 {
                        f.write_str("\n")?;
                    }
                    write!(f, "+ allow {rule} into {tier} from {}", rule.source)?;
                }
                Ok(())
            }
            NetworkStep::Revoke { tier, rule } => write!(f, "- revoke {rule} into {tier} from {}", rule.source),
            NetworkStep::ImportKeyPair { key } => write!(f, "+ import key pair {}", key.name),
            NetworkStep::ReimportKeyPair { key } => {
                write!(f, "~ re-import key pair {} (it holds another public key)", key.name)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_identity_ignores_the_comment() {
        assert_eq!(key_identity("ssh-ed25519 AAAA demo@x\n"), key_identity("ssh-ed25519 AAAA"));
        assert_ne!(key_identity("ssh-ed25519 AAAA"), key_identity("ssh-ed25519 BBBB"));
    }

    #[test]
    fn plan_lines_name_the_rule_and_its_source() {
        let rule = Rule::tcp(5432, Source::TierGroup(Tier::Backend));
        let step = NetworkStep::Authorize { tier: Tier::Database, rules: vec![(rule.clone(), "postgres")] };
        assert_eq!(step.to_string(), "+ allow tcp/5432 into database from the backend group");
        let ssh = Rule::tcp(22, Source::Cidr("203.0.113.0/24".into()));
        let step = NetworkStep::Authorize { tier: Tier::Database, rules: vec![(ssh, "ssh"), (rule, "postgres")] };
        assert_eq!(
            step.to_string(),
            "+ allow tcp/22 into database from 203.0.113.0/24\n+ allow tcp/5432 into database from the backend group"
        );
        let all = Rule { protocol: "-1".into(), from: -1, to: -1, source: Source::Group("sg-x".into()) };
        let step = NetworkStep::Revoke { tier: Tier::Frontend, rule: all };
        assert_eq!(step.to_string(), "- revoke all traffic into frontend from group sg-x");
        let range = Rule { protocol: "udp".into(), from: 60000, to: 61000, source: Source::Cidr("0.0.0.0/0".into()) };
        assert_eq!(range.to_string(), "udp/60000-61000");
    }
}
