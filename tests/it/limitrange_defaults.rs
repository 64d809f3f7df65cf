//! `limitrange-defaults`: fidelity to the built-in LimitRanger on the captured Pods, templates
//! that end up like their Pods, validation messages, and settings checks.

use crate::common::*;
use confgate::policy::Phase;
use serde_json::{Value, json};

const NAMESPACE_LR: &str = r#"
apiVersion: confgate.dev/v1alpha1
kind: Policy
metadata: {name: lr}
spec:
  type: limitrange-defaults
  settings: {fromNamespaceLimitRanges: true}
"#;

fn with_settings(settings: &str) -> confgate::policy::PolicySet {
    policies(&format!(
        "apiVersion: confgate.dev/v1alpha1\nkind: Policy\nmetadata: {{name: lr}}\nspec:\n  type: limitrange-defaults\n  settings: {settings}\n"
    ))
}

/// The manifest `kubectl apply` sent, before any defaulting: the last-applied annotation.
fn original_manifest(name: &str) -> Value {
    let object = fixture(name).object.unwrap();
    let text =
        object["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .unwrap();
    serde_json::from_str(text).unwrap()
}

fn resources(spec: &Value) -> Vec<(String, Value)> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|list| spec[list].as_array().cloned().unwrap_or_default())
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["resources"].clone(),
            )
        })
        .collect()
}

#[test]
fn matches_the_real_limitranger_on_the_captured_pods() {
    let engine = engine(fixture_cluster());
    let set = policies(NAMESPACE_LR);
    for name in ["create-pod-nginx-lr", "create-pod-limits-only"] {
        let real = fixture(name).object.unwrap();
        let (_, ours) = mutate_idempotent(&engine, &set, &create_review(original_manifest(name)));
        assert_eq!(
            resources(&ours["spec"]),
            resources(&real["spec"]),
            "{name}: resources"
        );
        assert_eq!(
            ours["metadata"]["annotations"]["confgate.dev/limitrange-defaults"],
            real["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
            "{name}: annotation"
        );
    }
}

#[test]
fn has_nothing_left_to_fill_after_the_builtin_plugin() {
    let engine = engine(fixture_cluster());
    for name in ["create-pod-nginx-lr", "create-pod-limits-only"] {
        let decision = evaluate(
            &engine,
            &policies(NAMESPACE_LR),
            &fixture(name),
            Phase::Mutate,
        );
        assert!(decision.patch.0.is_empty(), "{name}: {:?}", decision.patch);
        assert!(
            evaluate(
                &engine,
                &policies(NAMESPACE_LR),
                &fixture(name),
                Phase::Validate
            )
            .allowed()
        );
    }
}

#[test]
fn mutates_templates_so_they_match_their_pods() {
    // The captured Deployment and Pod `limits-only` share the container `app` (limits only).
    let engine = engine(fixture_cluster());
    let (_, deployment) = mutate_idempotent(
        &engine,
        &policies(NAMESPACE_LR),
        &fixture("create-deployment-limits-only"),
    );
    let pod = fixture("create-pod-limits-only").object.unwrap();
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["resources"],
        pod["spec"]["containers"][0]["resources"]
    );
    // And a Pod made from the defaulted template gets nothing more from the real LimitRanger.
    let mut from_template = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", "namespace": "limited"}});
    from_template["spec"] = deployment["spec"]["template"]["spec"].clone();
    let decision = evaluate(
        &engine,
        &policies(NAMESPACE_LR),
        &create_review(from_template),
        Phase::Mutate,
    );
    assert!(decision.patch.0.is_empty(), "{:?}", decision.patch);
}

#[test]
fn mutates_bare_template_with_namespace_and_configured_defaults() {
    let engine = engine(fixture_cluster());
    let review = create_review(json!({
        "apiVersion": "batch/v1beta1", "kind": "CronJob", "metadata": {"name": "c", "namespace": "limited"},
        "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "job", "image": "x"}]}}}}}
    }));
    let set = with_settings(
        "{fromNamespaceLimitRanges: true, limits: [{type: Container, defaultRequest: {ephemeral-storage: 1Gi}}]}",
    );
    let (_, patched) = mutate_idempotent(&engine, &set, &review);
    let template = &patched["spec"]["jobTemplate"]["spec"]["template"];
    assert_eq!(
        template["spec"]["containers"][0]["resources"],
        json!({
            "limits": {"cpu": "400m", "memory": "512Mi"},
            "requests": {"cpu": "300m", "memory": "256Mi", "ephemeral-storage": "1Gi"}
        })
    );
    // The namespace's LimitRange set everything it could; the configured one then set the rest.
    assert_eq!(
        template["metadata"]["annotations"]["confgate.dev/limitrange-defaults"],
        "LimitRanger plugin set: ephemeral-storage request for container job"
    );
}

