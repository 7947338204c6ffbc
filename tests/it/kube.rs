//! The operator against a real Kubernetes API server: the world's
//! kube-apiserver and etcd, built from source by `scripts/world up`
//! (world/kube/), with RBAC on and an audit log of every write.
//!
//! What users meet is checked where they meet it: the shipped manifests under
//! strict server-side validation, the CRD's CEL rules, the ServiceAccount's
//! RBAC (`kubectl auth can-i --list` against `src/rbac.rs`), status by
//! server-side apply, printer columns and `kubectl wait`, and the operator
//! binary running with a token of the Deployment's own ServiceAccount from
//! `kubectl apply` to `kubectl delete`.
//!
//! Tests that create VotingStacks, or run an operator, hold [`OPERATOR`]: an
//! operator watching every namespace would otherwise take up another test's
//! stack. The CRD skew test swaps the CRD and so holds [`CRD`] for writing;
//! every other test holds it for reading.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::Filter;
use serde_json::{json, Value};
use tokio::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard};

use crate::e2e::{within, world_env, ChildGuard, LogOnPanic};
use crate::world::World;

const BIN: &str = env!("CARGO_BIN_EXE_votingstack");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The operator's ServiceAccount, as deploy/base names it.
const OPERATOR_SA: &str = "votingstack-operator";
const SYSTEM_NS: &str = "votingstack-system";
/// The Lease the operator leads with.
const LEASE: &str = "votingstack-operator";

/// Held for writing by the test that installs an older CRD.
static CRD: LazyLock<RwLock<()>> = LazyLock::new(|| RwLock::new(()));
/// One test at a time creates VotingStacks or runs an operator.
static OPERATOR: LazyLock<Mutex<()>> = LazyLock::new(|| Mutex::new(()));
/// deploy/ is applied once per test run.
static BASE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// The world's API server, driven with its kubectl and admin kubeconfig.
struct Cluster {
    kubectl: String,
    kubeconfig: String,
    audit: PathBuf,
    env: HashMap<String, String>,
}

/// What a kubectl run printed.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Cluster {
    fn load() -> Cluster {
        let env = world_env();
        let get = |k: &str| {
            env.get(k).cloned().unwrap_or_else(|| {
                panic!(".world/env lacks {k}: the world predates its API server; run scripts/world down, then up")
            })
        };
        Cluster {
            kubectl: get("VS_WORLD_KUBECTL"),
            kubeconfig: get("KUBECONFIG"),
            audit: PathBuf::from(get("VS_WORLD_KUBE_AUDIT")),
            env,
        }
    }

    /// Runs kubectl as the admin, feeding `stdin`; every request is bounded.
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut cmd = Command::new(&self.kubectl);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .arg("--request-timeout=60s")
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl starts");
        if let Some(text) = stdin {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("kubectl reads stdin");
        }
        let out = child.wait_with_output().expect("kubectl runs");
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs kubectl and returns its output; fails the test when it fails.
    fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args, None);
        assert!(r.ok, "kubectl {args:?} failed:\n{}{}", r.stdout, r.stderr);
        r.stdout
    }

    fn ok_stdin(&self, args: &[&str], stdin: &str) -> String {
        let r = self.run(args, Some(stdin));
        assert!(r.ok, "kubectl {args:?} failed:\n{}{}\n--- input:\n{stdin}", r.stdout, r.stderr);
        r.stdout
    }

    fn ensure_namespace(&self, ns: &str) {
        let yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n");
        self.ok_stdin(&["apply", "--server-side", "--field-manager=kube-tests", "-f", "-"], &yaml);
    }

    /// The admin's kube client.
    async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("admin kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("admin kubeconfig is usable");
        kube::Client::try_from(config).expect("client")
    }

    /// The API server and its CA file, from the admin kubeconfig.
    fn server_and_ca(&self) -> (String, String) {
        let server = self.ok(&["config", "view", "-o", "jsonpath={.clusters[0].cluster.server}"]);
        let ca = self.ok(&["config", "view", "--raw", "-o", "jsonpath={.clusters[0].cluster.certificate-authority}"]);
        (server, ca)
    }

    /// The audit log's current end: events after it are this test's.
    fn audit_mark(&self) -> u64 {
        std::fs::metadata(&self.audit).map(|m| m.len()).unwrap_or(0)
    }

    /// Audit events (one JSON object a line) written after `mark`.
    fn audit_since(&self, mark: u64) -> Vec<Value> {
        let text = std::fs::read(&self.audit).unwrap_or_default();
        let start = (mark as usize).min(text.len());
        String::from_utf8_lossy(&text[start..]).lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect()
    }
}

