//! The EC2 provider against a real moto server: the engine creates, keeps
//! and tears down the network and the three instances.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::fixtures::{self, TEST_KEY};
use async_trait::async_trait;
use aws_sdk_ec2::types::{
    Filter, Instance, InstanceStateName, InstanceType, ResourceType, Tag, TagSpecification, VpcAttributeName,
};
use aws_sdk_ec2::Client;
use votingstack::api::conditions::find_condition;
use votingstack::api::{
    ConditionType, DeletionPolicy, Egress, NetworkStatus, PullPolicy, Tier, VotingStack, MANAGED_BY_TAG, MANAGER,
    NAMESPACE_LABEL, STACK_LABEL, TIER_LABEL,
};
use votingstack::cloud::ec2::Ec2Cloud;
use votingstack::cloud::{AwsErrorKind, Cloud, CloudError, NetworkLookup, StackIdentity, OWNER_TAG};
use votingstack::engine::plan::instance_launch;
use votingstack::engine::{converge_network, tear_down, Engine, EngineSettings, Outcome, Teardown};
use votingstack::host::{HostError, HostTarget, Hosts, SshKey};
use votingstack::model::ObservedHost;
use votingstack::model::{Action, HostAction, InfraAction, InstanceLaunch, NetworkStep, TerminateReason};

use crate::moto::{client_for, Moto, AMI};

/// Hosts that cannot be reached: only the EC2 side is exercised.
struct NoSsh;

fn unreachable(what: &str) -> HostError {
    HostError::Unreachable { host: what.into(), message: "no SSH in the EC2 tests".into() }
}

#[async_trait]
impl Hosts for NoSsh {
    async fn observe(&self, target: &HostTarget, _: &SshKey) -> Result<ObservedHost, HostError> {
        Err(unreachable(&target.describe()))
    }
    async fn apply(&self, target: &HostTarget, _: &SshKey, _: &[HostAction], _: PullPolicy) -> Result<(), HostError> {
        Err(unreachable(&target.describe()))
    }
    async fn http_status(&self, url: &str) -> Result<u16, HostError> {
        Err(unreachable(url))
    }
    async fn cast_vote(&self, url: &str, _: &str, _: &str) -> Result<(), HostError> {
        Err(unreachable(url))
    }
    async fn recorded_vote(&self, db: &HostTarget, _: &SshKey, _: &str) -> Result<Option<String>, HostError> {
        Err(unreachable(&db.describe()))
    }
    async fn delete_smoke_votes(&self, db: &HostTarget, _: &SshKey, _: &str) -> Result<(), HostError> {
        Err(unreachable(&db.describe()))
    }
    fn round_trips(&self) -> u64 {
        0
    }
}

struct World {
    // Dropped last: the server outlives the clients.
    cloud: Arc<Ec2Cloud>,
    engine: Engine,
    client: Client,
    moto: Moto,
}

fn world() -> World {
    let moto = Moto::start();
    let cloud = Arc::new(moto.cloud());
    let engine = Engine::new(cloud.clone(), Arc::new(NoSsh), EngineSettings::default());
    World { cloud, engine, client: moto.client(), moto }
}

fn stack() -> VotingStack {
    let mut s = fixtures::stack();
    s.spec.instances.ami = Some(AMI.into());
    s
}

fn key() -> SshKey {
    SshKey::parse(TEST_KEY, "demo-ssh", "ssh-privatekey").expect("test key parses")
}

/// One reconcile, its status written back as the controller would.
async fn reconcile(w: &World, stack: &mut VotingStack) -> Outcome {
    let out = tokio::time::timeout(Duration::from_secs(120), w.engine.reconcile(stack, Ok(key())))
        .await
        .expect("reconcile finishes within 120 s");
    stack.status = Some(out.status.clone());
    out
}

/// Name of the fixture stack's key pair (it ends in a suffix of its uid).
fn key_name() -> String {
    StackIdentity::of(&stack()).resource_name()
}

fn stack_filter() -> Filter {
    Filter::builder().name(format!("tag:{STACK_LABEL}")).values("default/demo").build()
}

fn tag<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

fn assert_stack_tags(what: &str, tags: &[Tag]) {
    assert_eq!(tag(tags, OWNER_TAG), Some(StackIdentity::of(&stack()).uid.as_str()), "{what}: {tags:?}");
    assert_eq!(tag(tags, STACK_LABEL), Some("default/demo"), "{what}: {tags:?}");
    assert_eq!(tag(tags, NAMESPACE_LABEL), Some("default"), "{what}: {tags:?}");
    assert_eq!(tag(tags, MANAGED_BY_TAG), Some(MANAGER), "{what}: {tags:?}");
    assert!(tag(tags, "Name").is_some_and(|n| n.starts_with("votingstack-default-demo")), "{what}: {tags:?}");
}

/// The stack's instances that are not terminated.
async fn live_instances(c: &Client) -> Vec<Instance> {
    let out = c.describe_instances().filters(stack_filter()).send().await.expect("DescribeInstances");
    out.reservations()
        .iter()
        .flat_map(|r| r.instances().iter().cloned())
        .filter(|i| i.state().and_then(|s| s.name()) != Some(&InstanceStateName::Terminated))
        .collect()
}

fn tier_of(i: &Instance) -> Option<Tier> {
    tag(i.tags(), TIER_LABEL).and_then(Tier::parse)
}

fn instance_of(w: &[Instance], tier: Tier) -> Instance {
    let v: Vec<&Instance> = w.iter().filter(|i| tier_of(i) == Some(tier)).collect();
    assert_eq!(v.len(), 1, "one live {tier} instance: {v:?}");
    v[0].clone()
}

fn network(stack: &VotingStack) -> NetworkStatus {
    stack.status.as_ref().and_then(|s| s.network.clone()).expect("network in status")
}

fn create_vpc() -> Action {
    Action::Infra(InfraAction::Network(NetworkStep::CreateVpc { cidr: "10.42.0.0/16".into() }))
}

fn launches(out: &Outcome) -> Vec<Tier> {
    out.applied
        .iter()
        .filter_map(|a| match a {
            Action::Infra(InfraAction::LaunchInstance(InstanceLaunch { tier, .. })) => Some(*tier),
            _ => None,
        })
        .collect()
}

fn infra_condition(stack: &VotingStack) -> (String, String, String) {
    let c = find_condition(&stack.status.as_ref().expect("status").conditions, ConditionType::InfrastructureReady)
        .expect("InfrastructureReady condition");
    (c.status.to_string(), c.reason.clone(), c.message.clone())
}

/// Tagged VPCs, subnets, gateways, route tables, groups, key pairs,
/// instances, NAT gateways and Elastic IPs of a whole stack.
const FULL: [usize; 9] = [1, 2, 1, 2, 3, 1, 3, 1, 1];
/// The same without instances.
const NETWORK_ONLY: [usize; 9] = [1, 2, 1, 2, 3, 1, 0, 1, 1];

/// NAT gateways of the stack not yet deleted.
async fn live_nat_gateways(c: &Client) -> Vec<aws_sdk_ec2::types::NatGateway> {
    let out = c.describe_nat_gateways().filter(stack_filter()).send().await.expect("DescribeNatGateways");
    out.nat_gateways()
        .iter()
        .filter(|n| tag(n.tags(), STACK_LABEL) == Some("default/demo"))
        .filter(|n| n.state().map(|s| s.as_str()) != Some("deleted"))
        .cloned()
        .collect()
}

/// Counts of every kind of resource carrying the stack's tag.
async fn tagged_counts(c: &Client) -> [usize; 9] {
    let f = stack_filter;
    [
        c.describe_vpcs().filters(f()).send().await.expect("vpcs").vpcs().len(),
        c.describe_subnets().filters(f()).send().await.expect("subnets").subnets().len(),
        c.describe_internet_gateways().filters(f()).send().await.expect("igws").internet_gateways().len(),
        c.describe_route_tables().filters(f()).send().await.expect("rts").route_tables().len(),
        c.describe_security_groups().filters(f()).send().await.expect("sgs").security_groups().len(),
        c.describe_key_pairs()
            .filters(Filter::builder().name("key-name").values(key_name()).build())
            .send()
            .await
            .expect("key pairs")
            .key_pairs()
            .len(),
        live_instances(c).await.len(),
        live_nat_gateways(c).await.len(),
        c.describe_addresses().filters(f()).send().await.expect("addresses").addresses().len(),
    ]
}

