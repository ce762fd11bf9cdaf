//! Printing results: JSON with `--json`, readable text otherwise; colour only on a
//! terminal.

use std::io::IsTerminal;

use serde_json::Value;

use crate::context::{Context, Failure};

pub fn json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// Prints `value` as JSON with `--json`, else the text `human` renders.
pub fn show(ctx: &Context, value: &Value, human: impl FnOnce(&Value) -> String) {
    if ctx.json {
        json(value);
    } else {
        println!("{}", human(value));
    }
}

pub fn error(ctx: &Context, e: &anyhow::Error, failure: Failure) {
    if ctx.json {
        let kind = match failure {
            Failure::Refused => "refused",
            Failure::Unreachable => "unreachable",
        };
        eprintln!(
            "{}",
            serde_json::json!({"error": kind, "message": format!("{e:#}")})
        );
    } else if std::io::stderr().is_terminal() {
        eprintln!("\x1b[31merror:\x1b[0m {e:#}");
    } else {
        eprintln!("error: {e:#}");
    }
}

/// A field as display text: strings without quotes, null as "-".
pub fn field(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

pub fn render_order(o: &Value) -> String {
    let mut s = format!(
        "order    {}\nstatus   {}{}\ncustomer {}\ntotal    {} {}\n",
        field(o, "order_id"),
        field(o, "status"),
        match o.get("reason").and_then(Value::as_str) {
            Some(r) => format!(" ({r})"),
            None => String::new(),
        },
        field(o, "customer_id"),
        field(o, "total"),
        field(o, "currency"),
    );
    if let Some(items) = o.get("items").and_then(Value::as_array) {
        s.push_str("items\n");
        for i in items {
            s.push_str(&format!(
                "  {:<20} x{:<6} @ {}\n",
                field(i, "sku"),
                field(i, "quantity"),
                field(i, "unit_price")
            ));
        }
    }
    if let Some(history) = o.get("history").and_then(Value::as_array) {
        s.push_str("history\n");
        for h in history {
            s.push_str(&format!(
                "  {}  {:<16} {}\n",
                field(h, "at"),
                field(h, "type"),
                field(h, "message_id")
            ));
        }
    }
    s.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn order_text_shows_status_reason_items_and_history() {
        let text = render_order(&json!({
            "order_id": "o-1", "status": "cancelled", "reason": "payment_failed",
            "customer_id": "alice", "total": 3000, "currency": "EUR",
            "items": [{"sku": "BOOK", "quantity": 2, "unit_price": 1500}],
            "history": [{"at": "2026-11-26T10:00:00Z", "type": "OrderCreated", "message_id": "m-1"}]
        }));
        assert!(text.contains("status   cancelled (payment_failed)"));
        assert!(text.contains("BOOK"));
        assert!(text.contains("OrderCreated"));
        assert!(!text.contains('"'));
    }

    #[test]
    fn missing_fields_print_as_a_dash() {
        assert_eq!(field(&json!({"a": null}), "a"), "-");
        assert_eq!(field(&json!({}), "a"), "-");
        assert_eq!(field(&json!({"a": 5}), "a"), "5");
    }
}
