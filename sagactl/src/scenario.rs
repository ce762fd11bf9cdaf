//! Declarative saga scenarios: given stock and wallets, when orders are placed, events
//! published or orders cancelled (in the order written), expect final order states, stock,
//! wallet figures and events seen on the bus.
//!
//! A scenario is a TOML file (see `scenarios/` for one per path of the contract):
//!
//! ```toml
//! name = "payment failure releases the stock"
//! [given]
//! stock = { BOOK = 5 }
//! wallets = { alice = { amount = 1000, currency = "EUR" } }
//! [[when]]
//! place = { ref = "o1", customer = "alice", items = ["BOOK:2:1500"] }
//! [expect]
//! orders = { o1 = { status = "cancelled", reason = "payment_failed" } }
//! stock = { BOOK = { available = 5, reserved = 0, sold = 0 } }
//! wallets = { alice = { balance = 1000, captured = 0 } }
//! events = ["OrderCreated", "StockReserved", "PaymentFailed", "OrderCancelled", "StockReleased"]
//! ```
//!
//! SKUs and customers are suffixed with a run id so scenarios never collide with each other
//! or with anything else on the stack; order refs (`o1`) stand for order ids, written
//! `{o1}` inside published payloads (a ref never placed gets a fresh id, for sagas driven
//! by published events alone).

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub given: Given,
    #[serde(default)]
    pub when: Vec<Step>,
    #[serde(default)]
    pub expect: Expect,
    /// How long the expectations may take to come true.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_timeout() -> u64 {
    20
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Given {
    #[serde(default)]
    pub stock: BTreeMap<String, i64>,
    #[serde(default)]
    pub wallets: BTreeMap<String, Deposit>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deposit {
    pub amount: i64,
    #[serde(default = "default_currency")]
    pub currency: String,
}

fn default_currency() -> String {
    "EUR".to_owned()
}

/// One step of `when`, run in the order written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Step {
    /// Place an order over HTTP and bind its id to `ref`.
    Place(Place),
    /// Cancel the order a ref names.
    Cancel(String),
    /// Publish an event; `{ref}` in string values becomes that order's id, and SKU and
    /// customer names get the run's suffix.
    Publish(Publish),
    /// Wait until an order has a status, or an event about it was seen.
    Wait(Wait),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Place {
    #[serde(rename = "ref")]
    pub reference: String,
    pub customer: String,
    #[serde(default = "default_currency")]
    pub currency: String,
    /// `SKU:QUANTITY:UNIT_PRICE`.
    pub items: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    #[serde(rename = "type")]
    pub event_type: String,
    /// The payload's version (default: the newest): `data` is read in that version's shape
    /// and published as that version.
    #[serde(default)]
    pub version: Option<u32>,
    pub data: toml::Value,
    /// A name for the message id: two publishes with the same name send the same
    /// `message_id` (a duplicate), without one every publish gets a fresh id.
    #[serde(default)]
    pub message_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wait {
    pub order: String,
    /// Wait until the order (at order-svc) has this status ...
    #[serde(default)]
    pub status: Option<String>,
    /// ... or until an event of this type about it has been seen on the bus (for orders
    /// that exist only in the events a scenario publishes).
    #[serde(default)]
    pub event: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(default)]
    pub orders: BTreeMap<String, BTreeMap<String, toml::Value>>,
    #[serde(default)]
    pub stock: BTreeMap<String, BTreeMap<String, i64>>,
    #[serde(default)]
    pub wallets: BTreeMap<String, BTreeMap<String, i64>>,
    /// Reservation status per order ref (`reserved`, `sold`, `released`, `rejected`, `none`).
    #[serde(default)]
    pub reservations: BTreeMap<String, String>,
    /// Payment status per order ref (`captured`, `failed`, `refunded`, `voided`, `none`).
    #[serde(default)]
    pub payments: BTreeMap<String, String>,
    /// Event types that must be seen on the bus about the scenario's orders (each as many
    /// times as listed).
    #[serde(default)]
    pub events: Vec<String>,
    /// Event types that must never be seen about them.
    #[serde(default)]
    pub absent_events: Vec<String>,
}

impl Scenario {
    pub fn parse(text: &str) -> Result<Scenario, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

/// Names in a scenario made unique to one run.
#[derive(Debug, Clone)]
pub struct Names {
    pub suffix: String,
}

impl Names {
    pub fn sku(&self, sku: &str) -> String {
        format!("{sku}-{}", self.suffix)
    }

    pub fn customer(&self, c: &str) -> String {
        format!("{c}-{}", self.suffix)
    }
}

/// Rewrites a payload for publishing: `{ref}` strings become order ids, `sku` and
/// `customer_id` fields get the run's suffix.
pub fn bind_payload(
    value: &toml::Value,
    names: &Names,
    order_id: &mut dyn FnMut(&str) -> String,
) -> serde_json::Value {
    fn walk(
        key: Option<&str>,
        v: &toml::Value,
        names: &Names,
        order_id: &mut dyn FnMut(&str) -> String,
    ) -> serde_json::Value {
        match v {
            toml::Value::String(s) => {
                if let Some(r) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                    return serde_json::Value::String(order_id(r));
                }
                match key {
                    Some("sku") => serde_json::Value::String(names.sku(s)),
                    Some("customer_id") => serde_json::Value::String(names.customer(s)),
                    _ => serde_json::Value::String(s.clone()),
                }
            }
            toml::Value::Integer(i) => serde_json::json!(i),
            toml::Value::Float(f) => serde_json::json!(f),
            toml::Value::Boolean(b) => serde_json::json!(b),
            toml::Value::Datetime(d) => serde_json::json!(d.to_string()),
            toml::Value::Array(a) => {
                serde_json::Value::Array(a.iter().map(|x| walk(None, x, names, order_id)).collect())
            }
            toml::Value::Table(t) => serde_json::Value::Object(
                t.iter()
                    .map(|(k, x)| (k.clone(), walk(Some(k), x, names, order_id)))
                    .collect(),
            ),
        }
    }
    walk(None, value, names, order_id)
}

/// Whether every listed event type was seen at least as many times as listed; returns the
/// missing ones.
pub fn missing_events(expected: &[String], seen: &[String]) -> Vec<String> {
    let mut pool: BTreeMap<&str, usize> = BTreeMap::new();
    for s in seen {
        *pool.entry(s.as_str()).or_default() += 1;
    }
    let mut missing = Vec::new();
    for e in expected {
        match pool.get_mut(e.as_str()) {
            Some(n) if *n > 0 => *n -= 1,
            _ => missing.push(e.clone()),
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        name = "payment failure releases the stock"
        [given]
        stock = { BOOK = 5 }
        wallets = { alice = { amount = 1000 } }
        [[when]]
        place = { ref = "o1", customer = "alice", items = ["BOOK:2:1500"] }
        [[when]]
        publish = { type = "OrderCancelled", data = { order_id = "{o2}", reason = "timeout" } }
        [[when]]
        wait = { order = "o1", status = "cancelled" }
        [expect]
        orders = { o1 = { status = "cancelled", reason = "payment_failed" } }
        stock = { BOOK = { available = 5 } }
        events = ["OrderCreated", "StockReleased"]
    "#;

    #[test]
    fn a_scenario_parses_with_defaults() {
        let s = Scenario::parse(EXAMPLE).unwrap();
        assert_eq!(s.timeout_secs, 20);
        assert_eq!(s.given.wallets["alice"].currency, "EUR");
        assert_eq!(s.when.len(), 3);
        assert!(matches!(&s.when[1], Step::Publish(p) if p.event_type == "OrderCancelled"));
    }

    #[test]
    fn unknown_keys_are_refused_with_their_place() {
        let err = Scenario::parse("name = \"x\"\n[given]\nstocks = {}\n").unwrap_err();
        assert!(err.contains("stocks"), "{err}");
    }

    #[test]
    fn payload_refs_and_names_are_bound_to_the_run() {
        let names = Names {
            suffix: "r1".into(),
        };
        let data: toml::Value = toml::from_str(
            "order_id = \"{o1}\"\ncustomer_id = \"alice\"\nitems = [{ sku = \"BOOK\", quantity = 1 }]",
        )
        .unwrap();
        let v = bind_payload(&data, &names, &mut |r| format!("id-of-{r}"));
        assert_eq!(v["order_id"], "id-of-o1");
        assert_eq!(v["customer_id"], "alice-r1");
        assert_eq!(v["items"][0]["sku"], "BOOK-r1");
    }

    #[test]
    fn expected_events_count_as_a_multiset() {
        let seen = vec!["A".to_owned(), "B".to_owned(), "A".to_owned()];
        assert!(missing_events(&["A".into(), "A".into(), "B".into()], &seen).is_empty());
        assert_eq!(
            missing_events(&["B".into(), "B".into()], &seen),
            vec!["B".to_owned()]
        );
    }
}
