//! Late, duplicated and reordered events, forced: the tests publish the events themselves
//! (or hold a service down so its queue fills) to choose the order in which the real
//! services see them, and check that the outcome is the one the contract promises.
//!
//! Orders made up by a test (never placed at order-svc) make order-svc dead-letter the
//! answers it gets about them (an unknown order must be looked at by an operator); that
//! is expected here and asserted nowhere.

use std::collections::BTreeSet;

use events::Event;
use events::catalog::{CancelReason, OrderCreated, PaymentDone};
use saga_tests::saga_support::{
    DUPLICATE, HANDLED, history_types, order_cancelled, order_created_of, order_uuid,
    stock_reserved_for, synthetic_order,
};
use saga_tests::{Service, Stack, StackOptions, StatusCode, order_request};
use serde_json::json;

/// The distinct strings of `items`, to compare lists whose order does not matter.
fn set<S: AsRef<str>>(items: &[S]) -> BTreeSet<&str> {
    items.iter().map(AsRef::as_ref).collect()
}

#[tokio::test]
async fn an_order_cancelled_before_inventory_heard_of_it_reserves_nothing_when_it_arrives() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("SKU-EARLY", 5).await;
    let events = stack.watch_events().await;
    let order = synthetic_order("early", "EUR", "SKU-EARLY", 2, 100);
    let id = order.order_id.to_string();

    stack
        .publish(&order_cancelled(
            order.order_id,
            CancelReason::CustomerRequest,
        ))
        .await;
    // A tombstone: released, with nothing in it, and StockReleased (no items) said so.
    let reservation = stack.wait_reservation_status(&id, &["released"]).await;
    assert_eq!(reservation["items"], json!([]), "{reservation}");
    let released = events.wait_for("StockReleased", &id).await;
    assert_eq!(released.payload["items"], json!([]), "{released:?}");

    stack.publish(&Event::OrderCreated(order.clone())).await;
    stack
        .wait_handled(Service::Inventory, "OrderCreated", HANDLED, 1)
        .await;
    let (_, reservation) = stack.reservation_of(&id).await;
    assert_eq!(reservation["status"], "released", "{reservation}");
    stack.wait_stock_figures("SKU-EARLY", (5, 0, 0)).await;
    assert_eq!(
        stack
            .emitted_count(Service::Inventory, "StockReserved", &id)
            .await,
        0,
        "the late OrderCreated reserved stock"
    );
    assert_eq!(
        stack
            .emitted_count(Service::Inventory, "StockRejected", &id)
            .await,
        0,
        "the late OrderCreated was answered"
    );

    stack.assert_invariants().await;
}

#[tokio::test]
async fn a_stock_reservation_reaching_payment_after_the_cancellation_charges_nothing() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.deposit("tardy", 1000, "EUR").await;
    let events = stack.watch_events().await;
    let order = synthetic_order("tardy", "EUR", "SKU-TARDY", 2, 100);
    let id = order.order_id.to_string();

    stack
        .publish(&order_cancelled(order.order_id, CancelReason::Timeout))
        .await;
    stack.wait_payment_status(&id, &["voided"]).await;

    stack
        .publish(&Event::StockReserved(stock_reserved_for(&order)))
        .await;
    let payment = stack.wait_payment_status(&id, &["failed"]).await;
    assert_eq!(payment["reason"], "order_cancelled", "{payment}");
    let failed = events.wait_for("PaymentFailed", &id).await;
    assert_eq!(
        (&failed.payload["reason"], &failed.payload["amount"]),
        (&json!("order_cancelled"), &json!(200)),
        "{failed:?}"
    );
    stack.wait_wallet_figures("tardy", (1000, 0, 0)).await;
    assert_eq!(
        stack
            .emitted_count(Service::Payment, "PaymentDone", &id)
            .await,
        0,
        "payment-svc charged a cancelled order"
    );

    stack.assert_invariants().await;
}

