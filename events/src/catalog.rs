//! The event catalog of the contract: one typed payload per event with its format rules
//! ([`Payload`]), and the one declaration of every event type (name, version, routing key,
//! producer, fields) from which the rest derives: [`Event`], [`EventType`], decoding, JSON
//! Schemas and the AsyncAPI document ([`crate::contract`]), the docs tables
//! ([`crate::tables`]) and `sagactl publish --help`.
//!
//! Money is in integer minor units (`i64`), currencies are ISO 4217 codes. Readers are
//! tolerant: unknown payload fields are ignored. Decoding answers with a
//! [`messaging::DecodeError`] whose `code()` is what a dead-lettered message's
//! `x-saga-error` says.
//!
//! To add an event type: write its payload struct below with an `impl Payload` (rules,
//! correlation, example), add one entry to the `declare_catalog!` invocation below, and
//! add it to the `CONSUMES` of the services that handle it.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::payload::{Correlation, Payload};

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderItem {
    #[schemars(regex(pattern = SKU_PATTERN))]
    pub sku: String,
    #[schemars(range(min = 1, max = MAX_QUANTITY))]
    #[serde(deserialize_with = "integral")]
    pub quantity: i64,
    /// Price of one unit, in minor units of the order's currency; at most what keeps any
    /// order's total within 64 bits.
    #[schemars(range(min = 0, max = MAX_UNIT_PRICE))]
    #[serde(deserialize_with = "integral")]
    pub unit_price: i64,
}

/// An integer that may be written as a JSON number with a zero fraction (`2.0`): JSON
/// Schema's `integer` counts it as one, so every client generated from the documents may
/// send it. A fraction, or a number past 2^53 where floats stop being exact, is refused.
fn integral<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    use serde::de::{Error, Unexpected, Visitor};

    struct Integral;

    impl Visitor<'_> for Integral {
        type Value = i64;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an integer")
        }

        fn visit_i64<E: Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }

        fn visit_u64<E: Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
        }

        fn visit_f64<E: Error>(self, v: f64) -> Result<i64, E> {
            const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
            if v.fract() == 0.0 && v.abs() < EXACT {
                Ok(v as i64)
            } else {
                Err(E::invalid_value(Unexpected::Float(v), &self))
            }
        }
    }

    deserializer.deserialize_any(Integral)
}

/// A quantity of one SKU held for an order. inventory-svc merges an order's lines per SKU,
/// so one item may hold more than one line's largest quantity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockItem {
    #[schemars(regex(pattern = SKU_PATTERN))]
    pub sku: String,
    #[schemars(range(min = 1, max = MAX_MERGED_QUANTITY))]
    pub quantity: i64,
}

/// A SKU that was short when an order asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Unavailable {
    #[schemars(regex(pattern = SKU_PATTERN))]
    pub sku: String,
    /// The quantity wanted, summed over the order's lines of this SKU.
    pub requested: i64,
    /// What was on hand (0 for a SKU never adjusted).
    pub available: i64,
}

/// An order was placed (`POST /orders`). Correlation id: the order id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCreated {
    pub order_id: Uuid,
    #[schemars(length(min = 1, max = MAX_CUSTOMER_ID_CHARS))]
    pub customer_id: String,
    #[schemars(length(min = 1, max = MAX_ITEMS))]
    pub items: Vec<OrderItem>,
    /// The sum of quantity × unit_price, in minor units (written by order-svc, not
    /// recomputed by readers).
    #[schemars(range(min = 0))]
    pub total: i64,
    /// ISO 4217 code.
    #[schemars(regex(pattern = CURRENCY_PATTERN))]
    pub currency: String,
}

impl Payload for OrderCreated {
    const CAUSED: bool = false;

    fn validate(&self) -> Result<(), String> {
        check_customer(&self.customer_id)?;
        check_currency(&self.currency)?;
        check_non_negative("total", self.total)?;
        check_count("items", self.items.len())?;
        for item in &self.items {
            check_sku(&item.sku)?;
            check_quantity(item.quantity)?;
            check_unit_price(item.unit_price)?;
        }
        Ok(())
    }

    fn correlation(&self) -> Correlation<'_> {
        Correlation::Order(self.order_id)
    }

    fn example() -> Self {
        let line = |sku: &str, quantity, unit_price| OrderItem {
            sku: sku.into(),
            quantity,
            unit_price,
        };
        OrderCreated {
            order_id: EXAMPLE_ORDER,
            customer_id: EXAMPLE_CUSTOMER.into(),
            items: vec![line("BOOK", 2, 1500), line("PEN-01", 1, 250)],
            total: 3250,
            currency: EXAMPLE_CURRENCY.into(),
        }
    }
}

