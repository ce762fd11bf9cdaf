//! Database bootstrap: create the service's database if it is missing, open a pool, and
//! migrate it (messaging tables first, then the service's own).

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, PgPool};

/// Opens a pool on `url`, creating the database first if needed, and runs `migrator`.
pub async fn connect_and_migrate(
    url: &str,
    pool_size: u32,
    migrator: &Migrator,
) -> anyhow::Result<PgPool> {
    let lock_timeout: u64 = crate::config::env_parse("SAGA_DB_LOCK_TIMEOUT_MS", 5_000)?;
    let statement_timeout: u64 = crate::config::env_parse("SAGA_DB_STATEMENT_TIMEOUT_MS", 30_000)?;
    // Bounded waits: a handler stuck behind a lock fails (and is retried later through the
    // retry queues) instead of holding its delivery and connection indefinitely.
    let parse = |url: &str| {
        PgConnectOptions::from_str(url)
            .with_context(|| format!("invalid database URL {}", messaging::amqp::redact_url(url)))
            .map(|o| {
                let o = o.options([
                    ("lock_timeout", format!("{lock_timeout}ms")),
                    ("statement_timeout", format!("{statement_timeout}ms")),
                ]);
                if plain_on_loopback(url, std::env::var_os("PGSSLMODE").is_some(), o.get_host()) {
                    o.ssl_mode(PgSslMode::Disable)
                } else {
                    o
                }
            })
    };
    // Several servers (URLs, or hosts of one URL): a primary and its standbys (see
    // db_failover); start on the primary.
    let candidates = crate::db_failover::candidate_urls(url)?
        .iter()
        .map(|u| parse(u))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let primary = match candidates.len() {
        0 | 1 => 0,
        _ => crate::db_failover::wait_for_primary(&candidates, Duration::from_secs(60))
            .await
            .context("none of the database servers accepts writes")?,
    };
    let options = candidates
        .get(primary)
        .cloned()
        .context("no database URL configured")?;
    ensure_database(&options).await.with_context(|| {
        format!(
            "cannot reach PostgreSQL at {}",
            messaging::amqp::redact_url(url)
        )
    })?;
    let pool = PgPoolOptions::new()
        .max_connections(pool_size.max(2))
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .context("opening the database pool")?;
    if candidates.len() > 1 {
        tokio::spawn(crate::db_failover::follow_primary(
            pool.clone(),
            candidates,
            primary,
        ));
    }
    migrator
        .run(&pool)
        .await
        .context("migrating the database")?;
    Ok(pool)
}

/// Whether a connection goes without TLS although nobody asked for that: a server on this
/// machine (a loopback address, `localhost` or a Unix socket) with no `sslmode` in the URL
/// or `PGSSLMODE`. PostgreSQL's own default (`prefer`) would negotiate TLS there, which
/// protects nothing on loopback and costs both ends an encryption on every round trip. Any
/// `sslmode` given is kept as it is.
fn plain_on_loopback(url: &str, sslmode_in_env: bool, host: &str) -> bool {
    let asked = url.contains("sslmode=") || sslmode_in_env;
    let local = host == "localhost"
        || host.starts_with('/')
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    !asked && local
}

/// Creates the database named in `options` unless it exists. Two processes starting at once
/// may both try: the loser's "already exists" error is expected and ignored.
async fn ensure_database(options: &PgConnectOptions) -> anyhow::Result<()> {
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let mut admin = options.clone().database("postgres").connect().await?;
    let exists = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS "exists!""#,
        name,
    )
    .fetch_one(&mut admin)
    .await?;
    if !exists {
        // Not a checked macro: the database's name is part of the statement's text.
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
        {
            let duplicate = e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "42P04" || c == "23505");
            if !duplicate {
                return Err(e.into());
            }
        }
    }
    admin.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::plain_on_loopback;

    #[test]
    fn only_a_local_server_nobody_chose_tls_for_goes_without_it() {
        let plain = |url: &str, host: &str| plain_on_loopback(url, false, host);
        assert!(plain("postgres://u@127.0.0.1/orders", "127.0.0.1"));
        assert!(plain("postgres://u@localhost/orders", "localhost"));
        assert!(plain("postgres://u@[::1]/orders", "::1"));
        assert!(plain(
            "postgres:///orders?host=/run/postgresql",
            "/run/postgresql"
        ));
        assert!(!plain("postgres://u@db.internal/orders", "db.internal"));
        assert!(!plain("postgres://u@10.0.0.5/orders", "10.0.0.5"));
        assert!(!plain(
            "postgres://u@127.0.0.1/orders?sslmode=require",
            "127.0.0.1"
        ));
        assert!(!plain(
            "postgres://u@127.0.0.1/orders?sslmode=prefer",
            "127.0.0.1"
        ));
        assert!(!plain_on_loopback(
            "postgres://u@127.0.0.1/orders",
            true,
            "127.0.0.1"
        ));
    }
}
