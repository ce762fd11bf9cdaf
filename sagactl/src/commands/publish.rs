//! `sagactl publish`: a checked event in a valid envelope, or raw bytes with `--raw`.

use std::io::Read;

use anyhow::Context as _;
use lapin::BasicProperties;
use messaging::publisher::OutgoingMessage;
use messaging::topology::EVENTS_EXCHANGE;
use sagactl::context::{CliError, Context};
use sagactl::output;
use sagactl::publish::{operator_envelope, publish_envelope};
use serde_json::json;

use crate::cli::{PayloadInput, PublishArgs};

pub(super) async fn run(ctx: &Context, args: PublishArgs) -> anyhow::Result<()> {
    let input = read_input(&args.input)?;
    if args.raw {
        // clap requires --routing-key with --raw.
        let routing_key = args
            .routing_key
            .ok_or_else(|| CliError::Refused("--raw needs --routing-key".into()))?;
        let message = OutgoingMessage {
            exchange: EVENTS_EXCHANGE.to_owned(),
            routing_key: routing_key.clone(),
            body: input.clone(),
            properties: BasicProperties::default().with_delivery_mode(2),
        };
        ctx.publish(&message).await?;
        let v = json!({"routing_key": routing_key, "bytes": input.len()});
        output::show(ctx, &v, |_| {
            format!(
                "published {} raw bytes with routing key {routing_key}",
                input.len()
            )
        });
        return Ok(());
    }
    let Some(event_type) = args.event_type else {
        return Err(CliError::Refused("give an event type, or --raw".into()).into());
    };
    let payload: serde_json::Value = serde_json::from_slice(&input).map_err(|e| {
        CliError::Refused(format!("the payload is not JSON: {e}; nothing was sent"))
    })?;
    let mut envelope =
        operator_envelope(event_type, args.schema_version, &payload, args.causation_id).map_err(
            |e| {
                CliError::Refused(format!(
                    "{e}; nothing was sent\n  {} payload fields (version {}): {}",
                    event_type.name(),
                    event_type.version(),
                    event_type.fields()
                ))
            },
        )?;
    if let Some(id) = args.message_id {
        envelope.message_id = id;
    }
    if let Some(c) = args.correlation_id {
        envelope.correlation_id = c;
    }
    let envelope = publish_envelope(ctx, envelope).await?;
    let v = json!({
        "message_id": envelope.message_id,
        "type": envelope.event_type,
        "version": envelope.version,
        "routing_key": event_type.routing_key(),
        "correlation_id": envelope.correlation_id,
    });
    output::show(ctx, &v, |_| envelope.message_id.to_string());
    Ok(())
}

fn read_input(input: &PayloadInput) -> anyhow::Result<Vec<u8>> {
    if let Some(d) = &input.data {
        return Ok(d.as_bytes().to_vec());
    }
    if let Some(path) = &input.file {
        return std::fs::read(path).with_context(|| format!("cannot read {}", path.display()));
    }
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .context("cannot read standard input")?;
    Ok(buf)
}
