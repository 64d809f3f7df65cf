//! The admission loop through a real apiserver: registration, denials, patches applied by the
//! apiserver, dry-run, reinvocation, DELETE, and controller-made objects.

use super::{
    app_config, checksum_key, expected_checksum, set_config_key, web_consumes, web_deployment,
};
use crate::harness::webhook::Injector;
use crate::harness::{Confgate, Cx, Options, eventually};
use serde_json::{Value, json};
use std::time::Duration;

pub async fn e2e_generated_registration_applies_and_every_webhook_is_called(cx: Cx) {
    let ns = cx.namespace("registration").await;
    let kubectl = cx.kubectl();
    // payments-database-url selects namespaces labelled team=payments.
    kubectl
        .ok(&["label", "namespace", &ns, "team=payments"], None)
        .await;
    kubectl
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    let confgate = Confgate::start(&cx, Options::shipped(&ns)).await;
    let yaml = confgate.webhooks_yaml(confgate.registration.as_deref().unwrap());
    let webhooks: Vec<(String, String)> = confgate::yaml::documents(&yaml)
        .unwrap()
        .iter()
        .flat_map(|doc| doc["webhooks"].as_array().cloned().unwrap_or_default())
        .map(|w| {
            let name = w["name"].as_str().unwrap().to_owned();
            let (policy, rest) = name.split_once('.').unwrap();
            let endpoint = rest.split('.').next().unwrap();
            (policy.to_owned(), endpoint.to_owned())
        })
        .collect();
    assert_eq!(
        webhooks.len(),
        7,
        "one webhook per policy and endpoint: {webhooks:?}"
    );
    kubectl
        .ok(
            &["apply", "-f", "-"],
            Some(&web_deployment(&ns, "web", &[])),
        )
        .await;
    // The config guard judges ConfigMap updates.
    set_config_key(&kubectl, &ns, "app-config", "NEW", "1").await;
    let called = |reviews: &[Value], policy: &str, endpoint: &str| {
        reviews.iter().any(|r| {
            r["endpoint"] == endpoint
                && (r["operation"] == "CREATE" || r["kind"] == "ConfigMap")
                && r["policies"]
                    .as_str()
                    .unwrap_or("")
                    .split(',')
                    .any(|p| p.starts_with(&format!("{policy}=")))
        })
    };
    // The log is written in the background: its last lines may lag the answers a moment.
    let reviews = || {
        let mut reviews = confgate.reviews_of(&format!("{ns}/web"));
        reviews.extend(confgate.reviews_of(&format!("{ns}/app-config")));
        reviews
    };
    for _ in 0..25 {
        let seen = reviews();
        if webhooks
            .iter()
            .all(|(policy, endpoint)| called(&seen, policy, endpoint))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reviews = reviews();
    for (policy, endpoint) in &webhooks {
        assert!(
            called(&reviews, policy, endpoint),
            "webhook {policy}.{endpoint} was not called: {reviews:#?}"
        );
    }
}

pub async fn e2e_kubectl_apply_denial_names_container_reference_and_key(cx: Cx) {
    let ns = cx.namespace("denial").await;
    let kubectl = cx.kubectl();
    kubectl
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    let _confgate = Confgate::start(&cx, Options::shipped(&ns)).await;
    let manifest = web_deployment(
        &ns,
        "api",
        &[
            "{name: QUEUE_URL, valueFrom: {configMapKeyRef: {name: app-config, key: QUEUE_URL}}}",
            "{name: TOKEN, valueFrom: {secretKeyRef: {name: api-token, key: TOKEN}}}",
        ],
    );
    let stderr = kubectl.fails(&["apply", "-f", "-"], Some(&manifest)).await;
    assert!(
        stderr.contains(
            "admission webhook \"require-config-keys.validate.confgate.dev\" denied the request"
        ),
        "{stderr}"
    );
    // The missing ConfigMap key denies; the missing Secret is one its new reader may wait for
    // (a warning, printed by kubectl as such).
    for line in [
        format!(
            "require-config-keys: container \"web\": env QUEUE_URL: configmap \"{ns}/app-config\" has no key \"QUEUE_URL\""
        ),
        format!(
            "Warning: require-config-keys: container \"web\": env TOKEN: secret \"{ns}/api-token\" not found yet, and nothing promises it"
        ),
    ] {
        assert!(stderr.contains(&line), "missing {line:?} in:\n{stderr}");
    }
    assert_eq!(kubectl.get(&ns, "deployment/api").await, None);
}

pub async fn e2e_stored_deployment_carries_defaults_and_checksum(cx: Cx) {
    let ns = cx.namespace("stored").await;
    let kubectl = cx.kubectl();
    kubectl
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    let _confgate = Confgate::start(&cx, Options::shipped(&ns)).await;
    let manifest = web_deployment(&ns, "web", &[]);
    kubectl.ok(&["apply", "-f", "-"], Some(&manifest)).await;
    let stored = kubectl.get(&ns, "deployment/web").await.unwrap();
    let template = &stored["spec"]["template"];
    assert_eq!(
        template["metadata"]["annotations"]["checksum/config"],
        expected_checksum(&web_consumes(), &checksum_key(&kubectl, &ns).await)
    );
    assert_eq!(
        template["metadata"]["annotations"]["confgate.dev/limitrange-defaults"],
        "LimitRanger plugin set: cpu, memory request for container web; memory limit for container web; cpu, memory request for init container migrate; memory limit for init container migrate"
    );
    let resources = |list: &str, i: usize| template["spec"][list][i]["resources"].clone();
    assert_eq!(
        resources("containers", 0),
        json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}})
    );
    assert_eq!(
        resources("containers", 1),
        json!({"requests": {"cpu": "200m", "memory": "128Mi"}, "limits": {"cpu": "200m", "memory": "128Mi"}})
    );
    assert_eq!(
        resources("initContainers", 0),
        json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}})
    );
    // Re-applying the same manifest changes nothing: the patch is idempotent, so no rollout.
    let out = kubectl.ok(&["apply", "-f", "-"], Some(&manifest)).await;
    assert!(out.contains("unchanged"), "{out}");
    let again = kubectl.get(&ns, "deployment/web").await.unwrap();
    assert_eq!(
        again["metadata"]["generation"],
        stored["metadata"]["generation"]
    );
    assert_eq!(again["spec"]["template"], stored["spec"]["template"]);
}

