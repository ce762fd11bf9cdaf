//! inventory-svc: owns stock and reservations.
//!
//! - [`saga`]: what a reservation does on each order event (pure).
//! - [`handlers`]: OrderCreated, OrderConfirmed, OrderCancelled and StockAdjusted.
//! - [`http`]: `GET /stock/{sku}`, `GET /stock`, `GET /reservations/{order_id}`.
//! - [`store`]: the stock and reservation tables' queries.

pub mod handlers;
pub mod http;
pub mod saga;
pub mod store;

use events::consumer::EventConsumer;
use events::outbox::OutboxRelay;
use events::topology::ServiceTopology;
use platform::http::Health;
use platform::{Application, ServiceConfig};
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "inventory-svc";

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// `SAGA_INVENTORY_*` and the shared `SAGA_*` variables.
pub fn config_from_env() -> anyhow::Result<ServiceConfig> {
    ServiceConfig::from_env(SERVICE, "INVENTORY", 8081, "inventory")
}

pub fn topology() -> ServiceTopology {
    ServiceTopology::new(SERVICE, &handlers::CONSUMES)
}

/// Builds the running service: database, consumer, relay and HTTP.
pub async fn build(c: ServiceConfig, shutdown: CancellationToken) -> anyhow::Result<Application> {
    let migrator = events::migrator_with(&MIGRATIONS);
    let pool =
        platform::db::connect_and_migrate(&c.database_url, c.db_pool_size, &migrator).await?;
    let consumer = EventConsumer::new(
        topology(),
        pool.clone(),
        &c.amqp_url,
        handlers::InventoryHandler,
        c.consumer.clone(),
    );
    let relay = OutboxRelay::new(pool.clone(), &c.amqp_url, SERVICE, c.relay.clone());
    let health = Health {
        pool: pool.clone(),
        links: vec![("consumer", consumer.link()), ("relay", relay.link())],
    };
    let app = Application::bind(c.http_addr, http::router(pool), health, shutdown.clone()).await?;
    app.spawn(consumer.run(shutdown.clone()));
    app.spawn(relay.run(shutdown));
    Ok(app)
}
