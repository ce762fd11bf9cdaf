//! What an operator sees: one W3C trace across the whole saga, metrics that move under a
//! saga, and structured handler logs that name the order, message, cause and type.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga_tests::{Service, Stack, StackOptions, eventually, order_request};
use serde_json::Value;

#[tokio::test]
async fn the_requests_traceparent_travels_through_every_event_of_the_saga() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("TRC", 5).await;
    stack.deposit("trudy", 1000, "EUR").await;
    let watch = stack.watch_events().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let (status, body) = stack
        .post_json(
            Service::Order,
            "/orders",
            &[("traceparent", traceparent.as_str())],
            &order_request("trudy", "EUR", &[("TRC", 1, 100)]),
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    let order_id = body["order_id"].as_str().unwrap().to_owned();
    stack.wait_for_status(&order_id, "confirmed").await;
    let events = eventually(Duration::from_secs(20), || async {
        let mine = watch.traces_of(&order_id);
        (mine.len() >= 4)
            .then_some(mine.clone())
            .ok_or(format!("{mine:?}"))
    })
    .await;
    for (event_type, tp) in &events {
        let tp = tp
            .as_deref()
            .unwrap_or_else(|| panic!("{event_type} carries no traceparent"));
        assert!(tp.contains(trace_id), "{event_type} left the trace: {tp}");
    }
    let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    for t in [
        "OrderCreated",
        "StockReserved",
        "PaymentDone",
        "OrderConfirmed",
    ] {
        assert!(types.contains(&t), "{t} not seen: {types:?}");
    }
    // The trace is kept in the outbox rows too, so a relay restarted later still sends it.
    let db = stack.db(Service::Order).await;
    let stored: Vec<Option<String>> =
        sqlx::query_scalar("SELECT traceparent FROM outbox WHERE correlation_id = $1")
            .bind(&order_id)
            .fetch_all(&db)
            .await
            .unwrap();
    assert!(
        !stored.is_empty()
            && stored
                .iter()
                .all(|t| t.as_deref().is_some_and(|t| t.contains(trace_id))),
        "{stored:?}"
    );
}

#[tokio::test]
async fn metrics_are_exposed_and_move_under_a_saga() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("MET", 5).await;
    stack.deposit("mel", 1000, "EUR").await;
    let order_id = stack
        .place_order_ok(&order_request("mel", "EUR", &[("MET", 1, 100)]))
        .await;
    stack.wait_for_status(&order_id, "confirmed").await;
    let stack = &stack;
    eventually(Duration::from_secs(20), || async move {
        let mut counts = Vec::new();
        for s in Service::ALL {
            counts.push(
                stack
                    .metric(s, "saga_messages_handled_total", &[("outcome", "ok")])
                    .await,
            );
        }
        counts
            .iter()
            .all(|c| *c >= 2.0)
            .then_some(())
            .ok_or(format!("{counts:?}"))
    })
    .await;
    for s in Service::ALL {
        let published = stack.metric(s, "saga_relay_published_total", &[]).await;
        assert!(published >= 1.0, "{s} relayed nothing");
        let (_, text) = stack.get(s, "/metrics").await;
        let text = text.as_str().unwrap_or_default().to_owned();
        for name in [
            "saga_handler_duration_seconds_bucket",
            "saga_http_requests_total",
            "saga_http_request_duration_seconds_bucket",
        ] {
            assert!(text.contains(name), "{s} /metrics lacks {name}");
        }
    }
    // The gauges refresh every few seconds.
    eventually(Duration::from_secs(20), || async {
        let (_, text) = stack.get(Service::Inventory, "/metrics").await;
        let text = text.as_str().unwrap_or_default().to_owned();
        (text.contains("saga_outbox_backlog")
            && text.contains("saga_outbox_oldest_unsent_seconds")
            && text.contains("saga_inbox_rows"))
        .then_some(())
        .ok_or(text)
    })
    .await;
    let confirmed = stack
        .metric(
            Service::Order,
            "saga_outcomes_total",
            &[("status", "confirmed")],
        )
        .await;
    assert_eq!(confirmed, 1.0);
    let (_, text) = stack.get(Service::Order, "/metrics").await;
    assert!(
        text.as_str()
            .unwrap_or_default()
            .contains("saga_duration_seconds_bucket")
    );
    let requests = stack
        .metric(
            Service::Order,
            "saga_http_requests_total",
            &[("route", "/orders"), ("method", "POST"), ("status", "202")],
        )
        .await;
    assert!(requests >= 1.0, "POST /orders not counted");
}

