//! The contract's at-rest invariants, checked on what the three services answer over HTTP.
//!
//! A [`Snapshot`] is everything the read endpoints tell (orders, stock, wallets, and each
//! order's reservation and payment); [`breaches`] compares them and describes every
//! disagreement in a sentence. Pure, so the rules themselves are unit-tested here, and the
//! stack only has to fetch the snapshot.
//!
//! The invariants hold at rest only: while messages are in flight an order may be
//! `confirmed` a moment before inventory turns its reservation into a sale. Callers
//! therefore poll until there is no breach (see `Stack::assert_invariants`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

/// How long after its deadline an open order may still be seen open (the sweep runs at
/// most every second, and clocks are read by different processes).
pub const DEADLINE_GRACE: Duration = Duration::from_secs(3);

/// What the read endpoints answered, at about one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// `GET /orders` → `orders`.
    pub orders: Vec<Value>,
    /// `GET /stock` → `stock` (with `adjusted`).
    pub stock: Vec<Value>,
    /// `GET /wallets` → `wallets` (with `deposited`).
    pub wallets: Vec<Value>,
    /// Order id → `GET /reservations/{id}`; an order inventory never heard of is absent.
    pub reservations: HashMap<String, Value>,
    /// Order id → `GET /payments/{id}`; absent when payment-svc has no row.
    pub payments: HashMap<String, Value>,
    pub taken_at: DateTime<Utc>,
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn int(v: &Value, key: &str) -> i64 {
    v.get(key).and_then(Value::as_i64).unwrap_or(0)
}

/// Quantities per SKU of an `items` array (`sku`, `quantity`), repeated SKUs summed.
fn quantities(items: Option<&Value>) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for item in items.and_then(Value::as_array).into_iter().flatten() {
        *out.entry(text(item, "sku").to_owned()).or_default() += int(item, "quantity");
    }
    out
}

