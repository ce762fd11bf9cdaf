//! A service's inputs, declared once: the events it consumes (and any commands of its
//! own) as one enum whose variants carry their payloads. [`saga_inputs!`] generates, from
//! that one list, the enum, its `CONSUMES` list (from which the service's queue bindings
//! derive) and its conversion from a decoded event. An event outside the list converts to
//! nothing but its type, which [`unexpected_event`] turns into the one permanent error for
//! every event a service does not consume.

use messaging::EventKind;
use messaging::retry::HandlerError;

/// A decision that refuses its input for good: a handler dead-letters the message with
/// `code` (the saga's rules never change their mind on a retry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

impl From<Refusal> for HandlerError {
    fn from(r: Refusal) -> Self {
        HandlerError::permanent(r.code, r.message)
    }
}

/// `a + b`, or the refusal a database gives a number it cannot store (`invalid_value`):
/// sums of money and stock are checked in `decide`, before anything is written.
pub fn add(what: &str, a: i64, b: i64) -> Result<i64, Refusal> {
    a.checked_add(b).ok_or_else(|| {
        Refusal::new(
            "invalid_value",
            format!("{what} would be out of range: {a} + {b} exceeds a 64-bit integer"),
        )
    })
}

/// The permanent error for an event of type `t` that `service` does not consume.
pub fn unexpected_event<K: EventKind>(service: &str, t: K) -> Refusal {
    Refusal::new(
        "unexpected_event",
        format!("{service} does not consume {}", t.name()),
    )
}

/// Declares a service's input enum from the events it consumes and, optionally, its own
/// commands:
///
/// ```ignore
/// platform::saga_inputs! {
///     /// What inventory-svc reacts to.
///     pub enum InventoryInput {
///         events: [OrderCreated, OrderConfirmed, OrderCancelled, StockAdjusted],
///     }
/// }
/// ```
///
/// Each event variant carries the catalog's payload of the same name. The enum gets
/// `CONSUMES` (the event types, in the order listed) and `TryFrom<&Event>`, whose error is
/// the type of an event not in the list.
#[macro_export]
macro_rules! saga_inputs {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            events: [$($event:ident),* $(,)?] $(,)?
            $(commands: [$($(#[$cmeta:meta])* $command:ident $(($payload:ty))?),* $(,)?] $(,)?)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        $vis enum $name {
            $($event(::events::catalog::$event),)*
            $($($(#[$cmeta])* $command $(($payload))?,)*)?
        }

        impl $name {
            /// The event types this input enum accepts: the service's queue bindings.
            pub const CONSUMES: &'static [::events::EventType] =
                &[$(::events::EventType::$event),*];
        }

        impl ::std::convert::TryFrom<&::events::Event> for $name {
            type Error = ::events::EventType;

            fn try_from(event: &::events::Event) -> Result<Self, ::events::EventType> {
                match event {
                    $(::events::Event::$event(e) => Ok($name::$event(e.clone())),)*
                    other => Err(other.event_type()),
                }
            }
        }
    };
}
