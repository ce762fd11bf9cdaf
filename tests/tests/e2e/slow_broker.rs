//! A slow broker must not starve the database pool: the relay holds a connection (and a
//! transaction) through every publish and its confirm, so with the broker answering
//! slowly those connections stay taken for longer, while handlers and HTTP requests need
//! theirs too. The pool is sized from what runs at once, so nobody times out waiting.

use std::time::Duration;

use futures_util::future::join_all;
use saga_tests::{Service, Stack, StackOptions, order_request};

/// Orders placed at once while the broker is slow.
const ORDERS: usize = 40;

#[tokio::test]
async fn a_slow_broker_causes_no_pool_timeout() {
    let stack = Stack::start(
        StackOptions::default()
            .with_proxy()
            .wait(Duration::from_secs(120))
            .deadline_secs(120.0),
    )
    .await;
    stack.seed_stock("SKU-SLOW", 1_000).await;
    stack.deposit("sloth", 1_000_000, "EUR").await;

    // Every chunk between the services and the broker waits 250 ms, each way.
    stack.proxy().set_latency(Duration::from_millis(250));
    let body = order_request("sloth", "EUR", &[("SKU-SLOW", 1, 100)]);
    let placed: Vec<String> = join_all((0..ORDERS).map(|_| stack.place_order_ok(&body))).await;
    assert_eq!(placed.len(), ORDERS);
    for order_id in &placed {
        stack.wait_for_status(order_id, "confirmed").await;
    }
    stack.proxy().set_latency(Duration::ZERO);

    for service in Service::ALL {
        let log = std::fs::read_to_string(stack.log_path(service))
            .unwrap_or_else(|e| panic!("reading {service}'s log: {e}"));
        assert!(
            !log.contains("pool timed out"),
            "{service} waited for a database connection in vain:\n{}",
            stack.log_tails()
        );
    }
    stack.assert_invariants().await;
}
