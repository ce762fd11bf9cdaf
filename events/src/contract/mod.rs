//! The event contract as machine-readable documents, generated from the catalog: one JSON
//! Schema per event type ([`event_schema`]) and an AsyncAPI 3.0 description of the whole bus
//! ([`asyncapi`]). The schemas come from the `JsonSchema` derives on the envelope and
//! payload types, whose attributes restate the format rules of [`Event::validate`]; routing
//! keys and producers come from the catalog's declaration ([`EventType`]), consumers from
//! the services' topologies, which the caller passes in (each service builds its own from
//! the event types its handler consumes). The rendered files live in `docs/asyncapi/`, and
//! a test (`tests/tests/checks/contract_docs.rs`) fails when they differ from what this module
//! generates, so the published contract cannot drift from the code.
//!
//! Both functions are pure and deterministic: objects come out with their keys sorted.

use chrono::NaiveDate;
use messaging::envelope::Envelope;
use messaging::topology::{EVENTS_EXCHANGE, ServiceTopology};
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::catalog::{Event, EventType};

mod asyncapi;

pub use asyncapi::{asyncapi, message_id};

/// The JSON Schema (draft 2020-12) of a whole message body of type `t` at its newest
/// version: the envelope, with `type` and `version` fixed to this event's and `payload`
/// referring to its payload schema (under `$defs`, with the types it uses).
pub fn event_schema(t: EventType) -> Value {
    event_schema_at(t, t.version()).expect("the newest version is always declared")
}

/// [`event_schema`] for any version of `t` this code reads (`EventType::versions`), with
/// `version` fixed to it and the payload as that version has it; `None` for another.
pub fn event_schema_at(t: EventType, version: u32) -> Option<Value> {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    let payload = t.payload_schema(version, &mut generator)?;
    let mut schema = envelope_schema(t, version, &mut generator, payload);
    let definitions = generator.take_definitions(true);
    if let Value::Object(object) = &mut schema {
        object.insert(
            "$schema".into(),
            schemars::consts::meta_schemas::DRAFT2020_12.into(),
        );
        let title = if version == t.version() {
            t.name().to_owned()
        } else {
            format!("{} version {version}", t.name())
        };
        object.insert("title".into(), title.into());
        object.insert("$defs".into(), Value::Object(definitions));
    }
    Some(sorted(schema))
}

/// The services of `subscriptions` that consume events of type `t`.
pub(crate) fn consumers_of(
    t: EventType,
    subscriptions: &[ServiceTopology<EventType>],
) -> Vec<&str> {
    subscriptions
        .iter()
        .filter(|s| s.consumes.contains(&t))
        .map(|s| s.service.as_str())
        .collect()
}

/// The envelope's schema narrowed to one event type.
fn envelope_schema(
    t: EventType,
    version: u32,
    generator: &mut SchemaGenerator,
    payload: Schema,
) -> Value {
    let mut schema = Envelope::json_schema(generator);
    for transform in generator.transforms_mut() {
        transform.transform(&mut schema);
    }
    let mut schema = schema.to_value();
    schema["description"] = format!(
        "The envelope of an event of type {name}, published by {producer} to \
         `{EVENTS_EXCHANGE}` with routing key `{key}`. Unknown fields are ignored.",
        name = t.name(),
        producer = t.producer(),
        key = t.routing_key(),
    )
    .into();
    let properties = &mut schema["properties"];
    properties["type"]["const"] = t.name().into();
    properties["version"]["const"] = version.into();
    properties["producer"]["examples"] = json!([t.producer()]);
    properties["payload"] = payload.to_value();
    schema
}

const EXAMPLE_MESSAGE: Uuid = Uuid::from_u128(0x0193a4f2_7c1e_7b3a_9d2e_5f4c3b2a1908);
const EXAMPLE_CAUSE: Uuid = Uuid::from_u128(0x0193a4f2_7b00_7d6e_9f10_2132435465a7);
/// The envelope of `t`'s example ([`EventType::example`]), with fixed ids and time.
pub(crate) fn example_envelope(t: EventType) -> Envelope {
    let event: Event = t.example();
    Envelope {
        message_id: EXAMPLE_MESSAGE,
        event_type: t.name().to_owned(),
        version: t.version(),
        occurred_at: NaiveDate::from_ymd_opt(2026, 11, 26)
            .and_then(|d| d.and_hms_milli_opt(10, 0, 0, 123))
            .map(|t| t.and_utc())
            .expect("2026-11-26 10:00:00.123 is a valid time"),
        correlation_id: event.correlation_id(),
        causation_id: t.caused().then_some(EXAMPLE_CAUSE),
        producer: t.producer().to_owned(),
        payload: event.payload(),
    }
}

