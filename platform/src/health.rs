//! The Kubernetes probes. `/healthz/live` checks nothing but that the process answers, so
//! an outage of the database or the broker never gets a pod restarted (a restart cannot
//! bring a dependency back, and would crash-loop while it is away). `/healthz/ready` is 200
//! when the service can serve its HTTP API, that is when its database answers; the body
//! reports the database and the broker separately, so an operator sees which one is away.
//! From the moment a drain begins (SIGTERM, [`crate::drain`]) `/healthz/ready` and
//! `/healthz` answer 503 with `"status": "draining"`, so that load balancers stop sending
//! while the process finishes what it holds.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use messaging::amqp::LinkState;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// What `/healthz` checks: the database answers, and every broker link is up; and whether
/// the service drains.
#[derive(Clone)]
pub struct Health {
    pub pool: PgPool,
    pub links: Vec<(&'static str, LinkState)>,
    /// Cancelled when the drain begins: the shutdown token.
    pub draining: CancellationToken,
}

impl Health {
    pub async fn check(&self) -> (bool, serde_json::Value) {
        let db_ok = messaging::pause::database_answers(&self.pool).await;
        let mut broker = serde_json::Map::new();
        let mut links_ok = true;
        for (name, link) in &self.links {
            links_ok &= link.is_up();
            broker.insert(
                (*name).to_owned(),
                json!(if link.is_up() { "up" } else { "down" }),
            );
        }
        let draining = self.draining.is_cancelled();
        let ok = db_ok && links_ok && !draining;
        let status = match (draining, ok) {
            (true, _) => "draining",
            (false, true) => "ok",
            (false, false) => "unavailable",
        };
        (
            ok,
            json!({
                "status": status,
                "database": if db_ok { "up" } else { "down" },
                "broker": broker,
                "auth": crate::auth::mode_label(),
            }),
        )
    }
}

/// `GET /healthz/live`: 200 while the process answers.
#[utoipa::path(get, path = "/healthz/live", tag = "operations",
    responses((status = 200, description = "The process answers (no dependency is checked)", body = crate::api_schema::HealthReport)))]
pub async fn live() -> Response {
    (StatusCode::OK, Json(json!({"status": "live"}))).into_response()
}

/// `GET /healthz/ready`: 200 when the database answers and the service is not draining;
/// the broker links are reported but do not decide (the outbox keeps what is written while
/// the broker is away).
#[utoipa::path(get, path = "/healthz/ready", tag = "operations",
    responses(
        (status = 200, description = "The database answers; the body reports the broker too", body = crate::api_schema::HealthReport),
        (status = 503, description = "The database does not answer, or the service drains (status `draining`) before it exits", body = crate::api_schema::HealthReport),
    ))]
pub async fn ready(State(health): State<Health>) -> Response {
    let (_, mut body) = health.check().await;
    let db_ok = body["database"] == "up";
    let draining = health.draining.is_cancelled();
    body["status"] = json!(match (draining, db_ok) {
        (true, _) => "draining",
        (false, true) => "ready",
        (false, false) => "unavailable",
    });
    // Conditions an operator should know about while the service still serves.
    body["warnings"] = json!(warnings());
    let status = if db_ok && !draining {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Warnings reported in the readiness body: conditions an operator must not miss while
/// the service still serves.
pub(crate) fn warnings() -> Vec<String> {
    let mut warnings = Vec::new();
    if crate::auth::mode_label() == "off" {
        warnings.push(
            "SAGA_AUTH=off: requests are not authenticated; for throwaway local runs only"
                .to_owned(),
        );
    }
    warnings
}
