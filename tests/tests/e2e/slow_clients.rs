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
