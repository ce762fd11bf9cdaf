//! The rules of the stock and the wallets: not negative, balanced, and matching what the
//! reservations hold and what the payments took.

use std::collections::{BTreeMap, HashMap};

use super::Breaches;
use super::snapshot::Snapshot;

/// (reserved, sold) per SKU, summed over the reservations.
fn held_by_reservations(s: &Snapshot) -> BTreeMap<&str, (i64, i64)> {
    let mut held: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for r in &s.reservations {
        for item in &r.items {
            let entry = held.entry(item.sku.as_str()).or_default();
            match r.status.as_str() {
                "reserved" => entry.0 += item.quantity,
                "sold" => entry.1 += item.quantity,
                _ => {}
            }
        }
    }
    held
}

/// Each SKU is not negative, balances, and matches what the reservations hold.
pub(super) fn check_stock(s: &Snapshot, out: &mut Breaches) {
    let held = held_by_reservations(s);
    for st in &s.stock {
        let subject = format!("sku {}", st.sku);
        if st.available < 0 || st.reserved < 0 || st.sold < 0 {
            out.add(
                "stock_not_negative",
                subject.clone(),
                format!(
                    "available {} reserved {} sold {}",
                    st.available, st.reserved, st.sold
                ),
            );
        }
        if st.adjusted != st.available + st.reserved + st.sold {
            out.add(
                "stock_balances",
                subject.clone(),
                format!(
                    "adjustments {} ≠ available {} + reserved {} + sold {}",
                    st.adjusted, st.available, st.reserved, st.sold
                ),
            );
        }
        // A SKU no reservation names holds nothing: (0, 0).
        let (reserved, sold) = held.get(st.sku.as_str()).copied().unwrap_or((0, 0));
        if (reserved, sold) != (st.reserved, st.sold) {
            out.add(
                "stock_matches_reservations",
                subject,
                format!(
                    "stock says reserved {} sold {}; reservations say reserved {reserved} sold {sold}",
                    st.reserved, st.sold
                ),
            );
        }
    }
    // Stock held by reservations of a SKU inventory does not list at all.
    for (sku, (reserved, sold)) in &held {
        if (*reserved, *sold) != (0, 0) && !s.stock.iter().any(|st| st.sku == *sku) {
            out.add(
                "stock_matches_reservations",
                format!("sku {sku}"),
                format!(
                    "inventory lists no such SKU; reservations say reserved {reserved} sold {sold}"
                ),
            );
        }
    }
}

/// (captured, refunded) per customer, summed over the payments.
fn paid_by_payments(s: &Snapshot) -> HashMap<&str, (i64, i64)> {
    let mut paid: HashMap<&str, (i64, i64)> = HashMap::new();
    for p in &s.payments {
        let entry = paid.entry(p.customer_id.as_str()).or_default();
        match p.status.as_str() {
            "captured" => entry.0 += p.amount,
            "refunded" => {
                entry.0 += p.amount;
                entry.1 += p.amount;
            }
            _ => {}
        }
    }
    paid
}

/// Each wallet is not negative, balances, and matches its payments.
pub(super) fn check_wallets(s: &Snapshot, out: &mut Breaches) {
    let paid = paid_by_payments(s);
    for w in &s.wallets {
        let subject = format!("customer {}", w.customer_id);
        if w.balance < 0 {
            out.add(
                "balance_not_negative",
                subject.clone(),
                format!("balance {}", w.balance),
            );
        }
        if w.deposited != w.balance + w.captured - w.refunded {
            out.add(
                "wallet_balances",
                subject.clone(),
                format!(
                    "deposits {} ≠ balance {} + captured {} − refunded {}",
                    w.deposited, w.balance, w.captured, w.refunded
                ),
            );
        }
        // A customer without payments was charged and refunded nothing: (0, 0).
        let (captured, refunded) = paid.get(w.customer_id.as_str()).copied().unwrap_or((0, 0));
        if (captured, refunded) != (w.captured, w.refunded) {
            out.add(
                "wallet_matches_payments",
                subject,
                format!(
                    "wallet says captured {} refunded {}; payments say captured {captured} refunded {refunded}",
                    w.captured, w.refunded
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::verify::check;
    use crate::verify::fixture::{consistent, order, rules};
    use crate::verify::snapshot::{ItemView, ReservationView};
    use uuid::Uuid;

    #[test]
    fn unbalanced_stock_and_wallets_are_breaches() {
        let mut s = consistent();
        s.stock[0].available = 9;
        s.wallets[0].balance = 50;
        let r = rules(&s);
        assert!(r.contains(&"stock_balances"));
        assert!(r.contains(&"wallet_balances"));
    }

    #[test]
    fn stock_held_of_a_sku_inventory_does_not_list_is_a_breach() {
        let mut s = consistent();
        s.orders.push(order(3, "reserved"));
        s.reservations.push(ReservationView {
            order_id: Uuid::from_u128(3),
            status: "reserved".into(),
            items: vec![ItemView {
                sku: "GHOST".into(),
                quantity: 4,
            }],
        });
        let found = check(&s);
        assert_eq!(
            found.iter().map(|b| b.rule).collect::<Vec<_>>(),
            vec!["stock_matches_reservations"],
            "{found:?}"
        );
        assert_eq!(found[0].subject, "sku GHOST");
    }
}