/// Ingress rules of a group as (port, source) with sources `cidr:...` or `sg:<tier>`.
fn rules_of(group: &aws_sdk_ec2::types::SecurityGroup, net: &NetworkStatus) -> BTreeSet<(i32, String)> {
    let tier_of_group = |id: &str| {
        net.security_groups.iter().find(|(_, g)| g.as_str() == id).map(|(t, _)| t.to_string()).unwrap_or(id.into())
    };
    let mut out = BTreeSet::new();
    for p in group.ip_permissions() {
        assert_eq!(p.ip_protocol(), Some("tcp"));
        assert_eq!(p.from_port(), p.to_port(), "single-port rules");
        let port = p.from_port().unwrap_or(-1);
        for r in p.ip_ranges() {
            out.insert((port, format!("cidr:{}", r.cidr_ip().unwrap_or_default())));
        }
        for r in p.ipv6_ranges() {
            out.insert((port, format!("cidr6:{}", r.cidr_ipv6().unwrap_or_default())));
        }
        for g in p.user_id_group_pairs() {
            out.insert((port, format!("sg:{}", tier_of_group(g.group_id().unwrap_or_default()))));
        }
    }
    out
}

fn set(items: &[(i32, &str)]) -> BTreeSet<(i32, String)> {
    items.iter().map(|(p, s)| (*p, s.to_string())).collect()
}

#[tokio::test]
async fn ec2_fresh_create_builds_the_network_and_three_instances() {
    let w = world();
    let mut s = stack();
    let out = reconcile(&w, &mut s).await;
    assert_eq!(out.applied.first(), Some(&create_vpc()), "{:?}", out.applied);
    assert_eq!(launches(&out), Tier::ALL.to_vec());
    let (status, reason, message) = infra_condition(&s);
    assert_eq!((status.as_str(), reason.as_str()), ("True", "InstancesRunning"), "{message}");
    let net = network(&s);
    let c = &w.client;

    // VPC with DNS on.
    let vpc_id = net.vpc_id.clone().expect("vpc id");
    let vpcs = c.describe_vpcs().filters(stack_filter()).send().await.unwrap();
    assert_eq!(vpcs.vpcs().len(), 1);
    assert_eq!(vpcs.vpcs()[0].cidr_block(), Some("10.42.0.0/16"));
    assert_stack_tags("vpc", vpcs.vpcs()[0].tags());
    for attr in [VpcAttributeName::EnableDnsSupport, VpcAttributeName::EnableDnsHostnames] {
        let a = c.describe_vpc_attribute().vpc_id(&vpc_id).attribute(attr.clone()).send().await.unwrap();
        let on = match attr {
            VpcAttributeName::EnableDnsSupport => a.enable_dns_support().and_then(|v| v.value()),
            _ => a.enable_dns_hostnames().and_then(|v| v.value()),
        };
        assert_eq!(on, Some(true), "{attr:?}");
    }

    // Two subnets in one zone (the first offering t3.small), recorded in status.
    let subnets = c.describe_subnets().filters(stack_filter()).send().await.unwrap();
    assert_eq!(subnets.subnets().len(), 2);
    let subnet_of = |id: &Option<String>| {
        subnets.subnets().iter().find(|s| s.subnet_id() == id.as_deref()).cloned().expect("subnet in status")
    };
    let (subnet, private) = (subnet_of(&net.subnet_id), subnet_of(&net.private_subnet_id));
    assert_eq!(subnet.cidr_block(), Some("10.42.1.0/24"));
    assert_eq!(private.cidr_block(), Some("10.42.2.0/24"));
    for sn in [&subnet, &private] {
        assert_eq!(sn.vpc_id(), Some(vpc_id.as_str()));
        assert_stack_tags("subnet", sn.tags());
        assert_eq!(sn.availability_zone(), net.availability_zone.as_deref());
    }
    let offering = c
        .describe_instance_type_offerings()
        .location_type(aws_sdk_ec2::types::LocationType::AvailabilityZone)
        .filters(Filter::builder().name("instance-type").values("t3.small").build())
        .send()
        .await
        .unwrap();
    let zone = net.availability_zone.clone().expect("zone recorded");
    assert!(
        offering.instance_type_offerings().iter().any(|o| o.location() == Some(zone.as_str())),
        "{zone} offers t3.small"
    );
    let zones = c.describe_availability_zones().zone_names(&zone).send().await.unwrap();
    assert_eq!(zones.availability_zones().len(), 1);
    assert_eq!(zones.availability_zones()[0].zone_type(), Some("availability-zone"), "not a Local Zone");

    // The public table routes to the gateway, the private one to the NAT gateway.
    let igws = c.describe_internet_gateways().filters(stack_filter()).send().await.unwrap();
    assert_eq!(igws.internet_gateways().len(), 1);
    let igw = &igws.internet_gateways()[0];
    assert_stack_tags("igw", igw.tags());
    assert_eq!(igw.attachments().iter().filter_map(|a| a.vpc_id()).collect::<Vec<_>>(), [vpc_id.as_str()]);
    let nats = live_nat_gateways(c).await;
    assert_eq!(nats.len(), 1);
    let nat = &nats[0];
    assert_stack_tags("NAT gateway", nat.tags());
    assert_eq!(nat.nat_gateway_id(), net.nat_gateway_id.as_deref());
    assert_eq!(nat.subnet_id(), subnet.subnet_id(), "the NAT gateway sits in the public subnet");
    assert_eq!(net.nat_gateway_state.as_deref(), Some("available"));
    let eips = c.describe_addresses().filters(stack_filter()).send().await.unwrap();
    assert_eq!(eips.addresses().len(), 1);
    assert_stack_tags("Elastic IP", eips.addresses()[0].tags());
    assert_eq!(eips.addresses()[0].allocation_id(), net.elastic_ip_allocation_id.as_deref());
    assert_eq!(nat.nat_gateway_addresses()[0].allocation_id(), net.elastic_ip_allocation_id.as_deref());
    let rts = c.describe_route_tables().filters(stack_filter()).send().await.unwrap();
    assert_eq!(rts.route_tables().len(), 2);
    let table = |id: &Option<String>| {
        rts.route_tables().iter().find(|r| r.route_table_id() == id.as_deref()).cloned().expect("table in status")
    };
    let default_route = |rt: &aws_sdk_ec2::types::RouteTable| {
        rt.routes()
            .iter()
            .filter(|r| r.destination_cidr_block() == Some("0.0.0.0/0"))
            .map(|r| (r.gateway_id().map(String::from), r.nat_gateway_id().map(String::from)))
            .collect::<Vec<_>>()
    };
    let (rt, private_rt) = (table(&net.route_table_id), table(&net.private_route_table_id));
    for t in [&rt, &private_rt] {
        assert_stack_tags("route table", t.tags());
    }
    assert_eq!(default_route(&rt), [(igw.internet_gateway_id().map(String::from), None)]);
    assert_eq!(default_route(&private_rt), [(None, net.nat_gateway_id.clone())]);
    assert!(rt.associations().iter().any(|a| a.subnet_id() == subnet.subnet_id()));
    assert!(private_rt.associations().iter().any(|a| a.subnet_id() == private.subnet_id()));

    // Security groups: 6379 and 5432 only from the stack's groups.
    let sgs = c.describe_security_groups().filters(stack_filter()).send().await.unwrap();
    assert_eq!(sgs.security_groups().len(), 3);
    for g in sgs.security_groups() {
        assert_stack_tags("security group", g.tags());
        let tier = tag(g.tags(), TIER_LABEL).and_then(Tier::parse).expect("tier tag on the group");
        assert_eq!(net.security_groups.get(&tier).map(String::as_str), g.group_id());
        let rules = rules_of(g, &net);
        let ssh = "cidr:203.0.113.0/24";
        let expected = match tier {
            Tier::Frontend => set(&[(22, ssh), (80, "cidr:0.0.0.0/0"), (81, "cidr:0.0.0.0/0")]),
            // The fixture connects via public IPs: SSH to the private tiers hops through the frontend.
            Tier::Backend => set(&[(22, ssh), (22, "sg:frontend"), (6379, "sg:frontend"), (6379, "sg:backend")]),
            Tier::Database => set(&[(22, ssh), (22, "sg:frontend"), (5432, "sg:backend"), (5432, "sg:frontend")]),
        };
        assert_eq!(rules, expected, "{tier} group rules");
        for (port, source) in &rules {
            if *port == 6379 || *port == 5432 {
                assert!(source.starts_with("sg:"), "{port} open to {source}");
            }
        }
    }

    // Key pair imported under the stack's name.
    let keys = c.describe_key_pairs().key_names(key_name()).send().await.unwrap();
    assert_eq!(keys.key_pairs().len(), 1);
    assert_stack_tags("key pair", keys.key_pairs()[0].tags());

    // Three instances: tags, AMI, type, subnet, group, key; public IP only on the frontend.
    let live = live_instances(c).await;
    assert_eq!(live.len(), 3);
    for tier in Tier::ALL {
        let i = instance_of(&live, tier);
        assert_stack_tags("instance", i.tags());
        assert_eq!(tag(i.tags(), "Name"), Some(format!("{}-{tier}", key_name()).as_str()));
        assert_eq!(i.image_id(), Some(AMI));
        assert_eq!(i.instance_type(), Some(&InstanceType::T3Small));
        let home = if tier == Tier::Frontend { &subnet } else { &private };
        assert_eq!(i.subnet_id(), home.subnet_id(), "{tier} subnet");
        assert_eq!(i.key_name(), Some(key_name().as_str()));
        // moto lists the groups on the network interface only; AWS on both.
        let groups: BTreeSet<&str> = i
            .security_groups()
            .iter()
            .chain(i.network_interfaces().iter().flat_map(|n| n.groups()))
            .filter_map(|g| g.group_id())
            .collect();
        assert_eq!(groups, BTreeSet::from([net.security_groups[&tier].as_str()]), "{tier} instance groups");
        let prefix = if tier == Tier::Frontend { "10.42.1." } else { "10.42.2." };
        assert!(i.private_ip_address().is_some_and(|ip| ip.starts_with(prefix)), "{tier}: {i:?}");
        assert_eq!(i.public_ip_address().is_some(), tier == Tier::Frontend, "{tier} public IP");
        let recorded = s.status.as_ref().and_then(|st| st.tiers.as_ref()).and_then(|t| t.get(tier)).cloned();
        assert_eq!(recorded.and_then(|r| r.instance_id), i.instance_id().map(String::from));
    }
}

