//! HTTP handlers: read the body within limits, hand it to [`ReviewService`], answer. Every refusal is
//! a JSON body `{"error": ..., "code": ...}` with a 4xx status.

use super::AppState;
use crate::policy::Phase;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use std::sync::Arc;

/// The longest refusal message answered or logged.
const MESSAGE_CHARS: usize = 1024;

/// How much of an oversized body is read and thrown away so the client sees the 413: a client
/// that sends its whole body before reading the answer gets a connection reset instead when the
/// server closes with unread data.
const DRAIN_BYTES: u64 = 64 * 1024 * 1024;
/// How long draining may take.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// A refused request: status and message, answered as JSON.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    message: String,
    reason: &'static str,
}

impl Refusal {
    /// A refusal; the message is cut to a bounded length, since parse errors quote the input.
    fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        let message: String = message.into();
        let message = crate::server::service::cap(&message, MESSAGE_CHARS).into_owned();
        Self {
            status,
            reason,
            message,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message, "code": self.status.as_u16() });
        let mut response = (self.status, Json(body)).into_response();
        match self.status {
            // The rest of an oversized body may still be on its way: never reuse the connection.
            StatusCode::PAYLOAD_TOO_LARGE => {
                response.headers_mut().insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("close"),
                );
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// `POST /mutate`.
pub async fn mutate(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    admit(state, Phase::Mutate, None, headers, body).await
}

/// `POST /validate`.
pub async fn validate(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    admit(state, Phase::Validate, None, headers, body).await
}

/// `POST /mutate/{policy}`.
pub async fn mutate_one(
    State(state): State<Arc<AppState>>,
    Path(policy): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    admit(state, Phase::Mutate, Some(policy), headers, body).await
}

/// `POST /validate/{policy}`.
pub async fn validate_one(
    State(state): State<Arc<AppState>>,
    Path(policy): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    admit(state, Phase::Validate, Some(policy), headers, body).await
}

async fn admit(
    state: Arc<AppState>,
    endpoint: Phase,
    only: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let span = crate::telemetry::review_span(endpoint.as_str(), &headers);
    let answer = async {
        check_content_type(&headers)?;
        let limit = state.admission_limits().max_body_bytes;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            drain(body, 0).await;
            return Err(too_large(limit));
        }
        // Memory is taken before the body is read, by what it declares (or the most it may be).
        let wanted = declared.map_or(limit, |n| usize::try_from(n).unwrap_or(limit));
        let _share = state
            .inflight
            .acquire(wanted, super::budget::QUEUE_WAIT)
            .await
            .ok_or_else(|| {
                Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    format!(
                        "confgate is busy: {} of {} bytes of reviews are in flight (--max-inflight-bytes)",
                        state.inflight.in_use_bytes(),
                        state.admission_limits().max_inflight_bytes
                    ),
                )
            })?;
        let bytes = read_body(body, limit).await?;
        state
            .reviews
            .review(bytes, endpoint, only)
            .await
            .map_err(|e| {
                let status = match e {
                    crate::server::service::ServiceError::BadReview(_) => StatusCode::BAD_REQUEST,
                    crate::server::service::ServiceError::Policy(_) => StatusCode::NOT_FOUND,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                Refusal::new(status, e.reason(), e.to_string())
            })
    };
    let answered = tracing::Instrument::instrument(answer, span.clone()).await;
    match answered {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(refusal) => {
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", refusal.reason);
            let _in = span.enter();
            tracing::warn!(endpoint = endpoint.as_str(), status = refusal.status.as_u16(), error = %refusal.message, "request refused");
            state.reviews.metrics.rejected(refusal.reason);
            refusal.into_response()
        }
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), Refusal> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mime = value.split(';').next().unwrap_or_default().trim();
    if mime.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        let shown = if value.is_empty() {
            "none".to_owned()
        } else {
            format!("{value:?}")
        };
        Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content_type",
            format!("Content-Type must be application/json, got {shown}"),
        ))
    }
}

fn too_large(limit: usize) -> Refusal {
    Refusal::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("request body exceeds the limit of {limit} bytes (--max-body-bytes)"),
    )
}

/// Reads the body, up to `limit` bytes; past that, drains the rest (see [`DRAIN_BYTES`]) and
/// refuses.
async fn read_body(mut body: Body, limit: usize) -> Result<Bytes, Refusal> {
    let mut buffer = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                "body",
                format!("cannot read request body: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if buffer.len() + data.len() > limit {
                let seen = (buffer.len() + data.len()) as u64;
                drop(buffer);
                drain(body, seen).await;
                return Err(too_large(limit));
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(buffer.freeze())
}

/// Reads and discards what is left of `body` (after `seen` bytes), up to [`DRAIN_BYTES`] in all
/// and for at most [`DRAIN_TIME`].
async fn drain(mut body: Body, seen: u64) {
    let discard = async {
        let mut total = seen;
        while total <= DRAIN_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => {
                    total += frame.data_ref().map_or(0, |d| d.len() as u64);
                }
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
}

/// Around every request: counts and logs the 408 that the request timeout answers (it never
/// reaches a handler), and from the first moment of shutdown asks HTTP/1.1 clients to close
/// their connection after the answer, so none reuses a keep-alive connection that is about to
/// be closed (HTTP/2 clients get a GOAWAY when the listener closes).
pub async fn around_every_request(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let http1 = request.version() == axum::http::Version::HTTP_11;
    let path = crate::server::service::capped(request.uri().path()).into_owned();
    let mut response = next.run(request).await;
    if response.status() == StatusCode::REQUEST_TIMEOUT {
        state.reviews.metrics.rejected("timeout");
        tracing::warn!(%path, "request timed out (408)");
    }
    if http1 && state.is_shutting_down() {
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    response
}

/// `GET /healthz`: the process is alive and serving.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 when policies, TLS and (when required) the cluster caches are in place;
/// 503 with the reason otherwise, and as soon as shutdown begins.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.readiness() {
        Ok(detail) => (StatusCode::OK, format!("ok: {detail}\n")).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let body = state
        .reviews
        .metrics
        .encode(state.reviews.engine.cluster().as_ref());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Any other path or method.
pub async fn not_found() -> Refusal {
    Refusal::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint: POST /mutate, /validate, /mutate/{policy}, /validate/{policy}; GET /healthz, /readyz, /metrics",
    )
}
