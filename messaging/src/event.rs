//! What this crate needs to know of an event, and nothing more: the [`Event`] and
//! [`EventKind`] traits a catalog implements, and the [`DecodeError`] of a message that
//! cannot become one of its events.
//!
//! A catalog is a closed set of event types ([`EventKind::ALL`]), each with a name, a
//! payload schema version, a routing key and the one producer allowed to publish it. The
//! envelope, the outbox, the consumer, the topology and the authenticity check are written
//! against these traits only, so any saga can travel on them.

use std::fmt;
use std::hash::Hash;

/// One event type of a catalog.
pub trait EventKind:
    Copy + Eq + Hash + Ord + fmt::Debug + fmt::Display + Send + Sync + 'static
{
    /// Every event type of the catalog, in the catalog's order.
    const ALL: &'static [Self];

    /// The name written in the envelope's `type` and the AMQP `type` property.
    fn name(self) -> &'static str;

    /// The newest payload schema version: the one handlers see, and the one written unless
    /// the process is configured to write an older one ([`crate::versions`]).
    fn version(self) -> u32;

    /// Whether this code reads `version` of this type (every version its catalog declares).
    fn reads(self, version: u32) -> bool {
        version == self.version()
    }

    /// The routing key on the events exchange.
    fn routing_key(self) -> &'static str;

    /// The only producer allowed to publish it (see [`crate::authenticity`]).
    fn producer(self) -> &'static str;

    /// The producer name of the catalog's operator tool: its broker users may relay any
    /// event (a dead-letter replay keeps its original publisher; see
    /// [`crate::authenticity`]).
    fn operator() -> &'static str;

    /// The action by hand a message of this type is, as the audit log names it
    /// ([`crate::audit::actions`]), for the types an operator publishes to change the
    /// system (a stock adjustment, a deposit); `None`, the default, for the rest. A consumer
    /// records each one it applies, with who sent it, in the transaction that applies it.
    fn hand_action(self) -> Option<&'static str> {
        None
    }

    /// The event type called `name`, if the catalog has one.
    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.name() == name)
    }

    /// Every producer of the catalog, each once, in the catalog's order.
    fn producers() -> Vec<&'static str> {
        let mut producers: Vec<&'static str> = Vec::new();
        for t in Self::ALL {
            if !producers.contains(&t.producer()) {
                producers.push(t.producer());
            }
        }
        producers
    }
}

/// A typed event of a catalog: its payload, and what the envelope says about it.
pub trait Event: Clone + fmt::Debug + Send + Sync + 'static {
    /// The catalog's event types.
    type Kind: EventKind;

    fn kind(&self) -> Self::Kind;

    /// The envelope's `correlation_id`: the saga this event belongs to (never empty).
    fn correlation_id(&self) -> String;

    /// The payload as the envelope carries it, at the newest version.
    fn payload(&self) -> serde_json::Value;

    /// The payload at `version`, if this code can write that version.
    fn payload_at(&self, version: u32) -> Option<serde_json::Value> {
        (version == self.kind().version()).then(|| self.payload())
    }

    /// Decodes and validates the payload of an event type named `name` at `version`, as the
    /// newest version.
    fn decode(name: &str, version: u32, payload: &serde_json::Value) -> Result<Self, DecodeError>;
}

/// Why a message cannot be turned into an event. None of these can succeed on a retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message is {0} bytes, over the 256 KiB limit")]
    TooLarge(usize),
    #[error("body is not UTF-8 JSON: {0}")]
    NotJson(String),
    #[error("body is not a valid envelope: {0}")]
    InvalidEnvelope(String),
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("unknown version {version} of {event_type}")]
    UnknownVersion { event_type: String, version: u32 },
    #[error("invalid {event_type} payload: {reason}")]
    InvalidPayload { event_type: String, reason: String },
}

impl DecodeError {
    /// The short machine-readable reason written in `x-saga-error-code`.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::TooLarge(_) => "too_large",
            DecodeError::NotJson(_) => "not_json",
            DecodeError::InvalidEnvelope(_) => "invalid_envelope",
            DecodeError::UnknownType(_) => "unknown_type",
            DecodeError::UnknownVersion { .. } => "unknown_version",
            DecodeError::InvalidPayload { .. } => "invalid_payload",
        }
    }
}

/// The event type called `name` at `version`, or why there is none.
pub fn kind_of<K: EventKind>(name: &str, version: u32) -> Result<K, DecodeError> {
    let kind = K::from_name(name).ok_or_else(|| DecodeError::UnknownType(name.to_owned()))?;
    if !kind.reads(version) {
        return Err(DecodeError::UnknownVersion {
            event_type: name.to_owned(),
            version,
        });
    }
    Ok(kind)
}
