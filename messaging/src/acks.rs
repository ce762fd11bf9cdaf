//! Settling deliveries with the broker: after commit, several at once where that is safe.
//!
//! A batch of deliveries handled in one transaction is acked with one `basic.ack` with
//! `multiple` set on its highest delivery tag, which the broker reads as "every delivery up
//! to this tag". That is only right when no other delivery below that tag is still being
//! handled (by another batch, or held while the database is away): the ledger knows which
//! tags are outstanding and falls back to one ack per delivery otherwise. Every ack, reject
//! and the decision behind it go through one lock, so a multiple ack can never overtake the
//! single ack of a delivery it covers (which the broker would refuse by closing the
//! channel: "unknown delivery tag").

use std::collections::BTreeSet;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use tokio::sync::Mutex;

/// The delivery tags of one channel not yet acked or rejected.
#[derive(Debug, Default)]
pub(crate) struct AckLedger {
    outstanding: Mutex<BTreeSet<u64>>,
}

impl AckLedger {
    /// Records deliveries as they arrive, before any of them can be settled.
    pub(crate) async fn received(&self, deliveries: &[Delivery]) {
        let mut outstanding = self.outstanding.lock().await;
        outstanding.extend(deliveries.iter().map(|d| d.delivery_tag));
    }

    /// Acks `deliveries` (all handled and committed): one multiple ack when nothing below
    /// the highest tag is outstanding but them, one ack each otherwise.
    pub(crate) async fn ack(&self, deliveries: &[&Delivery]) {
        let Some(highest) = deliveries.iter().max_by_key(|d| d.delivery_tag) else {
            return;
        };
        let mut outstanding = self.outstanding.lock().await;
        for d in deliveries {
            outstanding.remove(&d.delivery_tag);
        }
        let alone = outstanding.range(..highest.delivery_tag).next().is_none();
        let result = if deliveries.len() > 1 && alone {
            metrics::counter!("saga_consumer_multiple_acks_total").increment(1);
            highest
                .acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .map(|_| ())
        } else {
            let mut result = Ok(());
            for d in deliveries {
                if let Err(e) = d.acker.ack(BasicAckOptions::default()).await {
                    result = Err(e);
                }
            }
            result
        };
        if let Err(e) = result {
            // The channel is gone: the broker will redeliver, and the inbox makes that a no-op.
            tracing::warn!(error = %e, "ack failed; the messages will be redelivered");
        }
    }

    /// Rejects `delivery` back to its queue.
    pub(crate) async fn requeue(&self, delivery: &Delivery) {
        let mut outstanding = self.outstanding.lock().await;
        outstanding.remove(&delivery.delivery_tag);
        if let Err(e) = delivery
            .acker
            .reject(BasicRejectOptions { requeue: true })
            .await
        {
            // The channel is gone: the broker requeues the delivery with it.
            tracing::warn!(error = %e, "reject failed; the message will be redelivered");
        }
    }
}
