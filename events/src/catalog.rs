//! The event catalog of the contract: one typed payload per event, its routing key and
//! schema version, and the checks a payload must pass before any handler sees it.
//!
//! Money is in integer minor units (`i64`), currencies are ISO 4217 codes. Readers are
//! tolerant: unknown payload fields are ignored. Decoding answers with a [`DecodeError`]
//! whose [`DecodeError::code`] is what a dead-lettered message's `x-saga-error` says.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

use crate::envelope::{Envelope, MAX_CORRELATION_ID_CHARS};

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderItem {
    #[schemars(regex(pattern = SKU_PATTERN))]
    pub sku: String,
    #[schemars(range(min = 1, max = MAX_QUANTITY))]
    pub quantity: i64,
    /// Price of one unit, in minor units of the order's currency.
    #[schemars(range(min = 0))]
    pub unit_price: i64,
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

/// inventory-svc reserved nothing because some SKU is short. Correlation id: the order id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockRejected {
    pub order_id: Uuid,
    /// Free text, not checked; inventory-svc writes `insufficient_stock`.
    pub reason: String,
    /// May be empty.
    pub unavailable: Vec<Unavailable>,
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

/// The order is confirmed. Correlation id: the order id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderConfirmed {
    pub order_id: Uuid,
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

/// inventory-svc gave back what it held for a cancelled order (compensates StockReserved).
/// Correlation id: the order id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReleased {
    pub order_id: Uuid,
    /// May be empty (nothing was held).
    pub items: Vec<StockItem>,
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

/// Every event of the catalog, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    OrderCreated(OrderCreated),
    StockReserved(StockReserved),
    StockRejected(StockRejected),
    PaymentDone(PaymentDone),
    PaymentFailed(PaymentFailed),
    OrderConfirmed(OrderConfirmed),
    OrderCancelled(OrderCancelled),
    StockReleased(StockReleased),
    PaymentRefunded(PaymentRefunded),
    StockAdjusted(StockAdjusted),
    FundsDeposited(FundsDeposited),
}

/// The name of each event type, with its routing key, schema version and payload fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    OrderCreated,
    StockReserved,
    StockRejected,
    PaymentDone,
    PaymentFailed,
    OrderConfirmed,
    OrderCancelled,
    StockReleased,
    PaymentRefunded,
    StockAdjusted,
    FundsDeposited,
}

