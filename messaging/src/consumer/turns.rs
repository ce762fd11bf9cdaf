//! Turns: how the consumer runs. A broker session consumes the input queue with a prefetch;
//! each batch waits for a free worker slot and that slot's turn (an advisory lock that the
//! same slot of every replica takes), takes whatever has arrived meanwhile, and runs as a
//! task of its own. The session reconnects with backoff when the link breaks. On shutdown
//! it drains: it cancels its subscription (`basic.cancel`), gives what it received and did
//! not start back to the queue at once (`basic.nack`, requeued) for the other replicas, lets
//! the batches in flight finish and ack, and only then closes.

use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use lapin::Connection;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acks::AckLedger;
use crate::amqp::{self, Backoff};
use crate::parking::ParkingPublisher;

use super::batch::Turn;
use super::{EventConsumer, Handler};

/// A worker slot, given back when its batch is done (or its task ends any other way).
struct Slot {
    slot: i32,
    back: tokio::sync::mpsc::UnboundedSender<i32>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The loop that takes slots may be gone (shutdown): nothing to give back to.
        let _ = self.back.send(self.slot);
    }
}

impl<H: Handler> EventConsumer<H> {
    /// Consumes until `shutdown`, reconnecting with backoff whenever the broker link breaks.
    /// On shutdown it stops taking deliveries, gives back those it had not started, lets
    /// the handlers in flight finish and ack, then closes.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        let tracker = TaskTracker::new();
        while !shutdown.is_cancelled() {
            match self
                .consume_session(&shutdown, &tracker, &mut backoff)
                .await
            {
                Ok(()) => {}
                Err(e) => {
                    self.inner.link.set(false);
                    tracing::warn!(
                        queue = self.inner.topology.input_queue(),
                        error = %e,
                        url = %amqp::redact_url(&self.inner.amqp_url),
                        "broker link lost; reconnecting"
                    );
                    if !amqp::pause(backoff.next_delay(), &shutdown).await {
                        break;
                    }
                }
            }
        }
        self.inner.link.set(false);
        tracker.close();
        tracker.wait().await;
    }

    /// Begins the transaction a batch in worker `slot` will run in, and waits in it for
    /// the slot's turn: the same slot of every replica of this service (every consumer of
    /// its queue on its database) takes one transaction-scoped advisory lock. So replicas
    /// take turns, as many batches run at once as one process would run, and while one
    /// replica commits, the deliveries of the others wait for their next batch: a batch is
    /// as full, and a delivery costs as few transactions, with two replicas as with one.
    /// `None` when the database does not answer: the batch then begins its own
    /// transaction, and its failure is handled there as any other.
    async fn take_turn(&self, slot: i32) -> Option<Turn> {
        // BEGIN and the lock in one round trip: a simple query of two statements, with
        // nothing in it but numbers this process computed.
        let begin = format!(
            "BEGIN; SELECT pg_advisory_xact_lock({}, {slot})",
            self.inner.turn_key
        );
        match self.inner.pool.begin_with(sqlx::AssertSqlSafe(begin)).await {
            Ok(tx) => Some(tx),
            Err(e) => {
                tracing::debug!(error = %e, "no turn for the batch; it begins its own transaction");
                None
            }
        }
    }

    async fn consume_session(
        &self,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
        backoff: &mut Backoff,
    ) -> anyhow::Result<()> {
        let inner = &self.inner;
        // Shared with the parking publisher, which reopens its channel on it.
        let conn: Arc<Connection> = Arc::new(
            amqp::connect(
                &inner.amqp_url,
                &format!("{} consumer", self.consumer_name()),
            )
            .await?,
        );
        let channel = conn.create_channel().await?;
        inner.topology.declare(&channel).await?;
        channel
            .basic_qos(inner.settings.prefetch, BasicQosOptions::default())
            .await?;
        let publisher =
            Arc::new(ParkingPublisher::open(conn.clone(), inner.settings.confirm_timeout).await?);
        let tag = format!("{}-{}", self.consumer_name(), std::process::id());
        let mut deliveries = channel
            .basic_consume(
                inner.topology.input_queue().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        inner.link.set(true);
        backoff.reset();
        tracing::info!(queue = inner.topology.input_queue(), "consuming");
        // Worker slots: a batch runs in one, and takes that slot's turn (see `take_turn`).
        let (slot_back, mut free_slots) = tokio::sync::mpsc::unbounded_channel();
        for slot in 0..inner.settings.concurrency.max(1) {
            let _ = slot_back.send(slot as i32);
        }
        let (acks, ack_sender) = AckLedger::new();
        let acks = Arc::new(acks);
        let ack_sender = tokio::spawn(ack_sender.run());
        // What the stream said after the last delivery a batch took (an end or an error),
        // to act on before waiting for more.
        let mut carried: Option<Option<lapin::Result<Delivery>>> = None;
        // Received and not started when shutdown came: given back at once.
        let mut unstarted: Vec<Delivery> = Vec::new();
        let result = loop {
            // Paused: take nothing new; what is prefetched stays unacked with the broker.
            if inner.gate.is_paused() && !inner.gate.wait_open(shutdown).await {
                break Ok(());
            }
            let next = match carried.take() {
                Some(next) => next,
                None => tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break Ok(()),
                    next = deliveries.next() => next,
                },
            };
            let first = match next {
                None => break Err(anyhow::anyhow!("the broker ended the consumer")),
                Some(Err(e)) => break Err(e.into()),
                Some(Ok(delivery)) => delivery,
            };
            let slot = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    unstarted.push(first);
                    break Ok(());
                }
                slot = free_slots.recv() => match slot {
                    Some(slot) => slot,
                    None => {
                        unstarted.push(first);
                        break Ok(());
                    }
                },
            };
            let slot = Slot {
                slot,
                back: slot_back.clone(),
            };
            let turn = if inner.settings.batch_size > 1 {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => {
                        unstarted.push(first);
                        break Ok(());
                    }
                    turn = self.take_turn(slot.slot) => turn,
                }
            } else {
                None
            };
            // Whatever arrived while this waited for a worker and its turn joins its batch.
            let mut batch = vec![first];
            while batch.len() < inner.settings.batch_size.max(1) {
                match deliveries.next().now_or_never() {
                    None => break,
                    Some(Some(Ok(delivery))) => batch.push(delivery),
                    Some(end_or_error) => {
                        carried = Some(end_or_error);
                        break;
                    }
                }
            }
            acks.received(&batch);
            let (this, publisher, shutdown, acks) = (
                self.clone(),
                publisher.clone(),
                shutdown.clone(),
                acks.clone(),
            );
            tracker.spawn(async move {
                this.handle_batch(batch, turn, &publisher, &shutdown, &acks)
                    .await;
                drop(slot);
            });
        };
        if let Some(Some(Ok(delivery))) = carried {
            unstarted.push(delivery);
        }
        if shutdown.is_cancelled() {
            let released = stop_consuming(&channel, &tag, &mut deliveries, unstarted, &acks).await;
            tracing::info!(
                queue = inner.topology.input_queue(),
                released,
                batches_in_flight = tracker.len(),
                "consumer cancelled; deliveries not started given back to the queue; finishing the batches in flight"
            );
            // Let the handlers in flight commit and ack on this channel before closing it:
            // once they are done the ledger is dropped, and its sender ends when every ack
            // it was given is written.
            tracker.close();
            tracker.wait().await;
            drop(acks);
            if let Err(e) = ack_sender.await {
                tracing::warn!(error = %e, "the ack sender failed; unacked messages come again");
            }
            amqp::close_quietly(&conn, "shutting down").await;
            tracing::info!(
                queue = inner.topology.input_queue(),
                "consumer drained: its batches in flight done and settled, its connection closed"
            );
        }
        inner.link.set(false);
        result
    }
}