#[tokio::test]
async fn ec2_converged_reconcile_makes_at_most_two_calls_and_no_changes() {
    let w = world();
    let mut s = stack();
    reconcile(&w, &mut s).await;
    let before_ops = w.cloud.calls_by_operation();
    let before = w.cloud.api_calls();
    let out = reconcile(&w, &mut s).await;
    let calls = w.cloud.api_calls() - before;
    assert!(calls <= 2, "a converged reconcile made {calls} EC2 calls");
    assert!(out.applied.is_empty(), "{:?}", out.applied);
    let after_ops = w.cloud.calls_by_operation();
    for (op, n) in &after_ops {
        if before_ops.get(op) != Some(n) {
            assert!(op.starts_with("Describe"), "{op} called in a converged reconcile");
        }
    }
    assert_eq!(infra_condition(&s).0, "True");
    assert_eq!(tagged_counts(&w.client).await, FULL);
    eprintln!("EC2 calls in a converged reconcile: {calls}");
}

#[tokio::test]
async fn ec2_data_volume_is_tagged_in_the_database_zone_and_follows_a_replacement() {
    let w = world();
    let mut s = stack();
    reconcile(&w, &mut s).await;
    let volumes = w.client.describe_volumes().filters(stack_filter()).send().await.unwrap();
    let data: Vec<_> = volumes
        .volumes()
        .iter()
        .filter(|v| tag(v.tags(), "votingstack.dev/role") == Some("postgres-data"))
        .cloned()
        .collect();
    assert_eq!(data.len(), 1, "one data volume: {data:?}");
    let v = &data[0];
    assert_stack_tags("data volume", v.tags());
    assert_eq!(v.encrypted(), Some(true));
    assert_eq!(v.volume_type().map(|t| t.as_str()), Some("gp3"));
    assert_eq!(v.size(), Some(10));
    let db = instance_of(&live_instances(&w.client).await, Tier::Database);
    assert_eq!(v.availability_zone(), db.placement().and_then(|p| p.availability_zone()));
    let attached = &v.attachments()[0];
    assert_eq!(attached.instance_id(), db.instance_id());
    assert_eq!(attached.device(), Some("/dev/sdf"));
    let recorded = s.status.as_ref().and_then(|st| st.data_volume.clone()).expect("status.dataVolume");
    assert_eq!(recorded.volume_id.as_deref(), v.volume_id());
    assert_eq!(recorded.attached_to.as_deref(), db.instance_id());
    assert_eq!(recorded.created, 1);

    // The database instance goes: the volume moves to its replacement.
    w.client.terminate_instances().instance_ids(db.instance_id().unwrap()).send().await.unwrap();
    for _ in 0..3 {
        reconcile(&w, &mut s).await;
    }
    let new_db = instance_of(&live_instances(&w.client).await, Tier::Database);
    assert_ne!(new_db.instance_id(), db.instance_id());
    let after = w.client.describe_volumes().volume_ids(v.volume_id().unwrap()).send().await.unwrap();
    let attachments = after.volumes()[0].attachments();
    assert_eq!(attachments.len(), 1, "{attachments:?}");
    assert_eq!(attachments[0].instance_id(), new_db.instance_id());
    let recorded = s.status.as_ref().and_then(|st| st.data_volume.clone()).unwrap();
    assert_eq!(recorded.created, 1, "no second volume");
    let all = w.client.describe_volumes().filters(stack_filter()).send().await.unwrap();
    let data = all.volumes().iter().filter(|v| tag(v.tags(), "votingstack.dev/role") == Some("postgres-data"));
    assert_eq!(data.count(), 1);
}

#[tokio::test]
async fn ec2_terminated_instance_is_replaced() {
    let w = world();
    let mut s = stack();
    reconcile(&w, &mut s).await;
    let old = instance_of(&live_instances(&w.client).await, Tier::Frontend);
    let old_id = old.instance_id().unwrap().to_string();
    w.client.terminate_instances().instance_ids(&old_id).send().await.unwrap();

    let out = reconcile(&w, &mut s).await;
    assert_eq!(launches(&out), [Tier::Frontend]);
    let live = live_instances(&w.client).await;
    assert_eq!(live.len(), 3);
    let new = instance_of(&live, Tier::Frontend);
    assert_ne!(new.instance_id(), Some(old_id.as_str()));
    assert!(new.public_ip_address().is_some());
    let front = s.status.as_ref().and_then(|st| st.tiers.as_ref()).and_then(|t| t.frontend.clone()).unwrap();
    assert_eq!(front.instance_id.as_deref(), new.instance_id());
    assert_eq!(front.replacements, 1);
    assert_eq!(infra_condition(&s).0, "True");
    // The network was not touched.
    assert_eq!(tagged_counts(&w.client).await, FULL);
}

#[tokio::test]
async fn ec2_stopped_instance_is_started() {
    let w = world();
    let mut s = stack();
    reconcile(&w, &mut s).await;
    let db = instance_of(&live_instances(&w.client).await, Tier::Database);
    let id = db.instance_id().unwrap().to_string();
    w.client.stop_instances().instance_ids(&id).send().await.unwrap();
    let state = instance_of(&live_instances(&w.client).await, Tier::Database).state().and_then(|s| s.name()).cloned();
    assert_eq!(state, Some(InstanceStateName::Stopped));

    let out = reconcile(&w, &mut s).await;
    assert!(
        out.applied
            .contains(&Action::Infra(InfraAction::StartInstance { tier: Tier::Database, instance_id: id.clone() })),
        "{:?}",
        out.applied
    );
    assert!(launches(&out).is_empty());
    let db = instance_of(&live_instances(&w.client).await, Tier::Database);
    assert_eq!(db.instance_id(), Some(id.as_str()));
    assert_eq!(db.state().and_then(|s| s.name()), Some(&InstanceStateName::Running));
}

