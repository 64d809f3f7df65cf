//! `spec.match`: which requests a policy applies to, with the apiserver's own matching rules for
//! `namespaceSelector` and `objectSelector`.

use super::FieldError;
use crate::admission::operation_str;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::admission::Operation;
use kube::core::{Selector, SelectorExt};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// `spec.match` as written in a policy file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatchSpec {
    /// Kinds (`Deployment`, `Pod`, ...). Default: every kind the policy type understands.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Operations. Default: CREATE and UPDATE.
    #[serde(default)]
    pub operations: Vec<Operation>,
    /// Only these namespaces (empty: all).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Never these namespaces.
    #[serde(default)]
    pub exclude_namespaces: Vec<String>,
    /// Labels of the request's namespace (as a webhook's `namespaceSelector`).
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    /// Labels of the object (as a webhook's `objectSelector`).
    #[serde(default)]
    pub object_selector: Option<LabelSelector>,
}

/// A compiled `spec.match`.
#[derive(Debug, Clone)]
pub struct Match {
    /// The spec it was compiled from (the webhook registration is generated from it).
    pub spec: MatchSpec,
    kinds: Option<Vec<String>>,
    operations: Vec<Operation>,
    namespace_selector: Option<Selector>,
    object_selector: Option<Selector>,
}

/// What the matcher needs to know about one request.
pub struct MatchInput<'a> {
    /// `request.kind.kind`.
    pub kind: &'a str,
    /// `request.operation`.
    pub operation: &'a Operation,
    /// `request.namespace` ("" when cluster-scoped).
    pub namespace: &'a str,
    /// `request.object` and `request.oldObject`.
    pub objects: [Option<&'a Value>; 2],
}

/// The operations every policy type may evaluate, and most evaluate by default.
pub const DEFAULT_OPERATIONS: [Operation; 2] = [Operation::Create, Operation::Update];

impl Match {
    /// Compiles and checks `spec.match` against what the policy type supports. Errors name the
    /// field below `spec.match`.
    pub fn compile(
        spec: MatchSpec,
        type_kinds: Option<&[&str]>,
        default_kinds: Option<Vec<String>>,
        extra_operations: &[Operation],
        default_operations: &[Operation],
    ) -> Result<Self, FieldError> {
        for (i, kind) in spec.kinds.iter().enumerate() {
            if let Some(known) = type_kinds
                && !known.contains(&kind.as_str())
            {
                return Err(FieldError::at(
                    format!("kinds[{i}]"),
                    format!(
                        "kind {kind:?} is not understood by this policy type (it understands {})",
                        known.join(", ")
                    ),
                ));
            }
        }
        let mut operations = spec.operations.clone();
        for (i, op) in operations.iter().enumerate() {
            if !DEFAULT_OPERATIONS.contains(op) && !extra_operations.contains(op) {
                return Err(FieldError::at(
                    format!("operations[{i}]"),
                    format!(
                        "this policy type does not evaluate {} requests",
                        operation_str(op)
                    ),
                ));
            }
        }
        if operations.is_empty() {
            operations.extend(default_operations.iter().cloned());
        }
        let namespace_selector = compile_selector(&spec.namespace_selector, "namespaceSelector")?;
        let object_selector = compile_selector(&spec.object_selector, "objectSelector")?;
        let kinds = if spec.kinds.is_empty() {
            default_kinds
        } else {
            Some(spec.kinds.clone())
        };
        Ok(Self {
            spec,
            kinds,
            operations,
            namespace_selector,
            object_selector,
        })
    }

    /// The kinds this policy applies to (`None`: any).
    pub fn kinds(&self) -> Option<&[String]> {
        self.kinds.as_deref()
    }

    /// The kinds whose pod template this policy judges and that make other workloads (a
    /// Deployment makes ReplicaSets, a ReplicaSet Pods, ...): an object made by one of them is
    /// not judged again (see [`made_by_judged_controller`]).
    pub fn judged_controllers(&self) -> Vec<&str> {
        self.kinds()
            .unwrap_or_default()
            .iter()
            .map(String::as_str)
            .filter(|k| CONTROLLER_KINDS.contains(k))
            .collect()
    }

