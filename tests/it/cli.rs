//! The CLI as a user runs it: the real binary, the example manifest.

use std::process::{Command, Output};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/votingstack.yaml");

fn votingstack(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_votingstack")).args(args).output().expect("binary runs")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn cli_help_lists_every_command() {
    let out = votingstack(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for cmd in ["controller", "crd", "plan", "apply", "destroy", "snapshot"] {
        assert!(help.contains(cmd), "{cmd} missing from:\n{help}");
    }
}

#[test]
fn cli_crd_prints_the_committed_crd() {
    let out = votingstack(&["crd"]);
    assert!(out.status.success());
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/votingstack.yaml")).unwrap();
    assert_eq!(text(&out.stdout), committed);
}

#[test]
fn cli_offline_plan_of_a_new_stack_lists_everything_and_exits_2_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let state = state.to_str().unwrap();
    let out = votingstack(&["plan", "--offline", "-f", EXAMPLE, "--state", state, "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let plan = text(&out.stdout);
    // The network, one step a line, before the instances.
    // The key pair's name ends in a suffix drawn from the stack's identity.
    let key_line = "+ import key pair votingstack-default-demo-";
    let lines: Vec<&str> =
        plan.lines().map(str::trim).map(|l| if l.starts_with(key_line) { key_line } else { l }).collect();
    let at = |line: &str| lines.iter().position(|l| *l == line).unwrap_or_else(|| panic!("{line} in {plan}"));
    let network = [
        "+ create VPC 10.42.0.0/16",
        "+ create public subnet 10.42.1.0/24 in a zone offering t3.small",
        "+ create internet gateway",
        "~ attach internet gateway to the VPC",
        "+ create public route table",
        "+ route 0.0.0.0/0 from the public subnet to the internet gateway",
        "~ associate public route table with the public subnet",
        "+ create private subnet 10.42.2.0/24 in a zone offering t3.small",
        "+ allocate Elastic IP for the NAT gateway",
        "+ create NAT gateway in the public subnet",
        "+ create private route table",
        "+ route 0.0.0.0/0 from the private subnet to the NAT gateway (once it is available)",
        "~ associate private route table with the private subnet",
        "+ create database security group",
        "+ create backend security group",
        "+ create frontend security group",
        "+ allow tcp/5432 into database from the backend group",
        "+ allow tcp/6379 into backend from the frontend group",
        "+ allow tcp/80 into frontend from 0.0.0.0/0",
        key_line,
    ];
    let positions: Vec<usize> = network.iter().map(|l| at(l)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "network steps in order: {plan}");
    assert!(
        positions.last() < Some(&at("+ launch database instance (the newest Ubuntu 24.04 LTS, t3.small)")),
        "{plan}"
    );
    assert!(plan.contains("+ launch database instance (the newest Ubuntu 24.04 LTS, t3.small)"), "{plan}");
    assert!(plan.contains("+ create frontend container result"), "{plan}");
    // The data volume, once the instances are planned.
    let volume = at("+ create the data volume (10 GiB, gp3, in the database instance's zone)");
    assert!(at("+ launch frontend instance (the newest Ubuntu 24.04 LTS, t3.small, public IP)") < volume, "{plan}");
    // 21 network steps (one per group for its rules), 3 instances, the
    // data volume, 6 containers (vote and result behind the proxy).
    assert!(plan.contains("+ create frontend container proxy"), "{plan}");
    assert!(plan.trim_end().ends_with("31 to change."), "{plan}");
    let out = votingstack(&["plan", "--offline", "-f", EXAMPLE, "--state", state]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!std::path::Path::new(state).exists(), "plan wrote state");
}

fn bad_manifest(from: &str, to: &str) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stack.yaml");
    let original = std::fs::read_to_string(EXAMPLE).unwrap();
    assert!(original.contains(from), "example lacks {from:?}");
    std::fs::write(&file, original.replacen(from, to, 1)).unwrap();
    let out = votingstack(&["plan", "--offline", "-f", file.to_str().unwrap()]);
    (out, dir)
}

#[test]
fn cli_bad_input_gives_one_line_per_problem_and_exit_1() {
    let (out, dir) = bad_manifest("optionB: Dogs", "optionB: Cats\n    colour: blue");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("spec.app.colour: unknown field `colour`"), "{err}");

    let (out, _d) = bad_manifest("vpcCidr: 10.42.0.0/16", "vpcCidr: 10.99.0.0/16");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("spec.network.subnetCidr: 10.42.1.0/24 is not inside vpcCidr 10.99.0.0/16"), "{err}");

    let (out, _d) = bad_manifest("name: demo-ssh\n      key", "name: other-ssh\n      key");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("Secret other-ssh was not found in namespace default"));
    assert!(!dir.path().join(".votingstack").exists(), "bad input left state behind");
}

