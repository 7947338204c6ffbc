//! The executor of the engine's network steps: one function per kind of
//! [`NetworkStep`](crate::model::NetworkStep), each sending the EC2 calls of
//! its step and filling the ids it creates into the stack's
//! [`NetworkStatus`]. `Cloud::apply_network_step` (in `ec2.rs`) dispatches
//! a step to its function.

use std::collections::BTreeSet;
use std::future::Future;

use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::{AttributeBooleanValue, DomainType, ResourceType};
use tracing::{info, warn};

use crate::api::{NetworkStatus, Tier};
use crate::cloud::{AwsErrorKind, CloudError, StackIdentity};
use crate::model::network::{Duplicate, DuplicateKind, NatState, SubnetRole, ZoneChoice, DEFAULT_ROUTE};
use crate::model::{DesiredKeyPair, Rule};

use super::super::{filter, has_code, is_not_found, stack_filter, tag_spec, Claim, Ec2Cloud};
use super::inventory::{
    existing_rules, group_description, nat_client_token, nat_name, nat_state, nat_unusable, permission, role_name,
};

const AUTHORIZE: &str = "AuthorizeSecurityGroupIngress";
const DUPLICATE: &str = "InvalidPermission.Duplicate";

/// The id a step needs from an earlier one, or the error naming it.
fn need(id: &Option<String>, operation: &'static str, missing: &'static str) -> Result<String, CloudError> {
    id.clone().ok_or(CloudError::Incomplete { operation, missing })
}

/// Logs a resource the step created.
fn log_created(stack: &StackIdentity, what: &str, id: &str) {
    info!(stack = %stack.tag_value(), "created {what} {id}");
}

/// Awaits `create`; when EC2 refuses it with `conflict` (a retried create
/// whose first answer was lost: the resource exists already), awaits `find`
/// and adopts what it found. Nothing found keeps the create's error.
/// `find` sends nothing unless it is needed.
async fn create_or_adopt<T>(
    stack: &StackIdentity,
    what: &str,
    conflict: &str,
    create: impl Future<Output = Result<Option<T>, CloudError>>,
    find: impl Future<Output = Result<Option<T>, CloudError>>,
) -> Result<Option<T>, CloudError> {
    match create.await {
        Err(e) if has_code(&e, conflict) => {
            let Some(found) = find.await? else { return Err(e) };
            info!(stack = %stack.tag_value(), "{what} exists already: adopting it");
            Ok(Some(found))
        }
        made => made,
    }
}

impl Ec2Cloud {
    /// The stack's VPC with the CIDR block of the spec.
    pub(in crate::cloud::ec2) async fn create_vpc(
        &self,
        stack: &StackIdentity,
        cidr: &str,
        ids: &mut NetworkStatus,
    ) -> Result<(), CloudError> {
        let out = self
            .call(
                "CreateVpc",
                self.client
                    .create_vpc()
                    .cidr_block(cidr)
                    .tag_specifications(tag_spec(
                        ResourceType::Vpc,
                        stack,
                        &self.installation,
                        &stack.resource_name(),
                        None,
                    ))
                    .send(),
            )
            .await?;
        let id = out
            .vpc
            .and_then(|v| v.vpc_id)
            .ok_or(CloudError::Incomplete { operation: "CreateVpc", missing: "VpcId" })?;
        log_created(stack, "VPC", &id);
        ids.vpc_id = Some(id);
        Ok(())
    }

    /// Turns DNS support and DNS host names on in the VPC.
    pub(in crate::cloud::ec2) async fn enable_vpc_dns(&self, ids: &NetworkStatus) -> Result<(), CloudError> {
        let c = &self.client;
        let vpc_id = need(&ids.vpc_id, "ModifyVpcAttribute", "VPC id")?;
        let on = || AttributeBooleanValue::builder().value(true).build();
        self.call("ModifyVpcAttribute", c.modify_vpc_attribute().vpc_id(&vpc_id).enable_dns_support(on()).send())
            .await?;
        self.call("ModifyVpcAttribute", c.modify_vpc_attribute().vpc_id(&vpc_id).enable_dns_hostnames(on()).send())
            .await?;
        Ok(())
    }

