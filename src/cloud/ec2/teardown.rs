//! Deleting a stack: what is there to delete (found by tag and by the ids
//! in status), and the executor of the teardown steps the engine orders.
//! Whatever is already gone is skipped, so a half-deleted or absent stack
//! tears down cleanly.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use aws_sdk_ec2::types::IpPermission;

use std::collections::BTreeMap;

use tracing::{debug, info};

use crate::api::NetworkStatus;
use crate::cloud::{CloudError, DestroyReport, StackIdentity};
use crate::model::network::NatState;
use crate::model::teardown::FoundRouteTable;
use crate::model::{Source, TeardownInventory, TeardownStep};

use super::instances::{state_filter, PRESENT_STATES};
use super::network::{existing_rules, nat_state, permission, Inventory};
use super::{filter, has_code, is_dependency, is_not_found, stack_filter, Ec2Cloud};

const REVOKE: &str = "RevokeSecurityGroupIngress";

impl Ec2Cloud {
    /// What a teardown has to delete: the stack's instances and network.
    pub(super) async fn look_up_teardown_inventory(
        &self,
        stack: &StackIdentity,
        known: Option<&NetworkStatus>,
    ) -> Result<TeardownInventory, CloudError> {
        let found = self.describe_instances(vec![stack_filter(stack), state_filter(&PRESENT_STATES)]).await?;
        let (instances, _) = self.claim_instances(stack, found.iter().collect()).await;
        let inv = self.full_inventory(stack, known).await?;
        let volumes = self.stack_volumes(stack).await?;
        let no_tiers = BTreeMap::new();
        let owned = |ids: Vec<Option<&str>>| ids.into_iter().flatten().map(str::to_owned).collect::<Vec<_>>();
        Ok(TeardownInventory {
            instances: owned(instances.iter().map(|i| i.instance_id()).collect()),
            volumes: volumes.into_iter().map(|v| v.id).collect(),
            groups: inv
                .groups
                .iter()
                .filter_map(|g| {
                    let referring = existing_rules(g, &no_tiers)
                        .into_iter()
                        .filter(|r| matches!(r.source, Source::Group(_)))
                        .collect();
                    Some((g.group_id()?.to_owned(), referring))
                })
                .collect(),
            route_tables: inv
                .route_tables
                .iter()
                .filter_map(|rt| {
                    Some(FoundRouteTable {
                        id: rt.route_table_id()?.to_owned(),
                        main: rt.associations().iter().any(|a| a.main() == Some(true)),
                        association_ids: owned(
                            rt.associations().iter().map(|a| a.route_table_association_id()).collect(),
                        ),
                    })
                })
                .collect(),
            gateways: inv
                .gateways
                .iter()
                .filter_map(|g| {
                    Some((
                        g.internet_gateway_id()?.to_owned(),
                        owned(g.attachments().iter().map(|a| a.vpc_id()).collect()),
                    ))
                })
                .collect(),
            nat_gateways: owned(
                inv.nat_gateways
                    .iter()
                    .filter(|n| nat_state(n) != Some(NatState::Deleted))
                    .map(|n| n.nat_gateway_id())
                    .collect(),
            ),
            elastic_ips: owned(inv.addresses.iter().map(|a| a.allocation_id()).collect()),
            subnets: owned(inv.subnets.iter().map(|s| s.subnet_id()).collect()),
            vpcs: owned(inv.vpcs.iter().map(|v| v.vpc_id()).collect()),
            key_pairs: owned(inv.key_pairs.iter().map(|k| k.key_name()).collect()),
        })
    }

