//! The network half of the plan, pure: the inventory and the spec in, the
//! ordered EC2 steps out. The security-group policy lives here and only here.
//!
//! Layout: a VPC with a public subnet (frontend host and NAT gateway, routed
//! to the internet gateway) and a private subnet (backend and database
//! hosts, no public IPs, routed to the NAT gateway), both in one zone.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::{Egress, NetworkStatus, Tier, VotingStackSpec};
use crate::model::desired::{POSTGRES_PORT, REDIS_PORT};
use crate::model::network::{key_identity, NatState, ObservedGroup, ObservedRouteTable, SubnetRole, ZoneChoice};
use crate::model::{
    DesiredKeyPair, NetworkObservation, NetworkStep, ObservedNetwork, Rule, Source, TeardownInventory, TeardownStep,
};

/// The ingress rules of a tier's security group, each with its description.
///
/// - SSH from `sshIngressCidrs` on every tier, and from the frontend group on
///   the private tiers when the operator jumps through the frontend.
/// - The vote and result pages from `webIngressCidrs` on the frontend.
/// - Redis only from the frontend and backend groups, postgres only from the
///   backend and frontend groups: never from a CIDR.
pub fn security_policy(spec: &VotingStackSpec, tier: Tier) -> BTreeSet<(Rule, &'static str)> {
    let mut rules = BTreeSet::new();
    let ssh = spec.ssh.port;
    for cidr in &spec.network.ssh_ingress_cidrs {
        rules.insert((Rule::tcp(ssh, Source::Cidr(cidr.clone())), "SSH from the operator"));
    }
    if spec.jumps_through_frontend() && !tier.is_public() {
        rules.insert((Rule::tcp(ssh, Source::TierGroup(Tier::Frontend)), "SSH through the frontend host"));
    }
    match tier {
        Tier::Frontend => {
            for cidr in &spec.network.web_ingress_cidrs {
                rules.insert((Rule::tcp(spec.app.ports.vote, Source::Cidr(cidr.clone())), "vote page"));
                rules.insert((Rule::tcp(spec.app.ports.result, Source::Cidr(cidr.clone())), "result page"));
            }
        }
        Tier::Backend => {
            for from in [Tier::Frontend, Tier::Backend] {
                rules.insert((Rule::tcp(REDIS_PORT, Source::TierGroup(from)), "redis for vote and worker"));
            }
        }
        Tier::Database => {
            for from in [Tier::Backend, Tier::Frontend] {
                rules.insert((Rule::tcp(POSTGRES_PORT, Source::TierGroup(from)), "postgres for worker and result"));
            }
        }
    }
    rules
}

/// The steps that turn the observed network into the one the spec asks
/// for, in the order EC2 needs them: VPC, public subnet, gateway, public
/// route table, private subnet, Elastic IP and NAT gateway, private route
/// table, security groups (all three before any rule, as rules name each
/// other), rules, key pair, and last the removal of unused duplicates. A
/// complete network yields no steps.
///
/// A NAT gateway is pending for a minute or two after its creation. The
/// private route to it is planned `when_available` then: carried out at once
/// if the gateway is ready, else left to a later reconcile, which the engine
/// schedules soon while the network is incomplete. Nothing waits for it.
pub fn network_steps(observed: &ObservedNetwork, spec: &VotingStackSpec, key: &DesiredKeyPair) -> Vec<NetworkStep> {
    let mut steps = Vec::new();
    if spec.network.provided().is_none() {
        own_network_steps(&mut steps, observed, spec);
    }
    for tier in Tier::ALL {
        if !observed.groups.contains_key(&tier) {
            steps.push(NetworkStep::CreateSecurityGroup { tier });
        }
    }
    for tier in Tier::ALL {
        group_rule_steps(&mut steps, spec, tier, observed.groups.get(&tier).map(|g| &g.rules));
    }
    match &observed.key_pair {
        None => steps.push(NetworkStep::ImportKeyPair { key: key.clone() }),
        Some(present) => {
            let wanted = key.public_key.as_deref().map(key_identity);
            let stale = matches!((&present.identity, &wanted), (Some(have), Some(want)) if have != want);
            if stale {
                steps.push(NetworkStep::ReimportKeyPair { key: key.clone() });
            }
        }
    }
    for duplicate in &observed.duplicates {
        steps.push(NetworkStep::DeleteDuplicate { duplicate: duplicate.clone() });
    }
    steps
}

