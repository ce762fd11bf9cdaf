//! `saga-bench load`: places orders over HTTP at a chosen concurrency (and optional rate),
//! follows each saga to its end by listening to the bus (OrderConfirmed, StockRejected,
//! OrderCancelled: never by polling), and reports completed sagas per second, end-to-end
//! latency percentiles (placed → final event) from an HDR histogram, outcomes and errors.
//!
//! Every run seeds its own SKUs and customers (suffixed with a run id): `happy` orders
//! find stock and money, `no-stock` orders name a SKU with none, `no-funds` orders come
//! from a customer with 1 minor unit.
//!
//! Above capacity order-svc sheds load: 503 with `Retry-After`. That is the stack working
//! as designed, not a failure: the order waits that long and is placed again with the same
//! `Idempotency-Key` (so a lost answer never makes two orders), and the report counts the
//! shed answers (`shed`). Latency runs from the accepted attempt: it is the saga's, and the
//! time spent shed shows in `shed` and in the run's throughput.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use reqwest::header::{HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use uuid::Uuid;

use events::EventType;
use events::catalog::{Event, FundsDeposited, StockAdjusted};
use sagactl::context::{CliError, Context, Service};
use sagactl::output;
use sagactl::publish::publish_event;

use crate::cli::LoadArgs;
use crate::mix::Kind;

