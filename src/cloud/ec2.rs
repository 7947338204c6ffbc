//! [`Ec2Cloud`]: the [`Cloud`] trait over aws-sdk-ec2.
//!
//! - `network`: looks the VPC, subnets, gateways, route tables, security
//!   groups and key pair up by tag; `network::inventory` chooses among what
//!   it found (no EC2 call); `network::steps` carries out the engine's
//!   network steps, one function per kind of step, dispatched by
//!   `Cloud::apply_network_step` below.
//! - `images`: DescribeImages: the newest Ubuntu image from Canonical, an
//!   AMI's root device and operating system family (Windows, Amazon Linux,
//!   RHEL and SUSE are refused before launch).
//! - `instances`: DescribeInstances by tag, RunInstances with a ClientToken
//!   after a look-up by tag.
//! - `volumes`: the database's data volume: DescribeVolumes by tag,
//!   CreateVolume with a ClientToken, AttachVolume, DetachVolume.
//! - `snapshots`: the data volume's snapshots: CreateSnapshot with the
//!   stack's tags and a slot tag, DescribeSnapshots by tag or id,
//!   DeleteSnapshot.
//! - `teardown`: finds what a teardown deletes and carries out its steps.
//! - `inventory`: the region's instances and security groups, looked up
//!   once for every stack this process observes (filtered on the owner tag's
//!   key) and shared for a short window; any change this process makes in
//!   EC2 starts a new look-up.
//!
//! Every EC2 request goes through [`Ec2Cloud::call`], which counts it, logs
//! its operation name at debug level, and turns an SDK error into a
//! [`CloudError`] that carries the AWS error code and message.
//!
//! Retries happen inside the SDK client: throttling, 5xx and transport
//! errors by its standard policy ([`MAX_ATTEMPTS`]), and a `*.NotFound` for
//! an id EC2 created moments ago by [`FreshIdRetry`].

mod images;
mod instances;
pub mod inventory;
mod network;
mod snapshots;
mod teardown;
mod volumes;

pub use volumes::{volume_token, ROLE_TAG};

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::{ErrorKind, RetryConfig};
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::config::interceptors::InterceptorContext;
use aws_sdk_ec2::config::retry::{ClassifyRetry, RetryAction};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{Filter, Instance, ResourceType, SecurityGroup, Tag, TagSpecification};
use aws_sdk_ec2::Client;
use tracing::{debug, info, warn};

use crate::api::{
    NetworkStatus, ProvidedNetwork, ResolvedAmi, Tier, MANAGED_BY_TAG, MANAGER, NAMESPACE_LABEL, STACK_LABEL,
    TIER_LABEL,
};
use crate::model::volume::DATA_DEVICE;
use crate::model::{
    InstanceLaunch, NetworkStep, ObservedInfra, ObservedInstance, ObservedSnapshot, ObservedVolume, Slot,
    TeardownInventory, TeardownStep,
};

use super::{
    AwsErrorKind, Cloud, CloudError, DestroyReport, Installation, NetworkLookup, StackIdentity, INSTALLATION_TAG,
    OWNER_TAG,
};

/// Attempts per request (first try included) for throttling, 5xx and
/// transport errors, with the SDK's exponential backoff and jitter.
pub const MAX_ATTEMPTS: u32 = 5;

/// Pause between the attempts [`FreshIdRetry`] asks for: with
/// [`MAX_ATTEMPTS`], a fresh id gets about four seconds to show up.
pub const FRESH_ID_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Retry classifier for EC2's eventual consistency: for seconds after a
/// create, a call naming the new id may answer `*.NotFound`
/// (`InvalidSubnetID.NotFound` from RunInstances, `InvalidGroup.NotFound`
/// from AuthorizeSecurityGroupIngress, `InvalidInstanceID.NotFound` from
/// DescribeInstances by id). Such an answer is retried, a second apart,
/// within the client's attempts. Only operations that name ids the operator
/// just created or recorded are retried: for deletions and look-ups by
/// filter a NotFound is the answer. An unknown AMI is the user's, not EC2's
/// delay, and is never retried.
#[derive(Clone, Copy, Debug, Default)]
pub struct FreshIdRetry;