/// `value` with every object's keys in sorted order, whatever map serde_json was built with,
/// and descriptions taken from doc comments unwrapped: a single line break becomes a space,
/// a blank line still separates paragraphs.
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(object) => {
            let mut entries: Vec<(String, Value)> = object.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| match v {
                        Value::String(text) if k == "description" => {
                            let paragraphs: Vec<String> =
                                text.split("\n\n").map(|p| p.replace('\n', " ")).collect();
                            (k, Value::String(paragraphs.join("\n\n")))
                        }
                        v => (k, sorted(v)),
                    })
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::asyncapi::channel_id;
    use super::*;

    /// The top-level fields of [`EventType::fields`], e.g. `items` of `items[{…}]`, each
    /// with whether it is marked `(optional)`.
    fn listed_fields(t: EventType) -> Vec<(String, bool)> {
        let mut segments = Vec::new();
        let (mut depth, mut current) = (0, String::new());
        for c in t.fields().chars() {
            match c {
                '[' | '{' | '(' => depth += 1,
                ']' | '}' | ')' => depth -= 1,
                ',' if depth == 0 => {
                    segments.push(std::mem::take(&mut current));
                    continue;
                }
                _ => {}
            }
            current.push(c);
        }
        segments.push(current);
        let mut fields: Vec<(String, bool)> = segments
            .iter()
            .map(|s| {
                let name = s.split(['[', '{', '(']).next().unwrap_or_default();
                (name.trim().to_owned(), s.contains("(optional)"))
            })
            .collect();
        fields.sort();
        fields
    }

    fn names(fields: &[(String, bool)], optional_too: bool) -> Vec<String> {
        fields
            .iter()
            .filter(|(_, optional)| optional_too || !optional)
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn strings(v: &Value) -> Vec<String> {
        let mut out: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn payload_schemas_require_exactly_the_catalogs_fields() {
        for t in EventType::ALL {
            let schema = event_schema(t);
            let payload = &schema["$defs"][t.name()];
            assert_eq!(
                strings(&payload["required"]),
                names(&listed_fields(t), false),
                "{t}: schema and EventType::fields disagree"
            );
            let mut properties: Vec<String> = payload["properties"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            properties.sort();
            assert_eq!(properties, names(&listed_fields(t), true), "{t}");
        }
    }

    #[test]
    fn event_schemas_fix_type_and_version_and_require_the_envelope() {
        for t in EventType::ALL {
            let schema = event_schema(t);
            assert_eq!(schema["properties"]["type"]["const"], t.name());
            assert_eq!(schema["properties"]["version"]["const"], t.version());
            assert_eq!(
                schema["properties"]["payload"]["$ref"],
                format!("#/$defs/{}", t.name())
            );
            assert_eq!(
                strings(&schema["required"]),
                [
                    "correlation_id",
                    "message_id",
                    "occurred_at",
                    "payload",
                    "producer",
                    "type",
                    "version"
                ]
            );
            assert_eq!(
                schema["properties"]["occurred_at"]["format"], "date-time",
                "{t}"
            );
        }
    }

    #[test]
    fn examples_are_valid_messages() {
        for t in EventType::ALL {
            let envelope = example_envelope(t);
            let (read, event) =
                messaging::envelope::decode_body::<Event>(&envelope.to_body()).unwrap();
            assert_eq!(read, envelope);
            assert_eq!(event, t.example());
        }
    }

    /// Two consumers: one of every even-numbered type, one of every type.
    fn subscriptions() -> Vec<ServiceTopology<EventType>> {
        let even: Vec<EventType> = EventType::ALL.into_iter().step_by(2).collect();
        vec![
            ServiceTopology::new("even-svc", &even),
            ServiceTopology::new("all-svc", &EventType::ALL),
        ]
    }

    #[test]
    fn every_operation_names_a_channel_and_its_message() {
        let subscriptions = subscriptions();
        let doc = asyncapi(&subscriptions);
        let operations = doc["operations"].as_object().unwrap();
        for t in EventType::ALL {
            let channel = format!("#/channels/{}", channel_id(t));
            let on_it: Vec<_> = operations
                .values()
                .filter(|op| op["channel"]["$ref"] == channel.as_str())
                .collect();
            let senders = on_it.iter().filter(|op| op["action"] == "send").count();
            let consumers = consumers_of(t, &subscriptions).len();
            assert!(consumers >= 1, "{t}");
            assert_eq!(senders, 1, "{t}");
            assert_eq!(on_it.len() - senders, consumers, "{t}");
        }
    }

    #[test]
    fn output_is_deterministic() {
        assert_eq!(asyncapi(&subscriptions()), asyncapi(&subscriptions()));
        assert_eq!(
            serde_json::to_string(&event_schema(EventType::OrderCreated)).unwrap(),
            serde_json::to_string(&event_schema(EventType::OrderCreated)).unwrap()
        );
    }
}
