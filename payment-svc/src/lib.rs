//! payment-svc: owns customer wallets and payments.
//!
//! - [`saga`]: what a payment does on each order event, and whether a wallet can pay (pure).
//! - [`handlers`]: StockReserved, OrderCancelled and FundsDeposited.
//! - [`http`]: `GET /wallets/{customer_id}`, `GET /wallets`, `GET /payments/{order_id}`.
//! - [`openapi`]: the OpenAPI document of those routes (`GET /openapi.json`).
//! - [`store`]: the wallet and payment tables' queries.

pub mod handlers;
pub mod http;
pub mod openapi;
pub mod saga;
pub mod store;

use events::topology::ServiceTopology;
use platform::{Application, ServiceConfig};
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "payment-svc";

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// `SAGA_PAYMENT_*` and the shared `SAGA_*` variables.
pub fn config_from_env() -> anyhow::Result<ServiceConfig> {
    ServiceConfig::from_env(SERVICE, "PAYMENT", 8082, "payments")
}

pub fn topology() -> ServiceTopology {
    events::topology::saga_service(SERVICE).unwrap_or_else(|| ServiceTopology::new(SERVICE, &[]))
}

/// Builds the running service: database, consumer, relay, housekeeping and HTTP.
pub async fn build(c: ServiceConfig, shutdown: CancellationToken) -> anyhow::Result<Application> {
    let (app, _) = platform::app::launch(
        &c,
        &MIGRATIONS,
        topology(),
        handlers::PaymentHandler,
        http::router,
        shutdown,
    )
    .await?;
    Ok(app)
}