/// `kubectl apply --server-side -k deploy/` once per run: the CRD, the
/// operator's namespace, ServiceAccount, RBAC and Deployment (which never
/// runs here: the world has no nodes; the operator runs as a process with the
/// ServiceAccount's token instead).
async fn install_base(c: &Cluster) {
    BASE.get_or_init(|| async {
        let demo = PathBuf::from(c.env.get("VS_WORLD_DIR").cloned().unwrap_or_default()).join("demo-operator.pid");
        if let Some(pid) = std::fs::read_to_string(&demo).ok().and_then(|p| p.trim().parse::<u32>().ok()) {
            assert!(
                !PathBuf::from(format!("/proc/{pid}")).exists(),
                "scripts/demo's operator (pid {pid}) runs against the world's API server and would take up these tests' stacks: stop it with scripts/demo down"
            );
        }
        c.ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=kube-tests",
            "-k",
            &format!("{ROOT}/deploy"),
        ]);
        c.ok(&["wait", "--for=condition=Established", "--timeout=60s", "crd/votingstacks.votingstack.dev"]);
    })
    .await;
}

/// The cluster with deploy/ installed.
async fn cluster() -> Cluster {
    let c = Cluster::load();
    install_base(&c).await;
    c
}

/// The locks of a test that creates VotingStacks or runs an operator.
async fn alone() -> (RwLockReadGuard<'static, ()>, MutexGuard<'static, ()>) {
    (CRD.read().await, OPERATOR.lock().await)
}

/// A token of `namespace`'s operator ServiceAccount in a kubeconfig of its own.
fn operator_kubeconfig(c: &Cluster, namespace: &str, dir: &Path) -> PathBuf {
    let token = c.ok(&["-n", namespace, "create", "token", OPERATOR_SA, "--duration=2h"]);
    let (server, ca) = c.server_and_ca();
    let path = dir.join(format!("operator-{namespace}.kubeconfig"));
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: world\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: operator\n  user:\n    token: {}\ncontexts:\n- name: operator\n  context:\n    cluster: world\n    user: operator\ncurrent-context: operator\n",
        token.trim()
    );
    std::fs::write(&path, text).expect("kubeconfig written");
    path
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("its address")
}

/// The operator binary running as the Deployment's ServiceAccount of
/// `namespace`; killed when dropped.
struct Operator {
    child: ChildGuard,
    identity: String,
    _log: LogOnPanic,
}

impl Operator {
    fn start(c: &Cluster, namespace: &str, identity: &str, dir: &Path, extra: &[&str]) -> Operator {
        let kubeconfig = operator_kubeconfig(c, namespace, dir);
        let log_path = dir.join(format!("operator-{identity}.log"));
        let log = std::fs::File::create(&log_path).expect("log file");
        let ec2 = c.env.get("AWS_ENDPOINT_URL_EC2").cloned().expect("the world's EC2 endpoint");
        let metrics = free_port().to_string();
        let child = Command::new(BIN)
            .args(["controller", "--metrics-addr", &metrics, "--allow-endpoint", &ec2])
            .args(extra)
            .envs(&c.env)
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAMESPACE", namespace)
            .env("POD_NAME", identity)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("the operator starts");
        Operator { child: ChildGuard(child), identity: identity.to_string(), _log: LogOnPanic(log_path) }
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }
}

/// The example stack, named `name` in namespace `ns`, in 10.`octet`.0.0/16.
fn stack_manifest(name: &str, ns: &str, octet: u8) -> String {
    let example = std::fs::read_to_string(format!("{ROOT}/examples/local.yaml")).expect("examples/local.yaml");
    example
        .replace("name: local\n  namespace: default\n", &format!("name: {name}\n  namespace: {ns}\n"))
        .replace("name: local-ssh\n  namespace: default\n", &format!("name: {name}-ssh\n  namespace: {ns}\n"))
        .replace("name: local-ssh", &format!("name: {name}-ssh"))
        .replace("10.42.", &format!("10.{octet}."))
}

/// What EC2 still holds of a stack: VPCs and instances not yet terminated.
async fn ec2_leftovers(tag: &str) -> Vec<String> {
    let world = World::load();
    let filter = Filter::builder().name("tag:votingstack.dev/stack").values(tag).build();
    let vpcs = world.ec2.describe_vpcs().filters(filter.clone()).send().await.expect("DescribeVpcs");
    let mut left: Vec<String> = vpcs.vpcs().iter().filter_map(|v| v.vpc_id().map(String::from)).collect();
    let instances = world.ec2.describe_instances().filters(filter).send().await.expect("DescribeInstances");
    for i in instances.reservations().iter().flat_map(|r| r.instances()) {
        let state = i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default();
        if state != "terminated" {
            left.push(format!("{} ({state})", i.instance_id().unwrap_or_default()));
        }
    }
    left
}

/// Who wrote: the username and the credential (each token has its own id).
fn writer(event: &Value) -> (String, String) {
    let user = &event["user"];
    let credential = user["extra"]["authentication.kubernetes.io/credential-id"][0].as_str().unwrap_or_default();
    (user["username"].as_str().unwrap_or_default().to_string(), credential.to_string())
}

fn is_resource(event: &Value, resource: &str) -> bool {
    event["objectRef"]["resource"] == resource
}

fn operator_user(namespace: &str) -> String {
    format!("system:serviceaccount:{namespace}:{OPERATOR_SA}")
}

fn lease_holder(c: &Cluster, namespace: &str) -> String {
    c.run(&["-n", namespace, "get", "lease", LEASE, "-o", "jsonpath={.spec.holderIdentity}"], None).stdout
}