    /// The operations this policy applies to.
    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    /// `Ok(())` when the request matches, otherwise why not. `namespace_labels` is asked only when
    /// a namespace selector has to be evaluated.
    pub fn check(
        &self,
        input: &MatchInput,
        namespace_labels: impl FnOnce(&str) -> Option<BTreeMap<String, String>>,
    ) -> Result<(), String> {
        if let Some(kinds) = &self.kinds
            && !kinds.iter().any(|k| k == input.kind)
        {
            return Err(format!("kind {} not matched", input.kind));
        }
        if !self.operations.contains(input.operation) {
            return Err(format!(
                "operation {} not matched",
                operation_str(input.operation)
            ));
        }
        let ns = input.namespace;
        if !ns.is_empty() {
            if !self.spec.namespaces.is_empty() && !self.spec.namespaces.iter().any(|n| n == ns) {
                return Err(format!("namespace {ns} not in match.namespaces"));
            }
            if self.spec.exclude_namespaces.iter().any(|n| n == ns) {
                return Err(format!("namespace {ns} is excluded"));
            }
        }
        if let Some(selector) = &self.namespace_selector {
            self.check_namespace_selector(selector, input, namespace_labels)?;
        }
        if let Some(selector) = &self.object_selector {
            let matched = input
                .objects
                .iter()
                .flatten()
                .any(|o| selector.matches(&labels_of(o)));
            if !matched {
                return Err("objectSelector not matched".to_owned());
            }
        }
        Ok(())
    }

    /// As the apiserver: a Namespace is judged by its own labels; other cluster-scoped objects
    /// are never skipped by a namespace selector; a namespace the cache does not know has at
    /// least the `kubernetes.io/metadata.name` label the apiserver sets on every namespace.
    fn check_namespace_selector(
        &self,
        selector: &Selector,
        input: &MatchInput,
        namespace_labels: impl FnOnce(&str) -> Option<BTreeMap<String, String>>,
    ) -> Result<(), String> {
        let labels = if input.kind == "Namespace" {
            input
                .objects
                .iter()
                .flatten()
                .next()
                .map(|o| labels_of(o))
                .unwrap_or_default()
        } else if input.namespace.is_empty() {
            return Ok(());
        } else {
            namespace_labels(input.namespace).unwrap_or_else(|| {
                BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_owned(),
                    input.namespace.to_owned(),
                )])
            })
        };
        if selector.matches(&labels) {
            Ok(())
        } else {
            Err(format!(
                "namespaceSelector not matched by namespace {}",
                input.namespace
            ))
        }
    }
}

fn compile_selector(
    selector: &Option<LabelSelector>,
    field: &str,
) -> Result<Option<Selector>, FieldError> {
    selector
        .clone()
        .map(Selector::try_from)
        .transpose()
        .map_err(|e| FieldError::at(field, e.to_string()))
}

/// `metadata.labels` of an object as a map (non-string values ignored).
pub fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

pub use crate::workload::CONTROLLER_KINDS;

