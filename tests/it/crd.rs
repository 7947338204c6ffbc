//! The committed CRD is the generator's output, and structural.

use votingstack::api::crd_yaml;

#[test]
fn crd_file_matches_votingstack_crd() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/votingstack.yaml"))
        .expect("crds/votingstack.yaml exists");
    let generated = crd_yaml().expect("CRD renders");
    assert!(committed == generated, "crds/votingstack.yaml is stale: run `cargo run -- crd > crds/votingstack.yaml`");
}

/// Walks a schema node: every node has a type (or preserves unknown fields),
/// and there is no $ref.
fn check_structural(node: &serde_json::Value, path: &str, problems: &mut Vec<String>) {
    let Some(obj) = node.as_object() else { return };
    if obj.contains_key("$ref") {
        problems.push(format!("{path}: $ref"));
    }
    let typed = obj.contains_key("type") || obj.get("x-kubernetes-int-or-string").is_some();
    if !typed {
        problems.push(format!("{path}: no type"));
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if obj.contains_key(key) {
            problems.push(format!("{path}: {key}"));
        }
    }
    if let Some(props) = obj.get("properties").and_then(|p| p.as_object()) {
        for (name, child) in props {
            check_structural(child, &format!("{path}.{name}"), problems);
        }
    }
    if let Some(items) = obj.get("items") {
        check_structural(items, &format!("{path}[]"), problems);
    }
    if let Some(extra) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        check_structural(extra, &format!("{path}.*"), problems);
    }
}

#[test]
fn crd_schema_is_structural() {
    let crd: serde_json::Value = serde_yaml::from_str(&crd_yaml().unwrap()).unwrap();
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"]["status"], serde_json::json!({}));
    let schema = &version["schema"]["openAPIV3Schema"];
    let mut problems = Vec::new();
    for part in ["spec", "status"] {
        check_structural(&schema["properties"][part], part, &mut problems);
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn crd_has_the_printer_columns_and_short_name() {
    let crd: serde_json::Value = serde_yaml::from_str(&crd_yaml().unwrap()).unwrap();
    let cols: Vec<&str> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["Ready", "Phase", "Frontend", "Backend", "Database", "Vote URL", "Age"]);
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "vstack");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
}

#[test]
fn crd_carries_cel_rules_for_cross_field_checks() {
    let text = crd_yaml().unwrap();
    for rule in [
        "self.optionA != self.optionB",
        "self.vote != self.result",
        "cidr(self.vpcCidr).containsCIDR(self.subnetCidr)",
        "self.all(c, isCIDR(c))",
    ] {
        assert!(text.contains(rule), "missing CEL rule {rule}");
    }
}