/// inventory-svc reserved every item of the order. Correlation id: the order id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReserved {
    pub order_id: Uuid,
    #[schemars(length(min = 1, max = MAX_CUSTOMER_ID_CHARS))]
    pub customer_id: String,
    /// One entry per SKU (repeated SKUs of the order summed), sorted by SKU.
    #[schemars(length(min = 1, max = MAX_ITEMS))]
    pub items: Vec<StockItem>,
    /// The order's total, copied, in minor units.
    #[schemars(range(min = 0))]
    pub total: i64,
    /// ISO 4217 code.
    #[schemars(regex(pattern = CURRENCY_PATTERN))]
    pub currency: String,
}

impl Payload for StockReserved {
    fn validate(&self) -> Result<(), String> {
        check_customer(&self.customer_id)?;
        check_currency(&self.currency)?;
        check_non_negative("total", self.total)?;
        check_stock_items(&self.items)
    }

    fn correlation(&self) -> Correlation<'_> {
        Correlation::Order(self.order_id)
    }

    fn example() -> Self {
        StockReserved {
            order_id: EXAMPLE_ORDER,
            customer_id: EXAMPLE_CUSTOMER.into(),
            items: example_stock(),
            total: 3250,
            currency: EXAMPLE_CURRENCY.into(),
        }
    }
}

/// inventory-svc reserved nothing because some SKU is short. Correlation id: the order id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockRejected {
    pub order_id: Uuid,
    /// Free text, not checked; inventory-svc writes `insufficient_stock`.
    pub reason: String,
    /// May be empty.
    pub unavailable: Vec<Unavailable>,
}

impl Payload for StockRejected {
    fn validate(&self) -> Result<(), String> {
        self.unavailable.iter().try_for_each(|u| check_sku(&u.sku))
    }

    fn correlation(&self) -> Correlation<'_> {
        Correlation::Order(self.order_id)
    }

    fn example() -> Self {
        StockRejected {
            order_id: EXAMPLE_ORDER,
            reason: "insufficient_stock".into(),
            unavailable: vec![Unavailable {
                sku: "BOOK".into(),
                requested: 2,
                available: 1,
            }],
        }
    }
}

/// payment-svc captured the order's total. Correlation id: the order id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentDone {
    pub order_id: Uuid,
    /// New for each capture.
    pub payment_id: Uuid,
    #[schemars(length(min = 1, max = MAX_CUSTOMER_ID_CHARS))]
    pub customer_id: String,
    /// In minor units.
    #[schemars(range(min = 0))]
    pub amount: i64,
    /// ISO 4217 code.
    #[schemars(regex(pattern = CURRENCY_PATTERN))]
    pub currency: String,
}

impl Payload for PaymentDone {
    fn validate(&self) -> Result<(), String> {
        check_customer(&self.customer_id)?;
        check_currency(&self.currency)?;
        check_non_negative("amount", self.amount)
    }

    fn correlation(&self) -> Correlation<'_> {
        Correlation::Order(self.order_id)
    }

    fn example() -> Self {
        PaymentDone {
            order_id: EXAMPLE_ORDER,
            payment_id: EXAMPLE_PAYMENT,
            customer_id: EXAMPLE_CUSTOMER.into(),
            amount: 3250,
            currency: EXAMPLE_CURRENCY.into(),
        }
    }
}

/// Why a payment was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentFailureReason {
    InsufficientFunds,
    UnknownCustomer,
    CurrencyMismatch,
    OrderCancelled,
}

/// payment-svc charged nothing. Correlation id: the order id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentFailed {
    pub order_id: Uuid,
    /// Not checked.
    pub customer_id: String,
    /// The amount that was asked, in minor units.
    #[schemars(range(min = 0))]
    pub amount: i64,
    /// `insufficient_funds`, `unknown_customer` (no wallet), `currency_mismatch` (wallet in
    /// another currency) or `order_cancelled` (the order was cancelled before the charge).
    pub reason: PaymentFailureReason,
}

impl Payload for PaymentFailed {
    fn validate(&self) -> Result<(), String> {
        check_non_negative("amount", self.amount)
    }

