//! AMIs against moto serving the world's image list (`world/amis.json`):
//! a stack without `spec.instances.ami` launches the newest Ubuntu 24.04
//! LTS amd64 image Canonical publishes (not an older one, an arm64 or 22.04
//! one, a testing build, nor a look-alike of another owner), keeps it in
//! status, and asks EC2 no more; Amazon Linux and Windows images, and an
//! arm64 image on an x86_64 type, are refused before anything is created.

use std::sync::Arc;

use aws_sdk_ec2::types::{Filter, InstanceStateName};
use aws_sdk_ec2::Client;
use votingstack::api::conditions::find_condition;
use votingstack::api::{ConditionType, InstanceOverride, Phase, ResolvedAmi, VotingStack};
use votingstack::cloud::ec2::Ec2Cloud;
use votingstack::cloud::OWNER_TAG;
use votingstack::engine::{Engine, EngineSettings};

use crate::fakes::FakeHosts;
use crate::fixtures;
use crate::moto::{reconcile, Moto, AMAZON_LINUX, AMI, ARM64_UBUNTU, OLDER_UBUNTU, WINDOWS};

/// An engine over moto whose hosts never answer: only EC2 is exercised.
fn engine(moto: &Moto) -> (Engine, Arc<Ec2Cloud>) {
    let cloud = Arc::new(moto.cloud());
    let hosts = FakeHosts::default();
    hosts.state.lock().expect("hosts state").all_down = true;
    (Engine::new(cloud.clone(), Arc::new(hosts), EngineSettings::default()), cloud)
}

/// `default/<name>` with a uid of its own and no AMI.
fn stack(name: &str, uid_suffix: u8) -> VotingStack {
    let mut s = fixtures::stack();
    s.metadata.name = Some(name.into());
    s.metadata.uid = Some(format!("6f1c2a9e-0000-4000-8000-0000000001{uid_suffix:02x}"));
    s.spec.instances.ami = None;
    s
}

fn uid(s: &VotingStack) -> String {
    s.metadata.uid.clone().expect("uid")
}

/// The images of the stack's instances that are not terminated.
async fn launched_images(c: &Client, uid: &str) -> Vec<String> {
    let f = Filter::builder().name(format!("tag:{OWNER_TAG}")).values(uid).build();
    let out = c.describe_instances().filters(f).send().await.expect("DescribeInstances");
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| i.state().and_then(|s| s.name()) != Some(&InstanceStateName::Terminated))
        .map(|i| i.image_id().unwrap_or_default().to_owned())
        .collect()
}

/// How many VPCs carry the stack's owner tag.
async fn vpcs(c: &Client, uid: &str) -> usize {
    let f = Filter::builder().name(format!("tag:{OWNER_TAG}")).values(uid).build();
    c.describe_vpcs().filters(f).send().await.expect("DescribeVpcs").vpcs().len()
}

fn calls(cloud: &Ec2Cloud, operation: &str) -> u64 {
    cloud.calls_by_operation().get(operation).copied().unwrap_or(0)
}

fn infrastructure(s: &VotingStack) -> (String, String, String) {
    let c = find_condition(&s.status.as_ref().expect("status").conditions, ConditionType::InfrastructureReady)
        .expect("InfrastructureReady");
    (c.status.to_string(), c.reason.clone(), c.message.clone())
}

#[tokio::test]
async fn ec2_images_a_stack_without_an_ami_runs_the_newest_ubuntu_from_canonical_and_keeps_it() {
    let moto = Moto::start();
    let c = moto.client();
    let (engine, cloud) = engine(&moto);
    let mut s = stack("noami", 1);
    reconcile(&engine, &mut s).await;
    let (status, reason, message) = infrastructure(&s);
    assert_eq!(status, "True", "{reason}: {message}");
    let resolved = s.status.as_ref().and_then(|st| st.resolved_ami.clone()).expect("status.resolvedAmi");
    assert_eq!(resolved.image_id, AMI, "{resolved:?}");
    assert!(resolved.name.contains("ubuntu-noble-24.04-amd64-server-"), "{resolved:?}");
    assert_eq!(launched_images(&c, &uid(&s)).await, vec![AMI.to_owned(); 3]);
    // One look-up: the answer also told the launches the root device.
    assert_eq!(calls(&cloud, "DescribeImages"), 1);

    // Steady state: no image is looked up again, nothing is launched.
    let out = reconcile(&engine, &mut s).await;
    assert_eq!(calls(&cloud, "DescribeImages"), 1);
    assert!(out.applied.is_empty(), "{:?}", out.applied);
    assert_eq!(s.status.as_ref().and_then(|st| st.resolved_ami.clone()), Some(resolved));
}

