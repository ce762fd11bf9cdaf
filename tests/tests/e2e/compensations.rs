//! The saga's compensations end to end: every way an order can fail or be called off
//! (stock short, payment refused, customer cancel, deadline) ends with nothing held and
//! nothing kept. Each test runs its own stack of the three real binaries and ends with the
//! contract's at-rest invariants, read through the services' HTTP endpoints.

use saga_tests::saga_support::{HANDLED, history_types, int, wallet_figures};
use saga_tests::{Service, Stack, StackOptions, StatusCode, order_request};
use serde_json::{Value, json};

/// The contract's error body: `{"error": <code>, "message": <text>}`.
fn is_error_body(body: &Value) -> bool {
    body["error"].as_str().is_some_and(|c| !c.is_empty())
        && body["message"].as_str().is_some_and(|m| !m.is_empty())
}

/// Where `wanted` comes in `types`; panics if it is not there.
fn position(types: &[String], wanted: &str) -> usize {
    types
        .iter()
        .position(|t| t == wanted)
        .unwrap_or_else(|| panic!("no {wanted} in the history {types:?}"))
}

#[tokio::test]
async fn a_stock_shortage_on_one_item_rejects_the_whole_order_and_reserves_and_charges_nothing() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("SKU-PLENTY", 10).await;
    stack.seed_stock("SKU-SHORT", 1).await;
    stack.deposit("rita", 10_000, "EUR").await;
    let events = stack.watch_events().await;

    // Three of one SKU are there, two of the other are not: all or nothing.
    let order_id = stack
        .place_order_ok(&order_request(
            "rita",
            "EUR",
            &[("SKU-PLENTY", 3, 100), ("SKU-SHORT", 2, 50)],
        ))
        .await;
    let order = stack.wait_for_status(&order_id, "rejected").await;
    assert_eq!(order["reason"], "insufficient_stock", "{order}");

    let rejection = events.wait_for("StockRejected", &order_id).await;
    assert_eq!(
        rejection.payload["unavailable"],
        json!([{"sku": "SKU-SHORT", "requested": 2, "available": 1}]),
        "{rejection:?}"
    );
    let (status, reservation) = stack.reservation_of(&order_id).await;
    assert_eq!(status, StatusCode::OK, "{reservation}");
    assert_eq!(reservation["status"], "rejected", "{reservation}");
    stack.wait_stock_figures("SKU-PLENTY", (10, 0, 0)).await;
    stack.wait_stock_figures("SKU-SHORT", (1, 0, 0)).await;
    assert_eq!(
        stack
            .emitted_count(Service::Inventory, "StockReserved", &order_id)
            .await,
        0,
        "inventory reserved something for a rejected order"
    );
    // Payment never heard of the order, and the wallet is untouched.
    let (status, payment) = stack.payment_of(&order_id).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{payment}");
    stack.wait_wallet_figures("rita", (10_000, 0, 0)).await;
    assert_eq!(
        history_types(&order),
        ["OrderCreated", "StockRejected"],
        "{order}"
    );

    stack.assert_invariants().await;
}

/// Places an order of 2 × 400 EUR that payment refuses for `reason`, and checks the whole
/// compensation: the order cancelled (payment_failed), its stock given back, no money
/// taken. `wallet` is what the customer deposited, if anything.
async fn a_refused_payment_is_compensated(
    stack: &Stack,
    customer: &str,
    wallet: Option<(i64, &str)>,
    reason: &str,
) {
    stack.seed_stock("SKU-PAY", 5).await;
    if let Some((amount, currency)) = wallet {
        stack.deposit(customer, amount, currency).await;
    }
    let events = stack.watch_events().await;

    let order_id = stack
        .place_order_ok(&order_request(customer, "EUR", &[("SKU-PAY", 2, 400)]))
        .await;
    let order = stack.wait_for_status(&order_id, "cancelled").await;
    assert_eq!(order["reason"], "payment_failed", "{order}");

    let failed = events.wait_for("PaymentFailed", &order_id).await;
    assert_eq!(failed.payload["reason"], reason, "{failed:?}");
    assert_eq!(failed.payload["amount"], 800, "{failed:?}");
    let cancelled = events.wait_for("OrderCancelled", &order_id).await;
    assert_eq!(
        cancelled.payload["reason"], "payment_failed",
        "{cancelled:?}"
    );

    // Inventory gives the reservation back and says so; the order records it.
    let order = stack
        .wait_order_history(
            &order_id,
            &[
                "StockReserved",
                "PaymentFailed",
                "OrderCancelled",
                "StockReleased",
            ],
        )
        .await;
    let types = history_types(&order);
    assert!(
        !types
            .iter()
            .any(|t| t == "PaymentDone" || t == "OrderConfirmed"),
        "{types:?}"
    );
    assert!(
        position(&types, "PaymentFailed") < position(&types, "OrderCancelled"),
        "{types:?}"
    );
    let reservation = stack
        .wait_reservation_status(&order_id, &["released"])
        .await;
    assert_eq!(
        reservation["items"],
        json!([{"sku": "SKU-PAY", "quantity": 2}]),
        "{reservation}"
    );
    stack.wait_stock_figures("SKU-PAY", (5, 0, 0)).await;

    let (status, payment) = stack.payment_of(&order_id).await;
    assert_eq!(status, StatusCode::OK, "{payment}");
    assert_eq!(
        (payment["status"].as_str(), payment["reason"].as_str()),
        (Some("failed"), Some(reason)),
        "{payment}"
    );
    match wallet {
        Some((amount, _)) => {
            stack.wait_wallet_figures(customer, (amount, 0, 0)).await;
        }
        None => {
            let (status, body) = stack.wallet(customer).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        }
    }

    stack.assert_invariants().await;
}

