//! What real EC2 asks of the operator beyond moto's defaults: resources
//! owned by one stack object (two stacks named alike keep apart), launch
//! hardening (IMDSv2, an encrypted gp3 root volume), a recorded instance
//! gone only once EC2 says so, ClientTokens never sent twice, and the
//! NotFound of a fresh id retried.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, HttpTokensState, Instance, InstanceMetadataEndpointState, InstanceStateName, Tag};
use aws_sdk_ec2::Client;
use votingstack::api::{NetworkStatus, Tier, VotingStack};
use votingstack::cloud::ec2::{Ec2Cloud, MAX_ATTEMPTS};
use votingstack::cloud::{AwsErrorKind, Cloud, StackIdentity, OWNER_TAG};
use votingstack::engine::{Engine, EngineSettings, Outcome, Teardown};
use votingstack::model::{Action, InfraAction, InstanceLaunch, NetworkStep};

use crate::fakes::FakeHosts;
use crate::fixtures;
use crate::moto::{infra_ready, reconcile, Moto, AMI};
use crate::scripted::scripted_endpoint;

/// An engine over moto whose hosts never answer: only EC2 is exercised.
fn engine(moto: &Moto) -> (Engine, Arc<Ec2Cloud>) {
    let cloud = Arc::new(moto.cloud());
    let hosts = FakeHosts::default();
    hosts.state.lock().expect("hosts state").all_down = true;
    (Engine::new(cloud.clone(), Arc::new(hosts), EngineSettings::default()), cloud)
}

/// `default/demo` with moto's AMI and the given uid.
fn stack_with_uid(uid: &str) -> VotingStack {
    let mut s = fixtures::stack();
    s.spec.instances.ami = Some(AMI.into());
    s.metadata.uid = Some(uid.into());
    s
}

fn launches(out: &Outcome) -> Vec<(Tier, u32)> {
    out.applied
        .iter()
        .filter_map(|a| match a {
            Action::Infra(InfraAction::LaunchInstance(InstanceLaunch { tier, replacement, .. })) => {
                Some((*tier, *replacement))
            }
            _ => None,
        })
        .collect()
}

fn owner_filter(uid: &str) -> Filter {
    Filter::builder().name(format!("tag:{OWNER_TAG}")).values(uid).build()
}

fn tag<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

/// The instances carrying `uid`'s owner tag that are not terminated.
async fn owned_instances(c: &Client, uid: &str) -> Vec<Instance> {
    let out = c.describe_instances().filters(owner_filter(uid)).send().await.expect("DescribeInstances");
    out.reservations()
        .iter()
        .flat_map(|r| r.instances().iter().cloned())
        .filter(|i| i.state().and_then(|s| s.name()) != Some(&InstanceStateName::Terminated))
        .collect()
}

/// VPCs, subnets, gateways, route tables, groups, key pairs (by the
/// stack's name) and live instances that belong to `stack`.
async fn owned_counts(c: &Client, stack: &VotingStack) -> [usize; 7] {
    let uid = stack.metadata.uid.clone().expect("uid");
    let f = || owner_filter(&uid);
    let key_name = StackIdentity::of(stack).resource_name();
    [
        c.describe_vpcs().filters(f()).send().await.expect("vpcs").vpcs().len(),
        c.describe_subnets().filters(f()).send().await.expect("subnets").subnets().len(),
        c.describe_internet_gateways().filters(f()).send().await.expect("igws").internet_gateways().len(),
        c.describe_route_tables().filters(f()).send().await.expect("rts").route_tables().len(),
        c.describe_security_groups().filters(f()).send().await.expect("sgs").security_groups().len(),
        c.describe_key_pairs()
            .filters(Filter::builder().name("key-name").values(key_name).build())
            .send()
            .await
            .expect("key pairs")
            .key_pairs()
            .len(),
        owned_instances(c, &uid).await.len(),
    ]
}

const UID_A: &str = "6f1c2a9e-0000-4000-8000-00000000000a";
const UID_B: &str = "6f1c2a9e-0000-4000-8000-00000000000b";

