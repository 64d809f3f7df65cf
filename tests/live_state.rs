//! The live cluster state against a stand-in for the Kubernetes API: the watchers list and sync,
//! readiness follows them, lookups answer from memory, Secrets are fetched by name on demand.

use axum::http::{Request, Response, StatusCode};
use confgate::cluster::live::{LiveState, SecretsMode};
use confgate::cluster::{ClusterState, Lookup, sha256};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn list(kind: &str, items: serde_json::Value) -> String {
    json!({"apiVersion": "v1", "kind": format!("{kind}List"), "metadata": {"resourceVersion": "10"}, "items": items}).to_string()
}

fn api(requests: Arc<Mutex<Vec<String>>>) -> kube::Client {
    let service = tower::service_fn(move |request: Request<kube::client::Body>| {
        let requests = requests.clone();
        async move {
            let uri = request.uri().to_string();
            requests.lock().unwrap().push(uri.clone());
            if uri.contains("watch=true") {
                // A watch that stays open with no events.
                std::future::pending::<()>().await;
            }
            let path = request.uri().path();
            let (status, body) = match path {
                "/api/v1/configmaps" => (StatusCode::OK, list("ConfigMap", json!([{"metadata": {"name": "app-config", "namespace": "shop", "resourceVersion": "7"}, "data": {"LOG_LEVEL": "info"}}]))),
                "/api/v1/namespaces" => (StatusCode::OK, list("Namespace", json!([{"metadata": {"name": "shop", "labels": {"team": "payments"}, "resourceVersion": "3"}}]))),
                "/api/v1/limitranges" => (StatusCode::OK, list("LimitRange", json!([]))),
                "/api/v1/namespaces/shop/secrets/app-secret" => (StatusCode::OK, json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "app-secret", "namespace": "shop"}, "data": {"API_KEY": "czNjcjN0"}}).to_string()),
                _ => (StatusCode::NOT_FOUND, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}).to_string()),
            };
            Ok::<_, std::convert::Infallible>(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                    .unwrap(),
            )
        }
    });
    kube::Client::new(service, "default")
}

#[tokio::test]
async fn syncs_caches_and_reads_secrets_by_name() {
    let requests = Arc::new(Mutex::new(Vec::new()));
    let state = LiveState::start(api(requests.clone()), SecretsMode::Get);
    for _ in 0..100 {
        if state.ready().is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state.ready(), Ok(()));
    let Lookup::Found(cm) = state.config_map("shop", "app-config") else {
        panic!("configmap not cached")
    };
    assert_eq!(cm.get("LOG_LEVEL"), Some(&sha256(b"info")));
    assert_eq!(state.config_map("shop", "other"), Lookup::Missing);
    assert_eq!(state.namespace_labels("shop").unwrap()["team"], "payments");
    assert_eq!(state.limit_ranges("shop"), Some(vec![]));

    // Secrets: unknown until fetched, then answered from the short-lived digest cache.
    assert!(state.wants_secret_prefetch());
    assert!(matches!(
        state.secret("shop", "app-secret"),
        Lookup::Unknown(_)
    ));
    state
        .prefetch_secrets("shop", vec!["app-secret".into(), "gone".into()])
        .await;
    let Lookup::Found(secret) = state.secret("shop", "app-secret") else {
        panic!("secret not fetched")
    };
    assert_eq!(secret.get("API_KEY"), Some(&sha256(b"s3cr3t")));
    assert_eq!(state.secret("shop", "gone"), Lookup::Missing);
    // Fetched by name only: confgate never lists or watches Secrets in this mode.
    let requests = requests.lock().unwrap();
    assert!(
        requests
            .iter()
            .filter(|r| r.contains("secrets"))
            .all(|r| r.starts_with("/api/v1/namespaces/shop/secrets/")),
        "{requests:?}"
    );
}