#[tokio::test]
async fn insufficient_funds_cancel_the_order_and_release_its_stock() {
    let stack = Stack::start(StackOptions::default()).await;
    a_refused_payment_is_compensated(&stack, "poor", Some((500, "EUR")), "insufficient_funds")
        .await;
}

#[tokio::test]
async fn a_customer_without_a_wallet_has_the_order_cancelled_and_its_stock_released() {
    let stack = Stack::start(StackOptions::default()).await;
    a_refused_payment_is_compensated(&stack, "stranger", None, "unknown_customer").await;
}

#[tokio::test]
async fn a_wallet_in_another_currency_has_the_order_cancelled_and_its_stock_released() {
    let stack = Stack::start(StackOptions::default()).await;
    a_refused_payment_is_compensated(&stack, "yankee", Some((10_000, "USD")), "currency_mismatch")
        .await;
}

#[tokio::test]
async fn a_cancel_right_after_placing_leaves_nothing_held_or_kept() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("SKU-HASTY", 5).await;
    stack.deposit("hasty", 1000, "EUR").await;

    let order_id = stack
        .place_order_ok(&order_request("hasty", "EUR", &[("SKU-HASTY", 2, 100)]))
        .await;
    // The saga is running (pending or reserved, maybe even paid): the cancel wins anyway.
    let (status, body) = stack.cancel(&order_id).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "cancelled", "{body}");

    let order = stack.wait_for_status(&order_id, "cancelled").await;
    assert_eq!(order["reason"], "customer_request", "{order}");
    // Inventory gave back whatever it held (or reserved nothing): its answer is final.
    stack
        .wait_reservation_status(&order_id, &["released"])
        .await;
    stack
        .wait_order_history(&order_id, &["OrderCancelled", "StockReleased"])
        .await;
    stack.wait_stock_figures("SKU-HASTY", (5, 0, 0)).await;
    // Payment heard of the cancellation: voided before any charge (a late StockReserved
    // then fails), or charged first and refunded.
    let payment = stack
        .wait_payment_status(&order_id, &["voided", "failed", "refunded"])
        .await;
    stack.assert_invariants().await;

    let (_, wallet) = stack.wallet("hasty").await;
    let (balance, captured, refunded) = wallet_figures(&wallet);
    assert_eq!(balance, 1000, "{wallet} (payment {payment})");
    assert_eq!(captured, refunded, "{wallet} (payment {payment})");
    let (_, order) = stack.order(&order_id).await;
    assert_eq!(order["status"], "cancelled", "{order}");
}

#[tokio::test]
async fn a_cancel_while_the_order_is_reserved_releases_its_stock_and_keeps_no_money() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("SKU-HELD", 5).await;
    stack.deposit("holder", 1000, "EUR").await;
    // Without payment-svc the order stays reserved.
    stack.kill(Service::Payment);

    let order_id = stack
        .place_order_ok(&order_request("holder", "EUR", &[("SKU-HELD", 3, 100)]))
        .await;
    stack.wait_for_status(&order_id, "reserved").await;
    stack.wait_stock_figures("SKU-HELD", (2, 3, 0)).await;
    let (status, body) = stack.cancel(&order_id).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    let order = stack.wait_for_status(&order_id, "cancelled").await;
    assert_eq!(order["reason"], "customer_request", "{order}");
    stack
        .wait_reservation_status(&order_id, &["released"])
        .await;
    stack.wait_stock_figures("SKU-HELD", (5, 0, 0)).await;

    // payment-svc comes back to StockReserved and OrderCancelled: whichever it applies
    // first, no money stays taken.
    stack.start_service(Service::Payment).await;
    let payment = stack
        .wait_payment_status(&order_id, &["failed", "refunded"])
        .await;
    stack.assert_invariants().await;
    let (_, wallet) = stack.wallet("holder").await;
    let (balance, captured, refunded) = wallet_figures(&wallet);
    assert_eq!(balance, 1000, "{wallet} (payment {payment})");
    assert_eq!(captured, refunded, "{wallet} (payment {payment})");
    let (_, order) = stack.order(&order_id).await;
    assert_eq!(order["status"], "cancelled", "{order}");
    assert!(
        !history_types(&order).iter().any(|t| t == "OrderConfirmed"),
        "{order}"
    );
}

