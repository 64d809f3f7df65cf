//! `checksum-config`: stamps a SHA-256 of exactly the configuration a pod template references
//! into `spec.template.metadata.annotations["checksum/config"]`, so that applying a workload
//! rolls it when, and only when, that configuration changed (the Helm idiom, done once by the
//! cluster instead of by every chart).
//!
//! The checksum is the lowercase hex SHA-256 of a text with one line per referenced item,
//! sorted by kind (`configmap` before `secret`), then name, then key:
//!
//! ```text
//! <kind> <name> <key> <hex SHA-256 of the value's bytes>   a referenced key that exists
//! <kind> <name> <key> missing                             a referenced key that does not
//! <kind> <name> missing                                   an object that does not exist
//! ```
//!
//! each ending in `\n`. Names and keys cannot contain spaces or newlines, so the framing is
//! unambiguous. A key reference or volume `items` selects those keys; `envFrom` or a volume
//! without `items` selects every key (ConfigMap `data` and `binaryData`, Secret `data`).
//!
//! With a live cluster, a Secret line's digest is HMAC-SHA256 of the value's SHA-256 under the
//! installation's key ([`ChecksumKey`], kept in a Secret confgate owns), so the annotation
//! cannot be used to test guesses of a Secret's value offline; offline (`confgate review`
//! with files) the bare SHA-256 is used.
//!
//! This encoding is stable across releases (a golden test pins it): changing it would roll
//! every workload.

use super::{Capabilities, Context, Findings, Policy, PolicyError, SettingsError, parse_settings};
use crate::cluster::{ChecksumKey, ConfigData, Lookup};
use crate::workload::{
    Keys, MOUNTED_FILES_RELOAD, STAMPED_BY_DEFAULT, Site, Source, WORKLOAD_KINDS, extra_objects,
    pod_spec, references, set_template_annotation, sub_path_volumes, template_annotation,
    template_annotation_owners,
};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

/// The default annotation key.
pub const DEFAULT_ANNOTATION: &str = "checksum/config";
/// Where the checksum goes when the workload's manifest manages the configured annotation
/// itself (a Helm chart's `checksum/config: {{ sha256sum ... }}`): that value is left alone.
pub const OWN_ANNOTATION: &str = "confgate.dev/config-checksum";

fn default_annotation() -> String {
    DEFAULT_ANNOTATION.to_owned()
}

fn yes() -> bool {
    true
}

/// `spec.settings` of a `checksum-config` policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ChecksumConfigSettings {
    /// Kinds to stamp besides Deployment, StatefulSet and DaemonSet.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// The annotation key (default `checksum/config`).
    #[serde(default = "default_annotation")]
    pub annotation: String,
    /// Include referenced Secrets (default true). Only digests of Secret values are ever kept.
    #[serde(default = "yes")]
    pub include_secrets: bool,
    /// Roll workloads when the configuration they consume changes, without waiting for their
    /// next write (default true; `confgate serve` with a live cluster).
    #[serde(default = "yes")]
    pub rollout: bool,
    /// How the readers of one changed ConfigMap or Secret roll: the first wave, then the rest
    /// once the first are healthy (progressive config rollouts).
    #[serde(default)]
    pub waves: Waves,
    /// The apps reload the files they mount from ConfigMaps and Secrets: volume-mounted
    /// references (except those mounted with `subPath`, which the kubelet never updates) are
    /// left out of the checksum, so their changes roll nothing (default false). A workload's
    /// `confgate.dev/mounted-files-reload: "true"|"false"` overrides it.
    #[serde(default)]
    pub mounted_files_reload: bool,
}

