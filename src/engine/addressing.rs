//! How each host is reached: its address per `network.connectVia`, the
//! jump through the frontend, the host key it must present, and the URLs
//! of the web pages.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::api::{ConnectVia, HostKeyPolicy, Tier, VotingStackSpec, VotingStackStatus};
use crate::host::{HostTarget, SshKey};
use crate::model::{InstanceState, ObservedInstance};

use super::host_keys::{earlier_host_key, expected_host_key};

/// The address the operator uses for a host, per `network.connectVia`.
fn connect_address(spec: &VotingStackSpec, inst: &ObservedInstance) -> Option<Ipv4Addr> {
    match spec.network.connect_via {
        ConnectVia::PrivateIp => inst.private_ip,
        ConnectVia::PublicIp => inst.public_ip,
    }
}

/// The frontend's address for the web pages, once it runs.
pub(super) fn web_address(spec: &VotingStackSpec, frontend: &ObservedInstance) -> Option<Ipv4Addr> {
    if frontend.state != InstanceState::Running {
        return None;
    }
    connect_address(spec, frontend)
}

pub(super) fn url(address: Ipv4Addr, port: u16) -> String {
    if port == 80 {
        format!("http://{address}/")
    } else {
        format!("http://{address}:{port}/")
    }
}

/// How to reach a tier's host, or None while it has no usable address.
pub fn host_target(
    stack_label: &str,
    spec: &VotingStackSpec,
    status: &VotingStackStatus,
    tier: Tier,
    keepers: &BTreeMap<Tier, ObservedInstance>,
    key: &SshKey,
) -> Option<HostTarget> {
    let inst = keepers.get(&tier).filter(|i| i.state == InstanceState::Running)?;
    let expected = |tier: Tier, inst: &ObservedInstance| match spec.ssh.host_key_policy {
        HostKeyPolicy::Pinned => spec.ssh.pinned_host_keys.as_ref().and_then(|m| m.get(tier.as_str()).cloned()),
        HostKeyPolicy::PinOnFirstUse => expected_host_key(status, tier, inst, key),
    };
    let make = |tier: Tier, inst: &ObservedInstance, address: Ipv4Addr, jump: Option<Box<HostTarget>>| HostTarget {
        stack: stack_label.to_string(),
        tier,
        instance_id: inst.id.clone(),
        address,
        port: spec.ssh.port,
        user: spec.ssh.user.clone(),
        expected_host_key: expected(tier, inst),
        earlier_host_key: match spec.ssh.host_key_policy {
            HostKeyPolicy::Pinned => None,
            HostKeyPolicy::PinOnFirstUse => earlier_host_key(status, tier, inst, key),
        },
        jump,
        connect_timeout_secs: spec.ssh.connect_timeout_seconds,
        command_timeout_secs: spec.ssh.command_timeout_seconds,
    };
    if !tier.is_public() && spec.jumps_through_frontend() {
        let front = keepers.get(&Tier::Frontend).filter(|i| i.state == InstanceState::Running)?;
        let jump = make(Tier::Frontend, front, connect_address(spec, front)?, None);
        return Some(make(tier, inst, inst.private_ip?, Some(Box::new(jump))));
    }
    Some(make(tier, inst, connect_address(spec, inst)?, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_80_is_left_out_of_urls() {
        let a = Ipv4Addr::new(10, 0, 1, 6);
        assert_eq!(url(a, 80), "http://10.0.1.6/");
        assert_eq!(url(a, 81), "http://10.0.1.6:81/");
    }
}
