//! Installations (`--installation`) in one account, against moto: every
//! resource the operator creates carries `votingstack.dev/installation`; an
//! operator leaves another installation's resources alone even for a stack
//! of the same namespace, name and uid (observe, look-ups by recorded id,
//! destroy); and resources an older version created without the tag are
//! adopted: tagged, neither duplicated nor lost, then torn down as usual.

use std::sync::Arc;

use aws_sdk_ec2::types::{Filter, InstanceStateName, Tag};
use aws_sdk_ec2::Client;
use votingstack::api::{NetworkStatus, VotingStack};
use votingstack::cloud::ec2::{Ec2Cloud, ROLE_TAG};
use votingstack::cloud::{Cloud, Installation, NetworkLookup, StackIdentity, INSTALLATION_TAG, OWNER_TAG};
use votingstack::engine::{Engine, EngineSettings, Outcome, Teardown};
use votingstack::model::{Action, InfraAction, NetworkObservation, TeardownInventory};

use crate::fakes::FakeHosts;
use crate::fixtures;
use crate::moto::{infra_ready, reconcile, Moto, AMI};

const UID: &str = "6f1c2a9e-0000-4000-8000-0000000000c1";

/// An engine over moto for `installation` whose hosts never answer: only
/// EC2 is exercised.
fn engine_for(moto: &Moto, installation: &str) -> (Engine, Arc<Ec2Cloud>) {
    let installation = Installation::parse(installation).expect("a valid name");
    let cloud = Arc::new(moto.cloud().with_installation(installation));
    let hosts = FakeHosts::default();
    hosts.state.lock().expect("hosts state").all_down = true;
    (Engine::new(cloud.clone(), Arc::new(hosts), EngineSettings::default()), cloud)
}

fn stack() -> VotingStack {
    let mut s = fixtures::stack();
    s.spec.instances.ami = Some(AMI.into());
    s.metadata.uid = Some(UID.into());
    s
}

fn launches(out: &Outcome) -> usize {
    out.applied.iter().filter(|a| matches!(a, Action::Infra(InfraAction::LaunchInstance(_)))).count()
}

fn network(stack: &VotingStack) -> NetworkStatus {
    stack.status.as_ref().and_then(|s| s.network.clone()).expect("network in status")
}

fn tag<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

/// Every resource carrying the stack's owner tag, by id, with its
/// installation tag: VPCs, subnets, gateways, route tables, groups, key
/// pairs, addresses, NAT gateways, live instances and the data volume.
async fn owned(c: &Client) -> Vec<(String, Option<String>)> {
    let f = || Filter::builder().name(format!("tag:{OWNER_TAG}")).values(UID).build();
    let mut out = Vec::new();
    let mut add = |id: Option<&str>, tags: &[Tag]| {
        out.push((id.unwrap_or_default().to_owned(), tag(tags, INSTALLATION_TAG).map(str::to_owned)));
    };
    for v in c.describe_vpcs().filters(f()).send().await.expect("vpcs").vpcs() {
        add(v.vpc_id(), v.tags());
    }
    for s in c.describe_subnets().filters(f()).send().await.expect("subnets").subnets() {
        add(s.subnet_id(), s.tags());
    }
    for g in c.describe_internet_gateways().filters(f()).send().await.expect("igws").internet_gateways() {
        add(g.internet_gateway_id(), g.tags());
    }
    for r in c.describe_route_tables().filters(f()).send().await.expect("rts").route_tables() {
        add(r.route_table_id(), r.tags());
    }
    for g in c.describe_security_groups().filters(f()).send().await.expect("sgs").security_groups() {
        add(g.group_id(), g.tags());
    }
    let key_name = StackIdentity::of(&stack()).resource_name();
    let keys = c
        .describe_key_pairs()
        .filters(Filter::builder().name("key-name").values(key_name).build())
        .send()
        .await
        .expect("key pairs");
    for k in keys.key_pairs() {
        add(k.key_pair_id(), k.tags());
    }
    for a in c.describe_addresses().filters(f()).send().await.expect("addresses").addresses() {
        add(a.allocation_id(), a.tags());
    }
    for n in c.describe_nat_gateways().filter(f()).send().await.expect("nat gateways").nat_gateways() {
        if n.state().map(|s| s.as_str()) != Some("deleted") {
            add(n.nat_gateway_id(), n.tags());
        }
    }
    for r in c.describe_instances().filters(f()).send().await.expect("instances").reservations() {
        for i in r.instances() {
            if i.state().and_then(|s| s.name()) != Some(&InstanceStateName::Terminated) {
                add(i.instance_id(), i.tags());
            }
        }
    }
    // The data volume (the instances' root volumes go with them).
    let data = Filter::builder().name("tag-key").values(ROLE_TAG).build();
    for v in c.describe_volumes().filters(f()).filters(data).send().await.expect("volumes").volumes() {
        add(v.volume_id(), v.tags());
    }
    out.sort();
    out
}