/// RunInstances outside the operator, with the stack's tags for `tier`.
async fn run_tagged(c: &Client, net: &NetworkStatus, tier: Tier, token: Option<String>) -> String {
    let owner = StackIdentity::of(&stack()).uid;
    let tags = TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .tags(Tag::builder().key(OWNER_TAG).value(owner).build())
        .tags(Tag::builder().key(STACK_LABEL).value("default/demo").build())
        .tags(Tag::builder().key(NAMESPACE_LABEL).value("default").build())
        .tags(Tag::builder().key(TIER_LABEL).value(tier.as_str()).build())
        .tags(Tag::builder().key("Name").value(format!("{}-{tier}", key_name())).build())
        .tags(Tag::builder().key(MANAGED_BY_TAG).value(MANAGER).build())
        .build();
    let out = c
        .run_instances()
        .image_id(AMI)
        .instance_type(InstanceType::T3Small)
        .min_count(1)
        .max_count(1)
        .set_client_token(token)
        .subnet_id(if tier == Tier::Frontend { net.subnet_id.clone() } else { net.private_subnet_id.clone() }.unwrap())
        .security_group_ids(net.security_groups[&tier].clone())
        .key_name(net.key_pair_name.clone().unwrap())
        .tag_specifications(tags)
        .send()
        .await
        .expect("RunInstances");
    out.instances()[0].instance_id().unwrap().to_string()
}

#[tokio::test]
async fn ec2_duplicate_instance_is_terminated() {
    let w = world();
    let mut s = stack();
    reconcile(&w, &mut s).await;
    let keeper = instance_of(&live_instances(&w.client).await, Tier::Backend).instance_id().unwrap().to_string();
    let dup = run_tagged(&w.client, &network(&s), Tier::Backend, None).await;
    assert_eq!(live_instances(&w.client).await.len(), 4);

    let out = reconcile(&w, &mut s).await;
    assert!(
        out.applied.contains(&Action::Infra(InfraAction::TerminateInstance {
            tier: Some(Tier::Backend),
            instance_id: dup.clone(),
            reason: TerminateReason::Duplicate,
        })),
        "{:?}",
        out.applied
    );
    let live = live_instances(&w.client).await;
    assert_eq!(live.len(), 3);
    assert_eq!(instance_of(&live, Tier::Backend).instance_id(), Some(keeper.as_str()));
}

#[tokio::test]
async fn ec2_lost_run_instances_answer_is_adopted_not_doubled() {
    let w = world();
    let mut s = stack();
    let ident = StackIdentity::of(&s);
    let net = converge_network(w.cloud.as_ref(), &ident, &s.spec, &key(), None).await.unwrap();
    // The request reached EC2, its answer did not: the operator never saw the id.
    let lost = run_tagged(&w.client, &net, Tier::Database, Some(ident.client_token(Tier::Database, 0))).await;

    let adopted = w
        .cloud
        .launch_instance(&ident, &net, &instance_launch(&s.spec, &Default::default(), Tier::Database, 0))
        .await
        .unwrap();
    assert_eq!(adopted.id, lost);
    assert_eq!(adopted.tier, Some(Tier::Database));
    assert_eq!(live_instances(&w.client).await.len(), 1);

    // The engine, with no status at all (as the CLI without a state file),
    // adopts the network and the instance and launches only the rest.
    let out = reconcile(&w, &mut s).await;
    assert!(!out.applied.iter().any(|a| matches!(a, Action::Infra(InfraAction::Network(_)))), "{:?}", out.applied);
    assert_eq!(launches(&out), [Tier::Backend, Tier::Frontend]);
    assert_eq!(network(&s), net);
    let live = live_instances(&w.client).await;
    assert_eq!(live.len(), 3);
    assert_eq!(instance_of(&live, Tier::Database).instance_id(), Some(lost.as_str()));
    assert_eq!(tagged_counts(&w.client).await, FULL);
}

#[tokio::test]
async fn ec2_network_is_found_by_tag_and_never_doubled() {
    let w = world();
    let s = stack();
    let ident = StackIdentity::of(&s);
    let first = converge_network(w.cloud.as_ref(), &ident, &s.spec, &key(), None).await.unwrap();
    let again = converge_network(w.cloud.as_ref(), &ident, &s.spec, &key(), None).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(tagged_counts(&w.client).await, NETWORK_ONLY);
    // Without stored ids (the CLI) observe finds the same network by tag.
    let seen = w.cloud.observe(&ident, None, None, NetworkLookup::TrustStatus).await.unwrap();
    assert_eq!(seen.network.complete_ids(Egress::NatGateway), Some(first.clone()));
    assert!(seen.instances.is_empty());

    // A rule opening redis to the world is taken away again; a missing one is put back.
    let backend = first.security_groups[&Tier::Backend].clone();
    let world_redis = aws_sdk_ec2::types::IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(6379)
        .to_port(6379)
        .ip_ranges(aws_sdk_ec2::types::IpRange::builder().cidr_ip("0.0.0.0/0").build())
        .build();
    w.client.authorize_security_group_ingress().group_id(&backend).ip_permissions(world_redis).send().await.unwrap();
    let ssh = aws_sdk_ec2::types::IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(22)
        .to_port(22)
        .ip_ranges(aws_sdk_ec2::types::IpRange::builder().cidr_ip("203.0.113.0/24").build())
        .build();
    w.client.revoke_security_group_ingress().group_id(&backend).ip_permissions(ssh).send().await.unwrap();
    let repaired = converge_network(w.cloud.as_ref(), &ident, &s.spec, &key(), Some(&first)).await.unwrap();
    assert_eq!(repaired, first);
    let g = w.client.describe_security_groups().group_ids(&backend).send().await.unwrap();
    assert_eq!(
        rules_of(&g.security_groups()[0], &first),
        set(&[(22, "cidr:203.0.113.0/24"), (22, "sg:frontend"), (6379, "sg:frontend"), (6379, "sg:backend")])
    );

    // A gateway deleted behind the operator's back: the network is incomplete,
    // and ensuring it adds a new gateway and points the default route at it.
    let igw = first.internet_gateway_id.clone().unwrap();
    let vpc = first.vpc_id.clone().unwrap();
    w.client.detach_internet_gateway().internet_gateway_id(&igw).vpc_id(&vpc).send().await.unwrap();
    w.client.delete_internet_gateway().internet_gateway_id(&igw).send().await.unwrap();
    assert_eq!(
        w.cloud
            .observe(&ident, None, None, NetworkLookup::TrustStatus)
            .await
            .unwrap()
            .network
            .complete_ids(Egress::NatGateway),
        None
    );
    let rebuilt = converge_network(w.cloud.as_ref(), &ident, &s.spec, &key(), Some(&first)).await.unwrap();
    let new_igw = rebuilt.internet_gateway_id.clone().unwrap();
    assert_ne!(new_igw, igw);
    assert_eq!(
        (&rebuilt.vpc_id, &rebuilt.subnet_id, &rebuilt.route_table_id),
        (&first.vpc_id, &first.subnet_id, &first.route_table_id)
    );
    let rt =
        w.client.describe_route_tables().route_table_ids(rebuilt.route_table_id.clone().unwrap()).send().await.unwrap();
    let defaults: Vec<Option<&str>> = rt.route_tables()[0]
        .routes()
        .iter()
        .filter(|r| r.destination_cidr_block() == Some("0.0.0.0/0"))
        .map(|r| r.gateway_id())
        .collect();
    assert_eq!(defaults, [Some(new_igw.as_str())]);
    assert_eq!(
        w.cloud
            .observe(&ident, None, None, NetworkLookup::TrustStatus)
            .await
            .unwrap()
            .network
            .complete_ids(Egress::NatGateway),
        Some(rebuilt)
    );
}

