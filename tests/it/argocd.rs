//! The Argo CD health check (deploy/argocd/health.lua) run by the real Lua 5.1
//! interpreter, the language version Argo CD embeds, against sample VotingStacks.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use votingstack::api::conditions::set_condition;
use votingstack::api::{Condition, ConditionType, ConditionUpdate, Phase, Reason, VotingStackStatus};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn health_lua() -> String {
    std::fs::read_to_string(repo().join("deploy/argocd/health.lua")).expect("read deploy/argocd/health.lua")
}

/// A Lua string literal; every byte that is not plain printable ASCII is
/// written as a decimal escape, which Lua 5.1 understands.
fn lua_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b}")),
        }
    }
    out.push('"');
    out
}

/// A Lua table constructor for a JSON value, shaped the way Argo CD hands
/// objects to health scripts: objects become keyed tables, arrays 1-based lists.
fn lua_literal(v: &Value) -> String {
    match v {
        Value::Null => "nil".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(lua_literal).collect();
            format!("{{{}}}", parts.join(", "))
        }
        Value::Object(map) => {
            let parts: Vec<String> =
                map.iter().map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_literal(v))).collect();
            format!("{{{}}}", parts.join(", "))
        }
    }
}

fn lua_interpreter() -> &'static str {
    for candidate in ["/usr/bin/lua5.1", "lua5.1"] {
        if Command::new(candidate).arg("-v").output().map(|o| o.status.success()).unwrap_or(false) {
            return candidate;
        }
    }
    panic!(
        "lua5.1 is required for the Argo CD health check tests (apt-get install lua5.1; see scripts/apt-packages.txt)"
    );
}

