//! What a teardown found ([`TeardownInventory`]) and the steps that delete
//! it ([`TeardownStep`]), in dependency order.

use std::fmt;

use super::network::Rule;

/// What a teardown found: every resource with the stack's tag, plus those
/// status names that lost their tag.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TeardownInventory {
    /// Instances not yet terminated.
    pub instances: Vec<String>,
    /// The database's data volumes.
    pub volumes: Vec<String>,
    /// Security groups with their rules that name another group.
    pub groups: Vec<(String, Vec<Rule>)>,
    pub route_tables: Vec<FoundRouteTable>,
    /// NAT gateways not yet deleted.
    pub nat_gateways: Vec<String>,
    /// Allocation ids of the stack's Elastic IPs.
    pub elastic_ips: Vec<String>,
    /// Gateways with the VPCs they are attached to.
    pub gateways: Vec<(String, Vec<String>)>,
    pub subnets: Vec<String>,
    pub vpcs: Vec<String>,
    pub key_pairs: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundRouteTable {
    pub id: String,
    /// The VPC's main table (it goes with the VPC).
    pub main: bool,
    pub association_ids: Vec<String>,
}

/// One step of deleting a stack. Deletions skip what is already gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TeardownStep {
    /// Terminates the instances and waits until they are gone.
    TerminateInstances {
        ids: Vec<String>,
    },
    /// Deletes the database's data volume (after the instances, which
    /// let go of it when they terminate).
    DeleteVolume {
        id: String,
    },
    /// Deletes the NAT gateways and waits (bounded) until they are `deleted`:
    /// their Elastic IPs and the public subnet are held until then.
    DeleteNatGateways {
        ids: Vec<String>,
    },
    ReleaseElasticIp {
        allocation_id: String,
    },
    /// Revokes rules that name another group: a group cannot be deleted
    /// while another group's rule names it. `rules` hold group ids as
    /// [`Source::Group`].
    RevokeGroupReferences {
        group_id: String,
        rules: Vec<Rule>,
    },
    DeleteSecurityGroup {
        id: String,
    },
    DisassociateRouteTable {
        association_id: String,
    },
    DeleteRouteTable {
        id: String,
    },
    DetachInternetGateway {
        id: String,
        vpc_id: String,
    },
    DeleteInternetGateway {
        id: String,
    },
    DeleteSubnet {
        id: String,
    },
    DeleteVpc {
        id: String,
    },
    DeleteKeyPair {
        name: String,
    },
}

impl fmt::Display for TeardownStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TeardownStep::TerminateInstances { ids } => write!(f, "- terminate instances {}", ids.join(", ")),
            TeardownStep::DeleteVolume { id } => write!(f, "- delete data volume {id}"),
            TeardownStep::DeleteNatGateways { ids } => {
                write!(f, "- delete NAT gateways {} and wait until they are deleted", ids.join(", "))
            }
            TeardownStep::ReleaseElasticIp { allocation_id } => write!(f, "- release Elastic IP {allocation_id}"),
            TeardownStep::RevokeGroupReferences { group_id, rules } => {
                write!(f, "- revoke {} rules of {group_id} that name another group", rules.len())
            }
            TeardownStep::DeleteSecurityGroup { id } => write!(f, "- delete security group {id}"),
            TeardownStep::DisassociateRouteTable { association_id } => {
                write!(f, "- disassociate route table ({association_id})")
            }
            TeardownStep::DeleteRouteTable { id } => write!(f, "- delete route table {id}"),
            TeardownStep::DetachInternetGateway { id, vpc_id } => {
                write!(f, "- detach internet gateway {id} from {vpc_id}")
            }
            TeardownStep::DeleteInternetGateway { id } => write!(f, "- delete internet gateway {id}"),
            TeardownStep::DeleteSubnet { id } => write!(f, "- delete subnet {id}"),
            TeardownStep::DeleteVpc { id } => write!(f, "- delete VPC {id}"),
            TeardownStep::DeleteKeyPair { name } => write!(f, "- delete key pair {name}"),
        }
    }
}
