//! Draining: what a service does between SIGTERM (or Ctrl-C) and its exit, in this order,
//! and the bound on it ([`crate::Application::run_until_stopped`] runs it).
//!
//! 1. Readiness answers 503 at once (`/healthz/ready` and `/healthz`, `"status":
//!    "draining"`), so that load balancers stop sending. The listener keeps accepting for
//!    `SAGA_SHUTDOWN_DELAY_SECS`, for those that have not noticed yet.
//! 2. Meanwhile the consumer cancels its subscription (no new deliveries), gives what it
//!    received and did not start back to the queue at once (for the other replicas), and
//!    finishes the batches it holds, committing and acking them; the timers (deadline
//!    sweep, housekeeping, sampling) stop.
//! 3. After the delay the listener stops accepting; the requests in flight are answered.
//! 4. Once nothing in the process writes outbox rows any more, the relay publishes the
//!    rows handed to it and records them sent, and gives back any it could not publish
//!    (their lease cleared), so another replica's relay claims them at its next look.
//! 5. The connections close and the process exits with status 0.
//!
//! The whole drain is bounded by `SAGA_SHUTDOWN_GRACE_SECS`: past it the process exits
//! anyway, and nothing is lost either: what it had not acked returns to the queue with its
//! connection, and outbox rows still leased to it are claimed when the lease ends.

use std::future::Future;
use std::time::{Duration, Instant};

/// How a service drains (read from the environment with the rest of the configuration,
/// [`crate::config`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DrainSettings {
    /// `SAGA_SHUTDOWN_GRACE_SECS`: the longest a drain takes; then the process exits
    /// anyway. Shorter than Kubernetes' default grace period (30 s).
    pub grace: Duration,
    /// `SAGA_SHUTDOWN_DELAY_SECS`: how long the HTTP listener keeps accepting after
    /// readiness turned 503, for load balancers to notice.
    pub delay: Duration,
}

impl Default for DrainSettings {
    fn default() -> Self {
        DrainSettings {
            grace: Duration::from_secs(20),
            delay: Duration::ZERO,
        }
    }
}

/// A drain under way: it logs each step with the time since the signal.
pub(crate) struct Drain {
    started: Instant,
    grace: Duration,
}

impl Drain {
    pub(crate) fn begin(settings: &DrainSettings) -> Drain {
        tracing::info!(
            grace_s = settings.grace.as_secs_f64(),
            delay_s = settings.delay.as_secs_f64(),
            "draining: readiness answers 503; the consumer stops taking deliveries"
        );
        Drain {
            started: Instant::now(),
            grace: settings.grace,
        }
    }

    /// Logs one step done.
    pub(crate) fn step(&self, what: &str) {
        tracing::info!(after_ms = self.elapsed_ms(), "drain: {what}");
    }

    /// Runs the drain's `steps` within the grace period; past it, gives up on them.
    pub(crate) async fn within_grace(&self, steps: impl Future<Output = ()>) {
        let left = self.grace.saturating_sub(self.started.elapsed());
        match tokio::time::timeout(left, steps).await {
            Ok(()) => tracing::info!(drain_ms = self.elapsed_ms(), "drained; exiting"),
            Err(_) => tracing::warn!(
                grace_s = self.grace.as_secs_f64(),
                "the grace period is over; exiting with the drain unfinished: unacked \
                 deliveries return to the queue, leased outbox rows are claimed when their \
                 lease ends"
            ),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}
