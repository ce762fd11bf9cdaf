//! Publishing an event as the operator: wrapped in a valid envelope (producer `sagactl`),
//! checked, and sent to `saga.events` with confirms, naming the operator (`--as`) in the
//! `x-saga-operator` header, which the consuming service records in its audit log.

use events::EventType;
use events::catalog::Event;
use messaging::envelope::Envelope;
use messaging::publisher::OutgoingMessage;

use crate::context::{CliError, Context};

/// Publishes an event from the operator (no cause) and returns its envelope.
pub async fn publish_event(ctx: &Context, event: Event) -> anyhow::Result<Envelope> {
    publish_envelope(ctx, Envelope::wrap(&event, "sagactl", None)).await
}

/// The envelope of an operator's payload of type `t` at `version` (the newest when
/// `None`): read and checked as that version, and written back in that version's shape.
/// An error says what is wrong (a version this code does not read, a payload that does not
/// match it); nothing is sent either way.
pub fn operator_envelope(
    t: EventType,
    version: Option<u32>,
    payload: &serde_json::Value,
    causation_id: Option<uuid::Uuid>,
) -> Result<Envelope, String> {
    let version = version.unwrap_or(t.version());
    if !t.versions().contains(&version) {
        return Err(format!(
            "{t} has no version {version}: this sagactl reads versions {:?}",
            t.versions()
        ));
    }
    let event = Event::decode(t.name(), version, payload).map_err(|e| e.to_string())?;
    let mut envelope = Envelope::wrap(&event, "sagactl", causation_id);
    if let Some(payload) = event.payload_at(version) {
        envelope.version = version;
        envelope.payload = payload;
    }
    Ok(envelope)
}

/// Publishes `envelope` once its correlation id is known to be acceptable; returns it.
pub async fn publish_envelope(ctx: &Context, envelope: Envelope) -> anyhow::Result<Envelope> {
    if envelope.correlation_id.is_empty() || envelope.correlation_id.chars().count() > 128 {
        return Err(
            CliError::Refused("the correlation id must be 1 to 128 characters".into()).into(),
        );
    }
    let mut message = OutgoingMessage::event::<EventType>(&envelope, None)
        .map_err(|e| CliError::Refused(format!("{e}; nothing was sent")))?;
    message.properties = messaging::audit::naming_operator(message.properties, &ctx.identity.sub);
    ctx.publish(&message).await?;
    Ok(envelope)
}
