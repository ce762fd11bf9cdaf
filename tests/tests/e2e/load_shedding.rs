//! Above capacity order-svc sheds load (docs/http.md, "Overload"): once the sagas it has
//! accepted and not finished reach `SAGA_ORDER_MAX_OPEN`, `POST /orders` answers 503
//! `overloaded` with `Retry-After` instead of queueing more work, while reads, cancels and
//! the probes keep working; once the backlog drains it accepts orders again. `saga-bench
//! load` waits out the shed answers and places the same orders again. (A bound out of range
//! stopping order-svc at start-up is tested with the other settings, in
//! e2e_failure_classes.rs.)

use std::time::Duration;

use saga_tests::stack::retry_after;
use saga_tests::{Method, Service, Stack, StackOptions, StatusCode, eventually, order_request};
use serde_json::Value;

/// `SAGA_ORDER_MAX_OPEN` of the test's stack.
const MAX_OPEN: usize = 5;
/// Concurrent orders sent at once while shedding.
const BURST: usize = 10;
const SKU: &str = "SKU-SHED";
const CUSTOMER: &str = "shed-customer";

fn order_body() -> Value {
    order_request(CUSTOMER, "EUR", &[(SKU, 1, 100)])
}

/// `POST /orders` with `key`: status, `Retry-After` and body.
async fn place(stack: &Stack, key: &str) -> (StatusCode, Option<Duration>, Value) {
    let headers = [
        ("content-type", "application/json"),
        ("idempotency-key", key),
    ];
    let body = order_body().to_string().into_bytes();
    let (status, answer_headers, answer) = stack
        .try_request_with_headers(
            Service::Order,
            Method::POST,
            "/orders",
            &headers,
            Some(body),
        )
        .await
        .unwrap_or_else(|e| panic!("POST /orders failed: {e}"));
    (status, retry_after(&answer_headers), answer)
}

/// Places orders one after the other, as fast as they are answered, until one is shed;
/// answers the accepted ones, and the key, `Retry-After` and body of the shed one.
async fn fill_to_the_bound(stack: &Stack) -> (Vec<String>, String, Duration, Value) {
    let mut accepted = Vec::new();
    for n in 0..=MAX_OPEN {
        let key = format!("shed-{n}");
        let (status, retry, body) = place(stack, &key).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            let retry = retry.unwrap_or_else(|| panic!("a 503 without Retry-After: {body}"));
            return (accepted, key, retry, body);
        }
        assert_eq!(status, StatusCode::ACCEPTED, "order {n}: {body}");
        accepted.push(body["order_id"].as_str().unwrap_or_default().to_owned());
    }
    panic!("{MAX_OPEN} orders open and the next one accepted: nothing was shed")
}

/// The document says what the answer is: a 503 with `Retry-After` and the error body.
async fn assert_documented(stack: &Stack, body: &Value) {
    let (status, doc) = stack.get(Service::Order, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    let answer = &doc["paths"]["/orders"]["post"]["responses"]["503"];
    assert!(
        answer["headers"]["Retry-After"].is_object(),
        "POST /orders documents no 503 with Retry-After: {answer}"
    );
    let mut documented: Vec<&String> = doc["components"]["schemas"]["Error"]["properties"]
        .as_object()
        .map(|p| p.keys().collect())
        .unwrap_or_default();
    let mut answered: Vec<&String> = body
        .as_object()
        .map(|b| b.keys().collect())
        .unwrap_or_default();
    documented.sort();
    answered.sort();
    assert_eq!(
        answered, documented,
        "the 503's body against the Error schema"
    );
}

/// The shed answer: `Retry-After: 1`, the code `overloaded`, a message that says why and
/// when to come back, as the OpenAPI document describes it.
async fn assert_overload_answer(stack: &Stack, retry: Duration, shed: &Value) {
    assert_eq!(retry, Duration::from_secs(1), "Retry-After of {shed}");
    assert_eq!(shed["error"], "overloaded", "{shed}");
    let message = shed["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("(the bound is {MAX_OPEN})"))
            && message.contains("retry after 1 s"),
        "{shed}"
    );
    assert_documented(stack, shed).await;
}

/// [`BURST`] orders at once at the bound: concurrent requests each count the others, so a
/// burst cannot pass the bound either. Adds the accepted ones (room left by an early shed,
/// if any) to `accepted`; answers how many were shed.
async fn burst_at_the_bound(stack: &Stack, accepted: &mut Vec<String>) -> usize {
    let burst = futures_util::future::join_all(
        (0..BURST).map(|n| async move { place(stack, &format!("burst-{n}")).await }),
    )
    .await;
    let mut shed = 0;
    for (status, retry, body) in burst {
        match status {
            StatusCode::ACCEPTED => {
                accepted.push(body["order_id"].as_str().unwrap_or_default().to_owned())
            }
            StatusCode::SERVICE_UNAVAILABLE if retry.is_some() => shed += 1,
            _ => panic!("a burst while shedding answered {status} {body}"),
        }
    }
    let n = accepted.len();
    assert!(
        n <= MAX_OPEN,
        "{n} orders accepted with SAGA_ORDER_MAX_OPEN={MAX_OPEN}"
    );
    shed
}

/// A series of order-svc's load shedding metrics, for the open sagas.
async fn open_sagas_metric(stack: &Stack, name: &str) -> f64 {
    stack
        .metric(Service::Order, name, &[("backlog", "open_sagas")])
        .await
}

/// The shed counter counts every 503, and the gauge comes to the orders left open.
async fn assert_metrics(stack: &Stack, shed: usize, open: usize) {
    let counted = open_sagas_metric(stack, "saga_orders_shed_total").await;
    assert!(
        counted >= shed as f64,
        "saga_orders_shed_total = {counted}, {shed} shed"
    );
    let open = open as f64;
    eventually(stack.options().wait, || async move {
        let seen = open_sagas_metric(stack, "saga_order_backlog").await;
        (seen == open)
            .then_some(())
            .ok_or(format!("the gauge counts {seen} open sagas, {open} placed"))
    })
    .await;
}

/// While `POST /orders` sheds, reading and cancelling `order_id` and the probes answer.
async fn assert_only_new_orders_are_shed(stack: &Stack, order_id: &str) {
    let (status, order) = stack.order(order_id).await;
    assert_eq!(status, StatusCode::OK, "GET while shedding: {order}");
    let (status, cancelled) = stack.cancel(order_id).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "cancel while shedding: {cancelled}"
    );
    for probe in ["/healthz", "/healthz/ready", "/healthz/live"] {
        let (status, body) = stack.get(Service::Order, probe).await;
        assert_eq!(status, StatusCode::OK, "{probe} while shedding: {body}");
    }
}

