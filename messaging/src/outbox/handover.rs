//! The rows a process's writers hand to its relay in memory once committed, and the
//! confirmed ones waiting to be recorded sent by the next commit (or the relay's recorder).
//!
//! At shutdown the relay closes its intake: no commit hands it rows any more (their rows are
//! written with no lease, for any relay to claim), and it waits for the commits that chose
//! it before, so that every row handed over is in its queue when it drains. What it then
//! cannot publish it gives back ([`give_back`]): the lease is cleared, and any relay of the
//! database claims the rows at its next look instead of when the lease ends.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::amqp::LinkState;
use crate::writes::{Counted, Writes};

use super::row::RowToPublish;

/// Where the writers of one process commit outbox rows. With the process's relay running
/// and connected, each transaction's rows are handed to it in memory once committed;
/// otherwise (`Outbox::default()`, a tool, a test) they wait for a relay to claim them.
#[derive(Clone, Default)]
pub struct Outbox {
    pub(super) handover: Option<Arc<Handover>>,
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

    /// The relay that takes `rows` more rows now, if there is one: running and not
    /// draining, connected to the broker, and with room in its queue. Until the returned
    /// [`Taking`] hands the rows over (or is dropped: the commit failed), a drain of the
    /// relay waits for it.
    pub(super) fn taker(&self, rows: usize) -> Option<Taking<'_>> {
        let handover = self
            .handover
            .as_deref()
            .filter(|h| rows > 0 && h.link.is_up() && h.queued() + rows <= h.capacity)?;
        let mut intake = handover.lock_intake();
        if intake.closed {
            return None;
        }
        intake.committing += 1;
        Some(Taking { handover })
    }
}

/// A commit whose rows go to the relay once committed: leased to it, then handed over.
pub(super) struct Taking<'a> {
    handover: &'a Handover,
}

impl Taking<'_> {
    /// How long the rows are the relay's alone.
    pub(super) fn lease(&self) -> Duration {
        self.handover.lease
    }

    /// Hands the committed rows to the relay.
    pub(super) fn hand(self, rows: Vec<RowToPublish>) {
        self.handover.hand(rows);
    }
}

impl Drop for Taking<'_> {
    fn drop(&mut self) {
        let mut intake = self.handover.lock_intake();
        intake.committing -= 1;
        if intake.closed && intake.committing == 0 {
            self.handover.intake_done.notify_waiters();
        }
    }
}

/// Whether the relay still takes rows, and how many commits chose it and have not handed
/// their rows over yet.
#[derive(Default)]
pub(super) struct Intake {
    closed: bool,
    committing: usize,
}

/// Rows handed from the writers of a process to its relay, and the confirmed ones waiting
/// to be recorded sent.
pub(super) struct Handover {
    /// How long a handed-over row is the relay's alone.
    pub(super) lease: Duration,
    /// Most rows queued; a writer that finds the queue full leaves its rows to be claimed.
    pub(super) capacity: usize,
    pub(super) link: LinkState,
    pub(super) queue: Mutex<VecDeque<(Instant, RowToPublish)>>,
    /// The relay's loops wait on it.
    pub(super) work: Arc<Notify>,
    /// Published and confirmed, waiting to be recorded sent.
    pub(super) confirmed: Mutex<Confirmed>,
    pub(super) recorder: Notify,
    pub(super) intake: Mutex<Intake>,
    /// Rung when the last commit that chose the relay is done after the intake closed.
    pub(super) intake_done: Notify,
    /// Rows the draining relay will not publish, to give back.
    pub(super) given_back: Mutex<Vec<Uuid>>,
}

