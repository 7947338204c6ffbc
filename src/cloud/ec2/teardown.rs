//! Deleting a stack: instances first, then the network from the leaves up,
//! in the order AWS requires. Whatever is already gone is skipped, so a
//! half-deleted or absent stack tears down cleanly.

use std::future::Future;
use std::time::Instant;

use aws_sdk_ec2::types::IpPermission;
use tracing::info;

use crate::api::NetworkStatus;
use crate::cloud::{CloudError, DestroyReport, StackIdentity};

use super::instances::PRESENT_STATES;
use super::network::{existing_rules, Inventory, Source};
use super::{filter, is_dependency, is_not_found, stack_filter, Ec2Cloud};

impl Ec2Cloud {
    pub(super) async fn teardown(
        &self,
        stack: &StackIdentity,
        known: Option<&NetworkStatus>,
    ) -> Result<DestroyReport, CloudError> {
        let mut report = DestroyReport::default();
        let c = &self.client;

        // 1. Instances: terminate and wait, so nothing holds the network.
        let instances =
            self.describe_instances(vec![stack_filter(stack), filter("instance-state-name", PRESENT_STATES)]).await?;
        let ids: Vec<String> = instances.iter().filter_map(|i| i.instance_id().map(str::to_owned)).collect();
        if !ids.is_empty() {
            self.call("TerminateInstances", c.terminate_instances().set_instance_ids(Some(ids.clone())).send()).await?;
            info!(stack = %stack.tag_value(), ?ids, "terminating instances");
            self.wait_terminated(&ids).await?;
            report.deleted.extend(ids);
        }

        let inv = self.full_inventory(stack, known).await?;

        // 2. Rules that refer to another group: a group cannot be deleted
        //    while another group's rule names it.
        for group in &inv.groups {
            let Some(group_id) = group.group_id() else { continue };
            let referring: Vec<IpPermission> = existing_rules(group)
                .into_iter()
                .filter(|r| matches!(r.source, Source::Group(_)))
                .map(|r| r.to_permission(None))
                .collect();
            if referring.is_empty() {
                continue;
            }
            let perms = referring.clone();
            self.settle(move || {
                let perms = perms.clone();
                async move {
                    self.call(
                        "RevokeSecurityGroupIngress",
                        c.revoke_security_group_ingress().group_id(group_id).set_ip_permissions(Some(perms)).send(),
                    )
                    .await
                    .map(drop)
                }
            })
            .await?;
        }

        // 3. Security groups.
        for group_id in inv.groups.iter().filter_map(|g| g.group_id()) {
            let deleted = self
                .settle(move || async move {
                    self.call("DeleteSecurityGroup", c.delete_security_group().group_id(group_id).send())
                        .await
                        .map(drop)
                })
                .await?;
            if deleted {
                report.deleted.push(group_id.to_owned());
            }
        }

        // 4. Route tables: disassociate from the subnets, then delete.
        for rt in &inv.route_tables {
            let Some(rt_id) = rt.route_table_id() else { continue };
            if rt.associations().iter().any(|a| a.main() == Some(true)) {
                // The VPC's main table goes with the VPC.
                continue;
            }
            for assoc in rt.associations().iter().filter_map(|a| a.route_table_association_id()) {
                self.settle(move || async move {
                    self.call("DisassociateRouteTable", c.disassociate_route_table().association_id(assoc).send())
                        .await
                        .map(drop)
                })
                .await?;
            }
            let deleted = self
                .settle(move || async move {
                    self.call("DeleteRouteTable", c.delete_route_table().route_table_id(rt_id).send()).await.map(drop)
                })
                .await?;
            if deleted {
                report.deleted.push(rt_id.to_owned());
            }
        }

        // 5. Internet gateways: detach, then delete.
        for gw in &inv.gateways {
            let Some(gw_id) = gw.internet_gateway_id() else { continue };
            for vpc_id in gw.attachments().iter().filter_map(|a| a.vpc_id()) {
                self.settle(move || async move {
                    self.call(
                        "DetachInternetGateway",
                        c.detach_internet_gateway().internet_gateway_id(gw_id).vpc_id(vpc_id).send(),
                    )
                    .await
                    .map(drop)
                })
                .await?;
            }
            let deleted = self
                .settle(move || async move {
                    self.call("DeleteInternetGateway", c.delete_internet_gateway().internet_gateway_id(gw_id).send())
                        .await
                        .map(drop)
                })
                .await?;
            if deleted {
                report.deleted.push(gw_id.to_owned());
            }
        }

        // 6. Subnets.
        for subnet_id in inv.subnets.iter().filter_map(|s| s.subnet_id()) {
            let deleted = self
                .settle(move || async move {
                    self.call("DeleteSubnet", c.delete_subnet().subnet_id(subnet_id).send()).await.map(drop)
                })
                .await?;
            if deleted {
                report.deleted.push(subnet_id.to_owned());
            }
        }

        // 7. VPCs (their main route table, default group and ACL go with them).
        for vpc_id in inv.vpcs.iter().filter_map(|v| v.vpc_id()) {
            let deleted = self
                .settle(
                    move || async move { self.call("DeleteVpc", c.delete_vpc().vpc_id(vpc_id).send()).await.map(drop) },
                )
                .await?;
            if deleted {
                report.deleted.push(vpc_id.to_owned());
            }
        }

        // 8. The key pair.
        for key_name in inv.key_pairs.iter().filter_map(|k| k.key_name()) {
            let deleted = self
                .settle(move || async move {
                    self.call("DeleteKeyPair", c.delete_key_pair().key_name(key_name).send()).await.map(drop)
                })
                .await?;
            if deleted {
                report.deleted.push(key_name.to_owned());
            }
        }

        info!(stack = %stack.tag_value(), deleted = ?report.deleted, "stack torn down");
        Ok(report)
    }

