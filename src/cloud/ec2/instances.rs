//! The stack's instances: found by tag, launched with a ClientToken after a
//! look-up, so a lost RunInstances answer never doubles a tier.

use std::net::Ipv4Addr;

use aws_sdk_ec2::primitives::DateTimeFormat;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, Instance, InstanceMetadataEndpointState,
    InstanceMetadataOptionsRequest, InstanceNetworkInterfaceSpecification, InstanceType, ResourceType, VolumeType,
};
use tracing::{info, warn};

use crate::api::{NetworkStatus, Tier, TIER_LABEL};
use crate::cloud::{AwsErrorKind, CloudError, StackIdentity};
use crate::model::network::SubnetRole;
use crate::model::{AttachedVolume, AttachmentState, InstanceLaunch, InstanceState, ObservedInstance, StateReason};

use super::images::RootDevice;
use super::{
    filter, is_not_found, sort_claimed, stack_filter, tag_filter, tag_spec, tag_value, Ec2Cloud, FRESH_ID_RETRY_DELAY,
    MAX_ATTEMPTS,
};

use InstanceState::{Pending, Running, ShuttingDown, Stopped, Stopping, Terminated};

/// States of an instance that still exists (or is on its way out).
pub(super) const PRESENT_STATES: [InstanceState; 5] = [Pending, Running, Stopping, Stopped, ShuttingDown];
/// States `observe` lists: the present ones and terminated, whose
/// ClientTokens stay taken (EC2 lists a terminated instance for about an hour).
pub(super) const OBSERVED_STATES: [InstanceState; 6] = [Pending, Running, Stopping, Stopped, ShuttingDown, Terminated];
/// States of an instance that can serve its tier.
pub(super) const LIVE_STATES: [InstanceState; 4] = [Pending, Running, Stopping, Stopped];

/// `instance-state-name` filter: instances in one of `states`.
pub(super) fn state_filter(states: &[InstanceState]) -> Filter {
    filter("instance-state-name", states.iter().map(|s| s.as_str()))
}

/// Where an instance sits, beyond what the engine looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Placement {
    pub subnet_id: Option<String>,
    /// The instance serves metadata without an IMDSv2 session token
    /// (`HttpTokens: optional`): one the operator adopted, not launched.
    pub imds_v1_allowed: bool,
}

/// True when an instance's metadata options let IMDSv1 through: DescribeInstances
/// shows `HttpTokens: optional` (an instance the operator launched shows
/// `required`).
pub(super) fn allows_imds_v1(inst: &Instance) -> bool {
    inst.metadata_options().and_then(|m| m.http_tokens()) == Some(&HttpTokensState::Optional)
}

/// The instances whose metadata options have to be changed to require
/// IMDSv2: those that allow IMDSv1 and are running or stopped (the states
/// ModifyInstanceMetadataOptions accepts).
pub(super) fn needing_imds_v2(instances: &[(ObservedInstance, Placement)]) -> Vec<String> {
    instances
        .iter()
        .filter(|(i, p)| p.imds_v1_allowed && matches!(i.state, Running | Stopped))
        .map(|(i, _)| i.id.clone())
        .collect()
}

