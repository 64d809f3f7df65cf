//! `require-config-keys` on the captured reviews, with the fixture cluster and variations of it.

use crate::common::*;
use confgate::cluster::Standalone;
use confgate::engine::Engine;
use confgate::policy::Phase;
use serde_json::json;
use std::sync::Arc;

const REFS: &str = r#"
apiVersion: confgate.dev/v1alpha1
kind: Policy
metadata: {name: refs}
spec:
  type: require-config-keys
"#;

fn policy(settings: &str) -> confgate::policy::PolicySet {
    policies(&format!("{REFS}  settings: {settings}\n"))
}

fn validate(
    state: confgate::cluster::static_state::StaticState,
    set: &confgate::policy::PolicySet,
    name: &str,
) -> confgate::engine::Decision {
    evaluate(&engine(state), set, &fixture(name), Phase::Validate)
}

#[test]
fn accepts_every_fixture_when_the_cluster_has_the_config() {
    let set = policy("{}");
    for name in [
        "create-deployment-web",
        "create-statefulset-cache",
        "create-daemonset-log-agent",
        "create-job-queue-worker",
        "create-cronjob-demo-cron",
    ] {
        let decision = validate(fixture_cluster(), &set, name);
        assert!(decision.allowed(), "{name}: {:?}", decision.denials);
        assert!(
            decision.warnings.is_empty(),
            "{name}: {:?}",
            decision.warnings
        );
    }
}