    /// Carries out teardown steps in order. A deletion of something already
    /// gone is skipped; one that AWS refuses while a dependency lets go is
    /// retried. The report lists what was deleted.
    pub(super) async fn run_teardown_steps(
        &self,
        stack: &StackIdentity,
        steps: &[TeardownStep],
    ) -> Result<DestroyReport, CloudError> {
        let mut report = DestroyReport::default();
        let c = &self.client;
        for step in steps {
            debug!(stack = %stack.tag_value(), "{step}");
            let deleted = match step {
                TeardownStep::TerminateInstances { ids } => {
                    self.call("TerminateInstances", c.terminate_instances().set_instance_ids(Some(ids.clone())).send())
                        .await?;
                    info!(stack = %stack.tag_value(), ?ids, "terminating instances");
                    self.wait_terminated(ids).await?;
                    report.deleted.extend(ids.iter().cloned());
                    None
                }
                // The instances are gone, so the volume is free (or about
                // to be: VolumeInUse is waited out).
                TeardownStep::DeleteVolume { id } => self
                    .settle(|| async {
                        self.call("DeleteVolume", c.delete_volume().volume_id(id).send()).await.map(drop)
                    })
                    .await?
                    .then_some(id),
                TeardownStep::DeleteNatGateways { ids } => {
                    for id in ids {
                        let done = self
                            .call("DeleteNatGateway", c.delete_nat_gateway().nat_gateway_id(id).send())
                            .await
                            .map(drop);
                        match done {
                            Err(e) if !is_not_found(&e) => return Err(e),
                            _ => {}
                        }
                    }
                    info!(stack = %stack.tag_value(), ?ids, "deleting NAT gateways");
                    self.wait_nat_deleted(ids).await?;
                    report.deleted.extend(ids.iter().cloned());
                    None
                }
                TeardownStep::ReleaseElasticIp { allocation_id } => self
                    .settle(|| async {
                        self.call("ReleaseAddress", c.release_address().allocation_id(allocation_id).send())
                            .await
                            .map(drop)
                    })
                    .await?
                    .then_some(allocation_id),
                TeardownStep::RevokeGroupReferences { group_id, rules } => {
                    let perms = rules
                        .iter()
                        .map(|r| permission(REVOKE, r, &BTreeMap::new(), None))
                        .collect::<Result<Vec<_>, _>>()?;
                    self.revoke_references(group_id, perms).await?;
                    None
                }
                TeardownStep::DeleteSecurityGroup { id } => self
                    .settle(|| async {
                        self.call("DeleteSecurityGroup", c.delete_security_group().group_id(id).send()).await.map(drop)
                    })
                    .await?
                    .then_some(id),
                TeardownStep::DisassociateRouteTable { association_id } => {
                    self.settle(|| async {
                        self.call(
                            "DisassociateRouteTable",
                            c.disassociate_route_table().association_id(association_id).send(),
                        )
                        .await
                        .map(drop)
                    })
                    .await?;
                    None
                }
                TeardownStep::DeleteRouteTable { id } => self
                    .settle(|| async {
                        self.call("DeleteRouteTable", c.delete_route_table().route_table_id(id).send()).await.map(drop)
                    })
                    .await?
                    .then_some(id),
                TeardownStep::DetachInternetGateway { id, vpc_id } => {
                    self.settle(|| async {
                        self.call(
                            "DetachInternetGateway",
                            c.detach_internet_gateway().internet_gateway_id(id).vpc_id(vpc_id).send(),
                        )
                        .await
                        .map(drop)
                    })
                    .await?;
                    None
                }
                TeardownStep::DeleteInternetGateway { id } => self
                    .settle(|| async {
                        self.call("DeleteInternetGateway", c.delete_internet_gateway().internet_gateway_id(id).send())
                            .await
                            .map(drop)
                    })
                    .await?
                    .then_some(id),
                TeardownStep::DeleteSubnet { id } => self
                    .settle(|| async {
                        self.call("DeleteSubnet", c.delete_subnet().subnet_id(id).send()).await.map(drop)
                    })
                    .await?
                    .then_some(id),
                TeardownStep::DeleteVpc { id } => self
                    .settle(|| async { self.call("DeleteVpc", c.delete_vpc().vpc_id(id).send()).await.map(drop) })
                    .await?
                    .then_some(id),
                TeardownStep::DeleteKeyPair { name } => self
                    .settle(|| async {
                        self.call("DeleteKeyPair", c.delete_key_pair().key_name(name).send()).await.map(drop)
                    })
                    .await?
                    .then_some(name),
            };
            report.deleted.extend(deleted.cloned());
        }
        info!(stack = %stack.tag_value(), deleted = ?report.deleted, "stack torn down");
        Ok(report)
    }

