//! `quota-fit` against the real ResourceQuota admission plugin (the control plane runs it, and
//! its quota controller fills each quota's status): for a table of quotas × Pods, confgate's
//! verdict on the Pod, and on a Deployment whose template is that Pod's, is exactly whether the
//! API server refuses the Pod (a server-side dry run), in the API server's own words.

use crate::harness::{Confgate, Cx, Kubectl, Options, eventually, root};
use serde_json::{Value, json};
use std::time::Duration;

/// The quotas, one namespace each: name and spec (flow YAML).
const QUOTAS: [(&str, &str); 12] = [
    ("cpu-limits", "{hard: {limits.cpu: '2'}}"),
    ("mem-requests", "{hard: {requests.memory: 1Gi}}"),
    ("compute", "{hard: {requests.cpu: '1', limits.memory: 2Gi}}"),
    ("no-pods", "{hard: {pods: '0'}}"),
    (
        "no-best-effort",
        "{hard: {pods: '0'}, scopes: [BestEffort]}",
    ),
    (
        "not-best-effort",
        "{hard: {limits.cpu: '1'}, scopes: [NotBestEffort]}",
    ),
    (
        "terminating",
        "{hard: {limits.memory: 1Gi}, scopes: [Terminating]}",
    ),
    (
        "not-terminating",
        "{hard: {requests.cpu: 500m}, scopes: [NotTerminating]}",
    ),
    (
        "high-priority",
        "{hard: {pods: '0'}, scopeSelector: {matchExpressions: [{scopeName: PriorityClass, operator: In, values: [high]}]}}",
    ),
    ("gpus", "{hard: {requests.example.com/gpu: '1'}}"),
    ("ephemeral", "{hard: {requests.ephemeral-storage: 1Gi}}"),
    ("pod-count", "{hard: {count/pods: '0'}}"),
];

/// The Pods: name, and what their one container (and the Pod) set (JSON).
fn pods() -> Vec<(&'static str, Value)> {
    let small = json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}});
    vec![
        ("bare", json!({"resources": {}})),
        ("small", json!({"resources": small})),
        (
            "big",
            json!({"resources": {"requests": {"cpu": "3", "memory": "3Gi"}, "limits": {"cpu": "4", "memory": "4Gi"}}}),
        ),
        (
            "cpu-limit-only",
            json!({"resources": {"limits": {"cpu": "1"}}}),
        ),
        (
            "gpu",
            json!({"resources": {"requests": {"cpu": "100m", "memory": "128Mi", "example.com/gpu": "2"}, "limits": {"cpu": "500m", "memory": "256Mi", "example.com/gpu": "2"}}}),
        ),
        (
            "job-like",
            json!({"resources": {"requests": {"memory": "1Gi"}, "limits": {"memory": "2Gi"}}, "activeDeadlineSeconds": 60}),
        ),
        (
            "high",
            json!({"resources": small, "priorityClassName": "high"}),
        ),
        (
            "scratch",
            json!({"resources": {"requests": {"cpu": "100m", "memory": "128Mi", "ephemeral-storage": "2Gi"}, "limits": {"cpu": "500m", "memory": "256Mi"}}}),
        ),
    ]
}

/// The Pod (or, with `deployment`, a Deployment whose template is the Pod) as JSON.
fn manifest(ns: &str, name: &str, pod: &Value, deployment: bool) -> Value {
    let mut spec = json!({"containers": [{"name": "app", "image": "registry.example/app:1", "resources": pod["resources"]}]});
    for field in ["activeDeadlineSeconds", "priorityClassName"] {
        if let Some(v) = pod.get(field) {
            spec[field] = v.clone();
        }
    }
    if deployment {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}})
    } else {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns}, "spec": spec})
    }
}

/// The policy the comparison runs: `quota-fit` alone.
const POLICY: &str = "apiVersion: confgate.dev/v1alpha1\nkind: Policy\nmetadata: {name: quota-fit}\nspec: {type: quota-fit, action: Deny}\n";

