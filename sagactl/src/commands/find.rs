//! `sagactl find <ID>`: every saga, dead letter and audit record that names an id (an
//! order id, customer id, SKU, message id or payment id).
//!
//! - Sagas, from the services' HTTP APIs: the order of that id; the newest orders whose
//!   customer or an item's SKU it is; the order of the payment of that id (walking
//!   `GET /payments`); the order among the newest whose history holds a message of that id.
//!   Each scan is bounded and the answer says what it covered.
//! - Dead letters, through each owning service's listing (`GET /dlq/messages`, as
//!   `sagactl dlq show`): exactly, those of that message id, order id or customer id; and
//!   among the first `--dlq-limit` messages of each queue, those whose correlation id or
//!   payload's `order_id`, `customer_id`, `sku` or `payment_id` it is.
//! - Audit: each service's records naming the id as a subject (`GET /audit?subject=`).

use futures_util::{StreamExt, stream};
use serde_json::{Value, json};
use uuid::Uuid;

use super::dlq::api as dlq;
use super::{audit, trace};
use crate::cli::FindArgs;
use crate::render::field;
use sagactl::context::{CliError, Context, Service, path};
use sagactl::dead_letters::Filter;
use sagactl::output;
use sagactl::triage::dead_letter_matches;

/// Most payments walked looking for a payment id.
const PAYMENT_SCAN: usize = 10_000;
/// Newest orders whose histories are read looking for a message id.
const HISTORY_WINDOW: usize = 200;
const CONCURRENT_READS: usize = 8;
/// Dead letters read in one page of a queue's listing.
const DLQ_PAGE: u32 = 50;
/// Audit records shown per search.
const AUDIT_SHOWN: u32 = 100;

/// How far a search looks.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// The newest orders searched for a customer id or SKU (1 to 1000).
    pub orders: u32,
    /// Messages read of each dead-letter queue.
    pub dead_letters: usize,
}

pub(super) async fn run(ctx: &Context, args: FindArgs) -> anyhow::Result<()> {
    let limits = Limits {
        orders: args.orders,
        dead_letters: args.dlq_limit,
    };
    let report = find(ctx, &args.id, limits).await?;
    output::show(ctx, &report, render);
    Ok(())
}

/// The search's report: `query`, `sagas`, `dead_letters` and `audit`.
pub(super) async fn find(ctx: &Context, query: &str, limits: Limits) -> anyhow::Result<Value> {
    let needle = query.trim();
    if needle.is_empty() {
        return Err(CliError::Refused(
            "nothing to find: give an order id, customer id, SKU, message id or payment id".into(),
        )
        .into());
    }
    if !(1..=1000).contains(&limits.orders) {
        return Err(CliError::Refused("the orders searched must be 1 to 1000".into()).into());
    }
    let sagas = sagas_naming(ctx, needle, limits.orders).await?;
    let dead_letters = dead_letters_naming(ctx, needle, limits.dead_letters).await?;
    let query = audit::Query {
        subject: Some(needle.to_owned()),
        ..audit::Query::default()
    };
    let audit = audit::read(ctx, &query, AUDIT_SHOWN, None).await?;
    Ok(json!({
        "query": needle,
        "sagas": sagas,
        "dead_letters": dead_letters,
        "audit": audit,
    }))
}

/// The sagas found so far, each once, with the fields that named the id.
#[derive(Default)]
struct Found {
    sagas: Vec<Value>,
}

impl Found {
    fn add(&mut self, order: &Value, matched: &str) {
        let id = field(order, "order_id");
        if let Some(known) = self.sagas.iter_mut().find(|s| s["order_id"] == id) {
            if let Some(fields) = known["matched"].as_array_mut()
                && !fields.iter().any(|f| f == matched)
            {
                fields.push(json!(matched));
            }
            return;
        }
        self.sagas.push(json!({
            "order_id": id,
            "status": order["status"],
            "customer_id": order["customer_id"],
            "created_at": order["created_at"],
            "matched": [matched],
            "page": format!("/orders/{id}"),
        }));
    }
}

