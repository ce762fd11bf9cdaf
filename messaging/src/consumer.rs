//! The idempotent consumer: the one place where a delivery becomes a transaction.
//!
//! For every delivery, in this order:
//! 1. decode (size, JSON, envelope, type, version, payload); a message that fails can
//!    never succeed and goes to the dead-letter queue with the reason;
//! 2. in ONE database transaction: claim the message in the inbox (a duplicate stops
//!    here), run the handler, write the events it returns to the outbox; commit;
//! 3. only then ack. A crash before the ack redelivers the message, and the inbox turns
//!    the second delivery into a no-op.
//!
//! A handler failure rolls the transaction back (no trace of the attempt) and then, by its
//! class, either publishes the message to a delayed retry queue or to the dead-letter
//! queue; the original is acked only once that copy is confirmed by the broker. A retry
//! never blocks other messages and never spins: it waits in a TTL queue. A copy that cannot
//! be published is held and tried again after a delay ([`crate::parking`]). An unreachable
//! database is no failure of the message: the consumer pauses ([`crate::pause`]).
//!
//! Deliveries are handled concurrently (up to `concurrency` at once, with a prefetch that
//! keeps the workers fed). Handlers lock the rows they change, so two events about one order
//! still apply one after the other.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::amqp::{self, Backoff, LinkState};
use crate::authenticity::ProducerUsers;
use crate::envelope::{Envelope, TRACEPARENT_HEADER, decode_body, header_str, header_u32};
use crate::event::{DecodeError, Event};
use crate::inbox::{self, InboxClaim};
use crate::outbox::Emitter;
use crate::parking::{PATIENCE, ParkError, ParkingPublisher};
use crate::pause::PauseGate;
use crate::publisher::OutgoingMessage;
use crate::retry::{ATTEMPT_HEADER, HandlerError, next_delay};
use crate::topology::{DEAD_LETTER_EXCHANGE, RETRY_EXCHANGE, ServiceTopology};

/// Headers on a dead-lettered message.
pub const ERROR_HEADER: &str = "x-saga-error";
pub const ERROR_CODE_HEADER: &str = "x-saga-error-code";
pub const QUEUE_HEADER: &str = "x-saga-queue";
pub const ATTEMPTS_HEADER: &str = "x-saga-attempts";
pub const FAILED_AT_HEADER: &str = "x-saga-failed-at";

/// A decoded message as a handler sees it.
#[derive(Debug, Clone)]
pub struct IncomingEvent<E> {
    pub envelope: Envelope,
    pub event: E,
    /// 1 on the first delivery, 2 after one retry, …
    pub attempt: u32,
    pub traceparent: Option<String>,
}

/// A service's reaction to the events it consumes.
pub trait Handler: Send + Sync + 'static {
    /// The catalog the service's events come from.
    type Event: Event;

    /// Applies `incoming` inside the open transaction `tx`, emitting events into `out`.
    /// The caller writes them to the outbox in the same transaction and commits.
    fn handle(
        &self,
        tx: &mut PgConnection,
        incoming: &IncomingEvent<Self::Event>,
        out: &mut Emitter,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Handled and committed: ack.
    Handled,
    /// Seen before: ack, nothing changed.
    Duplicate,
    /// Failed transiently: retry after `delay` (this was attempt `attempt`).
    Retry {
        attempt: u32,
        delay: Duration,
        error: String,
    },
    /// Will never succeed: dead-letter.
    DeadLetter {
        code: String,
        error: String,
        attempts: u32,
    },
    /// The database is unreachable: hold the delivery and pause until it answers.
    Paused { error: String },
}

impl Disposition {
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            Disposition::Handled => "ok",
            Disposition::Duplicate => "duplicate",
            Disposition::Retry { .. } => "retried",
            Disposition::DeadLetter { .. } => "dead_lettered",
            Disposition::Paused { .. } => "paused",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Unacked deliveries the broker may push to this consumer.
    pub prefetch: u16,
    /// Deliveries handled at once (each holds a database connection while it runs).
    pub concurrency: usize,
    pub confirm_timeout: Duration,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        ConsumerSettings {
            prefetch: 64,
            concurrency: 8,
            confirm_timeout: Duration::from_secs(10),
        }
    }
}

