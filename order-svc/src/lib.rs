//! order-svc: owns orders; the only HTTP entry point for customers.
//!
//! - [`saga`]: the order's inputs (the events it consumes, declared once with
//!   `saga_inputs!`; its commands: place, cancel, deadline) and the one pure `decide` from
//!   them to a plan.
//! - [`handlers`]: the consumer: a batch's orders loaded, every event decided in order on
//!   them, what changed stored.
//! - [`staging`]: the staging tables every decision is applied to (the consumer's
//!   batches, placements, cancellations, the sweep), which the property tests run too.
//! - [`http`]: `POST /orders`, `GET /orders/{id}`, `GET /orders`, `POST /orders/{id}/cancel`.
//! - [`placing`]: the group commit of concurrent placements.
//! - [`openapi`]: the OpenAPI document of those routes (`GET /openapi.json`).
//! - [`deadline`]: cancels orders still open when their deadline passes.
//! - [`outage`]: stops the deadline while order-svc cannot work (no broker, no database,
//!   not running), recorded in its database.
//! - [`shedding`]: counts the backlog in the background; `POST /orders` refuses new
//!   orders (503 `overloaded`) once it reaches its bounds.
//! - [`store`]: the order tables' queries.

mod deadline;
mod handlers;
mod http;
pub mod openapi;
mod outage;
mod placing;
pub mod saga;
mod schema;
mod shedding;
pub mod staging;
mod store;

pub use shedding::BacklogBounds;

use std::time::Duration;

use events::EventType;
use messaging::topology::ServiceTopology;
use platform::{Application, ServiceConfig};
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "order-svc";

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone)]
pub struct OrderConfig {
    pub service: ServiceConfig,
    /// How long an order may stay pending/reserved before it is cancelled (`timeout`).
    pub deadline: Duration,
    /// The backlog at which `POST /orders` is shed.
    pub backlog: BacklogBounds,
}

impl OrderConfig {
    /// `SAGA_ORDER_*` and the shared `SAGA_*` variables; `SAGA_ORDER_DEADLINE_SECS` (30),
    /// `SAGA_ORDER_MAX_UNPUBLISHED` (2000), `SAGA_ORDER_MAX_OPEN` (1000).
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(OrderConfig {
            service: ServiceConfig::from_env(SERVICE, "ORDER", 8080, "orders")?,
            deadline: deadline_from_env()?,
            backlog: BacklogBounds::from_env()?,
        })
    }
}

fn deadline_from_env() -> anyhow::Result<Duration> {
    let secs: f64 = platform::config::env_parse("SAGA_ORDER_DEADLINE_SECS", 30.0)?;
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            anyhow::anyhow!("SAGA_ORDER_DEADLINE_SECS={secs} must be a positive number of seconds")
        })
}

/// The service's queues, bound to the events its inputs declare.
pub fn topology() -> ServiceTopology<EventType> {
    ServiceTopology::new(SERVICE, saga::OrderInput::CONSUMES)
}

/// The process: telemetry, configuration, build, run until SIGTERM or Ctrl-C. A plain
/// function, so that the service is compiled here once and not again in its binary
/// ([`platform::runtime`] says why).
pub fn main() -> anyhow::Result<()> {
    platform::runtime::run_service(SERVICE, OrderConfig::from_env, build)
}

/// Builds the running service: database, consumer, relay, housekeeping, deadline sweep,
/// backlog sampler and HTTP.
pub async fn build(
    config: OrderConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<Application> {
    let deadline = config.deadline;
    let (sampler, admission) = shedding::sampler(config.backlog);
    let api = |pool: sqlx::PgPool, outbox: messaging::outbox::Outbox| {
        let placer = placing::Placer::start(pool.clone(), outbox.clone());
        http::router(http::OrderApi {
            pool,
            outbox,
            deadline,
            placer,
            admission,
        })
        .merge(platform::openapi::routes(openapi::document()))
    };
    let (app, pool, outbox) = platform::app::launch(
        &config.service,
        &MIGRATIONS,
        topology(),
        platform::staged::StagedHandler(handlers::OrderHandler),
        api,
        shutdown.clone(),
    )
    .await?;
    let sweep_every = (deadline / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let clock = outage::OutageClock::new(app.broker_links(), sweep_every);
    app.spawn(sampler.run(pool.clone(), shutdown.clone()));
    app.spawn(deadline::run(pool, outbox, sweep_every, clock, shutdown));
    Ok(app)
}
