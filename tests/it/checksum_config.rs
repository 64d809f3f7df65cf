//! `checksum-config`: the documented encoding, computed here independently from the raw cluster
//! values; the checksum changes exactly when referenced configuration changes.

use crate::common::*;
use confgate::policy::Phase;
use serde_json::json;
use sha2::{Digest, Sha256};

const CHECKSUM: &str = r#"
apiVersion: confgate.dev/v1alpha1
kind: Policy
metadata: {name: sum}
spec:
  type: checksum-config
"#;

fn with_settings(settings: &str) -> confgate::policy::PolicySet {
    policies(&format!("{CHECKSUM}  settings: {settings}\n"))
}

fn hex_sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn stamp(
    state: confgate::cluster::static_state::StaticState,
    set: &confgate::policy::PolicySet,
    name: &str,
) -> (confgate::engine::Decision, Option<String>) {
    let review = fixture(name);
    let (decision, patched) = mutate_idempotent(&engine(state), set, &review);
    let value = patched["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        .as_str()
        .map(str::to_owned);
    (decision, value)
}

const CONFIG_YAML: &str = "autoSaveInterval: 60\nbatchSize: 128\nprotocols:\n  - http\n  - https\n";

#[test]
fn stamps_the_documented_encoding() {
    // web: envFrom app-config (every key), keyRef DATABASE_URL, volume items config.yaml,
    // secretKeyRef app-secret API_KEY.
    let text = format!(
        "configmap app-config DATABASE_URL {}\nconfigmap app-config LOG_LEVEL {}\nconfigmap app-config config.yaml {}\nsecret app-secret API_KEY {}\n",
        hex_sha(b"postgres://db.shop.svc:5432/shop"),
        hex_sha(b"debug"),
        hex_sha(CONFIG_YAML.as_bytes()),
        hex_sha(b"s3cr3t-value"),
    );
    let (_, value) = stamp(
        fixture_cluster(),
        &policies(CHECKSUM),
        "create-deployment-web",
    );
    assert_eq!(value.unwrap(), hex_sha(text.as_bytes()));
}

#[test]
fn selects_only_referenced_keys_and_marks_missing_objects() {
    // cache: projected items LOG_LEVEL of app-config, whole secret volume app-secret, and an
    // optional projected secret (the same secret). Existing annotations are kept.
    let text = format!(
        "configmap app-config LOG_LEVEL {}\nsecret app-secret API_KEY {}\nsecret app-secret magicWord {}\n",
        hex_sha(b"debug"),
        hex_sha(b"s3cr3t-value"),
        hex_sha(b"xyzzy")
    );
    let review = fixture("create-statefulset-cache");
    let (_, patched) = mutate_idempotent(&engine(fixture_cluster()), &policies(CHECKSUM), &review);
    let annotations = &patched["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["checksum/config"],
        json!(hex_sha(text.as_bytes()))
    );
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    // log-agent: an optional envFrom of a ConfigMap that does not exist is hashed as missing, silently.
    let (decision, value) = stamp(
        fixture_cluster(),
        &policies(CHECKSUM),
        "create-daemonset-log-agent",
    );
    let mut expected = String::new();
    for (k, v) in [
        ("DATABASE_URL", "postgres://db.shop.svc:5432/shop"),
        ("LOG_LEVEL", "debug"),
        ("config.yaml", CONFIG_YAML),
    ] {
        expected.push_str(&format!(
            "configmap app-config {k} {}\n",
            hex_sha(v.as_bytes())
        ));
    }
    expected.push_str("configmap missing-config missing\n");
    expected.push_str(&format!(
        "secret app-secret API_KEY {}\nsecret app-secret magicWord {}\n",
        hex_sha(b"s3cr3t-value"),
        hex_sha(b"xyzzy")
    ));
    assert_eq!(value.unwrap(), hex_sha(expected.as_bytes()));
    assert!(decision.warnings.is_empty(), "{:?}", decision.warnings);
}

#[test]
fn changes_exactly_when_referenced_configuration_changes() {
    let set = policies(CHECKSUM);
    let info = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app-config, namespace: shop}\ndata: {DATABASE_URL: \"postgres://db.shop.svc:5432/shop\", LOG_LEVEL: info, config.yaml: \"x\"}\n";
    let debug = info.replace("LOG_LEVEL: info", "LOG_LEVEL: debug");
    let other_db = info.replace("5432/shop", "5432/other");
    let cache = |state| stamp(state, &set, "create-statefulset-cache").1.unwrap();
    // cache references only LOG_LEVEL of app-config.
    assert_ne!(cache(cluster_with(info)), cache(cluster_with(&debug)));
    assert_eq!(cache(cluster_with(info)), cache(cluster_with(&other_db)));
    // web takes every key through envFrom: any change rolls it.
    let web = |state| stamp(state, &set, "create-deployment-web").1.unwrap();
    assert_ne!(web(cluster_with(info)), web(cluster_with(&other_db)));
    // A Secret value change rolls it too; with includeSecrets: false it does not.
    let rotated = "apiVersion: v1\nkind: Secret\nmetadata: {name: app-secret, namespace: shop}\nstringData: {API_KEY: rotated, magicWord: xyzzy}\n";
    assert_ne!(web(fixture_cluster()), web(cluster_with(rotated)));
    let no_secrets = with_settings("{includeSecrets: false}");
    let web_no_secrets = |state| {
        stamp(state, &no_secrets, "create-deployment-web")
            .1
            .unwrap()
    };
    assert_eq!(
        web_no_secrets(fixture_cluster()),
        web_no_secrets(cluster_with(rotated))
    );
}

#[test]
fn reapplying_an_unchanged_workload_does_not_patch() {
    let engine = engine(fixture_cluster());
    let set = policies(CHECKSUM);
    let (_, stamped) = mutate_idempotent(&engine, &set, &fixture("create-deployment-web"));
    // kubectl apply of the same manifest: the apiserver merges it into the stored object, which
    // carries the annotation; confgate computes the same value and sends no patch.
    let mut update = fixture("update-deployment-web");
    let mut object = update.object.take().unwrap();
    object["spec"]["template"]["metadata"]["annotations"] =
        stamped["spec"]["template"]["metadata"]["annotations"].clone();
    update.object = Some(object);
    assert!(
        evaluate(&engine, &set, &update, Phase::Mutate)
            .patch
            .0
            .is_empty()
    );
}

#[test]
fn missing_required_reference_is_hashed_as_missing_with_a_warning() {
    let state = cluster_without(&["Secret/shop/app-secret"]);
    let (decision, value) = stamp(state, &policies(CHECKSUM), "create-deployment-web");
    assert!(value.is_some());
    assert_eq!(
        decision.warnings,
        vec![r#"sum: secret "shop/app-secret" does not exist; the checksum counts it as missing"#]
    );
}

#[test]
fn leaves_the_annotation_alone_when_configuration_cannot_be_read() {
    let engine = confgate::engine::Engine::new(std::sync::Arc::new(confgate::cluster::Standalone));
    let decision = evaluate(
        &engine,
        &policies(CHECKSUM),
        &fixture("create-deployment-web"),
        Phase::Mutate,
    );
    assert!(decision.patch.0.is_empty());
    assert_eq!(
        decision.warnings,
        vec![
            r#"sum: checksum/config not updated: configmap "shop/app-config" could not be read: no cluster connection (standalone mode)"#
        ]
    );
}

#[test]
fn kinds_and_annotation_are_configurable() {
    let set = with_settings("{kinds: [CronJob], annotation: example.com/config-hash}");
    let review = fixture("create-cronjob-demo-cron");
    let (_, patched) = mutate_idempotent(&engine(fixture_cluster()), &set, &review);
    let text = format!("configmap app-config LOG_LEVEL {}\n", hex_sha(b"debug"));
    assert_eq!(
        patched["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["annotations"]["example.com/config-hash"],
        json!(hex_sha(text.as_bytes()))
    );
    // Not stamped by default: a CronJob does not roll anything.
    assert!(
        evaluate(
            &engine(fixture_cluster()),
            &policies(CHECKSUM),
            &review,
            Phase::Mutate
        )
        .patch
        .0
        .is_empty()
    );
    // A workload without references gets no annotation.
    assert!(
        evaluate(
            &engine(fixture_cluster()),
            &policies(CHECKSUM),
            &fixture("create-deployment-bare"),
            Phase::Mutate
        )
        .patch
        .0
        .is_empty()
    );
}

#[test]
fn patch_escapes_the_slash_in_the_annotation_key() {
    let decision = evaluate(
        &engine(fixture_cluster()),
        &policies(CHECKSUM),
        &fixture("create-statefulset-cache"),
        Phase::Mutate,
    );
    let patch = serde_json::to_value(&decision.patch).unwrap();
    assert_eq!(patch[0]["op"], "add");
    assert_eq!(
        patch[0]["path"],
        "/spec/template/metadata/annotations/checksum~1config"
    );
}

#[test]
fn rejects_invalid_settings_with_the_field() {
    for (settings, field) in [
        ("{kinds: [Service]}", "spec.settings.kinds[0]"),
        ("{annotation: \"bad key!\"}", "spec.settings.annotation"),
        ("{includeSecrets: maybe}", "spec.settings.includeSecrets"),
    ] {
        let text = format!("{CHECKSUM}  settings: {settings}\n");
        let err =
            confgate::policy::load_str("p.yaml", &text, &confgate::policy::Registry::builtin())
                .unwrap_err();
        assert_eq!(err.0[0].field, field, "{settings}: {err}");
    }
}
