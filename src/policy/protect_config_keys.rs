//! `protect-config-keys`: the config side of `require-config-keys`. Deleting a ConfigMap or
//! Secret, or removing a key from it, is accepted by the apiserver even while running workloads
//! read it, and their next Pod restart fails with CreateContainerConfigError, often hours later.
//! On UPDATE and DELETE of a ConfigMap or Secret this policy finds the live workloads
//! (Deployments, StatefulSets, DaemonSets, CronJobs, from the workload index) that would break:
//!
//! - UPDATE: a key the change removes that a workload reads by name, without `optional: true`
//!   (`configMapKeyRef`/`secretKeyRef`, or volume `items`). A whole-object reference (`envFrom`,
//!   a volume without `items`) does not break when a key goes: the Pod gets one variable or
//!   file fewer.
//! - DELETE: any reference without `optional: true`.
//!
//! Only key names are read, never values; messages name workloads and keys only.
//!
//! A DELETE is never refused, so removing a whole app goes through in any order
//! (`kubectl delete -f dir/` in file order, GitOps prune, namespace deletion): with
//! `action: Deny`, an object live workloads read carries the installation's finalizer
//! (`crate::controllers::protection`) and its deletion waits for the last reader to go; the answer warns and
//! names the readers. A key a live workload reads stays protected, also in an object whose
//! deletion is waiting. The namespace controller and the garbage collector are never judged;
//! workloads being deleted do not count.

use super::{Capabilities, Context, Findings, Policy, PolicyError, SettingsError, parse_settings};
use crate::cluster::workloads::Workload;
use crate::workload::{ContainerKind, Keys, Site, Source};
use kube::core::admission::Operation;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;

/// A workload that reads the object, with its reduced form, references narrowed to those
/// that read the object without `optional: true`.
type Reader<'a> = (&'a Workload, crate::cluster::workloads::Reduced);

/// Users whose deletions are cleanup and are never judged: the namespace controller (namespace
/// deletion) and the garbage collector, with and without per-controller credentials.
pub const CLEANUP_USERS: [&str; 3] = [
    "system:serviceaccount:kube-system:namespace-controller",
    "system:serviceaccount:kube-system:generic-garbage-collector",
    "system:kube-controller-manager",
];

fn default_max_named() -> usize {
    3
}

fn default_same_app_labels() -> Vec<String> {
    vec!["app.kubernetes.io/instance".into()]
}

/// `spec.settings` of a `protect-config-keys` policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProtectConfigKeysSettings {
    /// How many workloads a message names before "and N more" (default 3).
    #[serde(default = "default_max_named")]
    pub max_named: usize,
    /// Accepted for policy files written before deletions were deferred; no longer used (an
    /// app's config is deleted with it in any order, whatever its labels).
    #[serde(default = "default_same_app_labels")]
    pub same_app_labels: Vec<String>,
}
#[derive(Debug)]
pub struct ProtectConfigKeys {
    max_named: usize,
}

impl ProtectConfigKeys {
    /// Validates settings.
    pub fn from_settings(settings: Value) -> Result<Self, SettingsError> {
        let settings: ProtectConfigKeysSettings = parse_settings(settings)?;
        if settings.max_named == 0 {
            return Err(SettingsError::at("maxNamed", "must be at least 1"));
        }
        Ok(Self {
            max_named: settings.max_named,
        })
    }
}

/// The key names of a ConfigMap (`data`, `binaryData`) or Secret (`data`, `stringData`).
fn key_names(object: Option<&Value>) -> BTreeSet<&str> {
    let mut keys = BTreeSet::new();
    for field in ["data", "binaryData", "stringData"] {
        if let Some(map) = object.and_then(|o| o.get(field)).and_then(Value::as_object) {
            keys.extend(map.keys().map(String::as_str));
        }
    }
    keys
}

