//! The e2e cases, by what they exercise.

mod admission;
mod audit;
mod bench;
mod cluster_state;
mod config_guard;
mod helm_chart;
mod limitranger;
mod manage_webhooks;
mod quota_fit;
mod rollout;
mod secrets_on_their_way;
mod tracing;
mod waves;

use crate::Case;
use std::collections::BTreeMap;

/// Turns `async fn name(cx: Cx)` items into named cases.
macro_rules! cases {
    ($($module:ident :: $name:ident),* $(,)?) => {
        vec![$((stringify!($name), (|cx| Box::pin($module::$name(cx))) as Case)),*]
    };
}

/// Every case, by name.
pub fn all() -> Vec<(&'static str, Case)> {
    cases![
        admission::e2e_generated_registration_applies_and_every_webhook_is_called,
        admission::e2e_kubectl_apply_denial_names_container_reference_and_key,
        admission::e2e_stored_deployment_carries_defaults_and_checksum,
        admission::e2e_server_side_dry_run_is_judged_and_leaves_nothing,
        admission::e2e_reinvoked_after_another_webhook_adds_a_reference,
        admission::e2e_delete_is_reviewed_and_goes_through,
        admission::e2e_controller_created_pods_pass,
        admission::e2e_controller_made_pods_do_not_wait_for_a_down_confgate,
        admission::e2e_finalizer_removal_is_never_blocked,
        helm_chart::e2e_helm_chart_installs_upgrades_and_uninstalls_leaving_nothing,
        helm_chart::e2e_helm_chart_with_the_registration_rendered_by_helm_and_no_webhook_access,
        limitranger::e2e_builtin_limitranger_plus_confgate_equals_builtin_alone,
        limitranger::e2e_confgate_alone_judges_pods_as_the_builtin_limitranger,
        limitranger::e2e_quantities_past_10_pow_24_are_judged_exactly_as_the_apiserver_sends_them,
        quota_fit::e2e_quota_fit_agrees_with_the_resourcequota_plugin,
        quota_fit::e2e_a_deployment_a_quota_would_starve_is_denied_and_without_confgate_it_fails_to_create_pods,
        cluster_state::e2e_live_cache_follows_initial_list_and_watch_events,
        cluster_state::e2e_apiserver_loss_serves_last_cache_reports_staleness_and_recovers,
        cluster_state::e2e_readiness_waits_for_cache_sync,
        cluster_state::e2e_secrets_read_by_name_with_the_shipped_rbac,
        cluster_state::e2e_a_kind_confgate_may_not_list_is_left_out_and_it_still_becomes_ready,
        cluster_state::e2e_review_reads_a_live_cluster_with_a_kubeconfig,
        manage_webhooks::e2e_manage_webhooks_applies_the_generated_registration_and_takes_over,
        config_guard::e2e_config_in_use_keeps_its_keys_and_its_deletion_waits_for_the_last_reader,
        config_guard::e2e_an_unlabelled_app_is_torn_down_in_file_order_by_kubectl_and_kustomize,
        config_guard::e2e_a_teardown_while_confgate_is_down_finishes_when_it_is_back,
        audit::e2e_audit_reports_a_workload_broken_while_confgate_was_down,
        audit::e2e_a_refused_report_stays_in_its_namespace_and_a_restart_sends_no_second_warning,
        rollout::e2e_with_rollouts_off_confgate_works_under_the_rbac_the_chart_renders_for_it,
        rollout::e2e_each_secrets_mode_works_under_the_rbac_the_chart_renders_for_it,
        rollout::e2e_a_changed_consumed_key_rolls_the_workload_once,
        rollout::e2e_an_unconsumed_key_or_an_opted_out_workload_rolls_nothing,
        rollout::e2e_a_config_map_that_opted_out_rolls_none_of_its_readers,
        rollout::e2e_a_named_dependency_rolls_and_reloaded_files_do_not,
        rollout::e2e_an_argo_rollout_is_stamped_and_rolled_when_its_crd_is_installed,
        rollout::e2e_a_restart_rolls_nothing_and_a_change_while_down_rolls_once,
        rollout::e2e_two_replicas_write_one_rollout_per_change,
        rollout::e2e_a_deleted_lease_is_recreated_and_a_standby_takes_over,
        rollout::e2e_a_leader_frozen_past_its_lease_writes_nothing_when_it_resumes,
        rollout::e2e_a_stuck_rollout_does_not_hold_the_fix,
        rollout::e2e_a_deleted_required_config_map_rolls_nothing,
        rollout::e2e_a_missing_required_key_holds_the_rollout_until_it_is_back,
        rollout::e2e_a_config_map_and_its_deployment_applied_together_roll_once,
        rollout::e2e_a_chart_managed_checksum_is_left_alone_and_confgate_stamps_its_own,
        rollout::e2e_a_secret_change_rolls_when_secrets_are_watched,
        rollout::e2e_a_secret_rotation_rolls_without_watching_secrets,
        rollout::e2e_a_statefulset_rolls_and_a_cronjob_stamps_its_next_job,
        waves::e2e_a_bad_edit_of_a_shared_config_map_stops_at_the_first_wave,
        secrets_on_their_way::e2e_a_certificate_and_the_deployment_mounting_its_secret_go_in_in_either_order,
        secrets_on_their_way::e2e_helm_install_of_a_chart_whose_deployment_mounts_its_certificate_secret,
        secrets_on_their_way::e2e_an_external_secret_and_its_reader,
        secrets_on_their_way::e2e_helm_install_of_a_chart_whose_pre_install_hook_makes_the_secret,
        secrets_on_their_way::e2e_a_secret_created_after_a_denial_or_deleted_is_seen_by_the_next_review,
        tracing::e2e_a_kubectl_apply_is_one_trace_from_the_apiserver_into_confgate_and_its_rollout,
        secrets_on_their_way::e2e_a_secret_nobody_makes_is_reported_after_the_grace,
    ]
}

