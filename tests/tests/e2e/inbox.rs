//! The inbox: a message handled once changes state once, however often it is delivered,
//! and a handler that fails leaves no trace of its attempt.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use events::catalog::StockAdjusted;
use events::{Event, EventType};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use messaging::Envelope;
use messaging::consumer::{ConsumerSettings, EventConsumer, Handler, IncomingEvent};
use messaging::envelope::properties_for;
use messaging::outbox::Emitter;
use messaging::publisher::{ConfirmedPublisher, OutgoingMessage};
use messaging::retry::HandlerError;
use messaging::topology::{EVENTS_EXCHANGE, ServiceTopology};
use saga_tests::{Sandbox, Service, Stack, StackOptions, eventually};
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn the_same_message_published_twice_changes_stock_once() {
    let stack = Stack::start(StackOptions::default()).await;
    let envelope = Envelope::wrap(
        &Event::StockAdjusted(StockAdjusted {
            sku: "SKU-TWICE".into(),
            delta: 5,
        }),
        "sagactl",
        None,
    );
    stack.publish_envelope(&envelope).await;
    stack.publish_envelope(&envelope).await;

    let handled = |outcome: &'static str| {
        let stack = &stack;
        async move {
            stack
                .metric(
                    Service::Inventory,
                    "saga_messages_handled_total",
                    &[("type", "StockAdjusted"), ("outcome", outcome)],
                )
                .await
        }
    };
    let (ok, duplicate) = eventually(stack.options().wait, || async {
        let (ok, duplicate) = (handled("ok").await, handled("duplicate").await);
        if ok + duplicate >= 2.0 {
            Ok((ok, duplicate))
        } else {
            Err(format!("handled so far: ok {ok}, duplicate {duplicate}"))
        }
    })
    .await;
    assert_eq!((ok, duplicate), (1.0, 1.0), "(ok, duplicate)");

    let (_, stock) = stack.stock("SKU-TWICE").await;
    assert_eq!(stock["available"], 5, "{stock}");
    let claims: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE message_id = $1")
        .bind(envelope.message_id)
        .fetch_one(&stack.db(Service::Inventory).await)
        .await
        .expect("reading inventory-svc's inbox");
    assert_eq!(claims, 1);
}

/// Writes a row for every attempt in the handler's transaction, and fails every attempt of
/// the message's first delivery after that write, as a handler whose database call failed
/// half-way would. (A delivery is applied twice before its failure counts: once claiming
/// with the batch's writes, once claiming first; see messaging::inbox.)
struct FailsFirstDelivery {
    attempts: Arc<AtomicU32>,
}

impl Handler for FailsFirstDelivery {
    type Event = Event;

    async fn handle(
        &self,
        tx: &mut PgConnection,
        incoming: &IncomingEvent<Event>,
        _out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        sqlx::query(
            "INSERT INTO effects (message_id, attempt, delivery_attempt) VALUES ($1, $2, $3)",
        )
        .bind(incoming.envelope.message_id)
        .bind(attempt as i32)
        .bind(incoming.attempt as i32)
        .execute(&mut *tx)
        .await?;
        if incoming.attempt == 1 {
            return Err(HandlerError::Transient(anyhow::anyhow!(
                "simulated failure after the handler's write"
            )));
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_handler_that_fails_before_commit_leaves_no_trace_and_the_message_comes_back() {
    const SERVICE: &str = "inbox-test";
    let sandbox = Sandbox::create(&["inbox"]).await;
    let pool = sandbox.migrated_pool("inbox", &messaging::MIGRATOR).await;
    sqlx::query(
        "CREATE TABLE effects (id BIGSERIAL PRIMARY KEY, message_id UUID NOT NULL,
                               attempt INT NOT NULL, delivery_attempt INT NOT NULL)",
    )
    .execute(&pool)
    .await
    .expect("creating the effects table");

    let attempts = Arc::new(AtomicU32::new(0));
    let topology = ServiceTopology::new(SERVICE, &[EventType::StockAdjusted]);
    let consumer = EventConsumer::new(
        topology.clone(),
        pool.clone(),
        messaging::outbox::Outbox::default(),
        sandbox.amqp_url(),
        FailsFirstDelivery {
            attempts: attempts.clone(),
        },
        ConsumerSettings::default(),
    );
    let link = consumer.link();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer.run(shutdown.clone()));
    // Up means the consumer declared its queues and consumes: a publish now is routed.
    eventually(Duration::from_secs(30), || async {
        link.is_up().then_some(())
    })
    .await;

    let connection = messaging::amqp::connect(&sandbox.amqp_url(), "inbox test publisher")
        .await
        .expect("connecting to the broker");
    let publisher = ConfirmedPublisher::open(&connection, Duration::from_secs(10))
        .await
        .expect("opening a confirm-mode channel");
    let envelope = Envelope::wrap(
        &Event::StockAdjusted(StockAdjusted {
            sku: "SKU-RETRY".into(),
            delta: 1,
        }),
        "sagactl",
        None,
    );
    publisher
        .publish(&OutgoingMessage {
            exchange: EVENTS_EXCHANGE.to_owned(),
            routing_key: EventType::StockAdjusted.routing_key().to_owned(),
            body: envelope.to_body(),
            properties: properties_for(
                envelope.message_id,
                &envelope.event_type,
                &envelope.correlation_id,
                &envelope.producer,
                envelope.occurred_at,
                None,
            ),
        })
        .await
        .expect("publishing the test message");

    // The inbox row is written in the transaction that succeeds, so it marks the end.
    let claims = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM inbox WHERE consumer = $1 AND message_id = $2",
        )
        .bind(SERVICE)
        .bind(envelope.message_id)
        .fetch_one(&pool)
        .await
        .expect("reading the inbox")
    };
    eventually(Duration::from_secs(30), || async {
        let n = claims().await;
        if n > 0 {
            Ok(())
        } else {
            Err(format!(
                "no inbox row yet after {} handler attempts",
                attempts.load(Ordering::SeqCst)
            ))
        }
    })
    .await;

    assert_eq!(attempts.load(Ordering::SeqCst), 3, "handler attempts");
    let effects: Vec<(i32, i32)> =
        sqlx::query_as("SELECT attempt, delivery_attempt FROM effects ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("reading the effects");
    assert_eq!(
        effects,
        vec![(3, 2)],
        "only the last attempt's write survives, and it came with attempt header 2"
    );
    assert_eq!(claims().await, 1, "one inbox row");

    // Nothing was parked for later or given up on.
    let channel = connection
        .create_channel()
        .await
        .expect("opening a channel");
    for queue in [
        topology.dead_letter_queue(),
        topology.retry_queue(Duration::from_secs(1)),
    ] {
        let q = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("inspecting {queue}: {e}"));
        assert_eq!(q.message_count(), 0, "messages left in {queue}");
    }

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the consumer did not stop within 30 s")
        .expect("the consumer task panicked");
}
