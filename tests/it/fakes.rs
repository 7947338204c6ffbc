//! In-memory stand-ins for EC2 and the hosts, for engine and controller tests
//! that need no moto or SSH.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use votingstack::api::{NetworkStatus, ProvidedNetwork, PullPolicy, ResolvedAmi, Tier};
use votingstack::cloud::{AwsErrorKind, Cloud, CloudError, DestroyReport, NetworkLookup, StackIdentity};
use votingstack::engine::{Engine, EngineSettings, Stop};
use votingstack::host::{HostError, HostTarget, Hosts, SshKey};
use votingstack::model::network::{
    key_identity, NatState, ObservedAddress, ObservedGateway, ObservedGroup, ObservedKeyPair, ObservedNatGateway,
    ObservedRouteTable, ObservedSubnet, ObservedVpc, SubnetRole,
};
use votingstack::model::HostAction;
use votingstack::model::{AttachedVolume, AttachmentState, ObservedVolume, VolumeAttachment, VolumeState};
use votingstack::model::{
    DockerState, InstanceLaunch, InstanceState, NetworkObservation, NetworkStep, ObservedContainer, ObservedHost,
    ObservedInfra, ObservedInstance, ObservedNetwork, Rule, TeardownInventory, TeardownStep,
};
use votingstack::model::{ObservedSnapshot, Slot, SnapshotState};

#[derive(Default)]
pub struct CloudState {
    pub network: Option<NetworkStatus>,
    /// Ingress rules of each tier's group, as the network steps left them.
    pub rules: BTreeMap<Tier, BTreeSet<Rule>>,
    /// Identity of the imported public key.
    pub key_identity: Option<String>,
    pub instances: Vec<ObservedInstance>,
    /// Data volumes: attached at once, let go when their instance terminates.
    pub volumes: Vec<ObservedVolume>,
    /// The snapshot each volume was created from.
    pub volume_origins: BTreeMap<String, String>,
    /// Snapshots: `pending` until `snapshot_polls_pending` look-ups by id
    /// have seen them, then `completed`.
    pub snapshots: Vec<ObservedSnapshot>,
    /// How many look-ups by id see a new snapshot `pending`.
    pub snapshot_polls_pending: u32,
    /// Look-ups by id of each pending snapshot so far.
    pub snapshot_polls: BTreeMap<String, u32>,
    /// Snapshots deleted, in order.
    pub deleted_snapshots: Vec<String>,
    /// Each EC2 operation the fake answered, by name.
    pub operations: Vec<&'static str>,
    pub next_ip: u8,
    /// The next mutating call fails with this AWS code.
    pub fail_with: Option<String>,
    /// Requested once an instance is launched: a shutdown arriving while
    /// a reconcile is in the middle of its EC2 steps.
    pub stop_on_launch: Option<Stop>,
    /// StateReason (code, message) of every instance launched without a
    /// KMS key of its own: terminated at once, as with an account default
    /// EBS key the operator may not use.
    pub default_key_unusable: Option<(String, String)>,
    /// The KMS key of each launch, in order.
    pub launch_keys: Vec<Option<String>>,
    /// Images the fake refuses to launch from, with their family
    /// (Windows, Amazon Linux, ...), as `Cloud::check_image` does.
    pub unsupported_images: BTreeMap<String, &'static str>,
    /// The region has no Ubuntu image from Canonical (else the newest is
    /// [`FAKE_UBUNTU`]).
    pub no_ubuntu: bool,
}

/// The fake's newest Ubuntu 24.04 LTS image.
pub const FAKE_UBUNTU: &str = "ami-0f00d24040000a002";