/// The steps of the network a stack creates for itself: VPC, subnets,
/// gateway, route tables, Elastic IP and NAT gateway. None for a network
/// the user brings (`spec.network.vpcId`): that one is only looked at.
fn own_network_steps(steps: &mut Vec<NetworkStep>, observed: &ObservedNetwork, spec: &VotingStackSpec) {
    let net = &spec.network;
    if observed.vpc.is_none() {
        steps.push(NetworkStep::CreateVpc { cidr: net.vpc_cidr.clone() });
        steps.push(NetworkStep::EnableVpcDns);
    }
    if observed.subnet.is_none() {
        let zone = zone_choice(spec);
        steps.push(NetworkStep::CreateSubnet { role: SubnetRole::Public, cidr: net.subnet_cidr.clone(), zone });
    }
    match &observed.gateway {
        None => {
            steps.push(NetworkStep::CreateInternetGateway);
            steps.push(NetworkStep::AttachInternetGateway);
        }
        Some(g) if !g.attached => steps.push(NetworkStep::AttachInternetGateway),
        Some(_) => {}
    }
    let gateway = observed.gateway.as_ref().map(|g| g.id.as_str());
    route_table_steps(steps, SubnetRole::Public, observed.route_table.as_ref(), |rt| {
        (gateway.is_none() || rt.default_route.as_deref() != gateway)
            .then(|| NetworkStep::RouteToGateway { replaces: rt.default_route.clone() })
    });
    if observed.private_subnet.is_none() {
        if let Some(cidr) = net.private_cidr() {
            steps.push(NetworkStep::CreateSubnet { role: SubnetRole::Private, cidr, zone: zone_choice(spec) });
        }
    }
    match net.egress {
        Egress::NatGateway => {
            if observed.elastic_ip.is_none() {
                steps.push(NetworkStep::AllocateElasticIp);
            }
            let nat = observed.nat_gateway.as_ref().filter(|n| n.state.is_usable());
            if nat.is_none() {
                steps.push(NetworkStep::CreateNatGateway { attempt: observed.failed_nat_gateways });
            }
            let ready = nat.is_some_and(|n| n.state == NatState::Available);
            let target = nat.map(|n| n.id.as_str());
            route_table_steps(steps, SubnetRole::Private, observed.private_route_table.as_ref(), |rt| {
                (target.is_none() || rt.default_route.as_deref() != target).then(|| NetworkStep::RouteToNatGateway {
                    replaces: rt.default_route.clone(),
                    when_available: !ready,
                })
            });
        }
        Egress::None => {
            route_table_steps(steps, SubnetRole::Private, observed.private_route_table.as_ref(), |_| None);
        }
    }
}

/// The steps that keep the rules of the observed groups as the policy says:
/// a rule opened by hand is revoked, a missing one authorized. A tier not
/// in `groups` was not observed and gets no step.
pub fn rule_steps(groups: &BTreeMap<Tier, ObservedGroup>, spec: &VotingStackSpec) -> Vec<NetworkStep> {
    let mut steps = Vec::new();
    for tier in Tier::ALL {
        if let Some(group) = groups.get(&tier) {
            group_rule_steps(&mut steps, spec, tier, Some(&group.rules));
        }
    }
    steps
}

