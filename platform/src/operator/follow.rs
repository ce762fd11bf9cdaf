//! Following messages a job sent back to the service until each has ended: applied (the
//! service's inbox holds its id now), a duplicate (the inbox held it before it was sent,
//! so the service drops it), or back in the dead-letter queue (found there carrying the
//! job's id, with the reason it failed again). What has not ended when the job stops
//! waiting is reported pending.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use super::OperatorState;
use super::dead_letter::DeadLetter;
use super::scan::Scan;

/// How long a job keeps following after the last message it saw end.
const PATIENCE: Duration = Duration::from_secs(20);
/// Between two looks.
const PAUSE: Duration = Duration::from_millis(500);
/// Message ids per inbox query.
const CHUNK: usize = 5_000;
/// Message ids kept per reason, as examples.
const EXAMPLES: usize = 10;
/// Message ids a job's audit record names at most.
pub const NAMED_MAX: usize = 1_000;

/// The messages one job sent, and what became of them.
#[derive(Debug, Default)]
pub struct Follow {
    /// Sent, not handled before, not seen to end yet.
    waiting: HashSet<Uuid>,
    /// Sent without an id the inbox could hold (a body that is not an envelope): they can
    /// only come back.
    untracked: u64,
    applied: u64,
    duplicate: u64,
    /// Sent ones found back in the dead-letter queue, by cause and reason.
    back: BTreeMap<(String, String), (u64, Vec<String>)>,
    back_tracked: HashSet<Uuid>,
    back_untracked: u64,
    /// Taken but not sent (the broker refused the copy); they stay in the queue.
    not_sent: u64,
    /// The ids of the first [`NAMED_MAX`] sent, for the audit record.
    named: Vec<String>,
}

/// Which of `ids` the service's inbox holds.
pub async fn in_inbox(state: &OperatorState, ids: &[Uuid]) -> sqlx::Result<HashSet<Uuid>> {
    let mut found = HashSet::new();
    for chunk in ids.chunks(CHUNK) {
        let rows: Vec<Uuid> = sqlx::query_scalar(
            "SELECT message_id FROM inbox WHERE consumer = $1 AND message_id = ANY($2)",
        )
        .bind(state.service())
        .bind(chunk)
        .fetch_all(state.pool())
        .await?;
        found.extend(rows);
    }
    Ok(found)
}

fn uuid_of(d: &DeadLetter) -> Option<Uuid> {
    d.message_id
        .as_deref()
        .and_then(|m| Uuid::parse_str(m).ok())
}

impl Follow {
    /// `d` was sent; `handled_before` when the inbox already held it.
    pub fn sent(&mut self, d: &DeadLetter, handled_before: bool) {
        if let Some(id) = &d.message_id
            && self.named.len() < NAMED_MAX
        {
            self.named.push(id.clone());
        }
        match uuid_of(d) {
            Some(_) if handled_before => self.duplicate += 1,
            Some(id) => {
                self.waiting.insert(id);
            }
            None => self.untracked += 1,
        }
    }

    /// The ids of the messages sent (the first [`NAMED_MAX`]).
    pub fn named(&self) -> Vec<String> {
        self.named.clone()
    }

    pub fn not_sent(&mut self) {
        self.not_sent += 1;
    }

    fn back_count(&self) -> u64 {
        self.back.values().map(|(n, _)| n).sum()
    }

    fn pending(&self) -> u64 {
        self.waiting.len() as u64 + self.untracked.saturating_sub(self.back_untracked)
    }

    /// The outcome so far, as a job reports it.
    pub fn outcome(&self) -> Value {
        let reasons: Vec<Value> = self
            .back
            .iter()
            .map(|((cause, error), (count, ids))| {
                json!({"cause": cause, "error": error, "count": count, "message_ids": ids})
            })
            .collect();
        json!({
            "applied": self.applied,
            "duplicate": self.duplicate,
            "dead_lettered": self.back_count(),
            "pending": self.pending(),
            "not_sent": self.not_sent,
            "reasons": reasons,
        })
    }

    /// Follows until everything ended or nothing ended for [`PATIENCE`], writing the
    /// outcome so far to the job after each look (`matched` and `sent` as the job got them).
    pub async fn run(
        &mut self,
        state: &OperatorState,
        job: Uuid,
        (matched, sent): (u64, u64),
    ) -> anyhow::Result<()> {
        let mut last_change = Instant::now();
        loop {
            let before = (self.pending(), self.back_count());
            let waiting: Vec<Uuid> = self.waiting.iter().copied().collect();
            let applied = in_inbox(state, &waiting).await?;
            self.applied += applied.len() as u64;
            self.waiting.retain(|id| !applied.contains(id));
            if self.pending() > 0 {
                self.look_for_returns(state, job).await?;
            }
            super::jobs::progress(state.pool(), job, matched, sent, &self.outcome()).await?;
            if self.pending() == 0 {
                return Ok(());
            }
            if (self.pending(), self.back_count()) != before {
                last_change = Instant::now();
            } else if last_change.elapsed() > PATIENCE {
                return Ok(());
            }
            tokio::time::sleep(PAUSE).await;
        }
    }

    /// Scans the dead-letter queue for messages carrying `job`'s id that were not counted
    /// yet.
    async fn look_for_returns(&mut self, state: &OperatorState, job: Uuid) -> anyhow::Result<()> {
        let job = job.to_string();
        let mut scan = Scan::open(state, "follow").await?;
        let mut untracked_back = 0;
        while let Some(delivery) = scan.next().await? {
            let d = DeadLetter::describe(&delivery);
            if d.redrive_job.as_deref() != Some(job.as_str()) {
                continue;
            }
            let counted = match uuid_of(&d) {
                Some(id) if self.waiting.remove(&id) => self.back_tracked.insert(id),
                Some(_) => false,
                None => {
                    untracked_back += 1;
                    untracked_back > self.back_untracked
                }
            };
            if counted {
                let entry = self
                    .back
                    .entry((d.cause.clone(), d.error.clone().unwrap_or_default()))
                    .or_default();
                entry.0 += 1;
                if entry.1.len() < EXAMPLES {
                    entry.1.push(d.message_id.clone().unwrap_or_default());
                }
            }
        }
        self.back_untracked = self.back_untracked.max(untracked_back);
        scan.close().await;
        Ok(())
    }
}