/// Creates the quota in a namespace of its own and waits until its status is filled.
async fn quota_namespace(cx: &Cx, kubectl: &Kubectl, name: &str, spec: &str) -> (String, String) {
    let ns = cx.namespace(&format!("quota-{name}")).await;
    let quota = format!(
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
    );
    kubectl.ok(&["apply", "-f", "-"], Some(&quota)).await;
    let stored = eventually(Duration::from_secs(30), "the quota's status", || {
        let (kubectl, ns, name) = (kubectl.clone(), ns.clone(), name.to_owned());
        async move {
            let q = kubectl.get(&ns, &format!("resourcequota/{name}")).await?;
            q["status"]["hard"].is_object().then_some(q)
        }
    })
    .await;
    (ns, stored.to_string())
}

/// What the API server says of creating the Pod: `None` when it would be created, else its
/// reason (after `is forbidden: `).
async fn apiserver_verdict(kubectl: &Kubectl, pod: &Value) -> Option<String> {
    let run = kubectl
        .run(
            &["create", "--dry-run=server", "-o", "name", "-f", "-"],
            Some(&pod.to_string()),
        )
        .await;
    if run.success {
        return None;
    }
    let reason = run
        .stderr
        .split_once("is forbidden: ")
        .map(|(_, r)| r.trim().to_owned());
    Some(reason.unwrap_or_else(|| panic!("not a quota refusal: {}", run.stderr)))
}

/// confgate's verdicts (`review -o json`) on these documents, with `state` as the cluster.
fn confgate_verdicts(dir: &std::path::Path, documents: &[Value], state: &str) -> Vec<Value> {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("quota-fit.yaml"), POLICY).unwrap();
    let input = dir.join("input.yaml");
    let text: Vec<String> = documents.iter().map(Value::to_string).collect();
    std::fs::write(&input, text.join("\n---\n")).unwrap();
    let cluster = dir.join("cluster.yaml");
    std::fs::write(&cluster, state).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_confgate"))
        .args(["review", "-o", "json", "--policies"])
        .arg(&policies)
        .arg("--cluster-state")
        .arg(&cluster)
        .arg(&input)
        .output()
        .expect("confgate review");
    let parsed: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    parsed["results"].as_array().cloned().unwrap_or_default()
}

/// The table as a `confgate test` file (`tests/quota-fit/`): the namespace each quota has
/// there.
fn table_namespace(quota: &str) -> String {
    format!("q-{quota}")
}

/// Renames the namespace of every document to the table's.
fn renamed(mut document: Value, ns: &str) -> Value {
    document["metadata"]["namespace"] = json!(ns);
    document
}

