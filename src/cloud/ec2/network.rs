//! The stack's network: looked up by tag (here), chosen from what was found
//! (`inventory`, no EC2 call), and changed one planned step at a time
//! (`steps`, one function per kind of [`crate::model::NetworkStep`]).

mod inventory;
mod provided;
mod steps;
mod zones;

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::LocationType;

use tracing::info;

use crate::api::{NetworkStatus, ProvidedNetwork, Tier, STACK_LABEL};
use crate::cloud::{CloudError, NetworkLookup, StackIdentity};
use crate::model::network::{ObservedGroup, ZoneChoice};
use crate::model::{NetworkObservation, ObservedInstance};

use super::instances::Placement;
use super::{filter, stack_filter, tag_value, Claim, Ec2Cloud};

pub(super) use inventory::{existing_rules, nat_state, permission, Inventory};
use inventory::{is_complete, serves_every_tier};
use zones::{choose_zone, RegionZone, AVAILABILITY_ZONE, AVAILABLE};

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
        inv.groups = self.groups_by_tag(stack).await?;
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

    /// Looks up every resource with the stack's tag (one Describe call per
    /// kind, the children only when a VPC exists), keeps the stack's own
    /// and adopts those without an installation tag ([`Self::claim_network`]).
    pub(super) async fn network_by_tag(
        &self,
        stack: &StackIdentity,
        known: Option<&NetworkStatus>,
    ) -> Result<Inventory, CloudError> {
        let mut inv = self.network_lookup(stack, known).await?;
        self.claim_network(stack, &mut inv).await;
        Ok(inv)
    }

    /// Drops from `inv` what is another stack's or another installation's,
    /// and tags what an older operator created without the installation
    /// tag (one CreateTags, only when there is such a resource).
    pub(super) async fn claim_network(&self, stack: &StackIdentity, inv: &mut Inventory) {
        let adopt = inv.sort_out(stack, &self.installation);
        self.adopt(stack, adopt).await;
    }

    /// Every resource with the stack's owner tag, whatever its installation:
    /// one Describe call per kind (the children only when a VPC exists).
    pub(super) async fn network_lookup(
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
        inv.key_pairs = self.key_pairs_of(stack, known).await?;
        Ok(inv)
    }

    /// The stack's security groups, by tag.
    pub(super) async fn groups_by_tag(
        &self,
        stack: &StackIdentity,
    ) -> Result<Vec<aws_sdk_ec2::types::SecurityGroup>, CloudError> {
        let c = &self.client;
        Ok(self
            .call("DescribeSecurityGroups", c.describe_security_groups().filters(stack_filter(stack)).send())
            .await?
            .security_groups
            .unwrap_or_default())
    }

    /// The stack's key pair by its name (and the recorded name), with its public key.
    pub(super) async fn key_pairs_of(
        &self,
        stack: &StackIdentity,
        known: Option<&NetworkStatus>,
    ) -> Result<Vec<aws_sdk_ec2::types::KeyPairInfo>, CloudError> {
        let mut names = vec![stack.resource_name()];
        if let Some(k) = known.and_then(|k| k.key_pair_name.clone()) {
            if !names.contains(&k) {
                names.push(k);
            }
        }
        Ok(self
            .call(
                "DescribeKeyPairs",
                self.client.describe_key_pairs().filters(filter("key-name", names)).include_public_key(true).send(),
            )
            .await?
            .key_pairs
            .unwrap_or_default())
    }

    /// The network as [`crate::cloud::Cloud::observe`] reports it. A
    /// converged stack (complete ids in status, every tier live in one of
    /// its subnets) is trusted with one call more: DescribeSecurityGroups of
    /// its three groups (shared by the region's stacks, see `super::inventory`),
    /// whose rules are kept. Anything else, or a group that is gone, is
    /// looked up in full by tag.
    ///
    /// A network the user brings is trusted the same way once recorded as
    /// such; otherwise it is looked up by id and checked usable.
    pub(super) async fn observe_network(
        &self,
        stack: &StackIdentity,
        known: Option<&NetworkStatus>,
        provided: Option<&ProvidedNetwork>,
        lookup: NetworkLookup,
        instances: &[(ObservedInstance, Placement)],
    ) -> Result<NetworkObservation, CloudError> {
        let recorded = |k: &NetworkStatus| match provided {
            Some(p) => provided::is_recorded(k, p),
            None => !k.provided,
        };
        let trusted = match lookup {
            NetworkLookup::TrustStatus => {
                known.filter(|k| recorded(k) && is_complete(k) && serves_every_tier(k, instances))
            }
            NetworkLookup::Inventory => None,
        };
        if let Some(k) = trusted {
            if let Some(groups) = self.observe_groups(stack, k).await? {
                return Ok(NetworkObservation::Trusted(k.clone(), groups));
            }
            info!(stack = %stack.tag_value(), "a security group of the stack is gone: looking the network up");
        }
        if let Some(p) = provided {
            return Ok(NetworkObservation::Inventory(self.provided_network(stack, known, p).await?));
        }
        Ok(NetworkObservation::Inventory(self.network_by_tag(stack, known).await?.observe(stack, known)))
    }

    /// The user's VPC, subnets and the VPC's route tables by id, checked
    /// usable, with the stack's own security groups and key pair: five
    /// Describe calls, made only when the network is not trusted.
    async fn provided_network(
        &self,
        stack: &StackIdentity,
        known: Option<&NetworkStatus>,
        p: &ProvidedNetwork,
    ) -> Result<crate::model::ObservedNetwork, CloudError> {
        let c = &self.client;
        let vpc_filter = || filter("vpc-id", [p.vpc_id.clone()]);
        let parts = provided::ProvidedParts {
            vpcs: self
                .call("DescribeVpcs", c.describe_vpcs().filters(vpc_filter()).send())
                .await?
                .vpcs
                .unwrap_or_default(),
            subnets: self
                .call(
                    "DescribeSubnets",
                    c.describe_subnets()
                        .filters(filter("subnet-id", [p.public_subnet_id.clone(), p.private_subnet_id.clone()]))
                        .send(),
                )
                .await?
                .subnets
                .unwrap_or_default(),
            route_tables: self
                .call("DescribeRouteTables", c.describe_route_tables().filters(vpc_filter()).send())
                .await?
                .route_tables
                .unwrap_or_default(),
        };
        let mut own = Inventory {
            groups: self.groups_by_tag(stack).await?,
            key_pairs: self.key_pairs_of(stack, known).await?,
            ..Default::default()
        };
        self.claim_network(stack, &mut own).await;
        provided::observe(p, &parts, own, stack, known)
    }

    /// The three groups of `known` with their rules, or None when one is
    /// gone or carries another installation's tag. Groups an older operator
    /// created without the installation tag are adopted.
    async fn observe_groups(
        &self,
        stack: &StackIdentity,
        known: &NetworkStatus,
    ) -> Result<Option<BTreeMap<Tier, ObservedGroup>>, CloudError> {
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
        let mut adopt = Vec::new();
        for (tier, id) in &known.security_groups {
            let Some(g) = found.iter().find(|g| g.group_id() == Some(id.as_str())) else { return Ok(None) };
            match self.claim(stack, g.tags()) {
                Claim::Theirs => return Ok(None),
                Claim::Adopt => adopt.push(id.clone()),
                Claim::Ours => {}
            }
            groups.insert(*tier, ObservedGroup { id: id.clone(), rules: existing_rules(g, &known.security_groups) });
        }
        self.adopt(stack, adopt).await;
        Ok(Some(groups))
    }

    /// The zone a new subnet goes to: the named one, the recorded one (a
    /// stack never moves), else the one [`choose_zone`] picks for the stack
    /// among the region's availability zones offering every instance type
    /// of the stack. Only this last case calls EC2 (DescribeAvailabilityZones
    /// and DescribeInstanceTypeOfferings), once, when the network is created.
    async fn resolve_zone(
        &self,
        stack: &StackIdentity,
        zone: &ZoneChoice,
        ids: &NetworkStatus,
    ) -> Result<String, CloudError> {
        let types = match zone {
            ZoneChoice::Named(az) => return Ok(az.clone()),
            ZoneChoice::Offering(_) if ids.availability_zone.is_some() => {
                return Ok(ids.availability_zone.clone().unwrap_or_default())
            }
            ZoneChoice::Offering(types) => types,
        };
        let zones: Vec<RegionZone> = self
            .call(
                "DescribeAvailabilityZones",
                self.client
                    .describe_availability_zones()
                    .filters(filter("zone-type", [AVAILABILITY_ZONE.to_owned()]))
                    .filters(filter("state", [AVAILABLE.to_owned()]))
                    .send(),
            )
            .await?
            .availability_zones()
            .iter()
            .filter_map(|z| {
                Some(RegionZone {
                    name: z.zone_name()?.to_owned(),
                    zone_type: z.zone_type().map(str::to_owned),
                    state: z.state().map(|s| s.as_str().to_owned()),
                })
            })
            .collect();
        let operation = "DescribeInstanceTypeOfferings";
        let offerings = self
            .all_pages(
                operation,
                |token| {
                    self.client
                        .describe_instance_type_offerings()
                        .location_type(LocationType::AvailabilityZone)
                        .filters(filter("instance-type", types.iter().cloned()))
                        .set_next_token(token)
                        .send()
                },
                |page| (page.instance_type_offerings.unwrap_or_default(), page.next_token),
            )
            .await?;
        let mut offered: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for o in &offerings {
            if let (Some(zone), Some(t)) = (o.location(), o.instance_type()) {
                offered.entry(zone.to_owned()).or_default().insert(t.as_str().to_owned());
            }
        }
        let owner = stack.tag_value();
        let Some(zone) = choose_zone(&zones, &offered, types, &owner) else {
            let region = self.client.config().region().map(|r| r.to_string()).unwrap_or_default();
            return Err(CloudError::NoZoneOffers { region, types: types.clone() });
        };
        let candidates = zones.len();
        info!(stack = %owner, %zone, ?types, candidates, "chose the stack's availability zone");
        Ok(zone)
    }
}