    /// Revokes a group's rules that name other groups, all in one call.
    /// EC2 refuses the whole batch when one rule is gone already
    /// (InvalidPermission.NotFound): then each rule is revoked on its own,
    /// so no reference is left to hold a group's deletion back.
    async fn revoke_references(&self, group_id: &str, perms: Vec<IpPermission>) -> Result<(), CloudError> {
        let one_gone = AtomicBool::new(false);
        self.settle(|| {
            let (perms, one_gone) = (perms.clone(), &one_gone);
            async move {
                let several = perms.len() > 1;
                match self.revoke_ingress(group_id, perms).await {
                    Err(e) if several && has_code(&e, "InvalidPermission.NotFound") => {
                        one_gone.store(true, Ordering::Relaxed);
                        Ok(())
                    }
                    done => done,
                }
            }
        })
        .await?;
        if one_gone.load(Ordering::Relaxed) {
            debug!(group_id, "a rule of the batch is gone: revoking the others one by one");
            for perm in perms {
                self.settle(|| self.revoke_ingress(group_id, vec![perm.clone()])).await?;
            }
        }
        Ok(())
    }

    async fn revoke_ingress(&self, group_id: &str, perms: Vec<IpPermission>) -> Result<(), CloudError> {
        self.call(
            REVOKE,
            self.client.revoke_security_group_ingress().group_id(group_id).set_ip_permissions(Some(perms)).send(),
        )
        .await
        .map(drop)
    }

