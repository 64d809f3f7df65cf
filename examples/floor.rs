//! The floor: the least an admission webhook on confgate's stack can do. Same crates (axum,
//! axum-server, rustls with ring, kube-rs' AdmissionReview), same TLS and HTTP settings; it parses
//! the review and allows it. `scripts/bench.sh` measures confgate as a ratio to this. `/discard`
//! reads a body and parses nothing (a control for the large-body runs).
//!
//! ```sh
//! cargo run --release --example floor -- 127.0.0.1:18444 certs/tls.crt certs/tls.key
//! ```

use axum::Router;
use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use axum_server::tls_rustls::RustlsConfig;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use std::sync::Arc;

async fn allow(body: Bytes) -> impl IntoResponse {
    let Ok(review) = serde_json::from_slice::<AdmissionReview<DynamicObject>>(&body) else {
        return (StatusCode::BAD_REQUEST, "bad review").into_response();
    };
    let Ok(request): Result<AdmissionRequest<DynamicObject>, _> = review.try_into() else {
        return (StatusCode::BAD_REQUEST, "no request").into_response();
    };
    let response = AdmissionResponse::from(&request).into_review();
    match serde_json::to_vec(&response) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn discard(body: Bytes) -> impl IntoResponse {
    std::hint::black_box(body.len());
    ([(header::CONTENT_TYPE, "application/json")], "{}")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, cert, key] = args.as_slice() else {
        return Err("usage: floor LISTEN TLS_CERT TLS_KEY".into());
    };
    let tls = RustlsConfig::from_config(Arc::new(confgate::server::tls::server_config(
        cert.as_ref(),
        key.as_ref(),
    )?));
    let app = Router::new()
        .route("/mutate", post(allow))
        .route("/validate", post(allow))
        // A control for scripts/bench.sh: takes in the body (TLS, HTTP) and parses nothing.
        .route("/discard", post(discard))
        .layer(axum::extract::DefaultBodyLimit::max(7 * 1024 * 1024));
    let addr: std::net::SocketAddr = listen.parse()?;
    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls)
        .acceptor(axum_server::accept::NoDelayAcceptor::new());
    let mut server = axum_server::bind(addr).acceptor(acceptor);
    let builder = server.http_builder();
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(std::time::Duration::from_secs(10));
    builder.http2().timer(hyper_util::rt::TokioTimer::new());
    eprintln!("floor listening on {listen}");
    server.serve(app.into_make_service()).await?;
    Ok(())
}
