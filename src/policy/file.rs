//! Policy files: YAML (or JSON) documents of `kind: Policy` in a directory, compiled into a
//! [`PolicySet`]. Every problem is reported with its file, document and field path.

use super::matcher::{Match, MatchSpec};
use super::registry::Registry;
use super::{Action, FailurePolicy, FieldError, LoadedPolicy, OnError};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

/// The API version of policy documents.
pub const API_VERSION: &str = "confgate.dev/v1alpha1";

/// One problem in the policy files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub file: PathBuf,
    /// 1-based document index in the file (0 when the file itself is the problem).
    pub document: usize,
    /// Field path in the document (`spec.settings.requiredKeys[0]`), empty for the whole file.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.document > 0 {
            write!(f, ": document {}", self.document)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found while loading policy files (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError(pub Vec<ConfigIssue>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "invalid policy configuration:\n  {}", lines.join("\n  "))
    }
}

/// The policies in force: immutable once loaded; a reload builds a new set.
#[derive(Debug, Default)]
pub struct PolicySet {
    /// In file order, then document order.
    pub policies: Vec<LoadedPolicy>,
    /// SHA-256 over the files' names and contents, to tell a real change from a touch.
    pub fingerprint: String,
}

impl PolicySet {
    /// The policy called `name`.
    pub fn get(&self, name: &str) -> Option<&LoadedPolicy> {
        self.policies.iter().find(|p| p.name == name)
    }

    /// Names of the policies that can deny a request (validating, `action: Deny`).
    pub fn guards(&self) -> impl Iterator<Item = &str> {
        self.policies
            .iter()
            .filter(|p| {
                p.action == super::Action::Deny
                    && p.policy.capabilities().serves(super::Phase::Validate)
            })
            .map(|p| p.name.as_str())
    }

