//! The HTTP listener, with the limits that keep slow or idle clients from exhausting the
//! process: a bound on open connections, a time limit on sending a request's header, and
//! an idle-connection timeout.
//!
//! - Open connections are bounded ([`ConnectionLimits::max_connections`]): past the bound,
//!   new connections wait in the kernel's accept queue until one closes, so the process
//!   never runs out of file descriptors because of its clients.
//! - A client has [`ConnectionLimits::header_read_timeout`] to send a complete request
//!   header (HTTP/1, hyper's own timer, which also runs while a kept-alive connection
//!   waits for its next request); after that the connection is closed.
//! - A connection on which nothing is read or written for
//!   [`ConnectionLimits::idle_timeout`] is shut down gracefully (a request being answered
//!   is finished first); this covers HTTP/2 and slow bodies, which the header timer does not.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::env_parse;

/// The limits of every HTTP listener.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// `SAGA_HTTP_MAX_CONNECTIONS` (1024).
    pub max_connections: usize,
    /// `SAGA_HTTP_HEADER_TIMEOUT_MS` (10000).
    pub header_read_timeout: Duration,
    /// `SAGA_HTTP_IDLE_TIMEOUT_MS` (60000).
    pub idle_timeout: Duration,
}

/// The queue of connections the kernel completes before the service accepts them:
/// `SAGA_HTTP_LISTEN_BACKLOG`, by default the system's limit (`net.core.somaxconn`, 4096
/// on current Linux). The 128 of a plain `bind` dropped SYNs under a burst of clients, and
/// a dropped SYN is retried only after 1, 3 and 7 s: a client waited seconds before the
/// service even saw it, instead of being answered at once (with 503 or 429 when shedding).
pub fn listen_backlog() -> anyhow::Result<u32> {
    let system = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(4096);
    let backlog: u32 = env_parse("SAGA_HTTP_LISTEN_BACKLOG", system)?;
    anyhow::ensure!(backlog > 0, "SAGA_HTTP_LISTEN_BACKLOG must be at least 1");
    Ok(backlog)
}

/// A listener on `addr` with [`listen_backlog`] and address reuse, as `TcpListener::bind`
/// would give it otherwise.
pub fn bind(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let backlog = listen_backlog()?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(backlog)?)
}

impl ConnectionLimits {
    pub fn from_env() -> anyhow::Result<Self> {
        let limits = ConnectionLimits {
            max_connections: env_parse("SAGA_HTTP_MAX_CONNECTIONS", 1024usize)?,
            header_read_timeout: Duration::from_millis(env_parse(
                "SAGA_HTTP_HEADER_TIMEOUT_MS",
                10_000u64,
            )?),
            idle_timeout: Duration::from_millis(env_parse("SAGA_HTTP_IDLE_TIMEOUT_MS", 60_000u64)?),
        };
        anyhow::ensure!(
            limits.max_connections > 0,
            "SAGA_HTTP_MAX_CONNECTIONS must be at least 1"
        );
        anyhow::ensure!(
            !limits.header_read_timeout.is_zero() && !limits.idle_timeout.is_zero(),
            "SAGA_HTTP_HEADER_TIMEOUT_MS and SAGA_HTTP_IDLE_TIMEOUT_MS must be positive"
        );
        Ok(limits)
    }
}

/// Serves `router` on `listener` until `shutdown`, then lets the open connections finish
/// what they are answering (they are told to close) and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        // A permit before accepting: at the bound, new clients wait in the accept queue.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was accepted:
                    // keep serving the others after a breath.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY could not be set; serving anyway");
        }
        let builder = builder.clone();
        let service = TowerToHyperService::new(router.clone());
        let shutdown = shutdown.clone();
        let idle_timeout = limits.idle_timeout;
        connections.spawn(async move {
            let _permit = permit;
            let activity = Activity::new();
            let io = TokioIo::new(Tracked {
                inner: stream,
                activity: activity.clone(),
            });
            let conn = builder.serve_connection_with_upgrades(io, service);
            tokio::pin!(conn);
            let mut closing = false;
            let mut tick = tokio::time::interval(idle_timeout / 4);
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "HTTP connection ended with an error");
                        }
                        break;
                    }
                    _ = shutdown.cancelled(), if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = tick.tick(), if !closing => {
                        if activity.idle_for() >= idle_timeout {
                            closing = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// When a connection last read or wrote something.
#[derive(Clone)]
struct Activity {
    since: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            since: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.since.elapsed().saturating_sub(last)
    }
}

/// A stream that records its activity.
struct Tracked {
    inner: TcpStream,
    activity: Activity,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
