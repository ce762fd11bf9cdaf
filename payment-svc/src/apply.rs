//! Applies a [`Plan`] in the caller's transaction: the one place payment-svc's decisions
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
    if let Some((customer_id, wallet)) = &plan.wallet {
        store::set_wallet(tx, customer_id, wallet).await?;
    }
    if let Some((order_id, payment)) = &plan.payment {
        store::set_payment(tx, *order_id, payment).await?;
    }
    for event in plan.emit {
        out.emit(event);
    }
    Ok(())
}
