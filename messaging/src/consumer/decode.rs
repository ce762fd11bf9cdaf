//! Decoding and authorising a delivery: its body becomes the event a handler sees, or the
//! reason it is dead-lettered without a handler (it cannot be decoded, or a broker user
//! that may not publish its type sent it); and the span its handling runs in.

use lapin::BasicProperties;
use lapin::message::Delivery;

use crate::envelope::{TRACEPARENT_HEADER, decode_body, header_str, header_u32};
use crate::event::{DecodeError, Event};
use crate::retry::ATTEMPT_HEADER;

use super::{Disposition, EventConsumer, Handler, IncomingEvent};

impl<H: Handler> EventConsumer<H> {
    /// The message as a handler sees it, or why it is dead-lettered without a handler: it
    /// cannot be decoded, or it comes from a broker user that may not publish its type.
    /// Records what the envelope says in the current span.
    pub(super) fn decode(
        &self,
        body: &[u8],
        properties: &BasicProperties,
    ) -> Result<IncomingEvent<H::Event>, Disposition> {
        let attempt = header_u32(properties, ATTEMPT_HEADER).unwrap_or(0) + 1;
        let (envelope, event) = match decode_body::<H::Event>(body) {
            Ok(decoded) => decoded,
            Err((_, e)) => return Err(dead_letter(&e, attempt)),
        };
        if let Err(error) = crate::authenticity::check(
            &self.inner.users,
            event.kind(),
            properties,
            &self.inner.own_user,
        ) {
            let code = crate::authenticity::FORGED_PRODUCER.to_owned();
            return Err(Disposition::DeadLetter {
                code,
                error,
                attempts: attempt,
            });
        }
        let incoming = IncomingEvent {
            envelope,
            event,
            attempt,
            traceparent: header_str(properties, TRACEPARENT_HEADER),
        };
        // The properties may lack what the envelope says; the span shows the envelope's.
        let span = tracing::Span::current();
        span.record("event_type", incoming.envelope.event_type.as_str());
        span.record(
            "message_id",
            tracing::field::display(incoming.envelope.message_id),
        );
        span.record("order_id", incoming.envelope.correlation_id.as_str());
        if let Some(c) = incoming.envelope.causation_id {
            span.record("causation_id", tracing::field::display(c));
        }
        if let Some(tp) = &incoming.traceparent {
            span.record("traceparent", tp.as_str());
        }
        Ok(incoming)
    }
}

pub(super) fn delivery_span(delivery: &Delivery) -> tracing::Span {
    let p = &delivery.properties;
    // Optional properties: an absent one shows as an empty field.
    let s = |v: &Option<lapin::types::ShortString>| {
        v.as_ref()
            .map_or_else(String::new, |s| s.as_str().to_owned())
    };
    let span = tracing::info_span!(
        "message",
        otel.name = %format!("{} process", s(p.kind())),
        otel.kind = "consumer",
        event_type = %s(p.kind()),
        message_id = %s(p.message_id()),
        order_id = %s(p.correlation_id()),
        causation_id = tracing::field::Empty,
        traceparent = tracing::field::Empty,
    );
    // The span is a child of the relay's publish span, whose context the message carries,
    // so an OTLP backend shows one trace from the HTTP request through every handler.
    crate::trace::continue_from_message(&span, p);
    span
}

fn dead_letter(e: &DecodeError, attempt: u32) -> Disposition {
    Disposition::DeadLetter {
        code: e.code().to_owned(),
        error: e.to_string(),
        attempts: attempt,
    }
}
