//! A batch decided on its rows in memory ends exactly where its events handled one by one
//! would. Each test holds a real service down while a sequence of events whose decisions
//! depend on each other (a charge before the deposit that opens the wallet, a cancel
//! before the reservation it voids, a repeat under a new message id) waits in its queue,
//! starts it so the waiting events arrive together, and compares the service's tables and
//! outbox with the service's own in-memory tables fed the same events in the same order.
//!
//! Orders made up here were never placed at order-svc, which dead-letters the answers it
//! gets about them; that is expected and asserted nowhere, except by the last test, which
//! uses one to make order-svc's batch fail and be handled again one message at a time.

use std::collections::BTreeMap;
use std::time::Duration;

use events::Event;
use events::catalog::{CancelReason, FundsDeposited, OrderConfirmed, StockAdjusted, StockRejected};
use inventory_svc::staging::InventoryTables;
use payment_svc::staging::PaymentTables;
use saga_tests::saga_support::{order_cancelled, stock_reserved_for, synthetic_order};
use saga_tests::{Service, Stack, StackOptions, eventually, order_request};
use sqlx::PgPool;
use uuid::Uuid;

fn deposit(customer_id: &str, amount: i64, currency: &str) -> Event {
    Event::FundsDeposited(FundsDeposited {
        customer_id: customer_id.to_owned(),
        amount,
        currency: currency.to_owned(),
    })
}

fn adjust(sku: &str, delta: i64) -> Event {
    Event::StockAdjusted(StockAdjusted {
        sku: sku.to_owned(),
        delta,
    })
}

/// Holds `service` down while `events` are published, starts it, and waits until it has
/// handled every one. Returns its database.
async fn handled_together(stack: &Stack, service: Service, events: &[Event]) -> PgPool {
    stack.kill(service);
    for event in events {
        stack.publish(event).await;
    }
    stack.start_service(service).await;
    let pool = stack.db(service).await;
    let expected = events.len() as i64;
    eventually(Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
                .fetch_one(&pool)
                .await
                .map_err(|e| e.to_string())?;
            if n == expected {
                Ok(())
            } else {
                Err(format!("{n} of {expected} events handled"))
            }
        }
    })
    .await;
    pool
}

/// Asserts that the `events` inbox rows were written in fewer transactions than there are
/// events: that they were handled as batches.
async fn assert_batched(pool: &PgPool, events: usize) {
    let transactions: i64 = sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM inbox")
        .fetch_one(pool)
        .await
        .expect("counting the inbox's transactions");
    assert!(
        transactions < events as i64,
        "{events} events in {transactions} transactions: no batch was formed"
    );
}

/// The event types the service wrote to its outbox, in order.
async fn emitted_types(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT event_type FROM outbox ORDER BY id")
        .fetch_all(pool)
        .await
        .expect("reading the outbox")
}

