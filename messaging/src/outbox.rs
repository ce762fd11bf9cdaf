//! The transactional outbox: an event is a row written in the same transaction as the
//! state change that caused it, and the relay publishes rows to the broker afterwards.
//!
//! Guarantees:
//! - A committed state change always gets its events published (eventually, at least once).
//!   A rolled-back one never does.
//! - A row is marked sent only after the broker confirmed it and routed it to a queue. A
//!   crash between the confirm and the mark publishes the row again on restart (same
//!   `message_id`, so consumers drop the copy).
//! - Several relays (replicas) may run on one outbox: each claims its batch with
//!   `FOR UPDATE SKIP LOCKED` and holds the row locks until the batch is marked, so no two
//!   relays publish the same row.
//! - Relays wake on `NOTIFY saga_outbox` (sent by a trigger after commit) and poll every
//!   `poll_interval` as well, because a listener that is reconnecting misses notifications.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::Connection;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::amqp::{self, Backoff, LinkState};
use crate::envelope::{Envelope, properties_for};
use crate::event::{Event, EventKind};
use crate::publisher::{ConfirmedPublisher, OutgoingMessage, PublishError};
use crate::topology::EVENTS_EXCHANGE;

/// The channel the outbox trigger notifies.
pub(crate) const NOTIFY_CHANNEL: &str = "saga_outbox";

