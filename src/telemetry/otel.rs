//! OpenTelemetry traces, off by default. On when an OTLP endpoint is configured by the standard
//! environment variables (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! or `OTEL_TRACES_EXPORTER=otlp` for the default `http://localhost:4318`); off again with
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
//!
//! Spans go out over OTLP/HTTP with protobuf (a collector's port 4318), in batches, from the
//! SDK's own thread; the POSTs themselves are made by confgate's reqwest client on the serving
//! runtime, with rustls and ring and the system's roots (plus `OTEL_EXPORTER_OTLP_CERTIFICATE`,
//! and a client certificate from `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`/`_CLIENT_KEY`). The
//! exporter reads the endpoint, `OTEL_EXPORTER_OTLP_HEADERS` and the timeout; the SDK reads
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)` and `OTEL_BSP_*`.
//! Everything here reads the environment through a lookup function, so the rules are tested
//! without touching the process's environment.

use crate::certs::CertError;
use bytes::Bytes;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::path::PathBuf;
use std::time::Duration;

/// The most of a collector's answer that is read (it is a small protobuf message).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Why the trace export could not be set up as the environment asks.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    /// A protocol other than OTLP/HTTP with protobuf.
    #[error(
        "{var}={value:?}: confgate exports traces over OTLP/HTTP with protobuf only (`http/protobuf`, a collector's port 4318)"
    )]
    Protocol {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// A variable whose value cannot be used.
    #[error("{var}={value:?}: {reason}")]
    Setting {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The CA or client certificate files.
    #[error("the trace exporter's TLS: {0}")]
    Tls(#[from] CertError),
    /// The exporter refused its configuration (say, an endpoint that is not a URL).
    #[error("the trace exporter: {0}")]
    Exporter(String),
}

/// What the environment asks of the export, once it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Where spans go, as configured (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`); `None`: the default, `http://localhost:4318`.
    pub endpoint: Option<String>,
    /// Each export's time limit (`OTEL_EXPORTER_OTLP_TIMEOUT`, milliseconds; 10 s).
    pub timeout: Duration,
    /// More CAs to trust, PEM (`OTEL_EXPORTER_OTLP_CERTIFICATE`).
    pub ca: Option<PathBuf>,
    /// A client certificate chain and key, PEM (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`,
    /// `OTEL_EXPORTER_OTLP_CLIENT_KEY`).
    pub identity: Option<(PathBuf, PathBuf)>,
    /// `service.name` when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` names one.
    pub default_service_name: bool,
}

/// The traces' signal-specific variable, else the general one: `(name, value)`.
fn either(
    env: &impl Fn(&str) -> Option<String>,
    traces: &'static str,
    general: &'static str,
) -> Option<(&'static str, String)> {
    env(traces)
        .filter(|v| !v.trim().is_empty())
        .map(|v| (traces, v))
        .or_else(|| {
            env(general)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (general, v))
        })
}

/// Whether traces are exported, and how, by the OpenTelemetry environment variables that `env`
/// looks up. `None`: off.
pub fn settings(env: impl Fn(&str) -> Option<String>) -> Result<Option<Settings>, OtelError> {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let endpoint = either(
        &env,
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    );
    match env("OTEL_TRACES_EXPORTER").map(|v| v.trim().to_ascii_lowercase()) {
        Some(v) if v == "none" => return Ok(None),
        Some(v) if v == "otlp" => {}
        Some(v) if !v.is_empty() => {
            return Err(OtelError::Setting {
                var: "OTEL_TRACES_EXPORTER",
                value: v,
                reason: "confgate exports traces with `otlp` only (or `none`)",
            });
        }
        _ if endpoint.is_none() => return Ok(None),
        _ => {}
    }
    if let Some((var, value)) = either(
        &env,
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ) && value.trim() != "http/protobuf"
    {
        return Err(OtelError::Protocol { var, value });
    }
    let timeout = match either(
        &env,
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ) {
        None => Duration::from_secs(10),
        Some((var, value)) => match value.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Duration::from_millis(ms),
            _ => {
                return Err(OtelError::Setting {
                    var,
                    value,
                    reason: "a timeout is a positive number of milliseconds",
                });
            }
        },
    };
    let ca = either(
        &env,
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
    )
    .map(|(_, v)| PathBuf::from(v));
    let cert = either(
        &env,
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    );
    let key = either(
        &env,
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    );
    let identity = match (cert, key) {
        (None, None) => None,
        (Some((_, cert)), Some((_, key))) => Some((PathBuf::from(cert), PathBuf::from(key))),
        (Some((var, value)), None) | (None, Some((var, value))) => {
            return Err(OtelError::Setting {
                var,
                value,
                reason: "a client certificate needs both OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY",
            });
        }
    };
    let names_service = env("OTEL_SERVICE_NAME").is_some_and(|v| !v.trim().is_empty())
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|v| {
            v.split(',')
                .any(|pair| pair.split('=').next().map(str::trim) == Some("service.name"))
        });
    Ok(Some(Settings {
        endpoint: endpoint.map(|(_, value)| value),
        timeout,
        ca,
        identity,
        default_service_name: !names_service,
    }))
}

