//! Configuration from environment variables, with local-development defaults.
//!
//! Shared by all services: `SAGA_AMQP_URL`, `SAGA_DB_POOL_SIZE`, `SAGA_PREFETCH`,
//! `SAGA_CONCURRENCY`, `SAGA_RELAY_BATCH`, `SAGA_RELAY_POLL_MS`, `SAGA_RELAY_LEASE_MS`,
//! `SAGA_CONFIRM_TIMEOUT_MS`,
//! `SAGA_OUTBOX_RETENTION_SECS`, `SAGA_INBOX_RETENTION_SECS`, `SAGA_PURGE_INTERVAL_SECS`,
//! `SAGA_SHUTDOWN_GRACE_SECS`, `SAGA_SHUTDOWN_DELAY_SECS`.
//! Per service (`<S>` = `ORDER`, `INVENTORY` or `PAYMENT`): `SAGA_<S>_DATABASE_URL`,
//! `SAGA_<S>_DATABASE_PASSWORD`, `SAGA_<S>_AMQP_URL` (overrides `SAGA_AMQP_URL`, for a
//! broker user of its own), `SAGA_<S>_AMQP_PASSWORD`, `SAGA_<S>_HTTP_ADDR`.
//! Every variable may instead be given as `<NAME>_FILE`, the path of a file holding the
//! value (a mounted secret). docs/configuration.md lists them all.

pub mod validate;

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use messaging::consumer::ConsumerSettings;
use messaging::housekeeping::Retention;
use messaging::outbox::RelaySettings;

use crate::drain::DrainSettings;

pub(crate) const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/saga?heartbeat=10";

/// The value of `name`, or else the contents of the file `name_FILE` names (a mounted
/// secret; one trailing newline is dropped), or `None`.
pub(crate) fn env_value(name: &str) -> anyhow::Result<Option<String>> {
    if let Ok(v) = std::env::var(name)
        && !v.trim().is_empty()
    {
        return Ok(Some(v));
    }
    let file_var = format!("{name}_FILE");
    match std::env::var(&file_var) {
        Ok(path) if !path.trim().is_empty() => {
            let text = std::fs::read_to_string(path.trim())
                .with_context(|| format!("{file_var}={path:?} cannot be read"))?;
            Ok(Some(text.strip_suffix('\n').unwrap_or(&text).to_owned()))
        }
        _ => Ok(None),
    }
}

/// Reads `name` (or `name_FILE`), or `default` when neither is set.
pub fn env_or(name: &str, default: &str) -> anyhow::Result<String> {
    Ok(env_value(name)?.unwrap_or_else(|| default.to_owned()))
}

/// Puts `password` into the user-info of `url` (`scheme://user:password@host/…`).
pub(crate) fn with_password(url: &str, password: &str) -> anyhow::Result<String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| anyhow::anyhow!("{} is not a URL", messaging::amqp::redact_url(url)))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (user, host) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => (userinfo.split(':').next().unwrap_or(""), host),
        None => ("", authority),
    };
    let encoded: String = password
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    Ok(format!("{scheme}://{user}:{encoded}@{host}{path}"))
}

/// A connection URL from `url_var` (default `default`), with the password replaced by
/// `password_var` (or `password_var_FILE`) when that is set.
fn url_with_secret(url_var: &str, password_var: &str, default: &str) -> anyhow::Result<String> {
    let url = env_or(url_var, default)?;
    match env_value(password_var)? {
        // A list of broker nodes shares one password.
        Some(pw) => messaging::amqp_nodes::try_map_each(&url, |u| with_password(u, &pw)),
        None => Ok(url),
    }
}

/// Reads and parses `name`, or `default` when it is unset; a value that does not parse is
/// an error naming the variable.
pub fn env_parse<T: FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match env_value(name)? {
        Some(v) => v
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("environment variable {name}={v:?} is invalid: {e}")),
        None => Ok(default),
    }
}

/// Reads `name` as a number of seconds (decimals allowed, `0.5`), or `default` when it is
/// unset; a value that does not parse, or is negative or not finite, is an error naming
/// the variable.
pub fn env_secs(name: &str, default: Duration) -> anyhow::Result<Duration> {
    let secs: f64 = env_parse(name, default.as_secs_f64())?;
    Duration::try_from_secs_f64(secs).map_err(|_| {
        anyhow::anyhow!(
            "environment variable {name}={secs} is invalid: it must be a number of seconds, 0 or more"
        )
    })
}

/// `SAGA_SHUTDOWN_GRACE_SECS` (20) and `SAGA_SHUTDOWN_DELAY_SECS` (0).
fn drain_from_env() -> anyhow::Result<DrainSettings> {
    let defaults = DrainSettings::default();
    Ok(DrainSettings {
        grace: env_secs("SAGA_SHUTDOWN_GRACE_SECS", defaults.grace)?,
        delay: env_secs("SAGA_SHUTDOWN_DELAY_SECS", defaults.delay)?,
    })
}

