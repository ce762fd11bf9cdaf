//! `saga-bench bench-path`: the latency the machine itself gives a saga's path at a chosen
//! load, with no project code in the way. The latency floor of `saga-bench bench` times the
//! path's steps one at a time on an idle machine; this offers whole sagas at a rate, open
//! loop, so the steps of many sagas share the cores as the real saga's do.
//!
//! A saga here is the real one's shape in plain lapin and SQL: a placement (one minimal
//! transaction, then a confirmed publish of `created`), then five steps, each consuming one
//! durable quorum queue with manual acks, committing one minimal transaction per delivery
//! (insert an inbox row, update one row, insert an outbox row: the database ceiling's
//! transaction), publishing its event with a confirm when it has one, and acking:
//!
//! ```text
//! placed ─ created ─▶ inventory ─ reserved ─┬─▶ payment ─ paid ─▶ order ─ confirmed ─┬─▶ inventory
//!                                          └─▶ order (no event)                     └─▶ observer
//! ```
//!
//! Six transactions and five deliveries per saga, as the real saga needs; four of each one
//! after the other from placed to the observer, which takes `confirmed` from a queue of its
//! own as the load generator takes the final event. No batching, no outbox relay: each
//! delivery is a transaction and a publish of its own, handled as soon as it arrives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::task::JoinSet;

use sagactl::context::{CliError, Context};
use sagactl::output;

use crate::cli::BenchPathArgs;
use crate::cpu::busy_cpu_seconds;
use crate::plain::{BODY_BYTES, WINDOW, close_quietly, minimal_transaction, scratch_database};

/// The scratch database of this command: `saga-bench bench` has one of its own, which it
/// truncates as it goes.
const DATABASE: &str = "saga_bench_path";

/// One step of the path: the queue it consumes, bound to the key of the event it takes,
/// and the event it publishes after its transaction, if any.
struct Step {
    name: &'static str,
    takes: &'static str,
    emits: Option<&'static str>,
}

const STEPS: [Step; 5] = [
    Step {
        name: "inventory",
        takes: "created",
        emits: Some("reserved"),
    },
    Step {
        name: "payment",
        takes: "reserved",
        emits: Some("paid"),
    },
    Step {
        name: "order-reserved",
        takes: "reserved",
        emits: None,
    },
    Step {
        name: "order",
        takes: "paid",
        emits: Some("confirmed"),
    },
    Step {
        name: "inventory-confirmed",
        takes: "confirmed",
        emits: None,
    },
];

/// The event that ends a saga, as the observer sees it.
const FINAL: &str = "confirmed";

/// How long deleting the path's queues and exchange may take before the command ends
/// without it.
const TEARDOWN_WITHIN: Duration = Duration::from_secs(30);

pub(super) async fn run(ctx: &Context, args: BenchPathArgs) -> anyhow::Result<()> {
    let pool = scratch_database(&args.server.database_server, DATABASE, args.pool).await?;
    let path = Path::open(ctx).await?;
    let result = path.run(ctx, &pool, &args).await;
    if tokio::time::timeout(TEARDOWN_WITHIN, path.close())
        .await
        .is_err()
    {
        tracing::debug!("deleting the path's queues and exchange ran out of time");
    }
    pool.close().await;
    let report = result?;
    output::show(ctx, &report, render);
    if report["lost"].as_u64().unwrap_or(0) > 0 {
        return Err(CliError::Refused(format!(
            "{} sagas did not reach the observer in time",
            report["lost"]
        ))
        .into());
    }
    Ok(())
}

/// The path's exchange and queues, and the connection and channel that set them up.
struct Path {
    exchange: String,
    queues: Vec<String>,
    setup: Channel,
    conn: Connection,
}

impl Path {
    async fn open(ctx: &Context) -> anyhow::Result<Path> {
        let conn = ctx.broker("bench-path").await?;
        let setup = conn
            .create_channel()
            .await
            .map_err(|e| ctx.broker_unreachable(e))?;
        let exchange = format!("{}.path.{}", ctx.program, std::process::id());
        setup
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut path = Path {
            queues: Vec::new(),
            exchange,
            setup,
            conn,
        };
        for step in &STEPS {
            let queue = format!("{}.{}", path.exchange, step.name);
            messaging::topology::declare_quorum(&path.setup, &queue, FieldTable::default()).await?;
            path.queues.push(queue.clone());
            path.bind(&queue, step.takes).await?;
        }
        Ok(path)
    }

