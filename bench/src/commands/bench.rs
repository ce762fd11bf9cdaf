//! `saga-bench bench`: in one run on one machine, the ceiling the machine itself sets for
//! sagas, the saga throughput the stack reaches, and their ratio; beside them, what the
//! project spends per saga, as diagnostics that never enter the ceiling.
//!
//! (a) broker: confirmed publish (pipelined in windows of 256) + acked consume of
//!     persistent 400-byte messages through one quorum queue, one publisher, one consumer;
//!     database: minimal handler-shaped transactions written in plain SQL against tables of
//!     the benchmark's own (insert an inbox row, update one row, insert an outbox row,
//!     commit; no project code, no trigger) at the services' pool size.
//! (c) ceiling for sagas = 1 / (5 / broker rate + 6 / database rate): a saga needs five
//!     deliveries (OrderCreated, StockReserved to two services, PaymentDone,
//!     OrderConfirmed) and six transactions (the HTTP command and one per delivery).
//! (d) the saga throughput of a happy-path load; and (d)/(c).
//! Latency floor: the saga's path from placed to final event (four transactions and four
//! deliveries, one after the other) timed one step at a time with nothing else running:
//! the median of one persistent message through a quorum queue, publish to delivery, and
//! of one minimal transaction. No load can have a lower median latency on this machine.
//! Diagnostics: deliveries and committed transactions per saga counted from the running
//! system (the management API's deliver counters of the three input queues,
//! `pg_stat_database.xact_commit` of the three service databases), the machine's CPU
//! seconds per saga (`/proc/stat`), the project's own inbox + outbox code in the same
//! transaction shape (with its NOTIFY trigger), and the outbox relay draining a backlog.

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

use sagactl::context::{CliError, Context};
use sagactl::output;

use crate::cli::{BenchArgs, LoadArgs};

pub(super) const BODY_BYTES: usize = 400;
pub(super) const WINDOW: usize = 256;
/// Deliveries one happy saga needs: OrderCreated, StockReserved (to order-svc and
/// payment-svc), PaymentDone, OrderConfirmed.
const SAGA_DELIVERIES: f64 = 5.0;
/// Transactions one happy saga needs: the HTTP command and one per delivery.
const SAGA_TRANSACTIONS: f64 = 6.0;
/// One after the other from the placing of an order to its final event: the HTTP
/// command's transaction, OrderCreated, inventory-svc's transaction, StockReserved,
/// payment-svc's transaction, PaymentDone, order-svc's transaction, OrderConfirmed.
const PATH_TRANSACTIONS: f64 = 4.0;
const PATH_DELIVERIES: f64 = 4.0;
/// Messages and transactions timed one at a time for the latency floor.
const FLOOR_SAMPLES: usize = 200;

/// The machine's own limits, measured with no project code in the way.
struct Ceilings {
    broker: f64,
    database: f64,
}

impl Ceilings {
    fn sagas_per_second(&self) -> f64 {
        1.0 / (SAGA_DELIVERIES / self.broker + SAGA_TRANSACTIONS / self.database)
    }
}

/// The shortest time the machine allows from placed to final event: the saga's path
/// timed one step at a time with nothing else running, no project code in the way.
struct Floor {
    delivery_ms: f64,
    transaction_ms: f64,
}

impl Floor {
    fn saga_ms(&self) -> f64 {
        PATH_DELIVERIES * self.delivery_ms + PATH_TRANSACTIONS * self.transaction_ms
    }
}

/// What the project itself spends, beside the ceiling.
struct ProjectCosts {
    db_rate: f64,
    relay_rate: f64,
}

