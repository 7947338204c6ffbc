//! Every Kubernetes API call the operator makes, as (apiGroup, resource,
//! verbs), each with the file and the code that makes it. The RBAC under
//! deploy/ is tested against these tables, and the tables against the code
//! (tests/it/deploy.rs): a call that appears in src/ without an entry here,
//! or an entry whose code is gone, fails the test.

/// One kind of API call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiUse {
    /// API group ("" for the core group).
    pub group: &'static str,
    /// Resource, with a subresource after a slash.
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    /// The file making the call.
    pub file: &'static str,
    /// Code on the line that makes the call.
    pub call: &'static str,
}

/// What the controller (src/controller/) calls on VotingStacks, their
/// Secrets and Events. All of it happens in the namespaces whose stacks the
/// operator reconciles: a ClusterRole for a cluster-wide install, a Role per
/// namespace for a namespaced one.
pub const CONTROLLER_API_USES: &[ApiUse] = &[
    // The watch of VotingStacks behind the Controller's cache.
    ApiUse {
        group: "votingstack.dev",
        resource: "votingstacks",
        verbs: &["list", "watch"],
        file: "src/controller/mod.rs",
        call: "watcher(stacks",
    },
    // kube-runtime's finalizer helper adds and removes the finalizer by JSON patch.
    ApiUse {
        group: "votingstack.dev",
        resource: "votingstacks",
        verbs: &["patch"],
        file: "src/controller/mod.rs",
        call: "finalizer(&api, FINALIZER",
    },
    // Status by server-side apply.
    ApiUse {
        group: "votingstack.dev",
        resource: "votingstacks/status",
        verbs: &["patch"],
        file: "src/controller/status_write.rs",
        call: "api.patch_status(",
    },
    // The SSH key, read when a stack is reconciled.
    ApiUse { group: "", resource: "secrets", verbs: &["get"], file: "src/controller/mod.rs", call: "secrets.get_opt(" },
    // The watch of labelled SSH-key Secrets that wakes stacks when their Secret changes.
    ApiUse {
        group: "",
        resource: "secrets",
        verbs: &["list", "watch"],
        file: "src/controller/mod.rs",
        call: "watcher(secrets",
    },
    // kube-runtime's Recorder creates events.k8s.io/v1 Events and patches a series.
    ApiUse {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        file: "src/controller/context.rs",
        call: "Recorder::new(",
    },
];

/// Code patterns that make Kubernetes API calls. Every line of src/ (outside
/// test modules) holding one must be covered by an [`ApiUse`] of its file.
pub const CALL_PATTERNS: &[&str] = &[
    "Controller::new(",
    ".watches(",
    ".owns(",
    "watcher(",
    "finalizer(",
    "Recorder::new(",
    ".get_opt(",
    ".get_status(",
    ".patch_status(",
    ".replace_status(",
    ".patch(",
    ".create(",
    ".replace(",
    ".delete(",
    ".list(",
    "store.get(",
];
