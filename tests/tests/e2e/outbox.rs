//! The transactional outbox: a committed change is published even when the broker was away
//! at the time, relays running side by side never publish a row twice, and rows handed to
//! the relay in memory are published by it alone and recorded sent.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use events::catalog::StockAdjusted;
use events::{Event, EventType};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use messaging::Envelope;
use messaging::outbox::{self, Outbox, OutboxRelay, OutboxRows, RelaySettings};
use messaging::publisher::ConfirmedPublisher;
use messaging::topology::{self, EVENTS_EXCHANGE};
use saga_tests::{Sandbox, Service, Stack, StackOptions, StatusCode, eventually, order_request};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
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

    let (_reader, channel) = tap(&amqp_url, QUEUE).await;

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
    assert_eq!(unsent(&pool).await, 0);

    // Every publish was confirmed, so the queue now holds all there will ever be.
    assert_published_once(&channel, QUEUE, &expected).await;
}

/// A queue `queue` that sees everything published on saga.events, and the channel that
/// declared it (the connection must live as long as it is read).
async fn tap(amqp_url: &str, queue: &str) -> (lapin::Connection, lapin::Channel) {
    let reader = messaging::amqp::connect(amqp_url, "outbox test reader")
        .await
        .expect("connecting to the broker");
    let channel = reader.create_channel().await.expect("opening a channel");
    topology::declare_exchanges(&channel)
        .await
        .expect("declaring the exchanges");
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declaring the test queue");
    channel
        .queue_bind(
            queue.into(),
            EVENTS_EXCHANGE.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("binding the test queue");
    (reader, channel)
}

/// Asserts that `queue` holds exactly the messages `expected`, each once (every publish
/// was confirmed, so it holds all there will ever be), and that each carries its id.
async fn assert_published_once(channel: &lapin::Channel, queue: &str, expected: &BTreeSet<Uuid>) {
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("inspecting the test queue");
    assert_eq!(
        declared.message_count() as usize,
        expected.len(),
        "messages in the queue"
    );
    let mut deliveries = channel
        .basic_consume(
            queue.into(),
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
    for _ in 0..expected.len() {
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
        &arrived, expected,
        "the messages are exactly the outbox rows"
    );
}

/// Commits `transactions` transactions of `per_transaction` rows each through `outbox`;
/// returns their message ids.
async fn commit_through(
    pool: &PgPool,
    outbox: &Outbox,
    transactions: usize,
    per_transaction: usize,
) -> BTreeSet<Uuid> {
    let mut ids = BTreeSet::new();
    for t in 0..transactions {
        let tx = pool.begin().await.expect("beginning a transaction");
        let mut rows = OutboxRows::default();
        for i in 0..per_transaction {
            let event = Event::StockAdjusted(StockAdjusted {
                sku: format!("SKU-{t}-{i}"),
                delta: 1,
            });
            let envelope = Envelope::wrap(&event, "sagactl", None);
            rows.push(&envelope, EventType::StockAdjusted.routing_key(), None)
                .expect("an outbox row");
            ids.insert(envelope.message_id);
        }
        rows.commit(tx, outbox)
            .await
            .expect("committing outbox rows");
    }
    ids
}

async fn unsent(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        .fetch_one(pool)
        .await
        .expect("counting unsent rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_handed_over_in_memory_are_published_by_their_relay_alone_and_recorded_sent() {
    const QUEUE: &str = "handover-test";
    let sandbox = Sandbox::create(&["outbox"]).await;
    let pool = sandbox.migrated_pool("outbox", &messaging::MIGRATOR).await;
    let amqp_url = sandbox.amqp_url();
    let (_reader, channel) = tap(&amqp_url, QUEUE).await;

    // A lease far longer than the test: no relay may claim a handed-over row, so each one
    // published was published from memory. And no recorder round either: every row is
    // recorded sent by a later commit through the outbox, or at the relay's shutdown.
    let settings = RelaySettings {
        lease: Duration::from_secs(3600),
        record_every: Duration::from_secs(3600),
        ..RelaySettings::default()
    };
    let relay = OutboxRelay::new(pool.clone(), &amqp_url, "handover", settings.clone());
    let (outbox, link) = (relay.outbox(), relay.link());
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    eventually(Duration::from_secs(30), || async {
        link.is_up()
            .then_some(())
            .ok_or("the relay is not connected".to_owned())
    })
    .await;

    let handed = commit_through(&pool, &outbox, 40, 5).await;
    let leased: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE next_attempt_at > created_at + interval '1 minute'",
    )
    .fetch_one(&pool)
    .await
    .expect("counting leased rows");
    assert_eq!(
        leased as usize,
        handed.len(),
        "every handed-over row is leased"
    );
    // Every row is published and confirmed; those confirmed after the last commit wait
    // for the next one to record them.
    eventually(Duration::from_secs(30), || async {
        match (unsent(&pool).await, outbox.unrecorded()) {
            (unsent, confirmed) if unsent == confirmed as i64 && unsent > 0 => Ok(()),
            (unsent, confirmed) => Err(format!(
                "{unsent} rows unsent, {confirmed} confirmed and waiting to be recorded"
            )),
        }
    })
    .await;
    let next = commit_through(&pool, &outbox, 1, 1).await;
    assert_eq!(
        unsent(&pool).await,
        1,
        "the next commit through the outbox records the confirmed rows sent: only its own row is unsent"
    );
    // Its own row confirmed too (on a busy machine the shutdown could otherwise come
    // before the relay even published it, and the row would rightly wait for a claim).
    eventually(Duration::from_secs(30), || async {
        match outbox.unrecorded() {
            1 => Ok(()),
            n => Err(format!("{n} rows confirmed and waiting to be recorded")),
        }
    })
    .await;
    // The relay's shutdown records the last ones.
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the relay did not stop within 30 s")
        .expect("the relay panicked");
    assert_eq!(unsent(&pool).await, 0, "rows not recorded sent at shutdown");
    // A row is recorded sent with the time its confirm came, after it was written.
    let misdated: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at < created_at")
            .fetch_one(&pool)
            .await
            .expect("reading the sent times");
    assert_eq!(misdated, 0, "rows recorded sent before they were written");

    // Once the relay has stopped, nothing is handed over: rows committed then carry no
    // lease, and any relay claims them.
    let claimed = commit_through(&pool, &outbox, 3, 5).await;
    let connection = messaging::amqp::connect(&amqp_url, "claiming relay")
        .await
        .expect("connecting a relay");
    let publisher = ConfirmedPublisher::open(&connection, Duration::from_secs(10))
        .await
        .expect("opening a confirm-mode channel");
    let other = OutboxRelay::new(pool.clone(), &amqp_url, "claiming", settings);
    let published = tokio::time::timeout(
        Duration::from_secs(60),
        drain(other, publisher, pool.clone(), "claiming"),
    )
    .await
    .expect("the claiming relay did not empty the outbox within 60 s");
    assert_eq!(
        published,
        claimed.len(),
        "rows claimed after the relay stopped"
    );

    let every: BTreeSet<Uuid> = handed
        .iter()
        .chain(&next)
        .chain(&claimed)
        .copied()
        .collect();
    assert_published_once(&channel, QUEUE, &every).await;
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