#[test]
fn writes_quantities_in_canonical_form_and_never_overwrites() {
    let engine = engine(fixture_cluster());
    let set = with_settings(
        "{limits: [{type: Container, default: {cpu: 0.5, memory: 1073741824}, defaultRequest: {cpu: \"0.25\"}}]}",
    );
    let review = create_review(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "shop"},
        "spec": {"containers": [{"name": "a", "image": "x", "resources": {"limits": {"memory": "256Mi"}}}]}
    }));
    let (_, patched) = mutate_idempotent(&engine, &set, &review);
    assert_eq!(
        patched["spec"]["containers"][0]["resources"],
        json!({
            "limits": {"cpu": "500m", "memory": "256Mi"},
            "requests": {"cpu": "250m", "memory": "256Mi"}
        })
    );
}

#[test]
fn rejects_what_the_limit_range_forbids_with_upstream_messages() {
    let engine = engine(fixture_cluster());
    let review = create_review(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "big", "namespace": "limited"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [
            {"name": "app", "image": "x", "resources": {"limits": {"cpu": "800m"}, "requests": {"memory": "100Mi"}}}]}}}
    }));
    let decision = evaluate(&engine, &policies(NAMESPACE_LR), &review, Phase::Validate);
    assert_eq!(
        decision.denials,
        vec![
            r#"lr: container "app": minimum memory usage per Container is 200Mi, but request is 100Mi"#,
            r#"lr: container "app": maximum cpu usage per Container is 600m, but limit is 800m"#,
        ]
    );
}

#[test]
fn pod_items_check_the_pod_total() {
    let set = with_settings(
        "{limits: [{type: Pod, max: {memory: 1Gi}}, {type: Container, maxLimitRequestRatio: {cpu: 4}}]}",
    );
    let review = create_review(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "shop"},
        "spec": {"containers": [
            {"name": "a", "image": "x", "resources": {"limits": {"cpu": "1", "memory": "768Mi"}, "requests": {"cpu": "100m"}}},
            {"name": "b", "image": "x", "resources": {"limits": {"cpu": "1", "memory": "512Mi"}}}]}
    }));
    let decision = evaluate(&engine(fixture_cluster()), &set, &review, Phase::Validate);
    assert_eq!(
        decision.denials,
        vec![
            "lr: maximum memory usage per Pod is 1Gi, but limit is 1280Mi",
            r#"lr: container "a": cpu max limit to request ratio per Container is 4, but provided ratio is 10.000000"#,
        ]
    );
}

#[test]
fn pod_updates_and_other_kinds_are_left_alone() {
    let engine = engine(fixture_cluster());
    let set = with_settings("{limits: [{type: Container, defaultRequest: {cpu: 100m}}]}");
    let mut update = fixture("create-pod-mynginx");
    update.request.operation = kube::core::admission::Operation::Update;
    update.old_object = update.object.clone();
    assert!(
        evaluate(&engine, &set, &update, Phase::Mutate)
            .patch
            .0
            .is_empty()
    );
    assert!(
        evaluate(
            &engine,
            &set,
            &fixture("create-configmap-app-config"),
            Phase::Mutate
        )
        .patch
        .0
        .is_empty()
    );
}

#[test]
fn standalone_says_namespace_limit_ranges_were_not_applied() {
    let engine = confgate::engine::Engine::new(std::sync::Arc::new(confgate::cluster::Standalone));
    let decision = evaluate(
        &engine,
        &policies(NAMESPACE_LR),
        &fixture("create-deployment-limits-only"),
        Phase::Mutate,
    );
    assert!(decision.patch.0.is_empty());
    assert_eq!(
        decision.warnings,
        vec![
            r#"lr: LimitRanges of namespace "limited" were not applied: no cluster connection (standalone mode)"#
        ]
    );
}

#[test]
fn rejects_invalid_settings_with_the_field() {
    for (settings, field, message) in [
        ("{}", "spec.settings", "set `limits`"),
        (
            "{limits: [{type: PersistentVolumeClaim}]}",
            "spec.settings.limits[0].type",
            "must be Container or Pod",
        ),
        (
            "{limits: [{type: Pod, default: {cpu: 1}}]}",
            "spec.settings.limits[0]",
            "may not be set when type is Pod",
        ),
        (
            "{limits: [{type: Container, min: {cpu: 2}, max: {cpu: 1}}]}",
            "spec.settings.limits[0].min.cpu",
            "must not be greater than max",
        ),
        (
            "{limits: [{type: Container, default: {cpu: 2}, max: {cpu: 1}}]}",
            "spec.settings.limits[0].default.cpu",
            "must not be greater than max",
        ),
        (
            "{limits: [{type: Container, default: {cpu: lots}}]}",
            "spec.settings.limits[0].default.cpu",
            "is not a valid quantity",
        ),
        (
            "{limits: [{type: Container, maxLimitRequestRatio: {cpu: 0.5}}]}",
            "spec.settings.limits[0].maxLimitRequestRatio.cpu",
            "less than 1",
        ),
    ] {
        let text = format!(
            "apiVersion: confgate.dev/v1alpha1\nkind: Policy\nmetadata: {{name: lr}}\nspec:\n  type: limitrange-defaults\n  settings: {settings}\n"
        );
        let err =
            confgate::policy::load_str("p.yaml", &text, &confgate::policy::Registry::builtin())
                .unwrap_err();
        assert_eq!(err.0[0].field, field, "{settings}: {err}");
        assert!(err.0[0].message.contains(message), "{settings}: {err}");
    }
}
