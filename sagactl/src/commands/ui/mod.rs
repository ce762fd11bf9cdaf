//! `sagactl ui`: the saga explorer, a small web server for the operator's browser.
//!
//! It serves six pages (`/` recent orders, `/orders/{order_id}` one saga, `/stuck` the
//! open sagas and what each waits on, `/find?q=ID` everything naming an id, `/dlq` the
//! dead-letter triage, `/audit` the hands on the system) whose HTML, CSS and JavaScript
//! are compiled into the binary, and a JSON API under `/api/` that the pages call. The API
//! is sagactl itself: the same HTTP client and identity towards the services
//! (`Context::call`), the same trace assembly as `sagactl trace`, the same queue view as
//! `sagactl queues`, the same listing, cancel and search as `sagactl stuck` and `sagactl
//! find` (the `triage` module), the services' own dead-letter and audit API as `sagactl
//! dlq` and `sagactl audit` use it (the `dlq` module). Nothing here reads a database,
//! moves a dead letter or builds an event of its own.
//!
//! The explorer can redrive, edit and purge, so it answers only requests addressed to a
//! local name (a DNS-rebinding page cannot reach it), refuses cross-site writes, and takes
//! writes only as JSON (which a plain HTML form cannot send).

mod dlq;
mod triage;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{queues, trace};
use sagactl::context::{CliError, Context, Service};
use sagactl::output;

const INDEX_HTML: &str = include_str!("../../../assets/explorer/index.html");
const APP_JS: &str = include_str!("../../../assets/explorer/app.js");
const STYLE_CSS: &str = include_str!("../../../assets/explorer/style.css");
const TRIAGE_JS: &str = include_str!("../../../assets/explorer/triage.js");
const DLQ_JS: &str = include_str!("../../../assets/explorer/dlq.js");
const AUDIT_JS: &str = include_str!("../../../assets/explorer/audit.js");
/// Orders the list page shows when the request names no limit, and the most it may ask.
const DEFAULT_ORDERS: u32 = 50;
const MAX_ORDERS: u32 = 500;
/// How far back a search looks: the newest orders, up to order-svc's own list limit.
const SEARCH_WINDOW: u32 = 1_000;

#[derive(Clone)]
struct Explorer {
    ctx: Arc<Context>,
}

pub(super) async fn run(ctx: &Context, listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::Refused(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}/");
    // The first line says where the explorer is; with port 0 it is the only way to know.
    output::show(ctx, &json!({"url": url}), |_| {
        format!("saga explorer on {url}  (Ctrl-C stops it)")
    });
    let stop = platform::shutdown::on_signal();
    axum::serve(listener, router(ctx.clone()))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await?;
    Ok(())
}

fn router(ctx: Context) -> Router {
    let state = Explorer { ctx: Arc::new(ctx) };
    Router::new()
        .route("/", get(page))
        .route("/orders/{order_id}", get(page))
        .route("/dlq", get(page))
        .route("/stuck", get(page))
        .route("/find", get(page))
        .route("/audit", get(page))
        .route("/assets/app.js", get(app_js))
        .route("/assets/triage.js", get(triage_js))
        .route("/assets/dlq.js", get(dlq_js))
        .route("/assets/audit.js", get(audit_js))
        .route("/assets/style.css", get(style_css))
        .route("/api/orders", get(list_orders))
        .route("/api/orders/{order_id}", get(show_saga))
        .route("/api/orders/{order_id}/cancel", post(triage::cancel))
        .route("/api/stuck", get(triage::stuck))
        .route("/api/find", get(triage::find))
        .route("/api/queues", get(queue_depths))
        .route("/api/services", get(services))
        .route("/api/dlq", get(dlq::groups))
        .route("/api/dlq/{queue}/messages", get(dlq::messages))
        .route("/api/dlq/{queue}/redrive", post(dlq::redrive))
        .route("/api/dlq/{queue}/purge", post(dlq::purge))
        .route("/api/dlq/{queue}/edit", post(dlq::edit))
        .route("/api/dlq/{queue}/jobs/{id}", get(dlq::job))
        .route("/api/audit", get(dlq::audit_log))
        .fallback(|| async { ApiError::not_found("no such page") })
        .layer(middleware::from_fn(local_only))
        .with_state(state)
}

// ------------------------------------------------------------------------------ errors

/// An answer the pages can show: `{"error", "message"}` with a status that says whose
/// fault it was.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }

    fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
        }
    }

    fn forbidden(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message: message.into(),
        }
    }
}

