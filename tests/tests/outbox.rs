//! The transactional outbox: a committed change is published even when the broker was away
//! at the time, and relays running side by side never publish a row twice.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use events::catalog::StockAdjusted;
use events::{Event, EventType};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use messaging::Envelope;
use messaging::outbox::{self, OutboxRelay, RelaySettings};
use messaging::publisher::ConfirmedPublisher;
use messaging::topology::{self, EVENTS_EXCHANGE};
use saga_tests::{Sandbox, Service, Stack, StackOptions, StatusCode, eventually, order_request};
use sqlx::PgPool;
use uuid::Uuid;

#[tokio::test]
async fn an_order_placed_while_the_broker_is_unreachable_is_published_once_it_is_back() {
    // A long order deadline: the outage must not be what decides the order.
    let stack = Stack::start(
        StackOptions::default()
            .with_proxy()
            .deadline_secs(120.0)
            .wait(Duration::from_secs(60)),
    )
    .await;
    stack.seed_stock("SKU-OUTAGE", 3).await;
    stack.deposit("erin", 5000, "EUR").await;

    stack.proxy().cut();
    eventually(stack.options().wait, || async {
        match stack.try_get(Service::Order, "/healthz").await {
            Ok((StatusCode::SERVICE_UNAVAILABLE, _)) => Ok(()),
            other => Err(format!("order-svc /healthz still answers {other:?}")),
        }
    })
    .await;

    let order_id = stack
        .place_order_ok(&order_request("erin", "EUR", &[("SKU-OUTAGE", 1, 1200)]))
        .await;
    // The order and its event were committed together; the event waits in the outbox.
    let orders_db = stack.db(Service::Order).await;
    let unsent_created = || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT sent_at IS NULL FROM outbox WHERE event_type = 'OrderCreated' AND correlation_id = $1",
        )
        .bind(&order_id)
        .fetch_optional(&orders_db)
        .await
        .expect("reading order-svc's outbox")
    };
    assert_eq!(
        unsent_created().await,
        Some(true),
        "OrderCreated should sit unsent"
    );
    let (_, order) = stack.order(&order_id).await;
    assert_eq!(order["status"], "pending", "{order}");

    stack.proxy().restore();
    stack.wait_for_status(&order_id, "confirmed").await;
    assert_eq!(
        unsent_created().await,
        Some(false),
        "OrderCreated marked sent"
    );
    stack.assert_invariants().await;
}

