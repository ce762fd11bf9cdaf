//! Many sagas at once over the same scarce stock and the same wallets: the real services
//! under concurrent orders (and cancels) never sell more than there is, never charge for
//! an order that was not confirmed, and end with every invariant holding.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use futures_util::{StreamExt, stream};
use saga_tests::saga_support::wallet_figures;
use saga_tests::{Stack, StackOptions, StatusCode, eventually, order_request};
use sagactl::verify::Snapshot;

/// Units of the scarce SKU.
const UNITS: i64 = 20;
/// Orders of one unit each racing for them.
const ORDERS: usize = 60;
/// Customers placing them in turn.
const CUSTOMERS: usize = 4;
/// What each customer deposits: more than all their orders together.
const DEPOSIT: i64 = 100_000;
/// Requests in flight at once.
const IN_FLIGHT: usize = 20;

fn customer(i: usize) -> String {
    format!("buyer-{}", i % CUSTOMERS)
}

/// Each order its own price, so a charge for the wrong order shows in the sums.
fn unit_price(i: usize) -> i64 {
    100 + i as i64
}

async fn start(sku: &str) -> Stack {
    let stack = Stack::start(StackOptions::default().wait(Duration::from_secs(60))).await;
    stack.seed_stock(sku, UNITS).await;
    for c in 0..CUSTOMERS {
        stack.deposit(&customer(c), DEPOSIT, "EUR").await;
    }
    stack
}

/// When the customer of an order changes their mind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cancel {
    Never,
    /// As soon as the order is placed: it is most likely still `pending`.
    AtOnce,
    /// Once the order has left `pending`: reserved, confirmed, or rejected already.
    OnceUnderway,
}