/// Benchmarks: run only when asked (`cargo test --test e2e -- --ignored bench_`).
pub fn benches() -> Vec<(&'static str, Case)> {
    cases![
        bench::bench_rollout_200_deployments_at_the_configured_rate,
        bench::bench_rollout_latency_from_change_to_write,
        bench::bench_validate_latency_while_200_workloads_roll,
    ]
}

/// The app the tests deploy, in `namespace`: ConfigMap `app-config`, Secret `app-secret` and
/// Deployment `web` (init container with envFrom, configMapKeyRef, secretKeyRef, a configMap
/// volume with items, a sidecar with limits only), as in `tests/fixtures/cluster-state/`.
pub fn app_config(namespace: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: app-config, namespace: {namespace}}}
data:
  DATABASE_URL: postgres://db:5432/shop
  LOG_LEVEL: info
  config.yaml: "batchSize: 128\n"
---
apiVersion: v1
kind: Secret
metadata: {{name: app-secret, namespace: {namespace}}}
type: Opaque
stringData:
  API_KEY: s3cr3t-value
  magicWord: xyzzy
"#
    )
}

/// Deployment `name` consuming `app-config` and `app-secret`; `extra_env` adds env entries
/// (YAML flow mappings) to container `web`.
pub fn web_deployment(namespace: &str, name: &str, extra_env: &[&str]) -> String {
    let extra: String = extra_env
        .iter()
        .map(|e| format!("        - {e}\n"))
        .collect();
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {namespace}, labels: {{app: {name}}}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      initContainers:
      - name: migrate
        image: registry.example/shop/migrate:1.4.2
        envFrom: [{{configMapRef: {{name: app-config}}}}]
      containers:
      - name: web
        image: registry.example/shop/web:1.4.2
        env:
        - name: DATABASE_URL
          valueFrom: {{configMapKeyRef: {{name: app-config, key: DATABASE_URL}}}}
        - name: API_KEY
          valueFrom: {{secretKeyRef: {{name: app-secret, key: API_KEY}}}}
{extra}        volumeMounts: [{{name: config, mountPath: /config, readOnly: true}}]
      - name: sidecar
        image: registry.example/shop/proxy:2.0
        resources:
          limits: {{cpu: 200m, memory: 128Mi}}
      volumes:
      - name: config
        configMap:
          name: app-config
          items: [{{key: config.yaml, path: app.yaml}}]
"#
    )
}