/// `settings.waves` of a `checksum-config` policy: the consumers of one change roll in waves.
/// The first `firstWave` roll; the rest wait until those are healthy: every replica updated,
/// ready and available, and staying so for `settleSeconds`, with no container of a new Pod
/// restarting or failing to start. If one of the first fails (a crash loop, a container that
/// cannot start, the Deployment's progress deadline, or not healthy within `timeoutSeconds`),
/// the change is held for every other reader until the object is edited again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Waves {
    /// How many readers roll first (default 1; 0 rolls every reader at once, paced only).
    #[serde(default = "one")]
    pub first_wave: u32,
    /// How long the first wave must stay healthy before the rest roll (default 30).
    #[serde(default = "thirty")]
    pub settle_seconds: u64,
    /// How long the first wave may take to become healthy before the change is held for the
    /// rest (default 600, the Deployment controller's own progress deadline).
    #[serde(default = "six_hundred")]
    pub timeout_seconds: u64,
    /// A container of a new Pod that restarts fails the wave (default true); off, only
    /// readiness and the failing states (CrashLoopBackOff, CreateContainerConfigError, ...)
    /// count.
    #[serde(default = "yes")]
    pub fail_on_restarts: bool,
}

fn one() -> u32 {
    1
}
fn thirty() -> u64 {
    30
}
fn six_hundred() -> u64 {
    600
}

impl Default for Waves {
    fn default() -> Self {
        Self {
            first_wave: one(),
            settle_seconds: thirty(),
            timeout_seconds: six_hundred(),
            fail_on_restarts: true,
        }
    }
}

#[derive(Debug)]
pub struct ChecksumConfig {
    kinds: Vec<String>,
    annotation: String,
    include_secrets: bool,
    rollout: bool,
    waves: Waves,
    mounted_files_reload: bool,
}

impl ChecksumConfig {
    /// Validates settings.
    pub fn from_settings(settings: Value) -> Result<Self, SettingsError> {
        let settings: ChecksumConfigSettings = parse_settings(settings)?;
        // Stamped by default: the kinds that roll their Pods when the template changes (Argo
        // Rollouts' `Rollout` where its CRD is installed).
        let mut kinds: Vec<String> = STAMPED_BY_DEFAULT.iter().map(|k| (*k).to_owned()).collect();
        for (i, kind) in settings.kinds.iter().enumerate() {
            if !WORKLOAD_KINDS.contains(&kind.as_str()) {
                return Err(SettingsError::at(
                    format!("kinds[{i}]"),
                    format!(
                        "{kind:?} carries no pod template (one of {})",
                        WORKLOAD_KINDS.join(", ")
                    ),
                ));
            }
            if !kinds.contains(kind) {
                kinds.push(kind.clone());
            }
        }
        check_annotation_key(&settings.annotation)
            .map_err(|m| SettingsError::at("annotation", m))?;
        Ok(Self {
            kinds,
            annotation: settings.annotation,
            include_secrets: settings.include_secrets,
            rollout: settings.rollout,
            waves: settings.waves,
            mounted_files_reload: settings.mounted_files_reload,
        })
    }
}

/// An annotation key is a qualified name: optional DNS prefix and `/`, then a name of at most
/// 63 alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
fn check_annotation_key(key: &str) -> Result<(), String> {
    let (prefix, name) = key.rsplit_once('/').map_or(("", key), |(p, n)| (p, n));
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name
            .as_bytes()
            .first()
            .is_some_and(u8::is_ascii_alphanumeric)
        && name
            .as_bytes()
            .last()
            .is_some_and(u8::is_ascii_alphanumeric);
    let prefix_ok = key.rsplit_once('/').is_none()
        || (!prefix.is_empty()
            && prefix.len() <= 253
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b)));
    if name_ok && prefix_ok {
        Ok(())
    } else {
        Err(format!("{key:?} is not a valid annotation key"))
    }
}

/// What one object contributes: every key, or these keys.
#[derive(Debug, Default)]
struct Selected<'a> {
    all: bool,
    keys: BTreeSet<&'a str>,
    required: bool,
}

/// Referenced objects by (kind, name): what is selected of each, and its data (`None`: missing).
type Resolved<'a> = BTreeMap<(Source, &'a str), (Selected<'a>, Option<Arc<ConfigData>>)>;

/// The checksum text for resolved objects (see the module docs).
/// Lower-case hex of a digest, written straight into the output (`hex::encode` builds a
/// `String` char by char, which showed in the profile).
struct Hex<'a>(&'a [u8]);

