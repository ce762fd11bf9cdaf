//! The pure rules of the operator's triage (`sagactl stuck`, `sagactl find` and the
//! explorer's pages of the same): which participant an open saga waits on, read from its
//! history; how an age is written (`90s`, `15m`, `2h`, `1d`); and which fields of a
//! dead-lettered message name an id.

use std::time::Duration;

use serde_json::Value;

/// The statuses of an order whose saga has not ended.
pub const OPEN_STATUSES: [&str; 2] = ["pending", "reserved"];

/// The service an open saga waits on to take its next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Participant {
    Inventory,
    Payment,
    Order,
}

impl Participant {
    pub const ALL: [Participant; 3] = [
        Participant::Inventory,
        Participant::Payment,
        Participant::Order,
    ];

    /// The service's name: `inventory-svc`, `payment-svc`, `order-svc`.
    pub fn service(self) -> &'static str {
        match self {
            Participant::Inventory => "inventory-svc",
            Participant::Payment => "payment-svc",
            Participant::Order => "order-svc",
        }
    }

    /// The participant a service name names, or an error listing the names.
    pub fn parse(name: &str) -> Result<Participant, String> {
        Participant::ALL
            .into_iter()
            .find(|p| p.service() == name)
            .ok_or_else(|| {
                format!(
                    "{name:?} is not a participant; use one of {}",
                    Participant::ALL.map(Participant::service).join(", ")
                )
            })
    }
}

/// The participant an order's saga waits on, from the order's `status` and the event types
/// of its history (order-svc's `history`, oldest first); `None` when the saga has ended.
///
/// - no StockReserved nor StockRejected yet: inventory-svc is to reserve or reject;
/// - StockReserved and neither PaymentDone nor PaymentFailed: payment-svc is to charge;
/// - an answer that ends the saga (PaymentDone, PaymentFailed, StockRejected) is recorded
///   but the order is still open: order-svc is to confirm, cancel or reject it.
pub fn waiting_on(status: &str, history: &[&str]) -> Option<Participant> {
    if !OPEN_STATUSES.contains(&status) {
        return None;
    }
    let has = |t: &str| history.contains(&t);
    if has("PaymentDone") || has("PaymentFailed") || has("StockRejected") {
        Some(Participant::Order)
    } else if has("StockReserved") {
        Some(Participant::Payment)
    } else {
        Some(Participant::Inventory)
    }
}

/// An age as the operator writes it: a whole number with a unit, `s`, `m`, `h` or `d`
/// (`90s`, `15m`, `2h`, `1d`); a bare number is seconds.
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| {
        format!("{text:?} is not an age; write a whole number and a unit, e.g. 90s, 15m, 2h, 1d")
    })?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}; use s, m, h or d (e.g. 15m)"
            ));
        }
    };
    number
        .checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long an age"))
}

/// The fields of a payload that hold the ids a search looks for.
const PAYLOAD_ID_FIELDS: [&str; 4] = ["order_id", "customer_id", "sku", "payment_id"];

/// Which fields of a dead-lettered message equal `needle`: its `message_id` and
/// `correlation_id` (AMQP properties, or the envelope's), and any `order_id`,
/// `customer_id`, `sku` or `payment_id` anywhere in its JSON body (an item's SKU too).
/// Each field is named once, in the order first found.
pub fn dead_letter_matches(
    message_id: Option<&str>,
    correlation_id: Option<&str>,
    body: &[u8],
    needle: &str,
) -> Vec<String> {
    let mut found = Vec::new();
    let mut note = |field: &str| {
        if !found.iter().any(|f| f == field) {
            found.push(field.to_owned());
        }
    };
    if message_id == Some(needle) {
        note("message_id");
    }
    if correlation_id == Some(needle) {
        note("correlation_id");
    }
    if let Ok(json) = serde_json::from_slice::<Value>(body) {
        let mut stack = vec![&json];
        while let Some(value) = stack.pop() {
            match value {
                Value::Object(map) => {
                    for (key, v) in map {
                        let named = PAYLOAD_ID_FIELDS.contains(&key.as_str())
                            || key == "message_id"
                            || key == "correlation_id";
                        if named && v.as_str() == Some(needle) {
                            note(key);
                        }
                        stack.push(v);
                    }
                }
                Value::Array(items) => stack.extend(items),
                _ => {}
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_saga_waits_on_the_participant_its_history_names_next() {
        let created = ["OrderCreated"];
        assert_eq!(
            waiting_on("pending", &created),
            Some(Participant::Inventory)
        );
        assert_eq!(waiting_on("pending", &[]), Some(Participant::Inventory));
        let reserved = ["OrderCreated", "StockReserved"];
        assert_eq!(
            waiting_on("reserved", &reserved),
            Some(Participant::Payment)
        );
        for answer in ["PaymentDone", "PaymentFailed"] {
            let answered = ["OrderCreated", "StockReserved", answer];
            assert_eq!(
                waiting_on("reserved", &answered),
                Some(Participant::Order),
                "{answer}"
            );
        }
        let rejected = ["OrderCreated", "StockRejected"];
        assert_eq!(waiting_on("pending", &rejected), Some(Participant::Order));
    }

    #[test]
    fn an_ended_saga_waits_on_nobody() {
        let history = ["OrderCreated", "StockReserved", "PaymentDone"];
        for status in ["confirmed", "rejected", "cancelled"] {
            assert_eq!(waiting_on(status, &history), None, "{status}");
        }
    }

    #[test]
    fn participants_parse_from_their_service_names() {
        for p in Participant::ALL {
            assert_eq!(Participant::parse(p.service()), Ok(p));
        }
        let e = Participant::parse("inventory").unwrap_err();
        assert!(e.contains("inventory-svc, payment-svc, order-svc"), "{e}");
    }

    #[test]
    fn ages_parse_with_their_units() {
        assert_eq!(parse_age("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_age("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse_age(" 1d "), Ok(Duration::from_secs(86_400)));
        assert!(parse_age("m").unwrap_err().contains("e.g. 90s"));
        assert!(parse_age("5w").unwrap_err().contains("use s, m, h or d"));
        assert!(parse_age("-5m").is_err());
        assert!(
            parse_age("99999999999999999999d")
                .unwrap_err()
                .contains("not an age")
        );
        assert!(
            parse_age("9999999999999999d")
                .unwrap_err()
                .contains("too long")
        );
    }

    #[test]
    fn a_dead_letter_is_found_by_its_ids_and_its_payloads() {
        let body = br#"{"message_id":"m-1","correlation_id":"o-1","payload":{"order_id":"o-1",
            "customer_id":"alice","items":[{"sku":"BOOK","quantity":1}],"payment_id":"p-9"}}"#;
        let find = |needle| dead_letter_matches(Some("m-1"), Some("o-1"), body, needle);
        assert_eq!(find("m-1"), ["message_id"]);
        assert_eq!(find("o-1"), ["correlation_id", "order_id"]);
        assert_eq!(find("alice"), ["customer_id"]);
        assert_eq!(find("BOOK"), ["sku"]);
        assert_eq!(find("p-9"), ["payment_id"]);
        assert!(find("bob").is_empty());
        // A quantity or a key is not an id.
        assert!(find("1").is_empty());
        assert!(find("payload").is_empty());
        // A body that is not JSON is searched by its properties only.
        assert_eq!(
            dead_letter_matches(Some("m-2"), None, b"\xff not json", "m-2"),
            ["message_id"]
        );
    }
}
