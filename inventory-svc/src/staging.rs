//! The staging tables a batch is decided on: inventory-svc's rows as maps, loaded by
//! [`store`](crate::store) for a batch, changed by each plan the consumer applies, and
//! written back by `store` where they changed. The property tests run the real
//! [`decide`] on the same tables, with no database.

use std::collections::BTreeMap;

use events::Event;
use platform::inputs::{Refusal, unexpected_event};
use uuid::Uuid;

use crate::saga::{InventoryInput, InventoryState, Plan, Reservation, StockLevels, decide};

/// The stock and reservation tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InventoryTables {
    pub stock: BTreeMap<String, StockLevels>,
    pub reservations: BTreeMap<Uuid, Reservation>,
}

impl InventoryTables {
    /// What the handler loads for `input`.
    pub fn load(&self, input: &InventoryInput) -> InventoryState {
        let reservation = input
            .order_id()
            .and_then(|id| self.reservations.get(&id).cloned());
        let stock = input
            .stock_keys(reservation.as_ref())
            .into_iter()
            .filter_map(|sku| self.stock.get(&sku).map(|s| (sku, *s)))
            .collect();
        InventoryState { reservation, stock }
    }

    /// Writes what the plan stores; returns the events it emits.
    pub fn apply(&mut self, plan: Plan) -> Vec<Event> {
        self.stock.extend(plan.stock);
        if let Some((order_id, reservation)) = plan.reservation {
            self.reservations.insert(order_id, reservation);
        }
        plan.emit
    }

    /// The handler: an event in, the events it emits out, or the refusal that
    /// dead-letters it (and then nothing changed).
    pub fn handle(&mut self, event: &Event) -> Result<Vec<Event>, Refusal> {
        let input =
            InventoryInput::try_from(event).map_err(|t| unexpected_event(crate::SERVICE, t))?;
        let plan = decide(&self.load(&input), &input)?;
        Ok(self.apply(plan))
    }
}
