//! Connecting to the broker, with the backoff every component uses while it is away.

use std::time::Duration;

use lapin::Connection;
use rand::Rng;

/// Opens a connection named for the RabbitMQ console (`order-svc consumer`, …).
///
/// `urls` is one broker URL or several separated by commas, one per node of a cluster
/// (see [`crate::amqp_nodes`]): the nodes are tried in turn, each call starting one node
/// further on, so a component's connections spread over the cluster and a reconnect after
/// losing a node does not keep knocking on that node first.
pub async fn connect(urls: &str, name: &str) -> lapin::Result<Connection> {
    crate::amqp_nodes::connect_any(urls, name).await
}

/// How long a close of a connection waits for the broker's answer.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// Closes a connection when its owner is done with it (`reason` goes to the broker's
/// log): a connection already gone is logged, not an error, and a close the broker leaves
/// unanswered for [`CLOSE_WITHIN`] is given up, since the socket closes with the process
/// and neither a shutdown nor a command's end may wait on it (a close was once seen never
/// to complete).
pub async fn close_quietly(conn: &Connection, reason: &str) {
    match tokio::time::timeout(CLOSE_WITHIN, conn.close(200, reason.into())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "the broker connection was already closed"),
        Err(_) => tracing::warn!("the broker did not answer the close of a connection in 5 s"),
    }
}

/// Capped exponential backoff with full jitter, so replicas that lost the broker together
/// do not come back in lockstep.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    attempt: u32,
    base: Duration,
    cap: Duration,
}

impl Backoff {
    pub(crate) fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            attempt: 0,
            base,
            cap,
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let millis = exp.as_millis().max(1) as u64;
        Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(200), Duration::from_secs(10))
    }
}

/// The URL (or each URL of a comma-separated list) with its password replaced, for logs
/// and error messages.
pub fn redact_url(url: &str) -> String {
    crate::amqp_nodes::map_each(url, crate::amqp_nodes::redact_one)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..40 {
            assert!(b.next_delay() <= Duration::from_secs(1));
        }
    }

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact_url("amqp://svc:s3cret@127.0.0.1:5672/saga"),
            "amqp://svc:***@127.0.0.1:5672/saga"
        );
        assert_eq!(redact_url("amqp://127.0.0.1/saga"), "amqp://127.0.0.1/saga");
    }
}

/// Whether a component currently holds a working broker link; read by `/healthz`.
#[derive(Debug, Clone, Default)]
pub struct LinkState(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl LinkState {
    pub fn set(&self, up: bool) {
        self.0.store(up, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_up(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Sleeps for `delay` unless `shutdown` fires first; returns false when shutting down.
pub async fn pause(delay: Duration, shutdown: &tokio_util::sync::CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}
