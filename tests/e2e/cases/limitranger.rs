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

/// `kubectl create -o json` of a Pod with this spec in `ns`.
async fn create_pod(cx: &Cx, ns: &str, name: &str, spec: &Value) -> crate::harness::Run {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns}, "spec": spec});
    cx.kubectl()
        .run(&["create", "-o", "json", "-f", "-"], Some(&pod.to_string()))
        .await
}

/// The `resources` of each container in a stored Pod's `list` (`containers`, `initContainers`).
fn container_resources(stored: &Value, list: &str) -> Vec<Value> {
    stored["spec"][list]
        .as_array()
        .map(|cs| cs.iter().map(|c| c["resources"].clone()).collect())
        .unwrap_or_default()
}

/// What each Pod became: its containers' resources and the built-in plugin's annotation, or
/// the error the apiserver answered.
async fn outcome(cx: &Cx, ns: &str, name: &str, spec: &Value) -> Value {
    let run = create_pod(cx, ns, name, spec).await;
    if !run.success {
        // Only the plugin's own words: the namespace differs.
        let message = run.stderr.replace(ns, "NS");
        return json!({"error": message.trim()});
    }
    let stored: Value = serde_json::from_str(&run.stdout).unwrap();
    let resources = |list: &str| container_resources(&stored, list);
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

/// One LimitRange, as a namespace object for the built-in plugin and as confgate's settings.
const VERDICT_LIMITS: &str = r#"
  - type: Container
    max: {cpu: "1", memory: 1Gi}
    min: {cpu: 10m, memory: "1"}
    maxLimitRequestRatio: {cpu: "4"}
  - type: Pod
    max: {cpu: "2", memory: 2Gi}
    min: {cpu: 50m}
"#;

/// Pods for the verdict comparison: within, over each constraint, a ratio to print, a request
/// that only the newest (exact) comparison finds below a minimum, sidecars, and pod-level
/// resources where the apiserver has them.
fn verdict_pods(minor: u32) -> Vec<(&'static str, Value)> {
    let c = |name: &str, requests: Value, limits: Value| json!({"name": name, "image": "nginx", "resources": {"requests": requests, "limits": limits}});
    let one = |requests: Value, limits: Value| json!({"containers": [c("app", requests, limits)]});
    let mut pods = vec![
        (
            "within",
            one(
                json!({"cpu": "100m", "memory": "64Mi"}),
                json!({"cpu": "200m", "memory": "128Mi"}),
            ),
        ),
        ("defaults-only", one(json!({}), json!({}))),
        (
            "over-container-max",
            one(json!({"cpu": "100m"}), json!({"cpu": "1500m"})),
        ),
        (
            "over-ratio",
            one(json!({"cpu": "240m"}), json!({"cpu": "1"})),
        ),
        (
            "below-container-min",
            one(json!({"cpu": "5m"}), json!({"cpu": "10m"})),
        ),
        (
            "below-pod-min",
            one(json!({"cpu": "20m"}), json!({"cpu": "40m"})),
        ),
        (
            "over-pod-max",
            json!({"containers": [
                c("a", json!({"cpu": "100m"}), json!({"cpu": "800m"})),
                c("b", json!({"cpu": "100m"}), json!({"cpu": "800m"})),
                c("c", json!({"cpu": "100m"}), json!({"cpu": "800m"}))]}),
        ),
        // 0.999999999 bytes: milli-rounded (1.26, 1.33) it meets the minimum of 1.
        (
            "sub-milli-request",
            one(json!({"memory": "999999999n"}), json!({})),
        ),
    ];
    if minor >= 28 {
        pods.push((
            "sidecar-over-pod-max",
            json!({
                "initContainers": [{"name": "proxy", "image": "envoy", "restartPolicy": "Always",
                    "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "1"}}}],
                "containers": [c("app", json!({"cpu": "100m"}), json!({"cpu": "1"})),
                    c("second", json!({"cpu": "100m"}), json!({"cpu": "500m"}))]
            }),
        ));
    }
    if minor >= 32 {
        let mut pod_min = one(json!({"cpu": "20m"}), json!({"cpu": "40m"}));
        // 1.33 validates pod-level CPU and memory against the containers' sums, so both are set.
        pod_min["resources"] = json!({"requests": {"cpu": "100m", "memory": "2Gi"}, "limits": {"cpu": "100m", "memory": "2Gi"}});
        pods.push(("pod-level-meets-pod-min", pod_min));
        let mut pod_max = one(json!({"memory": "64Mi"}), json!({"memory": "128Mi"}));
        pod_max["resources"] = json!({"limits": {"cpu": "2", "memory": "3Gi"}});
        pods.push(("pod-level-over-pod-max", pod_max));
    }
    pods
}

/// What the apiserver made of a Pod: stored resources and the defaults annotation, or the
/// refusal as LimitRanger's own sentences (confgate's container prefix left out).
async fn verdict(cx: &Cx, ns: &str, name: &str, spec: &Value) -> Value {
    let run = create_pod(cx, ns, name, spec).await;
    if !run.success {
        let text = run.stderr.trim().to_owned();
        let sentences: Vec<String> =
            if let Some((_, ours)) = text.split_once("denied the request: ") {
                ours.lines()
                    .map(|l| l.trim().trim_start_matches("limits: "))
                    .map(|l| match l.split_once("\": ") {
                        Some((prefix, rest)) if prefix.contains("container \"") => rest.to_owned(),
                        _ => l.to_owned(),
                    })
                    .collect()
            } else {
                let (_, builtin) = text.split_once("is forbidden: ").expect(&text);
                let builtin = builtin.trim_start_matches('[').trim_end_matches(']');
                // The plugin joins its errors with ", "; each starts with a resource or "m".
                let mut out: Vec<String> = Vec::new();
                for part in builtin.split(", ") {
                    match out.last_mut() {
                        Some(last) if part.starts_with("but ") => {
                            last.push_str(", ");
                            last.push_str(part);
                        }
                        _ => out.push(part.to_owned()),
                    }
                }
                out
            };
        // The plugin's aggregate error prints each distinct sentence once; confgate names the
        // container in each, so with the names left out its repeats are folded the same way.
        let mut sentences = sentences;
        sentences.sort();
        sentences.dedup();
        return json!({"denied": sentences});
    }
    let stored: Value = serde_json::from_str(&run.stdout).unwrap();
    let resources = |list: &str| container_resources(&stored, list);
    let annotations = &stored["metadata"]["annotations"];
    json!({
        "containers": resources("containers"),
        "initContainers": resources("initContainers"),
        "pod": stored["spec"]["resources"],
        "annotation": annotations.get("kubernetes.io/limit-ranger").or(annotations.get("confgate.dev/limitrange-defaults")),
    })
}

/// confgate alone (the LimitRange as its settings, none in the namespace) against the built-in
/// plugin alone (the LimitRange in the namespace): the same Pods are admitted with the same
/// resources, or refused for the same reasons, on this control plane's version (milli-unit
/// comparisons on 1.26 and 1.33, followed from discovery) and, on 1.33, with pod-level resources.
pub async fn e2e_confgate_alone_judges_pods_as_the_builtin_limitranger(cx: Cx) {
    let builtin = cx.namespace("limitranger-builtin").await;
    let ours = cx.namespace("limitranger-confgate").await;
    let kubectl = cx.kubectl();
    let range = format!(
        "apiVersion: v1\nkind: LimitRange\nmetadata: {{name: limits}}\nspec:\n  limits:{VERDICT_LIMITS}"
    );
    kubectl
        .ok(&["apply", "-n", &builtin, "-f", "-"], Some(&range))
        .await;
    let policy = format!(
        "apiVersion: confgate.dev/v1alpha1\nkind: Policy\nmetadata: {{name: limits}}\nspec:\n  type: limitrange-defaults\n  match: {{kinds: [Pod]}}\n  settings:\n    limits:{}",
        VERDICT_LIMITS.replace("\n  ", "\n    ")
    );
    let _confgate = Confgate::start(&cx, Options::with_policies(&ours, &policy)).await;
    let mut refused = 0;
    for (name, spec) in verdict_pods(cx.minor()) {
        let expected = verdict(&cx, &builtin, name, &spec).await;
        let got = verdict(&cx, &ours, name, &spec).await;
        assert_eq!(got, expected, "pod {name} on {}", cx.plane.version);
        let admitted = expected.get("denied").is_none();
        let should_be = [
            "within",
            "defaults-only",
            "sub-milli-request",
            "pod-level-meets-pod-min",
        ]
        .contains(&name);
        assert_eq!(admitted, should_be, "pod {name}: {expected}");
        refused += usize::from(!admitted);
    }
    assert!(refused >= 5, "the comparison covers refusals: {refused}");
}

/// Quantities past 10^24 (the apiserver accepts them, and sends them to webhooks in canonical
/// form: `1e50` arrives as `100e48`) are judged exactly: the limit over the max, and the ratio
/// worded as current upstream's `ratioString` words it (a scale difference above 40 folds).
pub async fn e2e_quantities_past_10_pow_24_are_judged_exactly_as_the_apiserver_sends_them(cx: Cx) {
    let ns = cx.namespace("limitranger-huge").await;
    let policy = "apiVersion: confgate.dev/v1alpha1\nkind: Policy\nmetadata: {name: limits}\nspec:\n  type: limitrange-defaults\n  settings:\n    limits:\n    - {type: Container, max: {memory: 1Gi}, maxLimitRequestRatio: {memory: \"2\"}}\n";
    let _confgate = Confgate::start(&cx, Options::with_policies(&ns, policy)).await;
    let deployment = |name: &str, request: &str, limit: &str| {
        let resources = format!(
            "        resources: {{requests: {{memory: \"{request}\"}}, limits: {{memory: \"{limit}\"}}}}\n"
        );
        super::app_deployment(&ns, name, &resources)
    };
    let kubectl = cx.kubectl();
    let stderr = kubectl
        .fails(
            &["apply", "-f", "-"],
            Some(&deployment("huge", "1", "1e50")),
        )
        .await;
    for expected in [
        r#"container \"app\": maximum memory usage per Container is 1Gi, but limit is 100e48"#,
        r#"container \"app\": memory max limit to request ratio per Container is 2, but provided ratio is 1.000000e50"#,
    ] {
        let expected = expected.replace("\\\"", "\"");
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    // At the max and at the ratio exactly, written differently: admitted.
    kubectl
        .ok(
            &["apply", "-f", "-"],
            Some(&deployment("fine", "0.5Gi", "1073741824000000000n")),
        )
        .await;
}
