//! `require-config-keys`: a Pod whose ConfigMap/Secret reference points at a missing object or
//! key is created and then never starts (CreateContainerConfigError, or a volume that never
//! mounts). This policy finds those references at admission, and can require that containers
//! receive a given set of configuration keys.
//!
//! Kubelet semantics: a reference marked `optional: true` never blocks a Pod, so it is never a
//! violation (unless `forbidOptionalReferences`); every volume of the pod is mounted, used or not.

use super::{Capabilities, Context, Findings, Policy, PolicyError, SettingsError, parse_settings};
use crate::cluster::Lookup;
use crate::cluster::promises::{Promise, Promises};
use crate::workload::{
    ContainerKind, Keys, Reference, Site, Source, WORKLOAD_KINDS, containers, pod_spec, references,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::admission::Operation;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

/// Which containers must receive `requiredKeys`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ContainerSelection {
    /// Every regular container.
    #[default]
    All,
    /// At least one regular container.
    Any,
    /// The regular containers with these names (those present in the pod).
    Named(Vec<String>),
}

impl TryFrom<Value> for ContainerSelection {
    type Error = String;
    fn try_from(value: Value) -> Result<Self, String> {
        match value {
            Value::String(s) if s == "all" => Ok(Self::All),
            Value::String(s) if s == "any" => Ok(Self::Any),
            Value::Array(items) => items
                .into_iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| "container names must be strings".to_owned())
                })
                .collect::<Result<_, _>>()
                .map(Self::Named),
            other => Err(format!(
                "must be \"all\", \"any\" or a list of container names, got {other}"
            )),
        }
    }
}

fn yes() -> bool {
    true
}

/// `spec.settings` of a `require-config-keys` policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequireConfigKeysSettings {
    /// Check that every non-optional reference resolves (default true).
    #[serde(default = "yes")]
    pub check_references: bool,
    /// Environment variables each selected container must receive.
    #[serde(default)]
    pub required_keys: Vec<String>,
    /// Which containers `requiredKeys` applies to: `all` (default), `any`, or names.
    #[serde(default, deserialize_with = "selection")]
    pub containers: ContainerSelection,
    /// ConfigMaps the pod must reference (by name).
    #[serde(default)]
    pub required_config_maps: Vec<String>,
    /// Secrets the pod must reference (by name).
    #[serde(default)]
    pub required_secrets: Vec<String>,
    /// Optional references are violations: `optional` hides a missing config until runtime.
    #[serde(default)]
    pub forbid_optional_references: bool,
    /// Warn about ConfigMap/Secret volumes mounted with `subPath` (they never receive updates).
    #[serde(default)]
    pub warn_on_sub_path: bool,
    /// On UPDATE, a violation the old object already had is only a warning.
    #[serde(default)]
    pub only_new_violations: bool,
    /// How long a new reader may wait for a Secret that does not exist and that nothing
    /// promises (default 30): until then a missing Secret is a warning and the workload is
    /// judged again after it; 0 denies at once. Charts and tools often create a Secret just
    /// after its reader, and its Pods simply wait for it.
    #[serde(default = "default_grace")]
    pub secret_grace_seconds: u64,
}

fn default_grace() -> u64 {
    30
}

fn selection<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ContainerSelection, D::Error> {
    ContainerSelection::try_from(Value::deserialize(d)?).map_err(serde::de::Error::custom)
}
#[derive(Debug)]
pub struct RequireConfigKeys {
    settings: RequireConfigKeysSettings,
}

impl RequireConfigKeys {
    /// Validates settings.
    pub fn from_settings(settings: Value) -> Result<Self, SettingsError> {
        let settings: RequireConfigKeysSettings = parse_settings(settings)?;
        for (i, key) in settings.required_keys.iter().enumerate() {
            if key.is_empty() || key.contains('=') {
                return Err(SettingsError::at(
                    format!("requiredKeys[{i}]"),
                    format!("{key:?} is not an environment variable name"),
                ));
            }
        }
        for (field, names) in [
            ("requiredConfigMaps", &settings.required_config_maps),
            ("requiredSecrets", &settings.required_secrets),
        ] {
            if let Some(i) = names.iter().position(|n| n.is_empty()) {
                return Err(SettingsError::at(
                    format!("{field}[{i}]"),
                    "names must not be empty",
                ));
            }
        }
        if let ContainerSelection::Named(names) = &settings.containers
            && names.is_empty()
        {
            return Err(SettingsError::at(
                "containers",
                "name at least one container, or use \"all\" or \"any\"",
            ));
        }
        let checks_something = settings.check_references
            || !settings.required_keys.is_empty()
            || !settings.required_config_maps.is_empty()
            || !settings.required_secrets.is_empty()
            || settings.forbid_optional_references
            || settings.warn_on_sub_path;
        if !checks_something {
            return Err(SettingsError::at("", "every check is disabled"));
        }
        Ok(Self { settings })
    }

