//! Static checks of the install manifests under deploy/, the Dockerfile and
//! the IAM policy: least privilege, a locked-down pod, probes on the metrics
//! port, and kustomizations that only name files that exist.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(path);
        }
    }
}

/// Every YAML document under deploy/, with the file it came from.
fn documents() -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    yaml_files(&repo().join("deploy"), &mut files);
    assert!(!files.is_empty(), "no YAML under deploy/");
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if !value.is_null() {
                docs.push((file.clone(), value));
            }
        }
    }
    docs
}

fn of_kind(kind: &str) -> Vec<(PathBuf, Value)> {
    documents().into_iter().filter(|(_, d)| d["kind"].as_str() == Some(kind)).collect()
}

fn one(kind: &str, name: &str) -> Value {
    let found: Vec<_> =
        of_kind(kind).into_iter().filter(|(_, d)| d["metadata"]["name"].as_str() == Some(name)).collect();
    assert_eq!(found.len(), 1, "expected one {kind} named {name}, found {}", found.len());
    found.into_iter().next().unwrap().1
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().map(|x| x.as_str().expect("string entry").to_string()).collect())
        .unwrap_or_default()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// (apiGroup, resource) -> verbs, over all rules of a Role or ClusterRole.
fn grants(role: &Value) -> Vec<(String, String, BTreeSet<String>)> {
    let mut out = Vec::new();
    for rule in role["rules"].as_sequence().expect("rules") {
        let verbs: BTreeSet<String> = strings(&rule["verbs"]).into_iter().collect();
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                out.push((group.clone(), resource, verbs.clone()));
            }
        }
    }
    out
}

fn verbs_for(role: &Value, group: &str, resource: &str) -> BTreeSet<String> {
    grants(role).into_iter().filter(|(g, r, _)| g == group && r == resource).flat_map(|(_, _, v)| v).collect()
}

fn operator_container() -> Value {
    let deployment = one("Deployment", "votingstack-operator");
    let containers = deployment["spec"]["template"]["spec"]["containers"].as_sequence().expect("containers").clone();
    assert_eq!(containers.len(), 1, "the operator pod has one container");
    containers[0].clone()
}

#[test]
fn deploy_every_yaml_document_parses() {
    let docs = documents();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "Kustomization",
        "Application",
        "ConfigMap",
    ] {
        assert!(docs.iter().any(|(_, d)| d["kind"].as_str() == Some(kind)), "no {kind} under deploy/");
    }
}