#[tokio::test]
async fn cancelling_a_confirmed_order_refunds_the_payment_and_restocks() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("SKU-REGRET", 10).await;
    stack.deposit("regret", 5000, "EUR").await;

    let order_id = stack
        .place_order_ok(&order_request("regret", "EUR", &[("SKU-REGRET", 3, 250)]))
        .await;
    stack.wait_for_status(&order_id, "confirmed").await;
    stack.wait_stock_figures("SKU-REGRET", (7, 0, 3)).await;
    stack.wait_wallet_figures("regret", (4250, 750, 0)).await;

    let (status, body) = stack.cancel(&order_id).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let order = stack.wait_for_status(&order_id, "cancelled").await;
    assert_eq!(order["reason"], "customer_request", "{order}");
    stack
        .wait_order_history(&order_id, &["PaymentRefunded", "StockReleased"])
        .await;

    stack.wait_wallet_figures("regret", (5000, 750, 750)).await;
    stack.wait_stock_figures("SKU-REGRET", (10, 0, 0)).await;
    let (_, payment) = stack.payment_of(&order_id).await;
    assert_eq!(payment["status"], "refunded", "{payment}");
    assert_eq!(int(&payment, "amount"), 750, "{payment}");
    let (_, reservation) = stack.reservation_of(&order_id).await;
    assert_eq!(reservation["status"], "released", "{reservation}");

    stack.assert_invariants().await;
}

#[tokio::test]
async fn cancelling_a_rejected_order_answers_409_and_changes_nothing() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("SKU-FEW", 1).await;
    stack.deposit("late", 1000, "EUR").await;
    let order_id = stack
        .place_order_ok(&order_request("late", "EUR", &[("SKU-FEW", 2, 10)]))
        .await;
    let before = stack.wait_for_status(&order_id, "rejected").await;

    let (status, body) = stack.cancel(&order_id).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(is_error_body(&body), "{body}");
    let (_, after) = stack.order(&order_id).await;
    assert_eq!(
        (&after["status"], &after["reason"], &after["history"]),
        (&before["status"], &before["reason"], &before["history"]),
        "the refused cancel changed the order"
    );
    stack.wait_stock_figures("SKU-FEW", (1, 0, 0)).await;

    stack.assert_invariants().await;
}

#[tokio::test]
async fn cancelling_a_cancelled_order_again_answers_409_and_changes_nothing() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("SKU-TWICE", 4).await;
    stack.deposit("twice", 1000, "EUR").await;
    let order_id = stack
        .place_order_ok(&order_request("twice", "EUR", &[("SKU-TWICE", 1, 100)]))
        .await;
    stack.wait_for_status(&order_id, "confirmed").await;
    let (status, body) = stack.cancel(&order_id).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let before = stack
        .wait_order_history(&order_id, &["PaymentRefunded", "StockReleased"])
        .await;

    let (status, body) = stack.cancel(&order_id).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(is_error_body(&body), "{body}");
    let (_, after) = stack.order(&order_id).await;
    assert_eq!(after["status"], "cancelled", "{after}");
    assert_eq!(after["reason"], "customer_request", "{after}");
    assert_eq!(
        after["history"], before["history"],
        "the refused cancel changed the history"
    );
    assert_eq!(
        stack
            .emitted_count(Service::Order, "OrderCancelled", &order_id)
            .await,
        1,
        "order-svc emitted OrderCancelled more than once"
    );
    stack.wait_wallet_figures("twice", (1000, 100, 100)).await;
    stack.wait_stock_figures("SKU-TWICE", (4, 0, 0)).await;

    stack.assert_invariants().await;
}

