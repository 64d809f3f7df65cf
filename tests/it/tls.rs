//! A real TLS socket: HTTP/1.1 and HTTP/2 through ALPN, a certificate swapped while serving, and
//! policies reloaded (a bad reload keeps the last good set).

use crate::common::*;
use confgate::certs::CertRequest;
use confgate::cluster::Standalone;
use confgate::policy::{Registry, load_dir};
use confgate::server::{AppState, ServeOptions, serve_with};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn write_certs(dir: &Path) -> String {
    let certs = CertRequest {
        service: "confgate".into(),
        namespace: "test".into(),
        dns: vec!["localhost".into()],
        ips: vec![[127, 0, 0, 1].into()],
        days: 2,
    }
    .generate()
    .unwrap();
    // Write to temporary names and rename, as Kubernetes' atomic volume writer does.
    std::fs::write(dir.join(".tls.crt.tmp"), &certs.cert_pem).unwrap();
    std::fs::write(dir.join(".tls.key.tmp"), &certs.key_pem).unwrap();
    std::fs::rename(dir.join(".tls.key.tmp"), dir.join("tls.key")).unwrap();
    std::fs::rename(dir.join(".tls.crt.tmp"), dir.join("tls.crt")).unwrap();
    certs.ca_pem
}

fn client(ca_pem: &str, http1_only: bool) -> reqwest::Client {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = reqwest::Client::builder()
        .use_preconfigured_tls({
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
                roots.add(cert.unwrap()).unwrap();
            }
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = if http1_only {
                vec![b"http/1.1".to_vec()]
            } else {
                vec![b"h2".to_vec(), b"http/1.1".to_vec()]
            };
            config
        })
        .timeout(Duration::from_secs(10));
    builder.build().unwrap()
}

struct Server {
    addr: SocketAddr,
    handle: confgate::server::listener::Handle,
    state: Arc<AppState>,
}

async fn start(dir: &Path) -> Server {
    start_with(dir, |_| {}).await
}

async fn start_with(dir: &Path, adjust: impl FnOnce(&mut ServeOptions)) -> Server {
    let policies_dir = dir.join("policies");
    std::fs::create_dir_all(&policies_dir).unwrap();
    std::fs::copy(
        root().join("policies/limitrange-defaults.yaml"),
        policies_dir.join("limitrange-defaults.yaml"),
    )
    .unwrap();
    let registry = Registry::builtin();
    let set = load_dir(&policies_dir, &registry).unwrap();
    let state = AppState::new(set, Arc::new(Standalone), 1 << 20, false);
    let mut options = ServeOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        policies_dir,
        tls_cert: dir.join("tls.crt"),
        tls_key: dir.join("tls.key"),
        limits: confgate::server::budget::Limits {
            max_body_bytes: 1 << 20,
            ..Default::default()
        },
        require_cluster_sync: false,
        shutdown_delay: Duration::ZERO,
        drain_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(10),
        allow_policy_removal: false,
        max_connections: 8,
        first_request_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(120),
    };
    adjust(&mut options);
    let handle = axum_server::Handle::new();
    tokio::spawn(serve_with(options, state.clone(), registry, handle.clone()));
    let addr = handle.listening().await.expect("server failed to start").0;
    Server {
        addr,
        handle,
        state,
    }
}

/// Polls `check` until it holds, for at most 20 s (file-watch latency varies between machines).
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within 20 s");
}

#[tokio::test]
async fn serves_http1_and_http2_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_certs(dir.path());
    let server = start(dir.path()).await;
    let url = format!("https://localhost:{}/mutate?timeout=5s", server.addr.port());
    for (http1, version) in [
        (true, reqwest::Version::HTTP_11),
        (false, reqwest::Version::HTTP_2),
    ] {
        let response = client(&ca, http1)
            .post(&url)
            .header("content-type", "application/json")
            .body(fixture_bytes("create-pod-mynginx"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), version);
        assert_eq!(response.status(), 200);
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            answer["response"]["uid"],
            fixture("create-pod-mynginx").request.uid.as_str()
        );
        assert_eq!(answer["response"]["patchType"], "JSONPatch");
    }
    server
        .handle
        .graceful_shutdown(Some(Duration::from_secs(1)));
}