#[test]
fn deploy_rbac_has_no_wildcards() {
    let mut checked = 0;
    for kind in ["ClusterRole", "Role"] {
        for (file, role) in of_kind(kind) {
            for rule in role["rules"].as_sequence().expect("rules") {
                for field in ["verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs"] {
                    for entry in strings(&rule[field]) {
                        assert!(!entry.contains('*'), "{}: wildcard {entry:?} in {field}", file.display());
                    }
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 6, "expected the operator's rules, checked {checked}");
}

#[test]
fn deploy_cluster_role_grants_exactly_what_the_operator_uses() {
    let role = one("ClusterRole", "votingstack-operator");
    let g = "votingstack.dev";
    assert_eq!(verbs_for(&role, g, "votingstacks"), set(&["list", "watch", "patch"]));
    assert_eq!(verbs_for(&role, g, "votingstacks/status"), set(&["patch"]));
    assert_eq!(verbs_for(&role, "", "secrets"), set(&["get", "list", "watch"]));
    assert_eq!(verbs_for(&role, "events.k8s.io", "events"), set(&["create", "patch"]));
    let all: BTreeSet<(String, String)> = grants(&role).into_iter().map(|(g, r, _)| (g, r)).collect();
    assert_eq!(all.len(), 4, "unexpected extra grants: {all:?}");
    for (_, _, verbs) in grants(&role) {
        for forbidden in ["delete", "deletecollection", "escalate", "bind", "impersonate"] {
            assert!(!verbs.contains(forbidden), "ClusterRole must not grant {forbidden}");
        }
    }

    let binding = one("ClusterRoleBinding", "votingstack-operator");
    assert_eq!(binding["roleRef"]["kind"].as_str(), Some("ClusterRole"));
    assert_eq!(binding["roleRef"]["name"].as_str(), Some("votingstack-operator"));
    assert_eq!(binding["subjects"][0]["name"].as_str(), Some("votingstack-operator"));
    assert_eq!(binding["subjects"][0]["namespace"].as_str(), Some("votingstack-system"));
}

#[test]
fn deploy_lease_role_is_namespaced_and_limited() {
    let role = one("Role", "votingstack-operator-leader-election");
    assert_eq!(role["metadata"]["namespace"].as_str(), Some("votingstack-system"));
    assert_eq!(verbs_for(&role, "coordination.k8s.io", "leases"), set(&["get", "create", "update"]));
    assert_eq!(grants(&role).iter().filter(|(_, r, _)| r != "leases").count(), 0);
    for rule in role["rules"].as_sequence().unwrap() {
        let verbs = strings(&rule["verbs"]);
        if verbs.iter().any(|v| v == "get" || v == "update") {
            assert_eq!(
                strings(&rule["resourceNames"]),
                ["votingstack-operator"],
                "get/update only on the operator's Lease"
            );
        }
    }
    let binding = one("RoleBinding", "votingstack-operator-leader-election");
    assert_eq!(binding["roleRef"]["kind"].as_str(), Some("Role"));
    assert_eq!(binding["subjects"][0]["name"].as_str(), Some("votingstack-operator"));
}

#[test]
fn deploy_deployment_security_context_is_locked_down() {
    let deployment = one("Deployment", "votingstack-operator");
    assert_eq!(deployment["spec"]["replicas"].as_i64(), Some(1));
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"].as_str(), Some("votingstack-operator"));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"].as_str(), Some("RuntimeDefault"));

    let c = operator_container();
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(sc["runAsUser"].as_i64(), Some(65532));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_ne!(sc["privileged"].as_bool(), Some(true));
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert!(sc["capabilities"]["add"].is_null(), "no capabilities are added");
    assert_eq!(sc["seccompProfile"]["type"].as_str(), Some("RuntimeDefault"));

    for side in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(c["resources"][side][resource].as_str().is_some(), "resources.{side}.{resource} is set");
        }
    }
}

#[test]
fn deploy_probes_use_the_metrics_port() {
    let c = operator_container();
    let ports = c["ports"].as_sequence().expect("ports");
    let metrics = ports.iter().find(|p| p["name"].as_str() == Some("metrics")).expect("a port named metrics");
    assert_eq!(metrics["containerPort"].as_i64(), Some(8080));

    let args = strings(&c["args"]);
    assert_eq!(args.first().map(String::as_str), Some("controller"));
    let addr = args.iter().position(|a| a == "--metrics-addr").and_then(|i| args.get(i + 1));
    assert_eq!(addr.map(String::as_str), Some("0.0.0.0:8080"));

    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe} path");
        let port_ok = get["port"].as_str() == Some("metrics") || get["port"].as_i64() == Some(8080);
        assert!(port_ok, "{probe} must use the metrics port, got {:?}", get["port"]);
    }

    let service = one("Service", "votingstack-operator-metrics");
    let sp = &service["spec"]["ports"][0];
    assert_eq!(sp["port"].as_i64(), Some(8080));
    assert_eq!(sp["targetPort"].as_str(), Some("metrics"));
    let deployment = one("Deployment", "votingstack-operator");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (k, v) in service["spec"]["selector"].as_mapping().expect("selector") {
        assert_eq!(&pod_labels[k.as_str().unwrap()], v, "Service selector matches the pod");
    }
}

#[test]
fn deploy_env_has_downward_api_and_optional_aws_secret() {
    let c = operator_container();
    let env = c["env"].as_sequence().expect("env");
    let field = |name: &str| {
        env.iter()
            .find(|e| e["name"].as_str() == Some(name))
            .and_then(|e| e["valueFrom"]["fieldRef"]["fieldPath"].as_str())
            .map(str::to_string)
    };
    assert_eq!(field("POD_NAMESPACE").as_deref(), Some("metadata.namespace"));
    assert_eq!(field("POD_NAME").as_deref(), Some("metadata.name"));
    let env_from = c["envFrom"].as_sequence().expect("envFrom");
    assert!(
        env_from.iter().any(|e| e["secretRef"]["optional"].as_bool() == Some(true)),
        "AWS credentials come from an optional Secret"
    );
    let sa = std::fs::read_to_string(repo().join("deploy/base/serviceaccount.yaml")).unwrap();
    assert!(sa.contains("eks.amazonaws.com/role-arn"), "ServiceAccount shows the IRSA annotation");
}

