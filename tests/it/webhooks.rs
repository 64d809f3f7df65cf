//! The webhook registration generated from the policies: one webhook per policy and endpoint,
//! correct rules, safe exclusions, failure policies.

use crate::common::*;
use confgate::webhooks::{Options, Target, generate};
use serde_json::{Value, json};

fn options() -> Options {
    Options {
        ca_bundle: Some(b"-----BEGIN CERTIFICATE-----\n".to_vec()),
        ..Options::for_service("confgate", "confgate-system")
    }
}

fn webhooks(options: &Options) -> (Value, Value) {
    let (m, v) = generate(&shipped_policies(), options).unwrap();
    (
        serde_json::to_value(m).unwrap(),
        serde_json::to_value(v).unwrap(),
    )
}

fn by_name<'a>(config: &'a Value, name: &str) -> &'a Value {
    config["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == name)
        .unwrap_or_else(|| panic!("no webhook {name}"))
}

#[test]
fn one_webhook_per_policy_and_endpoint_at_its_own_path() {
    let (m, v) = webhooks(&options());
    let names = |c: &Value| {
        c["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["name"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&m),
        vec![
            "checksum-config.mutate.confgate.dev",
            "limitrange-defaults.mutate.confgate.dev"
        ]
    );
    assert_eq!(
        names(&v),
        vec![
            "limitrange-defaults.validate.confgate.dev",
            "protect-config-keys.validate.confgate.dev",
            "quota-fit.validate.confgate.dev",
            "require-config-keys.validate.confgate.dev",
            "payments-database-url.validate.confgate.dev"
        ]
    );
    let hook = by_name(&v, "require-config-keys.validate.confgate.dev");
    assert_eq!(
        hook["clientConfig"]["service"],
        json!({"name": "confgate", "namespace": "confgate-system", "path": "/validate/require-config-keys", "port": 443})
    );
    assert_eq!(
        hook["clientConfig"]["caBundle"],
        "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="
    );
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["admissionReviewVersions"], json!(["v1", "v1beta1"]));
    assert_eq!(hook["matchPolicy"], "Equivalent");
    assert_eq!(hook["timeoutSeconds"], 5);
    assert_eq!(
        by_name(&m, "checksum-config.mutate.confgate.dev")["reinvocationPolicy"],
        "IfNeeded"
    );
}

