//! Hosts of the local world for the host tests: instances launched in the
//! world's EC2 (moto) become host containers (sshd + their own Docker
//! engine) at their private IPs. Needs `scripts/world up`.
//!
//! Each [`Fleet`] has its own VPC and public subnet (a distinct CIDR per
//! test, since the world cannot give two subnets with the same CIDR hosts)
//! and removes everything it made, also when a test panics.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::{
    Filter, InstanceNetworkInterfaceSpecification, InstanceType, IpPermission, IpRange, ResourceType, Tag,
    TagSpecification, UserIdGroupPair,
};
use aws_sdk_ec2::Client;
use votingstack::api::{Images, Tier};
use votingstack::host::{HostTarget, Hosts, SshKey};
use votingstack::model::{DockerState, ObservedHost};

/// The running world, from `.world/env`.
pub struct World {
    pub endpoint: String,
    pub ec2: Client,
    pub key: SshKey,
    pub ami: String,
    pub instance_type: String,
    pub registry: String,
    pub user: String,
}

fn env_file() -> PathBuf {
    let dir = std::env::var_os("VS_WORLD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".world"));
    dir.join("env")
}

/// An EC2 client aimed at `endpoint` with the world's dummy credentials.
pub fn ec2_client(endpoint: &str) -> Client {
    ec2_client_as(endpoint, "testing")
}

/// An EC2 client signing with `access_key` (the realism layer may map it to
/// an account of its own, see `access_key_accounts`).
pub fn ec2_client_as(endpoint: &str, access_key: &str) -> Client {
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(access_key, "testing", None, None, "world"))
        .build();
    Client::from_conf(conf)
}

