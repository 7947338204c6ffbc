//! The network half of the plan, pure: the inventory and the spec in, the
//! ordered EC2 steps out. The security-group policy lives here and only here.

use std::collections::BTreeSet;

use crate::api::{Tier, VotingStackSpec};
use crate::model::desired::{POSTGRES_PORT, REDIS_PORT};
use crate::model::network::key_identity;
use crate::model::{DesiredKeyPair, NetworkStep, ObservedNetwork, Rule, Source, TeardownInventory, TeardownStep};

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
/// for, in the order EC2 needs them: VPC, subnet, gateway, route table,
/// security groups (all three before any rule, as rules name each other),
/// rules, key pair. A complete network yields no steps.
pub fn network_steps(observed: &ObservedNetwork, spec: &VotingStackSpec, key: &DesiredKeyPair) -> Vec<NetworkStep> {
    let mut steps = Vec::new();
    let net = &spec.network;
    if observed.vpc.is_none() {
        steps.push(NetworkStep::CreateVpc { cidr: net.vpc_cidr.clone() });
        steps.push(NetworkStep::EnableVpcDns);
    }
    if observed.subnet.is_none() {
        steps.push(NetworkStep::CreateSubnet {
            cidr: net.subnet_cidr.clone(),
            availability_zone: net.availability_zone.clone(),
        });
    }
    match &observed.gateway {
        None => {
            steps.push(NetworkStep::CreateInternetGateway);
            steps.push(NetworkStep::AttachInternetGateway);
        }
        Some(g) if !g.attached => steps.push(NetworkStep::AttachInternetGateway),
        Some(_) => {}
    }
    match &observed.route_table {
        None => {
            steps.push(NetworkStep::CreateRouteTable);
            steps.push(NetworkStep::RouteToGateway { replaces: None });
            steps.push(NetworkStep::AssociateRouteTable);
        }
        Some(rt) => {
            let gateway = observed.gateway.as_ref().map(|g| g.id.as_str());
            if gateway.is_none() || rt.default_route.as_deref() != gateway {
                steps.push(NetworkStep::RouteToGateway { replaces: rt.default_route.clone() });
            }
            if !rt.associated {
                steps.push(NetworkStep::AssociateRouteTable);
            }
        }
    }
    for tier in Tier::ALL {
        if !observed.groups.contains_key(&tier) {
            steps.push(NetworkStep::CreateSecurityGroup { tier });
        }
    }
    for tier in Tier::ALL {
        let policy = security_policy(spec, tier);
        let wanted: BTreeSet<&Rule> = policy.iter().map(|(r, _)| r).collect();
        let existing = observed.groups.get(&tier).map(|g| &g.rules);
        for rule in existing.into_iter().flatten().filter(|r| !wanted.contains(r)) {
            steps.push(NetworkStep::Revoke { tier, rule: rule.clone() });
        }
        for (rule, description) in &policy {
            if !existing.is_some_and(|e| e.contains(rule)) {
                steps.push(NetworkStep::Authorize { tier, rule: rule.clone(), description });
            }
        }
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
    steps
}

/// The steps that delete a stack, in the order AWS requires: instances
/// (terminated and gone), rules naming other groups, groups, route tables
/// (disassociated first; the VPC's main table goes with the VPC), gateways
/// (detached first), subnets, VPCs, and the key pair last.
pub fn teardown_steps(found: &TeardownInventory) -> Vec<TeardownStep> {
    let mut steps = Vec::new();
    if !found.instances.is_empty() {
        steps.push(TeardownStep::TerminateInstances { ids: found.instances.clone() });
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
