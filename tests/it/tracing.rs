//! OpenTelemetry traces from `confgate serve`, received by a small OTLP/HTTP receiver: a span per
//! review under the trace the caller sent (`traceparent`), policy spans inside it, the request's
//! identity as attributes and never Secret data; nothing when the SDK is disabled; a clear
//! start-up error for a protocol confgate does not speak.

use crate::common::*;
use crate::otlp::{Receiver, Span};
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// What the reviewed Deployment finds in the cluster: `app-config` without `DATABASE_URL`, and
/// the Secret whose value must never leave confgate.
const STATE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: app-config, namespace: shop}
data:
  config.yaml: "batchSize: 128"
---
apiVersion: v1
kind: Secret
metadata: {name: app-secret, namespace: shop}
type: Opaque
stringData:
  API_KEY: s3cr3t-value
"#;

struct Served {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Served {
    fn start(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.yaml"), STATE).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_confgate"));
        command
            .current_dir(root())
            .args(["serve", "--log-format=json", "--shutdown-delay-seconds=0"])
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg(format!(
                "--tls-cert={}",
                dir.path().join("tls.crt").display()
            ))
            .arg(format!(
                "--tls-key={}",
                dir.path().join("tls.key").display()
            ))
            .arg(format!(
                "--cluster-state={}",
                dir.path().join("state.yaml").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap());
        for (name, _) in std::env::vars() {
            if name.starts_with("OTEL_") {
                command.env_remove(name);
            }
        }
        command.envs(env.iter().copied());
        let child = command.spawn().unwrap();
        Self { child, dir, port }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    async fn client(&self) -> reqwest::Client {
        let ca = self.dir.path().join("ca.crt");
        for _ in 0..300 {
            if ca.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let tls = confgate::certs::client_tls_with(Some(&ca), None).unwrap();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .unwrap();
        for _ in 0..300 {
            if let Ok(r) = client.get(self.url("/readyz")).send().await
                && r.status() == 200
            {
                return client;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("confgate not ready:\n{}", self.log());
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// SIGTERM, and the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Served {
    /// A test that fails leaves no server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post(
    client: &reqwest::Client,
    url: String,
    fixture: &str,
    traceparent: Option<&str>,
) -> Value {
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .body(fixture_bytes(fixture));
    if let Some(parent) = traceparent {
        request = request.header("traceparent", parent);
    }
    let answer = request.send().await.unwrap();
    assert_eq!(answer.status(), 200);
    answer.json().await.unwrap()
}

fn review_of<'a>(spans: &'a [Span], uid: &str, endpoint: &str) -> Option<&'a Span> {
    spans.iter().find(|s| {
        s.name == endpoint
            && s.attr("admission.uid") == uid
            && !s.attr("admission.decision").is_empty()
    })
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_is_a_server_span_under_the_callers_trace_with_its_policies_inside() {
    let receiver = Receiver::start().await;
    let mut served = Served::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    let client = served.client().await;
    let deployment = fixture("create-deployment-web");
    let uid = deployment.request.uid.clone();
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let answer = post(
        &client,
        served.url("/validate"),
        "create-deployment-web",
        Some(&traceparent),
    )
    .await;
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    let review = receiver
        .wait_for("review span", |spans| {
            review_of(spans, &uid, "validate").cloned()
        })
        .await;
    assert_eq!(review.trace_id, TRACE, "the caller's trace continues");
    assert_eq!(review.parent_span_id, PARENT, "under the caller's span");
    assert_eq!(review.kind, 2, "a server span");
    assert_eq!(review.service, "confgate");
    for (key, value) in [
        ("admission.endpoint", "validate"),
        ("admission.kind", "Deployment"),
        ("admission.operation", "CREATE"),
        ("admission.dry_run", "false"),
        ("k8s.namespace.name", "shop"),
        ("admission.object", "shop/web"),
        ("admission.decision", "deny"),
        ("admission.patch_ops", "0"),
    ] {
        assert_eq!(review.attr(key), value, "{key} of {review:#?}");
    }
    // One span per policy that judged it, each a child of the review, with its outcome.
    let policies: Vec<Span> = receiver
        .wait_for("policy spans", |spans| {
            let inside: Vec<Span> = spans
                .iter()
                .filter(|s| s.parent_span_id == review.span_id && s.name == "policy")
                .cloned()
                .collect();
            (!inside.is_empty()).then_some(inside)
        })
        .await;
    let judged: Vec<(String, String)> = policies
        .iter()
        .map(|s| (s.attr("policy").to_owned(), s.attr("outcome").to_owned()))
        .collect();
    assert!(
        judged.contains(&("require-config-keys".into(), "deny".into())),
        "{judged:?}"
    );
    assert!(policies.iter().all(|s| s.trace_id == TRACE));

    // Without a traceparent, a review starts its own trace; a Secret's review exports no value.
    let secret = fixture("create-secret-app-secret");
    let answer = post(
        &client,
        served.url("/mutate"),
        "create-secret-app-secret",
        None,
    )
    .await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let own = receiver
        .wait_for("the Secret's review span", |spans| {
            review_of(spans, &secret.request.uid, "mutate").cloned()
        })
        .await;
    assert_eq!(own.parent_span_id, "", "a root span");
    assert_ne!(own.trace_id, TRACE);
    assert_eq!(own.attr("admission.kind"), "Secret");

    // A refused request is an error span.
    let refused = client
        .post(served.url("/validate"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 415);
    let failed = receiver
        .wait_for("the refused request's span", |spans| {
            spans
                .iter()
                .find(|s| s.name == "validate" && s.status == 2)
                .cloned()
        })
        .await;
    assert_eq!(
        failed.events,
        ["request refused"],
        "its warning is a span event"
    );

    assert!(served.stop().success());
    for body in receiver.bodies() {
        let text = String::from_utf8_lossy(&body);
        for value in ["s3cr3t-value", "czNjcjN0LXZhbHVl", "xyzzy", "eHl6enk="] {
            assert!(!text.contains(value), "Secret data {value} was exported");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_exported_when_the_sdk_is_disabled() {
    let receiver = Receiver::start().await;
    let mut served = Served::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_SDK_DISABLED", "true"),
    ]);
    let client = served.client().await;
    post(
        &client,
        served.url("/validate"),
        "create-deployment-web",
        Some(&format!("00-{TRACE}-{PARENT}-01")),
    )
    .await;
    // Shutting down flushes whatever was queued: after it, nothing can still arrive.
    assert!(served.stop().success());
    assert_eq!(receiver.bodies().len(), 0);
    // The review is still logged (spans are off for the log, its lines are not).
    let log = served.log();
    let reviews: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "review")
        .collect();
    assert_eq!(reviews.len(), 1, "{log}");
    assert_eq!(reviews[0]["object"], "shop/web");
    assert_eq!(reviews[0]["decision"], "deny");
}

#[test]
fn an_unsupported_protocol_stops_the_start_and_names_the_variable() {
    let mut served = Served::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ]);
    let status = served.child.wait().unwrap();
    assert_eq!(status.code(), Some(2));
    let log = served.log();
    assert_eq!(
        log.trim(),
        "confgate: OTEL_EXPORTER_OTLP_PROTOCOL=\"grpc\": confgate exports traces over OTLP/HTTP with protobuf only (`http/protobuf`, a collector's port 4318)"
    );
}
