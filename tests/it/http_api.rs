//! The HTTP API through the router (no socket): bad input gets a clear 4xx JSON answer, the
//! per-policy endpoints, probes and metrics.

use crate::common::*;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use confgate::server::{AppState, router};
use http_body_util::BodyExt;
use serde_json::Value;
use std::sync::Arc;
use tower::ServiceExt;

async fn send(state: &Arc<AppState>, request: Request<Body>) -> (StatusCode, String) {
    let response = router(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn post(path: &str, content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut builder = Request::post(path);
    if let Some(ct) = content_type {
        builder = builder.header("content-type", ct);
    }
    builder.body(body.into()).unwrap()
}

async fn refused(state: &Arc<AppState>, request: Request<Body>) -> (u16, String) {
    let (status, body) = send(state, request).await;
    let json: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert_eq!(json["code"], status.as_u16());
    (status.as_u16(), json["error"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn rejects_malformed_json() {
    let (code, error) = refused(
        &fixture_server_state(1 << 20),
        post("/validate", Some("application/json"), "{\"kind\":"),
    )
    .await;
    assert_eq!(code, 400);
    assert!(
        error.starts_with("request body is not valid JSON"),
        "{error}"
    );
}

#[tokio::test]
async fn rejects_review_without_request() {
    let body = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#;
    let (code, error) = refused(
        &fixture_server_state(1 << 20),
        post("/mutate", Some("application/json"), body),
    )
    .await;
    assert_eq!(
        (code, error.as_str()),
        (400, "AdmissionReview has no \"request\"")
    );
}

#[tokio::test]
async fn rejects_other_documents_and_versions() {
    let s = fixture_server_state(1 << 20);
    let (code, error) = refused(
        &s,
        post(
            "/validate",
            Some("application/json"),
            r#"{"apiVersion":"v1","kind":"Pod"}"#,
        ),
    )
    .await;
    assert_eq!(
        (code, error.as_str()),
        (400, "kind must be \"AdmissionReview\", got \"Pod\"")
    );
    let (code, _) = refused(&s, post("/validate", Some("application/json"), "[1,2]")).await;
    assert_eq!(code, 400);
    let bad_request =
        r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x"}}"#;
    let (code, error) = refused(&s, post("/validate", Some("application/json"), bad_request)).await;
    assert_eq!(code, 400);
    assert!(
        error.starts_with("invalid AdmissionReview request"),
        "{error}"
    );
}

#[tokio::test]
async fn rejects_non_json_content_type() {
    let s = fixture_server_state(1 << 20);
    let (code, error) = refused(
        &s,
        post(
            "/validate",
            Some("text/plain"),
            fixture_bytes("create-pod-mynginx"),
        ),
    )
    .await;
    assert_eq!(
        (code, error.as_str()),
        (
            415,
            "Content-Type must be application/json, got \"text/plain\""
        )
    );
    let (code, _) = refused(
        &s,
        post("/validate", None, fixture_bytes("create-pod-mynginx")),
    )
    .await;
    assert_eq!(code, 415);
    let (status, _) = send(
        &s,
        post(
            "/validate",
            Some("application/json; charset=utf-8"),
            fixture_bytes("create-pod-mynginx"),
        ),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn rejects_oversized_bodies_declared_or_streamed() {
    let s = fixture_server_state(4096);
    let body = fixture_bytes("create-deployment-web");
    assert!(body.len() > 4096);
    let (code, error) = refused(
        &s,
        post("/validate", Some("application/json"), body.clone()),
    )
    .await;
    assert_eq!(
        (code, error.as_str()),
        (
            413,
            "request body exceeds the limit of 4096 bytes (--max-body-bytes)"
        )
    );
    // Without Content-Length (chunked): the limit still holds.
    let stream = futures::stream::iter(
        body.chunks(1000)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let (code, _) = refused(
        &s,
        post(
            "/validate",
            Some("application/json"),
            Body::from_stream(stream),
        ),
    )
    .await;
    assert_eq!(code, 413);
}

#[tokio::test]
async fn per_policy_endpoints_run_one_policy() {
    let s = fixture_server_state(1 << 20);
    let (status, body) = send(
        &s,
        post(
            "/mutate/limitrange-defaults",
            Some("application/json"),
            fixture_bytes("create-deployment-web"),
        ),
    )
    .await;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_str(&body).unwrap();
    let patch = answer["response"]["patch"].as_str().unwrap();
    let (_, all) = send(
        &s,
        post(
            "/mutate",
            Some("application/json"),
            fixture_bytes("create-deployment-web"),
        ),
    )
    .await;
    let all: Value = serde_json::from_str(&all).unwrap();
    assert_ne!(
        all["response"]["patch"].as_str().unwrap(),
        patch,
        "the checksum is not stamped by limitrange-defaults alone"
    );
    let (code, error) = refused(
        &s,
        post(
            "/validate/nope",
            Some("application/json"),
            fixture_bytes("create-deployment-web"),
        ),
    )
    .await;
    assert_eq!(
        (code, error.as_str()),
        (404, "no policy named \"nope\" is loaded")
    );
    let (code, error) = refused(
        &s,
        post(
            "/validate/checksum-config",
            Some("application/json"),
            fixture_bytes("create-deployment-web"),
        ),
    )
    .await;
    assert_eq!(
        (code, error.as_str()),
        (404, "policy \"checksum-config\" does not validate")
    );
}

#[tokio::test]
async fn unknown_paths_and_methods_are_404_json() {
    let s = fixture_server_state(1 << 20);
    let (code, _) = refused(&s, Request::get("/admit").body(Body::empty()).unwrap()).await;
    assert_eq!(code, 404);
    let (status, _) = send(&s, Request::get("/mutate").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn probes_and_shutdown() {
    let s = fixture_server_state(1 << 20);
    let (status, body) = send(&s, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    let (status, body) = send(&s, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let shipped = crate::common::shipped_policies().policies.len();
    assert_eq!(body, format!("ok: {shipped} policies; static: 4 file(s)\n"));
    s.begin_shutdown();
    let (status, body) = send(&s, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n"
        )
    );
}

#[tokio::test]
async fn metrics_count_requests_policies_and_refusals() {
    let s = fixture_server_state(1 << 20);
    send(
        &s,
        post(
            "/validate",
            Some("application/json"),
            fixture_bytes("create-deployment-bare"),
        ),
    )
    .await;
    send(&s, post("/validate", Some("text/plain"), "x")).await;
    let (status, text) = send(&s, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let loaded = format!(
        "confgate_policies_loaded {}",
        crate::common::shipped_policies().policies.len()
    );
    for expected in [
        r#"confgate_admission_requests_total{endpoint="validate",kind="Deployment",operation="CREATE",decision="allow"} 1"#,
        r#"confgate_policy_verdicts_total{policy="payments-database-url",endpoint="validate",kind="Deployment",operation="CREATE",verdict="warn"} 1"#,
        r#"confgate_rejected_requests_total{reason="content_type"} 1"#,
        r#"confgate_cache_objects{resource="configmaps"} 2"#,
        loaded.as_str(),
        "confgate_admission_request_duration_seconds_bucket{le=\"0.0001\",endpoint=\"validate\"}",
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
}

#[tokio::test]
async fn delete_connect_and_subresources_are_allowed_without_evaluation() {
    let s = fixture_server_state(1 << 20);
    for name in [
        "delete-deployment-bare",
        "delete-pod-mynginx-graceful",
        "update-deployments-scale-web",
    ] {
        let (status, body) = send(
            &s,
            post("/validate", Some("application/json"), fixture_bytes(name)),
        )
        .await;
        assert_eq!(status, 200);
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["response"]["allowed"], true);
        assert!(
            answer["response"].get("warnings").is_none(),
            "{name}: {body}"
        );
    }
}

/// A DELETE review (nothing to evaluate) with `kind` as the request's kind.
fn review_with_kind(kind: &str, uid: &str) -> String {
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": kind},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": "shop", "name": "p", "operation": "DELETE", "userInfo": {},
                    "object": null, "oldObject": {"metadata": {"name": "p", "namespace": "shop"}}}
    })
    .to_string()
}

#[tokio::test]
async fn request_kinds_cannot_write_into_metrics_or_grow_them() {
    let state = fixture_server_state(8 << 20);
    let injected = "Pod\"} 1\nconfgate_injected_total 42\n# ";
    let (status, _) = send(
        &state,
        post(
            "/validate",
            Some("application/json"),
            review_with_kind(injected, "u0"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for i in 0..200 {
        let kind = format!("Kind{i}{}", "x".repeat(1000));
        let (status, _) = send(
            &state,
            post(
                "/validate",
                Some("application/json"),
                review_with_kind(&kind, "u"),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (_, metrics) = send(
        &state,
        Request::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await;
    assert!(!metrics.contains("confgate_injected_total"), "{metrics}");
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("confgate_admission_requests_total{"))
        .collect();
    assert_eq!(
        series,
        vec![
            r#"confgate_admission_requests_total{endpoint="validate",kind="other",operation="DELETE",decision="allow"} 201"#
        ]
    );
}

/// A Pod review in `shop` with `n` containers.
fn pod_with_containers(n: usize) -> String {
    let containers: Vec<Value> = (0..n)
        .map(|i| serde_json::json!({"name": format!("c{i}"), "image": "nginx"}))
        .collect();
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "many", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": "shop", "name": "many", "operation": "CREATE", "userInfo": {},
                    "object": {"apiVersion": "v1", "kind": "Pod",
                               "metadata": {"name": "many", "namespace": "shop"},
                               "spec": {"containers": containers}}}
    })
    .to_string()
}

#[tokio::test]
async fn a_review_over_its_container_budget_is_answered_by_failure_policy() {
    let state = fixture_server_state(8 << 20);
    let answer = async |path: &str, body: String| -> Value {
        let (status, text) = send(&state, post(path, Some("application/json"), body)).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        serde_json::from_str::<Value>(&text).unwrap()["response"].clone()
    };
    let message = "confgate did not review Pod shop/many: 501 containers, over the limit of 500 per review (--max-review-containers)";
    // Validation fails closed by default: denied, saying why.
    let validated = answer("/validate", pod_with_containers(501)).await;
    assert_eq!(validated["allowed"], false);
    assert_eq!(validated["status"]["message"], message);
    assert_eq!(validated["status"]["code"], 403);
    // Mutation fails open by default: allowed unchanged, with the same words as a warning.
    let mutated = answer("/mutate", pod_with_containers(501)).await;
    assert_eq!(mutated["allowed"], true);
    assert_eq!(mutated["warnings"], serde_json::json!([message]));
    assert!(mutated.get("patch").is_none());
    // A policy's own failurePolicy decides on its endpoint: checksum-config is Ignore.
    let one = answer("/validate/require-config-keys", pod_with_containers(501)).await;
    assert_eq!(one["allowed"], false);
    // At the limit, the review is evaluated as usual.
    let at_limit = answer("/mutate", pod_with_containers(500)).await;
    assert_eq!(at_limit["allowed"], true);
    assert_eq!(at_limit["patchType"], "JSONPatch");
    let (_, metrics) = send(
        &state,
        Request::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await;
    assert!(
        metrics.contains(r#"confgate_rejected_requests_total{reason="over_budget"} 3"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_request_that_finds_the_in_flight_budget_taken_gets_503() {
    let state = fixture_server_state(1 << 20);
    let limits = state.admission_limits();
    let taken = state
        .inflight
        .acquire(limits.max_inflight_bytes, std::time::Duration::ZERO)
        .await
        .unwrap();
    let request = post(
        "/mutate",
        Some("application/json"),
        fixture_bytes("create-pod-mynginx"),
    );
    let response = router(state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        json["error"],
        format!(
            "confgate is busy: {0} of {0} bytes of reviews are in flight (--max-inflight-bytes)",
            limits.max_inflight_bytes
        )
    );
    drop(taken);
    let (status, _) = send(
        &state,
        post(
            "/mutate",
            Some("application/json"),
            fixture_bytes("create-pod-mynginx"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}
