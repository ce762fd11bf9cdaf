//! Decoding and authorising a delivery: its body becomes the event a handler sees, or the
//! reason it is dead-lettered without a handler (it cannot be decoded, or a broker user
//! that may not publish its type sent it); and the span its handling runs in.

use lapin::BasicProperties;
use lapin::message::Delivery;

use crate::envelope::{TRACEPARENT_HEADER, decode_body, header_str, header_u32};
use crate::event::{DecodeError, Event, EventKind};
use crate::retry::{ATTEMPT_HEADER, next_delay};

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
            Err((_, e)) => return Err(refuse::<H::Event>(&e, attempt)),
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
        let by_hand = self.by_hand(event.kind(), &envelope, properties);
        let incoming = IncomingEvent {
            envelope,
            event,
            attempt,
            traceparent: header_str(properties, TRACEPARENT_HEADER),
            by_hand,
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

/// What becomes of a message that cannot be decoded. A version of its type newer than this
/// code knows is not bad input: a newer replica may be running beside this one (contract,
/// "Versions"), so it takes the retry ladder like a transient failure, and reaches the
/// dead-letter queue as `unknown_version` only after the last retry, to be replayed once
/// this service knows that version. Anything else is dead-lettered at once.
fn refuse<E: Event>(e: &DecodeError, attempt: u32) -> Disposition {
    if let DecodeError::UnknownVersion {
        event_type,
        version,
    } = e
        && E::Kind::from_name(event_type).is_some_and(|kind| *version > kind.version())
        && let Some(delay) = next_delay(attempt)
    {
        return Disposition::Retry {
            attempt,
            delay,
            error: e.to_string(),
        };
    }
    dead_letter(e, attempt)
}

fn dead_letter(e: &DecodeError, attempt: u32) -> Disposition {
    Disposition::DeadLetter {
        code: e.code().to_owned(),
        error: e.to_string(),
        attempts: attempt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_catalog::TestEvent;

    fn unknown(version: u32) -> DecodeError {
        DecodeError::UnknownVersion {
            event_type: "Ping".to_owned(),
            version,
        }
    }

    #[test]
    fn a_newer_version_takes_the_retry_ladder_then_the_dead_letter_queue() {
        for attempt in 1..=4 {
            assert!(
                matches!(refuse::<TestEvent>(&unknown(2), attempt), Disposition::Retry { attempt: a, .. } if a == attempt),
                "attempt {attempt}"
            );
        }
        match refuse::<TestEvent>(&unknown(2), 5) {
            Disposition::DeadLetter { code, attempts, .. } => {
                assert_eq!((code.as_str(), attempts), ("unknown_version", 5))
            }
            other => panic!("after the ladder: {other:?}"),
        }
    }

    #[test]
    fn a_version_older_than_any_declared_and_other_decode_errors_dead_letter_at_once() {
        for e in [unknown(0), DecodeError::UnknownType("Nope".to_owned())] {
            assert!(
                matches!(refuse::<TestEvent>(&e, 1), Disposition::DeadLetter { .. }),
                "{e}"
            );
        }
    }
}
