//! Ready-made stacks and a throwaway SSH key for tests. The library's unit
//! tests include this file too (as `crate::fixtures`), so both see one copy.
#![allow(dead_code)]

use votingstack::api::{VotingStack, VotingStackSpec};
use votingstack::host::{HostTarget, SshKey};

/// [`spec`] with `updateStrategy: Recreate`: vote and result publish the
/// ports themselves and are re-created in place.
pub fn recreate_spec() -> VotingStackSpec {
    let mut s = spec();
    s.app.update_strategy = votingstack::api::UpdateStrategy::Recreate;
    s
}

/// A complete, valid spec like `examples/votingstack.yaml`.
pub fn spec() -> VotingStackSpec {
    let yaml = r#"
instances:
  ami: ami-0abcdef1234567890
network:
  sshIngressCidrs: ["203.0.113.0/24"]
ssh:
  privateKeySecretRef:
    name: demo-ssh
"#;
    serde_yaml::from_str(yaml).expect("fixture spec parses")
}

/// A VotingStack named `demo` in `default` with [`spec`].
pub fn stack() -> VotingStack {
    let mut vs = VotingStack::new("demo", spec());
    vs.metadata.namespace = Some("default".into());
    vs.metadata.uid = Some("0b0e7ad4-5c1e-4d5b-9d35-1c2f3e4a5b6c".into());
    vs.metadata.generation = Some(1);
    vs
}

/// A throwaway ed25519 key (also in examples/votingstack.yaml).
pub const TEST_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACB9XzLedKIc+Jt1XxEbB0umjhD6rtoIezAsI4MWwGc+hwAAAKDVVztd1Vc7
XQAAAAtzc2gtZWQyNTUxOQAAACB9XzLedKIc+Jt1XxEbB0umjhD6rtoIezAsI4MWwGc+hw
AAAEAECl4h6fiQdEhj5vXAFhDrHds4m7wma3U3GNgoCLKViX1fMt50ohz4m3VfERsHS6aO
EPqu2gh7MCwjgxbAZz6HAAAAGGRlbW9Adm90aW5nc3RhY2suZXhhbXBsZQECAwQF
-----END OPENSSH PRIVATE KEY-----
";

/// [`TEST_KEY`] as the operator holds it, read from Secret `demo-ssh`.
pub fn test_key() -> SshKey {
    SshKey::parse(TEST_KEY, "demo-ssh", "ssh-privatekey").expect("test key parses")
}

/// A database host reached directly at 10.0.0.4, no host key expected yet.
pub fn host_target() -> HostTarget {
    HostTarget {
        stack: "default/demo".into(),
        tier: votingstack::api::Tier::Database,
        instance_id: "i-1".into(),
        address: std::net::Ipv4Addr::new(10, 0, 0, 4),
        port: 22,
        user: "admin".into(),
        expected_host_key: None,
        earlier_host_key: None,
        jump: None,
        connect_timeout_secs: 1,
        command_timeout_secs: 5,
    }
}

/// An instance of `tier` in us-east-1a at 10.0.1.4, with nothing attached.
pub fn instance(
    tier: votingstack::api::Tier,
    id: &str,
    state: votingstack::model::InstanceState,
) -> votingstack::model::ObservedInstance {
    votingstack::model::ObservedInstance {
        id: id.into(),
        tier: Some(tier),
        state,
        private_ip: Some(std::net::Ipv4Addr::new(10, 0, 1, 4)),
        public_ip: None,
        ami: "ami-1".into(),
        instance_type: "t3.micro".into(),
        launch_time: String::new(),
        client_token: None,
        zone: Some("us-east-1a".into()),
        volumes: Vec::new(),
        state_reason: None,
    }
}
