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
//! - Relays wake in process: whoever commits outbox rows calls [`rows_committed`] after the
//!   commit (or commits with [`Emitter::commit`], which does), and the relay loops of the
//!   process claim what is there. No database notification is involved: PostgreSQL takes
//!   one global lock at commit for every transaction that issued `NOTIFY`, which halved the
//!   commits per second the database can do. Each replica wakes its own relay for its own
//!   commits; every relay also polls every `poll_interval`, which picks up rows whose writer
//!   died between its commit and its relay.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::Connection;
use std::sync::LazyLock;

use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::amqp::{self, Backoff, LinkState};
use crate::envelope::{Envelope, properties_for};
use crate::event::{Event, EventKind};
use crate::publisher::{ConfirmedPublisher, OutgoingMessage, PublishError};
use crate::topology::EVENTS_EXCHANGE;

/// How many transactions with outbox rows this process has committed. Every relay loop
/// that waits for work watches it, so one commit wakes each of them once, and commits made
/// while a loop was busy wake it as soon as it waits again (they coalesce into one wake).
static COMMITTED: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::Sender::new(0));

/// Tells this process's relays that a transaction which wrote outbox rows has committed.
/// Call it after the commit, never before: a relay woken earlier would find nothing and
/// the rows would wait for its next poll.
pub fn rows_committed() {
    COMMITTED.send_modify(|n| *n = n.wrapping_add(1));
}

/// Writes `envelope` to the outbox inside the caller's transaction, to be published with
/// `routing_key`. An empty routing key is refused: the row could never reach a consumer.
pub async fn enqueue(
    conn: &mut PgConnection,
    envelope: &Envelope,
    routing_key: &str,
    traceparent: Option<&str>,
) -> sqlx::Result<()> {
    let mut rows = OutboxRows::default();
    rows.push(envelope, routing_key, traceparent)?;
    rows.insert(conn).await
}

/// What runs once a transaction has committed (counting a saga that ended, say): never
/// before, and never for a transaction that rolled back and runs again.
type AfterCommit = Box<dyn FnOnce() + Send>;

/// Outbox rows gathered from one or more emitters (several messages handled, or several
/// requests placed, in one transaction), written with one statement, and what their
/// emitters asked to run after the commit.
#[derive(Default)]
pub struct OutboxRows {
    message_id: Vec<Uuid>,
    event_type: Vec<String>,
    routing_key: Vec<String>,
    correlation_id: Vec<String>,
    causation_id: Vec<Option<Uuid>>,
    producer: Vec<String>,
    occurred_at: Vec<DateTime<Utc>>,
    body: Vec<String>,
    traceparent: Vec<Option<String>>,
    after_commit: Vec<AfterCommit>,
}

impl std::fmt::Debug for OutboxRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRows")
            .field("message_id", &self.message_id)
            .field("after_commit", &self.after_commit.len())
            .finish_non_exhaustive()
    }
}

impl OutboxRows {
    pub fn push(
        &mut self,
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
        self.message_id.push(envelope.message_id);
        self.event_type.push(envelope.event_type.clone());
        self.routing_key.push(routing_key.to_owned());
        self.correlation_id.push(envelope.correlation_id.clone());
        self.causation_id.push(envelope.causation_id);
        self.producer.push(envelope.producer.clone());
        self.occurred_at.push(envelope.occurred_at);
        self.body.push(body);
        self.traceparent.push(traceparent.map(str::to_owned));
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.message_id.is_empty()
    }

    /// Inserts every row, commits `tx`, wakes this process's relays if a row was written,
    /// and runs what the emitters asked to run after the commit.
    pub async fn commit(mut self, mut tx: Transaction<'_, Postgres>) -> sqlx::Result<()> {
        let wrote = !self.is_empty();
        let after_commit = std::mem::take(&mut self.after_commit);
        self.insert(&mut tx).await?;
        tx.commit().await?;
        if wrote {
            rows_committed();
        }
        for run in after_commit {
            run();
        }
        Ok(())
    }

    /// Inserts every row, in the order they were pushed (their ids, and so the relay's
    /// publish order, follow it): one statement per [`crate::chunks::STATEMENT_BYTES`].
    pub async fn insert(self, conn: &mut PgConnection) -> sqlx::Result<()> {
        let sizes = (0..self.message_id.len()).map(|i| {
            // What the row adds to the statement, near enough: its texts and fixed columns.
            self.body[i].len()
                + self.event_type[i].len()
                + self.routing_key[i].len()
                + self.correlation_id[i].len()
                + self.producer[i].len()
                + self.traceparent[i].as_ref().map_or(0, String::len)
                + 64
        });
        for r in crate::chunks::by_size(sizes, crate::chunks::STATEMENT_BYTES) {
            sqlx::query(
                "INSERT INTO outbox (message_id, event_type, routing_key, correlation_id, causation_id, producer, occurred_at, body, traceparent)
                 SELECT message_id, event_type, routing_key, correlation_id, causation_id, producer, occurred_at, body, traceparent
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[], $6::text[], $7::timestamptz[], $8::text[], $9::text[])
                 WITH ORDINALITY AS r(message_id, event_type, routing_key, correlation_id, causation_id, producer, occurred_at, body, traceparent, n)
                 ORDER BY n",
            )
            .bind(&self.message_id[r.clone()])
            .bind(&self.event_type[r.clone()])
            .bind(&self.routing_key[r.clone()])
            .bind(&self.correlation_id[r.clone()])
            .bind(&self.causation_id[r.clone()])
            .bind(&self.producer[r.clone()])
            .bind(&self.occurred_at[r.clone()])
            .bind(&self.body[r.clone()])
            .bind(&self.traceparent[r])
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

/// The events one transaction emits, each wrapped in its envelope as soon as it is emitted
/// so the caller knows its message id (for an order's history, say).
pub struct Emitter {
    producer: String,
    causation_id: Option<Uuid>,
    envelopes: Vec<Envelope>,
    /// The routing key of each envelope, from its event type.
    routing_keys: Vec<&'static str>,
    after_commit: Vec<AfterCommit>,
}

impl std::fmt::Debug for Emitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter")
            .field("producer", &self.producer)
            .field("causation_id", &self.causation_id)
            .field("envelopes", &self.envelopes)
            .field("after_commit", &self.after_commit.len())
            .finish()
    }
}

