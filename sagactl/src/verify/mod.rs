//! The contract's at-rest invariants, checked from what the services report over HTTP.
//!
//! [`Snapshot::fetch`] walks every order, stock row, wallet, reservation and payment
//! (`snapshot`); [`check`] is pure and lists every breach: the rules of each order against
//! its payment and reservation (`orders`), and of the stock and the wallets
//! (`balances`); [`check_against`] adds what is known to have been published
//! (`expected`). A saga still in flight shows as breaches too
//! (an order reserved but not yet paid, say): callers that want "at rest" poll until the
//! list is empty or a deadline passes.

mod balances;
mod expected;
#[cfg(test)]
mod fixture;
mod orders;
mod snapshot;

use serde::Serialize;

pub use expected::{Expected, check_against};
pub use snapshot::{
    Endpoints, ItemView, OrderView, PaymentView, ReservationView, Snapshot, StockView, WalletView,
};

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Breach {
    pub rule: &'static str,
    pub subject: String,
    pub detail: String,
}

/// The breaches found so far.
#[derive(Default)]
struct Breaches(Vec<Breach>);

impl Breaches {
    fn add(&mut self, rule: &'static str, subject: impl Into<String>, detail: String) {
        self.0.push(Breach {
            rule,
            subject: subject.into(),
            detail,
        });
    }
}

/// Every breach of the at-rest invariants in `s`.
pub fn check(s: &Snapshot) -> Vec<Breach> {
    let by_order = orders::ByOrder::new(s);
    let mut out = Breaches::default();
    for o in &s.orders {
        orders::check_order(o, &by_order, s.taken_at, &mut out);
    }
    orders::check_money_and_sales_are_confirmed(s, &by_order, &mut out);
    balances::check_stock(s, &mut out);
    balances::check_wallets(s, &mut out);
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consistent_snapshot_has_no_breach() {
        assert_eq!(check(&fixture::consistent()), vec![]);
    }
}
