//! saga-bench: the load generator and the benchmarks run end to end on a tiny load and
//! report every figure. (No test asserts a speed: the figures only have to be there and
//! make sense.) A bad argument is refused before anything runs.

use std::process::Command;
use std::time::Duration;

use saga_tests::failure_support::output_within_blocking;
use saga_tests::sandbox::{management_api, postgres_server_url};
use saga_tests::stack::binary_path;
use saga_tests::{Service, Stack, StackOptions, eventually};
use serde_json::Value;

fn saga_bench(stack: &Stack) -> Command {
    let mut cmd = Command::new(binary_path("saga-bench"));
    cmd.env("SAGA_AMQP_URL", stack.sandbox().amqp_url())
        .env("SAGA_ORDER_URL", stack.base_url(Service::Order))
        .env("SAGA_INVENTORY_URL", stack.base_url(Service::Inventory))
        .env("SAGA_PAYMENT_URL", stack.base_url(Service::Payment))
        .env("SAGA_MANAGEMENT_URL", management_api())
        .env("SAGA_BENCH_DATABASE_SERVER", postgres_server_url());
    cmd
}

/// What a benchmark command printed as JSON, once it has ended well; killed, and the test
/// failed, if it runs over [`BENCH_DEADLINE`].
fn json_of(cmd: &mut Command) -> Value {
    let (out, report) = run_for_json(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nreport: {report:#}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    report
}

/// How a benchmark command ended, and the JSON it printed, ended well or not.
fn run_for_json(cmd: &mut Command) -> (std::process::Output, Value) {
    let out = output_within_blocking(cmd, BENCH_DEADLINE).unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "{cmd:?} printed no JSON ({e}, {}): {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, report)
}

/// Far over what any of these commands takes in a debug build on a busy machine.
const BENCH_DEADLINE: Duration = Duration::from_secs(300);

fn positive(report: &Value, pointer: &str) -> f64 {
    let v = report
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} missing from {report:#}"));
    assert!(v > 0.0 && v.is_finite(), "{pointer} = {v} in {report:#}");
    v
}

#[tokio::test]
async fn load_follows_every_saga_to_its_end_and_reports_outcomes_and_latency() {
    let stack = Stack::start(StackOptions::default()).await;
    // The one order-svc named a second time, as a further instance would be: the orders
    // are placed round robin, half through each name.
    let also = format!("{}/", stack.base_url(Service::Order));
    let report = json_of(saga_bench(&stack).args([
        "--json",
        "load",
        "--orders",
        "60",
        "--concurrency",
        "8",
        "--mix",
        "happy=2,no-stock=1,no-funds=1",
        "--also-order-url",
        &also,
    ]));
    assert_eq!(report["placed"], 60, "{report:#}");
    let by_url: Vec<u64> = report["placed_by_url"]
        .as_array()
        .map(|urls| urls.iter().filter_map(|u| u["placed"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(by_url, [30, 30], "{report:#}");
    assert_eq!(report["completed"], 60, "{report:#}");
    assert_eq!(report["lost"], 0);
    let outcomes = &report["outcomes"];
    for status in ["confirmed", "rejected", "cancelled"] {
        assert!(
            outcomes[status].as_u64().unwrap_or(0) > 0,
            "no {status} saga: {outcomes}"
        );
    }
    positive(&report, "/sagas_per_second");
    let p50 = positive(&report, "/latency_ms/p50");
    let p99 = positive(&report, "/latency_ms/p99");
    assert!(p50 <= p99, "{report:#}");
    stack.assert_invariants().await;
}

#[tokio::test]
async fn the_benchmark_runs_end_to_end_on_a_tiny_load_and_prints_every_figure() {
    let stack = Stack::start(StackOptions::default()).await;
    let databases = ["orders", "inventory", "payments"]
        .map(|prefix| stack.sandbox().database_name(prefix).to_owned())
        .join(",");
    let report = json_of(saga_bench(&stack).args([
        "--json",
        "bench",
        "--orders",
        "30",
        "--concurrency",
        "4",
        // The counted load offered at a set rate, as when two setups are compared.
        "--rate",
        "200",
        "--broker-messages",
        "500",
        "--db-seconds",
        "1",
        "--relay-rows",
        "500",
        "--preload",
        "100",
        "--databases",
        &databases,
    ]));
    for figure in [
        "/broker_msgs_per_second",
        "/db_transactions_per_second",
        "/saga_ceiling_per_second",
        "/sagas_per_second",
        "/ratio_to_ceiling",
        "/latency_floor_ms",
        "/delivery_floor_ms",
        "/transaction_floor_ms",
        "/load/latency_ms/p99",
        "/diagnostics/deliveries_per_saga",
        "/diagnostics/transactions_per_saga_with_background",
        "/diagnostics/cpu_seconds_per_saga",
        "/diagnostics/project_db_transactions_per_second",
        "/diagnostics/relay_rows_per_second",
        "/diagnostics/relay_ratio_to_broker",
    ] {
        positive(&report, figure);
    }
    assert_eq!(report["offered_rate"].as_f64(), Some(200.0), "{report:#}");
    // The background is counted apart, never inside a saga's transactions.
    let background = report
        .pointer("/diagnostics/background_transactions_per_second")
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no background rate: {report:#}"));
    assert!(background >= 0.0, "{report:#}");
    let per_saga = report
        .pointer("/diagnostics/transactions_per_saga")
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no transactions per saga: {report:#}"));
    assert!(
        per_saga >= 0.0
            && per_saga
                <= positive(
                    &report,
                    "/diagnostics/transactions_per_saga_with_background"
                ),
        "{report:#}"
    );
    assert!(
        report["orders_stored_before"].as_i64().unwrap_or(0) >= 100,
        "{report:#}"
    );
    // A happy saga takes at least five deliveries: OrderCreated, StockReserved (twice),
    // PaymentDone, OrderConfirmed.
    assert!(
        positive(&report, "/diagnostics/deliveries_per_saga") >= 4.5,
        "{report:#}"
    );
    // The ceiling is the machine's alone: 1 / (5 / broker + 6 / database), whatever the
    // project spends.
    let broker = positive(&report, "/broker_msgs_per_second");
    let database = positive(&report, "/db_transactions_per_second");
    let ceiling = positive(&report, "/saga_ceiling_per_second");
    let expected = 1.0 / (5.0 / broker + 6.0 / database);
    assert!(
        (ceiling - expected).abs() <= expected * 1e-9,
        "ceiling {ceiling} is not 1 / (5 / {broker} + 6 / {database})"
    );
    // The floor is the saga's path timed one step at a time: four deliveries, four
    // transactions.
    let floor = positive(&report, "/latency_floor_ms");
    let expected = 4.0 * positive(&report, "/delivery_floor_ms")
        + 4.0 * positive(&report, "/transaction_floor_ms");
    assert!(
        (floor - expected).abs() <= expected * 1e-9,
        "floor {floor} is not 4 x delivery + 4 x transaction"
    );
    assert_eq!(report["load"]["completed"], 30);
    // The preloaded sagas are consistent: every invariant still holds.
    stack.assert_invariants().await;
}

/// The tables every saga writes, by the service that owns them.
const SAGA_TABLES: [(Service, &[&str]); 3] = [
    (
        Service::Order,
        &["orders", "order_history", "outbox", "inbox"],
    ),
    (
        Service::Inventory,
        &["stock", "reservations", "outbox", "inbox"],
    ),
    (
        Service::Payment,
        &["wallets", "payments", "outbox", "inbox"],
    ),
];

#[tokio::test]
async fn the_saga_finds_its_rows_by_index_while_its_fresh_tables_grow() {
    // A statement prepared while its table was nearly empty may keep a plan that reads the
    // whole table, at every call, however large the table grows (docs/architecture.md,
    // "Statements and their plans"). Such a plan reads the table once per batch, the
    // whole load long: quadratic in the rows stored (43 212 order rows read for 1 500
    // orders, when order-svc stored its batches with an UPDATE joined to their keys). The
    // saga's statements read no table whole; what may read one whole while it is small (a
    // count planned at each call) stays within two readings of the final table.
    const ORDERS: u64 = 1500;
    let stack = Stack::start(StackOptions::default()).await;
    let report = json_of(saga_bench(&stack).args([
        "--json",
        "load",
        "--orders",
        &ORDERS.to_string(),
        "--concurrency",
        "16",
    ]));
    assert_eq!(report["completed"], ORDERS, "{report:#}");
    // A backend reports what it read when it ends: stop the services, so that every one of
    // their connections ends, and wait until their databases have no other session.
    let pools = futures_util::future::join_all(Service::ALL.map(|s| stack.db(s))).await;
    for service in Service::ALL {
        stack.kill(service);
    }
    for (service, pool) in Service::ALL.iter().zip(&pools) {
        eventually(Duration::from_secs(30), || async move {
            let others: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND backend_type = 'client backend'",
            )
            .fetch_one(pool)
            .await
            .map_err(|e| e.to_string())?;
            if others <= 1 {
                Ok(())
            } else {
                Err(format!(
                    "{service}'s database still has {others} other sessions"
                ))
            }
        })
        .await;
    }
    for ((service, tables), pool) in SAGA_TABLES.iter().zip(&pools) {
        for table in *tables {
            // Read before anything of this test reads the table.
            let (read, written): (i64, i64) = sqlx::query_as(
                "SELECT COALESCE(seq_tup_read, 0), n_tup_ins FROM pg_stat_user_tables
                 WHERE relname = $1",
            )
            .bind(table)
            .fetch_one(pool)
            .await
            .unwrap_or_else(|e| panic!("no statistics of {service}'s {table}: {e}"));
            assert!(written > 0, "{service}'s {table} was never written");
            // A table of a few rows may be read whole now and then, harmlessly.
            assert!(
                read <= 2 * written.max(500),
                "{service}'s {table}: {read} rows read by scans of the whole table, \
                 for {written} rows inserted: a statement on the saga's path scans it"
            );
        }
    }
}

#[tokio::test]
async fn the_machines_own_saga_path_runs_at_a_rate_and_leaves_nothing_behind() {
    let sandbox = saga_tests::sandbox::Sandbox::create(&[]).await;
    let report = json_of(
        Command::new(binary_path("saga-bench"))
            .env("SAGA_AMQP_URL", sandbox.amqp_url())
            .env("SAGA_BENCH_DATABASE_SERVER", postgres_server_url())
            .args(["--json", "bench-path", "--rate", "100", "--sagas", "150"]),
    );
    // Every saga went the whole way: six transactions and five deliveries, the last seen
    // by the observer.
    assert_eq!(report["completed"], 150, "{report:#}");
    assert_eq!(report["lost"], 0, "{report:#}");
    assert_eq!(report["offered_rate"].as_f64(), Some(100.0), "{report:#}");
    let p50 = positive(&report, "/latency_ms/p50");
    assert!(positive(&report, "/latency_ms/p99") >= p50, "{report:#}");
    positive(&report, "/sagas_per_second");
    positive(&report, "/cpu_seconds_per_saga");
    // Given no time after the last placement, the sagas still on their way are counted lost,
    // those seen by then completed, and the command says so and fails. Three seconds of
    // placements at a rate a busy machine keeps up with, so that the first sagas are
    // through by the end (at 100/s for 1.5 s, none was on a loaded test machine).
    let (out, report) = run_for_json(
        Command::new(binary_path("saga-bench"))
            .env("SAGA_AMQP_URL", sandbox.amqp_url())
            .env("SAGA_BENCH_DATABASE_SERVER", postgres_server_url())
            .args(["--json", "bench-path", "--rate", "25", "--sagas", "75"])
            .args(["--wait-secs", "0"]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{report:#}");
    assert!(
        stderr.contains("did not reach the observer in time"),
        "{stderr}"
    );
    let (completed, lost) = (report["completed"].as_u64(), report["lost"].as_u64());
    assert!(
        matches!((completed, lost), (Some(c), Some(l)) if c > 0 && l > 0 && c + l == 75),
        "{report:#}"
    );
    // Its queues and exchange are gone with it.
    let api = saga_tests::sandbox::management_client();
    let (api, vhost) = (&api, sandbox.vhost());
    eventually(Duration::from_secs(30), || async move {
        let queues = api.list_queues_in(vhost).await.map_err(|e| e.to_string())?;
        let exchanges = api
            .list_exchanges_in(vhost)
            .await
            .map_err(|e| e.to_string())?;
        let left: Vec<&str> = queues
            .iter()
            .map(|q| q.name.as_str())
            .chain(exchanges.iter().map(|e| e.name.as_str()))
            .filter(|name| name.starts_with("saga-bench.path."))
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("left behind: {left:?}"))
        }
    })
    .await;
}

/// A bad argument exits 2 and says what is wrong, on standard error, with nothing on
/// standard output (no stack needed: nothing is reached).
#[test]
fn a_bad_argument_exits_2_saying_what_to_do() {
    let cases: [(&[&str], &[&str]); 3] = [
        (
            &["load", "--mix", "sad=1"],
            &["unknown kind \"sad\": use happy, no-stock or no-funds"],
        ),
        (
            &["load", "--rate", "0"],
            &["0 is not a rate", "at least 0.01, e.g. --rate 200"],
        ),
        (&["bench-path"], &["--rate <RATE>", "--help"]),
    ];
    for (args, says) in cases {
        let out = output_within_blocking(
            Command::new(binary_path("saga-bench"))
                .args(args)
                .env("NO_COLOR", "1"),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: {:?}", out.stdout);
        for said in says {
            assert!(err.contains(said), "{args:?} should say {said:?}: {err}");
        }
    }
}
