//! The saga's work in plain SQL and AMQP, with no project code in the way, as `bench`'s
//! ceilings and latency floor and `bench-path` measure it: persistent messages of the
//! benchmark's size, published in windows with confirms, and the minimal handler
//! transaction in a scratch database of the benchmark's own.

use sqlx::PgPool;
use uuid::Uuid;

use sagactl::context::CliError;

/// The size of a benchmark's messages (and of the outbox rows of its transactions).
pub(crate) const BODY_BYTES: usize = 400;
/// Messages published before their confirms are awaited, and the consumers' prefetch.
pub(crate) const WINDOW: usize = 256;

/// The benchmark's channels and connections close after their work is measured: a failed
/// close changes no figure, so it is only logged.
pub(crate) fn close_quietly(closed: lapin::Result<()>) {
    if let Err(e) = closed {
        tracing::debug!(error = %e, "closing a benchmark channel failed");
    }
}

/// A scratch database `name` with the benchmark's own minimal tables (no trigger) and, for
/// the diagnostics, the project's messaging tables, all empty.
pub(crate) async fn scratch_database(
    server: &str,
    name: &str,
    pool_size: u32,
) -> anyhow::Result<PgPool> {
    let url = database_url(server, name)?;
    let pool = platform::db::connect_and_migrate(&url, pool_size + 2, &messaging::MIGRATOR).await?;
    for statement in [
        "CREATE TABLE IF NOT EXISTS bench_counter (id INT PRIMARY KEY, n BIGINT NOT NULL)",
        "INSERT INTO bench_counter SELECT g, 0 FROM generate_series(0, 1023) g ON CONFLICT DO NOTHING",
        "CREATE TABLE IF NOT EXISTS bench_inbox (consumer TEXT NOT NULL, message_id UUID NOT NULL, \
         handled_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (consumer, message_id))",
        "CREATE TABLE IF NOT EXISTS bench_outbox (id BIGSERIAL PRIMARY KEY, message_id UUID NOT NULL, \
         routing_key TEXT NOT NULL, body BYTEA NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        "TRUNCATE outbox, inbox, bench_inbox, bench_outbox",
    ] {
        sqlx::query(statement).execute(&pool).await?;
    }
    Ok(pool)
}

/// A handler's minimal transaction: insert an inbox row, update one row, insert an outbox
/// row, commit.
pub(crate) async fn minimal_transaction(pool: &PgPool, row: i32, body: &[u8]) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO bench_inbox (consumer, message_id) VALUES ('bench', $1)")
        .bind(Uuid::new_v4())
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE bench_counter SET n = n + 1 WHERE id = $1")
        .bind(row)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO bench_outbox (message_id, routing_key, body) VALUES ($1, 'bench', $2)",
    )
    .bind(Uuid::new_v4())
    .bind(body)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// `server` (a PostgreSQL URL naming no database) with database `name`; its query
/// (`?sslmode=...`) is kept.
pub(crate) fn database_url(server: &str, name: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(server).map_err(|e| {
        CliError::Refused(format!("--database-server {server:?} is not a URL: {e}"))
    })?;
    url.set_path("");
    url.path_segments_mut()
        .map_err(|()| CliError::Refused(format!("--database-server {server:?} names no host")))?
        .push(name);
    Ok(url.into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_database_url_keeps_the_server_and_its_options() {
        assert_eq!(
            super::database_url("postgres://postgres@127.0.0.1:5432/", "saga_bench").unwrap(),
            "postgres://postgres@127.0.0.1:5432/saga_bench"
        );
        assert_eq!(
            super::database_url("postgres://u@db?sslmode=require", "orders").unwrap(),
            "postgres://u@db/orders?sslmode=require"
        );
    }
}
