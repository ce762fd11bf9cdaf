//! Parking a failed message: publishing its retry or dead-letter copy without ever spinning.
//!
//! The original delivery is acked only once its copy is confirmed. When the copy cannot be
//! published (the retry queue is gone, the broker refuses it, the channel closed), the
//! consumer keeps holding the delivery and tries again after a growing delay, reopening the
//! confirm channel on its connection when a channel error closed it. Only when the copy
//! still cannot be placed after [`PATIENCE`] is the delivery given back with `basic.reject`
//! (requeue): a return, after a delay, that every RabbitMQ version counts toward the quorum
//! queue's delivery limit (up to 4.2 every return counts; from 4.3 `basic.reject` does and
//! `basic.nack` does not), so a message whose copy can never be placed ends in the DLQ with
//! reason `delivery_limit` instead of looping forever. A failed message is never given back
//! with `basic.nack` (only a drain gives back what it never started, [`crate::acks`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::Connection;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::amqp::{self, Backoff};
use crate::publisher::{ConfirmedPublisher, OutgoingMessage, PublishError};

/// How long a delivery is held while its copy cannot be published, before it is rejected.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// Why a copy was not placed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ParkError {
    /// The broker kept refusing it for [`PATIENCE`].
    #[error("the copy could not be published: {0}")]
    Refused(PublishError),
    /// The connection is gone: the broker returns the delivery by itself.
    #[error("the broker connection is gone")]
    ConnectionLost,
    #[error("shutting down")]
    ShuttingDown,
}

/// A confirm channel on one connection that is reopened after a channel error.
pub(crate) struct ParkingPublisher {
    conn: Arc<Connection>,
    confirm_timeout: Duration,
    current: Mutex<ConfirmedPublisher>,
}

impl ParkingPublisher {
    /// Opens a confirm channel on `conn`, the consumer's connection.
    pub(crate) async fn open(
        conn: Arc<Connection>,
        confirm_timeout: Duration,
    ) -> lapin::Result<Self> {
        let first = ConfirmedPublisher::open(&conn, confirm_timeout).await?;
        Ok(ParkingPublisher {
            conn,
            confirm_timeout,
            current: Mutex::new(first),
        })
    }

    /// A usable confirm channel: the current one, or a new one when it was closed.
    async fn usable(&self) -> Result<ConfirmedPublisher, ParkError> {
        let mut current = self.current.lock().await;
        if !current.is_usable() {
            if !self.conn.status().connected() {
                return Err(ParkError::ConnectionLost);
            }
            match ConfirmedPublisher::open(&self.conn, self.confirm_timeout).await {
                Ok(fresh) => {
                    tracing::info!("reopened the consumer's publishing channel");
                    *current = fresh;
                }
                Err(e) => return Err(ParkError::Refused(PublishError::Channel(e))),
            }
        }
        Ok(current.clone())
    }

    /// Publishes `copy`, retrying with backoff (1 s doubling to 10 s) for up to `patience`.
    pub(crate) async fn park(
        &self,
        copy: &OutgoingMessage,
        patience: Duration,
        shutdown: &CancellationToken,
    ) -> Result<(), ParkError> {
        let started = Instant::now();
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        loop {
            let error = match self.usable().await {
                Ok(publisher) => match publisher.publish(copy).await {
                    Ok(()) => return Ok(()),
                    Err(e) => ParkError::Refused(e),
                },
                Err(ParkError::ConnectionLost) => return Err(ParkError::ConnectionLost),
                Err(e) => e,
            };
            tracing::warn!(error = %error, exchange = %copy.exchange, routing_key = %copy.routing_key, "could not park a failed message; holding it");
            metrics::counter!("saga_park_failures_total").increment(1);
            if started.elapsed() >= patience {
                return Err(error);
            }
            if !amqp::pause(backoff.next_delay(), shutdown).await {
                return Err(ParkError::ShuttingDown);
            }
        }
    }
}
