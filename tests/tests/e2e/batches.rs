//! Batched consumption: deliveries waiting together are handled in one transaction and
//! acked together after its commit, and a message that fails inside a batch is isolated:
//! it alone is retried or dead-lettered, the others are applied once.

use std::collections::HashMap;
use std::time::Duration;

use events::catalog::StockAdjusted;
use events::{Event, EventType};
use messaging::Envelope;
use messaging::consumer::{ConsumerSettings, EventConsumer, Handler, IncomingEvent};
use messaging::outbox::Emitter;
use messaging::publisher::{ConfirmedPublisher, OutgoingMessage};
use messaging::retry::HandlerError;
use messaging::topology::ServiceTopology;
use saga_tests::failure_support::BrokerProbe;
use saga_tests::{Sandbox, eventually};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The delta that makes [`RecordsEffects`] refuse a message for good.
const POISON: i64 = -999;

/// Records every application with the id of the transaction it ran in; refuses the poison.
struct RecordsEffects;

impl Handler for RecordsEffects {
    type Event = Event;

    async fn handle(
        &self,
        tx: &mut PgConnection,
        incoming: &IncomingEvent<Event>,
        _out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        sqlx::query("INSERT INTO effects (message_id, txid) VALUES ($1, txid_current())")
            .bind(incoming.envelope.message_id)
            .execute(&mut *tx)
            .await?;
        match &incoming.event {
            Event::StockAdjusted(a) if a.delta == POISON => Err(HandlerError::permanent(
                "poison",
                "this message is refused by the test handler",
            )),
            _ => Ok(()),
        }
    }
}

struct Bench {
    sandbox: Sandbox,
    pool: PgPool,
    topology: ServiceTopology<EventType>,
    connection: lapin::Connection,
    probe: BrokerProbe,
}

impl Bench {
    async fn new(service: &str) -> Bench {
        let sandbox = Sandbox::create(&["batches"]).await;
        let pool = sandbox.migrated_pool("batches", &messaging::MIGRATOR).await;
        sqlx::query("CREATE TABLE effects (message_id UUID NOT NULL, txid BIGINT NOT NULL)")
            .execute(&pool)
            .await
            .expect("creating the effects table");
        let topology = ServiceTopology::new(service, &[EventType::StockAdjusted]);
        let connection = messaging::amqp::connect(&sandbox.amqp_url(), "batch test")
            .await
            .expect("connecting to the broker");
        // The queues exist before anything is published, so the messages wait in them and
        // the consumer finds them all at once.
        let channel = connection.create_channel().await.expect("a channel");
        topology
            .declare(&channel)
            .await
            .expect("declaring the queues");
        let probe = BrokerProbe::at(&sandbox.amqp_url()).await;
        Bench {
            sandbox,
            pool,
            topology,
            connection,
            probe,
        }
    }

    async fn publish(&self, deltas: &[i64]) -> Vec<Uuid> {
        let publisher = ConfirmedPublisher::open(&self.connection, Duration::from_secs(10))
            .await
            .expect("opening a confirm-mode channel");
        let mut ids = Vec::new();
        for &delta in deltas {
            let envelope = Envelope::wrap(
                &Event::StockAdjusted(StockAdjusted {
                    sku: "SKU-BATCH".into(),
                    delta,
                }),
                "sagactl",
                None,
            );
            ids.push(envelope.message_id);
            let message = OutgoingMessage::event::<EventType>(&envelope, None)
                .expect("StockAdjusted is in the catalog");
            publisher
                .publish(&message)
                .await
                .expect("publishing a test message");
        }
        ids
    }

    /// Runs a consumer with one worker until `done` holds, then stops it (which returns
    /// whatever it left unacked to the queue).
    async fn consume_until<F, Fut>(&self, done: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let settings = ConsumerSettings {
            concurrency: 1,
            ..ConsumerSettings::default()
        };
        let consumer = EventConsumer::new(
            self.topology.clone(),
            self.pool.clone(),
            messaging::outbox::Outbox::default(),
            self.sandbox.amqp_url(),
            RecordsEffects,
            settings,
        );
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(consumer.run(shutdown.clone()));
        eventually(Duration::from_secs(60), done).await;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), running)
            .await
            .expect("the consumer did not stop within 30 s")
            .expect("the consumer task panicked");
    }

    async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Effects recorded per message id.
    async fn effects(&self) -> HashMap<Uuid, i64> {
        sqlx::query_as::<_, (Uuid, i64)>(
            "SELECT message_id, count(*) FROM effects GROUP BY message_id",
        )
        .fetch_all(&self.pool)
        .await
        .expect("reading the effects")
        .into_iter()
        .collect()
    }

    async fn ready(&self, queue: &str) -> u32 {
        self.probe.depth(queue).await
    }
}

const MESSAGES: usize = 60;

#[tokio::test]
async fn waiting_deliveries_commit_in_shared_transactions_and_are_all_acked() {
    let bench = Bench::new("batch-test").await;
    let ids = bench.publish(&[1; MESSAGES]).await;

    bench
        .consume_until(|| async {
            let n = bench.count("SELECT count(*) FROM inbox").await;
            if n as usize == MESSAGES {
                Ok(())
            } else {
                Err(format!("{n} of {MESSAGES} messages in the inbox"))
            }
        })
        .await;

    let effects = bench.effects().await;
    for id in &ids {
        assert_eq!(effects.get(id), Some(&1), "applications of message {id}");
    }
    let transactions = bench
        .count("SELECT count(DISTINCT txid) FROM effects")
        .await;
    assert!(
        (transactions as usize) < MESSAGES,
        "{MESSAGES} waiting messages took {transactions} transactions: none was batched"
    );
    // The consumer has stopped and its channel is closed: a delivery it had not acked
    // would be back in the queue now.
    assert_eq!(bench.ready(bench.topology.input_queue()).await, 0);
    assert_eq!(bench.ready(&bench.topology.dead_letter_queue()).await, 0);
}

