//! Inventory's part of the saga as one pure function: [`decide`] takes what the handler
//! loaded (the order's reservation and the stock of every SKU the input names) and the
//! input with its payload, and returns the [`Plan`]: the reservation and stock levels to
//! store and the events to emit, or a [`Refusal`].
//!
//! The `match` in [`decide`] names every reservation state × input pair.
//!
//! Late and reordered events:
//! - OrderCancelled before OrderCreated leaves a `released` tombstone; the OrderCreated that
//!   arrives later finds it and reserves nothing.
//! - OrderCancelled after OrderConfirmed gives the sold stock back (cancelling a confirmed
//!   order restocks it); OrderConfirmed after OrderCancelled changes nothing.
//! - A second OrderCreated for the same order, under any message id, finds the reservation.

use std::collections::{BTreeMap, BTreeSet};

use events::Event;
use events::catalog::{
    OrderCreated, OrderItem, StockAdjusted, StockItem, StockRejected, StockReleased, StockReserved,
    Unavailable,
};
use platform::inputs::{Refusal, add};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A stored reservation's state. An order inventory has not heard of has no reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum ReservationState {
    Reserved,
    Rejected,
    Sold,
    /// Given back (or cancelled before anything was held); final.
    Released,
}

impl ReservationState {
    pub const ALL: [ReservationState; 4] = [
        ReservationState::Reserved,
        ReservationState::Rejected,
        ReservationState::Sold,
        ReservationState::Released,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReservationState::Reserved => "reserved",
            ReservationState::Rejected => "rejected",
            ReservationState::Sold => "sold",
            ReservationState::Released => "released",
        }
    }
}

platform::saga_inputs! {
    /// What inventory-svc reacts to: the events it consumes, with their payloads.
    pub enum InventoryInput {
        events: [OrderCreated, OrderConfirmed, OrderCancelled, StockAdjusted],
    }
}

impl InventoryInput {
    /// The order the input is about; stock adjustments concern none.
    pub(crate) fn order_id(&self) -> Option<Uuid> {
        match self {
            InventoryInput::OrderCreated(e) => Some(e.order_id),
            InventoryInput::OrderConfirmed(e) => Some(e.order_id),
            InventoryInput::OrderCancelled(e) => Some(e.order_id),
            InventoryInput::StockAdjusted(_) => None,
        }
    }

    /// The SKUs whose stock a decision on this input may read or write: those the input
    /// names and those the reservation holds. In SKU order, the order rows are locked in.
    pub(crate) fn stock_keys(&self, reservation: Option<&Reservation>) -> Vec<String> {
        let named: Vec<String> = match self {
            InventoryInput::OrderCreated(e) => e.items.iter().map(|i| i.sku.clone()).collect(),
            InventoryInput::StockAdjusted(e) => vec![e.sku.clone()],
            InventoryInput::OrderConfirmed(_) | InventoryInput::OrderCancelled(_) => Vec::new(),
        };
        let held = reservation.into_iter().flat_map(|r| r.items.iter());
        let keys: BTreeSet<String> = named
            .into_iter()
            .chain(held.map(|i| i.sku.clone()))
            .collect();
        keys.into_iter().collect()
    }
}

/// One order's reservation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub state: ReservationState,
    pub items: Vec<StockItem>,
}

/// The stock of one SKU, in its three buckets, and the sum of every adjustment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StockLevels {
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    pub adjusted: i64,
}

/// Everything a decision reads: the order's reservation (if the input is about an order)
/// and the stock of the SKUs the input names or the reservation holds (a SKU never
/// adjusted is absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InventoryState {
    pub reservation: Option<Reservation>,
    pub stock: BTreeMap<String, StockLevels>,
}

/// What a decision does, as data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The order's reservation, as it is to be stored.
    pub reservation: Option<(Uuid, Reservation)>,
    /// The new levels of every SKU whose stock changes.
    pub stock: Vec<(String, StockLevels)>,
    pub emit: Vec<Event>,
}

/// Where stock moves between the three buckets, per unit.
#[derive(Debug, Clone, Copy)]
struct Movement {
    available: i64,
    reserved: i64,
    sold: i64,
}

const RESERVE: Movement = Movement {
    available: -1,
    reserved: 1,
    sold: 0,
};
const SELL: Movement = Movement {
    available: 0,
    reserved: -1,
    sold: 1,
};
const RELEASE_RESERVED: Movement = Movement {
    available: 1,
    reserved: -1,
    sold: 0,
};
const RETURN_SOLD: Movement = Movement {
    available: 1,
    reserved: 0,
    sold: -1,
};

