//! Reading the multi-document YAML a user would `kubectl apply`: the
//! VotingStack plus the Secrets it references.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;

use crate::api::{validate, VotingStack};
use crate::host::{KeyError, SshKey};

/// Problems with a manifest file, one per problem, each naming where.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{file}: cannot read: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{file}: document {doc}: not valid YAML: {message}")]
    Yaml { file: PathBuf, doc: usize, message: String },
    #[error("{file}: document {doc} ({kind}): {path}: {message}")]
    Field { file: PathBuf, doc: usize, kind: String, path: String, message: String },
    #[error("{file}: no VotingStack in the file")]
    NoStack { file: PathBuf },
    #[error("{file}: {count} VotingStacks in the file; one per file, please")]
    ManyStacks { file: PathBuf, count: usize },
    #[error("{file}: {0}", file = .1.display())]
    Key(KeyError, PathBuf),
}

/// A parsed manifest.
#[derive(Debug)]
pub struct Manifest {
    pub file: PathBuf,
    pub stack: VotingStack,
    /// Secrets by name.
    pub secrets: BTreeMap<String, Secret>,
}

impl Manifest {
    /// Reads and checks a manifest; returns every problem found.
    pub fn load(file: &Path) -> Result<Manifest, Vec<ManifestError>> {
        let text = std::fs::read_to_string(file)
            .map_err(|source| vec![ManifestError::Read { file: file.to_path_buf(), source }])?;
        Manifest::parse(file, &text)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Manifest, Vec<ManifestError>> {
        let file_buf = file.to_path_buf();
        let mut errors = Vec::new();
        let mut stacks = Vec::new();
        let mut secrets = BTreeMap::new();
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let n = i + 1;
            let value = match serde_yaml::Value::deserialize(doc) {
                Ok(serde_yaml::Value::Null) => continue,
                Ok(v) => v,
                Err(e) => {
                    errors.push(ManifestError::Yaml { file: file_buf.clone(), doc: n, message: e.to_string() });
                    break;
                }
            };
            let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("").to_string();
            let field = |path: String, message: String| ManifestError::Field {
                file: file_buf.clone(),
                doc: n,
                kind: kind.clone(),
                path,
                message,
            };
            match kind.as_str() {
                "VotingStack" => match serde_path_to_error::deserialize::<_, VotingStack>(value.clone()) {
                    Ok(stack) => {
                        // The API types accept unknown fields (the controller
                        // must read objects a newer CRD wrote); a file is
                        // checked strictly here.
                        let unknown = unknown_spec_fields(&value, &stack);
                        if unknown.is_empty() {
                            stacks.push((n, stack));
                        }
                        for (path, name) in unknown {
                            errors.push(field(path, format!("unknown field `{name}`")));
                        }
                    }
                    Err(e) => {
                        let path = e.path().to_string();
                        errors.push(field(
                            if path == "." { "(document)".into() } else { path },
                            e.into_inner().to_string(),
                        ))
                    }
                },
                "Secret" => match serde_path_to_error::deserialize::<_, Secret>(value) {
                    Ok(secret) => {
                        let name = secret.metadata.name.clone().unwrap_or_default();
                        secrets.insert(name, secret);
                    }
                    Err(e) => errors.push(field(e.path().to_string(), e.into_inner().to_string())),
                },
                "" => errors.push(field("kind".into(), "missing".into())),
                other => errors.push(field("kind".into(), format!("{other} is not VotingStack or Secret"))),
            }
        }
        if stacks.len() > 1 {
            errors.push(ManifestError::ManyStacks { file: file_buf.clone(), count: stacks.len() });
        }
        let Some((doc, mut stack)) = stacks.into_iter().next() else {
            if errors.is_empty() {
                errors.push(ManifestError::NoStack { file: file_buf });
            }
            return Err(errors);
        };
        if stack.metadata.namespace.is_none() {
            stack.metadata.namespace = Some("default".into());
        }
        let name = stack.metadata.name.clone().unwrap_or_default();
        let namespace = stack.metadata.namespace.clone().unwrap_or_default();
        if !is_dns_label(&namespace) {
            // It names the state file: nothing may escape the state directory.
            errors.push(ManifestError::Field {
                file: file_buf.clone(),
                doc,
                kind: "VotingStack".into(),
                path: "metadata.namespace".into(),
                message: format!(
                    "{namespace:?} must be 1-63 lowercase letters, digits or '-' (a Kubernetes namespace)"
                ),
            });
        }
        for problem in validate(&name, &stack.spec) {
            errors.push(ManifestError::Field {
                file: file_buf.clone(),
                doc,
                kind: "VotingStack".into(),
                path: problem.path,
                message: problem.message,
            });
        }
        let manifest = Manifest { file: file_buf, stack, secrets };
        if let Err(e) = manifest.ssh_key() {
            errors.push(ManifestError::Key(e, manifest.file.clone()));
        }
        if errors.is_empty() {
            Ok(manifest)
        } else {
            Err(errors)
        }
    }

    /// The SSH key the stack's Secret holds.
    pub fn ssh_key(&self) -> Result<SshKey, KeyError> {
        let r = &self.stack.spec.ssh.private_key_secret_ref;
        let namespace = self.stack.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let secret =
            self.secrets.get(&r.name).ok_or_else(|| KeyError::MissingSecret { secret: r.name.clone(), namespace })?;
        key_from_secret(secret, &r.key)
    }
}

