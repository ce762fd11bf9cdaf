//! The broker topology, declared idempotently by whoever needs it.
//!
//! | name | kind | role |
//! |---|---|---|
//! | `saga.events` | topic exchange | every event, routing key = the event's key |
//! | `<service>` | quorum queue | a service's input, bound to the keys it consumes |
//! | `saga.retry` | direct exchange | key = a retry queue's name |
//! | `<service>.retry.<delay>` | quorum queue with TTL | holds a failed message for `<delay>`, then dead-letters it to `saga.redeliver` |
//! | `saga.redeliver` | direct exchange | key = service name, back into that service's input queue only |
//! | `saga.dead-letter` | direct exchange | key = `<service>.dlq` |
//! | `<service>.dlq` | quorum queue | messages that will never succeed, with the reason in headers |
//!
//! Redelivery after a delay goes to the one service that failed, not back through the topic
//! exchange, so a retry never reaches the other consumers of the same event twice.
//!
//! The input queue also has a delivery limit and dead-letters to its DLQ: a message whose
//! handler crashes the process over and over ends in the DLQ (reason `delivery_limit` in
//! `x-death`) instead of looping for ever.
//!
//! A service's bindings are the routing keys of the event types its handler consumes
//! ([`ServiceTopology::new`]); nothing here knows which services exist. A process that
//! watches the bus with a queue of its own (a bystander) should first declare every
//! consumer's topology ([`declare_all`]): an event published before its consumer ever
//! started would otherwise reach only the bystander, and be counted as sent.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use crate::event::EventKind;
use crate::retry::RETRY_DELAYS;

pub const EVENTS_EXCHANGE: &str = "saga.events";
pub(crate) const RETRY_EXCHANGE: &str = "saga.retry";
pub const REDELIVER_EXCHANGE: &str = "saga.redeliver";
pub const DEAD_LETTER_EXCHANGE: &str = "saga.dead-letter";

/// How many times the broker hands out one message before dead-lettering it. Only crashes
/// and lost channels count here: handled failures go through the retry queues instead.
pub(crate) const DELIVERY_LIMIT: i64 = 20;

/// One service's queues and the event types its handler consumes (its input queue is bound
/// to their routing keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTopology<K> {
    /// The service name, which is also its input queue's name.
    pub service: String,
    pub consumes: Vec<K>,
}

impl<K: EventKind> ServiceTopology<K> {
    /// The topology of a service whose handler consumes the event types `consumes`.
    pub fn new(service: impl Into<String>, consumes: &[K]) -> Self {
        ServiceTopology {
            service: service.into(),
            consumes: consumes.to_vec(),
        }
    }

    pub fn input_queue(&self) -> &str {
        &self.service
    }

    pub fn dead_letter_queue(&self) -> String {
        dead_letter_queue(&self.service)
    }

    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.retry.{}s", self.service, delay.as_secs())
    }

    /// Declares the shared exchanges, then this service's input, retry and dead-letter
    /// queues with their bindings. Safe to run any number of times, from any process.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        declare_exchanges(channel).await?;
        let dlq = self.dead_letter_queue();
        declare_quorum(channel, &dlq, FieldTable::default()).await?;
        bind(channel, &dlq, DEAD_LETTER_EXCHANGE, &dlq).await?;

        let mut input_args = at_least_once_dead_letter(DEAD_LETTER_EXCHANGE, &dlq);
        input_args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        declare_quorum(channel, self.input_queue(), input_args).await?;
        for t in &self.consumes {
            bind(
                channel,
                self.input_queue(),
                EVENTS_EXCHANGE,
                t.routing_key(),
            )
            .await?;
        }
        bind(
            channel,
            self.input_queue(),
            REDELIVER_EXCHANGE,
            &self.service,
        )
        .await?;

        for delay in RETRY_DELAYS {
            let name = self.retry_queue(delay);
            let mut args = at_least_once_dead_letter(REDELIVER_EXCHANGE, &self.service);
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(delay.as_millis() as i64),
            );
            declare_quorum(channel, &name, args).await?;
            bind(channel, &name, RETRY_EXCHANGE, &name).await?;
        }
        Ok(())
    }
}

/// Declares the queues of every topology in `all`, each on a channel of its own so that a
/// refusal (a broker user allowed to configure its own queues only) closes nothing else.
/// For a bystander about to bind a queue of its own to the events exchange: declaring the
/// consumers' queues first means no event reaches the bystander alone. A refusal is logged
/// and skipped (the deployment's definitions declare those queues).
pub async fn declare_all<K: EventKind>(conn: &lapin::Connection, all: &[ServiceTopology<K>]) {
    for topology in all {
        let declared = async {
            let channel = conn.create_channel().await?;
            topology.declare(&channel).await?;
            channel.close(200, "declared".into()).await
        };
        if let Err(e) = declared.await {
            tracing::debug!(service = %topology.service, error = %e, "could not declare a service's queues");
        }
    }
}

pub fn dead_letter_queue(service: &str) -> String {
    format!("{service}.dlq")
}

/// Declares the four exchanges (durable; a broker restart keeps them).
pub async fn declare_exchanges(channel: &Channel) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            EVENTS_EXCHANGE.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    for name in [RETRY_EXCHANGE, REDELIVER_EXCHANGE, DEAD_LETTER_EXCHANGE] {
        channel
            .exchange_declare(
                name.into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

fn at_least_once_dead_letter(exchange: &str, routing_key: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-dead-letter-exchange".into(), long_string(exchange));
    args.insert("x-dead-letter-routing-key".into(), long_string(routing_key));
    // Quorum queues dead-letter at most once unless told otherwise; at-least-once needs
    // reject-publish overflow (RabbitMQ >= 3.10).
    args.insert(
        "x-dead-letter-strategy".into(),
        long_string("at-least-once"),
    );
    args.insert("x-overflow".into(), long_string("reject-publish"));
    args
}

/// Declares a durable quorum queue with `args` (its type is added here).
pub async fn declare_quorum(
    channel: &Channel,
    name: &str,
    mut args: FieldTable,
) -> lapin::Result<()> {
    args.insert("x-queue-type".into(), long_string("quorum"));
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    Ok(())
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str) -> lapin::Result<()> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_catalog::Kind;

    #[test]
    fn names_are_readable_and_derived_from_the_service() {
        let t = ServiceTopology::new("inventory-svc", &[Kind::Ping]);
        assert_eq!(t.input_queue(), "inventory-svc");
        assert_eq!(t.dead_letter_queue(), "inventory-svc.dlq");
        assert_eq!(
            t.retry_queue(Duration::from_secs(4)),
            "inventory-svc.retry.4s"
        );
    }
}