/// An EC2 instance as the engine sees it; None without an id or a known state.
pub(super) fn observed(inst: &Instance) -> Option<(ObservedInstance, Placement)> {
    let id = inst.instance_id()?.to_owned();
    let state = InstanceState::parse(inst.state()?.name()?.as_str())?;
    let ip = |s: Option<&str>| s.and_then(|s| s.parse::<Ipv4Addr>().ok());
    let observed = ObservedInstance {
        id,
        tier: tag_value(inst.tags(), TIER_LABEL).and_then(Tier::parse),
        state,
        private_ip: ip(inst.private_ip_address()),
        public_ip: ip(inst.public_ip_address()),
        ami: inst.image_id().unwrap_or_default().to_owned(),
        instance_type: inst.instance_type().map(|t| t.as_str().to_owned()).unwrap_or_default(),
        launch_time: inst.launch_time().and_then(|t| t.fmt(DateTimeFormat::DateTime).ok()).unwrap_or_default(),
        client_token: inst.client_token().filter(|t| !t.is_empty()).map(str::to_owned),
        zone: inst.placement().and_then(|p| p.availability_zone()).map(str::to_owned),
        volumes: inst
            .block_device_mappings()
            .iter()
            .filter(|m| m.device_name().is_some() && m.device_name() != inst.root_device_name())
            .filter_map(|m| {
                let ebs = m.ebs()?;
                Some(AttachedVolume {
                    device: m.device_name()?.to_owned(),
                    volume_id: ebs.volume_id()?.to_owned(),
                    status: AttachmentState::parse(ebs.status().map(|s| s.as_str()).unwrap_or_default()),
                })
            })
            .collect(),
        state_reason: inst.state_reason().and_then(|r| {
            let code = r.code().filter(|c| !c.is_empty())?;
            Some(StateReason { code: code.to_owned(), message: r.message().unwrap_or_default().to_owned() })
        }),
    };
    Some((
        observed,
        Placement { subnet_id: inst.subnet_id().map(str::to_owned), imds_v1_allowed: allows_imds_v1(inst) },
    ))
}

