//! The order's state machine as one pure function: [`decide`] takes the order as loaded
//! (none before it is placed) and an input with its payload (an event from another
//! service, a customer's command, the deadline) and returns the [`Plan`]: the row to write,
//! the events to emit and the saga's outcome, or an [`OrderRefusal`]. No I/O here; the
//! handlers, the HTTP routes and the deadline sweep load, decide and apply the plan to the
//! [`staging`](crate::staging) tables.
//!
//! The `match`es name every status × input pair without a wildcard, so adding a status or
//! an input makes the compiler list the cases to decide.
//!
//! Rules that matter for late and reordered events:
//! - A terminal order (`rejected`, `cancelled`) never moves again. A PaymentDone arriving
//!   after a cancellation leaves it cancelled: payment-svc refunds on the OrderCancelled it
//!   receives, whatever the order of the two.
//! - PaymentDone may overtake StockReserved (they come from different services), so a
//!   `pending` order confirms on PaymentDone: payment is only ever taken after stock was
//!   reserved.
//! - A repeat of an event under a new message id finds the order already moved and changes
//!   nothing.

use chrono::{DateTime, Utc};
use events::Event;
use events::catalog::{
    self, CancelReason, Money, OrderCancelled, OrderConfirmed, OrderCreated, OrderItem,
};
use platform::inputs::Refusal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum OrderStatus {
    Pending,
    Reserved,
    Confirmed,
    Rejected,
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 5] = [
        OrderStatus::Pending,
        OrderStatus::Reserved,
        OrderStatus::Confirmed,
        OrderStatus::Rejected,
        OrderStatus::Cancelled,
    ];

    /// The statuses in which an order waits on the other services (and its deadline).
    pub const OPEN: [OrderStatus; 2] = [OrderStatus::Pending, OrderStatus::Reserved];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Reserved => "reserved",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Rejected => "rejected",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<OrderStatus> {
        OrderStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

platform::saga_inputs! {
    /// What can happen to an order: the events order-svc consumes, with their payloads,
    /// and its own commands.
    pub enum OrderInput {
        events: [
            StockReserved,
            StockRejected,
            PaymentDone,
            PaymentFailed,
            StockReleased,
            PaymentRefunded,
        ],
        commands: [
            /// `POST /orders`.
            Place(NewOrder),
            /// `POST /orders/{id}/cancel`.
            Cancel(Uuid),
            /// The order's deadline passed.
            Deadline(Uuid),
        ],
    }
}

impl OrderInput {
    /// The order the input is about.
    pub(crate) fn order_id(&self) -> Uuid {
        match self {
            OrderInput::StockReserved(e) => e.order_id,
            OrderInput::StockRejected(e) => e.order_id,
            OrderInput::PaymentDone(e) => e.order_id,
            OrderInput::PaymentFailed(e) => e.order_id,
            OrderInput::StockReleased(e) => e.order_id,
            OrderInput::PaymentRefunded(e) => e.order_id,
            OrderInput::Place(new) => new.order_id,
            OrderInput::Cancel(id) | OrderInput::Deadline(id) => *id,
        }
    }
}

/// A customer's order as `POST /orders` received it, with what the route gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub order_id: Uuid,
    pub customer_id: String,
    pub currency: String,
    pub items: Vec<OrderItem>,
    pub placed_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    pub idempotency: Option<IdempotencyKey>,
}

/// An `Idempotency-Key` and the hash of the body it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    pub request_hash: String,
}

/// An order as a decision reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub order_id: Uuid,
    pub customer_id: String,
    pub status: OrderStatus,
    pub reason: Option<String>,
    pub items: Vec<OrderItem>,
    pub total: i64,
    pub currency: String,
    pub created_at: DateTime<Utc>,
}

/// What a decision does, as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub order_id: Uuid,
    pub write: Option<OrderWrite>,
    /// Emitted, and recorded in the order's history.
    pub emit: Vec<Event>,
    /// The saga's outcome, when this plan settles it.
    pub outcome: Option<Outcome>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderWrite {
    /// A new order (none when the idempotency key already made one).
    Insert {
        order: Order,
        deadline: DateTime<Utc>,
        idempotency: Option<IdempotencyKey>,
    },
    /// The order moves to `to`; `reason`, if any, replaces the stored one.
    Move {
        to: OrderStatus,
        reason: Option<String>,
    },
}

/// A saga that ended: how, and when it started (for the outcome metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub status: OrderStatus,
    pub started: DateTime<Utc>,
}

