//! What every payload type of the catalog provides ([`Payload`]), and the macro that turns
//! one list of declarations into the catalog ([`declare_catalog!`]).

use std::fmt::Debug;

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// Which saga an event belongs to: what its envelope's `correlation_id` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Correlation<'a> {
    /// An event of one order's saga: the order id.
    Order(Uuid),
    /// An operator event: the key it is about (a SKU, a customer id).
    Key(&'a str),
}

/// A payload type of the catalog: its fields (serde and JSON Schema derives), its format
/// rules, its correlation, and a typical value for the published documents.
pub(crate) trait Payload:
    Serialize + DeserializeOwned + JsonSchema + Clone + Debug + PartialEq + Send + Sync + 'static
{
    /// Whether a message of this type is caused by another (its envelope carries a
    /// `causation_id`); false for events started by a client request or an operator.
    const CAUSED: bool = true;

    /// The contract's format rules (not business rules: whether stock or funds suffice is
    /// the services' decision).
    fn validate(&self) -> Result<(), String>;

    fn correlation(&self) -> Correlation<'_>;

    /// A typical value: the example of the AsyncAPI document and docs/events.md.
    fn example() -> Self;
}

/// Declares the catalog: for each event type, its payload type (named as the event), schema
/// version, routing key, producer and the payload's field list (for help texts). Generates
/// `Event` (one variant per type, holding its payload), `EventType` (with `ALL`, `name`,
/// `version`, `routing_key`, `producer`, `fields`), decoding with validation, JSON Schemas,
/// examples, and the `messaging::Event`/`messaging::EventKind` implementations. Nothing else
/// lists the event types.
macro_rules! declare_catalog {
    (
        operator: $operator:literal;
        $( $name:ident {
            version: $version:literal,
            routing_key: $key:literal,
            producer: $producer:literal,
            fields: $fields:literal $(,)?
        } ),+ $(,)?
    ) => {
        /// Every event of the catalog, typed.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Event {
            $( $name($name), )+
        }

        /// The name of each event type, with its routing key, schema version and fields.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventType {
            $( $name, )+
        }

        impl EventType {
            /// Every event type, in the order of the declaration.
            pub const ALL: [EventType; <[&str]>::len(&[$(stringify!($name)),+])] =
                [$(EventType::$name),+];

            /// The producer name of operator events and replays.
            pub const OPERATOR: &'static str = $operator;

            pub fn name(self) -> &'static str {
                match self { $( EventType::$name => stringify!($name), )+ }
            }

            pub fn routing_key(self) -> &'static str {
                match self { $( EventType::$name => $key, )+ }
            }

            /// The payload schema version this code writes and reads.
            pub fn version(self) -> u32 {
                match self { $( EventType::$name => $version, )+ }
            }

            /// Who emits it, as the contract says.
            pub fn producer(self) -> &'static str {
                match self { $( EventType::$name => $producer, )+ }
            }

            /// The payload's fields, for help texts and generated docs.
            pub fn fields(self) -> &'static str {
                match self { $( EventType::$name => $fields, )+ }
            }

            /// Whether its messages carry a `causation_id` ([`Payload::CAUSED`]).
            pub(crate) fn caused(self) -> bool {
                match self {
                    $( EventType::$name => <$name as $crate::payload::Payload>::CAUSED, )+
                }
            }

            /// A reference to its payload schema, added to `generator`'s definitions.
            pub(crate) fn payload_schema(
                self,
                generator: &mut schemars::generate::SchemaGenerator,
            ) -> schemars::Schema {
                match self { $( EventType::$name => generator.subschema_for::<$name>(), )+ }
            }

            /// A typical event of this type ([`Payload::example`]): valid, for the
            /// published documents and for tests that need any event of the type.
            pub fn example(self) -> Event {
                match self {
                    $( EventType::$name => {
                        Event::$name(<$name as $crate::payload::Payload>::example())
                    } )+
                }
            }
        }

        impl Event {
            pub fn event_type(&self) -> EventType {
                match self { $( Event::$name(_) => EventType::$name, )+ }
            }

            fn correlation(&self) -> $crate::payload::Correlation<'_> {
                use $crate::payload::Payload as _;
                match self { $( Event::$name(p) => p.correlation(), )+ }
            }

            /// The payload as JSON.
            pub fn payload(&self) -> serde_json::Value {
                // Payloads are plain structs of strings, integers, uuids and enums.
                let value = match self { $( Event::$name(p) => serde_json::to_value(p), )+ };
                value.expect("a catalog payload always serialises to JSON")
            }

            /// Decodes and validates a payload of the given type and version.
            pub fn decode(
                event_type: &str,
                version: u32,
                payload: &serde_json::Value,
            ) -> Result<Event, messaging::DecodeError> {
                let t: EventType = messaging::event::kind_of(event_type, version)?;
                let invalid = |reason: String| messaging::DecodeError::InvalidPayload {
                    event_type: event_type.to_owned(),
                    reason,
                };
                let event = match t {
                    $( EventType::$name => Event::$name(
                        serde::Deserialize::deserialize(payload)
                            .map_err(|e: serde_json::Error| invalid(e.to_string()))?,
                    ), )+
                };
                event.validate().map_err(invalid)?;
                Ok(event)
            }

            /// The contract's format rules for the payload ([`Payload::validate`]).
            pub fn validate(&self) -> Result<(), String> {
                use $crate::payload::Payload as _;
                match self { $( Event::$name(p) => p.validate(), )+ }
            }
        }

        $( impl From<$name> for Event {
            fn from(payload: $name) -> Event {
                Event::$name(payload)
            }
        } )+
    };
}

pub(crate) use declare_catalog;
