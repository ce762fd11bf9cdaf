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
use messaging::envelope::{Envelope, TRACEPARENT_HEADER};
use messaging::topology::{EVENTS_EXCHANGE, ServiceTopology, dead_letter_queue};
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::catalog::{Event, EventType};

/// The AMQP protocol binding version the AsyncAPI document's bindings follow.
const AMQP_BINDING_VERSION: &str = "0.3.0";

/// The local development broker: host, port and virtual host.
const LOCAL_BROKER_HOST: &str = "127.0.0.1:5672";
const LOCAL_VHOST: &str = "saga";

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

/// The AsyncAPI 3.0.0 document of the bus: the broker, one channel per routing key on the
/// `saga.events` exchange, who sends and who receives each event (the consumers are the
/// services of `subscriptions` bound to its routing key), and every message's properties
/// and body. Schemas are JSON Schema draft-07 (AsyncAPI's default schema format), shared
/// ones under `components.schemas`.
pub fn asyncapi(subscriptions: &[ServiceTopology<EventType>]) -> Value {
    let mut generator = SchemaSettings::draft07()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .into_generator();

    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    for t in EventType::ALL {
        let consumers = consumers_of(t, subscriptions);
        channels.insert(channel_id(t), channel(t, &consumers));
        let producer = t.producer();
        operations.insert(format!("{producer}_sends_{}", t.name()), send_operation(t));
        for consumer in &consumers {
            operations.insert(
                format!("{consumer}_receives_{}", t.name()),
                receive_operation(t, consumer),
            );
        }
        for &version in t.versions() {
            messages.insert(message_id(t, version), message(t, version, &mut generator));
        }
    }
    let schemas = generator.take_definitions(true);

    let mut tags: Vec<Value> = subscriptions
        .iter()
        .map(|s| json!({"name": s.service, "description": service_description(&s.service)}))
        .collect();
    tags.push(json!({"name": EventType::OPERATOR, "description": service_description(EventType::OPERATOR)}));

    sorted(json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Order saga events",
            "version": env!("CARGO_PKG_VERSION"),
            "description": INFO_DESCRIPTION,
            "license": {"name": env!("CARGO_PKG_LICENSE")},
            "tags": tags,
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": LOCAL_BROKER_HOST,
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "pathname": format!("/{LOCAL_VHOST}"),
                "description": "The local development broker (virtual host `saga`). Every \
                                service takes its broker address from its environment.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": schemas,
        },
    }))
}

/// The channel of `t`'s routing key on the events exchange.
fn channel(t: EventType, consumers: &[&str]) -> Value {
    let name = t.name();
    json!({
        "address": t.routing_key(),
        "title": t.routing_key(),
        "description": format!(
            "{name} events, published to the topic exchange `{EVENTS_EXCHANGE}` with \
             routing key `{key}`. Bound to the input queue of {consumers}.",
            key = t.routing_key(),
            consumers = consumers.join(", "),
        ),
        "messages": t
            .versions()
            .iter()
            .map(|&v| {
                let id = message_id(t, v);
                (id.clone(), json!({"$ref": format!("#/components/messages/{id}")}))
            })
            .collect::<Map<_, _>>(),
        "bindings": {
            "amqp": {
                "is": "routingKey",
                "exchange": {
                    "name": EVENTS_EXCHANGE,
                    "type": "topic",
                    "durable": true,
                    "autoDelete": false,
                    "vhost": LOCAL_VHOST,
                },
                "bindingVersion": AMQP_BINDING_VERSION,
            }
        },
    })
}

fn channel_ref(t: EventType) -> Value {
    json!({"$ref": format!("#/channels/{}", channel_id(t))})
}

/// Every version of `t` on its channel: during an upgrade a producer may write an older one
/// (`SAGA_EMIT_VERSIONS`), and consumers read them all.
fn message_ref(t: EventType) -> Value {
    t.versions()
        .iter()
        .map(|&v| json!({"$ref": format!("#/channels/{}/messages/{}", channel_id(t), message_id(t, v))}))
        .collect()
}