#[tokio::test]
async fn ec2_invalid_ami_gives_a_clear_condition_and_no_instance() {
    let w = world();
    let mut s = fixtures::stack(); // ami-0abcdef1234567890: not an AMI moto knows
    reconcile(&w, &mut s).await;
    let (status, reason, message) = infra_condition(&s);
    assert_eq!(status, "False");
    assert_eq!(reason, "AwsInvalidParameter");
    assert!(message.contains("RunInstances") && message.contains("InvalidAMIID"), "{message}");
    assert!(!message.contains("service error"), "{message}");
    assert_eq!(tagged_counts(&w.client).await, NETWORK_ONLY);

    // The next reconcile tries once more, without a new network or a retry storm.
    reconcile(&w, &mut s).await;
    assert_eq!(infra_condition(&s).1, "AwsInvalidParameter");
    assert_eq!(tagged_counts(&w.client).await, NETWORK_ONLY);
    assert_eq!(w.cloud.calls_by_operation().get("RunInstances"), Some(&2));
    assert_eq!(w.cloud.calls_by_operation().get("CreateVpc"), Some(&1));

    // The error itself keeps the AWS code and classifies it.
    let ident = StackIdentity::of(&s);
    let err = w
        .cloud
        .launch_instance(&ident, &network(&s), &instance_launch(&s.spec, &Default::default(), Tier::Database, 0))
        .await
        .unwrap_err();
    match &err {
        CloudError::Api { operation, code, message, kind } => {
            assert_eq!(*operation, "RunInstances");
            assert!(code.starts_with("InvalidAMIID"), "{code}");
            assert!(!message.is_empty());
            assert_eq!(*kind, AwsErrorKind::InvalidParameter);
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Order class of a deleted id: instances, NAT gateway, Elastic IP, groups,
/// route tables, gateway, subnets, VPC, key pair.
fn deletion_rank(id: &str) -> usize {
    let order = ["i-", "vol-", "nat-", "eipalloc-", "sg-", "rtb-", "igw-", "subnet-", "vpc-"];
    order.iter().position(|p| id.starts_with(p)).unwrap_or(order.len())
}

#[tokio::test]
async fn ec2_delete_leaves_nothing_in_the_order_aws_requires() {
    let w = world();
    let mut s = stack();
    reconcile(&w, &mut s).await;
    assert_eq!(tagged_counts(&w.client).await, FULL);
    let net = network(&s);

    let report = match w.engine.destroy(&s).await.unwrap() {
        Teardown::Deleted(r) => r,
        other => panic!("expected a deletion, got {other:?}"),
    };
    let ranks: Vec<usize> = report.deleted.iter().map(|id| deletion_rank(id)).collect();
    assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "deletion order: {:?}", report.deleted);
    let count = |r: usize| ranks.iter().filter(|x| **x == r).count();
    assert_eq!((0..10).map(count).collect::<Vec<_>>(), [3, 1, 1, 1, 3, 2, 1, 2, 1, 1], "{:?}", report.deleted);
    assert_eq!(report.deleted.last(), Some(&key_name()));
    assert!(report.deleted.contains(net.vpc_id.as_ref().unwrap()));
    // Cross-group rules were revoked before their groups went: one batch
    // per group that has them, and each rule on its own when the batch is
    // refused as not found (moto matches a group pair with its
    // description, which a revoke does not send: 2 batches + 6 rules).
    let revokes = w.cloud.calls_by_operation().get("RevokeSecurityGroupIngress").copied().unwrap_or(0);
    assert!(revokes == 2 || revokes == 8, "{revokes} revokes");

    assert_eq!(tagged_counts(&w.client).await, [0; 9]);
    let vpc = w.client.describe_vpcs().filters(Filter::builder().name("vpc-id").values(net.vpc_id.unwrap()).build());
    assert!(vpc.send().await.unwrap().vpcs().is_empty());

    // Destroying again finds nothing and succeeds.
    match w.engine.destroy(&s).await.unwrap() {
        Teardown::Deleted(r) => assert!(r.deleted.is_empty(), "{:?}", r.deleted),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn ec2_destroy_of_a_half_deleted_or_absent_stack_succeeds() {
    let w = world();
    let s = stack();
    let ident = StackIdentity::of(&s);
    let net = converge_network(w.cloud.as_ref(), &ident, &s.spec, &key(), None).await.unwrap();
    w.cloud
        .launch_instance(&ident, &net, &instance_launch(&s.spec, &Default::default(), Tier::Backend, 0))
        .await
        .unwrap();
    // Someone removed the gateway and the key pair already.
    let igw = net.internet_gateway_id.clone().unwrap();
    let vpc = net.vpc_id.clone().unwrap();
    w.client.detach_internet_gateway().internet_gateway_id(&igw).vpc_id(&vpc).send().await.unwrap();
    w.client.delete_internet_gateway().internet_gateway_id(&igw).send().await.unwrap();
    w.client.delete_key_pair().key_name(key_name()).send().await.unwrap();

    let report = tear_down(w.cloud.as_ref(), &ident, Some(&net)).await.unwrap();
    assert!(!report.deleted.contains(&igw));
    // The instance, NAT gateway, Elastic IP, 3 groups, 2 route tables, 2 subnets, VPC.
    assert_eq!(report.deleted.len(), 1 + 1 + 1 + 3 + 2 + 2 + 1, "{:?}", report.deleted);
    assert_eq!(tagged_counts(&w.client).await, [0; 9]);

    // A stack that never existed.
    let other = StackIdentity { name: "ghost".into(), namespace: "default".into(), uid: "x".into() };
    assert!(tear_down(w.cloud.as_ref(), &other, None).await.unwrap().deleted.is_empty());
}

#[tokio::test]
async fn ec2_retain_leaves_everything() {
    let w = world();
    let mut s = stack();
    reconcile(&w, &mut s).await;
    s.spec.deletion_policy = DeletionPolicy::Retain;
    let before = w.cloud.api_calls();
    let kept = s.status.as_ref().and_then(|st| st.data_volume.as_ref()).and_then(|v| v.volume_id.clone());
    assert!(kept.is_some(), "the stack has a data volume");
    assert_eq!(w.engine.destroy(&s).await.unwrap(), Teardown::Retained { data_volume: kept });
    assert_eq!(w.cloud.api_calls(), before, "Retain makes no EC2 call");
    assert_eq!(tagged_counts(&w.client).await, FULL);
    let running = live_instances(&w.client)
        .await
        .iter()
        .filter(|i| i.state().and_then(|s| s.name()) == Some(&InstanceStateName::Running))
        .count();
    assert_eq!(running, 3);
}

#[tokio::test]
async fn ec2_plan_only_describes() {
    let w = world();
    let mut s = stack();
    let planner_cloud = Arc::new(w.moto.cloud());
    let planner = Engine::new(planner_cloud.clone(), Arc::new(NoSsh), EngineSettings::default());

    // Nothing exists yet: everything is planned, nothing is created.
    let plan = planner.plan(&s, None).await.unwrap();
    assert_eq!(plan.actions.first(), Some(&create_vpc()));
    let planned: Vec<Tier> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Infra(InfraAction::LaunchInstance(InstanceLaunch { tier, .. })) => Some(*tier),
            _ => None,
        })
        .collect();
    assert_eq!(planned, Tier::ALL.to_vec());
    assert_eq!(tagged_counts(&w.client).await, [0; 9]);

    // An existing stack with a stopped instance: the start is planned, not done.
    reconcile(&w, &mut s).await;
    let db = instance_of(&live_instances(&w.client).await, Tier::Database).instance_id().unwrap().to_string();
    w.client.stop_instances().instance_ids(&db).send().await.unwrap();
    let mut no_status = s.clone();
    no_status.status = None;
    for stack in [&s, &no_status] {
        let plan = planner.plan(stack, Some(&key())).await.unwrap();
        assert_eq!(
            plan.actions,
            [Action::Infra(InfraAction::StartInstance { tier: Tier::Database, instance_id: db.clone() })]
        );
    }
    let state = instance_of(&live_instances(&w.client).await, Tier::Database).state().and_then(|s| s.name()).cloned();
    assert_eq!(state, Some(InstanceStateName::Stopped));
    assert_eq!(tagged_counts(&w.client).await, FULL);

    let ops = planner_cloud.calls_by_operation();
    assert!(!ops.is_empty());
    assert!(ops.keys().all(|op| op.starts_with("Describe")), "plan called {ops:?}");
}

#[tokio::test]
async fn ec2_unreachable_endpoint_is_a_transport_error_with_its_cause() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cloud = Ec2Cloud::from_client(client_for(&format!("http://127.0.0.1:{port}")));
    let ident = StackIdentity::of(&stack());
    let err =
        tokio::time::timeout(Duration::from_secs(60), cloud.observe(&ident, None, None, NetworkLookup::TrustStatus))
            .await
            .expect("bounded by the retry policy")
            .unwrap_err();
    match &err {
        CloudError::Transport { operation, message } => {
            assert_eq!(*operation, "DescribeInstances");
            assert!(message.to_lowercase().contains("connect"), "{message}");
        }
        other => panic!("expected a transport error, got {other:?}"),
    }
    assert_eq!(
        votingstack::engine::conditions::infrastructure::cloud_reason(&err),
        votingstack::api::Reason::AwsUnavailable
    );
    assert_eq!(cloud.api_calls(), 1);
}

/// A stand-in EC2 endpoint that answers every request with one fixed response.
async fn fixed_endpoint(status: u16, body: &str) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    crate::scripted::scripted_endpoint(vec![(status, body.to_string())]).await
}