struct Inner<H: Handler> {
    topology: ServiceTopology<<H::Event as Event>::Kind>,
    pool: PgPool,
    amqp_url: String,
    handler: H,
    settings: ConsumerSettings,
    link: LinkState,
    gate: PauseGate,
    /// Who may publish each event type (read from the environment once).
    users: ProducerUsers,
    /// The broker user this consumer connects as.
    own_user: String,
}

/// Consumes a service's input queue with a [`Handler`].
pub struct EventConsumer<H: Handler> {
    inner: Arc<Inner<H>>,
}

impl<H: Handler> Clone for EventConsumer<H> {
    fn clone(&self) -> Self {
        EventConsumer {
            inner: self.inner.clone(),
        }
    }
}

impl<H: Handler> EventConsumer<H> {
    pub fn new(
        topology: ServiceTopology<<H::Event as Event>::Kind>,
        pool: PgPool,
        amqp_url: impl Into<String>,
        handler: H,
        settings: ConsumerSettings,
    ) -> Self {
        let amqp_url = amqp_url.into();
        EventConsumer {
            inner: Arc::new(Inner {
                topology,
                pool,
                own_user: crate::authenticity::user_of_url(&amqp_url),
                users: ProducerUsers::from_env::<<H::Event as Event>::Kind>(),
                amqp_url,
                handler,
                settings,
                link: LinkState::default(),
                gate: PauseGate::default(),
            }),
        }
    }

    pub fn link(&self) -> LinkState {
        self.inner.link.clone()
    }

    fn consumer_name(&self) -> &str {
        &self.inner.topology.service
    }

