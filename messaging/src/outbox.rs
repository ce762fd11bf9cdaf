//! The transactional outbox: an event is a row written in the same transaction as the
//! state change that caused it, and the relay publishes rows to the broker afterwards.
//!
//! Guarantees:
//! - A committed state change always gets its events published (eventually, at least once).
//!   A rolled-back one never does.
//! - A row is marked sent only after the broker confirmed it and routed it to a queue. A
//!   crash between the confirm and the mark publishes the row again later (same
//!   `message_id`, so consumers drop the copy).
//! - Rows are handed over in memory: a writer commits through its process's [`Outbox`],
//!   and once the transaction has committed, the rows go to the process's relay as they
//!   are, which publishes them at once; the next transaction the process commits through
//!   its [`Outbox`] records them sent (or, when none comes soon, the relay does, many rows
//!   in one statement). So a row costs the relay no claim and no transaction on the saga's
//!   path. A handed-over row carries a lease (`next_attempt_at`, `SAGA_RELAY_LEASE_MS`):
//!   until it runs out, no relay claims the row; after it, any relay of the database does.
//!   That is how the rows of a writer that died before its relay published them get out
//!   (its restart, or another replica, claims them when their lease ends), and the rows
//!   its relay could not publish (the broker went away) too.
//! - Relays claim what is not handed over: rows whose lease ran out, rows written with no
//!   relay running in the process (or its broker link down, or its queue full), and rows
//!   of other writers ([`enqueue`]). Several relays (replicas) may run on one outbox: each
//!   claims its batch with `FOR UPDATE SKIP LOCKED` and holds the row locks until the batch
//!   is marked, so no two relays publish the same claimed row.
//! - Relays wake in process: a commit of rows that are not handed over calls
//!   [`rows_committed`] after the commit, and the relay loops of the process claim what is
//!   there. No database notification is involved: PostgreSQL takes one global lock at
//!   commit for every transaction that issued `NOTIFY`, which halved the commits per second
//!   the database can do. Every relay also polls every `poll_interval`, which picks up rows
//!   whose lease ran out.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lapin::Connection;