/// The CRD's openAPIV3Schema as JSON.
fn schema() -> serde_json::Value {
    let crd: serde_json::Value = serde_yaml::from_str(&crd_yaml().unwrap()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn crd() -> serde_json::Value {
    serde_yaml::from_str(&crd_yaml().unwrap()).unwrap()
}

/// The fixture stack as the API server would see it.
fn object() -> serde_json::Value {
    serde_json::to_value(crate::fixtures::stack()).unwrap()
}

/// Runs the CRD's CEL rules the way the API server does on an update (or a
/// create when `old` is None), with a real CEL evaluator; returns the messages.
fn cel(new: &serde_json::Value, old: Option<&serde_json::Value>) -> Vec<String> {
    match kube_cel::Validator::new().validate(&schema(), new, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

fn changed(f: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
    let mut v = object();
    f(&mut v);
    v
}

#[test]
fn crd_cel_rules_pass_on_a_valid_stack_and_catch_cross_field_errors() {
    let old = object();
    assert_eq!(cel(&old, None), Vec::<String>::new());
    assert_eq!(cel(&old, Some(&old)), Vec::<String>::new(), "an unchanged update passes");
    let outside = changed(|v| v["spec"]["network"]["subnetCidr"] = "10.9.1.0/24".into());
    let errs = cel(&outside, None);
    assert!(errs.iter().any(|e| e.contains("subnetCidr must lie inside vpcCidr")), "{errs:?}");
}

#[test]
fn crd_region_is_immutable() {
    let old = object();
    let moved = changed(|v| v["spec"]["aws"]["region"] = "eu-west-1".into());
    assert_eq!(cel(&moved, None), Vec::<String>::new(), "any region on create");
    let errs = cel(&moved, Some(&old));
    assert!(errs.iter().any(|e| e.contains("region is immutable")), "{errs:?}");
    // Dropping spec.aws defaults the region back to us-east-1: still a change.
    let eu = changed(|v| v["spec"]["aws"]["region"] = "eu-west-1".into());
    let dropped = changed(|v| {
        v["spec"].as_object_mut().unwrap().remove("aws");
    });
    let errs = cel(&dropped, Some(&eu));
    assert!(errs.iter().any(|e| e.contains("region is immutable")), "{errs:?}");
}

#[test]
fn crd_endpoint_is_immutable_including_set_and_unset() {
    let none = object();
    let a = changed(|v| v["spec"]["aws"]["endpoint"] = "http://127.0.0.1:5055".into());
    let b = changed(|v| v["spec"]["aws"]["endpoint"] = "http://127.0.0.1:6066".into());
    assert_eq!(cel(&a, Some(&a)), Vec::<String>::new(), "unchanged endpoint");
    for (new, old, what) in [(&b, &a, "changed"), (&a, &none, "set later"), (&none, &a, "removed")] {
        let errs = cel(new, Some(old));
        assert!(errs.iter().any(|e| e.contains("endpoint is immutable")), "{what}: {errs:?}");
    }
}

#[test]
fn crd_vpc_and_subnet_cidrs_are_immutable() {
    let old = object();
    let vpc = changed(|v| {
        v["spec"]["network"]["vpcCidr"] = "10.43.0.0/16".into();
        v["spec"]["network"]["subnetCidr"] = "10.43.1.0/24".into();
    });
    let errs = cel(&vpc, Some(&old));
    assert!(errs.iter().any(|e| e.contains("vpcCidr is immutable")), "{errs:?}");
    assert!(errs.iter().any(|e| e.contains("subnetCidr is immutable")), "{errs:?}");
    let subnet = changed(|v| v["spec"]["network"]["subnetCidr"] = "10.42.2.0/24".into());
    let errs = cel(&subnet, Some(&old));
    assert!(errs.iter().any(|e| e.contains("subnetCidr is immutable")), "{errs:?}");
    assert_eq!(cel(&vpc, None), Vec::<String>::new(), "any CIDRs on create");
}

#[test]
fn crd_other_fields_stay_mutable() {
    let old = object();
    let new = changed(|v| {
        v["spec"]["instances"]["instanceType"] = "t3.medium".into();
        v["spec"]["network"]["sshIngressCidrs"] = serde_json::json!(["198.51.100.0/24"]);
        v["spec"]["paused"] = true.into();
        v["spec"]["app"] = serde_json::json!({ "optionA": "Tea", "optionB": "Coffee" });
    });
    assert_eq!(cel(&new, Some(&old)), Vec::<String>::new());
}

#[test]
fn crd_immutability_rules_sit_on_the_fields_they_guard() {
    let s = schema();
    let aws = &s["properties"]["spec"]["properties"]["aws"];
    let net = &s["properties"]["spec"]["properties"]["network"]["properties"];
    let rules = |node: &serde_json::Value| -> Vec<String> {
        node["x-kubernetes-validations"]
            .as_array()
            .map(|a| a.iter().map(|r| r["rule"].as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    assert_eq!(rules(&aws["properties"]["region"]), ["self == oldSelf"]);
    assert!(rules(aws).iter().any(|r| r.contains("has(self.endpoint) == has(oldSelf.endpoint)")));
    assert!(rules(&net["vpcCidr"]).contains(&"self == oldSelf".to_string()));
    assert!(rules(&net["subnetCidr"]).contains(&"self == oldSelf".to_string()));
    // The optional endpoint is guarded from its parent, which always exists
    // (spec.aws has a default), so the rule also sees it being set or removed.
    assert!(aws["default"].is_object(), "spec.aws is defaulted");
    assert!(rules(&aws["properties"]["endpoint"]).is_empty());
}

#[test]
fn crd_conditions_are_a_list_map_keyed_by_type() {
    let s = schema();
    let conditions = &s["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], serde_json::json!(["type"]));
    let required: Vec<&str> =
        conditions["items"]["required"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert!(required.contains(&"type"), "a list-map key must be required: {required:?}");
}

#[test]
fn crd_is_in_the_votingstack_category_only() {
    let crd = crd();
    assert_eq!(crd["spec"]["names"]["categories"], serde_json::json!(["votingstack"]));
}

#[test]
fn crd_states_the_minimum_kubernetes_version_its_cel_rules_need() {
    let crd = crd();
    let text = crd_yaml().unwrap();
    let uses_cidr_library = text.contains("cidr(") || text.contains("isCIDR(");
    assert!(uses_cidr_library, "the network rules use the CIDR library");
    // The CEL CIDR library (cidr(), isCIDR()) arrived in Kubernetes 1.31.
    assert_eq!(crd["metadata"]["annotations"]["votingstack.dev/minimum-kubernetes-version"], "1.31");
    let description = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"].as_str().unwrap();
    assert!(description.contains("Kubernetes 1.31 or later"), "{description}");
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md")).unwrap();
    assert!(docs.contains("Kubernetes 1.31"), "docs/operations.md states the minimum version");
}

#[test]
fn crd_is_never_pruned_or_deleted_by_argocd_and_syncs_first() {
    let crd = crd();
    let annotations = &crd["metadata"]["annotations"];
    let options: Vec<&str> =
        annotations["argocd.argoproj.io/sync-options"].as_str().expect("sync-options").split(',').collect();
    assert!(options.contains(&"Prune=false"), "{options:?}");
    assert!(options.contains(&"Delete=false"), "{options:?}");
    let wave: i64 = annotations["argocd.argoproj.io/sync-wave"].as_str().expect("sync-wave").parse().unwrap();
    assert!(wave < 0, "the CRD syncs before the operator's other resources (wave 0)");
}

#[test]
fn crd_private_subnet_lies_inside_the_vpc_apart_from_the_public_one_and_is_immutable() {
    let none = object();
    let set = |cidr: &str| {
        let cidr = cidr.to_string();
        changed(move |v| v["spec"]["network"]["privateSubnetCidr"] = cidr.into())
    };
    let ok = set("10.42.2.0/24");
    assert_eq!(cel(&ok, None), Vec::<String>::new());
    let errs = cel(&set("10.9.2.0/24"), None);
    assert!(errs.iter().any(|e| e.contains("privateSubnetCidr must lie inside vpcCidr")), "{errs:?}");
    let errs = cel(&set("10.42.1.128/25"), None);
    assert!(errs.iter().any(|e| e.contains("privateSubnetCidr must not overlap subnetCidr")), "{errs:?}");
    for (new, old, what) in [(&set("10.42.3.0/24"), &ok, "changed"), (&ok, &none, "set later"), (&none, &ok, "removed")]
    {
        let errs = cel(new, Some(old));
        assert!(errs.iter().any(|e| e.contains("privateSubnetCidr is immutable")), "{what}: {errs:?}");
    }
    let egress = changed(|v| v["spec"]["network"]["egress"] = "None".into());
    assert_eq!(cel(&egress, None), Vec::<String>::new());
    let errs = cel(&egress, Some(&none));
    assert!(errs.iter().any(|e| e.contains("egress is immutable")), "{errs:?}");
}