/// Why an input is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderRefusal {
    /// The order breaks the contract's rules (400).
    Invalid(String),
    /// A command on an order that is closed (409).
    Closed { order_id: Uuid, status: OrderStatus },
    /// No such order: a command answers 404, an event is dead-lettered for an operator.
    Unknown(Uuid),
    /// An order placed under an id already taken.
    Exists(Uuid),
}

impl From<OrderRefusal> for Refusal {
    fn from(r: OrderRefusal) -> Self {
        match r {
            OrderRefusal::Invalid(m) => Refusal::new("validation_failed", m),
            OrderRefusal::Closed { order_id, status } => Refusal::new(
                "order_closed",
                format!("order {order_id} is already {}", status.as_str()),
            ),
            OrderRefusal::Unknown(id) => {
                Refusal::new("unknown_order", format!("no order {id} in order-svc"))
            }
            OrderRefusal::Exists(id) => {
                Refusal::new("order_exists", format!("order {id} exists already"))
            }
        }
    }
}

/// The order's reaction to `input`; `order` is the order as loaded (none if unknown).
pub fn decide(order: Option<&Order>, input: &OrderInput) -> Result<Plan, OrderRefusal> {
    use OrderInput as I;
    let Some(order) = order else {
        return match input {
            I::Place(new) => place(new),
            I::StockReserved(_)
            | I::StockRejected(_)
            | I::PaymentDone(_)
            | I::PaymentFailed(_)
            | I::StockReleased(_)
            | I::PaymentRefunded(_)
            | I::Cancel(_)
            | I::Deadline(_) => Err(OrderRefusal::Unknown(input.order_id())),
        };
    };
    decide_known(order, input)
}

fn decide_known(order: &Order, input: &OrderInput) -> Result<Plan, OrderRefusal> {
    use OrderInput as I;
    use OrderStatus as S;
    let stay = Ok(Plan {
        order_id: order.order_id,
        write: None,
        emit: Vec::new(),
        outcome: None,
    });
    match (order.status, input) {
        (S::Pending | S::Reserved | S::Confirmed | S::Rejected | S::Cancelled, I::Place(new)) => {
            Err(OrderRefusal::Exists(new.order_id))
        }
        (S::Pending, I::StockReserved(_)) => Ok(transition(order, S::Reserved, None, None)),
        (S::Pending, I::StockRejected(e)) => {
            Ok(transition(order, S::Rejected, Some(e.reason.clone()), None))
        }
        (S::Pending | S::Reserved, I::PaymentDone(_)) => Ok(transition(
            order,
            S::Confirmed,
            None,
            Some(Event::OrderConfirmed(OrderConfirmed {
                order_id: order.order_id,
            })),
        )),
        (S::Pending | S::Reserved, I::PaymentFailed(_)) => {
            Ok(cancel(order, CancelReason::PaymentFailed))
        }
        (S::Pending | S::Reserved | S::Confirmed, I::Cancel(_)) => {
            Ok(cancel(order, CancelReason::CustomerRequest))
        }
        (S::Pending | S::Reserved, I::Deadline(_)) => Ok(cancel(order, CancelReason::Timeout)),

        // Repeats and stragglers about a settled question.
        (S::Reserved | S::Confirmed, I::StockReserved(_)) => stay,
        (S::Confirmed, I::PaymentDone(_)) => stay,
        (S::Confirmed, I::Deadline(_)) => stay,
        // Inventory answers an order once, reserve or reject; a rejection after a
        // reservation cannot come from a correct inventory and changes nothing.
        (S::Reserved | S::Confirmed, I::StockRejected(_)) => stay,
        // Payment is decided once per order: a failure after a capture changes nothing.
        (S::Confirmed, I::PaymentFailed(_)) => stay,
        // Compensations are recorded in the history; they never move the order.
        (S::Pending | S::Reserved | S::Confirmed, I::StockReleased(_) | I::PaymentRefunded(_)) => {
            stay
        }

        // Terminal orders: events are recorded, commands refused.
        (S::Rejected | S::Cancelled, I::Cancel(_)) => Err(OrderRefusal::Closed {
            order_id: order.order_id,
            status: order.status,
        }),
        (
            S::Rejected | S::Cancelled,
            I::StockReserved(_)
            | I::StockRejected(_)
            | I::PaymentDone(_)
            | I::PaymentFailed(_)
            | I::StockReleased(_)
            | I::PaymentRefunded(_)
            | I::Deadline(_),
        ) => stay,
    }
}