    fn correlation(&self) -> Correlation<'_> {
        Correlation::Order(self.order_id)
    }

    fn example() -> Self {
        PaymentFailed {
            order_id: EXAMPLE_ORDER,
            customer_id: EXAMPLE_CUSTOMER.into(),
            amount: 3250,
            reason: PaymentFailureReason::InsufficientFunds,
        }
    }
}

/// The order is confirmed. Correlation id: the order id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderConfirmed {
    pub order_id: Uuid,
}

impl Payload for OrderConfirmed {
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    fn correlation(&self) -> Correlation<'_> {
        Correlation::Order(self.order_id)
    }

    fn example() -> Self {
        OrderConfirmed {
            order_id: EXAMPLE_ORDER,
        }
    }
}

/// Why an order was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    PaymentFailed,
    Timeout,
    CustomerRequest,
}

impl CancelReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::PaymentFailed => "payment_failed",
            CancelReason::Timeout => "timeout",
            CancelReason::CustomerRequest => "customer_request",
        }
    }
}

/// The order is cancelled. Correlation id: the order id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCancelled {
    pub order_id: Uuid,
    /// `payment_failed`, `timeout` (the deadline passed) or `customer_request`.
    pub reason: CancelReason,
}

impl Payload for OrderCancelled {
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    fn correlation(&self) -> Correlation<'_> {
        Correlation::Order(self.order_id)
    }

    fn example() -> Self {
        OrderCancelled {
            order_id: EXAMPLE_ORDER,
            reason: CancelReason::PaymentFailed,
        }
    }
}

/// inventory-svc gave back what it held for a cancelled order (compensates StockReserved).
/// Correlation id: the order id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReleased {
    pub order_id: Uuid,
    /// May be empty (nothing was held).
    pub items: Vec<StockItem>,
}

impl Payload for StockReleased {
    fn validate(&self) -> Result<(), String> {
        self.items.iter().try_for_each(check_stock_item)
    }

    fn correlation(&self) -> Correlation<'_> {
        Correlation::Order(self.order_id)
    }

    fn example() -> Self {
        StockReleased {
            order_id: EXAMPLE_ORDER,
            items: example_stock(),
        }
    }
}

/// payment-svc refunded a captured payment (compensates PaymentDone). Correlation id: the
/// order id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentRefunded {
    pub order_id: Uuid,
    /// The refunded capture.
    pub payment_id: Uuid,
    /// In minor units.
    #[schemars(range(min = 0))]
    pub amount: i64,
    /// ISO 4217 code.
    #[schemars(regex(pattern = CURRENCY_PATTERN))]
    pub currency: String,
}

impl Payload for PaymentRefunded {
    fn validate(&self) -> Result<(), String> {
        check_currency(&self.currency)?;
        check_non_negative("amount", self.amount)
    }

    fn correlation(&self) -> Correlation<'_> {
        Correlation::Order(self.order_id)
    }

    fn example() -> Self {
        PaymentRefunded {
            order_id: EXAMPLE_ORDER,
            payment_id: EXAMPLE_PAYMENT,
            amount: 3250,
            currency: EXAMPLE_CURRENCY.into(),
        }
    }
}

/// An operator adds or removes available stock. Correlation id: the SKU. An adjustment that
/// would make the stock negative is dead-lettered (`negative_stock`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockAdjusted {
    #[schemars(regex(pattern = SKU_PATTERN))]
    pub sku: String,
    /// Not 0: positive adds, negative removes.
    #[schemars(extend("not" = {"const": 0}))]
    pub delta: i64,
}

impl Payload for StockAdjusted {
    const CAUSED: bool = false;

    fn validate(&self) -> Result<(), String> {
        check_sku(&self.sku)?;
        if self.delta == 0 {
            return Err("delta must not be 0".into());
        }
        Ok(())
    }

    fn correlation(&self) -> Correlation<'_> {
        Correlation::Key(&self.sku)
    }

    fn example() -> Self {
        StockAdjusted {
            sku: "BOOK".into(),
            delta: 10,
        }
    }
}

/// An operator credits a customer's wallet. Correlation id: the customer id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FundsDeposited {
    #[schemars(length(min = 1, max = MAX_CUSTOMER_ID_CHARS))]
    pub customer_id: String,
    /// Positive, in minor units.
    #[schemars(range(min = 1))]
    pub amount: i64,
    /// ISO 4217 code.
    #[schemars(regex(pattern = CURRENCY_PATTERN))]
    pub currency: String,
}

impl Payload for FundsDeposited {
    const CAUSED: bool = false;

