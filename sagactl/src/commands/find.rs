//! `sagactl find <ID>`: every saga, dead letter and audit record that names an id (an
//! order id, customer id, SKU, message id or payment id).
//!
//! - Sagas, from the services' HTTP APIs: the order of that id; the newest orders whose
//!   customer or an item's SKU it is; the order of the payment of that id (walking
//!   `GET /payments`); the order among the newest whose history holds a message of that id.
//!   Each scan is bounded and the answer says what it covered.
//! - Dead letters, read over AMQP as `sagactl dlq show` does (taken unacked and returned
//!   when the channel closes): each message's id, correlation id and the payload's
//!   `order_id`, `customer_id`, `sku` and `payment_id`, at most `--dlq-limit` messages per
//!   queue; only the matches are kept.
//! - Audit: no audit log is recorded yet; the section is there, empty, saying so.

use futures_util::{StreamExt, stream};
use lapin::Channel;
use lapin::options::BasicGetOptions;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{dlq, trace};
use crate::cli::FindArgs;
use crate::render::field;
use sagactl::context::{CliError, Context, Service, path};
use sagactl::output;
use sagactl::triage::dead_letter_matches;

/// Most payments walked looking for a payment id.
const PAYMENT_SCAN: usize = 10_000;
/// Newest orders whose histories are read looking for a message id.
const HISTORY_WINDOW: usize = 200;
const CONCURRENT_READS: usize = 8;

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
    let conn = ctx.broker("find").await?;
    let result = async {
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| ctx.broker_unreachable(e))?;
        find(ctx, &channel, &args.id, limits).await
    }
    .await;
    // Closing returns every dead letter read to its queue.
    sagactl::context::close(conn).await;
    let report = result?;
    output::show(ctx, &report, render);
    Ok(())
}

/// The search's report: `query`, `sagas`, `dead_letters` and `audit`.
pub(super) async fn find(
    ctx: &Context,
    channel: &Channel,
    query: &str,
    limits: Limits,
) -> anyhow::Result<Value> {
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
    let dead_letters = dead_letters_naming(channel, needle, limits.dead_letters).await?;
    Ok(json!({
        "query": needle,
        "sagas": sagas,
        "dead_letters": dead_letters,
        "audit": {
            "recorded": false,
            "records": [],
            "note": "no audit log is recorded yet: operator actions cannot be searched",
        },
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

/// The dead letters naming `needle`, reading at most `limit` messages of each queue one at
/// a time and keeping only the matches; per queue, how many it holds and how many were read.
async fn dead_letters_naming(
    channel: &Channel,
    needle: &str,
    limit: usize,
) -> anyhow::Result<Value> {
    let mut matches = Vec::new();
    let mut queues = Vec::new();
    for service in dlq::SERVICES {
        let queue = format!("{service}.dlq");
        let total = dlq::count(channel, &queue).await? as usize;
        let mut read = 0;
        while read < limit.min(total) {
            let Some(message) = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await?
            else {
                break;
            };
            read += 1;
            let delivery = message.delivery;
            let p = &delivery.properties;
            let id = p.message_id().as_ref().map(|s| s.as_str().to_owned());
            let correlation = p.correlation_id().as_ref().map(|s| s.as_str().to_owned());
            let matched = dead_letter_matches(
                id.as_deref(),
                correlation.as_deref(),
                &delivery.data,
                needle,
            );
            if !matched.is_empty() {
                let mut described = dlq::describe(&delivery);
                described["dlq"] = json!(queue);
                described["matched"] = json!(matched);
                matches.push(described);
            }
        }
        queues.push(json!({
            "queue": queue,
            "messages": total,
            "read": read,
            "complete": read >= total,
        }));
    }
    Ok(json!({"matches": matches, "queues": queues, "limit": limit}))
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
        if q["complete"] == false {
            s.push_str(&format!(
                "  (read {} of the {} messages of {}: raise --dlq-limit to read further)\n",
                q["read"],
                q["messages"],
                field(q, "queue")
            ));
        }
    }
    s.push_str("audit records: none, no audit log is recorded yet");
    s
}
