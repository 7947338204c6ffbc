//! The region's shared inventory against a real moto server: stacks
//! observed at once cost one DescribeInstances (and one
//! DescribeSecurityGroups) between them, each still sees only its own
//! instances, and a change the operator makes is seen at once.

use std::sync::Arc;
use std::time::Duration;

use votingstack::api::{NetworkStatus, Tier, VotingStack};
use votingstack::cloud::ec2::Ec2Cloud;
use votingstack::cloud::{Cloud, NetworkLookup, StackIdentity};
use votingstack::engine::{Engine, EngineSettings};
use votingstack::model::{InstanceState, NetworkObservation, ObservedInfra};

use crate::fakes::FakeHosts;
use crate::fixtures;
use crate::moto::{Moto, AMI};

/// Three stacks, each with its own name, uid and VPC.
fn stacks() -> Vec<VotingStack> {
    ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut s = fixtures::stack();
            s.spec.instances.ami = Some(AMI.into());
            s.metadata.name = Some(format!("inv-{n}"));
            s.metadata.uid = Some(format!("5d6e7f80-0000-4000-8000-00000000000{i}"));
            let octet = 90 + i;
            s.spec.network.vpc_cidr = format!("10.{octet}.0.0/16");
            s.spec.network.subnet_cidr = format!("10.{octet}.1.0/24");
            if s.spec.network.private_subnet_cidr.is_some() {
                s.spec.network.private_subnet_cidr = Some(format!("10.{octet}.2.0/24"));
            }
            s
        })
        .collect()
}

/// Creates the stacks' networks and instances (hosts never answer: only
/// EC2 is exercised), with a cloud that shares nothing across observes.
async fn create(moto: &Moto, stacks: &mut [VotingStack]) {
    let hosts = FakeHosts::default();
    hosts.state.lock().expect("hosts state").all_down = true;
    let engine = Engine::new(Arc::new(moto.cloud()), Arc::new(hosts), EngineSettings::default());
    for s in stacks.iter_mut() {
        let out = tokio::time::timeout(Duration::from_secs(120), engine.reconcile(s, Ok(fixtures::test_key())))
            .await
            .expect("reconcile finishes within 120 s");
        s.status = Some(out.status.clone());
    }
}

fn network(s: &VotingStack) -> Option<&NetworkStatus> {
    s.status.as_ref().and_then(|st| st.network.as_ref())
}

async fn observe(cloud: &Ec2Cloud, s: &VotingStack) -> ObservedInfra {
    cloud.observe(&StackIdentity::of(s), network(s), None, NetworkLookup::TrustStatus).await.expect("observe")
}

fn calls(cloud: &Ec2Cloud, op: &str) -> u64 {
    cloud.calls_by_operation().get(op).copied().unwrap_or(0)
}

fn live(infra: &ObservedInfra) -> Vec<String> {
    infra.instances.iter().filter(|i| i.state.is_alive()).map(|i| i.id.clone()).collect()
}

#[tokio::test]
async fn ec2_inventory_three_stacks_observed_at_once_cost_one_describe_instances() {
    let moto = Moto::start();
    let mut stacks = stacks();
    create(&moto, &mut stacks).await;

    let cloud = moto.cloud().with_inventory_window(Duration::from_secs(30));
    let seen = futures::future::join_all(stacks.iter().map(|s| observe(&cloud, s))).await;
    assert_eq!(calls(&cloud, "DescribeInstances"), 1, "{:?}", cloud.calls_by_operation());
    assert_eq!(calls(&cloud, "DescribeSecurityGroups"), 1, "{:?}", cloud.calls_by_operation());
    assert_eq!(cloud.api_calls(), 2, "{:?}", cloud.calls_by_operation());
    assert_eq!(cloud.inventory_fetches(), 2);

    // Each stack sees its own three instances and its own groups, nobody else's.
    let mut all = Vec::new();
    for (s, infra) in stacks.iter().zip(&seen) {
        let recorded = s.status.as_ref().and_then(|st| st.tiers.clone()).expect("tiers in status");
        let mut mine: Vec<String> =
            Tier::ALL.iter().filter_map(|t| recorded.get(*t).and_then(|st| st.instance_id.clone())).collect();
        let mut got = live(infra);
        mine.sort();
        got.sort();
        assert_eq!(got, mine, "{}", s.metadata.name.clone().unwrap_or_default());
        assert_eq!(got.len(), 3);
        match &infra.network {
            NetworkObservation::Trusted(ids, groups) => {
                assert_eq!(Some(ids), network(s));
                let want: Vec<&String> = network(s).expect("network").security_groups.values().collect();
                assert_eq!(groups.values().map(|g| &g.id).collect::<Vec<_>>(), want);
            }
            other => panic!("a converged stack's network is trusted, got {other:?}"),
        }
        all.extend(got);
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 9, "no instance seen by two stacks");

    // Within the window a later observe costs nothing.
    observe(&cloud, &stacks[0]).await;
    assert_eq!(cloud.api_calls(), 2, "{:?}", cloud.calls_by_operation());

    // A change the operator makes starts a new look-up: the re-observe
    // after acting sees it.
    let victim = live(&seen[1])[0].clone();
    cloud.terminate_instances(std::slice::from_ref(&victim)).await.expect("terminate");
    let after = observe(&cloud, &stacks[1]).await;
    assert_eq!(calls(&cloud, "DescribeInstances"), 2, "{:?}", cloud.calls_by_operation());
    let state = after.instances.iter().find(|i| i.id == victim).map(|i| i.state);
    assert!(
        matches!(state, Some(InstanceState::ShuttingDown | InstanceState::Terminated)),
        "the terminated instance as observed right after: {state:?}"
    );
}

#[tokio::test]
async fn ec2_inventory_a_change_made_elsewhere_is_seen_once_the_window_ends() {
    let moto = Moto::start();
    let mut stacks = stacks();
    stacks.truncate(1);
    create(&moto, &mut stacks).await;
    let s = &stacks[0];

    let window = Duration::from_secs(1);
    let cloud = moto.cloud().with_inventory_window(window);
    let first = observe(&cloud, s).await;
    let victim = live(&first)[0].clone();
    // Terminated by someone else: this process's look-up does not know.
    moto.client().terminate_instances().instance_ids(&victim).send().await.expect("terminate");
    let within = observe(&cloud, s).await;
    assert!(live(&within).contains(&victim), "within the window the shared look-up is reused");
    tokio::time::sleep(window + Duration::from_millis(100)).await;
    let after = observe(&cloud, s).await;
    assert!(!live(&after).contains(&victim), "after the window the change is seen");
    assert_eq!(calls(&cloud, "DescribeInstances"), 2, "{:?}", cloud.calls_by_operation());

    // A bare cloud (the CLI's) shares nothing across observes.
    let bare = moto.cloud();
    observe(&bare, s).await;
    observe(&bare, s).await;
    assert_eq!(calls(&bare, "DescribeInstances"), 2, "{:?}", bare.calls_by_operation());
}
