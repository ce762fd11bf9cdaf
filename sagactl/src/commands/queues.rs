//! `sagactl queues`: the project's queues from the RabbitMQ management API.

use std::collections::HashMap;
use std::time::Duration;

use rabbitmq_http_client::responses::QueueInfo;
use serde_json::{Value, json};

use sagactl::context::{Context, MessageStats};
use sagactl::output;

const SERVICES: [&str; 3] = ["order-svc", "inventory-svc", "payment-svc"];

pub(super) async fn run(ctx: &Context, watch: Option<u64>) -> anyhow::Result<()> {
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
pub(super) async fn snapshot(ctx: &Context) -> anyhow::Result<Value> {
    let vhost = ctx.vhost();
    let queues =
        ctx.management().list_queues_in(&vhost).await.map_err(|e| {
            ctx.management_failed(&format!("listing the queues of vhost {vhost:?}"), e)
        })?;
    let stats: HashMap<String, MessageStats> = ctx
        .queue_stats(&vhost)
        .await?
        .into_iter()
        .map(|q| (q.name, q.message_stats))
        .collect();
    let rows: Vec<Value> = queues
        .iter()
        .filter(|q| is_ours(&q.name))
        .map(|q| summarize(q, stats.get(&q.name).copied().unwrap_or_default()))
        .collect();
    Ok(json!({"vhost": vhost, "queues": rows}))
}

/// A service's input queue, or its DLQ or retry queues.
fn is_ours(name: &str) -> bool {
    SERVICES.iter().any(|s| {
        name == *s
            || name
                .strip_prefix(s)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// `stats` is all zero for a queue that has seen no traffic yet (the broker reports none).
fn summarize(q: &QueueInfo, stats: MessageStats) -> Value {
    json!({
        "name": q.name,
        "type": q.queue_type,
        "ready": q.message_count.saturating_sub(q.unacknowledged_message_count),
        "unacked": q.unacknowledged_message_count,
        "consumers": q.consumer_count,
        "publish_rate": stats.publish_details.rate,
        "deliver_rate": stats.deliver_get_details.rate,
        "ack_rate": stats.ack_details.rate,
    })
}

pub(super) fn render(report: &Value) -> String {
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
        let queue: QueueInfo = serde_json::from_value(json!({
            "name": "order-svc", "vhost": "saga", "type": "quorum", "durable": true,
            "auto_delete": false, "exclusive": false, "arguments": {},
            "messages": 4, "messages_unacknowledged": 1, "consumers": 1
        }))
        .unwrap();
        let stats: MessageStats =
            serde_json::from_value(json!({"publish_details": {"rate": 12.5}})).unwrap();
        let report = json!({"queues": [summarize(&queue, stats)]});
        assert_eq!(report["queues"][0]["ready"], 3);
        let text = render(&report);
        assert!(text.lines().nth(1).unwrap().starts_with("order-svc"));
        assert!(text.contains("12.5"));
    }

    #[test]
    fn only_the_services_queues_are_listed() {
        assert!(is_ours("order-svc"));
        assert!(is_ours("order-svc.dlq"));
        assert!(is_ours("payment-svc.retry.1"));
        assert!(!is_ours("order-svcx"));
        assert!(!is_ours("amq.gen-1"));
    }

    #[test]
    fn the_default_vhost_is_one_encoded_segment() {
        assert_eq!(
            sagactl::context::path(&["api", "queues", "/"]),
            "/api/queues/%2F"
        );
        assert_eq!(
            sagactl::context::path(&["api", "queues", "saga"]),
            "/api/queues/saga"
        );
    }
}