use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::amqp::{self, Backoff, LinkState};
use crate::envelope::{Envelope, properties_for};
use crate::event::{Event, EventKind};
use crate::publisher::{ConfirmedPublisher, OutgoingMessage, PublishError};
use crate::topology::EVENTS_EXCHANGE;
use crate::writes::{Counted, Writes};

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
type AfterCommit = Box<dyn FnOnce() + Send + Sync>;

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

    pub fn len(&self) -> usize {
        self.message_id.len()
    }

    /// Inserts every row, commits `tx`, hands the rows to this process's relay through
    /// `outbox` (or, when it cannot take them, wakes the relays to claim them), and runs
    /// what the emitters asked to run after the commit.
    pub async fn commit(self, tx: Transaction<'_, Postgres>, outbox: &Outbox) -> sqlx::Result<()> {
        self.commit_with(tx, Writes::default(), outbox).await
    }

    /// [`OutboxRows::commit`] for a transaction that ends with other `writes` (the rows a
    /// batch's decisions changed): the outbox rows, the record of the rows this process's
    /// relay sent since the last commit, and `writes` go to the database together, in one
    /// statement as far as their size allows, then `tx` commits.
    pub async fn commit_with(
        mut self,
        mut tx: Transaction<'_, Postgres>,
        mut writes: Writes,
        outbox: &Outbox,
    ) -> sqlx::Result<()> {
        let after_commit = std::mem::take(&mut self.after_commit);
        let handover = outbox.taker(self.len());
        self.add_leased(&mut writes, handover.map(|h| h.lease))?;
        // The rows this process's relay published since the last commit are recorded sent
        // in this transaction, which costs no statement and no commit of their own.
        let recorded = match &outbox.handover {
            Some(h) => h.take_confirmed(),
            None => Vec::new(),
        };
        let put_back = |recorded| {
            if let Some(h) = &outbox.handover {
                h.put_back(recorded);
            }
        };
        let marked = match mark_sent(&mut writes, &recorded) {
            Ok(marked) => marked,
            Err(e) => {
                put_back(recorded);
                return Err(e);
            }
        };
        let counts = match writes.execute(&mut tx).await {
            Ok(counts) => counts,
            Err(e) => {
                put_back(recorded);
                return Err(e);
            }
        };
        if let Err(e) = tx.commit().await {
            put_back(recorded);
            return Err(e);
        }
        count_recorded("commit", marked.map_or(0, |m| counts.get(m)));
        match handover {
            Some(handover) => handover.hand(self.into_rows()),
            None if !self.is_empty() => rows_committed(),
            None => {}
        }
        for run in after_commit {
            run();
        }
        Ok(())
    }

    /// Inserts every row, in the order they were pushed (their ids, and so the relay's
    /// publish order, follow it), for any relay to claim.
    pub async fn insert(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        let mut writes = Writes::default();
        self.add_leased(&mut writes, None)?;
        writes.execute(conn).await.map(|_| ())
    }

    /// Adds the insert of every row to `writes`, leased for `lease` to the relay they are
    /// handed to (no relay claims them before the lease runs out): one part per
    /// [`crate::chunks::STATEMENT_BYTES`].
    fn add_leased(&self, writes: &mut Writes, lease: Option<Duration>) -> sqlx::Result<()> {
        let lease = lease.map(|l| l.as_secs_f64());
        let sizes: Vec<usize> = (0..self.message_id.len())
            .map(|i| {
                // What the row adds to the statement, near enough: its texts and fixed
                // columns.
                self.body[i].len()
                    + self.event_type[i].len()
                    + self.routing_key[i].len()
                    + self.correlation_id[i].len()
                    + self.producer[i].len()
                    + self.traceparent[i].as_ref().map_or(0, String::len)
                    + 64
            })
            .collect();
        for r in crate::chunks::by_size(sizes.iter().copied(), crate::chunks::STATEMENT_BYTES) {
            let bytes = sizes[r.clone()].iter().sum();
            writes.add(
                "INSERT INTO outbox (message_id, event_type, routing_key, correlation_id, causation_id, producer, occurred_at, body, traceparent, next_attempt_at)
                 SELECT message_id, event_type, routing_key, correlation_id, causation_id, producer, occurred_at, body, traceparent,
                        now() + make_interval(secs => $10::float8)
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[], $6::text[], $7::timestamptz[], $8::text[], $9::text[])
                 WITH ORDINALITY AS r(message_id, event_type, routing_key, correlation_id, causation_id, producer, occurred_at, body, traceparent, n)
                 ORDER BY n",
                bytes,
                |b| {
                    b.add(&self.message_id[r.clone()])?;
                    b.add(&self.event_type[r.clone()])?;
                    b.add(&self.routing_key[r.clone()])?;
                    b.add(&self.correlation_id[r.clone()])?;
                    b.add(&self.causation_id[r.clone()])?;
                    b.add(&self.producer[r.clone()])?;
                    b.add(&self.occurred_at[r.clone()])?;
                    b.add(&self.body[r.clone()])?;
                    b.add(&self.traceparent[r.clone()])?;
                    b.add(lease)
                },
            )?;
        }
        Ok(())
    }

    /// The rows as the relay publishes them.
    fn into_rows(self) -> Vec<RowToPublish> {
        let mut rows = Vec::with_capacity(self.len());
        let columns = self
            .message_id
            .into_iter()
            .zip(self.event_type)
            .zip(self.routing_key)
            .zip(self.correlation_id)
            .zip(self.producer)
            .zip(self.occurred_at)
            .zip(self.body)
            .zip(self.traceparent);
        for (
            (
                (
                    ((((message_id, event_type), routing_key), correlation_id), producer),
                    occurred_at,
                ),
                body,
            ),
            traceparent,
        ) in columns
        {
            rows.push(RowToPublish {
                message_id,
                event_type,
                routing_key,
                correlation_id,
                producer,
                occurred_at,
                body,
                traceparent,
            });
        }
        rows
    }
}

