//! A diagnostic: the project's outbox relay draining a backlog of rows to a queue of the
//! benchmark's own, with as many loops as a service runs.

use std::time::{Duration, Instant};

use lapin::options::{QueueBindOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use sqlx::PgPool;

use sagactl::context::Context;

/// Rows per second the outbox relay publishes from a backlog (confirmed, marked sent).
pub(super) async fn relay_backlog(
    ctx: &Context,
    pool: &PgPool,
    rows: u32,
    workers: usize,
    batch_size: i64,
) -> anyhow::Result<f64> {
    sqlx::query("TRUNCATE outbox").execute(pool).await?;
    // Rows routed to a bench queue only (routing key bench.relay), not to any service.
    sqlx::query(
        "INSERT INTO outbox (message_id, event_type, routing_key, correlation_id, producer, occurred_at, body)
         SELECT gen_random_uuid(), 'StockAdjusted', 'bench.relay', 'bench', 'bench', now(), repeat('x', 400)
         FROM generate_series(1, $1)",
    )
    .bind(rows as i64)
    .execute(pool)
    .await?;
    let conn = ctx.broker("bench relay").await?;
    let channel = conn.create_channel().await?;
    messaging::topology::declare_exchanges(&channel).await?;
    let queue = format!("{}.bench.relay.{}", ctx.program, std::process::id());
    messaging::topology::declare_quorum(&channel, &queue, FieldTable::default()).await?;
    channel
        .queue_bind(
            queue.as_str().into(),
            messaging::topology::EVENTS_EXCHANGE.into(),
            "bench.relay".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let relay = messaging::outbox::OutboxRelay::new(
        pool.clone(),
        &ctx.conn.amqp_url,
        "bench",
        messaging::outbox::RelaySettings {
            batch_size,
            ..Default::default()
        },
    );
    // As many loops as a service runs (SAGA_RELAY_WORKERS), each on its own confirm channel.
    let started = Instant::now();
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let publisher =
            messaging::publisher::ConfirmedPublisher::open(&conn, Duration::from_secs(10)).await?;
        let relay = relay.clone();
        loops.spawn(async move {
            let mut published = 0usize;
            loop {
                let n = relay.relay_once(&publisher).await?;
                if n == 0 {
                    return Ok::<_, messaging::outbox::RelayError>(published);
                }
                published += n;
            }
        });
    }
    let mut published = 0usize;
    while let Some(r) = loops.join_next().await {
        published += r??;
    }
    let rate = published as f64 / started.elapsed().as_secs_f64();
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    sagactl::context::close(conn).await;
    Ok(rate)
}
