//! Every service's OpenAPI 3.1 document and the page that shows it. A service describes its
//! own routes with `#[utoipa::path]` on its handlers; [`document`] adds what every service
//! shares (the error body, the bearer-token scheme, the probes, `/metrics`,
//! `/messages/{correlation_id}` and `/openapi.json` itself), so the document is generated
//! from the code and `docs/openapi/<service>.json` is only its committed copy.
//!
//! Served at [`DOCUMENT_PATH`] (a bearer token like every API route: the document names
//! operator endpoints) and browsable at [`PAGE_PATH`]: Swagger UI, vendored under
//! `platform/assets/swagger-ui/` by `scripts/vendor-swagger-ui.sh` and compiled into the
//! binary, so the page needs no CDN. The page and its assets are open (see
//! [`is_open_page`]); it asks the reader for a token and sends it with every request.

use std::borrow::Cow;

use axum::Json;
use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use utoipa::Modify;
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, SecurityScheme};

use crate::api_error::ApiError;
use crate::api_schema::{DOCUMENT_PATH, HealthReport, PAGE_PATH, SagaMessages};
pub use crate::api_schema::{ErrorBody, catalog_schema, is_open_page, one_of_strings};
use crate::auth::Caller;

/// The name of the bearer-token security scheme in every document.
pub const BEARER_SCHEME: &str = "bearer";

/// `GET /metrics`: Prometheus text format. Documentation only: the route is a closure over
/// the recorder in [`crate::http::with_ops_routes`].
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String)))]
#[allow(dead_code)]
fn metrics_doc() {}

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses(
        (status = 200, description = "This service's OpenAPI 3.1 document", body = Object),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "The token grants no role", body = ErrorBody),
    ))]
async fn openapi_json(
    axum::extract::State(doc): axum::extract::State<std::sync::Arc<OpenApi>>,
    caller: Caller,
) -> Result<Json<OpenApi>, ApiError> {
    caller.require_any_role()?;
    Ok(Json((*doc).clone()))
}

/// The parts every service shares.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        crate::http::healthz,
        crate::health::live,
        crate::health::ready,
        crate::http::messages,
        metrics_doc,
        openapi_json,
        crate::operator::routes::summary,
        crate::operator::routes::list,
        crate::operator::routes::redrive,
        crate::operator::routes::purge,
        crate::operator::routes::edit,
        crate::operator::routes::list_jobs,
        crate::operator::routes::show_job,
        crate::operator::audit_routes::list_audit,
    ),
    components(schemas(ErrorBody, HealthReport, SagaMessages)),
    modifiers(&BearerToken),
    // The name of BEARER_SCHEME (the attribute takes a literal only).
    security(("bearer" = [])),
)]
struct Shared;

/// Declares the bearer-token scheme every non-open route requires.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, doc: &mut OpenApi) {
        let scheme = utoipa::openapi::security::HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .description(Some(
                "A JWT signed ES256 or RS256 by a key of the service's JWKS; `roles` holds \
                 `customer` and/or `operator` (docs/http.md, Identity and access).",
            ))
            .build();
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(BEARER_SCHEME, SecurityScheme::Http(scheme));
    }
}

/// The whole document of `service`: its own routes (`own`, from its `#[derive(OpenApi)]`)
/// and the shared ones. Routes open without a token get an empty security list, taken from
/// the same rule the auth middleware applies.
pub fn document(service: &str, description: &str, own: OpenApi) -> OpenApi {
    let mut doc = <Shared as utoipa::OpenApi>::openapi();
    doc.merge(own);
    doc.info = utoipa::openapi::InfoBuilder::new()
        .title(service)
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(description))
        .license(Some(utoipa::openapi::License::new("MIT OR Apache-2.0")))
        .build();
    for (path, item) in doc.paths.paths.iter_mut() {
        let open = crate::auth::is_open(path);
        for op in operations(item) {
            if open {
                op.security = Some(Vec::new());
            }
            every_route_may_answer(path, op);
        }
    }
    doc
}

/// What the shared layers may answer on any route, added to each operation so that the
/// document lists every status the service can return: 408 when a request takes over the
/// request timeout, and 503 when the database is away, on every route that reads it.
fn every_route_may_answer(path: &str, op: &mut utoipa::openapi::path::Operation) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(
                        <ErrorBody as utoipa::ToSchema>::name(),
                    )))
                    .build(),
            )
            .build()
    };
    let responses = &mut op.responses.responses;
    responses
        .entry("408".into())
        .or_insert_with(|| error("The request took over the request timeout").into());
    let reads_no_database = ["/metrics", "/healthz/live", "/openapi.json"].contains(&path);
    if !reads_no_database {
        responses.entry("503".into()).or_insert_with(|| {
            error("`unavailable`: the service cannot answer now (its database away); retry later")
                .into()
        });
    }
}

fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// The document as committed under `docs/openapi/`: pretty JSON with a trailing newline.
pub fn render(doc: &OpenApi) -> serde_json::Result<String> {
    let mut text = doc.to_pretty_json()?;
    text.push('\n');
    Ok(text)
}

const PAGE: &str = include_str!("../assets/api-docs.html");
const BUNDLE: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui-bundle.js");
const STYLE: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui.css");

/// `/openapi.json` and the page, for a service's router.
pub fn routes(doc: OpenApi) -> Router {
    let page = |service: Cow<'static, str>| {
        move || {
            let service = service.clone();
            async move { Html(PAGE.replace("{{SERVICE}}", &service)) }
        }
    };
    let service: Cow<'static, str> = Cow::Owned(doc.info.title.clone());
    Router::new()
        .route(DOCUMENT_PATH, get(openapi_json))
        .with_state(std::sync::Arc::new(doc))
        .route(PAGE_PATH, get(page(service.clone())))
        .route(&format!("{PAGE_PATH}/"), get(page(service)))
        .route(
            &format!("{PAGE_PATH}/swagger-ui-bundle.js"),
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], BUNDLE).into_response() }),
        )
        .route(
            &format!("{PAGE_PATH}/swagger-ui.css"),
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], STYLE).into_response() }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_types_keep_their_rules_in_the_document() {
        let schema = serde_json::to_value(catalog_schema::<events::catalog::OrderItem>()).unwrap();
        assert_eq!(schema["type"], "object", "{schema}");
        assert_eq!(
            schema["properties"]["quantity"]["maximum"], 10_000,
            "{schema}"
        );
        assert!(
            schema["properties"]["sku"]["pattern"].is_string(),
            "{schema}"
        );
        assert!(schema.get("$schema").is_none(), "{schema}");
    }

    #[test]
    fn only_the_page_and_its_assets_are_open() {
        for open in ["/api-docs", "/api-docs/", "/api-docs/swagger-ui-bundle.js"] {
            assert!(is_open_page(open), "{open}");
        }
        for closed in ["/openapi.json", "/api-docsx", "/api", "/orders"] {
            assert!(!is_open_page(closed), "{closed}");
        }
    }

    #[test]
    fn the_documents_security_scheme_is_the_one_routes_require() {
        let doc = <Shared as utoipa::OpenApi>::openapi();
        let value = serde_json::to_value(&doc).unwrap();
        assert_eq!(
            value["security"],
            serde_json::json!([{ BEARER_SCHEME: [] }])
        );
        assert_eq!(
            value["components"]["securitySchemes"][BEARER_SCHEME]["scheme"],
            "bearer"
        );
    }
}