/// Ends the subscription for a drain and gives back, at once, every delivery received and
/// not started: those the loop held (`unstarted`) and those the broker pushed before the
/// cancel took effect, which the stream still buffers (it ends once the broker confirmed
/// the cancel). Given back with `basic.nack` (requeued), they go to another replica now
/// rather than when this channel closes, after the batches in flight. Returns how many.
async fn stop_consuming(
    channel: &Channel,
    tag: &str,
    deliveries: &mut Consumer,
    mut unstarted: Vec<Delivery>,
    acks: &AckLedger,
) -> usize {
    if let Err(e) = channel
        .basic_cancel(tag.into(), BasicCancelOptions::default())
        .await
    {
        tracing::debug!(error = %e, "consumer cancel failed; what it holds returns with the channel");
    }
    while let Some(Some(next)) = deliveries.next().now_or_never() {
        match next {
            Ok(delivery) => unstarted.push(delivery),
            // The channel is gone: the broker returns what was not acked by itself.
            Err(_) => break,
        }
    }
    acks.release(&unstarted);
    unstarted.len()
}

/// The advisory-lock key of a queue's turns: FNV-1a of its name, the same in every
/// process that consumes it.
pub(super) fn turn_key(queue: &str) -> i32 {
    let hash = queue.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    i32::from_ne_bytes(hash.to_ne_bytes())
}
