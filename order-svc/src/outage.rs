//! The deadline does not run while order-svc cannot work (contract, step 7): not while it
//! cannot reach its broker or its database, and not while it is not running at all (a
//! crash, a restart, a deploy).
//!
//! Every replica that can work moves one row, `working_clock.working_at`, to now once per
//! sweep interval (a beat). A replica whose broker links are down does not beat, and nobody
//! beats while the database is away or no replica runs. The replica that beats after a
//! gap longer than [`missed_beats`] adds the whole gap to the deadline of every order open
//! then (an order placed during the gap gets only the part after it was placed), in the
//! transaction that moves the row, so each gap is added once whichever replica finds it.
//! Only then does its sweep run again. An outage of inventory-svc or payment-svc is not
//! counted: the order did wait on them.
//!
//! Because the record is in the database, a process that was killed during an outage and
//! started again knows when order-svc last worked: the outage before the restart, the
//! restart itself and the outage after it are one gap. A gap shorter than [`missed_beats`]
//! (a slow beat) is not added: at most that much of a stop goes uncounted.

use std::time::Duration;

use messaging::amqp::LinkState;
use sqlx::{PgConnection, PgPool};

use crate::saga::OrderStatus;

/// How long a gap between two beats must be to count as a stop: three intervals, and never
/// under two seconds (a beat delayed by a busy database is not a stop).
pub(crate) fn missed_beats(interval: Duration) -> Duration {
    (interval * 3).max(Duration::from_secs(2))
}

/// Beats for this replica.
#[derive(Debug)]
pub(crate) struct OutageClock {
    links: Vec<LinkState>,
    /// A gap longer than this is a stop.
    stop: Duration,
    /// Whether the last beat failed or was skipped (logged once per stop).
    stopped: bool,
}

impl OutageClock {
    pub(crate) fn new(links: Vec<LinkState>, interval: Duration) -> Self {
        OutageClock {
            links,
            stop: missed_beats(interval),
            stopped: false,
        }
    }

    /// Beats, when this replica can work; returns whether the sweep may run (every stop
    /// before now has been added to the open orders' deadlines).
    pub(crate) async fn settle(&mut self, pool: &PgPool) -> bool {
        if !self.links.iter().all(LinkState::is_up) {
            self.not_working("order-svc cannot reach its broker; deadlines stop");
            return false;
        }
        match beat(pool, self.stop).await {
            Ok(Some((gap, extended))) => {
                tracing::info!(
                    extended,
                    stopped_s = gap.as_secs_f64(),
                    "order-svc worked again; open orders' deadlines extended by the stop"
                );
                self.stopped = false;
                true
            }
            Ok(None) => {
                self.stopped = false;
                true
            }
            // Still unreachable: nobody beats, and the gap keeps growing.
            Err(e) => {
                self.not_working(&format!(
                    "order-svc cannot reach its database ({e}); deadlines stop"
                ));
                false
            }
        }
    }

    fn not_working(&mut self, why: &str) {
        if !self.stopped {
            tracing::warn!("{why}");
        }
        self.stopped = true;
    }
}

/// One beat: moves `working_clock` to now; when the last beat is more than `stop` ago,
/// first adds the gap to every open order's deadline. Returns the gap and how many orders
/// were extended, if it was a stop.
async fn beat(pool: &PgPool, stop: Duration) -> sqlx::Result<Option<(Duration, u64)>> {
    let mut tx = pool.begin().await?;
    // The first beat of a new database starts the clock; there was no stop before it.
    sqlx::query!(
        "INSERT INTO working_clock (working_at) VALUES (now()) ON CONFLICT (id) DO NOTHING"
    )
    .execute(&mut *tx)
    .await?;
    let gap = sqlx::query_scalar!(
        r#"SELECT EXTRACT(EPOCH FROM now() - working_at)::float8 AS "gap!" FROM working_clock FOR UPDATE"#
    )
    .fetch_one(&mut *tx)
    .await?;
    let gap = Duration::from_secs_f64(gap.max(0.0));
    let stopped = if gap > stop {
        Some((gap, extend_open_deadlines(&mut tx, gap).await?))
    } else {
        None
    };
    sqlx::query!("UPDATE working_clock SET working_at = now()")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(stopped)
}

/// Adds to the deadline of every open order the part of the last `gap` during which it
/// was open. Returns how many orders were extended. Planned at its call (it runs once per
/// stop), so it finds the open orders through their partial index at any table size.
async fn extend_open_deadlines(conn: &mut PgConnection, gap: Duration) -> sqlx::Result<u64> {
    let done = sqlx::query!(
        "UPDATE orders
         SET deadline = deadline + (now() - GREATEST(now() - make_interval(secs => $1), created_at))
         WHERE status = ANY($2)",
        gap.as_secs_f64(),
        &OrderStatus::OPEN[..] as &[OrderStatus],
    )
    .persistent(false)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_is_three_beats_and_never_under_two_seconds() {
        assert_eq!(missed_beats(Duration::from_secs(1)), Duration::from_secs(3));
        assert_eq!(
            missed_beats(Duration::from_millis(100)),
            Duration::from_secs(2)
        );
    }
}
