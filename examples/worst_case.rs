//! Worst-case memory of `confgate serve` under hostile reviews: peak resident memory (VmHWM) of a
//! fresh server process per scenario, with the shipped policies, standalone.
//!
//!     cargo build --release && cargo run --release --example worst_case [-- path/to/confgate]
//!
//! Scenarios: a 2.9 MB Pod with 87,000 tiny containers; three and eight of those at once; three
//! apiserver-shaped 7 MB Deployment UPDATE reviews at once (object and oldObject of 3.4 MB each,
//! 40 containers with many environment variables). The figures are in BENCHMARKS.md.

mod support;

use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::status_kib;

fn review(operation: &str, kind: Value, resource: Value, object: Value, old: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "worst-case", "kind": kind, "resource": resource,
                    "namespace": "shop", "name": "x", "operation": operation, "userInfo": {},
                    "object": object, "oldObject": old}
    }))
    .unwrap()
}

/// A Pod with `n` containers named c0, c1, ... and nothing else.
fn many_containers(n: usize) -> Vec<u8> {
    let containers: Vec<Value> = (0..n)
        .map(|i| json!({"name": format!("c{i}"), "image": "i"}))
        .collect();
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "x", "namespace": "shop"}, "spec": {"containers": containers}});
    review(
        "CREATE",
        json!({"group": "", "version": "v1", "kind": "Pod"}),
        json!({"group": "", "version": "v1", "resource": "pods"}),
        pod,
        Value::Null,
    )
}

/// An UPDATE of a Deployment whose object and oldObject are each about `bytes` long: 40
/// containers with environment variables of 64-byte values.
fn big_deployment(bytes: usize) -> Vec<u8> {
    let per_container = bytes / 40;
    let env_count = per_container / 100;
    let containers: Vec<Value> = (0..40)
        .map(|c| {
            let env: Vec<Value> = (0..env_count)
                .map(|i| json!({"name": format!("VAR_{c}_{i}"), "value": "v".repeat(64)}))
                .collect();
            json!({"name": format!("c{c}"), "image": "registry.example/app:1", "env": env})
        })
        .collect();
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "x", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "x"}},
                 "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": containers}}}});
    review(
        "UPDATE",
        json!({"group": "apps", "version": "v1", "kind": "Deployment"}),
        json!({"group": "apps", "version": "v1", "resource": "deployments"}),
        deployment.clone(),
        deployment,
    )
}

struct Server {
    child: Child,
    port: u16,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(binary: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let certs = dir.path().join("certs");
    let child = Command::new(binary)
        .args([
            "serve",
            "--cluster=none",
            "--policies=policies",
            "--log-format=json",
        ])
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(format!("--tls-cert={}", certs.join("tls.crt").display()))
        .arg(format!("--tls-key={}", certs.join("tls.key").display()))
        .env("RUST_LOG", "warn")
        .env("MIMALLOC_ARENA_EAGER_COMMIT", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start confgate (cargo build --release first)");
    let deadline = Instant::now() + Duration::from_secs(20);
    let http = loop {
        if let Ok(ca) = std::fs::read(certs.join("ca.crt")) {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut &ca[..]).flatten() {
                roots.add(cert).unwrap();
            }
            let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            let http = reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap();
            if http
                .get(format!("https://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                break http;
            }
        }
        assert!(Instant::now() < deadline, "confgate did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Server {
        child,
        port,
        http,
        _dir: dir,
    }
}

/// Sends `copies` of `body` to `path` at once; the answers in short form.
async fn send(server: &Server, path: &str, body: &[u8], copies: usize) -> Vec<String> {
    let url = format!("https://127.0.0.1:{}{path}", server.port);
    let requests = (0..copies).map(|_| {
        server
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
    });
    let mut answers = Vec::new();
    for response in futures::future::join_all(requests).await {
        answers.push(match response {
            Err(e) => format!("error: {e}"),
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                let json: Value = serde_json::from_str(&text).unwrap_or_default();
                let allowed = &json["response"]["allowed"];
                let message = json["response"]["status"]["message"]
                    .as_str()
                    .or(json["error"].as_str())
                    .unwrap_or("");
                format!(
                    "{status} allowed={allowed} {}",
                    message.chars().take(90).collect::<String>()
                )
            }
        });
    }
    answers
}

#[tokio::main]
async fn main() {
    let binary = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/release/confgate".into());
    let pod = many_containers(87_000);
    let deployment = big_deployment(3_400_000);
    let scenarios: Vec<(&str, &str, &[u8], usize)> = vec![
        ("Pod, 87,000 containers (2.9 MB)", "/mutate", &pod, 1),
        ("Pod, 87,000 containers (2.9 MB)", "/validate", &pod, 1),
        ("3 such Pods at once", "/mutate", &pod, 3),
        ("8 such Pods at once", "/mutate", &pod, 8),
        (
            "3 Deployment UPDATEs of 7 MB at once",
            "/mutate",
            &deployment,
            3,
        ),
        (
            "3 Deployment UPDATEs of 7 MB at once",
            "/validate",
            &deployment,
            3,
        ),
    ];
    println!(
        "body sizes: pod {:.1} MB, deployment review {:.1} MB",
        pod.len() as f64 / 1e6,
        deployment.len() as f64 / 1e6
    );
    println!("| scenario | endpoint | idle RSS | peak RSS | answers |");
    println!("|---|---|---|---|---|");
    for (name, path, body, copies) in scenarios {
        let server = start(&binary).await;
        let pid = server.child.id();
        let idle = status_kib(&pid.to_string(), "VmRSS:");
        let answers = send(&server, path, body, copies).await;
        let peak = status_kib(&pid.to_string(), "VmHWM:");
        let mut distinct = answers.clone();
        distinct.dedup();
        println!(
            "| {name} | {path} | {:.1} MiB | {:.1} MiB | {} |",
            idle as f64 / 1024.0,
            peak as f64 / 1024.0,
            distinct.join("; ")
        );
    }
}
