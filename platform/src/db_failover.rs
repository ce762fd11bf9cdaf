//! Several PostgreSQL servers for one database: a primary and its hot standbys.
//!
//! sqlx takes one host per pool, so `SAGA_<S>_DATABASE_URL` may instead list one URL per
//! server, comma-separated (`postgres://…@db-a:5432/orders,postgres://…@db-b:5432/orders`),
//! or name several hosts in one URL the way libpq does
//! (`postgres://…@db-a:5432,db-b:5432/orders?target_session_attrs=read-write`, what an HA
//! manager such as pg_auto_failover hands out): [`candidate_urls`] expands either into one
//! URL per server. The pool connects to the one that accepts writes (`pg_is_in_recovery()` is false), and a
//! watcher follows a promotion: when the pool's server stops answering or turns out to be a
//! standby, it looks for the primary among the URLs again and points the pool's new
//! connections there. Connections to the old server fail and are dropped by the pool's
//! check on acquire; handlers that failed meanwhile are retried through the retry queues,
//! and their transactions either committed on the old primary (and, with synchronous
//! replication, on the standby too: the inbox then turns the retry into a no-op) or not at
//! all.

use std::time::Duration;

use anyhow::{Context, bail};
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

/// The servers a database setting names, one URL each: the setting's comma-separated URLs,
/// with a URL naming several hosts (libpq's multi-host form, `postgres://u@h1:p1,h2:p2/db`)
/// expanded into one URL per host, in order. Each keeps the user, password, database and
/// query of the URL it came from; a host without a port keeps none (the driver's default,
/// 5432 or `PGPORT`, applies, as with libpq). `target_session_attrs` is taken out: the
/// services write, so they always use the server that accepts writes, and only the values
/// that ask for that (`read-write`, `primary`) or leave it open (`any`) are accepted.
pub fn candidate_urls(setting: &str) -> anyhow::Result<Vec<String>> {
    let mut urls: Vec<String> = Vec::new();
    for piece in setting.split(',').map(str::trim) {
        match urls.last_mut() {
            _ if piece.contains("://") => urls.push(piece.to_owned()),
            // The URL before has no path yet: this piece is its next host.
            Some(url) if in_host_list(url) => {
                url.push(',');
                url.push_str(piece);
            }
            _ if piece.is_empty() => {}
            _ => bail!(
                "database setting {}: {piece:?} is neither a URL (postgres://…) nor a host of one",
                messaging::amqp::redact_url(setting)
            ),
        }
    }
    let mut out = Vec::new();
    for url in &urls {
        out.extend(expand_hosts(url).with_context(|| {
            format!("invalid database URL {}", messaging::amqp::redact_url(url))
        })?);
    }
    Ok(out)
}

/// Whether `url` ends in its list of hosts (nothing after them yet).
fn in_host_list(url: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(_, rest)| !rest.contains(['/', '?']))
}

