//! What every saga service shares besides messaging: typed configuration from the
//! environment, telemetry, database bootstrap, the HTTP edge (errors, JSON bodies, health
//! and metrics endpoints, the OpenAPI document), shutdown on signals and the drain that
//! follows ([`drain`]), the operator's endpoints on the service's dead letters and audit
//! log ([`operator`]), and the [`Application`] that ties a
//! service's parts together so `main` and the tests start it the same way.

pub mod api_error;
pub mod api_schema;
pub mod app;
pub mod auth;
pub mod config;
pub mod crypto;
pub mod db;
pub mod db_failover;
pub mod drain;
pub mod edge;
pub mod health;
pub mod http;
pub mod inputs;
pub mod listener;
pub mod openapi;
pub mod operator;
pub mod request_span;
pub mod runtime;
pub mod shutdown;
pub mod staged;
pub mod telemetry;

pub use api_error::{ApiError, ApiJson};
pub use app::Application;
pub use config::ServiceConfig;
