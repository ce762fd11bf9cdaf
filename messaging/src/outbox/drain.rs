//! The relay's drain at shutdown: once no writer of its process hands it rows any more, its
//! loops publish what is still queued ([`OutboxRelay::publish_queued`]), and then what was
//! published is recorded sent and what was not is given back: its lease is cleared, so that
//! another replica's relay claims it at its next look instead of when the lease ends
//! ([`OutboxRelay::finish_drain`]).

use std::time::Instant;

use crate::publisher::ConfirmedPublisher;

use super::handover::{Handover, give_back};
use super::relay::{OutboxRelay, RelayError};

impl OutboxRelay {
    /// Publishes what is handed over until the queue is empty or publishing fails (what is
    /// left is given back at the end of the drain). Returns how many rows were confirmed.
    pub(super) async fn publish_queued(
        &self,
        handover: &Handover,
        publisher: &ConfirmedPublisher,
        batch: usize,
    ) -> usize {
        let mut published = 0;
        loop {
            let rows = handover.take(batch);
            if rows.is_empty() {
                return published;
            }
            match self.publish_handed(handover, publisher, rows).await {
                Ok(sent) => published += sent,
                Err(e) => {
                    if let RelayError::Publish {
                        claimed, failed, ..
                    } = &e
                    {
                        published += claimed - failed;
                    }
                    tracing::warn!(relay = %self.name, error = %e, "publishing the handed-over rows failed while draining; the rest is given back");
                    return published;
                }
            }
        }
    }

    /// The end of a drain: records sent what was published and no commit recorded, and
    /// gives back what was handed over and not published (the link was down, or broke).
    pub(super) async fn finish_drain(
        &self,
        handover: &Handover,
        published: usize,
        started: Instant,
    ) {
        if let Err(e) = self.record_sent(handover).await {
            tracing::warn!(relay = %self.name, error = %e, "published rows not recorded sent at shutdown; they will be published again");
        }
        let unpublished = handover.take_unpublished();
        let given_back = match give_back(&self.pool, &unpublished).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(relay = %self.name, error = %e, rows = unpublished.len(), "outbox rows not given back; they are claimed when their lease ends");
                0
            }
        };
        tracing::info!(
            relay = %self.name,
            published,
            given_back,
            drain_ms = started.elapsed().as_millis() as u64,
            "outbox relay drained: the rows handed to it published, or given back for any relay to claim"
        );
    }
}