#[test]
fn cli_unparsable_yaml_is_refused() {
    let (out, _d) = bad_manifest("kind: VotingStack", "kind: VotingStack\nspec: [");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not valid YAML"), "{}", text(&out.stderr));
}

/// The example manifest with `spec.aws.endpoint` set, in a fresh directory.
fn manifest_with_endpoint(endpoint: &str) -> (std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stack.yaml");
    let original = std::fs::read_to_string(EXAMPLE).unwrap();
    let from = "    region: us-east-1\n";
    assert!(original.contains(from), "example lacks {from:?}");
    std::fs::write(&file, original.replacen(from, &format!("{from}    endpoint: {endpoint}\n"), 1)).unwrap();
    (file, dir)
}

/// Runs the binary with static test credentials and nothing else of the
/// caller's AWS configuration; off the async runtime, which serves the
/// endpoint it talks to.
async fn votingstack_with_test_credentials(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_votingstack"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("AWS_") || k.starts_with("VOTINGSTACK_")) {
            c.env_remove(k);
        }
        c.args(&args)
            .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
            .env("AWS_SECRET_ACCESS_KEY", "test-secret")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .output()
            .expect("binary runs")
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn cli_sends_nothing_to_an_endpoint_outside_aws_unless_allowed() {
    let reply = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>AuthFailure</Code>\
                 <Message>no</Message></Error></Errors><RequestID>r-1</RequestID></Response>";
    let (endpoint, requests) = crate::scripted::scripted_endpoint(vec![(401, reply.to_string())]).await;
    let (file, dir) = manifest_with_endpoint(&endpoint);
    let state = dir.path().join("state.json");
    let base: Vec<String> =
        ["-f", file.to_str().unwrap(), "--state", state.to_str().unwrap()].iter().map(|s| s.to_string()).collect();
    let with = |first: &[&str], extra: &[&str]| -> Vec<String> {
        first.iter().map(|s| s.to_string()).chain(base.clone()).chain(extra.iter().map(|s| s.to_string())).collect()
    };

    for command in [&["plan"][..], &["apply"][..], &["destroy"][..]] {
        if command == ["destroy"] {
            // destroy with no state file deletes nothing; give it one.
            std::fs::write(&state, r#"{"uid":"0b0e7ad45c1e","generation":1}"#).unwrap();
        }
        let out = votingstack_with_test_credentials(with(command, &[])).await;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command:?}: {err}{}", text(&out.stdout));
        let shown = format!("{err}{}", text(&out.stdout));
        for part in
            ["spec.aws.endpoint", &format!("{endpoint:?}"), "not https://", &format!("--allow-endpoint {endpoint}")]
        {
            assert!(shown.contains(part), "{command:?}: {part:?} missing from {shown}");
        }
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 0, "{command:?} sent a request");
    }

    // Allowed by flag (after the subcommand) or by environment: the request goes out.
    let out = votingstack_with_test_credentials(with(&["plan"], &["--allow-endpoint", &endpoint])).await;
    assert!(text(&out.stderr).contains("AuthFailure"), "{}", text(&out.stderr));
    let after_flag = requests.load(std::sync::atomic::Ordering::SeqCst);
    assert!(after_flag > 0, "nothing sent to the allowed endpoint");
    let other_port = endpoint.rsplit_once(':').map(|(h, _)| format!("{h}:1")).unwrap();
    let out = votingstack_with_test_credentials(with(&["--allow-endpoint", &other_port, "plan"], &[])).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), after_flag, "another port is another origin");

    let out = votingstack_with_test_credentials(with(&["--allow-endpoint", "not a url", "plan"], &[])).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--allow-endpoint \"not a url\""), "{}", text(&out.stderr));
}

#[test]
fn cli_snapshot_of_a_stack_without_state_says_so_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let out = votingstack(&["snapshot", "-f", EXAMPLE, "--state", state.to_str().unwrap(), "--timeout-seconds", "5"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.contains("no state file") && err.contains("apply it first"), "{err}");
    assert!(!state.exists(), "no state made up");
    let help = text(&votingstack(&["snapshot", "--help"]).stdout);
    assert!(help.contains("--timeout-seconds") && help.contains("completed"), "{help}");
    let help = text(&votingstack(&["destroy", "--help"]).stdout);
    assert!(help.contains("--timeout-seconds") && help.contains("final snapshot"), "{help}");
}