/// Removes the installation tag from every resource of the stack, as if
/// an operator from before installations had created them.
async fn strip_installation_tags(c: &Client) {
    let ids: Vec<String> = owned(c).await.into_iter().map(|(id, _)| id).collect();
    c.delete_tags()
        .set_resources(Some(ids))
        .tags(Tag::builder().key(INSTALLATION_TAG).build())
        .send()
        .await
        .expect("DeleteTags");
    assert!(owned(c).await.iter().all(|(_, i)| i.is_none()), "no installation tag is left");
}

fn calls(cloud: &Ec2Cloud, operation: &str) -> u64 {
    cloud.calls_by_operation().get(operation).copied().unwrap_or(0)
}

#[tokio::test]
async fn ec2_installation_another_installations_resources_are_left_alone() {
    let moto = Moto::start();
    let c = moto.client();
    let (engine_a, _) = engine_for(&moto, "team-a");
    let mut s = stack();
    reconcile(&engine_a, &mut s).await;
    let (status, message) = infra_ready(&s);
    assert_eq!(status, "True", "{message}");
    let before = owned(&c).await;
    assert!(before.len() >= 12, "{before:?}");
    for (id, installation) in &before {
        assert_eq!(installation.as_deref(), Some("team-a"), "{id} carries its installation's name");
    }

    // Another installation with a stack of the same namespace, name and
    // uid (a copied CLI state, a restored cluster) sees none of them: not
    // by tag, not by the ids recorded in status.
    let (engine_b, cloud_b) = engine_for(&moto, "team-b");
    let ident = StackIdentity::of(&s);
    let known = network(&s);
    for lookup in [NetworkLookup::TrustStatus, NetworkLookup::Inventory] {
        let seen = cloud_b.observe(&ident, Some(&known), None, lookup).await.expect("observe");
        assert!(seen.instances.is_empty(), "{:?}", seen.instances);
        let NetworkObservation::Inventory(net) = seen.network else { panic!("not trusted: {:?}", seen.network) };
        assert_eq!((net.vpc, net.subnet, net.key_pair), (None, None, None));
        assert!(net.groups.is_empty(), "{:?}", net.groups);
    }
    let recorded: Vec<String> = before.iter().map(|(id, _)| id.clone()).filter(|id| id.starts_with("i-")).collect();
    assert_eq!(recorded.len(), 3);
    assert!(cloud_b.instances_by_id(&recorded).await.expect("by id").is_empty());
    let volume = s.status.as_ref().and_then(|st| st.data_volume.as_ref()).and_then(|v| v.volume_id.clone());
    assert!(cloud_b.data_volumes(&ident, volume.as_deref()).await.expect("volumes").is_empty());
    let found = cloud_b.teardown_inventory(&ident, Some(&known)).await.expect("teardown inventory");
    assert_eq!(found, TeardownInventory::default());

    // Its destroy deletes nothing, and changes nothing: no tag, no call
    // but look-ups.
    match engine_b.destroy(&s).await.expect("destroy by team-b") {
        Teardown::Deleted(report) => assert!(report.deleted.is_empty(), "{:?}", report.deleted),
        other => panic!("expected an (empty) deletion, got {other:?}"),
    }
    let writes: Vec<_> =
        cloud_b.calls_by_operation().into_iter().filter(|(op, _)| !op.starts_with("Describe")).collect();
    assert!(writes.is_empty(), "team-b wrote to EC2: {writes:?}");
    assert_eq!(owned(&c).await, before, "team-a's resources are all there, tagged as before");

    // team-a's stack is untouched: nothing to do.
    let out = reconcile(&engine_a, &mut s).await;
    assert!(out.applied.is_empty(), "{:?}", out.applied);
    assert_eq!(infra_ready(&s).0, "True");
}

