//! Hands on the system: the durable record of every change made by hand (a stock
//! adjustment, a deposit, a cancellation, a dead-letter replay, an edited replay, a purge),
//! with who made it, when, what, and how it ended.
//!
//! The table (`audit_log`, migration 0003) is written only through this module, by the
//! code paths that carry those actions out, and its trigger refuses any change to a record
//! but the one that finishes a `running` one. Readers go through [`list`].

use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, LongString};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgConnection;

use crate::chunks::{STATEMENT_BYTES, by_size};
use crate::writes::Writes;

/// The AMQP header that names the operator behind a message published by hand (a stock
/// adjustment, a deposit). It is believed only from a broker user of the catalog's
/// operator, and recorded beside that user.
pub const OPERATOR_HEADER: &str = "x-saga-operator";

/// `props` naming `operator` in [`OPERATOR_HEADER`], beside the headers they have: what the
/// operator's tool sets on every event it publishes.
pub fn naming_operator(props: BasicProperties, operator: &str) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(
        OPERATOR_HEADER.into(),
        AMQPValue::LongString(LongString::from(operator.as_bytes())),
    );
    props.with_headers(headers)
}

/// The actions recorded, as `action` says them.
pub mod actions {
    pub const STOCK_ADJUSTMENT: &str = "stock_adjustment";
    pub const DEPOSIT: &str = "deposit";
    pub const CANCEL: &str = "cancel";
    pub const REPLAY: &str = "replay";
    pub const EDIT: &str = "edit";
    pub const PURGE: &str = "purge";
    /// Every action, for the filters that take one.
    pub const ALL: [&str; 6] = [STOCK_ADJUSTMENT, DEPOSIT, CANCEL, REPLAY, EDIT, PURGE];
}

/// The outcome of a record whose action has not ended yet.
pub const RUNNING: &str = "running";
/// The outcome of an operator's message that was applied.
pub const APPLIED: &str = "applied";
/// The outcome of an operator's message that was dead-lettered (its `result` says why).
pub const REJECTED: &str = "rejected";
/// The outcome of a request that was refused and changed nothing (its `result` says why).
pub const REFUSED: &str = "refused";

/// How the action reached the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Http,
    Amqp,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Http => "http",
            Via::Amqp => "amqp",
        }
    }
}

/// One action by hand, as it is recorded.
#[derive(Debug, Clone)]
pub struct HandAction {
    /// The JWT `sub` over HTTP; over AMQP the operator's name, or the broker user.
    pub actor: String,
    pub via: Via,
    /// Over AMQP: the broker-validated `user_id`.
    pub broker_user: Option<String>,
    /// One of [`actions`].
    pub action: &'static str,
    /// The ids it names (order, customer, SKU, message ids).
    pub subjects: Vec<String>,
    /// What was asked: the request, the filter, the payload, the diff.
    pub detail: Value,
}

/// Records `action` as ended with `outcome` (and `result`, what it did), in the caller's
/// transaction or connection. Returns the record's id.
pub async fn record(
    conn: &mut PgConnection,
    action: &HandAction,
    outcome: &str,
    result: Option<&Value>,
) -> sqlx::Result<i64> {
    insert(conn, action, outcome, result, true).await
}

