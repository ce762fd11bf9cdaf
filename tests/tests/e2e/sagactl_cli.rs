//! The real `sagactl` binary against a running stack: publishing every event type (and
//! refusing a payload that does not match the catalog), `tail` seeing a saga, `trace` of a
//! confirmed and of a compensated order with their causation chains, `queues`, `verify`,
//! the shipped scenarios, and the README's five-minute tour, command for command.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use events::{Event, EventType};
use saga_tests::failure_support::output_within_blocking;
use saga_tests::sandbox::management_api;
use saga_tests::stack::binary_path;
use saga_tests::{Service, Stack, StackOptions, eventually, order_request};
use serde_json::{Value, json};
use uuid::Uuid;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `sagactl` configured, through its environment variables, for `stack`.
fn sagactl(stack: &Stack) -> Command {
    let mut cmd = Command::new(binary_path("sagactl"));
    configure(&mut cmd, stack);
    cmd
}

fn configure(cmd: &mut Command, stack: &Stack) {
    cmd.env("SAGA_AMQP_URL", stack.sandbox().amqp_url())
        .env("SAGA_ORDER_URL", stack.base_url(Service::Order))
        .env("SAGA_INVENTORY_URL", stack.base_url(Service::Inventory))
        .env("SAGA_PAYMENT_URL", stack.base_url(Service::Payment))
        .env("SAGA_MANAGEMENT_URL", management_api())
        .env_remove("SAGA_MANAGEMENT_USER")
        .env_remove("SAGA_MANAGEMENT_PASSWORD");
}

