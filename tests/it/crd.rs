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