/// The kind and name of the controller that made `object` (`ownerReferences` with
/// `controller: true`), when it is one of `judged`. Such an object was judged as its owner's
/// template (Kyverno's auto-gen idea): judging it again only widens what a confgate outage
/// blocks (every replacement Pod in the cluster), so it is skipped, here and, where the
/// apiserver supports it, by the registration's `matchConditions`.
pub fn made_by_judged_controller<'a>(
    object: &'a Value,
    judged: &[&str],
) -> Option<(&'a str, &'a str)> {
    object
        .pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .filter(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        .find_map(|r| {
            let kind = r.get("kind")?.as_str()?;
            judged
                .contains(&kind)
                .then(|| (kind, r.get("name").and_then(Value::as_str).unwrap_or("")))
        })
}

/// True when the object the request changes is being deleted (`deletionTimestamp` set): its
/// updates (finalizer removal above all) are never judged, so no policy and no confgate outage
/// can keep it from going away.
pub fn being_deleted(old_object: Option<&Value>) -> bool {
    old_object
        .and_then(|o| o.pointer("/metadata/deletionTimestamp"))
        .is_some_and(|t| !t.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compiled(spec: Value) -> Match {
        Match::compile(
            serde_json::from_value(spec).unwrap(),
            Some(&["Deployment", "Pod"]),
            Some(vec!["Deployment".into(), "Pod".into()]),
            &[],
            &DEFAULT_OPERATIONS,
        )
        .unwrap()
    }

    fn input<'a>(kind: &'a str, ns: &'a str, obj: &'a Value) -> MatchInput<'a> {
        MatchInput {
            kind,
            operation: &Operation::Create,
            namespace: ns,
            objects: [Some(obj), None],
        }
    }

    #[test]
    fn accepts_default_kinds_and_operations() {
        let m = compiled(json!({}));
        let obj = json!({});
        assert!(m.check(&input("Pod", "shop", &obj), |_| None).is_ok());
        assert_eq!(
            m.check(&input("Service", "shop", &obj), |_| None)
                .unwrap_err(),
            "kind Service not matched"
        );
        let delete = MatchInput {
            operation: &Operation::Delete,
            ..input("Pod", "shop", &obj)
        };
        assert!(m.check(&delete, |_| None).is_err());
    }

    #[test]
    fn rejects_kind_the_type_does_not_understand() {
        let err = Match::compile(
            serde_json::from_value(json!({"kinds": ["Service"]})).unwrap(),
            Some(&["Pod"]),
            None,
            &[],
            &DEFAULT_OPERATIONS,
        )
        .unwrap_err();
        assert_eq!(err.field, "kinds[0]");
    }

    #[test]
    fn rejects_delete_unless_the_type_handles_it() {
        let spec: MatchSpec = serde_json::from_value(json!({"operations": ["DELETE"]})).unwrap();
        assert!(Match::compile(spec.clone(), None, None, &[], &DEFAULT_OPERATIONS).is_err());
        assert!(
            Match::compile(spec, None, None, &[Operation::Delete], &DEFAULT_OPERATIONS).is_ok()
        );
    }

    #[test]
    fn namespace_include_exclude_and_selector() {
        let m = compiled(
            json!({"excludeNamespaces": ["kube-system"], "namespaceSelector": {"matchLabels": {"team": "payments"}}}),
        );
        let obj = json!({});
        let team = |_: &str| Some(BTreeMap::from([("team".to_owned(), "payments".to_owned())]));
        assert!(m.check(&input("Pod", "shop", &obj), team).is_ok());
        assert!(m.check(&input("Pod", "shop", &obj), |_| None).is_err());
        assert!(m.check(&input("Pod", "kube-system", &obj), team).is_err());
    }

    #[test]
    fn unknown_namespace_has_its_name_label() {
        let m = compiled(
            json!({"namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]}]}}),
        );
        let obj = json!({});
        assert!(m.check(&input("Pod", "shop", &obj), |_| None).is_ok());
        assert!(
            m.check(&input("Pod", "kube-system", &obj), |_| None)
                .is_err()
        );
    }

    #[test]
    fn object_selector_matches_old_or_new_labels() {
        let m = compiled(
            json!({"objectSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}}),
        );
        let labelled = json!({"metadata": {"labels": {"app": "web"}}});
        let bare = json!({"metadata": {}});
        assert!(m.check(&input("Pod", "shop", &labelled), |_| None).is_ok());
        assert!(m.check(&input("Pod", "shop", &bare), |_| None).is_err());
        let update = MatchInput {
            objects: [Some(&bare), Some(&labelled)],
            ..input("Pod", "shop", &bare)
        };
        assert!(m.check(&update, |_| None).is_ok());
    }
}
