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
    // The CEL CIDR library (cidr(), isCIDR()) arrived in Kubernetes 1.31; the
    // declared minimum is the release the kube_ tests run against, which
    // world/kube/go.mod pins.
    let go_mod = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/world/kube/go.mod")).unwrap();
    let pinned = go_mod
        .lines()
        .find_map(|l| l.trim().strip_prefix("require k8s.io/kubernetes v"))
        .and_then(|v| v.split_whitespace().next())
        .expect("world/kube/go.mod requires k8s.io/kubernetes");
    let minor: u32 = pinned.split('.').nth(1).and_then(|m| m.parse().ok()).expect("a 1.x.y version");
    assert!(minor >= 31, "the CEL CIDR library needs 1.31");
    let minimum = format!("1.{minor}");
    assert_eq!(crd["metadata"]["annotations"]["votingstack.dev/minimum-kubernetes-version"], minimum.as_str());
    let description = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"].as_str().unwrap();
    assert!(description.contains(&format!("Kubernetes {minimum} or later")), "{description}");
    for doc in ["docs/operations.md", "README.md"] {
        let text = std::fs::read_to_string(format!("{}/{doc}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert!(text.contains(&format!("Kubernetes {minimum} or later")), "{doc} states the minimum version");
    }
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

/// A field path docs/reference.md names, relative to the schema's root
/// (`spec.database.volumeSizeGiB`), with the line it is on.
#[derive(Debug, PartialEq)]
struct DocPath {
    line: usize,
    path: String,
}

/// The inline code spans of a line of markdown (text between backticks).
fn code_spans(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

/// The leading field path of a code span that starts with `spec.` or
/// `status.`, without what follows it (`status.dataVolume.retained: true`
/// names `status.dataVolume.retained`).
fn absolute_path(span: &str) -> Option<&str> {
    if !(span.starts_with("spec.") || span.starts_with("status.")) {
        return None;
    }
    let mut in_braces = false;
    let end = span
        .char_indices()
        .find(|&(_, c)| match c {
            '{' => {
                in_braces = true;
                false
            }
            '}' => {
                in_braces = false;
                false
            }
            ',' => !in_braces,
            c => !(c.is_ascii_alphanumeric() || "._*<>[]".contains(c)),
        })
        .map_or(span.len(), |(i, _)| i);
    Some(span[..end].trim_end_matches('.'))
}

/// The first cell of a table row (`| a | b |` gives ` a `); `\|` does not end it.
fn first_cell(row: &str) -> &str {
    let rest = row.trim_start().trim_start_matches('|');
    let bytes = rest.as_bytes();
    let end = (0..bytes.len()).find(|&i| bytes[i] == b'|' && (i == 0 || bytes[i - 1] != b'\\')).unwrap_or(rest.len());
    &rest[..end]
}

/// Every field path a reference page names:
/// - the first column of each table headed `field`, relative to the `## spec`
///   or `## status` section it is in; further names in the same cell
///   (`` `network.vpcId`, `subnetId` ``) are siblings of the first;
/// - every code span (in prose, tables and headings) and every heading word
///   that starts with `spec.` or `status.`.
///
/// Paths may use `*` or `<name>` for any key, `{a,b}` for several keys and
/// `[]` for a list's items. Fenced code blocks are skipped.
fn documented_paths(markdown: &str) -> Vec<DocPath> {
    let mut out = Vec::new();
    let mut section: Option<&str> = None;
    let mut in_fence = false;
    let mut field_table = false;
    let mut previous_was_row = false;
    for (index, line) in markdown.lines().enumerate() {
        let line_no = index + 1;
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let mut push = |path: String| out.push(DocPath { line: line_no, path });
        if let Some(title) = line.strip_prefix("## ") {
            section = match title.trim() {
                "spec" => Some("spec"),
                "status" => Some("status"),
                _ => None,
            };
        }
        if line.starts_with('#') {
            for word in line.split_whitespace() {
                if let Some(path) = absolute_path(word.trim_matches('`')) {
                    push(path.to_string());
                }
            }
        }
        let is_row = line.trim_start().starts_with('|');
        if is_row && !previous_was_row {
            field_table = first_cell(line).trim() == "field";
        } else if is_row && field_table && !first_cell(line).trim().chars().all(|c| c == '-' || c == ':') {
            if let Some(base) = section {
                let names = code_spans(first_cell(line));
                if let Some(first) = names.first() {
                    let parent = first.rsplit_once('.').map(|(p, _)| p);
                    for (i, name) in names.iter().enumerate() {
                        let relative = match parent {
                            Some(parent) if i > 0 => format!("{parent}.{name}"),
                            _ => name.to_string(),
                        };
                        push(format!("{base}.{relative}"));
                    }
                }
            }
        }
        previous_was_row = is_row;
        if !line.starts_with('#') {
            for span in code_spans(line) {
                if let Some(path) = absolute_path(span) {
                    push(path.to_string());
                }
            }
        }
    }
    out
}

/// Splits a path into its segments; dots inside `{...}` do not split.
fn segments(path: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut depth) = (0, 0);
    for (i, c) in path.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            '.' if depth == 0 => {
                out.push(&path[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&path[start..]);
    out
}

/// Follows `rest` from `node`; returns what is missing, named by the path
/// walked so far.
fn walk(node: &serde_json::Value, walked: &str, rest: &[&str], missing: &mut Vec<String>) {
    let Some((segment, rest)) = rest.split_first() else { return };
    let (name, items) = match segment.strip_suffix("[]") {
        Some(name) => (name, true),
        None => (*segment, false),
    };
    let properties = node["properties"].as_object();
    let any_key = node.get("additionalProperties").filter(|v| v.is_object());
    let mut children: Vec<(String, &serde_json::Value)> = Vec::new();
    if name == "*" || (name.starts_with('<') && name.ends_with('>')) {
        match (properties, any_key) {
            (Some(props), _) if !props.is_empty() => {
                children.extend(props.iter().map(|(k, v)| (format!("{walked}.{k}"), v)));
            }
            (_, Some(value)) => children.push((format!("{walked}.{name}"), value)),
            _ => missing.push(format!("{walked}.{name} (not an object or map)")),
        }
    } else {
        let keys: Vec<&str> = match name.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
            Some(list) => list.split(',').map(str::trim).collect(),
            None => vec![name],
        };
        for key in keys {
            match properties.and_then(|p| p.get(key)).or(any_key) {
                Some(child) => children.push((format!("{walked}.{key}"), child)),
                None => missing.push(format!("{walked}.{key}")),
            }
        }
    }
    for (walked, child) in children {
        if items {
            match child.get("items") {
                Some(item) => walk(item, &format!("{walked}[]"), rest, missing),
                None => missing.push(format!("{walked}[] (not a list)")),
            }
        } else {
            walk(child, &walked, rest, missing);
        }
    }
}

/// The paths of `markdown` that the CRD's schema lacks, one line each.
fn paths_missing_from_crd(markdown: &str, file: &str) -> Vec<String> {
    let schema = schema();
    let mut problems = Vec::new();
    for DocPath { line, path } in documented_paths(markdown) {
        let mut missing = Vec::new();
        walk(&schema, "", &segments(&path), &mut missing);
        for m in missing {
            problems.push(format!("{file}:{line}: {path}: the CRD has no {}", m.trim_start_matches('.')));
        }
    }
    problems
}

#[test]
fn crd_has_every_field_path_docs_reference_names() {
    let file = "docs/reference.md";
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/reference.md")).unwrap();
    let paths: Vec<String> = documented_paths(&text).into_iter().map(|p| p.path).collect();
    // The page is read as it is written: these forms are all found.
    for expected in [
        "spec.aws.endpoint",
        "spec.database.volumeSizeGiB",
        "spec.deletionPolicy",
        "status.dataVolume.sizeGiB",
        "status.network.subnetId",
        "status.tiers.*.containers[].imageDigest",
        "status.tiers.<tier>.hostKeyFingerprint",
        "status.network.securityGroups.{frontend,backend,database}",
    ] {
        assert!(paths.iter().any(|p| p == expected), "{expected} not read from {file}: {paths:#?}");
    }
    let problems = paths_missing_from_crd(&text, file);
    assert!(problems.is_empty(), "{file} names fields the CRD does not have:\n{}", problems.join("\n"));
}

#[test]
fn crd_field_path_check_reads_every_form_and_names_what_is_missing() {
    let page = "\
## spec

### spec.aws and spec.nowhere

| field | type |
|---|---|
| `aws.region` | string |
| `aws.regoin` | string |

| reason | meaning |
|---|---|
| `notAField` | skipped: not a field table |

```yaml
spec:
  ignored: true
```

Set `spec.database.volumeSizeGib: 20` or `status.dataVolume.retained: true`.

## status

| field | type |
|---|---|
| `network.vpcId`, `subnetId`, `subnetIdd` | string |
| `tiers.*.containers[].imageDigest`, `configHash` | |
| `tiers.{frontend,backend,datbase}.instanceId` | |
| `voteUrl`, `resultUrl` | |
";
    let problems = paths_missing_from_crd(page, "page.md");
    assert_eq!(
        problems,
        [
            "page.md:3: spec.nowhere: the CRD has no spec.nowhere",
            "page.md:8: spec.aws.regoin: the CRD has no spec.aws.regoin",
            "page.md:19: spec.database.volumeSizeGib: the CRD has no spec.database.volumeSizeGib",
            "page.md:25: status.network.subnetIdd: the CRD has no status.network.subnetIdd",
            "page.md:27: status.tiers.{frontend,backend,datbase}.instanceId: the CRD has no status.tiers.datbase",
        ]
    );
    let paths: Vec<String> = documented_paths(page).into_iter().map(|p| p.path).collect();
    for read in ["spec.aws.region", "status.tiers.*.containers[].configHash", "status.voteUrl", "status.resultUrl"] {
        assert!(paths.iter().any(|p| p == read), "{read} not read: {paths:?}");
    }
    assert!(!paths.iter().any(|p| p.contains("notAField") || p.contains("ignored")), "{paths:?}");
}

#[test]
fn crd_restore_from_snapshot_is_immutable_including_set_and_unset() {
    let none = object();
    let a = changed(|v| v["spec"]["database"]["restoreFromSnapshot"] = "snap-0123456789abcdef0".into());
    let b = changed(|v| v["spec"]["database"]["restoreFromSnapshot"] = "snap-0fedcba9876543210".into());
    assert_eq!(cel(&a, None), Vec::<String>::new(), "any snapshot on create");
    assert_eq!(cel(&a, Some(&a)), Vec::<String>::new(), "unchanged");
    for (new, old, what) in [(&b, &a, "changed"), (&a, &none, "set later"), (&none, &a, "removed")] {
        let errs = cel(new, Some(old));
        assert!(errs.iter().any(|e| e.contains("restoreFromSnapshot is immutable")), "{what}: {errs:?}");
    }
    let schedule = changed(|v| v["spec"]["database"]["backups"]["schedule"] = "".into());
    assert_eq!(cel(&schedule, Some(&none)), Vec::<String>::new(), "the schedule stays mutable");
    let s = schema();
    let db = &s["properties"]["spec"]["properties"]["database"];
    assert!(db["default"].is_object(), "spec.database is defaulted, so the rule sees a set or removed snapshot");
    assert_eq!(s["properties"]["spec"]["properties"]["deletionPolicy"]["default"], "Snapshot");
}

#[test]
fn crd_pinned_host_keys_name_every_tier() {
    let pins = |tiers: &[&str]| {
        changed(|v| {
            v["spec"]["ssh"]["hostKeyPolicy"] = "Pinned".into();
            let map: serde_json::Map<String, serde_json::Value> =
                tiers.iter().map(|t| (t.to_string(), format!("SHA256:{t}").into())).collect();
            v["spec"]["ssh"]["pinnedHostKeys"] = map.into();
        })
    };
    let errs = cel(&pins(&["frontend", "backend"]), None);
    assert!(errs.iter().any(|e| e.contains("pinnedHostKeys for every tier")), "{errs:?}");
    let errs = cel(&pins(&[]), None);
    assert!(errs.iter().any(|e| e.contains("pinnedHostKeys for every tier")), "{errs:?}");
    assert_eq!(cel(&pins(&["frontend", "backend", "database"]), None), Vec::<String>::new());
}
