//! Housekeeping of the messaging tables: sent outbox rows and old inbox rows are deleted
//! after a retention, in small batches (each its own short transaction, so no long locks),
//! and the outbox and inbox gauges are refreshed for `/metrics`.
//!
//! Deleting inbox rows ends deduplication by message id for messages older than the
//! retention; a redelivery that late is still harmless because every handler also keeps a
//! natural key (one reservation per order, one payment per order, the order's status),
//! which makes a repeated event under any id change nothing.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Rows deleted per statement.
const PURGE_BATCH: i64 = 1000;

#[derive(Debug, Clone)]
pub struct Retention {
    /// Sent outbox rows older than this are deleted.
    pub outbox: Duration,
    /// Inbox rows older than this are deleted.
    pub inbox: Duration,
    /// How often to purge.
    pub purge_every: Duration,
    /// How often to refresh the gauges.
    pub gauges_every: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            outbox: Duration::from_secs(7 * 24 * 3600),
            inbox: Duration::from_secs(7 * 24 * 3600),
            purge_every: Duration::from_secs(60),
            gauges_every: Duration::from_secs(5),
        }
    }
}

/// How many rows one purge deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub outbox: u64,
    pub inbox: u64,
}

fn interval_secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Deletes sent outbox rows and inbox rows past their retention, batch by batch. Each
/// statement is planned at its call, never cached: a plan cached while the table was
/// nearly empty would read all of it, once a minute, however large it grew
/// (docs/architecture.md, "Statements and their plans").
pub async fn purge_once(pool: &PgPool, retention: &Retention) -> sqlx::Result<Purged> {
    let mut purged = Purged::default();
    loop {
        let n = sqlx::query!(
            "DELETE FROM outbox WHERE id IN (
                 SELECT id FROM outbox WHERE sent_at < now() - make_interval(secs => $1)
                 ORDER BY sent_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
            interval_secs(retention.outbox),
            PURGE_BATCH,
        )
        .persistent(false)
        .execute(pool)
        .await?
        .rows_affected();
        purged.outbox += n;
        if n < PURGE_BATCH as u64 {
            break;
        }
    }
    loop {
        let n = sqlx::query!(
            "DELETE FROM inbox WHERE (consumer, message_id) IN (
                 SELECT consumer, message_id FROM inbox WHERE received_at < now() - make_interval(secs => $1)
                 ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
            interval_secs(retention.inbox),
            PURGE_BATCH,
        )
        .persistent(false)
        .execute(pool)
        .await?
        .rows_affected();
        purged.inbox += n;
        if n < PURGE_BATCH as u64 {
            break;
        }
    }
    Ok(purged)
}

/// Refreshes `saga_outbox_backlog`, `saga_outbox_oldest_unsent_seconds` and
/// `saga_inbox_rows`.
pub(crate) async fn refresh_gauges(pool: &PgPool) -> sqlx::Result<()> {
    let (backlog, oldest) = crate::outbox::backlog(pool).await?;
    metrics::gauge!("saga_outbox_backlog").set(backlog as f64);
    metrics::gauge!("saga_outbox_oldest_unsent_seconds").set(oldest.unwrap_or(0.0));
    // The planner's estimate: exact counts of a large inbox would scan it.
    let inbox: f64 = sqlx::query_scalar!(
        r#"SELECT GREATEST(reltuples, 0)::float8 AS "rows!" FROM pg_class WHERE relname = 'inbox'"#
    )
    .fetch_optional(pool)
    .await?
    .unwrap_or(0.0);
    metrics::gauge!("saga_inbox_rows").set(inbox);
    Ok(())
}

/// Purges and refreshes gauges until shutdown, each on its own period: a purge interval
/// shorter than the gauges' is honoured too.
pub async fn run(pool: PgPool, retention: Retention, shutdown: CancellationToken) {
    let mut last_purge: Option<Instant> = None;
    let mut last_gauges: Option<Instant> = None;
    loop {
        if last_gauges.is_none_or(|t| t.elapsed() >= retention.gauges_every) {
            last_gauges = Some(Instant::now());
            if let Err(e) = refresh_gauges(&pool).await {
                tracing::debug!(error = %e, "could not refresh messaging gauges");
            }
        }
        if last_purge.is_none_or(|t| t.elapsed() >= retention.purge_every) {
            last_purge = Some(Instant::now());
            match purge_once(&pool, &retention).await {
                Ok(p) if p.outbox + p.inbox > 0 => {
                    tracing::info!(
                        outbox = p.outbox,
                        inbox = p.inbox,
                        "purged old messaging rows"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "housekeeping failed; will retry"),
            }
        }
        // Sleep until whichever of the two is due first.
        let due = |last: Option<Instant>, every: Duration| {
            last.map_or(Duration::ZERO, |t| every.saturating_sub(t.elapsed()))
        };
        let next = due(last_gauges, retention.gauges_every)
            .min(due(last_purge, retention.purge_every))
            .max(Duration::from_millis(10));
        if !crate::amqp::pause(next, &shutdown).await {
            return;
        }
    }
}