impl EventType {
    pub const ALL: [EventType; 11] = [
        EventType::OrderCreated,
        EventType::StockReserved,
        EventType::StockRejected,
        EventType::PaymentDone,
        EventType::PaymentFailed,
        EventType::OrderConfirmed,
        EventType::OrderCancelled,
        EventType::StockReleased,
        EventType::PaymentRefunded,
        EventType::StockAdjusted,
        EventType::FundsDeposited,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventType::OrderCreated => "OrderCreated",
            EventType::StockReserved => "StockReserved",
            EventType::StockRejected => "StockRejected",
            EventType::PaymentDone => "PaymentDone",
            EventType::PaymentFailed => "PaymentFailed",
            EventType::OrderConfirmed => "OrderConfirmed",
            EventType::OrderCancelled => "OrderCancelled",
            EventType::StockReleased => "StockReleased",
            EventType::PaymentRefunded => "PaymentRefunded",
            EventType::StockAdjusted => "StockAdjusted",
            EventType::FundsDeposited => "FundsDeposited",
        }
    }

    pub fn routing_key(self) -> &'static str {
        match self {
            EventType::OrderCreated => "order.created",
            EventType::StockReserved => "stock.reserved",
            EventType::StockRejected => "stock.rejected",
            EventType::PaymentDone => "payment.done",
            EventType::PaymentFailed => "payment.failed",
            EventType::OrderConfirmed => "order.confirmed",
            EventType::OrderCancelled => "order.cancelled",
            EventType::StockReleased => "stock.released",
            EventType::PaymentRefunded => "payment.refunded",
            EventType::StockAdjusted => "stock.adjusted",
            EventType::FundsDeposited => "funds.deposited",
        }
    }

    /// The payload schema version this code writes and reads.
    pub fn version(self) -> u32 {
        1
    }

    /// Who emits it, as the contract says.
    pub fn producer(self) -> &'static str {
        match self {
            EventType::OrderCreated | EventType::OrderConfirmed | EventType::OrderCancelled => {
                "order-svc"
            }
            EventType::StockReserved | EventType::StockRejected | EventType::StockReleased => {
                "inventory-svc"
            }
            EventType::PaymentDone | EventType::PaymentFailed | EventType::PaymentRefunded => {
                "payment-svc"
            }
            EventType::StockAdjusted | EventType::FundsDeposited => "sagactl",
        }
    }

    /// The payload's fields, for help texts and generated docs.
    pub fn fields(self) -> &'static str {
        match self {
            EventType::OrderCreated => {
                "order_id, customer_id, items[{sku, quantity, unit_price}], total, currency"
            }
            EventType::StockReserved => {
                "order_id, customer_id, items[{sku, quantity}], total, currency"
            }
            EventType::StockRejected => {
                "order_id, reason, unavailable[{sku, requested, available}]"
            }
            EventType::PaymentDone => "order_id, payment_id, customer_id, amount, currency",
            EventType::PaymentFailed => {
                "order_id, customer_id, amount, reason (insufficient_funds | unknown_customer | currency_mismatch | order_cancelled)"
            }
            EventType::OrderConfirmed => "order_id",
            EventType::OrderCancelled => {
                "order_id, reason (payment_failed | timeout | customer_request)"
            }
            EventType::StockReleased => "order_id, items[{sku, quantity}]",
            EventType::PaymentRefunded => "order_id, payment_id, amount, currency",
            EventType::StockAdjusted => "sku, delta",
            EventType::FundsDeposited => "customer_id, amount, currency",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EventType {
    type Err = DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| DecodeError::UnknownType(s.to_owned()))
    }
}

/// Why a message cannot be turned into an event. None of these can succeed on a retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message is {0} bytes, over the 256 KiB limit")]
    TooLarge(usize),
    #[error("body is not UTF-8 JSON: {0}")]
    NotJson(String),
    #[error("body is not a valid envelope: {0}")]
    InvalidEnvelope(String),
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("unknown version {version} of {event_type}")]
    UnknownVersion { event_type: String, version: u32 },
    #[error("invalid {event_type} payload: {reason}")]
    InvalidPayload { event_type: String, reason: String },
}

impl DecodeError {
    /// The short machine-readable reason written in `x-saga-error-code`.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::TooLarge(_) => "too_large",
            DecodeError::NotJson(_) => "not_json",
            DecodeError::InvalidEnvelope(_) => "invalid_envelope",
            DecodeError::UnknownType(_) => "unknown_type",
            DecodeError::UnknownVersion { .. } => "unknown_version",
            DecodeError::InvalidPayload { .. } => "invalid_payload",
        }
    }
}

/// Decodes a message body: size, JSON, envelope, type, version, payload, validation.
// The error carries the envelope when one could be read, so the dead-letter copy can name
// its ids; a failed decode is the rare path, and boxing it would only move the cost there.
#[allow(clippy::result_large_err)]
pub fn decode_body(body: &[u8]) -> Result<(Envelope, Event), (Option<Envelope>, DecodeError)> {
    if body.len() > crate::envelope::MAX_MESSAGE_BYTES {
        return Err((None, DecodeError::TooLarge(body.len())));
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| (None, DecodeError::NotJson(e.to_string())))?;
    let envelope: Envelope = serde_json::from_value(value)
        .map_err(|e| (None, DecodeError::InvalidEnvelope(e.to_string())))?;
    if let Err(reason) = validate_envelope(&envelope) {
        return Err((Some(envelope), DecodeError::InvalidEnvelope(reason)));
    }
    match Event::decode(&envelope.event_type, envelope.version, &envelope.payload) {
        Ok(event) => Ok((envelope, event)),
        Err(e) => Err((Some(envelope), e)),
    }
}