impl Ec2Cloud {
    /// The instances among `found` (looked up by the stack's owner tag)
    /// that are the stack's: another installation's are left out, and
    /// those an older operator launched without the installation tag are
    /// adopted (tagged), unless they are terminated or on their way out.
    /// Also says whether any was adopted.
    pub(super) async fn claim_instances<'a>(
        &self,
        stack: &StackIdentity,
        found: Vec<&'a Instance>,
    ) -> (Vec<&'a Instance>, bool) {
        let mut adopt = Vec::new();
        let mut mine = found;
        /// Its id, unless it is terminated or on its way out (left untagged).
        fn staying<'x>(inst: &'x &Instance) -> Option<&'x str> {
            let state = inst.state().and_then(|s| s.name()).map(|n| n.as_str()).and_then(InstanceState::parse);
            inst.instance_id().filter(|_| !matches!(state, Some(Terminated | ShuttingDown)))
        }
        sort_claimed(&mut mine, &mut adopt, |inst| self.claim(stack, inst.tags()), staying);
        let adopted = !adopt.is_empty();
        self.adopt(stack, adopt).await;
        (mine, adopted)
    }

    /// DescribeInstances with `filters`, every page.
    pub(super) async fn describe_instances(&self, filters: Vec<Filter>) -> Result<Vec<Instance>, CloudError> {
        self.all_pages(
            "DescribeInstances",
            |token| {
                self.client
                    .describe_instances()
                    .set_filters(Some(filters.clone()))
                    .max_results(1000)
                    .set_next_token(token)
                    .send()
            },
            |page| {
                let found =
                    page.reservations.unwrap_or_default().into_iter().flat_map(|r| r.instances.unwrap_or_default());
                (found.collect(), page.next_token)
            },
        )
        .await
    }

    /// The instances EC2 knows by these ids, in any state and whatever their
    /// tags: DescribeInstances with the `instance-id` filter, which leaves an
    /// unknown id out (InstanceIds would fail the whole call with NotFound
    /// for one). An id missing from the answer may be one launched moments
    /// ago: it is asked for again, a second apart, within the same window
    /// as a fresh id's NotFound ([`MAX_ATTEMPTS`] looks in all).
    pub(super) async fn describe_by_id(&self, ids: &[String]) -> Result<Vec<ObservedInstance>, CloudError> {
        let mut out: Vec<ObservedInstance> = Vec::new();
        let mut missing: Vec<String> = ids.to_vec();
        for attempt in 0..MAX_ATTEMPTS {
            if missing.is_empty() {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(FRESH_ID_RETRY_DELAY).await;
            }
            let found = match self.describe_instances(vec![filter("instance-id", missing.iter().cloned())]).await {
                Ok(found) => found,
                // An endpoint that answers NotFound to a filter: that is its answer.
                Err(e) if is_not_found(&e) => break,
                Err(e) => return Err(e),
            };
            // Another installation's instance is not this stack's, whatever
            // was recorded: left out, and not asked for again.
            let (theirs, found): (Vec<&Instance>, Vec<&Instance>) = found.iter().partition(|i| self.foreign(i.tags()));
            missing.retain(|id| !theirs.iter().any(|i| i.instance_id() == Some(id.as_str())));
            let found: Vec<ObservedInstance> =
                found.into_iter().filter_map(observed).map(|(i, _)| i).filter(|i| missing.contains(&i.id)).collect();
            missing.retain(|id| !found.iter().any(|i| i.id == *id));
            out.extend(found);
        }
        Ok(out)
    }

    /// Makes instances of the stack that allow IMDSv1 (adopted ones,
    /// launched by someone else) require IMDSv2 session tokens, as the
    /// operator's own launches do: ModifyInstanceMetadataOptions with
    /// `HttpTokens: required`. A refusal is logged, not fatal: the stack
    /// keeps running (an IAM policy from before this call refuses it with
    /// UnauthorizedOperation until it is updated).
    pub(super) async fn require_imds_v2(&self, stack: &StackIdentity, instance_ids: &[String]) {
        for id in instance_ids {
            let request = self
                .client
                .modify_instance_metadata_options()
                .instance_id(id)
                .http_tokens(HttpTokensState::Required)
                .send();
            match self.call("ModifyInstanceMetadataOptions", request).await {
                Ok(_) => {
                    info!(stack = %stack.tag_value(), instance = %id, "instance allowed IMDSv1: it now requires IMDSv2")
                }
                Err(e) => {
                    warn!(stack = %stack.tag_value(), instance = %id, error = %e, "could not make the instance require IMDSv2")
                }
            }
        }
    }

    /// Adopts the tier's oldest live instance, or launches one.
    pub(super) async fn adopt_or_launch(
        &self,
        stack: &StackIdentity,
        network: &NetworkStatus,
        launch: &InstanceLaunch,
    ) -> Result<ObservedInstance, CloudError> {
        let tier = launch.tier;
        let existing = self
            .describe_instances(vec![
                stack_filter(stack),
                tag_filter(TIER_LABEL, tier.as_str()),
                state_filter(&LIVE_STATES),
            ])
            .await?;
        let (existing, _) = self.claim_instances(stack, existing.iter().collect()).await;
        let mut live: Vec<(ObservedInstance, Placement)> = existing.into_iter().filter_map(observed).collect();
        live.sort_by(|(a, _), (b, _)| a.launch_time.cmp(&b.launch_time).then(a.id.cmp(&b.id)));
        if let Some(oldest) = live.into_iter().next() {
            info!(stack = %stack.tag_value(), %tier, instance = %oldest.0.id, "adopting the tier's existing instance");
            self.require_imds_v2(stack, &needing_imds_v2(std::slice::from_ref(&oldest))).await;
            return Ok(oldest.0);
        }

        let subnet_id = match launch.subnet {
            SubnetRole::Public => network.subnet_id.as_deref(),
            SubnetRole::Private => network.private_subnet_id.as_deref(),
        }
        .ok_or(CloudError::Incomplete {
            operation: "RunInstances",
            missing: "subnet of the tier in the network status",
        })?;
        let group_id = network
            .security_groups
            .get(&tier)
            .ok_or(CloudError::Incomplete { operation: "RunInstances", missing: "security group of the tier" })?;
        let key_name = network.key_pair_name.clone().unwrap_or_else(|| stack.resource_name());
        let name = format!("{}-{tier}", stack.resource_name());
        let token = stack.client_token(tier, launch.replacement);
        let ami = launch.ami.as_deref().ok_or(CloudError::Incomplete {
            operation: "RunInstances",
            missing: "AMI of the tier (not looked up yet)",
        })?;
        let root_volume =
            self.image_facts(ami).await?.and_then(|i| i.root).map(|r| r.encrypted_gp3(launch.kms_key_id.as_deref()));
        let nic = InstanceNetworkInterfaceSpecification::builder()
            .device_index(0)
            .subnet_id(subnet_id)
            .groups(group_id)
            .associate_public_ip_address(launch.public_ip)
            .delete_on_termination(true)
            .build();
        let out = self
            .call(
                "RunInstances",
                self.client
                    .run_instances()
                    .image_id(ami)
                    .instance_type(InstanceType::from(launch.instance_type.as_str()))
                    .min_count(1)
                    .max_count(1)
                    .key_name(key_name)
                    .client_token(&token)
                    .set_user_data(launch.user_data.as_ref().map(|u| base64_encode(u.0.as_bytes())))
                    .network_interfaces(nic)
                    .metadata_options(instance_metadata_options())
                    .set_block_device_mappings(root_volume.map(|m| vec![m]))
                    .tag_specifications(tag_spec(ResourceType::Instance, stack, &self.installation, &name, Some(tier)))
                    .tag_specifications(tag_spec(ResourceType::Volume, stack, &self.installation, &name, Some(tier)))
                    .send(),
            )
            .await
            .map_err(|e| launch_error(e, tier, &launch.instance_type, &token))?;
        let (inst, _) = out
            .instances()
            .iter()
            .find_map(observed)
            .ok_or(CloudError::Incomplete { operation: "RunInstances", missing: "instance" })?;
        if inst.state.is_alive() {
            info!(stack = %stack.tag_value(), %tier, instance = %inst.id, "launched instance");
        } else {
            // The token's first use launched an instance that has since gone:
            // recorded as it is, the next pass launches with the next number.
            warn!(stack = %stack.tag_value(), %tier, instance = %inst.id, %token, "ClientToken answered with a {} instance", inst.state.as_str());
        }
        Ok(inst)
    }
}