fn ec2_error_body(code: &str, message: &str) -> &'static str {
    Box::leak(
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>\
             <Message>{message}</Message></Error></Errors><RequestID>r-1</RequestID></Response>"
        )
        .into_boxed_str(),
    )
}

/// The operator's own client configuration (as `from_env` builds it), with
/// static test credentials instead of the environment's.
async fn production_cloud(endpoint: &str) -> Ec2Cloud {
    let shared = Ec2Cloud::config_loader("us-east-1")
        .credentials_provider(aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "test"))
        .load()
        .await;
    Ec2Cloud::from_sdk_config(&shared, Some(endpoint))
}

#[tokio::test]
async fn ec2_throttling_and_5xx_are_retried_but_auth_errors_are_not() {
    use std::sync::atomic::Ordering;
    let ident = StackIdentity::of(&stack());
    let throttled = fixed_endpoint(503, ec2_error_body("RequestLimitExceeded", "Request limit exceeded.")).await;
    let broken = fixed_endpoint(500, "").await;
    let denied = fixed_endpoint(
        403,
        ec2_error_body("UnauthorizedOperation", "You are not authorized to perform this operation."),
    )
    .await;
    let (c1, c2, c3) =
        (production_cloud(&throttled.0).await, production_cloud(&broken.0).await, production_cloud(&denied.0).await);
    let bounded = Duration::from_secs(90);
    let (r1, r2, r3) = tokio::time::timeout(bounded, async {
        tokio::join!(
            c1.observe(&ident, None, None, NetworkLookup::TrustStatus),
            c2.observe(&ident, None, None, NetworkLookup::TrustStatus),
            c3.observe(&ident, None, None, NetworkLookup::TrustStatus)
        )
    })
    .await
    .expect("retries are bounded");

    let e1 = r1.unwrap_err();
    assert!(
        matches!(&e1, CloudError::Api { code, kind: AwsErrorKind::Throttled, .. } if code == "RequestLimitExceeded"),
        "{e1:?}"
    );
    assert_eq!(throttled.1.load(Ordering::SeqCst), 5, "throttling is retried up to 5 attempts");

    let e2 = r2.unwrap_err();
    assert!(
        matches!(&e2, CloudError::Api { code, kind: AwsErrorKind::Unavailable, .. } if code == "HTTP 500"),
        "{e2:?}"
    );
    assert_eq!(broken.1.load(Ordering::SeqCst), 5, "5xx is retried up to 5 attempts");

    let e3 = r3.unwrap_err();
    assert_eq!(
        e3.to_string(),
        "EC2 DescribeInstances failed with UnauthorizedOperation: You are not authorized to perform this operation."
    );
    assert_eq!(
        votingstack::engine::conditions::infrastructure::cloud_reason(&e3),
        votingstack::api::Reason::AwsAuthFailed
    );
    assert_eq!(denied.1.load(Ordering::SeqCst), 1, "auth errors are not retried");
    // Each was one call for the operator, however many attempts the SDK made.
    assert_eq!((c1.api_calls(), c2.api_calls(), c3.api_calls()), (1, 1, 1));
}

/// Network steps a reconcile carried out, as their plan lines.
fn network_lines(actions: &[Action]) -> Vec<String> {
    actions.iter().filter(|a| matches!(a, Action::Infra(InfraAction::Network(_)))).map(ToString::to_string).collect()
}

#[tokio::test]
async fn ec2_spec_change_inventories_the_network_and_applies_its_steps() {
    let w = world();
    let mut s = stack();
    reconcile(&w, &mut s).await;
    let net = network(&s);

    // A new SSH CIDR: every group allows the new one and revokes the old one.
    s.spec.network.ssh_ingress_cidrs = vec!["198.51.100.0/24".into()];
    s.metadata.generation = Some(2);
    let mut expected = Vec::new();
    for tier in Tier::ALL {
        expected.push(format!("- revoke tcp/22 into {tier} from 203.0.113.0/24"));
        expected.push(format!("+ allow tcp/22 into {tier} from 198.51.100.0/24"));
    }
    let plan = w.engine.plan(&s, Some(&key())).await.unwrap();
    assert_eq!(network_lines(&plan.actions), expected);
    let out = reconcile(&w, &mut s).await;
    assert_eq!(network_lines(&out.applied), expected);
    assert!(launches(&out).is_empty());
    assert_eq!(network(&s), net, "the same network, changed in place");
    let sgs = w.client.describe_security_groups().filters(stack_filter()).send().await.unwrap();
    for g in sgs.security_groups() {
        let rules = rules_of(g, &net);
        assert!(rules.contains(&(22, "cidr:198.51.100.0/24".into())), "{rules:?}");
        assert!(!rules.contains(&(22, "cidr:203.0.113.0/24".into())), "{rules:?}");
    }

    // Steady again: the instances and the three groups, nothing planned.
    let before = w.cloud.calls_by_operation();
    let out = reconcile(&w, &mut s).await;
    assert!(out.applied.is_empty(), "{:?}", out.applied);
    let after = w.cloud.calls_by_operation();
    let made: Vec<(&str, u64)> =
        after.iter().map(|(op, n)| (*op, n - before.get(op).copied().unwrap_or(0))).filter(|(_, n)| *n > 0).collect();
    assert_eq!(made, [("DescribeInstances", 1), ("DescribeSecurityGroups", 1)]);

    // The key pair replaced by hand with another public key: re-imported
    // after the next spec change.
    let name = key_name();
    let name = name.as_str();
    w.client.delete_key_pair().key_name(name).send().await.unwrap();
    let other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGCSIWDsDojvjBmigBgGL0tXq6DEu9jtTCpbqitTT16F other";
    w.client
        .import_key_pair()
        .key_name(name)
        .public_key_material(aws_sdk_ec2::primitives::Blob::new(other))
        .send()
        .await
        .unwrap();
    s.metadata.generation = Some(3);
    let out = reconcile(&w, &mut s).await;
    assert_eq!(network_lines(&out.applied), [format!("~ re-import key pair {name} (it holds another public key)")]);
    let keys = w.client.describe_key_pairs().key_names(name).include_public_key(true).send().await.unwrap();
    let held = keys.key_pairs()[0].public_key().unwrap_or_default().to_string();
    let ours = key().public_openssh().split_whitespace().nth(1).unwrap_or_default().to_string();
    assert!(held.contains(&ours), "{held}");
}

#[tokio::test]
async fn ec2_a_rule_opened_by_hand_is_revoked_in_steady_state() {
    let w = world();
    let mut s = stack();
    reconcile(&w, &mut s).await;
    reconcile(&w, &mut s).await;
    let net = network(&s);
    let db = net.security_groups[&Tier::Database].clone();
    let open = aws_sdk_ec2::types::IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(5432)
        .to_port(5432)
        .ip_ranges(aws_sdk_ec2::types::IpRange::builder().cidr_ip("0.0.0.0/0").build())
        .build();
    w.client.authorize_security_group_ingress().group_id(&db).ip_permissions(open).send().await.unwrap();

    // No spec change: the steady reconcile sees the rule and takes it away.
    let before = w.cloud.calls_by_operation();
    let out = reconcile(&w, &mut s).await;
    assert_eq!(network_lines(&out.applied), ["- revoke tcp/5432 into database from 0.0.0.0/0"]);
    let after = w.cloud.calls_by_operation();
    let made: Vec<(&str, u64)> =
        after.iter().map(|(op, n)| (*op, n - before.get(op).copied().unwrap_or(0))).filter(|(_, n)| *n > 0).collect();
    assert_eq!(
        made,
        [("DescribeInstances", 2), ("DescribeSecurityGroups", 2), ("RevokeSecurityGroupIngress", 1)],
        "observe, revoke, observe again"
    );
    let g = w.client.describe_security_groups().group_ids(&db).send().await.unwrap();
    assert_eq!(
        rules_of(&g.security_groups()[0], &net),
        set(&[(22, "cidr:203.0.113.0/24"), (22, "sg:frontend"), (5432, "sg:backend"), (5432, "sg:frontend")])
    );
    assert_eq!(network(&s), net);

    // A group deleted by hand: the network is looked up in full and the group made again.
    w.client.delete_security_group().group_id(&db).send().await.unwrap();
    reconcile(&w, &mut s).await;
    let again = network(&s);
    assert_ne!(again.security_groups[&Tier::Database], db);
    assert_eq!(tagged_counts(&w.client).await, FULL);
}