/// `container web, env REGION`, `init container migrate, envFrom`, `volume config`.
fn describe(site: Site<'_>) -> String {
    let container = |name: &str, kind: ContainerKind| match kind {
        ContainerKind::Init => format!("init container {name}"),
        ContainerKind::Regular => format!("container {name}"),
        ContainerKind::Ephemeral => format!("ephemeral container {name}"),
    };
    match site {
        Site::Env {
            container: c,
            kind,
            var,
        } => format!("{}, env {var}", container(c, kind)),
        Site::EnvFrom {
            container: c, kind, ..
        } => format!("{}, envFrom", container(c, kind)),
        Site::Volume { volume, .. } => format!("volume {volume}"),
    }
}

impl ProtectConfigKeys {
    /// `deployment shop/web (container web, env REGION), ... and 2 more`: each workload with the
    /// places where it reads what `uses` selects.
    fn name_users(&self, users: &[(&Workload, Vec<String>)], namespace: &str) -> String {
        let named: Vec<String> = users
            .iter()
            .take(self.max_named)
            .map(|(w, sites)| {
                format!(
                    "{} {namespace}/{} ({})",
                    w.kind.to_lowercase(),
                    w.name,
                    sites.join("; ")
                )
            })
            .collect();
        let more = users.len().saturating_sub(self.max_named);
        match (named.split_last(), more) {
            (Some((last, [])), 0) => last.clone(),
            (Some((last, rest)), 0) => format!("{} and {last}", rest.join(", ")),
            _ => format!("{} and {more} more", named.join(", ")),
        }
    }
}

impl Policy for ProtectConfigKeys {
    fn capabilities(&self) -> Capabilities {
        Capabilities::Validate
    }

