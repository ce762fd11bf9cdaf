//! `sagactl order place|show|cancel|list` over order-svc's HTTP API.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::OrderCommand;
use crate::render::{self, field, render_order};
use sagactl::context::{CliError, Context, Service, ok_or_refused, path};
use sagactl::output;

/// Longest `order place --wait` waits for a final status.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

pub(super) async fn run(ctx: &Context, cmd: OrderCommand) -> anyhow::Result<()> {
    match cmd {
        OrderCommand::Place {
            customer,
            currency,
            items,
            idempotency_key,
            wait,
        } => {
            let body = json!({"customer_id": customer, "currency": currency, "items": items});
            let headers: Vec<(&str, &str)> = idempotency_key
                .as_deref()
                .map(|k| vec![("Idempotency-Key", k)])
                .unwrap_or_default();
            let (status, placed) = ctx
                .call(
                    Service::Order,
                    Method::POST,
                    "/orders",
                    Some(&body),
                    &headers,
                )
                .await?;
            let placed = ok_or_refused(status, placed)?;
            if !wait {
                output::show(ctx, &placed, |v| field(v, "order_id"));
                return Ok(());
            }
            let id = field(&placed, "order_id");
            let order = wait_for_final(ctx, &id).await?;
            output::show(ctx, &order, render_order);
            Ok(())
        }
        OrderCommand::Show { order_id, wait } => {
            let order = if wait {
                wait_for_final(ctx, &order_id).await?
            } else {
                ctx.get_ok(Service::Order, &path(&["orders", &order_id]))
                    .await?
            };
            output::show(ctx, &order, render_order);
            Ok(())
        }
        OrderCommand::Cancel { order_id } => {
            let outcome = cancel(ctx, &order_id).await?;
            if outcome["outcome"] != "cancelled" {
                let message = field(&outcome, "message");
                return Err(
                    CliError::Refused(format!("{message} (409 Conflict, order_closed)")).into(),
                );
            }
            output::show(ctx, &outcome, |v| {
                format!("order {} cancelled", field(v, "order_id"))
            });
            Ok(())
        }
        OrderCommand::List { status, limit } => {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query.append_pair("limit", &limit.to_string());
            if let Some(s) = &status {
                query.append_pair("status", s);
            }
            let list = format!("{}?{}", path(&["orders"]), query.finish());
            let body = ctx.get_ok(Service::Order, &list).await?;
            output::list(ctx, &body, "orders", render_list);
            Ok(())
        }
    }
}

/// Cancels one order (order-svc's `POST /orders/{id}/cancel`): `{"order_id", "outcome":
/// "cancelled"}`, or `"outcome": "already_closed"` with order-svc's message when it was
/// rejected or cancelled already, so cancelling again changes nothing and is no error
/// here. Any other refusal (no such order) is an error.
pub(super) async fn cancel(ctx: &Context, order_id: &str) -> anyhow::Result<Value> {
    let (status, body) = ctx
        .call(
            Service::Order,
            Method::POST,
            &path(&["orders", order_id, "cancel"]),
            None,
            &[],
        )
        .await?;
    if status == reqwest::StatusCode::CONFLICT {
        return Ok(json!({
            "order_id": order_id,
            "outcome": "already_closed",
            "message": body["message"].as_str().unwrap_or("the order is already closed"),
        }));
    }
    let mut body = ok_or_refused(status, body)?;
    body["outcome"] = json!("cancelled");
    Ok(body)
}

/// Polls the order until it is confirmed, rejected or cancelled.
async fn wait_for_final(ctx: &Context, id: &str) -> anyhow::Result<Value> {
    let started = Instant::now();
    loop {
        let order = ctx.get_ok(Service::Order, &path(&["orders", id])).await?;
        let status = field(&order, "status");
        if matches!(status.as_str(), "confirmed" | "rejected" | "cancelled") {
            return Ok(order);
        }
        if started.elapsed() > WAIT_LIMIT {
            return Err(CliError::Refused(format!(
                "order {id} is still {status} after {}s; are inventory-svc and payment-svc running?",
                WAIT_LIMIT.as_secs()
            ))
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn render_list(v: &Value) -> String {
    let mut s = format!(
        "{:<38} {:<10} {:<12} {:>16}  {}\n",
        "ORDER", "STATUS", "CUSTOMER", "TOTAL", "CREATED"
    );
    for o in v
        .get("orders")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        s.push_str(&format!(
            "{:<38} {:<10} {:<12} {:>16}  {}\n",
            field(o, "order_id"),
            field(o, "status"),
            field(o, "customer_id"),
            render::money_field(o, "total", &field(o, "currency")),
            field(o, "created_at"),
        ));
    }
    s.trim_end().to_owned()
}
