//! `sagactl trace <order_id>`: an order's whole saga from what the services keep (their
//! inbox and outbox records, the order's history, its reservation and payment), so it works
//! for sagas that finished long before the command started (within the messaging tables'
//! retention).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use sagactl::context::{CliError, Context, Service, ok_or_refused};
use sagactl::output;

/// One event of the saga, assembled from every service's records of it.
#[derive(Debug, Clone, Serialize)]
pub(super) struct TracedEvent {
    pub message_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub producer: String,
    pub causation_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
    /// When the producer's relay had it confirmed by the broker.
    pub published_at: Option<DateTime<Utc>>,
    /// Who handled it, and when.
    pub consumed_by: Vec<(String, DateTime<Utc>)>,
}

pub(super) async fn run(ctx: &Context, order_id: Uuid) -> anyhow::Result<()> {
    let (report, events) = report(ctx, order_id).await?;
    output::show(ctx, &report, |r| render(r, &events));
    Ok(())
}

/// The saga as `--json` prints it (order, events, tree, reservation, payment), with the
/// events in the order they occurred.
pub(super) async fn report(
    ctx: &Context,
    order_id: Uuid,
) -> anyhow::Result<(Value, Vec<TracedEvent>)> {
    let order = ctx
        .get_ok(Service::Order, &format!("/orders/{order_id}"))
        .await?;
    let mut records = Vec::new();
    for service in [Service::Order, Service::Inventory, Service::Payment] {
        records.push(
            ctx.get_ok(service, &format!("/messages/{order_id}"))
                .await?,
        );
    }
    let reservation = optional(
        ctx,
        Service::Inventory,
        &format!("/reservations/{order_id}"),
    )
    .await?;
    let payment = optional(ctx, Service::Payment, &format!("/payments/{order_id}")).await?;
    let events = assemble(&records);
    let report = json!({
        "order": order,
        "events": events.iter().map(|e| {
            let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
            v["since_start_ms"] = json!(millis(events[0].occurred_at, e.occurred_at));
            v
        }).collect::<Vec<_>>(),
        "tree": tree(&events),
        "reservation": reservation,
        "payment": payment,
    });
    Ok((report, events))
}

/// A GET whose 404 means "none" (Null) rather than an error.
pub(super) async fn optional(ctx: &Context, service: Service, path: &str) -> anyhow::Result<Value> {
    let (status, body) = ctx.call(service, Method::GET, path, None, &[]).await?;
    if status == StatusCode::NOT_FOUND {
        return Ok(Value::Null);
    }
    ok_or_refused(status, body).map_err(|e| CliError::Refused(format!("{e:#}")).into())
}

fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Merges each service's `/messages` answer into one event per message id, in the order
/// they occurred.
pub(super) fn assemble(records: &[Value]) -> Vec<TracedEvent> {
    let mut by_id: HashMap<Uuid, TracedEvent> = HashMap::new();
    let mut upsert = |r: &Value| -> Option<Uuid> {
        // A record without an id or a time cannot be placed in the timeline: skipped.
        let id: Uuid = r.get("message_id")?.as_str()?.parse().ok()?;
        let occurred_at = parse_time(&r["occurred_at"])?;
        let e = by_id.entry(id).or_insert_with(|| TracedEvent {
            message_id: id,
            event_type: r["event_type"].as_str().unwrap_or("?").to_owned(),
            producer: r["producer"].as_str().unwrap_or("?").to_owned(),
            causation_id: r["causation_id"].as_str().and_then(|c| c.parse().ok()),
            occurred_at,
            published_at: None,
            consumed_by: Vec::new(),
        });
        if let Some(sent) = parse_time(&r["sent_at"]) {
            e.published_at = Some(sent);
        }
        if let (Some(consumer), Some(at)) = (r["consumer"].as_str(), parse_time(&r["received_at"]))
        {
            e.consumed_by.push((consumer.to_owned(), at));
        }
        Some(id)
    };
    for service in records {
        for r in service["emitted"].as_array().into_iter().flatten() {
            upsert(r);
        }
        for r in service["consumed"].as_array().into_iter().flatten() {
            upsert(r);
        }
    }
    let mut events: Vec<_> = by_id.into_values().collect();
    for e in &mut events {
        e.consumed_by.sort_by_key(|(_, at)| *at);
    }
    events.sort_by_key(|e| (e.occurred_at, e.message_id));
    events
}

fn millis(from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    (to - from).num_milliseconds()
}

/// The causation tree: each event under the one that caused it.
pub(super) fn tree(events: &[TracedEvent]) -> Value {
    let ids: std::collections::HashSet<Uuid> = events.iter().map(|e| e.message_id).collect();
    let mut children: BTreeMap<Option<Uuid>, Vec<&TracedEvent>> = BTreeMap::new();
    for e in events {
        let parent = e.causation_id.filter(|c| ids.contains(c));
        children.entry(parent).or_default().push(e);
    }
    fn node(e: &TracedEvent, children: &BTreeMap<Option<Uuid>, Vec<&TracedEvent>>) -> Value {
        let kids: Vec<Value> = children
            .get(&Some(e.message_id))
            .into_iter()
            .flatten()
            .map(|c| node(c, children))
            .collect();
        json!({"message_id": e.message_id, "type": e.event_type, "producer": e.producer, "caused": kids})
    }
    json!(
        children
            .get(&None)
            .into_iter()
            .flatten()
            .map(|e| node(e, &children))
            .collect::<Vec<_>>()
    )
}

