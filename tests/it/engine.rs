//! The engine with small policies defined here: aggregation, actions, onError, panics, and one
//! patch for several mutators.

use crate::common::*;
use confgate::cluster::Standalone;
use confgate::engine::{Engine, Outcome};
use confgate::policy::{
    Capabilities, Context, Findings, Phase, Policy, PolicyError, Registry, load_str,
};
use serde_json::{Value, json};
use std::sync::Arc;

struct Label(&'static str, &'static str);
impl Policy for Label {
    fn capabilities(&self) -> Capabilities {
        Capabilities::Mutate
    }
    fn mutate(&self, _: &Context, object: &mut Value, _: &mut Findings) -> Result<(), PolicyError> {
        object["metadata"]["labels"][self.0] = json!(self.1);
        Ok(())
    }
}

struct Deny(&'static str);
impl Policy for Deny {
    fn capabilities(&self) -> Capabilities {
        Capabilities::Validate
    }
    fn validate(&self, _: &Context, _: &Value, out: &mut Findings) -> Result<(), PolicyError> {
        out.violation(self.0);
        Ok(())
    }
}

struct Broken;
impl Policy for Broken {
    fn capabilities(&self) -> Capabilities {
        Capabilities::Both
    }
    fn validate(&self, _: &Context, _: &Value, _: &mut Findings) -> Result<(), PolicyError> {
        Err(PolicyError::Unavailable("backend gone".into()))
    }
    fn mutate(&self, _: &Context, object: &mut Value, _: &mut Findings) -> Result<(), PolicyError> {
        object["metadata"]["labels"]["half"] = json!("done");
        let items: Vec<u8> = Vec::new();
        let _ = items[usize::from(object["spec"].is_object())];
        Ok(())
    }
}

fn registry() -> Registry {
    let mut r = Registry::empty();
    r.register("label-a", |_| Ok(Box::new(Label("a", "1"))))
        .register("label-b", |_| Ok(Box::new(Label("b/x", "2"))))
        .register("deny", |_| Ok(Box::new(Deny("always"))))
        .register("broken", |_| Ok(Box::new(Broken)));
    r
}

fn doc(name: &str, kind: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: confgate.dev/v1alpha1\nkind: Policy\nmetadata: {{name: {name}}}\nspec:\n  type: {kind}\n{extra}"
    )
}

fn engine() -> Engine {
    Engine::new(Arc::new(Standalone))
}

#[test]
fn mutators_are_diffed_into_one_minimal_patch() {
    let set = load_str(
        "t.yaml",
        &(doc("one", "label-a", "") + &doc("two", "label-b", "")),
        &registry(),
    )
    .unwrap();
    let review = fixture("create-pod-mynginx");
    let decision = engine()
        .evaluate(&set, &review, Phase::Mutate, None)
        .unwrap();
    assert_eq!(
        serde_json::to_value(&decision.patch).unwrap(),
        json!([
            {"op": "add", "path": "/metadata/labels/a", "value": "1"},
            {"op": "add", "path": "/metadata/labels/b~1x", "value": "2"},
        ])
    );
    let patched = apply(review.object.as_ref().unwrap(), &decision.patch);
    assert_eq!(
        patched["metadata"]["labels"],
        json!({"run": "mynginx", "a": "1", "b/x": "2"})
    );
}

#[test]
fn every_violation_from_every_policy_is_reported_once() {
    let set = load_str(
        "t.yaml",
        &(doc("first", "deny", "") + &doc("second", "deny", "")),
        &registry(),
    )
    .unwrap();
    let decision = engine()
        .evaluate(&set, &fixture("create-pod-mynginx"), Phase::Validate, None)
        .unwrap();
    assert_eq!(decision.message(), "first: always\nsecond: always");
    let response = decision.to_response(&fixture("create-pod-mynginx").request);
    assert!(!response.allowed);
    assert_eq!(response.result.code, 403);
    assert_eq!(response.result.reason, "Forbidden");
}