#[test]
fn rules_name_groups_and_resources_correctly() {
    let (m, v) = webhooks(&options());
    let checksum = by_name(&m, "checksum-config.mutate.confgate.dev");
    assert_eq!(
        checksum["rules"],
        json!([
            {"apiGroups": ["apps"], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"], "resources": ["deployments", "statefulsets", "daemonsets"], "scope": "Namespaced"},
            {"apiGroups": ["argoproj.io"], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"], "resources": ["rollouts"], "scope": "Namespaced"}])
    );
    let refs = by_name(&v, "require-config-keys.validate.confgate.dev");
    let groups: Vec<(Value, Value)> = refs["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["apiGroups"].clone(), r["resources"].clone()))
        .collect();
    assert_eq!(
        groups,
        vec![
            (json!([""]), json!(["pods", "replicationcontrollers"])),
            (
                json!(["apps"]),
                json!(["deployments", "statefulsets", "daemonsets", "replicasets"])
            ),
            (json!(["argoproj.io"]), json!(["rollouts"])),
            (json!(["batch"]), json!(["jobs", "cronjobs"])),
        ]
    );
    let payments = by_name(&v, "payments-database-url.validate.confgate.dev");
    assert_eq!(
        payments["rules"][0]["resources"],
        json!(["deployments", "statefulsets"])
    );
    // The config guard: ConfigMap and Secret updates and deletions, never blocking them when
    // confgate is down, and never sent the control plane's own cleanup.
    let guard = by_name(&v, "protect-config-keys.validate.confgate.dev");
    assert_eq!(
        guard["rules"],
        json!([{"apiGroups": [""], "apiVersions": ["*"], "operations": ["UPDATE", "DELETE"], "resources": ["configmaps", "secrets"], "scope": "Namespaced"}])
    );
    assert_eq!(guard["failurePolicy"], "Ignore");
    // Also when the policy file does not say (and its action is Deny).
    let set = confgate::policy::load_str(
        "guard.yaml",
        "apiVersion: confgate.dev/v1alpha1\nkind: Policy\nmetadata: {name: guard}\nspec: {type: protect-config-keys}\n",
        &confgate::policy::Registry::builtin(),
    )
    .unwrap();
    let (_, v) = confgate::webhooks::generate(&set, &options()).unwrap();
    assert_eq!(
        serde_json::to_value(v).unwrap()["webhooks"][0]["failurePolicy"],
        "Ignore"
    );
    assert_eq!(
        guard["matchConditions"][1],
        json!({"name": "not-cleanup-by-the-control-plane", "expression": "!(request.userInfo.username in ['system:serviceaccount:kube-system:namespace-controller', 'system:serviceaccount:kube-system:generic-garbage-collector', 'system:kube-controller-manager'])"})
    );
}

#[test]
fn every_webhook_excludes_the_control_plane_and_confgate_itself() {
    let (m, v) = webhooks(&options());
    for hook in m["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .chain(v["webhooks"].as_array().unwrap())
    {
        assert_webhook_is_safe(hook);
    }
    // The policy's own selector is kept alongside.
    let payments = by_name(&v, "payments-database-url.validate.confgate.dev");
    assert_eq!(
        payments["namespaceSelector"]["matchLabels"],
        json!({"team": "payments"})
    );
}

#[test]
fn failure_policy_defaults_and_overrides() {
    let (m, v) = webhooks(&options());
    assert_eq!(
        by_name(&m, "checksum-config.mutate.confgate.dev")["failurePolicy"],
        "Ignore"
    );
    assert_eq!(
        by_name(&v, "require-config-keys.validate.confgate.dev")["failurePolicy"],
        "Fail"
    );
    // limitrange-defaults sets failurePolicy: Ignore in its file: both of its webhooks follow it.
    assert_eq!(
        by_name(&v, "limitrange-defaults.validate.confgate.dev")["failurePolicy"],
        "Ignore"
    );
    // payments-database-url only warns: failing closed would block writes for advice.
    assert_eq!(
        by_name(&v, "payments-database-url.validate.confgate.dev")["failurePolicy"],
        "Ignore"
    );
    // A policy's own failurePolicy wins, even for Warn.
    let set = policies(
        "apiVersion: confgate.dev/v1alpha1\nkind: Policy\nmetadata: {name: strict-advice}\nspec: {type: require-config-keys, action: Warn, failurePolicy: Fail}\n",
    );
    let (_, v) = generate(&set, &options()).unwrap();
    assert_eq!(
        v.webhooks.unwrap()[0].failure_policy.as_deref(),
        Some("Fail")
    );
}

#[test]
fn match_conditions_skip_deletions_and_objects_made_by_judged_controllers() {
    let (m, v) = webhooks(&options());
    let refs = by_name(&v, "require-config-keys.validate.confgate.dev");
    assert_eq!(
        refs["matchConditions"],
        json!([
            {"name": "not-being-deleted",
             "expression": "oldObject == null || !has(oldObject.metadata.deletionTimestamp)"},
            {"name": "not-made-by-a-judged-controller",
             "expression": "object == null || !has(object.metadata.ownerReferences) || !object.metadata.ownerReferences.exists(r, has(r.controller) && r.controller && r.kind in ['Deployment', 'StatefulSet', 'DaemonSet', 'ReplicaSet', 'ReplicationController', 'Job', 'CronJob', 'Rollout'])"}
        ])
    );
    // checksum-config judges Deployments, StatefulSets, DaemonSets and Argo Rollouts only.
    assert!(
        by_name(&m, "checksum-config.mutate.confgate.dev")["matchConditions"][1]["expression"]
            .as_str()
            .unwrap()
            .ends_with("r.kind in ['Deployment', 'StatefulSet', 'DaemonSet', 'Rollout'])")
    );
    // A policy for Pods alone judges every Pod: no controller condition.
    let set = policies(
        "apiVersion: confgate.dev/v1alpha1\nkind: Policy\nmetadata: {name: pods}\nspec: {type: require-config-keys, match: {kinds: [Pod]}}\n",
    );
    let (_, v) = generate(&set, &options()).unwrap();
    let conditions = v.webhooks.unwrap()[0].match_conditions.clone().unwrap();
    assert_eq!(conditions.len(), 1);
    // Older apiservers refuse the field: none at all.
    let old = Options {
        match_conditions: false,
        ..options()
    };
    let (m, v) = webhooks(&old);
    for hook in m["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .chain(v["webhooks"].as_array().unwrap())
    {
        assert!(hook.get("matchConditions").is_none(), "{hook}");
    }
}

#[test]
fn kubernetes_versions_are_read_as_minor_numbers() {
    use confgate::webhooks::minor_version;
    assert_eq!(minor_version("1.27"), Some(27));
    assert_eq!(minor_version("v1.33.3"), Some(33));
    assert_eq!(minor_version("1.30+"), Some(30));
    assert_eq!(minor_version("2.0"), None);
    assert_eq!(minor_version("latest"), None);
}

#[test]
fn cert_manager_injection_and_url_targets() {
    let mut opts = options();
    opts.ca_bundle = None;
    opts.inject_ca_from = Some("confgate-system/confgate".into());
    let (m, _) = webhooks(&opts);
    assert_eq!(
        m["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "confgate-system/confgate"
    );
    assert!(m["webhooks"][0]["clientConfig"].get("caBundle").is_none());
    opts.target = Target::Url("https://10.0.0.5:8443/".into());
    let (m, _) = webhooks(&opts);
    assert_eq!(
        m["webhooks"][0]["clientConfig"]["url"],
        "https://10.0.0.5:8443/mutate/checksum-config"
    );
}

#[test]
fn rejects_out_of_range_timeouts() {
    let mut opts = options();
    opts.timeout_seconds = 31;
    assert!(generate(&shipped_policies(), &opts).is_err());
}
