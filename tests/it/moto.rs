//! A moto server (the EC2 stand-in) for one test: started on a free port of
//! 127.0.0.1, stopped and reaped when the guard drops (also on panic).

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use votingstack::api::conditions::find_condition;
use votingstack::api::{ConditionType, VotingStack};
use votingstack::cloud::ec2::Ec2Cloud;
use votingstack::engine::{Engine, Outcome};

use crate::fixtures;

/// Where scripts/setup-machine installs moto.
const DEFAULT_MOTO: &str = "/opt/votingstack/venv/bin/moto_server";

/// The newest Ubuntu 24.04 image of the world's list (`world/amis.json`,
/// which every moto the tests start serves, as the world's does).
pub const AMI: &str = "ami-0f00d24040000a002";
/// An older Ubuntu 24.04 image of that list.
pub const OLDER_UBUNTU: &str = "ami-0f00d24040000a001";
/// Amazon Linux 2023 and Windows Server images of that list.
pub const AMAZON_LINUX: &str = "ami-0a1a20230000a0001";
pub const WINDOWS: &str = "ami-0b1b20220000a0001";
/// Canonical's Ubuntu 24.04 arm64 image of that list.
pub const ARM64_UBUNTU: &str = "ami-0f00d24040000b001";

/// The world's image list.
fn amis_json() -> String {
    format!("{}/world/amis.json", env!("CARGO_MANIFEST_DIR"))
}

/// One running moto server.
pub struct Moto {
    child: Child,
    pub endpoint: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn moto_binary() -> PathBuf {
    let path = std::env::var_os("VS_MOTO_SERVER").map(PathBuf::from).unwrap_or_else(|| DEFAULT_MOTO.into());
    assert!(
        path.is_file(),
        "moto_server not found at {} (set VS_MOTO_SERVER, or run: python3 -m venv /opt/votingstack/venv && \
         /opt/votingstack/venv/bin/pip install 'moto[server]')",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port on 127.0.0.1");
    l.local_addr().expect("local address").port()
}

impl Moto {
    /// Starts moto with AMI and instance-type validation on, and waits (at
    /// most 30 s) until it accepts connections.
    pub fn start() -> Moto {
        let bin = moto_binary();
        let dir = tempfile::tempdir().expect("temp dir for the moto log");
        let mut last_problem = String::new();
        for attempt in 0..3 {
            let port = free_port();
            let log = dir.path().join(format!("moto-{attempt}.log"));
            let out = File::create(&log).expect("create the moto log");
            let err = out.try_clone().expect("clone the log handle");
            let mut child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .env("MOTO_ENABLE_AMI_VALIDATION", "true")
                .env("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")
                .env("MOTO_AMIS_PATH", amis_json())
                .env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing")
                .env("AWS_DEFAULT_REGION", "us-east-1")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_problem =
                        format!("moto exited with {status}: {}", std::fs::read_to_string(&log).unwrap_or_default());
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return Moto { child, endpoint: format!("http://{addr}"), log, _dir: dir };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_problem = format!("moto did not listen on {addr} within 30 s");
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("could not start moto: {last_problem}");
    }

    /// An EC2 client aimed at this moto, with quick retries.
    pub fn client(&self) -> aws_sdk_ec2::Client {
        client_for(&self.endpoint)
    }

    /// The provider under test, with short polls.
    pub fn cloud(&self) -> Ec2Cloud {
        Ec2Cloud::from_client(self.client()).with_waits(Duration::from_millis(50), Duration::from_secs(20))
    }

    /// What moto logged so far (for failure messages).
    #[allow(dead_code)]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// An EC2 client for `endpoint` with static test credentials.
pub fn client_for(endpoint: &str) -> aws_sdk_ec2::Client {
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
        .retry_config(RetryConfig::standard().with_max_attempts(3).with_initial_backoff(Duration::from_millis(20)))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(60))
                .build(),
        )
        .build();
    aws_sdk_ec2::Client::from_conf(conf)
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One reconcile (120 s at most), its status written back as the
/// controller would.
pub async fn reconcile(engine: &Engine, stack: &mut VotingStack) -> Outcome {
    let out = tokio::time::timeout(Duration::from_secs(120), engine.reconcile(stack, Ok(fixtures::test_key())))
        .await
        .expect("reconcile finishes within 120 s");
    stack.status = Some(out.status.clone());
    out
}

/// The stack's InfrastructureReady condition: its status and message.
pub fn infra_ready(stack: &VotingStack) -> (String, String) {
    let c = find_condition(&stack.status.as_ref().expect("status").conditions, ConditionType::InfrastructureReady)
        .expect("InfrastructureReady condition");
    (c.status.to_string(), c.message.clone())
}
