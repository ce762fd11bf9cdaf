//! The relay: publishes what is handed over, claims what is not (leases run out, rows of
//! other writers), backs refused rows off alone, and records the confirmed ones sent. At
//! shutdown it drains: once no writer of its process hands it rows any more, it publishes
//! what is queued, records it sent, and gives back the rows it could not publish.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::Connection;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::amqp::{self, Backoff, LinkState};
use crate::publisher::{ConfirmedPublisher, PublishError};
use crate::writes::Writes;

use super::COMMITTED;
use super::handover::{Handover, Outbox, count_recorded, mark_sent};
use super::row::{PendingRow, RowToPublish};

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

/// Backs refused rows off, the rows `$1` as `$which` finds them and `$2` the reason: each
/// waits before its next try, so it never blocks the rows behind it.
macro_rules! back_off {
    ($which:literal, $rows:expr, $reason:expr) => {
        sqlx::query!(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $2,
                 next_attempt_at = now() + make_interval(secs => LEAST(power(2, attempts), 60))
             WHERE "
                + $which,
            $rows,
            $reason,
        )
    };
}

/// Publishes the outbox of one service database.
#[derive(Clone)]
pub struct OutboxRelay {
    pub(super) pool: PgPool,
    amqp_url: String,
    pub(super) name: String,
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
                intake: Mutex::default(),
                intake_done: Notify::new(),
                given_back: Mutex::default(),
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
        let rows: Vec<PendingRow> = sqlx::query!(
            r#"SELECT ctid::text AS "at!", message_id, event_type, routing_key, correlation_id, producer, occurred_at, body, traceparent
               FROM outbox WHERE sent_at IS NULL AND (next_attempt_at IS NULL OR next_attempt_at <= now())
               ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"#,
            self.settings.batch_size,
        )
        .map(|r| PendingRow {
            at: r.at,
            row: RowToPublish {
                message_id: r.message_id,
                event_type: r.event_type,
                routing_key: r.routing_key,
                correlation_id: r.correlation_id,
                producer: r.producer,
                occurred_at: r.occurred_at,
                body: r.body,
                traceparent: r.traceparent,
            },
        })
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
            back_off!(
                "ctid = ANY($1::text[]::tid[])",
                &published.refused[..] as &[&str],
                published.reason()
            )
            .persistent(false)
            .execute(&mut *tx)
            .await?;
        }
        if !published.sent.is_empty() {
            sqlx::query!(
                "UPDATE outbox SET sent_at = now() WHERE ctid = ANY($1::text[]::tid[])",
                &published.sent[..] as &[&str],
            )
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
    /// channel broke) are left to their lease, to be claimed when it runs out (given back
    /// at once when the relay drains).
    pub(super) async fn publish_handed(
        &self,
        handover: &Handover,
        publisher: &ConfirmedPublisher,
        rows: Vec<RowToPublish>,
    ) -> Result<usize, RelayError> {
        let mut published =
            Published::publish(publisher, rows.iter().map(|r| (r.message_id, r))).await;
        if published.failed > published.refused.len() && handover.is_closed() {
            let settled: std::collections::HashSet<_> =
                published.sent.iter().chain(&published.refused).collect();
            handover.give_back(
                rows.iter()
                    .map(|r| r.message_id)
                    .filter(|id| !settled.contains(id)),
            );
        }
        let sent = published.sent.len();
        // The confirmed rows first: a failure below must not keep them from being recorded.
        handover.confirmed(std::mem::take(&mut published.sent));
        if !published.refused.is_empty() {
            back_off!(
                "message_id = ANY($1) AND sent_at IS NULL",
                &published.refused,
                published.reason()
            )
            .execute(&self.pool)
            .await?;
        }
        published.outcome(sent, rows.len())
    }

    /// Relays with `workers` loops until `stop`, reconnecting to the broker and the
    /// database as needed, then drains. `stop` must come once this process writes no more
    /// outbox rows (its consumer, HTTP server and timers are done): the drain closes the
    /// intake (a commit still under way that chose this relay hands its rows first), lets
    /// the loops finish their batches and publish every row still queued, records what
    /// was published sent, and gives back what was not.
    pub async fn run(self, stop: CancellationToken) {
        // The loops' own stop, once nothing more can be handed over.
        let shutdown = CancellationToken::new();
        let mut loops = tokio::task::JoinSet::new();
        let (work, doorbell_stop, claim_due) =
            (self.work.clone(), shutdown.clone(), self.claim_due.clone());
        // The doorbell: every commit of rows to claim in this process wakes one loop.
        loops.spawn(async move {
            let mut commits = COMMITTED.subscribe();
            loop {
                tokio::select! {
                    _ = doorbell_stop.cancelled() => return 0,
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
            let recorder = self.clone().run_recorder(handover, shutdown.clone());
            loops.spawn(async move {
                recorder.await;
                0
            });
        }
        stop.cancelled().await;
        let started = Instant::now();
        if let Some(handover) = &self.handover {
            handover.close().await;
        }
        shutdown.cancel();
        let mut published = 0;
        while let Some(drained) = loops.join_next().await {
            published += drained.unwrap_or(0);
        }
        if let Some(handover) = &self.handover {
            self.finish_drain(handover, published, started).await;
        }
    }

    /// One loop until `shutdown`; then it publishes what is still handed over (the drain)
    /// and returns how many rows that was.
    async fn run_worker(self, worker: usize, shutdown: CancellationToken) -> usize {
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
        let drained = match (&self.handover, &link) {
            (Some(handover), Some((_, publisher))) if publisher.is_usable() => {
                self.publish_queued(handover, publisher, batch).await
            }
            _ => 0,
        };
        self.link.set(false);
        if let Some((conn, _)) = link {
            crate::amqp::close_quietly(&conn, "shutting down").await;
        }
        drained
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
    pub(super) async fn record_sent(&self, handover: &Handover) -> sqlx::Result<()> {
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