impl Handover {
    pub(super) fn queued(&self) -> usize {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub(super) fn hand(&self, rows: Vec<RowToPublish>) {
        let now = Instant::now();
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(rows.into_iter().map(|row| (now, row)));
        self.work.notify_one();
    }

    /// Up to `max` rows to publish, oldest first. Rows that waited half their lease are
    /// dropped instead: they are left to the relays that claim, so that a row is never
    /// published from memory while a claim may take it (given back at once when the relay
    /// drains).
    pub(super) fn take(&self, max: usize) -> Vec<RowToPublish> {
        let draining = self.is_closed();
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let mut rows = Vec::new();
        let mut expired = Vec::new();
        while rows.len() < max
            && let Some((handed, row)) = queue.pop_front()
        {
            if handed.elapsed() < self.lease / 2 {
                rows.push(row);
            } else {
                metrics::counter!("saga_outbox_handover_expired_total").increment(1);
                expired.push(row.message_id);
            }
        }
        if draining {
            self.give_back(expired);
        }
        if !queue.is_empty() {
            // More for another loop.
            self.work.notify_one();
        }
        rows
    }

    fn lock_intake(&self) -> std::sync::MutexGuard<'_, Intake> {
        self.intake.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn is_closed(&self) -> bool {
        self.lock_intake().closed
    }

    /// Takes no more rows, and returns once every commit that chose this relay before has
    /// handed its rows over (or failed): from then on, everything handed over is queued.
    pub(super) async fn close(&self) {
        loop {
            let done = self.intake_done.notified();
            tokio::pin!(done);
            // Registered before the count is read, so that the last commit's ring is not
            // missed.
            done.as_mut().enable();
            {
                let mut intake = self.lock_intake();
                intake.closed = true;
                if intake.committing == 0 {
                    return;
                }
            }
            done.await;
        }
    }

    /// Notes rows the draining relay will not publish, to give back.
    pub(super) fn give_back(&self, rows: impl IntoIterator<Item = Uuid>) {
        self.given_back
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(rows);
    }

    /// What the drained relay leaves: the rows it gave up on and those still queued.
    pub(super) fn take_unpublished(&self) -> Vec<Uuid> {
        let mut rows = std::mem::take(
            &mut *self
                .given_back
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        rows.extend(queue.drain(..).map(|(_, row)| row.message_id));
        rows
    }

    pub(super) fn lock_confirmed(&self) -> std::sync::MutexGuard<'_, Confirmed> {
        self.confirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn confirmed(&self, sent: Vec<Uuid>) {
        let at = Utc::now();
        self.put_back(sent.into_iter().map(|id| (id, at)).collect());
    }

    pub(super) fn take_confirmed(&self) -> Vec<(Uuid, DateTime<Utc>)> {
        let mut confirmed = self.lock_confirmed();
        confirmed.since = None;
        std::mem::take(&mut confirmed.rows)
    }

    /// Adds confirmed rows (or puts back those whose record failed), to be recorded with
    /// the next ones.
    pub(super) fn put_back(&self, rows: Vec<(Uuid, DateTime<Utc>)>) {
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
    pub(super) fn waited(&self) -> Option<Duration> {
        self.lock_confirmed().since.map(|since| since.elapsed())
    }
}

/// Gives unsent rows back: clears their lease, as if they had been written with none, so
/// that any relay of the database claims them at its next look (a commit of its process
/// or its poll) instead of when the lease ends. Returns how many were still unsent.
pub(super) async fn give_back(pool: &PgPool, rows: &[Uuid]) -> sqlx::Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query(
        "UPDATE outbox SET next_attempt_at = NULL WHERE message_id = ANY($1) AND sent_at IS NULL",
    )
    .bind(rows)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Adds the record of `confirmed` rows as sent, each with the time its confirm came, to
/// `writes`, counted: how many it marked. A row another relay has locked (it claimed the
/// row once its lease ran out) is skipped rather than waited for: that relay marks it sent
/// itself.
pub(super) fn mark_sent(
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
pub(super) fn count_recorded(by: &'static str, marked: u64) {
    metrics::counter!("saga_outbox_recorded_total", "by" => by).increment(marked);
}

/// Rows published and confirmed, each with the time its confirm came, and since when the
/// oldest of them waits.
#[derive(Default)]
pub(super) struct Confirmed {
    pub(super) rows: Vec<(Uuid, DateTime<Utc>)>,
    pub(super) since: Option<Instant>,
}
