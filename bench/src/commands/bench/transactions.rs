//! The database's part: the minimal handler transaction at the services' pool size (the
//! ceiling) and one at a time (the latency floor), and the same transaction through the
//! project's own inbox and outbox code (a diagnostic).

use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::median_ms;
use crate::plain::{BODY_BYTES, minimal_transaction};

/// The median time of one minimal handler transaction, with nothing else running.
pub(super) async fn transaction_ms(pool: &PgPool, samples: usize) -> anyhow::Result<f64> {
    let body = vec![b'x'; BODY_BYTES];
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        minimal_transaction(pool, 0, &body).await?;
        times.push(started.elapsed());
    }
    Ok(median_ms(times))
}

/// Runs `one` in a loop on `workers` connections for `duration`; transactions per second.
async fn transactions_per_second<F, Fut>(
    pool: &PgPool,
    workers: u32,
    duration: Duration,
    one: F,
) -> anyhow::Result<f64>
where
    F: Fn(PgPool, i32) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = sqlx::Result<()>> + Send,
{
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (pool, one) = (pool.clone(), one.clone());
        tasks.spawn(async move {
            let mut done = 0u64;
            while started.elapsed() < duration {
                one(pool.clone(), (w % 1024) as i32).await?;
                done += 1;
            }
            Ok::<_, sqlx::Error>(done)
        });
    }
    let mut total = 0;
    while let Some(r) = tasks.join_next().await {
        total += r??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// The database ceiling: a handler's minimal transaction in plain SQL, no project code.
pub(super) async fn minimal_transactions(
    pool: &PgPool,
    workers: u32,
    duration: Duration,
) -> anyhow::Result<f64> {
    let body = std::sync::Arc::new(vec![b'x'; BODY_BYTES]);
    transactions_per_second(pool, workers, duration, move |pool, row| {
        let body = body.clone();
        async move { minimal_transaction(&pool, row, &body).await }
    })
    .await
}

/// A diagnostic: the same transaction through the project's inbox and outbox code.
pub(super) async fn project_transactions(
    pool: &PgPool,
    workers: u32,
    duration: Duration,
) -> anyhow::Result<f64> {
    transactions_per_second(pool, workers, duration, |pool, row| async move {
        let event = events::Event::StockAdjusted(events::catalog::StockAdjusted {
            sku: "BENCH".into(),
            delta: 1,
        });
        let mut tx = pool.begin().await?;
        let incoming = messaging::Envelope::wrap(&event, "bench", None);
        messaging::inbox::claim(&mut tx, "bench", &incoming).await?;
        sqlx::query("UPDATE bench_counter SET n = n + 1 WHERE id = $1")
            .bind(row)
            .execute(&mut *tx)
            .await?;
        let outgoing = messaging::Envelope::wrap(&event, "bench", Some(incoming.message_id));
        let key = event.event_type().routing_key();
        messaging::outbox::enqueue(&mut tx, &outgoing, key, None).await?;
        tx.commit().await
    })
    .await
}
