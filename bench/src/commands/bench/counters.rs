//! What the running system has done, read before and after the load: deliveries from
//! the three input queues (management API), commits in the three service databases
//! (`pg_stat_database`) and the machine's busy CPU, and the commits it makes with no load.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use sagactl::context::Context;

use crate::cli::BenchArgs;
use crate::cpu::busy_cpu_seconds;
use crate::plain::database_url;

/// What the running system has done so far.
pub(super) struct Counters {
    /// Deliveries from the three input queues.
    pub deliveries: i64,
    /// Commits in the three service databases.
    pub commits: i64,
    /// Busy CPU seconds of the whole machine.
    pub cpu_seconds: f64,
    pub at: Instant,
}

pub(super) async fn counters(ctx: &Context, args: &BenchArgs) -> anyhow::Result<Counters> {
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
/// the load, which the report takes out of the sagas' transactions.
pub(super) async fn background_commit_rate(
    ctx: &Context,
    args: &BenchArgs,
    since: &Counters,
) -> anyhow::Result<f64> {
    tokio::time::sleep(BACKGROUND_WINDOW).await;
    let now = counters(ctx, args).await?;
    let seconds = now.at.duration_since(since.at).as_secs_f64();
    Ok(((now.commits - since.commits) as f64 / seconds).max(0.0))
}

pub(super) async fn settled_counters(
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
