//! The running service: its HTTP listener and its background tasks (consumer, relay,
//! timers) under one shutdown token. `main` and the tests both go through here.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use messaging::outbox::Outbox;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::timeout::TimeoutLayer;

use crate::api_error::MAX_BODY_BYTES;
use crate::health::Health;
use crate::http::{json_errors, with_ops_routes};

/// Longest time one HTTP request may take before it is answered 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Application {
    listener: TcpListener,
    router: Router,
    limits: crate::listener::ConnectionLimits,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// The broker links `/healthz` reports, for tasks that must know whether they are up.
    links: Vec<messaging::amqp::LinkState>,
}

impl Application {
    /// Binds the HTTP listener and wraps `api` with the shared routes and limits.
    pub async fn bind(
        addr: std::net::SocketAddr,
        api: Router,
        health: Health,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let listener = crate::listener::bind(addr)
            .with_context(|| format!("cannot listen on {addr}; is another process using it?"))?;
        let concurrency: usize = crate::config::env_parse("SAGA_HTTP_CONCURRENCY", 256)?;
        if concurrency == 0 {
            anyhow::bail!(
                "environment variable SAGA_HTTP_CONCURRENCY=0 is out of range: it must be at least 1"
            );
        }
        let links = health.links.iter().map(|(_, l)| l.clone()).collect();
        // One limit for the whole process, shared by every route.
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let auth = crate::auth::Authenticator::from_env().await?;
        let router = with_ops_routes(api, health)
            .layer(axum::middleware::from_fn_with_state(
                auth,
                crate::auth::require_bearer,
            ))
            .layer(axum::middleware::from_fn(crate::http::record_request))
            .layer(axum::middleware::from_fn(
                crate::request_span::trace_request,
            ))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            // Inside the timeout: requests past the limit wait, and time out with 408,
            // rather than pile up work.
            .layer(axum::middleware::from_fn_with_state(
                slots,
                crate::edge::limit_concurrency,
            ))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                REQUEST_TIMEOUT,
            ))
            // Outermost, so that it also sees the timeout layer's answers.
            .layer(axum::middleware::from_fn(json_errors));
        Ok(Application {
            listener,
            router,
            limits: crate::listener::ConnectionLimits::from_env()?,
            tasks: TaskTracker::new(),
            shutdown,
            links,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The broker links (consumer, relay): all up when the service can reach the broker.
    pub fn broker_links(&self) -> Vec<messaging::amqp::LinkState> {
        self.links.clone()
    }

    /// Runs `task` in the background until shutdown; it is awaited before the service exits.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Serves until the shutdown token fires, then waits for the background tasks to
    /// finish their in-flight work.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let addr = self.listener.local_addr()?;
        tracing::info!(%addr, "listening");
        let shutdown = self.shutdown.clone();
        crate::listener::serve(self.listener, self.router, self.limits, shutdown).await;
        // If the server stopped by itself, stop everything else too.
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Starts what every service runs the same way: its database (created and migrated), its
/// consumer, its outbox relay and housekeeping, and its HTTP API (`api` gets the pool and
/// the outbox its writers commit through, which hands their rows to the relay). Returns
/// the application, the pool and the outbox, for service-specific background tasks.
pub async fn launch<H: messaging::consumer::Handler>(
    config: &crate::ServiceConfig,
    migrations: &sqlx::migrate::Migrator,
    topology: messaging::topology::ServiceTopology<<H::Event as messaging::Event>::Kind>,
    handler: H,
    api: impl FnOnce(sqlx::PgPool, Outbox) -> Router,
    shutdown: CancellationToken,
) -> anyhow::Result<(Application, sqlx::PgPool, Outbox)> {
    // Before anything is emitted: the event versions this process writes.
    messaging::versions::configure_from_env::<<H::Event as messaging::Event>::Kind>()
        .map_err(anyhow::Error::msg)?;
    let migrator = messaging::migrator_with(migrations);
    let pool = crate::db::connect_and_migrate(&config.database_url, config.db_pool_size, &migrator)
        .await?;
    let relay = messaging::outbox::OutboxRelay::new(
        pool.clone(),
        &config.amqp_url,
        config.name,
        config.relay.clone(),
    );
    let outbox = relay.outbox();
    let consumer = messaging::consumer::EventConsumer::new(
        topology,
        pool.clone(),
        outbox.clone(),
        &config.amqp_url,
        handler,
        config.consumer.clone(),
    );
    let health = Health {
        pool: pool.clone(),
        links: vec![("consumer", consumer.link()), ("relay", relay.link())],
    };
    let app = Application::bind(
        config.http_addr,
        api(pool.clone(), outbox.clone()),
        health,
        shutdown.clone(),
    )
    .await?;
    app.spawn(consumer.run(shutdown.clone()));
    app.spawn(relay.run(shutdown.clone()));
    app.spawn(messaging::housekeeping::run(
        pool.clone(),
        config.retention.clone(),
        shutdown,
    ));
    Ok((app, pool, outbox))
}
