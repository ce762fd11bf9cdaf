//! payment-svc: owns customer wallets and payments.
//!
//! - [`saga`]: the inputs payment-svc consumes (declared once with `saga_inputs!`) and the
//!   one pure `decide` from them to a plan.
//! - [`handlers`]: the consumer: a batch's rows loaded, every event decided in order on
//!   them in memory, what changed stored.
//! - [`staging`]: the staging tables a batch is decided on, which the property tests run
//!   too.
//! - [`http`]: `GET /wallets/{customer_id}`, `GET /wallets`, `GET /payments/{order_id}`.
//! - [`openapi`]: the OpenAPI document of those routes (`GET /openapi.json`).
//! - [`store`]: the wallet and payment tables' queries.

mod handlers;
mod http;
pub mod openapi;
pub mod saga;
mod schema;
pub mod staging;
mod store;

use events::EventType;
use messaging::topology::ServiceTopology;
use platform::{Application, ServiceConfig};
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "payment-svc";

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// `SAGA_PAYMENT_*` and the shared `SAGA_*` variables.
pub fn config_from_env() -> anyhow::Result<ServiceConfig> {
    ServiceConfig::from_env(SERVICE, "PAYMENT", 8082, "payments")
}

/// The service's queues, bound to the events its inputs declare.
pub fn topology() -> ServiceTopology<EventType> {
    ServiceTopology::new(SERVICE, saga::PaymentInput::CONSUMES)
}

/// The process: telemetry, configuration, build, run until SIGTERM or Ctrl-C. A plain
/// function, so that the service is compiled here once and not again in its binary
/// ([`platform::runtime`] says why).
pub fn main() -> anyhow::Result<()> {
    platform::runtime::run_service(SERVICE, config_from_env, build)
}

/// Builds the running service: database, consumer, relay, housekeeping and HTTP.
pub async fn build(c: ServiceConfig, shutdown: CancellationToken) -> anyhow::Result<Application> {
    let (app, ..) = platform::app::launch(
        &c,
        &MIGRATIONS,
        topology(),
        platform::staged::StagedHandler(handlers::PaymentHandler),
        |pool, _| http::router(pool).merge(platform::openapi::routes(openapi::document())),
        shutdown,
    )
    .await?;
    Ok(app)
}