/// The message id of version `version` of `t`: the type's name for the newest,
/// `<Type>V<version>` for an older one.
pub fn message_id(t: EventType, version: u32) -> String {
    if version == t.version() {
        t.name().to_owned()
    } else {
        format!("{}V{version}", t.name())
    }
}

/// The producer's publish of `t`.
fn send_operation(t: EventType) -> Value {
    let producer = t.producer();
    json!({
        "action": "send",
        "title": format!("{producer} sends {}", t.name()),
        "description": format!(
            "Published to `{EVENTS_EXCHANGE}` with routing key `{key}`: persistent, \
             `mandatory`, with publisher confirms.",
            key = t.routing_key(),
        ),
        "channel": channel_ref(t),
        "messages": message_ref(t),
        "tags": [{"name": producer}],
        "bindings": {
            "amqp": {
                "deliveryMode": 2,
                "mandatory": true,
                "timestamp": true,
                "bindingVersion": AMQP_BINDING_VERSION,
            }
        },
    })
}

/// `consumer`'s receipt of `t` from its input queue.
fn receive_operation(t: EventType, consumer: &str) -> Value {
    json!({
        "action": "receive",
        "title": format!("{consumer} receives {}", t.name()),
        "description": format!(
            "Consumed from the durable quorum queue `{consumer}`, bound to `{key}`; \
             acknowledged once handled, and a message that can never be handled \
             goes to `{dlq}`.",
            key = t.routing_key(),
            dlq = dead_letter_queue(consumer),
        ),
        "channel": channel_ref(t),
        "messages": message_ref(t),
        "tags": [{"name": consumer}],
        "bindings": {
            "amqp": {"ack": true, "bindingVersion": AMQP_BINDING_VERSION}
        },
    })
}

/// The message of version `version` of type `t`: properties, body schema (its payload's
/// added to `generator`) and an example.
fn message(t: EventType, version: u32, generator: &mut SchemaGenerator) -> Value {
    let name = t.name();
    let id = message_id(t, version);
    let payload = t
        .payload_schema(version, generator)
        .expect("messages are rendered for declared versions only");
    let description = generator
        .definitions()
        .get(&id)
        .and_then(|s| s.get("description"))
        .and_then(Value::as_str)
        .unwrap_or(name)
        .to_owned();
    let (title, summary) = if version == t.version() {
        (name.to_owned(), description)
    } else {
        (
            format!("{name} version {version}"),
            format!(
                "{description} Still read; written only by a producer configured to (SAGA_EMIT_VERSIONS)."
            ),
        )
    };
    json!({
        "name": id,
        "title": title,
        "summary": summary,
        "contentType": "application/json",
        "correlationId": {
            "description": "The saga id (the order id), or the SKU or customer id of \
                            an operator event.",
            "location": "$message.payload#/correlation_id",
        },
        "headers": headers_schema(t),
        "payload": envelope_schema(t, version, generator, payload),
        "bindings": {
            "amqp": {
                "contentEncoding": "utf-8",
                "messageType": name,
                "bindingVersion": AMQP_BINDING_VERSION,
            }
        },
        "examples": [example_message(t, version)],
    })
}

const INFO_DESCRIPTION: &str = "\
The events of the order saga, choreographed over RabbitMQ: order-svc, inventory-svc and \
payment-svc talk to each other only through these messages, and operators add stock and \
funds with sagactl.

Every message body is a UTF-8 JSON envelope of at most 256 KiB around a typed payload. \
Readers are tolerant: unknown fields of the envelope and of the payload are ignored. A body \
that is not a valid envelope, an unknown `type` or `version`, or a payload that breaks its \
rules is dead-lettered to the consumer's `<service>.dlq` queue, never dropped.

