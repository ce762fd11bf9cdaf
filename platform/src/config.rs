//! Configuration from environment variables, with local-development defaults.
//!
//! Shared by all services: `SAGA_AMQP_URL`, `SAGA_DB_POOL_SIZE`, `SAGA_PREFETCH`,
//! `SAGA_CONCURRENCY`, `SAGA_RELAY_BATCH`, `SAGA_RELAY_POLL_MS`, `SAGA_CONFIRM_TIMEOUT_MS`,
//! `SAGA_OUTBOX_RETENTION_SECS`, `SAGA_INBOX_RETENTION_SECS`, `SAGA_PURGE_INTERVAL_SECS`.
//! Per service (`<S>` = `ORDER`, `INVENTORY` or `PAYMENT`): `SAGA_<S>_DATABASE_URL`,
//! `SAGA_<S>_HTTP_ADDR`. docs/configuration.md lists them all.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use events::consumer::ConsumerSettings;
use events::housekeeping::Retention;
use events::outbox::RelaySettings;

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/saga?heartbeat=10";

/// Reads `name`, or `default` when it is unset or empty.
pub fn env_or(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => default.to_owned(),
    }
}

/// Reads and parses `name`, or `default` when it is unset; a value that does not parse is
/// an error naming the variable.
pub fn env_parse<T: FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("environment variable {name}={v:?} is invalid: {e}")),
        _ => Ok(default),
    }
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
        let database_url = env_or(
            &format!("SAGA_{prefix}_DATABASE_URL"),
            &format!("postgres://postgres@127.0.0.1:5432/{default_database}"),
        );
        let confirm_timeout =
            Duration::from_millis(env_parse("SAGA_CONFIRM_TIMEOUT_MS", 10_000u64)?);
        let concurrency: usize = env_parse("SAGA_CONCURRENCY", 8)?;
        Ok::<_, anyhow::Error>(ServiceConfig {
            name,
            http_addr,
            database_url,
            amqp_url: env_or("SAGA_AMQP_URL", DEFAULT_AMQP_URL),
            // Handlers, the relay, its listener, HTTP and housekeeping each need a connection.
            db_pool_size: env_parse("SAGA_DB_POOL_SIZE", (concurrency as u32) + 4)?,
            consumer: ConsumerSettings {
                prefetch: env_parse("SAGA_PREFETCH", 64)?,
                concurrency,
                confirm_timeout,
            },
            relay: RelaySettings {
                batch_size: env_parse("SAGA_RELAY_BATCH", 256)?,
                poll_interval: Duration::from_millis(env_parse("SAGA_RELAY_POLL_MS", 1000u64)?),
                confirm_timeout,
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
        })
        .context("reading configuration from the environment")
    }
}