    /// Decodes a message and, when it is valid, runs the handler in one transaction with the
    /// inbox claim and the outbox rows. Touches no broker: the caller settles the delivery.
    pub(crate) async fn process(&self, body: &[u8], properties: &BasicProperties) -> Disposition {
        let attempt = header_u32(properties, ATTEMPT_HEADER).unwrap_or(0) + 1;
        let (envelope, event) = match decode_body::<H::Event>(body) {
            Ok(decoded) => decoded,
            Err((_, e)) => return dead_letter(&e, attempt),
        };
        if let Err(error) = crate::authenticity::check(
            &self.inner.users,
            event.kind(),
            properties,
            &self.inner.own_user,
        ) {
            let code = crate::authenticity::FORGED_PRODUCER.to_owned();
            return Disposition::DeadLetter {
                code,
                error,
                attempts: attempt,
            };
        }
        let incoming = IncomingEvent {
            envelope,
            event,
            attempt,
            traceparent: header_str(properties, TRACEPARENT_HEADER),
        };
        // The properties may lack what the envelope says; the span shows the envelope's.
        let span = tracing::Span::current();
        span.record("event_type", incoming.envelope.event_type.as_str());
        span.record(
            "message_id",
            tracing::field::display(incoming.envelope.message_id),
        );
        span.record("order_id", incoming.envelope.correlation_id.as_str());
        if let Some(c) = incoming.envelope.causation_id {
            span.record("causation_id", tracing::field::display(c));
        }
        if let Some(tp) = &incoming.traceparent {
            span.record("traceparent", tp.as_str());
        }
        let started = Instant::now();
        let result = self.apply(&incoming).await;
        let event_type = crate::metric_labels::event_type::<<H::Event as Event>::Kind>(Some(
            incoming.envelope.event_type.as_str(),
        ));
        metrics::histogram!("saga_handler_duration_seconds", "type" => event_type)
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(InboxClaim::Claimed) => Disposition::Handled,
            Ok(InboxClaim::Duplicate) => Disposition::Duplicate,
            Err(HandlerError::Permanent { code, message }) => Disposition::DeadLetter {
                code: code.to_owned(),
                error: message,
                attempts: attempt,
            },
            Err(HandlerError::Unreachable(e)) => Disposition::Paused {
                error: format!("{e:#}"),
            },
            // A connection lost mid-transaction is transient only if the database is still
            // there; when it does not answer, this was the start of an outage.
            Err(HandlerError::Transient(e))
                if !crate::pause::database_answers(&self.inner.pool).await =>
            {
                Disposition::Paused {
                    error: format!("{e:#}"),
                }
            }
            Err(HandlerError::Transient(e)) => match next_delay(attempt) {
                Some(delay) => Disposition::Retry {
                    attempt,
                    delay,
                    error: format!("{e:#}"),
                },
                None => Disposition::DeadLetter {
                    code: "retries_exhausted".to_owned(),
                    error: format!("{e:#}"),
                    attempts: attempt,
                },
            },
        }
    }

    async fn apply(&self, incoming: &IncomingEvent<H::Event>) -> Result<InboxClaim, HandlerError> {
        let inner = &self.inner;
        let mut tx = inner.pool.begin().await?;
        if inbox::claim(&mut tx, self.consumer_name(), &incoming.envelope).await?
            == InboxClaim::Duplicate
        {
            tx.rollback().await?;
            return Ok(InboxClaim::Duplicate);
        }
        let mut out = Emitter::new(self.consumer_name(), Some(incoming.envelope.message_id));
        inner.handler.handle(&mut tx, incoming, &mut out).await?;
        // Emitted events are children of the handling span, not siblings of this message.
        let trace = crate::trace::current_traceparent();
        out.write(&mut tx, trace.as_deref()).await?;
        tx.commit().await?;
        Ok(InboxClaim::Claimed)
    }

    /// Handles one delivery to the end: process, then ack, or retry / dead-letter and ack
    /// once the copy is confirmed. While the database is unreachable the delivery is held
    /// and processed again once it answers. A copy that cannot be published is held and
    /// tried again with backoff; after [`PATIENCE`] the delivery is rejected back to the
    /// queue (after that delay, and counted toward the delivery limit on every RabbitMQ
    /// version, so it never spins).
    pub(crate) async fn handle_delivery(
        &self,
        delivery: Delivery,
        publisher: &ParkingPublisher,
        shutdown: &CancellationToken,
    ) -> Disposition {
        if delivery.redelivered {
            // Came back unacked from an earlier consumer (a crash, a lost channel): the inbox
            // decides whether it was applied already.
            metrics::counter!("saga_messages_redelivered_total").increment(1);
        }
        let disposition = loop {
            let disposition = self.process(&delivery.data, &delivery.properties).await;
            if let Disposition::Paused { error } = &disposition {
                tracing::warn!(%error, "database unreachable; holding the message");
                if self.inner.gate.ride_out(&self.inner.pool, shutdown).await {
                    continue;
                }
                // Shutting down: the held delivery returns to the queue with the channel.
            }
            break disposition;
        };
        let kind = delivery.properties.kind().as_ref().map(|k| k.as_str());
        let label = crate::metric_labels::event_type::<<H::Event as Event>::Kind>(kind);
        metrics::counter!("saga_messages_handled_total", "type" => label, "outcome" => disposition.outcome())
            .increment(1);
        tracing::debug!(outcome = disposition.outcome(), "message handled");
        // Paused only when shutting down: the delivery goes back with the channel.
        if matches!(disposition, Disposition::Paused { .. }) {
            return disposition;
        }
        let copy = match &disposition {
            Disposition::Handled | Disposition::Duplicate | Disposition::Paused { .. } => None,
            Disposition::Retry {
                attempt,
                delay,
                error,
            } => {
                tracing::warn!(attempt, delay_s = delay.as_secs(), %error, "handler failed; retrying later");
                Some(self.retry_copy(&delivery, *attempt, *delay))
            }
            Disposition::DeadLetter {
                code,
                error,
                attempts,
            } => {
                tracing::error!(%code, %error, attempts, "message dead-lettered");
                Some(self.dead_letter_copy(&delivery, code, error, *attempts))
            }
        };
        if let Some(copy) = copy
            && let Err(e) = publisher.park(&copy, PATIENCE, shutdown).await
        {
            if let ParkError::Refused(_) = e {
                tracing::error!(error = %e, "could not park the failed message; rejecting it back to the queue");
                if let Err(e) = delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: true })
                    .await
                {
                    // The channel is gone: the broker requeues the delivery with it.
                    tracing::warn!(error = %e, "reject failed; the message will be redelivered");
                }
            }
            return disposition;
        }
        if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
            // The channel is gone: the broker will redeliver, and the inbox makes that a no-op.
            tracing::warn!(error = %e, "ack failed; the message will be redelivered");
        }
        disposition
    }

    fn retry_copy(&self, delivery: &Delivery, attempt: u32, delay: Duration) -> OutgoingMessage {
        let mut headers = copied_headers(&delivery.properties);
        crate::authenticity::record_publisher(
            &self.inner.users,
            &delivery.properties,
            &self.inner.own_user,
            &mut headers,
        );
        headers.insert(
            ATTEMPT_HEADER.into(),
            AMQPValue::LongLongInt(attempt.into()),
        );
        OutgoingMessage {
            exchange: RETRY_EXCHANGE.to_owned(),
            routing_key: self.inner.topology.retry_queue(delay),
            body: delivery.data.clone(),
            properties: delivery.properties.clone().with_headers(headers),
        }
    }

    fn dead_letter_copy(
        &self,
        delivery: &Delivery,
        code: &str,
        error: &str,
        attempts: u32,
    ) -> OutgoingMessage {
        let mut headers = copied_headers(&delivery.properties);
        crate::authenticity::record_publisher(
            &self.inner.users,
            &delivery.properties,
            &self.inner.own_user,
            &mut headers,
        );
        let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes()));
        headers.insert(ERROR_HEADER.into(), text(&format!("{code}: {error}")));
        headers.insert(ERROR_CODE_HEADER.into(), text(code));
        headers.insert(QUEUE_HEADER.into(), text(self.inner.topology.input_queue()));
        headers.insert(
            ATTEMPTS_HEADER.into(),
            AMQPValue::LongLongInt(attempts.into()),
        );
        headers.insert(
            FAILED_AT_HEADER.into(),
            text(&Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)),
        );
        OutgoingMessage {
            exchange: DEAD_LETTER_EXCHANGE.to_owned(),
            routing_key: self.inner.topology.dead_letter_queue(),
            body: delivery.data.clone(),
            properties: delivery.properties.clone().with_headers(headers),
        }
    }

    /// Consumes until `shutdown`, reconnecting with backoff whenever the broker link breaks.
    /// On shutdown it stops taking deliveries, lets the handlers in flight finish and ack,
    /// then closes; unacked prefetched messages go back to the queue.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        let tracker = TaskTracker::new();
        while !shutdown.is_cancelled() {
            match self
                .consume_session(&shutdown, &tracker, &mut backoff)
                .await
            {
                Ok(()) => {}
                Err(e) => {
                    self.inner.link.set(false);
                    tracing::warn!(
                        queue = self.inner.topology.input_queue(),
                        error = %e,
                        url = %amqp::redact_url(&self.inner.amqp_url),
                        "broker link lost; reconnecting"
                    );
                    if !amqp::pause(backoff.next_delay(), &shutdown).await {
                        break;
                    }
                }
            }
        }
        self.inner.link.set(false);
        tracker.close();
        tracker.wait().await;
    }

    async fn consume_session(
        &self,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
        backoff: &mut Backoff,
    ) -> anyhow::Result<()> {
        let inner = &self.inner;
        // Shared with the parking publisher, which reopens its channel on it.
        let conn: Arc<Connection> = Arc::new(
            amqp::connect(
                &inner.amqp_url,
                &format!("{} consumer", self.consumer_name()),
            )
            .await?,
        );
        let channel = conn.create_channel().await?;
        inner.topology.declare(&channel).await?;
        channel
            .basic_qos(inner.settings.prefetch, BasicQosOptions::default())
            .await?;
        let publisher =
            Arc::new(ParkingPublisher::open(conn.clone(), inner.settings.confirm_timeout).await?);
        let tag = format!("{}-{}", self.consumer_name(), std::process::id());
        let mut deliveries = channel
            .basic_consume(
                inner.topology.input_queue().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        inner.link.set(true);
        backoff.reset();
        tracing::info!(queue = inner.topology.input_queue(), "consuming");
        let workers = Arc::new(Semaphore::new(inner.settings.concurrency.max(1)));
        let result = loop {
            // Paused: take nothing new; what is prefetched stays unacked with the broker.
            if inner.gate.is_paused() && !inner.gate.wait_open(shutdown).await {
                break Ok(());
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                next = deliveries.next() => match next {
                    None => break Err(anyhow::anyhow!("the broker ended the consumer")),
                    Some(Err(e)) => break Err(e.into()),
                    Some(Ok(delivery)) => {
                        let permit = workers.clone().acquire_owned().await?;
                        let this = self.clone();
                        let publisher = publisher.clone();
                        let shutdown = shutdown.clone();
                        let span = delivery_span(&delivery);
                        tracker.spawn(async move {
                            this.handle_delivery(delivery, &publisher, &shutdown).await;
                            drop(permit);
                        }.instrument(span));
                    }
                }
            }
        };
        if shutdown.is_cancelled() {
            if let Err(e) = channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await
            {
                tracing::debug!(error = %e, "consumer cancel failed; closing anyway");
            }
            // Let the handlers in flight commit and ack on this channel before closing it.
            tracker.close();
            tracker.wait().await;
            amqp::close_quietly(&conn).await;
        }
        inner.link.set(false);
        result
    }
}

