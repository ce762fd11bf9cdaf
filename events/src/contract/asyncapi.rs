//! The AsyncAPI 3.0 document of the bus ([`asyncapi`]): a channel per routing key, a
//! message per version of each event type, the producers' and consumers' operations, built
//! from the catalog and the services' topologies with the schemas of the parent module.

use messaging::envelope::TRACEPARENT_HEADER;
use messaging::topology::{EVENTS_EXCHANGE, ServiceTopology, dead_letter_queue};
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use super::{consumers_of, envelope_schema, example_envelope, sorted};
use crate::catalog::EventType;

/// The AMQP protocol binding version the AsyncAPI document's bindings follow.
const AMQP_BINDING_VERSION: &str = "0.3.0";

/// The local development broker: host, port and virtual host.
const LOCAL_BROKER_HOST: &str = "127.0.0.1:5672";
const LOCAL_VHOST: &str = "saga";

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
pub(super) fn channel_id(t: EventType) -> String {
    t.routing_key().replace('.', "-")
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

const EXAMPLE_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
