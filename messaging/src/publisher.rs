//! A publisher that reports success only for a message the broker has confirmed AND routed
//! to at least one queue.
//!
//! Every publish is `mandatory` on a channel in confirm mode. An unroutable message comes
//! back acked but returned; that is an error here, because nobody would ever read it.
//! Confirms are pipelined: a batch is written first, then its confirms are awaited under one
//! deadline, so a batch costs one round trip rather than one per message.

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use lapin::Confirmation;
use lapin::PublisherConfirm;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};

use crate::envelope::Envelope;
use crate::event::{DecodeError, EventKind};

/// One message ready to publish.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

impl OutgoingMessage {
    /// An envelope as it travels on `saga.events`: its bytes, its type's routing key in the
    /// catalog of `K`, and the AMQP properties that mirror it (with the trace context, when
    /// there is one). An envelope of a type the catalog lacks has no routing key: an error.
    pub fn event<K: EventKind>(
        envelope: &Envelope,
        traceparent: Option<&str>,
    ) -> Result<OutgoingMessage, DecodeError> {
        Ok(OutgoingMessage {
            exchange: crate::topology::EVENTS_EXCHANGE.to_owned(),
            routing_key: envelope.routing_key::<K>()?.to_owned(),
            body: envelope.to_body(),
            properties: crate::envelope::properties_for(
                envelope.message_id,
                &envelope.event_type,
                &envelope.correlation_id,
                &envelope.producer,
                envelope.occurred_at,
                traceparent,
            ),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker channel failed: {0}")]
    Channel(#[from] lapin::Error),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error(
        "no queue is bound to routing key {routing_key:?} on exchange {exchange:?} ({reply_text}); is the consuming service running?"
    )]
    Unroutable {
        exchange: String,
        routing_key: String,
        reply_text: String,
    },
    #[error("no confirm from the broker within {0:?}")]
    Timeout(Duration),
}

impl PublishError {
    /// Whether the channel is unusable afterwards and should be reopened.
    pub(crate) fn breaks_channel(&self) -> bool {
        matches!(self, PublishError::Channel(_) | PublishError::Timeout(_))
    }

    /// Whether the broker closed the channel because of this message (a channel-level
    /// error such as ACCESS_REFUSED for a routing key the user may not write to).
    pub(crate) fn closed_channel_over_message(&self) -> bool {
        matches!(self, PublishError::Channel(e) if e.is_amqp_soft_error())
    }
}

/// A confirm-mode channel.
#[derive(Clone)]
pub struct ConfirmedPublisher {
    channel: Channel,
    confirm_timeout: Duration,
    /// The connection's broker user, set as every message's `user_id`: the broker checks
    /// it, so consumers can tell who published what (see [`crate::authenticity`]).
    user_id: lapin::types::ShortString,
}

impl ConfirmedPublisher {
    pub async fn open(conn: &Connection, confirm_timeout: Duration) -> lapin::Result<Self> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(ConfirmedPublisher {
            channel,
            confirm_timeout,
            user_id: conn.status().username().into(),
        })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    pub fn is_usable(&self) -> bool {
        self.channel.status().connected()
    }

    pub async fn publish(&self, message: &OutgoingMessage) -> Result<(), PublishError> {
        self.publish_all(std::slice::from_ref(message))
            .await
            .pop()
            .unwrap_or(Err(PublishError::Nacked))
    }

    /// Publishes every message, then waits for all their confirms. The result at index `i`
    /// is the fate of `messages[i]`.
    ///
    /// The messages are handed to the connection's writer all at once: a publish resolves
    /// only once the connection's I/O thread has written it, so publishing them one after
    /// the other would cost a wake-up of that thread, and of this task, per message. Handed
    /// over together, they leave in one write. They are handed over in order (each
    /// publish queues its frames and takes its confirm number when first polled, and
    /// `FuturesOrdered` polls them first in the order they were pushed), so the broker
    /// receives them in order.
    pub async fn publish_all(&self, messages: &[OutgoingMessage]) -> Vec<Result<(), PublishError>> {
        let pending: Vec<lapin::Result<PublisherConfirm>> = messages
            .iter()
            .map(|m| {
                self.channel.basic_publish(
                    m.exchange.as_str().into(),
                    m.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &m.body,
                    m.properties.clone().with_user_id(self.user_id.clone()),
                )
            })
            .collect::<FuturesOrdered<_>>()
            .collect()
            .await;
        let deadline = tokio::time::Instant::now() + self.confirm_timeout;
        let mut results = Vec::with_capacity(messages.len());
        for (m, sent) in messages.iter().zip(pending) {
            let result = match sent {
                Err(e) => Err(PublishError::Channel(e)),
                Ok(confirm) => match tokio::time::timeout_at(deadline, confirm).await {
                    Err(_) => Err(PublishError::Timeout(self.confirm_timeout)),
                    Ok(Err(e)) => Err(PublishError::Channel(e)),
                    Ok(Ok(Confirmation::Ack(None))) => Ok(()),
                    Ok(Ok(Confirmation::Ack(Some(returned)))) => Err(PublishError::Unroutable {
                        exchange: m.exchange.clone(),
                        routing_key: m.routing_key.clone(),
                        reply_text: returned.reply_text.as_str().to_owned(),
                    }),
                    Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
                    // The channel is opened in confirm mode above, so the broker always
                    // confirms; a channel that was not would be a programming error.
                    Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Nacked),
                },
            };
            results.push(result);
        }
        results
    }
}
