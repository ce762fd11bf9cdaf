//! An outbox row as the relay publishes it: what the writers hand over, what a claim
//! reads, and the message and span it becomes.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::envelope::properties_for;
use crate::publisher::OutgoingMessage;
use crate::topology::EVENTS_EXCHANGE;

/// A row as the relay publishes it.
#[derive(Debug)]
pub(super) struct RowToPublish {
    pub(super) message_id: Uuid,
    pub(super) event_type: String,
    pub(super) routing_key: String,
    pub(super) correlation_id: String,
    pub(super) producer: String,
    pub(super) occurred_at: DateTime<Utc>,
    pub(super) body: String,
    pub(super) traceparent: Option<String>,
}

/// A row a relay claimed.
#[derive(Debug)]
pub(super) struct PendingRow {
    /// Where the row is: it is locked until the transaction ends, so it stays there, and
    /// marking it by this address costs no index lookup and no plan.
    pub(super) at: String,
    pub(super) row: RowToPublish,
}

impl RowToPublish {
    /// The publish of this row as a span: a child of the span that wrote the row, so the
    /// trace runs on from the request or the handler that emitted the event.
    pub(super) fn publish_span(&self) -> tracing::Span {
        let span = tracing::info_span!(
            "publish",
            otel.name = %format!("{} publish", self.routing_key),
            otel.kind = "producer",
            event_type = %self.event_type,
            message_id = %self.message_id,
            order_id = %self.correlation_id,
            error = tracing::field::Empty,
        );
        crate::trace::continue_from_traceparent(&span, self.traceparent.as_deref());
        span
    }

    /// The message for this row; its `traceparent` is the publish span's, so the consumer's
    /// handling span becomes a child of the publish.
    pub(super) fn to_message(&self, publish: &tracing::Span) -> OutgoingMessage {
        OutgoingMessage {
            exchange: EVENTS_EXCHANGE.to_owned(),
            routing_key: self.routing_key.clone(),
            body: self.body.as_bytes().to_vec(),
            properties: properties_for(
                self.message_id,
                &self.event_type,
                &self.correlation_id,
                &self.producer,
                self.occurred_at,
                crate::trace::traceparent_of(publish)
                    .or_else(|| self.traceparent.clone())
                    .as_deref(),
            ),
        }
    }
}