fn cancel(order: &Order, reason: CancelReason) -> Plan {
    let event = Event::OrderCancelled(OrderCancelled {
        order_id: order.order_id,
        reason,
    });
    transition(
        order,
        OrderStatus::Cancelled,
        Some(reason.as_str().to_owned()),
        Some(event),
    )
}

/// Moves the order to `to`. Reaching a final status from an unsettled one ends the saga
/// (a confirmed order that is cancelled later was counted when it was confirmed).
fn transition(order: &Order, to: OrderStatus, reason: Option<String>, emit: Option<Event>) -> Plan {
    let settles = matches!(
        to,
        OrderStatus::Confirmed | OrderStatus::Rejected | OrderStatus::Cancelled
    ) && order.status != OrderStatus::Confirmed;
    Plan {
        order_id: order.order_id,
        write: Some(OrderWrite::Move { to, reason }),
        emit: emit.into_iter().collect(),
        outcome: settles.then_some(Outcome {
            status: to,
            started: order.created_at,
        }),
    }
}

/// A valid order is stored `pending` and announced with OrderCreated.
fn place(new: &NewOrder) -> Result<Plan, OrderRefusal> {
    let total = validate(new).map_err(OrderRefusal::Invalid)?;
    let order = Order {
        order_id: new.order_id,
        customer_id: new.customer_id.clone(),
        status: OrderStatus::Pending,
        reason: None,
        items: new.items.clone(),
        total,
        currency: new.currency.clone(),
        created_at: new.placed_at,
    };
    let created = Event::OrderCreated(OrderCreated {
        order_id: new.order_id,
        customer_id: new.customer_id.clone(),
        items: new.items.clone(),
        total: Money::new(total, new.currency.clone()),
    });
    Ok(Plan {
        order_id: new.order_id,
        write: Some(OrderWrite::Insert {
            order,
            deadline: new.deadline,
            idempotency: new.idempotency.clone(),
        }),
        emit: vec![created],
        outcome: None,
    })
}

