//! The idempotent consumer: the one place where a delivery becomes a transaction.
//!
//! For every delivery, in this order:
//! 1. decode (size, JSON, envelope, type, version, payload); a message that fails can
//!    never succeed and goes to the dead-letter queue with the reason;
//! 2. in ONE database transaction: run the handler, write the events it returns to the
//!    outbox and claim the message in the inbox; commit. The claim goes with the writes
//!    (one statement, [`crate::writes`]); a message handled before fails it, and is then
//!    handled again claiming first, which finds it a duplicate ([`crate::inbox`]);
//! 3. only then ack. A crash before the ack redelivers the message, and the inbox turns
//!    the second delivery into a no-op.
//!
//! Under load, the deliveries that are waiting when a worker becomes free are handled as a
//! batch: up to `batch_size` of them in one transaction (the handler's
//! [`Handler::handle_all`] on them in delivery order, then one statement for the handler's
//! writes, the outbox rows and the inbox claims of all, one commit), then settled with one
//! multiple ack ([`crate::acks`]). A batch costs one commit and a few round trips instead
//! of that per message, which is most of what a delivery costs the database. If anything
//! in the batch fails, the whole transaction rolls back and every message of it is handled
//! again on its own, claimed first, so a failing message is isolated, classified and
//! retried alone, exactly as if it had come alone. At low load a batch is one delivery:
//! batching adds no wait.
//!
//! Replicas of a service take turns: a batch's transaction first takes its worker slot's
//! advisory lock, which the same slot of every replica takes, and only then does the
//! batch take what has arrived. While one replica commits, the others gather their next
//! batch, so a batch is as full with two replicas as with one.
//!
//! A handler failure rolls the transaction back (no trace of the attempt) and then, by its
//! class, either publishes the message to a delayed retry queue or to the dead-letter
//! queue; the original is acked only once that copy is confirmed by the broker. A retry
//! never blocks other messages and never spins: it waits in a TTL queue. A copy that cannot
//! be published is held and tried again after a delay ([`crate::parking`]). An unreachable
//! database is no failure of the message: the consumer pauses ([`crate::pause`]).
//!
//! Deliveries are handled concurrently (up to `concurrency` at once, with a prefetch that
//! keeps the workers fed). Handlers lock the rows they change, so two events about one order
//! still apply one after the other.
//!
//! An operator's event (a stock adjustment, a deposit) is an action by hand: the batch
//! that applies it adds its record to the audit log among its writes, so a batch rolled
//! back records nothing and a duplicate is never recorded twice; one that is dead-lettered
//! is recorded as rejected, on the side ([`by_hand`]). Every other event costs nothing.
//!
//! The module's parts: [`decode`] (a delivery decoded, its producer checked, its span),
//! [`batch`] (deliveries taken together into one transaction, deduplicated by the inbox,
//! and handled one at a time when a batch fails), [`by_hand`] (the audit records of the
//! operator's events), [`failures`] (what a handler's failure
//! means for a delivery, and its retry or dead-letter copy), [`turns`] (the consume loop:
//! the broker session, the worker slots and the turns replicas take).

mod batch;
mod by_hand;
mod decode;
mod failures;
mod turns;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tracing::Instrument;

use crate::amqp::LinkState;
use crate::audit::HandAction;
use crate::authenticity::ProducerUsers;
use crate::envelope::Envelope;
use crate::event::Event;
use crate::outbox::{Emitter, Outbox};
use crate::pause::PauseGate;
use crate::retry::HandlerError;
use crate::topology::ServiceTopology;
use crate::writes::Writes;

pub use failures::{
    ATTEMPTS_HEADER, ERROR_CODE_HEADER, ERROR_HEADER, FAILED_AT_HEADER, QUEUE_HEADER,
};

/// A decoded message as a handler sees it.
#[derive(Debug, Clone)]
pub struct IncomingEvent<E> {
    pub envelope: Envelope,
    pub event: E,
    /// 1 on the first delivery, 2 after one retry, …
    pub attempt: u32,
    pub traceparent: Option<String>,
    /// For an operator's event ([`crate::EventKind::hand_action`]): the record of it, with
    /// who sent it, that the consumer adds to the audit log in the transaction that
    /// applies it. `None` for every other event.
    pub by_hand: Option<HandAction>,
}

/// One message of a batch as a handler sees it: the event, the span it is handled in, and
/// the emitter its events go to (their causation is this message).
pub struct Handling<'a, E> {
    pub incoming: &'a IncomingEvent<E>,
    pub span: &'a tracing::Span,
    pub out: &'a mut Emitter,
}

/// A service's reaction to the events it consumes.
pub trait Handler: Send + Sync + 'static {
    /// The catalog the service's events come from.
    type Event: Event;

    /// Applies `incoming` inside the open transaction `tx`, emitting events into `out`.
    /// The caller writes them to the outbox in the same transaction and commits.
    fn handle(
        &self,
        tx: &mut PgConnection,
        incoming: &IncomingEvent<Self::Event>,
        out: &mut Emitter,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Applies a batch, in order, inside `tx`: the same as [`Handler::handle`] on each
    /// message in turn, which is what this default does. A handler that can load the
    /// rows of a whole batch with one statement per table, decide every message in memory
    /// in order, and store each table with one statement overrides it; it must end in
    /// exactly the state and the events the messages handled one by one would have. What
    /// it adds to `writes` runs after it returns, together with the batch's outbox rows,
    /// in the same transaction.
    fn handle_all(
        &self,
        tx: &mut PgConnection,
        batch: &mut [Handling<'_, Self::Event>],
        writes: &mut Writes,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let _ = writes;
        async move {
            for h in batch.iter_mut() {
                self.handle(tx, h.incoming, h.out)
                    .instrument(h.span.clone())
                    .await?;
            }
            Ok(())
        }
    }
}

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Handled and committed: ack.
    Handled,
    /// Seen before: ack, nothing changed.
    Duplicate,
    /// Failed transiently: retry after `delay` (this was attempt `attempt`).
    Retry {
        attempt: u32,
        delay: Duration,
        error: String,
    },
    /// Will never succeed: dead-letter.
    DeadLetter {
        code: String,
        error: String,
        attempts: u32,
    },
    /// The database is unreachable: hold the delivery and pause until it answers.
    Paused { error: String },
}