/// Places the [`ORDERS`] orders, [`IN_FLIGHT`] at a time, cancelling order `i` as
/// `cancel(i)` says. Returns, per order id, the status the cancel answered (if one was
/// sent).
async fn place_all(
    stack: &Stack,
    sku: &str,
    cancel: impl Fn(usize) -> Cancel,
) -> BTreeMap<String, Option<StatusCode>> {
    let cancel = &cancel;
    stream::iter(0..ORDERS)
        .map(|i| async move {
            let body = order_request(&customer(i), "EUR", &[(sku, 1, unit_price(i))]);
            let order_id = stack.place_order_ok(&body).await;
            let when = cancel(i);
            if when == Cancel::OnceUnderway {
                eventually(stack.options().wait, || async {
                    let (_, order) = stack.order(&order_id).await;
                    match order["status"].as_str() {
                        Some("pending") | None => Err(format!("order is {order}")),
                        Some(_) => Ok(()),
                    }
                })
                .await;
            }
            let answered = if when == Cancel::Never {
                None
            } else {
                let (status, answer) = stack.cancel(&order_id).await;
                assert!(
                    status == StatusCode::ACCEPTED || status == StatusCode::CONFLICT,
                    "cancel of {order_id} answered {status} {answer}"
                );
                Some(status)
            };
            (order_id, answered)
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await
}

/// Runs `work` while sampling the stock of `sku`; fails if any sample shows more sold or
/// held than there is, or a bucket below zero.
async fn never_oversold<F: Future<Output = Snapshot>>(
    stack: &Stack,
    sku: &str,
    work: F,
) -> Snapshot {
    let done = AtomicBool::new(false);
    let (samples, snapshot) = tokio::join!(stack.sample_stock_while(sku, &done), async {
        let snapshot = work.await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        snapshot
    });
    assert!(!samples.is_empty(), "the stock of {sku} was never read");
    let wrong: Vec<_> = samples
        .iter()
        .filter(|(available, reserved, sold)| {
            *available < 0 || *reserved < 0 || *sold > UNITS || available + reserved + sold != UNITS
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "(available, reserved, sold) of {sku} out of bounds at some moment: {wrong:?}"
    );
    snapshot
}

/// What each customer's confirmed orders add up to.
fn confirmed_totals(snapshot: &Snapshot) -> BTreeMap<String, i64> {
    let mut totals: BTreeMap<String, i64> = (0..CUSTOMERS).map(|c| (customer(c), 0)).collect();
    for o in snapshot.orders.iter().filter(|o| o.status == "confirmed") {
        *totals.entry(o.customer_id.clone()).or_default() += o.total;
    }
    totals
}

/// Every customer charged exactly for their confirmed orders: captured − refunded is
/// their total and the balance the rest of the deposit.
async fn assert_charged_for_confirmed_orders_only(stack: &Stack, snapshot: &Snapshot) {
    for (customer, total) in confirmed_totals(snapshot) {
        let (status, wallet) = stack.wallet(&customer).await;
        assert_eq!(status, StatusCode::OK, "{wallet}");
        let (balance, captured, refunded) = wallet_figures(&wallet);
        assert_eq!(
            (captured - refunded, balance),
            (total, DEPOSIT - total),
            "{customer}'s confirmed orders total {total}: {wallet}"
        );
    }
    // No money kept for an order that is not confirmed.
    for o in snapshot.orders.iter().filter(|o| o.status != "confirmed") {
        let kept = snapshot
            .payments
            .iter()
            .any(|p| p.order_id == o.order_id && p.status == "captured");
        assert!(
            !kept,
            "order {} is {} but its payment is captured",
            o.order_id, o.status
        );
    }
}

#[tokio::test]
async fn scarce_stock_is_sold_exactly_once_to_many_racing_orders() {
    let sku = "SKU-SCARCE";
    let stack = start(sku).await;

    let snapshot = never_oversold(&stack, sku, async {
        let placed = place_all(&stack, sku, |_| Cancel::Never).await;
        assert_eq!(placed.len(), ORDERS);
        stack.wait_sagas_at_rest(ORDERS).await
    })
    .await;

    let count = |status: &str| {
        snapshot
            .orders
            .iter()
            .filter(|o| o.status == status)
            .count()
    };
    assert_eq!(count("confirmed"), UNITS as usize, "{:?}", snapshot.orders);
    assert_eq!(
        count("rejected") + count("cancelled"),
        ORDERS - UNITS as usize,
        "{:?}",
        snapshot.orders
    );
    // Nobody ran out of money and nobody cancelled: only the deadline could cancel.
    for o in snapshot.orders.iter().filter(|o| o.status == "cancelled") {
        let (_, order) = stack.order(&o.order_id.to_string()).await;
        assert_eq!(order["reason"], "timeout", "{order}");
    }
    stack.wait_stock_figures(sku, (0, 0, UNITS)).await;
    assert_charged_for_confirmed_orders_only(&stack, &snapshot).await;

    stack.assert_invariants().await;
}

#[tokio::test]
async fn customer_cancels_in_flight_never_oversell_nor_charge_for_cancelled_orders() {
    let sku = "SKU-FICKLE";
    let stack = start(sku).await;

    let mut placed = BTreeMap::new();
    let snapshot = never_oversold(&stack, sku, async {
        // One order in three cancelled at once, one in five once it is underway.
        placed = place_all(&stack, sku, |i| match (i % 3, i % 5) {
            (0, _) => Cancel::AtOnce,
            (_, 0) => Cancel::OnceUnderway,
            _ => Cancel::Never,
        })
        .await;
        assert_eq!(placed.len(), ORDERS);
        stack.wait_sagas_at_rest(ORDERS).await
    })
    .await;

    let mut sold = 0;
    for o in &snapshot.orders {
        let id = o.order_id.to_string();
        let cancel = placed[&id];
        match (o.status.as_str(), cancel) {
            // Cancelled in time: pending, reserved, or confirmed (then refunded and restocked).
            ("cancelled", Some(StatusCode::ACCEPTED)) => {}
            // The cancel came after the rejection, which stands.
            ("rejected", Some(StatusCode::CONFLICT)) => {}
            ("confirmed" | "rejected", None) => {}
            (status, cancel) => panic!("order {id} is {status} after a cancel answered {cancel:?}"),
        }
        if o.status == "confirmed" {
            sold += 1;
        }
    }
    let cancelled = snapshot
        .orders
        .iter()
        .filter(|o| o.status == "cancelled")
        .count();
    assert!(sold <= UNITS, "{sold} sold of {UNITS}");
    assert!(sold > 0, "nothing sold: {:?}", snapshot.orders);
    assert!(
        cancelled > 0,
        "no cancel was in time: {:?}",
        snapshot.orders
    );
    // Whatever the cancels gave back is available again; only confirmed orders hold stock.
    stack.wait_stock_figures(sku, (UNITS - sold, 0, sold)).await;
    assert_charged_for_confirmed_orders_only(&stack, &snapshot).await;

    stack.assert_invariants().await;
}
