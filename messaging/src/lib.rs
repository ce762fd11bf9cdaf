//! How events travel, never what they mean.
//!
//! The building blocks of a choreographed saga over RabbitMQ and PostgreSQL, generic over an
//! event catalog: a catalog implements [`Event`] and [`EventKind`] (names, versions,
//! routing keys, producers, decoding with validation), and everything here works for it.
//! This crate names no event of any saga.
//!
//! - [`event`]: the traits a catalog implements, and why a message cannot be decoded.
//! - [`envelope`]: the JSON envelope every message is wrapped in, its AMQP properties, and
//!   decoding a message body into an envelope and a typed event.
//! - [`versions`]: which version of each event type this process writes (the newest, or
//!   an older one during an upgrade).
//! - [`topology`]: the exchanges and queues; a service's bindings come from the event types
//!   it consumes.
//! - [`publisher`]: a publisher that only reports success once the broker confirmed the
//!   message and routed it to at least one queue.
//! - [`outbox`]: events written in the same transaction as the state change, and the relay
//!   that publishes them.
//! - [`inbox`]: the per-consumer record of handled message ids that makes handlers idempotent.
//! - [`authenticity`]: which broker users may publish each event type (`user_id`), and the
//!   header that keeps the original publisher of a relayed copy.
//! - [`consumer`]: the consume loop that wraps a handler in one transaction (inbox claim,
//!   effects, outbox rows), acks only after commit, and routes failures to retry or dead letter.
//! - [`writes`]: the writes that end a transaction, sent together in one statement.
//! - [`housekeeping`]: retention of the outbox and inbox, and their gauges.
//! - [`retry`]: the error classes of a handler and the delayed-retry schedule.
//! - [`trace`]: the trace context of a saga across HTTP, outbox rows and messages.
//! - [`metric_labels`]: label values from closed sets.
//! - [`failure`]: the three failure classes (bad input, transient, unreachable).
//! - [`pause`]: the gate that stops a consumer while its database is unreachable.
//! - [`parking`]: publishing a retry or dead-letter copy with backoff and channel reopening.
//! - [`audit`]: the record of every change made by hand, who made it and how it ended.
//! - [`amqp`], [`amqp_nodes`]: connecting with backoff to one of a cluster's nodes, and the
//!   connection settings every component shares.

pub(crate) mod acks;
pub mod amqp;
pub mod amqp_nodes;
pub mod audit;
pub mod authenticity;
pub mod chunks;
pub mod consumer;
pub mod envelope;
pub mod event;
pub mod failure;
pub mod housekeeping;
pub mod inbox;
pub(crate) mod metric_labels;
pub mod outbox;
pub(crate) mod parking;
pub mod pause;
pub mod publisher;
pub mod retry;
pub mod topology;
pub mod trace;
pub mod versions;
pub mod writes;

#[cfg(test)]
mod test_catalog;

pub use envelope::Envelope;
pub use event::{DecodeError, Event, EventKind};

/// The migrations of the messaging tables (outbox, inbox). Versions 1..=999 are reserved
/// for them; each service numbers its own migrations from 1000 and runs both sets with one
/// migrator (see [`migrator_with`]), so one `_sqlx_migrations` table describes the database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A migrator that runs the messaging migrations followed by a service's own. It starts
/// against a database that a later release has migrated further (applied migrations it
/// does not know are left alone), so that a replica of this release can still start
/// during a rolling upgrade to the next one, or after a rollback from it; an applied
/// migration whose file changed still stops it.
pub fn migrator_with(service: &sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    let mut all: Vec<_> = MIGRATOR.iter().cloned().collect();
    all.extend(service.iter().cloned());
    let mut migrator = sqlx::migrate::Migrator::with_migrations(all);
    migrator.set_ignore_missing(true);
    migrator
}