    /// Creates the subnet of `role` (or adopts the stack's subnet holding
    /// its block) in the zone `zone` resolves to.
    pub(in crate::cloud::ec2) async fn create_subnet(
        &self,
        stack: &StackIdentity,
        role: SubnetRole,
        cidr: &str,
        zone: &ZoneChoice,
        ids: &mut NetworkStatus,
    ) -> Result<(), CloudError> {
        let c = &self.client;
        let vpc_id = need(&ids.vpc_id, "CreateSubnet", "VPC id")?;
        let az = self.resolve_zone(stack, zone, ids).await?;
        let subnet_name = role_name(stack, role);
        let create = async {
            let out = self
                .call(
                    "CreateSubnet",
                    c.create_subnet()
                        .vpc_id(&vpc_id)
                        .cidr_block(cidr)
                        .availability_zone(&az)
                        .tag_specifications(tag_spec(
                            ResourceType::Subnet,
                            stack,
                            &self.installation,
                            &subnet_name,
                            None,
                        ))
                        .send(),
                )
                .await?;
            Ok(out.subnet)
        };
        // The block is taken: the stack's subnet holding it.
        let find = async {
            let found = self
                .call(
                    "DescribeSubnets",
                    c.describe_subnets()
                        .filters(filter("vpc-id", [vpc_id.clone()]))
                        .filters(filter("cidr-block", [cidr.to_owned()]))
                        .filters(stack_filter(stack))
                        .send(),
                )
                .await?;
            // Never another installation's subnet.
            Ok(found.subnets.unwrap_or_default().into_iter().find(|s| self.claim(stack, s.tags()) != Claim::Theirs))
        };
        let what = format!("{role} subnet {cidr}");
        let subnet = create_or_adopt(stack, &what, "InvalidSubnet.Conflict", create, find)
            .await?
            .ok_or(CloudError::Incomplete { operation: "CreateSubnet", missing: "Subnet" })?;
        let id = subnet.subnet_id.ok_or(CloudError::Incomplete { operation: "CreateSubnet", missing: "SubnetId" })?;
        log_created(stack, &format!("{role} subnet in {az}"), &id);
        ids.availability_zone = Some(subnet.availability_zone.unwrap_or(az));
        match role {
            SubnetRole::Public => ids.subnet_id = Some(id),
            SubnetRole::Private => ids.private_subnet_id = Some(id),
        }
        Ok(())
    }

    /// The stack's internet gateway (attached by the next step).
    pub(in crate::cloud::ec2) async fn create_internet_gateway(
        &self,
        stack: &StackIdentity,
        ids: &mut NetworkStatus,
    ) -> Result<(), CloudError> {
        let out = self
            .call(
                "CreateInternetGateway",
                self.client
                    .create_internet_gateway()
                    .tag_specifications(tag_spec(
                        ResourceType::InternetGateway,
                        stack,
                        &self.installation,
                        &stack.resource_name(),
                        None,
                    ))
                    .send(),
            )
            .await?;
        let id = out
            .internet_gateway
            .and_then(|g| g.internet_gateway_id)
            .ok_or(CloudError::Incomplete { operation: "CreateInternetGateway", missing: "InternetGatewayId" })?;
        log_created(stack, "internet gateway", &id);
        ids.internet_gateway_id = Some(id);
        Ok(())
    }

    /// Attaches the internet gateway to the VPC.
    pub(in crate::cloud::ec2) async fn attach_internet_gateway(&self, ids: &NetworkStatus) -> Result<(), CloudError> {
        let vpc_id = need(&ids.vpc_id, "AttachInternetGateway", "VPC id")?;
        let gw_id = need(&ids.internet_gateway_id, "AttachInternetGateway", "internet gateway id")?;
        self.call(
            "AttachInternetGateway",
            self.client.attach_internet_gateway().internet_gateway_id(&gw_id).vpc_id(&vpc_id).send(),
        )
        .await?;
        Ok(())
    }