/// Publishes until the outbox is empty; returns how many rows this relay published.
async fn drain(
    relay: OutboxRelay,
    publisher: ConfirmedPublisher,
    pool: PgPool,
    name: &str,
) -> usize {
    let mut published = 0;
    loop {
        match relay.relay_once(&publisher).await {
            Ok(0) => {
                // Nothing claimable: either done, or the other relay holds the rest locked.
                let (left, _) = outbox::backlog(&pool).await.expect("reading the backlog");
                if left == 0 {
                    return published;
                }
                tokio::task::yield_now().await;
            }
            Ok(n) => published += n,
            Err(e) => panic!("{name} failed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_outbox_publish_every_row_exactly_once() {
    const ROWS: usize = 2000;
    const QUEUE: &str = "outbox-test";
    let sandbox = Sandbox::create(&["outbox"]).await;
    let pool = sandbox.migrated_pool("outbox", &messaging::MIGRATOR).await;
    let amqp_url = sandbox.amqp_url();

    // A queue that sees everything published on saga.events.
    let reader = messaging::amqp::connect(&amqp_url, "outbox test reader")
        .await
        .expect("connecting to the broker");
    let channel = reader.create_channel().await.expect("opening a channel");
    topology::declare_exchanges(&channel)
        .await
        .expect("declaring the exchanges");
    channel
        .queue_declare(
            QUEUE.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declaring the test queue");
    channel
        .queue_bind(
            QUEUE.into(),
            EVENTS_EXCHANGE.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("binding the test queue");

    let mut expected = BTreeSet::new();
    let mut tx = pool.begin().await.expect("beginning a transaction");
    for i in 0..ROWS {
        let event = Event::StockAdjusted(StockAdjusted {
            sku: format!("SKU-{i}"),
            delta: 1,
        });
        let envelope = Envelope::wrap(&event, "sagactl", None);
        outbox::enqueue(
            &mut tx,
            &envelope,
            EventType::StockAdjusted.routing_key(),
            None,
        )
        .await
        .expect("writing an outbox row");
        expected.insert(envelope.message_id);
    }
    tx.commit().await.expect("committing the outbox rows");

    // Small batches, so that the two relays take turns on the rows many times over.
    let settings = RelaySettings {
        batch_size: 50,
        ..RelaySettings::default()
    };
    // Both relays are connected before either starts, so neither gets a head start.
    let mut relays = Vec::new();
    for name in ["relay-a", "relay-b"] {
        let connection = messaging::amqp::connect(&amqp_url, name)
            .await
            .expect("connecting a relay");
        let publisher = ConfirmedPublisher::open(&connection, Duration::from_secs(10))
            .await
            .expect("opening a confirm-mode channel");
        let relay = OutboxRelay::new(pool.clone(), &amqp_url, name, settings.clone());
        relays.push((name, relay, publisher, connection));
    }
    let relays: Vec<_> = relays
        .into_iter()
        .map(|(name, relay, publisher, connection)| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let drained = tokio::time::timeout(
                    Duration::from_secs(120),
                    drain(relay, publisher, pool, name),
                )
                .await;
                drop(connection);
                drained
            })
        })
        .collect();
    let mut published = Vec::new();
    for relay in relays {
        published.push(
            relay
                .await
                .expect("a relay task panicked")
                .expect("a relay did not empty the outbox within 120 s"),
        );
    }
    assert_eq!(
        published.iter().sum::<usize>(),
        ROWS,
        "published {published:?}"
    );
    assert!(
        published.iter().all(|n| *n > 0),
        "both relays should have taken part: {published:?}"
    );
    let unsent: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        .fetch_one(&pool)
        .await
        .expect("counting unsent rows");
    assert_eq!(unsent, 0);

    // Every publish was confirmed, so the queue now holds all there will ever be.
    let queue = channel
        .queue_declare(
            QUEUE.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("inspecting the test queue");
    assert_eq!(
        queue.message_count() as usize,
        ROWS,
        "messages in the queue"
    );

    let mut deliveries = channel
        .basic_consume(
            QUEUE.into(),
            "outbox-test-reader".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consuming the test queue");
    let mut arrived: BTreeMap<Uuid, usize> = BTreeMap::new();
    for _ in 0..ROWS {
        let delivery = tokio::time::timeout(Duration::from_secs(30), deliveries.next())
            .await
            .expect("a queued message was not delivered within 30 s")
            .expect("the consumer ended")
            .expect("a delivery failed");
        let envelope: Envelope =
            serde_json::from_slice(&delivery.data).expect("an envelope as the body");
        let property = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned());
        assert_eq!(
            property,
            Some(envelope.message_id.to_string()),
            "message_id property"
        );
        *arrived.entry(envelope.message_id).or_default() += 1;
    }
    let twice: Vec<_> = arrived.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "published more than once: {twice:?}");
    let arrived: BTreeSet<Uuid> = arrived.into_keys().collect();
    assert_eq!(
        arrived, expected,
        "the messages are exactly the outbox rows"
    );
}

#[tokio::test]
async fn an_outbox_row_without_a_routing_key_is_refused_and_nothing_is_written() {
    let sandbox = Sandbox::create(&["outbox"]).await;
    let pool = sandbox.migrated_pool("outbox", &messaging::MIGRATOR).await;
    let event = Event::StockAdjusted(StockAdjusted {
        sku: "SKU-NO-KEY".into(),
        delta: 1,
    });
    let envelope = Envelope::wrap(&event, "sagactl", None);
    let mut tx = pool.begin().await.expect("beginning a transaction");
    let refused = outbox::enqueue(&mut tx, &envelope, "", None).await;
    assert!(
        refused.is_err(),
        "an outbox row with an empty routing key was accepted"
    );
    tx.rollback().await.expect("rolling back");
    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .expect("counting outbox rows");
    assert_eq!(rows, 0);
}
