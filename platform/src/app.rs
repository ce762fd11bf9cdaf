//! The running service: its HTTP listener and its background tasks (consumer, relay,
//! timers) under one shutdown token, and the drain that token starts ([`crate::drain`]):
//! the listener, the consumer and the timers first, the relay once nothing writes any
//! more. `main` and the tests both go through here.

use std::future::Future;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use messaging::outbox::Outbox;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api_error::MAX_BODY_BYTES;
use crate::drain::{Drain, DrainSettings};
use crate::health::Health;
use crate::http::{json_errors, with_ops_routes};

pub use crate::edge::REQUEST_TIMEOUT;

pub struct Application {
    listener: TcpListener,
    router: Router,
    limits: crate::listener::ConnectionLimits,
    /// Stopped by the shutdown token: the consumer and the timers.
    tasks: TaskTracker,
    /// Stopped only once `tasks` and the HTTP server are done: the relay, which publishes
    /// what they committed.
    last: TaskTracker,
    last_stop: CancellationToken,
    shutdown: CancellationToken,
    drain: DrainSettings,
    /// The broker links `/healthz` reports, for tasks that must know whether they are up.
    links: Vec<messaging::amqp::LinkState>,
}

impl Application {
    /// Binds the HTTP listener and wraps `api` with the shared routes and limits. The
    /// shutdown token (which `health` reports as draining) starts the drain.
    pub async fn bind(
        addr: std::net::SocketAddr,
        api: Router,
        health: Health,
        drain: DrainSettings,
    ) -> anyhow::Result<Self> {
        let shutdown = health.draining.clone();
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
            .layer(axum::middleware::from_fn(crate::edge::time_limit))
            // Outermost, so that it also sees the timeout layer's answers.
            .layer(axum::middleware::from_fn(json_errors));
        Ok(Application {
            listener,
            router,
            limits: crate::listener::ConnectionLimits::from_env()?,
            tasks: TaskTracker::new(),
            last: TaskTracker::new(),
            last_stop: CancellationToken::new(),
            shutdown,
            drain,
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

    /// Runs `relay` until everything else has stopped (it publishes what they committed),
    /// then lets it drain.
    fn spawn_relay(&self, relay: messaging::outbox::OutboxRelay) {
        self.last.spawn(relay.run(self.last_stop.clone()));
    }

    /// Serves until the shutdown token fires, then drains in the order of [`crate::drain`]
    /// within the grace period: readiness is already 503 (the token is what `/healthz`
    /// reports); the HTTP listener keeps accepting for the delay while the consumer and the
    /// timers finish what they hold, then stops accepting and answers what is in flight;
    /// then the relay publishes or gives back what was handed to it.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let addr = self.listener.local_addr()?;
        tracing::info!(%addr, "listening");
        let accepting = CancellationToken::new();
        let server =
            crate::listener::serve(self.listener, self.router, self.limits, accepting.clone());
        tokio::pin!(server);
        let server_ended = tokio::select! {
            _ = self.shutdown.cancelled() => false,
            () = &mut server => true,
        };
        // If the server stopped by itself, stop everything else too.
        self.shutdown.cancel();
        let drain = Drain::begin(&self.drain);
        let delay = self.drain.delay;
        let (tasks, last, last_stop) = (self.tasks, self.last, self.last_stop);
        drain
            .within_grace(async {
                let http = async {
                    if !server_ended {
                        tokio::time::sleep(delay).await;
                        accepting.cancel();
                        drain.step("the HTTP listener stopped accepting");
                        server.await;
                        drain.step("the HTTP requests in flight answered");
                    }
                };
                let background = async {
                    tasks.close();
                    tasks.wait().await;
                    drain.step("the consumer and the timers stopped");
                };
                tokio::join!(http, background);
                last_stop.cancel();
                last.close();
                last.wait().await;
                drain.step("the outbox relay drained");
            })
            .await;
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
        draining: shutdown.clone(),
    };
    let operator = crate::operator::OperatorState::new(
        pool.clone(),
        &config.amqp_url,
        config.name,
        shutdown.clone(),
    );
    let app = Application::bind(
        config.http_addr,
        api(pool.clone(), outbox.clone()).merge(crate::operator::router(operator)),
        health,
        config.drain.clone(),
    )
    .await?;
    app.spawn(consumer.run(shutdown.clone()));
    app.spawn_relay(relay);
    app.spawn(messaging::housekeeping::run(
        pool.clone(),
        config.retention.clone(),
        shutdown,
    ));
    Ok((app, pool, outbox))
}