    /// The route table of `role` in the VPC.
    pub(in crate::cloud::ec2) async fn create_route_table(
        &self,
        stack: &StackIdentity,
        role: SubnetRole,
        ids: &mut NetworkStatus,
    ) -> Result<(), CloudError> {
        let vpc_id = need(&ids.vpc_id, "CreateRouteTable", "VPC id")?;
        let table_name = role_name(stack, role);
        let out = self
            .call(
                "CreateRouteTable",
                self.client
                    .create_route_table()
                    .vpc_id(&vpc_id)
                    .tag_specifications(tag_spec(
                        ResourceType::RouteTable,
                        stack,
                        &self.installation,
                        &table_name,
                        None,
                    ))
                    .send(),
            )
            .await?;
        let id = out
            .route_table
            .and_then(|r| r.route_table_id)
            .ok_or(CloudError::Incomplete { operation: "CreateRouteTable", missing: "RouteTableId" })?;
        log_created(stack, &format!("{role} route table"), &id);
        match role {
            SubnetRole::Public => ids.route_table_id = Some(id),
            SubnetRole::Private => ids.private_route_table_id = Some(id),
        }
        Ok(())
    }

    /// The public route table's default route to the internet gateway, in
    /// place of the stale one it `replaces`.
    pub(in crate::cloud::ec2) async fn route_to_gateway(
        &self,
        stack: &StackIdentity,
        replaces: Option<&str>,
        ids: &NetworkStatus,
    ) -> Result<(), CloudError> {
        let rt_id = need(&ids.route_table_id, "CreateRoute", "route table id")?;
        let gw_id = need(&ids.internet_gateway_id, "CreateRoute", "internet gateway id")?;
        self.set_default_route(stack, &rt_id, replaces, RouteTarget::Gateway(&gw_id)).await
    }

    /// Associates the route table of `role` with the subnet of that role.
    pub(in crate::cloud::ec2) async fn associate_route_table(
        &self,
        role: SubnetRole,
        ids: &NetworkStatus,
    ) -> Result<(), CloudError> {
        let operation = "AssociateRouteTable";
        let (rt_id, subnet_id) = match role {
            SubnetRole::Public => (
                need(&ids.route_table_id, operation, "public route table id")?,
                need(&ids.subnet_id, operation, "public subnet id")?,
            ),
            SubnetRole::Private => (
                need(&ids.private_route_table_id, operation, "private route table id")?,
                need(&ids.private_subnet_id, operation, "private subnet id")?,
            ),
        };
        self.call(operation, self.client.associate_route_table().route_table_id(&rt_id).subnet_id(&subnet_id).send())
            .await?;
        Ok(())
    }

    /// The Elastic IP of the NAT gateway.
    pub(in crate::cloud::ec2) async fn allocate_elastic_ip(
        &self,
        stack: &StackIdentity,
        ids: &mut NetworkStatus,
    ) -> Result<(), CloudError> {
        let out = self
            .call(
                "AllocateAddress",
                self.client
                    .allocate_address()
                    .domain(DomainType::Vpc)
                    .tag_specifications(tag_spec(
                        ResourceType::ElasticIp,
                        stack,
                        &self.installation,
                        &nat_name(stack),
                        None,
                    ))
                    .send(),
            )
            .await?;
        let id = out
            .allocation_id
            .ok_or(CloudError::Incomplete { operation: "AllocateAddress", missing: "AllocationId" })?;
        log_created(stack, "Elastic IP", &id);
        ids.elastic_ip_allocation_id = Some(id);
        Ok(())
    }