    /// Why replacing `self` with `next` would silently open the gate, if it would: `next` has
    /// no policies at all, or lacks a policy that can deny which `self` has. A truncated,
    /// half-written or commented-out file looks exactly like that, so a reload refuses it
    /// unless removal was allowed (`--allow-policy-removal`).
    pub fn weakened_by(&self, next: &PolicySet) -> Option<String> {
        if next.policies.is_empty() && !self.policies.is_empty() {
            return Some("the new policy set is empty".into());
        }
        let lost: Vec<&str> = self
            .guards()
            .filter(|name| !next.guards().any(|n| n == *name))
            .collect();
        (!lost.is_empty()).then(|| {
            format!(
                "it would remove (or stop denying with) {}",
                lost.iter()
                    .map(|n| format!("{n:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicyDocument {
    /// Checked before deserialising, with a clearer message.
    #[serde(rename = "apiVersion")]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    metadata: Metadata,
    spec: PolicySpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    /// Accepted for tooling (kustomize, Helm); confgate does not read them.
    #[serde(default, rename = "labels")]
    _labels: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "annotations")]
    _annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicySpec {
    #[serde(rename = "type")]
    type_name: String,
    #[serde(default)]
    action: Action,
    #[serde(default)]
    on_error: OnError,
    #[serde(default)]
    failure_policy: Option<FailurePolicy>,
    #[serde(default, rename = "match")]
    matcher: MatchSpec,
    #[serde(default)]
    settings: Value,
}

/// Loads every `*.yaml`, `*.yml` and `*.json` file in `dir` (not recursively; hidden entries such
/// as Kubernetes' `..data` are skipped, the files themselves are followed through symlinks).
pub fn load_dir(dir: &Path, registry: &Registry) -> Result<PolicySet, ConfigError> {
    let issue = |message: String| {
        ConfigError(vec![ConfigIssue {
            file: dir.to_owned(),
            document: 0,
            field: String::new(),
            message,
        }])
    };
    let entries =
        std::fs::read_dir(dir).map_err(|e| issue(format!("cannot read policy directory: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| is_policy_file(p))
        .collect();
    files.sort();
    let mut sources = Vec::with_capacity(files.len());
    let mut issues = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => sources.push((file, text)),
            Err(e) => issues.push(ConfigIssue {
                file,
                document: 0,
                field: String::new(),
                message: format!("cannot read: {e}"),
            }),
        }
    }
    if !issues.is_empty() {
        return Err(ConfigError(issues));
    }
    load_sources(&sources, registry)
}

fn is_policy_file(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    !name.starts_with('.')
        && path.is_file()
        && [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

/// Loads policies from one text, as if it were the file `name` (tests and the CLI).
pub fn load_str(name: &str, text: &str, registry: &Registry) -> Result<PolicySet, ConfigError> {
    load_sources(&[(PathBuf::from(name), text.to_owned())], registry)
}

fn load_sources(
    sources: &[(PathBuf, String)],
    registry: &Registry,
) -> Result<PolicySet, ConfigError> {
    let mut hasher = Sha256::new();
    let mut policies: Vec<LoadedPolicy> = Vec::new();
    let mut issues = Vec::new();
    let mut seen: HashMap<String, (PathBuf, usize)> = HashMap::new();
    for (file, text) in sources {
        hasher.update(file.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
        let documents = match crate::yaml::documents(text) {
            Ok(docs) => docs,
            Err(crate::yaml::SyntaxError(message)) => {
                issues.push(ConfigIssue {
                    file: file.clone(),
                    document: 0,
                    field: String::new(),
                    message,
                });
                continue;
            }
        };
        for (index, document) in documents.into_iter().enumerate() {
            let at = |field: &str, message: String| ConfigIssue {
                file: file.clone(),
                document: index + 1,
                field: field.to_owned(),
                message,
            };
            match compile(document, file, registry) {
                Ok(policy) => {
                    if let Some((other, doc)) = seen.get(&policy.name) {
                        issues.push(at(
                            "metadata.name",
                            format!(
                                "duplicate policy name {:?} (also in {} document {doc})",
                                policy.name,
                                other.display()
                            ),
                        ));
                        continue;
                    }
                    seen.insert(policy.name.clone(), (file.clone(), index + 1));
                    policies.push(policy);
                }
                Err(FieldError { field, message }) => issues.push(at(&field, message)),
            }
        }
    }
    if !issues.is_empty() {
        return Err(ConfigError(issues));
    }
    Ok(PolicySet {
        policies,
        fingerprint: hex::encode(hasher.finalize()),
    })
}

fn compile(document: Value, file: &Path, registry: &Registry) -> Result<LoadedPolicy, FieldError> {
    let api_version = document
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if api_version != API_VERSION {
        return Err(FieldError::at(
            "apiVersion",
            format!("must be {API_VERSION:?}, got {api_version:?}"),
        ));
    }
    let kind = document
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind != "Policy" {
        return Err(FieldError::at(
            "kind",
            format!("must be \"Policy\", got {kind:?}"),
        ));
    }
    let doc: PolicyDocument = serde_path_to_error::deserialize(document).map_err(|e| {
        let path = e.path().to_string();
        FieldError::at(
            if path == "." { String::new() } else { path },
            e.into_inner().to_string(),
        )
    })?;
    let name = doc.metadata.name;
    if let Err(why) = check_dns_label(&name) {
        return Err(FieldError::at("metadata.name", why));
    }
    let spec = doc.spec;
    let factory = registry.get(&spec.type_name).ok_or_else(|| {
        let known: Vec<&str> = registry.type_names().collect();
        FieldError::at(
            "spec.type",
            format!(
                "unknown policy type {:?} (known: {})",
                spec.type_name,
                known.join(", ")
            ),
        )
    })?;
    let policy = factory(spec.settings).map_err(FieldError::from)?;
    let matcher = Match::compile(
        spec.matcher,
        policy.kinds(),
        policy.default_kinds(),
        policy.extra_operations(),
        policy.default_operations(),
    )
    .map_err(|e| e.under("spec.match"))?;
    Ok(LoadedPolicy {
        name,
        type_name: spec.type_name,
        action: spec.action,
        on_error: spec.on_error,
        failure_policy: spec.failure_policy,
        matcher,
        source: file.to_owned(),
        policy,
    })
}

/// Policy names appear in URLs (`/validate/{name}`) and audit annotation keys: RFC 1123 labels.
fn check_dns_label(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be a DNS label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(policies: &[(&str, &str, &str)]) -> PolicySet {
        let text: Vec<String> = policies
            .iter()
            .map(|(name, kind, action)| {
                format!("apiVersion: confgate.dev/v1alpha1\nkind: Policy\nmetadata: {{name: {name}}}\nspec: {{type: {kind}, action: {action}}}\n")
            })
            .collect();
        load_str("test.yaml", &text.join("---\n"), &Registry::builtin()).unwrap()
    }

    #[test]
    fn a_reload_may_not_drop_every_policy_or_one_that_denies() {
        let current = set(&[
            ("refs", "require-config-keys", "Deny"),
            ("advice", "require-config-keys", "Warn"),
            ("checksum", "checksum-config", "Deny"),
        ]);
        let without_advice = set(&[
            ("refs", "require-config-keys", "Deny"),
            ("checksum", "checksum-config", "Deny"),
        ]);
        // A Warn policy and a mutating-only policy never deny: removing them opens nothing.
        assert_eq!(current.weakened_by(&without_advice), None);
        assert_eq!(
            current.weakened_by(&set(&[("refs", "require-config-keys", "Deny")])),
            None
        );
        assert_eq!(
            current.weakened_by(&set(&[("advice", "require-config-keys", "Warn")])),
            Some("it would remove (or stop denying with) \"refs\"".into())
        );
        assert_eq!(
            current.weakened_by(&set(&[("refs", "require-config-keys", "Warn")])),
            Some("it would remove (or stop denying with) \"refs\"".into())
        );
        let empty = load_str("empty.yaml", "", &Registry::builtin()).unwrap();
        assert_eq!(
            current.weakened_by(&empty),
            Some("the new policy set is empty".into())
        );
        // Adding policies is always fine, and so is starting from nothing.
        assert_eq!(without_advice.weakened_by(&current), None);
        assert_eq!(empty.weakened_by(&current), None);
    }
}