pub(super) async fn run(ctx: &Context, args: BenchArgs) -> anyhow::Result<()> {
    let progress = |step: &str| {
        if !ctx.json {
            eprintln!("==> {step}");
        }
    };
    progress("broker ceiling: confirmed publish + acked consume through one quorum queue");
    let broker = broker_ceiling(ctx, args.broker_messages).await?;
    progress("database ceiling: minimal handler-shaped transactions, plain SQL, no trigger");
    let pool = scratch_database(&args.server.database_server, "saga_bench", args.pool).await?;
    let seconds = Duration::from_secs(args.db_seconds);
    let database = minimal_transactions(&pool, args.pool, seconds).await?;
    let ceilings = Ceilings { broker, database };
    progress("latency floor: one delivery and one minimal transaction at a time");
    let floor = Floor {
        delivery_ms: broker_hop_ms(ctx, FLOOR_SAMPLES).await?,
        transaction_ms: transaction_ms(&pool, FLOOR_SAMPLES).await?,
    };
    progress("diagnostics: the project's inbox + outbox code, and the relay on a backlog");
    let costs = project_costs(ctx, &pool, &args).await?;
    pool.close().await;
    let existing = preload(ctx, &args).await?;
    progress("saga throughput: a happy-path load, counting deliveries, commits and CPU");
    let before = counters(ctx, &args).await?;
    let load = super::load::run_load(ctx, &happy_load(&args)?).await?;
    let cpu_after_load = busy_cpu_seconds()?;
    // The management API's counters lag by about five seconds: wait until they settle.
    let mut after = settled_counters(ctx, &args, &before).await?;
    after.cpu_seconds = cpu_after_load;
    progress("background: what the services commit with no load (polls, samplers, sweeps)");
    let background = background_commit_rate(ctx, &args, &after).await?;
    let report = report(
        &args,
        &ceilings,
        &floor,
        &costs,
        existing,
        load,
        (&before, &after, background),
    );
    output::show(ctx, &report, render);
    Ok(())
}

fn happy_load(args: &BenchArgs) -> anyhow::Result<LoadArgs> {
    Ok(LoadArgs {
        orders: args.orders,
        concurrency: args.concurrency,
        rate: args.rate,
        mix: crate::mix::Mix::parse("happy=100").map_err(CliError::Refused)?,
        also_order_url: args.also_order_url.clone(),
        wait_secs: 120,
    })
}

async fn project_costs(
    ctx: &Context,
    pool: &PgPool,
    args: &BenchArgs,
) -> anyhow::Result<ProjectCosts> {
    let seconds = Duration::from_secs(args.db_seconds);
    let db_rate = project_transactions(pool, args.pool, seconds).await?;
    let relay_rate = relay_backlog(
        ctx,
        pool,
        args.relay_rows,
        args.relay_workers,
        args.relay_batch,
    )
    .await?;
    Ok(ProjectCosts {
        db_rate,
        relay_rate,
    })
}

/// Adds `--preload` finished sagas; answers how many orders were stored before the load.
async fn preload(ctx: &Context, args: &BenchArgs) -> anyhow::Result<i64> {
    if args.preload <= 0 {
        return Ok(0);
    }
    if !ctx.json {
        eprintln!(
            "==> preloading {} finished sagas into the service databases",
            args.preload
        );
    }
    let db = service_databases(args).await?;
    super::preload::preload(&db, &Uuid::new_v4().simple().to_string()[..8], args.preload).await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&db.orders)
        .await?;
    Ok(n)
}

fn report(
    args: &BenchArgs,
    ceilings: &Ceilings,
    floor: &Floor,
    costs: &ProjectCosts,
    existing: i64,
    load: Value,
    // The counters before and after the load, and the commits per second with no load.
    (before, after, background): (&Counters, &Counters, f64),
) -> Value {
    let completed = load["completed"].as_f64().filter(|n| *n > 0.0);
    let per_saga = |delta: f64| completed.map(|n| delta / n);
    let ceiling = ceilings.sagas_per_second();
    let throughput = load["sagas_per_second"].as_f64();
    // What the services commit whatever the load (each replica's polls and samplers),
    // over the window the load was counted in, is not the sagas' cost.
    let window = after.at.duration_since(before.at).as_secs_f64();
    let commits = (after.commits - before.commits) as f64;
    let saga_commits = (commits - background * window).max(0.0);
    json!({
        "machine": machine(),
        "broker_msgs_per_second": ceilings.broker,
        "db_transactions_per_second": ceilings.database,
        "db_pool": args.pool,
        "saga_deliveries": SAGA_DELIVERIES,
        "saga_transactions": SAGA_TRANSACTIONS,
        "saga_ceiling_per_second": ceiling,
        "sagas_per_second": throughput,
        "ratio_to_ceiling": throughput.map(|t| t / ceiling),
        "latency_floor_ms": floor.saga_ms(),
        "delivery_floor_ms": floor.delivery_ms,
        "transaction_floor_ms": floor.transaction_ms,
        "orders_stored_before": existing,
        "offered_rate": args.rate,
        "diagnostics": {
            "deliveries_per_saga": per_saga((after.deliveries - before.deliveries) as f64),
            "transactions_per_saga": per_saga(saga_commits),
            "transactions_per_saga_with_background": per_saga(commits),
            "background_transactions_per_second": background,
            "cpu_seconds_per_saga": per_saga(after.cpu_seconds - before.cpu_seconds),
            "project_db_transactions_per_second": costs.db_rate,
            "relay_rows_per_second": costs.relay_rate,
            "relay_ratio_to_broker": costs.relay_rate / ceilings.broker,
        },
        "load": load,
    })
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).ok();
    json!({"cpus": cpus, "date": chrono::Utc::now().to_rfc3339()})
}

