//! Configuration checked at start: a value out of range stops the service with a message
//! that names the variable, instead of a service that misbehaves later (an inbox that
//! forgets a message before its last retry can apply it twice; a pool smaller than what
//! runs at once times out under load).

use super::ServiceConfig;
use std::ops::RangeInclusive;

/// Database connections the HTTP API may hold at once besides the background work.
pub(crate) const HTTP_CONNECTIONS: u32 = 4;

/// The connections that may be in use at once: one per batch of deliveries being handled,
/// one per relay loop, housekeeping, the order deadline sweep, the consumer's pause probe,
/// the relay's record of rows sent, and [`HTTP_CONNECTIONS`] for HTTP.
pub(crate) fn pool_needed(concurrency: usize, relay_workers: usize) -> u32 {
    let background = concurrency.saturating_add(relay_workers).saturating_add(4);
    u32::try_from(background)
        .unwrap_or(u32::MAX)
        .saturating_add(HTTP_CONNECTIONS)
}

fn in_range<T: PartialOrd + std::fmt::Display>(
    name: &str,
    value: T,
    range: RangeInclusive<T>,
) -> anyhow::Result<()> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "environment variable {name}={value} is out of range: it must be {} to {}",
            range.start(),
            range.end()
        ))
    }
}

/// Checks every value of `config` against its range.
pub fn check(config: &ServiceConfig) -> anyhow::Result<()> {
    let c = &config.consumer;
    let r = &config.relay;
    in_range("SAGA_CONCURRENCY", c.concurrency, 1..=1024)?;
    in_range("SAGA_PREFETCH", c.prefetch, 1..=u16::MAX)?;
    in_range("SAGA_BATCH_SIZE", c.batch_size, 1..=1_000)?;
    in_range("SAGA_RELAY_BATCH", r.batch_size, 1..=10_000)?;
    in_range("SAGA_RELAY_WORKERS", r.workers, 1..=64)?;
    in_range(
        "SAGA_RELAY_POLL_MS",
        r.poll_interval.as_millis(),
        10..=600_000,
    )?;
    in_range("SAGA_RELAY_LEASE_MS", r.lease.as_millis(), 0..=600_000)?;
    in_range(
        "SAGA_CONFIRM_TIMEOUT_MS",
        c.confirm_timeout.as_millis(),
        100..=600_000,
    )?;
    let needed = pool_needed(c.concurrency, r.workers);
    in_range("SAGA_DB_POOL_SIZE", config.db_pool_size, needed..=10_000).map_err(|e| {
        e.context(format!(
            "the pool must hold what runs at once: SAGA_CONCURRENCY handlers, \
             SAGA_RELAY_WORKERS relay loops, 4 background tasks and {HTTP_CONNECTIONS} for HTTP"
        ))
    })?;
    let retention = &config.retention;
    let longest = messaging::retry::longest_retry_path();
    in_range(
        "SAGA_INBOX_RETENTION_SECS",
        retention.inbox.as_secs(),
        longest.as_secs()..=u64::MAX / 2,
    )
    .map_err(|e| {
        e.context(format!(
            "the inbox must remember a message longer than its longest retry path ({longest:?}), \
             or a late redelivery could apply it twice"
        ))
    })?;
    in_range(
        "SAGA_OUTBOX_RETENTION_SECS",
        retention.outbox.as_secs(),
        1..=u64::MAX / 2,
    )?;
    in_range(
        "SAGA_PURGE_INTERVAL_SECS",
        retention.purge_every.as_secs(),
        1..=86_400,
    )?;
    let drain = &config.drain;
    in_range(
        "SAGA_SHUTDOWN_GRACE_SECS",
        drain.grace.as_secs_f64(),
        0.1..=3_600.0,
    )?;
    in_range(
        "SAGA_SHUTDOWN_DELAY_SECS",
        drain.delay.as_secs_f64(),
        0.0..=drain.grace.as_secs_f64() / 2.0,
    )
    .map_err(|e| {
        e.context("the listener's delay must leave at least half the grace period to the drain")
    })?;
    Ok(())
}