#[tokio::test]
async fn ec2_installation_resources_of_an_older_version_are_adopted_and_tagged() {
    let moto = Moto::start();
    let c = moto.client();
    let (engine, _) = engine_for(&moto, "default");
    let mut s = stack();
    reconcile(&engine, &mut s).await;
    assert_eq!(infra_ready(&s).0, "True", "{}", infra_ready(&s).1);
    let created = owned(&c).await;
    assert!(created.iter().all(|(_, i)| i.as_deref() == Some("default")), "{created:?}");

    // Converged, with the status of an older version: the tag look-ups
    // and the recorded network find the untagged resources; the stack's
    // are tagged, nothing is launched again.
    strip_installation_tags(&c).await;
    let (engine, cloud) = engine_for(&moto, "default");
    let out = reconcile(&engine, &mut s).await;
    assert_eq!(launches(&out), 0, "{:?}", out.applied);
    assert_eq!(infra_ready(&s).0, "True", "{}", infra_ready(&s).1);
    assert!(calls(&cloud, "CreateTags") >= 1, "{:?}", cloud.calls_by_operation());
    let tagged = owned(&c).await;
    let untagged: Vec<_> = tagged.iter().filter(|(_, i)| i.as_deref() != Some("default")).collect();
    assert!(untagged.is_empty(), "left untagged: {untagged:?}");
    assert_eq!(tagged, created, "the same resources, none more, none less");
    // Once tagged, a reconcile tags nothing.
    let tags_before = calls(&cloud, "CreateTags");
    let out = reconcile(&engine, &mut s).await;
    assert!(out.applied.is_empty(), "{:?}", out.applied);
    assert_eq!(calls(&cloud, "CreateTags"), tags_before);

    // `plan` changes nothing: it counts the untagged resources as the
    // stack's (nothing to launch) and leaves them untagged.
    strip_installation_tags(&c).await;
    let planner_cloud = Arc::new(moto.cloud().with_adoption(false));
    let hosts = FakeHosts::default();
    hosts.state.lock().expect("hosts state").all_down = true;
    let planner = Engine::new(planner_cloud.clone(), Arc::new(hosts), EngineSettings::default());
    let mut no_status = s.clone();
    no_status.status = None;
    for stack in [&s, &no_status] {
        let plan = planner.plan(stack, Some(&fixtures::test_key())).await.expect("plan");
        assert!(!plan.actions.iter().any(|a| matches!(a, Action::Infra(_))), "{:?}", plan.actions);
    }
    let ops = planner_cloud.calls_by_operation();
    assert!(ops.keys().all(|op| op.starts_with("Describe")), "plan called {ops:?}");
    assert!(owned(&c).await.iter().all(|(_, i)| i.is_none()), "plan tagged nothing");

    // Without status (the full look-up by tag): adopted again, no duplicate
    // network, no second instance per tier.
    let (engine, cloud) = engine_for(&moto, "default");
    s.status = None;
    let out = reconcile(&engine, &mut s).await;
    assert_eq!(launches(&out), 0, "{:?}", out.applied);
    assert_eq!(calls(&cloud, "CreateVpc"), 0);
    assert_eq!(infra_ready(&s).0, "True", "{}", infra_ready(&s).1);
    assert_eq!(owned(&c).await, created);

    // Untagged again, then destroyed: the teardown adopts before it
    // deletes, and deletes everything.
    strip_installation_tags(&c).await;
    let (engine, cloud) = engine_for(&moto, "default");
    let report = match engine.destroy(&s).await.expect("destroy") {
        Teardown::Deleted(r) => r,
        other => panic!("expected a deletion, got {other:?}"),
    };
    assert!(calls(&cloud, "CreateTags") >= 1);
    assert!(report.deleted.len() >= 10, "{:?}", report.deleted);
    let left = owned(&c).await;
    assert!(left.is_empty(), "{left:?}");
}
