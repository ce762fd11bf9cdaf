//! The envelope every message travels in, and the AMQP properties that mirror it.
//!
//! The body of every message is this JSON object, UTF-8, at most [`MAX_MESSAGE_BYTES`].
//! The payload stays a `serde_json::Value` here: decoding it into a typed event is the
//! catalog's job ([`Event::decode`]), so that a message with a valid envelope but an unknown
//! type can still be read, logged and dead-lettered with its ids.

use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::{DecodeError, Event, EventKind};

/// Messages larger than this are refused by consumers (dead-lettered as `too_large`).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Longest correlation id accepted (the contract allows any id up to 128 characters for
/// operator events).
pub(crate) const MAX_CORRELATION_ID_CHARS: usize = 128;

/// AMQP header carrying the W3C trace context.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The JSON object every message body is. Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Envelope {
    /// Unique per message; the deduplication key of every inbox.
    pub message_id: Uuid,
    /// The event type, a name from the catalog.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The payload's schema version.
    pub version: u32,
    /// When the event was made: written RFC 3339 UTC with milliseconds and `Z`, read in any
    /// RFC 3339 form.
    #[serde(with = "millis_timestamp")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub occurred_at: DateTime<Utc>,
    /// The saga id (the order id) or, for operator events, the SKU or customer.
    #[schemars(length(min = 1, max = MAX_CORRELATION_ID_CHARS))]
    pub correlation_id: String,
    /// The `message_id` of the message whose handling produced this one; none (`null`) for
    /// events started by a client request, the deadline sweep or an operator.
    pub causation_id: Option<Uuid>,
    /// The process that wrote it.
    #[schemars(length(min = 1))]
    pub producer: String,
    /// The event's fields, checked against `type`.
    pub payload: serde_json::Value,
}

impl Envelope {
    /// Wraps a typed event with a fresh message id (UUIDv7: time-ordered, so ids sort in the
    /// order they were made, which keeps indexes on them append-mostly).
    pub fn wrap<E: Event>(event: &E, producer: &str, causation_id: Option<Uuid>) -> Self {
        let now = Utc::now();
        let kind = event.kind();
        // The version this process is configured to write (the newest unless an upgrade
        // says otherwise), checked at start to be one the catalog can write.
        let (version, payload) = match crate::versions::emitted(kind) {
            Some(older) => match event.payload_at(older) {
                Some(payload) => (older, payload),
                None => (kind.version(), event.payload()),
            },
            None => (kind.version(), event.payload()),
        };
        Envelope {
            message_id: Uuid::now_v7(),
            event_type: kind.name().to_owned(),
            version,
            // Whole milliseconds, as the body carries them: an envelope reads back equal.
            occurred_at: now
                .with_nanosecond(now.timestamp_subsec_millis() * 1_000_000)
                .unwrap_or(now),
            correlation_id: event.correlation_id(),
            causation_id,
            producer: producer.to_owned(),
            payload,
        }
    }

    /// The exact bytes published for this envelope.
    pub fn to_body(&self) -> Vec<u8> {
        // A struct of plain fields and a `Value` (whose keys are strings) always serialises.
        serde_json::to_vec(self).expect("an envelope always serialises to JSON")
    }

    /// The routing key of the envelope's type in the catalog of `K`.
    pub fn routing_key<K: EventKind>(&self) -> Result<&'static str, DecodeError> {
        K::from_name(&self.event_type)
            .map(K::routing_key)
            .ok_or_else(|| DecodeError::UnknownType(self.event_type.clone()))
    }
}

/// Decodes a message body: size, JSON, envelope, type, version, payload, validation.
// The error carries the envelope when one could be read, so the dead-letter copy can name
// its ids; a failed decode is the rare path, and boxing it would only move the cost there.
#[allow(clippy::result_large_err)]
pub fn decode_body<E: Event>(
    body: &[u8],
) -> Result<(Envelope, E), (Option<Envelope>, DecodeError)> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err((None, DecodeError::TooLarge(body.len())));
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| (None, DecodeError::NotJson(e.to_string())))?;
    let envelope: Envelope = serde_json::from_value(value)
        .map_err(|e| (None, DecodeError::InvalidEnvelope(e.to_string())))?;
    if let Err(reason) = validate_envelope(&envelope) {
        return Err((Some(envelope), DecodeError::InvalidEnvelope(reason)));
    }
    match E::decode(&envelope.event_type, envelope.version, &envelope.payload) {
        Ok(event) => Ok((envelope, event)),
        Err(e) => Err((Some(envelope), e)),
    }
}

fn validate_envelope(env: &Envelope) -> Result<(), String> {
    if env.correlation_id.is_empty()
        || env.correlation_id.chars().count() > MAX_CORRELATION_ID_CHARS
    {
        return Err("correlation_id must be 1 to 128 characters".into());
    }
    if env.producer.is_empty() {
        return Err("producer must not be empty".into());
    }
    Ok(())
}

/// The AMQP properties that mirror an envelope, as the contract lists them.
pub fn properties_for(
    message_id: Uuid,
    event_type: &str,
    correlation_id: &str,
    producer: &str,
    occurred_at: DateTime<Utc>,
    traceparent: Option<&str>,
) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(tp) = traceparent {
        headers.insert(
            TRACEPARENT_HEADER.into(),
            AMQPValue::LongString(LongString::from(tp.as_bytes())),
        );
    }
    BasicProperties::default()
        .with_message_id(ShortString::from(message_id.to_string()))
        .with_type(ShortString::from(event_type))
        .with_correlation_id(ShortString::from(correlation_id))
        .with_app_id(ShortString::from(producer))
        .with_timestamp(occurred_at.timestamp().max(0) as u64)
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_content_encoding(ShortString::from("utf-8"))
        .with_headers(headers)
}