impl ClassifyRetry for FreshIdRetry {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let Some(Err(err)) = ctx.output_or_error() else { return RetryAction::NoActionIndicated };
        let Some(op) = err.as_operation_error() else { return RetryAction::NoActionIndicated };
        use aws_sdk_ec2::operation as o;
        // The error code, when the failed operation is one that names ids
        // created moments before.
        macro_rules! code_of {
            ($($t:ty),* $(,)?) => {
                'found: {
                    $(if let Some(e) = op.downcast_ref::<$t>() { break 'found e.code(); })*
                    None
                }
            };
        }
        let code = code_of!(
            o::run_instances::RunInstancesError,
            o::describe_instances::DescribeInstancesError,
            o::create_subnet::CreateSubnetError,
            o::create_security_group::CreateSecurityGroupError,
            o::authorize_security_group_ingress::AuthorizeSecurityGroupIngressError,
            o::create_route_table::CreateRouteTableError,
            o::create_route::CreateRouteError,
            o::replace_route::ReplaceRouteError,
            o::associate_route_table::AssociateRouteTableError,
            o::attach_internet_gateway::AttachInternetGatewayError,
            o::create_nat_gateway::CreateNatGatewayError,
            o::modify_vpc_attribute::ModifyVpcAttributeError,
            o::attach_volume::AttachVolumeError,
            o::describe_volumes::DescribeVolumesError,
            o::describe_snapshots::DescribeSnapshotsError,
        );
        match code {
            Some(code) if is_fresh_id_not_found(code) => {
                RetryAction::retryable_error_with_explicit_delay(ErrorKind::TransientError, FRESH_ID_RETRY_DELAY)
            }
            _ => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "NotFound of a fresh EC2 id"
    }
}

/// True for a NotFound code that eventual consistency explains.
/// (A route is no id: ReplaceRoute's InvalidRoute.NotFound says the route
/// is gone.)
pub fn is_fresh_id_not_found(code: &str) -> bool {
    code.ends_with(".NotFound") && !code.starts_with("InvalidAMIID") && code != "InvalidRoute.NotFound"
}

/// The EC2 side of the engine, over aws-sdk-ec2.
pub struct Ec2Cloud {
    client: Client,
    calls: AtomicU64,
    by_operation: Mutex<BTreeMap<&'static str, u64>>,
    /// How often `destroy` polls while instances terminate.
    poll_interval: Duration,
    /// How long `destroy` waits for instances to terminate and for
    /// dependencies (network interfaces) to let go.
    wait_timeout: Duration,
    /// What each AMI checked or launched so far is (DescribeImages once per AMI).
    images: Mutex<HashMap<String, images::ImageFacts>>,
    /// Every stack's instances in the region, shared by the stacks' observes.
    shared_instances: inventory::Coalesced<Vec<Instance>>,
    /// Every stack's security groups in the region, shared likewise.
    shared_groups: inventory::Coalesced<Vec<SecurityGroup>>,
    /// The installation whose name every resource created is tagged with,
    /// and the only one whose resources are adopted, changed or deleted.
    installation: Installation,
    /// Whether resources an older operator created without the
    /// installation tag are tagged when seen (off for `plan`, which
    /// changes nothing: they are still counted as the stack's).
    adopting: bool,
}

impl Ec2Cloud {
    /// A client from the standard AWS configuration chain (environment,
    /// profile, web identity / IRSA, container and instance metadata).
    ///
    /// `endpoint` overrides the EC2 endpoint; when None the standard
    /// `AWS_ENDPOINT_URL_EC2` / `AWS_ENDPOINT_URL` variables still apply.
    pub async fn from_env(region: &str, endpoint: Option<&str>) -> Ec2Cloud {
        let shared = Ec2Cloud::config_loader(region).load().await;
        Ec2Cloud::from_sdk_config(&shared, endpoint)
    }

