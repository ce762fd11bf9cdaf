//! The contract's at-rest invariants, checked from what the services report over HTTP.
//!
//! [`Snapshot::fetch`] walks every order, stock row, wallet, reservation and payment;
//! [`check`] is pure and lists every breach. A saga still in flight shows as breaches too
//! (an order reserved but not yet paid, say): callers that want "at rest" poll until the
//! list is empty or a deadline passes.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Deserialize)]
pub struct OrderView {
    pub order_id: Uuid,
    pub customer_id: String,
    pub status: String,
    pub total: i64,
    pub deadline: DateTime<Utc>,
    /// The order's lines (`unit_price` is not needed here and is ignored).
    pub items: Vec<ItemView>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StockView {
    pub sku: String,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    pub adjusted: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WalletView {
    pub customer_id: String,
    pub balance: i64,
    pub deposited: i64,
    pub captured: i64,
    pub refunded: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ItemView {
    pub sku: String,
    pub quantity: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReservationView {
    pub order_id: Uuid,
    pub status: String,
    pub items: Vec<ItemView>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaymentView {
    pub order_id: Uuid,
    pub customer_id: String,
    pub amount: i64,
    pub status: String,
}

/// Everything the checks read, taken at `taken_at`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub taken_at: DateTime<Utc>,
    pub orders: Vec<OrderView>,
    pub stock: Vec<StockView>,
    pub wallets: Vec<WalletView>,
    pub reservations: Vec<ReservationView>,
    pub payments: Vec<PaymentView>,
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Breach {
    pub rule: &'static str,
    pub subject: String,
    pub detail: String,
}

/// Base URLs of the three services.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub order: String,
    pub inventory: String,
    pub payment: String,
}

/// The services answer at most 1000 rows a page.
const PAGE: usize = 1000;

impl Snapshot {
    /// Reads every list endpoint page by page, however many rows there are.
    pub async fn fetch(http: &reqwest::Client, at: &Endpoints) -> anyhow::Result<Snapshot> {
        let taken_at = Utc::now();
        let orders = fetch_pages(
            http,
            &at.order,
            "/orders",
            "orders",
            BEFORE_ANY_ID,
            |o: &OrderView| o.order_id.to_string(),
        )
        .await?;
        let reservations = fetch_pages(
            http,
            &at.inventory,
            "/reservations",
            "reservations",
            BEFORE_ANY_ID,
            |r: &ReservationView| r.order_id.to_string(),
        )
        .await?;
        let payments = fetch_pages(
            http,
            &at.payment,
            "/payments",
            "payments",
            BEFORE_ANY_ID,
            |p: &PaymentView| p.order_id.to_string(),
        )
        .await?;
        let stock = fetch_pages(
            http,
            &at.inventory,
            "/stock",
            "stock",
            BEFORE_ANY_KEY,
            |s: &StockView| s.sku.clone(),
        )
        .await?;
        let wallets = fetch_pages(
            http,
            &at.payment,
            "/wallets",
            "wallets",
            BEFORE_ANY_KEY,
            |w: &WalletView| w.customer_id.clone(),
        )
        .await?;
        Ok(Snapshot {
            taken_at,
            orders,
            stock,
            wallets,
            reservations,
            payments,
        })
    }
}

async fn fetch_list<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    key: &str,
) -> anyhow::Result<Vec<T>> {
    let resp = http.get(url).send().await?.error_for_status()?;
    let mut body: serde_json::Value = resp.json().await?;
    Ok(serde_json::from_value(body[key].take())?)
}

/// A key that sorts before every row of a list: the nil UUID for lists in id order, the
/// empty string for lists in the order of a text key.
const BEFORE_ANY_ID: &str = "00000000-0000-0000-0000-000000000000";
const BEFORE_ANY_KEY: &str = "";

/// Every row of the list at `base` + `path`, a page at a time: each page asks for the
/// rows after the last key (`id`) of the one before, the first after `first`, until a
/// page comes back short. Every page names `after`, so every page comes in key order
/// (`GET /orders` without it answers the newest first).
async fn fetch_pages<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    key: &str,
    first: &str,
    id: impl Fn(&T) -> String,
) -> anyhow::Result<Vec<T>> {
    let mut all = Vec::new();
    let mut after = first.to_owned();
    let list = format!("{}{path}", base.trim_end_matches('/'));
    let limit = PAGE.to_string();
    loop {
        let query = [("limit", limit.as_str()), ("after", after.as_str())];
        let url = url::Url::parse_with_params(&list, &query)?;
        let page: Vec<T> = fetch_list(http, url.as_str(), key).await?;
        let n = page.len();
        if let Some(last) = page.last() {
            after = id(last);
        }
        all.extend(page);
        if n < PAGE {
            return Ok(all);
        }
    }
}

/// Quantities per SKU of `items`, a SKU listed twice counted once with the sum.
fn quantities(items: &[ItemView]) -> BTreeMap<&str, i64> {
    let mut out = BTreeMap::new();
    for item in items {
        *out.entry(item.sku.as_str()).or_default() += item.quantity;
    }
    out
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

/// The snapshot's reservations, payments and orders by order id.
struct ByOrder<'a> {
    reservations: HashMap<Uuid, &'a ReservationView>,
    payments: HashMap<Uuid, &'a PaymentView>,
    orders: HashMap<Uuid, &'a OrderView>,
}

impl<'a> ByOrder<'a> {
    fn new(s: &'a Snapshot) -> Self {
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

/// Every breach of the at-rest invariants in `s`.
pub fn check(s: &Snapshot) -> Vec<Breach> {
    let by_order = ByOrder::new(s);
    let mut out = Breaches::default();
    for o in &s.orders {
        check_order(o, &by_order, s.taken_at, &mut out);
    }
    check_money_and_sales_are_confirmed(s, &by_order, &mut out);
    check_stock(s, &mut out);
    check_wallets(s, &mut out);
    out.0
}

/// The rules of one order's status against its payment and reservation.
fn check_order(o: &OrderView, by_order: &ByOrder, taken_at: DateTime<Utc>, out: &mut Breaches) {
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
fn check_money_and_sales_are_confirmed(s: &Snapshot, by_order: &ByOrder, out: &mut Breaches) {
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
fn check_stock(s: &Snapshot, out: &mut Breaches) {
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
fn check_wallets(s: &Snapshot, out: &mut Breaches) {
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

    fn order(id: u128, status: &str) -> OrderView {
        OrderView {
            order_id: Uuid::from_u128(id),
            customer_id: "alice".into(),
            status: status.into(),
            total: 10,
            deadline: Utc::now() + chrono::Duration::seconds(60),
            items: vec![ItemView {
                sku: "A".into(),
                quantity: 2,
            }],
        }
    }

    fn consistent() -> Snapshot {
        Snapshot {
            taken_at: Utc::now(),
            orders: vec![order(1, "confirmed"), order(2, "cancelled")],
            stock: vec![StockView {
                sku: "A".into(),
                available: 8,
                reserved: 0,
                sold: 2,
                adjusted: 10,
            }],
            wallets: vec![WalletView {
                customer_id: "alice".into(),
                balance: 90,
                deposited: 100,
                captured: 20,
                refunded: 10,
            }],
            reservations: vec![
                ReservationView {
                    order_id: Uuid::from_u128(1),
                    status: "sold".into(),
                    items: vec![ItemView {
                        sku: "A".into(),
                        quantity: 2,
                    }],
                },
                ReservationView {
                    order_id: Uuid::from_u128(2),
                    status: "released".into(),
                    items: vec![ItemView {
                        sku: "A".into(),
                        quantity: 1,
                    }],
                },
            ],
            payments: vec![
                PaymentView {
                    order_id: Uuid::from_u128(1),
                    customer_id: "alice".into(),
                    amount: 10,
                    status: "captured".into(),
                },
                PaymentView {
                    order_id: Uuid::from_u128(2),
                    customer_id: "alice".into(),
                    amount: 10,
                    status: "refunded".into(),
                },
            ],
        }
    }

    fn rules(s: &Snapshot) -> Vec<&'static str> {
        check(s).into_iter().map(|b| b.rule).collect()
    }

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

    #[test]
    fn a_consistent_snapshot_has_no_breach() {
        assert_eq!(check(&consistent()), vec![]);
    }

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
    fn unbalanced_stock_and_wallets_are_breaches() {
        let mut s = consistent();
        s.stock[0].available = 9;
        s.wallets[0].balance = 50;
        let r = rules(&s);
        assert!(r.contains(&"stock_balances"));
        assert!(r.contains(&"wallet_balances"));
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
