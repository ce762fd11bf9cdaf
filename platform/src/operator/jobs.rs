//! Dead-letter jobs (redrive, purge, edit): one row each in `dlq_jobs`, beside the audit
//! record that says who started it and, once it ends, how it ended. A job runs in the
//! replica that started it; any replica answers for it from the row.

use chrono::{DateTime, Utc};
use messaging::audit::{self, HandAction};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::ApiError;

/// A running job whose row was not touched for this long belonged to a process that
/// stopped: it is reported `interrupted`.
const STALE_AFTER_SECS: i64 = 30;

/// A job as `GET /dlq/jobs/{id}` answers it.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Job {
    pub id: Uuid,
    /// redrive, purge or edit.
    pub kind: String,
    /// running, done, failed or interrupted.
    pub status: String,
    /// Who started it (the JWT `sub`).
    pub actor: String,
    #[schema(value_type = Object)]
    pub filter: Value,
    /// Dead letters it took so far.
    pub matched: i64,
    /// Of those, how many it has sent (redrive, edit) or deleted (purge).
    pub done: i64,
    /// How the messages ended: applied, duplicate, dead_lettered (with reasons), pending,
    /// purged; for an edit, the corrected message and what became of the original.
    #[schema(value_type = Object)]
    pub outcome: Value,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The audit record of the job.
    pub audit_id: i64,
}

/// Records `action` as started and opens its job. Both or neither.
pub async fn open(
    pool: &PgPool,
    kind: &str,
    action: &HandAction,
    filter: &Value,
) -> Result<Job, ApiError> {
    let mut tx = pool.begin().await?;
    let audit_id = audit::start(&mut tx, action).await?;
    let job: Job = sqlx::query_as(
        "INSERT INTO dlq_jobs (id, audit_id, kind, actor, filter, status)
         VALUES ($1, $2, $3, $4, $5, 'running')
         RETURNING id, kind, status, actor, filter, matched, done, outcome,
                   started_at, updated_at, finished_at, audit_id",
    )
    .bind(Uuid::now_v7())
    .bind(audit_id)
    .bind(kind)
    .bind(&action.actor)
    .bind(filter)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(job)
}

/// How far a job got.
pub async fn progress(
    pool: &PgPool,
    id: Uuid,
    matched: u64,
    done: u64,
    outcome: &Value,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE dlq_jobs SET matched = $2, done = $3, outcome = $4, updated_at = now()
         WHERE id = $1 AND status = 'running'",
    )
    .bind(id)
    .bind(i64::try_from(matched).unwrap_or(i64::MAX))
    .bind(i64::try_from(done).unwrap_or(i64::MAX))
    .bind(outcome)
    .execute(pool)
    .await?;
    Ok(())
}

/// Ends a job with `status` and its outcome, and finishes its audit record with the same
/// and the ids of the messages it took (`named`).
pub async fn end(
    pool: &PgPool,
    job: &Job,
    status: &str,
    outcome: &Value,
    named: &[String],
) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE dlq_jobs SET status = $2, outcome = $3, updated_at = now(), finished_at = now()
         WHERE id = $1",
    )
    .bind(job.id)
    .bind(status)
    .bind(outcome)
    .execute(&mut *tx)
    .await?;
    audit::finish(&mut tx, job.audit_id, status, outcome, named).await?;
    tx.commit().await
}

const SELECT: &str = "SELECT id, kind,
        CASE WHEN status = 'running' AND updated_at < now() - make_interval(secs => $1)
             THEN 'interrupted' ELSE status END AS status,
        actor, filter, matched, done, outcome, started_at, updated_at, finished_at, audit_id
    FROM dlq_jobs";

/// One job, if there is one with that id.
pub async fn load(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<Job>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} WHERE id = $2")))
        .bind(STALE_AFTER_SECS as f64)
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The newest `limit` jobs.
pub async fn recent(pool: &PgPool, limit: i64) -> sqlx::Result<Vec<Job>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT} ORDER BY started_at DESC LIMIT $2"
    )))
    .bind(STALE_AFTER_SECS as f64)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// What changed between two payloads: one entry per path whose value differs
/// (`{"path": "/items/0/quantity", "before": 0, "after": 1}`), objects compared key by
/// key.
pub fn diff(from: &Value, to: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    walk("", from, to, &mut out);
    out
}

fn walk(path: &str, from: &Value, to: &Value, out: &mut Vec<Value>) {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = format!("{path}/{}", k.replace('~', "~0").replace('/', "~1"));
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => walk(&p, x, y, out),
                    (x, y) => out.push(json!({"path": p, "before": x, "after": y})),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                walk(&format!("{path}/{i}"), x, y, out);
            }
        }
        (a, b) if a != b => out.push(
            json!({"path": if path.is_empty() { "/" } else { path }, "before": a, "after": b}),
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_names_each_changed_path() {
        let from = json!({"order_id": "o1", "items": [{"sku": "A", "quantity": 0}], "note": "x"});
        let to = json!({"order_id": "o1", "items": [{"sku": "A", "quantity": 2}], "total": 5});
        assert_eq!(
            diff(&from, &to),
            vec![
                json!({"path": "/items/0/quantity", "before": 0, "after": 2}),
                json!({"path": "/note", "before": "x", "after": null}),
                json!({"path": "/total", "before": null, "after": 5}),
            ]
        );
        assert!(diff(&from, &from).is_empty());
    }
}