    fn validate(&self) -> Result<(), String> {
        check_customer(&self.customer_id)?;
        check_currency(&self.currency)?;
        if self.amount <= 0 {
            return Err("amount must be positive".into());
        }
        Ok(())
    }

    fn correlation(&self) -> Correlation<'_> {
        Correlation::Key(&self.customer_id)
    }

    fn example() -> Self {
        FundsDeposited {
            customer_id: EXAMPLE_CUSTOMER.into(),
            amount: 5000,
            currency: EXAMPLE_CURRENCY.into(),
        }
    }
}

const EXAMPLE_ORDER: Uuid = Uuid::from_u128(0x0193a4f2_7a00_7c4d_8e5f_0a1b2c3d4e5f);
const EXAMPLE_PAYMENT: Uuid = Uuid::from_u128(0x0193a4f2_7d10_7aa0_b1c2_d3e4f5a6b7c8);
const EXAMPLE_CUSTOMER: &str = "alice";
const EXAMPLE_CURRENCY: &str = "EUR";

fn example_stock() -> Vec<StockItem> {
    let item = |sku: &str, quantity| StockItem {
        sku: sku.into(),
        quantity,
    };
    vec![item("BOOK", 2), item("PEN-01", 1)]
}

crate::payload::declare_catalog! {
    operator: "sagactl";
    OrderCreated {
        version: 1,
        routing_key: "order.created",
        producer: "order-svc",
        fields: "order_id, customer_id, items[{sku, quantity, unit_price}], total, currency",
    },
    StockReserved {
        version: 1,
        routing_key: "stock.reserved",
        producer: "inventory-svc",
        fields: "order_id, customer_id, items[{sku, quantity}], total, currency",
    },
    StockRejected {
        version: 1,
        routing_key: "stock.rejected",
        producer: "inventory-svc",
        fields: "order_id, reason, unavailable[{sku, requested, available}]",
    },
    PaymentDone {
        version: 1,
        routing_key: "payment.done",
        producer: "payment-svc",
        fields: "order_id, payment_id, customer_id, amount, currency",
    },
    PaymentFailed {
        version: 1,
        routing_key: "payment.failed",
        producer: "payment-svc",
        fields: "order_id, customer_id, amount, reason (insufficient_funds | unknown_customer | currency_mismatch | order_cancelled)",
    },
    OrderConfirmed {
        version: 1,
        routing_key: "order.confirmed",
        producer: "order-svc",
        fields: "order_id",
    },
    OrderCancelled {
        version: 1,
        routing_key: "order.cancelled",
        producer: "order-svc",
        fields: "order_id, reason (payment_failed | timeout | customer_request)",
    },
    StockReleased {
        version: 1,
        routing_key: "stock.released",
        producer: "inventory-svc",
        fields: "order_id, items[{sku, quantity}]",
    },
    PaymentRefunded {
        version: 1,
        routing_key: "payment.refunded",
        producer: "payment-svc",
        fields: "order_id, payment_id, amount, currency",
    },
    StockAdjusted {
        version: 1,
        routing_key: "stock.adjusted",
        producer: "sagactl",
        fields: "sku, delta",
    },
    FundsDeposited {
        version: 1,
        routing_key: "funds.deposited",
        producer: "sagactl",
        fields: "customer_id, amount, currency",
    },
}

impl Event {
    /// The saga id for order events; the SKU or customer for operator events.
    pub fn correlation_id(&self) -> String {
        match self.correlation() {
            Correlation::Order(id) => id.to_string(),
            Correlation::Key(key) => key.to_owned(),
        }
    }

    /// The order this event is about, for every saga event.
    pub fn order_id(&self) -> Option<Uuid> {
        match self.correlation() {
            Correlation::Order(id) => Some(id),
            Correlation::Key(_) => None,
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EventType {
    type Err = messaging::DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        <EventType as messaging::EventKind>::from_name(s)
            .ok_or_else(|| messaging::DecodeError::UnknownType(s.to_owned()))
    }
}

impl messaging::EventKind for EventType {
    const ALL: &'static [EventType] = &EventType::ALL;

    fn name(self) -> &'static str {
        EventType::name(self)
    }

    fn version(self) -> u32 {
        EventType::version(self)
    }

    fn routing_key(self) -> &'static str {
        EventType::routing_key(self)
    }

    fn producer(self) -> &'static str {
        EventType::producer(self)
    }

    fn operator() -> &'static str {
        EventType::OPERATOR
    }
}

impl messaging::Event for Event {
    type Kind = EventType;

    fn kind(&self) -> EventType {
        self.event_type()
    }