pub async fn e2e_server_side_dry_run_is_judged_and_leaves_nothing(cx: Cx) {
    let ns = cx.namespace("dry-run").await;
    let kubectl = cx.kubectl();
    kubectl
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    let confgate = Confgate::start(&cx, Options::shipped(&ns)).await;
    let out = kubectl
        .ok(
            &["apply", "--dry-run=server", "-o", "json", "-f", "-"],
            Some(&web_deployment(&ns, "web", &[])),
        )
        .await;
    let answered: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        answered["spec"]["template"]["metadata"]["annotations"]["checksum/config"],
        expected_checksum(&web_consumes(), &checksum_key(&kubectl, &ns).await)
    );
    let stderr = kubectl
        .fails(
            &["apply", "--dry-run=server", "-f", "-"],
            Some(&web_deployment(
                &ns,
                "bad",
                &["{name: X, valueFrom: {configMapKeyRef: {name: nope, key: X}}}"],
            )),
        )
        .await;
    assert!(
        stderr.contains(&format!(
            "container \"web\": env X: configmap \"{ns}/nope\" not found"
        )),
        "{stderr}"
    );
    assert_eq!(kubectl.get(&ns, "deployment/web").await, None);
    assert_eq!(kubectl.get(&ns, "deployment/bad").await, None);
    let reviews = confgate.reviews_of(&format!("{ns}/web"));
    assert!(!reviews.is_empty() && reviews.iter().all(|r| r["dry_run"] == true));
}

