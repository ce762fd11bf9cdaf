//! The benchmark's report: the machine's ceilings and latency floor, the saga throughput
//! the stack reached and their ratio, and the diagnostics beside them; as JSON and as text.

use serde_json::{Value, json};

use super::counters::Counters;
use crate::cli::BenchArgs;

/// Deliveries one happy saga needs: OrderCreated, StockReserved (to order-svc and
/// payment-svc), PaymentDone, OrderConfirmed.
const SAGA_DELIVERIES: f64 = 5.0;
/// Transactions one happy saga needs: the HTTP command and one per delivery.
const SAGA_TRANSACTIONS: f64 = 6.0;
/// One after the other from the placing of an order to its final event: the HTTP
/// command's transaction, OrderCreated, inventory-svc's transaction, StockReserved,
/// payment-svc's transaction, PaymentDone, order-svc's transaction, OrderConfirmed.
const PATH_TRANSACTIONS: f64 = 4.0;
const PATH_DELIVERIES: f64 = 4.0;

/// The machine's own limits, measured with no project code in the way.
pub(super) struct Ceilings {
    pub broker: f64,
    pub database: f64,
}

impl Ceilings {
    pub(super) fn sagas_per_second(&self) -> f64 {
        1.0 / (SAGA_DELIVERIES / self.broker + SAGA_TRANSACTIONS / self.database)
    }
}

/// The shortest time the machine allows from placed to final event: the saga's path
/// timed one step at a time with nothing else running, no project code in the way.
pub(super) struct Floor {
    pub delivery_ms: f64,
    pub transaction_ms: f64,
}

impl Floor {
    pub(super) fn saga_ms(&self) -> f64 {
        PATH_DELIVERIES * self.delivery_ms + PATH_TRANSACTIONS * self.transaction_ms
    }
}

/// What the project itself spends, beside the ceiling.
pub(super) struct ProjectCosts {
    pub db_rate: f64,
    pub relay_rate: f64,
}

pub(super) fn report(
    args: &BenchArgs,
    ceilings: &Ceilings,
    floor: &Floor,
    costs: &ProjectCosts,
    existing: i64,
    load: Value,
    // The counters before and after the load, and the commits per second with no load.
    (before, after, background): (&Counters, &Counters, f64),
) -> Value {
    let completed = load["completed"].as_f64().filter(|n| *n > 0.0);
    let per_saga = |delta: f64| completed.map(|n| delta / n);
    let ceiling = ceilings.sagas_per_second();
    let throughput = load["sagas_per_second"].as_f64();
    // What the services commit whatever the load (each replica's polls and samplers),
    // over the window the load was counted in, is not the sagas' cost.
    let window = after.at.duration_since(before.at).as_secs_f64();
    let commits = (after.commits - before.commits) as f64;
    let saga_commits = (commits - background * window).max(0.0);
    json!({
        "machine": machine(),
        "broker_msgs_per_second": ceilings.broker,
        "db_transactions_per_second": ceilings.database,
        "db_pool": args.pool,
        "saga_deliveries": SAGA_DELIVERIES,
        "saga_transactions": SAGA_TRANSACTIONS,
        "saga_ceiling_per_second": ceiling,
        "sagas_per_second": throughput,
        "ratio_to_ceiling": throughput.map(|t| t / ceiling),
        "latency_floor_ms": floor.saga_ms(),
        "delivery_floor_ms": floor.delivery_ms,
        "transaction_floor_ms": floor.transaction_ms,
        "orders_stored_before": existing,
        "offered_rate": args.rate,
        "diagnostics": {
            "deliveries_per_saga": per_saga((after.deliveries - before.deliveries) as f64),
            "transactions_per_saga": per_saga(saga_commits),
            "transactions_per_saga_with_background": per_saga(commits),
            "background_transactions_per_second": background,
            "cpu_seconds_per_saga": per_saga(after.cpu_seconds - before.cpu_seconds),
            "project_db_transactions_per_second": costs.db_rate,
            "relay_rows_per_second": costs.relay_rate,
            "relay_ratio_to_broker": costs.relay_rate / ceilings.broker,
        },
        "load": load,
    })
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).ok();
    json!({"cpus": cpus, "date": chrono::Utc::now().to_rfc3339()})
}

pub(super) fn render(r: &Value) -> String {
    let f = |k: &str| r.pointer(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let offered = r["offered_rate"]
        .as_f64()
        .map(|rate| format!(" (offered at {rate} orders/s)"))
        .unwrap_or_default();
    format!(
        "    orders stored         {:>10}          (before the load)\n\
         (a) broker ceiling        {:>10.0} msg/s   (confirmed publish + acked consume, 400 B, quorum)\n\
         \x20   database ceiling      {:>10.0} tx/s    (inbox + update + outbox in plain SQL, pool {})\n\
         (c) saga ceiling          {:>10.1} sagas/s (1 / (5 / broker + 6 / database))\n\
         (d) saga throughput       {:>10.1} sagas/s{}\n\
         \x20   ratio (d)/(c)         {:>10.2}\n\
         \x20   latency               p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms\n\
         \x20   latency floor         {:>10.1} ms      (4 x delivery {:.2} ms + 4 x transaction {:.2} ms, one at a time)\n\
         diagnostics (not in the ceiling):\n\
         \x20   per saga              {:>10.2} deliveries, {:.2} committed transactions, {:.2} ms CPU\n\
         \x20   background            {:>10.1} tx/s    (committed with no load, not in the transactions per saga)\n\
         \x20   project inbox+outbox  {:>10.0} tx/s\n\
         \x20   relay backlog         {:>10.0} rows/s  ({:.2} x broker)",
        r["orders_stored_before"],
        f("/broker_msgs_per_second"),
        f("/db_transactions_per_second"),
        r["db_pool"],
        f("/saga_ceiling_per_second"),
        f("/sagas_per_second"),
        offered,
        f("/ratio_to_ceiling"),
        f("/load/latency_ms/p50"),
        f("/load/latency_ms/p90"),
        f("/load/latency_ms/p99"),
        f("/load/latency_ms/max"),
        f("/latency_floor_ms"),
        f("/delivery_floor_ms"),
        f("/transaction_floor_ms"),
        f("/diagnostics/deliveries_per_saga"),
        f("/diagnostics/transactions_per_saga"),
        f("/diagnostics/cpu_seconds_per_saga") * 1000.0,
        f("/diagnostics/background_transactions_per_second"),
        f("/diagnostics/project_db_transactions_per_second"),
        f("/diagnostics/relay_rows_per_second"),
        f("/diagnostics/relay_ratio_to_broker"),
    )
}
