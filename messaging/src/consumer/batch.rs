//! The batch and the inbox: deliveries that arrived together are decoded, claimed in the
//! inbox and handled in ONE transaction with the outbox rows they emit, then acked with one
//! multiple ack. A batch that fails is handled again one delivery at a time, each claimed
//! first, so the failure lands on the message that caused it and a duplicate is known as
//! one before anything is decided.

use std::time::Instant;

use lapin::BasicProperties;
use lapin::message::Delivery;
use sqlx::{Postgres, Transaction};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::acks::AckLedger;
use crate::audit::{self, HandAction};
use crate::envelope::Envelope;
use crate::event::Event;
use crate::inbox::{self, InboxClaim};
use crate::outbox::{Emitter, OutboxRows};
use crate::parking::{PATIENCE, ParkError, ParkingPublisher};
use crate::retry::HandlerError;
use crate::writes::Writes;

use super::decode::delivery_span;
use super::{Disposition, EventConsumer, Handler, Handling, IncomingEvent};

/// The transaction a batch runs in, begun holding its worker slot's turn.
pub(super) type Turn = Transaction<'static, Postgres>;

/// How a batch claims its messages in the inbox (messaging::inbox).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// Among the batch's writes, with no round trip of its own: a message handled before
    /// fails the batch.
    WithWrites,
    /// With a statement of its own, before anything is decided: a message handled before
    /// is a duplicate.
    First,
}

/// A decoded delivery on its way into a batch, with the span its handling runs in.
struct Decoded<'d, E> {
    delivery: &'d Delivery,
    incoming: IncomingEvent<E>,
    span: tracing::Span,
}

impl<H: Handler> EventConsumer<H> {
    /// Decodes a message and, when it is valid, runs the handler in one transaction with the
    /// inbox claim and the outbox rows. Touches no broker: the caller settles the delivery.
    pub(crate) async fn process(
        &self,
        body: &[u8],
        properties: &BasicProperties,
        turn: Option<Turn>,
    ) -> Disposition {
        let incoming = match self.decode(body, properties) {
            Ok(incoming) => incoming,
            Err(disposition) => return disposition,
        };
        let started = Instant::now();
        let span = tracing::Span::current();
        let result = self
            .apply_batch(&[(&incoming, &span)], turn, Claim::First)
            .await
            .map(|claims| claims[0]);
        record_duration::<H::Event>(&incoming, started);
        self.classify(result, incoming.attempt).await
    }

