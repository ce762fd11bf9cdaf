//! The inbox: one row per (consumer, message id) handled, written in the same transaction
//! as the handler's effects. A second delivery of the same message finds the row and
//! changes nothing; a handler that failed before commit left no row, so the message is
//! handled again from scratch.
//!
//! A batch claims its messages in one of two ways. First, with its writes
//! ([`claim_with_writes`]): the messages are decided as if none was handled before, and
//! their inbox rows are inserted among the batch's writes, without `ON CONFLICT`, so that
//! a message handled before makes the statement fail on the primary key and the batch
//! roll back; that costs no round trip of its own. A batch that fails so, or in any other
//! way, is handled again claiming first ([`claim_all`]): a statement of its own, whose
//! answer says which messages are duplicates, before anything is decided.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use sqlx::error::BoxDynError;
use uuid::Uuid;

use crate::envelope::Envelope;
use crate::writes::{Binds, Writes};

/// What claiming a message in the inbox found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxClaim {
    /// First time this consumer sees the message: handle it.
    Claimed,
    /// Already handled (and committed) before: ack and do nothing.
    Duplicate,
}

/// Claims `envelope` for `consumer` inside the caller's transaction. The primary key
/// (consumer, message_id) makes two concurrent claims of one message serialise: the second
/// waits for the first transaction and then sees a conflict.
pub async fn claim(
    conn: &mut PgConnection,
    consumer: &str,
    envelope: &Envelope,
) -> sqlx::Result<InboxClaim> {
    let inserted = sqlx::query!(
        "INSERT INTO inbox (consumer, message_id, event_type, correlation_id, causation_id, producer, occurred_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (consumer, message_id) DO NOTHING",
        consumer,
        envelope.message_id,
        envelope.event_type,
        envelope.correlation_id,
        envelope.causation_id,
        envelope.producer,
        envelope.occurred_at,
    )
    .execute(conn)
    .await?
    .rows_affected();
    Ok(if inserted == 1 {
        InboxClaim::Claimed
    } else {
        InboxClaim::Duplicate
    })
}

/// An inbox row as traces show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InboxRecord {
    pub consumer: String,
    pub message_id: uuid::Uuid,
    pub event_type: String,
    pub correlation_id: String,
    pub causation_id: Option<uuid::Uuid>,
    pub producer: String,
    pub occurred_at: chrono::DateTime<chrono::Utc>,
    pub received_at: chrono::DateTime<chrono::Utc>,
}

/// Every event this service consumed about one saga (until housekeeping removes it).
pub async fn for_correlation(
    pool: &sqlx::PgPool,
    correlation_id: &str,
) -> sqlx::Result<Vec<InboxRecord>> {
    sqlx::query_as!(
        InboxRecord,
        "SELECT consumer, message_id, event_type, correlation_id, causation_id, producer, occurred_at, received_at
         FROM inbox WHERE correlation_id = $1 ORDER BY received_at",
        correlation_id,
    )
    .fetch_all(pool)
    .await
}

/// Which of `envelopes` to decide when claiming with the batch's writes: the first
/// occurrence of each message id (a later one is a duplicate delivery in the same batch).
pub(crate) fn first_occurrences(envelopes: &[&Envelope]) -> Vec<InboxClaim> {
    let mut seen = std::collections::HashSet::with_capacity(envelopes.len());
    envelopes
        .iter()
        .map(|e| {
            if seen.insert(e.message_id) {
                InboxClaim::Claimed
            } else {
                InboxClaim::Duplicate
            }
        })
        .collect()
}

/// The claims of some envelopes as inbox rows: `$1` the consumer, `$2`… one array per
/// column, as [`ClaimColumns`] holds them. The text is written once, for the macro named
/// in the call, with what the call adds after it: `insert_claims!(concat!())` is the plain
/// insert among a batch's writes; claiming first adds `ON CONFLICT … RETURNING` and runs
/// it through `sqlx::query_scalar!`, which checks it, and so the plain insert's text too,
/// against the schema when the crate is built.
macro_rules! insert_claims {
    ($($then:ident)::+!($($more:tt)*)) => {
        $($then)::+!(
            "INSERT INTO inbox (consumer, message_id, event_type, correlation_id, causation_id, producer, occurred_at)
             SELECT $1, message_id, event_type, correlation_id, causation_id, producer, occurred_at
             FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::text[], $7::timestamptz[])
                  AS m(message_id, event_type, correlation_id, causation_id, producer, occurred_at)"
            $($more)*
        )
    };
}

