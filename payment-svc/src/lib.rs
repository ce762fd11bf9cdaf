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

use events::consumer::EventConsumer;
use events::outbox::OutboxRelay;
use events::topology::ServiceTopology;
use platform::http::Health;
use platform::{Application, ServiceConfig};
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "payment-svc";

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// `SAGA_PAYMENT_*` and the shared `SAGA_*` variables.
pub fn config_from_env() -> anyhow::Result<ServiceConfig> {
    ServiceConfig::from_env(SERVICE, "PAYMENT", 8082, "payments")
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
        handlers::PaymentHandler,
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
