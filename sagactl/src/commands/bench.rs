//! `sagactl bench`: in one run on one machine, the ceiling of the parts, the cost of one
//! saga counted from the running system, the ceiling that implies for sagas, the saga
//! throughput the stack reaches, and their ratio.
//!
//! (a) broker: confirmed publish (pipelined in windows of 256) + acked consume of
//!     persistent 400-byte messages through one quorum queue, one publisher, one consumer;
//!     database: handler-shaped transactions (inbox row, update one row, outbox row,
//!     commit) at the services' pool size, in a scratch database;
//!     relay: the outbox relay publishing a backlog of rows from that scratch database.
//! (b) per saga: broker deliveries (the management API's deliver counters of the three
//!     input queues) and committed transactions (`pg_stat_database.xact_commit` of the three
//!     service databases) during a happy-path load, divided by the sagas completed.
//! (c) ceiling for sagas = 1 / (deliveries / broker rate + transactions / database rate).
//! (d) the saga throughput of that load; and (d)/(c).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::cli::{BenchArgs, LoadArgs};
use crate::context::{CliError, Context};
use crate::output;

const BODY_BYTES: usize = 400;
const WINDOW: usize = 256;

pub async fn run(ctx: &Context, args: BenchArgs) -> anyhow::Result<()> {
    let progress = |step: &str| {
        if !ctx.json {
            eprintln!("==> {step}");
        }
    };
    progress("broker ceiling: confirmed publish + acked consume through one quorum queue");
    let broker_rate = broker_ceiling(ctx, args.broker_messages).await?;
    progress("database ceiling: handler-shaped transactions in a scratch database");
    let pool = scratch_database(&args.database_server, args.pool).await?;
    let db_rate = database_ceiling(&pool, args.pool, Duration::from_secs(args.db_seconds)).await?;
    progress("relay: publishing an outbox backlog");
    let relay_rate = relay_backlog(
        ctx,
        &pool,
        args.relay_rows,
        args.relay_workers,
        args.relay_batch,
    )
    .await?;
    pool.close().await;

    let existing = if args.preload > 0 {
        progress(&format!(
            "preloading {} finished sagas into the service databases",
            args.preload
        ));
        let db = service_databases(&args).await?;
        super::preload::preload(&db, &Uuid::new_v4().simple().to_string()[..8], args.preload)
            .await?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(&db.orders)
            .await?;
        n
    } else {
        0
    };
    progress("saga cost: counting deliveries and commits during a happy-path load");
    let before = counters(ctx, &args).await?;
    let load = super::load::run_load(
        ctx,
        &LoadArgs {
            orders: args.orders,
            concurrency: args.concurrency,
            rate: None,
            mix: crate::mix::Mix::parse("happy=100").map_err(CliError::Refused)?,
            wait_secs: 120,
        },
    )
    .await?;
    // The management API's counters lag by about five seconds: wait until they settle.
    let after = settled_counters(ctx, &args, &before).await?;
    let completed = load["completed"].as_f64().unwrap_or(0.0).max(1.0);
    let deliveries = (after.0 - before.0) as f64 / completed;
    let transactions = (after.1 - before.1) as f64 / completed;
    let ceiling = 1.0 / (deliveries / broker_rate + transactions / db_rate);
    let throughput = load["sagas_per_second"].as_f64().unwrap_or(0.0);
    let report = json!({
        "machine": machine(),
        "broker_msgs_per_second": broker_rate,
        "db_transactions_per_second": db_rate,
        "db_pool": args.pool,
        "relay_rows_per_second": relay_rate,
        "relay_ratio_to_broker": relay_rate / broker_rate,
        "deliveries_per_saga": deliveries,
        "transactions_per_saga": transactions,
        "saga_ceiling_per_second": ceiling,
        "sagas_per_second": throughput,
        "ratio_to_ceiling": throughput / ceiling,
        "orders_stored_before": existing,
        "load": load,
    });
    output::show(ctx, &report, render);
    Ok(())
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    json!({"cpus": cpus, "date": chrono::Utc::now().to_rfc3339()})
}