Money is in integer minor units and `currency` is an ISO 4217 code. Each message names the \
`version` it describes; a type's older versions, still read, are messages of their own \
(`OrderCreatedV1`) on the same channel. See docs/events.md for the meaning of each event \
and how versions change.

This document is generated from the Rust types (`events::contract`) and checked against them \
by a test; edit the code, not this file.";

fn service_description(service: &str) -> &'static str {
    match service {
        "order-svc" => "Owns orders; the only HTTP entry point for customers.",
        "inventory-svc" => "Owns stock and reservations.",
        "payment-svc" => "Owns customer wallets and payments.",
        "sagactl" => "The operator and developer command line.",
        _ => "",
    }
}

/// Channel ids may not contain dots: the routing key with `-` for `.`.
fn channel_id(t: EventType) -> String {
    t.routing_key().replace('.', "-")
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

/// The AMQP properties and headers every published event carries. Consumers read only the
/// body (and `traceparent`): these mirror the envelope for operators and tools.
fn headers_schema(t: EventType) -> Value {
    json!({
        "type": "object",
        "description": "AMQP basic properties mirroring the envelope, and the `traceparent` \
                        header. Consumers read only the body and `traceparent`.",
        "properties": {
            "message_id": {
                "type": "string",
                "format": "uuid",
                "description": "Property `message_id`: the envelope's `message_id`.",
            },
            "type": {
                "type": "string",
                "const": t.name(),
                "description": "Property `type`: the envelope's `type`.",
            },
            "correlation_id": {
                "type": "string",
                "description": "Property `correlation_id`: the envelope's `correlation_id`.",
            },
            "app_id": {
                "type": "string",
                "examples": [t.producer()],
                "description": "Property `app_id`: the envelope's `producer`.",
            },
            "timestamp": {
                "type": "integer",
                "minimum": 0,
                "description": "Property `timestamp`: `occurred_at` in whole seconds since \
                                the Unix epoch.",
            },
            "delivery_mode": {
                "type": "integer",
                "const": 2,
                "description": "Property `delivery_mode`: persistent.",
            },
            "content_type": {"type": "string", "const": "application/json"},
            "content_encoding": {"type": "string", "const": "utf-8"},
            TRACEPARENT_HEADER: {
                "type": "string",
                "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
                "description": "Header `traceparent`: the W3C trace context of the \
                                publish, a child span of the HTTP request or the handling \
                                that wrote the event, so one saga is one trace.",
            },
        },
        "required": [
            "message_id", "type", "correlation_id", "app_id", "timestamp",
            "delivery_mode", "content_type", "content_encoding",
        ],
    })
}

const EXAMPLE_MESSAGE: Uuid = Uuid::from_u128(0x0193a4f2_7c1e_7b3a_9d2e_5f4c3b2a1908);
const EXAMPLE_CAUSE: Uuid = Uuid::from_u128(0x0193a4f2_7b00_7d6e_9f10_2132435465a7);
const EXAMPLE_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

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

fn example_message(t: EventType, version: u32) -> Value {
    let mut envelope = example_envelope(t);
    if let Some(payload) = t.example().payload_at(version) {
        envelope.version = version;
        envelope.payload = payload;
    }
    let suffix = if version == t.version() {
        String::new()
    } else {
        format!("-v{version}")
    };
    json!({
        "name": format!("{}-example{suffix}", t.routing_key().replace('.', "-")),
        "summary": format!("A typical {}.", t.name()),
        "headers": {
            "message_id": envelope.message_id,
            "type": envelope.event_type,
            "correlation_id": envelope.correlation_id,
            "app_id": envelope.producer,
            "timestamp": envelope.occurred_at.timestamp(),
            "delivery_mode": 2,
            "content_type": "application/json",
            "content_encoding": "utf-8",
            TRACEPARENT_HEADER: EXAMPLE_TRACEPARENT,
        },
        "payload": serde_json::to_value(&envelope).expect("an envelope always serialises to JSON"),
    })
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
