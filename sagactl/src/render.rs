//! Text for people of what the services answer: amounts of money with their currency's
//! decimals, fields with `-` for what is missing, an order with its items and history.

use serde_json::Value;

/// An amount of money given in minor units, in major units with the currency's number of
/// decimals (ISO 4217: EUR 2, JPY 0, BHD 3), followed by the code: `480, EUR` is
/// `4.80 EUR`. A code ISO 4217 does not know is shown with the minor units as they are.
pub(crate) fn money(minor: i64, currency: &str) -> String {
    let decimals = iso_currency::Currency::from_code(currency)
        .and_then(|c| c.exponent())
        .unwrap_or(0);
    if decimals == 0 {
        return format!("{minor} {currency}");
    }
    let scale = 10u64.pow(u32::from(decimals));
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    format!(
        "{sign}{}.{:0width$} {currency}",
        abs / scale,
        abs % scale,
        width = usize::from(decimals)
    )
}

/// [`money`] for fields of a JSON answer (`-` when the amount is missing).
pub(crate) fn money_field(v: &Value, key: &str, currency: &str) -> String {
    v.get(key)
        .and_then(Value::as_i64)
        .map_or_else(|| "-".to_owned(), |n| money(n, currency))
}

/// A field as display text: strings without quotes, null as "-".
pub(crate) fn field(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

pub(crate) fn render_order(o: &Value) -> String {
    let currency = field(o, "currency");
    let mut s = format!(
        "order    {}\nstatus   {}{}\ncustomer {}\ntotal    {}\n",
        field(o, "order_id"),
        field(o, "status"),
        match o.get("reason").and_then(Value::as_str) {
            Some(r) => format!(" ({r})"),
            None => String::new(),
        },
        field(o, "customer_id"),
        money_field(o, "total", &currency),
    );
    if let Some(items) = o.get("items").and_then(Value::as_array) {
        s.push_str("items\n");
        for i in items {
            s.push_str(&format!(
                "  {:<20} x{:<6} @ {}\n",
                field(i, "sku"),
                field(i, "quantity"),
                money_field(i, "unit_price", &currency)
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
        assert!(text.contains("total    30.00 EUR"), "{text}");
        assert!(text.contains("@ 15.00 EUR"), "{text}");
        assert!(text.contains("OrderCreated"));
        assert!(!text.contains('"'));
    }

    #[test]
    fn money_is_shown_in_major_units_with_the_currencys_decimals() {
        assert_eq!(money(480, "EUR"), "4.80 EUR");
        assert_eq!(money(5, "EUR"), "0.05 EUR");
        assert_eq!(money(-1205, "USD"), "-12.05 USD");
        assert_eq!(money(480, "JPY"), "480 JPY");
        assert_eq!(money(1234, "BHD"), "1.234 BHD");
        assert_eq!(money(480, "XXZ"), "480 XXZ");
        assert_eq!(money(i64::MIN, "EUR"), "-92233720368547758.08 EUR");
    }

    #[test]
    fn missing_fields_print_as_a_dash() {
        assert_eq!(field(&json!({"a": null}), "a"), "-");
        assert_eq!(field(&json!({}), "a"), "-");
        assert_eq!(field(&json!({"a": 5}), "a"), "5");
    }
}