#[tokio::test]
async fn ec2_retried_creates_are_adopted_and_unused_duplicates_deleted() {
    let w = world();
    let mut s = stack();
    reconcile(&w, &mut s).await;
    let net = network(&s);
    let ident = StackIdentity::of(&s);

    // CreateSecurityGroup and Authorize again, as after a lost answer: the
    // existing group is adopted and the existing rule counts as done.
    let mut ids = net.clone();
    ids.security_groups.remove(&Tier::Backend);
    let step = NetworkStep::CreateSecurityGroup { tier: Tier::Backend };
    w.cloud.apply_network_step(&ident, &step, &mut ids).await.unwrap();
    assert_eq!(ids.security_groups.get(&Tier::Backend), net.security_groups.get(&Tier::Backend));
    let rule = votingstack::model::Rule::tcp(6379, votingstack::model::Source::TierGroup(Tier::Frontend));
    let step = NetworkStep::Authorize { tier: Tier::Backend, rules: vec![(rule, "redis")] };
    w.cloud.apply_network_step(&ident, &step, &mut ids).await.unwrap();
    // CreateSubnet again: the taken block is adopted.
    let mut ids = net.clone();
    ids.private_subnet_id = None;
    let step = NetworkStep::CreateSubnet {
        role: votingstack::model::network::SubnetRole::Private,
        cidr: "10.42.2.0/24".into(),
        zone: votingstack::model::network::ZoneChoice::Offering(vec!["t3.small".into()]),
    };
    w.cloud.apply_network_step(&ident, &step, &mut ids).await.unwrap();
    assert_eq!(ids.private_subnet_id, net.private_subnet_id);

    // A VPC, a gateway and an Elastic IP with the stack's tag from creates
    // whose answers were lost: found at the next look-up and deleted.
    let tags = |r: ResourceType| {
        TagSpecification::builder()
            .resource_type(r)
            .tags(Tag::builder().key(STACK_LABEL).value("default/demo").build())
            .tags(Tag::builder().key(OWNER_TAG).value(&ident.uid).build())
            .build()
    };
    let extra_vpc = w
        .client
        .create_vpc()
        .cidr_block("10.42.0.0/16")
        .tag_specifications(tags(ResourceType::Vpc))
        .send()
        .await
        .unwrap()
        .vpc
        .and_then(|v| v.vpc_id)
        .unwrap();
    let extra_igw = w
        .client
        .create_internet_gateway()
        .tag_specifications(tags(ResourceType::InternetGateway))
        .send()
        .await
        .unwrap()
        .internet_gateway
        .and_then(|g| g.internet_gateway_id)
        .unwrap();
    let extra_eip = w
        .client
        .allocate_address()
        .domain(aws_sdk_ec2::types::DomainType::Vpc)
        .tag_specifications(tags(ResourceType::ElasticIp))
        .send()
        .await
        .unwrap()
        .allocation_id
        .unwrap();
    s.metadata.generation = Some(2);
    let out = reconcile(&w, &mut s).await;
    let mut lines = network_lines(&out.applied);
    lines.sort();
    let mut expected = vec![
        format!("- delete unused duplicate VPC {extra_vpc} (left by a retried create)"),
        format!("- delete unused duplicate internet gateway {extra_igw} (left by a retried create)"),
        format!("- delete unused duplicate Elastic IP {extra_eip} (left by a retried create)"),
    ];
    expected.sort();
    assert_eq!(lines, expected);
    assert_eq!(network(&s), net, "the stack kept its own network");
    assert_eq!(tagged_counts(&w.client).await, FULL);
}

#[tokio::test]
async fn ec2_no_zone_offering_every_instance_type_is_terminal_and_names_them() {
    let w = world();
    let mut s = stack();
    // Not offered in any zone of us-east-1 (moto's offerings follow AWS's).
    s.spec.instances.database =
        Some(votingstack::api::InstanceOverride { instance_type: Some("u-24tb1.metal".into()), ..Default::default() });
    reconcile(&w, &mut s).await;
    let (status, reason, message) = infra_condition(&s);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "AwsInvalidParameter"), "{message}");
    assert!(message.contains("no availability zone of us-east-1"), "{message}");
    assert!(message.contains("(t3.small, u-24tb1.metal)"), "{message}");
    assert_eq!(s.status.as_ref().and_then(|st| st.phase), Some(votingstack::api::Phase::Failed));
    let subnets = w.client.describe_subnets().filters(stack_filter()).send().await.unwrap();
    assert!(subnets.subnets().is_empty(), "no subnet without a zone: {:?}", subnets.subnets());
    let igws = w.client.describe_internet_gateways().filters(stack_filter()).send().await.unwrap();
    assert!(igws.internet_gateways().is_empty(), "nothing after the refused subnet: {igws:?}");
    assert_eq!(network(&s).availability_zone, None);
}

#[tokio::test]
async fn ec2_a_subnet_in_another_zone_is_reported_not_replaced() {
    let w = world();
    let mut s = stack();
    reconcile(&w, &mut s).await;
    let net = network(&s);
    let zone = net.availability_zone.clone().expect("zone recorded");
    let other = if zone == "us-east-1b" { "us-east-1c" } else { "us-east-1b" };
    s.spec.network.availability_zone = Some(other.into());
    s.metadata.generation = Some(2);
    let out = reconcile(&w, &mut s).await;
    assert!(network_lines(&out.applied).is_empty(), "{:?}", out.applied);
    let (status, reason, message) = infra_condition(&s);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "NetworkDrift"), "{message}");
    assert!(message.contains(&format!("is in {zone}, not in {other}")), "{message}");
    // Still reported on the next, trusted, reconcile.
    reconcile(&w, &mut s).await;
    assert_eq!(infra_condition(&s).1, "NetworkDrift");
    assert_eq!(network(&s), net);
    assert_eq!(tagged_counts(&w.client).await, FULL);
}

#[tokio::test]
async fn ec2_snapshots_are_tagged_found_by_tag_deleted_and_restored_in_the_zone() {
    use votingstack::model::{Slot, SnapshotState};
    let w = world();
    let mut s = stack();
    reconcile(&w, &mut s).await;
    let ident = StackIdentity::of(&s);
    let volume = s.status.as_ref().and_then(|st| st.data_volume.clone()).expect("a data volume");
    let (volume_id, zone) = (volume.volume_id.unwrap(), volume.availability_zone.unwrap());

    let taken = w.cloud.create_snapshot(&ident, &volume_id, &Slot::Requested("r1".into())).await.unwrap();
    assert!(taken.id.starts_with("snap-"), "{taken:?}");
    assert_eq!(taken.volume_id, volume_id);
    let described = w.client.describe_snapshots().snapshot_ids(&taken.id).send().await.unwrap();
    let tags = described.snapshots()[0].tags();
    assert_stack_tags("snapshot", tags);
    assert_eq!(tag(tags, "votingstack.dev/role"), Some("postgres-data-snapshot"));
    assert_eq!(tag(tags, "votingstack.dev/snapshot-slot"), Some("request/r1"));

    // Found by its tags, with its slot; another stack's snapshot is not.
    let other = StackIdentity { uid: "someone-else".into(), ..ident.clone() };
    w.cloud.create_snapshot(&other, &volume_id, &Slot::Final).await.unwrap();
    let found = w.cloud.snapshots(&ident).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].slot.as_deref(), Some("request/r1"));
    let by_id = w.cloud.snapshot_by_id(&taken.id).await.unwrap().expect("known by id");
    assert!(matches!(by_id.state, SnapshotState::Pending | SnapshotState::Completed), "{by_id:?}");
    assert_eq!(by_id.size_gib, 10);

    // A volume restored from it: in the zone, from the snapshot, tagged with its origin.
    let restored = w.cloud.create_data_volume(&ident, &zone, 12, 7, Some(&taken.id), None).await.unwrap();
    let v = w.client.describe_volumes().volume_ids(&restored.id).send().await.unwrap();
    let v = &v.volumes()[0];
    assert_eq!(v.snapshot_id(), Some(taken.id.as_str()));
    assert_eq!(v.availability_zone(), Some(zone.as_str()));
    assert_eq!(tag(v.tags(), "votingstack.dev/origin"), Some(format!("snapshot:{}", taken.id).as_str()));

    // Deleted, and deleting it again is no error.
    w.cloud.delete_snapshot(&taken.id).await.unwrap();
    w.cloud.delete_snapshot(&taken.id).await.unwrap();
    assert!(w.cloud.snapshots(&ident).await.unwrap().is_empty());
    let calls = w.cloud.calls_by_operation();
    assert_eq!(calls.get("CreateSnapshot"), Some(&2));
    assert_eq!(calls.get("DeleteSnapshot"), Some(&2));
}

