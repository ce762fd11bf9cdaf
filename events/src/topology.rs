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

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use crate::catalog::EventType;
use crate::retry::RETRY_DELAYS;

pub const EVENTS_EXCHANGE: &str = "saga.events";
pub const RETRY_EXCHANGE: &str = "saga.retry";
pub const REDELIVER_EXCHANGE: &str = "saga.redeliver";
pub const DEAD_LETTER_EXCHANGE: &str = "saga.dead-letter";

/// How many times the broker hands out one message before dead-lettering it. Only crashes
/// and lost channels count here: handled failures go through the retry queues instead.
pub const DELIVERY_LIMIT: i64 = 20;

/// One service's queues and the events it consumes.
#[derive(Debug, Clone)]
pub struct ServiceTopology {
    /// The service name, which is also its input queue's name.
    pub service: String,
    pub consumes: Vec<EventType>,
}

impl ServiceTopology {
    pub fn new(service: impl Into<String>, consumes: &[EventType]) -> Self {
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

/// The saga's services and the events each consumes: the contract's routing table.
pub const SAGA_SERVICES: [(&str, &[EventType]); 3] = [
    (
        "order-svc",
        &[
            EventType::StockReserved,
            EventType::StockRejected,
            EventType::PaymentDone,
            EventType::PaymentFailed,
            EventType::StockReleased,
            EventType::PaymentRefunded,
        ],
    ),
    (
        "inventory-svc",
        &[
            EventType::OrderCreated,
            EventType::OrderConfirmed,
            EventType::OrderCancelled,
            EventType::StockAdjusted,
        ],
    ),
    (
        "payment-svc",
        &[
            EventType::StockReserved,
            EventType::OrderCancelled,
            EventType::FundsDeposited,
        ],
    ),
];

/// The topology of one of the saga's services, by name.
pub fn saga_service(name: &str) -> Option<ServiceTopology> {
    SAGA_SERVICES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, consumes)| ServiceTopology::new(*n, consumes))
}

/// Declares the queues of every saga service, each on a channel of its own so that a
/// refusal (a broker user allowed to configure its own queues only) closes nothing else.
///
/// Why every service declares its peers' queues too: an event published before its
/// consumer ever started would otherwise be unroutable, or worse, routed only to a
/// bystander such as `sagactl tail`'s queue and so marked sent while its real consumer
/// never gets it. Failures are logged and ignored: the peer declares its own on start.
pub async fn declare_peers(conn: &lapin::Connection, own: &str) {
    for (name, consumes) in SAGA_SERVICES.iter().filter(|(n, _)| *n != own) {
        let declared = async {
            let channel = conn.create_channel().await?;
            ServiceTopology::new(*name, consumes)
                .declare(&channel)
                .await?;
            channel.close(200, "declared".into()).await
        };
        if let Err(e) = declared.await {
            tracing::debug!(peer = name, error = %e, "could not declare a peer's queues");
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

    #[test]
    fn every_event_of_the_catalog_has_a_consumer() {
        for t in EventType::ALL {
            assert!(
                SAGA_SERVICES.iter().any(|(_, c)| c.contains(&t)),
                "{t} would be unroutable"
            );
        }
    }

    #[test]
    fn names_are_readable_and_derived_from_the_service() {
        let t = ServiceTopology::new("inventory-svc", &[EventType::OrderCreated]);
        assert_eq!(t.input_queue(), "inventory-svc");
        assert_eq!(t.dead_letter_queue(), "inventory-svc.dlq");
        assert_eq!(
            t.retry_queue(Duration::from_secs(4)),
            "inventory-svc.retry.4s"
        );
    }
}