#[tokio::test]
async fn ec2_owner_two_stacks_named_alike_keep_to_their_own_resources() {
    let moto = Moto::start();
    let (engine, _cloud) = engine(&moto);
    let c = moto.client();
    let (mut a, mut b) = (stack_with_uid(UID_A), stack_with_uid(UID_B));
    assert_eq!(
        (a.metadata.name.clone(), a.metadata.namespace.clone()),
        (b.metadata.name.clone(), b.metadata.namespace.clone())
    );

    reconcile(&engine, &mut a).await;
    let out = reconcile(&engine, &mut b).await;
    assert_eq!(launches(&out).len(), 3, "b adopts none of a's instances: {:?}", out.applied);
    for s in [&a, &b] {
        let (status, message) = infra_ready(s);
        assert_eq!(status, "True", "{message}");
        assert_eq!(owned_counts(&c, s).await, [1, 2, 1, 2, 3, 1, 3]);
    }
    let (ka, kb) = (StackIdentity::of(&a).resource_name(), StackIdentity::of(&b).resource_name());
    assert_ne!(ka, kb, "key pair names are unique per account and region");
    assert!(ka.starts_with("votingstack-default-demo-") && kb.starts_with("votingstack-default-demo-"));
    let net = |s: &VotingStack| s.status.as_ref().and_then(|st| st.network.clone()).expect("network");
    assert_ne!(net(&a).vpc_id, net(&b).vpc_id);
    assert_eq!(net(&a).key_pair_name.as_deref(), Some(ka.as_str()));
    for i in owned_instances(&c, UID_B).await {
        assert_eq!(tag(i.tags(), OWNER_TAG), Some(UID_B));
        assert_eq!(i.key_name(), Some(kb.as_str()));
    }

    // Each sees its own three instances: no duplicate to terminate, nothing to launch.
    for s in [&mut a, &mut b] {
        let out = reconcile(&engine, s).await;
        assert!(out.applied.is_empty(), "{:?}", out.applied);
    }

    // Destroying a leaves b whole.
    let b_instances: BTreeSet<String> =
        owned_instances(&c, UID_B).await.iter().filter_map(|i| i.instance_id().map(String::from)).collect();
    let report = match engine.destroy(&a).await.expect("destroy a") {
        Teardown::Deleted(r) => r,
        other => panic!("expected a deletion, got {other:?}"),
    };
    assert!(report.deleted.iter().all(|id| !b_instances.contains(id)), "{:?}", report.deleted);
    assert_eq!(report.deleted.last(), Some(&ka));
    assert_eq!(owned_counts(&c, &a).await, [0; 7]);
    assert_eq!(owned_counts(&c, &b).await, [1, 2, 1, 2, 3, 1, 3]);
    let running = owned_instances(&c, UID_B)
        .await
        .iter()
        .filter(|i| i.state().and_then(|s| s.name()) == Some(&InstanceStateName::Running))
        .count();
    assert_eq!(running, 3);
    let out = reconcile(&engine, &mut b).await;
    assert!(out.applied.is_empty(), "{:?}", out.applied);
    assert_eq!(infra_ready(&b).0, "True");
}

#[tokio::test]
async fn ec2_owner_instances_launch_with_imdsv2_and_an_encrypted_gp3_root_volume() {
    let moto = Moto::start();
    let (engine, cloud) = engine(&moto);
    let c = moto.client();
    let mut s = stack_with_uid(UID_A);
    reconcile(&engine, &mut s).await;
    let instances = owned_instances(&c, UID_A).await;
    assert_eq!(instances.len(), 3);
    for i in &instances {
        let id = i.instance_id().unwrap_or_default();
        let md = i.metadata_options().unwrap_or_else(|| panic!("{id}: no metadata options"));
        assert_eq!(md.http_tokens(), Some(&HttpTokensState::Required), "{id}: IMDSv2 only");
        assert_eq!(md.http_put_response_hop_limit(), Some(1), "{id}: one hop");
        assert_eq!(md.http_endpoint(), Some(&InstanceMetadataEndpointState::Enabled), "{id}");

        let root = i.root_device_name().unwrap_or_else(|| panic!("{id}: no root device"));
        let mapping = i
            .block_device_mappings()
            .iter()
            .find(|m| m.device_name() == Some(root))
            .unwrap_or_else(|| panic!("{id}: no mapping for {root}"));
        let ebs = mapping.ebs().unwrap_or_else(|| panic!("{id}: root is not EBS"));
        assert_eq!(ebs.delete_on_termination(), Some(true), "{id}");
        let volume_id = ebs.volume_id().unwrap_or_default();
        let vols = c.describe_volumes().volume_ids(volume_id).send().await.expect("DescribeVolumes");
        let v = &vols.volumes()[0];
        assert_eq!(v.volume_type().map(|t| t.as_str()), Some("gp3"), "{id}");
        assert_eq!(v.encrypted(), Some(true), "{id}");
        assert_eq!(tag(v.tags(), OWNER_TAG), Some(UID_A), "{id}: the volume carries the owner tag");
    }
    // The AMI's root device was looked up once for three launches.
    assert_eq!(cloud.calls_by_operation().get("DescribeImages"), Some(&1));
}

