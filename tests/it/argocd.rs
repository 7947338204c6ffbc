//! The Argo CD health check (deploy/argocd/health.lua) run by the real Lua 5.1
//! interpreter, the language version Argo CD embeds, against sample VotingStacks.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

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

fn stack(generation: i64, paused: bool, status: Option<Value>) -> Value {
    let mut obj = json!({
        "apiVersion": "votingstack.dev/v1alpha1",
        "kind": "VotingStack",
        "metadata": { "name": "demo", "namespace": "voting", "generation": generation },
        "spec": {
            "network": { "sshIngressCidrs": ["203.0.113.0/24"] },
            "instances": { "ami": "ami-0123456789abcdef0" },
            "ssh": { "privateKeySecretRef": { "name": "demo-ssh" } },
            "paused": paused
        }
    });
    if let Some(s) = status {
        obj["status"] = s;
    }
    obj
}

fn ready(status: &str, reason: &str, message: &str) -> Value {
    json!({
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2025-01-01T00:00:00Z",
        "observedGeneration": 3
    })
}

fn status(observed: i64, phase: &str, ready_cond: Value) -> Value {
    json!({
        "observedGeneration": observed,
        "phase": phase,
        "conditions": [
            {
                "type": "InfrastructureReady",
                "status": "True",
                "reason": "InstancesRunning",
                "message": "3 instances running",
                "lastTransitionTime": "2025-01-01T00:00:00Z"
            },
            ready_cond
        ],
        "voteUrl": "http://198.51.100.7:80/"
    })
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

#[test]
fn argocd_applications_point_at_deploy_and_examples() {
    let read = |name: &str| -> serde_yaml::Value {
        let text = std::fs::read_to_string(repo().join("deploy/argocd").join(name)).unwrap();
        serde_yaml::from_str(&text).unwrap()
    };
    let operator = read("operator-application.yaml");
    assert_eq!(operator["kind"].as_str(), Some("Application"));
    assert_eq!(operator["spec"]["source"]["path"].as_str(), Some("deploy"));
    let stack = read("stack-application.yaml");
    assert_eq!(stack["kind"].as_str(), Some("Application"));
    assert_eq!(stack["spec"]["source"]["path"].as_str(), Some("examples"));
    assert_eq!(stack["spec"]["source"]["directory"]["include"].as_str(), Some("votingstack.yaml"));
}
