//! The HTTPS server: routes, readiness, hot reload of policies and certificates, and graceful
//! shutdown. The handlers are thin; the work happens in [`service::ReviewService`] and the engine.

pub mod budget;
pub mod conn;
pub mod handlers;
pub mod large_reviews;
pub mod listener;
mod reload;
pub mod service;
pub mod tls;

use crate::cluster::ClusterState;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::policy::{PolicySet, Registry};
use axum::Router;
use axum::routing::{get, post};
use axum_server::accept::NoDelayAcceptor;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use service::ReviewService;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How `confgate serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Policy directory (watched).
    pub policies_dir: PathBuf,
    /// Serving certificate (PEM, watched).
    pub tls_cert: PathBuf,
    /// Its private key (PEM, watched).
    pub tls_key: PathBuf,
    /// Memory budgets: body size, bodies in flight, per-review limits.
    pub limits: budget::Limits,
    /// Not ready until the cluster caches have synced (`--cluster required`).
    pub require_cluster_sync: bool,
    /// Time between `/readyz` turning 503 and closing the listener (lets endpoints update).
    pub shutdown_delay: Duration,
    /// Longest wait for in-flight requests after the listener closes.
    pub drain_timeout: Duration,
    /// Longest time one request may take before the server answers 408.
    pub request_timeout: Duration,
    /// Accept a policy reload that removes every policy, or a policy that can deny.
    pub allow_policy_removal: bool,
    /// Connections open at once; more are closed at once.
    pub max_connections: usize,
    /// How long a new connection may stay silent after the TLS handshake
    /// ([`conn::FIRST_REQUEST`]).
    pub first_request_timeout: Duration,
    /// How long a connection may carry no traffic ([`conn::IDLE`]).
    pub idle_timeout: Duration,
}

/// What the handlers share.
pub struct AppState {
    /// Answers reviews: parse, judge, respond.
    pub reviews: Arc<ReviewService>,
    /// Request bodies in flight, server-wide.
    pub inflight: budget::InFlight,
    limits: budget::Limits,
    require_cluster_sync: bool,
    tls_loaded: AtomicBool,
    shutting_down: AtomicBool,
}

impl AppState {
    /// State for a server (or a test router) with these policies and this cluster, and the
    /// default limits but for the body size.
    pub fn new(
        policies: PolicySet,
        cluster: Arc<dyn ClusterState>,
        max_body_bytes: usize,
        require_cluster_sync: bool,
    ) -> Arc<Self> {
        let defaults = budget::Limits::default();
        let limits = budget::Limits {
            max_body_bytes,
            max_inflight_bytes: defaults.max_inflight_bytes.max(max_body_bytes),
            ..defaults
        };
        Self::with_limits(policies, cluster, limits, require_cluster_sync)
    }

    /// State with these limits.
    pub fn with_limits(
        policies: PolicySet,
        cluster: Arc<dyn ClusterState>,
        limits: budget::Limits,
        require_cluster_sync: bool,
    ) -> Arc<Self> {
        let metrics = Arc::new(Metrics::new());
        metrics.set_policies_loaded(policies.policies.len());
        let reviews = Arc::new(ReviewService::new(
            Engine::new(cluster),
            policies,
            metrics,
            service::large_review_threads(),
            limits,
        ));
        Arc::new(Self {
            reviews,
            inflight: budget::InFlight::new(limits.max_inflight_bytes),
            limits,
            require_cluster_sync,
            tls_loaded: AtomicBool::new(true),
            shutting_down: AtomicBool::new(false),
        })
    }

    /// `Ok(detail)` when ready to admit, otherwise why not.
    pub fn readiness(&self) -> Result<String, String> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err("shutting down".into());
        }
        if !self.tls_loaded.load(Ordering::Acquire) {
            return Err("TLS certificate not loaded".into());
        }
        let cluster = self.reviews.engine.cluster();
        let synced = cluster.ready();
        if self.require_cluster_sync {
            synced.clone().map_err(|e| e.to_string())?;
        }
        let policies = self.reviews.policies.current().policies.len();
        let mut detail = format!("{policies} policies; {}", cluster.describe());
        if let Err(pending) = synced {
            detail.push_str(&format!(" ({pending})"));
        }
        let stale: Vec<String> = cluster
            .staleness()
            .into_iter()
            .filter_map(|(resource, stale)| {
                stale.map(|d| format!("{} for {}s", resource.as_str(), d.as_secs()))
            })
            .collect();
        if !stale.is_empty() {
            // Still ready: the caches answer from the last state seen, and turning every
            // replica unready while the API server is away would only add an outage.
            detail.push_str(&format!(
                " (stale: API server unreachable, answering from the last state seen: {})",
                stale.join(", ")
            ));
        }
        Ok(detail)
    }

    /// The limits the server runs with.
    pub fn admission_limits(&self) -> budget::Limits {
        self.limits
    }

    /// True from the first moment of shutdown.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Marks the server as going down: `/readyz` answers 503 from now on.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }
}

/// The routes. Query strings (`/mutate?timeout=5s`) are accepted and ignored.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/mutate", post(handlers::mutate))
        .route("/validate", post(handlers::validate))
        .route("/mutate/{policy}", post(handlers::mutate_one))
        .route("/validate/{policy}", post(handlers::validate_one))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .fallback(handlers::not_found)
        .with_state(state)
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The certificate could not be loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The listener failed.
    #[error("server error on {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// On SIGTERM/SIGINT: fail readiness, wait the shutdown delay, then drain through `handle`.
pub fn spawn_shutdown_on_signal(
    state: &Arc<AppState>,
    handle: &listener::Handle,
    options: &ServeOptions,
) {
    tokio::spawn(shutdown_on_signal(
        state.clone(),
        handle.clone(),
        options.shutdown_delay,
        options.drain_timeout,
    ));
}

/// Serves `state` until `handle` is told to shut down. Tests drive the handle directly and learn
/// the bound port from `handle.listening()`.
pub async fn serve_with(
    options: ServeOptions,
    state: Arc<AppState>,
    registry: Registry,
    handle: listener::Handle,
) -> Result<(), ServeError> {
    let rustls = RustlsConfig::from_config(Arc::new(tls::server_config(
        &options.tls_cert,
        &options.tls_key,
    )?));
    if let Some(expiry) = std::fs::read(&options.tls_cert)
        .ok()
        .and_then(|pem| crate::certs::not_after_unix(&pem))
    {
        state.reviews.metrics.set_cert_expiry(expiry);
    }
    let _watcher = reload::spawn(reload::Reloader {
        state: state.clone(),
        rustls: rustls.clone(),
        registry,
        policies_dir: options.policies_dir.clone(),
        tls_cert: options.tls_cert.clone(),
        tls_key: options.tls_key.clone(),
        allow_policy_removal: options.allow_policy_removal,
    });
    let open_files = conn::open_files_limit();
    let max_connections = conn::connection_cap(options.max_connections, open_files);
    if max_connections < options.max_connections {
        tracing::warn!(
            requested = options.max_connections,
            max_connections,
            open_files,
            reserved = conn::RESERVED_FILES,
            "--max-connections lowered to fit the open-file limit (RLIMIT_NOFILE); raise the limit for more"
        );
    }
    let state_metrics = state.reviews.metrics.clone();
    let connections = conn::Connections::with_timeouts(
        max_connections,
        state.reviews.metrics.clone(),
        options.first_request_timeout,
        options.idle_timeout,
    );
    let app = router(state.clone())
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            options.request_timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state,
            handlers::around_every_request,
        ));
    tracing::info!(listen = %options.listen, "serving admission webhooks over HTTPS (h2, http/1.1)");
    let listening = handle.clone();
    tokio::spawn(async move {
        if let Some(addr) = listening.listening().await {
            let startup_ms =
                crate::telemetry::since_process_start().map(|d| d.as_secs_f64() * 1000.0);
            tracing::info!(%addr, startup_ms, "ready: listening");
        }
    });
    // TCP_NODELAY: an answer is written as a few small TLS records; with Nagle's algorithm the
    // last of them can wait for the client's delayed ACK (40 ms on Linux), which showed up as
    // 40-50 ms stalls in the p99 of the load benchmark (BENCHMARKS.md).
    let acceptor = conn::GuardedAcceptor::new(
        RustlsAcceptor::new(rustls).acceptor(NoDelayAcceptor::new()),
        connections,
    );
    let bound = listener::Listener::bind(options.listen, state_metrics)
        .await
        .map_err(|source| ServeError::Io {
            addr: options.listen,
            source,
        })?;
    let mut server = axum_server::Server::<listener::Listen>::from_listener(bound)
        .acceptor(acceptor)
        .handle(handle);
    // Slow or stalled clients cannot hold a connection open forever: the next request's headers
    // must arrive within the idle timeout (hyper's timer also runs while an HTTP/1.1 connection waits
    // idle for its next request, so a shorter one would close keep-alive connections the
    // apiserver is about to reuse). hyper needs a timer for that, or it panics on the first
    // HTTP/1.1 connection. HTTP/2 connections are pinged when quiet, and closed when the peer
    // stops answering; conn::Watched closes silent ones of both protocols.
    let builder = server.http_builder();
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(options.idle_timeout);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    server
        .serve(app.into_make_service())
        .await
        .map_err(|source| ServeError::Io {
            addr: options.listen,
            source,
        })?;
    tracing::info!("server stopped");
    Ok(())
}

async fn shutdown_on_signal(
    state: Arc<AppState>,
    handle: listener::Handle,
    delay: Duration,
    drain: Duration,
) {
    wait_for_termination().await;
    tracing::info!(
        delay_ms = delay.as_millis() as u64,
        drain_ms = drain.as_millis() as u64,
        "shutdown requested: readiness now failing, draining"
    );
    state.begin_shutdown();
    tokio::time::sleep(delay).await;
    handle.graceful_shutdown(Some(drain));
}

async fn wait_for_termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