    /// Everything wrong with one pod spec; `created`: when its object was created.
    fn check(&self, cx: &Context, spec: &Value, created: Option<SystemTime>) -> Findings {
        let mut out = Findings::default();
        let mut unknown: BTreeMap<(Source, String), String> = BTreeMap::new();
        let refs = references(spec);
        for r in &refs {
            self.check_reference(cx, r, created, &mut out, &mut unknown);
        }
        if !self.settings.required_keys.is_empty() {
            self.check_required_keys(cx, spec, &mut out, &mut unknown);
        }
        self.check_required_objects(cx, &refs, &mut out);
        if self.settings.warn_on_sub_path {
            warn_sub_paths(spec, &mut out);
        }
        for ((source, name), reason) in unknown {
            out.warn(format!(
                "{} {:?} was not checked: {reason}",
                source.as_str(),
                qualified(cx, &name)
            ));
        }
        out
    }

    fn check_reference(
        &self,
        cx: &Context,
        r: &Reference,
        created: Option<SystemTime>,
        out: &mut Findings,
        unknown: &mut BTreeMap<(Source, String), String>,
    ) {
        let site = site_label(&r.site);
        let object = format!("{} {:?}", r.source.as_str(), qualified(cx, r.name));
        if r.optional {
            if self.settings.forbid_optional_references {
                out.violation(format!("{site}: reference to {object} is optional; optional references hide missing configuration until runtime"));
            }
            return;
        }
        if !self.settings.check_references {
            return;
        }
        match lookup(cx, r.source, r.name) {
            Lookup::Found(data) => {
                if let Keys::Named(keys) = &r.keys {
                    for key in keys.iter().filter(|k| !data.has(k)) {
                        let writer = data
                            .filled_later(key)
                            .map(str::to_owned)
                            .or_else(|| promised_key(cx, r, key));
                        match writer {
                            Some(by) => out.warn(format!(
                                "{site}: {object} has no key {key:?} yet; {by} writes it"
                            )),
                            None => out.violation(format!("{site}: {object} has no key {key:?}")),
                        }
                    }
                }
            }
            Lookup::Missing if r.source == Source::Secret => {
                self.missing_secret(cx, r, created, (&site, &object), out, unknown);
            }
            Lookup::Missing => out.violation(format!("{site}: {object} not found")),
            Lookup::Unknown(reason) => {
                unknown.insert((r.source, r.name.to_owned()), reason);
            }
        }
    }

    /// A Secret that does not exist: promised (a warning naming the promiser), perhaps made by
    /// a hook of the reviewed input (not checked), waited for by a new reader (a warning, and
    /// a follow-up judgement after the grace), or missing.
    fn missing_secret(
        &self,
        cx: &Context,
        r: &Reference,
        created: Option<SystemTime>,
        (site, object): (&str, &str),
        out: &mut Findings,
        unknown: &mut BTreeMap<(Source, String), String>,
    ) {
        let promises = match cx.cluster.secret_promises(cx.namespace(), r.name) {
            Promises::Known(promises) => promises,
            Promises::Unknown(reason) => {
                unknown.insert((r.source, r.name.to_owned()), reason);
                return;
            }
        };
        let (hooks, promisers): (Vec<Promise>, Vec<Promise>) =
            promises.into_iter().partition(|p| p.hook);
        if !promisers.is_empty() {
            let by = names(&promisers);
            let unwritten = match &r.keys {
                Keys::Named(keys) => keys
                    .iter()
                    .find(|k| !promisers.iter().any(|p| p.writes(k)))
                    .copied(),
                Keys::All => None,
            };
            match unwritten {
                Some(key) => out.violation(format!(
                    "{site}: {object} does not exist yet, and {by} will make it without key {key:?}"
                )),
                None => out.warn(format!(
                    "{site}: {object} does not exist yet; {by} will make it"
                )),
            }
            return;
        }
        if !hooks.is_empty() {
            let reason = format!(
                "it is not in the reviewed input, and {} may create it before the workloads start",
                names(&hooks)
            );
            unknown.insert((r.source, r.name.to_owned()), reason);
            return;
        }
        let grace = Duration::from_secs(self.settings.secret_grace_seconds);
        if waits(cx, r, created, grace) {
            out.warn(format!(
                "{site}: {object} not found yet, and nothing promises it; its reader may wait {}s for it (a Secret is often created just after its reader), then it is judged again",
                grace.as_secs()
            ));
            out.recheck(grace);
        } else {
            out.violation(format!("{site}: {object} not found"));
        }
    }

