//! Helpers shared by the integration tests: fixtures, cluster state, policies, patches.

use confgate::admission::{Review, parse_review};
use confgate::cluster::static_state::StaticState;
use confgate::engine::{Decision, Engine};
use confgate::policy::{Phase, PolicySet, Registry, load_dir, load_str};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture_path(name: &str) -> PathBuf {
    root()
        .join("tests/fixtures/admission-reviews")
        .join(format!("{name}.json"))
}

pub fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).unwrap()
}

pub fn fixture(name: &str) -> Review {
    parse_review(&fixture_bytes(name)).unwrap()
}

/// Every fixture name (without `.json`).
pub fn all_fixtures() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("tests/fixtures/admission-reviews"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

pub fn cluster_state_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("tests/fixtures/cluster-state"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// The cluster the fixtures were captured from, after `app-config`'s LOG_LEVEL became `debug`.
pub fn fixture_cluster() -> StaticState {
    let mut state = StaticState::load(&cluster_state_files()).unwrap();
    state
        .add_text(Path::new("log-level-change"), APP_CONFIG_DEBUG)
        .unwrap();
    state
}

/// `app-config` as `update-configmap-app-config` left it.
pub const APP_CONFIG_DEBUG: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: app-config, namespace: shop}
data:
  DATABASE_URL: postgres://db.shop.svc:5432/shop
  LOG_LEVEL: debug
  config.yaml: |
    autoSaveInterval: 60
    batchSize: 128
    protocols:
      - http
      - https
"#;

/// The fixture cluster with extra manifests layered over it (a later object replaces an earlier).
pub fn cluster_with(extra: &str) -> StaticState {
    let mut state = fixture_cluster();
    state.add_text(Path::new("extra"), extra).unwrap();
    state
}

/// The fixture cluster with some objects left out (by `kind/namespace/name`).
pub fn cluster_without(left_out: &[&str]) -> StaticState {
    let mut state = StaticState::default();
    for file in cluster_state_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let docs: Vec<String> = text
            .split("\n---")
            .filter(|doc| {
                let v: Value = serde_saphyr::from_str(doc).unwrap();
                let id = format!(
                    "{}/{}/{}",
                    v["kind"].as_str().unwrap_or_default(),
                    v["metadata"]["namespace"].as_str().unwrap_or_default(),
                    v["metadata"]["name"].as_str().unwrap_or_default()
                );
                !left_out.contains(&id.as_str())
            })
            .map(str::to_owned)
            .collect();
        state.add_text(&file, &docs.join("\n---\n")).unwrap();
    }
    state
}

pub fn shipped_policies() -> PolicySet {
    load_dir(&root().join("policies"), &Registry::builtin()).unwrap()
}

/// The server's state with the shipped policies and the fixture cluster, accepting bodies up to
/// `max_body_bytes`.
pub fn fixture_server_state(max_body_bytes: usize) -> Arc<confgate::server::AppState> {
    confgate::server::AppState::new(
        shipped_policies(),
        Arc::new(fixture_cluster()),
        max_body_bytes,
        false,
    )
}

pub fn policies(yaml: &str) -> PolicySet {
    load_str("test-policies.yaml", yaml, &Registry::builtin()).unwrap()
}

pub fn engine(state: StaticState) -> Engine {
    Engine::new(Arc::new(state))
}

pub fn evaluate(engine: &Engine, set: &PolicySet, review: &Review, endpoint: Phase) -> Decision {
    engine.evaluate(set, review, endpoint, None).unwrap()
}

/// Applies a patch to a copy of the object.
pub fn apply(object: &Value, patch: &json_patch::Patch) -> Value {
    let mut patched = object.clone();
    json_patch::patch(&mut patched, patch).unwrap();
    patched
}

/// A review of `object` (a Pod or workload manifest) as the apiserver would send on CREATE.
pub fn create_review(object: Value) -> Review {
    let wrapped = confgate::admission::wrap_manifest(object, 1).unwrap();
    confgate::admission::review_from_value(wrapped).unwrap()
}

/// Mutates, checks the patch applies and that a second pass over the result adds nothing;
/// returns the decision and the patched object.
pub fn mutate_idempotent(engine: &Engine, set: &PolicySet, review: &Review) -> (Decision, Value) {
    let decision = evaluate(engine, set, review, Phase::Mutate);
    let object = review.object.clone().unwrap();
    let patched = apply(&object, &decision.patch);
    assert!(
        !serde_json::to_string(&decision.patch)
            .unwrap()
            .contains("managedFields"),
        "patches never touch managedFields"
    );
    let mut again = review.clone();
    again.object = Some(patched.clone());
    let second = evaluate(engine, set, &again, Phase::Mutate);
    assert!(
        second.patch.0.is_empty(),
        "second pass must add nothing, got {:?}",
        second.patch
    );
    (decision, patched)
}

/// A generated webhook excludes the control plane and confgate's own namespace, and never
/// names Nodes, Leases, Events, CSRs or a wildcard.
pub fn assert_webhook_is_safe(hook: &Value) {
    let excluded = &hook["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(excluded["key"], "kubernetes.io/metadata.name");
    assert_eq!(excluded["operator"], "NotIn");
    for ns in ["kube-system", "kube-node-lease", "confgate-system"] {
        assert!(
            excluded["values"]
                .as_array()
                .unwrap()
                .contains(&Value::from(ns)),
            "{} does not exclude {ns}",
            hook["name"]
        );
    }
    for rule in hook["rules"].as_array().unwrap() {
        for resource in rule["resources"].as_array().unwrap() {
            let forbidden = [
                "nodes",
                "leases",
                "events",
                "certificatesigningrequests",
                "*",
            ];
            assert!(
                !forbidden.contains(&resource.as_str().unwrap()),
                "{} names {resource}",
                hook["name"]
            );
        }
    }
}