    /// Handles `batch` in ONE transaction: claims every message in the inbox, runs the
    /// handler of each claimed one in order (each in its own span), writes every emitted
    /// event to the outbox, commits, and hands the events to the relay. Any failure rolls it all back.
    /// `turn`, when given, is the transaction to run in (it holds the batch's turn).
    async fn apply_batch(
        &self,
        batch: &[(&IncomingEvent<H::Event>, &tracing::Span)],
        turn: Option<Turn>,
        claim: Claim,
    ) -> Result<Vec<InboxClaim>, HandlerError> {
        let inner = &self.inner;
        let started = Instant::now();
        let mut tx = match turn {
            Some(tx) => tx,
            None => inner.pool.begin().await?,
        };
        let envelopes: Vec<&Envelope> = batch.iter().map(|(i, _)| &i.envelope).collect();
        let claims = match claim {
            Claim::First => inbox::claim_all(&mut tx, self.consumer_name(), &envelopes).await?,
            Claim::WithWrites => inbox::first_occurrences(&envelopes),
        };
        let claimed = started.elapsed();
        let claimed_batch: Vec<_> = batch
            .iter()
            .zip(&claims)
            .filter(|(_, claim)| **claim == InboxClaim::Claimed)
            .map(|(message, _)| message)
            .collect();
        let mut writes = Writes::default();
        if claim == Claim::WithWrites {
            let claimed_envelopes: Vec<&Envelope> =
                claimed_batch.iter().map(|(i, _)| &i.envelope).collect();
            inbox::claim_with_writes(&mut writes, self.consumer_name(), &claimed_envelopes)?;
        }
        // The operator's messages among the claimed ones are recorded with the claims: a
        // batch rolled back records nothing, and a duplicate is not claimed.
        let by_hand: Vec<&HandAction> = claimed_batch
            .iter()
            .filter_map(|(i, _)| i.by_hand.as_ref())
            .collect();
        audit::record_with_writes(&mut writes, &by_hand, audit::APPLIED)?;
        let mut emitters: Vec<Emitter> = claimed_batch
            .iter()
            .map(|(incoming, _)| {
                Emitter::new(self.consumer_name(), Some(incoming.envelope.message_id))
            })
            .collect();
        if !claimed_batch.is_empty() {
            let mut handlings: Vec<Handling<'_, H::Event>> = claimed_batch
                .iter()
                .zip(emitters.iter_mut())
                .map(|((incoming, span), out)| Handling {
                    incoming,
                    span,
                    out,
                })
                .collect();
            inner
                .handler
                .handle_all(&mut tx, &mut handlings, &mut writes)
                .await?;
        }
        let mut rows = OutboxRows::default();
        for ((_, span), out) in claimed_batch.iter().zip(emitters) {
            // Emitted events are children of the handling span, not siblings of the message.
            let trace = span.in_scope(crate::trace::current_traceparent);
            out.add_to(&mut rows, trace.as_deref())?;
        }
        let handled = started.elapsed();
        rows.commit_with(tx, writes, &inner.outbox).await?;
        tracing::debug!(
            size = batch.len(),
            claim_ms = claimed.as_secs_f64() * 1e3,
            handlers_ms = (handled - claimed).as_secs_f64() * 1e3,
            commit_ms = (started.elapsed() - handled).as_secs_f64() * 1e3,
            "batch committed"
        );
        Ok(claims)
    }

    /// Handles deliveries that arrived together (one, at low load): every valid one in one
    /// transaction that claims them with its writes (messaging::inbox), then one ack for
    /// them all. A batch that fails (any message, any reason, a message handled before
    /// among them) is handled again one message at a time, each claimed first, so the
    /// failure lands on the message that caused it alone and a duplicate is known as one
    /// before it is decided. A batch with a redelivered message in it (one that may have
    /// been handled before its ack was lost) claims first from the start.
    pub(super) async fn handle_batch(
        &self,
        deliveries: Vec<Delivery>,
        turn: Option<Turn>,
        publisher: &ParkingPublisher,
        shutdown: &CancellationToken,
        acks: &AckLedger,
    ) {
        metrics::histogram!("saga_consumer_batch_size").record(deliveries.len() as f64);
        let claim = if deliveries.iter().any(|d| d.redelivered) {
            Claim::First
        } else {
            Claim::WithWrites
        };
        let mut valid = Vec::with_capacity(deliveries.len());
        let mut alone = Vec::new();
        for delivery in &deliveries {
            let span = delivery_span(delivery);
            match span.in_scope(|| self.decode(&delivery.data, &delivery.properties)) {
                Ok(incoming) => valid.push(Decoded {
                    delivery,
                    incoming,
                    span,
                }),
                // Dead-lettered on its own path, which says why.
                Err(_) => alone.push((delivery, span)),
            }
        }
        let started = Instant::now();
        let batch: Vec<_> = valid.iter().map(|d| (&d.incoming, &d.span)).collect();
        // Nothing to apply when every delivery was invalid: no empty transaction.
        let applied = if batch.is_empty() {
            Ok(Vec::new())
        } else {
            self.apply_batch(&batch, turn, claim).await
        };
        match applied {
            Ok(claims) => {
                for (d, claim) in valid.iter().zip(claims) {
                    if d.delivery.redelivered {
                        metrics::counter!("saga_messages_redelivered_total").increment(1);
                    }
                    record_duration::<H::Event>(&d.incoming, started);
                    let disposition = match claim {
                        InboxClaim::Claimed => Disposition::Handled,
                        InboxClaim::Duplicate => Disposition::Duplicate,
                    };
                    d.span
                        .in_scope(|| record_outcome::<H::Event>(d.delivery, &disposition));
                }
                let handled: Vec<&Delivery> = valid.iter().map(|d| d.delivery).collect();
                acks.ack(&handled);
            }
            Err(e) => {
                metrics::counter!("saga_consumer_batch_fallbacks_total").increment(1);
                tracing::debug!(error = %e, size = valid.len(), "batch failed; handling its messages one by one");
                alone.extend(valid.into_iter().map(|d| (d.delivery, d.span)));
                alone.sort_by_key(|(d, _)| d.delivery_tag);
            }
        }
        for (delivery, span) in alone {
            self.handle_delivery(delivery, None, publisher, shutdown, acks)
                .instrument(span)
                .await;
        }
    }