fn delivery_span(delivery: &Delivery) -> tracing::Span {
    let p = &delivery.properties;
    // Optional properties: an absent one shows as an empty field.
    let s = |v: &Option<lapin::types::ShortString>| {
        v.as_ref()
            .map_or_else(String::new, |s| s.as_str().to_owned())
    };
    let span = tracing::info_span!(
        "message",
        otel.name = %format!("{} process", s(p.kind())),
        otel.kind = "consumer",
        event_type = %s(p.kind()),
        message_id = %s(p.message_id()),
        order_id = %s(p.correlation_id()),
        causation_id = tracing::field::Empty,
        traceparent = tracing::field::Empty,
    );
    // The span is a child of the relay's publish span, whose context the message carries,
    // so an OTLP backend shows one trace from the HTTP request through every handler.
    crate::trace::continue_from_message(&span, p);
    span
}

/// The delivery's headers, to extend on a copy (a message without headers has none).
fn copied_headers(props: &BasicProperties) -> FieldTable {
    match props.headers() {
        Some(headers) => headers.clone(),
        None => FieldTable::default(),
    }
}

fn dead_letter(e: &DecodeError, attempt: u32) -> Disposition {
    Disposition::DeadLetter {
        code: e.code().to_owned(),
        error: e.to_string(),
        attempts: attempt,
    }
}

/// Serialises the handlers of one saga for the rest of the transaction. Deliveries are
/// handled concurrently, and two events about one order may arrive together before any row
/// exists to lock (OrderCreated racing OrderCancelled, say); this transaction-scoped
/// advisory lock on the order id makes the second wait for the first to commit.
pub async fn lock_saga(conn: &mut PgConnection, order_id: uuid::Uuid) -> sqlx::Result<()> {
    let (hi, _) = order_id.as_u64_pair();
    // The high 64 bits of a UUIDv7 are mostly its timestamp; fold in the random low half.
    let key = (hi ^ order_id.as_u64_pair().1) as i64;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(key)
        .execute(conn)
        .await?;
    Ok(())
}
