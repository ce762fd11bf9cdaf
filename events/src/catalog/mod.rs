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
//! Everything about an event type is in this folder, and what goes where is fixed:
//! - [`payloads`]: its payload struct (fields, `schemars` attributes) with its `impl
//!   Payload` (format rules, correlation, example), and the item types payloads share;
//! - [`rules`]: the limits and field checks that more than one payload uses, or that the
//!   services' HTTP edges reuse (`check_sku`, `MAX_ITEMS`, …);
//! - this file: its one entry in the `declare_catalog!` invocation (name, version, routing
//!   key, producer, fields), and what every event has by way of it.
//!
//! To add an event type: write its payload struct with an `impl Payload` in [`payloads`],
//! add one entry to the `declare_catalog!` invocation below, and add it to the `CONSUMES`
//! of the services that handle it. Every payload type and every rule is re-exported here,
//! so their paths are `events::catalog::OrderItem`, `events::catalog::check_sku`.

mod older;
mod payloads;
mod rules;

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use crate::payload::Correlation;

pub use older::*;
pub use payloads::*;
pub use rules::*;

crate::payload::declare_catalog! {
    operator: "sagactl";
    OrderCreated {
        version: 2,
        routing_key: "order.created",
        producer: "order-svc",
        fields: "order_id, customer_id, items[{sku, quantity, unit_price}], total{amount, currency}",
        older: [1 => OrderCreatedV1],
    },
    StockReserved {
        version: 2,
        routing_key: "stock.reserved",
        producer: "inventory-svc",
        fields: "order_id, customer_id, items[{sku, quantity}], total{amount, currency}",
        older: [1 => StockReservedV1],
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
        fields: "order_id, customer_id, amount, currency (optional), reason (insufficient_funds | unknown_customer | currency_mismatch | order_cancelled)",
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

    fn reads(self, version: u32) -> bool {
        EventType::versions(self).contains(&version)
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

    /// The operator's events are the actions by hand the services record.
    fn hand_action(self) -> Option<&'static str> {
        use messaging::audit::actions;
        match self {
            EventType::StockAdjusted => Some(actions::STOCK_ADJUSTMENT),
            EventType::FundsDeposited => Some(actions::DEPOSIT),
            _ => None,
        }
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

    fn payload_at(&self, version: u32) -> Option<serde_json::Value> {
        Event::payload_at(self, version)
    }

    fn decode(
        name: &str,
        version: u32,
        payload: &serde_json::Value,
    ) -> Result<Self, messaging::DecodeError> {
        Event::decode(name, version, payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use messaging::envelope::{Envelope, MAX_MESSAGE_BYTES, decode_body};
    use serde_json::json;

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
    fn only_the_operators_events_are_actions_by_hand() {
        use messaging::EventKind as _;
        for t in EventType::ALL {
            assert_eq!(
                t.hand_action().is_some(),
                t.producer() == EventType::OPERATOR,
                "{t}"
            );
        }
        assert_eq!(
            EventType::StockAdjusted.hand_action(),
            Some("stock_adjustment")
        );
        assert_eq!(EventType::FundsDeposited.hand_action(), Some("deposit"));
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
        let mut v2 = payload.clone();
        v2["total"] = json!({"amount": 500, "currency": "EUR"});
        assert_eq!(Event::decode("OrderCreated", 2, &v2), Ok(event.clone()));
        assert_eq!(event.correlation_id(), id.to_string());
    }

    #[test]
    fn reasons_are_written_in_snake_case() {
        let e = Event::PaymentFailed(PaymentFailed {
            order_id: Uuid::nil(),
            customer_id: "c".into(),
            amount: 1,
            currency: None,
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
            Event::decode("OrderConfirmed", 9, &json!({"order_id": Uuid::nil()}))
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