/// The values of [`insert_claims`] after the consumer, for some envelopes.
struct ClaimColumns {
    message_id: Vec<Uuid>,
    event_type: Vec<String>,
    correlation_id: Vec<String>,
    causation_id: Vec<Option<Uuid>>,
    producer: Vec<String>,
    occurred_at: Vec<DateTime<Utc>>,
}

impl ClaimColumns {
    fn of(envelopes: &[&Envelope]) -> Self {
        let column = |f: fn(&Envelope) -> String| envelopes.iter().map(|e| f(e)).collect();
        ClaimColumns {
            message_id: envelopes.iter().map(|e| e.message_id).collect(),
            event_type: column(|e| e.event_type.clone()),
            correlation_id: column(|e| e.correlation_id.clone()),
            causation_id: envelopes.iter().map(|e| e.causation_id).collect(),
            producer: column(|e| e.producer.clone()),
            occurred_at: envelopes.iter().map(|e| e.occurred_at).collect(),
        }
    }
}

/// Binds the values of [`insert_claims`] for `envelopes`.
fn bind_claims(
    b: &mut Binds<'_>,
    consumer: &str,
    envelopes: &[&Envelope],
) -> Result<(), BoxDynError> {
    let c = ClaimColumns::of(envelopes);
    b.add(consumer)?;
    b.add(c.message_id)?;
    b.add(c.event_type)?;
    b.add(c.correlation_id)?;
    b.add(c.causation_id)?;
    b.add(c.producer)?;
    b.add(c.occurred_at)
}

/// Adds the claims of `envelopes` (each message id once) to `writes`: plain inserts, so
/// that a message this consumer handled before fails the statement, and with it the
/// transaction, on the inbox's primary key.
pub(crate) fn claim_with_writes(
    writes: &mut Writes,
    consumer: &str,
    envelopes: &[&Envelope],
) -> sqlx::Result<()> {
    let sizes: Vec<usize> = envelopes.iter().map(|e| claim_size(e)).collect();
    for r in crate::chunks::by_size(sizes.iter().copied(), crate::chunks::STATEMENT_BYTES) {
        let part = &envelopes[r.clone()];
        writes.add(insert_claims!(concat!()), sizes[r].iter().sum(), |b| {
            bind_claims(b, consumer, part)
        })?;
    }
    Ok(())
}

/// What a claim adds to a statement, near enough.
fn claim_size(e: &Envelope) -> usize {
    e.event_type.len() + e.correlation_id.len() + e.producer.len() + 64
}

/// Claims every envelope for `consumer` in one statement inside the caller's transaction,
/// and returns which were claimed: the first occurrence of each message id this consumer
/// has not handled before. A message id that stands twice in `envelopes` (a duplicate
/// delivery in the same batch) is claimed at its first place only.
pub(crate) async fn claim_all(
    conn: &mut PgConnection,
    consumer: &str,
    envelopes: &[&Envelope],
) -> sqlx::Result<Vec<InboxClaim>> {
    let first = first_occurrences(envelopes);
    let sizes = envelopes.iter().map(|e| claim_size(e));
    let mut claimed = Vec::with_capacity(envelopes.len());
    for r in crate::chunks::by_size(sizes, crate::chunks::STATEMENT_BYTES) {
        let c = ClaimColumns::of(&envelopes[r]);
        let ids: Vec<Uuid> = insert_claims!(sqlx::query_scalar!(
            + " ON CONFLICT (consumer, message_id) DO NOTHING RETURNING message_id",
            consumer,
            &c.message_id,
            &c.event_type,
            &c.correlation_id,
            // NULL where an event has no cause: the macros type an array's elements as
            // never NULL.
            &c.causation_id as &[Option<Uuid>],
            &c.producer,
            &c.occurred_at,
        ))
        .fetch_all(&mut *conn)
        .await?;
        claimed.extend(ids);
    }
    let claimed: std::collections::HashSet<_> = claimed.into_iter().collect();
    Ok(envelopes
        .iter()
        .zip(first)
        .map(|(e, first)| {
            if first == InboxClaim::Claimed && claimed.contains(&e.message_id) {
                InboxClaim::Claimed
            } else {
                InboxClaim::Duplicate
            }
        })
        .collect())
}
