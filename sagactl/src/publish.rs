//! Publishing an event as the operator: wrapped in a valid envelope (producer `sagactl`),
//! checked, and sent to `saga.events` with confirms.

use events::EventType;
use events::catalog::Event;
use messaging::envelope::Envelope;
use messaging::publisher::OutgoingMessage;

use crate::context::{CliError, Context};

/// Publishes an event from the operator (no cause) and returns its envelope.
pub async fn publish_event(ctx: &Context, event: Event) -> anyhow::Result<Envelope> {
    publish_envelope(ctx, Envelope::wrap(&event, "sagactl", None)).await
}

/// Publishes `envelope` once its correlation id is known to be acceptable; returns it.
pub async fn publish_envelope(ctx: &Context, envelope: Envelope) -> anyhow::Result<Envelope> {
    if envelope.correlation_id.is_empty() || envelope.correlation_id.chars().count() > 128 {
        return Err(
            CliError::Refused("the correlation id must be 1 to 128 characters".into()).into(),
        );
    }
    let message = OutgoingMessage::event::<EventType>(&envelope, None)
        .map_err(|e| CliError::Refused(format!("{e}; nothing was sent")))?;
    ctx.publish(&message).await?;
    Ok(envelope)
}
