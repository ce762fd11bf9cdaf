//! Why the broker itself dead-lettered a message. A message the services dead-letter
//! carries `x-saga-error`; one the broker moved (its delivery limit reached, say) carries
//! only the broker's `x-death` log, whose newest entry comes first.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

fn text(v: Option<&AMQPValue>) -> Option<String> {
    match v? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn number(v: Option<&AMQPValue>) -> Option<i64> {
    match v? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some((*n).into()),
        AMQPValue::ShortInt(n) => Some((*n).into()),
        _ => None,
    }
}

/// The newest `x-death` entry: `{reason, queue, count, explanation}`, if there is one.
pub fn last_death(props: &BasicProperties) -> Option<Value> {
    let headers = props.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(entry) = deaths.as_slice().first()? else {
        return None;
    };
    Some(describe_entry(entry))
}

fn describe_entry(entry: &FieldTable) -> Value {
    let e = entry.inner();
    let reason = text(e.get("reason")).unwrap_or_else(|| "unknown".to_owned());
    let queue = text(e.get("queue")).unwrap_or_else(|| "?".to_owned());
    let count = number(e.get("count"));
    let why = match reason.as_str() {
        "delivery_limit" => format!(
            "the broker dead-lettered it from {queue}: it reached the queue's delivery limit \
             (returned to the queue too many times without being acknowledged)"
        ),
        "rejected" => format!("{queue} rejected it without requeue"),
        "expired" => format!("it expired in {queue} (message TTL)"),
        "maxlen" => format!("{queue} was full (length limit)"),
        other => format!("the broker dead-lettered it from {queue} ({other})"),
    };
    json!({
        "reason": reason,
        "queue": queue,
        "count": count,
        "explanation": format!("{reason}: {why}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, LongString};

    #[test]
    fn a_delivery_limit_death_is_explained() {
        let mut entry = FieldTable::default();
        entry.insert(
            "reason".into(),
            AMQPValue::LongString(LongString::from("delivery_limit")),
        );
        entry.insert(
            "queue".into(),
            AMQPValue::LongString(LongString::from("inventory-svc")),
        );
        entry.insert("count".into(), AMQPValue::LongLongInt(1));
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(entry)])),
        );
        let props = BasicProperties::default().with_headers(headers);
        let death = last_death(&props).unwrap();
        assert_eq!(death["reason"], "delivery_limit");
        assert_eq!(death["queue"], "inventory-svc");
        assert!(
            death["explanation"]
                .as_str()
                .unwrap()
                .contains("delivery limit")
        );
    }
}
