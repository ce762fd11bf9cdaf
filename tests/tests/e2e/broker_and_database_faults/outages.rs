//! Long outages under steady load (contract, "Outages" and step 7): the database away for
//! two minutes, the broker away for a minute and a half, while customers keep ordering and
//! operators keep publishing. Afterwards nothing is in a DLQ, every operator event was
//! applied exactly once, every order is terminal, none was cancelled for `timeout` because
//! of the outage, and `sagactl verify` is clean. Halfway through each outage order-svc is
//! killed with SIGKILL and started again (contract, step 7: the time it was not running
//! and the outage before its restart both stop the deadline).
//!
//! The shared servers are never stopped: each stack talks to them through a TCP proxy of
//! its own ([`saga_tests::TcpProxy`]), and the outage is that proxy refusing connections.
//! The two tests run in parallel, so the binary takes about as long as the longer one.

use std::time::Duration;

use events::Event;
use events::catalog::{FundsDeposited, StockAdjusted};
use saga_tests::{Service, Stack, StackOptions, StatusCode, TcpProxy, order_request};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const CUSTOMERS: [&str; 4] = ["olga", "oskar", "ona", "otto"];
const OPS_SKU: &str = "SKU-OPS";
const OPS_CUSTOMER: &str = "ops-customer";

/// Places an order every 200 ms until `stop`; returns the ids of the accepted ones. A
/// refusal (503 while the database is away) is what a client sees and retries later.
async fn steady_load(stack: &Stack, stop: &CancellationToken) -> Vec<String> {
    let mut accepted = Vec::new();
    let mut n = 0usize;
    while !stop.is_cancelled() {
        let customer = CUSTOMERS[n % CUSTOMERS.len()];
        n += 1;
        let body = order_request(customer, "EUR", &[("SKU-LOAD", 1, 100)]);
        if let Ok((StatusCode::ACCEPTED, answer)) = stack
            .try_request(
                Service::Order,
                saga_tests::Method::POST,
                "/orders",
                &[("content-type", "application/json")],
                Some(body.to_string().into_bytes()),
            )
            .await
            && let Some(id) = answer["order_id"].as_str()
        {
            accepted.push(id.to_owned());
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    accepted
}

/// When order-svc, killed halfway through the outage, is started again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Restart {
    /// At once, during the outage (it starts without a broker and connects later).
    DuringOutage,
    /// When the outage is over (it cannot start without its database).
    AfterOutage,
}

/// Publishes one StockAdjusted and one FundsDeposited every 5 s for `outage`, with the
/// proxy cut, and kills order-svc halfway through it; returns (stock added, money
/// deposited).
async fn outage_with_operator_events(
    stack: &Stack,
    proxy: &TcpProxy,
    outage: Duration,
    restart: Restart,
) -> (i64, i64) {
    // Let the load reach a steady state first.
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.cut();
    let started = tokio::time::Instant::now();
    let (mut stock, mut money) = (0, 0);
    let mut i = 1;
    let mut killed = false;
    while started.elapsed() < outage {
        if !killed && started.elapsed() >= outage / 2 {
            stack.kill(Service::Order);
            killed = true;
            if restart == Restart::DuringOutage {
                stack.start_service_unwaited(Service::Order);
            }
        }
        stack
            .publish(&Event::StockAdjusted(StockAdjusted {
                sku: OPS_SKU.into(),
                delta: i,
            }))
            .await;
        stack
            .publish(&Event::FundsDeposited(FundsDeposited {
                customer_id: OPS_CUSTOMER.into(),
                amount: 100 * i,
                currency: "EUR".into(),
            }))
            .await;
        stack.expect_published_stock(OPS_SKU, i);
        stack.expect_published_deposit(OPS_CUSTOMER, 100 * i);
        stock += i;
        money += 100 * i;
        i += 1;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    proxy.restore();
    if restart == Restart::AfterOutage {
        stack.start_service_unwaited(Service::Order);
    }
    stack.wait_service_healthy(Service::Order).await;
    // Some load after the outage too.
    tokio::time::sleep(Duration::from_secs(10)).await;
    (stock, money)
}

async fn seed(stack: &Stack) {
    stack.seed_stock("SKU-LOAD", 100_000).await;
    stack.seed_stock(OPS_SKU, 1).await;
    stack.deposit(OPS_CUSTOMER, 1, "EUR").await;
    for c in CUSTOMERS {
        stack.deposit(c, 10_000_000, "EUR").await;
    }
}

/// The checks every outage test ends with.
async fn assert_rode_through(stack: &Stack, accepted: &[String], stock: i64, money: i64) {
    assert!(!accepted.is_empty(), "no order was accepted");
    let orders = stack.wait_all_settled(Duration::from_secs(240)).await;
    let timed_out: Vec<&Value> = orders.iter().filter(|o| o["reason"] == "timeout").collect();
    assert!(
        timed_out.is_empty(),
        "{} orders were cancelled for timeout, e.g. {}",
        timed_out.len(),
        timed_out[0]
    );
    stack.wait_outbox_drained(Duration::from_secs(60)).await;
    let probe = stack.probe().await;
    for s in Service::ALL {
        let dlq = format!("{s}.dlq");
        assert_eq!(probe.depth(&dlq).await, 0, "{dlq} is not empty");
    }
    probe.close().await;
    // Each operator event applied exactly once (the seed adds 1 to each).
    let (_, s) = stack.stock(OPS_SKU).await;
    assert_eq!(s["available"], stock + 1, "stock of {OPS_SKU}: {s}");
    let (_, w) = stack.wallet(OPS_CUSTOMER).await;
    assert_eq!(w["balance"], money + 1, "wallet of {OPS_CUSTOMER}: {w}");
    stack.assert_invariants().await;
    let verify = stack.sagactl(&["verify", "--settle", "60"], &[]).await;
    assert!(verify.success(), "sagactl verify: {verify:?}");
}

#[tokio::test]
async fn a_two_minute_database_outage_and_a_restart_in_it_lose_nothing_and_dead_letter_nothing() {
    let stack = Stack::start(
        StackOptions::default()
            .with_db_proxy()
            .wait(Duration::from_secs(60)),
    )
    .await;
    seed(&stack).await;
    let stop = CancellationToken::new();
    let outage = async {
        let sums = outage_with_operator_events(
            &stack,
            stack.db_proxy(),
            Duration::from_secs(120),
            Restart::AfterOutage,
        )
        .await;
        stop.cancel();
        sums
    };
    let (accepted, (stock, money)) = tokio::join!(steady_load(&stack, &stop), outage);
    assert_rode_through(&stack, &accepted, stock, money).await;
}

#[tokio::test]
async fn a_ninety_second_broker_outage_and_a_restart_in_it_cancel_no_order_for_timeout() {
    let stack = Stack::start(
        StackOptions::default()
            .with_proxy()
            .wait(Duration::from_secs(60)),
    )
    .await;
    seed(&stack).await;
    let stop = CancellationToken::new();
    let outage = async {
        let sums = outage_with_operator_events(
            &stack,
            stack.proxy(),
            Duration::from_secs(90),
            Restart::DuringOutage,
        )
        .await;
        stop.cancel();
        sums
    };
    let (accepted, (stock, money)) = tokio::join!(steady_load(&stack, &stop), outage);
    assert_rode_through(&stack, &accepted, stock, money).await;
}
