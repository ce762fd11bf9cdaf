//! `sagactl load`: places orders over HTTP at a chosen concurrency (and optional rate),
//! follows each saga to its end by listening to the bus (OrderConfirmed, StockRejected,
//! OrderCancelled: never by polling), and reports completed sagas per second, end-to-end
//! latency percentiles (placed → final event) from an HDR histogram, outcomes and errors.
//!
//! Every run seeds its own SKUs and customers (suffixed with a run id): `happy` orders
//! find stock and money, `no-stock` orders name a SKU with none, `no-funds` orders come
//! from a customer with 1 minor unit.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use uuid::Uuid;

use events::EventType;
use events::catalog::{Event, FundsDeposited, StockAdjusted};

use crate::cli::LoadArgs;
use crate::context::{CliError, Context, Service};
use crate::output;

use super::publish_event;

/// How the orders of a run are split between the three outcomes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mix {
    pub happy: u32,
    pub no_stock: u32,
    pub no_funds: u32,
}

impl Mix {
    /// `happy=80,no-stock=10,no-funds=10` (weights; missing kinds weigh 0).
    pub fn parse(s: &str) -> Result<Mix, String> {
        let mut mix = Mix {
            happy: 0,
            no_stock: 0,
            no_funds: 0,
        };
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not KIND=WEIGHT (e.g. happy=80)"))?;
            let v: u32 = v
                .trim()
                .parse()
                .map_err(|_| format!("weight {v:?} is not a whole number"))?;
            match k.trim() {
                "happy" => mix.happy = v,
                "no-stock" => mix.no_stock = v,
                "no-funds" => mix.no_funds = v,
                other => {
                    return Err(format!(
                        "unknown kind {other:?}: use happy, no-stock or no-funds"
                    ));
                }
            }
        }
        if mix.happy + mix.no_stock + mix.no_funds == 0 {
            return Err("the mix needs at least one positive weight".into());
        }
        Ok(mix)
    }

    fn pick(&self, roll: u32) -> Kind {
        let total = self.happy + self.no_stock + self.no_funds;
        let r = roll % total;
        if r < self.happy {
            Kind::Happy
        } else if r < self.happy + self.no_stock {
            Kind::NoStock
        } else {
            Kind::NoFunds
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Happy,
    NoStock,
    NoFunds,
}

/// An order id, the status its saga ended in, and when the final event was seen.
type Finished = (String, &'static str, Instant);

/// Customers among whom happy orders are spread (a wallet is a row lock).
const CUSTOMERS: usize = 64;
const UNIT_PRICE: i64 = 100;

pub async fn run(ctx: &Context, args: LoadArgs) -> anyhow::Result<()> {
    let report = run_load(ctx, &args).await?;
    output::show(ctx, &report, render);
    if report["lost"].as_u64().unwrap_or(0) > 0 {
        return Err(
            CliError::Refused(format!("{} sagas did not finish in time", report["lost"])).into(),
        );
    }
    Ok(())
}

/// Runs the load and returns its report (also used by `sagactl bench`).
pub async fn run_load(ctx: &Context, args: &LoadArgs) -> anyhow::Result<Value> {
    let mix = args.mix;
    let run_id = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let sku = format!("LOAD-{run_id}");
    let missing_sku = format!("LOAD-{run_id}-NONE");
    let customers: Vec<String> = (0..CUSTOMERS)
        .map(|i| format!("load-{run_id}-{i}"))
        .collect();
    let poor = format!("load-{run_id}-poor");

    // Seed through the bus, then wait until the services show it.
    publish_event(
        ctx,
        Event::StockAdjusted(StockAdjusted {
            sku: sku.clone(),
            delta: i64::from(args.orders) + 1,
        }),
    )
    .await?;
    let per_customer = (i64::from(args.orders) + 1) * UNIT_PRICE;
    for c in customers.iter().chain(std::iter::once(&poor)) {
        let amount = if *c == poor { 1 } else { per_customer };
        publish_event(
            ctx,
            Event::FundsDeposited(FundsDeposited {
                customer_id: c.clone(),
                amount,
                currency: "EUR".into(),
            }),
        )
        .await?;
    }
    wait_seeded(ctx, &sku, &poor).await?;

    // Follow the final events of every saga on the bus.
    // A watcher bound only to the events that end a saga.
    let finals_keys = [
        EventType::OrderConfirmed,
        EventType::StockRejected,
        EventType::OrderCancelled,
    ]
    .map(|t| t.routing_key());
    let (conn, mut finals) = super::bus::watch(ctx, "load", &finals_keys).await?;
    let placed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let finished: Arc<Mutex<Vec<Finished>>> = Arc::default();
    let total = args.orders as usize;
    let all_done = Arc::new(tokio::sync::Notify::new());
    let follower = {
        let placed = placed.clone();
        let finished = finished.clone();
        let all_done = all_done.clone();
        tokio::spawn(async move {
            let mut seen: HashMap<String, &'static str> = HashMap::new();
            while let Some(Ok(d)) = finals.next().await {
                let now = Instant::now();
                let env: Value = serde_json::from_slice(&d.data).unwrap_or(Value::Null);
                let Some(order) = env["correlation_id"].as_str() else {
                    continue;
                };
                let status = match env["type"].as_str() {
                    Some("OrderConfirmed") => "confirmed",
                    Some("StockRejected") => "rejected",
                    Some("OrderCancelled") => "cancelled",
                    _ => continue,
                };
                if seen.insert(order.to_owned(), status).is_some() {
                    continue;
                }
                if let Ok(mut f) = finished.lock() {
                    f.push((order.to_owned(), status, now));
                    if f.len() >= total && placed.lock().map(|p| p.len() >= total).unwrap_or(false)
                    {
                        all_done.notify_one();
                    }
                }
            }
        })
    };

    let bar = if std::io::stderr().is_terminal() && !ctx.json {
        ProgressBar::new(args.orders.into())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} placed  {per_sec}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    let started = Instant::now();
    let slots = Arc::new(Semaphore::new(args.concurrency.max(1) as usize));
    let errors: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut interval = args
        .rate
        .map(|r| tokio::time::interval(Duration::from_secs_f64(1.0 / r.max(0.001))));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.orders {
        if let Some(iv) = interval.as_mut() {
            iv.tick().await;
        }
        let permit = slots.clone().acquire_owned().await?;
        let kind = mix.pick(rand::rng().random());
        let (customer, item_sku) = match kind {
            Kind::Happy => (customers[i as usize % CUSTOMERS].clone(), sku.clone()),
            Kind::NoStock => (
                customers[i as usize % CUSTOMERS].clone(),
                missing_sku.clone(),
            ),
            Kind::NoFunds => (poor.clone(), sku.clone()),
        };
        let http = ctx.http.clone();
        let url = format!("{}/orders", ctx.conn.order_url.trim_end_matches('/'));
        let placed = placed.clone();
        let errors = errors.clone();
        let bar = bar.clone();
        tasks.spawn(async move {
            let body = json!({"customer_id": customer, "currency": "EUR",
                              "items": [{"sku": item_sku, "quantity": 1, "unit_price": UNIT_PRICE}]});
            let t0 = Instant::now();
            let result = http.post(&url).json(&body).send().await;
            let error = match result {
                Ok(resp) if resp.status().is_success() => match resp.json::<Value>().await {
                    Ok(v) => match v["order_id"].as_str() {
                        Some(id) => {
                            if let Ok(mut p) = placed.lock() {
                                p.insert(id.to_owned(), t0);
                            }
                            None
                        }
                        None => Some("no order_id in the answer".to_owned()),
                    },
                    Err(e) => Some(format!("bad answer: {e}")),
                },
                Ok(resp) => Some(format!("HTTP {}", resp.status())),
                Err(e) => Some(if e.is_connect() { "connection refused".to_owned() } else { e.to_string() }),
            };
            if let Some(e) = error
                && let Ok(mut m) = errors.lock()
            {
                *m.entry(e).or_default() += 1;
            }
            bar.inc(1);
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    let placing = started.elapsed();
    bar.set_message("waiting for the last sagas");
    let expected = placed.lock().map(|p| p.len()).unwrap_or(0);
    let wait_limit = Duration::from_secs(args.wait_secs);
    let waited = Instant::now();
    while finished.lock().map(|f| f.len()).unwrap_or(0) < expected && waited.elapsed() < wait_limit
    {
        let _ = tokio::time::timeout(Duration::from_millis(200), all_done.notified()).await;
    }
    bar.finish_and_clear();
    follower.abort();
    let _ = conn.close(200, "done".into()).await;

    let placed = placed.lock().map(|p| p.clone()).unwrap_or_default();
    let finished = finished.lock().map(|f| f.clone()).unwrap_or_default();
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
        latency
            .record(at.duration_since(*t0).as_micros().max(1) as u64)
            .ok();
        last = last.max(*at);
    }
    let elapsed = last.duration_since(started).as_secs_f64().max(1e-9);
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    let errors = errors.lock().map(|e| e.clone()).unwrap_or_default();
    Ok(json!({
        "orders": args.orders,
        "placed": placed.len(),
        "completed": completed,
        "lost": placed.len() as u64 - completed,
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

pub fn render(r: &Value) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let mut s = format!(
        "orders     {} placed, {} completed, {} lost\nthroughput {:.1} sagas/s over {:.2} s (concurrency {})\nlatency    p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms\noutcomes  ",
        r["placed"],
        r["completed"],
        r["lost"],
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
    fn a_mix_parses_and_splits_by_weight() {
        let m = Mix::parse("happy=2,no-stock=1,no-funds=1").unwrap();
        assert!(matches!(m.pick(0), Kind::Happy));
        assert!(matches!(m.pick(1), Kind::Happy));
        assert!(matches!(m.pick(2), Kind::NoStock));
        assert!(matches!(m.pick(3), Kind::NoFunds));
        assert!(Mix::parse("happy=0").is_err());
        assert!(Mix::parse("sad=1").unwrap_err().contains("unknown kind"));
        assert!(Mix::parse("happy").unwrap_err().contains("KIND=WEIGHT"));
    }

    #[test]
    fn the_report_prints_throughput_latency_and_outcomes() {
        let text = render(&json!({
            "placed": 10, "completed": 10, "lost": 0, "sagas_per_second": 123.4, "elapsed_seconds": 0.08,
            "concurrency": 4, "latency_ms": {"p50": 5.0, "p90": 8.0, "p99": 9.0, "max": 9.5},
            "outcomes": {"confirmed": 9, "rejected": 1}, "errors": {}
        }));
        assert!(text.contains("123.4 sagas/s"));
        assert!(text.contains("p99 9.0 ms"));
        assert!(text.contains("confirmed 9"));
    }
}
