//! The inbox: one row per (consumer, message id) handled, written in the same transaction
//! as the handler's effects. A second delivery of the same message finds the row and
//! changes nothing; a handler that failed before commit left no row, so the message is
//! handled again from scratch.

use sqlx::PgConnection;

use crate::envelope::Envelope;

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

/// Claims every envelope for `consumer` in one statement inside the caller's transaction,
/// and returns which were claimed: the first occurrence of each message id this consumer
/// has not handled before. A message id that stands twice in `envelopes` (a duplicate
/// delivery in the same batch) is claimed at its first place only.
pub(crate) async fn claim_all(
    conn: &mut PgConnection,
    consumer: &str,
    envelopes: &[&Envelope],
) -> sqlx::Result<Vec<InboxClaim>> {
    let mut seen = std::collections::HashSet::with_capacity(envelopes.len());
    let first: Vec<bool> = envelopes
        .iter()
        .map(|e| seen.insert(e.message_id))
        .collect();
    let sizes = envelopes
        .iter()
        .map(|e| e.event_type.len() + e.correlation_id.len() + e.producer.len() + 64);
    let mut claimed = Vec::with_capacity(envelopes.len());
    for r in crate::chunks::by_size(sizes, crate::chunks::STATEMENT_BYTES) {
        let part = &envelopes[r];
        let column = |f: fn(&Envelope) -> String| part.iter().map(|e| f(e)).collect::<Vec<_>>();
        let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
            "INSERT INTO inbox (consumer, message_id, event_type, correlation_id, causation_id, producer, occurred_at)
             SELECT $1, message_id, event_type, correlation_id, causation_id, producer, occurred_at
             FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::text[], $7::timestamptz[])
                  AS m(message_id, event_type, correlation_id, causation_id, producer, occurred_at)
             ON CONFLICT (consumer, message_id) DO NOTHING
             RETURNING message_id",
        )
        .bind(consumer)
        .bind(part.iter().map(|e| e.message_id).collect::<Vec<_>>())
        .bind(column(|e| e.event_type.clone()))
        .bind(column(|e| e.correlation_id.clone()))
        .bind(part.iter().map(|e| e.causation_id).collect::<Vec<_>>())
        .bind(column(|e| e.producer.clone()))
        .bind(part.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?;
        claimed.extend(ids);
    }
    let claimed: std::collections::HashSet<_> = claimed.into_iter().collect();
    Ok(envelopes
        .iter()
        .zip(first)
        .map(|(e, first)| {
            if first && claimed.contains(&e.message_id) {
                InboxClaim::Claimed
            } else {
                InboxClaim::Duplicate
            }
        })
        .collect())
}