    fn correlation_id(&self) -> String {
        Event::correlation_id(self)
    }

    fn payload(&self) -> serde_json::Value {
        Event::payload(self)
    }

    fn decode(
        name: &str,
        version: u32,
        payload: &serde_json::Value,
    ) -> Result<Self, messaging::DecodeError> {
        Event::decode(name, version, payload)
    }
}

/// Most items an order may hold.
pub const MAX_ITEMS: usize = 100;
/// Largest price of one unit: no order of [`MAX_ITEMS`] lines of [`MAX_QUANTITY`] each
/// can then overflow its total.
pub const MAX_UNIT_PRICE: i64 = i64::MAX / (MAX_ITEMS as i64 * MAX_QUANTITY);
/// Largest quantity of one item.
pub(crate) const MAX_QUANTITY: i64 = 10_000;
/// Longest customer id.
pub const MAX_CUSTOMER_ID_CHARS: usize = 64;
/// What [`check_sku`] accepts, as a regular expression (for the published JSON Schemas).
pub(crate) const SKU_PATTERN: &str = "^[A-Za-z0-9._-]{1,64}$";
/// What [`check_currency`] accepts, as a regular expression (for the published JSON Schemas).
pub const CURRENCY_PATTERN: &str = "^[A-Z]{3}$";

pub fn check_sku(sku: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&sku.len())
        && sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "sku {sku:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'"
        ))
    }
}

pub fn check_customer(customer_id: &str) -> Result<(), String> {
    if customer_id.is_empty() || customer_id.chars().count() > MAX_CUSTOMER_ID_CHARS {
        Err("customer_id must be 1 to 64 characters".into())
    } else {
        Ok(())
    }
}

pub fn check_currency(currency: &str) -> Result<(), String> {
    if currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(format!(
            "currency {currency:?} must be 3 upper-case letters (ISO 4217)"
        ))
    }
}

pub fn check_unit_price(unit_price: i64) -> Result<(), String> {
    if (0..=MAX_UNIT_PRICE).contains(&unit_price) {
        Ok(())
    } else {
        Err(format!(
            "unit_price {unit_price} must be 0 to {MAX_UNIT_PRICE}"
        ))
    }
}

pub fn check_quantity(quantity: i64) -> Result<(), String> {
    if (1..=MAX_QUANTITY).contains(&quantity) {
        Ok(())
    } else {
        Err(format!("quantity {quantity} must be 1 to {MAX_QUANTITY}"))
    }
}

fn check_non_negative(field: &str, value: i64) -> Result<(), String> {
    if value >= 0 {
        Ok(())
    } else {
        Err(format!("{field} must not be negative"))
    }
}

fn check_count(field: &str, n: usize) -> Result<(), String> {
    if (1..=MAX_ITEMS).contains(&n) {
        Ok(())
    } else {
        Err(format!("{field} must hold 1 to {MAX_ITEMS} entries"))
    }
}

/// Largest quantity of one SKU in a reservation: inventory merges an order's lines per
/// SKU, so up to `MAX_ITEMS` lines of `MAX_QUANTITY` each may add up in one item.
pub(crate) const MAX_MERGED_QUANTITY: i64 = MAX_ITEMS as i64 * MAX_QUANTITY;

fn check_stock_item(item: &StockItem) -> Result<(), String> {
    check_sku(&item.sku)?;
    if (1..=MAX_MERGED_QUANTITY).contains(&item.quantity) {
        Ok(())
    } else {
        Err(format!(
            "quantity {} must be 1 to {MAX_MERGED_QUANTITY}",
            item.quantity
        ))
    }
}

fn check_stock_items(items: &[StockItem]) -> Result<(), String> {
    check_count("items", items.len())?;
    items.iter().try_for_each(check_stock_item)
}

#[cfg(test)]
mod tests {
    use super::*;
    use messaging::envelope::{Envelope, MAX_MESSAGE_BYTES, decode_body};
    use serde_json::json;

    /// What JSON Schema calls an integer, a generated client may write with a zero
    /// fraction; anything else that is not a whole number stays refused.
    #[test]
    fn an_item_reads_integral_numbers_written_as_floats_and_only_those() {
        let item = |quantity: &str, unit_price: &str| {
            serde_json::from_str::<OrderItem>(&format!(
                r#"{{"sku": "BOOK", "quantity": {quantity}, "unit_price": {unit_price}}}"#
            ))
        };
        let read = item("2.0", "1500.0").unwrap();
        assert_eq!((read.quantity, read.unit_price), (2, 1500));
        assert_eq!(item("2", "1500").unwrap(), read);
        for (quantity, unit_price) in [
            ("2.5", "1500"),
            ("2", "0.1"),
            ("1e300", "1"),
            ("\"2\"", "1"),
        ] {
            assert!(
                item(quantity, unit_price).is_err(),
                "{quantity} {unit_price}"
            );
        }
    }