#[test]
fn errors_follow_on_error_and_panics_are_contained() {
    let review = fixture("create-pod-mynginx");
    let deny = load_str(
        "t.yaml",
        &doc("b", "broken", "  onError: Deny\n"),
        &registry(),
    )
    .unwrap();
    let decision = engine()
        .evaluate(&deny, &review, Phase::Validate, None)
        .unwrap();
    assert_eq!(decision.denials, vec!["b: internal error: backend gone"]);
    assert_eq!(
        decision.verdicts[0].outcome,
        Outcome::Error { denied: true }
    );
    let mutate = engine()
        .evaluate(&deny, &review, Phase::Mutate, None)
        .unwrap();
    assert!(
        mutate.denials[0].starts_with("b: internal error: policy panicked: index out of bounds"),
        "{:?}",
        mutate.denials
    );
    assert!(mutate.patch.0.is_empty());

    let allow = load_str(
        "t.yaml",
        &(doc("b", "broken", "  onError: Allow\n") + &doc("a", "label-a", "")),
        &registry(),
    )
    .unwrap();
    let decision = engine()
        .evaluate(&allow, &review, Phase::Mutate, None)
        .unwrap();
    assert!(decision.allowed());
    // The broken mutator's half-done change is dropped; the next mutator's is kept.
    assert_eq!(
        serde_json::to_value(&decision.patch).unwrap(),
        json!([{"op": "add", "path": "/metadata/labels/a", "value": "1"}])
    );
    assert!(
        decision.warnings[0].starts_with("b: not evaluated (internal error: policy panicked"),
        "{:?}",
        decision.warnings
    );
}

#[test]
fn a_denying_mutation_call_sends_no_patch() {
    struct MutateAndDeny;
    impl Policy for MutateAndDeny {
        fn capabilities(&self) -> Capabilities {
            Capabilities::Mutate
        }
        fn mutate(
            &self,
            _: &Context,
            object: &mut Value,
            out: &mut Findings,
        ) -> Result<(), PolicyError> {
            object["metadata"]["labels"]["x"] = json!("y");
            out.violation("no");
            Ok(())
        }
    }
    let mut r = registry();
    r.register("mad", |_| Ok(Box::new(MutateAndDeny)));
    let set = load_str("t.yaml", &doc("m", "mad", ""), &r).unwrap();
    let decision = engine()
        .evaluate(&set, &fixture("create-pod-mynginx"), Phase::Mutate, None)
        .unwrap();
    assert!(!decision.allowed());
    assert!(decision.patch.0.is_empty());
}

#[test]
fn match_rules_select_policies() {
    let set = load_str(
        "t.yaml",
        &doc(
            "only-ctl",
            "deny",
            "  match: {namespaces: [ctl], kinds: [Pod]}\n",
        ),
        &registry(),
    )
    .unwrap();
    let shop = engine()
        .evaluate(&set, &fixture("create-pod-mynginx"), Phase::Validate, None)
        .unwrap();
    assert!(shop.allowed());
    assert_eq!(shop.verdicts[0].outcome, Outcome::Skipped);
    let ctl = engine()
        .evaluate(
            &set,
            &fixture("create-pod-generatename-from-replicaset"),
            Phase::Validate,
            None,
        )
        .unwrap();
    assert!(!ctl.allowed());
    let deployment = engine()
        .evaluate(
            &set,
            &fixture("create-deployment-bare"),
            Phase::Validate,
            None,
        )
        .unwrap();
    assert!(deployment.allowed());
}

