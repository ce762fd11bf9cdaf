//! Group commit of order placements: `POST /orders` requests that arrive together share one
//! transaction.
//!
//! A placement is decided in the request (the pure [`crate::saga::decide`]), then handed to
//! one of a few placing workers. A worker takes every placement waiting for it (up to
//! [`GROUP_MAX`]), looks up their idempotency keys with one statement, applies every new
//! order's plan to staging tables ([`OrderTables`], as every decision is), writes the
//! orders, their history and their events with one more (messaging::writes), commits once,
//! and answers each request. Statements and commits are most of what a placement costs the
//! database, so under load a group of N costs about what one placement costs instead of
//! N times that. At low load a group is one placement: grouping adds no wait.
//!
//! If anything in a group fails, or a placement's idempotency key turns out to be taken by
//! a transaction outside the group, the group rolls back and each placement runs again on
//! its own, exactly as it would have without grouping: a failure is answered to the request
//! that caused it alone.

use std::sync::Arc;

use messaging::outbox::{Emitter, Outbox};
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use crate::saga::{OrderStatus, Plan};
use crate::staging::OrderTables;
use crate::{SERVICE, store};

/// Most placements committed in one transaction.
const GROUP_MAX: usize = 64;
/// Placing workers, each committing one group at a time: two let one group's commit
/// overlap the next group's statements.
const WORKERS: usize = 2;

/// An order to place, as the request decided it.
pub(crate) struct Placement {
    pub plan: Plan,
    /// The `Idempotency-Key`, if the request had one.
    pub key: Option<String>,
    /// The trace context of the request, for the events the order emits.
    pub trace: Option<String>,
}

/// What became of a placement.
pub(crate) enum Placed {
    /// Written: the order is pending.
    New,
    /// The idempotency key had made this order already (id, status, the hash of its body).
    Existing((Uuid, OrderStatus, Option<String>)),
}

type Reply = oneshot::Sender<Result<Placed, PlaceError>>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum PlaceError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("the idempotency key's order vanished")]
    KeyVanished,
    #[error("order placement is shutting down")]
    Stopped,
}

/// Hands placements to the placing workers. The workers run until every `Placer` (every
/// clone held by the HTTP router) is gone, so the requests in flight at shutdown are
/// answered before they stop.
#[derive(Clone)]
pub(crate) struct Placer {
    queue: mpsc::Sender<(Placement, Reply)>,
}

impl Placer {
    pub(crate) fn start(pool: PgPool, outbox: Outbox) -> Placer {
        let (queue, waiting) = mpsc::channel(1024);
        let waiting = Arc::new(Mutex::new(waiting));
        for _ in 0..WORKERS {
            tokio::spawn(place_groups(pool.clone(), outbox.clone(), waiting.clone()));
        }
        Placer { queue }
    }

    pub(crate) async fn place(&self, placement: Placement) -> Result<Placed, PlaceError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((placement, reply))
            .await
            .map_err(|_| PlaceError::Stopped)?;
        answer.await.map_err(|_| PlaceError::Stopped)?
    }
}

/// One worker: takes what is waiting, commits it as a group, answers, and again.
async fn place_groups(
    pool: PgPool,
    outbox: Outbox,
    waiting: Arc<Mutex<mpsc::Receiver<(Placement, Reply)>>>,
) {
    loop {
        let mut group = Vec::new();
        {
            let mut waiting = waiting.lock().await;
            if waiting.recv_many(&mut group, GROUP_MAX).await == 0 {
                return;
            }
        }
        metrics::histogram!("saga_placement_group_size").record(group.len() as f64);
        let placements: Vec<&Placement> = group.iter().map(|(p, _)| p).collect();
        match place_together(&pool, &outbox, &placements).await {
            Ok(answers) => {
                for ((_, reply), placed) in group.into_iter().zip(answers) {
                    // A request that gave up (its client went away) no longer listens.
                    drop(reply.send(Ok(placed)));
                }
            }
            Err(_) => {
                if group.len() > 1 {
                    metrics::counter!("saga_placement_group_fallbacks_total").increment(1);
                }
                for (placement, reply) in group {
                    drop(reply.send(place_alone(&pool, &outbox, &placement).await));
                }
            }
        }
    }
}

/// The placements in one transaction: their keys looked up with one statement, every new
/// order applied to staging tables like any other decision, then the orders, their
/// history and their events written together with the outbox's (store::commit_staged).
/// A key another transaction took since the lookup makes the insert fail.
async fn place_together(
    pool: &PgPool,
    outbox: &Outbox,
    group: &[&Placement],
) -> sqlx::Result<Vec<Placed>> {
    let mut tx = pool.begin().await?;
    let keys: Vec<&str> = group.iter().filter_map(|p| p.key.as_deref()).collect();
    let existing = store::find_by_idempotency_keys(&mut tx, &keys).await?;
    let loaded = OrderTables::default();
    let mut now = OrderTables::default();
    let mut emitted = Vec::with_capacity(group.len());
    let mut answers = Vec::with_capacity(group.len());
    for placement in group {
        if let Some(found) = placement.key.as_ref().and_then(|k| existing.get(k)) {
            answers.push(Placed::Existing(found.clone()));
            continue;
        }
        let mut out = Emitter::new(SERVICE, None);
        now.apply(placement.plan.clone(), None, &mut out);
        emitted.push((out, placement.trace.as_deref()));
        answers.push(Placed::New);
    }
    store::commit_staged(tx, &loaded, &now, emitted, outbox).await?;
    Ok(answers)
}

/// One placement in its own transaction, as without grouping.
async fn place_alone(
    pool: &PgPool,
    outbox: &Outbox,
    placement: &Placement,
) -> Result<Placed, PlaceError> {
    match place_together(pool, outbox, &[placement]).await {
        Ok(mut placed) => placed.pop().ok_or(PlaceError::KeyVanished),
        // A concurrent request with the same key won the insert; answer as it did.
        Err(e) if store::idempotency_key_taken(&e) => {
            let mut conn = pool.acquire().await?;
            let key = placement.key.as_deref().unwrap_or_default();
            store::find_by_idempotency_key(&mut conn, key)
                .await?
                .map(Placed::Existing)
                .ok_or(PlaceError::KeyVanished)
        }
        Err(e) => Err(e.into()),
    }
}