async fn sagas_naming(ctx: &Context, needle: &str, window: u32) -> anyhow::Result<Value> {
    let mut found = Found::default();
    let mut searched = Vec::new();
    let uuid = needle.parse::<Uuid>().ok();
    if let Some(id) = uuid {
        let order = trace::optional(ctx, Service::Order, &format!("/orders/{id}")).await?;
        if !order.is_null() {
            found.add(&order, "order_id");
        }
        searched.push("the order of that id".to_owned());
    }
    let newest = ctx
        .get_ok(Service::Order, &format!("/orders?limit={window}"))
        .await?;
    let newest = newest["orders"].as_array().cloned().unwrap_or_default();
    for order in &newest {
        if order["customer_id"] == needle {
            found.add(order, "customer_id");
        }
        let items = order["items"].as_array().into_iter().flatten();
        if items.clone().any(|i| i["sku"] == needle) {
            found.add(order, "sku");
        }
    }
    searched.push(format!(
        "the customer and SKUs of the newest {} orders",
        newest.len()
    ));
    if uuid.is_some() && found.sagas.is_empty() {
        let (payment, read) = payment_with_id(ctx, needle).await?;
        if let Some(payment) = payment {
            let order_id = field(&payment, "order_id");
            let order = trace::optional(ctx, Service::Order, &path(&["orders", &order_id])).await?;
            if !order.is_null() {
                found.add(&order, "payment_id");
            }
        }
        searched.push(format!("the payment ids of {read} payments"));
    }
    if uuid.is_some() && found.sagas.is_empty() {
        let recent: Vec<String> = newest
            .iter()
            .take(HISTORY_WINDOW)
            .map(|o| field(o, "order_id"))
            .collect();
        for order in histories_holding(ctx, &recent, needle).await? {
            found.add(&order, "message_id");
        }
        searched.push(format!(
            "the message ids in the histories of the newest {} orders",
            recent.len()
        ));
    }
    Ok(json!({"matches": found.sagas, "searched": searched}))
}

/// The payment whose `payment_id` is `needle`, walking `GET /payments` page by page up to
/// [`PAYMENT_SCAN`] payments; and how many were read.
async fn payment_with_id(ctx: &Context, needle: &str) -> anyhow::Result<(Option<Value>, usize)> {
    let mut read = 0;
    let mut after = Uuid::nil();
    while read < PAYMENT_SCAN {
        let limit = 1000.min(PAYMENT_SCAN - read);
        let page = ctx
            .get_ok(
                Service::Payment,
                &format!("/payments?after={after}&limit={limit}"),
            )
            .await?;
        let payments = page["payments"].as_array().cloned().unwrap_or_default();
        read += payments.len();
        if let Some(p) = payments.iter().find(|p| p["payment_id"] == needle) {
            return Ok((Some(p.clone()), read));
        }
        match payments.last() {
            Some(last) if payments.len() == limit => after = field(last, "order_id").parse()?,
            _ => break,
        }
    }
    Ok((None, read))
}

/// The orders among `ids` whose history holds a message of id `needle`.
async fn histories_holding(
    ctx: &Context,
    ids: &[String],
    needle: &str,
) -> anyhow::Result<Vec<Value>> {
    let reads = stream::iter(ids.to_vec())
        .map(
            |id| async move { trace::optional(ctx, Service::Order, &path(&["orders", &id])).await },
        )
        .buffered(CONCURRENT_READS)
        .collect::<Vec<_>>()
        .await;
    let mut holding = Vec::new();
    for order in reads {
        let order = order?;
        let history = order["history"].as_array().into_iter().flatten();
        if history.clone().any(|h| h["message_id"] == needle) {
            holding.push(order);
        }
    }
    Ok(holding)
}

/// The dead letters naming `needle`, each once: those the services' listings find by
/// message id, order id or customer id, and those among the first `limit` of each queue
/// whose ids or payload name it; per queue, how many it holds and how many were read.
async fn dead_letters_naming(ctx: &Context, needle: &str, limit: usize) -> anyhow::Result<Value> {
    let mut matches: Vec<Value> = Vec::new();
    let mut queues = Vec::new();
    let mut note = |m: &Value, queue: &str, matched: Vec<String>| {
        let known = matches
            .iter_mut()
            .find(|k| k["dlq"] == queue && k["message_id"] == m["message_id"]);
        match known {
            Some(k) => {
                if let Some(fields) = k["matched"].as_array_mut() {
                    for f in matched {
                        if !fields.iter().any(|x| *x == f) {
                            fields.push(json!(f));
                        }
                    }
                }
            }
            None => {
                let mut m = m.clone();
                m["dlq"] = json!(queue);
                m["matched"] = json!(matched);
                matches.push(m);
            }
        }
    };
    for service in Service::ALL {
        let queue = format!("{}.dlq", service.name());
        // A service that does not answer leaves its queue unread, not the search undone.
        match dead_letters_in(ctx, service, needle, limit).await {
            Ok((found, total, read)) => {
                for (m, by) in &found {
                    note(m, &queue, by.clone());
                }
                queues.push(json!({
                    "queue": queue,
                    "messages": total,
                    "read": read,
                    "complete": read >= total,
                }));
            }
            Err(e) => queues.push(json!({
                "queue": queue,
                "messages": null,
                "read": 0,
                "complete": false,
                "error": format!("{e:#}"),
            })),
        }
    }
    Ok(json!({"matches": matches, "queues": queues, "limit": limit}))
}