impl RootDevice {
    /// The root volume as launched: gp3, encrypted (with `kms_key_id`, else
    /// the account's default EBS key), deleted with the instance, as large
    /// as the AMI's.
    fn encrypted_gp3(&self, kms_key_id: Option<&str>) -> BlockDeviceMapping {
        let ebs = EbsBlockDevice::builder()
            .volume_type(VolumeType::Gp3)
            .encrypted(true)
            .set_kms_key_id(kms_key_id.map(str::to_owned))
            .delete_on_termination(true)
            .set_volume_size(self.size_gib)
            .build();
        BlockDeviceMapping::builder().device_name(&self.name).ebs(ebs).build()
    }
}

/// Instance metadata only with IMDSv2 session tokens, one network hop: a
/// container behind the host's bridge (a second hop) cannot fetch the
/// instance's credentials.
fn instance_metadata_options() -> InstanceMetadataOptionsRequest {
    InstanceMetadataOptionsRequest::builder()
        .http_endpoint(InstanceMetadataEndpointState::Enabled)
        .http_tokens(HttpTokensState::Required)
        .http_put_response_hop_limit(1)
        .build()
}

/// RunInstances errors that need words of their own: no capacity (transient)
/// and a ClientToken first used with other parameters.
fn launch_error(e: CloudError, tier: Tier, instance_type: &str, token: &str) -> CloudError {
    match e {
        CloudError::Api { code, message, .. } if code == "IdempotentParameterMismatch" => {
            CloudError::TokenReused { tier, token: token.to_owned(), message }
        }
        CloudError::Api { code, message, kind: AwsErrorKind::Capacity, .. } => {
            CloudError::Capacity { tier, instance_type: instance_type.to_owned(), code, message }
        }
        other => other,
    }
}