impl Emitter {
    /// `causation_id` is the message being handled, or `None` for a client's request.
    pub fn new(producer: &str, causation_id: Option<Uuid>) -> Self {
        Emitter {
            producer: producer.to_owned(),
            causation_id,
            envelopes: Vec::new(),
            routing_keys: Vec::new(),
            after_commit: Vec::new(),
        }
    }

    /// Runs `f` once the transaction these events are written in has committed: for what
    /// must count once, and only if it happened (a batch that fails is rolled back and
    /// handled again message by message).
    pub fn after_commit(&mut self, f: impl FnOnce() + Send + 'static) {
        self.after_commit.push(Box::new(f));
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

    /// Adds every emitted event, and what is to run after the commit, to `rows`, for a
    /// caller that writes several emitters in one transaction.
    pub fn add_to(self, rows: &mut OutboxRows, traceparent: Option<&str>) -> sqlx::Result<()> {
        for (envelope, routing_key) in self.envelopes.iter().zip(self.routing_keys) {
            rows.push(envelope, routing_key, traceparent)?;
        }
        rows.after_commit.extend(self.after_commit);
        Ok(())
    }

    /// Writes the emitted events, commits `tx`, wakes this process's relays, and runs what
    /// was asked to run after the commit.
    pub async fn commit(
        self,
        tx: Transaction<'_, Postgres>,
        traceparent: Option<&str>,
    ) -> sqlx::Result<()> {
        let mut rows = OutboxRows::default();
        self.add_to(&mut rows, traceparent)?;
        rows.commit(tx).await
    }
}

#[derive(Debug, sqlx::FromRow)]
struct PendingRow {
    /// Where the row is: it is locked until the transaction ends, so it stays there, and
    /// marking it by this address costs no index lookup and no plan.
    at: String,
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
    /// Each commit in the process wakes one idle loop, so a commit made while one loop
    /// waits for its confirms is published by another at once.
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
    /// Work for one loop: rung once per commit of outbox rows in this process (by the
    /// doorbell task of [`OutboxRelay::run`]) and by a loop that met a full batch. One
    /// stored permit serves every commit made while all loops were busy.
    work: std::sync::Arc<tokio::sync::Notify>,
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
            work: Default::default(),
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
            "SELECT ctid::text AS at, message_id, event_type, routing_key, correlation_id, producer, occurred_at, body, traceparent
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
                Ok(()) => sent.push(row.at.as_str()),
                Err(e) => {
                    span.record("error", tracing::field::display(&e));
                    failed += 1;
                    // A refusal is about this message; a broken channel is about none of
                    // them, except when the broker closed it over this very message: the
                    // first one to fail, with a channel-level error (ACCESS_REFUSED, say).
                    // Confirms come in publish order, so that one is the culprit, and it
                    // backs off alone instead of heading every batch.
                    if !e.breaks_channel() || (failed == 1 && e.closed_channel_over_message()) {
                        refused.push(row.at.as_str());
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
                 WHERE ctid = ANY($1::text[]::tid[])",
            )
            .bind(&refused)
            .bind(reason)
            .execute(&mut *tx)
            .await?;
        }
        if !sent.is_empty() {
            sqlx::query("UPDATE outbox SET sent_at = now() WHERE ctid = ANY($1::text[]::tid[])")
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
        let (work, stop) = (self.work.clone(), shutdown.clone());
        // The doorbell: every commit of outbox rows in this process wakes one loop.
        loops.spawn(async move {
            let mut commits = COMMITTED.subscribe();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    // The sender is a static, never dropped: this returns on a commit.
                    _ = commits.changed() => work.notify_one(),
                }
            }
        });
        for worker in 0..self.settings.workers.max(1) {
            loops.spawn(self.clone().run_worker(worker, shutdown.clone()));
        }
        while loops.join_next().await.is_some() {}
    }

    async fn run_worker(self, worker: usize, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        let mut link: Option<(Connection, ConfirmedPublisher)> = None;
        // Only the first loop polls: one look a poll interval finds rows whose writer died.
        let polls = worker == 0;
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
            let Some((_, publisher)) = link.as_ref() else {
                continue;
            };
            match self.relay_once(publisher).await {
                Ok(n) if n as i64 >= self.settings.batch_size => {
                    // A backlog: go on, and bring in another loop.
                    backoff.reset();
                    self.work.notify_one();
                }
                Ok(_) => {
                    backoff.reset();
                    self.wait_for_work(polls, &shutdown).await;
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

    /// Returns when this loop has work (a commit in this process), after the poll interval
    /// if it `polls`, or at shutdown.
    async fn wait_for_work(&self, polls: bool, shutdown: &CancellationToken) {
        let poll = async {
            if polls {
                tokio::time::sleep(self.settings.poll_interval).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = poll => {}
            _ = self.work.notified() => {}
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