/// A dependency that cannot be reached is the explorer's gateway failing (502); any other
/// failure is the service's or broker's refusal, passed on as a 4xx with its message.
impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        let (status, code) = match e.downcast_ref::<CliError>() {
            Some(CliError::Unreachable { .. }) => (StatusCode::BAD_GATEWAY, "unreachable"),
            _ => (StatusCode::CONFLICT, "refused"),
        };
        ApiError {
            status,
            code,
            message: format!("{e:#}"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.code, "message": self.message})),
        )
            .into_response()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// A query field the page filled in: trimmed, and absent when empty.
fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// A page number (`limit`, `offset`) given as text, or a 400 naming it.
fn number<N: std::str::FromStr>(
    value: &Option<String>,
    name: &str,
    default: N,
) -> Result<N, ApiError> {
    given(value).map_or(Ok(default), |v| {
        v.parse().map_err(|_| {
            ApiError::bad_request("invalid_page", format!("{name} must be a whole number"))
        })
    })
}

// ------------------------------------------------------------------------------ guard

/// True for a `Host` header naming this machine: `localhost` or an IP literal. A page on
/// another site that rebinds its DNS name to 127.0.0.1 still sends its own name here.
fn is_local_host(host: &str) -> bool {
    let Ok(url) = url::Url::parse(&format!("http://{host}/")) else {
        return false;
    };
    // Only `name[:port]`: no user info or path smuggled into the header.
    let bare = url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    bare && match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) => true,
        None => false,
    }
}

/// The scheme-less `Origin` of a request equals its `Host`: sent by the explorer's own
/// pages. Browsers send `Origin` on every cross-site request that can change something.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin = origin.to_str().ok().and_then(|o| url::Url::parse(o).ok());
    // `host[:port]` of the origin, as the Host header writes it.
    let authority = origin
        .as_ref()
        .map(|o| &o[url::Position::BeforeHost..url::Position::AfterPort]);
    authority.is_some() && authority == host
}

async fn local_only(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        // No Host header (or not text) names no local host: refused below.
        .unwrap_or_default();
    if !is_local_host(host) {
        return ApiError::forbidden("the explorer answers only to localhost or an IP address")
            .into_response();
    }
    if request.method() != axum::http::Method::GET && !same_origin(headers) {
        return ApiError::forbidden("cross-site requests may not change anything").into_response();
    }
    next.run(request).await
}

// ------------------------------------------------------------------------------ assets

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Assets change with the binary; a stale cached script after an upgrade would
            // call an API that moved.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// Every page is the same document; its script draws the page the path names.
async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn triage_js() -> Response {
    asset("text/javascript; charset=utf-8", TRIAGE_JS)
}

async fn dlq_js() -> Response {
    asset("text/javascript; charset=utf-8", DLQ_JS)
}

async fn audit_js() -> Response {
    asset("text/javascript; charset=utf-8", AUDIT_JS)
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

// ------------------------------------------------------------------------------ orders

#[derive(Debug, Deserialize)]
struct OrdersQuery {
    status: Option<String>,
    /// Part of an order id or customer id, any case.
    q: Option<String>,
    limit: Option<u32>,
}

/// True when `order` is found by `needle` (already lower-case).
fn matches_search(order: &Value, needle: &str) -> bool {
    ["order_id", "customer_id"].iter().any(|k| {
        order[k]
            .as_str()
            .is_some_and(|v| v.to_lowercase().contains(needle))
    })
}

/// The newest orders, optionally of one status, optionally only those whose order id or
/// customer id contains `q`; with the counts by status order-svc reports.
async fn list_orders(State(app): State<Explorer>, Query(query): Query<OrdersQuery>) -> ApiResult {
    let limit = query.limit.unwrap_or(DEFAULT_ORDERS);
    if !(1..=MAX_ORDERS).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be 1 to {MAX_ORDERS}"),
        ));
    }
    let needle = query
        .q
        .as_deref()
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .map(str::to_lowercase);
    let status = query.status.as_deref().filter(|s| !s.is_empty());
    if let Some(s) = status
        && !s.chars().all(|c| c.is_ascii_lowercase())
    {
        return Err(ApiError::bad_request(
            "invalid_status",
            "status is one of pending, reserved, confirmed, rejected, cancelled",
        ));
    }
    let window = if needle.is_some() {
        SEARCH_WINDOW
    } else {
        limit
    };
    let mut path = format!("/orders?limit={window}");
    if let Some(s) = status {
        path.push_str(&format!("&status={s}"));
    }
    let mut listed = app.ctx.get_ok(Service::Order, &path).await?;
    let mut orders: Vec<Value> = listed["orders"].as_array().cloned().ok_or_else(|| {
        ApiError::from(anyhow::anyhow!("order-svc answered a list without orders"))
    })?;
    if let Some(needle) = &needle {
        orders.retain(|o| matches_search(o, needle));
        // A whole order id finds its order even when it is older than the window.
        if orders.is_empty()
            && let Ok(id) = needle.parse::<Uuid>()
        {
            let found = trace::optional(&app.ctx, Service::Order, &format!("/orders/{id}")).await?;
            if !found.is_null() && status.is_none_or(|s| found["status"] == s) {
                orders.push(found);
            }
        }
    }
    orders.truncate(limit as usize);
    listed["orders"] = json!(orders);
    Ok(Json(listed))
}

