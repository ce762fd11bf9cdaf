//! The deadline sweep: an order still `pending` or `reserved` when its deadline passes is
//! cancelled (reason `timeout`). Several replicas may sweep at once: each locks the rows it
//! takes with SKIP LOCKED, and the saga refuses to cancel an order twice.

use std::time::Duration;

use messaging::outbox::{Emitter, Outbox};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::outage::OutageClock;
use crate::saga::{self, OrderInput};
use crate::{SERVICE, store};

/// Rows cancelled per transaction.
const SWEEP_BATCH: i64 = 200;

/// Cancels one batch of overdue orders; returns how many were cancelled.
pub(crate) async fn sweep_once(pool: &PgPool, outbox: &Outbox) -> sqlx::Result<usize> {
    let mut tx = pool.begin().await?;
    let loaded = store::lock_overdue(&mut tx, SWEEP_BATCH).await?;
    let mut now = loaded.clone();
    let mut out = Emitter::new(SERVICE, None);
    let mut cancelled = 0;
    for order in loaded.orders.values() {
        match saga::decide(Some(order), &OrderInput::Deadline(order.order_id)) {
            Ok(plan) => {
                now.apply(plan, None, &mut out);
                cancelled += 1;
            }
            // The sweep takes only open orders, which the deadline always closes.
            Err(refusal) => {
                tracing::warn!(order_id = %order.order_id, ?refusal, "deadline refused")
            }
        }
    }
    // The cancellations of one sweep start one trace, rooted at this span (made only when
    // there are some, so an idle sweep exports nothing).
    let trace = (cancelled > 0)
        .then(|| {
            messaging::trace::traceparent_of(&tracing::info_span!("deadline sweep", cancelled))
        })
        .flatten();
    store::commit_staged(tx, &loaded, &now, vec![(out, trace.as_deref())], outbox).await?;
    Ok(cancelled)
}

/// Sweeps every `interval` until shutdown; never while order-svc cannot work (`clock`,
/// which beats before each sweep).
pub(crate) async fn run(
    pool: PgPool,
    outbox: Outbox,
    interval: Duration,
    mut clock: OutageClock,
    shutdown: CancellationToken,
) {
    loop {
        if clock.settle(&pool).await {
            let swept = sweep_once(&pool, &outbox).await;
            // Measured only here, once the outage clock has settled (the outage already
            // added to the deadlines), so an outage of order-svc never shows as overdue.
            // What a working sweep leaves is under one interval; more means orders stay
            // open that nobody cancels (alert SagaPastDeadline).
            if let Ok(mut conn) = pool.acquire().await
                && let Ok(seconds) = store::most_overdue_seconds(&mut conn).await
            {
                metrics::gauge!("saga_order_overdue_seconds").set(seconds.max(0.0));
            }
            match swept {
                Ok(n) if n as i64 >= SWEEP_BATCH => continue,
                Ok(n) if n > 0 => {
                    tracing::info!(cancelled = n, "cancelled orders past their deadline")
                }
                Ok(_) => {}
                // A database that stopped answering stops the next beat.
                Err(e) => tracing::warn!(error = %e, "deadline sweep failed; will retry"),
            }
        }
        if !messaging::amqp::pause(interval, &shutdown).await {
            return;
        }
    }
}