    /// The AWS configuration chain with the operator's retry and timeout
    /// policy: standard retry mode (exponential backoff with jitter for
    /// throttling, 5xx and transport errors), [`MAX_ATTEMPTS`] attempts.
    pub fn config_loader(region: &str) -> aws_config::ConfigLoader {
        aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region.to_owned()))
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(Duration::from_secs(60))
                    .build(),
            )
    }

    /// A client from loaded configuration, with an optional endpoint override.
    pub fn from_sdk_config(shared: &aws_config::SdkConfig, endpoint: Option<&str>) -> Ec2Cloud {
        let mut config = aws_sdk_ec2::config::Builder::from(shared);
        if let Some(url) = endpoint {
            config = config.endpoint_url(url);
        }
        Ec2Cloud::from_client(Client::from_conf(config.build()))
    }

    /// Wraps a ready client (tests build one aimed at moto), adding the
    /// [`FreshIdRetry`] classifier to its retry policy.
    pub fn from_client(client: Client) -> Ec2Cloud {
        let client = Client::from_conf(client.config().to_builder().retry_classifier(FreshIdRetry).build());
        Ec2Cloud {
            client,
            calls: AtomicU64::new(0),
            by_operation: Mutex::new(BTreeMap::new()),
            poll_interval: Duration::from_secs(5),
            wait_timeout: Duration::from_secs(600),
            images: Mutex::new(HashMap::new()),
            shared_instances: inventory::Coalesced::new(Duration::ZERO),
            shared_groups: inventory::Coalesced::new(Duration::ZERO),
            installation: Installation::default(),
            adopting: true,
        }
    }

    /// Turns the tagging of an older operator's resources off (`plan`
    /// changes nothing) or on (the default).
    pub fn with_adoption(mut self, adopting: bool) -> Ec2Cloud {
        self.adopting = adopting;
        self
    }

    /// Sets the installation (`--installation`; `default` unless set).
    pub fn with_installation(mut self, installation: Installation) -> Ec2Cloud {
        self.installation = installation;
        self
    }

    /// The installation this client creates and changes resources for.
    pub fn installation(&self) -> &Installation {
        &self.installation
    }

    /// True when a resource carries another installation's tag: looked up
    /// by a recorded id, it is still never changed or deleted.
    fn foreign(&self, tags: &[Tag]) -> bool {
        tag_value(tags, INSTALLATION_TAG).is_some_and(|i| i != self.installation.as_str())
    }

    /// Looks up the stack's network (its groups and key pair only, in a
    /// network the user brings), data volumes and snapshots by tag, which
    /// adopts those without an installation tag. A failure is logged: the
    /// look-ups of a later teardown or repair adopt them as well.
    async fn adopt_the_rest(
        &self,
        stack: &StackIdentity,
        known: Option<&NetworkStatus>,
        provided: Option<&ProvidedNetwork>,
    ) {
        let network = match provided {
            Some(_) => {
                let groups = self.groups_by_tag(stack).await;
                let key_pairs = self.key_pairs_of(stack, known).await;
                groups.and_then(|groups| {
                    let key_pairs = key_pairs?;
                    Ok(network::Inventory { groups, key_pairs, ..Default::default() })
                })
            }
            None => self.network_lookup(stack, known).await,
        };
        let result = match network {
            Ok(mut inv) => {
                self.claim_network(stack, &mut inv).await;
                match self.stack_volumes(stack).await {
                    Ok(_) => self.stack_snapshots(stack).await.map(drop),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            warn!(stack = %stack.tag_value(), error = %e, "could not look up the stack's resources to adopt them");
        }
    }

    /// Whose a resource found for `stack` is (see [`Claim`]).
    fn claim(&self, stack: &StackIdentity, tags: &[Tag]) -> Claim {
        claim(tags, stack, &self.installation)
    }

    /// Adds this installation's tag to resources of `stack` that an older
    /// operator created without one ([`Claim::Adopt`]): one CreateTags for
    /// all of them, carrying that key only (what the policy's
    /// `AdoptResourcesOfAnOlderVersion` statement allows). Made only when
    /// such a resource was seen, so a converged stack pays nothing. A
    /// refusal (a policy without that statement) is logged, not fatal:
    /// the resources stay the stack's, and are tagged on a later look-up.
    async fn adopt(&self, stack: &StackIdentity, ids: Vec<String>) {
        if ids.is_empty() || !self.adopting {
            return;
        }
        let tag = Tag::builder().key(INSTALLATION_TAG).value(self.installation.as_str()).build();
        let request = self.client.create_tags().set_resources(Some(ids.clone())).tags(tag).send();
        match self.call("CreateTags", request).await {
            Ok(_) => info!(
                stack = %stack.tag_value(),
                installation = %self.installation,
                resources = ?ids,
                "adopted resources created without an installation tag"
            ),
            Err(e) => warn!(
                stack = %stack.tag_value(),
                installation = %self.installation,
                resources = ?ids,
                error = %e,
                "could not tag the stack's resources with the installation (the IAM policy needs the statement \
                 AdoptResourcesOfAnOlderVersion): changing them may be refused"
            ),
        }
    }

    /// Sets how long one look-up of the region's instances and groups
    /// serves later observers. Zero (the default) shares only calls in
    /// flight; the controller uses [`inventory::DEFAULT_WINDOW`].
    pub fn with_inventory_window(mut self, window: Duration) -> Ec2Cloud {
        self.shared_instances = inventory::Coalesced::new(window);
        self.shared_groups = inventory::Coalesced::new(window);
        self
    }

    /// Sets how often `destroy` polls and how long it waits in total (the
    /// integration tests shorten both).
    #[cfg(any(test, feature = "test-support"))]
    pub fn with_waits(mut self, poll_interval: Duration, timeout: Duration) -> Ec2Cloud {
        self.poll_interval = poll_interval;
        self.wait_timeout = timeout;
        self
    }

    /// The SDK client with the operator's retry policy (the integration
    /// tests send requests of their own through it).
    #[cfg(any(test, feature = "test-support"))]
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// EC2 requests made so far, by operation name (DescribeInstances, ...).
    #[cfg(any(test, feature = "test-support"))]
    pub fn calls_by_operation(&self) -> BTreeMap<&'static str, u64> {
        self.by_operation.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Every page of a paginated Describe call, each page one [`Self::call`]:
    /// `request` sends the page after a token, `items` takes a page's items
    /// and its next token (none or empty: the last page).
    async fn all_pages<P, T, E, F, Fut>(
        &self,
        operation: &'static str,
        mut request: F,
        mut items: impl FnMut(P) -> (Vec<T>, Option<String>),
    ) -> Result<Vec<T>, CloudError>
    where
        F: FnMut(Option<String>) -> Fut,
        Fut: Future<Output = Result<P, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let (found, next) = items(self.call(operation, request(token.take())).await?);
            out.extend(found);
            match next {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    /// Sends one EC2 request: counts it, logs it, and maps its error.
    async fn call<T, E, F>(&self, operation: &'static str, request: F) -> Result<T, CloudError>
    where
        F: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut m) = self.by_operation.lock() {
            *m.entry(operation).or_default() += 1;
        }
        debug!(operation, call = n, "EC2 request");
        let result = request.await.map_err(|e| sdk_error(operation, e));
        if let Err(e) = &result {
            debug!(operation, error = %e, "EC2 request failed");
        }
        if !inventory::is_read_only(operation) {
            // Whatever it did (a failed call may have done it too), the next
            // observe looks again.
            self.shared_instances.invalidate();
            self.shared_groups.invalidate();
        }
        result
    }
}

/// Turns an SDK error into a [`CloudError`]: an answer from EC2 keeps its
/// error code and message; anything else keeps the whole error chain.
pub fn sdk_error<E>(operation: &'static str, err: SdkError<E, HttpResponse>) -> CloudError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = match err.code() {
                Some(c) if !c.is_empty() => c.to_owned(),
                _ => format!("HTTP {status}"),
            };
            let message = match err.message() {
                Some(m) if !m.is_empty() => m.to_owned(),
                _ => DisplayErrorContext(&err).to_string(),
            };
            let mut kind = AwsErrorKind::from_code(&code);
            if kind == AwsErrorKind::Other && status >= 500 {
                kind = AwsErrorKind::Unavailable;
            }
            CloudError::Api { operation, code, message, kind }
        }
        _ => CloudError::Transport { operation, message: DisplayErrorContext(&err).to_string() },
    }
}

