//! `sagactl tail`: every event on `saga.events`, live, through a watcher queue of its own
//! (see `bus`).

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

use crate::cli::TailArgs;
use sagactl::context::Context;
use sagactl::output;

pub(super) async fn run(ctx: &Context, args: TailArgs) -> anyhow::Result<()> {
    let (conn, mut deliveries) = sagactl::bus::watch(ctx, "tail", &["#"]).await?;
    // On stderr even with --json (stdout stays one envelope per line): scripts wait for it
    // to know the watcher is bound before they publish.
    eprintln!("following saga.events (Ctrl-C to stop)");
    let want_type = args.event_type.map(|t| t.name());
    let deadline = args
        .duration
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut seen = 0u64;
    loop {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, deliveries.next()).await {
                Ok(n) => n,
                Err(_) => break,
            },
            None => tokio::select! {
                n = deliveries.next() => n,
                _ = tokio::signal::ctrl_c() => break,
            },
        };
        let Some(Ok(delivery)) = next else { break };
        let envelope: Value = serde_json::from_slice(&delivery.data).unwrap_or(Value::Null);
        let event_type = envelope.get("type").and_then(Value::as_str).unwrap_or("?");
        let correlation = envelope
            .get("correlation_id")
            .and_then(Value::as_str)
            .unwrap_or("?");
        if want_type.is_some_and(|t| t != event_type)
            || args.order_id.as_deref().is_some_and(|o| o != correlation)
        {
            continue;
        }
        if ctx.json {
            let line = if envelope.is_null() {
                serde_json::json!({"raw": String::from_utf8_lossy(&delivery.data), "routing_key": delivery.routing_key.as_str()})
            } else {
                envelope
            };
            output::line(&line.to_string());
        } else {
            output::line(&line(&envelope, delivery.routing_key.as_str()));
        }
        seen += 1;
        if args.count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    sagactl::context::close(conn).await;
    Ok(())
}

/// One readable line: time, type, order, short message id, producer.
pub(super) fn line(envelope: &Value, routing_key: &str) -> String {
    let s = |k: &str| envelope.get(k).and_then(Value::as_str).unwrap_or("-");
    if envelope.is_null() {
        return format!(
            "{:<24} {:<16} (not an envelope, routing key {routing_key})",
            "-", "?"
        );
    }
    let id = s("message_id");
    format!(
        "{:<24} {:<16} {:<36}  {}  {}",
        s("occurred_at"),
        s("type"),
        s("correlation_id"),
        &id[id.len().saturating_sub(8)..],
        s("producer")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_tail_line_has_time_type_order_short_id_and_producer() {
        let l = line(
            &json!({"occurred_at": "2026-11-26T10:00:00.123Z", "type": "OrderCreated",
                    "correlation_id": "o-1", "message_id": "0192f7a0-6c1e-7b3a-9d2e-5f4c3b2a1908",
                    "producer": "order-svc"}),
            "order.created",
        );
        assert!(l.starts_with("2026-11-26T10:00:00.123Z OrderCreated"));
        assert!(l.contains("o-1"));
        assert!(l.contains("3b2a1908"));
        assert!(l.ends_with("order-svc"));
    }
}