#[test]
fn rejects_missing_secret_naming_container_and_reference() {
    let decision = validate(
        cluster_without(&["Secret/shop/app-secret"]),
        &policy("{secretGraceSeconds: 0}"),
        "create-deployment-web",
    );
    assert_eq!(
        decision.denials,
        vec![r#"refs: container "web": env API_KEY: secret "shop/app-secret" not found"#]
    );
    assert_eq!(decision.recheck_after, None);
}

#[test]
fn a_new_reader_waits_for_a_missing_secret_and_is_judged_again_after_the_grace() {
    let state = || cluster_without(&["Secret/shop/app-secret"]);
    let decision = validate(state(), &policy("{}"), "create-deployment-web");
    assert!(decision.allowed(), "{:?}", decision.denials);
    assert_eq!(
        decision.warnings,
        vec![
            r#"refs: container "web": env API_KEY: secret "shop/app-secret" not found yet, and nothing promises it; its reader may wait 30s for it (a Secret is often created just after its reader), then it is judged again"#
        ]
    );
    assert_eq!(
        decision.recheck_after,
        Some(std::time::Duration::from_secs(30))
    );
    // The same workload judged (as the audit and the follow-up do) once it is older than the
    // grace: the Secret is missing.
    let mut aged = fixture("create-deployment-web");
    let created = "2026-01-01T00:00:00Z";
    aged.object.as_mut().unwrap()["metadata"]["creationTimestamp"] = json!(created);
    let at = |secs: u64| {
        std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600 + secs)
    };
    let judge = |secs| {
        evaluate(
            &engine(state()).at(at(secs)),
            &policy("{secretGraceSeconds: 60}"),
            &aged,
            Phase::Validate,
        )
    };
    assert!(judge(59).allowed());
    assert_eq!(
        judge(60).denials,
        vec![r#"refs: container "web": env API_KEY: secret "shop/app-secret" not found"#]
    );
    // An UPDATE of that old workload that starts reading the Secret waits for it too.
    let mut update = fixture("update-deployment-web");
    update.old_object.as_mut().unwrap()["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array_mut()
        .unwrap()
        .truncate(1);
    let decision = evaluate(&engine(state()), &policy("{}"), &update, Phase::Validate);
    assert!(decision.allowed(), "{:?}", decision.denials);
    assert_eq!(
        decision.recheck_after,
        Some(std::time::Duration::from_secs(30))
    );
}

#[test]
fn rejects_missing_keys_in_env_and_volume_items() {
    let state = cluster_with(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app-config, namespace: shop}\ndata: {LOG_LEVEL: info}\n",
    );
    let decision = validate(state, &policy("{}"), "create-deployment-web");
    assert_eq!(
        decision.denials,
        vec![
            r#"refs: container "web": env DATABASE_URL: configmap "shop/app-config" has no key "DATABASE_URL""#,
            r#"refs: volume "config": configmap "shop/app-config" has no key "config.yaml""#,
        ]
    );
}

#[test]
fn rejects_missing_configmap_for_env_from_and_cronjob_template() {
    let state = cluster_without(&["ConfigMap/shop/app-config"]);
    let web = validate(state, &policy("{}"), "create-deployment-web");
    assert_eq!(
        web.denials,
        vec![
            r#"refs: init container "migrate": envFrom: configmap "shop/app-config" not found"#,
            r#"refs: container "web": env DATABASE_URL: configmap "shop/app-config" not found"#,
            r#"refs: volume "config": configmap "shop/app-config" not found"#,
        ]
    );
    let cron = validate(
        cluster_without(&["ConfigMap/shop/app-config"]),
        &policy("{}"),
        "create-cronjob-demo-cron",
    );
    assert_eq!(
        cron.denials,
        vec![r#"refs: container "cron": env GREETING: configmap "shop/app-config" not found"#]
    );
}

#[test]
fn projected_and_secret_volumes_are_checked_but_optional_sources_never_fail() {
    let decision = validate(
        cluster_without(&["Secret/shop/app-secret"]),
        &policy("{secretGraceSeconds: 0}"),
        "create-statefulset-cache",
    );
    // `projected.sources[1].secret` is optional: only the plain secret volume is a violation.
    assert_eq!(
        decision.denials,
        vec![r#"refs: volume "secret": secret "shop/app-secret" not found"#]
    );
}

#[test]
fn optional_references_pass_unless_forbidden() {
    assert!(
        validate(
            fixture_cluster(),
            &policy("{}"),
            "create-daemonset-log-agent"
        )
        .allowed()
    );
    assert!(validate(fixture_cluster(), &policy("{}"), "create-job-queue-worker").allowed());
    let strict = policy("{forbidOptionalReferences: true}");
    let decision = validate(fixture_cluster(), &strict, "create-daemonset-log-agent");
    assert_eq!(
        decision.denials,
        vec![
            r#"refs: container "fluent-bit": envFrom: reference to secret "shop/app-secret" is optional; optional references hide missing configuration until runtime"#,
            r#"refs: container "fluent-bit": envFrom: reference to configmap "shop/missing-config" is optional; optional references hide missing configuration until runtime"#,
        ]
    );
}

#[test]
fn required_keys_come_from_env_or_the_real_keys_of_env_from() {
    let set = policy("{checkReferences: false, requiredKeys: [DATABASE_URL, API_KEY, LOG_FORMAT]}");
    let decision = validate(fixture_cluster(), &set, "create-daemonset-log-agent");
    assert_eq!(
        decision.denials,
        vec![
            r#"refs: container "fluent-bit": required key LOG_FORMAT is not provided (checked env and envFrom configmap "app-config", secret "app-secret", configmap "missing-config")"#,
        ]
    );
    let worker = validate(
        fixture_cluster(),
        &policy("{requiredKeys: [LOG_LEVEL, DATABASE_URL]}"),
        "create-job-queue-worker",
    );
    assert_eq!(
        worker.denials,
        vec![
            r#"refs: container "worker": required key DATABASE_URL is not provided (checked env)"#
        ]
    );
}

#[test]
fn required_keys_for_any_or_named_containers() {
    // web gets DATABASE_URL from env; the sidecar gets nothing.
    let all = validate(
        fixture_cluster(),
        &policy("{requiredKeys: [DATABASE_URL]}"),
        "create-deployment-web",
    );
    assert_eq!(
        all.denials,
        vec![
            r#"refs: container "sidecar": required key DATABASE_URL is not provided (checked env)"#
        ]
    );
    assert!(
        validate(
            fixture_cluster(),
            &policy("{requiredKeys: [DATABASE_URL], containers: any}"),
            "create-deployment-web"
        )
        .allowed()
    );
    assert!(
        validate(
            fixture_cluster(),
            &policy("{requiredKeys: [DATABASE_URL], containers: [web]}"),
            "create-deployment-web"
        )
        .allowed()
    );
    let none = validate(
        fixture_cluster(),
        &policy("{requiredKeys: [QUEUE_URL], containers: any}"),
        "create-deployment-web",
    );
    assert_eq!(
        none.denials,
        vec![
            r#"refs: required key QUEUE_URL is not provided by any container (checked "web", "sidecar")"#
        ]
    );
}

#[test]
fn env_from_prefix_is_applied() {
    let review = create_review(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "x", "envFrom": [{"prefix": "APP_", "configMapRef": {"name": "app-config"}}]}]}
    }));
    let engine = engine(fixture_cluster());
    let ok = evaluate(
        &engine,
        &policy("{requiredKeys: [APP_LOG_LEVEL]}"),
        &review,
        Phase::Validate,
    );
    assert!(ok.allowed(), "{:?}", ok.denials);
    let bad = evaluate(
        &engine,
        &policy("{requiredKeys: [LOG_LEVEL]}"),
        &review,
        Phase::Validate,
    );
    assert_eq!(
        bad.denials,
        vec![
            r#"refs: container "app": required key LOG_LEVEL is not provided (checked env and envFrom configmap "app-config")"#
        ]
    );
}

