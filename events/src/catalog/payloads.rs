//! The payload of every event type: its fields, with the format rules as `schemars`
//! attributes (they become the JSON Schemas and the AsyncAPI document) and as code (its
//! `impl Payload`: `validate`, run on every decode), its correlation and its example; and
//! the item types payloads share.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::payload::{Correlation, Payload};

use super::rules::{
    CURRENCY_PATTERN, MAX_CUSTOMER_ID_CHARS, MAX_ITEMS, MAX_MERGED_QUANTITY, MAX_QUANTITY,
    MAX_UNIT_PRICE, SKU_PATTERN, check_count, check_currency, check_customer, check_non_negative,
    check_quantity, check_sku, check_unit_price,
};

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

/// An amount of money: integer minor units (cents for EUR) of one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Money {
    /// In minor units of `currency`.
    #[schemars(range(min = 0))]
    pub amount: i64,
    /// ISO 4217 code.
    #[schemars(regex(pattern = CURRENCY_PATTERN))]
    pub currency: String,
}

impl Money {
    pub fn new(amount: i64, currency: impl Into<String>) -> Money {
        Money {
            amount,
            currency: currency.into(),
        }
    }

    /// The format rules of a payload's money field `field`: a currency code and an amount
    /// that is not negative.
    pub(crate) fn check(&self, field: &str) -> Result<(), String> {
        check_currency(&self.currency)?;
        check_non_negative(&format!("{field}.amount"), self.amount)
    }
}

/// An order was placed (`POST /orders`). Correlation id: the order id. Version 2: the
/// total is one money value (version 1 had `total` and `currency` side by side).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCreated {
    pub order_id: Uuid,
    #[schemars(length(min = 1, max = MAX_CUSTOMER_ID_CHARS))]
    pub customer_id: String,
    /// Unit prices are in minor units of the total's currency.
    #[schemars(length(min = 1, max = MAX_ITEMS))]
    pub items: Vec<OrderItem>,
    /// The sum of quantity × unit_price (written by order-svc, not recomputed by readers).
    pub total: Money,
}

impl Payload for OrderCreated {
    const CAUSED: bool = false;

    fn validate(&self) -> Result<(), String> {
        check_customer(&self.customer_id)?;
        self.total.check("total")?;
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
            total: Money::new(3250, EXAMPLE_CURRENCY),
        }
    }
}

/// inventory-svc reserved every item of the order. Correlation id: the order id. Version
/// 2: the total is one money value (version 1 had `total` and `currency` side by side).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReserved {
    pub order_id: Uuid,
    #[schemars(length(min = 1, max = MAX_CUSTOMER_ID_CHARS))]
    pub customer_id: String,
    /// One entry per SKU (repeated SKUs of the order summed), sorted by SKU.
    #[schemars(length(min = 1, max = MAX_ITEMS))]
    pub items: Vec<StockItem>,
    /// The order's total, copied.
    pub total: Money,
}

impl Payload for StockReserved {
    fn validate(&self) -> Result<(), String> {
        check_customer(&self.customer_id)?;
        self.total.check("total")?;
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
            total: Money::new(3250, EXAMPLE_CURRENCY),
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
    /// The currency of `amount` (ISO 4217). Added to version 1 without a new version:
    /// payment-svc writes it, readers that do not know it ignore it, and a message of an
    /// earlier producer may lack it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = CURRENCY_PATTERN))]
    pub currency: Option<String>,
    /// `insufficient_funds`, `unknown_customer` (no wallet), `currency_mismatch` (wallet in
    /// another currency) or `order_cancelled` (the order was cancelled before the charge).
    pub reason: PaymentFailureReason,
}

impl Payload for PaymentFailed {
    fn validate(&self) -> Result<(), String> {
        if let Some(currency) = &self.currency {
            check_currency(currency)?;
        }
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
            currency: Some(EXAMPLE_CURRENCY.into()),
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
}