/// Where the writers of one process commit outbox rows. With the process's relay running
/// and connected, each transaction's rows are handed to it in memory once committed;
/// otherwise (`Outbox::default()`, a tool, a test) they wait for a relay to claim them.
#[derive(Clone, Default)]
pub struct Outbox {
    handover: Option<Arc<Handover>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("hands_over", &self.handover.is_some())
            .finish()
    }
}

impl Outbox {
    /// Rows this process's relay published and the broker confirmed that are not yet
    /// recorded sent.
    pub fn unrecorded(&self) -> usize {
        self.handover
            .as_deref()
            .map_or(0, |h| h.lock_confirmed().rows.len())
    }

    /// The relay that takes `rows` more rows now, if there is one: running, connected to
    /// the broker, and with room in its queue.
    fn taker(&self, rows: usize) -> Option<&Handover> {
        self.handover
            .as_deref()
            .filter(|h| rows > 0 && h.link.is_up() && h.queued() + rows <= h.capacity)
    }
}

/// Rows handed from the writers of a process to its relay, and the confirmed ones waiting
/// to be recorded sent.
struct Handover {
    /// How long a handed-over row is the relay's alone.
    lease: Duration,
    /// Most rows queued; a writer that finds the queue full leaves its rows to be claimed.
    capacity: usize,
    link: LinkState,
    queue: Mutex<VecDeque<(Instant, RowToPublish)>>,
    /// The relay's loops wait on it.
    work: Arc<Notify>,
    /// Published and confirmed, waiting to be recorded sent.
    confirmed: Mutex<Confirmed>,
    recorder: Notify,
}

impl Handover {
    fn queued(&self) -> usize {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn hand(&self, rows: Vec<RowToPublish>) {
        let now = Instant::now();
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(rows.into_iter().map(|row| (now, row)));
        self.work.notify_one();
    }

    /// Up to `max` rows to publish, oldest first. Rows that waited half their lease are
    /// dropped instead: they are left to the relays that claim, so that a row is never
    /// published from memory while a claim may take it.
    fn take(&self, max: usize) -> Vec<RowToPublish> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let mut rows = Vec::new();
        while rows.len() < max
            && let Some((handed, row)) = queue.pop_front()
        {
            if handed.elapsed() < self.lease / 2 {
                rows.push(row);
            } else {
                metrics::counter!("saga_outbox_handover_expired_total").increment(1);
            }
        }
        if !queue.is_empty() {
            // More for another loop.
            self.work.notify_one();
        }
        rows
    }

    fn lock_confirmed(&self) -> std::sync::MutexGuard<'_, Confirmed> {
        self.confirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn confirmed(&self, sent: Vec<Uuid>) {
        let at = Utc::now();
        self.put_back(sent.into_iter().map(|id| (id, at)).collect());
    }

    fn take_confirmed(&self) -> Vec<(Uuid, DateTime<Utc>)> {
        let mut confirmed = self.lock_confirmed();
        confirmed.since = None;
        std::mem::take(&mut confirmed.rows)
    }

    /// Adds confirmed rows (or puts back those whose record failed), to be recorded with
    /// the next ones.
    fn put_back(&self, rows: Vec<(Uuid, DateTime<Utc>)>) {
        if rows.is_empty() {
            return;
        }
        let mut confirmed = self.lock_confirmed();
        confirmed.since.get_or_insert_with(Instant::now);
        confirmed.rows.extend(rows);
        drop(confirmed);
        self.recorder.notify_one();
    }

    /// How long the oldest confirmed row has waited to be recorded, if any waits.
    fn waited(&self) -> Option<Duration> {
        self.lock_confirmed().since.map(|since| since.elapsed())
    }
}