#[tokio::test]
async fn ec2_owner_a_new_instance_never_reuses_a_client_token_even_without_status() {
    let moto = Moto::start();
    let (engine, _cloud) = engine(&moto);
    let c = moto.client();
    let mut s = stack_with_uid(UID_A);
    let ident = StackIdentity::of(&s);
    reconcile(&engine, &mut s).await;
    let front = owned_instances(&c, UID_A)
        .await
        .into_iter()
        .find(|i| tag(i.tags(), votingstack::api::TIER_LABEL) == Some("frontend"))
        .expect("frontend instance");
    assert_eq!(front.client_token(), Some(ident.client_token(Tier::Frontend, 0).as_str()));
    c.terminate_instances().instance_ids(front.instance_id().unwrap_or_default()).send().await.expect("terminate");

    // Status lost (a CLI state file restored from an old backup, say): the
    // terminated instance still holds token 0, so the new one takes 1.
    s.status = None;
    let out = reconcile(&engine, &mut s).await;
    assert_eq!(launches(&out), [(Tier::Frontend, 1)], "{:?}", out.applied);
    let tokens: BTreeSet<String> = owned_instances(&c, UID_A)
        .await
        .iter()
        .filter(|i| tag(i.tags(), votingstack::api::TIER_LABEL) == Some("frontend"))
        .filter_map(|i| i.client_token().map(String::from))
        .collect();
    assert_eq!(tokens, BTreeSet::from([ident.client_token(Tier::Frontend, 1)]));
    let recorded = s.status.as_ref().and_then(|st| st.tiers.as_ref()).and_then(|t| t.frontend.clone());
    assert_eq!(recorded.map(|t| t.replacements), Some(1));
}

#[tokio::test]
async fn ec2_owner_a_recorded_instance_missing_from_the_tag_look_up_is_asked_for_by_id() {
    let moto = Moto::start();
    let (engine, cloud) = engine(&moto);
    let c = moto.client();
    let mut s = stack_with_uid(UID_A);
    reconcile(&engine, &mut s).await;
    let db_id = s
        .status
        .as_ref()
        .and_then(|st| st.tiers.as_ref())
        .and_then(|t| t.database.clone())
        .and_then(|t| t.instance_id)
        .expect("database instance recorded");
    // The tag look-up no longer lists it (as while tags lag a fresh launch).
    c.delete_tags().resources(&db_id).tags(Tag::builder().key(OWNER_TAG).build()).send().await.expect("DeleteTags");
    let before = cloud.calls_by_operation().get("DescribeInstances").copied().unwrap_or(0);
    let out = reconcile(&engine, &mut s).await;
    assert!(launches(&out).is_empty(), "a running instance is not replaced: {:?}", out.applied);
    assert!(cloud.calls_by_operation().get("DescribeInstances").copied().unwrap_or(0) > before + 1);
    let recorded = s.status.as_ref().and_then(|st| st.tiers.as_ref()).and_then(|t| t.database.clone());
    assert_eq!(recorded.and_then(|t| t.instance_id), Some(db_id.clone()));

    // Once EC2 says it is terminated, it is replaced.
    c.terminate_instances().instance_ids(&db_id).send().await.expect("terminate");
    let out = reconcile(&engine, &mut s).await;
    assert_eq!(launches(&out), [(Tier::Database, 1)], "{:?}", out.applied);
    assert_eq!(infra_ready(&s).0, "True");
}