/// The `checksum/config` value for these items, computed here from the README's encoding (not
/// with confgate's code): one line `<kind> <name> <key> <hex sha256 of value>` per consumed key,
/// sorted, the whole text hashed.
///
/// Secret lines carry HMAC-SHA256 of the value's SHA-256 under `secret_key`, the installation's
/// key (see [`checksum_key`]).
pub fn expected_checksum(items: &[(&str, &str, &str, &str)], secret_key: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret_key);
    let mut lines: BTreeMap<(String, String, String), String> = BTreeMap::new();
    for (kind, name, key, value) in items {
        let digest = Sha256::digest(value.as_bytes());
        let digest = if *kind == "secret" {
            hex::encode(ring::hmac::sign(&hmac, &digest))
        } else {
            hex::encode(digest)
        };
        lines.insert(((*kind).into(), (*name).into(), (*key).into()), digest);
    }
    let text: String = lines
        .iter()
        .map(|((kind, name, key), digest)| format!("{kind} {name} {key} {digest}\n"))
        .collect();
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Deployment `name` with 0 replicas (its rollouts finish at once) and one container `app`,
/// whose further fields are `container` (YAML lines indented for the container).
pub fn app_deployment(ns: &str, name: &str, container: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: 0
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: app
        image: registry.example/app:1
{container}"#
    )
}

/// Sets `key` of ConfigMap `name` to `value` (a merge patch, as a user types it).
pub async fn set_config_key(
    kubectl: &crate::harness::Kubectl,
    ns: &str,
    name: &str,
    key: &str,
    value: &str,
) {
    merge_patch(
        kubectl,
        ns,
        "configmap",
        name,
        serde_json::json!({"data": {key: value}}),
    )
    .await;
}

/// Sets `key` of Secret `name` to `value` (`stringData`, a merge patch, as a user types it).
pub async fn set_secret_key(
    kubectl: &crate::harness::Kubectl,
    ns: &str,
    name: &str,
    key: &str,
    value: &str,
) {
    let body = serde_json::json!({"stringData": {key: value}});
    merge_patch(kubectl, ns, "secret", name, body).await;
}

async fn merge_patch(
    kubectl: &crate::harness::Kubectl,
    ns: &str,
    kind: &str,
    name: &str,
    body: serde_json::Value,
) {
    let patch = body.to_string();
    kubectl
        .ok(
            &["patch", kind, name, "-n", ns, "--type=merge", "-p", &patch],
            None,
        )
        .await;
}

/// Removes `key` from ConfigMap `app-config` (a JSON patch); the run, which the config guard
/// may deny.
pub async fn remove_config_key(
    kubectl: &crate::harness::Kubectl,
    ns: &str,
    key: &str,
) -> crate::harness::Run {
    let patch = format!("[{{\"op\": \"remove\", \"path\": \"/data/{key}\"}}]");
    kubectl
        .run(
            &[
                "patch",
                "configmap",
                "app-config",
                "-n",
                ns,
                "--type=json",
                "-p",
                &patch,
            ],
            None,
        )
        .await
}

/// The checksum key confgate created in `namespace` (its own, in the tests), as bytes.
pub async fn checksum_key(kubectl: &crate::harness::Kubectl, namespace: &str) -> Vec<u8> {
    use base64::Engine as _;
    let secret = crate::harness::eventually(
        std::time::Duration::from_secs(10),
        "the checksum key Secret",
        || {
            let kubectl = kubectl.clone();
            let namespace = namespace.to_owned();
            async move {
                kubectl
                    .get(&namespace, "secret/confgate-checksum-key")
                    .await
            }
        },
    )
    .await;
    let key = secret["data"]["key"].as_str().unwrap_or_default();
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .expect("base64 key")
}

/// What `web_deployment` consumes of `app_config`: every key of `app-config` (the init
/// container's envFrom) and `API_KEY` of `app-secret`.
pub fn web_consumes() -> Vec<(&'static str, &'static str, &'static str, &'static str)> {
    vec![
        (
            "configmap",
            "app-config",
            "DATABASE_URL",
            "postgres://db:5432/shop",
        ),
        ("configmap", "app-config", "LOG_LEVEL", "info"),
        ("configmap", "app-config", "config.yaml", "batchSize: 128\n"),
        ("secret", "app-secret", "API_KEY", "s3cr3t-value"),
    ]
}
