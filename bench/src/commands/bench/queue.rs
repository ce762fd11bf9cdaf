//! The broker's part: a quorum queue of the benchmark's own, through which persistent
//! messages go as fast as they can (the ceiling) or one at a time (the latency floor).

use std::time::Instant;

use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;

use sagactl::context::Context;

use super::median_ms;
use crate::plain::{BODY_BYTES, WINDOW, close_quietly};

/// A quorum queue of the benchmark's own, with a consumer and a confirming publisher.
struct BenchQueue {
    conn: lapin::Connection,
    name: String,
    setup: lapin::Channel,
    consume: lapin::Channel,
    consumer: lapin::Consumer,
    publish: lapin::Channel,
    body: Vec<u8>,
}

impl BenchQueue {
    async fn open(ctx: &Context, purpose: &str) -> anyhow::Result<BenchQueue> {
        let conn = ctx.broker("bench").await?;
        let name = format!("{}.bench.{purpose}.{}", ctx.program, std::process::id());
        let setup = conn.create_channel().await?;
        messaging::topology::declare_quorum(&setup, &name, FieldTable::default()).await?;
        let consume = conn.create_channel().await?;
        consume
            .basic_qos(WINDOW as u16, BasicQosOptions::default())
            .await?;
        let consumer = consume
            .basic_consume(
                name.as_str().into(),
                "bench".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let publish = conn.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(BenchQueue {
            conn,
            name,
            setup,
            consume,
            consumer,
            publish,
            body: vec![b'x'; BODY_BYTES],
        })
    }

    /// Publishes one persistent message; the returned confirm says when the broker has it.
    async fn publish(&self) -> lapin::Result<lapin::PublisherConfirm> {
        self.publish
            .basic_publish(
                "".into(),
                self.name.as_str().into(),
                BasicPublishOptions::default(),
                &self.body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
    }

    async fn close(self) -> anyhow::Result<()> {
        // Close the consuming channel first: deleting a queue under a live consumer makes
        // the broker cancel it, which races the client's own shutdown of that channel.
        close_quietly(self.consume.close(200, "done".into()).await);
        self.setup
            .queue_delete(self.name.as_str().into(), QueueDeleteOptions::default())
            .await?;
        sagactl::context::close(self.conn).await;
        Ok(())
    }
}

/// Messages per second through one quorum queue, publish to ack.
pub(super) async fn broker_ceiling(ctx: &Context, messages: usize) -> anyhow::Result<f64> {
    let queue = BenchQueue::open(ctx, "ceiling").await?;
    let mut consumer = queue.consumer.clone();
    let started = Instant::now();
    let consumer_task = tokio::spawn(async move {
        let mut acked = 0;
        while acked < messages {
            match consumer.next().await {
                Some(Ok(d)) => {
                    d.acker.ack(BasicAckOptions::default()).await?;
                    acked += 1;
                }
                _ => break,
            }
        }
        Ok::<_, lapin::Error>(acked)
    });
    let mut sent = 0;
    while sent < messages {
        let n = WINDOW.min(messages - sent);
        let mut confirms = Vec::with_capacity(n);
        for _ in 0..n {
            confirms.push(queue.publish().await?);
        }
        for c in confirms {
            c.await?;
        }
        sent += n;
    }
    let acked = consumer_task.await??;
    let rate = acked as f64 / started.elapsed().as_secs_f64();
    queue.close().await?;
    Ok(rate)
}

/// The median time one persistent message takes through a quorum queue, from publish to
/// its delivery at the consumer, with nothing else in flight.
pub(super) async fn broker_hop_ms(ctx: &Context, samples: usize) -> anyhow::Result<f64> {
    let mut queue = BenchQueue::open(ctx, "hop").await?;
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        let confirm = queue.publish().await?;
        let delivery = match queue.consumer.next().await {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("the broker ended the benchmark's consumer"),
        };
        times.push(started.elapsed());
        confirm.await?;
        delivery.acker.ack(BasicAckOptions::default()).await?;
    }
    queue.close().await?;
    Ok(median_ms(times))
}