impl std::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut buf = [0u8; 128];
        for chunk in self.0.chunks(64) {
            let out = &mut buf[..chunk.len() * 2];
            // Cannot fail: `out` is exactly twice the chunk's length.
            if hex::encode_to_slice(chunk, out).is_ok() {
                f.write_str(std::str::from_utf8(out).map_err(|_| std::fmt::Error)?)?;
            }
        }
        Ok(())
    }
}

fn checksum_text(objects: &Resolved, secret_key: Option<&ChecksumKey>) -> String {
    let mut text = String::new();
    for ((source, name), (selected, data)) in objects {
        let kind = source.as_str();
        let Some(data) = data else {
            let _ = writeln!(text, "{kind} {name} missing");
            continue;
        };
        if data.unfollowed() {
            // `confgate.dev/rollout: "false"` on the object: its changes roll nothing.
            let _ = writeln!(text, "{kind} {name} unfollowed");
            continue;
        }
        let keys: Vec<&str> = if selected.all {
            data.key_names().collect()
        } else {
            selected.keys.iter().copied().collect()
        };
        for key in keys {
            match data.get(key) {
                Some(digest) => match (source, secret_key) {
                    (Source::Secret, Some(secret_key)) => {
                        let _ = writeln!(
                            text,
                            "{kind} {name} {key} {}",
                            Hex(&secret_key.keyed(digest))
                        );
                    }
                    _ => {
                        let _ = writeln!(text, "{kind} {name} {key} {}", Hex(digest));
                    }
                },
                None => {
                    let _ = writeln!(text, "{kind} {name} {key} missing");
                }
            }
        }
    }
    text
}

impl ChecksumConfig {
    /// The annotation to stamp: the configured one, unless another field manager owns it (the
    /// workload's manifest sets it: a Helm chart's own checksum), in which case its value is
    /// left alone and [`OWN_ANNOTATION`] carries confgate's checksum, so the workload still
    /// rolls on configuration changes and the two tools never fight over one field.
    fn target<'a>(&'a self, cx: &Context, out: &mut Findings) -> Option<&'a str> {
        let kind = cx.request.kind.kind.as_str();
        let owners = template_annotation_owners(kind, cx.managed_fields, &self.annotation);
        if owners.is_empty() {
            return Some(&self.annotation);
        }
        let owners = owners
            .iter()
            .map(|o| format!("{o:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        if self.annotation == OWN_ANNOTATION {
            out.warn(format!(
                "{OWN_ANNOTATION} is managed by {owners}; confgate leaves it alone"
            ));
            return None;
        }
        out.warn(format!(
            "{} is managed by {owners} (the manifest sets it); confgate leaves it alone and stamps {OWN_ANNOTATION} instead",
            self.annotation
        ));
        Some(OWN_ANNOTATION)
    }
}

impl Policy for ChecksumConfig {
    fn capabilities(&self) -> Capabilities {
        Capabilities::Mutate
    }

