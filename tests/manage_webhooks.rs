//! `serve --manage-webhooks` against a recording stand-in for the Kubernetes API: the generated
//! registration is server-side applied with field manager `confgate`, with the current CA.

mod common;

use axum::http::{Request, Response};
use common::*;
use confgate::cluster::Standalone;
use confgate::server::AppState;
use confgate::webhooks::Options;
use http_body_util::BodyExt;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Seen = Arc<Mutex<Vec<(String, String, String, Value)>>>;

fn api(seen: Seen) -> kube::Client {
    let service = tower::service_fn(move |request: Request<kube::client::Body>| {
        let seen = seen.clone();
        async move {
            let (parts, body) = request.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            let object: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let content_type = parts
                .headers
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            seen.lock().unwrap().push((
                parts.method.to_string(),
                parts.uri.to_string(),
                content_type,
                object,
            ));
            // Server-side apply answers with the object it stored.
            Ok::<_, std::convert::Infallible>(
                Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bytes))
                    .unwrap(),
            )
        }
    });
    kube::Client::new(service, "confgate-system")
}

#[tokio::test]
async fn applies_the_generated_registration_with_the_current_ca() {
    let seen: Seen = Arc::default();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nfirst\n").unwrap();
    let state = AppState::new(shipped_policies(), Arc::new(Standalone), 1 << 20, false);
    let options = Options::for_service("confgate", "confgate-system");
    let task = tokio::spawn(confgate::manage_webhooks::run(
        api(seen.clone()),
        state,
        options,
        ca.clone(),
    ));
    for _ in 0..100 {
        if seen.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.len(),
        2,
        "one apply per configuration, then nothing until something changes"
    );
    let (method, uri, content_type, object) = &seen[0];
    assert_eq!(method, "PATCH");
    assert!(
        uri.starts_with(
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/confgate?"
        ),
        "{uri}"
    );
    assert!(
        uri.contains("fieldManager=confgate") && uri.contains("force=true"),
        "{uri}"
    );
    assert_eq!(content_type, "application/apply-patch+yaml");
    assert_eq!(object["kind"], "MutatingWebhookConfiguration");
    assert_eq!(
        object["webhooks"][0]["clientConfig"]["caBundle"],
        "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCmZpcnN0Cg=="
    );
    assert!(seen[1].1.starts_with(
        "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/confgate?"
    ));
    assert_eq!(seen[1].3["webhooks"].as_array().unwrap().len(), 3);
}
