//! The listening socket, with its accept errors seen. axum-server retries a failed `accept`
//! every 50 ms without a word, so a process out of file descriptors (EMFILE) looked healthy while
//! every new connection waited in the backlog. Here each failure is counted
//! (`confgate_accept_errors_total{reason}`), logged at most once a minute with the error, and
//! retried with a growing pause (up to a second), so a lasting failure neither spins nor goes
//! unnoticed; the connections already open keep being served meanwhile.

use crate::metrics::Metrics;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// The address confgate serves on, as axum-server's [`axum_server::Address`]: the listener it
/// stands for is [`Listener`]. Peers are reported with the same type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub SocketAddr);

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl axum_server::Address for Listen {
    type Stream = TcpStream;
    type Listener = Listener;
}

/// The handle of a server on a [`Listen`] address.
pub type Handle = axum_server::Handle<Listen>;

/// A bound TCP listener whose accept errors are counted, logged and paced.
pub struct Listener {
    inner: tokio::net::TcpListener,
    errors: AcceptErrors,
}

impl Listener {
    /// Binds `addr`; accept errors are counted in `metrics`.
    pub async fn bind(addr: SocketAddr, metrics: Arc<Metrics>) -> io::Result<Self> {
        Ok(Self {
            inner: tokio::net::TcpListener::bind(addr).await?,
            errors: AcceptErrors::new(metrics),
        })
    }
}

impl axum_server::AddrListener<TcpStream, Listen> for Listener {
    async fn bind_to(addr: Listen) -> io::Result<Self> {
        // Only reached through axum_server::bind, which confgate does not use: counted nowhere.
        Self::bind(addr.0, Arc::new(Metrics::new())).await
    }

    async fn accept_stream(&self) -> io::Result<(TcpStream, Listen)> {
        let (stream, peer) = accept_with(|| self.inner.accept(), &self.errors).await;
        Ok((stream, Listen(peer)))
    }

    fn get_local_addr(&self) -> io::Result<Listen> {
        self.inner.local_addr().map(Listen)
    }
}

/// The first pause after a failed accept, doubled on each failure in a row.
const FIRST_PAUSE: Duration = Duration::from_millis(50);
/// The longest pause between two tries.
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// What the failures of one listener share: the counter and the time of the last log line.
struct AcceptErrors {
    metrics: Arc<Metrics>,
    log: crate::telemetry::OnceAMinute,
}

impl AcceptErrors {
    fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            log: crate::telemetry::OnceAMinute::default(),
        }
    }

    fn record(&self, error: &io::Error) {
        let reason = reason(error);
        self.metrics.accept_error(reason);
        if self.log.due() {
            tracing::warn!(
                %error,
                reason,
                "cannot accept new connections; retrying (logged once a minute, counted in confgate_accept_errors_total)"
            );
        }
    }
}

/// `too_many_open_files` for the process's or the system's file limit, `other` otherwise.
fn reason(error: &io::Error) -> &'static str {
    // EMFILE (24) and ENFILE (23) on Linux; Rust has no ErrorKind for either.
    match error.raw_os_error() {
        Some(23 | 24) => "too_many_open_files",
        _ => "other",
    }
}

/// Accepts with `accept` until it succeeds: each failure is recorded, and the next try waits
/// [`FIRST_PAUSE`], doubling up to [`MAX_PAUSE`].
async fn accept_with<F, Fut, T>(mut accept: F, errors: &AcceptErrors) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    let mut pause = FIRST_PAUSE;
    loop {
        match accept().await {
            Ok(accepted) => return accepted,
            Err(error) => {
                errors.record(&error);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(metrics: &Metrics, reason: &str) -> f64 {
        let text = metrics.encode(&crate::cluster::Standalone);
        let sample = format!("confgate_accept_errors_total{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&sample)?.parse().ok())
            .unwrap_or(0.0)
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_counted_by_reason_paced_and_retried_until_a_connection_comes() {
        let metrics = Arc::new(Metrics::new());
        let errors = AcceptErrors::new(metrics.clone());
        let mut script = vec![
            Err(io::Error::from_raw_os_error(24)),
            Err(io::Error::from_raw_os_error(24)),
            Err(io::Error::from_raw_os_error(23)),
            Err(io::Error::from_raw_os_error(103)), // ECONNABORTED
            Ok("connection"),
        ]
        .into_iter();
        let mut tries = Vec::new();
        let started = tokio::time::Instant::now();
        let accepted = accept_with(
            || {
                tries.push(started.elapsed());
                let next = script.next().unwrap_or(Ok("more"));
                async move { next }
            },
            &errors,
        )
        .await;
        assert_eq!(accepted, "connection");
        assert_eq!(count(&metrics, "too_many_open_files"), 3.0);
        assert_eq!(count(&metrics, "other"), 1.0);
        // The pauses between tries: 50, 100, 200, 400 ms (the clock is the test's own).
        let gaps: Vec<Duration> = tries.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(
            gaps,
            [50, 100, 200, 400].map(Duration::from_millis).to_vec()
        );
    }

    /// Accepts with [`accept_with`] where the first `failures` tries fail with EMFILE; the
    /// instants of the tries.
    async fn tries_with(failures: usize, errors: &AcceptErrors) -> Vec<tokio::time::Instant> {
        let mut tries = Vec::new();
        let mut left = failures;
        accept_with(
            || {
                tries.push(tokio::time::Instant::now());
                let result = if left > 0 {
                    left -= 1;
                    Err(io::Error::from_raw_os_error(24))
                } else {
                    Ok(())
                };
                async move { result }
            },
            errors,
        )
        .await;
        tries
    }

    #[tokio::test(start_paused = true)]
    async fn the_pause_stops_growing_at_a_second_and_starts_over_after_a_success() {
        let metrics = Arc::new(Metrics::new());
        let errors = AcceptErrors::new(metrics.clone());
        let tries = tries_with(8, &errors).await;
        let gaps: Vec<u128> = tries
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis())
            .collect();
        assert_eq!(gaps, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
        // The next accept starts again from the first pause.
        let again = tries_with(1, &errors).await;
        assert_eq!(again[1] - again[0], FIRST_PAUSE);
        assert_eq!(count(&metrics, "too_many_open_files"), 9.0);
    }
}
