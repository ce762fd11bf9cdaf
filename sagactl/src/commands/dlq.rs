//! `sagactl dlq list|show|replay|purge`: the dead-letter queues, read over AMQP so counts
//! are exact (the management API's lag by seconds).
//!
//! `show` takes messages with `basic.get` and returns them by closing the channel without
//! acking, so reading never removes anything. `replay` publishes a cleaned copy to
//! `saga.redeliver` (to the one service the queue belongs to) and acks the dead-lettered
//! original only once the broker confirmed the copy.

use std::time::Duration;

use anyhow::Context as _;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use serde_json::{Value, json};

use messaging::consumer::{ATTEMPTS_HEADER, ERROR_HEADER, FAILED_AT_HEADER, QUEUE_HEADER};
use messaging::publisher::{ConfirmedPublisher, OutgoingMessage};
use messaging::topology::REDELIVER_EXCHANGE;

use crate::cli::DlqCommand;
use sagactl::context::{CliError, Context};
use sagactl::output;

pub(super) const SERVICES: [&str; 3] = ["order-svc", "inventory-svc", "payment-svc"];

/// A DLQ name from a queue or service name: `order-svc` and `order-svc.dlq` both mean
/// `order-svc.dlq`.
pub(super) fn dlq_name(arg: &str) -> Result<(String, String), CliError> {
    let service = arg.strip_suffix(".dlq").unwrap_or(arg);
    if !SERVICES.contains(&service) {
        return Err(CliError::Refused(format!(
            "{arg:?} is not a dead-letter queue; use one of {}",
            SERVICES.map(|s| format!("{s}.dlq")).join(", ")
        )));
    }
    Ok((format!("{service}.dlq"), service.to_owned()))
}

pub(super) async fn run(ctx: &Context, cmd: DlqCommand) -> anyhow::Result<()> {
    let conn = ctx.broker("dlq").await?;
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| ctx.broker_unreachable(e))?;
    let result = match cmd {
        DlqCommand::List => list(ctx, &channel).await,
        DlqCommand::Show { queue, limit } => show(ctx, &channel, &dlq_name(&queue)?.0, limit).await,
        DlqCommand::Replay {
            queue,
            message_id,
            edit,
        } => {
            let publisher = ConfirmedPublisher::open(&conn, Duration::from_secs(10)).await?;
            replay(
                ctx,
                &channel,
                &publisher,
                dlq_name(&queue)?,
                message_id,
                edit,
            )
            .await
        }
        DlqCommand::Purge { queue, yes } => {
            let name = dlq_name(&queue)?.0;
            if !yes {
                confirm_purge(&channel, &name).await?;
            }
            let report = purge(&channel, &name).await?;
            output::show(ctx, &report, |r| {
                format!("purged {} messages from {name}", r["purged"])
            });
            Ok(())
        }
    };
    // Closing returns every message taken and not acked to its queue.
    sagactl::context::close(conn).await;
    result
}

pub(super) async fn count(channel: &Channel, queue: &str) -> anyhow::Result<u32> {
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("queue {queue} does not exist; has its service ever started?"))?;
    Ok(q.message_count())
}

/// Deletes every message of the dead-letter queue `name`.
pub(super) async fn purge(channel: &Channel, name: &str) -> anyhow::Result<Value> {
    let n = channel
        .queue_purge(name.into(), QueuePurgeOptions::default())
        .await?;
    Ok(json!({"queue": name, "purged": n}))
}

/// Each dead-letter queue with its exact message count.
pub(super) async fn counts(channel: &Channel) -> anyhow::Result<Value> {
    let mut rows = Vec::new();
    for s in SERVICES {
        let name = format!("{s}.dlq");
        rows.push(json!({"queue": name, "messages": count(channel, &name).await?}));
    }
    Ok(json!({"queues": rows}))
}

/// Asks on the terminal before a purge: deleting dead letters cannot be undone, and they
/// are the only copy of the messages that failed.
async fn confirm_purge(channel: &Channel, queue: &str) -> anyhow::Result<()> {
    let n = count(channel, queue).await?;
    output::confirm(
        &format!("delete all {n} messages of {queue}? This cannot be undone."),
        &format!("not purging {queue}"),
    )
}

