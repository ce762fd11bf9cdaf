//! Group commit of order placements: `POST /orders` requests that arrive together share one
//! transaction.
//!
//! A placement is decided in the request (the pure [`crate::saga::decide`]), then handed to
//! one of a few placing workers. A worker takes every placement waiting for it (up to
//! [`GROUP_MAX`]), looks up their idempotency keys with one statement, writes every new
//! order, its history and its events with one more (messaging::writes), commits once, and
//! answers each request. Statements and commits are most of what a placement costs the
//! database, so under load a group of N costs about what one placement costs instead of
//! N times that. At low load a group is one placement: grouping adds no wait.
//!
//! If anything in a group fails, or a placement's idempotency key turns out to be taken by
//! a transaction outside the group, the group rolls back and each placement runs again on
//! its own, exactly as it would have without grouping: a failure is answered to the request
//! that caused it alone.

use std::sync::Arc;

use messaging::outbox::{Emitter, Outbox, OutboxRows};
use messaging::writes::Writes;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use crate::apply::{Applied, apply};
use crate::saga::{OrderStatus, OrderWrite, Plan};
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
        match place_together(&pool, &outbox, &group).await {
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

/// Where one placement stands inside a transaction.
enum Step {
    Written,
    Existing((Uuid, OrderStatus, Option<String>)),
    /// Another transaction holds the idempotency key: nothing was written.
    KeyTaken,
}

/// Looks up the placement's key, and writes the order if the key made none yet.
async fn place_in(
    tx: &mut PgConnection,
    placement: &Placement,
    out: &mut Emitter,
) -> sqlx::Result<Step> {
    if let Some(key) = &placement.key
        && let Some(existing) = store::find_by_idempotency_key(tx, key).await?
    {
        return Ok(Step::Existing(existing));
    }
    Ok(match apply(tx, out, placement.plan.clone(), None).await? {
        Applied::Written => Step::Written,
        Applied::KeyTaken => Step::KeyTaken,
    })
}

/// The whole group in one transaction, set by set: the keys of the group looked up with one
/// statement, then every new order, its history and its events written together with the
/// outbox's (messaging::writes). A key another transaction took since the lookup makes the
/// insert fail, and the group runs again placement by placement.
async fn place_together(
    pool: &PgPool,
    outbox: &Outbox,
    group: &[(Placement, Reply)],
) -> sqlx::Result<Vec<Placed>> {
    let mut tx = pool.begin().await?;
    let keys: Vec<&str> = group.iter().filter_map(|(p, _)| p.key.as_deref()).collect();
    let existing = store::find_by_idempotency_keys(&mut tx, &keys).await?;
    let mut writes = Writes::default();
    let mut rows = OutboxRows::default();
    let mut orders = Vec::with_capacity(group.len());
    let mut history = Vec::with_capacity(group.len());
    let mut answers = Vec::with_capacity(group.len());
    for (placement, _) in group {
        if let Some(found) = placement.key.as_ref().and_then(|k| existing.get(k)) {
            answers.push(Placed::Existing(found.clone()));
            continue;
        }
        let plan = placement.plan.clone();
        let Some(OrderWrite::Insert {
            order,
            deadline,
            idempotency,
        }) = plan.write
        else {
            return Err(sqlx::Error::Protocol(format!(
                "placement of order {} writes no new order",
                plan.order_id
            )));
        };
        let mut out = Emitter::new(SERVICE, None);
        for event in plan.emit {
            let envelope = out.emit(event);
            history.push((
                order.order_id,
                envelope.event_type.clone(),
                envelope.message_id,
            ));
        }
        out.add_to(&mut rows, placement.trace.as_deref())?;
        orders.push((order, deadline, idempotency));
        answers.push(Placed::New);
    }
    store::add_new_orders(&mut writes, &orders)?;
    store::add_history_rows(&mut writes, &history)?;
    rows.commit_with(tx, writes, outbox).await?;
    Ok(answers)
}

/// One placement in its own transaction, as without grouping.
async fn place_alone(
    pool: &PgPool,
    outbox: &Outbox,
    placement: &Placement,
) -> Result<Placed, PlaceError> {
    let mut tx = pool.begin().await?;
    let mut out = Emitter::new(SERVICE, None);
    match place_in(&mut tx, placement, &mut out).await? {
        Step::Written => {
            out.commit(tx, placement.trace.as_deref(), outbox).await?;
            Ok(Placed::New)
        }
        Step::Existing(existing) => Ok(Placed::Existing(existing)),
        Step::KeyTaken => {
            // A concurrent request with the same key won the insert; answer as it did.
            tx.rollback().await?;
            let mut conn = pool.acquire().await?;
            let key = placement.key.as_deref().unwrap_or_default();
            store::find_by_idempotency_key(&mut conn, key)
                .await?
                .map(Placed::Existing)
                .ok_or(PlaceError::KeyVanished)
        }
    }
}
