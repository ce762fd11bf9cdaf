//! The outbox read back: its backlog for metrics and health, and one saga's rows for
//! traces.

use chrono::{DateTime, Utc};

use sqlx::PgPool;
use uuid::Uuid;

/// Number of rows not yet published, and the age of the oldest, for metrics and health.
pub async fn backlog(pool: &PgPool) -> sqlx::Result<(i64, Option<f64>)> {
    let backlog = sqlx::query!(
        r#"SELECT count(*) AS "rows!", EXTRACT(EPOCH FROM now() - min(created_at))::float8 AS oldest
           FROM outbox WHERE sent_at IS NULL"#
    )
    .fetch_one(pool)
    .await?;
    Ok((backlog.rows, backlog.oldest))
}

/// An outbox row as traces show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OutboxRecord {
    pub message_id: Uuid,
    pub event_type: String,
    pub correlation_id: String,
    pub causation_id: Option<Uuid>,
    pub producer: String,
    pub occurred_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub traceparent: Option<String>,
}

/// Every event this service emitted about one saga (until housekeeping removes it).
pub async fn for_correlation(
    pool: &PgPool,
    correlation_id: &str,
) -> sqlx::Result<Vec<OutboxRecord>> {
    sqlx::query_as!(
        OutboxRecord,
        "SELECT message_id, event_type, correlation_id, causation_id, producer, occurred_at, sent_at, traceparent
         FROM outbox WHERE correlation_id = $1 ORDER BY id",
        correlation_id,
    )
    .fetch_all(pool)
    .await
}
