//! Every captured AdmissionReview through the engine and the HTTP router, with the shipped
//! policies and the fixture cluster: the response echoes version and uid, the decision is the
//! documented one, every patch applies and is idempotent.

use crate::common::*;
use axum::body::Body;
use base64::Engine as _;
use confgate::policy::Phase;
use confgate::server::router;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

/// What the shipped policies do with each fixture, on the fixture cluster: (patched, warnings).
/// Every fixture is allowed: all non-optional references in them resolve.
fn expected(name: &str) -> (bool, &'static [&'static str]) {
    const DB_URL_WARN: &str =
        "payments-database-url: required key DATABASE_URL is not provided by any container";
    match name {
        // Config objects, deletions, the scale subresource: not evaluated.
        n if n.starts_with("create-configmap")
            || n.starts_with("create-secret")
            || n.starts_with("delete-") =>
        {
            (false, &[])
        }
        "update-configmap-app-config" | "update-deployments-scale-web" => (false, &[]),
        // Made by a controller (ReplicaSet, Deployment) whose template the policies judge: not
        // judged again (README, "A small blast radius").
        "create-pod-generatename-from-replicaset" | "create-replicaset-from-deployment" => {
            (false, &[])
        }
        // Pods the built-in LimitRanger already defaulted: nothing left to fill.
        "create-pod-nginx-lr" | "create-pod-limits-only" => (false, &[]),
        "create-deployment-bare"
        | "create-deployment-dryrun"
        | "create-deployment-legacy"
        | "create-deployment-legacy-v1beta1"
        | "create-statefulset-cache" => (true, &[DB_URL_WARN]),
        _ => (true, &[]),
    }
}

#[test]
fn every_fixture_gets_its_documented_answer_from_the_engine() {
    let engine = engine(fixture_cluster());
    let set = shipped_policies();
    for name in all_fixtures() {
        let review = fixture(&name);
        let (patched, warnings) = expected(&name);
        let mutate = evaluate(&engine, &set, &review, Phase::Mutate);
        assert!(mutate.allowed(), "{name}: {:?}", mutate.denials);
        assert_eq!(
            !mutate.patch.0.is_empty(),
            patched,
            "{name}: patch {:?}",
            mutate.patch
        );
        let decision = engine.evaluate_both(&set, &review).unwrap();
        assert!(decision.allowed(), "{name}: {:?}", decision.denials);
        let found: Vec<String> = decision
            .warnings
            .iter()
            .map(|w| w.split(" (checked").next().unwrap().to_owned())
            .collect();
        assert_eq!(found, warnings, "{name}");
        if review.object.is_some() && patched {
            mutate_idempotent(&engine, &set, &review);
        }
    }
}

#[test]
fn deployment_web_is_defaulted_and_stamped() {
    let engine = engine(fixture_cluster());
    let (_, patched) = mutate_idempotent(
        &engine,
        &shipped_policies(),
        &fixture("create-deployment-web"),
    );
    let template = &patched["spec"]["template"];
    assert_eq!(
        template["spec"]["containers"][0]["resources"],
        json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}})
    );
    // The sidecar had limits only: they become its requests (Pod defaulting), nothing else is added.
    assert_eq!(
        template["spec"]["containers"][1]["resources"],
        json!({"limits": {"cpu": "200m", "memory": "128Mi"}, "requests": {"cpu": "200m", "memory": "128Mi"}})
    );
    assert_eq!(
        template["spec"]["initContainers"][0]["resources"],
        json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}})
    );
    let annotations = template["metadata"]["annotations"].as_object().unwrap();
    assert_eq!(
        annotations["confgate.dev/limitrange-defaults"],
        "LimitRanger plugin set: cpu, memory request for container web; memory limit for container web; cpu, memory request for init container migrate; memory limit for init container migrate"
    );
    assert_eq!(annotations["checksum/config"].as_str().unwrap().len(), 64);
}