pub async fn e2e_quota_fit_agrees_with_the_resourcequota_plugin(cx: Cx) {
    let kubectl = cx.kubectl();
    // The Priority plugin refuses a Pod naming a class that does not exist.
    kubectl
        .ok(
            &["apply", "-f", "-"],
            Some("apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: high}\nvalue: 1000\n"),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let mut disagreements = Vec::new();
    // What the API server said, as the table file's results; its quotas and resources.
    let (mut results, mut quotas, mut resources) = (Vec::new(), Vec::new(), Vec::new());
    for (quota, spec) in QUOTAS {
        let (ns, stored) = quota_namespace(&cx, &kubectl, quota, spec).await;
        let mut documents = Vec::new();
        for (name, pod) in pods() {
            documents.push(manifest(&ns, name, &pod, false));
            documents.push(manifest(&ns, name, &pod, true));
        }
        let verdicts = confgate_verdicts(dir.path(), &documents, &stored);
        assert_eq!(verdicts.len(), documents.len(), "{verdicts:?}");
        let table_ns = table_namespace(quota);
        let stored: Value = serde_json::from_str(&stored).unwrap();
        quotas.push(json!({"apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": quota, "namespace": table_ns}, "spec": stored["spec"], "status": stored["status"]}));
        for (i, (name, pod)) in pods().into_iter().enumerate() {
            let truth = apiserver_verdict(&kubectl, &manifest(&ns, name, &pod, false)).await;
            for (j, (kind, prefix)) in [("Pod", ""), ("Deployment", "its Pods would be refused: ")]
                .into_iter()
                .enumerate()
            {
                let expected: Vec<Value> = truth
                    .iter()
                    .map(|r| json!(format!("quota-fit: {prefix}{r}")))
                    .collect();
                let got = &verdicts[2 * i + j];
                if got["denials"].as_array() != Some(&expected) {
                    disagreements.push(format!(
                        "{quota} × {name} ({kind}): apiserver {truth:?}; confgate {}",
                        got["denials"]
                    ));
                }
                resources.push(renamed(documents[2 * i + j].clone(), &table_ns));
                let mut result = json!({"resource": format!("{kind}/{table_ns}/{name}"),
                    "result": if truth.is_some() { "deny" } else { "allow" }});
                if !expected.is_empty() {
                    result["messages"] = Value::Array(expected);
                }
                results.push(result);
            }
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
    let refused = results.iter().filter(|r| r["result"] == "deny").count();
    assert_eq!(results.len(), 2 * QUOTAS.len() * pods().len());
    // The table is worth its name: both verdicts occur often.
    assert!(
        refused >= 40 && results.len() - refused >= 40,
        "{refused} of {} refused",
        results.len()
    );
    // The checked-in `confgate test` file holds exactly this table (UPDATE_QUOTA_TABLE=1 writes it).
    let table = root().join("tests/quota-fit");
    let yaml = |documents: &[Value]| {
        documents
            .iter()
            .map(|d| d.to_string() + "\n")
            .collect::<Vec<_>>()
            .join("---\n")
    };
    let test = format!(
        "# The API server's own verdicts (ResourceQuota admission, server-side dry run) on {} Pods\n\
         # and Deployments: written by the e2e test e2e_quota_fit_agrees_with_the_resourcequota_plugin\n\
         # (UPDATE_QUOTA_TABLE=1), which checks that this file is exactly what the API server says.\n\
         apiVersion: confgate.dev/v1alpha1\nkind: Test\nmetadata: {{name: quota-fit-as-the-resourcequota-plugin}}\n\
         spec:\n  policies: policies\n  clusterState: [quotas.yaml]\n  resources: [resources.yaml]\n  results: {}\n",
        results.len(),
        serde_json::to_string_pretty(&results).unwrap()
    );
    let files = [
        ("quotas.yaml", yaml(&quotas)),
        ("resources.yaml", yaml(&resources)),
        ("test.yaml", test),
    ];
    for (file, text) in files {
        let path = table.join(file);
        if std::env::var_os("UPDATE_QUOTA_TABLE").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(&path).unwrap_or_default(),
            text,
            "{} is not the API server's table: UPDATE_QUOTA_TABLE=1 cargo test --test e2e -- e2e_quota_fit",
            path.display()
        );
    }
}

pub async fn e2e_a_deployment_a_quota_would_starve_is_denied_and_without_confgate_it_fails_to_create_pods(
    cx: Cx,
) {
    let kubectl = cx.kubectl();
    let (ns, _) = quota_namespace(&cx, &kubectl, "cpu-limits", "{hard: {limits.cpu: '2'}}").await;
    let deployment = |name: &str| {
        manifest(
            &ns,
            name,
            &json!({"resources": {"requests": {"cpu": "100m"}}}),
            true,
        )
    };
    // Without confgate: accepted, and its ReplicaSet cannot create a Pod.
    kubectl
        .ok(
            &["apply", "-f", "-"],
            Some(&deployment("unguarded").to_string()),
        )
        .await;
    let failed = eventually(Duration::from_secs(30), "FailedCreate", || {
        let (kubectl, ns) = (kubectl.clone(), ns.clone());
        async move {
            let notes = super::rollout::event_notes(&kubectl, &ns, "FailedCreate").await;
            notes.into_iter().next()
        }
    })
    .await;
    assert!(
        failed.contains("failed quota: cpu-limits: must specify limits.cpu for: app"),
        "{failed}"
    );
    // With confgate (the shipped policies): denied at once, naming the quota and container.
    let policies = std::fs::read_to_string(root().join("policies/quota-fit.yaml")).unwrap();
    let _confgate = Confgate::start(&cx, Options::with_policies(&ns, &policies)).await;
    let error = kubectl
        .fails(
            &["apply", "-f", "-"],
            Some(&deployment("guarded").to_string()),
        )
        .await;
    assert!(
        error.contains("quota-fit: its Pods would be refused: failed quota: cpu-limits: must specify limits.cpu for: app"),
        "{error}"
    );
    assert!(kubectl.get(&ns, "deployment/guarded").await.is_none());
}