// ------------------------------------------------------------ manifests ---

/// Every manifest the project ships passes strict server-side validation.
#[tokio::test]
async fn kube_every_shipped_manifest_passes_strict_server_validation() {
    let _crd = CRD.read().await;
    let c = cluster().await;
    // Dry runs do not create namespaces: the ones the manifests use must exist.
    for ns in [SYSTEM_NS, "voting", "argocd"] {
        c.ensure_namespace(ns);
    }
    let dry = [
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "--server-side",
        "--force-conflicts",
        "--field-manager=kube-tests",
        "-f",
        "-",
    ];
    let mut checked = Vec::new();
    let crd = std::fs::read_to_string(format!("{ROOT}/crds/votingstack.yaml")).expect("crds/votingstack.yaml");
    c.ok_stdin(&dry, &crd);
    checked.push("crds/votingstack.yaml".to_string());
    for dir in ["deploy", "deploy/overlays/ha", "deploy/overlays/namespaced", "deploy/argocd", "examples/argocd"] {
        // Argo CD's kinds meet Argo CD's own CRDs (world/kube/crds/).
        let rendered = c.ok(&["kustomize", &format!("{ROOT}/{dir}")]);
        c.ok_stdin(&dry, &rendered);
        checked.push(format!("{dir} (kustomize)"));
    }
    for entry in std::fs::read_dir(format!("{ROOT}/examples")).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("example");
            c.ok_stdin(&dry, &text);
            checked.push(path.display().to_string());
        }
    }
    assert!(checked.len() >= 8, "{checked:?}");
}

/// Every fenced YAML block in README.md and docs/*.md is a whole Kubernetes
/// object that passes strict server-side validation (or a kustomization).
#[tokio::test]
async fn kube_every_yaml_block_in_the_docs_passes_strict_server_validation() {
    let _crd = CRD.read().await;
    let c = cluster().await;
    for ns in [SYSTEM_NS, "voting", "default"] {
        c.ensure_namespace(ns);
    }
    let mut files = vec![PathBuf::from(format!("{ROOT}/README.md"))];
    for entry in std::fs::read_dir(format!("{ROOT}/docs")).expect("docs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    let mut objects = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("doc");
        for (line, block) in yaml_blocks(&text) {
            let where_ = format!("{}:{line}", file.display());
            if block.contains("kind: Kustomization") {
                // kustomize's input, not an object for the server: it must at least be one.
                let k: serde_yaml::Value = serde_yaml::from_str(&block).unwrap_or_else(|e| panic!("{where_}: {e}"));
                assert_eq!(k["apiVersion"].as_str(), Some("kustomize.config.k8s.io/v1beta1"), "{where_}");
                continue;
            }
            assert!(
                block.contains("apiVersion:") && block.contains("kind:"),
                "{where_}: a YAML block that is not a whole Kubernetes object cannot be checked; make it one"
            );
            let r = c.run(
                &[
                    "apply",
                    "--dry-run=server",
                    "--validate=strict",
                    "--server-side",
                    "--field-manager=kube-tests",
                    "-f",
                    "-",
                ],
                Some(&block),
            );
            assert!(r.ok, "{where_}: the server refuses this block:\n{}\n{block}", r.stderr);
            objects += 1;
        }
    }
    assert!(objects >= 2, "only {objects} YAML objects found in {files:?}");
}