fn render(r: &Value) -> String {
    let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
    format!(
        "    orders stored         {:>10}          (before the load)\n(a) broker ceiling        {:>10.0} msg/s   (confirmed publish + acked consume, 400 B, quorum)\n    database ceiling      {:>10.0} tx/s    (inbox + update + outbox, pool {})\n    relay backlog         {:>10.0} rows/s  ({:.2} x broker)\n(b) per saga              {:>10.2} deliveries, {:.2} committed transactions\n(c) saga ceiling          {:>10.1} sagas/s\n(d) saga throughput       {:>10.1} sagas/s\n    ratio (d)/(c)         {:>10.2}\n    latency               p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        r["orders_stored_before"],
        f("broker_msgs_per_second"),
        f("db_transactions_per_second"),
        r["db_pool"],
        f("relay_rows_per_second"),
        f("relay_ratio_to_broker"),
        f("deliveries_per_saga"),
        f("transactions_per_saga"),
        f("saga_ceiling_per_second"),
        f("sagas_per_second"),
        f("ratio_to_ceiling"),
        r["load"]["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
        r["load"]["latency_ms"]["p90"].as_f64().unwrap_or(0.0),
        r["load"]["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
        r["load"]["latency_ms"]["max"].as_f64().unwrap_or(0.0),
    )
}

/// Messages per second through one quorum queue, publish to ack.
async fn broker_ceiling(ctx: &Context, messages: usize) -> anyhow::Result<f64> {
    let conn = ctx.broker("bench").await?;
    let queue = format!("sagactl.bench.{}", std::process::id());
    let setup = conn.create_channel().await?;
    events::topology::declare_quorum(&setup, &queue, FieldTable::default()).await?;
    let consume = conn.create_channel().await?;
    consume
        .basic_qos(WINDOW as u16, BasicQosOptions::default())
        .await?;
    let mut consumer = consume
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let publish = conn.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let body = vec![b'x'; BODY_BYTES];
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
            confirms.push(
                publish
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?,
            );
        }
        for c in confirms {
            c.await?;
        }
        sent += n;
    }
    let acked = consumer_task.await??;
    let rate = acked as f64 / started.elapsed().as_secs_f64();
    // Close the consuming channel first: deleting a queue under a live consumer makes the
    // broker cancel it, which races the client's own shutdown of that channel. The count
    // is taken; a failure to close changes nothing.
    let _ = consume.close(200, "done".into()).await;
    setup
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    crate::context::close(conn).await;
    Ok(rate)
}

/// A scratch database with the messaging tables and one row per worker to update.
async fn scratch_database(server: &str, pool_size: u32) -> anyhow::Result<PgPool> {
    let url = database_url(server, "saga_bench")?;
    let pool = platform::db::connect_and_migrate(&url, pool_size + 2, &events::MIGRATOR).await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_counter (id INT PRIMARY KEY, n BIGINT NOT NULL)")
        .execute(&pool)
        .await?;
    sqlx::query("INSERT INTO bench_counter SELECT g, 0 FROM generate_series(0, 1023) g ON CONFLICT DO NOTHING")
        .execute(&pool)
        .await?;
    sqlx::query("TRUNCATE outbox, inbox").execute(&pool).await?;
    Ok(pool)
}

