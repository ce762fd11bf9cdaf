//! One dead-lettered message as an operator sees it, and the filter that picks dead letters
//! for a listing, a redrive or a purge.

use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::AMQPValue;
use messaging::consumer::{
    ATTEMPTS_HEADER, ERROR_CODE_HEADER, ERROR_HEADER, FAILED_AT_HEADER, QUEUE_HEADER,
};
use messaging::envelope::header_str;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::ApiError;

/// The header a redriven or corrected copy carries: the id of the job that sent it, so
/// the job can find it again if it comes back to the dead-letter queue.
pub const REDRIVE_JOB_HEADER: &str = "x-saga-redrive-job";
/// How much of a body a listing shows.
const BODY_PREVIEW_BYTES: usize = 2048;

/// A dead-lettered message: why it failed, what it is, and a preview of its body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeadLetter {
    /// The AMQP `message_id` (the envelope's, for a message that has one).
    pub message_id: Option<String>,
    /// The event type, from the envelope or else the AMQP `type`.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub version: Option<u64>,
    /// Why, as a class: the `x-saga-error-code` the service gave it, or the reason the
    /// broker dead-lettered it for (`delivery_limit`), else `unknown`.
    pub cause: String,
    /// The reason in words (`x-saga-error`, or the broker's explanation).
    pub error: Option<String>,
    /// When it was dead-lettered.
    pub failed_at: Option<DateTime<Utc>>,
    pub attempts: Option<i64>,
    /// The queue it failed in.
    pub queue: Option<String>,
    pub correlation_id: Option<String>,
    pub order_id: Option<String>,
    pub customer_id: Option<String>,
    pub producer: Option<String>,
    /// The job that last redrove it, when it came back from a redrive.
    pub redrive_job: Option<String>,
    /// The envelope's payload, when the body is an envelope.
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Value>,
    /// The body as text, at most 2 KiB of it.
    pub body: String,
    /// The body's size.
    pub bytes: usize,
}

fn header_number(props: &BasicProperties, name: &str) -> Option<i64> {
    match props.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some((*n).into()),
        _ => None,
    }
}

fn text_at(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

impl DeadLetter {
    /// Describes a dead-lettered delivery from its headers and body.
    pub fn describe(delivery: &Delivery) -> Self {
        let p = &delivery.properties;
        let death = messaging::death::last_death(p);
        let envelope: Option<Value> = serde_json::from_slice::<Value>(&delivery.data)
            .ok()
            .filter(Value::is_object);
        let env = envelope.as_ref();
        let payload = env.and_then(|e| e.get("payload")).cloned();
        let correlation_id = env.and_then(|e| text_at(e, "correlation_id"));
        let order_id = payload
            .as_ref()
            .and_then(|p| text_at(p, "order_id"))
            .or_else(|| {
                correlation_id
                    .clone()
                    .filter(|c| uuid::Uuid::parse_str(c).is_ok())
            });
        let cause = header_str(p, ERROR_CODE_HEADER)
            .or_else(|| death.as_ref().and_then(|d| text_at(d, "reason")))
            .unwrap_or_else(|| "unknown".to_owned());
        let failed_at = header_str(p, FAILED_AT_HEADER)
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc))
            .or_else(|| {
                p.timestamp()
                    .and_then(|t| DateTime::from_timestamp(i64::try_from(t).ok()?, 0))
            });
        let preview =
            String::from_utf8_lossy(&delivery.data[..delivery.data.len().min(BODY_PREVIEW_BYTES)])
                .into_owned();
        DeadLetter {
            message_id: p
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_owned())
                .or_else(|| env.and_then(|e| text_at(e, "message_id"))),
            event_type: env
                .and_then(|e| text_at(e, "type"))
                .or_else(|| p.kind().as_ref().map(|s| s.as_str().to_owned())),
            version: env.and_then(|e| e.get("version")).and_then(Value::as_u64),
            cause,
            error: header_str(p, ERROR_HEADER)
                .or_else(|| death.as_ref().and_then(|d| text_at(d, "explanation"))),
            failed_at,
            attempts: header_number(p, ATTEMPTS_HEADER),
            queue: header_str(p, QUEUE_HEADER)
                .or_else(|| death.as_ref().and_then(|d| text_at(d, "queue"))),
            customer_id: payload.as_ref().and_then(|p| text_at(p, "customer_id")),
            order_id,
            correlation_id,
            producer: env.and_then(|e| text_at(e, "producer")),
            redrive_job: header_str(p, REDRIVE_JOB_HEADER),
            payload,
            body: preview,
            bytes: delivery.data.len(),
        }
    }
}