/// Fields of the document's `spec` that the VotingStack type does not know,
/// as (path, name): whatever deserialized but does not serialize back.
fn unknown_spec_fields(document: &serde_yaml::Value, stack: &VotingStack) -> Vec<(String, String)> {
    let (Ok(given), Ok(known)) = (serde_json::to_value(document), serde_json::to_value(&stack.spec)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    unknown_fields("spec", &given["spec"], &known, &mut out);
    out
}

/// Spec fields spelled otherwise before, by the path of the old spelling,
/// with their name now. The API types read the old spelling too (a serde
/// alias), so a file that uses it is not refused as naming an unknown field.
const RENAMED_SPEC_FIELDS: [(&str, &str); 1] = [("spec.database.volumeSizeGib", "volumeSizeGiB")];

fn unknown_fields(path: &str, given: &serde_json::Value, known: &serde_json::Value, out: &mut Vec<(String, String)>) {
    use serde_json::Value;
    match (given, known) {
        (Value::Object(given), Value::Object(known)) => {
            for (name, value) in given {
                let here = format!("{path}.{name}");
                let now =
                    RENAMED_SPEC_FIELDS.iter().find(|(old, _)| *old == here).map_or(name.as_str(), |(_, new)| new);
                match known.get(now) {
                    Some(k) => unknown_fields(&here, value, k, out),
                    None if value.is_null() => {}
                    None => out.push((here, name.clone())),
                }
            }
        }
        (Value::Array(given), Value::Array(known)) => {
            for (i, (g, k)) in given.iter().zip(known).enumerate() {
                unknown_fields(&format!("{path}[{i}]"), g, k, out);
            }
        }
        _ => {}
    }
}

/// Reads an SSH private key from a Secret's `data` or `stringData`.
pub fn key_from_secret(secret: &Secret, key: &str) -> Result<SshKey, KeyError> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let missing = || KeyError::MissingKey { secret: name.clone(), key: key.to_string() };
    let text = match secret.data.as_ref().and_then(|d| d.get(key)) {
        Some(bytes) => String::from_utf8(bytes.0.clone()).map_err(|_| KeyError::Unparsable {
            secret: name.clone(),
            key: key.into(),
            detail: "not UTF-8 text".into(),
        })?,
        None => secret.string_data.as_ref().and_then(|d| d.get(key)).cloned().ok_or_else(missing)?,
    };
    SshKey::parse(&text, &name, key)
}

/// A Kubernetes namespace name (RFC 1123 label).
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = include_str!("../examples/votingstack.yaml");

    fn errors(text: &str) -> Vec<String> {
        match Manifest::parse(Path::new("f.yaml"), text) {
            Ok(_) => vec![],
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn the_example_manifest_loads_with_its_key() {
        let m = Manifest::parse(Path::new("f.yaml"), GOOD).unwrap();
        assert_eq!(m.stack.metadata.name.as_deref(), Some("demo"));
        assert!(m.ssh_key().is_ok());
    }

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        let text = GOOD.replace("optionA: Cats", "optionA: Cats\n    optionC: Birds");
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("f.yaml: document 1 (VotingStack): spec.app.optionC: unknown field `optionC`"),
            "{e:?}"
        );
    }

    #[test]
    fn invalid_values_are_each_reported() {
        let text = GOOD.replace("10.42.1.0/24", "10.43.1.0/24").replace("instanceType: t3.small", "instanceType: huge");
        let e = errors(&text);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].contains("spec.network.subnetCidr"), "{e:?}");
        assert!(e[1].contains("spec.instances.instanceType"), "{e:?}");
    }

    #[test]
    fn a_wrong_type_names_the_field() {
        let text = GOOD.replace("port: 22", "port: twenty-two");
        let e = errors(&text);
        assert!(e[0].contains("spec.ssh.port: invalid type"), "{e:?}");
    }

    #[test]
    fn a_missing_secret_is_reported() {
        let text = GOOD.split("\n---\n").next().unwrap_or_default().to_string();
        let e = errors(&text);
        assert_eq!(e, ["f.yaml: Secret demo-ssh was not found in namespace default"]);
    }

    #[test]
    fn a_namespace_that_would_escape_the_state_directory_is_refused() {
        let text = GOOD.replacen("namespace: default", "namespace: ../../etc", 1);
        assert_ne!(text, GOOD, "the example names its namespace");
        let e = errors(&text);
        assert!(e.iter().any(|l| l.contains("metadata.namespace: \"../../etc\" must be")), "{e:?}");
    }

    #[test]
    fn the_old_spelling_of_the_volume_size_still_loads() {
        assert!(GOOD.contains("volumeSizeGiB: 10"), "the example sets the volume size");
        let m = Manifest::parse(Path::new("f.yaml"), &GOOD.replace("volumeSizeGiB: 10", "volumeSizeGib: 25")).unwrap();
        assert_eq!(m.stack.spec.database.volume_size_gib, 25);
        let m = Manifest::parse(Path::new("f.yaml"), &GOOD.replace("volumeSizeGiB: 10", "volumeSizeGiB: 30")).unwrap();
        assert_eq!(m.stack.spec.database.volume_size_gib, 30);
        let e = errors(&GOOD.replace("volumeSizeGiB: 10", "volumeSizeGb: 30"));
        assert!(e.iter().any(|l| l.contains("spec.database.volumeSizeGb: unknown field")), "{e:?}");
    }

    #[test]
    fn broken_yaml_is_reported() {
        let e = errors("kind: VotingStack\nspec: [");
        assert!(e[0].starts_with("f.yaml: document 1: not valid YAML"), "{e:?}");
    }
}