impl World {
    /// Reads the world's environment; fails with what to run when it is not up.
    pub fn load() -> World {
        let path = env_file();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e}; the host tests need the local world: run `scripts/world up`", path.display())
        });
        let env: HashMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let get = |k: &str| env.get(k).cloned().unwrap_or_else(|| panic!("{} lacks {k}", path.display()));
        let endpoint = get("AWS_ENDPOINT_URL_EC2");
        assert!(endpoint.starts_with("http://127.0.0.1:"), "the world's EC2 must be on 127.0.0.1, not {endpoint}");
        let key_path = get("VS_WORLD_SSH_KEY");
        let key_text = std::fs::read_to_string(&key_path).unwrap_or_else(|e| panic!("{key_path}: {e}"));
        let key = SshKey::parse(&key_text, "world", "id_ed25519").expect("the world's key parses");
        World {
            ec2: ec2_client(&endpoint),
            endpoint,
            key,
            ami: get("VS_WORLD_AMI"),
            instance_type: get("VS_WORLD_INSTANCE_TYPE"),
            registry: get("VS_WORLD_REGISTRY"),
            user: get("VS_WORLD_SSH_USER"),
        }
    }

    /// The workload images in the world's registry.
    pub fn images(&self) -> Images {
        let r = &self.registry;
        Images {
            vote: format!("{r}/vote:local"),
            result: format!("{r}/result:local"),
            worker: format!("{r}/worker:local"),
            redis: format!("{r}/redis:local"),
            postgres: format!("{r}/postgres:local"),
            proxy: format!("{r}/proxy:local"),
        }
    }

    /// Launches `count` hosts in a new VPC 10.<octet>.0.0/16 (subnet
    /// 10.<octet>.1.0/24) and waits until each answers SSH.
    ///
    /// The world enforces EC2's network rules, so the subnet is public (an
    /// internet gateway and a 0.0.0.0/0 route to it in the main table, a
    /// public IP per host: the hosts pull from the world's registry), and the
    /// hosts share one security group that lets in SSH and the web ports from
    /// this machine (it arrives from the subnet's bridge gateway,
    /// 10.<octet>.1.1) and everything from the group's own members.
    pub async fn fleet(&self, name: &str, octet: u8, count: i32) -> Fleet {
        let ec2 = self.ec2.clone();
        let vpc = ec2
            .create_vpc()
            .cidr_block(format!("10.{octet}.0.0/16"))
            .send()
            .await
            .expect("CreateVpc")
            .vpc
            .and_then(|v| v.vpc_id)
            .expect("a VPC id");
        let mut fleet = Fleet {
            ec2: ec2.clone(),
            made: Made { vpc_id: vpc.clone(), ..Made::default() },
            hosts: Vec::new(),
            done: false,
        };
        let subnet = ec2
            .create_subnet()
            .vpc_id(&vpc)
            .cidr_block(format!("10.{octet}.1.0/24"))
            .send()
            .await
            .expect("CreateSubnet")
            .subnet
            .and_then(|s| s.subnet_id)
            .expect("a subnet id");
        fleet.made.subnet_id = Some(subnet.clone());
        let gateway = ec2
            .create_internet_gateway()
            .send()
            .await
            .expect("CreateInternetGateway")
            .internet_gateway
            .and_then(|g| g.internet_gateway_id)
            .expect("an internet gateway id");
        fleet.made.gateway_id = Some(gateway.clone());
        ec2.attach_internet_gateway()
            .internet_gateway_id(&gateway)
            .vpc_id(&vpc)
            .send()
            .await
            .expect("AttachInternetGateway");
        let main_table = ec2
            .describe_route_tables()
            .filters(Filter::builder().name("vpc-id").values(&vpc).build())
            .filters(Filter::builder().name("association.main").values("true").build())
            .send()
            .await
            .expect("DescribeRouteTables")
            .route_tables()
            .first()
            .and_then(|t| t.route_table_id().map(str::to_string))
            .expect("the VPC's main route table");
        ec2.create_route()
            .route_table_id(&main_table)
            .destination_cidr_block("0.0.0.0/0")
            .gateway_id(&gateway)
            .send()
            .await
            .expect("CreateRoute to the internet gateway");
        let group = ec2
            .create_security_group()
            .group_name(format!("host-it-{name}-{}", std::process::id()))
            .description("world hosts of one test")
            .vpc_id(&vpc)
            .send()
            .await
            .expect("CreateSecurityGroup")
            .group_id
            .expect("a security group id");
        fleet.made.group_id = Some(group.clone());
        let this_machine = format!("10.{octet}.1.1/32");
        let from_machine = |from: i32, to: i32| {
            IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(from)
                .to_port(to)
                .ip_ranges(IpRange::builder().cidr_ip(&this_machine).build())
                .build()
        };
        ec2.authorize_security_group_ingress()
            .group_id(&group)
            .ip_permissions(from_machine(22, 22))
            .ip_permissions(from_machine(80, 81))
            .ip_permissions(
                IpPermission::builder()
                    .ip_protocol("-1")
                    .user_id_group_pairs(UserIdGroupPair::builder().group_id(&group).build())
                    .build(),
            )
            .send()
            .await
            .expect("AuthorizeSecurityGroupIngress");
        let key_name = format!("host-it-{name}-{}", std::process::id());
        ec2.import_key_pair()
            .key_name(&key_name)
            .public_key_material(Blob::new(self.key.public_openssh().as_bytes()))
            .send()
            .await
            .expect("ImportKeyPair");
        fleet.made.key_name = Some(key_name.clone());
        let tags = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .tags(Tag::builder().key("host-it").value(name).build())
            .build();
        let nic = InstanceNetworkInterfaceSpecification::builder()
            .device_index(0)
            .subnet_id(&subnet)
            .associate_public_ip_address(true)
            .groups(&group)
            .build();
        let run = ec2
            .run_instances()
            .image_id(&self.ami)
            .instance_type(InstanceType::from(self.instance_type.as_str()))
            .min_count(count)
            .max_count(count)
            .network_interfaces(nic)
            .key_name(&key_name)
            .tag_specifications(tags)
            .send()
            .await
            .expect("RunInstances");
        for inst in run.instances() {
            let ip: Ipv4Addr = inst.private_ip_address().expect("a private IP").parse().expect("an IPv4 private IP");
            fleet.hosts.push(Host { instance_id: inst.instance_id().expect("an instance id").to_string(), ip });
        }
        fleet.hosts.sort_by_key(|h| h.ip);
        for h in &fleet.hosts {
            wait_ssh(h.ip, Duration::from_secs(120)).await;
        }
        fleet
    }
}

/// One host of a fleet.
#[derive(Clone, Debug)]
pub struct Host {
    pub instance_id: String,
    pub ip: Ipv4Addr,
}

impl Host {
    /// Name of the world's container for this host.
    pub fn container(&self) -> String {
        format!("vsw-{}", self.instance_id)
    }