/// True when EC2 said the resource does not exist (any `*.NotFound` code).
fn is_not_found(e: &CloudError) -> bool {
    matches!(e, CloudError::Api { code, .. } if code.ends_with(".NotFound") || code.ends_with("NotFound"))
}

/// True when EC2 answered with this error code.
fn has_code(e: &CloudError, wanted: &str) -> bool {
    matches!(e, CloudError::Api { code, .. } if code == wanted)
}

/// True when EC2 refused because something still depends on the resource.
fn is_dependency(e: &CloudError) -> bool {
    matches!(e, CloudError::Api { code, .. } if code == "DependencyViolation" || code == "ResourceInUse" || code == "VolumeInUse")
}

/// `tag-key` filter: resources carrying the tag, whatever its value.
fn tag_key_filter(key: &str) -> Filter {
    Filter::builder().name("tag-key").values(key).build()
}

/// `tag:<key> = value` filter.
fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder().name(format!("tag:{key}")).values(value).build()
}

fn filter<I, S>(name: &str, values: I) -> Filter
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut f = Filter::builder().name(name);
    for v in values {
        f = f.values(v);
    }
    f.build()
}

/// The filter every look-up uses: the owner tag (the stack object's uid).
/// Whatever the operator adopts, keeps or deletes carries it, so a stack
/// named alike in another cluster is never touched.
fn stack_filter(stack: &StackIdentity) -> Filter {
    tag_filter(OWNER_TAG, stack.owner())
}

