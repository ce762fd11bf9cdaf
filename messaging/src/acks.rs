//! Settling deliveries with the broker: after commit, several at once where that is safe.
//!
//! A batch of deliveries handled in one transaction is acked with one `basic.ack` with
//! `multiple` set on its highest delivery tag, which the broker reads as "every delivery up
//! to this tag". That is only right when no other delivery below that tag is still being
//! handled (by another batch, or held while the database is away): the ledger knows which
//! tags are outstanding and falls back to one ack per delivery otherwise.
//!
//! The decision is taken under a lock and the frames it calls for are queued, in that
//! order, for one task that sends them ([`AckSender`]). So a multiple ack can never overtake
//! the single ack of a delivery it covers (which the broker would answer by closing the
//! channel: "unknown delivery tag"), and a worker never waits for the frames to be written:
//! it is free for the next batch as soon as its transaction has committed.
//!
//! When a drain ends the subscription, the deliveries received and never started are given
//! back with `basic.nack` (requeued, [`AckLedger::release`]) through the same queue of
//! frames, so that another replica gets them at once instead of when the channel closes.

use std::collections::BTreeSet;
use std::sync::Mutex;

use lapin::Acker;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use tokio::sync::mpsc;

/// One frame to send for a delivery.
enum Settle {
    Ack {
        acker: Acker,
        multiple: bool,
    },
    Requeue(Acker),
    /// Never started: back to the queue with `basic.nack`.
    Release(Acker),
}

/// The delivery tags of one channel not yet acked or rejected.
pub(crate) struct AckLedger {
    outstanding: Mutex<BTreeSet<u64>>,
    queue: mpsc::UnboundedSender<Settle>,
}

/// Sends what the ledger decided, in order; ends once the ledger is dropped and every
/// queued frame is sent.
pub(crate) struct AckSender {
    queue: mpsc::UnboundedReceiver<Settle>,
}

impl AckLedger {
    pub(crate) fn new() -> (AckLedger, AckSender) {
        let (queue, waiting) = mpsc::unbounded_channel();
        let ledger = AckLedger {
            outstanding: Mutex::new(BTreeSet::new()),
            queue,
        };
        (ledger, AckSender { queue: waiting })
    }

    fn outstanding(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        // Each critical section is a few set operations and queue pushes that cannot
        // panic half-way, so a poisoned lock still holds a consistent set.
        self.outstanding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records deliveries as they arrive, before any of them can be settled.
    pub(crate) fn received(&self, deliveries: &[Delivery]) {
        self.outstanding()
            .extend(deliveries.iter().map(|d| d.delivery_tag));
    }

    /// Acks `deliveries` (all handled and committed): one multiple ack when nothing below
    /// the highest tag is outstanding but them, one ack each otherwise.
    pub(crate) fn ack(&self, deliveries: &[&Delivery]) {
        let Some(highest) = deliveries.iter().max_by_key(|d| d.delivery_tag) else {
            return;
        };
        let mut outstanding = self.outstanding();
        let tags: Vec<u64> = deliveries.iter().map(|d| d.delivery_tag).collect();
        if settle_together(&mut outstanding, &tags) {
            metrics::counter!("saga_consumer_multiple_acks_total").increment(1);
            self.send(Settle::Ack {
                acker: highest.acker.clone(),
                multiple: true,
            });
        } else {
            for d in deliveries {
                self.send(Settle::Ack {
                    acker: d.acker.clone(),
                    multiple: false,
                });
            }
        }
    }

    /// Rejects `delivery` back to its queue.
    pub(crate) fn requeue(&self, delivery: &Delivery) {
        let mut outstanding = self.outstanding();
        outstanding.remove(&delivery.delivery_tag);
        self.send(Settle::Requeue(delivery.acker.clone()));
    }

    /// Gives `deliveries`, received and never started, back to the queue at once
    /// (`basic.nack`, requeued): for another consumer of the queue, rather than when this
    /// channel closes. Their tags are above those of every batch in flight, so no multiple
    /// ack of a batch covers them.
    pub(crate) fn release(&self, deliveries: &[Delivery]) {
        let mut outstanding = self.outstanding();
        for delivery in deliveries {
            outstanding.remove(&delivery.delivery_tag);
            self.send(Settle::Release(delivery.acker.clone()));
        }
    }

    fn send(&self, settle: Settle) {
        if self.queue.send(settle).is_err() {
            // The sender task is gone with its channel: the broker redelivers what was not
            // acked, and the inbox makes that a no-op.
            tracing::warn!("ack after the channel closed; the message will be redelivered");
        }
    }
}

/// Removes `tags` from `outstanding`; whether one multiple ack on the highest of them
/// settles exactly them (several tags, and none below the highest still outstanding).
fn settle_together(outstanding: &mut BTreeSet<u64>, tags: &[u64]) -> bool {
    for tag in tags {
        outstanding.remove(tag);
    }
    let Some(highest) = tags.iter().max() else {
        return false;
    };
    tags.len() > 1 && outstanding.range(..*highest).next().is_none()
}

impl AckSender {
    pub(crate) async fn run(mut self) {
        while let Some(settle) = self.queue.recv().await {
            let result = match settle {
                Settle::Ack { acker, multiple } => acker.ack(BasicAckOptions { multiple }).await,
                Settle::Requeue(acker) => acker.reject(BasicRejectOptions { requeue: true }).await,
                Settle::Release(acker) => {
                    acker
                        .nack(BasicNackOptions {
                            multiple: false,
                            requeue: true,
                        })
                        .await
                }
            };
            if let Err(e) = result {
                // The channel is gone: the broker redelivers (or requeues) the delivery,
                // and the inbox makes a second application a no-op.
                tracing::warn!(error = %e, "settling a delivery failed; it will come again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multiple_ack_covers_a_batch_only_when_nothing_below_it_is_outstanding() {
        let mut outstanding: BTreeSet<u64> = (1..=10).collect();
        // 4..=6 are done, but 1..=3 are still being handled: one ack each.
        assert!(!settle_together(&mut outstanding, &[4, 5, 6]));
        // 1..=3 are done and nothing below 3 is left: one multiple ack on 3.
        assert!(settle_together(&mut outstanding, &[1, 2, 3]));
        // Above a delivery that is still held (7), later ones are acked one by one.
        assert!(!settle_together(&mut outstanding, &[8, 9]));
        assert_eq!(outstanding.iter().copied().collect::<Vec<_>>(), vec![7, 10]);
        // A single delivery never needs a multiple ack.
        assert!(!settle_together(&mut outstanding, &[7]));
        assert!(!settle_together(&mut outstanding, &[]));
        assert_eq!(outstanding.iter().copied().collect::<Vec<_>>(), vec![10]);
    }
}