#[tokio::test]
async fn ec2_destroy_with_the_default_policy_keeps_a_completed_final_snapshot() {
    let w = world();
    let mut s = stack();
    reconcile(&w, &mut s).await;
    let volume = s.status.as_ref().and_then(|st| st.data_volume.clone()).and_then(|v| v.volume_id).unwrap();
    let report = match w.engine.destroy(&s).await.unwrap() {
        Teardown::Deleted(r) => r,
        other => panic!("expected a deletion, got {other:?}"),
    };
    assert_eq!(report.snapshots.len(), 1, "{report:?}");
    assert!(report.deleted.contains(&volume), "{report:?}");
    let snap = w.client.describe_snapshots().snapshot_ids(&report.snapshots[0]).send().await.unwrap();
    let snap = &snap.snapshots()[0];
    assert_eq!(snap.volume_id(), Some(volume.as_str()));
    assert_eq!(snap.state().map(|s| s.as_str()), Some("completed"));
    assert_eq!(tag(snap.tags(), "votingstack.dev/snapshot-slot"), Some("final"));
}

/// A network as a user would build it outside the operator: a VPC with a
/// public subnet routed to an internet gateway and a private subnet whose
/// route table has no way out yet. Returns (vpc, public, private, private table).
async fn users_network(c: &Client) -> (String, String, String, String) {
    let vpc = c.create_vpc().cidr_block("10.50.0.0/16").send().await.unwrap();
    let vpc = vpc.vpc().and_then(|v| v.vpc_id()).unwrap().to_owned();
    let subnet = |cidr: &'static str| {
        let vpc = vpc.clone();
        async move {
            let out = c.create_subnet().vpc_id(vpc).cidr_block(cidr).availability_zone("us-east-1a").send().await;
            out.unwrap().subnet().and_then(|s| s.subnet_id()).unwrap().to_owned()
        }
    };
    let (public, private) = (subnet("10.50.1.0/24").await, subnet("10.50.2.0/24").await);
    let igw = c.create_internet_gateway().send().await.unwrap();
    let igw = igw.internet_gateway().and_then(|g| g.internet_gateway_id()).unwrap().to_owned();
    c.attach_internet_gateway().internet_gateway_id(&igw).vpc_id(&vpc).send().await.unwrap();
    let table = |subnet: String| {
        let vpc = vpc.clone();
        async move {
            let t = c.create_route_table().vpc_id(vpc).send().await.unwrap();
            let t = t.route_table().and_then(|t| t.route_table_id()).unwrap().to_owned();
            c.associate_route_table().route_table_id(&t).subnet_id(subnet).send().await.unwrap();
            t
        }
    };
    let public_table = table(public.clone()).await;
    c.create_route()
        .route_table_id(&public_table)
        .destination_cidr_block("0.0.0.0/0")
        .gateway_id(&igw)
        .send()
        .await
        .unwrap();
    let private_table = table(private.clone()).await;
    (vpc, public, private, private_table)
}

#[tokio::test]
async fn ec2_a_network_you_bring_is_checked_used_and_left_untouched() {
    let w = world();
    let c = &w.client;
    let (vpc, public, private, private_table) = users_network(c).await;
    let mut s = stack();
    s.spec.network.vpc_id = Some(vpc.clone());
    s.spec.network.public_subnet_id = Some(public.clone());
    s.spec.network.private_subnet_id = Some(private.clone());

    // The private subnet has no way out: refused, nothing created.
    let out = reconcile(&w, &mut s).await;
    assert!(out.applied.is_empty(), "{:?}", out.applied);
    let (status, reason, message) = infra_condition(&s);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "NetworkUnusable"), "{message}");
    assert!(message.contains("spec.network.privateSubnetId") && message.contains(&private_table), "{message}");
    assert_eq!(tagged_counts(c).await, [0; 9]);

    // The user routes it through a NAT gateway of theirs: the stack gets
    // its groups (in the user's VPC), key pair and instances, nothing else.
    let eip = c.allocate_address().domain(aws_sdk_ec2::types::DomainType::Vpc).send().await.unwrap();
    let nat =
        c.create_nat_gateway().subnet_id(&public).allocation_id(eip.allocation_id().unwrap()).send().await.unwrap();
    let nat = nat.nat_gateway().and_then(|n| n.nat_gateway_id()).unwrap().to_owned();
    c.create_route()
        .route_table_id(&private_table)
        .destination_cidr_block("0.0.0.0/0")
        .nat_gateway_id(&nat)
        .send()
        .await
        .unwrap();
    let out = reconcile(&w, &mut s).await;
    assert_eq!(launches(&out), Tier::ALL.to_vec(), "{:?}", out.applied);
    let (status, reason, message) = infra_condition(&s);
    assert_eq!((status.as_str(), reason.as_str()), ("True", "InstancesRunning"), "{message}");
    assert_eq!(tagged_counts(c).await, [0, 0, 0, 0, 3, 1, 3, 0, 0]);
    let net = network(&s);
    assert!(net.provided, "{net:?}");
    assert_eq!((net.vpc_id.as_deref(), net.subnet_id.as_deref()), (Some(vpc.as_str()), Some(public.as_str())));
    assert_eq!(net.private_subnet_id.as_deref(), Some(private.as_str()));
    assert!(net.internet_gateway_id.is_none() && net.nat_gateway_id.is_none() && net.route_table_id.is_none());
    let groups = c.describe_security_groups().filters(stack_filter()).send().await.unwrap();
    assert!(groups.security_groups().iter().all(|g| g.vpc_id() == Some(vpc.as_str())));
    for i in live_instances(c).await {
        let want = if tier_of(&i) == Some(Tier::Frontend) { &public } else { &private };
        assert_eq!(i.subnet_id(), Some(want.as_str()), "{:?}", tier_of(&i));
    }

    // Steady state: nothing more to do.
    let out = reconcile(&w, &mut s).await;
    assert!(out.applied.is_empty(), "{:?}", out.applied);

    // Destroy deletes the stack's own and leaves the user's network as it was.
    match w.engine.destroy(&s).await.unwrap() {
        Teardown::Deleted(r) => {
            for id in [&vpc, &public, &private, &private_table, &nat] {
                assert!(!r.deleted.contains(id), "{id} was deleted: {:?}", r.deleted);
            }
        }
        other => panic!("expected a deletion, got {other:?}"),
    }
    assert_eq!(tagged_counts(c).await, [0; 9]);
    let id = |name: &str, v: &String| Filter::builder().name(name).values(v).build();
    assert_eq!(c.describe_vpcs().filters(id("vpc-id", &vpc)).send().await.unwrap().vpcs().len(), 1);
    let subnets = c.describe_subnets().filters(id("vpc-id", &vpc)).send().await.unwrap();
    assert_eq!(subnets.subnets().len(), 2);
    let tables = c.describe_route_tables().filters(id("route-table-id", &private_table)).send().await.unwrap();
    let routes = tables.route_tables()[0].routes();
    assert!(routes.iter().any(|r| r.nat_gateway_id() == Some(nat.as_str())), "{routes:?}");
    let nats = c.describe_nat_gateways().filter(id("nat-gateway-id", &nat)).send().await.unwrap();
    assert_eq!(nats.nat_gateways()[0].state().map(|s| s.as_str()), Some("available"));
}