/// Inventory's reaction to `input` given what was loaded for it.
pub fn decide(state: &InventoryState, input: &InventoryInput) -> Result<Plan, Refusal> {
    use InventoryInput as I;
    use ReservationState as S;
    match (state.reservation.as_ref(), input) {
        // Stock adjustments concern no order, whatever its reservation.
        (
            None
            | Some(Reservation {
                state: S::Reserved | S::Rejected | S::Sold | S::Released,
                ..
            }),
            I::StockAdjusted(e),
        ) => adjust(state, e),
        (None, I::OrderCreated(e)) => try_reserve(state, e),
        (
            None
            | Some(Reservation {
                state: S::Rejected, ..
            }),
            I::OrderCancelled(e),
        ) => release(state, e.order_id, &[], RELEASE_RESERVED),
        (
            Some(Reservation {
                state: S::Reserved,
                items,
            }),
            I::OrderConfirmed(e),
        ) => Ok(Plan {
            stock: moved(state, items, SELL)?,
            reservation: Some((
                e.order_id,
                Reservation {
                    state: S::Sold,
                    items: items.clone(),
                },
            )),
            emit: Vec::new(),
        }),
        (
            Some(Reservation {
                state: S::Reserved,
                items,
            }),
            I::OrderCancelled(e),
        ) => release(state, e.order_id, items, RELEASE_RESERVED),
        (
            Some(Reservation {
                state: S::Sold,
                items,
            }),
            I::OrderCancelled(e),
        ) => release(state, e.order_id, items, RETURN_SOLD),
        // A repeated OrderCreated, or one arriving after the cancellation.
        (
            Some(Reservation {
                state: S::Reserved | S::Rejected | S::Sold | S::Released,
                ..
            }),
            I::OrderCreated(_),
        ) => Ok(Plan::default()),
        // Only a reserved order can be confirmed; order-svc never confirms otherwise.
        (
            None
            | Some(Reservation {
                state: S::Rejected | S::Sold | S::Released,
                ..
            }),
            I::OrderConfirmed(_),
        ) => Ok(Plan::default()),
        (
            Some(Reservation {
                state: S::Released, ..
            }),
            I::OrderCancelled(_),
        ) => Ok(Plan::default()),
    }
}

/// The stock of `sku` as loaded; a SKU never adjusted has none.
fn levels(state: &InventoryState, sku: &str) -> StockLevels {
    state.stock.get(sku).copied().unwrap_or(StockLevels {
        available: 0,
        reserved: 0,
        sold: 0,
        adjusted: 0,
    })
}

/// Each item's quantity moved between buckets. A SKU without stock moves nothing.
fn moved(
    state: &InventoryState,
    items: &[StockItem],
    m: Movement,
) -> Result<Vec<(String, StockLevels)>, Refusal> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Some(s) = state.stock.get(&item.sku) else {
            continue;
        };
        let q = item.quantity;
        let levels = StockLevels {
            available: add("available stock", s.available, q * m.available)?,
            reserved: add("reserved stock", s.reserved, q * m.reserved)?,
            sold: add("sold stock", s.sold, q * m.sold)?,
            adjusted: s.adjusted,
        };
        out.push((item.sku.clone(), levels));
    }
    Ok(out)
}

/// Reserve every item or none → `reserved` + StockReserved, or `rejected` + StockRejected.
fn try_reserve(state: &InventoryState, order: &OrderCreated) -> Result<Plan, Refusal> {
    let wanted = merge_items(&order.items);
    let (state_after, stock, emit) =
        match plan_reservation(&wanted, |sku| levels(state, sku).available) {
            Ok(()) => (
                ReservationState::Reserved,
                moved(state, &wanted, RESERVE)?,
                Event::StockReserved(StockReserved {
                    order_id: order.order_id,
                    customer_id: order.customer_id.clone(),
                    items: wanted.clone(),
                    total: order.total.clone(),
                }),
            ),
            Err(unavailable) => (
                ReservationState::Rejected,
                Vec::new(),
                Event::StockRejected(StockRejected {
                    order_id: order.order_id,
                    reason: "insufficient_stock".to_owned(),
                    unavailable,
                }),
            ),
        };
    Ok(Plan {
        reservation: Some((
            order.order_id,
            Reservation {
                state: state_after,
                items: wanted,
            },
        )),
        stock,
        emit: vec![emit],
    })
}

/// Gives `items` back by `m` → `released` + StockReleased (with no items when nothing was
/// held).
fn release(
    state: &InventoryState,
    order_id: Uuid,
    items: &[StockItem],
    m: Movement,
) -> Result<Plan, Refusal> {
    Ok(Plan {
        stock: moved(state, items, m)?,
        reservation: Some((
            order_id,
            Reservation {
                state: ReservationState::Released,
                items: items.to_vec(),
            },
        )),
        emit: vec![Event::StockReleased(StockReleased {
            order_id,
            items: items.to_vec(),
        })],
    })
}

