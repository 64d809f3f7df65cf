#![allow(dead_code)] // shared by the `it` and `e2e` suites, which use different parts
//! A small OTLP receiver for the tracing tests, on one port: OTLP/HTTP (`POST /v1/traces` with a
//! protobuf `ExportTraceServiceRequest`, as a collector's port 4318 takes it; confgate sends
//! this) and OTLP/gRPC over cleartext HTTP/2 (the `TraceService/Export` call of a collector's
//! port 4317; the kube-apiserver sends this). It keeps the spans it is sent (the newest
//! [`KEEP`]), flattened to what the tests look at.

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message as _;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One received span.
#[derive(Debug, Clone)]
pub struct Span {
    /// The service that sent it (`service.name` of its resource).
    pub service: String,
    /// Hex trace id.
    pub trace_id: String,
    /// Hex span id.
    pub span_id: String,
    /// Hex parent span id, empty for a root span.
    pub parent_span_id: String,
    /// Its name.
    pub name: String,
    /// OTLP span kind (2: server).
    pub kind: i32,
    /// OTLP status code (2: error).
    pub status: i32,
    /// Its attributes, as text.
    pub attributes: BTreeMap<String, String>,
    /// The names (messages) of its events.
    pub events: Vec<String>,
}

impl Span {
    /// An attribute, or "" when it has none by that name.
    pub fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

/// How many spans are kept (the oldest are dropped).
pub const KEEP: usize = 100_000;

/// A running receiver.
pub struct Receiver {
    /// Its base URL (`http://127.0.0.1:PORT`), for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub url: String,
    /// Its address (`127.0.0.1:PORT`), for the apiserver's tracing configuration.
    pub address: std::net::SocketAddr,
    spans: Arc<Mutex<std::collections::VecDeque<Span>>>,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

type Kept = Arc<Mutex<std::collections::VecDeque<Span>>>;

fn keep(kept: &Kept, spans: Vec<Span>) {
    let mut kept = kept.lock().unwrap();
    kept.extend(spans);
    while kept.len() > KEEP {
        kept.pop_front();
    }
}

/// The gRPC call: each length-prefixed message of the body decoded; the answer is one empty
/// `ExportTraceServiceResponse` and the trailer `grpc-status: 0`.
async fn grpc_export(kept: Kept, body: bytes::Bytes) -> axum::response::Response {
    use http_body_util::StreamBody;
    let mut rest = body.as_ref();
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let Some(message) = rest.get(5..5 + len) else {
            break;
        };
        if let Ok(request) = ExportTraceServiceRequest::decode(message) {
            keep(&kept, flatten(request));
        }
        rest = &rest[5 + len..];
    }
    let answer = ExportTraceServiceResponse::default().encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(answer.len() as u32).to_be_bytes());
    framed.extend_from_slice(&answer);
    let mut trailers = axum::http::HeaderMap::new();
    trailers.insert("grpc-status", axum::http::HeaderValue::from_static("0"));
    let frames = futures::stream::iter([
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(bytes::Bytes::from(framed))),
        Ok(http_body::Frame::trailers(trailers)),
    ]);
    axum::response::Response::builder()
        .header("content-type", "application/grpc")
        .body(axum::body::Body::new(StreamBody::new(frames)))
        .unwrap()
}

fn text(value: Option<&Any>) -> String {
    match value {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<Span> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(Span {
                    service: service.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    kind: span.kind,
                    status: span.status.map_or(0, |s| s.code),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| {
                            (
                                kv.key.clone(),
                                text(kv.value.as_ref().and_then(|v| v.value.as_ref())),
                            )
                        })
                        .collect(),
                    events: span.events.into_iter().map(|e| e.name).collect(),
                });
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Receiver {
    /// Listens on a free loopback port, served by the caller's runtime.
    pub async fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the OTLP receiver");
        let mut receiver = Self::on(&listener);
        let app = receiver.app();
        listener.set_nonblocking(true).expect("non-blocking");
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        receiver.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
        receiver
    }

    /// Listens on a free loopback port, served by a thread of its own for as long as the
    /// process runs (for a whole test suite, whose tests each have their own runtime).
    pub fn in_background() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the OTLP receiver");
        let receiver = Self::on(&listener);
        let app = receiver.app();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the receiver's runtime");
            runtime.block_on(async move {
                listener.set_nonblocking(true).expect("non-blocking");
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let _ = axum::serve(listener, app).await;
            });
        });
        receiver
    }

    fn on(listener: &std::net::TcpListener) -> Self {
        let address = listener.local_addr().expect("address");
        Self {
            url: format!("http://{address}"),
            address,
            spans: Arc::default(),
            bodies: Arc::default(),
            task: None,
        }
    }

    fn app(&self) -> axum::Router {
        let (kept, raw) = (self.spans.clone(), self.bodies.clone());
        let grpc = self.spans.clone();
        axum::Router::new()
            .route(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                axum::routing::post(move |body: bytes::Bytes| grpc_export(grpc.clone(), body)),
            )
            .route(
                "/v1/traces",
                axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
                    let (kept, raw) = (kept.clone(), raw.clone());
                    async move {
                        let protobuf = headers
                            .get("content-type")
                            .is_some_and(|v| v.as_bytes() == b"application/x-protobuf");
                        let Ok(request) = ExportTraceServiceRequest::decode(body.as_ref()) else {
                            return (axum::http::StatusCode::BAD_REQUEST, Vec::new());
                        };
                        if !protobuf {
                            return (axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE, Vec::new());
                        }
                        raw.lock().unwrap().push(body.to_vec());
                        keep(&kept, flatten(request));
                        (
                            axum::http::StatusCode::OK,
                            ExportTraceServiceResponse::default().encode_to_vec(),
                        )
                    }
                }),
            )
    }

    /// Every span received so far (the newest [`KEEP`]).
    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().iter().cloned().collect()
    }

    /// Every export body received so far, as sent.
    pub fn bodies(&self) -> Vec<Vec<u8>> {
        self.bodies.lock().unwrap().clone()
    }

    /// Waits (up to a minute) until `found` picks something from the spans received.
    pub async fn wait_for<T>(&self, what: &str, found: impl Fn(&[Span]) -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(t) = found(&self.spans()) {
                return t;
            }
            if std::time::Instant::now() >= deadline {
                let spans = self.spans();
                // The spans of any service but the apiserver (it traces every request).
                let shown: Vec<String> = spans
                    .iter()
                    .filter(|s| s.service != "apiserver")
                    .map(|s| format!("{} {} {:?}", s.service, s.name, s.attributes))
                    .collect();
                panic!(
                    "no {what} among the {} spans received; those not from the apiserver: {shown:#?}",
                    spans.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
