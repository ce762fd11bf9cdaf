//! Event versions on a running stack: a producer that writes an older version (as the
//! previous release does) beside consumers that read every version, and dead letters of an
//! older and of a newer version, left by replicas of the previous release, replayed after
//! the upgrade: each is read (an older one upcast on the way in) and the saga completes.

use std::time::Duration;

use events::EventType;
use messaging::Envelope;
use saga_tests::failure_support::BrokerProbe;
use saga_tests::poll::until;
use saga_tests::{Poll, Service, Stack, StackOptions, order_request};
use serde_json::{Value, json};

/// The first message waiting in `queue`, taken off it, as an envelope.
async fn take_envelope(probe: &BrokerProbe, queue: &str, deadline: Duration) -> Envelope {
    until(deadline, || async {
        match probe.take(queue).await {
            Some(m) => match serde_json::from_slice::<Envelope>(&m.body) {
                Ok(envelope) => Poll::Ready(envelope),
                Err(e) => Poll::Failed(format!("{queue} held something else: {e}")),
            },
            None => Poll::Pending(format!("{queue} is empty")),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn dead_letters_of_an_older_and_a_newer_version_replay_once_the_consumer_reads_them() {
    // inventory-svc writes StockReserved at version 1, as the previous release does. The
    // deadline is far away: this test stops services on purpose.
    let stack = Stack::start(
        StackOptions::default()
            .deadline_secs(600.0)
            .env("SAGA_EMIT_VERSIONS", "StockReserved=1"),
    )
    .await;
    let wait = stack.options().wait;
    stack.seed_stock("SKU-V", 5).await;
    stack.deposit("vera", 10_000, "EUR").await;
    let probe = stack.probe().await;
    stack.kill(Service::Inventory);
    stack.kill(Service::Payment);

    // OrderCreated at order-svc's newest version, which a replica of the previous release
    // (version 1 only) retried and then dead-lettered as `unknown_version`.
    let order_id = stack
        .place_order_ok(&order_request("vera", "EUR", &[("SKU-V", 2, 1250)]))
        .await;
    let created = take_envelope(&probe, "inventory-svc", wait).await;
    assert_eq!(created.event_type, "OrderCreated");
    assert!(
        created.version > 1 && created.version == EventType::OrderCreated.version(),
        "{created:?}"
    );
    assert_eq!(
        created.payload["total"],
        json!({"amount": 2500, "currency": "EUR"})
    );
    stack
        .park_in_dlq(Service::Inventory, &created, "unknown_version")
        .await;
    stack.start_service(Service::Inventory).await;
    probe.wait_depth("inventory-svc.dlq", 1, wait).await;
    let replayed = stack
        .sagactl_json(&["dlq", "replay", "inventory-svc", "--yes"], &[])
        .await;
    assert_eq!(replayed["matched"], 1, "{replayed}");
    assert_eq!(replayed["job"]["outcome"]["applied"], 1, "{replayed}");

    // Applied: inventory-svc reserved and wrote StockReserved version 1, which order-svc
    // reads (upcast). payment-svc is down; its copy, parked as a dead letter of the
    // previous release (a failure that outlasted the retries), is version 1.
    stack.wait_for_status(&order_id, "reserved").await;
    let reserved = take_envelope(&probe, "payment-svc", wait).await;
    assert_eq!(
        (reserved.event_type.as_str(), reserved.version),
        ("StockReserved", 1)
    );
    assert_eq!(
        (&reserved.payload["total"], &reserved.payload["currency"]),
        (&json!(2500), &json!("EUR")),
        "version 1 carries the total and its currency side by side: {:?}",
        reserved.payload
    );
    stack
        .park_in_dlq(Service::Payment, &reserved, "retries_exhausted")
        .await;
    stack.start_service(Service::Payment).await;
    probe.wait_depth("payment-svc.dlq", 1, wait).await;
    let replayed = stack
        .sagactl_json(&["dlq", "replay", "payment-svc", "--yes"], &[])
        .await;
    assert_eq!(replayed["matched"], 1, "{replayed}");
    assert_eq!(replayed["job"]["outcome"]["applied"], 1, "{replayed}");

    // The saga completes, each event once, the money taken once.
    let order = stack.wait_for_status(&order_id, "confirmed").await;
    let kinds: Vec<&str> = order["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["type"].as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "OrderCreated",
            "StockReserved",
            "PaymentDone",
            "OrderConfirmed"
        ],
        "{order}"
    );
    let (_, wallet) = stack.wallet("vera").await;
    assert_eq!(
        (&wallet["balance"], &wallet["captured"]),
        (&Value::from(7_500), &Value::from(2_500)),
        "{wallet}"
    );
    for dlq in ["inventory-svc.dlq", "payment-svc.dlq", "order-svc.dlq"] {
        assert_eq!(probe.depth(dlq).await, 0, "{dlq}");
    }
    probe.close().await;
    stack.assert_invariants().await;
}

/// A replica of this release starts against a database that a later release migrated
/// further: during the next rolling upgrade, or after a rollback, an old replica that
/// restarts must not refuse the migrations it does not know.
#[tokio::test]
async fn a_service_starts_on_a_database_a_later_release_has_migrated() {
    let stack = Stack::start(StackOptions::default()).await;
    let db = stack.db(Service::Order).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (999999, 'a later release', true, '\\x00', 0)",
    )
    .execute(&db)
    .await
    .expect("recording a later release's migration");
    stack.kill(Service::Order);
    stack.start_service(Service::Order).await;
    stack.seed_stock("SKU-LATER", 1).await;
    stack.deposit("lena", 100, "EUR").await;
    let order_id = stack
        .place_order_ok(&order_request("lena", "EUR", &[("SKU-LATER", 1, 100)]))
        .await;
    stack.wait_for_status(&order_id, "confirmed").await;
    let later: i64 =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE version = 999999")
            .fetch_one(&db)
            .await
            .expect("reading the migrations table");
    assert_eq!(later, 1, "the later release's migration is left alone");
}
