//! `sagactl stuck list|cancel`: the open sagas (orders still pending or reserved), oldest
//! first, each with its age, the time since its last event and the participant it waits
//! on (`sagactl::triage::waiting_on`, from the order's history); cancelling one, some or a
//! filtered set of them with order-svc's own cancel, one order at a time.
//!
//! Everything is read from order-svc's HTTP API: the open orders by walking `GET /orders`
//! per open status (order ids are time-ordered, so the walk starts at the oldest), then
//! `GET /orders/{id}` for the history of the orders shown (of every candidate when the
//! participant is filtered on). The walk stops after [`SCAN_LIMIT`] orders and says so.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::{StreamExt, stream};
use serde_json::{Value, json};
use uuid::Uuid;

use super::order;
use crate::cli::{StuckCommand, StuckFilter};
use crate::render::field;
use sagactl::context::{CliError, Context, Service};
use sagactl::output;
use sagactl::triage::{OPEN_STATUSES, Participant, waiting_on};

/// Most open orders one listing reads (the oldest of them); past it the answer says it is
/// incomplete.
pub(super) const SCAN_LIMIT: usize = 10_000;
/// Orders order-svc answers in one page of `GET /orders`.
const PAGE: usize = 1_000;
/// Histories read at once.
const CONCURRENT_READS: usize = 8;

/// Which open sagas to list: the filters of `stuck list`, `stuck cancel` and the
/// explorer's stuck page.
#[derive(Debug, Clone, Default)]
pub(super) struct Filter {
    /// Only sagas at least this old.
    pub older_than: Option<Duration>,
    /// Only orders of this open status.
    pub status: Option<String>,
    /// Only sagas waiting on this participant.
    pub waiting_on: Option<Participant>,
}

impl Filter {
    pub(super) fn from_args(args: &StuckFilter) -> Filter {
        Filter {
            older_than: args.older_than,
            status: args.status.clone(),
            waiting_on: args.waiting_on,
        }
    }

    /// Checks a status given as text (by the explorer; clap checks the command line's).
    pub(super) fn check(&self) -> Result<(), CliError> {
        match &self.status {
            Some(s) if !OPEN_STATUSES.contains(&s.as_str()) => Err(CliError::Refused(format!(
                "{s:?} is not an open status; use one of {}",
                OPEN_STATUSES.join(", ")
            ))),
            _ => Ok(()),
        }
    }
}

pub(super) async fn run(ctx: &Context, cmd: StuckCommand) -> anyhow::Result<()> {
    match cmd {
        StuckCommand::List {
            filter,
            limit,
            offset,
        } => {
            let listed = open_sagas(ctx, &Filter::from_args(&filter), offset, Some(limit)).await?;
            output::list(ctx, &listed, "sagas", render_list);
            Ok(())
        }
        StuckCommand::Cancel {
            order_ids,
            filter,
            yes,
        } => {
            let ids: Vec<String> = if order_ids.is_empty() {
                let listed = open_sagas(ctx, &Filter::from_args(&filter), 0, None).await?;
                let ids = ids_of(&listed);
                if !yes {
                    confirm(ids.len())?;
                }
                ids
            } else {
                order_ids.iter().map(Uuid::to_string).collect()
            };
            cancel_all(ctx, &ids).await
        }
    }
}

/// The open sagas matching `filter`, oldest first, from `offset` on, at most `limit` of
/// them (all when `None`); with `total` (how many match), `scanned` (open orders read)
/// and `complete` (false when the walk stopped at [`SCAN_LIMIT`]).
pub(super) async fn open_sagas(
    ctx: &Context,
    filter: &Filter,
    offset: usize,
    limit: Option<usize>,
) -> anyhow::Result<Value> {
    filter.check()?;
    let now = Utc::now();
    let statuses: Vec<&str> = match &filter.status {
        Some(s) => vec![s.as_str()],
        None => OPEN_STATUSES.to_vec(),
    };
    let mut candidates = Vec::new();
    let mut complete = true;
    for status in statuses {
        let (orders, all) = walk(ctx, status, SCAN_LIMIT - candidates.len()).await?;
        complete &= all;
        candidates.extend(orders);
    }
    let scanned = candidates.len();
    candidates.retain(|o| {
        filter
            .older_than
            .is_none_or(|min| age(now, o, "created_at") >= min.as_secs_f64())
    });
    // Timestamps differ in their number of fractional digits: compared as times.
    candidates.sort_by_cached_key(|o| {
        o["created_at"]
            .as_str()
            .and_then(|t| t.parse::<DateTime<Utc>>().ok())
    });
    let (total, rows) = if filter.waiting_on.is_none() {
        // The page only: its histories are all that is needed.
        let total = candidates.len();
        let shown: Vec<Value> = window(candidates, offset, limit);
        (total, with_histories(ctx, shown, now).await?)
    } else {
        let all = with_histories(ctx, candidates, now).await?;
        let wanted = filter.waiting_on.map(Participant::service);
        let matching: Vec<Value> = all
            .into_iter()
            .filter(|s| s["waiting_on"].as_str() == wanted)
            .collect();
        (matching.len(), window(matching, offset, limit))
    };
    Ok(json!({
        "sagas": rows,
        "total": total,
        "offset": offset,
        "limit": limit,
        "scanned": scanned,
        "complete": complete,
        "now": now,
    }))
}