impl CloudState {
    /// The network as an inventory by tag would find it.
    fn inventory(&self) -> ObservedNetwork {
        let Some(ids) = &self.network else { return ObservedNetwork::default() };
        let gateway = ids.internet_gateway_id.clone();
        let nat = ids.nat_gateway_id.clone();
        let subnet = |id: &Option<String>, cidr: &str| {
            id.clone().map(|id| ObservedSubnet {
                id,
                cidr: cidr.into(),
                availability_zone: ids.availability_zone.clone(),
            })
        };
        ObservedNetwork {
            provided: ids.provided,
            vpc: ids.vpc_id.clone().map(|id| ObservedVpc { id, cidr: "10.42.0.0/16".into() }),
            subnet: subnet(&ids.subnet_id, "10.42.1.0/24"),
            private_subnet: subnet(&ids.private_subnet_id, "10.42.2.0/24"),
            gateway: gateway.clone().map(|id| ObservedGateway { id, attached: true }),
            route_table: ids.route_table_id.clone().map(|id| ObservedRouteTable {
                id,
                default_route: gateway.clone(),
                associated: true,
            }),
            private_route_table: ids.private_route_table_id.clone().map(|id| ObservedRouteTable {
                id,
                default_route: nat.clone(),
                associated: true,
            }),
            nat_gateway: nat.clone().map(|id| ObservedNatGateway {
                id,
                state: NatState::Available,
                allocation_id: ids.elastic_ip_allocation_id.clone(),
            }),
            elastic_ip: ids
                .elastic_ip_allocation_id
                .clone()
                .map(|allocation_id| ObservedAddress { allocation_id, associated: true }),
            failed_nat_gateways: 0,
            duplicates: Vec::new(),
            groups: ids
                .security_groups
                .iter()
                .map(|(t, id)| {
                    (*t, ObservedGroup { id: id.clone(), rules: self.rules.get(t).cloned().unwrap_or_default() })
                })
                .collect(),
            key_pair: ids
                .key_pair_name
                .clone()
                .map(|name| ObservedKeyPair { name, identity: self.key_identity.clone() }),
        }
    }
}

#[derive(Default, Clone)]
pub struct FakeCloud {
    pub state: Arc<Mutex<CloudState>>,
    calls: Arc<AtomicU64>,
}

impl FakeCloud {
    fn call(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }

    fn fail(&self, operation: &'static str) -> Result<(), CloudError> {
        match self.state.lock().unwrap().fail_with.take() {
            Some(code) => Err(CloudError::Api {
                operation,
                kind: AwsErrorKind::from_code(&code),
                message: format!("{code} from the fake"),
                code,
            }),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Cloud for FakeCloud {
    async fn observe(
        &self,
        _: &StackIdentity,
        _: Option<&NetworkStatus>,
        _: Option<&ProvidedNetwork>,
        lookup: NetworkLookup,
    ) -> Result<ObservedInfra, CloudError> {
        self.call();
        let s = self.state.lock().unwrap();
        let network = match (&s.network, lookup) {
            (Some(ids), NetworkLookup::TrustStatus) => {
                let groups = s.inventory().groups;
                NetworkObservation::Trusted(ids.clone(), groups)
            }
            _ => NetworkObservation::Inventory(s.inventory()),
        };
        Ok(ObservedInfra { network, instances: s.instances.clone(), data_volumes: None })
    }

    async fn apply_network_step(
        &self,
        _: &StackIdentity,
        step: &NetworkStep,
        ids: &mut NetworkStatus,
    ) -> Result<(), CloudError> {
        self.call();
        self.fail("CreateVpc")?;
        let mut s = self.state.lock().unwrap();
        match step {
            NetworkStep::CreateVpc { .. } => ids.vpc_id = Some("vpc-1".into()),
            NetworkStep::CreateSubnet { role: SubnetRole::Public, .. } => {
                ids.subnet_id = Some("subnet-1".into());
                ids.availability_zone = Some("us-east-1a".into());
            }
            NetworkStep::CreateSubnet { role: SubnetRole::Private, .. } => {
                ids.private_subnet_id = Some("subnet-2".into())
            }
            NetworkStep::CreateInternetGateway => ids.internet_gateway_id = Some("igw-1".into()),
            NetworkStep::CreateRouteTable { role: SubnetRole::Public } => ids.route_table_id = Some("rtb-1".into()),
            NetworkStep::CreateRouteTable { role: SubnetRole::Private } => {
                ids.private_route_table_id = Some("rtb-2".into())
            }
            NetworkStep::AllocateElasticIp => ids.elastic_ip_allocation_id = Some("eipalloc-1".into()),
            NetworkStep::CreateNatGateway { .. } => {
                ids.nat_gateway_id = Some("nat-1".into());
                ids.nat_gateway_state = Some("pending".into());
            }
            // The fake's NAT gateway is available at once.
            NetworkStep::RouteToNatGateway { .. } => ids.nat_gateway_state = Some("available".into()),
            NetworkStep::CreateSecurityGroup { tier } => {
                ids.security_groups.insert(*tier, format!("sg-{tier}"));
            }
            NetworkStep::Authorize { tier, rules } => {
                s.rules.entry(*tier).or_default().extend(rules.iter().map(|(rule, _)| rule.clone()));
            }
            NetworkStep::Revoke { tier, rule } => {
                s.rules.entry(*tier).or_default().remove(rule);
            }
            NetworkStep::ImportKeyPair { key } | NetworkStep::ReimportKeyPair { key } => {
                ids.key_pair_name = Some(key.name.clone());
                s.key_identity = key.public_key.as_deref().map(key_identity);
            }
            NetworkStep::EnableVpcDns
            | NetworkStep::AttachInternetGateway
            | NetworkStep::RouteToGateway { .. }
            | NetworkStep::AssociateRouteTable { .. }
            | NetworkStep::DeleteDuplicate { .. } => {}
        }
        s.network = Some(ids.clone());
        Ok(())
    }

    async fn launch_instance(
        &self,
        _: &StackIdentity,
        _: &NetworkStatus,
        launch: &InstanceLaunch,
    ) -> Result<ObservedInstance, CloudError> {
        let tier = launch.tier;
        self.call();
        self.fail("RunInstances")?;
        let ami = launch.ami.clone().ok_or(CloudError::Incomplete { operation: "RunInstances", missing: "AMI" })?;
        let mut s = self.state.lock().unwrap();
        s.next_ip += 1;
        let n = s.next_ip;
        s.launch_keys.push(launch.kms_key_id.clone());
        let dies = s.default_key_unusable.clone().filter(|_| launch.kms_key_id.is_none());
        let inst = ObservedInstance {
            id: format!("i-{tier}-{n}"),
            tier: Some(tier),
            state: if dies.is_some() { InstanceState::Terminated } else { InstanceState::Running },
            private_ip: Some(Ipv4Addr::new(10, 42, 1, 3 + n)),
            // Documentation range: nothing ever connects to it.
            public_ip: (tier == Tier::Frontend).then(|| Ipv4Addr::new(198, 51, 100, n)),
            ami,
            instance_type: launch.instance_type.clone(),
            launch_time: format!("2026-01-01T00:00:{n:02}Z"),
            client_token: None,
            zone: Some("us-east-1a".into()),
            volumes: Vec::new(),
            state_reason: dies.map(|(code, message)| votingstack::model::StateReason { code, message }),
        };
        s.instances.push(inst.clone());
        if let Some(stop) = &s.stop_on_launch {
            stop.request();
        }
        Ok(inst)
    }

    async fn latest_ubuntu(&self) -> Result<ResolvedAmi, CloudError> {
        self.call();
        let mut s = self.state.lock().unwrap();
        s.operations.push("DescribeImages");
        if s.no_ubuntu {
            return Err(CloudError::NoUbuntuImage {
                owner: votingstack::cloud::CANONICAL_OWNER_ID,
                region: "us-east-1".into(),
            });
        }
        Ok(ResolvedAmi {
            image_id: FAKE_UBUNTU.into(),
            name: "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20261120".into(),
        })
    }

    async fn check_image(&self, ami: &str, field: &str, _instance_type: &str) -> Result<(), CloudError> {
        self.call();
        let mut s = self.state.lock().unwrap();
        s.operations.push("DescribeImages");
        match s.unsupported_images.get(ami) {
            Some(family) => Err(CloudError::UnsupportedImage {
                field: field.into(),
                ami: ami.into(),
                name: format!("{family} image"),
                family,
            }),
            None => Ok(()),
        }
    }

    async fn start_instance(&self, id: &str) -> Result<(), CloudError> {
        self.call();
        for i in self.state.lock().unwrap().instances.iter_mut().filter(|i| i.id == id) {
            i.state = InstanceState::Running;
        }
        Ok(())
    }

    async fn terminate_instances(&self, ids: &[String]) -> Result<(), CloudError> {
        self.call();
        let mut s = self.state.lock().unwrap();
        for i in s.instances.iter_mut().filter(|i| ids.contains(&i.id)) {
            i.state = InstanceState::Terminated;
            i.volumes.clear();
        }
        for v in s.volumes.iter_mut() {
            v.attachments.retain(|a| !ids.contains(&a.instance_id));
            if v.attachments.is_empty() {
                v.state = VolumeState::Available;
            }
        }
        Ok(())
    }

    async fn data_volumes(&self, _: &StackIdentity, _: Option<&str>) -> Result<Vec<ObservedVolume>, CloudError> {
        self.call();
        Ok(self.state.lock().unwrap().volumes.clone())
    }

    async fn create_data_volume(
        &self,
        _: &StackIdentity,
        zone: &str,
        size_gib: i32,
        n: u32,
        from_snapshot: Option<&str>,
        _: Option<&str>,
    ) -> Result<ObservedVolume, CloudError> {
        self.call();
        self.fail("CreateVolume")?;
        if let Some(snap) = from_snapshot {
            self.state.lock().unwrap().volume_origins.insert(format!("vol-{n:x}a"), snap.to_string());
        }
        let v = ObservedVolume {
            id: format!("vol-{n:x}a"),
            zone: zone.into(),
            size_gib,
            state: VolumeState::Available,
            attachments: Vec::new(),
            create_time: format!("2026-01-01T00:01:{n:02}Z"),
            formatted: None,
        };
        self.state.lock().unwrap().volumes.push(v.clone());
        Ok(v)
    }

    async fn snapshots(&self, _: &StackIdentity) -> Result<Vec<ObservedSnapshot>, CloudError> {
        self.call();
        let mut s = self.state.lock().unwrap();
        s.operations.push("DescribeSnapshots");
        Ok(s.snapshots.clone())
    }

    async fn snapshot_by_id(&self, id: &str) -> Result<Option<ObservedSnapshot>, CloudError> {
        self.call();
        let mut s = self.state.lock().unwrap();
        s.operations.push("DescribeSnapshots");
        let pending_for = s.snapshot_polls_pending;
        let polls = s.snapshot_polls.entry(id.to_string()).or_default();
        *polls += 1;
        let done = *polls > pending_for;
        let snap = s.snapshots.iter_mut().find(|x| x.id == id);
        Ok(snap.map(|x| {
            if done && x.state == SnapshotState::Pending {
                x.state = SnapshotState::Completed;
            }
            x.clone()
        }))
    }

    async fn create_snapshot(
        &self,
        _: &StackIdentity,
        volume_id: &str,
        slot: &Slot,
    ) -> Result<ObservedSnapshot, CloudError> {
        self.call();
        self.fail("CreateSnapshot")?;
        let mut s = self.state.lock().unwrap();
        s.operations.push("CreateSnapshot");
        let n = s.snapshots.len() + 1;
        let snap = ObservedSnapshot {
            id: format!("snap-{n:08x}"),
            volume_id: volume_id.into(),
            state: SnapshotState::Pending,
            start_time: format!("2026-01-02T00:00:{n:02}Z"),
            size_gib: s.volumes.iter().find(|v| v.id == volume_id).map_or(10, |v| v.size_gib),
            slot: Some(slot.tag_value()),
            message: None,
        };
        s.snapshots.push(snap.clone());
        Ok(snap)
    }

    async fn delete_snapshot(&self, id: &str) -> Result<(), CloudError> {
        self.call();
        self.fail("DeleteSnapshot")?;
        let mut s = self.state.lock().unwrap();
        s.operations.push("DeleteSnapshot");
        s.snapshots.retain(|x| x.id != id);
        s.deleted_snapshots.push(id.to_string());
        Ok(())
    }

    async fn attach_volume(&self, volume_id: &str, instance_id: &str) -> Result<(), CloudError> {
        self.call();
        self.fail("AttachVolume")?;
        let mut s = self.state.lock().unwrap();
        let device = votingstack::model::volume::DATA_DEVICE;
        for v in s.volumes.iter_mut().filter(|v| v.id == volume_id) {
            v.state = VolumeState::InUse;
            v.attachments = vec![VolumeAttachment {
                instance_id: instance_id.into(),
                device: device.into(),
                state: AttachmentState::Attached,
            }];
        }
        for i in s.instances.iter_mut().filter(|i| i.id == instance_id) {
            i.volumes.push(AttachedVolume {
                device: device.into(),
                volume_id: volume_id.into(),
                status: AttachmentState::Attached,
            });
        }
        Ok(())
    }

    async fn detach_volume(&self, volume_id: &str, instance_id: &str) -> Result<(), CloudError> {
        self.call();
        let mut s = self.state.lock().unwrap();
        for v in s.volumes.iter_mut().filter(|v| v.id == volume_id) {
            v.state = VolumeState::Available;
            v.attachments.clear();
        }
        for i in s.instances.iter_mut().filter(|i| i.id == instance_id) {
            i.volumes.retain(|a| a.volume_id != volume_id);
        }
        Ok(())
    }

    async fn teardown_inventory(
        &self,
        _: &StackIdentity,
        _: Option<&NetworkStatus>,
    ) -> Result<TeardownInventory, CloudError> {
        self.call();
        let s = self.state.lock().unwrap();
        let net = s.network.clone().unwrap_or_default();
        Ok(TeardownInventory {
            instances: s.instances.iter().filter(|i| i.state.is_alive()).map(|i| i.id.clone()).collect(),
            volumes: s.volumes.iter().map(|v| v.id.clone()).collect(),
            subnets: net.subnet_id.into_iter().collect(),
            vpcs: net.vpc_id.into_iter().collect(),
            ..Default::default()
        })
    }

    async fn destroy(&self, _: &StackIdentity, steps: &[TeardownStep]) -> Result<DestroyReport, CloudError> {
        self.call();
        self.fail("DeleteVpc")?;
        let mut s = self.state.lock().unwrap();
        let mut deleted = Vec::new();
        for step in steps {
            match step {
                TeardownStep::TerminateInstances { ids } => {
                    s.instances.retain(|i| !ids.contains(&i.id));
                    deleted.extend(ids.iter().cloned());
                }
                TeardownStep::DeleteSubnet { id } | TeardownStep::DeleteVpc { id } => deleted.push(id.clone()),
                TeardownStep::DeleteVolume { id } => {
                    s.volumes.retain(|v| v.id != *id);
                    deleted.push(id.clone());
                }
                _ => {}
            }
        }
        // Instances already terminated go with the stack.
        s.instances.clear();
        s.network = None;
        s.rules.clear();
        s.key_identity = None;
        Ok(DestroyReport { deleted, ..Default::default() })
    }

    fn api_calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

pub struct FakeHost {
    pub docker: DockerState,
    pub containers: BTreeMap<String, ObservedContainer>,
    pub fingerprint: String,
    /// The data volume mounted on the host, once one is.
    pub mounted: Option<String>,
}

#[derive(Default)]
pub struct HostsState {
    /// By instance id; a host appears on first contact.
    pub hosts: BTreeMap<String, FakeHost>,
    /// Instance ids whose SSH is down.
    pub unreachable: Vec<String>,
    /// Every host's SSH is down.
    pub all_down: bool,
    /// The votes table: voter id to vote.
    pub votes: BTreeMap<String, String>,
    /// Every vote cast through the vote page, in order.
    pub cast: Vec<String>,
    /// Requested once a host's changes are made: a shutdown arriving while
    /// the hosts converge.
    pub stop_on_apply: Option<Stop>,
}

#[derive(Default, Clone)]
pub struct FakeHosts {
    pub state: Arc<Mutex<HostsState>>,
    execs: Arc<AtomicU64>,
}

impl FakeHosts {
    /// Observes per instance id (for tests that poke a host).
    pub fn with_host<R>(&self, instance_id: &str, f: impl FnOnce(&mut FakeHost) -> R) -> R {
        let mut s = self.state.lock().unwrap();
        f(s.hosts.get_mut(instance_id).expect("host known"))
    }

    fn reach(&self, target: &HostTarget) -> Result<(), HostError> {
        self.execs.fetch_add(1, Ordering::SeqCst);
        let mut s = self.state.lock().unwrap();
        if s.all_down || s.unreachable.contains(&target.instance_id) {
            return Err(HostError::Unreachable { host: target.describe(), message: "connection refused".into() });
        }
        let host = s.hosts.entry(target.instance_id.clone()).or_insert_with(|| FakeHost {
            docker: DockerState::Running,
            containers: BTreeMap::new(),
            fingerprint: format!("SHA256:{}", target.instance_id),
            mounted: None,
        });
        if let Some(expected) = &target.expected_host_key {
            if !target.accepts(&host.fingerprint) {
                return Err(HostError::HostKeyMismatch {
                    host: target.describe(),
                    expected: expected.clone(),
                    presented: host.fingerprint.clone(),
                });
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Hosts for FakeHosts {
    async fn observe(&self, target: &HostTarget, _: &SshKey) -> Result<ObservedHost, HostError> {
        self.reach(target)?;
        let s = self.state.lock().unwrap();
        let host = &s.hosts[&target.instance_id];
        let running = |name: &str| host.containers.get(name).is_some_and(|c| c.is_running());
        let mut probes = Vec::new();
        for name in ["db", "redis"] {
            if host.containers.contains_key(name) {
                probes.push((name.to_string(), if running(name) { Ok(()) } else { Err("not running".to_string()) }));
            }
        }
        Ok(ObservedHost {
            docker: host.docker.clone(),
            containers: if host.docker == DockerState::Running {
                host.containers.values().cloned().collect()
            } else {
                vec![]
            },
            probes,
            host_key_fingerprint: host.fingerprint.clone(),
        })
    }

    async fn apply(
        &self,
        target: &HostTarget,
        _: &SshKey,
        actions: &[HostAction],
        _: PullPolicy,
    ) -> Result<(), HostError> {
        self.reach(target)?;
        let mut s = self.state.lock().unwrap();
        let host = s.hosts.get_mut(&target.instance_id).expect("reached");
        for action in actions {
            match action {
                HostAction::InstallDocker { .. } | HostAction::StartDocker { .. } => host.docker = DockerState::Running,
                HostAction::MountVolume { volume, .. } => host.mounted = Some(volume.volume_id.clone()),
                HostAction::CreateContainer { container, .. } | HostAction::RollContainer { container, .. } => {
                    if let HostAction::RollContainer { replaces, .. } = action {
                        for old in replaces {
                            host.containers.remove(old);
                        }
                    }
                    host.containers.insert(
                        container.name.clone(),
                        ObservedContainer {
                            name: container.name.clone(),
                            image: container.image.clone(),
                            state: "running".into(),
                            config_hash: container.config_hash(),
                            image_digest: Some(
                                container.pinned_digest.clone().unwrap_or_else(|| fake_digest(&container.image)),
                            ),
                            exit_code: None,
                        },
                    );
                }
                HostAction::StartContainer { name, .. } => {
                    if let Some(c) = host.containers.get_mut(name) {
                        c.state = "running".into();
                    }
                }
                HostAction::RemoveContainer { name, .. } => {
                    host.containers.remove(name);
                }
                HostAction::HoldWorker { name, .. } => {
                    if let Some(c) = host.containers.get_mut(name) {
                        c.state = "exited".into();
                        c.exit_code = Some(143);
                    }
                }
            }
        }
        if let Some(stop) = &s.stop_on_apply {
            stop.request();
        }
        Ok(())
    }

    async fn http_status(&self, _: &str) -> Result<u16, HostError> {
        Ok(200)
    }

    async fn cast_vote(&self, _: &str, voter: &str, vote: &str) -> Result<(), HostError> {
        let mut s = self.state.lock().unwrap();
        s.votes.insert(voter.into(), vote.into());
        s.cast.push(voter.into());
        Ok(())
    }

    async fn recorded_vote(&self, db: &HostTarget, _: &SshKey, voter: &str) -> Result<Option<String>, HostError> {
        self.reach(db)?;
        Ok(self.state.lock().unwrap().votes.get(voter).cloned())
    }

    async fn delete_smoke_votes(&self, db: &HostTarget, _: &SshKey, prefix: &str) -> Result<(), HostError> {
        self.reach(db)?;
        self.state.lock().unwrap().votes.retain(|voter, _| !voter.starts_with(prefix));
        Ok(())
    }

    fn round_trips(&self) -> u64 {
        self.execs.load(Ordering::SeqCst)
    }
}

/// An engine over fresh fakes.
pub fn engine() -> (Engine, FakeCloud, FakeHosts) {
    let cloud = FakeCloud::default();
    let hosts = FakeHosts::default();
    let settings = EngineSettings { smoke_timeout: std::time::Duration::from_secs(2), ..Default::default() };
    (Engine::new(Arc::new(cloud.clone()), Arc::new(hosts.clone()), settings), cloud, hosts)
}

pub fn key() -> SshKey {
    crate::fixtures::test_key()
}

/// The digest a fake host "pulls" for an image reference.
pub fn fake_digest(image: &str) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(image.as_bytes())))
}