/// Adds the record of `confirmed` rows as sent, each with the time its confirm came, to
/// `writes`, counted: how many it marked. A row another relay has locked (it claimed the
/// row once its lease ran out) is skipped rather than waited for: that relay marks it sent
/// itself.
fn mark_sent(
    writes: &mut Writes,
    confirmed: &[(Uuid, DateTime<Utc>)],
) -> sqlx::Result<Option<Counted>> {
    if confirmed.is_empty() {
        return Ok(None);
    }
    let (ids, at): (Vec<Uuid>, Vec<DateTime<Utc>>) = confirmed.iter().copied().unzip();
    writes
        .add_counted(
            "WITH s AS (SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[]) AS s(message_id, at)),
                  free AS (SELECT o.id, s.at FROM outbox o JOIN s USING (message_id)
                           WHERE o.sent_at IS NULL FOR UPDATE OF o SKIP LOCKED)
             UPDATE outbox o SET sent_at = free.at FROM free WHERE o.id = free.id RETURNING 1",
            confirmed.len() * 24,
            |b| {
                b.add(&ids)?;
                b.add(&at)
            },
        )
        .map(Some)
}

/// Counts rows recorded sent once the statement that marked them is committed (`by`: the
/// writer's commit or the relay's recorder).
fn count_recorded(by: &'static str, marked: u64) {
    metrics::counter!("saga_outbox_recorded_total", "by" => by).increment(marked);
}

/// Rows published and confirmed, each with the time its confirm came, and since when the
/// oldest of them waits.
#[derive(Default)]
struct Confirmed {
    rows: Vec<(Uuid, DateTime<Utc>)>,
    since: Option<Instant>,
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
    pub fn after_commit(&mut self, f: impl FnOnce() + Send + Sync + 'static) {
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

    /// Writes the emitted events, commits `tx`, hands them to this process's relay through
    /// `outbox`, and runs what was asked to run after the commit.
    pub async fn commit(
        self,
        tx: Transaction<'_, Postgres>,
        traceparent: Option<&str>,
        outbox: &Outbox,
    ) -> sqlx::Result<()> {
        let mut rows = OutboxRows::default();
        self.add_to(&mut rows, traceparent)?;
        rows.commit(tx, outbox).await
    }
}

/// A row as the relay publishes it.
#[derive(Debug, sqlx::FromRow)]
struct RowToPublish {
    message_id: Uuid,
    event_type: String,
    routing_key: String,
    correlation_id: String,
    producer: String,
    occurred_at: DateTime<Utc>,
    body: String,
    traceparent: Option<String>,
}

/// A row a relay claimed.
#[derive(Debug, sqlx::FromRow)]
struct PendingRow {
    /// Where the row is: it is locked until the transaction ends, so it stays there, and
    /// marking it by this address costs no index lookup and no plan.
    at: String,
    #[sqlx(flatten)]
    row: RowToPublish,
}

impl RowToPublish {
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
    /// Rows claimed and published per transaction (confirms are pipelined per batch), and
    /// rows published per round from the in-memory queue.
    pub batch_size: i64,
    /// Longest time between two polls for rows to claim (whose lease ran out, say).
    pub poll_interval: Duration,
    pub confirm_timeout: Duration,
    /// Relay loops per process. Several let one loop's database work (claim, mark sent)
    /// overlap another's wait for confirms; SKIP LOCKED keeps their batches disjoint.
    /// Each commit in the process wakes one idle loop, so a commit made while one loop
    /// waits for its confirms is published by another at once.
    pub workers: usize,
    /// How long a row handed over in memory is this relay's alone: no relay claims it
    /// before. Longer than a confirm takes, short against the saga's deadline (it is how
    /// long the rows of a writer that died wait). Zero hands nothing over: every row is
    /// claimed.
    pub lease: Duration,
    /// How long confirmed rows may wait to be recorded sent together when no commit of
    /// the process records them first (each commit through its [`Outbox`] records what
    /// was confirmed before it). Off the saga's path: the lease keeps such a row from
    /// being claimed meanwhile.
    pub record_every: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            workers: 4,
            batch_size: 512,
            poll_interval: Duration::from_secs(1),
            confirm_timeout: Duration::from_secs(10),
            lease: Duration::from_secs(5),
            record_every: Duration::from_millis(100),
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

/// What became of a batch of rows published together, each row named by `K` (where it
/// is, or its message id).
struct Published<K> {
    sent: Vec<K>,
    /// Refused by the broker, or the one message it closed the channel over: these back
    /// off alone.
    refused: Vec<K>,
    failed: usize,
    first_error: Option<PublishError>,
}

impl<K> Published<K> {
    /// Publishes `rows` (named by `keys`) with their spans and sorts out the confirms.
    async fn publish(
        publisher: &ConfirmedPublisher,
        rows: impl Iterator<Item = (K, &RowToPublish)>,
    ) -> Published<K> {
        let (keys, spans_and_messages): (Vec<K>, Vec<_>) = rows
            .map(|(key, row)| {
                let span = row.publish_span();
                let message = row.to_message(&span);
                (key, (span, message))
            })
            .unzip();
        let (spans, messages): (Vec<_>, Vec<_>) = spans_and_messages.into_iter().unzip();
        let results = publisher.publish_all(&messages).await;
        let mut published = Published {
            sent: Vec::with_capacity(keys.len()),
            refused: Vec::new(),
            failed: 0,
            first_error: None,
        };
        for ((key, result), span) in keys.into_iter().zip(results).zip(&spans) {
            match result {
                Ok(()) => published.sent.push(key),
                Err(e) => {
                    span.record("error", tracing::field::display(&e));
                    published.failed += 1;
                    // A refusal is about this message; a broken channel is about none of
                    // them, except when the broker closed it over this very message: the
                    // first one to fail, with a channel-level error (ACCESS_REFUSED, say).
                    // Confirms come in publish order, so that one is the culprit, and it
                    // backs off alone instead of heading every batch.
                    if !e.breaks_channel()
                        || (published.failed == 1 && e.closed_channel_over_message())
                    {
                        published.refused.push(key);
                    }
                    published.first_error.get_or_insert(e);
                }
            }
        }
        if !published.refused.is_empty() {
            metrics::counter!("saga_outbox_refused_total")
                .increment(published.refused.len() as u64);
        }
        published
    }

