//! A TCP forwarder that can cut one stack off the broker without touching the broker.
//!
//! RabbitMQ is shared by every test running at once, so a test that wants the broker to
//! "go away" cannot stop it. Instead its stack talks AMQP through a [`TcpProxy`]:
//! [`TcpProxy::cut`] drops every live connection and turns new ones away, and
//! [`TcpProxy::restore`] lets them through again. To the services this looks like a
//! broker outage; to everybody else nothing happened.
//!
//! The proxy runs on the test's tokio runtime, so it forwards while the test is awaiting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

struct Shared {
    /// While set, accepted connections are closed at once.
    refusing: AtomicBool,
    /// Bumped by every cut; each forwarding task ends when it sees a change.
    cuts: watch::Sender<u64>,
    live: AtomicUsize,
    /// Milliseconds each chunk waits before it is passed on, in both directions.
    latency_ms: AtomicU64,
}

/// Forwards `127.0.0.1:<random port>` to one upstream address.
pub struct TcpProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    acceptor: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free local port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            refusing: AtomicBool::new(false),
            cuts: watch::Sender::new(0),
            live: AtomicUsize::new(0),
            latency_ms: AtomicU64::new(0),
        });
        let acceptor = tokio::spawn(accept_loop(listener, upstream, shared.clone()));
        Ok(TcpProxy {
            addr,
            upstream,
            shared,
            acceptor,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Drops every live connection and closes new ones as soon as they are accepted.
    /// No byte is forwarded once this returns.
    pub fn cut(&self) {
        // Refuse first, then end the live ones: a connection accepted in between either
        // sees the flag or sees the bump (see `accept_loop`).
        self.shared.refusing.store(true, Ordering::SeqCst);
        self.shared.cuts.send_modify(|n| *n += 1);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.shared.refusing.store(false, Ordering::SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.shared.refusing.load(Ordering::SeqCst)
    }

    /// Makes every chunk wait `latency` before it is passed on, in both directions: a slow
    /// broker (or a slow network to it), for live and new connections alike.
    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.shared.latency_ms.store(ms, Ordering::SeqCst);
    }

    /// Connections being forwarded right now.
    pub fn live_connections(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            // Out of file descriptors and the like: the client sees a failed connect and
            // retries, as it would against a real broker.
            tokio::task::yield_now().await;
            continue;
        };
        // Subscribe before looking at the flag, so that a cut racing with this accept is
        // seen one way or the other.
        let mut cut = shared.cuts.subscribe();
        if shared.refusing.load(Ordering::SeqCst) {
            drop(inbound);
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            shared.live.fetch_add(1, Ordering::SeqCst);
            tokio::select! {
                // `biased`: once cut, this task never forwards another byte, even when both
                // sockets have data waiting.
                biased;
                _ = cut.changed() => {}
                _ = async {
                    if let Ok(outbound) = TcpStream::connect(upstream).await {
                        let (from_client, to_client) = inbound.split();
                        let (from_upstream, to_upstream) = tokio::io::split(outbound);
                        tokio::select! {
                            _ = forward(from_client, to_upstream, &shared) => {}
                            _ = forward(from_upstream, to_client, &shared) => {}
                        }
                    }
                } => {}
            }
            shared.live.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Copies `from` to `to` chunk by chunk, each after the proxy's current latency, until
/// either side closes.
async fn forward(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    shared: &Shared,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let latency = shared.latency_ms.load(Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that echoes every byte back.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(msg).await?;
        let mut buf = vec![0; msg.len()];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("no echo within 5 s"))??;
        buf.truncate(n);
        Ok(buf)
    }

    /// Reads until the proxy closes the connection (EOF or reset).
    async fn closed(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 16];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn forwards_until_cut_and_again_after_restore() {
        let proxy = TcpProxy::start(echo_server().await).await.unwrap();

        let mut before = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut before, b"ping").await.unwrap(), b"ping");

        proxy.cut();
        assert!(
            closed(&mut before).await,
            "a live connection survived the cut"
        );
        let mut during = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(
            closed(&mut during).await,
            "a new connection got through a cut"
        );

        proxy.restore();
        let mut after = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut after, b"pong").await.unwrap(), b"pong");
    }
}