/// Handler-shaped transactions per second at `workers` concurrent connections.
async fn database_ceiling(pool: &PgPool, workers: u32, duration: Duration) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let pool = pool.clone();
        tasks.spawn(async move {
            let mut done = 0u64;
            let event = events::Event::StockAdjusted(events::catalog::StockAdjusted {
                sku: "BENCH".into(),
                delta: 1,
            });
            while started.elapsed() < duration {
                let mut tx = pool.begin().await?;
                let incoming = events::Envelope::wrap(&event, "bench", None);
                events::inbox::claim(&mut tx, "bench", &incoming).await?;
                sqlx::query("UPDATE bench_counter SET n = n + 1 WHERE id = $1")
                    .bind((w % 1024) as i32)
                    .execute(&mut *tx)
                    .await?;
                let outgoing = events::Envelope::wrap(&event, "bench", Some(incoming.message_id));
                events::outbox::enqueue(&mut tx, &outgoing, None).await?;
                tx.commit().await?;
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

/// Rows per second the outbox relay publishes from a backlog (confirmed, marked sent).
async fn relay_backlog(
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
    events::topology::declare_exchanges(&channel).await?;
    let queue = format!("sagactl.bench.relay.{}", std::process::id());
    events::topology::declare_quorum(&channel, &queue, FieldTable::default()).await?;
    channel
        .queue_bind(
            queue.as_str().into(),
            events::topology::EVENTS_EXCHANGE.into(),
            "bench.relay".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let relay = events::outbox::OutboxRelay::new(
        pool.clone(),
        &ctx.conn.amqp_url,
        "bench",
        events::outbox::RelaySettings {
            batch_size,
            ..Default::default()
        },
    );
    // As many loops as a service runs (SAGA_RELAY_WORKERS), each on its own confirm channel.
    let started = Instant::now();
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let publisher =
            events::publisher::ConfirmedPublisher::open(&conn, Duration::from_secs(10)).await?;
        let relay = relay.clone();
        loops.spawn(async move {
            let mut published = 0usize;
            loop {
                let n = relay.relay_once(&publisher).await?;
                if n == 0 {
                    return Ok::<_, events::outbox::RelayError>(published);
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
    crate::context::close(conn).await;
    Ok(rate)
}

/// Pools on the three service databases (`--databases`, in order orders, inventory, payments).
async fn service_databases(args: &BenchArgs) -> anyhow::Result<super::preload::Databases> {
    let url = |i: usize| {
        let name = args.databases.get(i).ok_or_else(|| {
            CliError::Refused(
                "--databases names three databases: orders, inventory, payments".into(),
            )
        })?;
        database_url(&args.database_server, name)
    };
    Ok(super::preload::Databases {
        orders: PgPool::connect(&url(0)?).await?,
        inventory: PgPool::connect(&url(1)?).await?,
        payments: PgPool::connect(&url(2)?).await?,
    })
}

/// `server` (a PostgreSQL URL naming no database) with database `name`; its query
/// (`?sslmode=...`) is kept.
fn database_url(server: &str, name: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(server).map_err(|e| {
        CliError::Refused(format!("--database-server {server:?} is not a URL: {e}"))
    })?;
    url.set_path("");
    url.path_segments_mut()
        .map_err(|()| CliError::Refused(format!("--database-server {server:?} names no host")))?
        .push(name);
    Ok(url.into())
}

/// (deliveries to the three input queues, commits in the three service databases).
async fn counters(ctx: &Context, args: &BenchArgs) -> anyhow::Result<(i64, i64)> {
    const INPUT_QUEUES: [&str; 3] = ["order-svc", "inventory-svc", "payment-svc"];
    // A queue that has not delivered anything yet has no counter: zero.
    let deliveries: u64 = ctx
        .queue_stats(&ctx.vhost())
        .await?
        .iter()
        .filter(|q| INPUT_QUEUES.contains(&q.name.as_str()))
        .map(|q| q.message_stats.deliver_get)
        .sum();
    let deliveries = i64::try_from(deliveries)?;
    let url = database_url(&args.database_server, "postgres")?;
    let pool = PgPool::connect(&url).await?;
    let commits: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(xact_commit), 0)::bigint FROM pg_stat_database WHERE datname = ANY($1)",
    )
    .bind(&args.databases)
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    Ok((deliveries, commits))
}

async fn settled_counters(
    ctx: &Context,
    args: &BenchArgs,
    before: &(i64, i64),
) -> anyhow::Result<(i64, i64)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = counters(ctx, args).await?;
    loop {
        tokio::time::sleep(Duration::from_secs(6)).await;
        let now = counters(ctx, args).await?;
        if (now.0 == last.0 && now.0 > before.0) || Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_database_url_keeps_the_server_and_its_options() {
        assert_eq!(
            super::database_url("postgres://postgres@127.0.0.1:5432/", "saga_bench").unwrap(),
            "postgres://postgres@127.0.0.1:5432/saga_bench"
        );
        assert_eq!(
            super::database_url("postgres://u@db?sslmode=require", "orders").unwrap(),
            "postgres://u@db/orders?sslmode=require"
        );
    }
}