/// Whose a resource that a look-up for a stack found is, by its owner and
/// installation tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// This installation's (or a resource found by a recorded id that
    /// carries no owner tag: kept as before, nothing to tag it by).
    Ours,
    /// The stack's, created by an older operator without the installation
    /// tag: kept, and tagged with this installation's name.
    Adopt,
    /// Another installation's, or another stack's: never adopted, changed
    /// or deleted; look-ups drop it.
    Theirs,
}

/// Whose a resource found for `stack` is (see [`Claim`]).
pub(crate) fn claim(tags: &[Tag], stack: &StackIdentity, installation: &Installation) -> Claim {
    let owner = tag_value(tags, OWNER_TAG);
    if owner.is_some_and(|o| o != stack.owner()) {
        return Claim::Theirs;
    }
    match tag_value(tags, INSTALLATION_TAG) {
        Some(i) if i == installation.as_str() => Claim::Ours,
        Some(_) => Claim::Theirs,
        None if owner.is_some() => Claim::Adopt,
        None => Claim::Ours,
    }
}

/// Applies claims to what a look-up found: drops what is
/// [`Claim::Theirs`], keeps the rest in order, and adds to `adopt` the ids
/// (where `id` gives one) of what is [`Claim::Adopt`].
pub(crate) fn sort_claimed<T>(
    items: &mut Vec<T>,
    adopt: &mut Vec<String>,
    claim: impl Fn(&T) -> Claim,
    id: impl Fn(&T) -> Option<&str>,
) {
    items.retain(|x| claim(x) != Claim::Theirs);
    adopt.extend(items.iter().filter(|x| claim(x) == Claim::Adopt).filter_map(|x| id(x).map(str::to_owned)));
}

/// Tags of every resource of the stack, with the installation's; `tier`
/// adds the tier tag.
fn stack_tags(stack: &StackIdentity, installation: &Installation, name: &str, tier: Option<Tier>) -> Vec<Tag> {
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
    let mut tags = vec![
        tag(OWNER_TAG, stack.owner()),
        tag(INSTALLATION_TAG, installation.as_str()),
        tag(STACK_LABEL, &stack.tag_value()),
        tag(NAMESPACE_LABEL, &stack.namespace),
        tag("Name", name),
        tag(MANAGED_BY_TAG, MANAGER),
    ];
    if let Some(t) = tier {
        tags.push(tag(TIER_LABEL, t.as_str()));
    }
    tags
}

