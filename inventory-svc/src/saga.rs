//! Inventory's part of the saga as pure functions: what a reservation does on each order
//! event, and whether an order's items can all be reserved from the stock on hand.
//!
//! The `match` in [`decide`] names every state × input pair, with no wildcard.
//!
//! Late and reordered events:
//! - OrderCancelled before OrderCreated leaves a `released` tombstone; the OrderCreated that
//!   arrives later finds it and reserves nothing.
//! - OrderCancelled after OrderConfirmed gives the sold stock back (cancelling a confirmed
//!   order restocks it); OrderConfirmed after OrderCancelled changes nothing.
//! - A second OrderCreated for the same order, under any message id, finds the reservation.

use std::collections::BTreeMap;

use events::catalog::{OrderItem, StockItem, Unavailable};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationState {
    /// Inventory has not heard of the order.
    None,
    Reserved,
    Rejected,
    Sold,
    /// Given back (or cancelled before anything was held); final.
    Released,
}

impl ReservationState {
    pub const ALL: [ReservationState; 5] = [
        ReservationState::None,
        ReservationState::Reserved,
        ReservationState::Rejected,
        ReservationState::Sold,
        ReservationState::Released,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReservationState::None => "none",
            ReservationState::Reserved => "reserved",
            ReservationState::Rejected => "rejected",
            ReservationState::Sold => "sold",
            ReservationState::Released => "released",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InventoryInput {
    OrderCreated,
    OrderConfirmed,
    OrderCancelled,
}

impl InventoryInput {
    pub const ALL: [InventoryInput; 3] = [
        InventoryInput::OrderCreated,
        InventoryInput::OrderConfirmed,
        InventoryInput::OrderCancelled,
    ];
}

/// What to do with the stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Reserve every item or none → `reserved` + StockReserved, or `rejected` + StockRejected.
    TryReserve,
    /// reserved → sold; nothing emitted.
    Sell,
    /// reserved → available; `released` + StockReleased.
    ReleaseReserved,
    /// sold → available; `released` + StockReleased.
    ReturnSold,
    /// Nothing held: `released` + StockReleased with no items.
    ReleaseNothing,
    /// Nothing changes.
    Ignore,
}

pub fn decide(state: ReservationState, input: InventoryInput) -> Step {
    use InventoryInput as I;
    use ReservationState as S;
    match (state, input) {
        (S::None, I::OrderCreated) => Step::TryReserve,
        (S::None | S::Rejected, I::OrderCancelled) => Step::ReleaseNothing,
        (S::Reserved, I::OrderConfirmed) => Step::Sell,
        (S::Reserved, I::OrderCancelled) => Step::ReleaseReserved,
        (S::Sold, I::OrderCancelled) => Step::ReturnSold,
        // A repeated OrderCreated, or one arriving after the cancellation.
        (S::Reserved | S::Rejected | S::Sold | S::Released, I::OrderCreated) => Step::Ignore,
        // Only a reserved order can be confirmed; order-svc never confirms otherwise.
        (S::None | S::Rejected | S::Sold | S::Released, I::OrderConfirmed) => Step::Ignore,
        (S::Released, I::OrderCancelled) => Step::Ignore,
    }
}

/// The items of an order with repeated SKUs summed, in SKU order (the order rows are
/// locked in, which keeps concurrent reservations free of deadlocks).
pub fn merge_items(items: &[OrderItem]) -> Vec<StockItem> {
    let mut merged: BTreeMap<&str, i64> = BTreeMap::new();
    for item in items {
        *merged.entry(&item.sku).or_default() += item.quantity;
    }
    merged
        .into_iter()
        .map(|(sku, quantity)| StockItem {
            sku: sku.to_owned(),
            quantity,
        })
        .collect()
}

/// All or nothing: `Ok` when every item is available in full, otherwise the shortfalls.
/// `available(sku)` is what is on hand (0 for a SKU never adjusted).
pub fn plan_reservation(
    wanted: &[StockItem],
    available: impl Fn(&str) -> i64,
) -> Result<(), Vec<Unavailable>> {
    let short: Vec<_> = wanted
        .iter()
        .filter_map(|w| {
            let on_hand = available(&w.sku);
            (on_hand < w.quantity).then(|| Unavailable {
                sku: w.sku.clone(),
                requested: w.quantity,
                available: on_hand,
            })
        })
        .collect();
    if short.is_empty() { Ok(()) } else { Err(short) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancellation_before_creation_reserves_nothing_later() {
        assert_eq!(
            decide(ReservationState::None, InventoryInput::OrderCancelled),
            Step::ReleaseNothing
        );
        assert_eq!(
            decide(ReservationState::Released, InventoryInput::OrderCreated),
            Step::Ignore
        );
    }

    #[test]
    fn a_confirmed_order_that_is_cancelled_is_restocked() {
        assert_eq!(
            decide(ReservationState::Sold, InventoryInput::OrderCancelled),
            Step::ReturnSold
        );
    }

    #[test]
    fn reservation_is_all_or_nothing() {
        let wanted = merge_items(&[
            OrderItem {
                sku: "A".into(),
                quantity: 2,
                unit_price: 1,
            },
            OrderItem {
                sku: "B".into(),
                quantity: 1,
                unit_price: 1,
            },
            OrderItem {
                sku: "A".into(),
                quantity: 1,
                unit_price: 1,
            },
        ]);
        assert_eq!(
            wanted[0],
            StockItem {
                sku: "A".into(),
                quantity: 3
            }
        );
        assert!(plan_reservation(&wanted, |_| 3).is_ok());
        let short = plan_reservation(&wanted, |sku| if sku == "A" { 2 } else { 5 }).unwrap_err();
        assert_eq!(
            short,
            vec![Unavailable {
                sku: "A".into(),
                requested: 3,
                available: 2
            }]
        );
    }
}
