//! order-svc without I/O: its orders as a map, loaded and written exactly as
//! [`store`](crate::store) and [`apply`](crate::apply) do, so the saga's property tests run
//! the real [`decide`] on every event, command and deadline they deliver.

use std::collections::BTreeMap;

use events::Event;
use platform::inputs::{Refusal, unexpected_event};
use uuid::Uuid;

use crate::saga::{Order, OrderInput, OrderRefusal, OrderWrite, Plan, decide};

/// The orders table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderTables {
    pub orders: BTreeMap<Uuid, Order>,
}

impl OrderTables {
    /// Writes what the plan stores; returns the events it emits.
    pub fn apply(&mut self, plan: Plan) -> Vec<Event> {
        match plan.write {
            Some(OrderWrite::Insert { order, .. }) => {
                self.orders.insert(order.order_id, order);
            }
            Some(OrderWrite::Move { to, reason }) => {
                if let Some(o) = self.orders.get_mut(&plan.order_id) {
                    o.status = to;
                    o.reason = reason.or(o.reason.take());
                }
            }
            None => {}
        }
        plan.emit
    }

    /// Loads the order `input` is about, decides and applies: what the consumer, the HTTP
    /// routes and the deadline sweep do.
    pub fn run(&mut self, input: &OrderInput) -> Result<Vec<Event>, OrderRefusal> {
        let plan = decide(self.orders.get(&input.order_id()), input)?;
        Ok(self.apply(plan))
    }

    /// The handler: an event in, the events it emits out, or the refusal that
    /// dead-letters it (and then nothing changed).
    pub fn handle(&mut self, event: &Event) -> Result<Vec<Event>, Refusal> {
        let input = OrderInput::try_from(event).map_err(|t| unexpected_event(crate::SERVICE, t))?;
        self.run(&input).map_err(Refusal::from)
    }
}