/// TagSpecifications for a resource created with the stack's tags.
fn tag_spec(
    resource: ResourceType,
    stack: &StackIdentity,
    installation: &Installation,
    name: &str,
    tier: Option<Tier>,
) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(resource)
        .set_tags(Some(stack_tags(stack, installation, name, tier)))
        .build()
}

/// Value of a tag in a resource's tag list.
fn tag_value<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

#[async_trait]
impl Cloud for Ec2Cloud {
    async fn observe(
        &self,
        stack: &StackIdentity,
        known: Option<&NetworkStatus>,
        provided: Option<&ProvidedNetwork>,
        lookup: NetworkLookup,
    ) -> Result<ObservedInfra, CloudError> {
        let (instances, adopted) = self.shared_stack_instances(stack).await?;
        if adopted && self.adopting {
            // An older operator's stack: its network, volumes and snapshots
            // lack the tag too, and a converged stack's observe would not
            // look them up. Once, now; then its instances carry the tag.
            self.adopt_the_rest(stack, known, provided).await;
        }
        let imds_v1 = instances::needing_imds_v2(&instances);
        if !imds_v1.is_empty() {
            self.require_imds_v2(stack, &imds_v1).await;
        }
        let network = self.observe_network(stack, known, provided, lookup, &instances).await?;
        let instances = instances.into_iter().map(|(inst, _)| inst).collect();
        Ok(ObservedInfra { network, instances, data_volumes: None })
    }

    /// Carries out one network step with its function in `network::steps`,
    /// filling the ids it creates into `ids`.
    async fn apply_network_step(
        &self,
        stack: &StackIdentity,
        step: &NetworkStep,
        ids: &mut NetworkStatus,
    ) -> Result<(), CloudError> {
        match step {
            NetworkStep::CreateVpc { cidr } => self.create_vpc(stack, cidr, ids).await,
            NetworkStep::EnableVpcDns => self.enable_vpc_dns(ids).await,
            NetworkStep::CreateSubnet { role, cidr, zone } => self.create_subnet(stack, *role, cidr, zone, ids).await,
            NetworkStep::CreateInternetGateway => self.create_internet_gateway(stack, ids).await,
            NetworkStep::AttachInternetGateway => self.attach_internet_gateway(ids).await,
            NetworkStep::CreateRouteTable { role } => self.create_route_table(stack, *role, ids).await,
            NetworkStep::RouteToGateway { replaces } => self.route_to_gateway(stack, replaces.as_deref(), ids).await,
            NetworkStep::AssociateRouteTable { role } => self.associate_route_table(*role, ids).await,
            NetworkStep::AllocateElasticIp => self.allocate_elastic_ip(stack, ids).await,
            NetworkStep::CreateNatGateway { attempt } => self.create_nat_gateway(stack, *attempt, ids).await,
            NetworkStep::RouteToNatGateway { replaces, when_available } => {
                self.route_to_nat_gateway(stack, replaces.as_deref(), *when_available, ids).await
            }
            NetworkStep::DeleteDuplicate { duplicate } => self.delete_duplicate(stack, duplicate).await,
            NetworkStep::CreateSecurityGroup { tier } => self.create_security_group(stack, *tier, ids).await,
            NetworkStep::Authorize { tier, rules } => self.authorize(stack, *tier, rules, ids).await,
            NetworkStep::Revoke { tier, rule } => self.revoke(stack, *tier, rule, ids).await,
            NetworkStep::ImportKeyPair { key } => self.import_key_pair(stack, key, ids).await,
            NetworkStep::ReimportKeyPair { key } => self.reimport_key_pair(stack, key, ids).await,
        }
    }

    async fn launch_instance(
        &self,
        stack: &StackIdentity,
        network: &NetworkStatus,
        launch: &InstanceLaunch,
    ) -> Result<ObservedInstance, CloudError> {
        self.adopt_or_launch(stack, network, launch).await
    }

    async fn start_instance(&self, instance_id: &str) -> Result<(), CloudError> {
        self.call("StartInstances", self.client.start_instances().instance_ids(instance_id).send()).await?;
        Ok(())
    }

    async fn latest_ubuntu(&self) -> Result<ResolvedAmi, CloudError> {
        self.newest_ubuntu().await
    }