#[tokio::test]
async fn a_payment_reaching_an_order_its_deadline_cancelled_does_not_confirm_it() {
    let stack = Stack::start(StackOptions::default().deadline_secs(2.0)).await;
    stack.seed_stock("SKU-EXPIRED", 5).await;
    stack.deposit("expired", 1000, "EUR").await;
    stack.kill(Service::Inventory);
    let events = stack.watch_events().await;

    let order_id = stack
        .place_order_ok(&order_request("expired", "EUR", &[("SKU-EXPIRED", 1, 300)]))
        .await;
    let order = stack.wait_for_status(&order_id, "cancelled").await;
    assert_eq!(order["reason"], "timeout", "{order}");

    // A capture the order never waited for: PaymentDone after the deadline.
    let done = stack
        .publish(&Event::PaymentDone(PaymentDone {
            order_id: order_uuid(&order_id),
            payment_id: uuid::Uuid::now_v7(),
            customer_id: "expired".to_owned(),
            amount: 300,
            currency: "EUR".to_owned(),
        }))
        .await;
    let order = stack.wait_order_history(&order_id, &["PaymentDone"]).await;
    assert_eq!(
        (order["status"].as_str(), order["reason"].as_str()),
        (Some("cancelled"), Some("timeout")),
        "{order}"
    );
    let recorded: Vec<_> = order["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["type"] == "PaymentDone")
        .map(|h| h["message_id"].clone())
        .collect();
    assert_eq!(recorded, [json!(done.message_id)], "{order}");
    assert!(
        !history_types(&order).iter().any(|t| t == "OrderConfirmed"),
        "{order}"
    );
    assert_eq!(
        stack
            .emitted_count(Service::Order, "OrderConfirmed", &order_id)
            .await,
        0,
        "order-svc confirmed a cancelled order"
    );
    assert!(events.of("OrderConfirmed", &order_id).is_empty());

    // Inventory comes back to OrderCreated and OrderCancelled and holds nothing after.
    stack.start_service(Service::Inventory).await;
    stack
        .wait_handled(Service::Inventory, "OrderCancelled", HANDLED, 1)
        .await;
    stack
        .wait_reservation_status(&order_id, &["released"])
        .await;
    stack.wait_stock_figures("SKU-EXPIRED", (5, 0, 0)).await;
    stack.assert_invariants().await;
    let (_, order) = stack.order(&order_id).await;
    assert_eq!(order["status"], "cancelled", "{order}");
    stack.wait_wallet_figures("expired", (1000, 0, 0)).await;
}

#[tokio::test]
async fn a_capture_is_refunded_once_however_often_the_order_is_cancelled() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("SKU-ONCE", 5).await;
    stack.deposit("once", 1000, "EUR").await;
    let order_id = stack
        .place_order_ok(&order_request("once", "EUR", &[("SKU-ONCE", 2, 150)]))
        .await;
    stack.wait_for_status(&order_id, "confirmed").await;
    stack.wait_wallet_figures("once", (700, 300, 0)).await;

    let (status, body) = stack.cancel(&order_id).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    stack.wait_payment_status(&order_id, &["refunded"]).await;
    stack.wait_wallet_figures("once", (1000, 300, 300)).await;
    stack
        .wait_handled(Service::Payment, "OrderCancelled", HANDLED, 1)
        .await;

    // The same cancellation again, as a new message.
    let again = stack
        .publish(&order_cancelled(
            order_uuid(&order_id),
            CancelReason::CustomerRequest,
        ))
        .await;
    stack
        .wait_handled(Service::Payment, "OrderCancelled", HANDLED, 2)
        .await;
    stack
        .wait_handled(Service::Inventory, "OrderCancelled", HANDLED, 2)
        .await;
    stack.wait_wallet_figures("once", (1000, 300, 300)).await;
    stack.wait_stock_figures("SKU-ONCE", (5, 0, 0)).await;
    assert_eq!(
        stack
            .emitted_count(Service::Payment, "PaymentRefunded", &order_id)
            .await,
        1,
        "payment-svc refunded twice (second OrderCancelled {})",
        again.message_id
    );
    assert_eq!(
        stack
            .emitted_count(Service::Inventory, "StockReleased", &order_id)
            .await,
        1,
        "inventory-svc released twice"
    );

    stack.assert_invariants().await;
}

