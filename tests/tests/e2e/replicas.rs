//! Two instances of every service on one broker and one database per service: they share
//! the work (competing consumers on each queue, relays claiming disjoint outbox rows) and
//! every invariant still holds, with no event published twice.

use std::time::Duration;

use futures_util::future::join_all;
use saga_tests::{Service, Stack, StackOptions, eventually, order_request};
use serde_json::Value;

#[tokio::test]
async fn replicas_share_the_work_and_keep_every_invariant() {
    let stack = Stack::start(StackOptions::default()).await;
    let replicas = stack.start_replica_of_each().await;
    stack.seed_stock("REPL", 40).await;
    for c in 0..4 {
        stack.deposit(&format!("rep-{c}"), 10_000, "EUR").await;
    }
    // 60 orders for 40 units, half through each order-svc instance.
    let http = saga_tests::auth::operator_client();
    let order_urls = [stack.base_url(Service::Order), replicas[0].base_url()];
    let placed: Vec<String> = join_all((0..60).map(|i| {
        let http = http.clone();
        let url = format!("{}/orders", order_urls[i % 2]);
        async move {
            let body = order_request(&format!("rep-{}", i % 4), "EUR", &[("REPL", 1, 100)]);
            let resp = http
                .post(&url)
                .json(&body)
                .send()
                .await
                .expect("POST /orders");
            assert!(resp.status().is_success(), "{}", resp.status());
            let v: Value = resp.json().await.expect("JSON");
            v["order_id"].as_str().expect("order_id").to_owned()
        }
    }))
    .await;
    let mut confirmed = 0;
    for id in &placed {
        let order = eventually(Duration::from_secs(60), || async {
            let (_, o) = stack.order(id).await;
            matches!(
                o["status"].as_str(),
                Some("confirmed" | "rejected" | "cancelled")
            )
            .then_some(o.clone())
            .ok_or(o)
        })
        .await;
        if order["status"] == "confirmed" {
            confirmed += 1;
        }
        // Each event of the saga is in the history once: no relay published a row twice.
        let mut types: Vec<&str> = order["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|h| h["type"].as_str())
            .collect();
        let n = types.len();
        types.sort();
        types.dedup();
        assert_eq!(
            types.len(),
            n,
            "an event appears twice in {id}'s history: {order}"
        );
    }
    assert_eq!(confirmed, 40, "exactly the 40 units in stock are sold");
    stack.assert_invariants().await;
    let (_, stock) = stack.stock("REPL").await;
    assert_eq!(
        (stock["available"].as_i64(), stock["sold"].as_i64()),
        (Some(0), Some(40))
    );
    // Both instances of every service handled messages; nobody saw a duplicate.
    for replica in &replicas {
        let s = replica.service;
        let first = stack
            .metric(s, "saga_messages_handled_total", &[("outcome", "ok")])
            .await;
        let second = replica
            .metric("saga_messages_handled_total", &[("outcome", "ok")])
            .await;
        assert!(
            first > 0.0 && second > 0.0,
            "{s}: handled {first} and {second}: the work was not shared"
        );
        let dups = stack
            .metric(
                s,
                "saga_messages_handled_total",
                &[("outcome", "duplicate")],
            )
            .await
            + replica
                .metric("saga_messages_handled_total", &[("outcome", "duplicate")])
                .await;
        assert_eq!(dups, 0.0, "{s} received a message twice");
    }
}