    fn reason(&self) -> Option<String> {
        self.first_error.as_ref().map(|e| e.to_string())
    }

    /// How many were published, or the first failure.
    fn outcome(self, sent: usize, claimed: usize) -> Result<usize, RelayError> {
        metrics::counter!("saga_relay_published_total").increment(sent as u64);
        match self.first_error {
            None => Ok(sent),
            Some(first) => Err(RelayError::Publish {
                claimed,
                failed: self.failed,
                first,
            }),
        }
    }
}

/// The backoff of a refused row (`$2` the reason): it waits before its next try, so it
/// never blocks the rows behind it.
macro_rules! back_off {
    () => {
        "attempts = attempts + 1, last_error = $2,
         next_attempt_at = now() + make_interval(secs => LEAST(power(2, attempts), 60))"
    };
}

/// Publishes the outbox of one service database.
#[derive(Clone)]
pub struct OutboxRelay {
    pool: PgPool,
    amqp_url: String,
    name: String,
    settings: RelaySettings,
    link: LinkState,
    /// Work for one loop: rung when rows are handed over, once per commit of rows to claim
    /// in this process (by the doorbell task of [`OutboxRelay::run`]), and by a loop that
    /// met a full batch. One stored permit serves every commit made while all loops were
    /// busy.
    work: Arc<Notify>,
    /// Whether a loop should claim (rows were committed that are not handed over, a poll
    /// came, or a claim met a full batch), rather than only publish what is handed over.
    claim_due: Arc<AtomicBool>,
    /// `None` when the lease is zero.
    handover: Option<Arc<Handover>>,
}

impl OutboxRelay {
    /// `name` labels the broker connection in the RabbitMQ console.
    pub fn new(
        pool: PgPool,
        amqp_url: impl Into<String>,
        name: impl Into<String>,
        settings: RelaySettings,
    ) -> Self {
        let link = LinkState::default();
        let work = Arc::new(Notify::new());
        let handover = (!settings.lease.is_zero()).then(|| {
            Arc::new(Handover {
                lease: settings.lease,
                capacity: usize::try_from(settings.batch_size.max(1))
                    .unwrap_or(usize::MAX / 4)
                    .saturating_mul(4),
                link: link.clone(),
                queue: Mutex::default(),
                work: work.clone(),
                confirmed: Mutex::default(),
                recorder: Notify::new(),
            })
        });
        OutboxRelay {
            pool,
            amqp_url: amqp_url.into(),
            name: name.into(),
            settings,
            link,
            work,
            claim_due: Arc::new(AtomicBool::new(true)),
            handover,
        }
    }

