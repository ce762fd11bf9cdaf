//! The idempotent consumer: the one place where a delivery becomes a transaction.
//!
//! For every delivery, in this order:
//! 1. decode (size, JSON, envelope, type, version, payload); a message that fails can
//!    never succeed and goes to the dead-letter queue with the reason;
//! 2. in ONE database transaction: run the handler, write the events it returns to the
//!    outbox and claim the message in the inbox; commit. The claim goes with the writes
//!    (one statement, [`crate::writes`]); a message handled before fails it, and is then
//!    handled again claiming first, which finds it a duplicate ([`crate::inbox`]);
//! 3. only then ack. A crash before the ack redelivers the message, and the inbox turns
//!    the second delivery into a no-op.
//!
//! Under load, the deliveries that are waiting when a worker becomes free are handled as a
//! batch: up to `batch_size` of them in one transaction (the handler's
//! [`Handler::handle_all`] on them in delivery order, then one statement for the handler's
//! writes, the outbox rows and the inbox claims of all, one commit), then settled with one
//! multiple ack ([`crate::acks`]). A batch costs one commit and a few round trips instead
//! of that per message, which is most of what a delivery costs the database. If anything
//! in the batch fails, the whole transaction rolls back and every message of it is handled
//! again on its own, claimed first, so a failing message is isolated, classified and
//! retried alone, exactly as if it had come alone. At low load a batch is one delivery:
//! batching adds no wait.
//!
//! Replicas of a service take turns: a batch's transaction first takes its worker slot's
//! advisory lock, which the same slot of every replica takes, and only then does the
//! batch take what has arrived. While one replica commits, the others gather their next
//! batch, so a batch is as full with two replicas as with one.
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
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::acks::AckLedger;
use crate::amqp::{self, Backoff, LinkState};
use crate::authenticity::ProducerUsers;
use crate::envelope::{Envelope, TRACEPARENT_HEADER, decode_body, header_str, header_u32};
use crate::event::{DecodeError, Event};
use crate::inbox::{self, InboxClaim};
use crate::outbox::{Emitter, Outbox, OutboxRows};
use crate::parking::{PATIENCE, ParkError, ParkingPublisher};
use crate::pause::PauseGate;
use crate::publisher::OutgoingMessage;
use crate::retry::{ATTEMPT_HEADER, HandlerError, next_delay};
use crate::topology::{DEAD_LETTER_EXCHANGE, RETRY_EXCHANGE, ServiceTopology};
use crate::writes::Writes;

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

/// One message of a batch as a handler sees it: the event, the span it is handled in, and
/// the emitter its events go to (their causation is this message).
pub struct Handling<'a, E> {
    pub incoming: &'a IncomingEvent<E>,
    pub span: &'a tracing::Span,
    pub out: &'a mut Emitter,
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

    /// Applies a batch, in order, inside `tx`: the same as [`Handler::handle`] on each
    /// message in turn, which is what this default does. A handler that can load the
    /// rows of a whole batch with one statement per table, decide every message in memory
    /// in order, and store each table with one statement overrides it; it must end in
    /// exactly the state and the events the messages handled one by one would have. What
    /// it adds to `writes` runs after it returns, together with the batch's outbox rows,
    /// in the same transaction.
    fn handle_all(
        &self,
        tx: &mut PgConnection,
        batch: &mut [Handling<'_, Self::Event>],
        writes: &mut Writes,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let _ = writes;
        async move {
            for h in batch.iter_mut() {
                self.handle(tx, h.incoming, h.out)
                    .instrument(h.span.clone())
                    .await?;
            }
            Ok(())
        }
    }
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
    /// Batches handled at once (each holds a database connection while it runs).
    pub concurrency: usize,
    /// Most deliveries handled in one transaction.
    pub batch_size: usize,
    pub confirm_timeout: Duration,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        // One batch at a time, of up to 500: two batches of one process would take the
        // same rows (a wallet, a SKU's stock) in different orders and deadlock, and one
        // large transaction commits more messages per second than several small ones.
        ConsumerSettings {
            prefetch: 1000,
            concurrency: 1,
            batch_size: 500,
            confirm_timeout: Duration::from_secs(10),
        }
    }
}

/// The transaction a batch runs in, begun holding its worker slot's turn.
type Turn = Transaction<'static, Postgres>;

/// How a batch claims its messages in the inbox (messaging::inbox).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// Among the batch's writes, with no round trip of its own: a message handled before
    /// fails the batch.
    WithWrites,
    /// With a statement of its own, before anything is decided: a message handled before
    /// is a duplicate.
    First,
}