#[tokio::test]
async fn ec2_images_a_recorded_image_stays_and_a_lost_record_is_taken_from_the_running_instances() {
    let moto = Moto::start();
    let c = moto.client();
    let (engine, cloud) = engine(&moto);
    // Recorded when an older image was the newest: it stays the stack's.
    let mut s = stack("recorded", 2);
    s.status = Some(votingstack::api::VotingStackStatus {
        resolved_ami: Some(ResolvedAmi { image_id: OLDER_UBUNTU.into(), name: String::new() }),
        ..Default::default()
    });
    reconcile(&engine, &mut s).await;
    assert_eq!(launched_images(&c, &uid(&s)).await, vec![OLDER_UBUNTU.to_owned(); 3]);
    let looked_up = calls(&cloud, "DescribeImages");
    assert_eq!(looked_up, 1, "the recorded image's root device only; no search for the newest");

    // The record lost (a restored object, a state file deleted): the image
    // the instances run is kept, no instance moves to the newest image.
    s.status.as_mut().expect("status").resolved_ami = None;
    let out = reconcile(&engine, &mut s).await;
    assert!(out.applied.is_empty(), "{:?}", out.applied);
    assert_eq!(
        s.status.as_ref().and_then(|st| st.resolved_ami.as_ref()).map(|r| r.image_id.as_str()),
        Some(OLDER_UBUNTU)
    );
    assert_eq!(calls(&cloud, "DescribeImages"), looked_up);
    let (status, reason, message) = infrastructure(&s);
    assert_eq!(status, "True", "{reason}: {message}");
}

#[tokio::test]
async fn ec2_images_amazon_linux_windows_and_another_architecture_are_refused_before_anything_is_created() {
    let moto = Moto::start();
    let c = moto.client();
    let (engine, _) = engine(&moto);
    let cases = [(AMAZON_LINUX, "Amazon Linux"), (WINDOWS, "Windows"), (ARM64_UBUNTU, "arm64 image and t3.small")];
    for (n, (ami, family)) in cases.into_iter().enumerate() {
        let mut s = stack(&format!("refused{n}"), 3 + n as u8);
        s.spec.instances.ami = Some(ami.into());
        let out = reconcile(&engine, &mut s).await;
        let (status, reason, message) = infrastructure(&s);
        assert_eq!((status.as_str(), reason.as_str()), ("False", "AwsInvalidParameter"), "{message}");
        assert!(message.contains(&format!("spec.instances.ami {ami}")) && message.contains(family), "{message}");
        let fix = if ami == ARM64_UBUNTU { "the instance type's architecture" } else { "Debian or Ubuntu" };
        assert!(message.contains(fix), "{message}");
        assert_eq!(s.status.as_ref().and_then(|st| st.phase), Some(Phase::Failed));
        assert!(out.applied.is_empty(), "{:?}", out.applied);
        assert_eq!(vpcs(&c, &uid(&s)).await, 0, "no network was created for an image that cannot run");
        assert!(launched_images(&c, &uid(&s)).await.is_empty());
    }

    // One tier's override is enough to refuse the whole stack before any
    // tier launches.
    let mut s = stack("override", 9);
    s.spec.instances.database = Some(InstanceOverride { ami: Some(WINDOWS.into()), instance_type: None });
    reconcile(&engine, &mut s).await;
    let (status, reason, message) = infrastructure(&s);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "AwsInvalidParameter"), "{message}");
    assert!(message.contains(&format!("spec.instances.database.ami {WINDOWS}")), "{message}");
    assert!(launched_images(&c, &uid(&s)).await.is_empty());
    assert_eq!(vpcs(&c, &uid(&s)).await, 0);

    // Fixed, it goes on.
    s.spec.instances.database = None;
    s.metadata.generation = Some(2);
    reconcile(&engine, &mut s).await;
    let (status, reason, message) = infrastructure(&s);
    assert_eq!(status, "True", "{reason}: {message}");
    assert_eq!(launched_images(&c, &uid(&s)).await, vec![AMI.to_owned(); 3]);
}
