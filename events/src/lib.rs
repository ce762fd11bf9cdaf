//! Messaging building blocks shared by the three saga services.
//!
//! This crate knows how events travel, never what they mean: it holds no business rule.
//!
//! - [`envelope`]: the JSON envelope every message is wrapped in, and its AMQP properties.
//! - [`catalog`]: every event of the contract as a typed payload, with its routing key.
//! - [`contract`]: the catalog as JSON Schemas and an AsyncAPI document (`docs/asyncapi/`).
//! - [`topology`]: the exchanges and queues, declared the same way by every process.
//! - [`publisher`]: a publisher that only reports success once the broker confirmed the
//!   message and routed it to at least one queue.
//! - [`outbox`]: events written in the same transaction as the state change, and the relay
//!   that publishes them.
//! - [`inbox`]: the per-consumer record of handled message ids that makes handlers idempotent.
//! - [`authenticity`]: which broker users may publish each event type (`user_id`), and the
//!   header that keeps the original publisher of a relayed copy.
//! - [`consumer`]: the consume loop that wraps a handler in one transaction (inbox claim,
//!   effects, outbox rows), acks only after commit, and routes failures to retry or dead letter.
//! - [`housekeeping`]: retention of the outbox and inbox, and their gauges.
//! - [`retry`]: the error classes of a handler and the delayed-retry schedule.
//! - [`trace`]: the trace context of a saga across HTTP, outbox rows and messages.
//! - [`metric_labels`]: label values from closed sets.
//! - [`failure`]: the three failure classes (bad input, transient, unreachable).
//! - [`pause`]: the gate that stops a consumer while its database is unreachable.
//! - [`parking`]: publishing a retry or dead-letter copy with backoff and channel reopening.
//! - [`amqp`]: connecting with backoff, and the connection settings every component shares.

pub mod amqp;
pub mod amqp_nodes;
pub mod authenticity;
pub mod catalog;
pub mod consumer;
pub mod contract;
pub mod envelope;
pub mod failure;
pub mod housekeeping;
pub mod inbox;
pub mod metric_labels;
pub mod outbox;
pub mod parking;
pub mod pause;
pub mod publisher;
pub mod retry;
pub mod topology;
pub mod trace;

pub use catalog::{Event, EventType};
pub use envelope::Envelope;

/// The migrations of the messaging tables (outbox, inbox). Versions 1..=999 are reserved
/// for them; each service numbers its own migrations from 1000 and runs both sets with one
/// migrator (see [`migrator_with`]), so one `_sqlx_migrations` table describes the database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A migrator that runs the messaging migrations followed by a service's own.
pub fn migrator_with(service: &sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    let mut all: Vec<_> = MIGRATOR.iter().cloned().collect();
    all.extend(service.iter().cloned());
    sqlx::migrate::Migrator::with_migrations(all)
}
