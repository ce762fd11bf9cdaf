//! Watching `saga.events` from a command: an exclusive, auto-deleted queue bound to `#`,
//! so the watcher never takes a service's messages and leaves nothing behind. The saga's
//! own queues are declared first, so that no event reaches the watcher alone.

use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, Consumer};
use serde_json::Value;

use crate::context::Context;

/// Opens the watcher's queue, bound to `keys` (`#` for everything), and returns its
/// consumer (messages are auto-acked).
pub async fn watch(
    ctx: &Context,
    purpose: &str,
    keys: &[&str],
) -> anyhow::Result<(Connection, Consumer)> {
    let conn = ctx.broker(purpose).await?;
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| ctx.broker_unreachable(e))?;
    messaging::topology::declare_exchanges(&channel).await?;
    messaging::topology::declare_all(&conn, &crate::subscriptions::saga_services()).await;
    let queue = format!("{}.{purpose}.{}", ctx.program, std::process::id());
    let tag = format!("{}-{purpose}", ctx.program);
    let consumer = watcher_queue(
        &channel,
        &queue,
        messaging::topology::EVENTS_EXCHANGE,
        keys,
        &tag,
    )
    .await?;
    Ok((conn, consumer))
}

/// Declares `queue` exclusive and auto-deleted (it goes with `channel`'s connection),
/// binds it to `exchange` with each of `keys`, and consumes it with no acks.
pub async fn watcher_queue(
    channel: &lapin::Channel,
    queue: &str,
    exchange: &str,
    keys: &[&str],
    tag: &str,
) -> lapin::Result<Consumer> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    for key in keys {
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                (*key).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Collects every envelope seen into a shared list until the consumer ends.
pub fn collect(mut consumer: Consumer) -> Arc<Mutex<Vec<Value>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let envelope: Value = serde_json::from_slice(&delivery.data).unwrap_or(Value::Null);
            if let Ok(mut s) = sink.lock() {
                s.push(envelope);
            }
        }
    });
    seen
}