    async fn bind(&self, queue: &str, key: &str) -> lapin::Result<()> {
        self.setup
            .queue_bind(
                queue.into(),
                self.exchange.as_str().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// Runs `args.sagas` sagas offered at `args.rate`; the report.
    async fn run(
        &self,
        ctx: &Context,
        pool: &PgPool,
        args: &BenchPathArgs,
    ) -> anyhow::Result<Value> {
        let total = args.sagas as usize;
        let observer = self.observe(ctx, total).await?;
        // A connection per step, as each service has its own; open until the end.
        let mut connections = Vec::new();
        let mut steps = JoinSet::new();
        for (step, queue) in STEPS.iter().zip(&self.queues) {
            let conn = ctx.broker(&format!("bench-path {}", step.name)).await?;
            let consumer = consume(&conn, queue, WINDOW as u16).await?;
            let publisher = confirming(&conn).await?;
            steps.spawn(run_step(
                consumer,
                step.emits
                    .map(|key| (publisher, self.exchange.clone(), key)),
                pool.clone(),
            ));
            connections.push(conn);
        }
        let placer = ctx.broker("bench-path placing").await?;
        let publisher = confirming(&placer).await?;
        connections.push(placer);
        let cpu_before = busy_cpu_seconds()?;
        // Open loop: saga i starts at its time, whatever the others do, and its latency
        // runs from that time (a placement that starts late counts its wait).
        let started = Instant::now();
        let interval = Duration::from_secs_f64(1.0 / args.rate);
        let start_of = |i: usize| started + interval.mul_f64(i as f64);
        let mut placements = JoinSet::new();
        for i in 0..total {
            tokio::time::sleep_until(start_of(i).into()).await;
            let (pool, publisher, exchange) =
                (pool.clone(), publisher.clone(), self.exchange.clone());
            placements.spawn(async move {
                let body = saga_body(i);
                minimal_transaction(&pool, (i % 1024) as i32, &body).await?;
                publish(&publisher, &exchange, "created", &body).await
            });
            reap(&mut placements)?;
            if let Some(ended) = steps.try_join_next() {
                return Err(step_ended(ended));
            }
        }
        while let Some(placed) = placements.join_next().await {
            placed??;
        }
        let seen = tokio::select! {
            seen = observer.wait(Duration::from_secs(args.wait_secs)) => seen,
            Some(ended) = steps.join_next() => return Err(step_ended(ended)),
        };
        let cpu = busy_cpu_seconds()? - cpu_before;
        // The connections first: each step's consumer ends with its connection, and no
        // channel is closed by a task's end while its connection closes.
        for conn in connections {
            sagactl::context::close(conn).await;
        }
        steps.abort_all();
        let ended: Vec<(Instant, Instant)> = seen
            .into_iter()
            .filter(|(i, _)| *i < total)
            .map(|(i, at)| (start_of(i), at))
            .collect();
        report(args, started, &ended, cpu)
    }

    /// The observer's own queue, bound to the final event, exclusive and auto-deleted
    /// (as the load generator's), consumed with no acks.
    async fn observe(&self, ctx: &Context, total: usize) -> anyhow::Result<Observer> {
        let conn = ctx.broker("bench-path observer").await?;
        let channel = conn.create_channel().await?;
        let queue = format!("{}.observer", self.exchange);
        let mut deliveries =
            sagactl::bus::watcher_queue(&channel, &queue, &self.exchange, &[FINAL], "bench-path")
                .await?;
        let (done, seen) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ended: Vec<(usize, Instant)> = Vec::with_capacity(total);
            while ended.len() < total {
                let Some(Ok(delivery)) = deliveries.next().await else {
                    break;
                };
                let at = Instant::now();
                if let Some(i) = saga_index(&delivery.data) {
                    ended.push((i, at));
                }
            }
            let _ = done.send(ended);
        });
        Ok(Observer { conn, task, seen })
    }

    /// Deletes the path's queues and exchange; a failure changes no figure, so it is
    /// only logged.
    async fn close(self) {
        for queue in &self.queues {
            if let Err(e) = self
                .setup
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
            {
                tracing::debug!(error = %e, queue, "deleting a path queue failed");
            }
        }
        close_quietly(
            self.setup
                .exchange_delete(
                    self.exchange.as_str().into(),
                    ExchangeDeleteOptions::default(),
                )
                .await,
        );
        sagactl::context::close(self.conn).await;
    }
}

/// The observer's connection and task, and the sagas it saw end, each with when.
struct Observer {
    conn: Connection,
    task: tokio::task::JoinHandle<()>,
    seen: tokio::sync::oneshot::Receiver<Vec<(usize, Instant)>>,
}

impl Observer {
    /// Every saga seen, or those seen when `limit` has passed since the last placement.
    async fn wait(self, limit: Duration) -> Vec<(usize, Instant)> {
        let Observer {
            conn,
            task,
            mut seen,
        } = self;
        let all = tokio::time::timeout(limit, &mut seen).await;
        // Closing the connection ends the consumer, and with it the task, which hands over
        // the sagas it saw so far if it had not seen them all.
        sagactl::context::close(conn).await;
        let ended = match all {
            Ok(Ok(ended)) => ended,
            _ => tokio::time::timeout(Duration::from_secs(5), seen)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
        };
        task.abort();
        ended
    }
}