/// The dead letters of `service`'s queue naming `needle`, each with the fields that name
/// it, and how many messages the queue holds and how many were read: those the listing
/// finds by message id, order id or customer id (over the whole queue), and those among
/// the first `limit` whose other ids or payload name it.
async fn dead_letters_in(
    ctx: &Context,
    service: Service,
    needle: &str,
    limit: usize,
) -> anyhow::Result<(Vec<(Value, Vec<String>)>, usize, usize)> {
    let mut found = Vec::new();
    let by = |field: &str| {
        let mut filter = Filter::default();
        let value = Some(needle.to_owned());
        match field {
            "customer_id" => filter.customer_id = value,
            "message_id" => filter.message_id = value,
            _ => filter.order_id = value,
        }
        filter
    };
    let mut exact = vec!["customer_id"];
    if needle.parse::<Uuid>().is_ok() {
        exact.extend(["message_id", "order_id"]);
    }
    let mut total = 0;
    for field in exact {
        let listed = dlq::messages(ctx, service, &by(field), 0, DLQ_PAGE).await?;
        total = listed["messages"].as_u64().unwrap_or(0) as usize;
        for m in listed["dead_letters"].as_array().into_iter().flatten() {
            found.push((m.clone(), vec![field.to_owned()]));
        }
    }
    let mut read = 0;
    while read < limit {
        let page = DLQ_PAGE.min(u32::try_from(limit - read).unwrap_or(DLQ_PAGE));
        let offset = u32::try_from(read).unwrap_or(u32::MAX);
        let listed = dlq::messages(ctx, service, &Filter::default(), offset, page).await?;
        total = listed["messages"].as_u64().unwrap_or(0) as usize;
        let letters = listed["dead_letters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        read += letters.len();
        for m in &letters {
            let named = dead_letter_matches(
                m["message_id"].as_str(),
                m["correlation_id"].as_str(),
                json!({"order_id": m["order_id"], "customer_id": m["customer_id"],
                    "payload": m["payload"]})
                .to_string()
                .as_bytes(),
                needle,
            );
            if !named.is_empty() {
                found.push((m.clone(), named));
            }
        }
        if letters.len() < page as usize {
            break;
        }
    }
    Ok((found, total, read))
}

/// The strings of the list `v`, joined with `separator`.
fn joined(v: &Value, separator: &str) -> String {
    let strings: Vec<&str> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    strings.join(separator)
}

fn render(v: &Value) -> String {
    let query = field(v, "query");
    let mut s = String::new();
    let sagas = v["sagas"]["matches"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    s.push_str(&format!("sagas naming {query}: {}\n", sagas.len()));
    for o in &sagas {
        s.push_str(&format!(
            "  {:<38} {:<10} {:<14} by {}\n",
            field(o, "order_id"),
            field(o, "status"),
            field(o, "customer_id"),
            joined(&o["matched"], ", ")
        ));
    }
    s.push_str(&format!(
        "  (searched {})\n",
        joined(&v["sagas"]["searched"], "; ")
    ));
    let letters = &v["dead_letters"];
    let found = letters["matches"].as_array().cloned().unwrap_or_default();
    s.push_str(&format!("dead letters naming {query}: {}\n", found.len()));
    for m in &found {
        s.push_str(&format!(
            "  {:<16} {:<38} {:<16} by {}  error {}\n",
            field(m, "dlq"),
            field(m, "message_id"),
            field(m, "type"),
            joined(&m["matched"], ", "),
            field(m, "error"),
        ));
    }
    for q in letters["queues"].as_array().into_iter().flatten() {
        if let Some(e) = q["error"].as_str() {
            s.push_str(&format!("  ({} not read: {e})\n", field(q, "queue")));
        } else if q["complete"] == false {
            s.push_str(&format!(
                "  (read {} of the {} messages of {}: raise --dlq-limit to read further)\n",
                q["read"],
                q["messages"],
                field(q, "queue")
            ));
        }
    }
    let records = v["audit"]["records"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for u in v["audit"]["unavailable"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "  (the audit log of {} not read: {})\n",
            field(u, "service"),
            field(u, "error")
        ));
    }
    s.push_str(&format!(
        "audit records naming {query}: {}\n",
        records.len()
    ));
    for r in &records {
        s.push_str(&format!(
            "  {:<25} {:<14} {:<16} {:<17} {}\n",
            field(r, "at"),
            field(r, "service"),
            field(r, "actor"),
            field(r, "action"),
            field(r, "outcome"),
        ));
    }
    s.trim_end().to_owned()
}