#[tokio::test]
async fn past_its_open_saga_bound_order_svc_sheds_new_orders_and_recovers_when_they_drain() {
    let stack = Stack::start(
        StackOptions::default()
            .deadline_secs(120.0)
            .env("SAGA_ORDER_MAX_OPEN", MAX_OPEN.to_string()),
    )
    .await;
    stack.seed_stock(SKU, 100).await;
    stack.deposit(CUSTOMER, 100_000, "EUR").await;
    // Without inventory-svc no saga gets past `pending`: the open sagas only grow.
    stack.kill(Service::Inventory);

    let (mut accepted, shed_key, retry, shed) = fill_to_the_bound(&stack).await;
    // The orders let through since the last count are added to it, so none passes the
    // bound however fast they come. (One may be shed a moment early: an order whose commit
    // a count starting just then sees is counted twice until the next count.)
    assert!(
        (MAX_OPEN - 1..=MAX_OPEN).contains(&accepted.len()),
        "{} orders accepted before the first 503, with SAGA_ORDER_MAX_OPEN={MAX_OPEN}",
        accepted.len()
    );
    assert_overload_answer(&stack, retry, &shed).await;
    let burst_shed = burst_at_the_bound(&stack, &mut accepted).await;
    assert_metrics(&stack, 1 + burst_shed, accepted.len()).await;
    assert_only_new_orders_are_shed(&stack, &accepted[0]).await;

    // inventory-svc back: every saga finishes, and the shed order goes through when sent
    // again with its key, as a client told to retry would.
    stack.start_service(Service::Inventory).await;
    stack.wait_for_status(&accepted[0], "cancelled").await;
    for order_id in &accepted[1..] {
        stack.wait_for_status(order_id, "confirmed").await;
    }
    let placed = eventually(stack.options().wait, || async {
        match place(&stack, &shed_key).await {
            (StatusCode::ACCEPTED, _, body) => Ok(body["order_id"].as_str().map(str::to_owned)),
            (status, _, body) => Err(format!("POST /orders still answers {status} {body}")),
        }
    })
    .await
    .unwrap_or_else(|| panic!("the accepted order has no order_id"));
    stack.wait_for_status(&placed, "confirmed").await;
    stack.assert_invariants().await;
}

#[tokio::test]
async fn saga_bench_load_waits_out_shed_answers_and_loses_no_order() {
    let stack = Stack::start(StackOptions::default().env("SAGA_ORDER_MAX_OPEN", "4")).await;
    // Far more placements at once than the bound: most of them are shed, and retried.
    let report = stack
        .saga_bench_json(&["load", "--orders", "24", "--concurrency", "12"], &[])
        .await;
    assert_eq!(report["placed"], 24, "{report:#}");
    assert_eq!(report["completed"], 24, "{report:#}");
    assert_eq!(report["lost"], 0, "{report:#}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report:#}");
    let shed = report["shed"].as_u64().unwrap_or(0);
    assert!(
        shed > 0,
        "nothing was shed with SAGA_ORDER_MAX_OPEN=4: {report:#}"
    );
    stack.assert_invariants().await;
}
