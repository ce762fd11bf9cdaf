//! `sagactl queues`: the project's queues from the RabbitMQ management API.

use std::time::Duration;

use serde_json::{Value, json};

use crate::context::Context;
use crate::output;

const SERVICES: [&str; 3] = ["order-svc", "inventory-svc", "payment-svc"];

pub async fn run(ctx: &Context, watch: Option<u64>) -> anyhow::Result<()> {
    loop {
        let report = snapshot(ctx).await?;
        if watch.is_some() && !ctx.json {
            // Clears the terminal so the table redraws in place.
            output::write_out(b"\x1b[2J\x1b[H");
        }
        output::list(ctx, &report, "queues", render);
        match watch {
            Some(secs) => tokio::time::sleep(Duration::from_secs(secs.max(1))).await,
            None => return Ok(()),
        }
    }
}

/// The project's queues with their counts and rates, as `--json` prints them.
pub async fn snapshot(ctx: &Context) -> anyhow::Result<Value> {
    let vhost = ctx.vhost();
    let path = crate::context::path(&["api", "queues", &vhost]);
    let all = ctx.management(&path).await?;
    let rows: Vec<Value> = all
        .as_array()
        .into_iter()
        .flatten()
        .filter(|q| {
            let name = q.get("name").and_then(Value::as_str).unwrap_or("");
            SERVICES
                .iter()
                .any(|s| name == *s || name.starts_with(&format!("{s}.")))
        })
        .map(summarize)
        .collect();
    Ok(json!({"vhost": vhost, "queues": rows}))
}

fn rate(q: &Value, key: &str) -> f64 {
    q.pointer(&format!("/message_stats/{key}/rate"))
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
}

fn summarize(q: &Value) -> Value {
    let n = |k: &str| q.get(k).and_then(Value::as_i64).unwrap_or(0);
    json!({
        "name": q.get("name"),
        "type": q.get("type"),
        "ready": n("messages_ready"),
        "unacked": n("messages_unacknowledged"),
        "consumers": n("consumers"),
        "publish_rate": rate(q, "publish_details"),
        "deliver_rate": rate(q, "deliver_get_details"),
        "ack_rate": rate(q, "ack_details"),
    })
}

pub fn render(report: &Value) -> String {
    let mut s = format!(
        "{:<28} {:>8} {:>8} {:>9} {:>10} {:>10} {:>10}\n",
        "QUEUE", "READY", "UNACKED", "CONSUMERS", "IN/s", "OUT/s", "ACK/s"
    );
    for q in report["queues"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "{:<28} {:>8} {:>8} {:>9} {:>10.1} {:>10.1} {:>10.1}\n",
            q["name"].as_str().unwrap_or("?"),
            q["ready"].as_i64().unwrap_or(0),
            q["unacked"].as_i64().unwrap_or(0),
            q["consumers"].as_i64().unwrap_or(0),
            q["publish_rate"].as_f64().unwrap_or(0.0),
            q["deliver_rate"].as_f64().unwrap_or(0.0),
            q["ack_rate"].as_f64().unwrap_or(0.0),
        ));
    }
    s.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_each_queue_with_counts_and_rates() {
        let report = json!({"queues": [summarize(&json!({
            "name": "order-svc", "type": "quorum", "messages_ready": 3,
            "messages_unacknowledged": 1, "consumers": 1,
            "message_stats": {"publish_details": {"rate": 12.5}}
        }))]});
        let text = render(&report);
        assert!(text.lines().nth(1).unwrap().starts_with("order-svc"));
        assert!(text.contains("12.5"));
    }

    #[test]
    fn the_default_vhost_is_one_encoded_segment() {
        assert_eq!(
            crate::context::path(&["api", "queues", "/"]),
            "/api/queues/%2F"
        );
        assert_eq!(
            crate::context::path(&["api", "queues", "saga"]),
            "/api/queues/saga"
        );
    }
}
