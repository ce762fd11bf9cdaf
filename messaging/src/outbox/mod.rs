//! The transactional outbox: an event is a row written in the same transaction as the
//! state change that caused it, and the relay publishes rows to the broker afterwards.
//!
//! Guarantees:
//! - A committed state change always gets its events published (eventually, at least once).
//!   A rolled-back one never does.
//! - A row is marked sent only after the broker confirmed it and routed it to a queue. A
//!   crash between the confirm and the mark publishes the row again later (same
//!   `message_id`, so consumers drop the copy).
//! - Rows are handed over in memory: a writer commits through its process's [`Outbox`],
//!   and once the transaction has committed, the rows go to the process's relay as they
//!   are, which publishes them at once; the next transaction the process commits through
//!   its [`Outbox`] records them sent (or, when none comes soon, the relay does, many rows
//!   in one statement). So a row costs the relay no claim and no transaction on the saga's
//!   path. A handed-over row carries a lease (`next_attempt_at`, `SAGA_RELAY_LEASE_MS`):
//!   until it runs out, no relay claims the row; after it, any relay of the database does.
//!   That is how the rows of a writer that died before its relay published them get out
//!   (its restart, or another replica, claims them when their lease ends), and the rows
//!   its relay could not publish (the broker went away) too.
//! - A relay that stops (SIGTERM) hands nothing over to the lease: once its process writes
//!   no more rows, it publishes every row still queued, and gives back (clears the lease
//!   of) any it cannot, so another replica's relay claims it at its next look.
//! - Relays claim what is not handed over: rows whose lease ran out, rows written with no
//!   relay running in the process (or its broker link down, or its queue full), and rows
//!   of other writers ([`enqueue`]). Several relays (replicas) may run on one outbox: each
//!   claims its batch with `FOR UPDATE SKIP LOCKED` and holds the row locks until the batch
//!   is marked, so no two relays publish the same claimed row.
//! - Relays wake in process: a commit of rows that are not handed over calls
//!   [`rows_committed`] after the commit, and the relay loops of the process claim what is
//!   there. No database notification is involved: PostgreSQL takes one global lock at
//!   commit for every transaction that issued `NOTIFY`, which halved the commits per second
//!   the database can do. Every relay also polls every `poll_interval`, which picks up rows
//!   whose lease ran out.
//!
//! The module's parts: [`emit`] (the rows of one transaction and their commit),
//! [`handover`] (the rows a process's writers hand to its relay, and the record of those
//! sent), [`row`] (a row as it is published), [`relay`] (claiming and publishing),
//! [`drain`] (the relay's end at shutdown: what was handed over published or given back),
//! [`records`] (reading the outbox back).

mod drain;
mod emit;
mod handover;
mod records;
mod relay;
mod row;

use std::sync::LazyLock;

use tokio::sync::watch;

pub use emit::{Emitter, OutboxRows, enqueue};
pub use handover::Outbox;
pub use records::{OutboxRecord, backlog, for_correlation};
pub use relay::{OutboxRelay, RelayError, RelaySettings};

/// How many transactions with outbox rows this process has committed. Every relay loop
/// that waits for work watches it, so one commit wakes each of them once, and commits made
/// while a loop was busy wake it as soon as it waits again (they coalesce into one wake).
static COMMITTED: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::Sender::new(0));

/// Tells this process's relays that a transaction which wrote outbox rows has committed.
/// Call it after the commit, never before: a relay woken earlier would find nothing and
/// the rows would wait for its next poll.
pub fn rows_committed() {
    COMMITTED.send_modify(|n| *n = n.wrapping_add(1));
}
