//! The rules of each order's status against its payment and reservation: confirmed means
//! paid and sold, closed means neither, open means within the deadline; and no money or
//! sold stock for an order that is not confirmed.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Breaches;
use super::snapshot::{ItemView, OrderView, PaymentView, ReservationView, Snapshot};

/// Quantities per SKU of `items`, a SKU listed twice counted once with the sum.
fn quantities(items: &[ItemView]) -> BTreeMap<&str, i64> {
    let mut out = BTreeMap::new();
    for item in items {
        *out.entry(item.sku.as_str()).or_default() += item.quantity;
    }
    out
}

/// The snapshot's reservations, payments and orders by order id.
pub(super) struct ByOrder<'a> {
    reservations: HashMap<Uuid, &'a ReservationView>,
    payments: HashMap<Uuid, &'a PaymentView>,
    orders: HashMap<Uuid, &'a OrderView>,
}

impl<'a> ByOrder<'a> {
    pub(super) fn new(s: &'a Snapshot) -> Self {
        ByOrder {
            reservations: s.reservations.iter().map(|r| (r.order_id, r)).collect(),
            payments: s.payments.iter().map(|p| (p.order_id, p)).collect(),
            orders: s.orders.iter().map(|o| (o.order_id, o)).collect(),
        }
    }

    /// The status of the order `id`, `unknown` when order-svc does not list it.
    fn order_status(&self, id: Uuid) -> &str {
        self.orders
            .get(&id)
            .map_or("unknown", |o| o.status.as_str())
    }
}

/// The rules of one order's status against its payment and reservation.
pub(super) fn check_order(
    o: &OrderView,
    by_order: &ByOrder,
    taken_at: DateTime<Utc>,
    out: &mut Breaches,
) {
    let reservation = by_order.reservations.get(&o.order_id).copied();
    let payment = by_order.payments.get(&o.order_id).copied();
    let subject = format!("order {}", o.order_id);
    match o.status.as_str() {
        "confirmed" => check_confirmed(o, payment, reservation, out),
        "rejected" | "cancelled" => {
            let stock = reservation.map(|r| r.status.as_str());
            if let Some(held @ ("reserved" | "sold")) = stock {
                out.add(
                    "closed_holds_no_stock",
                    subject.clone(),
                    format!("{} but stock is still {held}", o.status),
                );
            }
            if payment.is_some_and(|p| p.status == "captured") {
                out.add(
                    "closed_keeps_no_money",
                    subject,
                    format!("{} but its payment is captured", o.status),
                );
            }
        }
        "pending" | "reserved" => {
            if o.deadline < taken_at {
                out.add(
                    "open_within_deadline",
                    subject,
                    format!("still {} after its deadline {}", o.status, o.deadline),
                );
            }
        }
        other => out.add("known_status", subject, format!("unknown status {other:?}")),
    }
}

/// A confirmed order holds exactly its captured payment and its sold stock.
fn check_confirmed(
    o: &OrderView,
    payment: Option<&PaymentView>,
    reservation: Option<&ReservationView>,
    out: &mut Breaches,
) {
    let subject = format!("order {}", o.order_id);
    match payment {
        Some(p) if p.status == "captured" && p.amount != o.total => out.add(
            "confirmed_is_paid",
            subject.clone(),
            format!(
                "confirmed for {} but its payment captured {}",
                o.total, p.amount
            ),
        ),
        Some(p) if p.status == "captured" => {}
        other => out.add(
            "confirmed_is_paid",
            subject.clone(),
            format!(
                "confirmed but its payment is {}",
                other.map_or("missing", |p| p.status.as_str())
            ),
        ),
    }
    match reservation {
        Some(r) if r.status == "sold" && quantities(&r.items) != quantities(&o.items) => out.add(
            "confirmed_is_sold",
            subject,
            format!(
                "confirmed for {:?} but inventory sold {:?}",
                quantities(&o.items),
                quantities(&r.items)
            ),
        ),
        Some(r) if r.status == "sold" => {}
        other => out.add(
            "confirmed_is_sold",
            subject,
            format!(
                "confirmed but its stock is {}",
                other.map_or("missing", |r| r.status.as_str())
            ),
        ),
    }
}