/// One step: every delivery of its queue, as soon as it arrives, in a task of its own:
/// the minimal transaction, the confirmed publish of its event (if any), the ack.
async fn run_step(
    mut deliveries: lapin::Consumer,
    emits: Option<(Channel, String, &'static str)>,
    pool: PgPool,
) -> anyhow::Result<()> {
    let emits = Arc::new(emits);
    let mut handling = JoinSet::new();
    while let Some(delivery) = deliveries.next().await {
        let delivery = delivery?;
        let (pool, emits) = (pool.clone(), emits.clone());
        handling.spawn(async move {
            let row = saga_index(&delivery.data).unwrap_or(0) % 1024;
            minimal_transaction(&pool, row as i32, &delivery.data).await?;
            if let Some((channel, exchange, key)) = emits.as_ref() {
                publish(channel, exchange, key, &delivery.data).await?;
            }
            delivery.acker.ack(BasicAckOptions::default()).await?;
            Ok(())
        });
        reap(&mut handling)?;
    }
    anyhow::bail!("the broker ended a step's consumer")
}

/// Why a step that should run until the end stopped.
fn step_ended(joined: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Error {
    match joined {
        Ok(Err(e)) => e,
        Ok(Ok(())) => anyhow::anyhow!("a step of the path ended early"),
        Err(e) => e.into(),
    }
}

/// Collects the tasks that have finished, failing on the first that failed.
fn reap(tasks: &mut JoinSet<anyhow::Result<()>>) -> anyhow::Result<()> {
    while let Some(done) = tasks.try_join_next() {
        done??;
    }
    Ok(())
}

async fn consume(conn: &Connection, queue: &str, prefetch: u16) -> lapin::Result<lapin::Consumer> {
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    channel
        .basic_consume(
            queue.into(),
            "bench-path".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
}

async fn confirming(conn: &Connection) -> lapin::Result<Channel> {
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Publishes a persistent message and waits for the broker's confirm.
async fn publish(channel: &Channel, exchange: &str, key: &str, body: &[u8]) -> anyhow::Result<()> {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    if confirm.is_nack() {
        anyhow::bail!("the broker refused a message of the path ({key})");
    }
    Ok(())
}

/// A saga's message: its index, then padding to the benchmark's message size.
fn saga_body(i: usize) -> Vec<u8> {
    let mut body = (i as u64).to_le_bytes().to_vec();
    body.resize(BODY_BYTES, b'x');
    body
}

fn saga_index(body: &[u8]) -> Option<usize> {
    let bytes: [u8; 8] = body.get(..8)?.try_into().ok()?;
    usize::try_from(u64::from_le_bytes(bytes)).ok()
}

/// The report of a run that began at `started`: `ended` holds each saga seen, with the
/// time it was due to start and the time the observer saw its end.
fn report(
    args: &BenchPathArgs,
    started: Instant,
    ended: &[(Instant, Instant)],
    cpu_seconds: f64,
) -> anyhow::Result<Value> {
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut last = started;
    for (t0, at) in ended {
        latency.saturating_record(at.saturating_duration_since(*t0).as_micros().max(1) as u64);
        last = last.max(*at);
    }
    let completed = latency.len();
    let elapsed = last.duration_since(started).as_secs_f64().max(1e-9);
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    Ok(json!({
        "sagas": args.sagas,
        "completed": completed,
        "lost": u64::from(args.sagas).saturating_sub(completed),
        "offered_rate": args.rate,
        "sagas_per_second": completed as f64 / elapsed,
        "latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99),
                       "max": latency.max() as f64 / 1000.0, "mean": latency.mean() / 1000.0},
        "transactions_per_saga": 6,
        "deliveries_per_saga": 5,
        "cpu_seconds_per_saga": (completed > 0).then(|| cpu_seconds / completed as f64),
    }))
}

fn render(r: &Value) -> String {
    let f = |k: &str| r.pointer(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    format!(
        "the machine's own saga path (6 minimal transactions and 5 confirmed deliveries per saga, no project code)\n\
         sagas      {} offered at {} sagas/s, {} reached the observer, {} lost\n\
         throughput {:.1} sagas/s\n\
         latency    p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms\n\
         CPU        {:.2} ms of the machine per saga",
        r["sagas"],
        r["offered_rate"],
        r["completed"],
        r["lost"],
        f("/sagas_per_second"),
        f("/latency_ms/p50"),
        f("/latency_ms/p90"),
        f("/latency_ms/p99"),
        f("/latency_ms/max"),
        f("/cpu_seconds_per_saga") * 1000.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sagas_message_carries_its_index_at_the_benchmarks_size() {
        let body = saga_body(123_456);
        assert_eq!(body.len(), BODY_BYTES);
        assert_eq!(saga_index(&body), Some(123_456));
        assert_eq!(saga_index(b"short"), None);
    }

    #[test]
    fn every_event_of_the_path_has_a_taker_and_the_path_has_the_sagas_shape() {
        let emitted: Vec<&str> = STEPS.iter().filter_map(|s| s.emits).collect();
        for key in &emitted {
            assert!(
                STEPS.iter().any(|s| s.takes == *key),
                "{key} would be unroutable"
            );
        }
        // Five deliveries: one per step; six transactions: the placement and one per step.
        assert_eq!(STEPS.len(), 5);
        assert!(emitted.contains(&FINAL));
    }
}