/// POSTs as the apiserver does: with a Content-Length, so the server reserves what the body
/// declares from the in-flight budget (without one it reserves the largest allowed body, and
/// concurrent large reviews then queue for the budget, flakily past its 1 s wait on a busy CI).
async fn post(app: axum::Router, path: &str, body: Vec<u8>) -> (u16, Value) {
    let request = axum::http::Request::post(path)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(Body::from(body))
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn every_fixture_through_the_http_server() {
    let state = fixture_server_state(8 * 1024 * 1024);
    for name in all_fixtures() {
        let sent: Value = serde_json::from_slice(&fixture_bytes(&name)).unwrap();
        let (patched, _) = expected(&name);
        for path in ["/mutate?timeout=5s", "/validate?timeout=10s"] {
            let (status, answer) = post(router(state.clone()), path, fixture_bytes(&name)).await;
            assert_eq!(status, 200, "{name} {path}");
            assert_eq!(
                answer["apiVersion"], sent["apiVersion"],
                "{name}: version echo"
            );
            assert_eq!(answer["kind"], "AdmissionReview");
            assert_eq!(
                answer["response"]["uid"], sent["request"]["uid"],
                "{name}: uid echo"
            );
            assert_eq!(answer["response"]["allowed"], true, "{name} {path}");
            let patch = answer["response"].get("patch");
            if path.starts_with("/mutate") && patched {
                assert_eq!(answer["response"]["patchType"], "JSONPatch");
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(patch.unwrap().as_str().unwrap())
                    .unwrap();
                let ops: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
                apply(&sent["request"]["object"], &ops);
            } else {
                assert!(patch.is_none(), "{name} {path}: unexpected patch");
                assert!(answer["response"].get("patchType").is_none());
            }
        }
    }
}

#[tokio::test]
async fn v1beta1_is_answered_in_v1beta1_with_the_same_answer_as_v1() {
    let state = fixture_server_state(8 * 1024 * 1024);
    let (_, v1) = post(
        router(state.clone()),
        "/mutate",
        fixture_bytes("create-deployment-legacy"),
    )
    .await;
    let (_, beta) = post(
        router(state),
        "/mutate",
        fixture_bytes("create-deployment-legacy-v1beta1"),
    )
    .await;
    assert_eq!(v1["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(beta["apiVersion"], "admission.k8s.io/v1beta1");
    assert_eq!(v1["response"]["patch"], beta["response"]["patch"]);
}

#[tokio::test]
async fn the_big_configmap_is_answered() {
    let state = fixture_server_state(7 * 1024 * 1024);
    let body = fixture_bytes("create-configmap-big-config");
    assert!(body.len() > 1_000_000);
    let (status, answer) = post(router(state), "/validate", body).await;
    assert_eq!(status, 200);
    assert_eq!(answer["response"]["allowed"], true);
}

/// A workload review above the offload size goes through the large-review threads, one or a
/// few at a time: several at once are all answered, each with the patch and warnings of the same
/// workload sent small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_workload_reviews_are_answered_like_small_ones() {
    let state = fixture_server_state(7 * 1024 * 1024);
    let small = fixture_bytes("create-deployment-web");
    let mut review: Value = serde_json::from_slice(&small).unwrap();
    let padding = "x".repeat(confgate::server::service::OFFLOAD_BYTES + 1);
    review["request"]["object"]["metadata"]["annotations"]["padding"] = json!(padding);
    let large = serde_json::to_vec(&review).unwrap();
    assert!(large.len() > confgate::server::service::OFFLOAD_BYTES);

    let (status, expected) = post(router(state.clone()), "/mutate", small).await;
    assert_eq!(status, 200);
    assert!(expected["response"]["patch"].is_string(), "{expected}");
    let answers = futures::future::join_all(
        (0..4).map(|_| post(router(state.clone()), "/mutate", large.clone())),
    )
    .await;
    for (status, answer) in answers {
        assert_eq!(status, 200);
        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(answer["response"]["patch"], expected["response"]["patch"]);
        assert_eq!(
            answer["response"]["warnings"],
            expected["response"]["warnings"]
        );
    }
}
