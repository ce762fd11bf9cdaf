//! What the property runs must reach, derived from the declarations, and the check that
//! they did. Schedules are drawn at random; that they exercise every input of every
//! service and every way an order ends is asserted at the end of each run, not hoped for:
//! a new event type, a new reason or a new consumer the generators never reach fails the
//! run, naming what was never reached.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::OnceLock;

use events::contract::event_schema;
use events::{Event, EventType};
use order_svc::saga::OrderStatus;

use super::services::Service;

/// One thing a run can reach.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Path {
    /// A service handled an event of a type it consumes.
    Consumed { service: Service, ty: EventType },
    /// An event of the type was published; with a field: with that value of one of its
    /// payload's enumerated fields (a reason).
    Published {
        ty: EventType,
        field: Option<(String, String)>,
    },
    /// An order ended, at rest, in the status (`OrderStatus::as_str`); a cancellation with
    /// its reason.
    Ended {
        status: &'static str,
        reason: Option<String>,
    },
    /// A cancelled order's capture was refunded: after the order had been confirmed, or
    /// before.
    Refunded { after_confirmation: bool },
    /// An event published while its order was open reached the service after the order had
    /// ended (confirmed, rejected or cancelled).
    Late { service: Service },
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Consumed { service, ty } => write!(f, "{} handled {ty}", service.name()),
            Path::Published { ty, field: None } => write!(f, "{ty} was published"),
            Path::Published {
                ty,
                field: Some((field, value)),
            } => write!(f, "{ty} with {field} = {value} was published"),
            Path::Ended {
                status,
                reason: None,
            } => write!(f, "an order ended {status}"),
            Path::Ended {
                status,
                reason: Some(reason),
            } => write!(f, "an order ended {status} ({reason})"),
            Path::Refunded {
                after_confirmation: true,
            } => f.write_str("a confirmed order was cancelled and refunded"),
            Path::Refunded {
                after_confirmation: false,
            } => f.write_str("an order was cancelled after its capture, before confirmation"),
            Path::Late { service } => write!(
                f,
                "an event reached {} after its order had ended",
                service.name()
            ),
        }
    }
}

/// A payload field whose values the contract enumerates, with those values.
type Enumerated = (String, Vec<String>);

/// Each type's payload fields whose values the contract enumerates (a `$ref` to an `enum`
/// in its JSON Schema), with those values.
fn enumerated_fields(t: EventType) -> &'static [Enumerated] {
    static FIELDS: OnceLock<BTreeMap<EventType, Vec<Enumerated>>> = OnceLock::new();
    let all = FIELDS.get_or_init(|| {
        EventType::ALL
            .into_iter()
            .map(|t| {
                let schema = event_schema(t);
                let defs = &schema["$defs"];
                let properties = defs[t.name()]["properties"].as_object().cloned();
                let fields = properties
                    .into_iter()
                    .flatten()
                    .filter_map(|(field, p)| {
                        let def = p["$ref"].as_str()?.strip_prefix("#/$defs/")?;
                        let values = defs[def]["enum"].as_array()?;
                        let values = values.iter().filter_map(|v| v.as_str()).map(str::to_owned);
                        Some((field, values.collect()))
                    })
                    .collect();
                (t, fields)
            })
            .collect()
    });
    &all[&t]
}

/// What publishing `event` reaches: its type, and the value of each enumerated field.
pub(crate) fn published(event: &Event) -> Vec<Path> {
    let ty = event.event_type();
    let fields = enumerated_fields(ty);
    let payload = if fields.is_empty() {
        serde_json::Value::Null
    } else {
        event.payload()
    };
    std::iter::once(Path::Published { ty, field: None })
        .chain(fields.iter().filter_map(|(field, _)| {
            let value = payload[field].as_str()?.to_owned();
            Some(Path::Published {
                ty,
                field: Some((field.clone(), value)),
            })
        }))
        .collect()
}

/// Why orders are cancelled: the values of OrderCancelled's `reason`.
fn cancel_reasons() -> Vec<String> {
    enumerated_fields(EventType::OrderCancelled)
        .iter()
        .filter(|(field, _)| field == "reason")
        .flat_map(|(_, values)| values.clone())
        .collect()
}

/// Every path a run of the whole saga must reach, from the declarations: every event
/// each service consumes, handled; every event type and every value of its enumerated
/// fields, published; every way an order ends (each cancellation reason), refunds before
/// and after confirmation, and a late event at each service.
pub(crate) fn every_path() -> BTreeSet<Path> {
    let consumed = Service::ALL.into_iter().flat_map(|service| {
        service
            .consumes()
            .iter()
            .map(move |&ty| Path::Consumed { service, ty })
    });
    let published = EventType::ALL.into_iter().flat_map(|ty| {
        let fields = enumerated_fields(ty)
            .iter()
            .flat_map(move |(field, values)| {
                values.iter().map(move |v| Path::Published {
                    ty,
                    field: Some((field.clone(), v.clone())),
                })
            });
        std::iter::once(Path::Published { ty, field: None }).chain(fields)
    });
    let ended = OrderStatus::ALL
        .into_iter()
        .filter(|s| !OrderStatus::OPEN.contains(s))
        .flat_map(|s| {
            match s {
                OrderStatus::Cancelled => cancel_reasons().into_iter().map(Some).collect(),
                _ => vec![None],
            }
            .into_iter()
            .map(move |reason| Path::Ended {
                status: s.as_str(),
                reason,
            })
        });
    let refunded = [true, false].map(|after_confirmation| Path::Refunded { after_confirmation });
    let late = Service::ALL.map(|service| Path::Late { service });
    consumed
        .chain(published)
        .chain(ended)
        .chain(refunded)
        .chain(late)
        .collect()
}

/// The fewest cases with which a run is expected to reach everything it wants; a run of
/// fewer (`PROPTEST_CASES`) only says what it missed.
const MIN_CASES: u32 = 1000;

/// Fails unless `reached` holds every path of `wanted`, naming those it lacks.
pub(crate) fn assert_reached(
    property: &str,
    cases: u32,
    wanted: &BTreeSet<Path>,
    reached: &BTreeSet<Path>,
) {
    let missing: Vec<String> = wanted
        .difference(reached)
        .map(|p| format!("never reached: {p}"))
        .collect();
    if missing.is_empty() {
        return;
    }
    let report = format!(
        "{property}: {} generated cases never reached what the declarations say the saga \
         does; make the generators in tests/tests/checks/saga_properties.rs reach it (a \
         new operator event needs its strategy in `operator_event`):\n  {}",
        cases,
        missing.join("\n  ")
    );
    if cases < MIN_CASES {
        eprintln!("{report}\n(not a failure with fewer than {MIN_CASES} cases)");
    } else {
        panic!("{report}");
    }
}
