//! For Pods, confgate's `limitrange-defaults` next to the built-in LimitRanger must change
//! nothing the built-in plugin decided: the same Pods in a namespace with confgate and in one
//! without end up with the same resources and the same `kubernetes.io/limit-ranger` annotation.

use crate::harness::{Confgate, Cx, Options};
use serde_json::{Value, json};

const LIMIT_RANGE: &str = r#"
apiVersion: v1
kind: LimitRange
metadata: {name: limit-range}
spec:
  limits:
  - type: Container
    default: {cpu: 400m, memory: 512Mi}
    defaultRequest: {cpu: 300m, memory: 256Mi}
    max: {cpu: 600m, memory: 600Mi}
    min: {memory: 200Mi}
    maxLimitRequestRatio: {cpu: "2"}
  - type: Pod
    max: {memory: 1200Mi}
"#;

const POLICY: &str = r#"
apiVersion: confgate.dev/v1alpha1
kind: Policy
metadata: {name: namespace-limits}
spec:
  type: limitrange-defaults
  match: {kinds: [Pod]}
  settings: {fromNamespaceLimitRanges: true}
"#;

/// Pods as people write them: nothing set, limits only, requests only, an init container and,
/// from Kubernetes 1.28 (sidecars), an init container with restartPolicy Always.
fn pods(minor: u32) -> Vec<(&'static str, Value)> {
    let container = |name: &str, resources: Value| json!({"name": name, "image": "nginx", "resources": resources});
    let mut pods = vec![
        ("bare", json!({"containers": [container("app", json!({}))]})),
        (
            "limits-only",
            json!({"containers": [container("app", json!({"limits": {"cpu": "500m", "memory": "300Mi"}}))]}),
        ),
        (
            "requests-only",
            json!({"containers": [container("app", json!({"requests": {"cpu": "200m", "memory": "250Mi"}}))]}),
        ),
        (
            "with-init",
            json!({
                "initContainers": [container("init", json!({"limits": {"memory": "400Mi"}}))],
                "containers": [container("app", json!({})), container("second", json!({"requests": {"memory": "300Mi"}}))]
            }),
        ),
    ];
    if minor >= 28 {
        pods.push((
            "with-sidecar",
            json!({
                "initContainers": [{"name": "proxy", "image": "envoy", "restartPolicy": "Always", "resources": {}}],
                "containers": [container("app", json!({}))]
            }),
        ));
    }
    pods
}

/// What each Pod became: its containers' resources and the built-in plugin's annotation, or
/// the error the apiserver answered.
async fn outcome(cx: &Cx, ns: &str, name: &str, spec: &Value) -> Value {
    let kubectl = cx.kubectl();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns}, "spec": spec});
    let run = kubectl
        .run(&["create", "-o", "json", "-f", "-"], Some(&pod.to_string()))
        .await;
    if !run.success {
        // Only the plugin's own words: the namespace differs.
        let message = run.stderr.replace(ns, "NS");
        return json!({"error": message.trim()});
    }
    let stored: Value = serde_json::from_str(&run.stdout).unwrap();
    let resources = |list: &str| -> Vec<Value> {
        stored["spec"][list]
            .as_array()
            .map(|cs| cs.iter().map(|c| c["resources"].clone()).collect())
            .unwrap_or_default()
    };
    json!({
        "containers": resources("containers"),
        "initContainers": resources("initContainers"),
        "annotation": stored["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
    })
}

pub async fn e2e_builtin_limitranger_plus_confgate_equals_builtin_alone(cx: Cx) {
    let with = cx.namespace("limitranger-with-confgate").await;
    let without = cx.namespace("limitranger-builtin-only").await;
    let kubectl = cx.kubectl();
    for ns in [&with, &without] {
        kubectl
            .ok(&["apply", "-n", ns, "-f", "-"], Some(LIMIT_RANGE))
            .await;
    }
    let confgate = Confgate::start(&cx, Options::with_policies(&with, POLICY)).await;
    let cases = pods(cx.minor());
    // Over the Pod max: both namespaces refuse it, with the built-in plugin's message.
    let mut all = cases.clone();
    all.push((
        "over-pod-max",
        json!({"containers": [
            {"name": "a", "image": "nginx", "resources": {"limits": {"memory": "600Mi"}}},
            {"name": "b", "image": "nginx", "resources": {"limits": {"memory": "600Mi"}}},
            {"name": "c", "image": "nginx", "resources": {"limits": {"memory": "600Mi"}}}
        ]}),
    ));
    for (name, spec) in &all {
        let builtin = outcome(&cx, &without, name, spec).await;
        let combined = outcome(&cx, &with, name, spec).await;
        assert_eq!(combined, builtin, "pod {name}");
        assert!(
            builtin.get("containers").is_some() || *name == "over-pod-max",
            "pod {name} was refused: {builtin}"
        );
    }
    // confgate was called for every Pod it could see.
    for (name, _) in &cases {
        assert!(
            !confgate.reviews_of(&format!("{with}/{name}")).is_empty(),
            "pod {name} not reviewed"
        );
    }
}
