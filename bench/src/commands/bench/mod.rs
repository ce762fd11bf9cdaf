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
//!
//! The broker's part is in `queue`, the database's in `transactions`, the relay's in
//! `relay`, what the running system did in `counters`, and the figures put together in
//! `report`; the work in plain SQL and AMQP is shared with `bench-path` (`crate::plain`).

mod counters;
mod queue;
mod relay;
mod report;
mod transactions;

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use sagactl::context::{CliError, Context};
use sagactl::output;

use crate::cli::{BenchArgs, LoadArgs};
use crate::cpu::busy_cpu_seconds;
use crate::plain::{database_url, scratch_database};
use counters::{background_commit_rate, counters, settled_counters};
use queue::{broker_ceiling, broker_hop_ms};
use relay::relay_backlog;
use report::{Ceilings, Floor, ProjectCosts, render, report};
use transactions::{minimal_transactions, project_transactions, transaction_ms};

/// Messages and transactions timed one at a time for the latency floor.
const FLOOR_SAMPLES: usize = 200;

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

/// The median of `times`, in milliseconds.
fn median_ms(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times
        .get(times.len() / 2)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}