    /// The NAT gateway in the public subnet, with a ClientToken per
    /// `attempt` (one more for each gateway that failed). When EC2 refuses
    /// it (a quota, a parameter), the Elastic IP allocated for it is
    /// released at once: an unused address bills by the hour until the
    /// refusal is resolved. The next pass allocates one again.
    pub(in crate::cloud::ec2) async fn create_nat_gateway(
        &self,
        stack: &StackIdentity,
        attempt: u32,
        ids: &mut NetworkStatus,
    ) -> Result<(), CloudError> {
        let operation = "CreateNatGateway";
        let subnet_id = need(&ids.subnet_id, operation, "public subnet id")?;
        let allocation_id = need(&ids.elastic_ip_allocation_id, operation, "Elastic IP allocation id")?;
        let created = self
            .call(
                operation,
                self.client
                    .create_nat_gateway()
                    .subnet_id(&subnet_id)
                    .allocation_id(&allocation_id)
                    .client_token(nat_client_token(stack, &subnet_id, &allocation_id, attempt))
                    .tag_specifications(tag_spec(
                        ResourceType::Natgateway,
                        stack,
                        &self.installation,
                        &nat_name(stack),
                        None,
                    ))
                    .send(),
            )
            .await;
        let out = match created {
            Ok(out) => out,
            Err(e) if refused(&e) => {
                self.release_unused_address(stack, &allocation_id, ids).await;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let id = out
            .nat_gateway
            .and_then(|n| n.nat_gateway_id)
            .ok_or(CloudError::Incomplete { operation, missing: "NatGatewayId" })?;
        log_created(stack, "NAT gateway", &id);
        ids.nat_gateway_id = Some(id);
        ids.nat_gateway_state = Some(NatState::Pending.as_str().into());
        Ok(())
    }

    /// The private route table's default route to the NAT gateway, in
    /// place of the stale one it `replaces`; with `when_available`, only
    /// once the gateway is available (still pending: recorded as pending,
    /// and the route follows on a later pass).
    pub(in crate::cloud::ec2) async fn route_to_nat_gateway(
        &self,
        stack: &StackIdentity,
        replaces: Option<&str>,
        when_available: bool,
        ids: &mut NetworkStatus,
    ) -> Result<(), CloudError> {
        let rt_id = need(&ids.private_route_table_id, "CreateRoute", "private route table id")?;
        let nat_id = need(&ids.nat_gateway_id, "CreateRoute", "NAT gateway id")?;
        if when_available && !self.nat_available(stack, &nat_id).await? {
            ids.nat_gateway_state = Some(NatState::Pending.as_str().into());
            return Ok(());
        }
        self.set_default_route(stack, &rt_id, replaces, RouteTarget::NatGateway(&nat_id)).await?;
        ids.nat_gateway_state = Some(NatState::Available.as_str().into());
        Ok(())
    }

    /// Deletes a resource of the stack that the chosen network does not
    /// use; one already gone is no error.
    pub(in crate::cloud::ec2) async fn delete_duplicate(
        &self,
        stack: &StackIdentity,
        duplicate: &Duplicate,
    ) -> Result<(), CloudError> {
        let c = &self.client;
        warn!(stack = %stack.tag_value(), "deleting unused duplicate {} {}", duplicate.kind, duplicate.id);
        let id = duplicate.id.as_str();
        let done = match duplicate.kind {
            DuplicateKind::Vpc => self.call("DeleteVpc", c.delete_vpc().vpc_id(id).send()).await.map(drop),
            DuplicateKind::InternetGateway => self
                .call("DeleteInternetGateway", c.delete_internet_gateway().internet_gateway_id(id).send())
                .await
                .map(drop),
            DuplicateKind::RouteTable => {
                self.call("DeleteRouteTable", c.delete_route_table().route_table_id(id).send()).await.map(drop)
            }
            DuplicateKind::ElasticIp => {
                self.call("ReleaseAddress", c.release_address().allocation_id(id).send()).await.map(drop)
            }
        };
        match done {
            Err(e) if !is_not_found(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Creates the tier's security group (or adopts the one of its name in
    /// the VPC).
    pub(in crate::cloud::ec2) async fn create_security_group(
        &self,
        stack: &StackIdentity,
        tier: Tier,
        ids: &mut NetworkStatus,
    ) -> Result<(), CloudError> {
        let c = &self.client;
        let vpc_id = need(&ids.vpc_id, "CreateSecurityGroup", "VPC id")?;
        let group_name = format!("{}-{tier}", stack.resource_name());
        let create = async {
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
                            &self.installation,
                            &group_name,
                            Some(tier),
                        ))
                        .send(),
                )
                .await?;
            Ok(out.group_id)
        };
        // The name is taken: the group of that name in the VPC.
        let find = async {
            let found = self
                .call(
                    "DescribeSecurityGroups",
                    c.describe_security_groups()
                        .filters(filter("vpc-id", [vpc_id.clone()]))
                        .filters(filter("group-name", [group_name.clone()]))
                        .send(),
                )
                .await?;
            // Never another installation's (or another stack's) group.
            let ours = |g: &&aws_sdk_ec2::types::SecurityGroup| self.claim(stack, g.tags()) != Claim::Theirs;
            Ok(found.security_groups().iter().filter(ours).find_map(|g| g.group_id()).map(str::to_owned))
        };
        let what = format!("{tier} security group {group_name}");
        let id = create_or_adopt(stack, &what, "InvalidGroup.Duplicate", create, find)
            .await?
            .ok_or(CloudError::Incomplete { operation: "CreateSecurityGroup", missing: "GroupId" })?;
        log_created(stack, &format!("{tier} security group"), &id);
        ids.security_groups.insert(tier, id);
        Ok(())
    }

    /// Adds the tier's missing ingress rules to its group in one call. EC2
    /// refuses the whole batch when one of its rules exists already
    /// (InvalidPermission.Duplicate: a retried call, or a rule added
    /// meanwhile): then the group's rules are looked up and only the
    /// missing ones are added, and should a rule still come back as a
    /// duplicate (a look-up lagging an add), each rule is added on its own.
    pub(in crate::cloud::ec2) async fn authorize(
        &self,
        stack: &StackIdentity,
        tier: Tier,
        rules: &[(Rule, &'static str)],
        ids: &NetworkStatus,
    ) -> Result<(), CloudError> {
        let group_id = need(&ids.security_groups.get(&tier).cloned(), AUTHORIZE, "security group of the tier")?;
        match self.authorize_batch(&group_id, rules, ids).await {
            Err(e) if has_code(&e, DUPLICATE) => {}
            done => return done,
        }
        let existing = self.group_rules(&group_id, ids).await?;
        let missing: Vec<(Rule, &'static str)> = rules.iter().filter(|(r, _)| !existing.contains(r)).cloned().collect();
        info!(stack = %stack.tag_value(), %tier, "{} of {} rules exist already", rules.len() - missing.len(), rules.len());
        match self.authorize_batch(&group_id, &missing, ids).await {
            Err(e) if has_code(&e, DUPLICATE) => {}
            done => return done,
        }
        for rule in &missing {
            match self.authorize_batch(&group_id, std::slice::from_ref(rule), ids).await {
                Err(e) if has_code(&e, DUPLICATE) => {}
                done => done?,
            }
        }
        Ok(())
    }

    /// One AuthorizeSecurityGroupIngress with every rule of `rules` (none: no call).
    async fn authorize_batch(
        &self,
        group_id: &str,
        rules: &[(Rule, &'static str)],
        ids: &NetworkStatus,
    ) -> Result<(), CloudError> {
        if rules.is_empty() {
            return Ok(());
        }
        let perms = rules
            .iter()
            .map(|(rule, description)| permission(AUTHORIZE, rule, &ids.security_groups, Some(description)))
            .collect::<Result<Vec<_>, _>>()?;
        self.call(
            AUTHORIZE,
            self.client.authorize_security_group_ingress().group_id(group_id).set_ip_permissions(Some(perms)).send(),
        )
        .await
        .map(drop)
    }

    /// The ingress rules a group has now (DescribeSecurityGroups by id filter).
    async fn group_rules(&self, group_id: &str, ids: &NetworkStatus) -> Result<BTreeSet<Rule>, CloudError> {
        let out = self
            .call(
                "DescribeSecurityGroups",
                self.client.describe_security_groups().filters(filter("group-id", [group_id])).send(),
            )
            .await?;
        Ok(out
            .security_groups()
            .iter()
            .filter(|g| g.group_id() == Some(group_id))
            .flat_map(|g| existing_rules(g, &ids.security_groups))
            .collect())
    }

    /// Removes an ingress rule the spec does not ask for; one already gone
    /// is no error.
    pub(in crate::cloud::ec2) async fn revoke(
        &self,
        stack: &StackIdentity,
        tier: Tier,
        rule: &Rule,
        ids: &NetworkStatus,
    ) -> Result<(), CloudError> {
        let operation = "RevokeSecurityGroupIngress";
        let group_id = need(&ids.security_groups.get(&tier).cloned(), operation, "security group of the tier")?;
        let perm = permission(operation, rule, &ids.security_groups, None)?;
        info!(stack = %stack.tag_value(), %tier, "revoking an ingress rule the spec does not ask for: {rule} from {}", rule.source);
        let done = self
            .call(
                operation,
                self.client.revoke_security_group_ingress().group_id(&group_id).ip_permissions(perm).send(),
            )
            .await;
        match done {
            Err(e) if has_code(&e, "InvalidPermission.NotFound") => Ok(()),
            other => other.map(drop),
        }
    }

    /// Imports the stack's key pair. One of its name that exists already
    /// (an earlier import whose answer was lost, not yet listed by the
    /// look-up) is recorded: the next look-up compares its public key and
    /// re-imports it when it holds another.
    pub(in crate::cloud::ec2) async fn import_key_pair(
        &self,
        stack: &StackIdentity,
        key: &DesiredKeyPair,
        ids: &mut NetworkStatus,
    ) -> Result<(), CloudError> {
        match self.import_public_key(stack, key).await {
            Err(e) if has_code(&e, "InvalidKeyPair.Duplicate") => {
                info!(stack = %stack.tag_value(), "key pair {} exists already", key.name);
            }
            done => done?,
        }
        ids.key_pair_name = Some(key.name.clone());
        Ok(())
    }

    /// Replaces a key pair that holds another public key: deletes it and
    /// imports the current key under its name.
    pub(in crate::cloud::ec2) async fn reimport_key_pair(
        &self,
        stack: &StackIdentity,
        key: &DesiredKeyPair,
        ids: &mut NetworkStatus,
    ) -> Result<(), CloudError> {
        warn!(stack = %stack.tag_value(), "key pair {} holds another public key; importing the current one", key.name);
        self.call("DeleteKeyPair", self.client.delete_key_pair().key_name(&key.name).send()).await?;
        self.import_public_key(stack, key).await?;
        ids.key_pair_name = Some(key.name.clone());
        Ok(())
    }

    /// Points a table's default route at `target`: CreateRoute when it has
    /// none, ReplaceRoute when it has a stale one (`replaces`), so the
    /// subnet is never without a default route. A stale route gone by now
    /// (InvalidRoute.NotFound) is created instead.
    async fn set_default_route(
        &self,
        stack: &StackIdentity,
        rt_id: &str,
        replaces: Option<&str>,
        target: RouteTarget<'_>,
    ) -> Result<(), CloudError> {
        if let Some(old) = replaces {
            warn!(stack = %stack.tag_value(), "replacing the default route of {rt_id} to {old} with one to {target}");
            let request = self.client.replace_route().route_table_id(rt_id).destination_cidr_block(DEFAULT_ROUTE);
            let request = match target {
                RouteTarget::Gateway(id) => request.gateway_id(id),
                RouteTarget::NatGateway(id) => request.nat_gateway_id(id),
            };
            match self.call("ReplaceRoute", request.send()).await {
                Err(e) if has_code(&e, "InvalidRoute.NotFound") => {}
                done => return done.map(drop),
            }
        }
        let request = self.client.create_route().route_table_id(rt_id).destination_cidr_block(DEFAULT_ROUTE);
        let request = match target {
            RouteTarget::Gateway(id) => request.gateway_id(id),
            RouteTarget::NatGateway(id) => request.nat_gateway_id(id),
        };
        self.call("CreateRoute", request.send()).await.map(drop)
    }

    /// Releases the Elastic IP of a NAT gateway EC2 refused to create and
    /// forgets it. A release that fails is logged: the address carries the
    /// stack's tags, so the next pass's look-up finds it and teardown
    /// releases it.
    async fn release_unused_address(&self, stack: &StackIdentity, allocation_id: &str, ids: &mut NetworkStatus) {
        let done = self.call("ReleaseAddress", self.client.release_address().allocation_id(allocation_id).send()).await;
        match done {
            Ok(_) => {
                info!(stack = %stack.tag_value(), "released Elastic IP {allocation_id}: its NAT gateway was refused");
                ids.elastic_ip_allocation_id = None;
            }
            Err(e) if is_not_found(&e) => ids.elastic_ip_allocation_id = None,
            Err(e) => warn!(stack = %stack.tag_value(), error = %e, "could not release Elastic IP {allocation_id}"),
        }
    }

    /// Whether a NAT gateway is available: false while it is pending (or not
    /// yet visible, right after its creation). A gateway that failed (or is
    /// being deleted) is an error: see [`nat_unusable`].
    async fn nat_available(&self, stack: &StackIdentity, nat_id: &str) -> Result<bool, CloudError> {
        let operation = "DescribeNatGateways";
        let out = match self.call(operation, self.client.describe_nat_gateways().nat_gateway_ids(nat_id).send()).await {
            Ok(out) => out,
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        let Some(nat) = out.nat_gateways().iter().find(|n| n.nat_gateway_id() == Some(nat_id)) else {
            return Ok(false);
        };
        match nat_state(nat) {
            Some(NatState::Available) => Ok(true),
            Some(NatState::Pending) | None => {
                info!(stack = %stack.tag_value(), "NAT gateway {nat_id} is pending: the private subnet's route to it follows on a later reconcile");
                Ok(false)
            }
            Some(state) => Err(nat_unusable(nat_id, state, nat)),
        }
    }

    /// ImportKeyPair of the key's public half, tagged.
    async fn import_public_key(&self, stack: &StackIdentity, key: &DesiredKeyPair) -> Result<(), CloudError> {
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
                .tag_specifications(tag_spec(ResourceType::KeyPair, stack, &self.installation, &key.name, None))
                .send(),
        )
        .await?;
        info!(stack = %stack.tag_value(), "imported key pair {}", key.name);
        Ok(())
    }
}

/// Where a default route leads.
#[derive(Clone, Copy, Debug)]
enum RouteTarget<'a> {
    Gateway(&'a str),
    NatGateway(&'a str),
}

impl std::fmt::Display for RouteTarget<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteTarget::Gateway(id) | RouteTarget::NatGateway(id) => f.write_str(id),
        }
    }
}

/// True when EC2 answered and refused the request: nothing was created.
/// No answer, throttling or a server error leave it open whether the
/// request took effect.
fn refused(e: &CloudError) -> bool {
    matches!(e, CloudError::Api { kind, .. } if !matches!(kind, AwsErrorKind::Unavailable | AwsErrorKind::Throttled))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: &str) -> CloudError {
        CloudError::Api {
            operation: "CreateNatGateway",
            code: code.into(),
            message: String::new(),
            kind: AwsErrorKind::from_code(code),
        }
    }

    #[test]
    fn only_a_refusal_tells_that_nothing_was_created() {
        assert!(refused(&api("NatGatewayLimitExceeded")));
        assert!(refused(&api("InvalidParameterValue")));
        assert!(refused(&api("UnauthorizedOperation")));
        assert!(!refused(&api("InternalError")));
        assert!(!refused(&api("RequestLimitExceeded")));
        assert!(!refused(&CloudError::Transport { operation: "CreateNatGateway", message: "timeout".into() }));
    }
}