#[tokio::test]
async fn swaps_the_certificate_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let first_ca = write_certs(dir.path());
    let server = start(dir.path()).await;
    let url = format!("https://localhost:{}/healthz", server.addr.port());
    assert!(client(&first_ca, true).get(&url).send().await.is_ok());
    let second_ca = write_certs(dir.path());
    eventually("certificate reload", async || {
        client(&second_ca, true).get(&url).send().await.is_ok()
    })
    .await;
    assert!(
        client(&first_ca, true).get(&url).send().await.is_err(),
        "the old certificate is no longer served"
    );
    let metrics = client(&second_ca, true)
        .get(format!("https://localhost:{}/metrics", server.addr.port()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"confgate_config_reloads_total{source="tls",result="success"} 1"#),
        "{metrics}"
    );
    server
        .handle
        .graceful_shutdown(Some(Duration::from_secs(1)));
}

#[tokio::test]
async fn reloads_policies_and_keeps_the_last_good_set() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_certs(dir.path());
    let server = start(dir.path()).await;
    let policies_dir = dir.path().join("policies");
    let names = |state: &Arc<AppState>| {
        state
            .reviews
            .policies
            .current()
            .policies
            .iter()
            .map(|p| p.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&server.state), vec!["limitrange-defaults"]);

    std::fs::copy(
        root().join("policies/checksum-config.yaml"),
        policies_dir.join("checksum-config.yaml"),
    )
    .unwrap();
    eventually("policy reload", async || names(&server.state).len() == 2).await;

    std::fs::write(policies_dir.join("broken.yaml"), "apiVersion: confgate.dev/v1alpha1\nkind: Policy\nmetadata: {name: broken}\nspec: {type: nope}\n").unwrap();
    let metrics_url = format!("https://localhost:{}/metrics", server.addr.port());
    let http = client(&ca, true);
    eventually("rejected reload counted", async || {
        let text = http
            .get(&metrics_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.contains(r#"confgate_config_reloads_total{source="policies",result="failure"}"#)
    })
    .await;
    assert_eq!(
        names(&server.state),
        vec!["checksum-config", "limitrange-defaults"],
        "the last good set stays in force"
    );
    server
        .handle
        .graceful_shutdown(Some(Duration::from_secs(1)));
}

#[tokio::test]
async fn refuses_a_reload_that_would_drop_a_deny_policy() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_certs(dir.path());
    let server = start(dir.path()).await;
    let file = dir.path().join("policies/limitrange-defaults.yaml");
    let metrics_url = format!("https://localhost:{}/metrics", server.addr.port());
    let http = client(&ca, true);
    let failures = async || {
        let text = http
            .get(&metrics_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(
                    r#"confgate_config_reloads_total{source="policies",result="failure"} "#,
                )
            })
            .map(|n| n.parse::<u32>().unwrap())
            .unwrap()
    };
    // Truncated (as an in-place rewrite leaves it for a moment), then commented out: both
    // would leave no policy at all, and the Deny policy limitrange-defaults would be gone.
    for (round, text) in ["", "# apiVersion: confgate.dev/v1alpha1\n"]
        .iter()
        .enumerate()
    {
        std::fs::write(&file, text).unwrap();
        eventually("the reload is refused", async || {
            failures().await == round as u32 + 1
        })
        .await;
        let names: Vec<String> = server
            .state
            .reviews
            .policies
            .current()
            .policies
            .iter()
            .map(|p| p.name.clone())
            .collect();
        assert_eq!(
            names,
            vec!["limitrange-defaults"],
            "the Deny policy stays in force"
        );
    }
    server
        .handle
        .graceful_shutdown(Some(Duration::from_secs(1)));
}