fn error_reply(code: &str) -> (u16, String) {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>\
         <Message>{code} (scripted)</Message></Error></Errors><RequestID>r-1</RequestID></Response>"
    );
    (400, body)
}

/// The operator's own client configuration, aimed at `endpoint`.
async fn production_cloud(endpoint: &str) -> Ec2Cloud {
    let shared = Ec2Cloud::config_loader("us-east-1")
        .credentials_provider(aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "test"))
        .load()
        .await;
    Ec2Cloud::from_sdk_config(&shared, Some(endpoint))
}

#[tokio::test]
async fn ec2_owner_not_found_of_a_fresh_id_is_retried_but_a_deletions_is_the_answer() {
    let described = "<DescribeInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
                     <requestId>r-2</requestId><reservationSet/></DescribeInstancesResponse>";
    let lagging = scripted_endpoint(vec![
        error_reply("InvalidInstanceID.NotFound"),
        error_reply("InvalidInstanceID.NotFound"),
        (200, described.to_string()),
    ])
    .await;
    let gone = scripted_endpoint(vec![error_reply("InvalidInstanceID.NotFound")]).await;
    let fresh_subnet = scripted_endpoint(vec![error_reply("InvalidSubnetID.NotFound")]).await;
    let bad_ami = scripted_endpoint(vec![error_reply("InvalidAMIID.NotFound")]).await;
    let deleted = scripted_endpoint(vec![error_reply("InvalidSubnetID.NotFound")]).await;
    let clouds = [
        production_cloud(&lagging.0).await,
        production_cloud(&gone.0).await,
        production_cloud(&fresh_subnet.0).await,
        production_cloud(&bad_ami.0).await,
        production_cloud(&deleted.0).await,
    ];
    let id = vec!["i-0123456789abcdef0".to_string()];
    let run = |c: &Ec2Cloud, ami: &str| {
        c.client().run_instances().image_id(ami).min_count(1).max_count(1).subnet_id("subnet-0fresh").send()
    };
    let (r1, r2, r3, r4, r5) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(
            clouds[0].instances_by_id(&id),
            clouds[1].instances_by_id(&id),
            run(&clouds[2], "ami-04681a1dbd79675a5"),
            run(&clouds[3], "ami-0000000000000000f"),
            clouds[4].client().delete_subnet().subnet_id("subnet-0gone").send(),
        )
    })
    .await
    .expect("retries are bounded");

    // DescribeInstances by id: NotFound twice, then an answer without it:
    // asked again, a second apart, until the fresh id's window is spent.
    assert_eq!(r1.expect("found after retries"), []);
    assert_eq!(lagging.1.load(Ordering::SeqCst), 3 + (MAX_ATTEMPTS as usize - 1));
    // Still NotFound after every attempt: gone.
    assert_eq!(r2.expect("NotFound means gone"), []);
    assert_eq!(gone.1.load(Ordering::SeqCst), MAX_ATTEMPTS as usize);
    // RunInstances naming a subnet created moments ago: every attempt.
    let e3 = r3.expect_err("scripted NotFound");
    assert_eq!(aws_sdk_ec2::error::ProvideErrorMetadata::code(&e3), Some("InvalidSubnetID.NotFound"));
    assert_eq!(fresh_subnet.1.load(Ordering::SeqCst), MAX_ATTEMPTS as usize);
    // An unknown AMI is the user's mistake: no retry.
    assert!(r4.is_err());
    assert_eq!(bad_ami.1.load(Ordering::SeqCst), 1);
    // A deletion's NotFound is its answer (already gone): no retry.
    assert!(r5.is_err());
    assert_eq!(deleted.1.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn ec2_owner_a_refused_nat_gateway_leaves_no_elastic_ip_billing() {
    let released = "<ReleaseAddressResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
                    <requestId>r-2</requestId><return>true</return></ReleaseAddressResponse>";
    let (endpoint, requests) =
        scripted_endpoint(vec![error_reply("NatGatewayLimitExceeded"), (200, released.to_string())]).await;
    let cloud = production_cloud(&endpoint).await;
    let ident = StackIdentity { name: "demo".into(), namespace: "default".into(), uid: "u-nat".into() };
    let mut ids = NetworkStatus {
        subnet_id: Some("subnet-0public".into()),
        elastic_ip_allocation_id: Some("eipalloc-0fresh".into()),
        ..Default::default()
    };
    let step = NetworkStep::CreateNatGateway { attempt: 0 };
    let err = tokio::time::timeout(Duration::from_secs(30), cloud.apply_network_step(&ident, &step, &mut ids))
        .await
        .expect("bounded")
        .expect_err("the quota refuses the gateway");
    assert_eq!(err.kind(), AwsErrorKind::Quota, "{err}");
    assert!(err.to_string().contains("NAT gateways per Availability Zone"), "{err}");
    // Refused once (a quota is not retried), then the address is released
    // in the same step and forgotten: the next pass allocates one again.
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    let calls = cloud.calls_by_operation();
    assert_eq!((calls.get("CreateNatGateway"), calls.get("ReleaseAddress")), (Some(&1), Some(&1)), "{calls:?}");
    assert_eq!(ids.elastic_ip_allocation_id, None);
    assert_eq!(ids.nat_gateway_id, None);
}

fn ok_reply(operation: &str) -> (u16, String) {
    let body = format!(
        "<{operation}Response xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
         <requestId>r-2</requestId><return>true</return></{operation}Response>"
    );
    (200, body)
}

#[tokio::test]
async fn ec2_owner_a_stale_default_route_is_replaced_in_place() {
    let ident = StackIdentity { name: "demo".into(), namespace: "default".into(), uid: "u-route".into() };
    let ids = || NetworkStatus {
        route_table_id: Some("rtb-0public".into()),
        internet_gateway_id: Some("igw-0new".into()),
        ..Default::default()
    };
    let step = NetworkStep::RouteToGateway { replaces: Some("igw-0old".into()) };
    // One ReplaceRoute: the subnet is never without its default route.
    let (endpoint, requests) = scripted_endpoint(vec![ok_reply("ReplaceRoute")]).await;
    let cloud = production_cloud(&endpoint).await;
    let mut done = ids();
    cloud.apply_network_step(&ident, &step, &mut done).await.expect("replaced");
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    assert_eq!(cloud.calls_by_operation().into_iter().collect::<Vec<_>>(), [("ReplaceRoute", 1)]);
    // The stale route went meanwhile: created instead, without waiting.
    let (endpoint, requests) =
        scripted_endpoint(vec![error_reply("InvalidRoute.NotFound"), ok_reply("CreateRoute")]).await;
    let cloud = production_cloud(&endpoint).await;
    let mut done = ids();
    tokio::time::timeout(Duration::from_secs(30), cloud.apply_network_step(&ident, &step, &mut done))
        .await
        .expect("bounded")
        .expect("created");
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    assert_eq!(cloud.calls_by_operation().into_iter().collect::<Vec<_>>(), [("CreateRoute", 1), ("ReplaceRoute", 1)]);
}

#[tokio::test]
async fn ec2_owner_teardown_revokes_references_one_by_one_when_one_is_gone() {
    use votingstack::model::{Rule, Source, TeardownStep};
    let ident = StackIdentity { name: "demo".into(), namespace: "default".into(), uid: "u-refs".into() };
    // The batch is refused for the rule that is gone; the other is revoked
    // on its own, the gone one skipped.
    let (endpoint, requests) = scripted_endpoint(vec![
        error_reply("InvalidPermission.NotFound"),
        ok_reply("RevokeSecurityGroupIngress"),
        error_reply("InvalidPermission.NotFound"),
    ])
    .await;
    let cloud = production_cloud(&endpoint).await.with_waits(Duration::from_millis(10), Duration::from_secs(5));
    let step = TeardownStep::RevokeGroupReferences {
        group_id: "sg-0database".into(),
        rules: vec![
            Rule::tcp(5432, Source::Group("sg-0backend".into())),
            Rule::tcp(22, Source::Group("sg-0frontend".into())),
        ],
    };
    tokio::time::timeout(Duration::from_secs(30), cloud.destroy(&ident, &[step]))
        .await
        .expect("bounded")
        .expect("every reference is revoked or gone");
    assert_eq!(requests.load(Ordering::SeqCst), 3);
    assert_eq!(cloud.calls_by_operation().get("RevokeSecurityGroupIngress"), Some(&3));
}

#[tokio::test]
async fn ec2_owner_an_unknown_id_hides_no_other_instance() {
    let one = "<DescribeInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
               <requestId>r-2</requestId><reservationSet><item><reservationId>r-1</reservationId>\
               <instancesSet><item><instanceId>i-0known</instanceId>\
               <instanceState><code>16</code><name>running</name></instanceState>\
               </item></instancesSet></item></reservationSet></DescribeInstancesResponse>";
    let (endpoint, requests) = scripted_endpoint(vec![(200, one.to_string())]).await;
    let cloud = production_cloud(&endpoint).await;
    let ids = vec!["i-0known".to_string(), "i-0unknown".to_string()];
    let found = tokio::time::timeout(Duration::from_secs(30), cloud.instances_by_id(&ids))
        .await
        .expect("bounded")
        .expect("one filtered look-up answers for both ids");
    assert_eq!(found.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["i-0known"]);
    // The unknown id is asked for again within the fresh-id window, the
    // known one is kept once.
    assert_eq!(requests.load(Ordering::SeqCst), MAX_ATTEMPTS as usize);
}

#[tokio::test]
async fn ec2_owner_a_groups_rules_are_added_in_one_call_and_a_duplicate_adds_only_the_missing() {
    use votingstack::model::{Rule, Source};
    let ident = StackIdentity { name: "demo".into(), namespace: "default".into(), uid: "u-rules".into() };
    let group = |perms: &str| {
        format!(
            "<DescribeSecurityGroupsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
             <requestId>r-3</requestId><securityGroupInfo><item><groupId>sg-0backend</groupId>\
             <groupName>g</groupName><ipPermissions>{perms}</ipPermissions></item></securityGroupInfo>\
             </DescribeSecurityGroupsResponse>"
        )
    };
    let ssh = "<item><ipProtocol>tcp</ipProtocol><fromPort>22</fromPort><toPort>22</toPort>\
               <ipRanges><item><cidrIp>203.0.113.0/24</cidrIp></item></ipRanges></item>";
    let redis = "<item><ipProtocol>tcp</ipProtocol><fromPort>6379</fromPort><toPort>6379</toPort>\
                 <groups><item><groupId>sg-0frontend</groupId></item></groups></item>";
    let mut ids = NetworkStatus::default();
    ids.security_groups.insert(Tier::Backend, "sg-0backend".into());
    ids.security_groups.insert(Tier::Frontend, "sg-0frontend".into());
    let step = NetworkStep::Authorize {
        tier: Tier::Backend,
        rules: vec![
            (Rule::tcp(22, Source::Cidr("203.0.113.0/24".into())), "ssh"),
            (Rule::tcp(6379, Source::TierGroup(Tier::Frontend)), "redis"),
        ],
    };
    let run = |replies: Vec<(u16, String)>| {
        let (ident, step, mut ids) = (ident.clone(), step.clone(), ids.clone());
        async move {
            let (endpoint, requests) = scripted_endpoint(replies).await;
            let cloud = production_cloud(&endpoint).await;
            tokio::time::timeout(Duration::from_secs(30), cloud.apply_network_step(&ident, &step, &mut ids))
                .await
                .expect("bounded")
                .expect("the rules are there");
            (requests.load(Ordering::SeqCst), cloud.calls_by_operation())
        }
    };
    // Both rules in one call.
    let (n, _) = run(vec![ok_reply("AuthorizeSecurityGroupIngress")]).await;
    assert_eq!(n, 1);
    // The batch is refused for the SSH rule, which exists: the group is
    // looked at and the one missing rule added.
    let (n, calls) = run(vec![
        error_reply("InvalidPermission.Duplicate"),
        (200, group(ssh)),
        ok_reply("AuthorizeSecurityGroupIngress"),
    ])
    .await;
    assert_eq!(n, 3);
    assert_eq!((calls.get("AuthorizeSecurityGroupIngress"), calls.get("DescribeSecurityGroups")), (Some(&2), Some(&1)));
    // Every rule exists: nothing more is sent.
    let (n, _) = run(vec![error_reply("InvalidPermission.Duplicate"), (200, group(&format!("{ssh}{redis}")))]).await;
    assert_eq!(n, 2);
}