    fn kinds(&self) -> Option<&'static [&'static str]> {
        Some(WORKLOAD_KINDS.as_slice())
    }

    fn default_kinds(&self) -> Option<Vec<String>> {
        Some(self.kinds.clone())
    }

    fn rollout_annotations(&self) -> Vec<&str> {
        if self.rollout {
            vec![self.annotation.as_str(), OWN_ANNOTATION]
        } else {
            Vec::new()
        }
    }

    fn rollout_waves(&self) -> Option<Waves> {
        (self.rollout && self.waves.first_wave > 0).then_some(self.waves)
    }

    fn mutate(
        &self,
        cx: &Context,
        object: &mut Value,
        out: &mut Findings,
    ) -> Result<(), PolicyError> {
        let kind = cx.request.kind.kind.as_str();
        if !self.kinds.iter().any(|k| k == kind) {
            return Ok(());
        }
        let Some(spec) = pod_spec(kind, object) else {
            return Ok(());
        };
        let metadata = object.get("metadata");
        let reloads_files = match metadata
            .and_then(|m| {
                m.pointer(&format!(
                    "/annotations/{}",
                    MOUNTED_FILES_RELOAD.replace('/', "~1")
                ))
            })
            .and_then(Value::as_str)
        {
            Some("true") => true,
            Some("false") => false,
            _ => self.mounted_files_reload,
        };
        let sub_path = sub_path_volumes(spec);
        let refs: Vec<_> = references(spec)
            .into_iter()
            .filter(|r| self.include_secrets || r.source == Source::ConfigMap)
            .filter(|r| match r.site {
                Site::Volume { volume, .. } => !reloads_files || sub_path.contains(volume),
                _ => true,
            })
            .collect();
        let extras: Vec<(Source, &str)> = extra_objects(metadata)
            .into_iter()
            .filter(|(source, _)| self.include_secrets || *source == Source::ConfigMap)
            .collect();
        if refs.is_empty() && extras.is_empty() {
            return Ok(());
        }
        let mut wanted: BTreeMap<(Source, &str), Selected> = BTreeMap::new();
        for r in &refs {
            let entry = wanted.entry((r.source, r.name)).or_default();
            entry.required |= !r.optional;
            match &r.keys {
                Keys::All => entry.all = true,
                Keys::Named(keys) => entry.keys.extend(keys.iter().copied()),
            }
        }
        // Named dependencies: every key, and never required.
        for (source, name) in extras {
            wanted.entry((source, name)).or_default().all = true;
        }
        let mut resolved: Resolved = BTreeMap::new();
        for ((source, name), selected) in wanted {
            let data = match cx.cluster.lookup(source, cx.namespace(), name) {
                Lookup::Found(data) => Some(data),
                Lookup::Missing => {
                    if selected.required {
                        out.warn(format!(
                            "{} {:?} does not exist; the checksum counts it as missing",
                            source.as_str(),
                            format!("{}/{name}", cx.namespace())
                        ));
                    }
                    None
                }
                Lookup::Unknown(reason) => {
                    out.warn(format!(
                        "{} not updated: {} {:?} could not be read: {reason}",
                        self.annotation,
                        source.as_str(),
                        format!("{}/{name}", cx.namespace())
                    ));
                    return Ok(());
                }
            };
            resolved.insert((source, name), (selected, data));
        }
        let secret_key = if resolved.keys().any(|(source, _)| *source == Source::Secret) {
            match cx.cluster.checksum_key() {
                Ok(key) => key,
                Err(reason) => {
                    out.warn(format!("{} not updated: {reason}", self.annotation));
                    return Ok(());
                }
            }
        } else {
            None
        };
        let text = checksum_text(&resolved, secret_key.as_deref());
        let checksum = Hex(&Sha256::digest(text.as_bytes())).to_string();
        let Some(target) = self.target(cx, out) else {
            return Ok(());
        };
        if template_annotation(kind, object, target) != Some(checksum.as_str()) {
            set_template_annotation(kind, object, target, &checksum);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterState;
    use crate::cluster::static_state::StaticState;
    use crate::policy::testing::{cluster, mutate};
    use serde_json::json;

    const STATE: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg, namespace: default}\ndata: {A: '1', B: '2'}\n";

    fn deployment(env: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "x", "env": env}]}}}})
    }

    fn policy() -> ChecksumConfig {
        ChecksumConfig::from_settings(json!({})).unwrap()
    }

    #[test]
    fn mutates_template_with_checksum_of_referenced_keys() {
        let env =
            json!([{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "A"}}}]);
        let (object, out) = mutate(&policy(), deployment(env), &cluster(STATE));
        assert!(out.is_empty());
        let text = format!("configmap cfg A {}\n", hex::encode(Sha256::digest(b"1")));
        assert_eq!(
            object["spec"]["template"]["metadata"]["annotations"][DEFAULT_ANNOTATION],
            hex::encode(Sha256::digest(text.as_bytes()))
        );
    }

    #[test]
    fn a_config_map_that_opted_out_counts_without_its_values() {
        let env =
            json!([{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "A"}}}]);
        let opted_out = |value: &str| {
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cfg, namespace: default, annotations: {{confgate.dev/rollout: 'false'}}}}\ndata: {{A: '{value}'}}\n"
            )
        };
        let stamp = |state: &str| {
            let (object, _) = mutate(&policy(), deployment(env.clone()), &cluster(state));
            object["spec"]["template"]["metadata"]["annotations"][DEFAULT_ANNOTATION].clone()
        };
        let expected = hex::encode(Sha256::digest(b"configmap cfg unfollowed\n"));
        assert_eq!(stamp(&opted_out("1")), expected);
        // A change of its values changes nothing: its readers do not roll.
        assert_eq!(stamp(&opted_out("2")), expected);
        assert_ne!(stamp(STATE), expected);
    }

    /// A cluster with (or failing to load) a checksum key.
    struct Keyed(StaticState, Result<Option<Arc<ChecksumKey>>, String>);

    impl ClusterState for Keyed {
        fn describe(&self) -> String {
            "keyed".into()
        }
        fn config_map(&self, namespace: &str, name: &str) -> Lookup {
            self.0.config_map(namespace, name)
        }
        fn secret(&self, namespace: &str, name: &str) -> Lookup {
            self.0.secret(namespace, name)
        }
        fn namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
            self.0.namespace_labels(namespace)
        }
        fn limit_ranges(
            &self,
            namespace: &str,
        ) -> Option<Vec<Arc<k8s_openapi::api::core::v1::LimitRangeSpec>>> {
            self.0.limit_ranges(namespace)
        }
        fn checksum_key(&self) -> Result<Option<Arc<ChecksumKey>>, String> {
            self.1.clone()
        }
    }

    #[test]
    fn keys_the_secret_lines_with_the_installation_key() {
        let state = cluster(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: default}\nstringData: {token: hunter2}\n",
        );
        let env =
            json!([{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}}]);
        let key_bytes = [7u8; 32];
        let key = ChecksumKey::new(&key_bytes).unwrap();
        let keyed = Keyed(state, Ok(Some(Arc::new(key))));
        let (object, out) = mutate(&policy(), deployment(env.clone()), &keyed);
        assert!(out.is_empty());
        let hmac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key_bytes),
            &Sha256::digest(b"hunter2"),
        );
        let text = format!("secret s token {}\n", hex::encode(hmac));
        assert_eq!(
            object["spec"]["template"]["metadata"]["annotations"][DEFAULT_ANNOTATION],
            hex::encode(Sha256::digest(text.as_bytes()))
        );
        // The bare digest would let anyone who reads the Deployment test guesses offline.
        let bare = format!(
            "secret s token {}\n",
            hex::encode(Sha256::digest(b"hunter2"))
        );
        assert_ne!(
            object["spec"]["template"]["metadata"]["annotations"][DEFAULT_ANNOTATION],
            hex::encode(Sha256::digest(bare.as_bytes()))
        );
        // No key yet: nothing stamped, and the warning says why.
        let unloaded = Keyed(keyed.0, Err("the key is not loaded yet".into()));
        let (object, out) = mutate(&policy(), deployment(env), &unloaded);
        assert!(
            object["spec"]["template"]["metadata"]
                .get("annotations")
                .is_none()
        );
        assert_eq!(
            out.warnings,
            vec!["checksum/config not updated: the key is not loaded yet"]
        );
    }

    #[test]
    fn accepts_workload_without_references_untouched() {
        let original = deployment(json!([{"name": "X", "value": "1"}]));
        let (object, _) = mutate(&policy(), original.clone(), &cluster(STATE));
        assert_eq!(object["spec"], original["spec"]);
    }

    #[test]
    fn rejects_kind_without_pod_template_in_settings() {
        assert_eq!(
            ChecksumConfig::from_settings(json!({"kinds": ["ConfigMap"]}))
                .unwrap_err()
                .path,
            "kinds[0]"
        );
    }
}
