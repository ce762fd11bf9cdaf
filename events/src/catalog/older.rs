//! The older versions of payloads that the catalog still reads (and writes, for a producer
//! configured to emit them during an upgrade): each as it was published, with the two pure
//! steps between it and the next version (`OlderVersion`). The catalog entry of its event
//! type names it (`older: [1 => OrderCreatedV1]`); docs/upgrading.md says when one may go.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::payloads::{Money, OrderCreated, OrderItem, StockItem, StockReserved};
use super::rules::{CURRENCY_PATTERN, MAX_CUSTOMER_ID_CHARS, MAX_ITEMS};
use crate::payload::OlderVersion;

/// OrderCreated version 1: the total and its currency side by side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCreatedV1 {
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

impl OlderVersion for OrderCreatedV1 {
    type Next = OrderCreated;

    fn upcast(self) -> OrderCreated {
        OrderCreated {
            order_id: self.order_id,
            customer_id: self.customer_id,
            items: self.items,
            total: Money::new(self.total, self.currency),
        }
    }

    fn downcast(next: &OrderCreated) -> OrderCreatedV1 {
        OrderCreatedV1 {
            order_id: next.order_id,
            customer_id: next.customer_id.clone(),
            items: next.items.clone(),
            total: next.total.amount,
            currency: next.total.currency.clone(),
        }
    }
}

/// StockReserved version 1: the total and its currency side by side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReservedV1 {
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

impl OlderVersion for StockReservedV1 {
    type Next = StockReserved;

    fn upcast(self) -> StockReserved {
        StockReserved {
            order_id: self.order_id,
            customer_id: self.customer_id,
            items: self.items,
            total: Money::new(self.total, self.currency),
        }
    }

    fn downcast(next: &StockReserved) -> StockReservedV1 {
        StockReservedV1 {
            order_id: next.order_id,
            customer_id: next.customer_id.clone(),
            items: next.items.clone(),
            total: next.total.amount,
            currency: next.total.currency.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::catalog::{Event, EventType};
    use crate::payload::Payload;

    #[test]
    fn order_created_v1_upcasts_to_one_money_value_and_back() {
        let v1 = json!({
            "order_id": Uuid::nil(), "customer_id": "alice", "total": 3250, "currency": "EUR",
            "items": [{"sku": "BOOK", "quantity": 2, "unit_price": 1500},
                      {"sku": "PEN-01", "quantity": 1, "unit_price": 250}],
        });
        let old: OrderCreatedV1 = serde_json::from_value(v1.clone()).unwrap();
        let new = old.clone().upcast();
        assert_eq!(new.total, Money::new(3250, "EUR"));
        assert_eq!(new.items, old.items);
        assert_eq!(OrderCreatedV1::downcast(&new), old);
        assert_eq!(
            Event::decode("OrderCreated", 1, &v1),
            Ok(Event::OrderCreated(new.clone()))
        );
        assert_eq!(Event::OrderCreated(new).payload_at(1), Some(v1));
    }

    #[test]
    fn stock_reserved_v1_upcasts_to_one_money_value_and_back() {
        let example = StockReserved::example();
        let v1 = StockReservedV1::downcast(&example);
        assert_eq!((v1.total, v1.currency.as_str()), (3250, "EUR"));
        assert_eq!(v1.clone().upcast(), example);
        let written = Event::StockReserved(example.clone()).payload_at(1).unwrap();
        assert_eq!(written["total"], 3250);
        assert_eq!(written["currency"], "EUR");
        assert_eq!(
            Event::decode("StockReserved", 1, &written),
            Ok(Event::StockReserved(example))
        );
    }

    #[test]
    fn an_upcast_old_message_meets_the_newest_rules() {
        let bad = json!({
            "order_id": Uuid::nil(), "customer_id": "alice", "total": 5, "currency": "eur",
            "items": [{"sku": "BOOK", "quantity": 1}],
        });
        let err = Event::decode("StockReserved", 1, &bad).unwrap_err();
        assert_eq!(err.code(), "invalid_payload");
        assert_eq!(EventType::StockReserved.versions(), &[1, 2]);
        assert_eq!(EventType::OrderCreated.versions(), &[1, 2]);
    }
}
