//! Retries and dead letters: what a handler's result means for a delivery (handled, a
//! duplicate, retried after a delay, dead-lettered, or held while the database is away),
//! and the copy of a failed delivery that goes to a delayed retry queue or to the
//! dead-letter queue, with the headers that say why.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, LongString};

use crate::inbox::InboxClaim;
use crate::publisher::OutgoingMessage;
use crate::retry::{ATTEMPT_HEADER, HandlerError, next_delay};
use crate::topology::{DEAD_LETTER_EXCHANGE, RETRY_EXCHANGE};

use super::{Disposition, EventConsumer, Handler};

/// Headers on a dead-lettered message.
pub const ERROR_HEADER: &str = "x-saga-error";
pub const ERROR_CODE_HEADER: &str = "x-saga-error-code";
pub const QUEUE_HEADER: &str = "x-saga-queue";
pub const ATTEMPTS_HEADER: &str = "x-saga-attempts";
pub const FAILED_AT_HEADER: &str = "x-saga-failed-at";

impl<H: Handler> EventConsumer<H> {
    /// What a handler's result means for the delivery.
    pub(super) async fn classify(
        &self,
        result: Result<InboxClaim, HandlerError>,
        attempt: u32,
    ) -> Disposition {
        match result {
            Ok(InboxClaim::Claimed) => Disposition::Handled,
            Ok(InboxClaim::Duplicate) => Disposition::Duplicate,
            Err(HandlerError::Permanent { code, message }) => Disposition::DeadLetter {
                code: code.to_owned(),
                error: message,
                attempts: attempt,
            },
            Err(HandlerError::Unreachable(e)) => Disposition::Paused {
                error: format!("{e:#}"),
            },
            // A connection lost mid-transaction is transient only if the database is still
            // there; when it does not answer, this was the start of an outage.
            Err(HandlerError::Transient(e))
                if !crate::pause::database_answers(&self.inner.pool).await =>
            {
                Disposition::Paused {
                    error: format!("{e:#}"),
                }
            }
            Err(HandlerError::Transient(e)) => match next_delay(attempt) {
                Some(delay) => Disposition::Retry {
                    attempt,
                    delay,
                    error: format!("{e:#}"),
                },
                None => Disposition::DeadLetter {
                    code: "retries_exhausted".to_owned(),
                    error: format!("{e:#}"),
                    attempts: attempt,
                },
            },
        }
    }

    /// The copy a disposition calls for, if any: a retry copy to the delayed retry queue of
    /// its delay, or a dead-letter copy to the dead-letter queue.
    pub(super) fn copy_for(
        &self,
        delivery: &Delivery,
        disposition: &Disposition,
    ) -> Option<OutgoingMessage> {
        match disposition {
            Disposition::Handled | Disposition::Duplicate | Disposition::Paused { .. } => None,
            Disposition::Retry {
                attempt,
                delay,
                error,
            } => {
                tracing::warn!(attempt, delay_s = delay.as_secs(), %error, "handler failed; retrying later");
                Some(self.retry_copy(delivery, *attempt, *delay))
            }
            Disposition::DeadLetter {
                code,
                error,
                attempts,
            } => {
                tracing::error!(%code, %error, attempts, "message dead-lettered");
                Some(self.dead_letter_copy(delivery, code, error, *attempts))
            }
        }
    }

    /// The headers of a copy of `delivery` that this consumer publishes again: the
    /// original's, with the publisher it vouches for recorded.
    fn copy_headers(&self, delivery: &Delivery) -> FieldTable {
        let mut headers = copied_headers(&delivery.properties);
        crate::authenticity::record_publisher(
            &self.inner.users,
            &delivery.properties,
            &self.inner.own_user,
            &mut headers,
        );
        headers
    }

    fn retry_copy(&self, delivery: &Delivery, attempt: u32, delay: Duration) -> OutgoingMessage {
        let mut headers = self.copy_headers(delivery);
        headers.insert(
            ATTEMPT_HEADER.into(),
            AMQPValue::LongLongInt(attempt.into()),
        );
        OutgoingMessage {
            exchange: RETRY_EXCHANGE.to_owned(),
            routing_key: self.inner.topology.retry_queue(delay),
            body: delivery.data.clone(),
            properties: delivery.properties.clone().with_headers(headers),
        }
    }

    fn dead_letter_copy(
        &self,
        delivery: &Delivery,
        code: &str,
        error: &str,
        attempts: u32,
    ) -> OutgoingMessage {
        let mut headers = self.copy_headers(delivery);
        let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes()));
        headers.insert(ERROR_HEADER.into(), text(&format!("{code}: {error}")));
        headers.insert(ERROR_CODE_HEADER.into(), text(code));
        headers.insert(QUEUE_HEADER.into(), text(self.inner.topology.input_queue()));
        headers.insert(
            ATTEMPTS_HEADER.into(),
            AMQPValue::LongLongInt(attempts.into()),
        );
        headers.insert(
            FAILED_AT_HEADER.into(),
            text(&Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)),
        );
        OutgoingMessage {
            exchange: DEAD_LETTER_EXCHANGE.to_owned(),
            routing_key: self.inner.topology.dead_letter_queue(),
            body: delivery.data.clone(),
            properties: delivery.properties.clone().with_headers(headers),
        }
    }
}

/// The delivery's headers, to extend on a copy (a message without headers has none).
fn copied_headers(props: &BasicProperties) -> FieldTable {
    match props.headers() {
        Some(headers) => headers.clone(),
        None => FieldTable::default(),
    }
}