/// The fenced ```yaml blocks of a Markdown text, with the line each starts on.
fn yaml_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut current {
            None if trimmed.starts_with("```yaml") => current = Some((i + 1, String::new())),
            Some(_) if trimmed.starts_with("```") => blocks.extend(current.take()),
            Some((_, block)) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

// ------------------------------------------------------------------ CEL ---

/// A VotingStack with the given spec fields under `spec`, as YAML.
fn stack_yaml(name: &str, ns: &str, aws: &str, network: &str, extra: &str) -> String {
    format!(
        "apiVersion: votingstack.dev/v1alpha1\nkind: VotingStack\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  aws:\n{aws}  network:\n{network}  ssh:\n    privateKeySecretRef:\n      name: {name}-ssh\n{extra}"
    )
}

const AWS_A: &str = "    region: us-east-1\n";
const NET_A: &str = "    vpcCidr: 10.80.0.0/16\n    subnetCidr: 10.80.1.0/24\n    sshIngressCidrs: [10.80.0.1/32]\n";

fn apply_as_admin(c: &Cluster, yaml: &str) -> Run {
    c.run(&["apply", "--server-side", "--field-manager=kube-tests", "-f", "-"], Some(yaml))
}

/// A bare VotingStack `name` in `ns` made by the admin (no operator runs: the
/// caller is [`alone`]), in place of one a failed run left behind.
fn fresh_stack(c: &Cluster, ns: &str, name: &str) {
    c.ensure_namespace(ns);
    let _ = c.run(&["-n", ns, "delete", "votingstack", name, "--ignore-not-found", "--timeout=30s"], None);
    let created = apply_as_admin(c, &stack_yaml(name, ns, AWS_A, NET_A, ""));
    assert!(created.ok, "{}", created.stderr);
}

#[tokio::test]
async fn kube_cel_refuses_changing_the_region_the_endpoint_or_a_cidr() {
    let _alone = alone().await;
    let c = cluster().await;
    let ns = "kube-cel";
    fresh_stack(&c, ns, "immutable");
    let changes = [
        ("region", stack_yaml("immutable", ns, "    region: us-west-2\n", NET_A, ""), "region"),
        (
            "endpoint",
            stack_yaml(
                "immutable",
                ns,
                "    region: us-east-1\n    endpoint: https://ec2.us-east-1.amazonaws.com\n",
                NET_A,
                "",
            ),
            "endpoint",
        ),
        (
            "vpcCidr",
            stack_yaml(
                "immutable",
                ns,
                AWS_A,
                "    vpcCidr: 10.81.0.0/16\n    subnetCidr: 10.81.1.0/24\n    sshIngressCidrs: [10.80.0.1/32]\n",
                "",
            ),
            "immutable",
        ),
        (
            "subnetCidr",
            stack_yaml(
                "immutable",
                ns,
                AWS_A,
                "    vpcCidr: 10.80.0.0/16\n    subnetCidr: 10.80.2.0/24\n    sshIngressCidrs: [10.80.0.1/32]\n",
                "",
            ),
            "immutable",
        ),
    ];
    for (what, yaml, word) in changes {
        let r = apply_as_admin(&c, &yaml);
        assert!(!r.ok, "changing {what} was accepted");
        assert!(r.stderr.contains("Invalid value") && r.stderr.contains(word), "changing {what}: {}", r.stderr);
    }
    c.ok(&["-n", ns, "delete", "votingstack", "immutable", "--timeout=30s"]);
}

#[tokio::test]
async fn kube_cel_refuses_an_invalid_cidr_and_pinned_host_keys_without_keys() {
    let _alone = alone().await;
    let c = cluster().await;
    let ns = "kube-cel";
    c.ensure_namespace(ns);
    let bad_cidr = stack_yaml(
        "bad-cidr",
        ns,
        AWS_A,
        "    vpcCidr: 10.80.0.0/33\n    subnetCidr: 10.80.1.0/24\n    sshIngressCidrs: [10.80.0.1/32]\n",
        "",
    );
    let r = apply_as_admin(&c, &bad_cidr);
    assert!(!r.ok, "an invalid CIDR was accepted");
    assert!(r.stderr.contains("vpcCidr"), "{}", r.stderr);
    let pinned = stack_yaml("pinned", ns, AWS_A, NET_A, "")
        .replace("      name: pinned-ssh\n", "      name: pinned-ssh\n    hostKeyPolicy: Pinned\n");
    let r = apply_as_admin(&c, &pinned);
    assert!(!r.ok, "Pinned without pinnedHostKeys was accepted");
    assert!(r.stderr.contains("pinnedHostKeys") || r.stderr.contains("Pinned"), "{}", r.stderr);
    let partial = stack_yaml("partial", ns, AWS_A, NET_A, "").replace(
        "      name: partial-ssh\n",
        "      name: partial-ssh\n    hostKeyPolicy: Pinned\n    pinnedHostKeys:\n      frontend: SHA256:AAAA\n",
    );
    let r = apply_as_admin(&c, &partial);
    assert!(!r.ok, "Pinned with only the frontend pinned was accepted");
    assert!(r.stderr.contains("every tier"), "{}", r.stderr);
    // Both are whole objects otherwise: the same stack with the fields fixed is accepted.
    let fixed = stack_yaml("fixed", ns, AWS_A, NET_A, "");
    let r = apply_as_admin(&c, &fixed);
    assert!(r.ok, "{}", r.stderr);
    c.ok(&["-n", ns, "delete", "votingstack", "fixed", "--timeout=30s"]);
}

// ----------------------------------------------------------------- RBAC ---

/// (resource as kubectl prints it, resource names, verb) that `user` may use in `ns`.
fn can_i_list(c: &Cluster, user: &str, ns: &str) -> BTreeSet<(String, String, String)> {
    let out = c.ok(&["auth", "can-i", "--list", "--as", user, "-n", ns, "--no-headers"]);
    let mut grants = BTreeSet::new();
    for line in out.lines() {
        // Resources   [Non-Resource URLs]   [Resource Names]   [Verbs]
        let Some(first) = line.find('[') else { continue };
        let resource = line[..first].trim().to_string();
        let groups: Vec<&str> =
            line[first..].split('[').filter_map(|g| g.split_once(']').map(|(inside, _)| inside.trim())).collect();
        let [_urls, names, verbs] = groups[..] else { panic!("unexpected can-i line: {line}") };
        if resource.is_empty() {
            continue;
        }
        for verb in verbs.split_whitespace() {
            grants.insert((resource.clone(), format!("[{names}]"), verb.to_string()));
        }
    }
    grants
}

/// What `src/rbac.rs` says the operator calls in a namespace of stacks, as
/// `kubectl auth can-i --list` names it.
fn expected_stack_grants() -> BTreeSet<(String, String, String)> {
    let mut want = BTreeSet::new();
    for u in votingstack::rbac::CONTROLLER_API_USES {
        let (plural, sub) = match u.resource.split_once('/') {
            Some((plural, sub)) => (plural, Some(sub)),
            None => (u.resource, None),
        };
        let qualified = if u.group.is_empty() { plural.to_string() } else { format!("{plural}.{}", u.group) };
        let resource = match sub {
            Some(sub) => format!("{qualified}/{sub}"),
            None => qualified,
        };
        for verb in u.verbs {
            want.insert((resource.clone(), "[]".to_string(), verb.to_string()));
        }
    }
    want
}

/// The Lease grants deploy/base gives in the operator's own namespace.
fn expected_lease_grants() -> BTreeSet<(String, String, String)> {
    let lease = "leases.coordination.k8s.io".to_string();
    [
        (lease.clone(), "[]".to_string(), "create".to_string()),
        (lease.clone(), format!("[{LEASE}]"), "get".to_string()),
        (lease, format!("[{LEASE}]"), "update".to_string()),
    ]
    .into_iter()
    .collect()
}

/// The ServiceAccount's grants beyond what every ServiceAccount has (an
/// unbound one in the same namespace is the baseline).
fn operator_grants(c: &Cluster, sa_ns: &str, ns: &str) -> BTreeSet<(String, String, String)> {
    let operator = can_i_list(c, &operator_user(sa_ns), ns);
    let baseline = can_i_list(c, &format!("system:serviceaccount:{sa_ns}:kube-tests-unbound"), ns);
    operator.difference(&baseline).cloned().collect()
}

#[tokio::test]
async fn kube_base_rbac_grants_exactly_the_calls_in_src_rbac() {
    let _crd = CRD.read().await;
    let c = cluster().await;
    c.ensure_namespace("kube-rbac");
    assert_eq!(operator_grants(&c, SYSTEM_NS, "kube-rbac"), expected_stack_grants(), "in a namespace of stacks");
    let mut own = expected_stack_grants();
    own.extend(expected_lease_grants());
    assert_eq!(operator_grants(&c, SYSTEM_NS, SYSTEM_NS), own, "in the operator's namespace");
}

/// deploy/overlays/namespaced, with the operator in `votingstack-nsd`
/// instead of `votingstack-system` so that it sits beside the base install.
fn install_namespaced_overlay(c: &Cluster) {
    let rendered = c.ok(&["kustomize", &format!("{ROOT}/deploy/overlays/namespaced")]);
    assert!(
        rendered.contains("kind: Namespace\nmetadata:\n") && rendered.contains("name: voting\n"),
        "the overlay creates its namespace:\n{rendered}"
    );
    let moved = rendered
        .replace(&format!("namespace: {SYSTEM_NS}\n"), "namespace: votingstack-nsd\n")
        .replace(&format!("name: {SYSTEM_NS}\n"), "name: votingstack-nsd\n");
    c.ok_stdin(&["apply", "--server-side", "--force-conflicts", "--field-manager=kube-tests", "-f", "-"], &moved);
}

#[tokio::test]
async fn kube_namespaced_overlay_applies_and_grants_exactly_the_calls_in_src_rbac() {
    let _crd = CRD.read().await;
    let c = cluster().await;
    install_namespaced_overlay(&c);
    assert_eq!(operator_grants(&c, "votingstack-nsd", "voting"), expected_stack_grants(), "in namespace voting");
    assert_eq!(operator_grants(&c, "votingstack-nsd", "kube-rbac-elsewhere"), BTreeSet::new(), "anywhere else");
    assert_eq!(operator_grants(&c, "votingstack-nsd", "votingstack-nsd"), expected_lease_grants(), "its own namespace");
}

// --------------------------------------------------------------- status ---

fn condition(type_: &str, status: &str) -> Value {
    json!({"type": type_, "status": status, "reason": "Test", "message": "set by the test", "lastTransitionTime": "2026-01-01T00:00:00Z"})
}

#[tokio::test]
async fn kube_status_conditions_merge_as_a_list_map_keyed_by_type() {
    use kube::api::{Patch, PatchParams};
    use votingstack::api::VotingStack;
    let _alone = alone().await;
    let c = cluster().await;
    let ns = "kube-status";
    fresh_stack(&c, ns, "merge");
    let api: kube::Api<VotingStack> = kube::Api::namespaced(c.client().await, ns);
    let apply = |conds: Vec<Value>| json!({"apiVersion": "votingstack.dev/v1alpha1", "kind": "VotingStack", "status": {"conditions": conds}});
    api.patch_status(
        "merge",
        &PatchParams::apply("manager-a"),
        &Patch::Apply(&apply(vec![condition("Ready", "False"), condition("DatabaseReady", "True")])),
    )
    .await
    .expect("manager-a applies");
    api.patch_status(
        "merge",
        &PatchParams::apply("manager-b"),
        &Patch::Apply(&apply(vec![condition("BackupReady", "True")])),
    )
    .await
    .expect("manager-b applies");
    // manager-a applies again with Ready changed and DatabaseReady dropped:
    // its own entry goes, manager-b's stays, Ready changes in place.
    let stored = api
        .patch_status(
            "merge",
            &PatchParams::apply("manager-a"),
            &Patch::Apply(&apply(vec![condition("Ready", "True")])),
        )
        .await
        .expect("manager-a applies again");
    let status = serde_json::to_value(stored.status.expect("status")).expect("json");
    let types: BTreeMap<String, String> = status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .map(|c| {
            (c["type"].as_str().unwrap_or_default().to_string(), c["status"].as_str().unwrap_or_default().to_string())
        })
        .collect();
    let want: BTreeMap<String, String> =
        [("BackupReady".to_string(), "True".to_string()), ("Ready".to_string(), "True".to_string())]
            .into_iter()
            .collect();
    assert_eq!(types, want);
    c.ok(&["-n", ns, "delete", "votingstack", "merge", "--timeout=30s"]);
}

#[tokio::test]
async fn kube_a_status_computed_from_a_stale_object_never_overwrites_a_newer_one() {
    use votingstack::api::{VotingStack, VotingStackStatus};
    let _alone = alone().await;
    let c = cluster().await;
    let ns = "kube-status";
    fresh_stack(&c, ns, "stale");
    let client = c.client().await;
    let api: kube::Api<VotingStack> = kube::Api::namespaced(client.clone(), ns);
    let cached = api.get("stale").await.expect("the stack");
    let status = |url: &str| VotingStackStatus { vote_url: Some(url.to_string()), ..Default::default() };

    // The first write, from the object as read.
    votingstack::controller::write_status(&client, &cached, &status("http://10.80.1.10/")).await.expect("first write");
    // A second reconcile read the newer object and wrote newer status.
    let fresh = api.get("stale").await.expect("the stack");
    votingstack::controller::write_status(&client, &fresh, &status("http://10.80.1.20/")).await.expect("newer write");
    // A reconcile still holding the first object (a lagging cache) must not
    // put its older status back.
    let refused = votingstack::controller::write_status(&client, &cached, &status("http://10.80.1.10/")).await;
    match refused {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 409, "{s:?}"),
        other => panic!("a write from a stale object was not refused: {other:?}"),
    }
    let stored = api.get("stale").await.expect("the stack");
    assert_eq!(stored.status.and_then(|s| s.vote_url).as_deref(), Some("http://10.80.1.20/"));
    c.ok(&["-n", ns, "delete", "votingstack", "stale", "--timeout=30s"]);
}