    fn check_required_keys(
        &self,
        cx: &Context,
        spec: &Value,
        out: &mut Findings,
        unknown: &mut BTreeMap<(Source, String), String>,
    ) {
        let regular: Vec<_> = containers(spec)
            .into_iter()
            .filter(|c| c.kind == ContainerKind::Regular)
            .collect();
        let provided: Vec<Provided> = regular
            .iter()
            .map(|c| provided_keys(cx, c.value, unknown))
            .collect();
        let required = &self.settings.required_keys;
        match &self.settings.containers {
            ContainerSelection::Any => {
                for key in required
                    .iter()
                    .filter(|k| !provided.iter().any(|p| p.keys.contains(k.as_str())))
                {
                    let names: Vec<String> =
                        regular.iter().map(|c| format!("{:?}", c.name)).collect();
                    let message = format!(
                        "required key {key} is not provided by any container (checked {})",
                        names.join(", ")
                    );
                    report(out, provided.iter().any(|p| p.uncertain), message);
                }
            }
            selection => {
                for (c, p) in regular.iter().zip(&provided) {
                    if let ContainerSelection::Named(names) = selection
                        && !names.iter().any(|n| n == c.name)
                    {
                        continue;
                    }
                    for key in required.iter().filter(|k| !p.keys.contains(k.as_str())) {
                        let message = format!(
                            "container {:?}: required key {key} is not provided (checked {})",
                            c.name,
                            p.checked()
                        );
                        report(out, p.uncertain, message);
                    }
                }
            }
        }
    }

    fn check_required_objects(&self, cx: &Context, refs: &[Reference], out: &mut Findings) {
        let required = [
            (Source::ConfigMap, &self.settings.required_config_maps),
            (Source::Secret, &self.settings.required_secrets),
        ];
        for (source, names) in required {
            for name in names.iter().filter(|n| {
                !refs
                    .iter()
                    .any(|r| r.source == source && r.name == n.as_str())
            }) {
                out.violation(format!(
                    "required {} {:?} is not referenced by any container or volume",
                    source.as_str(),
                    qualified(cx, name)
                ));
            }
        }
    }
}

/// A missing key is a violation, unless an envFrom source could not be read: then a warning.
fn report(out: &mut Findings, uncertain: bool, message: String) {
    if uncertain {
        out.warn(format!("{message}; some envFrom sources could not be read"));
    } else {
        out.violation(message);
    }
}

/// The environment a container receives.
struct Provided {
    keys: BTreeSet<String>,
    sources: Vec<String>,
    uncertain: bool,
}

impl Provided {
    fn checked(&self) -> String {
        if self.sources.is_empty() {
            "env".into()
        } else {
            format!("env and envFrom {}", self.sources.join(", "))
        }
    }
}

/// `env` names plus, for `envFrom`, the keys actually in the ConfigMap/Secret with the prefix.
fn provided_keys(
    cx: &Context,
    container: &Value,
    unknown: &mut BTreeMap<(Source, String), String>,
) -> Provided {
    let mut provided = Provided {
        keys: BTreeSet::new(),
        sources: Vec::new(),
        uncertain: false,
    };
    for env in container
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(name) = env.get("name").and_then(Value::as_str) {
            provided.keys.insert(name.to_owned());
        }
    }
    for from in container
        .get("envFrom")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let prefix = from
            .get("prefix")
            .and_then(Value::as_str)
            .unwrap_or_default();
        for (field, source) in [
            ("configMapRef", Source::ConfigMap),
            ("secretRef", Source::Secret),
        ] {
            let Some(name) = from
                .get(field)
                .and_then(|r| r.get("name"))
                .and_then(Value::as_str)
            else {
                continue;
            };
            provided
                .sources
                .push(format!("{} {name:?}", source.as_str()));
            match lookup(cx, source, name) {
                Lookup::Found(data) => provided
                    .keys
                    .extend(data.key_names().map(|k| format!("{prefix}{k}"))),
                Lookup::Missing => {}
                Lookup::Unknown(reason) => {
                    provided.uncertain = true;
                    unknown.insert((source, name.to_owned()), reason);
                }
            }
        }
    }
    provided
}