#[tokio::test]
async fn payment_svc_decides_a_batch_as_it_would_decide_its_events_one_by_one() {
    let stack = Stack::start(StackOptions::default()).await;
    let first = synthetic_order("batch-new", "EUR", "SKU-PB", 1, 100);
    let charged = synthetic_order("batch-new", "EUR", "SKU-PB", 2, 100);
    let voided = synthetic_order("batch-new", "EUR", "SKU-PB", 1, 100);
    let too_dear = synthetic_order("batch-new", "EUR", "SKU-PB", 10, 100);
    let elsewhere = synthetic_order("batch-usd", "EUR", "SKU-PB", 1, 100);
    let events = vec![
        // No wallet yet: unknown customer, although a deposit follows in the same batch.
        Event::StockReserved(stock_reserved_for(&first)),
        deposit("batch-new", 500, "EUR"),
        Event::StockReserved(stock_reserved_for(&charged)),
        order_cancelled(charged.order_id, CancelReason::CustomerRequest),
        // The same reservation again, under a new message id: charges nothing more.
        Event::StockReserved(stock_reserved_for(&charged)),
        order_cancelled(voided.order_id, CancelReason::Timeout),
        Event::StockReserved(stock_reserved_for(&voided)),
        Event::StockReserved(stock_reserved_for(&too_dear)),
        deposit("batch-new", 50, "EUR"),
        // Two first deposits of one customer, then a charge in the wrong currency.
        deposit("batch-usd", 70, "USD"),
        deposit("batch-usd", 30, "USD"),
        Event::StockReserved(stock_reserved_for(&elsewhere)),
    ];
    let pool = handled_together(&stack, Service::Payment, &events).await;

    let mut model = PaymentTables::default();
    let mut expected_types = Vec::new();
    for event in &events {
        let emitted = model
            .handle(event)
            .unwrap_or_else(|r| panic!("the model refused {event:?}: {r:?}"));
        expected_types.extend(emitted.iter().map(|e| e.event_type().name().to_owned()));
    }

    let wallets: Vec<(String, String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT customer_id, currency, balance, deposited, captured, refunded FROM wallets
         ORDER BY customer_id",
    )
    .fetch_all(&pool)
    .await
    .expect("reading the wallets");
    let expected_wallets: Vec<_> = model
        .wallets
        .iter()
        .map(|(c, w)| {
            let w = w.clone();
            (
                c.clone(),
                w.currency,
                w.balance,
                w.deposited,
                w.captured,
                w.refunded,
            )
        })
        .collect();
    assert_eq!(wallets, expected_wallets);

    let payments: BTreeMap<Uuid, (String, Option<String>, i64, bool)> =
        sqlx::query_as::<_, (Uuid, String, Option<String>, i64, Option<Uuid>)>(
            "SELECT order_id, status, reason, amount, payment_id FROM payments",
        )
        .fetch_all(&pool)
        .await
        .expect("reading the payments")
        .into_iter()
        .map(|(id, status, reason, amount, pid)| (id, (status, reason, amount, pid.is_some())))
        .collect();
    let expected_payments: BTreeMap<Uuid, (String, Option<String>, i64, bool)> = model
        .payments
        .iter()
        .map(|(id, p)| {
            let row = (
                p.state.as_str().to_owned(),
                p.reason.clone(),
                p.amount,
                p.payment_id.is_some(),
            );
            (*id, row)
        })
        .collect();
    assert_eq!(payments, expected_payments);
    assert_eq!(emitted_types(&pool).await, expected_types);

    assert_batched(&pool, events.len()).await;
    stack.assert_invariants().await;
}

