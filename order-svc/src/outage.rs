//! The deadline does not run while order-svc cannot work (contract, step 7).
//!
//! The deadline sweep asks this clock before it cancels anything. While the broker links
//! (consumer or relay) are down, or the database does not answer, the clock records an
//! outage and the sweep cancels nothing. When both are back, every order still open gets
//! the time it spent in the outage added to its deadline (an order placed during the outage
//! gets only the part after it was placed), and only then does the sweep run again. An
//! outage of inventory-svc or payment-svc is not counted: the order did wait on them.
//!
//! The clock lives in the process. A restart during an outage forgets the part before the
//! restart, and two replicas that both saw one outage each extend for it: deadlines then
//! run longer, never shorter, so no order is cancelled because of the outage.

use std::time::{Duration, Instant};

use messaging::amqp::LinkState;
use sqlx::PgPool;

use crate::saga::OrderStatus;

/// Tracks the current outage, if any.
#[derive(Debug)]
pub(crate) struct OutageClock {
    links: Vec<LinkState>,
    since: Option<Instant>,
}

impl OutageClock {
    pub(crate) fn new(links: Vec<LinkState>) -> Self {
        OutageClock { links, since: None }
    }

    /// Records that order-svc cannot work right now.
    pub(crate) fn down(&mut self) {
        if self.since.is_none() {
            tracing::warn!("order-svc cannot reach its broker or database; deadlines stop");
        }
        self.since.get_or_insert_with(Instant::now);
    }

    /// Whether the sweep may run: true when order-svc can work and every outage before now
    /// has been added to the deadlines of the open orders.
    pub(crate) async fn settle(&mut self, pool: &PgPool) -> bool {
        if !self.links.iter().all(LinkState::is_up) {
            self.down();
            return false;
        }
        let Some(since) = self.since else {
            return true;
        };
        match extend_open_deadlines(pool, since.elapsed()).await {
            Ok(extended) => {
                tracing::info!(
                    extended,
                    outage_s = since.elapsed().as_secs_f64(),
                    "outage over; open orders' deadlines extended by it"
                );
                self.since = None;
                true
            }
            // Still unreachable: the outage goes on, and keeps counting.
            Err(e) => {
                tracing::warn!(error = %e, "cannot extend deadlines yet");
                false
            }
        }
    }
}

/// Adds to the deadline of every open order the part of the last `outage` during which it
/// was open. Returns how many orders were extended. Planned at its call (it runs once per
/// outage), so it finds the open orders through their partial index at any table size.
pub(crate) async fn extend_open_deadlines(pool: &PgPool, outage: Duration) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "UPDATE orders
         SET deadline = deadline + (now() - GREATEST(now() - make_interval(secs => $1), created_at))
         WHERE status = ANY($2)",
    )
    .bind(outage.as_secs_f64())
    .bind(&OrderStatus::OPEN[..])
    .persistent(false)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