    /// Runs `script` as root inside the host (test set-up and drift, not
    /// through the operator). Returns exit code and stdout.
    pub fn sh(&self, script: &str) -> (i32, String) {
        let out = Command::new("docker")
            .args(["exec", &self.container(), "sh", "-c", script])
            .output()
            .expect("docker exec runs");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.code().unwrap_or(-1), format!("{stdout}{stderr}"))
    }

    /// SHA256 fingerprints of the host's SSH host keys.
    pub fn host_key_fingerprints(&self) -> Vec<String> {
        let (_, out) = self.sh("for k in /etc/ssh/ssh_host_*_key.pub; do ssh-keygen -lf \"$k\"; done");
        out.lines().filter_map(|l| l.split_whitespace().nth(1)).map(str::to_string).collect()
    }
}

/// Hosts launched for one test, with the EC2 resources made for them.
pub struct Fleet {
    ec2: Client,
    made: Made,
    pub hosts: Vec<Host>,
    done: bool,
}

/// What a fleet made in EC2 besides its instances, removed in reverse.
#[derive(Clone, Default)]
struct Made {
    vpc_id: String,
    subnet_id: Option<String>,
    gateway_id: Option<String>,
    group_id: Option<String>,
    key_name: Option<String>,
}

impl Fleet {
    /// How the operator reaches host `i` for `tier`.
    pub fn target(&self, i: usize, stack: &str, tier: Tier, user: &str) -> HostTarget {
        HostTarget {
            stack: stack.to_string(),
            tier,
            instance_id: self.hosts[i].instance_id.clone(),
            address: self.hosts[i].ip,
            port: 22,
            user: user.to_string(),
            expected_host_key: None,
            earlier_host_key: None,
            jump: None,
            connect_timeout_secs: 5,
            command_timeout_secs: 120,
        }
    }

    /// Terminates the instances (their host containers go with them) and
    /// deletes the key pair, security group, internet gateway, subnet and VPC.
    pub async fn cleanup(mut self) {
        self.done = true;
        teardown(self.ec2.clone(), self.ids(), self.made.clone()).await;
    }

    fn ids(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.instance_id.clone()).collect()
    }
}

async fn teardown(ec2: Client, ids: Vec<String>, made: Made) {
    if !ids.is_empty() {
        let _ = ec2.terminate_instances().set_instance_ids(Some(ids)).send().await;
    }
    if let Some(k) = made.key_name {
        let _ = ec2.delete_key_pair().key_name(k).send().await;
    }
    if let Some(g) = made.group_id {
        let _ = ec2.delete_security_group().group_id(g).send().await;
    }
    if let Some(g) = made.gateway_id {
        let _ = ec2.detach_internet_gateway().internet_gateway_id(&g).vpc_id(&made.vpc_id).send().await;
        let _ = ec2.delete_internet_gateway().internet_gateway_id(g).send().await;
    }
    if let Some(s) = made.subnet_id {
        let _ = ec2.delete_subnet().subnet_id(s).send().await;
    }
    let _ = ec2.delete_vpc().vpc_id(made.vpc_id).send().await;
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // a panicking test: clean up on a runtime of our own
        let args = (self.ec2.clone(), self.ids(), self.made.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(teardown(args.0, args.1, args.2));
            }
        })
        .join();
    }
}

/// Waits until `ip:22` sends an SSH banner.
pub async fn wait_ssh(ip: Ipv4Addr, limit: Duration) {
    use tokio::io::AsyncReadExt;
    let deadline = Instant::now() + limit;
    let addr = SocketAddr::from((ip, 22));
    loop {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.ok()?;
            Some(buf)
        };
        if let Ok(Some(buf)) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
            if &buf == b"SSH-" {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{ip}:22 gave no SSH banner within {limit:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Observes until `done` holds (at most `limit`); returns the last observation.
pub async fn observe_until(
    hosts: &dyn Hosts,
    target: &HostTarget,
    key: &SshKey,
    limit: Duration,
    what: &str,
    done: impl Fn(&ObservedHost) -> bool,
) -> ObservedHost {
    let deadline = Instant::now() + limit;
    loop {
        let last = hosts.observe(target, key).await;
        if let Ok(o) = &last {
            if done(o) {
                return o.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{}: {what} not reached within {limit:?}; last: {last:?}",
            target.describe()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until the host's Docker engine answers.
pub async fn wait_docker(hosts: &dyn Hosts, target: &HostTarget, key: &SshKey) -> ObservedHost {
    observe_until(hosts, target, key, Duration::from_secs(90), "Docker running", |o| o.docker == DockerState::Running)
        .await
}
