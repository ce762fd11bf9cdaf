//! What the order saga's events mean: the catalog, its format rules, and the contract
//! documents generated from it. How events travel is the `messaging` crate's job; this
//! crate implements its [`messaging::Event`] and [`messaging::EventKind`] traits for the
//! catalog.
//!
//! - [`catalog`]: every event of the contract as a typed payload with its format rules, and
//!   the one declaration of every event type (name, version, routing key, producer, fields).
//! - [`payload`]: what a payload type provides, and the macro that turns the declaration
//!   into [`Event`], [`EventType`] and their lookups.
//! - [`contract`]: the catalog as JSON Schemas and an AsyncAPI document (`docs/asyncapi/`).
//! - [`tables`]: the catalog table of docs/events.md and the event list of
//!   `sagactl publish --help`.

pub mod catalog;
pub mod contract;
mod payload;
pub mod tables;

pub use catalog::{Event, EventType};
