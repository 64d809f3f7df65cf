//! Connection hygiene: a limit on open connections, and timeouts for connections that carry no
//! traffic, for HTTP/1.1 and HTTP/2 alike (hyper has no idle timeout for HTTP/2, and its HTTP/1
//! header timeout does not see a client that completes TLS and then says nothing on h2).
//!
//! - A connection that completes TLS but sends nothing within [`FIRST_REQUEST`] is closed.
//! - A connection with no traffic either way for [`IDLE`] is closed. That is longer than the
//!   kube-apiserver keeps an idle connection (90 s), so confgate never closes a connection the
//!   apiserver is about to reuse: the two never race.
//! - Past `--max-connections`, a new connection is closed at once, logged (at most once a
//!   minute) and counted; the ones already open keep working.

use crate::metrics::Metrics;
use axum_server::accept::Accept;
use futures::future::BoxFuture;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// How long a new connection may stay silent after the TLS handshake.
pub const FIRST_REQUEST: Duration = Duration::from_secs(30);
/// How long a connection may carry no traffic at all.
pub const IDLE: Duration = Duration::from_secs(120);

/// File descriptors kept for everything but webhook connections: the API server's watches and
/// requests, the policy and certificate files, the log.
pub const RESERVED_FILES: u64 = 64;

/// The open-connection cap to use: `requested` (`--max-connections`), lowered so that open
/// connections never take the descriptors the process needs besides them (`open_files`: the
/// soft `RLIMIT_NOFILE`). A connection past the file limit would fail in `accept` without a
/// word, and locked-out clients would see only timeouts; past the cap they are refused at once,
/// logged and counted.
pub fn connection_cap(requested: usize, open_files: Option<u64>) -> usize {
    match open_files {
        Some(limit) => {
            let room = usize::try_from(limit.saturating_sub(RESERVED_FILES)).unwrap_or(usize::MAX);
            requested.min(room.max(1))
        }
        None => requested,
    }
}

/// The soft limit on open files from `/proc/self/limits` (`Max open files`), when readable.
pub fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    soft_open_files(&text)
}

/// The soft `Max open files` of a `/proc/<pid>/limits` text (`None`: unlimited or absent).
pub fn soft_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The limits and counters shared by all connections.
pub struct Connections {
    open: AtomicUsize,
    max: usize,
    refusal_log: crate::telemetry::OnceAMinute,
    metrics: Arc<Metrics>,
    first_request: Duration,
    idle: Duration,
}

impl Connections {
    /// At most `max` connections, with these timeouts ([`FIRST_REQUEST`] and [`IDLE`] in
    /// `confgate serve`; tests use short ones).
    pub fn with_timeouts(
        max: usize,
        metrics: Arc<Metrics>,
        first_request: Duration,
        idle: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
            refusal_log: crate::telemetry::OnceAMinute::default(),
            metrics,
            first_request,
            idle,
        })
    }

    /// A slot for a new connection, or `None` at the limit.
    fn take(self: &Arc<Self>) -> Option<Slot> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if taken {
            self.metrics
                .set_connections_open(self.open.load(Ordering::Acquire));
            return Some(Slot(self.clone()));
        }
        self.metrics.connection_refused();
        if self.refusal_log.due() {
            tracing::warn!(
                max = self.max,
                "connection limit reached: new connections are closed at once (--max-connections; counted in confgate_connections_refused_total)"
            );
        }
        None
    }
}

/// One open connection's place in the count, given back when the connection is dropped.
struct Slot(Arc<Connections>);

impl Drop for Slot {
    fn drop(&mut self) {
        let left = self.0.open.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        self.0.metrics.set_connections_open(left);
    }
}

/// An acceptor that enforces the limit before the TLS handshake and watches the connection's
/// traffic after it.
#[derive(Clone)]
pub struct GuardedAcceptor<A> {
    inner: A,
    connections: Arc<Connections>,
}

impl<A> GuardedAcceptor<A> {
    /// Wraps `inner` (the TLS acceptor).
    pub fn new(inner: A, connections: Arc<Connections>) -> Self {
        Self { inner, connections }
    }
}

impl<A, S> Accept<TcpStream, S> for GuardedAcceptor<A>
where
    A: Accept<TcpStream, S> + Clone + Send + 'static,
    A::Future: Send + 'static,
    A::Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A::Service: Send + 'static,
    S: Send + 'static,
{
    type Stream = Watched<A::Stream>;
    type Service = A::Service;
    type Future = BoxFuture<'static, io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let Some(slot) = self.connections.take() else {
            return Box::pin(std::future::ready(Err(io::Error::other(
                "connection limit reached",
            ))));
        };
        let handshake = self.inner.accept(stream, service);
        let (first, idle) = (self.connections.first_request, self.connections.idle);
        Box::pin(async move {
            let (stream, service) = handshake.await?;
            Ok((Watched::new(stream, slot, first, idle), service))
        })
    }
}

/// A connection whose traffic is watched: reads fail with `TimedOut` once it has been silent
/// too long, and the HTTP server then closes it.
pub struct Watched<S> {
    inner: S,
    _slot: Slot,
    timer: Pin<Box<Sleep>>,
    last_activity: Instant,
    seen_data: bool,
    idle: Duration,
}

impl<S> Watched<S> {
    fn new(inner: S, slot: Slot, first_request: Duration, idle: Duration) -> Self {
        let now = Instant::now();
        Self {
            inner,
            _slot: slot,
            timer: Box::pin(tokio::time::sleep_until(now + first_request)),
            last_activity: now,
            seen_data: false,
            idle,
        }
    }

    /// True when the connection has been silent past its deadline; otherwise the timer is
    /// (re)armed so the task is woken at the deadline.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if !self.seen_data {
                return true;
            }
            let deadline = self.last_activity + self.idle;
            if deadline <= Instant::now() {
                return true;
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.last_activity = Instant::now();
                    self.seen_data = true;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle too long",
            ))),
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.last_activity = Instant::now();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.last_activity = Instant::now();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_leaves_the_files_the_process_needs() {
        assert_eq!(connection_cap(1024, None), 1024);
        assert_eq!(connection_cap(1024, Some(1_048_576)), 1024);
        assert_eq!(connection_cap(1024, Some(1024)), 960);
        assert_eq!(connection_cap(1024, Some(128)), 64);
        assert_eq!(connection_cap(1024, Some(10)), 1);
    }

    #[test]
    fn the_soft_open_file_limit_is_read_from_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \nMax processes             127336               127336               processes \nMax open files            128                  524288               files     \n";
        assert_eq!(soft_open_files(limits), Some(128));
        assert_eq!(
            soft_open_files(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
        assert!(
            open_files_limit().is_some_and(|n| n > 0),
            "this machine's limit"
        );
    }
}