/// `cmd` run to its end, stdin closed; the test fails if it runs over five minutes, far
/// over what any of these takes.
fn run(cmd: &mut Command) -> Output {
    output_within_blocking(cmd, Duration::from_secs(300)).unwrap_or_else(|e| panic!("{e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok_stdout(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn json_stdout(cmd: &mut Command) -> Value {
    let out = ok_stdout(cmd);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[tokio::test]
async fn publish_sends_every_event_type_with_confirms_and_prints_its_message_id() {
    let stack = Stack::start(StackOptions::default()).await;
    let watch = stack.watch_events().await;
    // The catalog's example of each type: valid, and the same one the docs show.
    for t in EventType::ALL {
        let event_type = t.name();
        let out = ok_stdout(sagactl(&stack).args([
            "publish",
            event_type,
            "--data",
            &t.example().payload().to_string(),
        ]));
        let id = out.trim();
        assert!(
            Uuid::parse_str(id).is_ok(),
            "{event_type}: printed {out:?}, not a message id"
        );
        // The printed id is the message that went out: the broker routed it on
        // saga.events with that type and payload before sagactl returned.
        let seen = watch.wait_for_id(id).await;
        assert_eq!(seen.event_type, event_type, "{seen:?}");
        assert_eq!(seen.producer, "sagactl", "{seen:?}");
        assert_eq!(seen.version, t.version(), "{seen:?}");
    }
    // An older version still read: the payload is read in that version's shape and goes
    // out as that version.
    for t in EventType::ALL
        .into_iter()
        .filter(|t| t.versions().len() > 1)
    {
        let oldest = t.versions()[0];
        let payload = t.example().payload_at(oldest).expect("a declared version");
        let out = json_stdout(sagactl(&stack).args([
            "--json",
            "publish",
            t.name(),
            "--schema-version",
            &oldest.to_string(),
            "--data",
            &payload.to_string(),
        ]));
        assert_eq!(out["version"], oldest, "{out}");
        let id = out["message_id"].as_str().expect("a message id");
        let seen = watch.wait_for_id(id).await;
        assert_eq!(
            (seen.version, &seen.payload),
            (oldest, &payload),
            "{seen:?}"
        );
    }
    // The StockAdjusted above reached inventory-svc through the broker: only an
    // adjustment makes a SKU known.
    let Event::StockAdjusted(adjusted) = EventType::StockAdjusted.example() else {
        unreachable!("the example of a type is of that type")
    };
    eventually(Duration::from_secs(20), || async {
        let (status, body) = stack.stock(&adjusted.sku).await;
        status.is_success().then_some(()).ok_or(body)
    })
    .await;
}

#[tokio::test]
async fn publish_refuses_a_payload_that_does_not_match_the_catalog_and_sends_nothing() {
    let stack = Stack::start(StackOptions::default()).await;
    let out =
        run(sagactl(&stack).args(["publish", "StockAdjusted", "--data", r#"{"sku":"NOPE"}"#]));
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit status for a refused payload"
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("delta") && err.contains("nothing was sent"),
        "{err}"
    );
    let out = run(sagactl(&stack).args([
        "publish",
        "StockAdjusted",
        "--schema-version",
        "9",
        "--data",
        r#"{"sku":"NOPE","delta":1}"#,
    ]));
    assert_eq!(
        out.status.code(),
        Some(1),
        "a version sagactl does not know"
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("no version 9") && err.contains("nothing was sent"),
        "{err}"
    );
    let out = run(sagactl(&stack).args(["publish", "NoSuchEvent", "--data", "{}"]));
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown type is a usage error"
    );
    // A later valid publish is seen; the refused one never was.
    ok_stdout(sagactl(&stack).args(["stock", "adjust", "NOPE", "2"]));
    eventually(Duration::from_secs(20), || async {
        let (status, body) = stack.stock("NOPE").await;
        (status.is_success() && body["available"] == 2)
            .then_some(())
            .ok_or(body)
    })
    .await;
}

#[tokio::test]
async fn a_broker_that_cannot_be_reached_is_reported_with_what_to_do() {
    let stack = Stack::start(StackOptions::default()).await;
    let out = run(sagactl(&stack)
        .env("SAGA_AMQP_URL", "amqp://guest:guest@127.0.0.1:9/saga")
        .args(["stock", "adjust", "X", "1"]));
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    assert!(
        err.contains("not reachable") && err.contains("127.0.0.1:9"),
        "{err}"
    );
}

#[tokio::test]
async fn tail_follows_a_sagas_events_as_they_happen() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("TAIL", 5).await;
    stack.deposit("tailor", 1000, "EUR").await;
    let mut child = sagactl(&stack)
        .args(["tail", "--json", "--for", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sagactl tail starts");
    // It says so on stderr once its queue is bound.
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("tail's first line");
    assert!(line.contains("following saga.events"), "{line}");
    let order_id = stack
        .place_order_ok(&order_request("tailor", "EUR", &[("TAIL", 1, 100)]))
        .await;
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut seen = Vec::new();
    for line in stdout.lines() {
        let line = line.expect("a line");
        let envelope: Value = serde_json::from_str(&line).expect("one JSON envelope per line");
        if envelope["correlation_id"] == order_id.as_str() {
            seen.push(envelope["type"].as_str().unwrap_or("?").to_owned());
        }
        if seen.iter().any(|t| t == "OrderConfirmed") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    for t in [
        "OrderCreated",
        "StockReserved",
        "PaymentDone",
        "OrderConfirmed",
    ] {
        assert!(
            seen.iter().any(|s| s == t),
            "tail did not show {t}: {seen:?}"
        );
    }
}

/// The chain of types from the root of a trace's causation tree, following first children.
fn chain(tree: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut node = &tree[0];
    while !node.is_null() {
        out.push(node["type"].as_str().unwrap_or("?").to_owned());
        node = &node["caused"][0];
    }
    out
}

#[tokio::test]
async fn trace_of_a_confirmed_order_shows_its_causation_chain_and_final_state() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("TRACE", 5).await;
    stack.deposit("tracy", 1000, "EUR").await;
    let order_id = stack
        .place_order_ok(&order_request("tracy", "EUR", &[("TRACE", 2, 100)]))
        .await;
    stack.wait_for_status(&order_id, "confirmed").await;
    // The final OrderConfirmed is recorded by inventory once it marks the stock sold.
    let report = eventually(Duration::from_secs(20), || async {
        let r = json_stdout(sagactl(&stack).args(["--json", "trace", &order_id]));
        (r["reservation"]["status"] == "sold")
            .then_some(r.clone())
            .ok_or(r)
    })
    .await;
    assert_eq!(
        chain(&report["tree"]),
        [
            "OrderCreated",
            "StockReserved",
            "PaymentDone",
            "OrderConfirmed"
        ]
    );
    assert_eq!(report["order"]["status"], "confirmed");
    assert_eq!(report["payment"]["status"], "captured");
    let created = &report["events"][0];
    assert_eq!(created["type"], "OrderCreated");
    assert_eq!(created["producer"], "order-svc");
    assert!(
        created["consumed_by"].to_string().contains("inventory-svc"),
        "{created}"
    );
    let human = ok_stdout(sagactl(&stack).args(["trace", &order_id]));
    assert!(
        human.contains("causation") && human.contains("└─ OrderCreated"),
        "{human}"
    );
}

#[tokio::test]
async fn trace_of_a_compensated_order_shows_the_compensation_caused_by_the_failure() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("TRACE2", 5).await;
    stack.deposit("poor", 10, "EUR").await;
    let order_id = stack
        .place_order_ok(&order_request("poor", "EUR", &[("TRACE2", 1, 100)]))
        .await;
    stack.wait_for_status(&order_id, "cancelled").await;
    let report = eventually(Duration::from_secs(20), || async {
        let r = json_stdout(sagactl(&stack).args(["--json", "trace", &order_id]));
        (chain(&r["tree"]).len() == 5).then_some(r.clone()).ok_or(r)
    })
    .await;
    assert_eq!(
        chain(&report["tree"]),
        [
            "OrderCreated",
            "StockReserved",
            "PaymentFailed",
            "OrderCancelled",
            "StockReleased"
        ]
    );
    assert_eq!(report["reservation"]["status"], "released");
    assert_eq!(report["payment"]["status"], "failed");
}

#[tokio::test]
async fn queues_lists_the_contracts_queues_with_their_counts() {
    let stack = Stack::start(StackOptions::default()).await;
    // The management API's figures trail the broker by a few seconds.
    let report = eventually(Duration::from_secs(30), || async {
        let report = json_stdout(sagactl(&stack).args(["--json", "queues"]));
        let consumers = report["queues"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|q| q["name"] == "order-svc")
            .map(|q| q["consumers"].clone());
        (consumers == Some(json!(1)))
            .then_some(report.clone())
            .ok_or(report)
    })
    .await;
    let names: Vec<&str> = report["queues"]
        .as_array()
        .expect("a queue list")
        .iter()
        .filter_map(|q| q["name"].as_str())
        .collect();
    for q in [
        "order-svc",
        "inventory-svc",
        "payment-svc",
        "order-svc.dlq",
        "inventory-svc.dlq",
        "payment-svc.dlq",
        "order-svc.retry.1s",
    ] {
        assert!(names.contains(&q), "{q} missing from {names:?}");
    }
    let text = ok_stdout(sagactl(&stack).arg("queues"));
    assert!(
        text.starts_with("QUEUE") && text.contains("inventory-svc.dlq"),
        "{text}"
    );
}

#[tokio::test]
async fn verify_passes_on_a_settled_stack_and_fails_with_the_breach_otherwise() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("VER", 5).await;
    stack.deposit("vera", 1000, "EUR").await;
    let order_id = stack
        .place_order_ok(&order_request("vera", "EUR", &[("VER", 1, 100)]))
        .await;
    stack.wait_for_status(&order_id, "confirmed").await;
    let out = json_stdout(sagactl(&stack).args(["--json", "verify", "--settle", "20"]));
    assert_eq!(out["breaches"], json!([]));
    // Break an invariant behind the services' back: a sold unit appears from nowhere.
    let db = stack.db(Service::Inventory).await;
    sqlx::query("UPDATE stock SET sold = sold + 1 WHERE sku = 'VER'")
        .execute(&db)
        .await
        .expect("update");
    let out = run(sagactl(&stack).args(["--json", "verify"]));
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let rules: Vec<&str> = report["breaches"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["rule"].as_str())
        .collect();
    assert!(rules.contains(&"stock_balances"), "{rules:?}");
}

#[tokio::test]
async fn the_shipped_scenarios_all_pass() {
    let stack = Stack::start(StackOptions::default()).await;
    let out = run(sagactl(&stack)
        .args(["--json", "scenario", "run"])
        .arg(repo_root().join("scenarios")));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "stdout: {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    assert!(out.status.success(), "{report:#}");
    assert!(report["passed"].as_u64().unwrap_or(0) >= 11, "{report:#}");
    assert_eq!(report["failed"], 0);
}

#[tokio::test]
async fn a_failing_scenario_is_reported_with_the_difference_and_exit_status_1() {
    let stack = Stack::start(StackOptions::default()).await;
    let dir = tempdir();
    let file = dir.join("wrong.toml");
    std::fs::write(
        &file,
        r#"
name = "expects the impossible"
timeout_secs = 3
[given]
stock = { BOOK = 1 }
[[when]]
place = { ref = "o1", customer = "nobody", items = ["BOOK:1:5"] }
[expect]
orders = { o1 = { status = "confirmed" } }
"#,
    )
    .unwrap();
    let out = run(sagactl(&stack).args(["scenario", "run"]).arg(&file));
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("FAIL") && stdout.contains("expected \"confirmed\", got \"cancelled\""),
        "{stdout}"
    );
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("saga-sagactl-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The shell block under "A five-minute tour" in README.md.
fn tour_script(readme: &str) -> String {
    let start = readme
        .find("## A five-minute tour")
        .expect("README has the tour");
    let block = &readme[start..];
    let open = block.find("```sh\n").expect("the tour's code block") + "```sh\n".len();
    let close = block[open..].find("```").expect("the block ends") + open;
    block[open..close].to_owned()
}

#[tokio::test]
async fn the_readme_tour_runs_as_written() {
    let stack = Stack::start(StackOptions::default()).await;
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let script = tour_script(&readme);
    // The tour puts target/debug (where `./scripts/stack.sh up` builds) first on PATH; here
    // that directory holds this build's sagactl, so every line runs exactly as written.
    let dir = tempdir();
    assert!(
        script.contains(r#"export PATH="$PWD/target/debug:$PATH""#),
        "{script}"
    );
    std::fs::create_dir_all(dir.join("target/debug")).unwrap();
    std::os::unix::fs::symlink(binary_path("sagactl"), dir.join("target/debug/sagactl")).unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(&script)
        .current_dir(&dir);
    configure(&mut cmd, &stack);
    let out = run(&mut cmd);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "the tour failed:\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for expected in [
        // The first event published after the tail started: the tour waits until the
        // tail is bound, so it cannot be missed.
        "StockAdjusted",
        "confirmed",
        "payment_failed",
        "OrderConfirmed",
        "inventory-svc.dlq",
        "not_json",
        "no breach",
    ] {
        assert!(
            stdout.contains(expected),
            "the tour's output lacks {expected:?}:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Exit status and standard error of `sagactl` with `args`, stdin closed, no stack needed.
fn offline(args: &[&str]) -> Output {
    run(Command::new(binary_path("sagactl"))
        .args(args)
        .stdin(Stdio::null())
        .env("SAGA_ORDER_URL", "http://127.0.0.1:9")
        .env("SAGA_AMQP_URL", "amqp://guest:guest@127.0.0.1:9/saga"))
}

#[test]
fn every_help_lists_the_commands_own_options_before_the_global_groups() {
    for args in [
        vec!["--help"],
        vec!["order", "place", "--help"],
        vec!["order", "list", "--help"],
        vec!["dlq", "purge", "--help"],
        vec!["queues", "--help"],
    ] {
        let out = offline(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let help = text(&out.stdout);
        let connection = help.find("Connection:").unwrap_or_else(|| panic!("{help}"));
        let output = help.find("Output:").unwrap_or_else(|| panic!("{help}"));
        assert!(connection < help.find("--amqp-url").unwrap_or(0), "{help}");
        assert!(output < help.find("--color").unwrap_or(0), "{help}");
        assert!(help.contains("NO_COLOR"), "{help}");
    }
    let place = text(&offline(&["order", "place", "--help"]).stdout);
    for documented in [
        "The customer placing the order",
        "Sent as the Idempotency-Key header",
    ] {
        assert!(place.contains(documented), "{place}");
    }
}

#[test]
fn exit_status_says_what_kind_of_failure_it_was() {
    // 2: the arguments are wrong.
    let out = offline(&["order", "list", "--status", "lost"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    // 0: help asked for is not a failure.
    assert_eq!(offline(&["queues", "--help"]).status.code(), Some(0));
    // 3: a service cannot be reached.
    let out = offline(&["order", "show", "x"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    // Colour only when asked for, or on a terminal.
    assert!(!text(&out.stderr).contains('\x1b'), "{}", text(&out.stderr));
    let out = offline(&["--color", "always", "order", "show", "x"]);
    assert!(
        text(&out.stderr).contains("\x1b[31merror:"),
        "{}",
        text(&out.stderr)
    );
}

/// A bad argument exits 2 and says what is wrong and what to do, on standard error, with
/// nothing on standard output.
#[test]
fn a_bad_argument_exits_2_saying_what_to_do() {
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &["order", "list", "--status", "lost"],
            &[
                "lost",
                "[possible values: pending, reserved, confirmed, rejected, cancelled]",
            ],
        ),
        (
            &["frobnicate"],
            &["unrecognized subcommand 'frobnicate'", "--help"],
        ),
        (
            &["order", "place", "--item", "BOOK:1:100"],
            &["--customer", "--help"],
        ),
        (
            &["order", "place", "--customer", "c", "--item", "BOOK:two:1"],
            &["whole number", "--help"],
        ),
    ];
    for (args, says) in cases {
        let out = offline(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out.stdout));
        for said in says {
            assert!(err.contains(said), "{args:?} should say {said:?}: {err}");
        }
    }
}

#[test]
fn a_reader_that_closes_the_pipe_ends_sagactl_quietly() {
    let mut child = Command::new(binary_path("sagactl"))
        .args(["completions", "zsh"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sagactl starts");
    // Like `| head -c 0`: the reader is gone before sagactl writes its first byte.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("sagactl ends");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test]
async fn dlq_purge_asks_first_and_without_a_terminal_needs_yes() {
    let stack = Stack::start(StackOptions::default()).await;
    stack
        .publish_raw("order.created", b"not json".to_vec())
        .await;
    let listed = |stack: &Stack| {
        let out = ok_stdout(sagactl(stack).args(["dlq", "list", "-o", "jsonl"]));
        out.lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("one JSON object per line"))
            .find(|q| q["queue"] == "inventory-svc.dlq")
            .and_then(|q| q["messages"].as_i64())
            .unwrap_or(-1)
    };
    eventually(Duration::from_secs(20), || async {
        let n = listed(&stack);
        (n == 1).then_some(()).ok_or(n)
    })
    .await;
    let out = run(sagactl(&stack)
        .args(["dlq", "purge", "inventory-svc"])
        .stdin(Stdio::null()));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--yes"), "{}", text(&out.stderr));
    assert_eq!(listed(&stack), 1, "nothing is purged without a yes");
    let out = ok_stdout(sagactl(&stack).args(["dlq", "purge", "inventory-svc", "--yes"]));
    assert!(out.contains("purged 1 of 1"), "{out}");
    assert_eq!(listed(&stack), 0);
}

#[tokio::test]
async fn money_is_printed_in_major_units_with_the_currencys_decimals() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("YEN", 5).await;
    stack.deposit("kenji", 5000, "JPY").await;
    stack.deposit("eva", 5000, "EUR").await;
    let wallet = ok_stdout(sagactl(&stack).args(["wallet", "show", "kenji"]));
    assert!(wallet.contains("balance 5000 JPY"), "{wallet}");
    let order_id = stack
        .place_order_ok(&order_request("eva", "EUR", &[("YEN", 2, 1500)]))
        .await;
    stack.wait_for_status(&order_id, "confirmed").await;
    let order = ok_stdout(sagactl(&stack).args(["order", "show", &order_id]));
    assert!(order.contains("total    30.00 EUR"), "{order}");
    let wallet = ok_stdout(sagactl(&stack).args(["wallet", "show", "eva"]));
    assert!(
        wallet.contains("balance 20.00 EUR  captured 30.00 EUR"),
        "{wallet}"
    );
}
