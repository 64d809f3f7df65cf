//! `serve --manage-webhooks` against a real apiserver: the registration it keeps applied is the
//! one `confgate webhooks` generates, server-side applied with field manager `confgate`, taking
//! over fields another manager set, and following policy changes.

use crate::harness::{Confgate, Cx, Options, eventually};
use serde_json::{Value, json};
use std::time::Duration;

/// True when every field of `expected` is in `actual` with the same value (the apiserver adds
/// defaults of its own).
fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => e
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|av| contains(av, v))),
        (Value::Array(a), Value::Array(e)) => {
            a.len() == e.len() && a.iter().zip(e).all(|(av, ev)| contains(av, ev))
        }
        _ => actual == expected,
    }
}

pub async fn e2e_manage_webhooks_applies_the_generated_registration_and_takes_over(cx: Cx) {
    let ns = cx.namespace("manage-webhooks").await;
    let kubectl = cx.kubectl();
    let name = format!("e2e-managed-{ns}");
    // Someone else got there first, with a different timeout on confgate's validating webhook.
    let squatter = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "require-config-keys.validate.confgate.dev",
            "clientConfig": {"url": "https://127.0.0.1:1/validate/require-config-keys"},
            "rules": [{"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["deployments"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "nowhere"}},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 29,
            "failurePolicy": "Ignore",
        }]
    });
    // And a mutating configuration whose checksum webhook calls a Service: confgate registers a
    // URL there, and a merge would keep both (invalid), so confgate must replace it.
    let mutating_squatter = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "checksum-config.mutate.confgate.dev",
            "clientConfig": {"service": {"name": "old-confgate", "namespace": "default", "path": "/mutate"}},
            "rules": [{"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["deployments"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "nowhere"}},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
        }]
    });
    for object in [&squatter, &mutating_squatter] {
        kubectl
            .ok(
                &[
                    "apply",
                    "--server-side",
                    "--field-manager=someone-else",
                    "-f",
                    "-",
                ],
                Some(&object.to_string()),
            )
            .await;
    }
    let port = crate::harness::process::free_port();
    let url = format!("https://127.0.0.1:{port}");
    let options = Options::shipped(&ns)
        .unregistered()
        .port(port)
        .arg("--manage-webhooks")
        .arg(format!("--webhook-url={url}"))
        .arg(format!("--webhook-name={name}"))
        .arg(format!("--webhook-namespace={ns}-confgate"));
    let mut confgate = Confgate::start(&cx, options).await;
    confgate.registration = Some(name.clone());
    let options_url = confgate.url();
    assert_eq!(options_url, url);
    let own_namespace = format!("--namespace={ns}-confgate");
    let generated =
        confgate::yaml::documents(&confgate.webhooks_yaml_with(&name, &[&own_namespace])).unwrap();
    assert_eq!(generated.len(), 2);
    for expected in &generated {
        let kind = expected["kind"].as_str().unwrap().to_lowercase();
        let stored = eventually(
            Duration::from_secs(30),
            "the registration is applied",
            || {
                let kubectl = kubectl.clone();
                let what = format!("{kind}/{name}");
                let expected = expected.clone();
                async move {
                    let stored = kubectl.get("default", &what).await?;
                    // Nothing of the other manager's is left: same clients and selectors exactly.
                    let exact = stored["webhooks"]
                        .as_array()?
                        .iter()
                        .zip(expected["webhooks"].as_array()?)
                        .all(|(s, e)| {
                            s["clientConfig"] == e["clientConfig"]
                                && s["namespaceSelector"] == e["namespaceSelector"]
                        });
                    (exact && contains(&stored["webhooks"], &expected["webhooks"]))
                        .then_some(stored)
                }
            },
        )
        .await;
        let with_fields = kubectl
            .ok(
                &[
                    "get",
                    &format!("{kind}/{name}"),
                    "-o",
                    "json",
                    "--show-managed-fields",
                ],
                None,
            )
            .await;
        let with_fields: Value = serde_json::from_str(&with_fields).unwrap();
        let managers: Vec<&str> = with_fields["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["manager"].as_str())
            .collect();
        assert!(managers.contains(&"confgate"), "{managers:?}");
        assert_eq!(
            stored["webhooks"].as_array().unwrap().len(),
            expected["webhooks"].as_array().unwrap().len()
        );
    }
    // In effect: the apiserver calls confgate through it.
    confgate.wait_called().await;
    // A new policy reaches the registration without a restart.
    std::fs::write(
        confgate.policies_dir().join("extra.yaml"),
        format!(
            "apiVersion: confgate.dev/v1alpha1\nkind: Policy\nmetadata: {{name: extra-refs}}\nspec:\n  type: require-config-keys\n  action: Warn\n  match: {{kinds: [StatefulSet], namespaces: [{ns}]}}\n"
        ),
    )
    .unwrap();
    eventually(
        Duration::from_secs(40),
        "the new policy's webhook is registered",
        || {
            let kubectl = kubectl.clone();
            let what = format!("validatingwebhookconfiguration/{name}");
            async move {
                let stored = kubectl.get("default", &what).await?;
                stored["webhooks"]
                    .as_array()?
                    .iter()
                    .any(|w| w["name"] == "extra-refs.validate.confgate.dev")
                    .then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        confgate
            .metric("confgate_config_reloads_total{source=\"policies\",result=\"success\"}")
            .await,
        1.0
    );
}