/// Writes `envelope` to the outbox inside the caller's transaction, to be published with
/// `routing_key`. An empty routing key is refused: the row could never reach a consumer.
pub async fn enqueue(
    conn: &mut PgConnection,
    envelope: &Envelope,
    routing_key: &str,
    traceparent: Option<&str>,
) -> sqlx::Result<()> {
    if routing_key.is_empty() {
        return Err(sqlx::Error::Protocol(format!(
            "outbox row {} ({}) has no routing key",
            envelope.message_id, envelope.event_type
        )));
    }
    // serde_json writes UTF-8 only, so the body is always text.
    let body =
        String::from_utf8(envelope.to_body()).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    sqlx::query(
        "INSERT INTO outbox (message_id, event_type, routing_key, correlation_id, causation_id, producer, occurred_at, body, traceparent)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(envelope.message_id)
    .bind(&envelope.event_type)
    .bind(routing_key)
    .bind(&envelope.correlation_id)
    .bind(envelope.causation_id)
    .bind(&envelope.producer)
    .bind(envelope.occurred_at)
    .bind(body)
    .bind(traceparent)
    .execute(conn)
    .await?;
    Ok(())
}

/// The events one transaction emits, each wrapped in its envelope as soon as it is emitted
/// so the caller knows its message id (for an order's history, say).
#[derive(Debug)]
pub struct Emitter {
    producer: String,
    causation_id: Option<Uuid>,
    envelopes: Vec<Envelope>,
    /// The routing key of each envelope, from its event type.
    routing_keys: Vec<&'static str>,
}

impl Emitter {
    /// `causation_id` is the message being handled, or `None` for a client's request.
    pub fn new(producer: &str, causation_id: Option<Uuid>) -> Self {
        Emitter {
            producer: producer.to_owned(),
            causation_id,
            envelopes: Vec::new(),
            routing_keys: Vec::new(),
        }
    }

    pub fn emit<E: Event>(&mut self, event: E) -> &Envelope {
        self.routing_keys.push(event.kind().routing_key());
        self.envelopes
            .push(Envelope::wrap(&event, &self.producer, self.causation_id));
        &self.envelopes[self.envelopes.len() - 1]
    }

    pub fn envelopes(&self) -> &[Envelope] {
        &self.envelopes
    }

    /// Writes every emitted event to the outbox inside the caller's transaction.
    pub async fn write(
        self,
        conn: &mut PgConnection,
        traceparent: Option<&str>,
    ) -> sqlx::Result<()> {
        for (envelope, routing_key) in self.envelopes.iter().zip(self.routing_keys) {
            enqueue(conn, envelope, routing_key, traceparent).await?;
        }
        Ok(())
    }
}

#[derive(Debug, sqlx::FromRow)]
struct PendingRow {
    id: i64,
    message_id: Uuid,
    event_type: String,
    routing_key: String,
    correlation_id: String,
    producer: String,
    occurred_at: DateTime<Utc>,
    body: String,
    traceparent: Option<String>,
}

impl PendingRow {
    /// The publish of this row as a span: a child of the span that wrote the row, so the
    /// trace runs on from the request or the handler that emitted the event.
    fn publish_span(&self) -> tracing::Span {
        let span = tracing::info_span!(
            "publish",
            otel.name = %format!("{} publish", self.routing_key),
            otel.kind = "producer",
            event_type = %self.event_type,
            message_id = %self.message_id,
            order_id = %self.correlation_id,
            error = tracing::field::Empty,
        );
        crate::trace::continue_from_traceparent(&span, self.traceparent.as_deref());
        span
    }

    /// The message for this row; its `traceparent` is the publish span's, so the consumer's
    /// handling span becomes a child of the publish.
    fn to_message(&self, publish: &tracing::Span) -> OutgoingMessage {
        OutgoingMessage {
            exchange: EVENTS_EXCHANGE.to_owned(),
            routing_key: self.routing_key.clone(),
            body: self.body.as_bytes().to_vec(),
            properties: properties_for(
                self.message_id,
                &self.event_type,
                &self.correlation_id,
                &self.producer,
                self.occurred_at,
                crate::trace::traceparent_of(publish)
                    .or_else(|| self.traceparent.clone())
                    .as_deref(),
            ),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Rows claimed and published per transaction (confirms are pipelined per batch).
    pub batch_size: i64,
    /// Longest time between two polls when no notification arrives.
    pub poll_interval: Duration,
    pub confirm_timeout: Duration,
    /// Relay loops per process. Several let one loop's database work (claim, mark sent)
    /// overlap another's wait for confirms; SKIP LOCKED keeps their batches disjoint.
    /// Only the first loop answers notifications; the others join in on a backlog.
    pub workers: usize,
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            workers: 4,
            batch_size: 512,
            poll_interval: Duration::from_secs(1),
            confirm_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{failed} of {claimed} outbox rows not published: {first}")]
    Publish {
        claimed: usize,
        failed: usize,
        first: PublishError,
    },
}

/// Publishes the outbox of one service database.
#[derive(Clone)]
pub struct OutboxRelay {
    pool: PgPool,
    amqp_url: String,
    name: String,
    settings: RelaySettings,
    link: LinkState,
    /// Raised by the first loop when it meets a backlog (a full batch): the other loops
    /// only work then, so an ordinary commit wakes one loop, not all of them.
    backlog: std::sync::Arc<tokio::sync::Notify>,
}

impl OutboxRelay {
    /// `name` labels the broker connection in the RabbitMQ console.
    pub fn new(
        pool: PgPool,
        amqp_url: impl Into<String>,
        name: impl Into<String>,
        settings: RelaySettings,
    ) -> Self {
        OutboxRelay {
            pool,
            amqp_url: amqp_url.into(),
            name: name.into(),
            settings,
            link: LinkState::default(),
            backlog: Default::default(),
        }
    }

    pub fn link(&self) -> LinkState {
        self.link.clone()
    }

    /// Claims one batch of unsent rows, publishes them, and marks the confirmed ones sent,
    /// all in one transaction. Returns how many rows were published. Rows that were not
    /// confirmed stay unsent and are tried again on a later call.
    pub async fn relay_once(&self, publisher: &ConfirmedPublisher) -> Result<usize, RelayError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<PendingRow> = sqlx::query_as(
            "SELECT id, message_id, event_type, routing_key, correlation_id, producer, occurred_at, body, traceparent
             FROM outbox WHERE sent_at IS NULL AND (next_attempt_at IS NULL OR next_attempt_at <= now())
             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(self.settings.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let spans: Vec<_> = rows.iter().map(PendingRow::publish_span).collect();
        let messages: Vec<_> = rows
            .iter()
            .zip(&spans)
            .map(|(row, span)| row.to_message(span))
            .collect();
        let results = publisher.publish_all(&messages).await;
        let mut sent = Vec::with_capacity(rows.len());
        let mut refused = Vec::new();
        let mut first_error = None;
        let mut failed = 0;
        for ((row, result), span) in rows.iter().zip(results).zip(&spans) {
            match result {
                Ok(()) => sent.push(row.id),
                Err(e) => {
                    span.record("error", tracing::field::display(&e));
                    failed += 1;
                    // A refusal is about this message; a broken channel is about none of
                    // them, except when the broker closed it over this very message: the
                    // first one to fail, with a channel-level error (ACCESS_REFUSED, say).
                    // Confirms come in publish order, so that one is the culprit, and it
                    // backs off alone instead of heading every batch.
                    if !e.breaks_channel() || (failed == 1 && e.closed_channel_over_message()) {
                        refused.push(row.id);
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        if !refused.is_empty() {
            metrics::counter!("saga_outbox_refused_total").increment(refused.len() as u64);
            let reason = first_error.as_ref().map(|e| e.to_string());
            sqlx::query(
                "UPDATE outbox SET attempts = attempts + 1, last_error = $2,
                     next_attempt_at = now() + make_interval(secs => LEAST(power(2, attempts), 60))
                 WHERE id = ANY($1)",
            )
            .bind(&refused)
            .bind(reason)
            .execute(&mut *tx)
            .await?;
        }
        if !sent.is_empty() {
            sqlx::query("UPDATE outbox SET sent_at = now() WHERE id = ANY($1)")
                .bind(&sent)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        metrics::counter!("saga_relay_published_total").increment(sent.len() as u64);
        match first_error {
            None => Ok(sent.len()),
            Some(first) => Err(RelayError::Publish {
                claimed: rows.len(),
                failed,
                first,
            }),
        }
    }

    /// Relays with `workers` loops until `shutdown`, reconnecting to the broker and the
    /// database as needed. The batches in flight when shutdown comes are finished first.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut loops = tokio::task::JoinSet::new();
        for worker in 0..self.settings.workers.max(1) {
            loops.spawn(self.clone().run_worker(worker, shutdown.clone()));
        }
        while loops.join_next().await.is_some() {}
    }

    async fn run_worker(self, worker: usize, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        let mut link: Option<(Connection, ConfirmedPublisher)> = None;
        let mut listener: Option<PgListener> = None;
        while !shutdown.is_cancelled() {
            if link.as_ref().is_none_or(|(_, p)| !p.is_usable()) {
                self.link.set(false);
                match self.open_publisher(worker).await {
                    Ok(l) => {
                        tracing::info!(relay = %self.name, "outbox relay connected to the broker");
                        link = Some(l);
                        self.link.set(true);
                    }
                    Err(e) => {
                        tracing::warn!(relay = %self.name, error = %e, url = %amqp::redact_url(&self.amqp_url), "broker unreachable; outbox rows wait");
                        if !amqp::pause(backoff.next_delay(), &shutdown).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            let primary = worker == 0;
            if primary && listener.is_none() {
                listener = self.listen().await;
            }
            let Some((_, publisher)) = link.as_ref() else {
                continue;
            };
            match self.relay_once(publisher).await {
                Ok(n) if n as i64 >= self.settings.batch_size => {
                    backoff.reset();
                    if primary {
                        self.backlog.notify_waiters();
                    }
                }
                Ok(_) if primary => {
                    backoff.reset();
                    self.wait_for_work(&mut listener, &shutdown).await;
                }
                Ok(_) => {
                    backoff.reset();
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = self.backlog.notified() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(relay = %self.name, error = %e, "outbox relay failed; will retry");
                    if let RelayError::Publish { first, .. } = &e
                        && first.breaks_channel()
                    {
                        link = None;
                    }
                    if !amqp::pause(backoff.next_delay(), &shutdown).await {
                        break;
                    }
                }
            }
        }
        self.link.set(false);
        if let Some((conn, _)) = link {
            crate::amqp::close_quietly(&conn).await;
        }
    }

    async fn open_publisher(
        &self,
        worker: usize,
    ) -> lapin::Result<(Connection, ConfirmedPublisher)> {
        let conn = amqp::connect(&self.amqp_url, &format!("{} relay {worker}", self.name)).await?;
        let publisher = ConfirmedPublisher::open(&conn, self.settings.confirm_timeout).await?;
        Ok((conn, publisher))
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await.ok()?;
        listener.listen(NOTIFY_CHANNEL).await.ok()?;
        Some(listener)
    }

    /// Returns on a notification, after the poll interval, or at shutdown.
    async fn wait_for_work(&self, listener: &mut Option<PgListener>, shutdown: &CancellationToken) {
        let poll = tokio::time::sleep(self.settings.poll_interval);
        match listener {
            Some(l) => {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = poll => {}
                    got = l.recv() => {
                        if got.is_err() {
                            *listener = None;
                        } else {
                            // One batch serves every commit notified so far: drop the
                            // notifications already queued, so they do not each cost a
                            // transaction that finds nothing.
                            while l.next_buffered().is_some() {}
                        }
                    }
                }
            }
            None => {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = poll => {}
                }
            }
        }
    }
}

/// Number of rows not yet published, and the age of the oldest, for metrics and health.
pub async fn backlog(pool: &PgPool) -> sqlx::Result<(i64, Option<f64>)> {
    sqlx::query_as(
        "SELECT count(*), EXTRACT(EPOCH FROM now() - min(created_at))::float8 FROM outbox WHERE sent_at IS NULL",
    )
    .fetch_one(pool)
    .await
}

/// An outbox row as traces show it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct OutboxRecord {
    pub message_id: Uuid,
    pub event_type: String,
    pub correlation_id: String,
    pub causation_id: Option<Uuid>,
    pub producer: String,
    pub occurred_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub traceparent: Option<String>,
}

/// Every event this service emitted about one saga (until housekeeping removes it).
pub async fn for_correlation(
    pool: &PgPool,
    correlation_id: &str,
) -> sqlx::Result<Vec<OutboxRecord>> {
    sqlx::query_as(
        "SELECT message_id, event_type, correlation_id, causation_id, producer, occurred_at, sent_at, traceparent
         FROM outbox WHERE correlation_id = $1 ORDER BY id",
    )
    .bind(correlation_id)
    .fetch_all(pool)
    .await
}
