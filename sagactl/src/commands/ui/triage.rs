//! The explorer's triage API: the stuck sagas (`GET /api/stuck`, as `sagactl stuck list`),
//! cancelling one order (`POST /api/orders/{order_id}/cancel`, the cancel `sagactl stuck
//! cancel` runs for each order, so the stuck page cancels a filtered set one order at a
//! time and shows its progress), and the search (`GET /api/find?q=ID`, as `sagactl find`).

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use uuid::Uuid;

use super::{ApiError, ApiResult, Explorer, given, number};
use crate::commands::{find as search, order, stuck as open};
use sagactl::triage::{Participant, parse_age};

/// Open sagas a page shows when the request names no limit.
const DEFAULT_STUCK: usize = 50;
/// Dead letters the search reads of each queue, and the newest orders it searches.
const FIND_LIMITS: search::Limits = search::Limits {
    orders: 1_000,
    dead_letters: 1_000,
};

/// The stuck page's filters and page, each as text so that a bad one is answered with a
/// JSON error naming it.
#[derive(Debug, Default, Deserialize)]
pub(super) struct StuckQuery {
    older_than: Option<String>,
    status: Option<String>,
    waiting_on: Option<String>,
    limit: Option<String>,
    offset: Option<String>,
}

/// `GET /api/stuck`: the open sagas matching the filters, oldest first; `limit` 1 to
/// the most a listing reads, so a page can ask for every match (to cancel them all).
pub(super) async fn stuck(State(app): State<Explorer>, Query(q): Query<StuckQuery>) -> ApiResult {
    let older_than = given(&q.older_than)
        .map(parse_age)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_age", e))?;
    let waiting_on = given(&q.waiting_on)
        .map(Participant::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_participant", e))?;
    let filter = open::Filter {
        older_than,
        status: given(&q.status).map(str::to_owned),
        waiting_on,
    };
    filter
        .check()
        .map_err(|e| ApiError::bad_request("invalid_status", e.to_string()))?;
    let limit = number(&q.limit, "limit", DEFAULT_STUCK)?;
    if !(1..=open::SCAN_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_page",
            format!("limit must be 1 to {}", open::SCAN_LIMIT),
        ));
    }
    let offset = number(&q.offset, "offset", 0)?;
    Ok(Json(
        open::open_sagas(&app.ctx, &filter, offset, Some(limit)).await?,
    ))
}

/// The body of a cancel says nothing; it is JSON only so that a form cannot send it.
#[derive(Debug, Deserialize)]
pub(super) struct CancelRequest {}

/// `POST /api/orders/{order_id}/cancel`: `{"order_id", "outcome"}`, the outcome
/// `cancelled` or `already_closed` (cancelling twice is no error).
pub(super) async fn cancel(
    State(app): State<Explorer>,
    Path(order_id): Path<String>,
    Json(CancelRequest {}): Json<CancelRequest>,
) -> ApiResult {
    let id: Uuid = order_id
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_order_id", "an order id is a UUID"))?;
    Ok(Json(order::cancel(&app.ctx, &id.to_string()).await?))
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct FindQuery {
    q: Option<String>,
}

/// `GET /api/find?q=ID`: as `sagactl find ID --json`.
pub(super) async fn find(State(app): State<Explorer>, Query(q): Query<FindQuery>) -> ApiResult {
    let needle = given(&q.q).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_query",
            "q is the id to find: an order id, customer id, SKU, message id or payment id",
        )
    })?;
    Ok(Json(search::find(&app.ctx, needle, FIND_LIMITS).await?))
}