/// Reads a string header (long or short string) from AMQP properties.
pub fn header_str(props: &BasicProperties, name: &str) -> Option<String> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Reads an integer header from AMQP properties, whatever integer width the sender chose.
pub(crate) fn header_u32(props: &BasicProperties, name: &str) -> Option<u32> {
    let headers = props.headers().as_ref()?;
    let v: i64 = match headers.inner().get(name)? {
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => *v,
        _ => return None,
    };
    u32::try_from(v).ok()
}

/// `occurred_at` is written with millisecond precision and a `Z`, as in the contract, and
/// read in any RFC 3339 form.
mod millis_timestamp {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTRACT_EXAMPLE: &str = r#"{
        "message_id": "0192f7a0-6c1e-7b3a-9d2e-5f4c3b2a1908",
        "type": "OrderCreated",
        "version": 1,
        "occurred_at": "2026-11-26T10:00:00.123Z",
        "correlation_id": "0192f7a0-0000-7000-8000-000000000001",
        "causation_id": null,
        "producer": "order-svc",
        "payload": {"order_id": "0192f7a0-0000-7000-8000-000000000001"}
    }"#;

    #[test]
    fn envelope_reads_the_contract_example() {
        let env: Envelope = serde_json::from_str(CONTRACT_EXAMPLE).unwrap();
        assert_eq!(env.event_type, "OrderCreated");
        assert_eq!(env.version, 1);
        assert_eq!(env.causation_id, None);
        assert_eq!(env.producer, "order-svc");
        assert_eq!(env.occurred_at.timestamp_subsec_millis(), 123);
    }

    #[test]
    fn envelope_writes_the_contract_field_names_and_millisecond_time() {
        let env: Envelope = serde_json::from_str(CONTRACT_EXAMPLE).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&env.to_body()).unwrap();
        let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "causation_id",
                "correlation_id",
                "message_id",
                "occurred_at",
                "payload",
                "producer",
                "type",
                "version"
            ]
        );
        assert_eq!(json["occurred_at"], "2026-11-26T10:00:00.123Z");
        assert_eq!(json["causation_id"], serde_json::Value::Null);
    }

    #[test]
    fn envelope_ignores_unknown_fields() {
        let mut json: serde_json::Value = serde_json::from_str(CONTRACT_EXAMPLE).unwrap();
        json["added_later"] = serde_json::json!(true);
        let env: Envelope = serde_json::from_value(json).unwrap();
        assert_eq!(env.event_type, "OrderCreated");
    }

    #[test]
    fn envelope_without_message_id_is_refused() {
        let mut json: serde_json::Value = serde_json::from_str(CONTRACT_EXAMPLE).unwrap();
        json.as_object_mut().unwrap().remove("message_id");
        assert!(serde_json::from_value::<Envelope>(json).is_err());
    }

    #[test]
    fn any_catalog_wraps_decodes_and_routes() {
        use crate::test_catalog::{Kind, TestEvent};
        let event = TestEvent {
            kind: Kind::Pong,
            id: "p-1".into(),
        };
        let env = Envelope::wrap(&event, "ponger", None);
        assert_eq!(env.event_type, "Pong");
        assert_eq!(env.correlation_id, "p-1");
        assert_eq!(env.routing_key::<Kind>(), Ok("test.pong"));
        let (back, decoded) = decode_body::<TestEvent>(&env.to_body()).unwrap();
        assert_eq!((back, decoded), (env.clone(), event));

        let unknown = Envelope {
            event_type: "Peng".into(),
            ..env.clone()
        };
        assert_eq!(
            unknown.routing_key::<Kind>().unwrap_err().code(),
            "unknown_type"
        );
        let code = |e: &Envelope| decode_body::<TestEvent>(&e.to_body()).unwrap_err().1.code();
        assert_eq!(code(&unknown), "unknown_type");
        assert_eq!(
            code(&Envelope {
                version: 2,
                ..env.clone()
            }),
            "unknown_version"
        );
        let empty = Envelope {
            payload: serde_json::json!({"id": ""}),
            ..env.clone()
        };
        assert_eq!(code(&empty), "invalid_payload");
        let no_correlation = Envelope {
            correlation_id: String::new(),
            ..env
        };
        assert_eq!(code(&no_correlation), "invalid_envelope");
    }

    #[test]
    fn properties_mirror_the_envelope() {
        let id = Uuid::now_v7();
        let props = properties_for(
            id,
            "OrderCreated",
            "o-1",
            "order-svc",
            Utc::now(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        assert_eq!(
            props.message_id().as_ref().unwrap().as_str(),
            id.to_string()
        );
        assert_eq!(props.kind().as_ref().unwrap().as_str(), "OrderCreated");
        assert_eq!(props.app_id().as_ref().unwrap().as_str(), "order-svc");
        assert_eq!(*props.delivery_mode(), Some(2));
        assert_eq!(
            header_str(&props, TRACEPARENT_HEADER).as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
    }
}