#[test]
fn required_objects_must_be_referenced() {
    let set =
        policy("{requiredConfigMaps: [app-config, feature-flags], requiredSecrets: [app-secret]}");
    let decision = validate(fixture_cluster(), &set, "create-job-queue-worker");
    assert_eq!(
        decision.denials,
        vec![
            r#"refs: required configmap "shop/feature-flags" is not referenced by any container or volume"#,
            r#"refs: required secret "shop/app-secret" is not referenced by any container or volume"#,
        ]
    );
}

#[test]
fn warns_on_sub_path_mounts_of_config() {
    let review = create_review(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "x", "volumeMounts": [{"name": "cfg", "mountPath": "/etc/app.yaml", "subPath": "config.yaml"}]}],
                 "volumes": [{"name": "cfg", "configMap": {"name": "app-config"}}]}
    }));
    let decision = evaluate(
        &engine(fixture_cluster()),
        &policy("{warnOnSubPath: true}"),
        &review,
        Phase::Validate,
    );
    assert!(decision.allowed());
    assert_eq!(
        decision.warnings,
        vec![
            r#"refs: container "app": configMap volume "cfg" is mounted at /etc/app.yaml with subPath: it never receives updates"#
        ]
    );
}

#[test]
fn only_new_violations_downgrades_what_the_old_object_already_had() {
    let state = || cluster_without(&["Secret/shop/app-secret"]);
    let review = fixture("update-deployment-web");
    let strict = evaluate(&engine(state()), &policy("{}"), &review, Phase::Validate);
    assert_eq!(strict.denials.len(), 1);
    let lenient = evaluate(
        &engine(state()),
        &policy("{onlyNewViolations: true}"),
        &review,
        Phase::Validate,
    );
    assert!(lenient.allowed());
    assert_eq!(
        lenient.warnings,
        vec![
            r#"refs: container "web": env API_KEY: secret "shop/app-secret" not found (already present before this update)"#
        ]
    );
    // A violation the update introduces still denies.
    let mut introduced = review.clone();
    introduced.object.as_mut().unwrap()["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]
        ["configMapKeyRef"]["key"] = json!("NOPE");
    let decision = evaluate(
        &engine(state()),
        &policy("{onlyNewViolations: true}"),
        &introduced,
        Phase::Validate,
    );
    assert_eq!(
        decision.denials,
        vec![
            r#"refs: container "web": env DATABASE_URL: configmap "shop/app-config" has no key "NOPE""#
        ]
    );
}

#[test]
fn standalone_warns_about_what_it_could_not_check() {
    let engine = Engine::new(Arc::new(Standalone));
    let decision = evaluate(
        &engine,
        &policy("{}"),
        &fixture("create-deployment-web"),
        Phase::Validate,
    );
    assert!(decision.allowed());
    assert_eq!(
        decision.warnings,
        vec![
            r#"refs: configmap "shop/app-config" was not checked: no cluster connection (standalone mode)"#,
            r#"refs: secret "shop/app-secret" was not checked: no cluster connection (standalone mode)"#,
        ]
    );
}

#[test]
fn warn_and_audit_actions_do_not_deny() {
    let state = || cluster_without(&["Secret/shop/app-secret"]);
    let warn = policies(&REFS.replace(
        "  type: require-config-keys",
        "  type: require-config-keys\n  action: Warn\n  settings: {secretGraceSeconds: 0}",
    ));
    let decision = evaluate(
        &engine(state()),
        &warn,
        &fixture("create-deployment-web"),
        Phase::Validate,
    );
    assert!(decision.allowed());
    assert_eq!(
        decision.warnings,
        vec![r#"refs: container "web": env API_KEY: secret "shop/app-secret" not found"#]
    );
    let audit = policies(&REFS.replace(
        "  type: require-config-keys",
        "  type: require-config-keys\n  action: Audit\n  settings: {secretGraceSeconds: 0}",
    ));
    let decision = evaluate(
        &engine(state()),
        &audit,
        &fixture("create-deployment-web"),
        Phase::Validate,
    );
    assert!(decision.allowed());
    assert_eq!(
        decision.audit_annotations["refs/violations"],
        r#"container "web": env API_KEY: secret "shop/app-secret" not found"#
    );
}

#[test]
fn rejects_invalid_settings_with_the_field() {
    for (settings, field) in [
        ("{requiredKeys: [\"A=B\"]}", "spec.settings.requiredKeys[0]"),
        ("{containers: some}", "spec.settings.containers"),
        ("{containers: []}", "spec.settings.containers"),
        ("{checkReferences: false}", "spec.settings"),
        ("{unknownThing: 1}", "spec.settings.unknownThing"),
    ] {
        let text = format!("{REFS}  settings: {settings}\n");
        let err =
            confgate::policy::load_str("p.yaml", &text, &confgate::policy::Registry::builtin())
                .unwrap_err();
        assert_eq!(err.0[0].field, field, "{settings}: {err}");
    }
}