/// Standard base64 with padding, as RunInstances wants user data.
fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::{InstanceMetadataOptionsResponse, InstanceStateName};

    fn instance(id: &str, state: InstanceStateName, tokens: Option<HttpTokensState>) -> Instance {
        let mut b =
            Instance::builder().instance_id(id).state(aws_sdk_ec2::types::InstanceState::builder().name(state).build());
        if let Some(t) = tokens {
            b = b.metadata_options(InstanceMetadataOptionsResponse::builder().http_tokens(t).build());
        }
        b.build()
    }

    #[test]
    fn only_instances_that_allow_imds_v1_are_made_to_require_v2() {
        let all: Vec<(ObservedInstance, Placement)> = [
            instance("i-adopted", InstanceStateName::Running, Some(HttpTokensState::Optional)),
            instance("i-stopped", InstanceStateName::Stopped, Some(HttpTokensState::Optional)),
            instance("i-pending", InstanceStateName::Pending, Some(HttpTokensState::Optional)),
            instance("i-gone", InstanceStateName::Terminated, Some(HttpTokensState::Optional)),
            instance("i-ours", InstanceStateName::Running, Some(HttpTokensState::Required)),
            instance("i-unknown", InstanceStateName::Running, None),
        ]
        .iter()
        .filter_map(observed)
        .collect();
        assert_eq!(needing_imds_v2(&all), ["i-adopted", "i-stopped"]);
    }

    #[test]
    fn the_root_volume_is_encrypted_with_the_key_asked_for() {
        let root = RootDevice { name: "/dev/sda1".into(), size_gib: Some(8) };
        let default_key = root.encrypted_gp3(None);
        let ebs = default_key.ebs().expect("an EBS mapping");
        assert_eq!((ebs.encrypted(), ebs.kms_key_id()), (Some(true), None));
        let own = root.encrypted_gp3(Some("alias/ebs"));
        let ebs = own.ebs().expect("an EBS mapping");
        assert_eq!((ebs.encrypted(), ebs.kms_key_id()), (Some(true), Some("alias/ebs")));
        assert_eq!(own.device_name(), Some("/dev/sda1"));
    }

    #[test]
    fn a_state_reason_is_read_with_its_code_and_message() {
        use aws_sdk_ec2::types::{InstanceState as Ec2State, InstanceStateName, StateReason as Ec2Reason};
        let inst = Instance::builder()
            .instance_id("i-1")
            .state(Ec2State::builder().name(InstanceStateName::Terminated).build())
            .state_reason(
                Ec2Reason::builder()
                    .code("Client.InternalError")
                    .message("Client.InternalError: Client error on launch")
                    .build(),
            )
            .build();
        let (seen, _) = observed(&inst).expect("an instance");
        let reason = seen.state_reason.expect("its state reason");
        assert_eq!(reason.code, "Client.InternalError");
        assert_eq!(reason.message, "Client.InternalError: Client error on launch");
        let blank = Instance::builder()
            .instance_id("i-2")
            .state(Ec2State::builder().name(InstanceStateName::Running).build())
            .state_reason(Ec2Reason::builder().code("").build())
            .build();
        assert_eq!(observed(&blank).expect("an instance").0.state_reason, None);
    }

    #[test]
    fn state_filters_name_the_states_as_ec2_spells_them() {
        let values = |states: &[InstanceState]| state_filter(states).values().to_vec();
        assert_eq!(values(&PRESENT_STATES), ["pending", "running", "stopping", "stopped", "shutting-down"]);
        assert_eq!(
            values(&OBSERVED_STATES),
            ["pending", "running", "stopping", "stopped", "shutting-down", "terminated"]
        );
        assert_eq!(values(&LIVE_STATES), ["pending", "running", "stopping", "stopped"]);
        assert_eq!(state_filter(&LIVE_STATES).name(), Some("instance-state-name"));
    }
}