    pub fn link(&self) -> LinkState {
        self.link.clone()
    }

    /// Where this process's writers commit, so that their rows are handed to this relay.
    pub fn outbox(&self) -> Outbox {
        Outbox {
            handover: self.handover.clone(),
        }
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
        let published =
            Published::publish(publisher, rows.iter().map(|r| (r.at.as_str(), &r.row))).await;
        // By the claimed rows' addresses, planned at each call and never cached: a plan
        // made while the outbox was nearly empty would read the whole table to find them
        // at every call after (docs/architecture.md, "Statements and their plans").
        if !published.refused.is_empty() {
            sqlx::query(concat!(
                "UPDATE outbox SET ",
                back_off!(),
                " WHERE ctid = ANY($1::text[]::tid[])"
            ))
            .bind(&published.refused)
            .bind(published.reason())
            .persistent(false)
            .execute(&mut *tx)
            .await?;
        }
        if !published.sent.is_empty() {
            sqlx::query("UPDATE outbox SET sent_at = now() WHERE ctid = ANY($1::text[]::tid[])")
                .bind(&published.sent)
                .persistent(false)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        let sent = published.sent.len();
        published.outcome(sent, rows.len())
    }

    /// [`OutboxRelay::relay_once`], asking for another claim when the batch was full (a
    /// backlog: another loop joins) or failed (after the pause).
    async fn claim(&self, publisher: &ConfirmedPublisher) -> Result<usize, RelayError> {
        let result = self.relay_once(publisher).await;
        let full = matches!(result, Ok(n) if n as i64 >= self.settings.batch_size);
        if full || result.is_err() {
            self.claim_due.store(true, Ordering::Release);
        }
        if full {
            self.work.notify_one();
        }
        result
    }

    /// Publishes rows handed over in memory, with no transaction: the confirmed ones go to
    /// be recorded sent, the refused ones back off in the database, and the rest (the
    /// channel broke) are left to their lease, to be claimed when it runs out.
    async fn publish_handed(
        &self,
        handover: &Handover,
        publisher: &ConfirmedPublisher,
        rows: Vec<RowToPublish>,
    ) -> Result<usize, RelayError> {
        let mut published =
            Published::publish(publisher, rows.iter().map(|r| (r.message_id, r))).await;
        let sent = published.sent.len();
        // The confirmed rows first: a failure below must not keep them from being recorded.
        handover.confirmed(std::mem::take(&mut published.sent));
        if !published.refused.is_empty() {
            sqlx::query(concat!(
                "UPDATE outbox SET ",
                back_off!(),
                " WHERE message_id = ANY($1) AND sent_at IS NULL"
            ))
            .bind(&published.refused)
            .bind(published.reason())
            .execute(&self.pool)
            .await?;
        }
        published.outcome(sent, rows.len())
    }

    /// Relays with `workers` loops until `shutdown`, reconnecting to the broker and the
    /// database as needed. The batches in flight when shutdown comes are finished first,
    /// and what they published is recorded sent.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut loops = tokio::task::JoinSet::new();
        let (work, stop, claim_due) = (self.work.clone(), shutdown.clone(), self.claim_due.clone());
        // The doorbell: every commit of rows to claim in this process wakes one loop.
        loops.spawn(async move {
            let mut commits = COMMITTED.subscribe();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    // The sender is a static, never dropped: this returns on a commit.
                    _ = commits.changed() => {
                        claim_due.store(true, Ordering::Release);
                        work.notify_one();
                    }
                }
            }
        });
        for worker in 0..self.settings.workers.max(1) {
            loops.spawn(self.clone().run_worker(worker, shutdown.clone()));
        }
        if let Some(handover) = self.handover.clone() {
            loops.spawn(self.clone().run_recorder(handover, shutdown.clone()));
        }
        while loops.join_next().await.is_some() {}
        if let Some(handover) = &self.handover
            && let Err(e) = self.record_sent(handover).await
        {
            tracing::warn!(relay = %self.name, error = %e, "published rows not recorded sent at shutdown; they will be published again");
        }
    }

