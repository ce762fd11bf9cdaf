//! Applies a [`Plan`] in the caller's transaction: the one place the HTTP routes' and the
//! deadline sweep's decisions reach order-svc's tables and outbox (the consumer stages a
//! batch's in memory, see [`crate::handlers`]). Every event an order emits, and the message
//! that moved it, go in its history.

use chrono::Utc;
use messaging::outbox::Emitter;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::saga::{OrderWrite, Outcome, Plan};
use crate::store;

/// Whether the plan was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    Written,
    /// The order to insert carries an idempotency key another order already holds: nothing
    /// was written.
    KeyTaken,
}

/// Applies `plan`; `cause` is the message (type, id) that led to it, if any.
pub(crate) async fn apply(
    tx: &mut PgConnection,
    out: &mut Emitter,
    plan: Plan,
    cause: Option<(&str, Uuid)>,
) -> sqlx::Result<Applied> {
    let order_id = plan.order_id;
    match &plan.write {
        Some(OrderWrite::Insert {
            order,
            deadline,
            idempotency,
        }) => {
            let inserted = store::insert_order(tx, order, *deadline, idempotency.as_ref()).await?;
            if inserted.is_none() {
                return Ok(Applied::KeyTaken);
            }
        }
        Some(OrderWrite::Move { to, reason }) => {
            store::set_status(tx, order_id, *to, reason.as_deref()).await?;
        }
        None => {}
    }
    if let Some((event_type, message_id)) = cause {
        store::record_history(tx, order_id, event_type, message_id).await?;
    }
    for event in plan.emit {
        let envelope = out.emit(event);
        let (event_type, message_id) = (envelope.event_type.clone(), envelope.message_id);
        store::record_history(tx, order_id, &event_type, message_id).await?;
    }
    if let Some(outcome) = plan.outcome {
        out.after_commit(move || record_outcome(outcome));
    }
    Ok(Applied::Written)
}

/// Counts a saga that ended, and how long it took: after the commit that ended it, so a
/// transaction rolled back (a batch handled again message by message) counts nothing.
pub(crate) fn record_outcome(outcome: Outcome) {
    let status = outcome.status.as_str();
    metrics::counter!("saga_outcomes_total", "status" => status).increment(1);
    let elapsed = (Utc::now() - outcome.started).num_milliseconds().max(0) as f64 / 1000.0;
    metrics::histogram!("saga_duration_seconds", "status" => status).record(elapsed);
}
