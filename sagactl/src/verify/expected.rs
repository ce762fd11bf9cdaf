//! What the services cannot tell: the stock and money that were published, summed outside
//! them, against what they hold.

use std::collections::BTreeMap;

use super::snapshot::Snapshot;
use super::{Breach, check};

/// Totals the checker knows independently of the services: what was published as
/// StockAdjusted per SKU and as FundsDeposited per customer.
///
/// The services' own running totals (`adjusted`, `deposited`) move with every application,
/// so an adjustment applied twice keeps `stock_balances` and `wallet_balances` true; only a
/// total from outside the services catches it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// SKU → sum of the StockAdjusted deltas published for it.
    pub stock: BTreeMap<String, i64>,
    /// Customer → sum of the FundsDeposited amounts published for them.
    pub deposits: BTreeMap<String, i64>,
}

impl Expected {
    pub fn is_empty(&self) -> bool {
        self.stock.is_empty() && self.deposits.is_empty()
    }
}

/// Every breach of [`check`], plus the stock and money that do not add up to what was
/// published ([`Expected`]). A SKU or customer the services do not list counts as 0.
pub fn check_against(s: &Snapshot, expected: &Expected) -> Vec<Breach> {
    let mut breaches = check(s);
    for (sku, want) in &expected.stock {
        let have = s
            .stock
            .iter()
            .find(|st| &st.sku == sku)
            .map_or(0, |st| st.available + st.reserved + st.sold);
        if have != *want {
            breaches.push(Breach {
                rule: "stock_matches_published",
                subject: format!("sku {sku}"),
                detail: format!(
                    "available + reserved + sold = {have}, but the adjustments published add up to {want}"
                ),
            });
        }
    }
    for (customer, want) in &expected.deposits {
        let have = s
            .wallets
            .iter()
            .find(|w| &w.customer_id == customer)
            .map_or(0, |w| w.balance + w.captured - w.refunded);
        if have != *want {
            breaches.push(Breach {
                rule: "wallet_matches_published",
                subject: format!("customer {customer}"),
                detail: format!(
                    "balance + captured − refunded = {have}, but the deposits published add up to {want}"
                ),
            });
        }
    }
    breaches
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::fixture::consistent;

    #[test]
    fn a_total_that_differs_from_what_was_published_is_a_breach() {
        let s = consistent();
        let sku = s.stock[0].sku.clone();
        let total = s.stock[0].available + s.stock[0].reserved + s.stock[0].sold;
        let customer = s.wallets[0].customer_id.clone();
        let funds = s.wallets[0].balance + s.wallets[0].captured - s.wallets[0].refunded;
        let mut expected = Expected::default();
        expected.stock.insert(sku.clone(), total);
        expected.deposits.insert(customer.clone(), funds);
        assert!(check_against(&s, &expected).is_empty());

        // The same adjustment and deposit applied twice: the services' own counters still
        // balance, the published totals do not.
        let mut twice = s.clone();
        twice.stock[0].available += total;
        twice.stock[0].adjusted += total;
        twice.wallets[0].balance += funds;
        twice.wallets[0].deposited += funds;
        assert!(check(&twice).is_empty(), "{:?}", check(&twice));
        let rules: Vec<_> = check_against(&twice, &expected)
            .into_iter()
            .map(|b| b.rule)
            .collect();
        assert_eq!(
            rules,
            ["stock_matches_published", "wallet_matches_published"]
        );

        // Something published that never arrived counts as 0.
        expected.stock.insert("NEVER-SEEN".to_owned(), 3);
        let rules: Vec<_> = check_against(&s, &expected)
            .into_iter()
            .map(|b| b.rule)
            .collect();
        assert_eq!(rules, ["stock_matches_published"]);
    }
}
