//! Reading a dead-letter queue from end to end without emptying it and without holding it
//! in memory.
//!
//! A scan consumes the queue on a channel of its own and acks nothing it does not take:
//! every message it passes over stays unacked, and the channel's close returns them all to
//! the queue, in their order. A quorum queue hands a consumer at most its prefetch of
//! unacked messages (2,000 when the prefetch is 0, "unlimited"), and a prefetch is at most
//! 65,535, so a scan opens one consumer per [`PER_CONSUMER`] messages the queue holds, each
//! with that prefetch, and reads them all as one stream. Unacked messages returned by a closing channel do not count towards a
//! delivery limit. The scan stops after as many messages as the queue held when it began
//! (messages dead-lettered meanwhile wait for the next scan), or when none has come for
//! [`IDLE`]. Each message is looked at once and dropped, so memory holds what the caller
//! keeps (counts, a page, the ids of what it took), never the queue.
//!
//! Two scans of one queue at once would each see part of it, so a service runs its scans
//! one at a time: a [`Scan`] holds the service's scan lock, and a broker connection of its
//! own, until it is closed.

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::SelectAll;
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio::sync::MutexGuard;

use super::OperatorState;

/// Unacked messages one consumer of a scan may hold (its prefetch).
const PER_CONSUMER: u16 = 50_000;

/// How long closing a scan waits for its messages to be back in the queue, and how often
/// it looks.
const RETURNED_WITHIN: Duration = Duration::from_secs(10);
const RETURN_POLL: Duration = Duration::from_millis(50);

/// How long a scan waits for the next message before it takes the queue as read.
const IDLE: Duration = Duration::from_secs(5);

/// A scan of the service's dead-letter queue in progress; [`Scan::close`] returns what it
/// did not take.
pub struct Scan<'a> {
    _one_at_a_time: MutexGuard<'a, ()>,
    conn: Connection,
    channel: Channel,
    consumers: SelectAll<Consumer>,
    tags: Vec<String>,
    /// Messages in the queue when the scan began.
    pub total: u32,
    seen: u32,
    /// Messages the scan's user acked (took off the queue for good).
    taken: u32,
    queue: String,
}

/// The ready messages of `queue` now (a passive declare: exact, unlike the management
/// API's figures).
pub async fn depth(channel: &Channel, queue: &str) -> lapin::Result<u32> {
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(q.message_count())
}

impl<'a> Scan<'a> {
    /// Starts reading the dead-letter queue of `state`'s service (`what` names the
    /// connection in the broker's console), once no other scan of it runs.
    pub async fn open(state: &'a OperatorState, what: &str) -> lapin::Result<Self> {
        let one_at_a_time = state.scan_lock().lock().await;
        let conn = state.connect(what).await?;
        let queue = state.dead_letter_queue();
        let queue = queue.as_str();
        let channel = conn.create_channel().await?;
        let total = depth(&channel, queue).await?;
        channel
            .basic_qos(PER_CONSUMER, BasicQosOptions::default())
            .await?;
        let (mut consumers, mut tags) = (SelectAll::new(), Vec::new());
        for _ in 0..total.div_ceil(u32::from(PER_CONSUMER)).max(1) {
            let tag = format!("dlq-scan-{}", uuid::Uuid::now_v7());
            let consumer = channel
                .basic_consume(
                    queue.into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            consumers.push(consumer);
            tags.push(tag);
        }
        Ok(Scan {
            _one_at_a_time: one_at_a_time,
            conn,
            channel,
            consumers,
            tags,
            total,
            seen: 0,
            taken: 0,
            queue: queue.to_owned(),
        })
    }

    /// The next message, or `None` once the queue's messages of the start were all seen.
    pub async fn next(&mut self) -> lapin::Result<Option<Delivery>> {
        if self.seen >= self.total {
            return Ok(None);
        }
        match tokio::time::timeout(IDLE, self.consumers.next()).await {
            Ok(Some(delivery)) => {
                self.seen += 1;
                delivery.map(Some)
            }
            Ok(None) | Err(_) => Ok(None),
        }
    }

    /// The scan's broker connection, to publish on.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Messages seen so far.
    pub fn seen(&self) -> u32 {
        self.seen
    }

    /// Counts `n` messages the caller acked: they do not come back.
    pub fn taken(&mut self, n: u32) {
        self.taken += n;
    }

    /// Ends the scan: every message seen and not acked goes back to the queue, and is back
    /// when this returns.
    ///
    /// The consumers are cancelled first, and each cancel answered: a quorum queue applies
    /// a consumer's acks and its cancel in order and answers the cancel once applied, so
    /// every message acked before is settled for good when the channel's close returns the
    /// rest. Closed at once, acks still on their way were seen lost and their messages
    /// returned too (a redriven message then stood in the queue a second time).
    pub async fn close(self) {
        for tag in &self.tags {
            let cancelled = self
                .channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
            if let Err(e) = cancelled {
                tracing::warn!(error = %e, "could not cancel a scan's consumer");
            }
        }
        // Closing the channel is what returns the messages; one that is already gone has
        // returned them.
        let _ = self.channel.close(200, "scan done".into()).await;
        // A quorum queue returns a closed channel's messages after the close is answered;
        // a scan that started before they are all back would miss them. Waits until the
        // queue holds again what it held less what was taken (bounded: a message someone
        // else removed meanwhile never comes back).
        let want = self.total.saturating_sub(self.taken);
        let Ok(probe) = self.conn.create_channel().await else {
            messaging::amqp::close_quietly(&self.conn, "scan done").await;
            return;
        };
        let deadline = tokio::time::Instant::now() + RETURNED_WITHIN;
        while tokio::time::Instant::now() < deadline {
            match depth(&probe, &self.queue).await {
                Ok(n) if n < want => tokio::time::sleep(RETURN_POLL).await,
                _ => break,
            }
        }
        let _ = probe.close(200, "returns seen".into()).await;
        messaging::amqp::close_quietly(&self.conn, "scan done").await;
    }
}