async fn list(ctx: &Context, channel: &Channel) -> anyhow::Result<()> {
    output::list(ctx, &counts(channel).await?, "queues", |v| {
        let mut s = format!("{:<20} {:>8}\n", "QUEUE", "MESSAGES");
        for r in v["queues"].as_array().into_iter().flatten() {
            s.push_str(&format!(
                "{:<20} {:>8}\n",
                r["queue"].as_str().unwrap_or("?"),
                r["messages"].as_i64().unwrap_or(0)
            ));
        }
        s.trim_end().to_owned()
    });
    Ok(())
}

/// Takes up to `limit` messages without acking them.
async fn take(
    channel: &Channel,
    queue: &str,
    limit: usize,
) -> anyhow::Result<Vec<lapin::message::Delivery>> {
    let mut taken = Vec::new();
    while taken.len() < limit {
        match channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await?
        {
            Some(m) => taken.push(m.delivery),
            None => break,
        }
    }
    Ok(taken)
}

fn header(props: &BasicProperties, name: &str) -> Value {
    match props.headers().as_ref().and_then(|h| h.inner().get(name)) {
        Some(AMQPValue::LongString(s)) => json!(String::from_utf8_lossy(s.as_bytes())),
        Some(AMQPValue::ShortString(s)) => json!(s.as_str()),
        Some(AMQPValue::LongLongInt(n)) => json!(n),
        Some(AMQPValue::LongInt(n)) => json!(n),
        Some(other) => json!(format!("{other:?}")),
        None => Value::Null,
    }
}

/// What `show` prints of one dead-lettered message.
pub(super) fn describe(delivery: &lapin::message::Delivery) -> Value {
    let p = &delivery.properties;
    let short = |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| s.as_str().to_owned());
    let body = String::from_utf8_lossy(&delivery.data);
    let preview: String = body.chars().take(400).collect();
    // A message the broker dead-lettered by itself has no x-saga-error: x-death says why.
    let death = messaging::death::last_death(p);
    let or_death = |v: Value, key: &str| match (&v, &death) {
        (Value::Null, Some(d)) => d[key].clone(),
        _ => v,
    };
    json!({
        "message_id": short(p.message_id()),
        "type": short(p.kind()),
        "routing_key": delivery.routing_key.as_str(),
        "error": or_death(header(p, ERROR_HEADER), "explanation"),
        "queue": or_death(header(p, QUEUE_HEADER), "queue"),
        "death": death,
        "attempts": header(p, ATTEMPTS_HEADER),
        "failed_at": header(p, FAILED_AT_HEADER),
        "body": preview,
        "bytes": delivery.data.len(),
    })
}

/// Up to `limit` messages of a dead-letter queue, described, and its total; they stay in
/// the queue once the channel is closed.
pub(super) async fn peek(channel: &Channel, queue: &str, limit: usize) -> anyhow::Result<Value> {
    let total = count(channel, queue).await?;
    let taken = take(channel, queue, limit).await?;
    let messages: Vec<Value> = taken.iter().map(describe).collect();
    Ok(json!({"queue": queue, "total": total, "messages": messages}))
}