/// A worker slot, given back when its batch is done (or its task ends any other way).
struct Slot {
    slot: i32,
    back: tokio::sync::mpsc::UnboundedSender<i32>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The loop that takes slots may be gone (shutdown): nothing to give back to.
        let _ = self.back.send(self.slot);
    }
}

/// A decoded delivery on its way into a batch, with the span its handling runs in.
struct Decoded<'d, E> {
    delivery: &'d Delivery,
    incoming: IncomingEvent<E>,
    span: tracing::Span,
}

struct Inner<H: Handler> {
    topology: ServiceTopology<<H::Event as Event>::Kind>,
    pool: PgPool,
    /// Where emitted events are committed (and handed to the process's relay).
    outbox: Outbox,
    amqp_url: String,
    handler: H,
    settings: ConsumerSettings,
    link: LinkState,
    gate: PauseGate,
    /// Who may publish each event type (read from the environment once).
    users: ProducerUsers,
    /// The broker user this consumer connects as.
    own_user: String,
    /// The first key of the turns' advisory locks: the same in every replica (see
    /// [`EventConsumer::take_turn`]).
    turn_key: i32,
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
        outbox: Outbox,
        amqp_url: impl Into<String>,
        handler: H,
        settings: ConsumerSettings,
    ) -> Self {
        let amqp_url = amqp_url.into();
        let turn_key = turn_key(topology.input_queue());
        EventConsumer {
            inner: Arc::new(Inner {
                topology,
                pool,
                outbox,
                own_user: crate::authenticity::user_of_url(&amqp_url),
                turn_key,
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
    pub(crate) async fn process(
        &self,
        body: &[u8],
        properties: &BasicProperties,
        turn: Option<Turn>,
    ) -> Disposition {
        let incoming = match self.decode(body, properties) {
            Ok(incoming) => incoming,
            Err(disposition) => return disposition,
        };
        let started = Instant::now();
        let span = tracing::Span::current();
        let result = self
            .apply_batch(&[(&incoming, &span)], turn, Claim::First)
            .await
            .map(|claims| claims[0]);
        record_duration::<H::Event>(&incoming, started);
        self.classify(result, incoming.attempt).await
    }

    /// The message as a handler sees it, or why it is dead-lettered without a handler: it
    /// cannot be decoded, or it comes from a broker user that may not publish its type.
    /// Records what the envelope says in the current span.
    fn decode(
        &self,
        body: &[u8],
        properties: &BasicProperties,
    ) -> Result<IncomingEvent<H::Event>, Disposition> {
        let attempt = header_u32(properties, ATTEMPT_HEADER).unwrap_or(0) + 1;
        let (envelope, event) = match decode_body::<H::Event>(body) {
            Ok(decoded) => decoded,
            Err((_, e)) => return Err(dead_letter(&e, attempt)),
        };
        if let Err(error) = crate::authenticity::check(
            &self.inner.users,
            event.kind(),
            properties,
            &self.inner.own_user,
        ) {
            let code = crate::authenticity::FORGED_PRODUCER.to_owned();
            return Err(Disposition::DeadLetter {
                code,
                error,
                attempts: attempt,
            });
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
        Ok(incoming)
    }

    /// What a handler's result means for the delivery.
    async fn classify(
        &self,
        result: Result<InboxClaim, HandlerError>,
        attempt: u32,
    ) -> Disposition {
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

    /// Handles `batch` in ONE transaction: claims every message in the inbox, runs the
    /// handler of each claimed one in order (each in its own span), writes every emitted
    /// event to the outbox, commits, and hands the events to the relay. Any failure rolls it all back.
    /// `turn`, when given, is the transaction to run in (it holds the batch's turn).
    async fn apply_batch(
        &self,
        batch: &[(&IncomingEvent<H::Event>, &tracing::Span)],
        turn: Option<Turn>,
        claim: Claim,
    ) -> Result<Vec<InboxClaim>, HandlerError> {
        let inner = &self.inner;
        let started = Instant::now();
        let mut tx = match turn {
            Some(tx) => tx,
            None => inner.pool.begin().await?,
        };
        let envelopes: Vec<&Envelope> = batch.iter().map(|(i, _)| &i.envelope).collect();
        let claims = match claim {
            Claim::First => inbox::claim_all(&mut tx, self.consumer_name(), &envelopes).await?,
            Claim::WithWrites => inbox::first_occurrences(&envelopes),
        };
        let claimed = started.elapsed();
        let claimed_batch: Vec<_> = batch
            .iter()
            .zip(&claims)
            .filter(|(_, claim)| **claim == InboxClaim::Claimed)
            .map(|(message, _)| message)
            .collect();
        let mut writes = Writes::default();
        if claim == Claim::WithWrites {
            let claimed_envelopes: Vec<&Envelope> =
                claimed_batch.iter().map(|(i, _)| &i.envelope).collect();
            inbox::claim_with_writes(&mut writes, self.consumer_name(), &claimed_envelopes)?;
        }
        let mut emitters: Vec<Emitter> = claimed_batch
            .iter()
            .map(|(incoming, _)| {
                Emitter::new(self.consumer_name(), Some(incoming.envelope.message_id))
            })
            .collect();
        if !claimed_batch.is_empty() {
            let mut handlings: Vec<Handling<'_, H::Event>> = claimed_batch
                .iter()
                .zip(emitters.iter_mut())
                .map(|((incoming, span), out)| Handling {
                    incoming,
                    span,
                    out,
                })
                .collect();
            inner
                .handler
                .handle_all(&mut tx, &mut handlings, &mut writes)
                .await?;
        }
        let mut rows = OutboxRows::default();
        for ((_, span), out) in claimed_batch.iter().zip(emitters) {
            // Emitted events are children of the handling span, not siblings of the message.
            let trace = span.in_scope(crate::trace::current_traceparent);
            out.add_to(&mut rows, trace.as_deref())?;
        }
        let handled = started.elapsed();
        rows.commit_with(tx, writes, &inner.outbox).await?;
        tracing::debug!(
            size = batch.len(),
            claim_ms = claimed.as_secs_f64() * 1e3,
            handlers_ms = (handled - claimed).as_secs_f64() * 1e3,
            commit_ms = (started.elapsed() - handled).as_secs_f64() * 1e3,
            "batch committed"
        );
        Ok(claims)
    }

    /// Handles deliveries that arrived together (one, at low load): every valid one in one
    /// transaction that claims them with its writes (messaging::inbox), then one ack for
    /// them all. A batch that fails (any message, any reason, a message handled before
    /// among them) is handled again one message at a time, each claimed first, so the
    /// failure lands on the message that caused it alone and a duplicate is known as one
    /// before it is decided. A batch with a redelivered message in it (one that may have
    /// been handled before its ack was lost) claims first from the start.
    async fn handle_batch(
        &self,
        deliveries: Vec<Delivery>,
        turn: Option<Turn>,
        publisher: &ParkingPublisher,
        shutdown: &CancellationToken,
        acks: &AckLedger,
    ) {
        metrics::histogram!("saga_consumer_batch_size").record(deliveries.len() as f64);
        let claim = if deliveries.iter().any(|d| d.redelivered) {
            Claim::First
        } else {
            Claim::WithWrites
        };
        let mut valid = Vec::with_capacity(deliveries.len());
        let mut alone = Vec::new();
        for delivery in &deliveries {
            let span = delivery_span(delivery);
            match span.in_scope(|| self.decode(&delivery.data, &delivery.properties)) {
                Ok(incoming) => valid.push(Decoded {
                    delivery,
                    incoming,
                    span,
                }),
                // Dead-lettered on its own path, which says why.
                Err(_) => alone.push((delivery, span)),
            }
        }
        let started = Instant::now();
        let batch: Vec<_> = valid.iter().map(|d| (&d.incoming, &d.span)).collect();
        // Nothing to apply when every delivery was invalid: no empty transaction.
        let applied = if batch.is_empty() {
            Ok(Vec::new())
        } else {
            self.apply_batch(&batch, turn, claim).await
        };
        match applied {
            Ok(claims) => {
                for (d, claim) in valid.iter().zip(claims) {
                    if d.delivery.redelivered {
                        metrics::counter!("saga_messages_redelivered_total").increment(1);
                    }
                    record_duration::<H::Event>(&d.incoming, started);
                    let disposition = match claim {
                        InboxClaim::Claimed => Disposition::Handled,
                        InboxClaim::Duplicate => Disposition::Duplicate,
                    };
                    d.span
                        .in_scope(|| record_outcome::<H::Event>(d.delivery, &disposition));
                }
                let handled: Vec<&Delivery> = valid.iter().map(|d| d.delivery).collect();
                acks.ack(&handled);
            }
            Err(e) => {
                metrics::counter!("saga_consumer_batch_fallbacks_total").increment(1);
                tracing::debug!(error = %e, size = valid.len(), "batch failed; handling its messages one by one");
                alone.extend(valid.into_iter().map(|d| (d.delivery, d.span)));
                alone.sort_by_key(|(d, _)| d.delivery_tag);
            }
        }
        for (delivery, span) in alone {
            self.handle_delivery(delivery, None, publisher, shutdown, acks)
                .instrument(span)
                .await;
        }
    }

    /// Handles one delivery to the end: process, then ack, or retry / dead-letter and ack
    /// once the copy is confirmed. While the database is unreachable the delivery is held
    /// and processed again once it answers. A copy that cannot be published is held and
    /// tried again with backoff; after [`PATIENCE`] the delivery is rejected back to the
    /// queue (after that delay, and counted toward the delivery limit on every RabbitMQ
    /// version, so it never spins).
    pub(crate) async fn handle_delivery(
        &self,
        delivery: &Delivery,
        mut turn: Option<Turn>,
        publisher: &ParkingPublisher,
        shutdown: &CancellationToken,
        acks: &AckLedger,
    ) -> Disposition {
        if delivery.redelivered {
            // Came back unacked from an earlier consumer (a crash, a lost channel): the inbox
            // decides whether it was applied already.
            metrics::counter!("saga_messages_redelivered_total").increment(1);
        }
        let disposition = loop {
            let disposition = self
                .process(&delivery.data, &delivery.properties, turn.take())
                .await;
            if let Disposition::Paused { error } = &disposition {
                tracing::warn!(%error, "database unreachable; holding the message");
                if self.inner.gate.ride_out(&self.inner.pool, shutdown).await {
                    continue;
                }
                // Shutting down: the held delivery returns to the queue with the channel.
            }
            break disposition;
        };
        record_outcome::<H::Event>(delivery, &disposition);
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
                Some(self.retry_copy(delivery, *attempt, *delay))
            }
            Disposition::DeadLetter {
                code,
                error,
                attempts,
            } => {
                tracing::error!(%code, %error, attempts, "message dead-lettered");
                Some(self.dead_letter_copy(delivery, code, error, *attempts))
            }
        };
        if let Some(copy) = copy
            && let Err(e) = publisher.park(&copy, PATIENCE, shutdown).await
        {
            if let ParkError::Refused(_) = e {
                tracing::error!(error = %e, "could not park the failed message; rejecting it back to the queue");
                acks.requeue(delivery);
            }
            return disposition;
        }
        acks.ack(&[delivery]);
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

    /// Begins the transaction a batch in worker `slot` will run in, and waits in it for
    /// the slot's turn: the same slot of every replica of this service (every consumer of
    /// its queue on its database) takes one transaction-scoped advisory lock. So replicas
    /// take turns, as many batches run at once as one process would run, and while one
    /// replica commits, the deliveries of the others wait for their next batch: a batch is
    /// as full, and a delivery costs as few transactions, with two replicas as with one.
    /// `None` when the database does not answer: the batch then begins its own
    /// transaction, and its failure is handled there as any other.
    async fn take_turn(&self, slot: i32) -> Option<Turn> {
        // BEGIN and the lock in one round trip: a simple query of two statements, with
        // nothing in it but numbers this process computed.
        let begin = format!(
            "BEGIN; SELECT pg_advisory_xact_lock({}, {slot})",
            self.inner.turn_key
        );
        match self.inner.pool.begin_with(sqlx::AssertSqlSafe(begin)).await {
            Ok(tx) => Some(tx),
            Err(e) => {
                tracing::debug!(error = %e, "no turn for the batch; it begins its own transaction");
                None
            }
        }
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
        // Worker slots: a batch runs in one, and takes that slot's turn (see `take_turn`).
        let (slot_back, mut free_slots) = tokio::sync::mpsc::unbounded_channel();
        for slot in 0..inner.settings.concurrency.max(1) {
            let _ = slot_back.send(slot as i32);
        }
        let (acks, ack_sender) = AckLedger::new();
        let acks = Arc::new(acks);
        let ack_sender = tokio::spawn(ack_sender.run());
        // What the stream said after the last delivery a batch took (an end or an error),
        // to act on before waiting for more.
        let mut carried: Option<Option<lapin::Result<Delivery>>> = None;
        let result = loop {
            // Paused: take nothing new; what is prefetched stays unacked with the broker.
            if inner.gate.is_paused() && !inner.gate.wait_open(shutdown).await {
                break Ok(());
            }
            let next = match carried.take() {
                Some(next) => next,
                None => tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break Ok(()),
                    next = deliveries.next() => next,
                },
            };
            let first = match next {
                None => break Err(anyhow::anyhow!("the broker ended the consumer")),
                Some(Err(e)) => break Err(e.into()),
                Some(Ok(delivery)) => delivery,
            };
            let Some(slot) = free_slots.recv().await else {
                break Ok(());
            };
            let slot = Slot {
                slot,
                back: slot_back.clone(),
            };
            let turn = if inner.settings.batch_size > 1 {
                tokio::select! {
                    biased;
                    // The delivery goes back to the queue with the channel.
                    _ = shutdown.cancelled() => break Ok(()),
                    turn = self.take_turn(slot.slot) => turn,
                }
            } else {
                None
            };
            // Whatever arrived while this waited for a worker and its turn joins its batch.
            let mut batch = vec![first];
            while batch.len() < inner.settings.batch_size.max(1) {
                match deliveries.next().now_or_never() {
                    None => break,
                    Some(Some(Ok(delivery))) => batch.push(delivery),
                    Some(end_or_error) => {
                        carried = Some(end_or_error);
                        break;
                    }
                }
            }
            acks.received(&batch);
            let (this, publisher, shutdown, acks) = (
                self.clone(),
                publisher.clone(),
                shutdown.clone(),
                acks.clone(),
            );
            tracker.spawn(async move {
                this.handle_batch(batch, turn, &publisher, &shutdown, &acks)
                    .await;
                drop(slot);
            });
        };
        if shutdown.is_cancelled() {
            if let Err(e) = channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await
            {
                tracing::debug!(error = %e, "consumer cancel failed; closing anyway");
            }
            // Let the handlers in flight commit and ack on this channel before closing it:
            // once they are done the ledger is dropped, and its sender ends when every ack
            // it was given is written.
            tracker.close();
            tracker.wait().await;
            drop(acks);
            if let Err(e) = ack_sender.await {
                tracing::warn!(error = %e, "the ack sender failed; unacked messages come again");
            }
            amqp::close_quietly(&conn, "shutting down").await;
        }
        inner.link.set(false);
        result
    }
}

/// The advisory-lock key of a queue's turns: FNV-1a of its name, the same in every
/// process that consumes it.
fn turn_key(queue: &str) -> i32 {
    let hash = queue.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    i32::from_ne_bytes(hash.to_ne_bytes())
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

/// Counts what became of a delivery.
fn record_outcome<E: Event>(delivery: &Delivery, disposition: &Disposition) {
    let kind = delivery.properties.kind().as_ref().map(|k| k.as_str());
    let label = crate::metric_labels::event_type::<E::Kind>(kind);
    metrics::counter!("saga_messages_handled_total", "type" => label, "outcome" => disposition.outcome())
        .increment(1);
    tracing::debug!(outcome = disposition.outcome(), "message handled");
}

/// How long handling took, by event type (for a batch: the whole batch's time).
fn record_duration<E: Event>(incoming: &IncomingEvent<E>, started: Instant) {
    let event_type =
        crate::metric_labels::event_type::<E::Kind>(Some(incoming.envelope.event_type.as_str()));
    metrics::histogram!("saga_handler_duration_seconds", "type" => event_type)
        .record(started.elapsed().as_secs_f64());
}

fn dead_letter(e: &DecodeError, attempt: u32) -> Disposition {
    Disposition::DeadLetter {
        code: e.code().to_owned(),
        error: e.to_string(),
        attempts: attempt,
    }
}

/// The condition, for the `WHERE` clause of a handler's first load, that takes the saga
/// locks whose keys ([`consumer::saga_lock_keys`](crate::consumer::saga_lock_keys)) are
/// bound to placeholder `$n`: an uncorrelated subquery, which PostgreSQL runs once, as the
/// init plan of a one-time filter, before the plan under the filter fetches anything. The
/// function scan yields the keys in order, and each row takes its lock as it passes.
#[macro_export]
macro_rules! saga_locks_taken {
    ($n:literal) => {
        concat!(
            "(SELECT count(pg_advisory_xact_lock(l)) FROM unnest($",
            $n,
            "::int8[]) AS l) >= 0"
        )
    };
}

/// The keys of the transaction-scoped advisory locks that serialise the handlers of each
/// saga in `order_ids`, in the order to take them. Two events about one order may arrive
/// together before any row exists to lock (OrderCreated racing OrderCancelled, say); the
/// lock on the order id makes the second wait for the first to commit. The locks are taken
/// in the order of their keys, so two batches that share orders queue on the first they
/// share instead of waiting on each other in a cycle.
///
/// A handler takes them in its first load, before it reads a row, with the condition
/// [`crate::saga_locks_taken!`] bound to these keys.
pub fn saga_lock_keys(order_ids: impl IntoIterator<Item = uuid::Uuid>) -> Vec<i64> {
    let mut keys: Vec<i64> = order_ids
        .into_iter()
        .map(|id| {
            // The high 64 bits of a UUIDv7 are mostly its timestamp; fold in the random
            // low half.
            let (hi, lo) = id.as_u64_pair();
            (hi ^ lo) as i64
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}