/// Which dead letters an action takes: every field optional, all given ones must match.
#[derive(
    Debug, Clone, Default, PartialEq, Deserialize, Serialize, ToSchema, utoipa::IntoParams,
)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Filter {
    /// The event type.
    #[serde(rename = "type")]
    #[param(rename = "type", max_length = 64)]
    #[schema(max_length = 64)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// The cause class (`GET /dlq` lists them).
    #[param(max_length = 64)]
    #[schema(max_length = 64)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// Dead-lettered at or after this time (RFC 3339).
    #[param(format = DateTime)]
    #[schema(format = DateTime)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Dead-lettered before this time (RFC 3339).
    #[param(format = DateTime)]
    #[schema(format = DateTime)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// The order the message is about.
    #[param(max_length = 128)]
    #[schema(max_length = 128)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// The customer the message names.
    #[param(max_length = 128)]
    #[schema(max_length = 128)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// One message.
    #[param(max_length = 128)]
    #[schema(max_length = 128)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}

/// A [`Filter`] whose times are read: what a scan compares each dead letter with.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    filter: Filter,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
}

/// An RFC 3339 time of a filter, if given; 400 when it is not one (an empty one neither).
pub(crate) fn parse_time(
    name: &str,
    value: Option<&str>,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::bad_request(
                        "invalid_time",
                        format!("{name} must be an RFC 3339 time such as 2026-12-07T10:00:00Z"),
                    )
                })
        })
        .transpose()
}

impl Filter {
    /// The filter checked: its times read, empty text fields dropped; 400 on a time that
    /// is not RFC 3339. A window that ends before it starts takes nothing.
    pub fn select(&self) -> Result<Selection, ApiError> {
        let keep = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        let filter = Filter {
            event_type: keep(&self.event_type),
            cause: keep(&self.cause),
            since: self.since.clone(),
            until: self.until.clone(),
            order_id: keep(&self.order_id),
            customer_id: keep(&self.customer_id),
            message_id: keep(&self.message_id),
        };
        for (name, value, max) in [
            ("type", &filter.event_type, 64),
            ("cause", &filter.cause, 64),
            ("order_id", &filter.order_id, 128),
            ("customer_id", &filter.customer_id, 128),
            ("message_id", &filter.message_id, 128),
        ] {
            if value.as_ref().is_some_and(|v| v.chars().count() > max) {
                return Err(ApiError::bad_request(
                    "invalid_filter",
                    format!("{name} must be at most {max} characters"),
                ));
            }
        }
        let since = parse_time("since", filter.since.as_deref())?;
        let until = parse_time("until", filter.until.as_deref())?;
        Ok(Selection {
            filter,
            since,
            until,
        })
    }
}

impl Selection {
    /// The filter as given (empty fields dropped), for the record of an action.
    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// Whether `d` is one of the dead letters this selection takes.
    pub fn matches(&self, d: &DeadLetter) -> bool {
        let f = &self.filter;
        let same = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_deref() == Some(w))
        };
        same(&f.event_type, &d.event_type)
            && f.cause.as_ref().is_none_or(|c| *c == d.cause)
            && same(&f.order_id, &d.order_id)
            && same(&f.customer_id, &d.customer_id)
            && same(&f.message_id, &d.message_id)
            && self
                .since
                .is_none_or(|s| d.failed_at.is_some_and(|t| t >= s))
            && self
                .until
                .is_none_or(|u| d.failed_at.is_some_and(|t| t < u))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(cause: &str, t: Option<&str>, failed_at: &str) -> DeadLetter {
        DeadLetter {
            message_id: Some("m1".into()),
            event_type: t.map(str::to_owned),
            version: Some(1),
            cause: cause.into(),
            error: None,
            failed_at: DateTime::parse_from_rfc3339(failed_at)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            attempts: None,
            queue: None,
            correlation_id: None,
            order_id: Some("o1".into()),
            customer_id: Some("alice".into()),
            producer: None,
            redrive_job: None,
            payload: None,
            body: String::new(),
            bytes: 0,
        }
    }

    #[test]
    fn a_filter_takes_what_every_given_field_matches() {
        let d = letter("bad_payload", Some("OrderCreated"), "2026-12-07T10:00:00Z");
        let all = Filter::default().select().unwrap();
        assert!(all.matches(&d));
        let f = Filter {
            cause: Some("bad_payload".into()),
            event_type: Some("OrderCreated".into()),
            customer_id: Some("alice".into()),
            since: Some("2026-12-07T09:00:00Z".into()),
            until: Some("2026-12-07T11:00:00Z".into()),
            ..Filter::default()
        };
        assert!(f.select().unwrap().matches(&d));
        let other_cause = Filter {
            cause: Some("forged_producer".into()),
            ..Filter::default()
        };
        assert!(!other_cause.select().unwrap().matches(&d));
        let later = Filter {
            since: Some("2026-12-07T10:00:01Z".into()),
            ..Filter::default()
        };
        assert!(!later.select().unwrap().matches(&d));
        let untyped = letter("unknown", None, "2026-12-07T10:00:00Z");
        assert!(!f.select().unwrap().matches(&untyped));
    }

    #[test]
    fn a_bad_window_is_refused() {
        let f = Filter {
            since: Some("yesterday".into()),
            ..Filter::default()
        };
        assert!(f.select().is_err());
        let f = Filter {
            until: Some(String::new()),
            ..Filter::default()
        };
        assert!(f.select().is_err(), "an empty time is no time");
        let empty = Filter {
            cause: Some(String::new()),
            ..Filter::default()
        };
        assert_eq!(empty.select().unwrap().filter(), &Filter::default());
    }
}