/// The value of `--flag=value` or `--flag value` in `args`.
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let prefix = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| match a.strip_prefix(&prefix) {
        Some(v) => Some(v.to_string()),
        None if a == flag => args.get(i + 1).filter(|v| !v.starts_with("--")).cloned().or(Some("true".into())),
        None => None,
    })
}

#[test]
fn deploy_base_elects_a_leader_and_rolls_updates() {
    let c = operator_container();
    let args = strings(&c["args"]);
    // On by default in the binary, and said in the manifest too.
    let election = flag_value(&args, "--leader-election");
    assert_ne!(election.as_deref(), Some("false"), "the base runs with leader election");
    assert_eq!(election.as_deref(), Some("true"), "the base says so: {args:?}");
    let deployment = one("Deployment", "votingstack-operator");
    let strategy = &deployment["spec"]["strategy"];
    assert_eq!(strategy["type"].as_str(), Some("RollingUpdate"), "with the Lease, old and new pods never lead at once");
    assert_eq!(strategy["rollingUpdate"]["maxUnavailable"].as_i64(), Some(0));
}

#[test]
fn deploy_base_names_its_installation() {
    let c = operator_container();
    let args = strings(&c["args"]);
    // Said in the manifest, so it is where a user changes it; `default` is
    // the name the IAM policy in docs/ is written for.
    let name = flag_value(&args, "--installation").expect("the base passes --installation");
    assert_eq!(name, "default", "{args:?}");
    assert_eq!(name, votingstack::cloud::Installation::DEFAULT);
    let policy = std::fs::read_to_string(repo().join("docs/iam-policy.json")).unwrap();
    assert!(policy.contains(&format!("/votingstack.dev/installation\": \"{name}\"")));
}

#[test]
fn deploy_grace_period_covers_the_shutdown() {
    let c = operator_container();
    let args = strings(&c["args"]);
    let deadline: u64 = flag_value(&args, "--shutdown-deadline-seconds")
        .expect("the base states its shutdown deadline")
        .parse()
        .expect("seconds");
    let deployment = one("Deployment", "votingstack-operator");
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64().expect("grace set");
    let step = votingstack::controller::shutdown::STEP_GRACE.as_secs();
    // Releasing the Lease is bounded by two Lease calls of 5 s.
    let release = 10;
    assert!(
        grace >= deadline + step + release + 5,
        "terminationGracePeriodSeconds {grace} must cover deadline {deadline} + step {step} + release {release} + 5"
    );
}

#[test]
fn deploy_ha_overlay_only_adds_a_standby() {
    let text = std::fs::read_to_string(repo().join("deploy/overlays/ha/replicas.yaml")).unwrap();
    let ops: Value = serde_yaml::from_str(&text).unwrap();
    let ops = ops.as_sequence().expect("a JSON 6902 patch");
    let find = |path: &str| ops.iter().find(|o| o["path"].as_str() == Some(path)).cloned();
    assert_eq!(find("/spec/replicas").expect("replicas patched")["value"].as_i64(), Some(2));
    assert!(find("/spec/template/spec/affinity").is_some(), "replicas spread over nodes");
    for path in ["/spec/strategy", "/spec/template/spec/containers/0/args/-", "/spec/template/spec/containers/0/args"] {
        assert!(find(path).is_none(), "{path}: the base already elects a leader and rolls updates");
    }
    let k = std::fs::read_to_string(repo().join("deploy/overlays/ha/kustomization.yaml")).unwrap();
    assert!(k.contains("poddisruptionbudget.yaml"));
}

/// Resources and patches named by a kustomization, as paths relative to it.
fn kustomization_refs(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("kustomization.yaml"))
        .unwrap_or_else(|e| panic!("{}/kustomization.yaml: {e}", dir.display()));
    let k: Value = serde_yaml::from_str(&text).unwrap();
    let mut refs = strings(&k["resources"]);
    for patch in k["patches"].as_sequence().cloned().unwrap_or_default() {
        if let Some(p) = patch["path"].as_str() {
            refs.push(p.to_string());
        }
    }
    refs.extend(strings(&k["patchesStrategicMerge"]));
    refs
}

