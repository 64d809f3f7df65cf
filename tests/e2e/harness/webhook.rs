//! Another team's mutating webhook, served by the test: it adds an environment variable from a
//! ConfigMap key to the first container of a Deployment's template. Registered next to
//! confgate's, it makes the apiserver reinvoke confgate (`reinvocationPolicy: IfNeeded`).

use super::process::free_port;
use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use confgate::admission::{encode_response, parse_review};
use kube::core::admission::AdmissionResponse;
use serde_json::json;
use std::net::SocketAddr;

/// A running injector.
pub struct Injector {
    /// Its URL (`https://127.0.0.1:PORT/inject`).
    pub url: String,
    /// The CA that signed its certificate.
    pub ca_pem: String,
    handle: axum_server::Handle<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Injector {
    /// Serves `/inject`, which adds `env INJECTED` from `configmap/key` to the first container.
    pub async fn start(config_map: &str, key: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, tls_key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let certs = confgate::certs::CertRequest {
            service: "injector".into(),
            namespace: "e2e".into(),
            dns: vec!["localhost".into()],
            ips: vec![[127, 0, 0, 1].into()],
            days: 1,
        }
        .generate()
        .expect("certificates");
        certs.write(&cert, &tls_key).expect("write certificates");
        let config = confgate::server::tls::server_config(&cert, &tls_key).expect("tls config");
        let patch_value = json!({
            "name": "INJECTED",
            "valueFrom": {"configMapKeyRef": {"name": config_map, "key": key}}
        });
        let app = Router::new().route(
            "/inject",
            post(move |body: Bytes| {
                let patch_value = patch_value.clone();
                async move {
                    let review = parse_review(&body).expect("review from the apiserver");
                    let object = review.object.clone().unwrap_or_default();
                    let container = &object["spec"]["template"]["spec"]["containers"][0];
                    let already = container["env"]
                        .as_array()
                        .is_some_and(|env| env.iter().any(|e| e["name"] == "INJECTED"));
                    let patch: json_patch::Patch = if already {
                        json_patch::Patch(Vec::new())
                    } else if container["env"].is_array() {
                        serde_json::from_value(json!([{"op": "add", "path": "/spec/template/spec/containers/0/env/-", "value": patch_value}])).expect("patch")
                    } else {
                        serde_json::from_value(json!([{"op": "add", "path": "/spec/template/spec/containers/0/env", "value": [patch_value]}])).expect("patch")
                    };
                    let response = AdmissionResponse::from(&review.request);
                    encode_response(review.api_version(), &response, Some(&patch))
                        .expect("encode")
                }
            }),
        );
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let handle = axum_server::Handle::new();
        let rustls =
            axum_server::tls_rustls::RustlsConfig::from_config(std::sync::Arc::new(config));
        let server = axum_server::bind_rustls(addr, rustls).handle(handle.clone());
        tokio::spawn(async move {
            let _ = server.serve(app.into_make_service()).await;
        });
        handle.listening().await;
        Self {
            url: format!("https://127.0.0.1:{port}/inject"),
            ca_pem: certs.ca_pem,
            handle,
            _dir: dir,
        }
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}
