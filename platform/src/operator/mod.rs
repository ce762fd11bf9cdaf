//! The operator's endpoints every service serves about itself: its dead-letter queue
//! (grouped by cause, listed with a filter, redriven, purged, one message corrected and
//! replayed) and its record of hands on the system (`GET /audit`).
//!
//! The service acts on its own dead-letter queue, so an action is recorded by the one that
//! carries it out, with the caller's JWT `sub` ([`messaging::audit`]); nobody needs broker
//! rights on the dead-letter queues to triage them.
//!
//! - [`dead_letter`]: one dead letter as an operator sees it, and the filter.
//! - [`scan`]: reading a queue from end to end, holding nothing.
//! - [`jobs`]: the job rows any replica answers for.
//! - [`runners`]: what redrive, purge and edit do.
//! - [`follow`]: following sent messages until each ended.
//! - [`routes`], [`audit_routes`]: the HTTP handlers.

pub mod audit_routes;
pub mod dead_letter;
pub mod follow;
pub mod jobs;
pub mod routes;
pub mod runners;
pub mod scan;

use std::sync::Arc;

use axum::Router;
use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// What the operator's endpoints need: the service's database and broker, its name.
#[derive(Clone)]
pub struct OperatorState(Arc<Inner>);

struct Inner {
    pool: PgPool,
    amqp_url: String,
    service: &'static str,
    /// Scans of the dead-letter queue run one at a time (see [`scan`]).
    scan_lock: Mutex<()>,
    shutdown: CancellationToken,
}

impl OperatorState {
    pub fn new(
        pool: PgPool,
        amqp_url: &str,
        service: &'static str,
        shutdown: CancellationToken,
    ) -> Self {
        OperatorState(Arc::new(Inner {
            pool,
            amqp_url: amqp_url.to_owned(),
            service,
            scan_lock: Mutex::new(()),
            shutdown,
        }))
    }

    pub fn pool(&self) -> &PgPool {
        &self.0.pool
    }

    pub fn service(&self) -> &'static str {
        self.0.service
    }

    pub fn dead_letter_queue(&self) -> String {
        messaging::topology::dead_letter_queue(self.0.service)
    }

    pub(crate) fn scan_lock(&self) -> &Mutex<()> {
        &self.0.scan_lock
    }

    /// Whether the service is shutting down: a job stops taking messages.
    pub(crate) fn stopping(&self) -> bool {
        self.0.shutdown.is_cancelled()
    }

    /// A broker connection of its own for one operation.
    pub(crate) async fn connect(&self, what: &str) -> lapin::Result<lapin::Connection> {
        messaging::amqp::connect(&self.0.amqp_url, &format!("{} dlq {what}", self.0.service)).await
    }
}

/// The routes, to merge into the service's API.
pub fn router(state: OperatorState) -> Router {
    routes::router(state.clone()).merge(audit_routes::router(state))
}
