//! A two-event catalog for this crate's own tests: `Ping` (from `pinger`) and `Pong` (from
//! `ponger`), each carrying a non-empty `id`.

use std::fmt;

use crate::event::{DecodeError, Event, EventKind, kind_of};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    Ping,
    Pong,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl EventKind for Kind {
    const ALL: &'static [Kind] = &[Kind::Ping, Kind::Pong];

    fn name(self) -> &'static str {
        match self {
            Kind::Ping => "Ping",
            Kind::Pong => "Pong",
        }
    }

    fn version(self) -> u32 {
        1
    }

    fn routing_key(self) -> &'static str {
        match self {
            Kind::Ping => "test.ping",
            Kind::Pong => "test.pong",
        }
    }

    fn producer(self) -> &'static str {
        match self {
            Kind::Ping => "pinger",
            Kind::Pong => "ponger",
        }
    }

    fn operator() -> &'static str {
        "operator"
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TestEvent {
    pub(crate) kind: Kind,
    pub(crate) id: String,
}

impl Event for TestEvent {
    type Kind = Kind;

    fn kind(&self) -> Kind {
        self.kind
    }

    fn correlation_id(&self) -> String {
        self.id.clone()
    }

    fn payload(&self) -> serde_json::Value {
        serde_json::json!({ "id": self.id })
    }

    fn decode(name: &str, version: u32, payload: &serde_json::Value) -> Result<Self, DecodeError> {
        let kind: Kind = kind_of(name, version)?;
        match payload["id"].as_str() {
            Some(id) if !id.is_empty() => Ok(TestEvent {
                kind,
                id: id.to_owned(),
            }),
            _ => Err(DecodeError::InvalidPayload {
                event_type: name.to_owned(),
                reason: "id must be a non-empty string".into(),
            }),
        }
    }
}