/// Settings every service process has.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The service name: its input queue, its inbox consumer name and its producer name.
    pub name: &'static str,
    pub http_addr: SocketAddr,
    pub database_url: String,
    pub amqp_url: String,
    pub db_pool_size: u32,
    pub consumer: ConsumerSettings,
    pub relay: RelaySettings,
    pub retention: Retention,
    /// What SIGTERM and Ctrl-C do (`SAGA_SHUTDOWN_*`).
    pub drain: DrainSettings,
}

impl ServiceConfig {
    /// `prefix` is `ORDER`, `INVENTORY` or `PAYMENT`; the defaults are the contract's.
    pub fn from_env(
        name: &'static str,
        prefix: &str,
        default_port: u16,
        default_database: &str,
    ) -> anyhow::Result<Self> {
        let http_addr = env_parse(
            &format!("SAGA_{prefix}_HTTP_ADDR"),
            SocketAddr::from(([127, 0, 0, 1], default_port)),
        )?;
        let database_url = url_with_secret(
            &format!("SAGA_{prefix}_DATABASE_URL"),
            &format!("SAGA_{prefix}_DATABASE_PASSWORD"),
            &format!("postgres://postgres@127.0.0.1:5432/{default_database}"),
        )?;
        let confirm_timeout =
            Duration::from_millis(env_parse("SAGA_CONFIRM_TIMEOUT_MS", 10_000u64)?);
        let defaults = ConsumerSettings::default();
        let concurrency: usize = env_parse("SAGA_CONCURRENCY", defaults.concurrency)?;
        let relay_workers: usize = env_parse("SAGA_RELAY_WORKERS", 4usize)?;
        let config = ServiceConfig {
            name,
            http_addr,
            database_url,
            amqp_url: url_with_secret(
                &format!("SAGA_{prefix}_AMQP_URL"),
                &format!("SAGA_{prefix}_AMQP_PASSWORD"),
                &env_or("SAGA_AMQP_URL", DEFAULT_AMQP_URL)?,
            )?,
            // Batches of deliveries, the relay loops, HTTP and housekeeping each need a
            // connection at once (see `validate::pool_needed`).
            db_pool_size: env_parse(
                "SAGA_DB_POOL_SIZE",
                validate::pool_needed(concurrency, relay_workers),
            )?,
            consumer: ConsumerSettings {
                prefetch: env_parse("SAGA_PREFETCH", defaults.prefetch)?,
                concurrency,
                batch_size: env_parse("SAGA_BATCH_SIZE", defaults.batch_size)?,
                confirm_timeout,
            },
            relay: RelaySettings {
                batch_size: env_parse("SAGA_RELAY_BATCH", 512)?,
                poll_interval: Duration::from_millis(env_parse("SAGA_RELAY_POLL_MS", 1000u64)?),
                workers: relay_workers,
                confirm_timeout,
                lease: Duration::from_millis(env_parse(
                    "SAGA_RELAY_LEASE_MS",
                    RelaySettings::default().lease.as_millis() as u64,
                )?),
                ..RelaySettings::default()
            },
            retention: Retention {
                outbox: Duration::from_secs(env_parse(
                    "SAGA_OUTBOX_RETENTION_SECS",
                    7 * 24 * 3600u64,
                )?),
                inbox: Duration::from_secs(env_parse(
                    "SAGA_INBOX_RETENTION_SECS",
                    7 * 24 * 3600u64,
                )?),
                purge_every: Duration::from_secs(env_parse("SAGA_PURGE_INTERVAL_SECS", 60u64)?),
                ..Retention::default()
            },
            drain: drain_from_env()?,
        };
        validate::check(&config)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_put_into_the_url_encoded() {
        assert_eq!(
            with_password(
                "amqp://order-svc:old@rabbit:5672/saga?heartbeat=10",
                "p@ss/w:rd"
            )
            .unwrap(),
            "amqp://order-svc:p%40ss%2Fw%3Ard@rabbit:5672/saga?heartbeat=10"
        );
        assert_eq!(
            with_password("postgres://127.0.0.1:5432/orders", "x").unwrap(),
            "postgres://:x@127.0.0.1:5432/orders"
        );
    }

    #[test]
    fn a_file_variable_supplies_a_secret() {
        let path = std::env::temp_dir().join(format!("saga-secret-{}", std::process::id()));
        std::fs::write(&path, "s3cret\n").unwrap();
        // SAFETY: this test is the only one touching these variable names.
        unsafe { std::env::set_var("SAGA_TEST_SECRET_FILE", &path) };
        assert_eq!(
            env_value("SAGA_TEST_SECRET").unwrap().as_deref(),
            Some("s3cret")
        );
        unsafe { std::env::remove_var("SAGA_TEST_SECRET_FILE") };
        assert_eq!(env_value("SAGA_TEST_SECRET").unwrap(), None);
        let _ = std::fs::remove_file(path);
    }
}