/// Every breach of the at-rest invariants, one sentence each; empty when all hold.
/// `deadline` is the order deadline the stack runs with, for orders that do not carry
/// their own `deadline`.
pub fn breaches(s: &Snapshot, deadline: Duration) -> Vec<String> {
    let mut out = Vec::new();
    // What the reservations and payments add up to, to compare with stock and wallets.
    let mut held: BTreeMap<(String, &str), i64> = BTreeMap::new();
    let mut kept: BTreeMap<String, i64> = BTreeMap::new();

    for order in &s.orders {
        let id = text(order, "order_id");
        let status = text(order, "status");
        let reservation = s.reservations.get(id);
        let payment = s.payments.get(id);
        let r_status = reservation.map_or("none", |r| text(r, "status"));
        let p_status = payment.map_or("none", |p| text(p, "status"));

        if let Some(r) = reservation
            && matches!(r_status, "reserved" | "sold")
        {
            for (sku, qty) in quantities(r.get("items")) {
                *held
                    .entry((
                        sku,
                        if r_status == "sold" {
                            "sold"
                        } else {
                            "reserved"
                        },
                    ))
                    .or_default() += qty;
            }
        }
        if let Some(p) = payment
            && p_status == "captured"
        {
            *kept.entry(text(p, "customer_id").to_owned()).or_default() += int(p, "amount");
        }

        match status {
            "confirmed" => {
                if p_status != "captured" {
                    out.push(format!(
                        "order {id} is confirmed but its payment is {p_status} \
                         (expected exactly one captured, unrefunded payment)"
                    ));
                } else if let Some(p) = payment
                    && int(p, "amount") != int(order, "total")
                {
                    out.push(format!(
                        "order {id} is confirmed for {} but its payment captured {}",
                        int(order, "total"),
                        int(p, "amount")
                    ));
                }
                if r_status != "sold" {
                    out.push(format!(
                        "order {id} is confirmed but its reservation is {r_status} (expected sold)"
                    ));
                } else if let Some(r) = reservation
                    && quantities(r.get("items")) != quantities(order.get("items"))
                {
                    out.push(format!(
                        "order {id} is confirmed but inventory sold {} instead of its items {}",
                        r["items"], order["items"]
                    ));
                }
            }
            "rejected" | "cancelled" => {
                if matches!(r_status, "reserved" | "sold") {
                    out.push(format!(
                        "order {id} is {status} but inventory still holds its stock ({r_status})"
                    ));
                }
                if p_status == "captured" {
                    out.push(format!(
                        "order {id} is {status} but payment-svc keeps its money (payment captured, not refunded)"
                    ));
                }
            }
            "pending" | "reserved" => {
                // The order's own deadline when order-svc reports it, else the stack's.
                let at = |key: &str| {
                    DateTime::parse_from_rfc3339(text(order, key))
                        .ok()
                        .map(|t| t.with_timezone(&Utc))
                };
                let due = at("deadline").or_else(|| {
                    at("created_at")
                        .map(|c| c + chrono::Duration::from_std(deadline).unwrap_or_default())
                });
                let grace = chrono::Duration::from_std(DEADLINE_GRACE).unwrap_or_default();
                if let Some(due) = due
                    && s.taken_at > due + grace
                {
                    out.push(format!(
                        "order {id} is still {status} {:.1} s after its deadline",
                        (s.taken_at - due).num_milliseconds() as f64 / 1000.0,
                    ));
                }
                // Otherwise an open order may hold stock and money: its saga is running.
            }
            other => out.push(format!(
                "order {id} has a status outside the contract: {other:?}"
            )),
        }
    }

    for row in &s.stock {
        let sku = text(row, "sku");
        let (available, reserved, sold, adjusted) = (
            int(row, "available"),
            int(row, "reserved"),
            int(row, "sold"),
            int(row, "adjusted"),
        );
        if available < 0 || reserved < 0 || sold < 0 {
            out.push(format!(
                "SKU {sku} has a negative bucket: available {available}, reserved {reserved}, sold {sold}"
            ));
        }
        if adjusted != available + reserved + sold {
            out.push(format!(
                "SKU {sku}: adjustments total {adjusted} but available + reserved + sold = \
                 {available} + {reserved} + {sold} = {}",
                available + reserved + sold
            ));
        }
        let by_orders = |bucket: &str| {
            held.get(&(sku.to_owned(), bucket))
                .copied()
                .unwrap_or_default()
        };
        if reserved != by_orders("reserved") {
            out.push(format!(
                "SKU {sku}: {reserved} reserved, but the reservations of the orders hold {}",
                by_orders("reserved")
            ));
        }
        if sold != by_orders("sold") {
            out.push(format!(
                "SKU {sku}: {sold} sold, but the sold reservations of the orders hold {}",
                by_orders("sold")
            ));
        }
    }
    for ((sku, bucket), qty) in &held {
        if !s.stock.iter().any(|row| text(row, "sku") == sku) {
            out.push(format!(
                "orders hold {qty} of SKU {sku} ({bucket}) but inventory lists no such SKU"
            ));
        }
    }

    for w in &s.wallets {
        let customer = text(w, "customer_id");
        let (balance, deposited, captured, refunded) = (
            int(w, "balance"),
            int(w, "deposited"),
            int(w, "captured"),
            int(w, "refunded"),
        );
        if balance < 0 {
            out.push(format!(
                "wallet of {customer} has a negative balance {balance}"
            ));
        }
        if deposited != balance + captured - refunded {
            out.push(format!(
                "wallet of {customer}: deposits total {deposited} but balance + captured - refunded = \
                 {balance} + {captured} - {refunded} = {}",
                balance + captured - refunded
            ));
        }
        let by_orders = kept.get(customer).copied().unwrap_or_default();
        if captured - refunded != by_orders {
            out.push(format!(
                "wallet of {customer}: captured - refunded = {} but its captured payments total {by_orders}",
                captured - refunded
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order(id: &str, status: &str) -> Value {
        json!({
            "order_id": id, "status": status, "customer_id": "c-1", "currency": "EUR",
            "total": 300, "items": [{"sku": "A", "quantity": 2, "unit_price": 150}],
            "created_at": Utc::now().to_rfc3339(),
        })
    }

    /// One confirmed order: 2 of A sold out of 5, 300 captured out of 1000.
    fn consistent() -> Snapshot {
        let mut s = Snapshot {
            orders: vec![order("o1", "confirmed")],
            stock: vec![
                json!({"sku": "A", "available": 3, "reserved": 0, "sold": 2, "adjusted": 5}),
            ],
            wallets: vec![
                json!({"customer_id": "c-1", "balance": 700, "deposited": 1000, "captured": 300, "refunded": 0}),
            ],
            taken_at: Utc::now(),
            ..Snapshot::default()
        };
        s.reservations.insert(
            "o1".into(),
            json!({"status": "sold", "items": [{"sku": "A", "quantity": 2}]}),
        );
        s.payments.insert(
            "o1".into(),
            json!({"status": "captured", "customer_id": "c-1", "amount": 300}),
        );
        s
    }

    fn breaches_of(s: &Snapshot) -> Vec<String> {
        breaches(s, Duration::from_secs(30))
    }

    #[test]
    fn a_settled_saga_breaks_nothing() {
        assert_eq!(breaches_of(&consistent()), Vec::<String>::new());
    }

    #[test]
    fn a_confirmed_order_without_a_payment_is_a_breach() {
        let mut s = consistent();
        s.payments.clear();
        s.wallets[0]["balance"] = json!(1000);
        s.wallets[0]["captured"] = json!(0);
        let found = breaches_of(&s);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("confirmed but its payment is none"),
            "{found:?}"
        );
    }

    #[test]
    fn a_cancelled_order_that_keeps_stock_or_money_is_a_breach() {
        let mut s = consistent();
        s.orders[0]["status"] = json!("cancelled");
        let found = breaches_of(&s);
        assert!(
            found.iter().any(|b| b.contains("still holds its stock")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|b| b.contains("keeps its money")),
            "{found:?}"
        );
    }

    #[test]
    fn stock_that_does_not_add_up_is_a_breach() {
        let mut s = consistent();
        s.stock[0]["available"] = json!(4);
        let found = breaches_of(&s);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("SKU A: adjustments total 5"),
            "{found:?}"
        );
    }

    #[test]
    fn a_wallet_that_does_not_add_up_is_a_breach() {
        let mut s = consistent();
        s.wallets[0]["refunded"] = json!(300);
        let found = breaches_of(&s);
        assert!(
            found.iter().any(|b| b.contains("deposits total 1000")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|b| b.contains("captured payments total 300")),
            "{found:?}"
        );
    }

    #[test]
    fn an_open_order_past_its_deadline_is_a_breach() {
        let mut s = consistent();
        let mut open = order("o2", "pending");
        open["created_at"] = json!((Utc::now() - chrono::Duration::seconds(60)).to_rfc3339());
        s.orders.push(open);
        let found = breaches_of(&s);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("o2 is still pending"), "{found:?}");
    }

    #[test]
    fn an_open_order_is_judged_by_its_own_deadline_when_it_has_one() {
        let mut s = consistent();
        let mut open = order("o2", "reserved");
        open["created_at"] = json!((Utc::now() - chrono::Duration::seconds(60)).to_rfc3339());
        open["deadline"] = json!((Utc::now() + chrono::Duration::seconds(60)).to_rfc3339());
        s.orders.push(open.clone());
        assert_eq!(breaches_of(&s), Vec::<String>::new());
        open["deadline"] = json!((Utc::now() - chrono::Duration::seconds(10)).to_rfc3339());
        s.orders[1] = open;
        let found = breaches_of(&s);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("o2 is still reserved"), "{found:?}");
    }
}