fn validate_envelope(env: &Envelope) -> Result<(), String> {
    if env.correlation_id.is_empty()
        || env.correlation_id.chars().count() > MAX_CORRELATION_ID_CHARS
    {
        return Err("correlation_id must be 1 to 128 characters".into());
    }
    if env.producer.is_empty() {
        return Err("producer must not be empty".into());
    }
    Ok(())
}

fn payload_of<T: DeserializeOwned>(
    event_type: EventType,
    payload: &serde_json::Value,
) -> Result<T, DecodeError> {
    T::deserialize(payload).map_err(|e| DecodeError::InvalidPayload {
        event_type: event_type.name().to_owned(),
        reason: e.to_string(),
    })
}

impl Event {
    pub fn event_type(&self) -> EventType {
        match self {
            Event::OrderCreated(_) => EventType::OrderCreated,
            Event::StockReserved(_) => EventType::StockReserved,
            Event::StockRejected(_) => EventType::StockRejected,
            Event::PaymentDone(_) => EventType::PaymentDone,
            Event::PaymentFailed(_) => EventType::PaymentFailed,
            Event::OrderConfirmed(_) => EventType::OrderConfirmed,
            Event::OrderCancelled(_) => EventType::OrderCancelled,
            Event::StockReleased(_) => EventType::StockReleased,
            Event::PaymentRefunded(_) => EventType::PaymentRefunded,
            Event::StockAdjusted(_) => EventType::StockAdjusted,
            Event::FundsDeposited(_) => EventType::FundsDeposited,
        }
    }

    /// The saga id for order events; the SKU or customer for operator events.
    pub fn correlation_id(&self) -> String {
        match self.order_id() {
            Some(id) => id.to_string(),
            None => match self {
                Event::StockAdjusted(e) => e.sku.clone(),
                Event::FundsDeposited(e) => e.customer_id.clone(),
                _ => String::new(),
            },
        }
    }

    /// The order this event is about, for every saga event.
    pub fn order_id(&self) -> Option<Uuid> {
        match self {
            Event::OrderCreated(e) => Some(e.order_id),
            Event::StockReserved(e) => Some(e.order_id),
            Event::StockRejected(e) => Some(e.order_id),
            Event::PaymentDone(e) => Some(e.order_id),
            Event::PaymentFailed(e) => Some(e.order_id),
            Event::OrderConfirmed(e) => Some(e.order_id),
            Event::OrderCancelled(e) => Some(e.order_id),
            Event::StockReleased(e) => Some(e.order_id),
            Event::PaymentRefunded(e) => Some(e.order_id),
            Event::StockAdjusted(_) | Event::FundsDeposited(_) => None,
        }
    }

    pub fn payload(&self) -> serde_json::Value {
        let v = match self {
            Event::OrderCreated(e) => serde_json::to_value(e),
            Event::StockReserved(e) => serde_json::to_value(e),
            Event::StockRejected(e) => serde_json::to_value(e),
            Event::PaymentDone(e) => serde_json::to_value(e),
            Event::PaymentFailed(e) => serde_json::to_value(e),
            Event::OrderConfirmed(e) => serde_json::to_value(e),
            Event::OrderCancelled(e) => serde_json::to_value(e),
            Event::StockReleased(e) => serde_json::to_value(e),
            Event::PaymentRefunded(e) => serde_json::to_value(e),
            Event::StockAdjusted(e) => serde_json::to_value(e),
            Event::FundsDeposited(e) => serde_json::to_value(e),
        };
        // Plain structs of strings, integers and uuids always serialise.
        v.unwrap_or_default()
    }