    /// Every resource with the stack's tag, plus those `known` names that
    /// lost their tag (looked up by id filter, so a missing id is no error).
    async fn full_inventory(
        &self,
        stack: &StackIdentity,
        known: Option<&NetworkStatus>,
    ) -> Result<Inventory, CloudError> {
        let c = &self.client;
        let mut inv = self.inventory(stack, known).await?;
        let known = known.cloned().unwrap_or_default();
        let missing = |known_ids: Vec<&String>, found: Vec<&str>| -> Vec<String> {
            known_ids.into_iter().filter(|k| !found.contains(&k.as_str())).cloned().collect()
        };

        let vpc_ids = missing(known.vpc_id.iter().collect(), inv.vpcs.iter().filter_map(|v| v.vpc_id()).collect());
        if !vpc_ids.is_empty() {
            let out = self.call("DescribeVpcs", c.describe_vpcs().filters(filter("vpc-id", vpc_ids)).send()).await?;
            inv.vpcs.extend(out.vpcs.unwrap_or_default());
        }
        if !inv.vpcs.is_empty() && inv.subnets.is_empty() && inv.route_tables.is_empty() && inv.groups.is_empty() {
            // The children were not looked up when no VPC carried the tag.
            self.describe_vpc_children(stack, &mut inv).await?;
        }
        let subnet_ids =
            missing(known.subnet_id.iter().collect(), inv.subnets.iter().filter_map(|s| s.subnet_id()).collect());
        if !subnet_ids.is_empty() {
            let out = self
                .call("DescribeSubnets", c.describe_subnets().filters(filter("subnet-id", subnet_ids)).send())
                .await?;
            inv.subnets.extend(out.subnets.unwrap_or_default());
        }
        let rt_ids = missing(
            known.route_table_id.iter().collect(),
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
        Ok(inv)
    }

    /// Polls until every instance in `ids` is terminated.
    async fn wait_terminated(&self, ids: &[String]) -> Result<(), CloudError> {
        let started = Instant::now();
        loop {
            let left: Vec<String> = self
                .describe_instances(vec![
                    filter("instance-id", ids.iter().cloned()),
                    filter("instance-state-name", PRESENT_STATES),
                ])
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