#[tokio::test]
async fn a_message_that_fails_in_a_batch_fails_alone() {
    let bench = Bench::new("batch-poison-test").await;
    let mut deltas = vec![1; MESSAGES];
    deltas[MESSAGES / 2] = POISON;
    let ids = bench.publish(&deltas).await;
    let poison = ids[MESSAGES / 2];
    let dlq = bench.topology.dead_letter_queue();

    bench
        .consume_until(|| async {
            let n = bench.count("SELECT count(*) FROM inbox").await;
            let dead = bench.ready(&dlq).await;
            if n as usize == MESSAGES - 1 && dead == 1 {
                Ok(())
            } else {
                Err(format!(
                    "{n} of {} messages in the inbox, {dead} dead-lettered",
                    MESSAGES - 1
                ))
            }
        })
        .await;

    let effects = bench.effects().await;
    assert_eq!(
        effects.get(&poison),
        None,
        "the refused message left no effect"
    );
    for id in ids.iter().filter(|id| **id != poison) {
        assert_eq!(effects.get(id), Some(&1), "applications of message {id}");
    }
    let poison_claims: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE message_id = $1")
        .bind(poison)
        .fetch_one(&bench.pool)
        .await
        .expect("reading the inbox");
    assert_eq!(poison_claims, 0, "the refused message is not in the inbox");
    assert_eq!(bench.ready(bench.topology.input_queue()).await, 0);
    assert_eq!(
        bench.ready(&dlq).await,
        1,
        "only the refused message is dead-lettered"
    );
}

/// Counts the handlers running at once, across consumers, and records which consumer
/// applied each message.
struct CountsOverlap {
    consumer: i32,
    running: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    most: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Handler for CountsOverlap {
    type Event = Event;

    async fn handle(
        &self,
        tx: &mut PgConnection,
        incoming: &IncomingEvent<Event>,
        _out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        use std::sync::atomic::Ordering;
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        // Long enough that two batches running at once would overlap here.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let applied = sqlx::query(
            "INSERT INTO effects (message_id, txid, consumer) VALUES ($1, txid_current(), $2)",
        )
        .bind(incoming.envelope.message_id)
        .bind(self.consumer)
        .execute(&mut *tx)
        .await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        applied?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_of_a_service_take_turns_and_share_the_deliveries() {
    const TURN_MESSAGES: usize = 300;
    let bench = Bench::new("batch-turns-test").await;
    sqlx::query("ALTER TABLE effects ADD COLUMN consumer INT")
        .execute(&bench.pool)
        .await
        .expect("adding the consumer column");
    let running = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let mut consumers = Vec::new();
    let mut links = Vec::new();
    for consumer in 0..2 {
        let replica = EventConsumer::new(
            bench.topology.clone(),
            bench.pool.clone(),
            messaging::outbox::Outbox::default(),
            bench.sandbox.amqp_url(),
            CountsOverlap {
                consumer,
                running: running.clone(),
                most: most.clone(),
            },
            ConsumerSettings::default(),
        );
        links.push(replica.link());
        consumers.push(tokio::spawn(replica.run(shutdown.clone())));
    }
    eventually(Duration::from_secs(30), || async {
        match links.iter().filter(|l| l.is_up()).count() {
            2 => Ok(()),
            n => Err(format!("{n} of 2 consumers consuming")),
        }
    })
    .await;
    // Published while both consume: the broker deals the deliveries out between them.
    let ids = bench.publish(&[1; TURN_MESSAGES]).await;
    eventually(Duration::from_secs(120), || async {
        let n = bench.count("SELECT count(*) FROM inbox").await;
        if n as usize == TURN_MESSAGES {
            Ok(())
        } else {
            Err(format!("{n} of {TURN_MESSAGES} messages in the inbox"))
        }
    })
    .await;
    shutdown.cancel();
    for running in consumers {
        tokio::time::timeout(Duration::from_secs(30), running)
            .await
            .expect("a consumer did not stop within 30 s")
            .expect("a consumer task panicked");
    }

    let effects = bench.effects().await;
    for id in &ids {
        assert_eq!(effects.get(id), Some(&1), "applications of message {id}");
    }
    assert_eq!(
        most.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "two replicas' batches ran at once: they did not take turns"
    );
    let by_consumer: Vec<i64> =
        sqlx::query_scalar("SELECT count(*) FROM effects GROUP BY consumer ORDER BY consumer")
            .fetch_all(&bench.pool)
            .await
            .expect("counting the messages per consumer");
    assert_eq!(
        by_consumer.len(),
        2,
        "one replica handled every message: {by_consumer:?}"
    );
    let transactions = bench
        .count("SELECT count(DISTINCT txid) FROM effects")
        .await;
    assert!(
        (transactions as usize) < TURN_MESSAGES,
        "{TURN_MESSAGES} messages took {transactions} transactions: none was batched"
    );
    assert_eq!(bench.ready(bench.topology.input_queue()).await, 0);
}
