//! Several PostgreSQL servers for one database: a primary and its hot standbys.
//!
//! sqlx takes one host per pool, so `SAGA_<S>_DATABASE_URL` may instead list one URL per
//! server, comma-separated (`postgres://…@db-a:5432/orders,postgres://…@db-b:5432/orders`).
//! The pool connects to the one that accepts writes (`pg_is_in_recovery()` is false), and a
//! watcher follows a promotion: when the pool's server stops answering or turns out to be a
//! standby, it looks for the primary among the URLs again and points the pool's new
//! connections there. Connections to the old server fail and are dropped by the pool's
//! check on acquire; handlers that failed meanwhile are retried through the retry queues,
//! and their transactions either committed on the old primary (and, with synchronous
//! replication, on the standby too: the inbox then turns the retry into a no-op) or not at
//! all.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgExecutor, PgPool};

/// How often the watcher asks the pool's server whether it is still the primary.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long one server may take to answer before it counts as gone.
const ANSWER_WITHIN: Duration = Duration::from_secs(3);

/// Whether the server is a standby (it then refuses writes).
async fn in_recovery<'c>(conn: impl PgExecutor<'c>) -> sqlx::Result<bool> {
    sqlx::query_scalar!(r#"SELECT pg_is_in_recovery() AS "in_recovery!""#)
        .fetch_one(conn)
        .await
}

/// Whether the server at `options` answers and accepts writes.
async fn is_primary(options: &PgConnectOptions) -> bool {
    let check = async {
        // The maintenance database: the service's own may not exist yet on a fresh server.
        let mut conn = options.clone().database("postgres").connect().await.ok()?;
        let in_recovery = in_recovery(&mut conn).await.ok()?;
        if let Err(e) = conn.close().await {
            tracing::debug!(error = %e, "closing the probe connection failed");
        }
        Some(!in_recovery)
    };
    matches!(
        tokio::time::timeout(ANSWER_WITHIN, check).await,
        Ok(Some(true))
    )
}

/// The index of the first of `candidates` that is a primary, if any is right now.
pub(crate) async fn find_primary(candidates: &[PgConnectOptions]) -> Option<usize> {
    for (i, options) in candidates.iter().enumerate() {
        if is_primary(options).await {
            return Some(i);
        }
    }
    None
}

/// Waits (up to `deadline`) for one of `candidates` to be a primary: at start-up the
/// primary may be being promoted.
pub(crate) async fn wait_for_primary(
    candidates: &[PgConnectOptions],
    deadline: Duration,
) -> Option<usize> {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(i) = find_primary(candidates).await {
            return Some(i);
        }
        if tokio::time::Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

/// Keeps `pool` on the primary among `candidates` (starting at `current`) until the pool
/// is closed.
pub(crate) async fn follow_primary(
    pool: PgPool,
    candidates: Vec<PgConnectOptions>,
    mut current: usize,
) {
    while !pool.is_closed() {
        tokio::time::sleep(CHECK_EVERY).await;
        let healthy = tokio::time::timeout(ANSWER_WITHIN, in_recovery(&pool)).await;
        if matches!(healthy, Ok(Ok(false))) {
            continue;
        }
        let Some(found) = find_primary(&candidates).await else {
            tracing::warn!(
                server = current,
                "no database server accepts writes; waiting for a primary"
            );
            continue;
        };
        if found != current {
            tracing::warn!(
                from = %describe(&candidates[current]),
                to = %describe(&candidates[found]),
                "the database primary moved; new connections go to the new one"
            );
            pool.set_connect_options(candidates[found].clone());
            current = found;
        }
    }
}

fn describe(options: &PgConnectOptions) -> String {
    format!("{}:{}", options.get_host(), options.get_port())
}