    async fn check_image(&self, ami: &str, field: &str, instance_type: &str) -> Result<(), CloudError> {
        self.refuse_unsupported(ami, field, instance_type).await
    }

    async fn terminate_instances(&self, instance_ids: &[String]) -> Result<(), CloudError> {
        if instance_ids.is_empty() {
            return Ok(());
        }
        self.call(
            "TerminateInstances",
            self.client.terminate_instances().set_instance_ids(Some(instance_ids.to_vec())).send(),
        )
        .await?;
        Ok(())
    }

    async fn instances_by_id(&self, ids: &[String]) -> Result<Vec<ObservedInstance>, CloudError> {
        self.describe_by_id(ids).await
    }

    async fn data_volumes(
        &self,
        stack: &StackIdentity,
        known: Option<&str>,
    ) -> Result<Vec<ObservedVolume>, CloudError> {
        let mut found = self.stack_volumes(stack).await?;
        if let Some(id) = known.filter(|id| !found.iter().any(|v| v.id == *id)) {
            found.extend(self.volume_by_id(id).await?);
        }
        Ok(found)
    }

    async fn create_data_volume(
        &self,
        stack: &StackIdentity,
        zone: &str,
        size_gib: i32,
        n: u32,
        from_snapshot: Option<&str>,
        kms_key_id: Option<&str>,
    ) -> Result<ObservedVolume, CloudError> {
        self.create_volume(stack, zone, size_gib, n, from_snapshot, kms_key_id).await
    }

    async fn snapshots(&self, stack: &StackIdentity) -> Result<Vec<ObservedSnapshot>, CloudError> {
        self.stack_snapshots(stack).await
    }

    async fn snapshot_by_id(&self, id: &str) -> Result<Option<ObservedSnapshot>, CloudError> {
        self.snapshot(id).await
    }

    async fn create_snapshot(
        &self,
        stack: &StackIdentity,
        volume_id: &str,
        slot: &Slot,
    ) -> Result<ObservedSnapshot, CloudError> {
        self.take_snapshot(stack, volume_id, slot).await
    }

    async fn delete_snapshot(&self, id: &str) -> Result<(), CloudError> {
        self.remove_snapshot(id).await
    }

    async fn tag_volume_formatted(&self, volume_id: &str, value: &str) -> Result<(), CloudError> {
        let tag = aws_sdk_ec2::types::Tag::builder().key(volumes::FORMATTED_TAG).value(value).build();
        self.call("CreateTags", self.client.create_tags().resources(volume_id).tags(tag).send()).await?;
        Ok(())
    }

    async fn attach_volume(&self, volume_id: &str, instance_id: &str) -> Result<(), CloudError> {
        self.call(
            "AttachVolume",
            self.client.attach_volume().volume_id(volume_id).instance_id(instance_id).device(DATA_DEVICE).send(),
        )
        .await?;
        Ok(())
    }

    async fn detach_volume(&self, volume_id: &str, instance_id: &str) -> Result<(), CloudError> {
        self.call("DetachVolume", self.client.detach_volume().volume_id(volume_id).instance_id(instance_id).send())
            .await?;
        Ok(())
    }

    async fn teardown_inventory(
        &self,
        stack: &StackIdentity,
        known: Option<&NetworkStatus>,
    ) -> Result<TeardownInventory, CloudError> {
        self.look_up_teardown_inventory(stack, known).await
    }

    async fn destroy(&self, stack: &StackIdentity, steps: &[TeardownStep]) -> Result<DestroyReport, CloudError> {
        self.run_teardown_steps(stack, steps).await
    }

    fn api_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident() -> StackIdentity {
        StackIdentity { name: "demo".into(), namespace: "shop".into(), uid: "u".into() }
    }