    /// Decodes and validates a payload of the given type and version.
    pub fn decode(
        event_type: &str,
        version: u32,
        payload: &serde_json::Value,
    ) -> Result<Event, DecodeError> {
        let t: EventType = event_type.parse()?;
        if version != t.version() {
            return Err(DecodeError::UnknownVersion {
                event_type: event_type.to_owned(),
                version,
            });
        }
        let event = match t {
            EventType::OrderCreated => Event::OrderCreated(payload_of(t, payload)?),
            EventType::StockReserved => Event::StockReserved(payload_of(t, payload)?),
            EventType::StockRejected => Event::StockRejected(payload_of(t, payload)?),
            EventType::PaymentDone => Event::PaymentDone(payload_of(t, payload)?),
            EventType::PaymentFailed => Event::PaymentFailed(payload_of(t, payload)?),
            EventType::OrderConfirmed => Event::OrderConfirmed(payload_of(t, payload)?),
            EventType::OrderCancelled => Event::OrderCancelled(payload_of(t, payload)?),
            EventType::StockReleased => Event::StockReleased(payload_of(t, payload)?),
            EventType::PaymentRefunded => Event::PaymentRefunded(payload_of(t, payload)?),
            EventType::StockAdjusted => Event::StockAdjusted(payload_of(t, payload)?),
            EventType::FundsDeposited => Event::FundsDeposited(payload_of(t, payload)?),
        };
        event
            .validate()
            .map_err(|reason| DecodeError::InvalidPayload {
                event_type: event_type.to_owned(),
                reason,
            })?;
        Ok(event)
    }

    /// The contract's format rules for a payload (not business rules: whether stock or
    /// funds suffice is the services' decision).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Event::OrderCreated(e) => {
                check_customer(&e.customer_id)?;
                check_currency(&e.currency)?;
                check_non_negative("total", e.total)?;
                check_count("items", e.items.len())?;
                for item in &e.items {
                    check_sku(&item.sku)?;
                    check_quantity(item.quantity)?;
                    check_non_negative("unit_price", item.unit_price)?;
                }
                Ok(())
            }
            Event::StockReserved(e) => {
                check_customer(&e.customer_id)?;
                check_currency(&e.currency)?;
                check_non_negative("total", e.total)?;
                check_stock_items(&e.items)
            }
            Event::StockRejected(e) => {
                for u in &e.unavailable {
                    check_sku(&u.sku)?;
                }
                Ok(())
            }
            Event::PaymentDone(e) => {
                check_customer(&e.customer_id)?;
                check_currency(&e.currency)?;
                check_non_negative("amount", e.amount)
            }
            Event::PaymentFailed(e) => check_non_negative("amount", e.amount),
            Event::OrderConfirmed(_) | Event::OrderCancelled(_) => Ok(()),
            Event::StockReleased(e) => e.items.iter().try_for_each(check_stock_item),
            Event::PaymentRefunded(e) => {
                check_currency(&e.currency)?;
                check_non_negative("amount", e.amount)
            }
            Event::StockAdjusted(e) => {
                check_sku(&e.sku)?;
                if e.delta == 0 {
                    return Err("delta must not be 0".into());
                }
                Ok(())
            }
            Event::FundsDeposited(e) => {
                check_customer(&e.customer_id)?;
                check_currency(&e.currency)?;
                if e.amount <= 0 {
                    return Err("amount must be positive".into());
                }
                Ok(())
            }
        }
    }
}

/// Most items an order may hold.
pub const MAX_ITEMS: usize = 100;
/// Largest quantity of one item.
pub const MAX_QUANTITY: i64 = 10_000;
/// Longest customer id.
pub const MAX_CUSTOMER_ID_CHARS: usize = 64;
/// What [`check_sku`] accepts, as a regular expression (for the published JSON Schemas).
pub const SKU_PATTERN: &str = "^[A-Za-z0-9._-]{1,64}$";
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
pub const MAX_MERGED_QUANTITY: i64 = MAX_ITEMS as i64 * MAX_QUANTITY;

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
    use serde_json::json;

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
        assert_eq!(decode_body(b"\xff\xfe").unwrap_err().1.code(), "not_json");
        assert_eq!(
            decode_body(b"{\"a\":1}").unwrap_err().1.code(),
            "invalid_envelope"
        );
        let big = vec![b' '; crate::envelope::MAX_MESSAGE_BYTES + 1];
        assert_eq!(decode_body(&big).unwrap_err().1.code(), "too_large");
        let event = Event::StockAdjusted(StockAdjusted {
            sku: "A".into(),
            delta: 3,
        });
        let env = Envelope::wrap(&event, "sagactl", None);
        let (back, decoded) = decode_body(&env.to_body()).unwrap();
        assert_eq!(back, env);
        assert_eq!(decoded, event);
    }
}