#[tokio::test]
async fn cancelling_an_unknown_order_answers_404() {
    let stack = Stack::start(StackOptions::default()).await;
    let unknown = uuid::Uuid::now_v7().to_string();
    let (status, body) = stack.cancel(&unknown).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(is_error_body(&body), "{body}");
    let (status, body) = stack.order(&unknown).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the cancel created an order: {body}"
    );
    assert_eq!(
        stack
            .emitted_count(Service::Order, "OrderCancelled", &unknown)
            .await,
        0
    );

    stack.assert_invariants().await;
}

#[tokio::test]
async fn an_order_inventory_never_answered_is_cancelled_at_its_deadline_and_holds_nothing_once_inventory_is_back()
 {
    let stack = Stack::start(StackOptions::default().deadline_secs(2.0)).await;
    stack.seed_stock("SKU-SLOW", 5).await;
    stack.deposit("patient", 1000, "EUR").await;
    stack.kill(Service::Inventory);

    let order_id = stack
        .place_order_ok(&order_request("patient", "EUR", &[("SKU-SLOW", 2, 100)]))
        .await;
    let order = stack.wait_for_status(&order_id, "cancelled").await;
    assert_eq!(order["reason"], "timeout", "{order}");
    assert_eq!(
        history_types(&order),
        ["OrderCreated", "OrderCancelled"],
        "{order}"
    );

    // Back, inventory finds OrderCreated and OrderCancelled waiting, and applies both.
    stack.start_service(Service::Inventory).await;
    stack
        .wait_handled(Service::Inventory, "OrderCreated", HANDLED, 1)
        .await;
    stack
        .wait_handled(Service::Inventory, "OrderCancelled", HANDLED, 1)
        .await;
    stack
        .wait_reservation_status(&order_id, &["released"])
        .await;
    stack.wait_stock_figures("SKU-SLOW", (5, 0, 0)).await;
    stack
        .wait_order_history(&order_id, &["StockReleased"])
        .await;
    // If inventory reserved before it saw the cancellation, its StockReserved reached a
    // payment already voided: refused, nothing charged.
    let reserved = stack
        .emitted_count(Service::Inventory, "StockReserved", &order_id)
        .await;
    let payment = if reserved > 0 {
        stack.wait_payment_status(&order_id, &["failed"]).await
    } else {
        stack.wait_payment_status(&order_id, &["voided"]).await
    };
    assert_eq!(payment["reason"], "order_cancelled", "{payment}");
    stack.wait_wallet_figures("patient", (1000, 0, 0)).await;

    stack.assert_invariants().await;
    let (_, order) = stack.order(&order_id).await;
    assert_eq!(
        (order["status"].as_str(), order["reason"].as_str()),
        (Some("cancelled"), Some("timeout")),
        "{order}"
    );
}

#[tokio::test]
async fn an_order_payment_never_answered_is_cancelled_at_its_deadline_and_keeps_no_money_once_payment_is_back()
 {
    let stack = Stack::start(StackOptions::default().deadline_secs(2.0)).await;
    stack.seed_stock("SKU-UNPAID", 5).await;
    stack.deposit("waiting", 1000, "EUR").await;
    stack.kill(Service::Payment);

    let order_id = stack
        .place_order_ok(&order_request("waiting", "EUR", &[("SKU-UNPAID", 2, 150)]))
        .await;
    stack.wait_for_status(&order_id, "reserved").await;
    let order = stack.wait_for_status(&order_id, "cancelled").await;
    assert_eq!(order["reason"], "timeout", "{order}");
    let types = history_types(&order);
    assert!(
        position(&types, "StockReserved") < position(&types, "OrderCancelled"),
        "{types:?}"
    );
    stack
        .wait_reservation_status(&order_id, &["released"])
        .await;
    stack.wait_stock_figures("SKU-UNPAID", (5, 0, 0)).await;

    // Back, payment finds StockReserved and OrderCancelled waiting: it charges and refunds,
    // or voids and refuses the charge.
    stack.start_service(Service::Payment).await;
    let payment = stack
        .wait_payment_status(&order_id, &["refunded", "failed"])
        .await;
    stack.assert_invariants().await;
    let (_, wallet) = stack.wallet("waiting").await;
    let (balance, captured, refunded) = wallet_figures(&wallet);
    assert_eq!(balance, 1000, "{wallet} (payment {payment})");
    assert_eq!(captured, refunded, "{wallet} (payment {payment})");
    if payment["status"] == "refunded" {
        assert_eq!(captured, 300, "{wallet} (payment {payment})");
    }
    let (_, order) = stack.order(&order_id).await;
    assert_eq!(
        (order["status"].as_str(), order["reason"].as_str()),
        (Some("cancelled"), Some("timeout")),
        "{order}"
    );
    assert!(
        !history_types(&order).iter().any(|t| t == "OrderConfirmed"),
        "{order}"
    );
}