/// One URL per host of `url`.
fn expand_hosts(url: &str) -> anyhow::Result<Vec<String>> {
    let (scheme, rest) = url
        .split_once("://")
        .context("it has no scheme (postgres://…)")?;
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
        None => (String::new(), authority),
    };
    let (path, query) = tail.split_at(tail.find('?').unwrap_or(tail.len()));
    let query = without_target_session_attrs(query.trim_start_matches('?'))?;
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    if !hosts.contains(',') {
        // One host, or none (the Unix socket, `postgres:///orders?host=/run/postgresql`):
        // the driver checks it.
        return Ok(vec![format!("{scheme}://{userinfo}{hosts}{path}{query}")]);
    }
    hosts
        .split(',')
        .map(|host| {
            let host = host_and_port(host.trim())?;
            Ok(format!("{scheme}://{userinfo}{host}{path}{query}"))
        })
        .collect()
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`, checked; blank hosts and bad ports fail.
fn host_and_port(host: &str) -> anyhow::Result<&str> {
    let (name, port) = if let Some(v6) = host.strip_prefix('[') {
        let (_, after) = v6
            .split_once(']')
            .with_context(|| format!("host {host:?} has no closing ']'"))?;
        match after {
            "" => (host, None),
            _ => (
                &host[..host.len() - after.len()],
                Some(
                    after
                        .strip_prefix(':')
                        .with_context(|| format!("host {host:?}: ':' expected after ']'"))?,
                ),
            ),
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    if name.is_empty() || name == "[]" {
        bail!("a host of the list is empty");
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => bail!("host {name:?} has an invalid port {port:?}"),
        }
    }
    Ok(host)
}

/// The query without `target_session_attrs`, whose value must suit a writer.
fn without_target_session_attrs(query: &str) -> anyhow::Result<String> {
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("target_session_attrs", value)) => match value {
                "read-write" | "primary" | "any" => {}
                _ => bail!(
                    "target_session_attrs={value} is not supported: the service writes, so \
                     it always uses the server that accepts writes (read-write, primary or any)"
                ),
            },
            _ => kept.push(pair),
        }
    }
    Ok(kept.join("&"))
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn urls(setting: &str) -> Vec<String> {
        candidate_urls(setting).unwrap_or_else(|e| panic!("{setting}: {e:#}"))
    }

    fn error(setting: &str) -> String {
        match candidate_urls(setting) {
            Ok(urls) => panic!("{setting} was accepted as {urls:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn a_single_url_is_kept_as_it_is() {
        assert_eq!(
            urls("postgres://u:pw@db:5433/orders?sslmode=require"),
            ["postgres://u:pw@db:5433/orders?sslmode=require"]
        );
        assert_eq!(urls("postgres:///orders"), ["postgres:///orders"]);
    }

    #[test]
    fn a_list_of_urls_gives_one_candidate_each() {
        assert_eq!(
            urls("postgres://u@a:5432/orders, postgres://u@b:5433/orders,"),
            ["postgres://u@a:5432/orders", "postgres://u@b:5433/orders"]
        );
    }

    #[test]
    fn a_multi_host_url_gives_one_url_per_host_with_its_own_port() {
        assert_eq!(
            urls(
                "postgres://app:s3cr%40t@10.0.0.1:6001,10.0.0.2:6002,db-c/orders\
                 ?target_session_attrs=read-write&sslmode=prefer&application_name=x"
            ),
            [
                "postgres://app:s3cr%40t@10.0.0.1:6001/orders?sslmode=prefer&application_name=x",
                "postgres://app:s3cr%40t@10.0.0.2:6002/orders?sslmode=prefer&application_name=x",
                "postgres://app:s3cr%40t@db-c/orders?sslmode=prefer&application_name=x",
            ]
        );
        // What `pg_autoctl show uri` prints: no user, the attribute alone.
        assert_eq!(
            urls(
                "postgres://127.0.0.1:6001,127.0.0.1:6002/postgres?target_session_attrs=read-write"
            ),
            [
                "postgres://127.0.0.1:6001/postgres",
                "postgres://127.0.0.1:6002/postgres"
            ]
        );
    }

    #[test]
    fn each_candidate_parses_with_its_host_port_user_and_database() {
        let got: Vec<PgConnectOptions> =
            urls("postgresql://app:pw@[::1]:6001,db-b/payments?target_session_attrs=primary")
                .iter()
                .map(|u| PgConnectOptions::from_str(u).unwrap_or_else(|e| panic!("{u}: {e}")))
                .collect();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].get_host(), got[0].get_port()), ("[::1]", 6001));
        assert_eq!(got[1].get_host(), "db-b");
        for o in &got {
            assert_eq!(o.get_username(), "app");
            assert_eq!(o.get_database(), Some("payments"));
        }
    }

    #[test]
    fn target_session_attrs_any_is_accepted_and_a_standby_is_refused() {
        assert_eq!(
            urls("postgres://a,b/db?target_session_attrs=any"),
            ["postgres://a/db", "postgres://b/db"]
        );
        let e = error("postgres://a,b/db?target_session_attrs=read-only");
        assert!(
            e.contains("target_session_attrs=read-only is not supported"),
            "{e}"
        );
    }

    #[test]
    fn bad_hosts_and_ports_are_errors_that_hide_the_password() {
        for (setting, expected) in [
            (
                "postgres://u:hidden@a:5432,,b/db",
                "a host of the list is empty",
            ),
            (
                "postgres://u:hidden@a:5432,b:http/db",
                "invalid port \"http\"",
            ),
            ("postgres://u:hidden@a:70000,b/db", "invalid port \"70000\""),
            ("postgres://u:hidden@a:0,b/db", "invalid port \"0\""),
            ("postgres://u:hidden@[::1,b/db", "no closing ']'"),
            ("postgres://u:hidden@a,/db", "a host of the list is empty"),
        ] {
            let e = error(setting);
            assert!(e.contains(expected), "{setting}: {e}");
            assert!(
                !e.contains("hidden"),
                "{setting}: the password shows in {e}"
            );
        }
        for setting in ["db-a:5432,postgres://u@b/db", "postgres://u@a/db,b/db"] {
            let e = error(setting);
            assert!(e.contains("is neither a URL"), "{setting}: {e}");
        }
    }
}