#[tokio::test]
async fn a_second_order_created_under_a_new_message_id_reserves_nothing_more() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("SKU-AGAIN", 5).await;
    stack.deposit("again", 1000, "EUR").await;
    let order_id = stack
        .place_order_ok(&order_request("again", "EUR", &[("SKU-AGAIN", 2, 100)]))
        .await;
    // The same order again at once, while the first one is being handled.
    let (_, order) = stack.order(&order_id).await;
    let created: OrderCreated = order_created_of(&order);
    let repeat = stack.publish(&Event::OrderCreated(created)).await;

    stack.wait_for_status(&order_id, "confirmed").await;
    stack
        .wait_handled(Service::Inventory, "OrderCreated", HANDLED, 2)
        .await;
    stack.wait_stock_figures("SKU-AGAIN", (3, 0, 2)).await;
    assert_eq!(
        stack
            .emitted_count(Service::Inventory, "StockReserved", &order_id)
            .await,
        1,
        "inventory reserved twice (repeat {})",
        repeat.message_id
    );
    stack.wait_wallet_figures("again", (800, 200, 0)).await;

    stack.assert_invariants().await;
}

#[tokio::test]
async fn stock_released_and_payment_refunded_are_recorded_in_the_order_history() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("SKU-STORY", 5).await;
    stack.deposit("story", 1000, "EUR").await;
    let events = stack.watch_events().await;
    let order_id = stack
        .place_order_ok(&order_request("story", "EUR", &[("SKU-STORY", 1, 400)]))
        .await;
    stack.wait_for_status(&order_id, "confirmed").await;
    stack.wait_stock_figures("SKU-STORY", (4, 0, 1)).await;
    let (status, body) = stack.cancel(&order_id).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    let order = stack
        .wait_order_history(&order_id, &["StockReleased", "PaymentRefunded"])
        .await;
    assert_eq!(order["status"], "cancelled", "{order}");
    let history = order["history"].as_array().unwrap();
    let types = history_types(&order);
    assert_eq!(types.len(), 7, "each event once: {types:?}");
    // StockReserved (from inventory) and PaymentDone (from payment, once it has seen the
    // same StockReserved) reach order-svc on their own; the rest follows from causes.
    assert_eq!(types[0], "OrderCreated", "{types:?}");
    assert_eq!(
        set(&types[1..3]),
        set(&["StockReserved", "PaymentDone"]),
        "{types:?}"
    );
    assert_eq!(
        types[3..5],
        ["OrderConfirmed", "OrderCancelled"],
        "{types:?}"
    );
    assert_eq!(
        set(&types[5..]),
        set(&["StockReleased", "PaymentRefunded"]),
        "{types:?}"
    );
    // Each entry carries the message id of the very event published for it.
    for entry in history {
        let event_type = entry["type"].as_str().unwrap();
        let published = events.wait_for(event_type, &order_id).await;
        assert_eq!(
            entry["message_id"],
            json!(published.message_id),
            "{event_type}: history says {entry}, the broker carried {published:?}"
        );
        assert_eq!(
            events.of(event_type, &order_id).len(),
            1,
            "{event_type} published more than once"
        );
    }
    let ids: BTreeSet<_> = history
        .iter()
        .filter_map(|h| h["message_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 7, "message ids must be distinct: {history:?}");

    stack.assert_invariants().await;
}

#[tokio::test]
async fn the_same_message_delivered_twice_to_payment_changes_the_wallet_once() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("SKU-ECHO", 5).await;
    stack.deposit("echo", 1000, "EUR").await;
    let events = stack.watch_events().await;
    // With payment-svc down its queue keeps what inventory sends it.
    stack.kill(Service::Payment);

    let order_id = stack
        .place_order_ok(&order_request("echo", "EUR", &[("SKU-ECHO", 1, 250)]))
        .await;
    stack.wait_for_status(&order_id, "reserved").await;
    // The very message inventory published, queued a second time behind the first.
    let reserved = events.wait_for("StockReserved", &order_id).await;
    stack.publish_envelope(&reserved).await;

    stack.start_service(Service::Payment).await;
    stack.wait_for_status(&order_id, "confirmed").await;
    stack
        .wait_handled(Service::Payment, "StockReserved", DUPLICATE, 1)
        .await;
    assert_eq!(
        stack
            .handled_count(Service::Payment, "StockReserved", HANDLED)
            .await,
        1,
        "payment-svc applied the duplicate"
    );
    stack.wait_wallet_figures("echo", (750, 250, 0)).await;
    assert_eq!(
        stack
            .emitted_count(Service::Payment, "PaymentDone", &order_id)
            .await,
        1
    );
    stack.wait_payment_status(&order_id, &["captured"]).await;

    stack.assert_invariants().await;
}