    fn decode(body: &[u8]) -> Result<(Envelope, Event), messaging::DecodeError> {
        decode_body::<Event>(body).map_err(|(_, e)| e)
    }

    #[test]
    fn every_type_round_trips_through_its_name() {
        for t in EventType::ALL {
            assert_eq!(t.name().parse::<EventType>().unwrap(), t);
        }
    }

    #[test]
    fn routing_keys_are_the_contracts() {
        let keys: Vec<_> = EventType::ALL.iter().map(|t| t.routing_key()).collect();
        assert_eq!(
            keys,
            [
                "order.created",
                "stock.reserved",
                "stock.rejected",
                "payment.done",
                "payment.failed",
                "order.confirmed",
                "order.cancelled",
                "stock.released",
                "payment.refunded",
                "stock.adjusted",
                "funds.deposited"
            ]
        );
    }

    #[test]
    fn order_created_decodes_from_contract_json_and_ignores_unknown_fields() {
        let id = Uuid::now_v7();
        let payload = json!({
            "order_id": id, "customer_id": "c-1", "currency": "EUR", "total": 500,
            "items": [{"sku": "SKU-1", "quantity": 2, "unit_price": 250}],
            "gift_wrap": true
        });
        let event = Event::decode("OrderCreated", 1, &payload).unwrap();
        assert_eq!(event.order_id(), Some(id));
        assert_eq!(event.correlation_id(), id.to_string());
    }

    #[test]
    fn reasons_are_written_in_snake_case() {
        let e = Event::PaymentFailed(PaymentFailed {
            order_id: Uuid::nil(),
            customer_id: "c".into(),
            amount: 1,
            reason: PaymentFailureReason::InsufficientFunds,
        });
        assert_eq!(e.payload()["reason"], "insufficient_funds");
        let c = Event::OrderCancelled(OrderCancelled {
            order_id: Uuid::nil(),
            reason: CancelReason::CustomerRequest,
        });
        assert_eq!(c.payload()["reason"], "customer_request");
    }

    #[test]
    fn unknown_type_and_version_are_refused() {
        assert_eq!(
            Event::decode("OrderShipped", 1, &json!({}))
                .unwrap_err()
                .code(),
            "unknown_type"
        );
        assert_eq!(
            Event::decode("OrderConfirmed", 2, &json!({"order_id": Uuid::nil()}))
                .unwrap_err()
                .code(),
            "unknown_version"
        );
    }

    #[test]
    fn payload_breaking_the_format_rules_is_invalid() {
        let bad = [
            ("StockAdjusted", json!({"sku": "has space", "delta": 1})),
            ("StockAdjusted", json!({"sku": "A", "delta": 0})),
            (
                "FundsDeposited",
                json!({"customer_id": "c", "amount": 5, "currency": "eur"}),
            ),
            (
                "FundsDeposited",
                json!({"customer_id": "", "amount": 5, "currency": "EUR"}),
            ),
            (
                "FundsDeposited",
                json!({"customer_id": "c", "amount": -5, "currency": "EUR"}),
            ),
            ("OrderConfirmed", json!({"order_id": "not-a-uuid"})),
            (
                "OrderCancelled",
                json!({"order_id": Uuid::nil(), "reason": "bored"}),
            ),
        ];
        for (t, payload) in bad {
            let err = Event::decode(t, 1, &payload).unwrap_err();
            assert_eq!(err.code(), "invalid_payload", "{t} {payload}");
        }
    }

    #[test]
    fn body_decoding_names_each_failure() {
        assert_eq!(decode(b"\xff\xfe").unwrap_err().code(), "not_json");
        assert_eq!(decode(b"{\"a\":1}").unwrap_err().code(), "invalid_envelope");
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(decode(&big).unwrap_err().code(), "too_large");
        let event = Event::StockAdjusted(StockAdjusted {
            sku: "A".into(),
            delta: 3,
        });
        let env = Envelope::wrap(&event, "sagactl", None);
        let (back, decoded) = decode(&env.to_body()).unwrap();
        assert_eq!(back, env);
        assert_eq!(decoded, event);
    }
}