pub async fn e2e_reinvoked_after_another_webhook_adds_a_reference(cx: Cx) {
    let ns = cx.namespace("reinvocation").await;
    let kubectl = cx.kubectl();
    kubectl
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    kubectl
        .ok(
            &[
                "create",
                "configmap",
                "flags",
                "-n",
                &ns,
                "--from-literal=FLAG=on",
            ],
            None,
        )
        .await;
    let confgate = Confgate::start(&cx, Options::shipped(&ns)).await;
    // Named to sort after confgate's configuration, so the apiserver calls it second: its
    // change to the object makes the apiserver call confgate again.
    let injector = Injector::start("flags", "FLAG").await;
    let _cleanup = register_webhook(
        &cx,
        "MutatingWebhookConfiguration",
        &format!("zz-injector-{ns}"),
        json!({
            "name": "inject.e2e.example",
            "clientConfig": {"url": injector.url, "caBundle": base64(&injector.ca_pem)},
            "rules": [{"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["deployments"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "failurePolicy": "Fail",
        }),
    )
    .await;
    // The apiserver picks the new configuration up within moments.
    let stored = eventually(Duration::from_secs(20), "the injector is called", || {
        let kubectl = kubectl.clone();
        let ns = ns.clone();
        async move {
            let n = format!("web-{}", rand_suffix());
            kubectl
                .ok(&["apply", "-f", "-"], Some(&web_deployment(&ns, &n, &[])))
                .await;
            let stored = kubectl.get(&ns, &format!("deployment/{n}")).await?;
            let injected = stored["spec"]["template"]["spec"]["containers"][0]["env"]
                .as_array()?
                .iter()
                .any(|e| e["name"] == "INJECTED");
            injected.then_some(stored)
        }
    })
    .await;
    let mut consumed = web_consumes();
    consumed.push(("configmap", "flags", "FLAG", "on"));
    assert_eq!(
        stored["spec"]["template"]["metadata"]["annotations"]["checksum/config"],
        expected_checksum(&consumed, &checksum_key(&kubectl, &ns).await),
        "the checksum covers the reference the other webhook added"
    );
    let object = format!("{ns}/{}", stored["metadata"]["name"].as_str().unwrap());
    let mutate_calls = confgate
        .reviews_of(&object)
        .iter()
        .filter(|r| {
            r["endpoint"] == "mutate"
                && r["policies"]
                    .as_str()
                    .is_some_and(|p| p.contains("checksum-config="))
        })
        .count();
    assert_eq!(mutate_calls, 2, "called, then reinvoked once");
}

pub async fn e2e_delete_is_reviewed_and_goes_through(cx: Cx) {
    let ns = cx.namespace("delete").await;
    let kubectl = cx.kubectl();
    kubectl
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    // The ConfigMap is deleted while a Deployment reads it, as in a cluster without the config
    // guard (or from before it was installed).
    let confgate = Confgate::start(
        &cx,
        Options::shipped(&ns).without("protect-config-keys.yaml"),
    )
    .await;
    // No shipped workload policy judges DELETE, so the generated registration never sends one; a team
    // that registers confgate's /validate for DELETE too (as the fixtures were captured) gets a
    // well-formed answer for a request whose `object` is null.
    let _cleanup = register_webhook(
        &cx,
        "ValidatingWebhookConfiguration",
        &format!("e2e-delete-{ns}"),
        json!({
            "name": "delete.e2e.confgate.dev",
            "clientConfig": {"url": format!("{}/validate", confgate.url()), "caBundle": base64(&std::fs::read_to_string(confgate.ca_path()).unwrap())},
            "rules": [{"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["DELETE"], "resources": ["deployments"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1", "v1beta1"],
            "failurePolicy": "Fail",
        }),
    )
    .await;
    // The ConfigMap goes first: the Deployment now references a missing object, and deleting
    // it must still go through.
    let mut round = 0;
    let delete = eventually(Duration::from_secs(20), "a DELETE review", || {
        round += 1;
        let kubectl = kubectl.clone();
        let ns = ns.clone();
        let confgate = &confgate;
        async move {
            let web = format!("web-{round}");
            kubectl
                .ok(&["apply", "-f", "-"], Some(&web_deployment(&ns, &web, &[])))
                .await;
            kubectl
                .ok(
                    &[
                        "delete",
                        "configmap",
                        "app-config",
                        "-n",
                        &ns,
                        "--ignore-not-found",
                    ],
                    None,
                )
                .await;
            kubectl
                .ok(
                    &["delete", "deployment", &web, "-n", &ns, "--wait=false"],
                    None,
                )
                .await;
            assert_eq!(kubectl.get(&ns, &format!("deployment/{web}")).await, None);
            kubectl
                .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
                .await;
            confgate
                .reviews_of(&format!("{ns}/{web}"))
                .into_iter()
                .find(|r| r["operation"] == "DELETE")
        }
    })
    .await;
    // Allowed, with no policy evaluated (none judges DELETE).
    assert_eq!(delete["decision"], "allow");
    assert_eq!(delete["policies"], "");
    assert_eq!(delete["endpoint"], "validate");
}

pub async fn e2e_controller_created_pods_pass(cx: Cx) {
    let ns = cx.namespace("controller-pods").await;
    let kubectl = cx.kubectl();
    kubectl
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    let confgate = Confgate::start(&cx, Options::shipped(&ns)).await;
    let manifest = web_deployment(&ns, "web", &[]).replace("replicas: 1", "replicas: 2");
    kubectl.ok(&["apply", "-f", "-"], Some(&manifest)).await;
    let pods = eventually(
        Duration::from_secs(30),
        "the ReplicaSet controller creates 2 Pods",
        || {
            let kubectl = kubectl.clone();
            let ns = ns.clone();
            async move {
                let list = kubectl.get(&ns, "pods").await?;
                let items = list["items"].as_array()?.clone();
                (items.len() == 2).then_some(items)
            }
        },
    )
    .await;
    let deployment = kubectl.get(&ns, "deployment/web").await.unwrap();
    for pod in &pods {
        assert!(
            pod["metadata"]["generateName"]
                .as_str()
                .is_some_and(|g| g.starts_with("web-"))
        );
        assert_eq!(
            pod["spec"]["containers"][0]["resources"],
            deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
        );
        assert_eq!(
            pod["metadata"]["annotations"]["checksum/config"],
            expected_checksum(&web_consumes(), &checksum_key(&kubectl, &ns).await)
        );
    }
    // The ReplicaSet and its Pods were made by controllers whose templates confgate judged (the
    // Deployment's): from 1.28 the registration's matchConditions keep the apiserver from
    // sending them at all; before, confgate skips them itself.
    let reviews = confgate.reviews();
    let made: Vec<&Value> = reviews
        .iter()
        .filter(|r| (r["kind"] == "Pod" || r["kind"] == "ReplicaSet") && r["dry_run"] == false)
        .collect();
    if cx.minor() >= 28 {
        assert_eq!(made, Vec::<&Value>::new());
    } else {
        assert!(made.len() >= 3, "{reviews:#?}");
        for review in made {
            assert_eq!(review["decision"], "allow", "{review}");
            assert_eq!(review["policies"], "", "every policy skipped: {review}");
        }
    }
}

pub async fn e2e_controller_made_pods_do_not_wait_for_a_down_confgate(cx: Cx) {
    let ns = cx.namespace("outage-blast-radius").await;
    let kubectl = cx.kubectl();
    kubectl
        .ok(&["apply", "-f", "-"], Some(&app_config(&ns)))
        .await;
    let mut confgate = Confgate::start(&cx, Options::shipped(&ns)).await;
    kubectl
        .ok(
            &["apply", "-f", "-"],
            Some(&web_deployment(&ns, "web", &[])),
        )
        .await;
    // confgate goes away; its registration (Fail for Pods and ReplicaSets) stays.
    confgate.stop();
    kubectl
        .ok(
            &["scale", "deployment", "web", "-n", &ns, "--replicas=3"],
            None,
        )
        .await;
    let count_pods = || {
        let kubectl = kubectl.clone();
        let ns = ns.clone();
        async move {
            let list = kubectl.get(&ns, "pods").await?;
            Some(list["items"].as_array()?.len())
        }
    };
    if cx.minor() >= 28 {
        // matchConditions: the ReplicaSet controller's Pods are never sent to confgate.
        eventually(
            Duration::from_secs(30),
            "three Pods while confgate is down",
            || {
                let count = count_pods();
                async move { (count.await? == 3).then_some(()) }
            },
        )
        .await;
    } else {
        // No matchConditions before 1.28: the Fail webhook blocks them (README, known limits).
        let events = eventually(Duration::from_secs(30), "the failed webhook call", || {
            let kubectl = kubectl.clone();
            let ns = ns.clone();
            async move {
                let out = kubectl
                    .ok(&["get", "events", "-n", &ns, "-o", "json"], None)
                    .await;
                out.contains("failed calling webhook").then_some(out)
            }
        })
        .await;
        assert!(events.contains("require-config-keys.validate.confgate.dev"));
    }
}

pub async fn e2e_finalizer_removal_is_never_blocked(cx: Cx) {
    let ns = cx.namespace("finalizer").await;
    let kubectl = cx.kubectl();
    kubectl
        .ok(
            &[
                "create",
                "configmap",
                "soon-gone",
                "-n",
                &ns,
                "--from-literal=K=v",
            ],
            None,
        )
        .await;
    let policy = r#"
apiVersion: confgate.dev/v1alpha1
kind: Policy
metadata: {name: strict-refs}
spec:
  type: require-config-keys
  match: {kinds: [Pod]}
  settings: {onlyNewViolations: false}
"#;
    let _confgate = Confgate::start(&cx, Options::with_policies(&ns, policy)).await;
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: held, namespace: {ns}, finalizers: [e2e.example/hold]}}
spec:
  containers:
  - name: app
    image: nginx
    envFrom: [{{configMapRef: {{name: soon-gone}}}}]
"#
    );
    kubectl.ok(&["apply", "-f", "-"], Some(&pod)).await;
    kubectl
        .ok(&["delete", "configmap", "soon-gone", "-n", &ns], None)
        .await;
    // An ordinary update is now denied: the Pod references a ConfigMap that is gone.
    let denied = kubectl
        .fails(&["label", "pod", "held", "-n", &ns, "touched=yes"], None)
        .await;
    assert!(
        denied.contains(&format!("configmap \"{ns}/soon-gone\" not found")),
        "{denied}"
    );
    // Deleting it leaves it terminating on its finalizer; removing the finalizer goes through.
    kubectl
        .ok(&["delete", "pod", "held", "-n", &ns, "--wait=false"], None)
        .await;
    kubectl
        .ok(
            &[
                "patch",
                "pod",
                "held",
                "-n",
                &ns,
                "--type=json",
                "-p",
                r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
            ],
            None,
        )
        .await;
    eventually(Duration::from_secs(20), "the Pod is gone", || {
        let kubectl = kubectl.clone();
        let ns = ns.clone();
        async move { kubectl.get(&ns, "pod/held").await.is_none().then_some(()) }
    })
    .await;
}

/// Base64 of a PEM, for a caBundle.
fn base64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn rand_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:x}", nanos & 0xfffff)
}

/// Applies a webhook configuration of `kind` with one `webhook`; it is deleted when the
/// returned guard is dropped.
async fn register_webhook(cx: &Cx, kind: &str, name: &str, webhook: Value) -> Cleanup {
    let registration = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name},
        "webhooks": [webhook],
    });
    cx.kubectl()
        .ok(&["apply", "-f", "-"], Some(&registration.to_string()))
        .await;
    Cleanup(
        vec![
            "delete".into(),
            kind.to_lowercase(),
            name.into(),
            "--ignore-not-found".into(),
        ],
        cx.kubectl(),
    )
}

/// Runs a kubectl command when dropped (removes what a test registered).
struct Cleanup(Vec<String>, crate::harness::Kubectl);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.1.kubeconfig)
            .args(&self.0)
            .output();
    }
}