    fn kinds(&self) -> Option<&'static [&'static str]> {
        Some(&["ConfigMap", "Secret"])
    }

    fn extra_operations(&self) -> &'static [Operation] {
        &[Operation::Delete]
    }

    fn fails_open(&self) -> bool {
        true
    }

    fn judges_objects_being_deleted(&self) -> bool {
        true
    }

    fn default_operations(&self) -> &'static [Operation] {
        &[Operation::Update, Operation::Delete]
    }

    fn validate(
        &self,
        cx: &Context,
        object: &Value,
        out: &mut Findings,
    ) -> Result<(), PolicyError> {
        let request = cx.request;
        let source = match request.kind.kind.as_str() {
            "ConfigMap" => Source::ConfigMap,
            "Secret" => Source::Secret,
            _ => return Ok(()),
        };
        if request
            .user_info
            .username
            .as_deref()
            .is_some_and(|u| CLEANUP_USERS.contains(&u))
        {
            return Ok(());
        }
        let (namespace, name) = (cx.namespace(), request.name.as_str());
        let label = format!("{} {:?}", source.as_str(), format!("{namespace}/{name}"));
        let Some(consumers) = cx.cluster.consumers(source, namespace, name) else {
            out.warn(format!(
                "{label}: its consumers were not checked: no workload index (standalone, or the workload caches have not synced)"
            ));
            return Ok(());
        };
        // On UPDATE, only the removed keys matter: most updates remove none, and then no
        // reader needs to be looked at.
        let removed: Vec<&str> = match request.operation {
            Operation::Update => {
                let after = key_names(Some(object));
                key_names(cx.old_object)
                    .into_iter()
                    .filter(|k| !after.contains(k))
                    .collect()
            }
            Operation::Delete => Vec::new(),
            _ => return Ok(()),
        };
        if request.operation == Operation::Update && removed.is_empty() {
            return Ok(());
        }
        let mut consumers: Vec<Arc<Workload>> =
            consumers.into_iter().filter(|w| !w.deleting).collect();
        consumers.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        // Each consumer with what it reads of this object without `optional: true`.
        let readers: Vec<Reader> = consumers
            .iter()
            .filter_map(|w| {
                let mut reduced = w.reduced();
                reduced
                    .references
                    .retain(|r| r.source() == source && r.1 == name && !r.3);
                (!reduced.references.is_empty()).then_some((w.as_ref(), reduced))
            })
            .collect();
        if request.operation == Operation::Delete {
            if readers.is_empty() {
                return Ok(());
            }
            let users: Vec<(&Workload, Vec<String>)> = readers
                .iter()
                .map(|(w, reduced)| {
                    let sites = reduced.references.iter().map(|r| describe(r.borrow().site));
                    (*w, sites.collect())
                })
                .collect();
            let users_text = self.name_users(&users, namespace);
            let marked = object
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .any(|f| f.starts_with(crate::cluster::IN_USE_PREFIX));
            out.warn(if marked {
                format!(
                    "{label} is used by {users_text}; its deletion waits until they no longer read it, then completes by itself (delete or change them to let it go now)"
                )
            } else {
                format!(
                    "{label} is used by {users_text}; it is deleted now, and their next Pods will not start"
                )
            });
            return Ok(());
        }
        for key in removed {
            let users: Vec<(&Workload, Vec<String>)> = readers
                .iter()
                .filter_map(|(w, reduced)| {
                    let sites: Vec<String> = reduced
                        .references
                        .iter()
                        .map(|r| r.borrow())
                        .filter(|r| matches!(&r.keys, Keys::Named(k) if k.contains(&key)))
                        .map(|r| describe(r.site))
                        .collect();
                    (!sites.is_empty()).then_some((*w, sites))
                })
                .collect();
            if !users.is_empty() {
                out.violation(format!(
                    "{label}: key {key} is used by {}",
                    self.name_users(&users, namespace)
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::{Review, review_from_value};
    use crate::policy::testing::cluster;
    use serde_json::json;

    const STATE: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop, labels: {app.kubernetes.io/instance: shop}}
spec:
  template:
    spec:
      containers:
      - name: web
        env:
        - {name: REGION, valueFrom: {configMapKeyRef: {name: app-config, key: REGION}}}
        - {name: MAYBE, valueFrom: {configMapKeyRef: {name: app-config, key: MAYBE, optional: true}}}
        envFrom: [{configMapRef: {name: app-config}}]
      volumes:
      - {name: files, configMap: {name: app-config, items: [{key: app.yaml, path: app.yaml}]}}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: report, namespace: shop}
spec:
  jobTemplate:
    spec:
      template:
        spec:
          initContainers:
          - name: fetch
            env: [{name: REGION, valueFrom: {configMapKeyRef: {name: app-config, key: REGION}}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: other, namespace: elsewhere}
spec:
  template:
    spec:
      containers:
      - name: c
        env: [{name: REGION, valueFrom: {configMapKeyRef: {name: app-config, key: REGION}}}]
"#;

    fn config_map(keys: &[&str], labels: Value) -> Value {
        let data: serde_json::Map<String, Value> =
            keys.iter().map(|k| ((*k).to_owned(), json!("v"))).collect();
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "app-config", "namespace": "shop", "labels": labels},
               "data": data})
    }

    fn review(operation: &str, object: Option<Value>, old: Option<Value>, user: &str) -> Review {
        review_from_value(json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u", "name": "app-config", "namespace": "shop", "operation": operation,
                "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
                "resource": {"group": "", "version": "v1", "resource": "configmaps"},
                "requestKind": {"group": "", "version": "v1", "kind": "ConfigMap"},
                "requestResource": {"group": "", "version": "v1", "resource": "configmaps"},
                "userInfo": {"username": user},
                "object": object, "oldObject": old, "dryRun": false
            }
        }))
        .unwrap()
    }

    fn judge(policy: &ProtectConfigKeys, review: &Review, state: &str) -> Findings {
        let state = cluster(state);
        let cx = Context {
            request: &review.request,
            old_object: review.old_object.as_ref(),
            managed_fields: None,
            cluster: &state,
            now: std::time::SystemTime::now(),
            settled: false,
        };
        let subject = review
            .object
            .as_ref()
            .or(review.old_object.as_ref())
            .unwrap();
        let mut out = Findings::default();
        policy.validate(&cx, subject, &mut out).unwrap();
        out
    }

    fn policy(settings: Value) -> ProtectConfigKeys {
        ProtectConfigKeys::from_settings(settings).unwrap()
    }

    #[test]
    fn removing_a_key_read_by_name_is_a_violation_naming_every_reader() {
        let old = config_map(&["REGION", "MAYBE", "app.yaml", "UNUSED"], json!({}));
        let new = config_map(&["UNUSED"], json!({}));
        let out = judge(
            &policy(json!({})),
            &review("UPDATE", Some(new), Some(old), "alice"),
            STATE,
        );
        assert_eq!(
            out.violations,
            vec![
                r#"configmap "shop/app-config": key REGION is used by cronjob shop/report (init container fetch, env REGION) and deployment shop/web (container web, env REGION)"#,
                r#"configmap "shop/app-config": key app.yaml is used by deployment shop/web (volume files)"#,
            ]
        );
        // MAYBE is optional; the envFrom reads every key but does not break without one.
        assert!(out.warnings.is_empty());
    }

    #[test]
    fn removing_an_unread_key_or_adding_one_is_fine() {
        let old = config_map(&["REGION", "app.yaml", "UNUSED"], json!({}));
        let new = config_map(&["REGION", "app.yaml", "NEW"], json!({}));
        let out = judge(
            &policy(json!({})),
            &review("UPDATE", Some(new), Some(old), "alice"),
            STATE,
        );
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn deleting_a_consumed_object_is_never_refused_and_names_the_first_few_readers() {
        let old = config_map(&["REGION"], json!({}));
        let out = judge(
            &policy(json!({"maxNamed": 1})),
            &review("DELETE", None, Some(old.clone()), "alice"),
            STATE,
        );
        assert!(out.violations.is_empty());
        assert_eq!(
            out.warnings,
            vec![
                r#"configmap "shop/app-config" is used by cronjob shop/report (init container fetch, env REGION) and 1 more; it is deleted now, and their next Pods will not start"#
            ]
        );
        // The namespace controller and the garbage collector are never judged.
        for user in CLEANUP_USERS {
            let out = judge(
                &policy(json!({})),
                &review("DELETE", None, Some(old.clone()), user),
                STATE,
            );
            assert!(out.is_empty(), "{user}: {out:?}");
        }
    }

    #[test]
    fn deleting_a_marked_object_says_it_waits_for_its_readers() {
        let mut marked = config_map(&["REGION"], json!({}));
        marked["metadata"]["finalizers"] = json!(["confgate.dev/in-use-0123456789"]);
        let state = STATE.split("---").next().unwrap();
        let out = judge(
            &policy(json!({})),
            &review("DELETE", None, Some(marked), "alice"),
            state,
        );
        assert!(out.violations.is_empty());
        assert_eq!(
            out.warnings,
            vec![
                r#"configmap "shop/app-config" is used by deployment shop/web (container web, env REGION; container web, envFrom; volume files); its deletion waits until they no longer read it, then completes by itself (delete or change them to let it go now)"#
            ]
        );
    }

    #[test]
    fn a_key_read_by_name_stays_protected_while_the_object_waits_to_be_deleted() {
        let mut old = config_map(&["REGION", "OTHER"], json!({}));
        old["metadata"]["deletionTimestamp"] = json!("2026-12-01T00:00:00Z");
        old["metadata"]["finalizers"] = json!(["confgate.dev/in-use-0123456789"]);
        let mut new = config_map(&["OTHER"], json!({}));
        new["metadata"] = old["metadata"].clone();
        let out = judge(
            &policy(json!({})),
            &review("UPDATE", Some(new), Some(old), "alice"),
            STATE,
        );
        assert_eq!(out.violations.len(), 1, "{out:?}");
        assert!(
            out.violations[0].contains("key REGION is used by"),
            "{out:?}"
        );
    }

    #[test]
    fn settings_are_checked() {
        assert_eq!(
            ProtectConfigKeys::from_settings(json!({"maxNamed": 0}))
                .unwrap_err()
                .path,
            "maxNamed"
        );
    }
}