/// Adds the records of `actions`, all ended with `outcome`, to `writes`: they are
/// inserted with the transaction's other writes, in the same round trip, and rolled back
/// with them. A consumer records so the operator's messages of a batch it applies.
pub fn record_with_writes(
    writes: &mut Writes,
    actions: &[&HandAction],
    outcome: &'static str,
) -> sqlx::Result<()> {
    if actions.is_empty() {
        return Ok(());
    }
    // Subjects travel as one JSON array per record: UNNEST flattens an array of arrays.
    let subjects: Vec<Value> = actions
        .iter()
        .map(|a| Value::from(a.subjects.clone()))
        .collect();
    let sizes: Vec<usize> = actions
        .iter()
        .zip(&subjects)
        .map(|(a, s)| a.actor.len() + a.detail.to_string().len() + s.to_string().len() + 64)
        .collect();
    for part in by_size(sizes.iter().copied(), STATEMENT_BYTES) {
        let bytes = sizes[part.clone()].iter().sum();
        let (rows, subjects) = (&actions[part.clone()], &subjects[part]);
        writes.add(
            "INSERT INTO audit_log (actor, via, broker_user, action, subjects, detail, outcome, finished_at)
             SELECT a.actor, a.via, a.broker_user, a.action,
                    ARRAY(SELECT s FROM jsonb_array_elements_text(a.subjects) WITH ORDINALITY AS e(s, n) ORDER BY n),
                    a.detail, $7, now()
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[])
                  AS a(actor, via, broker_user, action, subjects, detail)",
            bytes,
            |b| {
                b.add(rows.iter().map(|a| a.actor.clone()).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|a| a.via.as_str()).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|a| a.broker_user.clone()).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|a| a.action).collect::<Vec<_>>())?;
                b.add(subjects.to_vec())?;
                b.add(rows.iter().map(|a| a.detail.clone()).collect::<Vec<_>>())?;
                b.add(outcome)
            },
        )?;
    }
    Ok(())
}

/// Records `action` as started (outcome [`RUNNING`]); [`finish`] ends it.
pub async fn start(conn: &mut PgConnection, action: &HandAction) -> sqlx::Result<i64> {
    insert(conn, action, RUNNING, None, false).await
}

/// Ends the running record `id` with `outcome` and `result`, adding `named` (the ids it
/// came to name, such as the messages a redrive took) to its subjects. A record that is
/// not running any more is left as it is (and the trigger would refuse the change anyway).
pub async fn finish(
    conn: &mut PgConnection,
    id: i64,
    outcome: &str,
    result: &Value,
    named: &[String],
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE audit_log SET outcome = $2, result = $3, finished_at = now(),
                subjects = subjects || $4
         WHERE id = $1 AND outcome = 'running'",
    )
    .bind(id)
    .bind(outcome)
    .bind(result)
    .bind(named)
    .execute(conn)
    .await?;
    Ok(())
}

async fn insert(
    conn: &mut PgConnection,
    a: &HandAction,
    outcome: &str,
    result: Option<&Value>,
    finished: bool,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO audit_log (actor, via, broker_user, action, subjects, detail, outcome, result, finished_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, CASE WHEN $9 THEN now() END)
         RETURNING id",
    )
    .bind(&a.actor)
    .bind(a.via.as_str())
    .bind(&a.broker_user)
    .bind(a.action)
    .bind(&a.subjects)
    .bind(&a.detail)
    .bind(outcome)
    .bind(result)
    .bind(finished)
    .fetch_one(conn)
    .await
}

/// Which records [`list`] returns: every filter optional, newest first, `limit` of them
/// with an id below `before` (the cursor of the next page).
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub subject: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub before: Option<i64>,
    pub limit: i64,
}

/// One record as readers see it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditRecord {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub via: String,
    pub broker_user: Option<String>,
    pub action: String,
    pub subjects: Vec<String>,
    pub detail: Value,
    pub outcome: String,
    pub result: Option<Value>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The records `q` selects, newest first.
pub async fn list(conn: &mut PgConnection, q: &AuditQuery) -> sqlx::Result<Vec<AuditRecord>> {
    sqlx::query_as(
        "SELECT id, at, actor, via, broker_user, action, subjects, detail, outcome, result, finished_at
         FROM audit_log
         WHERE ($1::text IS NULL OR actor = $1)
           AND ($2::text IS NULL OR action = $2)
           AND ($3::text IS NULL OR subjects @> ARRAY[$3::text])
           AND ($4::timestamptz IS NULL OR at >= $4)
           AND ($5::timestamptz IS NULL OR at < $5)
           AND ($6::bigint IS NULL OR id < $6)
         ORDER BY id DESC
         LIMIT $7",
    )
    .bind(&q.actor)
    .bind(&q.action)
    .bind(&q.subject)
    .bind(q.since)
    .bind(q.until)
    .bind(q.before)
    .bind(q.limit)
    .fetch_all(conn)
    .await
}