/// An order id, the status its saga ended in, and when the final event was seen.
type Finished = (String, &'static str, Instant);

/// Customers among whom happy orders are spread (a wallet is a row lock).
const CUSTOMERS: usize = 64;
const UNIT_PRICE: i64 = 100;
/// How long one order keeps being placed again while order-svc sheds it.
const SHED_RETRY_LIMIT: Duration = Duration::from_secs(60);
/// The wait after a shed answer whose `Retry-After` is not a number of seconds.
const SHED_BACKOFF: Duration = Duration::from_millis(250);
/// The longest `Retry-After` obeyed, so one odd header cannot stall the run.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

pub(super) async fn run(ctx: &Context, args: LoadArgs) -> anyhow::Result<()> {
    let report = run_load(ctx, &args).await?;
    output::show(ctx, &report, render);
    if report["lost"].as_u64().unwrap_or(0) > 0 {
        return Err(
            CliError::Refused(format!("{} sagas did not finish in time", report["lost"])).into(),
        );
    }
    Ok(())
}

/// Runs the load and returns its report (also used by `saga-bench bench`).
pub(super) async fn run_load(ctx: &Context, args: &LoadArgs) -> anyhow::Result<Value> {
    let plan = Plan::new();
    plan.seed(ctx, args.orders).await?;
    // A watcher bound only to the events that end a saga.
    let finals_keys = [
        EventType::OrderConfirmed,
        EventType::StockRejected,
        EventType::OrderCancelled,
    ]
    .map(|t| t.routing_key());
    let (conn, finals) = sagactl::bus::watch(ctx, "load", &finals_keys).await?;
    let tracker = Tracker::default();
    let follower = tokio::spawn(follow_finals(finals, tracker.clone(), args.orders as usize));
    let bar = progress_bar(ctx, args.orders);
    let started = Instant::now();
    let urls = order_urls(ctx, args);
    place_all(&ctx.http, args, &urls, &plan, &tracker, &bar).await?;
    let placing = started.elapsed();
    bar.set_message("waiting for the last sagas");
    tracker
        .wait_for_finals(Duration::from_secs(args.wait_secs))
        .await;
    bar.finish_and_clear();
    // The connection first, which ends the follower's consumer: a channel closed by the
    // task's end while its connection closes can leave the close unanswered.
    sagactl::context::close(conn).await;
    follower.abort();
    let mut report = tracker.report(args, started, placing)?;
    report["placed_by_url"] = urls
        .iter()
        .map(|u| json!({"url": u.url, "placed": u.placed.load(Ordering::Relaxed)}))
        .collect();
    Ok(report)
}

/// An order-svc instance the load places orders with, and how many it took.
struct OrderUrl {
    url: String,
    placed: AtomicU64,
}

/// `--order-url` then each `--also-order-url`, as the URLs of their `POST /orders`.
fn order_urls(ctx: &Context, args: &LoadArgs) -> Vec<Arc<OrderUrl>> {
    std::iter::once(&ctx.conn.order_url)
        .chain(&args.also_order_url)
        .map(|base| {
            Arc::new(OrderUrl {
                url: format!("{}/orders", base.trim_end_matches('/')),
                placed: AtomicU64::new(0),
            })
        })
        .collect()
}

/// The names one run seeds and orders with, suffixed with a run id.
struct Plan {
    /// Stocked with one unit per order (and one spare).
    sku: String,
    /// Never stocked: `no-stock` orders.
    missing_sku: String,
    /// Funded for every order: `happy` and `no-stock` orders.
    customers: Vec<String>,
    /// Holds 1 minor unit: `no-funds` orders.
    poor: String,
}

impl Plan {
    fn new() -> Plan {
        let run_id = Uuid::new_v4().simple().to_string()[..8].to_owned();
        Plan {
            sku: format!("LOAD-{run_id}"),
            missing_sku: format!("LOAD-{run_id}-NONE"),
            customers: (0..CUSTOMERS)
                .map(|i| format!("load-{run_id}-{i}"))
                .collect(),
            poor: format!("load-{run_id}-poor"),
        }
    }

    /// Seeds stock and wallets through the bus, then waits until the services show them.
    async fn seed(&self, ctx: &Context, orders: u32) -> anyhow::Result<()> {
        let stock = Event::StockAdjusted(StockAdjusted {
            sku: self.sku.clone(),
            delta: i64::from(orders) + 1,
        });
        publish_event(ctx, stock).await?;
        let per_customer = (i64::from(orders) + 1) * UNIT_PRICE;
        let wallets = self
            .customers
            .iter()
            .map(|c| (c, per_customer))
            .chain(std::iter::once((&self.poor, 1)));
        for (customer, amount) in wallets {
            let deposit = Event::FundsDeposited(FundsDeposited {
                customer_id: customer.clone(),
                amount,
                currency: "EUR".into(),
            });
            publish_event(ctx, deposit).await?;
        }
        wait_seeded(ctx, &self.sku, &self.poor).await
    }

    /// The body of the `i`-th order, made for outcome `kind`.
    fn order(&self, i: usize, kind: Kind) -> Value {
        let regular = &self.customers[i % CUSTOMERS];
        let (customer, sku) = match kind {
            Kind::Happy => (regular, &self.sku),
            Kind::NoStock => (regular, &self.missing_sku),
            Kind::NoFunds => (&self.poor, &self.sku),
        };
        json!({"customer_id": customer, "currency": "EUR",
               "items": [{"sku": sku, "quantity": 1, "unit_price": UNIT_PRICE}]})
    }
}

/// What the run has seen so far, shared by the placing tasks and the bus follower. Each
/// critical section is one insert or push, so a panicking holder cannot leave a map
/// half-written: a poisoned lock is read as it stands.
#[derive(Clone, Default)]
struct Tracker {
    placed: Arc<Mutex<HashMap<String, Instant>>>,
    finished: Arc<Mutex<Vec<Finished>>>,
    errors: Arc<Mutex<BTreeMap<String, u64>>>,
    /// `POST /orders` answered 503 with `Retry-After` (each placed again later).
    shed: Arc<AtomicU64>,
    all_done: Arc<tokio::sync::Notify>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Tracker {
    fn placed(&self, order_id: String, at: Instant) {
        lock(&self.placed).insert(order_id, at);
    }

    fn failed(&self, error: String) {
        *lock(&self.errors).entry(error).or_default() += 1;
    }

    fn shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a saga's end; wakes the waiter once all `total` orders are placed and ended.
    fn finished(&self, order_id: &str, status: &'static str, at: Instant, total: usize) {
        let mut finished = lock(&self.finished);
        finished.push((order_id.to_owned(), status, at));
        if finished.len() >= total && lock(&self.placed).len() >= total {
            self.all_done.notify_one();
        }
    }

    /// Waits until every placed order has ended, or `limit` passes.
    async fn wait_for_finals(&self, limit: Duration) {
        let expected = lock(&self.placed).len();
        let waited = Instant::now();
        while lock(&self.finished).len() < expected && waited.elapsed() < limit {
            // Woken early when the last saga ends; otherwise re-checked every 200 ms.
            // A timeout is the normal case here, not a failure: the loop checks again.
            let _ =
                tokio::time::timeout(Duration::from_millis(200), self.all_done.notified()).await;
        }
    }

    /// The run's report: counts, throughput, latency percentiles, outcomes and errors.
    fn report(
        &self,
        args: &LoadArgs,
        started: Instant,
        placing: Duration,
    ) -> anyhow::Result<Value> {
        let placed = lock(&self.placed).clone();
        let finished = lock(&self.finished).clone();
        let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        let mut outcomes: BTreeMap<&str, u64> = BTreeMap::new();
        let mut last = started;
        let mut completed = 0u64;
        for (order, status, at) in &finished {
            let Some(t0) = placed.get(order) else {
                continue;
            };
            completed += 1;
            *outcomes.entry(status).or_default() += 1;
            // Saturates at the histogram's top (10 minutes) rather than fail.
            latency.saturating_record(at.duration_since(*t0).as_micros().max(1) as u64);
            last = last.max(*at);
        }
        let elapsed = last.duration_since(started).as_secs_f64().max(1e-9);
        let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
        let errors = lock(&self.errors).clone();
        Ok(json!({
            "orders": args.orders,
            "placed": placed.len(),
            "completed": completed,
            "lost": placed.len() as u64 - completed,
            "shed": self.shed.load(Ordering::Relaxed),
            "concurrency": args.concurrency,
            "rate_limit": args.rate,
            "placing_seconds": placing.as_secs_f64(),
            "elapsed_seconds": elapsed,
            "sagas_per_second": completed as f64 / elapsed,
            "latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": latency.max() as f64 / 1000.0,
                           "mean": latency.mean() / 1000.0},
            "outcomes": outcomes,
            "errors": errors,
        }))
    }
}

/// Follows the final events on the bus: the first one about each order ends its saga.
async fn follow_finals(mut finals: lapin::Consumer, tracker: Tracker, total: usize) {
    let mut seen: HashMap<String, &'static str> = HashMap::new();
    while let Some(Ok(d)) = finals.next().await {
        let now = Instant::now();
        // Not an envelope: not a saga's end either.
        let Ok(env) = serde_json::from_slice::<Value>(&d.data) else {
            continue;
        };
        let Some(order) = env["correlation_id"].as_str() else {
            continue;
        };
        let status = match env["type"].as_str() {
            Some("OrderConfirmed") => "confirmed",
            Some("StockRejected") => "rejected",
            Some("OrderCancelled") => "cancelled",
            _ => continue,
        };
        if seen.insert(order.to_owned(), status).is_none() {
            tracker.finished(order, status, now, total);
        }
    }
}

fn progress_bar(ctx: &Context, orders: u32) -> ProgressBar {
    let bar = if std::io::stderr().is_terminal() && !ctx.json {
        ProgressBar::new(orders.into())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} placed  {per_sec}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Places every order, at most `--concurrency` at once and at most `--rate` per second,
/// round robin over `urls`.
async fn place_all(
    http: &reqwest::Client,
    args: &LoadArgs,
    urls: &[Arc<OrderUrl>],
    plan: &Plan,
    tracker: &Tracker,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(args.concurrency.max(1) as usize));
    let mut interval = args
        .rate
        .map(|r| tokio::time::interval(Duration::from_secs_f64(1.0 / r.max(0.001))));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.orders as usize {
        if let Some(iv) = interval.as_mut() {
            iv.tick().await;
        }
        let permit = slots.clone().acquire_owned().await?;
        let body = plan.order(i, args.mix.pick(rand::rng().random()));
        let (http, url, tracker, bar) = (
            http.clone(),
            urls[i % urls.len()].clone(),
            tracker.clone(),
            bar.clone(),
        );
        tasks.spawn(async move {
            match place_one(&http, &url.url, &body, &tracker).await {
                Ok((order_id, t0)) => {
                    url.placed.fetch_add(1, Ordering::Relaxed);
                    tracker.placed(order_id, t0)
                }
                Err(e) => tracker.failed(e),
            }
            bar.inc(1);
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Places one order, placed again while it is shed; its id and when the accepted attempt
/// left (latency runs from there), or the error as the report groups it.
async fn place_one(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    tracker: &Tracker,
) -> Result<(String, Instant), String> {
    // One key for every attempt: an order placed again is the same order, never a second.
    let key = Uuid::now_v7().to_string();
    let started = Instant::now();
    loop {
        let t0 = Instant::now();
        let resp = http
            .post(url)
            .header("idempotency-key", &key)
            .json(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    "connection refused".to_owned()
                } else {
                    e.to_string()
                }
            })?;
        if let Some(wait) = shed_wait(resp.status(), resp.headers().get(RETRY_AFTER)) {
            tracker.shed();
            // Read to the end, so the connection is kept for the next attempt.
            let _ = resp.bytes().await;
            if started.elapsed() + wait > SHED_RETRY_LIMIT {
                return Err(format!(
                    "HTTP 503 overloaded for over {} s",
                    SHED_RETRY_LIMIT.as_secs()
                ));
            }
            tokio::time::sleep(wait).await;
            continue;
        }
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let answer: Value = resp.json().await.map_err(|e| format!("bad answer: {e}"))?;
        return answer["order_id"]
            .as_str()
            .map(|id| (id.to_owned(), t0))
            .ok_or_else(|| "no order_id in the answer".to_owned());
    }
}

/// How long to wait before placing a shed order again: a 503 with `Retry-After` is
/// order-svc shedding load. `None` for any other answer (a 503 without it is a failure).
fn shed_wait(status: StatusCode, retry_after: Option<&HeaderValue>) -> Option<Duration> {
    if status != StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    let wait = retry_after?
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(SHED_BACKOFF, Duration::from_secs);
    Some(wait.min(MAX_RETRY_AFTER))
}

async fn wait_seeded(ctx: &Context, sku: &str, poor: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (a, _) = ctx
            .call(
                Service::Inventory,
                Method::GET,
                &format!("/stock/{sku}"),
                None,
                &[],
            )
            .await?;
        let (b, _) = ctx
            .call(
                Service::Payment,
                Method::GET,
                &format!("/wallets/{poor}"),
                None,
                &[],
            )
            .await?;
        if a.is_success() && b.is_success() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(CliError::Refused("the seeded stock and wallets did not appear within 30 s; are inventory-svc and payment-svc consuming?".into()).into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(super) fn render(r: &Value) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let mut s = format!(
        "orders     {} placed, {} completed, {} lost, {} shed\nthroughput {:.1} sagas/s over {:.2} s (concurrency {})\nlatency    p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms\noutcomes  ",
        r["placed"],
        r["completed"],
        r["lost"],
        r["shed"],
        f(&r["sagas_per_second"]),
        f(&r["elapsed_seconds"]),
        r["concurrency"],
        f(&r["latency_ms"]["p50"]),
        f(&r["latency_ms"]["p90"]),
        f(&r["latency_ms"]["p99"]),
        f(&r["latency_ms"]["max"]),
    );
    for (k, v) in r["outcomes"].as_object().into_iter().flatten() {
        s.push_str(&format!(" {k} {v}"));
    }
    if let Some(errors) = r["errors"].as_object().filter(|e| !e.is_empty()) {
        s.push_str("\nerrors    ");
        for (k, v) in errors {
            s.push_str(&format!(" {k}: {v}"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_prints_throughput_latency_and_outcomes() {
        let text = render(&json!({
            "placed": 10, "completed": 10, "lost": 0, "shed": 3, "sagas_per_second": 123.4, "elapsed_seconds": 0.08,
            "concurrency": 4, "latency_ms": {"p50": 5.0, "p90": 8.0, "p99": 9.0, "max": 9.5},
            "outcomes": {"confirmed": 9, "rejected": 1}, "errors": {}
        }));
        assert!(text.contains("123.4 sagas/s"));
        assert!(text.contains("p99 9.0 ms"));
        assert!(text.contains("confirmed 9"));
        assert!(text.contains("0 lost, 3 shed"));
    }

    #[test]
    fn a_503_with_retry_after_is_shedding_and_says_how_long_to_wait() {
        let header = |v: &'static str| HeaderValue::from_static(v);
        let busy = StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(
            shed_wait(busy, Some(&header("2"))),
            Some(Duration::from_secs(2))
        );
        assert_eq!(shed_wait(busy, Some(&header("soon"))), Some(SHED_BACKOFF));
        assert_eq!(
            shed_wait(busy, Some(&header("3600"))),
            Some(MAX_RETRY_AFTER)
        );
        // Without Retry-After a 503 is the service failing, not shedding.
        assert_eq!(shed_wait(busy, None), None);
        assert_eq!(shed_wait(StatusCode::ACCEPTED, Some(&header("1"))), None);
    }
}