    async fn run_worker(self, worker: usize, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        let mut link: Option<(Connection, ConfirmedPublisher)> = None;
        // Only the first loop polls: one look a poll interval finds rows whose lease ran
        // out or whose writer died.
        let polls = worker == 0;
        let batch = usize::try_from(self.settings.batch_size).unwrap_or(1);
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
            // Claims come first when due, so rows handed over cannot starve them.
            let claiming = self.claim_due.swap(false, Ordering::AcqRel);
            let handed = match &self.handover {
                Some(h) if !claiming => Some((h, h.take(batch))).filter(|(_, r)| !r.is_empty()),
                _ => None,
            };
            let result = if let Some((handover, rows)) = handed {
                self.publish_handed(handover, publisher, rows).await
            } else if claiming {
                self.claim(publisher).await
            } else {
                if self.wait_for_work(polls, &shutdown).await {
                    self.claim_due.store(true, Ordering::Release);
                }
                continue;
            };
            match result {
                Ok(_) => backoff.reset(),
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
            crate::amqp::close_quietly(&conn, "shutting down").await;
        }
    }

    /// Records sent what was published from memory and no commit of the process recorded
    /// within [`RelaySettings::record_every`], until `shutdown` (then [`OutboxRelay::run`] records the rest).
    async fn run_recorder(self, handover: Arc<Handover>, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        let every = self.settings.record_every;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = handover.recorder.notified() => {}
            }
            // Under load the process's commits take every confirmed row long before it is
            // `every` old, and this records nothing: it costs no transaction then.
            while let Some(waited) = handover.waited() {
                if waited < every {
                    if !amqp::pause(every - waited, &shutdown).await {
                        return;
                    }
                    continue;
                }
                match self.record_sent(&handover).await {
                    Ok(()) => backoff.reset(),
                    Err(e) => {
                        tracing::warn!(relay = %self.name, error = %e, "published rows not recorded sent; will retry");
                        if !amqp::pause(backoff.next_delay(), &shutdown).await {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Records every confirmed row sent, in one statement, with the time of its confirm.
    /// On failure they are kept for the next try.
    async fn record_sent(&self, handover: &Handover) -> sqlx::Result<()> {
        let confirmed = handover.take_confirmed();
        let recorded = async {
            let mut writes = Writes::default();
            let marked = mark_sent(&mut writes, &confirmed)?;
            let mut conn = self.pool.acquire().await?;
            let counts = writes.execute(&mut conn).await?;
            Ok::<_, sqlx::Error>(marked.map_or(0, |m| counts.get(m)))
        };
        match recorded.await {
            Ok(marked) => {
                count_recorded("recorder", marked);
                Ok(())
            }
            Err(e) => {
                handover.put_back(confirmed);
                Err(e)
            }
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

    /// Returns when this loop has work (rows handed over or committed in this process),
    /// after the poll interval if it `polls` (then true: time to claim), or at shutdown.
    async fn wait_for_work(&self, polls: bool, shutdown: &CancellationToken) -> bool {
        let poll = async {
            if polls {
                tokio::time::sleep(self.settings.poll_interval).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = poll => true,
            _ = self.work.notified() => false,
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