/// Sends one HTTP/1.1 request over TLS the way a simple client does: the whole body first,
/// then the answer is read. Returns what came back (empty when the connection was reset).
async fn send_all_then_read(ca_pem: &str, port: u16, head: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = tls_connection(ca_pem, port, b"http/1.1").await.unwrap();
    let exchange = async {
        let _ = tls.write_all(head.as_bytes()).await;
        let _ = tls.write_all(body).await;
        let _ = tls.flush().await;
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        answer
    };
    // A server that neither reads the body nor closes leaves this client blocked in write.
    let answer = tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .unwrap_or_default();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn an_oversized_body_is_drained_so_the_client_sees_413() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_certs(dir.path());
    let server = start(dir.path()).await;
    // 32 MiB against a 1 MiB limit, declared up front: the server answers before it has read
    // the body, and must read (and drop) the rest, or closing with unread data resets the
    // connection and the answer is lost.
    let body = vec![b' '; 32 << 20];
    let head = format!(
        "POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let answer = send_all_then_read(&ca, server.addr.port(), &head, &body).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(answer.contains("connection: close"), "{answer:?}");
    assert!(
        answer.contains("exceeds the limit of 1048576 bytes"),
        "{answer:?}"
    );
    server
        .handle
        .graceful_shutdown(Some(Duration::from_secs(1)));
}

/// A TLS connection to the server (ALPN `alpn`) that has sent nothing yet.
async fn tls_connection(
    ca_pem: &str,
    port: u16,
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// Waits (at most 20 s) for the server to close `stream`; true when it did.
async fn closed_by_server(
    stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .is_ok()
}

#[tokio::test]
async fn silent_connections_are_closed_for_http1_and_http2() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_certs(dir.path());
    let server = start_with(dir.path(), |o| {
        o.first_request_timeout = Duration::from_secs(1);
        o.idle_timeout = Duration::from_secs(2);
    })
    .await;
    // TLS done, then not a byte: closed after the first-request timeout, on h2 too (where
    // hyper's HTTP/1 header timeout does not apply).
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let mut silent = tls_connection(&ca, server.addr.port(), alpn).await.unwrap();
        assert!(
            closed_by_server(&mut silent).await,
            "{:?}",
            String::from_utf8_lossy(alpn)
        );
    }
    // A keep-alive connection that served a request is closed once idle.
    let http = client(&ca, true);
    let url = format!("https://localhost:{}/healthz", server.addr.port());
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
    eventually("the idle connection is closed", async || {
        server
            .state
            .reviews
            .metrics
            .encode(&Standalone)
            .contains("confgate_connections_open 0")
    })
    .await;
    server
        .handle
        .graceful_shutdown(Some(Duration::from_secs(1)));
}

#[tokio::test]
async fn connections_past_the_limit_are_closed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_certs(dir.path());
    let server = start_with(dir.path(), |o| o.max_connections = 3).await;
    let port = server.addr.port();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tls_connection(&ca, port, b"h2").await.unwrap());
    }
    let metrics = || server.state.reviews.metrics.encode(&Standalone);
    eventually("three connections open", async || {
        metrics().contains("confgate_connections_open 3")
    })
    .await;
    // The fourth is closed before its TLS handshake completes.
    assert!(tls_connection(&ca, port, b"h2").await.is_err());
    assert!(
        metrics().contains("confgate_connections_refused_total 1"),
        "{}",
        metrics()
    );
    // The ones already open keep working, and a closed one frees its place.
    drop(held.pop());
    let http = client(&ca, true);
    let url = format!("https://localhost:{port}/healthz");
    eventually("a place is free again", async || {
        http.get(&url).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    server
        .handle
        .graceful_shutdown(Some(Duration::from_secs(1)));
}

#[tokio::test]
async fn requests_after_shutdown_begins_close_their_http1_connection() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_certs(dir.path());
    let server = start(dir.path()).await;
    let http = client(&ca, true);
    let url = format!("https://localhost:{}/mutate", server.addr.port());
    let send = async || {
        http.post(&url)
            .header("content-type", "application/json")
            .body(fixture_bytes("create-pod-mynginx"))
            .send()
            .await
            .unwrap()
    };
    let before = send().await;
    assert_eq!(before.status(), 200);
    assert!(before.headers().get("connection").is_none());
    server.state.begin_shutdown();
    // The keep-alive connection still answers, and tells the client not to reuse it.
    let during = send().await;
    assert_eq!(during.status(), 200);
    assert_eq!(during.headers()["connection"], "close");
    server
        .handle
        .graceful_shutdown(Some(Duration::from_secs(1)));
}

#[tokio::test]
async fn a_request_timeout_is_logged_and_counted() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = write_certs(dir.path());
    let server = start_with(dir.path(), |o| o.request_timeout = Duration::from_secs(1)).await;
    let mut stream = tls_connection(&ca, server.addr.port(), b"http/1.1")
        .await
        .unwrap();
    // Headers, then only part of the body: the handler waits for the rest until the timeout.
    stream
        .write_all(b"POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{")
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::io::AsyncReadExt::read_buf(&mut stream, &mut answer),
    )
    .await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let metrics = server.state.reviews.metrics.encode(&Standalone);
    assert!(
        metrics.contains(r#"confgate_rejected_requests_total{reason="timeout"} 1"#),
        "{metrics}"
    );
    server
        .handle
        .graceful_shutdown(Some(Duration::from_secs(1)));
}