fn group_rule_steps(
    steps: &mut Vec<NetworkStep>,
    spec: &VotingStackSpec,
    tier: Tier,
    existing: Option<&BTreeSet<Rule>>,
) {
    let policy = security_policy(spec, tier);
    let wanted: BTreeSet<&Rule> = policy.iter().map(|(r, _)| r).collect();
    for rule in existing.into_iter().flatten().filter(|r| !wanted.contains(r)) {
        steps.push(NetworkStep::Revoke { tier, rule: rule.clone() });
    }
    let missing: Vec<(Rule, &'static str)> = policy
        .iter()
        .filter(|(rule, _)| !existing.is_some_and(|e| e.contains(rule)))
        .map(|(rule, description)| (rule.clone(), *description))
        .collect();
    if !missing.is_empty() {
        steps.push(NetworkStep::Authorize { tier, rules: missing });
    }
}

/// A route table: created, routed (when `route` asks for a step) and associated.
fn route_table_steps(
    steps: &mut Vec<NetworkStep>,
    role: SubnetRole,
    found: Option<&ObservedRouteTable>,
    route: impl Fn(&ObservedRouteTable) -> Option<NetworkStep>,
) {
    let fresh = ObservedRouteTable { id: String::new(), default_route: None, associated: false };
    if found.is_none() {
        steps.push(NetworkStep::CreateRouteTable { role });
    }
    let rt = found.unwrap_or(&fresh);
    steps.extend(route(rt));
    if !rt.associated {
        steps.push(NetworkStep::AssociateRouteTable { role });
    }
}

/// The zone of a new subnet: the spec's, else the recorded or first offering one.
fn zone_choice(spec: &VotingStackSpec) -> ZoneChoice {
    match &spec.network.availability_zone {
        Some(az) => ZoneChoice::Named(az.clone()),
        None => {
            let types: BTreeSet<&str> = Tier::ALL.iter().map(|t| spec.instances.instance_type_for(*t)).collect();
            ZoneChoice::Offering(types.into_iter().map(str::to_owned).collect())
        }
    }
}

/// How the stack's subnets differ from what the spec and status say: a
/// CIDR other than the spec's, a zone other than the spec's (or, without
/// one, than the zone recorded in status). Such a subnet is kept, never
/// replaced: its instances live in it. Each entry is one sentence.
pub fn network_drift(
    observation: &NetworkObservation,
    spec: &VotingStackSpec,
    known: Option<&NetworkStatus>,
) -> Vec<String> {
    let net = &spec.network;
    let recorded = known.and_then(|k| k.availability_zone.as_deref());
    let wanted_zone = net.availability_zone.as_deref().or(recorded);
    let mut drift = Vec::new();
    if net.provided().is_some() {
        // The user's subnets are what the spec names, whatever their blocks.
        return drift;
    }
    let found = match observation {
        NetworkObservation::Inventory(found) => found,
        NetworkObservation::Trusted(ids, _) => {
            if let (Some(want), Some(have)) = (net.availability_zone.as_deref(), ids.availability_zone.as_deref()) {
                if want != have {
                    drift.push(format!("the subnets are in {have}, not in availabilityZone {want}"));
                }
            }
            return drift;
        }
    };
    let subnets = [
        (SubnetRole::Public, &found.subnet, Some(net.subnet_cidr.clone())),
        (SubnetRole::Private, &found.private_subnet, net.private_cidr()),
    ];
    for (role, subnet, cidr) in subnets {
        let Some(subnet) = subnet else { continue };
        if let Some(cidr) = cidr.filter(|c| *c != subnet.cidr) {
            drift.push(format!("{role} subnet {} has CIDR {}, not {cidr}", subnet.id, subnet.cidr));
        }
        if let (Some(want), Some(have)) = (wanted_zone, subnet.availability_zone.as_deref()) {
            if want != have {
                drift.push(format!("{role} subnet {} is in {have}, not in {want}", subnet.id));
            }
        }
    }
    drift
}

/// The steps that delete a stack, in the order AWS requires: instances
/// (terminated and gone), the data volume (free once they are), NAT gateways (deleted, and gone before their
/// Elastic IPs and the public subnet can go), Elastic IPs, rules naming
/// other groups, groups, route tables (disassociated first; the VPC's main
/// table goes with the VPC), gateways (detached first), subnets, VPCs, and
/// the key pair last.
pub fn teardown_steps(found: &TeardownInventory) -> Vec<TeardownStep> {
    let mut steps = Vec::new();
    if !found.instances.is_empty() {
        steps.push(TeardownStep::TerminateInstances { ids: found.instances.clone() });
    }
    steps.extend(found.volumes.iter().map(|id| TeardownStep::DeleteVolume { id: id.clone() }));
    if !found.nat_gateways.is_empty() {
        steps.push(TeardownStep::DeleteNatGateways { ids: found.nat_gateways.clone() });
    }
    for allocation_id in &found.elastic_ips {
        steps.push(TeardownStep::ReleaseElasticIp { allocation_id: allocation_id.clone() });
    }
    for (group_id, rules) in found.groups.iter().filter(|(_, rules)| !rules.is_empty()) {
        steps.push(TeardownStep::RevokeGroupReferences { group_id: group_id.clone(), rules: rules.clone() });
    }
    for (group_id, _) in &found.groups {
        steps.push(TeardownStep::DeleteSecurityGroup { id: group_id.clone() });
    }
    for rt in found.route_tables.iter().filter(|rt| !rt.main) {
        for association_id in &rt.association_ids {
            steps.push(TeardownStep::DisassociateRouteTable { association_id: association_id.clone() });
        }
        steps.push(TeardownStep::DeleteRouteTable { id: rt.id.clone() });
    }
    for (gateway_id, vpcs) in &found.gateways {
        for vpc_id in vpcs {
            steps.push(TeardownStep::DetachInternetGateway { id: gateway_id.clone(), vpc_id: vpc_id.clone() });
        }
        steps.push(TeardownStep::DeleteInternetGateway { id: gateway_id.clone() });
    }
    steps.extend(found.subnets.iter().map(|id| TeardownStep::DeleteSubnet { id: id.clone() }));
    steps.extend(found.vpcs.iter().map(|id| TeardownStep::DeleteVpc { id: id.clone() }));
    steps.extend(found.key_pairs.iter().map(|name| TeardownStep::DeleteKeyPair { name: name.clone() }));
    steps
}

#[cfg(test)]
#[path = "network_tests.rs"]
mod tests;