/// Runs health.lua for `obj` and returns (status, message).
fn health(obj: &Value) -> (String, String) {
    let script = format!(
        "local obj = {}\nlocal function health(obj)\n{}\nend\nlocal hs = health(obj)\nio.write(tostring(hs.status), \"\\n\", tostring(hs.message), \"\\n\")\n",
        lua_literal(obj),
        health_lua()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("check.lua");
    std::fs::write(&path, &script).expect("write script");
    run_lua(&path, &script)
}

fn run_lua(path: &Path, script: &str) -> (String, String) {
    let out = Command::new(lua_interpreter()).arg(path).output().expect("run lua5.1");
    assert!(
        out.status.success(),
        "lua5.1 failed: {}\n--- script ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        script
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8 output");
    let mut lines = stdout.lines();
    let status = lines.next().unwrap_or_default().to_string();
    let message = lines.next().unwrap_or_default().to_string();
    (status, message)
}

/// A VotingStack as the operator's own types serialize it.
fn stack(generation: i64, paused: bool, status: Option<Value>) -> Value {
    let mut vs = crate::fixtures::stack();
    vs.metadata.namespace = Some("voting".into());
    vs.metadata.generation = Some(generation);
    vs.spec.paused = paused;
    let mut obj = serde_json::to_value(&vs).expect("VotingStack serializes");
    if let Some(s) = status {
        obj["status"] = s;
    }
    obj
}

/// Every reason the engine writes. The match makes a new variant a compile
/// error here, so the health check is tested against each.
fn all_reasons() -> Vec<Reason> {
    use Reason::*;
    let all = vec![
        AllTiersReady,
        Progressing,
        InvalidSpec,
        SecretMissing,
        Paused,
        Deleting,
        InstancesRunning,
        Provisioning,
        InstanceDrift,
        InstanceLaunchFailed,
        NetworkDrift,
        NetworkUnusable,
        AwsAuthFailed,
        AwsInvalidParameter,
        AwsQuotaExceeded,
        AwsThrottled,
        AwsUnavailable,
        AwsError,
        ContainersRunning,
        WaitingForInfrastructure,
        SshUnreachable,
        HostKeyMismatch,
        DockerMissing,
        UnsupportedOperatingSystem,
        DockerDown,
        ImagePullFailed,
        ContainerExited,
        NotReady,
        DeployFailed,
        UpdateFailed,
        DataVolumeUnusable,
        WorkerPaused,
        SnapshotFailed,
        VoteCounted,
        VoteNotCounted,
        WaitingForTiers,
    ];
    for r in &all {
        match r {
            AllTiersReady
            | Progressing
            | InvalidSpec
            | SecretMissing
            | Paused
            | Deleting
            | InstancesRunning
            | Provisioning
            | InstanceDrift
            | InstanceLaunchFailed
            | NetworkDrift
            | NetworkUnusable
            | AwsAuthFailed
            | AwsInvalidParameter
            | AwsQuotaExceeded
            | AwsThrottled
            | AwsUnavailable
            | AwsError
            | ContainersRunning
            | WaitingForInfrastructure
            | SshUnreachable
            | HostKeyMismatch
            | DockerMissing
            | UnsupportedOperatingSystem
            | DockerDown
            | ImagePullFailed
            | ContainerExited
            | NotReady
            | DeployFailed
            | UpdateFailed
            | DataVolumeUnusable
            | WorkerPaused
            | SnapshotFailed
            | VoteCounted
            | VoteNotCounted
            | WaitingForTiers => {}
        }
    }
    all
}

fn reason_named(name: &str) -> Reason {
    all_reasons().into_iter().find(|r| r.as_str() == name).unwrap_or_else(|| panic!("no reason {name}"))
}

/// A condition made the way the engine makes them (`set_condition`).
fn condition(type_: ConditionType, status: bool, reason: Reason, message: &str) -> Condition {
    let mut conditions = Vec::new();
    set_condition(
        &mut conditions,
        &ConditionUpdate::new(type_, status, reason, message),
        Some(3),
        "2025-01-01T00:00:00Z",
    );
    conditions.remove(0)
}

fn ready(status: &str, reason: &str, message: &str) -> Condition {
    condition(ConditionType::Ready, status == "True", reason_named(reason), message)
}

/// A status built from the operator's status types, serialized as it is written.
fn status(observed: i64, phase: &str, ready_cond: Condition) -> Value {
    let phase: Phase = serde_json::from_value(json!(phase)).expect("a known phase");
    let st = VotingStackStatus {
        observed_generation: Some(observed),
        phase: Some(phase),
        conditions: vec![
            condition(ConditionType::InfrastructureReady, true, Reason::InstancesRunning, "3 instances running"),
            ready_cond,
        ],
        vote_url: Some("http://198.51.100.7:80/".into()),
        ..Default::default()
    };
    serde_json::to_value(&st).expect("status serializes")
}

#[test]
fn argocd_lua_literal_round_trips_through_the_interpreter() {
    let value = json!({ "s": "quote \" back\\slash \n new line ümlaut", "n": 3, "list": ["a", "b"] });
    let script = format!(
        "local v = {}\nio.write(v.s, \"|\", tostring(v.n), \"|\", v.list[1], v.list[2], \"\\n\", \"x\", \"\\n\")\n",
        lua_literal(&value)
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("literal.lua");
    std::fs::write(&path, &script).unwrap();
    let out = Command::new(lua_interpreter()).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "quote \" back\\slash \n new line ümlaut|3|ab\nx\n");
}

#[test]
fn argocd_no_status_is_progressing() {
    let (s, m) = health(&stack(1, false, None));
    assert_eq!(s, "Progressing");
    assert!(m.contains("status"), "message: {m}");
}

#[test]
fn argocd_not_ready_is_progressing_with_ready_message() {
    let st = status(3, "Provisioning", ready("False", "Progressing", "creating the backend instance"));
    let (s, m) = health(&stack(3, false, Some(st)));
    assert_eq!(s, "Progressing");
    assert_eq!(m, "Progressing: creating the backend instance");
}

#[test]
fn argocd_ready_for_current_generation_is_healthy() {
    let st = status(3, "Ready", ready("True", "AllTiersReady", "all tiers ready, vote counted"));
    let (s, m) = health(&stack(3, false, Some(st)));
    assert_eq!(s, "Healthy");
    assert_eq!(m, "AllTiersReady: all tiers ready, vote counted");
}

#[test]
fn argocd_stale_generation_is_progressing_even_when_ready() {
    let st = status(2, "Ready", ready("True", "AllTiersReady", "all tiers ready"));
    let (s, m) = health(&stack(3, false, Some(st)));
    assert_eq!(s, "Progressing");
    assert!(m.contains("generation 3"), "message: {m}");
}

#[test]
fn argocd_status_without_observed_generation_is_progressing() {
    let mut st = status(3, "Ready", ready("True", "AllTiersReady", "all tiers ready"));
    st.as_object_mut().unwrap().remove("observedGeneration");
    let (s, _) = health(&stack(3, false, Some(st)));
    assert_eq!(s, "Progressing");
}

#[test]
fn argocd_invalid_spec_is_degraded() {
    let st = status(
        3,
        "Pending",
        ready("False", "InvalidSpec", "spec.network.subnetCidr: 10.9.0.0/24 is not inside vpcCidr 10.42.0.0/16"),
    );
    let (s, m) = health(&stack(3, false, Some(st)));
    assert_eq!(s, "Degraded");
    assert_eq!(m, "InvalidSpec: spec.network.subnetCidr: 10.9.0.0/24 is not inside vpcCidr 10.42.0.0/16");
}

#[test]
fn argocd_every_terminal_reason_is_degraded() {
    for reason in ["InvalidSpec", "AwsAuthFailed", "AwsInvalidParameter", "AwsQuotaExceeded", "HostKeyMismatch"] {
        let st = status(3, "Deploying", ready("False", reason, "needs a person"));
        let (s, _) = health(&stack(3, false, Some(st)));
        assert_eq!(s, "Degraded", "reason {reason}");
    }
    for reason in ["AwsThrottled", "SshUnreachable", "DockerDown", "Progressing", "SecretMissing"] {
        let st = status(3, "Degraded", ready("False", reason, "being repaired"));
        let (s, _) = health(&stack(3, false, Some(st)));
        assert_eq!(s, "Progressing", "reason {reason}");
    }
}

#[test]
fn argocd_phase_failed_is_degraded() {
    let st = status(3, "Failed", ready("False", "Progressing", "gave up on the database host"));
    let (s, m) = health(&stack(3, false, Some(st)));
    assert_eq!(s, "Degraded");
    assert_eq!(m, "Progressing: gave up on the database host");
}

#[test]
fn argocd_paused_is_suspended() {
    let st = status(3, "Paused", ready("False", "Paused", "spec.paused is true; nothing is changed"));
    let (s, m) = health(&stack(3, true, Some(st)));
    assert_eq!(s, "Suspended");
    assert_eq!(m, "Paused: spec.paused is true; nothing is changed");
    let (s, m) = health(&stack(1, true, None));
    assert_eq!(s, "Suspended");
    assert!(!m.is_empty() && m != "nil");
}

#[test]
fn argocd_cm_patch_embeds_health_lua_verbatim() {
    let text = std::fs::read_to_string(repo().join("deploy/argocd/argocd-cm-patch.yaml")).unwrap();
    let cm: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(cm["kind"].as_str(), Some("ConfigMap"));
    assert_eq!(cm["metadata"]["name"].as_str(), Some("argocd-cm"));
    let script = cm["data"]["resource.customizations.health.votingstack.dev_VotingStack"]
        .as_str()
        .expect("health customization key");
    assert_eq!(script, health_lua(), "argocd-cm-patch.yaml must carry deploy/argocd/health.lua unchanged");
}

fn yaml(path: &str) -> serde_yaml::Value {
    let text = std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every YAML document of the files a kustomization lists.
fn kustomization_documents(dir: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    let k = yaml(&format!("{dir}/kustomization.yaml"));
    let mut docs = Vec::new();
    for r in k["resources"].as_sequence().expect("resources") {
        let path = repo().join(dir).join(r.as_str().unwrap());
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = serde_yaml::Value::deserialize(doc).unwrap();
            if !v.is_null() {
                docs.push(v);
            }
        }
    }
    docs
}

fn wave(app: &serde_yaml::Value) -> i64 {
    app["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]
        .as_str()
        .expect("a sync-wave annotation")
        .parse()
        .expect("a numeric sync wave")
}

#[test]
fn argocd_applications_point_at_deploy_and_a_stack_without_secrets() {
    let operator = yaml("deploy/argocd/operator-application.yaml");
    assert_eq!(operator["kind"].as_str(), Some("Application"));
    assert_eq!(operator["spec"]["source"]["path"].as_str(), Some("deploy"));
    let stack = yaml("deploy/argocd/stack-application.yaml");
    assert_eq!(stack["kind"].as_str(), Some("Application"));
    // Never the example file with its published SSH key.
    assert_eq!(stack["spec"]["source"]["path"].as_str(), Some("examples/argocd"));
    assert!(stack["spec"]["source"]["directory"].is_null());
    let docs = kustomization_documents("examples/argocd");
    assert!(docs.iter().all(|d| d["kind"].as_str() != Some("Secret")), "the stack Application deploys no Secret");
    for entry in std::fs::read_dir(repo().join("examples/argocd")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(!text.contains("PRIVATE KEY"), "no key material under examples/argocd");
    }
    let stacks: Vec<_> = docs.iter().filter(|d| d["kind"].as_str() == Some("VotingStack")).collect();
    assert_eq!(stacks.len(), 1);
    // The same stack as examples/votingstack.yaml, apart from its namespace.
    let example = std::fs::read_to_string(repo().join("examples/votingstack.yaml")).unwrap();
    let example: serde_yaml::Value = serde_yaml::from_str(example.split("\n---\n").next().unwrap()).unwrap();
    assert_eq!(example["kind"].as_str(), Some("VotingStack"));
    assert_eq!(stacks[0]["spec"], example["spec"], "examples/argocd/votingstack.yaml drifted from the example");
}

#[test]
fn argocd_stack_namespace_matches_the_application_and_the_docs() {
    let stack = yaml("deploy/argocd/stack-application.yaml");
    let ns = stack["spec"]["destination"]["namespace"].as_str().expect("destination namespace");
    let k = yaml("examples/argocd/kustomization.yaml");
    assert_eq!(k["namespace"].as_str(), Some(ns));
    for d in kustomization_documents("examples/argocd") {
        assert_eq!(d["metadata"]["namespace"].as_str(), Some(ns), "every object lands in {ns}");
    }
    let docs = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    assert!(docs.contains(&format!("into the namespace `{ns}`")), "docs/operations.md names the namespace {ns}");
    assert!(docs.contains("examples/argocd"), "docs/operations.md names the synced path");
    assert!(docs.contains("out of band"), "docs say the Secret is created out of band");
}

#[test]
fn argocd_operator_syncs_before_the_stacks() {
    let operator = yaml("deploy/argocd/operator-application.yaml");
    let stack = yaml("deploy/argocd/stack-application.yaml");
    assert!(wave(&operator) < wave(&stack), "operator wave before stack wave");
    // The app of apps holds both and is what root-application.yaml syncs.
    let root = yaml("deploy/argocd/root-application.yaml");
    assert_eq!(root["kind"].as_str(), Some("Application"));
    assert_eq!(root["spec"]["source"]["path"].as_str(), Some("deploy/argocd"));
    let names: Vec<String> = kustomization_documents("deploy/argocd")
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["votingstack-operator", "votingstack-demo"]);
    // Waves between Applications only wait when Argo CD assesses Application health.
    let cm = yaml("deploy/argocd/argocd-cm-patch.yaml");
    let script = cm["data"]["resource.customizations.health.argoproj.io_Application"]
        .as_str()
        .expect("Application health customization");
    let file = std::fs::read_to_string(repo().join("deploy/argocd/application-health.lua")).unwrap();
    assert_eq!(script, file, "argocd-cm-patch.yaml must carry application-health.lua unchanged");
}

/// Runs application-health.lua for an Application.
fn application_health(app: &Value) -> (String, String) {
    let lua = std::fs::read_to_string(repo().join("deploy/argocd/application-health.lua")).unwrap();
    let script = format!(
        "local obj = {}\nlocal function health(obj)\n{}\nend\nlocal hs = health(obj)\nio.write(tostring(hs.status), \"\\n\", tostring(hs.message), \"\\n\")\n",
        lua_literal(app),
        lua
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.lua");
    std::fs::write(&path, &script).expect("write script");
    run_lua(&path, &script)
}

#[test]
fn argocd_application_health_follows_the_application() {
    let (s, _) = application_health(&json!({ "kind": "Application", "metadata": { "name": "x" } }));
    assert_eq!(s, "Progressing");
    let app = json!({ "kind": "Application", "status": { "health": { "status": "Degraded", "message": "boom" } } });
    assert_eq!(application_health(&app), ("Degraded".to_string(), "boom".to_string()));
    let app = json!({ "kind": "Application", "status": { "health": { "status": "Healthy" } } });
    assert_eq!(application_health(&app).0, "Healthy");
}

#[test]
fn argocd_health_degrades_exactly_on_the_engines_terminal_reasons() {
    for reason in all_reasons() {
        let st = status(3, "Deploying", condition(ConditionType::Ready, false, reason, "x"));
        let (s, _) = health(&stack(3, false, Some(st)));
        let expected = if reason.is_terminal() { "Degraded" } else { "Progressing" };
        assert_eq!(s, expected, "Ready False with reason {reason}");
    }
}