// ------------------------------------------------------ printer columns ---

#[tokio::test]
async fn kube_get_votingstacks_shows_ready_phase_and_vote_url_and_kubectl_wait_works() {
    let _alone = alone().await;
    let c = cluster().await;
    let ns = "kube-print";
    fresh_stack(&c, ns, "shown");
    let wait = |secs: u32| {
        c.run(&["-n", ns, "wait", "--for=condition=Ready", &format!("--timeout={secs}s"), "votingstack/shown"], None)
    };
    assert!(!wait(2).ok, "kubectl wait returned before the stack was Ready");
    let status = json!({"status": {
        "phase": "Ready",
        "voteUrl": "http://10.80.1.10/",
        "conditions": [condition("Ready", "True"), condition("FrontendReady", "True")],
    }});
    c.ok(&[
        "-n",
        ns,
        "patch",
        "votingstack",
        "shown",
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
    let table = c.ok(&["-n", ns, "get", "votingstacks"]);
    let mut lines = table.lines();
    let header: Vec<&str> =
        lines.next().expect("a header").split("  ").map(str::trim).filter(|s| !s.is_empty()).collect();
    for column in ["NAME", "READY", "PHASE", "VOTE URL"] {
        assert!(header.contains(&column), "no {column} column in {header:?}");
    }
    let row = lines.next().expect("a row");
    for value in ["shown", "True", "Ready", "http://10.80.1.10/"] {
        assert!(row.contains(value), "{value} missing from the row: {table}");
    }
    assert!(wait(30).ok, "kubectl wait --for=condition=Ready did not see Ready");
    c.ok(&["-n", ns, "delete", "votingstack", "shown", "--timeout=30s"]);
}

// ------------------------------------------------- the operator, for real ---

/// Applies the stack and its Secret with kubectl, as a user does.
fn kubectl_apply_stack(c: &Cluster, manifest: &str) {
    c.ok_stdin(&["apply", "-f", "-"], manifest);
}

fn wait_ready(c: &Cluster, ns: &str, name: &str, secs: u32) {
    c.ok(&["-n", ns, "wait", "--for=condition=Ready", &format!("--timeout={secs}s"), &format!("votingstack/{name}")]);
}

/// How many `AllTiersReady` Events name stack `name`.
fn ready_events(c: &Cluster, ns: &str, name: &str) -> usize {
    let path = r#"jsonpath={range .items[?(@.reason=="AllTiersReady")]}{.regarding.name}{"\n"}{end}"#;
    c.ok(&["-n", ns, "get", "events.events.k8s.io", "-o", path]).lines().filter(|l| *l == name).count()
}

/// Waits (60 s at most) until the pass that made the stack Ready has
/// published its Events: they follow its status write, the last being
/// `AllTiersReady`, more of them than `before`.
async fn wait_ready_events(c: &Cluster, ns: &str, name: &str, before: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready_events(c, ns, name) <= before {
        assert!(Instant::now() < deadline, "no AllTiersReady Event for {ns}/{name} within 60 s of Ready");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `kubectl delete` returns only once the finalizer ran; EC2 then holds nothing of the stack.
async fn delete_and_check_teardown(c: &Cluster, ns: &str, name: &str) {
    c.ok(&["-n", ns, "delete", "votingstack", name, "--timeout=600s"]);
    let gone = c.run(&["-n", ns, "get", "votingstack", name], None);
    assert!(!gone.ok && gone.stderr.contains("NotFound"), "{}", gone.stderr);
    let left = ec2_leftovers(&format!("{ns}/{name}")).await;
    assert!(left.is_empty(), "kubectl delete returned while EC2 still held {left:?}");
}

fn forget_lease(c: &Cluster, ns: &str) {
    c.ok(&["-n", ns, "delete", "lease", LEASE, "--ignore-not-found"]);
}

#[tokio::test]
async fn kube_operator_under_the_deployment_rbac_converges_stays_quiet_and_deletes() {
    let _alone = alone().await;
    let c = cluster().await;
    let (ns, name) = ("kube-base", "base");
    c.ensure_namespace(ns);
    forget_lease(&c, SYSTEM_NS);
    let dir = tempfile::tempdir().expect("tempdir");
    let _operator = Operator::start(&c, SYSTEM_NS, "kube-base", dir.path(), &[]);
    let readied = ready_events(&c, ns, name);
    kubectl_apply_stack(&c, &stack_manifest(name, ns, 71));
    wait_ready(&c, ns, name, 600);
    wait_ready_events(&c, ns, name, readied).await;
    let table = c.ok(&["-n", ns, "get", "votingstacks"]);
    assert!(table.contains("True") && table.contains("Ready") && table.contains("http://10.71.1."), "{table}");

    // Three minutes of a Ready stack: at most one VotingStack write a minute,
    // no Secret writes; the Lease's renewals are the only periodic writes.
    let mark = c.audit_mark();
    let user = operator_user(SYSTEM_NS);
    let started = Instant::now();
    let window = Duration::from_secs(180);
    while started.elapsed() < window {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let writes: Vec<Value> = c.audit_since(mark).into_iter().filter(|e| writer(e).0 == user).collect();
        let stacks = writes.iter().filter(|e| is_resource(e, "votingstacks")).count();
        let others: Vec<String> = writes
            .iter()
            .filter(|e| !is_resource(e, "votingstacks") && !is_resource(e, "leases"))
            .map(|e| format!("{} {}", e["verb"], e["objectRef"]))
            .collect();
        assert!(stacks <= 3, "{stacks} VotingStack writes in {:?} of a Ready stack", started.elapsed());
        assert!(others.is_empty(), "writes other than the Lease's renewals while Ready: {others:?}");
    }
    let writes: Vec<Value> = c.audit_since(mark).into_iter().filter(|e| writer(e).0 == user).collect();
    assert!(writes.iter().any(|e| is_resource(e, "leases")), "the leader did not renew its Lease in 3 minutes");

    delete_and_check_teardown(&c, ns, name).await;
}

#[tokio::test]
async fn kube_namespaced_operator_converges_and_deletes_a_stack_in_its_namespace() {
    let _alone = alone().await;
    let c = cluster().await;
    install_namespaced_overlay(&c);
    let (ns, name) = ("voting", "nsd");
    forget_lease(&c, "votingstack-nsd");
    let dir = tempfile::tempdir().expect("tempdir");
    let _operator = Operator::start(&c, "votingstack-nsd", "kube-nsd", dir.path(), &["--watch-namespace", ns]);
    kubectl_apply_stack(&c, &stack_manifest(name, ns, 73));
    wait_ready(&c, ns, name, 600);
    delete_and_check_teardown(&c, ns, name).await;
}

#[tokio::test]
async fn kube_leader_killed_hands_over_within_the_lease_and_one_identity_writes_at_a_time() {
    let _alone = alone().await;
    let c = cluster().await;
    let (ns, name) = ("kube-leader", "leader");
    c.ensure_namespace(ns);
    forget_lease(&c, SYSTEM_NS);
    let dir = tempfile::tempdir().expect("tempdir");
    let mark = c.audit_mark();
    let first = Operator::start(&c, SYSTEM_NS, "kube-first", dir.path(), &[]);
    within(Duration::from_secs(60), "the first operator to lead", || {
        lease_holder(&c, SYSTEM_NS).starts_with("kube-first_")
    })
    .await;
    let second = Operator::start(&c, SYSTEM_NS, "kube-second", dir.path(), &[]);
    kubectl_apply_stack(&c, &stack_manifest(name, ns, 72));
    // Let the leader write some status, then kill it without warning.
    within(Duration::from_secs(120), "the leader to write status", || {
        !c.run(&["-n", ns, "get", "votingstack", name, "-o", "jsonpath={.status.phase}"], None).stdout.is_empty()
    })
    .await;
    let status = Command::new("kill").args(["-9", &first.pid().to_string()]).status().expect("kill runs");
    assert!(status.success());
    let killed_at = Instant::now();
    drop(first);
    // Lease duration 15 s plus one renew period (2 s), and a poll's slack.
    let took = within(Duration::from_secs(20), "the second operator to lead", || {
        lease_holder(&c, SYSTEM_NS).starts_with("kube-second_")
    })
    .await;
    assert!(killed_at.elapsed() >= took);
    wait_ready(&c, ns, name, 600);
    assert!(second.identity.starts_with("kube-second"));

    // From the audit log: status writes by one token at a time, never
    // interleaved. The API server logs a request once it has answered it, so
    // the write kubectl wait saw may reach the log a moment later.
    let status_writes = || -> Vec<(String, String)> {
        c.audit_since(mark)
            .iter()
            .filter(|e| is_resource(e, "votingstacks") && e["objectRef"]["subresource"] == "status")
            .filter(|e| e["responseStatus"]["code"].as_u64().is_some_and(|code| code < 300))
            .map(|e| (e["stageTimestamp"].as_str().unwrap_or_default().to_string(), writer(e).1))
            .collect()
    };
    within(Duration::from_secs(30), "the audit log to record the second operator's status write", || {
        let writes = status_writes();
        writes.first().is_some_and(|(_, first)| writes.iter().any(|(_, w)| w != first))
    })
    .await;
    let writes = status_writes();
    let mut writers: Vec<String> = Vec::new();
    for (_, credential) in &writes {
        if writers.last() != Some(credential) {
            assert!(!writers.contains(credential), "two operators took turns writing status: {writes:?}");
            writers.push(credential.clone());
        }
    }
    assert_eq!(writers.len(), 2, "expected the first, then the second operator to write status: {writes:?}");
    assert!(writers.iter().all(|w| !w.is_empty()), "the audit log names no credential: {writes:?}");

    delete_and_check_teardown(&c, ns, name).await;
}

/// crds/votingstack.yaml without `status.observedGeneration`: the CRD of a
/// release older than the binary.
fn older_crd() -> String {
    let text = std::fs::read_to_string(format!("{ROOT}/crds/votingstack.yaml")).expect("the CRD");
    let mut crd: serde_yaml::Value = serde_yaml::from_str(&text).expect("the CRD parses");
    let status = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
    let removed = status.as_mapping_mut().and_then(|m| m.remove("observedGeneration"));
    assert!(removed.is_some(), "the CRD's status has no observedGeneration");
    serde_yaml::to_string(&crd).expect("yaml")
}

/// Puts the current CRD back when dropped, also after a failed assertion.
struct RestoreCrd<'a>(&'a Cluster);

impl Drop for RestoreCrd<'_> {
    fn drop(&mut self) {
        let crd = std::fs::read_to_string(format!("{ROOT}/crds/votingstack.yaml")).unwrap_or_default();
        let _ = self
            .0
            .run(&["apply", "--server-side", "--force-conflicts", "--field-manager=kube-tests", "-f", "-"], Some(&crd));
    }
}

#[tokio::test]
async fn kube_status_refused_by_an_older_crd_does_not_block_deletion() {
    let _crd = CRD.write().await;
    let _one = OPERATOR.lock().await;
    let c = cluster().await;
    let (ns, name) = ("kube-skew", "skew");
    c.ensure_namespace(ns);
    c.ok_stdin(&["apply", "--server-side", "--force-conflicts", "--field-manager=kube-tests", "-f", "-"], &older_crd());
    let _restore = RestoreCrd(&c);
    forget_lease(&c, SYSTEM_NS);
    let dir = tempfile::tempdir().expect("tempdir");
    let mark = c.audit_mark();
    let _operator = Operator::start(&c, SYSTEM_NS, "kube-skew", dir.path(), &[]);
    kubectl_apply_stack(&c, &stack_manifest(name, ns, 74));
    // The operator works (EC2 gets the stack's network) while every status
    // write is refused for the field the installed CRD lacks.
    let tag = format!("{ns}/{name}");
    let world = World::load();
    let filter = Filter::builder().name("tag:votingstack.dev/stack").values(&tag).build();
    let started = Instant::now();
    loop {
        let vpcs = world.ec2.describe_vpcs().filters(filter.clone()).send().await.expect("DescribeVpcs");
        if !vpcs.vpcs().is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(180), "the operator created nothing in EC2 for {tag}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    within(Duration::from_secs(120), "a refused status write", || {
        c.audit_since(mark).iter().any(|e| {
            is_resource(e, "votingstacks")
                && e["objectRef"]["subresource"] == "status"
                && e["responseStatus"]["code"].as_u64().is_some_and(|code| code >= 400)
        })
    })
    .await;
    delete_and_check_teardown(&c, ns, name).await;
}