/// Checks an order against the contract's rules; returns its total.
fn validate(new: &NewOrder) -> Result<i64, String> {
    catalog::check_customer(&new.customer_id)?;
    catalog::check_currency(&new.currency)?;
    if new.items.is_empty() || new.items.len() > catalog::MAX_ITEMS {
        return Err(format!(
            "items must hold 1 to {} entries",
            catalog::MAX_ITEMS
        ));
    }
    let mut total: i64 = 0;
    for (i, item) in new.items.iter().enumerate() {
        let at = |m: String| format!("items[{i}]: {m}");
        catalog::check_sku(&item.sku).map_err(at)?;
        catalog::check_quantity(item.quantity).map_err(at)?;
        catalog::check_unit_price(item.unit_price).map_err(at)?;
        total = item
            .quantity
            .checked_mul(item.unit_price)
            .and_then(|line| total.checked_add(line))
            .ok_or_else(|| "the order total is too large".to_owned())?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use events::catalog::{PaymentDone, PaymentFailed, PaymentFailureReason, StockReserved};

    use super::*;

    fn item(sku: &str, quantity: i64, unit_price: i64) -> OrderItem {
        OrderItem {
            sku: sku.into(),
            quantity,
            unit_price,
        }
    }

    fn new_order(items: Vec<OrderItem>) -> NewOrder {
        NewOrder {
            order_id: Uuid::nil(),
            customer_id: "c-1".into(),
            currency: "EUR".into(),
            items,
            placed_at: Utc::now(),
            deadline: Utc::now(),
            idempotency: None,
        }
    }

    fn order(status: OrderStatus) -> Order {
        Order {
            order_id: Uuid::nil(),
            customer_id: "c".into(),
            status,
            reason: None,
            items: vec![item("A", 1, 1)],
            total: 1,
            currency: "EUR".into(),
            created_at: Utc::now(),
        }
    }

    fn moved_to(plan: &Plan) -> Option<OrderStatus> {
        match &plan.write {
            Some(OrderWrite::Move { to, .. }) => Some(*to),
            _ => None,
        }
    }

    fn payment_done() -> OrderInput {
        OrderInput::PaymentDone(PaymentDone {
            order_id: Uuid::nil(),
            payment_id: Uuid::nil(),
            customer_id: "c".into(),
            amount: 1,
            currency: "EUR".into(),
        })
    }

    #[test]
    fn placing_stores_a_pending_order_and_announces_it() {
        let plan = decide(None, &OrderInput::Place(new_order(vec![item("A", 2, 150)]))).unwrap();
        let Some(OrderWrite::Insert { order, .. }) = &plan.write else {
            panic!("{plan:?}")
        };
        assert_eq!((order.status, order.total), (OrderStatus::Pending, 300));
        assert!(matches!(plan.emit[..], [Event::OrderCreated(_)]));
    }

    #[test]
    fn happy_path_confirms() {
        let reserved = OrderInput::StockReserved(StockReserved {
            order_id: Uuid::nil(),
            customer_id: "c".into(),
            items: Vec::new(),
            total: Money::new(1, "EUR"),
        });
        let plan = decide(Some(&order(OrderStatus::Pending)), &reserved).unwrap();
        assert_eq!(moved_to(&plan), Some(OrderStatus::Reserved));
        let plan = decide(Some(&order(OrderStatus::Reserved)), &payment_done()).unwrap();
        assert_eq!(moved_to(&plan), Some(OrderStatus::Confirmed));
        assert!(matches!(plan.emit[..], [Event::OrderConfirmed(_)]));
        assert_eq!(plan.outcome.map(|o| o.status), Some(OrderStatus::Confirmed));
    }

    #[test]
    fn terminal_orders_never_move_and_refuse_cancellation() {
        for status in [OrderStatus::Rejected, OrderStatus::Cancelled] {
            let o = order(status);
            for input in [payment_done(), OrderInput::Deadline(Uuid::nil())] {
                assert_eq!(moved_to(&decide(Some(&o), &input).unwrap()), None);
            }
            assert!(matches!(
                decide(Some(&o), &OrderInput::Cancel(Uuid::nil())),
                Err(OrderRefusal::Closed { .. })
            ));
        }
    }

    #[test]
    fn confirmed_order_can_be_cancelled_by_the_customer_but_not_by_the_clock() {
        let o = order(OrderStatus::Confirmed);
        let plan = decide(Some(&o), &OrderInput::Cancel(Uuid::nil())).unwrap();
        assert_eq!(moved_to(&plan), Some(OrderStatus::Cancelled));
        assert_eq!(plan.outcome, None, "a confirmed order was counted already");
        let plan = decide(Some(&o), &OrderInput::Deadline(Uuid::nil())).unwrap();
        assert_eq!(moved_to(&plan), None);
    }

    #[test]
    fn payment_failure_cancels_with_its_reason() {
        let failed = OrderInput::PaymentFailed(PaymentFailed {
            order_id: Uuid::nil(),
            customer_id: "c".into(),
            amount: 1,
            currency: None,
            reason: PaymentFailureReason::InsufficientFunds,
        });
        let plan = decide(Some(&order(OrderStatus::Reserved)), &failed).unwrap();
        let Some(Event::OrderCancelled(c)) = plan.emit.first() else {
            panic!("{plan:?}")
        };
        assert_eq!(c.reason, CancelReason::PaymentFailed);
    }

    #[test]
    fn an_event_about_an_unknown_order_is_refused() {
        assert_eq!(
            decide(None, &payment_done()),
            Err(OrderRefusal::Unknown(Uuid::nil()))
        );
    }

    #[test]
    fn valid_order_totals_its_lines() {
        let o = new_order(vec![item("A", 2, 150), item("B.1_x-y", 1, 0)]);
        assert_eq!(validate(&o), Ok(300));
    }

    #[test]
    fn each_contract_rule_is_enforced() {
        let too_many: Vec<_> = (0..101).map(|i| item(&format!("S{i}"), 1, 1)).collect();
        let cases = vec![
            new_order(vec![]),
            new_order(too_many),
            new_order(vec![item("A", 0, 1)]),
            new_order(vec![item("A", 10_001, 1)]),
            new_order(vec![item("A", 1, -1)]),
            new_order(vec![item("bad sku", 1, 1)]),
            new_order(vec![item(&"x".repeat(65), 1, 1)]),
            new_order(vec![item("A", 10_000, i64::MAX)]),
            NewOrder {
                customer_id: String::new(),
                ..new_order(vec![item("A", 1, 1)])
            },
            NewOrder {
                customer_id: "c".repeat(65),
                ..new_order(vec![item("A", 1, 1)])
            },
            NewOrder {
                currency: "eur".into(),
                ..new_order(vec![item("A", 1, 1)])
            },
            NewOrder {
                currency: "EURO".into(),
                ..new_order(vec![item("A", 1, 1)])
            },
        ];
        for new in cases {
            let refusal = decide(None, &OrderInput::Place(new.clone())).unwrap_err();
            assert!(matches!(refusal, OrderRefusal::Invalid(_)), "{new:?}");
        }
    }

    #[test]
    fn each_state_is_stored_and_shown_under_its_name() {
        for s in OrderStatus::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
