//! The schemas and paths of the OpenAPI documents that the HTTP code itself refers to:
//! the error body, the probes' and `/messages`' answers, where the document and its page
//! are served, and catalog types as schemas. The `openapi` module builds the documents from
//! them and the handlers; the handlers only name these types, so neither imports the other.

use schemars::JsonSchema;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::{RefOr, Schema};

/// Where a service serves its OpenAPI document.
pub(crate) const DOCUMENT_PATH: &str = "/openapi.json";
/// Where a service serves the page that shows it (Swagger UI).
pub(crate) const PAGE_PATH: &str = "/api-docs";
/// The contract's error body: `{"error": "<code>", "message": "<human text>"}`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// A stable, machine-readable code (`not_found`, `validation_failed`, `unauthorized`, ...).
    pub error: String,
    /// What went wrong, for people.
    pub message: String,
}

/// What the shared routes answer, as documented (the handlers build the same JSON).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HealthReport {
    /// `ok` / `unavailable` on `/healthz`; `ready` / `unavailable` on `/healthz/ready`;
    /// `draining` on both from SIGTERM until the process exits; `live` on `/healthz/live`
    /// (which has no other field).
    pub status: String,
    /// `up` or `down`.
    pub database: Option<String>,
    /// Each broker link of the service by name: `up` or `down`.
    #[schema(value_type = Option<std::collections::BTreeMap<String, String>>)]
    pub broker: Option<serde_json::Value>,
    /// `jwt`, or `off` when `SAGA_AUTH=off`.
    pub auth: Option<String>,
    /// `/healthz/ready` only: conditions an operator must not miss while the service serves.
    pub warnings: Option<Vec<String>>,
}

/// `GET /messages/{correlation_id}`: what this service consumed and emitted about one saga.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SagaMessages {
    pub correlation_id: String,
    /// Inbox rows: the messages this service handled, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub consumed: Vec<serde_json::Value>,
    /// Outbox rows: the messages this service emitted, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub emitted: Vec<serde_json::Value>,
}

/// A payload type of the event catalog as an OpenAPI schema: its `schemars` JSON Schema
/// (draft 2020-12, which OpenAPI 3.1 uses), so a rule is stated once, on the type.
/// Types holding no other named type only: a nested `$ref` would point into `$defs`.
pub fn catalog_schema<T: JsonSchema>() -> RefOr<Schema> {
    let mut value = serde_json::Value::from(schemars::schema_for!(T));
    if let Some(map) = value.as_object_mut() {
        map.remove("$schema");
        map.remove("title");
    }
    match serde_json::from_value(value) {
        Ok(schema) => RefOr::T(schema),
        Err(e) => RefOr::T(Schema::Object(
            utoipa::openapi::ObjectBuilder::new()
                .description(Some(format!("(schema not convertible: {e})")))
                .build(),
        )),
    }
}

/// Implements [`ToSchema`] for a local stand-in of a catalog type, by [`catalog_schema`].
#[macro_export]
macro_rules! catalog_schema {
    ($local:ident, $catalog:ty, $name:literal) => {
        #[doc = concat!("`", $name, "` of the event catalog, in this service's OpenAPI document.")]
        pub struct $local;
        impl utoipa::PartialSchema for $local {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
                $crate::api_schema::catalog_schema::<$catalog>()
            }
        }
        impl utoipa::ToSchema for $local {
            fn name() -> std::borrow::Cow<'static, str> {
                std::borrow::Cow::Borrowed($name)
            }
        }
    };
}

/// Whether `path` is the page or one of its assets: open without a token, as a browser
/// cannot send one when it opens a page. They hold no data (the same bytes in every
/// service); the document and every call made from the page carry the reader's token.
pub fn is_open_page(path: &str) -> bool {
    path == PAGE_PATH
        || path
            .strip_prefix(PAGE_PATH)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// A string schema holding one of `values` (a state machine's states, from its `ALL`).
pub fn one_of_strings(values: impl IntoIterator<Item = &'static str>) -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(values))
        .build()
}
