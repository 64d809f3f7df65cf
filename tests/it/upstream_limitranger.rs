//! Upstream LimitRanger's own test tables (`data/upstream-limitranger.yaml`), each case run through
//! the engine as a Pod and as a Deployment's pod template, as the newest release's
//! LimitRanger and as those of 1.33 and 1.26.

use crate::common::*;
use confgate::admission::Review;
use confgate::cluster::{ClusterState, Lookup};
use confgate::policy::Phase;
use k8s_openapi::api::core::v1::LimitRangeSpec;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A cluster whose every namespace has exactly these LimitRanges, as written (not defaulted).
struct Ranges(Vec<Arc<LimitRangeSpec>>);

impl ClusterState for Ranges {
    fn describe(&self) -> String {
        "upstream test table".into()
    }
    fn config_map(&self, _: &str, _: &str) -> Lookup {
        Lookup::Missing
    }
    fn secret(&self, _: &str, _: &str) -> Lookup {
        Lookup::Missing
    }
    fn namespace_labels(&self, _: &str) -> Option<BTreeMap<String, String>> {
        Some(BTreeMap::new())
    }
    fn limit_ranges(&self, _: &str) -> Option<Vec<Arc<LimitRangeSpec>>> {
        Some(self.0.clone())
    }
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct Resources {
    #[serde(default)]
    r: Map<String, Value>,
    #[serde(default)]
    l: Map<String, Value>,
}

impl Resources {
    fn to_json(&self) -> Value {
        let mut out = Map::new();
        if !self.r.is_empty() {
            out.insert("requests".into(), Value::Object(self.r.clone()));
        }
        if !self.l.is_empty() {
            out.insert("limits".into(), Value::Object(self.l.clone()));
        }
        Value::Object(out)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PodShape {
    name: String,
    containers: usize,
    resources: Resources,
    #[serde(default)]
    init: Vec<Resources>,
    sidecar: Option<Resources>,
    pod_resources: Option<Resources>,
}

impl PodShape {
    /// upstream's validPod / validPodInit / withRestartableInitContainer.
    fn spec(&self) -> Value {
        let container = |i: usize, resources: &Resources| json!({"name": format!("foo-{i}"), "image": format!("foo:V{i}"), "resources": resources.to_json()});
        let containers: Vec<Value> = (0..self.containers)
            .map(|i| container(i, &self.resources))
            .collect();
        let mut init: Vec<Value> = self
            .init
            .iter()
            .enumerate()
            .map(|(i, r)| container(i, r))
            .collect();
        if let Some(sidecar) = &self.sidecar {
            let mut c = container(init.len(), sidecar);
            c["restartPolicy"] = json!("Always");
            init.push(c);
        }
        let mut spec = json!({"containers": containers});
        if !init.is_empty() {
            spec["initContainers"] = Value::Array(init);
        }
        if let Some(pod) = &self.pod_resources {
            spec["resources"] = pod.to_json();
        }
        spec
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ValidateCase {
    #[serde(flatten)]
    pod: PodShape,
    range: Option<Value>,
    ranges: Option<Vec<Value>>,
    #[serde(default)]
    deny: Vec<String>,
    /// Where releases before 1.38 (milli-unit comparisons) differ: `allow`, or the violations.
    milli: Option<Milli>,
    /// Where 1.26 (also `sum` for pod totals) differs from those.
    v126: Option<Milli>,
    pod_level: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
enum Milli {
    Outcome(String),
    Deny(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MutateCase {
    #[serde(flatten)]
    pod: PodShape,
    expect: BTreeMap<String, Value>,
    annotation: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MutateTable {
    ranges: Vec<Value>,
    cases: Vec<MutateCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    validate: Vec<ValidateCase>,
    mutate: MutateTable,
}

fn table() -> Table {
    let text =
        std::fs::read_to_string(root().join("tests/it/data/upstream-limitranger.yaml")).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

fn ranges(items: Vec<Value>) -> Ranges {
    Ranges(
        items
            .into_iter()
            .map(|item| Arc::new(serde_json::from_value(json!({"limits": [item]})).unwrap()))
            .collect(),
    )
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Pod,
    Deployment,
}

fn object(kind: Kind, name: &str, spec: Value) -> Value {
    match kind {
        Kind::Pod => json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "test"}, "spec": spec}),
        Kind::Deployment => json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "test"},
            "spec": {"selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}}),
    }
}

fn pod_spec(kind: Kind, object: &Value) -> &Value {
    match kind {
        Kind::Pod => &object["spec"],
        Kind::Deployment => &object["spec"]["template"]["spec"],
    }
}

fn policy(version: &str, pod_level: &str) -> confgate::policy::PolicySet {
    policies(&format!(
        "apiVersion: confgate.dev/v1alpha1\nkind: Policy\nmetadata: {{name: lr}}\nspec:\n  type: limitrange-defaults\n  settings: {{fromNamespaceLimitRanges: true, kubernetesVersion: {version:?}, podLevelResources: {pod_level}}}\n"
    ))
}

/// Upstream's Admit then Validate: the mutation's patch applied, then judged.
fn admit(
    state: Ranges,
    set: &confgate::policy::PolicySet,
    review: &Review,
) -> (Value, Vec<String>) {
    let engine = confgate::engine::Engine::new(Arc::new(state));
    let mutated = engine.evaluate(set, review, Phase::Mutate, None).unwrap();
    assert!(mutated.denials.is_empty(), "{:?}", mutated.denials);
    let object = apply(review.object.as_ref().unwrap(), &mutated.patch);
    let mut judged = review.clone();
    judged.object = Some(object.clone());
    let validated = engine
        .evaluate(set, &judged, Phase::Validate, None)
        .unwrap();
    let violations = validated
        .denials
        .iter()
        .flat_map(|d| d.strip_prefix("lr: ").unwrap_or(d).split("; "))
        .map(str::to_owned)
        .collect();
    (object, violations)
}

#[test]
fn upstream_validation_tables_as_pods_and_templates_as_three_releases() {
    let mut checked = 0;
    for case in table().validate {
        let items = case
            .ranges
            .clone()
            .or_else(|| case.range.clone().map(|r| vec![r]))
            .unwrap();
        let pod_level = case.pod_level.as_deref().unwrap_or("auto");
        for version in ["1.38", "1.33", "1.26"] {
            let set = policy(version, pod_level);
            let older = |o: &Option<Milli>| match o {
                Some(Milli::Outcome(outcome)) => {
                    assert_eq!(outcome, "allow", "{}", case.pod.name);
                    Some(Vec::new())
                }
                Some(Milli::Deny(violations)) => Some(violations.clone()),
                None => None,
            };
            let expected = match version {
                "1.26" => older(&case.v126).or_else(|| older(&case.milli)),
                "1.33" => older(&case.milli),
                _ => None,
            }
            .unwrap_or_else(|| case.deny.clone());
            for kind in [Kind::Pod, Kind::Deployment] {
                let review = create_review(object(kind, &case.pod.name, case.pod.spec()));
                let (_, violations) = admit(ranges(items.clone()), &set, &review);
                assert_eq!(
                    violations, expected,
                    "{} ({kind:?}, {version})",
                    case.pod.name
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 600, "{checked} runs");
}

#[test]
fn upstream_defaulting_tables_as_pods_and_templates() {
    let table = table().mutate;
    for case in table.cases {
        for kind in [Kind::Pod, Kind::Deployment] {
            let review = create_review(object(kind, &case.pod.name, case.pod.spec()));
            let set = policy("auto", "auto");
            let engine = confgate::engine::Engine::new(Arc::new(ranges(table.ranges.clone())));
            let decision = engine.evaluate(&set, &review, Phase::Mutate, None).unwrap();
            let object = apply(review.object.as_ref().unwrap(), &decision.patch);
            let spec = pod_spec(kind, &object);
            let mut got = BTreeMap::new();
            for (list, prefix) in [("containers", ""), ("initContainers", "init/")] {
                for c in spec[list].as_array().into_iter().flatten() {
                    got.insert(
                        format!("{prefix}{}", c["name"].as_str().unwrap()),
                        c["resources"].clone(),
                    );
                }
            }
            assert_eq!(got, case.expect, "{} ({kind:?})", case.pod.name);
            let meta = match kind {
                Kind::Pod => &object["metadata"],
                Kind::Deployment => &object["spec"]["template"]["metadata"],
            };
            assert_eq!(
                meta["annotations"]["confgate.dev/limitrange-defaults"].as_str(),
                case.annotation.as_deref(),
                "{} ({kind:?})",
                case.pod.name
            );
            // A second pass adds nothing.
            let mut again = review.clone();
            again.object = Some(object.clone());
            let second = engine.evaluate(&set, &again, Phase::Mutate, None).unwrap();
            assert!(
                second.patch.0.is_empty(),
                "{}: {:?}",
                case.pod.name,
                second.patch
            );
        }
    }
}

/// TestLimitRangerAdmitPod's other rows: Pod updates are not judged (a Pod's containers cannot
/// change), nor is anything being deleted; a Deployment's template can change, so its update is.
#[test]
fn pod_updates_and_terminating_objects_are_not_judged() {
    let no_defaults = || {
        ranges(vec![
            json!({"type": "Pod", "max": {"cpu": "200m", "memory": "4Gi"}, "min": {"cpu": "50m", "memory": "2Mi"}}),
            json!({"type": "Container", "max": {"cpu": "100m", "memory": "2Gi"}, "min": {"cpu": "25m", "memory": "1Mi"}}),
        ])
    };
    let set = policy("auto", "auto");
    let spec = json!({"containers": [{"name": "foo-0", "image": "foo:V0", "resources": {}}]});
    for kind in [Kind::Pod, Kind::Deployment] {
        let created = create_review(object(kind, "testPod", spec.clone()));
        let (_, on_create) = admit(no_defaults(), &set, &created);
        assert!(!on_create.is_empty(), "{kind:?}: denied on create");

        let mut update = created.clone();
        update.request.operation = kube::core::admission::Operation::Update;
        update.old_object = created.object.clone();
        let (_, on_update) = admit(no_defaults(), &set, &update);
        assert_eq!(
            on_update.is_empty(),
            kind == Kind::Pod,
            "{kind:?}: judged on update: {on_update:?}"
        );

        let mut terminating = update.clone();
        let mut old = created.object.clone().unwrap();
        old["metadata"]["deletionTimestamp"] = json!("2026-11-23T00:00:00Z");
        terminating.old_object = Some(old.clone());
        terminating.object = Some(old);
        let (_, while_terminating) = admit(no_defaults(), &set, &terminating);
        assert_eq!(while_terminating, Vec::<String>::new(), "{kind:?}");
    }
}