    /// Every resource with the stack's tag, plus those `known` names that
    /// lost their tag (looked up by id filter, so a missing id is no error).
    async fn full_inventory(
        &self,
        stack: &StackIdentity,
        known: Option<&NetworkStatus>,
    ) -> Result<Inventory, CloudError> {
        let c = &self.client;
        let mut inv = self.network_lookup(stack, known).await?;
        let mut known = known.cloned().unwrap_or_default();
        if known.provided {
            // The VPC and subnets are the user's: only the groups and the
            // key pair recorded here are the stack's.
            known = NetworkStatus {
                security_groups: known.security_groups,
                key_pair_name: known.key_pair_name,
                ..NetworkStatus::default()
            };
        }
        if inv.vpcs.is_empty() {
            // Groups in a VPC the user brings carry the tag; no VPC of the
            // stack's own led to them.
            inv.groups = self.groups_by_tag(stack).await?;
        }
        let missing = |known_ids: Vec<&String>, found: Vec<&str>| -> Vec<String> {
            known_ids.into_iter().filter(|k| !found.contains(&k.as_str())).cloned().collect()
        };

        let vpc_ids = missing(known.vpc_id.iter().collect(), inv.vpcs.iter().filter_map(|v| v.vpc_id()).collect());
        if !vpc_ids.is_empty() {
            let out = self.call("DescribeVpcs", c.describe_vpcs().filters(filter("vpc-id", vpc_ids)).send()).await?;
            inv.vpcs.extend(out.vpcs.unwrap_or_default());
        }
        if !inv.vpcs.is_empty() && inv.subnets.is_empty() && inv.route_tables.is_empty() && inv.nat_gateways.is_empty()
        {
            // The children were not looked up when no VPC carried the tag.
            self.describe_vpc_children(stack, &mut inv).await?;
        }
        let subnet_ids = missing(
            known.subnet_id.iter().chain(&known.private_subnet_id).collect(),
            inv.subnets.iter().filter_map(|s| s.subnet_id()).collect(),
        );
        if !subnet_ids.is_empty() {
            let out = self
                .call("DescribeSubnets", c.describe_subnets().filters(filter("subnet-id", subnet_ids)).send())
                .await?;
            inv.subnets.extend(out.subnets.unwrap_or_default());
        }
        let rt_ids = missing(
            known.route_table_id.iter().chain(&known.private_route_table_id).collect(),
            inv.route_tables.iter().filter_map(|r| r.route_table_id()).collect(),
        );
        if !rt_ids.is_empty() {
            let out = self
                .call("DescribeRouteTables", c.describe_route_tables().filters(filter("route-table-id", rt_ids)).send())
                .await?;
            inv.route_tables.extend(out.route_tables.unwrap_or_default());
        }
        let group_ids =
            missing(known.security_groups.values().collect(), inv.groups.iter().filter_map(|g| g.group_id()).collect());
        if !group_ids.is_empty() {
            let out = self
                .call(
                    "DescribeSecurityGroups",
                    c.describe_security_groups().filters(filter("group-id", group_ids)).send(),
                )
                .await?;
            inv.groups.extend(out.security_groups.unwrap_or_default());
        }
        let nat_ids = missing(
            known.nat_gateway_id.iter().collect(),
            inv.nat_gateways.iter().filter_map(|n| n.nat_gateway_id()).collect(),
        );
        if !nat_ids.is_empty() {
            let out = self
                .call(
                    "DescribeNatGateways",
                    c.describe_nat_gateways().filter(filter("nat-gateway-id", nat_ids.clone())).send(),
                )
                .await?;
            // Filtered here too: not every EC2-compatible endpoint filters by id.
            inv.nat_gateways.extend(
                out.nat_gateways
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|n| n.nat_gateway_id().is_some_and(|id| nat_ids.iter().any(|k| k == id))),
            );
        }
        let address_ids = missing(
            known.elastic_ip_allocation_id.iter().collect(),
            inv.addresses.iter().filter_map(|a| a.allocation_id()).collect(),
        );
        if !address_ids.is_empty() {
            let out = self
                .call("DescribeAddresses", c.describe_addresses().filters(filter("allocation-id", address_ids)).send())
                .await?;
            inv.addresses.extend(out.addresses.unwrap_or_default());
        }
        let gw_ids = missing(
            known.internet_gateway_id.iter().collect(),
            inv.gateways.iter().filter_map(|g| g.internet_gateway_id()).collect(),
        );
        if !gw_ids.is_empty() {
            let out = self
                .call(
                    "DescribeInternetGateways",
                    c.describe_internet_gateways().filters(filter("internet-gateway-id", gw_ids)).send(),
                )
                .await?;
            inv.gateways.extend(out.internet_gateways.unwrap_or_default());
        }
        self.claim_network(stack, &mut inv).await;
        Ok(inv)
    }

    /// Polls until every NAT gateway in `ids` is deleted (or gone), bounded
    /// by the wait timeout.
    async fn wait_nat_deleted(&self, ids: &[String]) -> Result<(), CloudError> {
        let started = Instant::now();
        loop {
            let out = self
                .call(
                    "DescribeNatGateways",
                    self.client.describe_nat_gateways().filter(filter("nat-gateway-id", ids.iter().cloned())).send(),
                )
                .await?;
            let left: Vec<String> = out
                .nat_gateways()
                .iter()
                .filter(|n| nat_state(n) != Some(NatState::Deleted))
                .filter_map(|n| n.nat_gateway_id().map(str::to_owned))
                .collect();
            if left.is_empty() {
                return Ok(());
            }
            if started.elapsed() + self.poll_interval > self.wait_timeout {
                return Err(CloudError::Incomplete {
                    operation: "DeleteNatGateway",
                    missing: "deleted state within the wait timeout (the Elastic IP and public subnet stay until then)",
                });
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }

    /// Polls until every instance in `ids` is terminated.
    async fn wait_terminated(&self, ids: &[String]) -> Result<(), CloudError> {
        let started = Instant::now();
        loop {
            let left: Vec<String> = self
                .describe_instances(vec![filter("instance-id", ids.iter().cloned()), state_filter(&PRESENT_STATES)])
                .await?
                .iter()
                .filter_map(|i| i.instance_id().map(str::to_owned))
                .collect();
            if left.is_empty() {
                return Ok(());
            }
            if started.elapsed() + self.poll_interval > self.wait_timeout {
                return Err(CloudError::TerminateTimeout { ids: left, seconds: self.wait_timeout.as_secs() });
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }

    /// Runs one deletion step: Ok(true) when it happened, Ok(false) when the
    /// resource was already gone; retried while AWS reports a dependency that
    /// is still letting go (network interfaces of terminated instances).
    async fn settle<F, Fut>(&self, mut step: F) -> Result<bool, CloudError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), CloudError>>,
    {
        let started = Instant::now();
        loop {
            match step().await {
                Ok(()) => return Ok(true),
                Err(e) if is_not_found(&e) => return Ok(false),
                Err(e) if is_dependency(&e) && started.elapsed() + self.poll_interval < self.wait_timeout => {
                    info!(error = %e, "waiting for a dependency to let go");
                    tokio::time::sleep(self.poll_interval).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