#[test]
fn deploy_kustomizations_list_files_that_exist() {
    let root = repo();
    let mut todo = vec![root.join("deploy"), root.join("deploy/overlays/ha")];
    let mut seen = BTreeSet::new();
    while let Some(dir) = todo.pop() {
        let dir = dir.canonicalize().unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        if !seen.insert(dir.clone()) {
            continue;
        }
        for r in kustomization_refs(&dir) {
            assert!(!r.contains("://"), "{}: remote resource {r}", dir.display());
            let target = dir.join(&r);
            if target.is_dir() {
                assert!(
                    target.join("kustomization.yaml").is_file(),
                    "{}: {r} has no kustomization.yaml",
                    dir.display()
                );
                todo.push(target);
            } else {
                assert!(target.is_file(), "{}/kustomization.yaml lists {r}, which does not exist", dir.display());
            }
        }
    }
    let crds = root.join("crds").canonicalize().unwrap();
    assert!(seen.contains(&crds), "deploy/ installs the CRD from crds/");
    assert_eq!(kustomization_refs(&crds), ["votingstack.yaml"]);
}

#[test]
fn deploy_dockerfile_runs_the_controller_as_non_root() {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let froms = text.lines().filter(|l| l.trim_start().starts_with("FROM ")).count();
    assert!(froms >= 2, "multi-stage build");
    assert!(text.lines().any(|l| l.trim() == "USER 65532:65532"), "runs as uid 65532");
    assert!(text.contains(r#"ENTRYPOINT ["/usr/local/bin/votingstack"]"#));
    assert!(text.contains(r#"CMD ["controller"]"#));
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target"), ".dockerignore leaves out target/");
}

#[test]
fn deploy_iam_policy_is_minimal_and_tag_scoped() {
    let text = std::fs::read_to_string(repo().join("docs/iam-policy.json")).unwrap();
    let policy: serde_json::Value = serde_json::from_str(&text).expect("docs/iam-policy.json is JSON");
    assert_eq!(policy["Version"].as_str(), Some("2012-10-17"));
    let statements = policy["Statement"].as_array().expect("Statement list");
    let mut actions = BTreeSet::new();
    let mut kms = BTreeSet::new();
    let mut scoped = 0;
    let mut adoptions = 0;
    for st in statements {
        assert_eq!(st["Effect"].as_str(), Some("Allow"));
        let list: Vec<String> = match &st["Action"] {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(a) => a.iter().map(|x| x.as_str().unwrap().to_string()).collect(),
            other => panic!("bad Action {other}"),
        };
        if list.iter().any(|a| a.starts_with("kms:")) {
            // KMS keys for the volumes' encryption, used only by EC2.
            assert!(list.iter().all(|a| a.starts_with("kms:")), "{}: KMS actions apart", st["Sid"]);
            let via = st["Condition"]["StringLike"]["kms:ViaService"]
                .as_str()
                .or(st["Condition"]["StringEquals"]["kms:ViaService"].as_str());
            assert!(
                via.is_some_and(|v| v.starts_with("ec2.") && v.ends_with(".amazonaws.com")),
                "{}: KMS actions only through EC2 (kms:ViaService)",
                st["Sid"]
            );
            assert!(st["Resource"].as_str() != Some("*"), "{}: KMS actions on keys only", st["Sid"]);
            kms.extend(list);
            continue;
        }
        for a in &list {
            assert!(a.starts_with("ec2:"), "only EC2 actions: {a}");
            assert!(a != "ec2:*", "no ec2:*");
            if a.contains('*') {
                assert!(a.starts_with("ec2:Describe"), "only Describe* may be a wildcard: {a}");
            }
        }
        let mutating = list.iter().any(|a| !a.starts_with("ec2:Describe"));
        if mutating && st["Condition"].is_object() {
            scoped += 1;
            let cond = &st["Condition"];
            let sid = &st["Sid"];
            let keys: BTreeSet<&str> = cond.as_object().unwrap().keys().map(String::as_str).collect();
            if cond["StringEquals"]["ec2:CreateAction"].is_array() {
                // Tags only on the create calls themselves (whose own
                // statements require the installation tag).
                assert_eq!(list, ["ec2:CreateTags"], "{sid}");
                assert_eq!(keys, BTreeSet::from(["StringEquals"]), "{sid}: {cond}");
                assert_eq!(cond["StringEquals"].as_object().unwrap().len(), 1, "{sid}: {cond}");
            } else if cond["Null"][INSTALLATION_RESOURCE_TAG].as_str() == Some("true") {
                // Adopting a resource of an older version: only the
                // installation's tag, with this installation's name, only
                // on resources with the stack tag and no installation tag.
                adoptions += 1;
                assert_eq!(list, ["ec2:CreateTags"], "{sid}");
                assert_ne!(st["Resource"].as_str(), Some("*"), "{sid}: resource types listed");
                assert_eq!(
                    keys,
                    BTreeSet::from(["Null", "StringEquals", "ForAllValues:StringEquals"]),
                    "{sid}: {cond}"
                );
                assert_eq!(
                    cond["Null"],
                    serde_json::json!({INSTALLATION_RESOURCE_TAG: "true", "ec2:ResourceTag/votingstack.dev/stack": "false"}),
                    "{sid}"
                );
                assert_eq!(cond["StringEquals"], serde_json::json!({INSTALLATION_REQUEST_TAG: "default"}), "{sid}");
                assert_eq!(
                    cond["ForAllValues:StringEquals"],
                    serde_json::json!({"aws:TagKeys": ["votingstack.dev/installation"]}),
                    "{sid}"
                );
            } else {
                // Every other write: only where the installation tag is
                // `default` (the resource's, or the one a create request
                // carries), never merely where some stack tag exists.
                let equals =
                    cond["StringEquals"].as_object().unwrap_or_else(|| panic!("{sid}: no StringEquals: {cond}"));
                let installation: Vec<&str> = [INSTALLATION_RESOURCE_TAG, INSTALLATION_REQUEST_TAG]
                    .into_iter()
                    .filter(|k| equals.get(*k).and_then(|v| v.as_str()) == Some("default"))
                    .collect();
                assert_eq!(installation.len(), 1, "{sid}: not scoped to the installation tag `default`: {cond}");
                for (op, terms) in cond.as_object().unwrap() {
                    for (key, value) in terms.as_object().unwrap() {
                        let allowed = (op == "StringEquals" && installation.contains(&key.as_str()))
                            || (op == "Null" && key == "ec2:ResourceTag/votingstack.dev/stack" && value == "false")
                            || (op == "ForAllValues:StringEquals"
                                && key == "aws:TagKeys"
                                && *value == serde_json::json!(["votingstack.dev/formatted"]));
                        assert!(allowed, "{sid}: unexpected condition {op} {key}: {value}");
                    }
                }
            }
        }
        if mutating && st["Resource"].as_str() == Some("*") {
            assert!(
                st["Condition"].is_object(),
                "{}: a mutating statement on every resource needs a condition",
                st["Sid"]
            );
        }
        actions.extend(list);
    }
    for needed in [
        "CreateVpc",
        "DeleteVpc",
        "CreateSubnet",
        "DeleteSubnet",
        "CreateInternetGateway",
        "DeleteInternetGateway",
        "AttachInternetGateway",
        "DetachInternetGateway",
        "CreateRouteTable",
        "DeleteRouteTable",
        "CreateRoute",
        "ReplaceRoute",
        "AssociateRouteTable",
        "DisassociateRouteTable",
        "CreateSecurityGroup",
        "DeleteSecurityGroup",
        "AuthorizeSecurityGroupIngress",
        "RevokeSecurityGroupIngress",
        "ModifyVpcAttribute",
        "ImportKeyPair",
        "DeleteKeyPair",
        "RunInstances",
        "StartInstances",
        "ModifyInstanceMetadataOptions",
        "TerminateInstances",
        "CreateTags",
        "DescribeVolumes",
        "CreateVolume",
        "AttachVolume",
        "DetachVolume",
        "DeleteVolume",
        "DescribeSnapshots",
        "CreateSnapshot",
        "DeleteSnapshot",
        "DescribeAvailabilityZones",
        "DescribeInstanceTypeOfferings",
    ] {
        assert!(actions.contains(&format!("ec2:{needed}")), "policy lacks ec2:{needed}");
    }
    // What EC2 needs of a customer-managed key to encrypt the volumes with it.
    for needed in ["CreateGrant", "Decrypt", "GenerateDataKeyWithoutPlaintext", "ReEncrypt*", "DescribeKey"] {
        assert!(kms.contains(&format!("kms:{needed}")), "policy lacks kms:{needed}");
    }
    // Snapshots: taken only of the stack's volumes, created only with the
    // stack's tag, deleted only when they carry it.
    let sids_for = |action: &str| -> Vec<&serde_json::Value> {
        statements
            .iter()
            .filter(|st| match &st["Action"] {
                serde_json::Value::String(s) => s == action,
                serde_json::Value::Array(a) => a.iter().any(|x| x.as_str() == Some(action)),
                _ => false,
            })
            .collect()
    };
    for st in sids_for("ec2:CreateSnapshot").into_iter().chain(sids_for("ec2:DeleteSnapshot")) {
        let cond = st["Condition"].to_string();
        assert!(
            cond.contains("votingstack.dev/installation"),
            "{}: not scoped by the installation tag: {cond}",
            st["Sid"]
        );
    }
    // Metadata options and routes: changed only on the stack's tagged
    // instances and route tables.
    for action in ["ec2:ModifyInstanceMetadataOptions", "ec2:ReplaceRoute"] {
        let sts = sids_for(action);
        assert!(!sts.is_empty(), "policy lacks {action}");
        for st in sts {
            let cond = st["Condition"].to_string();
            assert!(
                st["Condition"]["StringEquals"][INSTALLATION_RESOURCE_TAG].as_str() == Some("default"),
                "{}: {action} not scoped to the installation tag: {cond}",
                st["Sid"]
            );
        }
    }
    let deletes = sids_for("ec2:DeleteSnapshot");
    assert!(!deletes.is_empty() && deletes.iter().all(|st| st["Condition"].to_string().contains("ResourceTag")));
    let grants = sids_for("kms:CreateGrant");
    assert!(
        !grants.is_empty()
            && grants.iter().all(|st| st["Condition"]["Bool"]["kms:GrantIsForAWSResource"].as_str() == Some("true")),
        "kms:CreateGrant only for AWS resources"
    );
    assert!(scoped >= 3, "mutating statements are scoped by the votingstack.dev/installation tag");
    assert_eq!(adoptions, 1, "one statement adopts resources of an older version");
}

/// The policy's condition keys of the installation tag.
const INSTALLATION_RESOURCE_TAG: &str = "ec2:ResourceTag/votingstack.dev/installation";
const INSTALLATION_REQUEST_TAG: &str = "aws:RequestTag/votingstack.dev/installation";

type Grants = std::collections::BTreeMap<(String, String), BTreeSet<String>>;

/// (apiGroup, resource) -> verbs of a list of API uses.
fn needed(uses: &[votingstack::rbac::ApiUse]) -> Grants {
    let mut out = Grants::new();
    for u in uses {
        out.entry((u.group.to_string(), u.resource.to_string()))
            .or_default()
            .extend(u.verbs.iter().map(|v| v.to_string()));
    }
    out
}

/// (apiGroup, resource) -> verbs of a Role or ClusterRole.
fn granted(role: &Value) -> Grants {
    let mut out = Grants::new();
    for (g, r, verbs) in grants(role) {
        out.entry((g, r)).or_default().extend(verbs);
    }
    out
}

fn all_uses() -> Vec<votingstack::rbac::ApiUse> {
    let mut uses = votingstack::rbac::CONTROLLER_API_USES.to_vec();
    uses.extend_from_slice(votingstack::leader::LEASE_API_USES);
    uses
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().and_then(|e| e.to_str()) == Some("rs") {
            out.push(path);
        }
    }
}

#[test]
fn deploy_rbac_table_matches_the_api_calls_in_src() {
    let uses = all_uses();
    // Each entry's code is still there.
    for u in &uses {
        let text = std::fs::read_to_string(repo().join(u.file)).unwrap_or_else(|e| panic!("{}: {e}", u.file));
        let code = text.split("#[cfg(test)]").next().unwrap();
        let found = code.lines().any(|l| l.contains(u.call) && !l.trim_start().starts_with("call:"));
        assert!(found, "{}: no `{}` any more; update the API use table", u.file, u.call);
    }
    // Each API call in src/ (files that use kube, outside tests) has an entry.
    let mut files = Vec::new();
    rust_files(&repo().join("src"), &mut files);
    files.sort();
    let mut scanned = 0;
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        if !text.contains("kube::") {
            continue;
        }
        let rel = path.strip_prefix(repo()).unwrap().to_string_lossy().replace('\\', "/");
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (n, line) in code.lines().enumerate() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("//") || trimmed.starts_with("call:") || trimmed.starts_with('"') {
                continue;
            }
            if !votingstack::rbac::CALL_PATTERNS.iter().any(|p| line.contains(p)) {
                continue;
            }
            scanned += 1;
            let covered = uses.iter().any(|u| u.file == rel && line.contains(u.call));
            assert!(
                covered,
                "{rel}:{}: `{}` calls the Kubernetes API but has no entry in src/rbac.rs or LEASE_API_USES",
                n + 1,
                line.trim()
            );
        }
    }
    assert!(scanned >= uses.len(), "found {scanned} API calls for {} table entries", uses.len());
}

#[test]
fn deploy_cluster_role_grants_what_the_code_calls() {
    let need = needed(votingstack::rbac::CONTROLLER_API_USES);
    let mut have = granted(&one("ClusterRole", "votingstack-operator"));
    for ((g, r), verbs) in &need {
        let got = have.get(&(g.clone(), r.clone())).cloned().unwrap_or_default();
        let missing: Vec<_> = verbs.difference(&got).collect();
        assert!(missing.is_empty(), "ClusterRole lacks {missing:?} on {g}/{r}, which src/ calls");
    }
    // Nothing is granted beyond the calls.
    for ((g, r), verbs) in need {
        if let Some(v) = have.get_mut(&(g, r)) {
            v.retain(|x| !verbs.contains(x));
        }
    }
    have.retain(|_, v| !v.is_empty());
    assert!(have.is_empty(), "ClusterRole grants beyond what src/ calls: {have:?}");
}

#[test]
fn deploy_lease_role_grants_exactly_the_lease_calls() {
    let role = one("Role", "votingstack-operator-leader-election");
    assert_eq!(granted(&role), needed(votingstack::leader::LEASE_API_USES));
}

#[test]
fn deploy_namespaced_overlay_grants_exactly_what_the_code_calls() {
    let dir = repo().join("deploy/overlays/namespaced");
    let k: Value = serde_yaml::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap()).unwrap();
    let refs = kustomization_refs(&dir);
    for r in &refs {
        assert!(dir.join(r).exists(), "namespaced overlay lists {r}, which does not exist");
    }
    assert!(refs.contains(&"../../base".to_string()) && refs.contains(&"../../../crds".to_string()));
    // The cluster-wide grants are deleted.
    let patches = k["patches"].as_sequence().expect("patches");
    for kind in ["ClusterRole", "ClusterRoleBinding"] {
        let deleted = patches.iter().any(|p| {
            p["target"]["kind"].as_str() == Some(kind)
                && p["target"]["name"].as_str() == Some("votingstack-operator")
                && p["patch"].as_str().is_some_and(|t| t.contains("$patch: delete"))
        });
        assert!(deleted, "the namespaced overlay deletes the {kind}");
    }
    // The namespaces the operator watches: each value after --watch-namespace,
    // split at commas as the operator splits it.
    let ops: Value = serde_yaml::from_str(&std::fs::read_to_string(dir.join("watch-namespace.yaml")).unwrap()).unwrap();
    let args: Vec<&str> = ops.as_sequence().unwrap().iter().filter_map(|o| o["value"].as_str()).collect();
    let mut watched = BTreeSet::new();
    for pair in args.chunks(2) {
        assert_eq!(pair[0], "--watch-namespace", "{args:?}");
        let value = pair.get(1).unwrap_or_else(|| panic!("--watch-namespace without a value: {args:?}"));
        watched.extend(value.split(',').map(|ns| ns.trim().to_string()).filter(|ns| !ns.is_empty()));
    }
    assert!(!watched.is_empty(), "the namespaced overlay watches no namespace");
    // The overlay's own documents.
    let docs: Vec<Value> = refs
        .iter()
        .filter(|r| r.ends_with(".yaml"))
        .filter_map(|r| std::fs::read_to_string(dir.join(r)).ok())
        .flat_map(|text| {
            serde_yaml::Deserializer::from_str(&text).filter_map(|doc| Value::deserialize(doc).ok()).collect::<Vec<_>>()
        })
        .collect();
    let in_ns = |kind: &str, ns: &str| -> Vec<Value> {
        docs.iter()
            .filter(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["namespace"].as_str() == Some(ns))
            .cloned()
            .collect()
    };
    let namespaces_created: BTreeSet<String> = docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some("Namespace"))
        .filter_map(|d| d["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    let role_namespaces: BTreeSet<String> = docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some("Role"))
        .filter_map(|d| d["metadata"]["namespace"].as_str().map(str::to_string))
        .collect();
    assert_eq!(role_namespaces, watched, "a Role in each watched namespace, and in no other");
    for ns in &watched {
        // Nothing else creates the namespace, and a Role in a namespace that
        // does not exist is refused.
        assert!(namespaces_created.contains(ns), "the namespaced overlay does not create the namespace {ns}");
        // A Role with exactly the controller's calls, bound to the operator.
        let roles = in_ns("Role", ns);
        assert_eq!(roles.len(), 1, "one Role in {ns}");
        let role = &roles[0];
        assert_eq!(granted(role), needed(votingstack::rbac::CONTROLLER_API_USES));
        let bindings = in_ns("RoleBinding", ns);
        assert_eq!(bindings.len(), 1, "one RoleBinding in {ns}");
        let binding = &bindings[0];
        assert_eq!(binding["roleRef"]["kind"].as_str(), Some("Role"));
        assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
        assert_eq!(binding["subjects"][0]["name"].as_str(), Some("votingstack-operator"));
        assert_eq!(binding["subjects"][0]["namespace"].as_str(), Some("votingstack-system"));
    }
}

/// The EC2 actions src/cloud/ calls: every SDK operation started on the
/// client (`client.<operation>()` or `c.<operation>()`, whatever the
/// layout), as IAM names them.
fn ec2_calls_in_src() -> BTreeSet<String> {
    const VERBS: &[&str] = &[
        "allocate_",
        "associate_",
        "attach_",
        "authorize_",
        "copy_",
        "create_",
        "delete_",
        "deregister_",
        "describe_",
        "detach_",
        "disable_",
        "disassociate_",
        "enable_",
        "get_",
        "import_",
        "modify_",
        "reboot_",
        "register_",
        "release_",
        "replace_",
        "revoke_",
        "run_",
        "start_",
        "stop_",
        "terminate_",
    ];
    let mut files = vec![repo().join("src/cloud")];
    let mut calls = BTreeSet::new();
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let text: String = std::fs::read_to_string(&path).unwrap().split_whitespace().collect();
        for (at, _) in text.match_indices('.') {
            let before = &text[..at];
            let receiver = ["client", "c"].iter().find(|r| {
                before.ends_with(*r)
                    && !before[..before.len() - r.len()]
                        .chars()
                        .next_back()
                        .is_some_and(|ch| ch.is_ascii_alphanumeric() || ch == '_')
            });
            if receiver.is_none() {
                continue;
            }
            let rest = &text[at + 1..];
            let name: String = rest.chars().take_while(|ch| ch.is_ascii_lowercase() || *ch == '_').collect();
            if !rest[name.len()..].starts_with("()") || !VERBS.iter().any(|v| name.starts_with(v)) {
                continue;
            }
            let action: String = name
                .split('_')
                .map(|w| {
                    let mut c = w.chars();
                    c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
                })
                .collect();
            calls.insert(action);
        }
    }
    calls
}