#[tokio::test]
async fn json_logs_inside_a_handler_name_the_order_message_cause_and_type() {
    let stack = Stack::start(
        StackOptions::default()
            .env("SAGA_LOG_FORMAT", "json")
            .env("SAGA_LOG", "info,messaging::consumer=debug"),
    )
    .await;
    stack.seed_stock("LOGS", 3).await;
    stack.deposit("logan", 1000, "EUR").await;
    let order_id = stack
        .place_order_ok(&order_request("logan", "EUR", &[("LOGS", 1, 100)]))
        .await;
    stack.wait_for_status(&order_id, "confirmed").await;
    // payment-svc's line for the StockReserved it handled.
    let line = eventually(Duration::from_secs(20), || async {
        let log = std::fs::read_to_string(stack.log_path(Service::Payment)).unwrap_or_default();
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| {
                v["fields"]["message"] == "message handled"
                    && v["span"]["event_type"] == "StockReserved"
            })
            .ok_or_else(|| log.lines().rev().take(5).collect::<Vec<_>>().join("\n"))
    })
    .await;
    let span = &line["span"];
    assert_eq!(span["order_id"], order_id.as_str(), "{line}");
    assert!(
        span["message_id"].as_str().is_some_and(|m| m.len() == 36),
        "{line}"
    );
    assert!(
        span["causation_id"].as_str().is_some_and(|m| m.len() == 36),
        "{line}"
    );
    assert!(
        span["traceparent"]
            .as_str()
            .is_some_and(|t| t.starts_with("00-")),
        "{line}"
    );
    assert_eq!(line["fields"]["outcome"], "ok", "{line}");
    // Every line is JSON.
    let log = std::fs::read_to_string(stack.log_path(Service::Payment)).unwrap();
    for l in log.lines().filter(|l| !l.trim().is_empty()) {
        assert!(serde_json::from_str::<Value>(l).is_ok(), "not JSON: {l}");
    }
}

/// A stand-in OTLP/HTTP collector: keeps the body of every `POST /v1/traces`.
async fn otlp_collector() -> (std::net::SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    use axum::routing::post;
    let received: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body.to_vec());
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, received)
}

/// One exported span, with the service that exported it.
#[derive(Debug, Clone)]
struct ExportedSpan {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

/// Every span in the OTLP/HTTP protobuf bodies received so far.
fn exported_spans(bodies: &[Vec<u8>]) -> Vec<ExportedSpan> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message;
    let mut spans = Vec::new();
    for body in bodies {
        let request = ExportTraceServiceRequest::decode(body.as_slice())
            .expect("the exporter sends valid OTLP protobuf");
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Any::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(ExportedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex::encode(span.trace_id),
                    span_id: hex::encode(span.span_id),
                    parent_span_id: hex::encode(span.parent_span_id),
                });
            }
        }
    }
    spans
}

/// The span `name` exported by `service` whose parent is `parent_span_id`, in `trace_id`.
fn child_of<'a>(
    spans: &'a [ExportedSpan],
    trace_id: &str,
    parent_span_id: &str,
    service: &str,
    name: &str,
) -> Result<&'a ExportedSpan, String> {
    spans
        .iter()
        .find(|s| {
            s.trace_id == trace_id
                && s.parent_span_id == parent_span_id
                && s.service == service
                && s.name == name
        })
        .ok_or_else(|| {
            let in_trace: Vec<String> = spans
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .map(|s| {
                    format!(
                        "{}:{} ({}<-{})",
                        s.service, s.name, s.span_id, s.parent_span_id
                    )
                })
                .collect();
            format!(
                "no {service} span {name:?} under {parent_span_id}; the trace so far: {in_trace:?}"
            )
        })
}

/// The request → outbox → publish → consume → emit chain of a confirmed saga, every link
/// a parent/child pair in one trace that starts at the caller's `traceparent`.
fn confirmed_saga_tree(spans: &[ExportedSpan], trace_id: &str, caller: &str) -> Result<(), String> {
    let t = trace_id;
    let request = child_of(spans, t, caller, "order-svc", "POST /orders")?;
    let created = child_of(
        spans,
        t,
        &request.span_id,
        "order-svc",
        "order.created publish",
    )?;
    let reserve = child_of(
        spans,
        t,
        &created.span_id,
        "inventory-svc",
        "OrderCreated process",
    )?;
    let reserved = child_of(
        spans,
        t,
        &reserve.span_id,
        "inventory-svc",
        "stock.reserved publish",
    )?;
    child_of(
        spans,
        t,
        &reserved.span_id,
        "order-svc",
        "StockReserved process",
    )?;
    let pay = child_of(
        spans,
        t,
        &reserved.span_id,
        "payment-svc",
        "StockReserved process",
    )?;
    let paid = child_of(
        spans,
        t,
        &pay.span_id,
        "payment-svc",
        "payment.done publish",
    )?;
    let confirm = child_of(spans, t, &paid.span_id, "order-svc", "PaymentDone process")?;
    let confirmed = child_of(
        spans,
        t,
        &confirm.span_id,
        "order-svc",
        "order.confirmed publish",
    )?;
    child_of(
        spans,
        t,
        &confirmed.span_id,
        "inventory-svc",
        "OrderConfirmed process",
    )?;
    Ok(())
}

#[tokio::test]
async fn one_saga_is_one_trace_of_parent_and_child_spans_across_the_services() {
    let (collector, received) = otlp_collector().await;
    let stack = Stack::start(
        StackOptions::default()
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"))
            .env("OTEL_BSP_SCHEDULE_DELAY", "200"),
    )
    .await;
    stack.seed_stock("OTLP", 5).await;
    stack.deposit("otto", 1000, "EUR").await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let (status, body) = stack
        .post_json(
            Service::Order,
            "/orders",
            &[("traceparent", traceparent.as_str())],
            &order_request("otto", "EUR", &[("OTLP", 1, 100)]),
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    let order_id = body["order_id"].as_str().unwrap().to_owned();
    stack.wait_for_status(&order_id, "confirmed").await;
    eventually(Duration::from_secs(30), || async {
        let bodies = received.lock().unwrap().clone();
        confirmed_saga_tree(&exported_spans(&bodies), trace_id, caller_span)
    })
    .await;
}