/// Up to `left` orders of `status` in order-id order (oldest first), and whether that was
/// all of them.
async fn walk(ctx: &Context, status: &str, left: usize) -> anyhow::Result<(Vec<Value>, bool)> {
    let mut orders = Vec::new();
    let mut after = Uuid::nil();
    loop {
        let want = PAGE.min(left - orders.len());
        if want == 0 {
            return Ok((orders, false));
        }
        let path = format!("/orders?status={status}&after={after}&limit={want}");
        let page = ctx.get_ok(Service::Order, &path).await?;
        let page = page["orders"]
            .as_array()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("order-svc answered a list without orders"))?;
        let n = page.len();
        if let Some(last) = page.last() {
            after = field(last, "order_id").parse()?;
        }
        orders.extend(page);
        if n < want {
            return Ok((orders, true));
        }
    }
}

fn window(rows: Vec<Value>, offset: usize, limit: Option<usize>) -> Vec<Value> {
    rows.into_iter()
        .skip(offset)
        .take(limit.unwrap_or(usize::MAX))
        .collect()
}

/// Seconds from the timestamp `key` of `v` to `now` (0 when it cannot be read).
fn age(now: DateTime<Utc>, v: &Value, key: &str) -> f64 {
    v[key]
        .as_str()
        .and_then(|t| t.parse::<DateTime<Utc>>().ok())
        .map_or(0.0, |t| (now - t).num_milliseconds() as f64 / 1000.0)
}

/// Each order as a row of the listing, read again with its history; an order that ended
/// since it was listed is left out.
async fn with_histories(
    ctx: &Context,
    orders: Vec<Value>,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<Value>> {
    let reads = stream::iter(orders)
        .map(|o| async move {
            let id = field(&o, "order_id");
            ctx.get_ok(Service::Order, &sagactl::context::path(&["orders", &id]))
                .await
        })
        .buffered(CONCURRENT_READS)
        .collect::<Vec<_>>()
        .await;
    let mut rows = Vec::new();
    for read in reads {
        if let Some(row) = row(&read?, now) {
            rows.push(row);
        }
    }
    Ok(rows)
}

/// One open saga as listed: `None` when the order has ended.
fn row(order: &Value, now: DateTime<Utc>) -> Option<Value> {
    let history: Vec<&Value> = order["history"].as_array().into_iter().flatten().collect();
    let types: Vec<&str> = history.iter().filter_map(|h| h["type"].as_str()).collect();
    let participant = waiting_on(&field(order, "status"), &types)?;
    let last = history.last().copied().unwrap_or(&Value::Null);
    let id = field(order, "order_id");
    Some(json!({
        "order_id": id,
        "customer_id": order["customer_id"],
        "status": order["status"],
        "waiting_on": participant.service(),
        "created_at": order["created_at"],
        "age_secs": age(now, order, "created_at"),
        "last_event": last["type"],
        "last_event_at": last["at"],
        "idle_secs": if last.is_null() { age(now, order, "created_at") } else { age(now, last, "at") },
        "deadline": order["deadline"],
        "page": format!("/orders/{id}"),
    }))
}

fn ids_of(listed: &Value) -> Vec<String> {
    listed["sagas"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| field(s, "order_id"))
        .collect()
}

/// Seconds as the listing shows them: `42s`, `7m05s`, `3h12m`, `2d04h`.
pub(super) fn human_secs(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3_600 => format!("{}m{:02}s", s / 60, s % 60),
        3_600..86_400 => format!("{}h{:02}m", s / 3_600, s % 3_600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3_600),
    }
}

