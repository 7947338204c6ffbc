//! Ready-made specs for tests and examples.

use super::spec::*;
use super::VotingStack;

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
