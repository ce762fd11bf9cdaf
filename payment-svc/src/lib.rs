//! payment-svc: owns customer wallets and payments.
//!
//! - [`saga`]: what a payment does on each order event, and whether a wallet can pay (pure).
//! - [`handlers`]: StockReserved, OrderCancelled and FundsDeposited.
//! - [`http`]: `GET /wallets/{customer_id}`, `GET /wallets`, `GET /payments/{order_id}`.
//! - [`store`]: the wallet and payment tables' queries.

pub mod handlers;
pub mod http;
pub mod saga;
pub mod store;

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

/// The service's queues, bound to the event types its handler consumes.
pub fn topology() -> ServiceTopology<EventType> {
    ServiceTopology::new(
        SERVICE,
        &[
            EventType::StockReserved,
            EventType::OrderCancelled,
            EventType::FundsDeposited,
        ],
    )
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
