//! The order's state machine: a pure function of (the order's status, what happened) to
//! (the new status, the event to emit). No I/O here; `handlers` and `http` apply decisions.
//!
//! The `match` names every status × input pair without a wildcard, so adding a status or
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

use events::catalog::CancelReason;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Reserved => "reserved",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Rejected => "rejected",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<OrderStatus> {
        OrderStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// No input moves a terminal order.
    pub fn is_terminal(self) -> bool {
        matches!(self, OrderStatus::Rejected | OrderStatus::Cancelled)
    }
}

/// What can happen to an order: an event from another service, or a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderInput {
    StockReserved,
    StockRejected,
    PaymentDone,
    PaymentFailed,
    StockReleased,
    PaymentRefunded,
    /// `POST /orders/{id}/cancel`.
    CancelRequested,
    /// The order's deadline passed.
    DeadlinePassed,
}

impl OrderInput {
    pub const ALL: [OrderInput; 8] = [
        OrderInput::StockReserved,
        OrderInput::StockRejected,
        OrderInput::PaymentDone,
        OrderInput::PaymentFailed,
        OrderInput::StockReleased,
        OrderInput::PaymentRefunded,
        OrderInput::CancelRequested,
        OrderInput::DeadlinePassed,
    ];
}

/// The event an order transition emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderEmit {
    Confirmed,
    Cancelled(CancelReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Move to `to`, emitting `emit` if any.
    Move {
        to: OrderStatus,
        emit: Option<OrderEmit>,
    },
    /// Nothing changes (the input is recorded in the history only).
    Stay,
    /// A command that cannot apply in this status (answered 409).
    Refuse,
}

fn cancel(reason: CancelReason) -> Decision {
    Decision::Move {
        to: OrderStatus::Cancelled,
        emit: Some(OrderEmit::Cancelled(reason)),
    }
}

const CONFIRM: Decision = Decision::Move {
    to: OrderStatus::Confirmed,
    emit: Some(OrderEmit::Confirmed),
};

/// The order's reaction to `input` in `status`.
pub fn decide(status: OrderStatus, input: OrderInput) -> Decision {
    use OrderInput as I;
    use OrderStatus as S;
    match (status, input) {
        (S::Pending, I::StockReserved) => Decision::Move {
            to: S::Reserved,
            emit: None,
        },
        (S::Pending, I::StockRejected) => Decision::Move {
            to: S::Rejected,
            emit: None,
        },
        (S::Pending | S::Reserved, I::PaymentDone) => CONFIRM,
        (S::Pending | S::Reserved, I::PaymentFailed) => cancel(CancelReason::PaymentFailed),
        (S::Pending | S::Reserved | S::Confirmed, I::CancelRequested) => {
            cancel(CancelReason::CustomerRequest)
        }
        (S::Pending | S::Reserved, I::DeadlinePassed) => cancel(CancelReason::Timeout),

        // Repeats and stragglers about a settled question.
        (S::Reserved | S::Confirmed, I::StockReserved) => Decision::Stay,
        (S::Confirmed, I::PaymentDone) => Decision::Stay,
        (S::Confirmed, I::DeadlinePassed) => Decision::Stay,
        // Inventory answers an order once, reserve or reject; a rejection after a
        // reservation cannot come from a correct inventory and changes nothing.
        (S::Reserved | S::Confirmed, I::StockRejected) => Decision::Stay,
        // Payment is decided once per order: a failure after a capture changes nothing.
        (S::Confirmed, I::PaymentFailed) => Decision::Stay,
        // Compensations are recorded in the history; they never move the order.
        (S::Pending | S::Reserved | S::Confirmed, I::StockReleased | I::PaymentRefunded) => {
            Decision::Stay
        }

        // Terminal orders: events are recorded, commands refused.
        (S::Rejected | S::Cancelled, I::CancelRequested) => Decision::Refuse,
        (
            S::Rejected | S::Cancelled,
            I::StockReserved
            | I::StockRejected
            | I::PaymentDone
            | I::PaymentFailed
            | I::StockReleased
            | I::PaymentRefunded
            | I::DeadlinePassed,
        ) => Decision::Stay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn happy_path_confirms() {
        let Decision::Move { to, emit: None } =
            decide(OrderStatus::Pending, OrderInput::StockReserved)
        else {
            panic!("reserve should move")
        };
        assert_eq!(to, OrderStatus::Reserved);
        assert_eq!(
            decide(to, OrderInput::PaymentDone),
            Decision::Move {
                to: OrderStatus::Confirmed,
                emit: Some(OrderEmit::Confirmed)
            }
        );
    }

    #[test]
    fn terminal_orders_never_move() {
        for status in [OrderStatus::Rejected, OrderStatus::Cancelled] {
            for input in OrderInput::ALL {
                assert!(
                    !matches!(decide(status, input), Decision::Move { .. }),
                    "{status:?} moved on {input:?}"
                );
            }
        }
    }

    #[test]
    fn payment_after_cancellation_does_not_confirm() {
        assert_eq!(
            decide(OrderStatus::Cancelled, OrderInput::PaymentDone),
            Decision::Stay
        );
    }

    #[test]
    fn confirmed_order_can_be_cancelled_by_the_customer_but_not_by_the_clock() {
        assert_eq!(
            decide(OrderStatus::Confirmed, OrderInput::CancelRequested),
            cancel(CancelReason::CustomerRequest)
        );
        assert_eq!(
            decide(OrderStatus::Confirmed, OrderInput::DeadlinePassed),
            Decision::Stay
        );
    }

    #[test]
    fn payment_failure_cancels_with_its_reason() {
        assert_eq!(
            decide(OrderStatus::Reserved, OrderInput::PaymentFailed),
            cancel(CancelReason::PaymentFailed)
        );
    }
}