    #[test]
    fn every_resource_carries_the_stack_tags() {
        let team = Installation::parse("team-a").unwrap();
        let tags = stack_tags(&ident(), &team, "votingstack-shop-demo", Some(Tier::Backend));
        assert_eq!(tag_value(&tags, OWNER_TAG), Some("u"));
        assert_eq!(tag_value(&tags, INSTALLATION_TAG), Some("team-a"));
        assert_eq!(tag_value(&tags, STACK_LABEL), Some("shop/demo"));
        assert_eq!(tag_value(&tags, NAMESPACE_LABEL), Some("shop"));
        assert_eq!(tag_value(&tags, "Name"), Some("votingstack-shop-demo"));
        assert_eq!(tag_value(&tags, MANAGED_BY_TAG), Some(MANAGER));
        assert_eq!(tag_value(&tags, TIER_LABEL), Some("backend"));
        let tags = stack_tags(&ident(), &Installation::default(), "n", None);
        assert_eq!(tag_value(&tags, TIER_LABEL), None);
        assert_eq!(tag_value(&tags, INSTALLATION_TAG), Some("default"));
        let spec = tag_spec(ResourceType::Vpc, &ident(), &team, "n", None);
        assert_eq!(spec.resource_type(), Some(&ResourceType::Vpc));
        assert_eq!(tag_value(spec.tags(), INSTALLATION_TAG), Some("team-a"));
    }

    #[test]
    fn a_resource_is_claimed_by_its_owner_and_installation_tags() {
        let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
        let team = Installation::parse("team-a").unwrap();
        let ours = [tag(OWNER_TAG, "u"), tag(INSTALLATION_TAG, "team-a")];
        assert_eq!(claim(&ours, &ident(), &team), Claim::Ours);
        // Another installation's, with the same owner uid: never touched.
        let theirs = [tag(OWNER_TAG, "u"), tag(INSTALLATION_TAG, "team-b")];
        assert_eq!(claim(&theirs, &ident(), &team), Claim::Theirs);
        assert_eq!(claim(&theirs, &ident(), &Installation::default()), Claim::Theirs);
        // Created by an older operator: the stack's, to be tagged.
        let old = [tag(OWNER_TAG, "u"), tag(STACK_LABEL, "shop/demo")];
        assert_eq!(claim(&old, &ident(), &team), Claim::Adopt);
        // Another stack's, whatever its installation.
        let other = [tag(OWNER_TAG, "v"), tag(INSTALLATION_TAG, "team-a")];
        assert_eq!(claim(&other, &ident(), &team), Claim::Theirs);
        assert_eq!(claim(&[tag(OWNER_TAG, "v")], &ident(), &team), Claim::Theirs);
        // Found by a recorded id, without tags: kept, nothing to tag it by.
        assert_eq!(claim(&[], &ident(), &team), Claim::Ours);
        assert_eq!(claim(&[tag(INSTALLATION_TAG, "team-b")], &ident(), &team), Claim::Theirs);
    }

    #[test]
    fn look_ups_go_by_the_owner_tag() {
        let f = stack_filter(&ident());
        assert_eq!(f.name(), Some("tag:votingstack.dev/owner"));
        assert_eq!(f.values(), ["u"]);
    }

    #[test]
    fn only_not_found_of_a_fresh_id_is_retried() {
        assert!(is_fresh_id_not_found("InvalidSubnetID.NotFound"));
        assert!(is_fresh_id_not_found("InvalidGroup.NotFound"));
        assert!(is_fresh_id_not_found("InvalidInstanceID.NotFound"));
        assert!(!is_fresh_id_not_found("InvalidAMIID.NotFound"));
        assert!(!is_fresh_id_not_found("InvalidRoute.NotFound"));
        assert!(!is_fresh_id_not_found("DependencyViolation"));
        assert!(!is_fresh_id_not_found("InvalidParameterValue"));
    }

    #[test]
    fn not_found_and_dependency_codes_are_told_apart() {
        let api = |code: &str| CloudError::Api {
            operation: "DeleteVpc",
            code: code.into(),
            message: String::new(),
            kind: AwsErrorKind::from_code(code),
        };
        assert!(is_not_found(&api("InvalidVpcID.NotFound")));
        assert!(is_not_found(&api("InvalidGroup.NotFound")));
        assert!(!is_not_found(&api("DependencyViolation")));
        assert!(is_dependency(&api("DependencyViolation")));
        assert!(!is_dependency(&api("AuthFailure")));
    }
}