fn render_list(v: &Value) -> String {
    let sagas = v["sagas"].as_array().cloned().unwrap_or_default();
    let mut s = format!(
        "{:<38} {:<9} {:<14} {:>8} {:>8}  {:<15} {}\n",
        "ORDER", "STATUS", "WAITING ON", "AGE", "IDLE", "LAST EVENT", "CUSTOMER"
    );
    for o in &sagas {
        s.push_str(&format!(
            "{:<38} {:<9} {:<14} {:>8} {:>8}  {:<15} {}\n",
            field(o, "order_id"),
            field(o, "status"),
            field(o, "waiting_on"),
            human_secs(o["age_secs"].as_f64().unwrap_or(0.0)),
            human_secs(o["idle_secs"].as_f64().unwrap_or(0.0)),
            field(o, "last_event"),
            field(o, "customer_id"),
        ));
    }
    let offset = v["offset"].as_u64().unwrap_or(0) as usize;
    s.push_str(&format!(
        "{} to {} of {} open sagas matching",
        if sagas.is_empty() { offset } else { offset + 1 },
        offset + sagas.len(),
        v["total"]
    ));
    if v["complete"] == false {
        s.push_str(&format!(
            " (read only the {} oldest open orders)",
            v["scanned"]
        ));
    }
    s.push_str("; `sagactl trace ORDER` shows one");
    s
}

/// Asks on the terminal before cancelling a filtered set (a script says `--yes`).
fn confirm(n: usize) -> anyhow::Result<()> {
    if n == 0 {
        return Ok(());
    }
    output::confirm(
        &format!("cancel {n} open orders? Stock is released and payments refunded."),
        &format!("not cancelling {n} orders"),
    )
}

/// Cancels each order in turn with order-svc's cancel, printing a line per order as it
/// goes (one JSON object per order with `-o jsonl`), then the summary (`-o json`: only
/// that). An order already closed counts as done; an order that cannot be cancelled is
/// reported and the rest go on; the command fails if any could not be.
async fn cancel_all(ctx: &Context, ids: &[String]) -> anyhow::Result<()> {
    let mut outcomes = Vec::new();
    let mut failed = 0;
    for (i, id) in ids.iter().enumerate() {
        let outcome = match order::cancel(ctx, id).await {
            Ok(outcome) => outcome,
            Err(e) => {
                failed += 1;
                json!({"order_id": id, "outcome": "failed", "message": format!("{e:#}")})
            }
        };
        match ctx.format {
            sagactl::options::OutputFormat::Table => output::line(&format!(
                "[{}/{}] {} {}{}",
                i + 1,
                ids.len(),
                field(&outcome, "order_id"),
                field(&outcome, "outcome").replace('_', " "),
                outcome["message"]
                    .as_str()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default(),
            )),
            sagactl::options::OutputFormat::Jsonl => output::line(&outcome.to_string()),
            sagactl::options::OutputFormat::Json => {}
        }
        outcomes.push(outcome);
    }
    let count = |what: &str| outcomes.iter().filter(|o| o["outcome"] == what).count();
    let summary = json!({
        "cancelled": count("cancelled"),
        "already_closed": count("already_closed"),
        "failed": failed,
        "orders": outcomes,
    });
    match ctx.format {
        sagactl::options::OutputFormat::Json => output::json(&summary),
        _ => output::line(&format!(
            "{} cancelled, {} already closed, {failed} failed",
            summary["cancelled"], summary["already_closed"]
        )),
    }
    if failed > 0 {
        return Err(
            CliError::Refused(format!("{failed} of {} orders not cancelled", ids.len())).into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_in_the_largest_two_units() {
        assert_eq!(human_secs(42.7), "42s");
        assert_eq!(human_secs(425.0), "7m05s");
        assert_eq!(human_secs(11_520.0), "3h12m");
        assert_eq!(human_secs(187_200.0), "2d04h");
        assert_eq!(human_secs(-3.0), "0s");
    }

    #[test]
    fn a_row_names_the_participant_and_its_last_event() {
        let now: DateTime<Utc> = "2026-01-01T00:10:00Z".parse().unwrap();
        let order = json!({
            "order_id": "o-1", "customer_id": "alice", "status": "reserved",
            "created_at": "2026-01-01T00:00:00Z", "deadline": null,
            "history": [
                {"type": "OrderCreated", "message_id": "m1", "at": "2026-01-01T00:00:00Z"},
                {"type": "StockReserved", "message_id": "m2", "at": "2026-01-01T00:05:00Z"},
            ],
        });
        let r = row(&order, now).unwrap();
        assert_eq!(r["waiting_on"], "payment-svc");
        assert_eq!(r["last_event"], "StockReserved");
        assert_eq!(r["age_secs"], 600.0);
        assert_eq!(r["idle_secs"], 300.0);
        assert_eq!(r["page"], "/orders/o-1");
        let ended = json!({"order_id": "o-2", "status": "confirmed", "history": []});
        assert!(row(&ended, now).is_none());
    }

    #[test]
    fn only_open_statuses_filter() {
        let f = Filter {
            status: Some("confirmed".into()),
            ..Filter::default()
        };
        assert!(
            f.check()
                .unwrap_err()
                .to_string()
                .contains("pending, reserved")
        );
    }
}
