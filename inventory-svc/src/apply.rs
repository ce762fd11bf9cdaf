//! Applies a [`Plan`] in the caller's transaction: the one place inventory-svc's decisions
//! reach its tables and outbox.

use messaging::outbox::Emitter;
use sqlx::PgConnection;

use crate::saga::Plan;
use crate::store;

pub(crate) async fn apply(
    tx: &mut PgConnection,
    out: &mut Emitter,
    plan: Plan,
) -> sqlx::Result<()> {
    for (sku, levels) in &plan.stock {
        store::set_stock(tx, sku, levels).await?;
    }
    if let Some((order_id, reservation)) = &plan.reservation {
        store::upsert_reservation(tx, *order_id, reservation).await?;
    }
    for event in plan.emit {
        out.emit(event);
    }
    Ok(())
}