#[test]
fn delete_is_evaluated_only_by_policies_that_handle_it() {
    struct OnDelete;
    impl Policy for OnDelete {
        fn capabilities(&self) -> Capabilities {
            Capabilities::Validate
        }
        fn extra_operations(&self) -> &'static [kube::core::admission::Operation] {
            &[kube::core::admission::Operation::Delete]
        }
        fn validate(
            &self,
            _: &Context,
            object: &Value,
            out: &mut Findings,
        ) -> Result<(), PolicyError> {
            out.violation(format!(
                "deleting {}",
                object["metadata"]["name"].as_str().unwrap_or_default()
            ));
            Ok(())
        }
    }
    let mut r = registry();
    r.register("on-delete", |_| Ok(Box::new(OnDelete)));
    let review = fixture("delete-pod-mynginx");
    let default_ops = load_str("t.yaml", &doc("d", "on-delete", ""), &r).unwrap();
    assert!(
        engine()
            .evaluate(&default_ops, &review, Phase::Validate, None)
            .unwrap()
            .allowed()
    );
    let with_delete = load_str(
        "t.yaml",
        &doc("d", "on-delete", "  match: {operations: [DELETE]}\n"),
        &r,
    )
    .unwrap();
    let decision = engine()
        .evaluate(&with_delete, &review, Phase::Validate, None)
        .unwrap();
    assert_eq!(decision.denials, vec!["d: deleting mynginx"]);
}

/// Why each policy was skipped, by policy name (empty when none was).
fn skip_reasons(decision: &confgate::engine::Decision) -> Vec<(String, String)> {
    decision
        .verdicts
        .iter()
        .filter(|v| v.outcome == Outcome::Skipped)
        .map(|v| (v.policy.clone(), v.violations.join("; ")))
        .collect()
}

#[test]
fn objects_made_by_a_judged_controller_are_not_judged_again() {
    let engine = crate::common::engine(fixture_cluster());
    let pod = fixture("create-pod-generatename-from-replicaset");
    let owner = pod.object.as_ref().unwrap()["metadata"]["ownerReferences"][0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let set = policies(
        "apiVersion: confgate.dev/v1alpha1\nkind: Policy\nmetadata: {name: refs}\nspec: {type: require-config-keys}\n---\napiVersion: confgate.dev/v1alpha1\nkind: Policy\nmetadata: {name: pods-only}\nspec: {type: require-config-keys, match: {kinds: [Pod]}}\n",
    );
    let decision = evaluate(&engine, &set, &pod, Phase::Validate);
    // `refs` judges ReplicaSet templates, so the ReplicaSet's Pod is skipped; `pods-only`
    // judges no template, so it still looks at every Pod.
    assert_eq!(
        skip_reasons(&decision),
        vec![(
            "refs".to_owned(),
            format!("made by ReplicaSet {owner:?}, whose pod template is judged")
        )]
    );
    assert!(
        decision
            .verdicts
            .iter()
            .any(|v| v.policy == "pods-only" && v.outcome == Outcome::Passed)
    );
}

#[test]
fn updates_of_an_object_being_deleted_are_never_judged() {
    // A terminating Pod whose ConfigMap is gone: removing its finalizer must go through.
    let engine = crate::common::engine(fixture_cluster());
    let set = policies(
        "apiVersion: confgate.dev/v1alpha1\nkind: Policy\nmetadata: {name: refs}\nspec: {type: require-config-keys, settings: {onlyNewViolations: false}}\n",
    );
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "leaving", "namespace": "shop", "finalizers": ["example.com/hold"],
                     "deletionTimestamp": "2026-11-23T05:00:00Z"},
        "spec": {"containers": [{"name": "app", "image": "nginx",
                 "envFrom": [{"configMapRef": {"name": "gone"}}]}]}
    });
    let mut without_finalizer = pod.clone();
    without_finalizer["metadata"]["finalizers"] = json!([]);
    let mut review = create_review(without_finalizer);
    review.request.operation = kube::core::admission::Operation::Update;
    review.old_object = Some(pod.clone());
    let decision = evaluate(&engine, &set, &review, Phase::Validate);
    assert!(decision.allowed());
    assert_eq!(
        skip_reasons(&decision),
        vec![("refs".to_owned(), "the object is being deleted".to_owned())]
    );
    // The same object, not being deleted, is denied.
    let mut alive = pod;
    alive["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("deletionTimestamp");
    let mut review = create_review(alive.clone());
    review.request.operation = kube::core::admission::Operation::Update;
    review.old_object = Some(alive);
    assert!(!evaluate(&engine, &set, &review, Phase::Validate).allowed());
}
