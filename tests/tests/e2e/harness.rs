//! The harness keeps its own promises: a stack leaves nothing behind, whether its test
//! passes or panics; a killed service comes back with its state; a service that cannot
//! start fails the stack at once, saying why.

use saga_tests::sandbox;
use saga_tests::{Service, Stack, StackOptions, StatusCode};
use sqlx::{Connection, PgConnection};

/// What a stack created on the shared servers, to look for after it is gone.
struct Footprint {
    vhost: String,
    databases: Vec<String>,
    pids: Vec<u32>,
    log_dir: std::path::PathBuf,
}

/// Runs `body` as a test of its own, on its own thread and runtime, and returns its panic
/// message (or `None` if it did not panic).
fn run_failing_test<F, Fut>(body: F) -> Option<String>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let outcome = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(body())
    })
    .join();
    let payload = outcome.err()?;
    Some(
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default(),
    )
}

fn footprint(stack: &Stack) -> Footprint {
    Footprint {
        vhost: stack.sandbox().vhost().to_owned(),
        databases: ["orders", "inventory", "payments"]
            .iter()
            .map(|p| stack.sandbox().database_name(p).to_owned())
            .collect(),
        pids: Service::ALL.iter().filter_map(|s| stack.pid(*s)).collect(),
        log_dir: stack
            .log_path(Service::Order)
            .parent()
            .expect("logs live in a directory")
            .to_owned(),
    }
}

/// Whether the footprint is gone: vhost deleted, databases dropped, processes ended.
async fn leftovers(f: &Footprint) -> Vec<String> {
    let mut found = Vec::new();
    match sandbox::management_client().get_vhost(&f.vhost).await {
        Err(e) if e.is_not_found() => {}
        Ok(_) => found.push(format!("vhost {} still exists", f.vhost)),
        Err(e) => panic!("asking the management API about vhost {}: {e}", f.vhost),
    }
    let mut pg = PgConnection::connect(&format!("{}/postgres", sandbox::postgres_server_url()))
        .await
        .expect("connecting to PostgreSQL");
    let databases: Vec<String> =
        sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE datname = ANY($1)")
            .bind(&f.databases)
            .fetch_all(&mut pg)
            .await
            .expect("listing databases");
    found.extend(databases.into_iter().map(|d| format!("database {d}")));
    for pid in &f.pids {
        // A reaped child has no /proc entry; a zombie or a live one would.
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            found.push(format!("process {pid}"));
        }
    }
    found
}

#[tokio::test]
async fn a_dropped_stack_leaves_no_vhost_database_or_process_behind() {
    let stack = Stack::start(StackOptions::default()).await;
    // Make sure every database exists and holds something before the drop.
    stack.seed_stock("SKU-GONE", 1).await;
    let f = footprint(&stack);
    assert_eq!(f.pids.len(), 3);
    drop(stack);
    assert_eq!(leftovers(&f).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_stack_is_removed_even_when_its_test_panics() {
    let (tx, rx) = std::sync::mpsc::channel();
    let panicked = run_failing_test(move || async move {
        let stack = Stack::start(StackOptions::default()).await;
        tx.send(footprint(&stack)).unwrap();
        panic!("a deliberate failure, to see the stack cleaned up");
    });
    assert!(panicked.is_some(), "the inner test should have panicked");
    let f = rx.recv().expect("the inner test started its stack");
    assert_eq!(leftovers(&f).await, Vec::<String>::new());
    // The logs of a failed test are kept for a post-mortem.
    assert!(f.log_dir.join("order-svc.log").is_file(), "{:?}", f.log_dir);
    std::fs::remove_dir_all(&f.log_dir).unwrap();
}

#[tokio::test]
async fn a_killed_service_restarts_with_its_state() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("SKU-KEPT", 7).await;

    let pid = stack.pid(Service::Inventory).expect("inventory-svc runs");
    stack.kill(Service::Inventory);
    assert!(!stack.is_running(Service::Inventory));
    assert!(
        stack.try_get(Service::Inventory, "/healthz").await.is_err(),
        "nothing should answer on a killed service's port"
    );

    stack.start_service(Service::Inventory).await;
    assert_ne!(stack.pid(Service::Inventory), Some(pid));
    let (status, stock) = stack.stock("SKU-KEPT").await;
    assert_eq!(
        (status, stock["available"].as_i64()),
        (StatusCode::OK, Some(7))
    );
    // And it consumes again (seed_stock waits until the adjustment shows).
    stack.seed_stock("SKU-KEPT", 1).await;
}

#[test]
fn a_service_that_cannot_start_fails_the_stack_at_once_saying_why() {
    // An unparsable setting makes every service exit before it listens.
    let message = run_failing_test(|| async {
        Stack::start(StackOptions::default().env("SAGA_PREFETCH", "plenty")).await;
    })
    .expect("the stack should not start");
    assert!(
        message.contains("order-svc is not running: it exited"),
        "{message}"
    );
    // "… (logs in /tmp/saga-tests/<id>)": kept for a post-mortem; not needed here.
    let log_dir = message
        .rsplit_once("logs in ")
        .map(|(_, rest)| rest.trim_end_matches(')'))
        .expect("the message names the log directory");
    let log = std::fs::read_to_string(format!("{log_dir}/order-svc.log")).unwrap();
    assert!(log.contains("SAGA_PREFETCH"), "{log}");
    std::fs::remove_dir_all(log_dir).unwrap();
}