#[tokio::test]
async fn inventory_svc_decides_a_batch_as_it_would_decide_its_events_one_by_one() {
    let stack = Stack::start(StackOptions::default()).await;
    let sku = "SKU-IB";
    let early = synthetic_order("batch-inv", "EUR", sku, 2, 100);
    let sold = synthetic_order("batch-inv", "EUR", sku, 2, 100);
    let tombstoned = synthetic_order("batch-inv", "EUR", sku, 1, 100);
    let held = synthetic_order("batch-inv", "EUR", sku, 3, 100);
    let short = synthetic_order("batch-inv", "EUR", sku, 4, 100);
    let events = vec![
        // The SKU has never been adjusted: rejected, although stock follows in the batch.
        Event::OrderCreated(early.clone()),
        adjust(sku, 5),
        Event::OrderCreated(sold.clone()),
        Event::OrderConfirmed(OrderConfirmed {
            order_id: sold.order_id,
        }),
        // Cancelling a confirmed order restocks it.
        order_cancelled(sold.order_id, CancelReason::CustomerRequest),
        order_cancelled(tombstoned.order_id, CancelReason::Timeout),
        Event::OrderCreated(tombstoned.clone()),
        Event::OrderCreated(held.clone()),
        // The same order again, under a new message id: reserves nothing more.
        Event::OrderCreated(held.clone()),
        Event::OrderCreated(short.clone()),
        adjust(sku, -1),
        order_cancelled(held.order_id, CancelReason::PaymentFailed),
        adjust("SKU-IB-2", 3),
        adjust("SKU-IB-2", 4),
    ];
    let pool = handled_together(&stack, Service::Inventory, &events).await;

    let mut model = InventoryTables::default();
    let mut expected_types = Vec::new();
    for event in &events {
        let emitted = model
            .handle(event)
            .unwrap_or_else(|r| panic!("the model refused {event:?}: {r:?}"));
        expected_types.extend(emitted.iter().map(|e| e.event_type().name().to_owned()));
    }

    let stock: Vec<(String, i64, i64, i64, i64)> =
        sqlx::query_as("SELECT sku, available, reserved, sold, adjusted FROM stock ORDER BY sku")
            .fetch_all(&pool)
            .await
            .expect("reading the stock");
    let expected_stock: Vec<_> = model
        .stock
        .iter()
        .map(|(sku, s)| (sku.clone(), s.available, s.reserved, s.sold, s.adjusted))
        .collect();
    assert_eq!(stock, expected_stock);

    let reservations: BTreeMap<Uuid, (String, serde_json::Value)> =
        sqlx::query_as::<_, (Uuid, String, serde_json::Value)>(
            "SELECT order_id, status, items FROM reservations",
        )
        .fetch_all(&pool)
        .await
        .expect("reading the reservations")
        .into_iter()
        .map(|(id, status, items)| (id, (status, items)))
        .collect();
    let expected_reservations: BTreeMap<Uuid, (String, serde_json::Value)> = model
        .reservations
        .iter()
        .map(|(id, r)| {
            let items = serde_json::to_value(&r.items).expect("items serialise");
            (*id, (r.state.as_str().to_owned(), items))
        })
        .collect();
    assert_eq!(reservations, expected_reservations);
    assert_eq!(emitted_types(&pool).await, expected_types);

    assert_batched(&pool, events.len()).await;
    stack.assert_invariants().await;
}

#[tokio::test]
async fn order_svc_counts_each_ended_saga_once_when_a_failed_batch_is_handled_again() {
    let stack = Stack::start(StackOptions::default()).await;
    // Orders that wait: nothing answers their order.created until the end of the test.
    stack.kill(Service::Inventory);
    stack.kill(Service::Payment);
    let request = order_request("batch-ord", "EUR", &[("SKU-OB", 1, 100)]);
    let first = stack.place_order_ok(&request).await;
    let second = stack.place_order_ok(&request).await;
    let rejected = |order_id: &str| {
        Event::StockRejected(StockRejected {
            order_id: saga_tests::saga_support::order_uuid(order_id),
            reason: "insufficient_stock".to_owned(),
            unavailable: Vec::new(),
        })
    };
    // Between the two rejections (each ends its saga), a reservation of an order that was
    // never placed: order-svc refuses it, so the batch the three arrive in fails and is
    // handled again one message at a time.
    let stranger = synthetic_order("batch-ord", "EUR", "SKU-OB", 1, 100);
    let events = [
        rejected(&first),
        Event::StockReserved(stock_reserved_for(&stranger)),
        rejected(&second),
    ];
    stack.kill(Service::Order);
    for event in &events {
        stack.publish(event).await;
    }
    stack.start_service(Service::Order).await;
    stack.wait_for_status(&first, "rejected").await;
    stack.wait_for_status(&second, "rejected").await;

    let fallbacks = stack
        .metric(Service::Order, "saga_consumer_batch_fallbacks_total", &[])
        .await;
    assert!(
        fallbacks >= 1.0,
        "the batch did not fail, so nothing was handled twice"
    );
    // Counted just after the commit the answers above already show: wait for both.
    let ended = eventually(Duration::from_secs(30), || async {
        let n = stack
            .metric(
                Service::Order,
                "saga_outcomes_total",
                &[("status", "rejected")],
            )
            .await;
        if n >= 2.0 {
            Ok(n)
        } else {
            Err(format!("{n} sagas counted"))
        }
    })
    .await;
    assert_eq!(
        ended, 2.0,
        "two sagas ended, each counted once after its commit"
    );

    stack.start_service(Service::Inventory).await;
    stack.start_service(Service::Payment).await;
    stack.assert_invariants().await;
}
