//! The pause gate: while a consumer's database is unreachable, the consumer takes no new
//! deliveries and the ones it holds wait, neither retried nor dead-lettered nor returned.
//!
//! A handler that meets an unreachable database closes the gate and waits on it. One of the
//! waiting handlers probes the database with capped, jittered backoff; when it answers, the
//! gate opens and every held delivery is processed again. Holding (no ack, no nack) is what
//! keeps an outage of any length away from the queue's delivery limit: RabbitMQ counts a
//! returned message (every return up to 4.2, `basic.reject` from 4.3), never one that a
//! consumer keeps. If the channel dies meanwhile, the broker hands the held messages out
//! again once, and the inbox makes a second application impossible.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;

use crate::amqp::{self, Backoff};

/// Whether a consumer is paused, shared by its delivery loop and its handlers.
#[derive(Debug)]
pub(crate) struct PauseGate {
    paused: watch::Sender<bool>,
    /// Held by the one handler that probes; the others wait for the gate instead.
    prober: Mutex<()>,
}

impl Default for PauseGate {
    fn default() -> Self {
        PauseGate {
            paused: watch::Sender::new(false),
            prober: Mutex::new(()),
        }
    }
}

impl PauseGate {
    pub(crate) fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Waits until the gate is open; false when shutdown came first.
    pub(crate) async fn wait_open(&self, shutdown: &CancellationToken) -> bool {
        let mut rx = self.paused.subscribe();
        tokio::select! {
            _ = shutdown.cancelled() => false,
            open = rx.wait_for(|paused| !paused) => open.is_ok(),
        }
    }

    /// Closes the gate and returns once `pool` answers again (true), or at shutdown (false).
    pub(crate) async fn ride_out(&self, pool: &PgPool, shutdown: &CancellationToken) -> bool {
        if !self.is_paused() {
            tracing::warn!("database unreachable; pausing the consumer until it answers");
            metrics::gauge!("saga_consumer_paused").set(1.0);
        }
        self.paused.send_replace(true);
        let probing = tokio::select! {
            _ = shutdown.cancelled() => return false,
            // Another handler probes already; its answer opens the gate for everybody.
            open = self.wait_open_or_probe() => match open {
                Some(guard) => guard,
                None => return true,
            },
        };
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        loop {
            if database_answers(pool).await {
                tracing::info!("database answers again; resuming the consumer");
                metrics::gauge!("saga_consumer_paused").set(0.0);
                self.paused.send_replace(false);
                drop(probing);
                return true;
            }
            if !amqp::pause(backoff.next_delay(), shutdown).await {
                return false;
            }
        }
    }

    /// The probe lock when the gate is still closed once it is ours; `None` when the gate
    /// opened while we waited for it.
    async fn wait_open_or_probe(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        let guard = self.prober.lock().await;
        if self.is_paused() { Some(guard) } else { None }
    }
}

/// Whether the database answers a trivial query within two seconds.
pub async fn database_answers(pool: &PgPool) -> bool {
    tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query_scalar!("SELECT 1").fetch_one(pool),
    )
    .await
    .is_ok_and(|r| r.is_ok())
}
