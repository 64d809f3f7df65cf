//! Logging: `tracing` to stderr, JSON by default, level from `RUST_LOG` (default `info`); and
//! traces over OTLP when the OpenTelemetry environment asks for them ([`otel`]).

pub mod otel;

use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tracing_subscriber::EnvFilter;

static PROCESS_START: OnceLock<Instant> = OnceLock::new();

/// Records when the process started (call first thing in `main`).
pub fn mark_process_start() {
    let _ = PROCESS_START.set(Instant::now());
}

/// Time since [`mark_process_start`], when it was called.
pub fn since_process_start() -> Option<Duration> {
    PROCESS_START.get().map(Instant::elapsed)
}

/// Lets a repeated warning through at most once a minute (a minute of the process's life): for
/// failures that can repeat thousands of times a second, counted in a metric each time.
#[derive(Debug, Default)]
pub struct OnceAMinute(std::sync::atomic::AtomicU64);

impl OnceAMinute {
    /// True the first time in each minute.
    pub fn due(&self) -> bool {
        let minute = since_process_start()
            .map(|d| d.as_secs() / 60 + 1)
            .unwrap_or(1);
        self.0.swap(minute, std::sync::atomic::Ordering::AcqRel) != minute
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log pipelines).
    Json,
    /// Human-readable lines.
    Text,
}

/// Keeps the background log writer running, and the trace export when it is on; see
/// [`Telemetry::shutdown`].
pub struct Telemetry {
    _log: tracing_appender::non_blocking::WorkerGuard,
    traces: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    /// Where they go, when they are exported.
    endpoint: Option<String>,
}

impl Telemetry {
    /// Where spans are exported to, when they are.
    pub fn traces_to(&self) -> Option<&str> {
        self.traces.as_ref()?;
        Some(self.endpoint.as_deref().unwrap_or("http://localhost:4318"))
    }

    /// Sends the spans still queued (at most a few seconds), then lets the log writer flush.
    pub async fn shutdown(self) {
        if let Some(provider) = self.traces {
            // The SDK's shutdown blocks until its batch thread has exported, and the export's
            // POST runs on this runtime: off the workers, so they stay free to run it.
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown());
            match tokio::time::timeout(std::time::Duration::from_secs(5), flushed).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => tracing::warn!(%error, "the last spans were not exported"),
                Ok(Err(_)) | Err(_) => tracing::warn!("the last spans were not exported in time"),
            }
        }
    }
}

/// Spans of confgate's own that are exported: reviews, rollouts and audits (level INFO), their
/// parts, and WARN/ERROR events inside them. Policy spans only inside a review: the audit and
/// the rollout judge every workload, and one span per policy per workload would swamp a trace.
fn exported(
    meta: &tracing::Metadata<'_>,
    cx: &tracing_subscriber::layer::Context<
        '_,
        impl tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    >,
) -> bool {
    if !meta.target().starts_with("confgate") || *meta.level() > tracing::Level::INFO {
        return false;
    }
    if !meta.is_span() {
        return *meta.level() <= tracing::Level::WARN;
    }
    meta.name() != POLICY_SPAN || cx.lookup_current().is_some_and(|s| s.name() == REVIEW_SPAN)
}

/// Installs the global subscriber: logs always, traces when the OpenTelemetry environment asks
/// for them ([`otel`]). Noisy dependencies are kept at `warn` unless `RUST_LOG` says otherwise.
/// Lines are formatted on the calling thread and written to stderr by a background thread, in
/// batches, so a slow log pipe never holds up a review; the queue blocks rather than drop lines.
/// Spans are never logged: with the export off, no layer wants them and they cost nothing.
/// Call from within the serving runtime (the export's POSTs run on it); keep the returned value
/// until the process ends.
pub fn init(format: LogFormat) -> Result<Telemetry, otel::OtelError> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::{FilterExt as _, dynamic_filter_fn, filter_fn};
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let settings = otel::settings(|name| std::env::var(name).ok())?;
    let traces = match &settings {
        Some(settings) => Some(otel::start(
            settings,
            tokio::runtime::Handle::try_current()
                .map_err(|e| otel::OtelError::Exporter(e.to_string()))?,
        )?),
        None => None,
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,kube=warn,hyper=warn,rustls=warn"));
    // The writer thread drains every queued line into the buffer and flushes when the queue is
    // empty: one write(2) per batch under load, and no delay for a line written alone.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let lines = tracing_subscriber::fmt::layer().with_writer(writer);
    let lines = match format {
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed(),
        LogFormat::Text => lines.boxed(),
    }
    .with_filter(filter.and(filter_fn(|meta: &tracing::Metadata<'_>| !meta.is_span())));
    let spans = traces.as_ref().map(|provider| {
        use opentelemetry::trace::TracerProvider as _;
        // Only the attributes confgate sets: no source location, thread, target or busy/idle
        // times per span, which would double each span's size on a path that makes several
        // spans per review.
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("confgate"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(dynamic_filter_fn(exported))
    });
    // A panic (which the engine contains per policy) is reported as a structured log line.
    std::panic::set_hook(Box::new(|info| tracing::error!(panic = %info, "panic")));
    let _ = tracing_subscriber::registry()
        .with(spans)
        .with(lines)
        .try_init();
    Ok(Telemetry {
        _log: guard,
        traces,
        endpoint: settings.and_then(|s| s.endpoint),
    })
}

/// The name of the span of one admission review.
pub const REVIEW_SPAN: &str = "review";
/// The name of the span of one policy's verdict inside a review.
pub const POLICY_SPAN: &str = "policy";

/// The span of one admission review on `endpoint`, a server span whose parent is the trace the
/// apiserver sent in its `traceparent` header (W3C trace context; apiserver tracing), if any.
/// The request's fields are recorded on it by the review service once the body is parsed.
pub fn review_span(endpoint: &'static str, headers: &http::HeaderMap) -> tracing::Span {
    use tracing::field::Empty;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let span = tracing::info_span!(
        target: "confgate::review",
        REVIEW_SPAN,
        otel.kind = "server",
        otel.name = endpoint,
        otel.status_code = Empty,
        otel.status_description = Empty,
        admission.endpoint = endpoint,
        admission.uid = Empty,
        admission.kind = Empty,
        admission.operation = Empty,
        admission.dry_run = Empty,
        k8s.namespace.name = Empty,
        admission.object = Empty,
        admission.decision = Empty,
        admission.patch_ops = Empty,
    );
    if !span.is_disabled() {
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&opentelemetry_http::HeaderExtractor(headers))
        });
        use opentelemetry::trace::TraceContextExt as _;
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
    }
    span
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_repeated_warning_is_let_through_once_in_a_minute() {
        let log = super::OnceAMinute::default();
        assert!(log.due());
        assert!(!log.due());
        assert!(!log.due());
        // Another throttle is its own.
        assert!(super::OnceAMinute::default().due());
    }
}
