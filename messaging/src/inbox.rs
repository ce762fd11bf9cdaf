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

use sqlx::PgConnection;
use sqlx::error::BoxDynError;
use sqlx::postgres::PgArguments;

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
    let inserted = sqlx::query(
        "INSERT INTO inbox (consumer, message_id, event_type, correlation_id, causation_id, producer, occurred_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (consumer, message_id) DO NOTHING",
    )
    .bind(consumer)
    .bind(envelope.message_id)
    .bind(&envelope.event_type)
    .bind(&envelope.correlation_id)
    .bind(envelope.causation_id)
    .bind(&envelope.producer)
    .bind(envelope.occurred_at)
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
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
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
    sqlx::query_as(
        "SELECT consumer, message_id, event_type, correlation_id, causation_id, producer, occurred_at, received_at
         FROM inbox WHERE correlation_id = $1 ORDER BY received_at",
    )
    .bind(correlation_id)
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
/// column, bound by [`bind_claims`]. Claiming first adds `ON CONFLICT … RETURNING`.
macro_rules! insert_claims {
    () => {
        "INSERT INTO inbox (consumer, message_id, event_type, correlation_id, causation_id, producer, occurred_at)
         SELECT $1, message_id, event_type, correlation_id, causation_id, producer, occurred_at
         FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::text[], $7::timestamptz[])
              AS m(message_id, event_type, correlation_id, causation_id, producer, occurred_at)"
    };
}

/// Binds the values of [`insert_claims`] for `envelopes`.
fn bind_claims(
    b: &mut Binds<'_>,
    consumer: &str,
    envelopes: &[&Envelope],
) -> Result<(), BoxDynError> {
    let column = |f: fn(&Envelope) -> String| envelopes.iter().map(|e| f(e)).collect::<Vec<_>>();
    b.add(consumer)?;
    b.add(envelopes.iter().map(|e| e.message_id).collect::<Vec<_>>())?;
    b.add(column(|e| e.event_type.clone()))?;
    b.add(column(|e| e.correlation_id.clone()))?;
    b.add(envelopes.iter().map(|e| e.causation_id).collect::<Vec<_>>())?;
    b.add(column(|e| e.producer.clone()))?;
    b.add(envelopes.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
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
        writes.add(insert_claims!(), sizes[r].iter().sum(), |b| {
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
        let mut args = PgArguments::default();
        bind_claims(&mut Binds::over(&mut args), consumer, &envelopes[r])
            .map_err(sqlx::Error::Encode)?;
        let ids: Vec<uuid::Uuid> = sqlx::query_scalar_with(
            concat!(
                insert_claims!(),
                " ON CONFLICT (consumer, message_id) DO NOTHING RETURNING message_id"
            ),
            args,
        )
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