/// Adds the delta to what is on hand (and to the adjustments' sum); refused when the
/// available stock would go negative.
fn adjust(state: &InventoryState, e: &StockAdjusted) -> Result<Plan, Refusal> {
    let s = levels(state, &e.sku);
    let available = add("available stock", s.available, e.delta)?;
    if available < 0 {
        return Err(Refusal::new(
            "negative_stock",
            format!(
                "adjusting {} by {} would make its available stock negative",
                e.sku, e.delta
            ),
        ));
    }
    let after = StockLevels {
        available,
        adjusted: add("the sum of adjustments", s.adjusted, e.delta)?,
        ..s
    };
    Ok(Plan {
        stock: vec![(e.sku.clone(), after)],
        ..Plan::default()
    })
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
fn plan_reservation(
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
    use events::catalog::{Money, OrderCancelled, OrderConfirmed};

    use super::*;

    fn item(sku: &str, quantity: i64) -> OrderItem {
        OrderItem {
            sku: sku.into(),
            quantity,
            unit_price: 1,
        }
    }

    fn created(items: Vec<OrderItem>) -> InventoryInput {
        InventoryInput::OrderCreated(OrderCreated {
            order_id: Uuid::nil(),
            customer_id: "c".into(),
            items,
            total: Money::new(1, "EUR"),
        })
    }

    fn cancelled() -> InventoryInput {
        InventoryInput::OrderCancelled(OrderCancelled {
            order_id: Uuid::nil(),
            reason: events::catalog::CancelReason::Timeout,
        })
    }

    fn with(reservation: Option<ReservationState>, stock: &[(&str, i64)]) -> InventoryState {
        InventoryState {
            reservation: reservation.map(|state| Reservation {
                state,
                items: vec![StockItem {
                    sku: "A".into(),
                    quantity: 2,
                }],
            }),
            stock: stock
                .iter()
                .map(|(sku, n)| {
                    let levels = StockLevels {
                        available: *n,
                        reserved: 2,
                        sold: 2,
                        adjusted: n + 4,
                    };
                    (sku.to_string(), levels)
                })
                .collect(),
        }
    }

    #[test]
    fn cancellation_before_creation_reserves_nothing_later() {
        let plan = decide(&with(None, &[]), &cancelled()).unwrap();
        let (_, r) = plan.reservation.unwrap();
        assert_eq!((r.state, r.items.len()), (ReservationState::Released, 0));
        let later = decide(
            &with(Some(ReservationState::Released), &[("A", 9)]),
            &created(vec![item("A", 1)]),
        );
        assert_eq!(later, Ok(Plan::default()));
    }

    #[test]
    fn a_confirmed_order_that_is_cancelled_is_restocked() {
        let plan = decide(
            &with(Some(ReservationState::Sold), &[("A", 1)]),
            &cancelled(),
        )
        .unwrap();
        assert_eq!(plan.stock[0].1.available, 3);
        assert_eq!(plan.stock[0].1.sold, 0);
    }

    #[test]
    fn confirming_sells_what_was_reserved() {
        let confirmed = InventoryInput::OrderConfirmed(OrderConfirmed {
            order_id: Uuid::nil(),
        });
        let plan = decide(
            &with(Some(ReservationState::Reserved), &[("A", 1)]),
            &confirmed,
        );
        let plan = plan.unwrap();
        assert_eq!(
            (plan.stock[0].1.reserved, plan.stock[0].1.sold),
            (0, 4),
            "{plan:?}"
        );
    }

    #[test]
    fn reservation_is_all_or_nothing() {
        let wanted = merge_items(&[item("A", 2), item("B", 1), item("A", 1)]);
        assert_eq!(
            wanted[0],
            StockItem {
                sku: "A".into(),
                quantity: 3
            }
        );
        let order = created(vec![item("A", 2), item("B", 1), item("A", 1)]);
        let plan = decide(&with(None, &[("A", 3), ("B", 3)]), &order).unwrap();
        assert!(matches!(plan.emit[0], Event::StockReserved(_)));
        assert_eq!(plan.stock.len(), 2);
        let plan = decide(&with(None, &[("A", 2), ("B", 5)]), &order).unwrap();
        let Event::StockRejected(rejected) = &plan.emit[0] else {
            panic!("{plan:?}")
        };
        assert!(plan.stock.is_empty());
        assert_eq!(
            rejected.unavailable,
            vec![Unavailable {
                sku: "A".into(),
                requested: 3,
                available: 2
            }]
        );
    }

    #[test]
    fn an_adjustment_never_makes_stock_negative() {
        let adjust = |delta| {
            InventoryInput::StockAdjusted(StockAdjusted {
                sku: "A".into(),
                delta,
            })
        };
        let refused = decide(&with(None, &[]), &adjust(-1)).unwrap_err();
        assert_eq!(refused.code, "negative_stock");
        let plan = decide(&with(None, &[]), &adjust(5)).unwrap();
        assert_eq!(plan.stock[0].1.available, 5);
    }

    #[test]
    fn each_state_is_stored_and_shown_under_its_name() {
        for s in ReservationState::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn an_event_outside_the_declaration_is_refused_as_unexpected() {
        let confirmed = Event::OrderConfirmed(OrderConfirmed {
            order_id: Uuid::nil(),
        });
        assert!(InventoryInput::try_from(&confirmed).is_ok());
        let released = Event::StockReleased(StockReleased {
            order_id: Uuid::nil(),
            items: Vec::new(),
        });
        let refusal = crate::staging::InventoryTables::default()
            .handle(&released)
            .unwrap_err();
        assert_eq!(refusal.code, "unexpected_event");
    }
}
