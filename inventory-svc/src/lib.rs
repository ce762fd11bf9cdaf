//! inventory-svc: owns stock and reservations.
//!
//! - [`saga`]: what a reservation does on each order event (pure).
//! - [`handlers`]: OrderCreated, OrderConfirmed, OrderCancelled and StockAdjusted.
//! - [`http`]: `GET /stock/{sku}`, `GET /stock`, `GET /reservations/{order_id}`.
//! - [`openapi`]: the OpenAPI document of those routes (`GET /openapi.json`).
//! - [`store`]: the stock and reservation tables' queries.

pub mod handlers;
pub mod http;
pub mod openapi;
pub mod saga;
pub mod store;

use events::topology::ServiceTopology;
use platform::{Application, ServiceConfig};
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "inventory-svc";

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// `SAGA_INVENTORY_*` and the shared `SAGA_*` variables.
pub fn config_from_env() -> anyhow::Result<ServiceConfig> {
    ServiceConfig::from_env(SERVICE, "INVENTORY", 8081, "inventory")
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
        handlers::InventoryHandler,
        http::router,
        shutdown,
    )
    .await?;
    Ok(app)
}