fn warn_sub_paths(spec: &Value, out: &mut Findings) {
    let volumes = spec.get("volumes").and_then(Value::as_array);
    for c in containers(spec) {
        for mount in c
            .value
            .get("volumeMounts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let sub_path = ["subPath", "subPathExpr"].iter().any(|f| {
                mount
                    .get(*f)
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
            });
            let name = mount
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let volume = volumes
                .into_iter()
                .flatten()
                .find(|v| v.get("name").and_then(Value::as_str) == Some(name));
            let source = volume.and_then(|v| {
                ["configMap", "secret", "projected"]
                    .into_iter()
                    .find(|s| v.get(*s).is_some())
            });
            if let (true, Some(source)) = (sub_path, source) {
                let path = mount
                    .get("mountPath")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                out.warn(format!("{} {:?}: {source} volume {name:?} is mounted at {path} with subPath: it never receives updates", c.kind.noun(), c.name));
            }
        }
    }
}

/// True when the reader is new enough to wait for a Secret: created less than `grace` ago (or
/// not created yet), or, on UPDATE, referencing the Secret for the first time. Never offline
/// ([`Context::settled`]).
fn waits(cx: &Context, r: &Reference, created: Option<SystemTime>, grace: Duration) -> bool {
    if grace.is_zero() || cx.settled {
        return false;
    }
    let kind = cx.request.kind.kind.as_str();
    let newly_referenced = cx.request.operation == Operation::Update
        && cx
            .old_object
            .and_then(|old| pod_spec(kind, old))
            .is_some_and(|old| {
                !references(old)
                    .iter()
                    .any(|o| o.source == r.source && o.name == r.name)
            });
    let young = created.is_none_or(|created| match cx.now.duration_since(created) {
        Ok(age) => age < grace,
        Err(_) => true,
    });
    newly_referenced || young
}

/// `metadata.creationTimestamp` of an object.
fn creation_time(object: &Value) -> Option<SystemTime> {
    let stamp = object.pointer("/metadata/creationTimestamp")?;
    let time: Time = serde_json::from_value(stamp.clone()).ok()?;
    Some(SystemTime::from(time.0))
}

/// `Certificate "web"` when a promiser of the (existing) Secret `r` writes `key`: the Secret is
/// there but its controller has not written every key yet (an `ExternalSecret` given a new key).
fn promised_key(cx: &Context, r: &Reference, key: &str) -> Option<String> {
    if r.source != Source::Secret {
        return None;
    }
    match cx.cluster.secret_promises(cx.namespace(), r.name) {
        Promises::Known(promises) => {
            let writers: Vec<Promise> = promises
                .into_iter()
                .filter(|p| !p.hook && p.keys.as_ref().is_some_and(|k| k.contains(key)))
                .collect();
            (!writers.is_empty()).then(|| names(&writers))
        }
        Promises::Unknown(_) => None,
    }
}

