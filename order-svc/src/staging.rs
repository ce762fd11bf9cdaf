//! The staging tables a batch is decided on: the orders it locked, as a map, and what its
//! decisions add to them (new orders, moves, history rows).
//!
//! Every plan order-svc decides is applied here, by [`OrderTables::apply`], whoever
//! decided it: the consumer's batch of events ([`crate::handlers`]), a group of placements
//! ([`crate::placing`]), a cancellation and the deadline sweep. Then
//! [`store::store_staged`](crate::store::store_staged) writes what changed with one
//! statement per table. The property tests run the same tables without a database.
//!
//! The history rule lives here alone: the message that moved an order, then every event
//! the plan emitted, go in the order's history, in that order.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use events::Event;
use messaging::outbox::Emitter;
use platform::inputs::{Refusal, unexpected_event};
use uuid::Uuid;

use crate::saga::decide;
use crate::saga::{IdempotencyKey, Order, OrderInput, OrderRefusal, OrderWrite, Outcome, Plan};

/// A row of an order's history: (order, event type, message id).
pub(crate) type HistoryRecord = (Uuid, String, Uuid);

/// The orders as loaded and as decided on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderTables {
    pub orders: BTreeMap<Uuid, Order>,
    /// Each order's deadline: as loaded, or as its placement set it.
    deadlines: BTreeMap<Uuid, DateTime<Utc>>,
    /// The orders placed here, in order, with their idempotency keys.
    placed: Vec<(Uuid, Option<IdempotencyKey>)>,
    history: Vec<HistoryRecord>,
}

/// Where a plan's events go: the transaction's outbox, or a list in the property tests.
pub trait Outlet {
    /// Emits `event`; returns its type and message id, for the order's history.
    fn emit(&mut self, event: Event) -> (String, Uuid);
    /// The plan ended the saga.
    fn settled(&mut self, outcome: Outcome);
}

impl Outlet for Emitter {
    fn emit(&mut self, event: Event) -> (String, Uuid) {
        let envelope = Emitter::emit(self, event);
        (envelope.event_type.clone(), envelope.message_id)
    }

    fn settled(&mut self, outcome: Outcome) {
        // After the commit that ended it, so a transaction rolled back (a batch handled
        // again message by message) counts nothing.
        self.after_commit(move || record_outcome(outcome));
    }
}

/// The events, in order; no message ids (nothing reads this history).
impl Outlet for Vec<Event> {
    fn emit(&mut self, event: Event) -> (String, Uuid) {
        let event_type = messaging::EventKind::name(messaging::Event::kind(&event)).to_owned();
        self.push(event);
        (event_type, Uuid::nil())
    }

    fn settled(&mut self, _: Outcome) {}
}

impl OrderTables {
    /// Adds an order as the database holds it.
    pub(crate) fn load(&mut self, order: Order, deadline: DateTime<Utc>) {
        self.deadlines.insert(order.order_id, deadline);
        self.orders.insert(order.order_id, order);
    }

    /// Applies `plan`: writes what it stores, records `cause` (the message that led to it,
    /// if any) and each event it emits into `out` in the order's history.
    pub fn apply(&mut self, plan: Plan, cause: Option<(&str, Uuid)>, out: &mut impl Outlet) {
        let order_id = plan.order_id;
        match plan.write {
            Some(OrderWrite::Insert {
                order,
                deadline,
                idempotency,
            }) => {
                self.deadlines.insert(order_id, deadline);
                self.placed.push((order_id, idempotency));
                self.orders.insert(order_id, order);
            }
            Some(OrderWrite::Move { to, reason }) => {
                if let Some(o) = self.orders.get_mut(&order_id) {
                    o.status = to;
                    o.reason = reason.or(o.reason.take());
                }
            }
            None => {}
        }
        if let Some((event_type, message_id)) = cause {
            self.history
                .push((order_id, event_type.to_owned(), message_id));
        }
        for event in plan.emit {
            let (event_type, message_id) = out.emit(event);
            self.history.push((order_id, event_type, message_id));
        }
        if let Some(outcome) = plan.outcome {
            out.settled(outcome);
        }
    }

    /// The orders placed since `loaded`, each as it stands now, with its deadline and key.
    pub(crate) fn placed_since(
        &self,
        loaded: &OrderTables,
    ) -> Vec<(&Order, DateTime<Utc>, Option<&IdempotencyKey>)> {
        self.placed[loaded.placed.len()..]
            .iter()
            .filter_map(|(id, key)| {
                let order = self.orders.get(id)?;
                Some((order, *self.deadlines.get(id)?, key.as_ref()))
            })
            .collect()
    }

    /// The orders `loaded` held that moved since, in order-id order (the order they were
    /// locked in), each with its deadline.
    pub(crate) fn moved_since(&self, loaded: &OrderTables) -> Vec<(&Order, DateTime<Utc>)> {
        platform::staged::changed(&loaded.orders, &self.orders)
            .into_iter()
            .filter(|(id, _)| loaded.orders.contains_key(*id))
            .filter_map(|(id, order)| Some((order, *self.deadlines.get(id)?)))
            .collect()
    }

    /// The history rows recorded since `loaded`, in order.
    pub(crate) fn history_since(&self, loaded: &OrderTables) -> &[HistoryRecord] {
        &self.history[loaded.history.len()..]
    }

    /// Loads the order `input` is about, decides and applies: what the consumer, the HTTP
    /// routes and the deadline sweep do. Returns the events emitted.
    pub fn run(&mut self, input: &OrderInput) -> Result<Vec<Event>, OrderRefusal> {
        let plan = decide(self.orders.get(&input.order_id()), input)?;
        let mut emitted = Vec::new();
        self.apply(plan, None, &mut emitted);
        Ok(emitted)
    }

    /// The handler: an event in, the events it emits out, or the refusal that
    /// dead-letters it (and then nothing changed).
    pub fn handle(&mut self, event: &Event) -> Result<Vec<Event>, Refusal> {
        let input = OrderInput::try_from(event).map_err(|t| unexpected_event(crate::SERVICE, t))?;
        self.run(&input).map_err(Refusal::from)
    }
}

/// Counts a saga that ended, and how long it took.
fn record_outcome(outcome: Outcome) {
    let status = outcome.status.as_str();
    metrics::counter!("saga_outcomes_total", "status" => status).increment(1);
    let elapsed = (Utc::now() - outcome.started).num_milliseconds().max(0) as f64 / 1000.0;
    metrics::histogram!("saga_duration_seconds", "status" => status).record(elapsed);
}