fn render(r: &Value) -> String {
    let f = |k: &str| r.pointer(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let offered = r["offered_rate"]
        .as_f64()
        .map(|rate| format!(" (offered at {rate} orders/s)"))
        .unwrap_or_default();
    format!(
        "    orders stored         {:>10}          (before the load)\n\
         (a) broker ceiling        {:>10.0} msg/s   (confirmed publish + acked consume, 400 B, quorum)\n\
         \x20   database ceiling      {:>10.0} tx/s    (inbox + update + outbox in plain SQL, pool {})\n\
         (c) saga ceiling          {:>10.1} sagas/s (1 / (5 / broker + 6 / database))\n\
         (d) saga throughput       {:>10.1} sagas/s{}\n\
         \x20   ratio (d)/(c)         {:>10.2}\n\
         \x20   latency               p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms\n\
         \x20   latency floor         {:>10.1} ms      (4 x delivery {:.2} ms + 4 x transaction {:.2} ms, one at a time)\n\
         diagnostics (not in the ceiling):\n\
         \x20   per saga              {:>10.2} deliveries, {:.2} committed transactions, {:.2} ms CPU\n\
         \x20   background            {:>10.1} tx/s    (committed with no load, not in the transactions per saga)\n\
         \x20   project inbox+outbox  {:>10.0} tx/s\n\
         \x20   relay backlog         {:>10.0} rows/s  ({:.2} x broker)",
        r["orders_stored_before"],
        f("/broker_msgs_per_second"),
        f("/db_transactions_per_second"),
        r["db_pool"],
        f("/saga_ceiling_per_second"),
        f("/sagas_per_second"),
        offered,
        f("/ratio_to_ceiling"),
        f("/load/latency_ms/p50"),
        f("/load/latency_ms/p90"),
        f("/load/latency_ms/p99"),
        f("/load/latency_ms/max"),
        f("/latency_floor_ms"),
        f("/delivery_floor_ms"),
        f("/transaction_floor_ms"),
        f("/diagnostics/deliveries_per_saga"),
        f("/diagnostics/transactions_per_saga"),
        f("/diagnostics/cpu_seconds_per_saga") * 1000.0,
        f("/diagnostics/background_transactions_per_second"),
        f("/diagnostics/project_db_transactions_per_second"),
        f("/diagnostics/relay_rows_per_second"),
        f("/diagnostics/relay_ratio_to_broker"),
    )
}

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
async fn broker_ceiling(ctx: &Context, messages: usize) -> anyhow::Result<f64> {
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
async fn broker_hop_ms(ctx: &Context, samples: usize) -> anyhow::Result<f64> {
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

/// The median time of one minimal handler transaction, with nothing else running.
async fn transaction_ms(pool: &PgPool, samples: usize) -> anyhow::Result<f64> {
    let body = vec![b'x'; BODY_BYTES];
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        minimal_transaction(pool, 0, &body).await?;
        times.push(started.elapsed());
    }
    Ok(median_ms(times))
}

fn median_ms(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times
        .get(times.len() / 2)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

/// The benchmark's channels and connections close after their work is measured: a failed
/// close changes no figure, so it is only logged.
pub(super) fn close_quietly(closed: lapin::Result<()>) {
    if let Err(e) = closed {
        tracing::debug!(error = %e, "closing a benchmark channel failed");
    }
}

/// A scratch database `name` with the benchmark's own minimal tables (no trigger) and, for
/// the diagnostics, the project's messaging tables, all empty.
pub(super) async fn scratch_database(
    server: &str,
    name: &str,
    pool_size: u32,
) -> anyhow::Result<PgPool> {
    let url = database_url(server, name)?;
    let pool = platform::db::connect_and_migrate(&url, pool_size + 2, &messaging::MIGRATOR).await?;
    for statement in [
        "CREATE TABLE IF NOT EXISTS bench_counter (id INT PRIMARY KEY, n BIGINT NOT NULL)",
        "INSERT INTO bench_counter SELECT g, 0 FROM generate_series(0, 1023) g ON CONFLICT DO NOTHING",
        "CREATE TABLE IF NOT EXISTS bench_inbox (consumer TEXT NOT NULL, message_id UUID NOT NULL, \
         handled_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (consumer, message_id))",
        "CREATE TABLE IF NOT EXISTS bench_outbox (id BIGSERIAL PRIMARY KEY, message_id UUID NOT NULL, \
         routing_key TEXT NOT NULL, body BYTEA NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        "TRUNCATE outbox, inbox, bench_inbox, bench_outbox",
    ] {
        sqlx::query(statement).execute(&pool).await?;
    }
    Ok(pool)
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
async fn minimal_transactions(
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

/// A handler's minimal transaction: insert an inbox row, update one row, insert an outbox
/// row, commit.
pub(super) async fn minimal_transaction(pool: &PgPool, row: i32, body: &[u8]) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO bench_inbox (consumer, message_id) VALUES ('bench', $1)")
        .bind(Uuid::new_v4())
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE bench_counter SET n = n + 1 WHERE id = $1")
        .bind(row)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO bench_outbox (message_id, routing_key, body) VALUES ($1, 'bench', $2)",
    )
    .bind(Uuid::new_v4())
    .bind(body)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// A diagnostic: the same transaction through the project's inbox and outbox code.
async fn project_transactions(
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

/// Pools on the three service databases (`--databases`, in order orders, inventory, payments).
async fn service_databases(args: &BenchArgs) -> anyhow::Result<super::preload::Databases> {
    let url = |i: usize| {
        let name = args.databases.get(i).ok_or_else(|| {
            CliError::Refused(
                "--databases names three databases: orders, inventory, payments".into(),
            )
        })?;
        database_url(&args.server.database_server, name)
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

/// What the running system has done so far.
struct Counters {
    /// Deliveries from the three input queues.
    deliveries: i64,
    /// Commits in the three service databases.
    commits: i64,
    /// Busy CPU seconds of the whole machine.
    cpu_seconds: f64,
    at: Instant,
}

async fn counters(ctx: &Context, args: &BenchArgs) -> anyhow::Result<Counters> {
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
    let url = database_url(&args.server.database_server, "postgres")?;
    let pool = PgPool::connect(&url).await?;
    let commits: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(xact_commit), 0)::bigint FROM pg_stat_database WHERE datname = ANY($1)",
    )
    .bind(&args.databases)
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    Ok(Counters {
        deliveries,
        commits,
        cpu_seconds: busy_cpu_seconds()?,
        at: Instant::now(),
    })
}

/// How long the services are watched with no load for their background commits.
const BACKGROUND_WINDOW: Duration = Duration::from_secs(10);

/// Commits per second in the service databases with no load, from `since` (the system
/// settled after the load): the polls, samplers and sweeps every replica runs whatever
/// the load, which [`report`] takes out of the sagas' transactions.
async fn background_commit_rate(
    ctx: &Context,
    args: &BenchArgs,
    since: &Counters,
) -> anyhow::Result<f64> {
    tokio::time::sleep(BACKGROUND_WINDOW).await;
    let now = counters(ctx, args).await?;
    let seconds = now.at.duration_since(since.at).as_secs_f64();
    Ok(((now.commits - since.commits) as f64 / seconds).max(0.0))
}

/// Busy time of all CPUs since boot (`/proc/stat`: user, nice, system, irq, softirq,
/// steal), in seconds.
pub(super) fn busy_cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow::anyhow!("/proc/stat has no cpu line"))?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().map_err(|e| anyhow::anyhow!("/proc/stat: {e}")))
        .collect::<anyhow::Result<_>>()?;
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum::<f64>();
    // USER_HZ is 100 on every Linux architecture's ABI.
    Ok(busy / 100.0)
}

async fn settled_counters(
    ctx: &Context,
    args: &BenchArgs,
    before: &Counters,
) -> anyhow::Result<Counters> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = counters(ctx, args).await?;
    loop {
        tokio::time::sleep(Duration::from_secs(6)).await;
        let now = counters(ctx, args).await?;
        let settled = now.deliveries == last.deliveries && now.deliveries > before.deliveries;
        if settled || Instant::now() > deadline {
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