async fn show(ctx: &Context, channel: &Channel, queue: &str, limit: usize) -> anyhow::Result<()> {
    output::list(ctx, &peek(channel, queue, limit).await?, "messages", |v| {
        let mut s = format!("{queue}: {} messages\n", v["total"]);
        for m in v["messages"].as_array().into_iter().flatten() {
            let f = |k: &str| match &m[k] {
                Value::Null => "-".to_owned(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            s.push_str(&format!(
                "\nmessage  {}\ntype     {}  (routing key {})\nerror    {}\nfrom     {}  attempts {}  failed at {}\nbody     {}\n",
                f("message_id"), f("type"), f("routing_key"), f("error"), f("queue"), f("attempts"), f("failed_at"), f("body")
            ));
        }
        s.trim_end().to_owned()
    });
    Ok(())
}

/// Headers a replayed copy must not carry: the failure record and the broker's death log.
fn cleaned_headers(props: &BasicProperties) -> FieldTable {
    let mut headers = FieldTable::default();
    if let Some(h) = props.headers() {
        for (k, v) in h.inner() {
            let k_str = k.as_str();
            if !(k_str.starts_with("x-saga-")
                || k_str.starts_with("x-death")
                || k_str.starts_with("x-first-death")
                || k_str.starts_with("x-last-death"))
            {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    headers
}

async fn replay(
    ctx: &Context,
    channel: &Channel,
    publisher: &ConfirmedPublisher,
    (queue, service): (String, String),
    message_id: Option<String>,
    edit: bool,
) -> anyhow::Result<()> {
    let report = resend(
        channel,
        publisher,
        (queue.clone(), service.clone()),
        message_id,
        edit,
    )
    .await?;
    let n = report["replayed"].as_array().map_or(0, Vec::len);
    output::show(ctx, &report, |_| {
        format!("replayed {n} messages from {queue} to {service}")
    });
    Ok(())
}

/// Sends the dead-lettered messages of `queue` (or only `message_id`) back to `service`
/// and reports which it sent.
pub(super) async fn resend(
    channel: &Channel,
    publisher: &ConfirmedPublisher,
    (queue, service): (String, String),
    message_id: Option<String>,
    edit: bool,
) -> anyhow::Result<Value> {
    let total = count(channel, &queue).await? as usize;
    let taken = take(channel, &queue, total.max(1)).await?;
    let mut replayed = Vec::new();
    for delivery in taken {
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_owned());
        if message_id.is_some() && id != message_id {
            continue;
        }
        let body = if edit {
            edit_body(&delivery.data)?
        } else {
            delivery.data.clone()
        };
        let mut headers = cleaned_headers(&delivery.properties);
        // The replay is published as the operator; the consumer believes the recorded
        // original publisher from an operator (a dead letter the broker itself moved has
        // none recorded yet: its user_id is the original).
        if messaging::envelope::header_str(
            &delivery.properties,
            messaging::authenticity::PUBLISHED_BY_HEADER,
        )
        .is_none()
            && let Some(user) = delivery.properties.user_id()
        {
            headers.insert(
                messaging::authenticity::PUBLISHED_BY_HEADER.into(),
                lapin::types::AMQPValue::LongString(user.as_str().as_bytes().into()),
            );
        }
        let copy = OutgoingMessage {
            exchange: REDELIVER_EXCHANGE.to_owned(),
            routing_key: service.clone(),
            body,
            properties: delivery.properties.clone().with_headers(headers),
        };
        publisher
            .publish(&copy)
            .await
            .map_err(|e| CliError::Refused(format!("could not send the message back: {e}")))?;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        replayed.push(json!(id));
    }
    if let Some(id) = message_id
        && replayed.is_empty()
    {
        return Err(CliError::Refused(format!("no message {id} in {queue}")).into());
    }
    Ok(json!({"queue": queue, "replayed": replayed}))
}

/// Opens the body in `$EDITOR` (or `vi`) and returns what was saved.
fn edit_body(body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let path = std::env::temp_dir().join(format!("sagactl-replay-{}.json", std::process::id()));
    std::fs::write(&path, body)?;
    let editor = std::env::var("EDITOR").unwrap_or_else(|_| "vi".to_owned());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&path)
        .status()
        .with_context(|| format!("cannot start the editor {editor:?}"))?;
    if !status.success() {
        return Err(CliError::Refused(format!(
            "the editor exited with {status}; nothing was replayed"
        ))
        .into());
    }
    let edited = std::fs::read(&path)?;
    // The edited copy was read; a temporary file left behind harms nothing.
    let _ = std::fs::remove_file(&path);
    Ok(edited)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_or_queue_name_names_its_dlq() {
        assert_eq!(
            dlq_name("order-svc").unwrap(),
            ("order-svc.dlq".into(), "order-svc".into())
        );
        assert_eq!(dlq_name("payment-svc.dlq").unwrap().1, "payment-svc");
        assert!(dlq_name("orders").is_err());
    }

    #[test]
    fn replayed_copies_lose_their_failure_headers() {
        let mut h = FieldTable::default();
        h.insert("x-saga-error".into(), AMQPValue::LongString("boom".into()));
        h.insert("x-death".into(), AMQPValue::LongString("[]".into()));
        h.insert("traceparent".into(), AMQPValue::LongString("00-abc".into()));
        let cleaned = cleaned_headers(&BasicProperties::default().with_headers(h));
        let keys: Vec<_> = cleaned
            .inner()
            .keys()
            .map(|k| k.as_str().to_owned())
            .collect();
        assert_eq!(keys, vec!["traceparent"]);
    }
}