/// The policy grants exactly the EC2 calls the code makes: a call the code
/// gains without a statement fails here, and so does a grant no code uses.
#[test]
fn deploy_iam_policy_grants_exactly_the_ec2_calls_the_code_makes() {
    let text = std::fs::read_to_string(repo().join("docs/iam-policy.json")).unwrap();
    let policy: serde_json::Value = serde_json::from_str(&text).expect("docs/iam-policy.json is JSON");
    let mut granted = BTreeSet::new();
    for st in policy["Statement"].as_array().expect("Statement list") {
        let actions: Vec<&str> = match &st["Action"] {
            serde_json::Value::String(s) => vec![s.as_str()],
            serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_str()).collect(),
            other => panic!("bad Action {other}"),
        };
        granted.extend(actions.iter().filter_map(|a| a.strip_prefix("ec2:")).map(str::to_string));
    }
    let calls = ec2_calls_in_src();
    assert!(calls.len() > 30 && calls.contains("RunInstances"), "the scan found too few calls: {calls:?}");
    let missing: Vec<&String> = calls.difference(&granted).collect();
    let unused: Vec<&String> = granted.difference(&calls).collect();
    assert!(missing.is_empty(), "docs/iam-policy.json lacks ec2:{missing:?}, which src/cloud/ calls");
    assert!(unused.is_empty(), "docs/iam-policy.json grants ec2:{unused:?}, which src/cloud/ never calls");
}