/// The other direction of "confirmed ⇔": money or sold stock only for confirmed orders.
pub(super) fn check_money_and_sales_are_confirmed(
    s: &Snapshot,
    by_order: &ByOrder,
    out: &mut Breaches,
) {
    for p in s.payments.iter().filter(|p| p.status == "captured") {
        let status = by_order.order_status(p.order_id);
        if status != "confirmed" {
            out.add(
                "capture_means_confirmed",
                format!("order {}", p.order_id),
                format!("payment captured but the order is {status}"),
            );
        }
    }
    for r in s.reservations.iter().filter(|r| r.status == "sold") {
        let status = by_order.order_status(r.order_id);
        if status != "confirmed" {
            out.add(
                "sold_means_confirmed",
                format!("order {}", r.order_id),
                format!("stock sold but the order is {status}"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::check;
    use crate::verify::fixture::{consistent, order, rules};
    use crate::verify::snapshot::StockView;

    #[test]
    fn a_confirmed_order_without_payment_is_a_breach() {
        let mut s = consistent();
        s.payments.remove(0);
        s.wallets[0].captured = 10;
        s.wallets[0].balance = 100;
        assert_eq!(rules(&s), vec!["confirmed_is_paid"]);
    }

    #[test]
    fn a_cancelled_order_holding_stock_or_money_is_a_breach() {
        let mut s = consistent();
        s.orders[0].status = "cancelled".into();
        let r = rules(&s);
        assert!(r.contains(&"closed_holds_no_stock"));
        assert!(r.contains(&"closed_keeps_no_money"));
        assert!(r.contains(&"capture_means_confirmed"));
        assert!(r.contains(&"sold_means_confirmed"));
    }

    #[test]
    fn an_open_order_past_its_deadline_is_a_breach() {
        let mut s = consistent();
        let mut late = order(3, "reserved");
        late.deadline = s.taken_at - chrono::Duration::seconds(1);
        s.orders.push(late);
        assert_eq!(rules(&s), vec!["open_within_deadline"]);
    }

    #[test]
    fn a_confirmed_order_charged_another_amount_is_a_breach() {
        let mut s = consistent();
        s.payments[0].amount = 9;
        s.wallets[0].captured = 19;
        s.wallets[0].balance = 91;
        let found = check(&s);
        assert_eq!(
            found.iter().map(|b| b.rule).collect::<Vec<_>>(),
            vec!["confirmed_is_paid"],
            "{found:?}"
        );
        assert!(found[0].detail.contains("captured 9"), "{found:?}");
    }

    #[test]
    fn a_confirmed_order_whose_sale_differs_from_its_items_is_a_breach() {
        let mut s = consistent();
        // The order asks for 2 of A, inventory sold 1 of A and 1 of B.
        s.reservations[0].items = vec![
            ItemView {
                sku: "A".into(),
                quantity: 1,
            },
            ItemView {
                sku: "B".into(),
                quantity: 1,
            },
        ];
        s.stock[0].sold = 1;
        s.stock[0].available = 9;
        s.stock.push(StockView {
            sku: "B".into(),
            available: 0,
            reserved: 0,
            sold: 1,
            adjusted: 1,
        });
        assert_eq!(rules(&s), vec!["confirmed_is_sold"]);
    }

    #[test]
    fn a_sale_of_the_same_quantities_split_over_lines_is_no_breach() {
        let mut s = consistent();
        s.orders[0].items = vec![
            ItemView {
                sku: "A".into(),
                quantity: 1,
            },
            ItemView {
                sku: "A".into(),
                quantity: 1,
            },
        ];
        assert_eq!(check(&s), vec![]);
    }
}