/// One saga as `sagactl trace --json` reports it, plus the current stock of each SKU it
/// holds and the customer's wallet: the state the saga left.
async fn show_saga(State(app): State<Explorer>, Path(order_id): Path<String>) -> ApiResult {
    let id: Uuid = order_id
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_order_id", "an order id is a UUID"))?;
    let ctx = &app.ctx;
    if trace::optional(ctx, Service::Order, &format!("/orders/{id}"))
        .await?
        .is_null()
    {
        return Err(ApiError::not_found(format!("no order {id}")));
    }
    let (mut report, _) = trace::report(ctx, id).await?;
    let mut stock = Vec::new();
    let items = report["order"]["items"].as_array().cloned();
    for item in items.ok_or_else(|| anyhow::anyhow!("order {id} has no items"))? {
        if let Some(sku) = item["sku"].as_str() {
            let path = sagactl::context::path(&["stock", sku]);
            stock.push(trace::optional(ctx, Service::Inventory, &path).await?);
        }
    }
    let customer = report["order"]["customer_id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("order {id} has no customer"))?;
    let wallet = trace::optional(
        ctx,
        Service::Payment,
        &sagactl::context::path(&["wallets", customer]),
    )
    .await?;
    report["stock"] = json!(stock);
    report["wallet"] = wallet;
    Ok(Json(report))
}

// ------------------------------------------------------------------------------ services

/// Each service's API reference page (`/api-docs`, its OpenAPI document), for the header.
async fn services(State(app): State<Explorer>) -> Json<Value> {
    Json(api_reference(&app.ctx.conn))
}

fn api_reference(conn: &sagactl::options::Connection) -> Value {
    let services = [
        ("order-svc", &conn.order_url),
        ("inventory-svc", &conn.inventory_url),
        ("payment-svc", &conn.payment_url),
    ]
    .map(|(service, base)| {
        json!({"service": service, "api_docs": format!("{}/api-docs", base.trim_end_matches('/'))})
    });
    json!({ "services": services })
}

// ------------------------------------------------------------------------------ queues

async fn queue_depths(State(app): State<Explorer>) -> ApiResult {
    Ok(Json(queues::snapshot(&app.ctx).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_links_each_services_api_reference() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "sagactl",
            "--order-url",
            "http://127.0.0.1:8080/",
            "ui",
        ])
        .unwrap();
        let links = api_reference(&cli.global.conn);
        let services = links["services"].as_array().unwrap();
        assert_eq!(services.len(), 3);
        assert_eq!(services[0]["service"], "order-svc");
        assert_eq!(services[0]["api_docs"], "http://127.0.0.1:8080/api-docs");
    }

    #[test]
    fn only_local_names_reach_the_explorer() {
        for host in [
            "127.0.0.1:8090",
            "localhost:8090",
            "[::1]:8090",
            "LOCALHOST",
        ] {
            assert!(is_local_host(host), "{host}");
        }
        for host in [
            "evil.example:8090",
            "",
            "127.0.0.1.nip.io:8090",
            "evil.example@localhost",
            "localhost/x",
        ] {
            assert!(!is_local_host(host), "{host}");
        }
    }

    #[test]
    fn writes_from_another_origin_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8090"));
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8090"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h));
    }

    #[test]
    fn page_numbers_must_be_whole() {
        assert_eq!(number(&None, "limit", 7).unwrap(), 7);
        assert_eq!(number(&Some(" 12 ".into()), "limit", 7).unwrap(), 12);
        let e = number(&Some("ten".into()), "offset", 0).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("offset"), "{}", e.message);
    }

    #[test]
    fn search_looks_at_order_and_customer_ids() {
        let order = json!({"order_id": "0192F7A0-aaaa", "customer_id": "Alice"});
        assert!(matches_search(&order, "alice"));
        assert!(matches_search(&order, "0192f7"));
        assert!(!matches_search(&order, "bob"));
    }
}