/// Starts the exporter and the SDK's batch thread; the export's POSTs run on `runtime`.
pub fn start(
    settings: &Settings,
    runtime: tokio::runtime::Handle,
) -> Result<SdkTracerProvider, OtelError> {
    let identity = settings
        .identity
        .as_ref()
        .map(|(cert, key)| (cert.as_path(), key.as_path()));
    let tls = crate::certs::client_tls_with(settings.ca.as_deref(), identity)?;
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(settings.timeout)
        .build()
        .map_err(|e| OtelError::Exporter(e.to_string()))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_http_client(Export { client, runtime })
        .build()
        .map_err(|e| OtelError::Exporter(e.to_string()))?;
    let mut resource = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    ));
    if settings.default_service_name {
        resource = resource.with_service_name("confgate");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    Ok(provider)
}

/// The exporter's HTTP client: each POST is made on the serving runtime (the SDK's batch
/// thread has none) and awaited from the batch thread.
#[derive(Debug)]
struct Export {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for Export {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let mut answer = client.execute(request).await?;
            let mut response = Response::builder().status(answer.status());
            if let Some(headers) = response.headers_mut() {
                *headers = std::mem::take(answer.headers_mut());
            }
            let mut body = bytes::BytesMut::new();
            while let Some(chunk) = answer.chunk().await? {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, HttpError>(response.body(body.freeze())?)
        });
        sent.await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)]) -> Result<Option<Settings>, OtelError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        settings(move |name| vars.get(name).cloned())
    }

    fn on(endpoint: Option<&str>) -> Settings {
        Settings {
            endpoint: endpoint.map(str::to_owned),
            timeout: Duration::from_secs(10),
            ca: None,
            identity: None,
            default_service_name: true,
        }
    }

    #[test]
    fn off_unless_an_endpoint_or_the_otlp_exporter_is_named() {
        assert_eq!(with(&[]).unwrap(), None);
        assert_eq!(with(&[("OTEL_SERVICE_NAME", "gate")]).unwrap(), None);
        assert_eq!(
            with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]).unwrap(),
            Some(on(Some("http://collector:4318")))
        );
        assert_eq!(
            with(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:4318/v1/traces"
            )])
            .unwrap(),
            Some(on(Some("http://c:4318/v1/traces")))
        );
        // The signal's own endpoint is the one that counts.
        assert_eq!(
            with(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://c:4318/v1/traces"
                ),
            ])
            .unwrap(),
            Some(on(Some("http://c:4318/v1/traces")))
        );
        assert_eq!(
            with(&[("OTEL_TRACES_EXPORTER", "otlp")]).unwrap(),
            Some(on(None))
        );
        assert_eq!(
            with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "  ")]).unwrap(),
            None,
            "an empty endpoint is no endpoint"
        );
    }

    #[test]
    fn disabled_or_none_wins_over_an_endpoint() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        assert_eq!(
            with(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")]).unwrap(),
            None
        );
        assert_eq!(
            with(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]).unwrap(),
            None
        );
        assert_eq!(
            with(&[endpoint, ("OTEL_SDK_DISABLED", "false")]).unwrap(),
            Some(on(Some("http://collector:4318")))
        );
    }

    #[test]
    fn only_otlp_over_http_protobuf_is_accepted_and_the_error_names_the_variable() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
        let error = with(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "OTEL_EXPORTER_OTLP_PROTOCOL=\"grpc\": confgate exports traces over OTLP/HTTP with protobuf only (`http/protobuf`, a collector's port 4318)"
        );
        // The signal's own variable is read first.
        let error = with(&[
            endpoint,
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
        ])
        .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=\"http/json\""),
            "{error}"
        );
        assert_eq!(
            with(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).unwrap(),
            Some(on(Some("http://collector:4317")))
        );
        let error = with(&[("OTEL_TRACES_EXPORTER", "zipkin")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "OTEL_TRACES_EXPORTER=\"zipkin\": confgate exports traces with `otlp` only (or `none`)"
        );
    }

    #[test]
    fn timeout_certificates_and_service_name_come_from_their_variables() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318");
        let got = with(&[
            endpoint,
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "750"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/otel/ca.crt"),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/etc/otel/tls.crt"),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/etc/otel/tls.key"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "k8s.pod.name=a, service.name=gate",
            ),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            got,
            Settings {
                endpoint: Some("https://collector:4318".into()),
                timeout: Duration::from_millis(750),
                ca: Some("/etc/otel/ca.crt".into()),
                identity: Some(("/etc/otel/tls.crt".into(), "/etc/otel/tls.key".into())),
                default_service_name: false,
            }
        );
        let error = with(&[endpoint, ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "OTEL_EXPORTER_OTLP_TIMEOUT=\"10s\": a timeout is a positive number of milliseconds"
        );
        let error = with(&[endpoint, ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/k")]).unwrap_err();
        assert!(
            error.to_string().starts_with(
                "OTEL_EXPORTER_OTLP_CLIENT_KEY=\"/k\": a client certificate needs both"
            ),
            "{error}"
        );
        let named = with(&[endpoint, ("OTEL_SERVICE_NAME", "gate")])
            .unwrap()
            .unwrap();
        assert!(!named.default_service_name);
    }
}
