//! Slow clients are cut off: connections that trickle a request header, or say nothing,
//! are closed after the header-read and idle timeouts, and open connections are bounded,
//! while normal requests keep being served.

use std::time::Duration;

use saga_tests::poll::{Poll, until};
use saga_tests::{Service, Stack, StackOptions, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// More slow connections than the bound on open connections.
const SLOW_CLIENTS: usize = 40;
const MAX_CONNECTIONS: usize = 32;

/// Whether the server has closed `stream` (EOF or reset), without waiting.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    match tokio::time::timeout(Duration::from_millis(20), stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        // An answer (408, say) before the close still counts as being cut off next read.
        Ok(Ok(_)) => false,
        Err(_) => false,
    }
}

#[tokio::test]
async fn slow_and_idle_connections_are_closed_while_normal_requests_are_served() {
    let stack = Stack::start(
        StackOptions::default()
            .env("SAGA_HTTP_HEADER_TIMEOUT_MS", "1500")
            .env("SAGA_HTTP_IDLE_TIMEOUT_MS", "3000")
            .env("SAGA_HTTP_MAX_CONNECTIONS", MAX_CONNECTIONS.to_string()),
    )
    .await;
    let addr = stack.addr(Service::Inventory);
    // Half send a partial header and keep trickling lines; half connect and say nothing.
    let mut slow = Vec::new();
    for i in 0..SLOW_CLIENTS {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        if i % 2 == 0 {
            let _ = stream
                .write_all(b"GET /stock/SLOW HTTP/1.1\r\nHost: saga\r\n")
                .await;
        }
        slow.push(stream);
    }
    // Normal requests are answered while the slow clients hold their connections: those
    // over the bound wait in the accept queue only until the first slow ones are cut off.
    let served = until(Duration::from_secs(20), || async {
        match stack.try_get(Service::Inventory, "/healthz").await {
            Ok((StatusCode::OK, _)) => Poll::Ready(()),
            Ok((status, body)) => Poll::Pending(format!("/healthz answered {status} {body}")),
            Err(e) => Poll::Pending(e.to_string()),
        }
    })
    .await;
    assert!(
        served.is_ok(),
        "a normal request was not served: {served:?}"
    );

    // Every slow connection is closed by the server, however it keeps trickling.
    let mut open: Vec<(usize, TcpStream)> = slow.into_iter().enumerate().collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !open.is_empty() && tokio::time::Instant::now() < deadline {
        let mut still = Vec::new();
        for (i, mut stream) in open {
            if closed_by_server(&mut stream).await {
                continue;
            }
            if i % 2 == 0 {
                // One more header line: a client that is slow, not dead.
                let _ = stream.write_all(b"X-Slow: 1\r\n").await;
            }
            still.push((i, stream));
        }
        open = still;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        open.is_empty(),
        "{} slow connections were still open after 30 s",
        open.len()
    );

    // A kept-alive connection that goes quiet after a request is closed too.
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: saga\r\n\r\n")
        .await
        .expect("write");
    let mut answer = [0u8; 12];
    idle.read_exact(&mut answer).await.expect("an answer");
    assert_eq!(&answer, b"HTTP/1.1 200");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut closed = false;
    while !closed && tokio::time::Instant::now() < deadline {
        let mut rest = [0u8; 4096];
        closed = matches!(
            tokio::time::timeout(Duration::from_millis(200), idle.read(&mut rest)).await,
            Ok(Ok(0)) | Ok(Err(_))
        );
    }
    assert!(closed, "an idle kept-alive connection stayed open");

    // And the service still serves.
    let (status, _) = stack.get(Service::Inventory, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
}

/// The kernel's count of connections dropped because a listen queue was full
/// (`TcpExt: ListenOverflows` in /proc/net/netstat), for the whole machine.
fn listen_overflows() -> u64 {
    let netstat = std::fs::read_to_string("/proc/net/netstat").expect("/proc/net/netstat");
    let mut tcp_ext = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (tcp_ext.next(), tcp_ext.next());
    let (Some(names), Some(values)) = (names, values) else {
        panic!("no TcpExt lines in /proc/net/netstat");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ListenOverflows")
        .and_then(|(_, value)| value.parse().ok())
        .expect("a ListenOverflows counter")
}

/// Opens `n` connections to `addr` at once; returns how many connected and how much the
/// kernel's ListenOverflows counter grew meanwhile.
async fn burst(addr: std::net::SocketAddr, n: usize) -> (usize, u64) {
    let before = listen_overflows();
    let connects =
        (0..n).map(|_| tokio::time::timeout(Duration::from_secs(30), TcpStream::connect(addr)));
    let streams = futures_util::future::join_all(connects).await;
    let grown = listen_overflows().saturating_sub(before);
    (
        streams.iter().filter(|s| matches!(s, Ok(Ok(_)))).count(),
        grown,
    )
}

/// A burst of clients far over the 128 connections a plain `bind` queues: with the
/// system's backlog none of their SYNs is dropped (a dropped SYN is retried after 1, 3
/// and 7 s, so its client waits seconds before the service even sees it). The same burst
/// against a backlog of 16 overflows, so the counter is the right witness.
#[tokio::test]
async fn a_burst_of_two_thousand_connections_overflows_no_listen_queue() {
    const CLIENTS: usize = 2000;
    let small = Stack::start(StackOptions::default().env("SAGA_HTTP_LISTEN_BACKLOG", "16")).await;
    let (_, overflowed) = burst(small.addr(Service::Inventory), CLIENTS).await;
    assert!(
        overflowed > 0,
        "{CLIENTS} connections at once overflowed no listen queue of 16: the counter cannot tell"
    );
    drop(small);

    let stack = Stack::start(StackOptions::default()).await;
    let (connected, overflowed) = burst(stack.addr(Service::Inventory), CLIENTS).await;
    assert_eq!(
        overflowed, 0,
        "the kernel dropped {overflowed} connections of a burst of {CLIENTS}: the listen queue is too short"
    );
    assert_eq!(
        connected, CLIENTS,
        "only {connected} of {CLIENTS} connected"
    );
}
