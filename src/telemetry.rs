//! Logging: `tracing` to stderr, JSON by default, level from `RUST_LOG` (default `info`).

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

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log pipelines).
    Json,
    /// Human-readable lines.
    Text,
}

/// Keeps the background log writer running; dropping it flushes what is queued.
pub type LogGuard = tracing_appender::non_blocking::WorkerGuard;

/// Installs the global subscriber. Noisy dependencies are kept at `warn` unless `RUST_LOG` says
/// otherwise. Lines are formatted on the calling thread and written to stderr by a background
/// thread, in batches, so a slow log pipe never holds up a review; the queue blocks rather than
/// drop lines.
/// Keep the returned guard alive until the process ends.
pub fn init(format: LogFormat) -> LogGuard {
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // A panic (which the engine contains per policy) is reported as a structured log line.
    std::panic::set_hook(Box::new(|info| tracing::error!(panic = %info, "panic")));
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    guard
}
