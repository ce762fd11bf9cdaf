//! The outbox rows of one transaction: gathered from its emitters, written with one
//! statement, committed, and handed to the process's relay.

use std::time::Duration;

use chrono::{DateTime, Utc};

use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use crate::envelope::Envelope;
use crate::event::{Event, EventKind};
use crate::writes::Writes;

use super::handover::{Outbox, count_recorded, mark_sent};
use super::row::RowToPublish;
use super::rows_committed;

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
        self.add_leased(&mut writes, handover.as_ref().map(|h| h.lease()))?;
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