impl Disposition {
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            Disposition::Handled => "ok",
            Disposition::Duplicate => "duplicate",
            Disposition::Retry { .. } => "retried",
            Disposition::DeadLetter { .. } => "dead_lettered",
            Disposition::Paused { .. } => "paused",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Unacked deliveries the broker may push to this consumer.
    pub prefetch: u16,
    /// Batches handled at once (each holds a database connection while it runs).
    pub concurrency: usize,
    /// Most deliveries handled in one transaction.
    pub batch_size: usize,
    pub confirm_timeout: Duration,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        // One batch at a time, of up to 500: two batches of one process would take the
        // same rows (a wallet, a SKU's stock) in different orders and deadlock, and one
        // large transaction commits more messages per second than several small ones.
        ConsumerSettings {
            prefetch: 1000,
            concurrency: 1,
            batch_size: 500,
            confirm_timeout: Duration::from_secs(10),
        }
    }
}

struct Inner<H: Handler> {
    topology: ServiceTopology<<H::Event as Event>::Kind>,
    pool: PgPool,
    /// Where emitted events are committed (and handed to the process's relay).
    outbox: Outbox,
    amqp_url: String,
    handler: H,
    settings: ConsumerSettings,
    link: LinkState,
    gate: PauseGate,
    /// Who may publish each event type (read from the environment once).
    users: ProducerUsers,
    /// The broker user this consumer connects as.
    own_user: String,
    /// The first key of the turns' advisory locks: the same in every replica (see
    /// [`EventConsumer::take_turn`]).
    turn_key: i32,
}

/// Consumes a service's input queue with a [`Handler`].
pub struct EventConsumer<H: Handler> {
    inner: Arc<Inner<H>>,
}

impl<H: Handler> Clone for EventConsumer<H> {
    fn clone(&self) -> Self {
        EventConsumer {
            inner: self.inner.clone(),
        }
    }
}

impl<H: Handler> EventConsumer<H> {
    pub fn new(
        topology: ServiceTopology<<H::Event as Event>::Kind>,
        pool: PgPool,
        outbox: Outbox,
        amqp_url: impl Into<String>,
        handler: H,
        settings: ConsumerSettings,
    ) -> Self {
        let amqp_url = amqp_url.into();
        let turn_key = turns::turn_key(topology.input_queue());
        EventConsumer {
            inner: Arc::new(Inner {
                topology,
                pool,
                outbox,
                own_user: crate::authenticity::user_of_url(&amqp_url),
                turn_key,
                users: ProducerUsers::from_env::<<H::Event as Event>::Kind>(),
                amqp_url,
                handler,
                settings,
                link: LinkState::default(),
                gate: PauseGate::default(),
            }),
        }
    }

    pub fn link(&self) -> LinkState {
        self.inner.link.clone()
    }

    fn consumer_name(&self) -> &str {
        &self.inner.topology.service
    }
}

/// The condition, for the `WHERE` clause of a handler's first load, that takes the saga
/// locks whose keys ([`consumer::saga_lock_keys`](crate::consumer::saga_lock_keys)) are
/// bound to placeholder `$2`: an uncorrelated subquery, which PostgreSQL runs once, as the
/// init plan of a one-time filter, before the plan under the filter fetches anything. The
/// function scan yields the keys in order, and each row takes its lock as it passes.
///
/// It appends the condition to the first argument (the load's text up to its `WHERE`) of
/// the macro call it is given, so that a checked query, whose text is one literal or
/// literals joined with `+`, takes it:
/// `messaging::saga_locks_taken!(sqlx::query!("SELECT … WHERE ", ids, &keys))`.
#[macro_export]
macro_rules! saga_locks_taken {
    ($($then:ident)::+!($head:literal $($more:tt)*)) => {
        $($then)::+!(
            $head + "(SELECT count(pg_advisory_xact_lock(l)) FROM unnest($2::int8[]) AS l) >= 0"
            $($more)*
        )
    };
}

/// The keys of the transaction-scoped advisory locks that serialise the handlers of each
/// saga in `order_ids`, in the order to take them. Two events about one order may arrive
/// together before any row exists to lock (OrderCreated racing OrderCancelled, say); the
/// lock on the order id makes the second wait for the first to commit. The locks are taken
/// in the order of their keys, so two batches that share orders queue on the first they
/// share instead of waiting on each other in a cycle.
///
/// A handler takes them in its first load, before it reads a row, with the condition
/// [`crate::saga_locks_taken!`] bound to these keys.
pub fn saga_lock_keys(order_ids: impl IntoIterator<Item = uuid::Uuid>) -> Vec<i64> {
    let mut keys: Vec<i64> = order_ids
        .into_iter()
        .map(|id| {
            // The high 64 bits of a UUIDv7 are mostly its timestamp; fold in the random
            // low half.
            let (hi, lo) = id.as_u64_pair();
            (hi ^ lo) as i64
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}