    /// Handles one delivery to the end: process, then ack, or retry / dead-letter and ack
    /// once the copy is confirmed. While the database is unreachable the delivery is held
    /// and processed again once it answers. A copy that cannot be published is held and
    /// tried again with backoff; after [`PATIENCE`] the delivery is rejected back to the
    /// queue (after that delay, and counted toward the delivery limit on every RabbitMQ
    /// version, so it never spins).
    pub(crate) async fn handle_delivery(
        &self,
        delivery: &Delivery,
        mut turn: Option<Turn>,
        publisher: &ParkingPublisher,
        shutdown: &CancellationToken,
        acks: &AckLedger,
    ) -> Disposition {
        if delivery.redelivered {
            // Came back unacked from an earlier consumer (a crash, a lost channel): the inbox
            // decides whether it was applied already.
            metrics::counter!("saga_messages_redelivered_total").increment(1);
        }
        let disposition = loop {
            let disposition = self
                .process(&delivery.data, &delivery.properties, turn.take())
                .await;
            if let Disposition::Paused { error } = &disposition {
                tracing::warn!(%error, "database unreachable; holding the message");
                if self.inner.gate.ride_out(&self.inner.pool, shutdown).await {
                    continue;
                }
                // Shutting down: the held delivery returns to the queue with the channel.
            }
            break disposition;
        };
        record_outcome::<H::Event>(delivery, &disposition);
        // Paused only when shutting down: the delivery goes back with the channel.
        if matches!(disposition, Disposition::Paused { .. }) {
            return disposition;
        }
        let copy = self.copy_for(delivery, &disposition);
        if let Some(copy) = copy
            && let Err(e) = publisher.park(&copy, PATIENCE, shutdown).await
        {
            if let ParkError::Refused(_) = e {
                tracing::error!(error = %e, "could not park the failed message; rejecting it back to the queue");
                acks.requeue(delivery);
            }
            return disposition;
        }
        if let Disposition::DeadLetter { code, error, .. } = &disposition {
            self.record_rejection(delivery, code, error).await;
        }
        acks.ack(&[delivery]);
        disposition
    }
}

/// Counts what became of a delivery.
fn record_outcome<E: Event>(delivery: &Delivery, disposition: &Disposition) {
    let kind = delivery.properties.kind().as_ref().map(|k| k.as_str());
    let label = crate::metric_labels::event_type::<E::Kind>(kind);
    metrics::counter!("saga_messages_handled_total", "type" => label, "outcome" => disposition.outcome())
        .increment(1);
    tracing::debug!(outcome = disposition.outcome(), "message handled");
}

/// How long handling took, by event type (for a batch: the whole batch's time).
fn record_duration<E: Event>(incoming: &IncomingEvent<E>, started: Instant) {
    let event_type =
        crate::metric_labels::event_type::<E::Kind>(Some(incoming.envelope.event_type.as_str()));
    metrics::histogram!("saga_handler_duration_seconds", "type" => event_type)
        .record(started.elapsed().as_secs_f64());
}