/// The last 8 characters of a message id: enough to tell a saga's messages apart.
fn short(id: &(impl ToString + ?Sized)) -> String {
    let s = id.to_string();
    let start = s.char_indices().rev().nth(7).map_or(0, |(i, _)| i);
    s[start..].to_owned()
}

fn render_tree(nodes: &Value, prefix: &str, out: &mut String) {
    let list = nodes.as_array().cloned().unwrap_or_default();
    for (i, n) in list.iter().enumerate() {
        let last = i + 1 == list.len();
        let id = n["message_id"].as_str().unwrap_or("?");
        out.push_str(&format!(
            "{prefix}{}{} ({}) {}\n",
            if last { "└─ " } else { "├─ " },
            n["type"].as_str().unwrap_or("?"),
            n["producer"].as_str().unwrap_or("?"),
            short(id)
        ));
        let deeper = format!("{prefix}{}", if last { "   " } else { "│  " });
        render_tree(&n["caused"], &deeper, out);
    }
}

fn render(report: &Value, events: &[TracedEvent]) -> String {
    let o = &report["order"];
    let f = |v: &Value, k: &str| {
        v.get(k).map_or("-".to_owned(), |x| {
            x.as_str().map_or(x.to_string(), str::to_owned)
        })
    };
    let mut s = format!(
        "order {}  {}{}  ({}, {})\n\ntimeline\n",
        f(o, "order_id"),
        f(o, "status"),
        o["reason"]
            .as_str()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        f(o, "customer_id"),
        crate::render::money_field(o, "total", &f(o, "currency")),
    );
    let start = events.first().map(|e| e.occurred_at);
    let mut previous = start;
    for e in events {
        let since_start = start.map_or(0, |t| millis(t, e.occurred_at));
        let step = previous.map_or(0, |t| millis(t, e.occurred_at));
        previous = Some(e.occurred_at);
        let consumers: Vec<String> = e
            .consumed_by
            .iter()
            .map(|(c, at)| format!("{c} +{}ms", millis(e.occurred_at, *at)))
            .collect();
        s.push_str(&format!(
            "  +{:>6}ms (+{:>5}ms)  {:<16} {:<14} {}  → {}\n",
            since_start,
            step,
            e.event_type,
            e.producer,
            short(&e.message_id),
            if consumers.is_empty() {
                "-".to_owned()
            } else {
                consumers.join(", ")
            }
        ));
    }
    s.push_str("\ncausation\n");
    render_tree(&report["tree"], "  ", &mut s);
    s.push_str("\nfinal state\n");
    s.push_str(&format!("  order        {}\n", f(o, "status")));
    let r = &report["reservation"];
    if r.is_null() {
        s.push_str("  stock        nothing held\n");
    } else {
        let items: Vec<String> = r["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| format!("{} x{}", f(i, "sku"), f(i, "quantity")))
            .collect();
        s.push_str(&format!(
            "  stock        {}  {}\n",
            f(r, "status"),
            items.join(", ")
        ));
    }
    let p = &report["payment"];
    if p.is_null() {
        s.push_str("  payment      none\n");
    } else {
        s.push_str(&format!(
            "  payment      {}  {}{}\n",
            f(p, "status"),
            crate::render::money_field(p, "amount", &f(p, "currency")),
            p["reason"]
                .as_str()
                .map(|r| format!("  ({r})"))
                .unwrap_or_default()
        ));
    }
    s.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u128, t: &str, producer: &str, cause: Option<u128>, at: &str) -> Value {
        json!({"message_id": Uuid::from_u128(id), "event_type": t, "producer": producer,
               "causation_id": cause.map(Uuid::from_u128), "occurred_at": at, "sent_at": at})
    }

    #[test]
    fn records_from_every_service_merge_into_one_causation_tree() {
        let order = json!({"emitted": [rec(1, "OrderCreated", "order-svc", None, "2026-11-26T10:00:00Z"),
                                       rec(4, "OrderConfirmed", "order-svc", Some(3), "2026-11-26T10:00:00.300Z")],
                           "consumed": []});
        let mut consumed = rec(1, "OrderCreated", "order-svc", None, "2026-11-26T10:00:00Z");
        consumed["consumer"] = json!("inventory-svc");
        consumed["received_at"] = json!("2026-11-26T10:00:00.050Z");
        let inventory = json!({"emitted": [rec(2, "StockReserved", "inventory-svc", Some(1), "2026-11-26T10:00:00.100Z")],
                               "consumed": [consumed]});
        let payment = json!({"emitted": [rec(3, "PaymentDone", "payment-svc", Some(2), "2026-11-26T10:00:00.200Z")],
                             "consumed": []});
        let events = assemble(&[order, inventory, payment]);
        let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(
            types,
            [
                "OrderCreated",
                "StockReserved",
                "PaymentDone",
                "OrderConfirmed"
            ]
        );
        assert_eq!(events[0].consumed_by[0].0, "inventory-svc");
        let t = tree(&events);
        assert_eq!(t[0]["type"], "OrderCreated");
        assert_eq!(
            t[0]["caused"][0]["caused"][0]["caused"][0]["type"],
            "OrderConfirmed"
        );
        let mut text = String::new();
        render_tree(&t, "", &mut text);
        assert!(text.contains("└─ OrderCreated"));
        assert!(text.contains("      └─ PaymentDone"));
    }
}