/// `Certificate "a", ExternalSecret "b"`.
fn names(promises: &[Promise]) -> String {
    promises
        .iter()
        .map(|p| p.by.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn lookup(cx: &Context, source: Source, name: &str) -> Lookup {
    cx.cluster.lookup(source, cx.namespace(), name)
}

fn qualified(cx: &Context, name: &str) -> String {
    format!("{}/{name}", cx.namespace())
}

/// `container "web": env DATABASE_URL`, `init container "migrate": envFrom`, `volume "config"`.
fn site_label(site: &Site) -> String {
    match *site {
        Site::Env {
            container,
            kind,
            var,
        } => format!("{} {container:?}: env {var}", kind.noun()),
        Site::EnvFrom {
            container,
            kind,
            prefix,
        } if !prefix.is_empty() => {
            format!("{} {container:?}: envFrom (prefix {prefix:?})", kind.noun())
        }
        Site::EnvFrom {
            container, kind, ..
        } => format!("{} {container:?}: envFrom", kind.noun()),
        Site::Volume {
            volume,
            projected: true,
        } => format!("volume {volume:?} (projected)"),
        Site::Volume {
            volume,
            projected: false,
        } => format!("volume {volume:?}"),
    }
}

impl Policy for RequireConfigKeys {
    fn capabilities(&self) -> Capabilities {
        Capabilities::Validate
    }

    fn kinds(&self) -> Option<&'static [&'static str]> {
        Some(WORKLOAD_KINDS.as_slice())
    }

    fn validate(
        &self,
        cx: &Context,
        object: &Value,
        out: &mut Findings,
    ) -> Result<(), PolicyError> {
        let kind = cx.request.kind.kind.as_str();
        let Some(spec) = pod_spec(kind, object) else {
            return Ok(());
        };
        let created = creation_time(object);
        let mut found = self.check(cx, spec, created);
        let old_spec = cx.old_object.and_then(|old| pod_spec(kind, old));
        if let (true, Operation::Update, Some(old_spec)) = (
            self.settings.only_new_violations,
            &cx.request.operation,
            old_spec,
        ) {
            let before: BTreeSet<String> = self
                .check(cx, old_spec, created)
                .violations
                .into_iter()
                .collect();
            let (existing, new): (Vec<String>, Vec<String>) = found
                .violations
                .into_iter()
                .partition(|v| before.contains(v));
            found.violations = new;
            found.warnings.extend(
                existing
                    .into_iter()
                    .map(|v| format!("{v} (already present before this update)")),
            );
        }
        out.violations.extend(found.violations);
        out.warnings.extend(found.warnings);
        out.recheck_after = out.recheck_after.max(found.recheck_after);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{cluster, validate};
    use serde_json::json;

    const STATE: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg, namespace: default}\ndata: {A: '1'}\n";

    fn pod(env: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "x", "env": env}]}})
    }

    fn policy(settings: Value) -> RequireConfigKeys {
        RequireConfigKeys::from_settings(settings).unwrap()
    }

    #[test]
    fn accepts_existing_key() {
        let env =
            json!([{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "A"}}}]);
        assert!(validate(&policy(json!({})), pod(env), &cluster(STATE)).is_empty());
    }

    #[test]
    fn accepts_optional_missing_reference() {
        let env = json!([{"name": "B", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "B", "optional": true}}}]);
        assert!(validate(&policy(json!({})), pod(env), &cluster(STATE)).is_empty());
    }

    #[test]
    fn rejects_missing_key() {
        let env =
            json!([{"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "B"}}}]);
        let out = validate(&policy(json!({})), pod(env), &cluster(STATE));
        assert_eq!(
            out.violations,
            vec![r#"container "app": env B: configmap "default/cfg" has no key "B""#]
        );
    }

    #[test]
    fn rejects_missing_required_key() {
        let out = validate(
            &policy(json!({"requiredKeys": ["A"]})),
            pod(json!([{"name": "Z", "value": "1"}])),
            &cluster(STATE),
        );
        assert_eq!(
            out.violations,
            vec![r#"container "app": required key A is not provided (checked env)"#]
        );
    }

    #[test]
    fn a_token_the_token_controller_has_not_written_yet_is_waited_for() {
        let state = "apiVersion: v1\nkind: Secret\nmetadata: {name: ci-token, namespace: default}\ntype: kubernetes.io/service-account-token\n";
        let env = |key: &str| json!([{"name": "T", "valueFrom": {"secretKeyRef": {"name": "ci-token", "key": key}}}]);
        let out = validate(&policy(json!({})), pod(env("token")), &cluster(state));
        assert!(out.violations.is_empty(), "{out:?}");
        assert_eq!(
            out.warnings,
            vec![
                r#"container "app": env T: secret "default/ci-token" has no key "token" yet; the token controller writes it"#
            ]
        );
        let out = validate(&policy(json!({})), pod(env("password")), &cluster(state));
        assert_eq!(
            out.violations,
            vec![r#"container "app": env T: secret "default/ci-token" has no key "password""#]
        );
    }

    #[test]
    fn rejects_settings_that_check_nothing() {
        assert_eq!(
            RequireConfigKeys::from_settings(json!({"checkReferences": false}))
                .unwrap_err()
                .message,
            "every check is disabled"
        );
    }
}
