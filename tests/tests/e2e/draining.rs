//! Draining on SIGTERM. A replica that gets SIGTERM under steady load turns unready at once
//! while it still answers, finishes and acks the batches it holds, publishes (or gives
//! back) the outbox rows handed to it, and exits 0 within its grace period: nothing it held
//! waits for a redelivery or a lease, nothing is dead-lettered or handled twice, and every
//! order ends as it should. A batch in flight at SIGTERM is finished and acked, not
//! abandoned.
//!
//! The outbox lease is set to a minute in these stacks, so that a row left to its lease
//! (instead of published or given back) would wait far longer than the bounds below.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use saga_tests::replicas::Replica;
use saga_tests::sigterm::Exit;
use saga_tests::steady_load::{self, Journal, Placed};
use saga_tests::{Service, Stack, StackOptions, StatusCode, eventually, order_request};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// `SAGA_SHUTDOWN_GRACE_SECS` of the stacks: the default.
const GRACE: Duration = Duration::from_secs(20);
/// A row left to its lease would wait this long (`SAGA_RELAY_LEASE_MS`).
const LEASE_MS: &str = "60000";
/// How soon every row a drained replica's service committed before the exit is published:
/// a poll of the surviving relays (1 s) and slack for a loaded machine, a third of the
/// lease.
const PUBLISHED_WITHIN: Duration = Duration::from_secs(20);
/// `SAGA_SHUTDOWN_DELAY_SECS` of the steady-load stack: the listener keeps accepting this
/// long after readiness turned 503, for the test's balancer (which probes every 100 ms).
const DELAY_SECS: &str = "2";

#[tokio::test]
async fn a_replica_drained_under_load_loses_nothing_and_leaves_nothing_waiting() {
    let stack = Stack::start(
        StackOptions::default()
            .deadline_secs(steady_load::ORDER_DEADLINE_SECS)
            .env("SAGA_RELAY_LEASE_MS", LEASE_MS)
            .env("SAGA_SHUTDOWN_DELAY_SECS", DELAY_SECS)
            .env("SAGA_SHUTDOWN_GRACE_SECS", GRACE.as_secs().to_string()),
    )
    .await;
    let mut replicas = stack.start_replica_of_each().await;
    steady_load::seed(&stack).await;
    let journal = Journal::default();
    let balanced = Mutex::new(Balanced::default());
    let (mut placed, progress, drains) = steady_load::under_load(
        &stack,
        drain_each(&stack, &mut replicas, &balanced, &journal),
        &journal,
    )
    .await;
    let balanced = balanced.into_inner().unwrap_or_else(|e| e.into_inner());
    journal.note(format!(
        "{} orders placed through the order-svc replica; its readiness answered {}",
        balanced.placed.len(),
        balanced.readiness
    ));
    assert!(
        balanced.readiness.starts_with("503") && balanced.readiness.contains("draining"),
        "readiness of the draining replica answered {} instead of 503 draining",
        balanced.readiness
    );
    assert!(
        balanced.unanswered.is_empty(),
        "requests sent to the replica before its readiness turned 503 were not answered 202: {:?}",
        balanced.unanswered
    );
    placed.extend(balanced.placed);
    steady_load::assert_nothing_lost(&stack, &placed, &progress, &[], &journal).await;
    steady_load::report_stalls(&progress, &drains, &journal);
    let dead = stack.dlq_counts().await;
    assert!(
        dead.values().all(|n| *n == 0),
        "messages were dead-lettered: {dead:?}"
    );
    // A delivery a drained replica handled and did not ack would come to the survivor
    // again, and be a duplicate there.
    for s in Service::ALL {
        let twice = stack
            .metric(
                s,
                "saga_messages_handled_total",
                &[("outcome", "duplicate")],
            )
            .await;
        assert_eq!(twice, 0.0, "{s} handled a message a second time");
    }
}

/// What the test's load balancer saw of the order-svc replica.
#[derive(Default)]
struct Balanced {
    placed: Vec<Placed>,
    /// Requests that were not answered 202, with what happened instead.
    unanswered: Vec<String>,
    /// What the readiness probe answered when the balancer took the replica out.
    readiness: String,
}

/// SIGTERMs each replica in turn once it has a share of the work (the order-svc replica
/// while a balancer sends it orders too), checks that it exits 0 within the grace period
/// and that every outbox row committed before its exit is published soon after. Returns
/// the signals sent, with when.
async fn drain_each(
    stack: &Stack,
    replicas: &mut [Replica],
    balanced: &Mutex<Balanced>,
    journal: &Journal,
) -> Vec<(String, Instant)> {
    let mut drains = Vec::new();
    for replica in replicas.iter_mut() {
        let service = replica.service;
        let (sent, exit) = if service == Service::Order {
            let url = replica.base_url();
            let (seen, drained) = tokio::join!(through_a_balancer(&url), drain(replica));
            *balanced.lock().unwrap_or_else(|e| e.into_inner()) = seen;
            drained
        } else {
            drain(replica).await
        };
        journal.note(format!(
            "{service} replica exited with {} {:.2}s after SIGTERM",
            exit.status,
            exit.after.as_secs_f64()
        ));
        assert_drained(&format!("the {service} replica"), &exit);
        drains.push((format!("SIGTERM to the {service} replica"), sent));
        let published = all_published(stack, service).await;
        journal.note(format!(
            "every outbox row of {service} committed before the exit published {:.2}s after it",
            published.as_secs_f64()
        ));
    }
    drains
}

/// Asserts that `what` exited with status 0 within the grace period of its SIGTERM.
fn assert_drained(what: &str, exit: &Exit) {
    assert!(exit.status.success(), "{what} exited with {}", exit.status);
    assert!(
        exit.after < GRACE,
        "{what} took {:?} to drain, over its grace period",
        exit.after
    );
}

/// Waits until `replica` has handled messages of its own, then SIGTERMs it and waits for
/// its exit.
async fn drain(replica: &mut Replica) -> (Instant, Exit) {
    let service = replica.service;
    eventually(Duration::from_secs(60), || async {
        let handled = replica
            .metric("saga_messages_handled_total", &[("outcome", "ok")])
            .await;
        (handled >= 20.0)
            .then_some(())
            .ok_or(format!("the {service} replica handled {handled} messages"))
    })
    .await;
    let sent = replica.sigterm();
    let exit = replica
        .wait_exit(sent, GRACE + Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{service} replica: {e} (log {})", replica.log.display()));
    (sent, exit)
}

/// An unsent outbox row as a failure shows it: type, age (s), lease left (s), attempts,
/// last error.
type UnsentRow = (String, f64, Option<f64>, i32, Option<String>);

/// How long after now every outbox row of `service` created until now is sent: asserted
/// within [`PUBLISHED_WITHIN`], far below the lease a row left to it would wait.
async fn all_published(stack: &Stack, service: Service) -> Duration {
    let pool = stack.db(service).await;
    let exited: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&pool)
        .await
        .expect("the database's clock");
    let started = Instant::now();
    eventually(PUBLISHED_WITHIN, || async {
        let unsent: Vec<UnsentRow> = sqlx::query_as(
            "SELECT event_type, EXTRACT(EPOCH FROM now() - created_at)::float8,
                    EXTRACT(EPOCH FROM next_attempt_at - now())::float8, attempts, last_error
             FROM outbox WHERE sent_at IS NULL AND created_at <= $1 ORDER BY id LIMIT 5",
        )
        .bind(exited)
        .fetch_all(&pool)
        .await
        .map_err(|e| e.to_string())?;
        if unsent.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "outbox rows of {service} from before the exit unsent (type, age s, lease left \
                 s, attempts, last error): {unsent:?}"
            ))
        }
    })
    .await;
    started.elapsed()
}

/// A load balancer in front of one order-svc replica: it probes `/healthz/ready` every
/// 100 ms and, while that answers 200, sends an order each time; once it does not, it takes
/// the replica out (sends nothing more) and waits for the answers of what it sent. Every
/// order sent must be answered 202: the replica keeps serving while it says it drains.
async fn through_a_balancer(base_url: &str) -> Balanced {
    let http = saga_tests::auth::operator_client();
    let mut sent: Vec<JoinHandle<Result<Placed, String>>> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    // Numbered far from the steady load's orders; any number gives a valid order.
    let mut n = 1_000_000u64;
    let readiness = loop {
        tick.tick().await;
        match http.get(format!("{base_url}/healthz/ready")).send().await {
            Ok(r) if r.status() == StatusCode::OK => {}
            Ok(r) => break format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => break format!("no answer: {e}"),
        }
        let (http, url) = (http.clone(), format!("{base_url}/orders"));
        let (body, ghost) = steady_load::order_body(n);
        n += 1;
        sent.push(tokio::spawn(async move {
            let answer = http
                .post(&url)
                .header("idempotency-key", Uuid::now_v7().to_string())
                .json(&body)
                .send()
                .await
                .map_err(|e| format!("no answer: {e}"))?;
            let status = answer.status();
            let answer: serde_json::Value = answer.json().await.map_err(|e| e.to_string())?;
            match (status, answer["order_id"].as_str()) {
                (StatusCode::ACCEPTED, Some(id)) => Ok(Placed {
                    order_id: Some(id.to_owned()),
                    ghost,
                    failed_attempts: 0,
                    shed_attempts: 0,
                }),
                _ => Err(format!("{status} {answer}")),
            }
        }));
    };
    let mut balanced = Balanced {
        readiness,
        ..Balanced::default()
    };
    for request in sent {
        match request.await {
            Ok(Ok(placed)) => balanced.placed.push(placed),
            Ok(Err(e)) => balanced.unanswered.push(e),
            Err(e) => balanced
                .unanswered
                .push(format!("the request panicked: {e}")),
        }
    }
    balanced
}

#[tokio::test]
async fn a_batch_in_flight_at_sigterm_is_finished_and_acked() {
    let stack = Stack::start(
        StackOptions::default()
            .env("SAGA_RELAY_LEASE_MS", LEASE_MS)
            // The batch below waits on a row lock for as long as the test holds it.
            .env("SAGA_DB_LOCK_TIMEOUT_MS", "60000"),
    )
    .await;
    stack.seed_stock("DRAIN-1", 10).await;
    stack.deposit("drainer", 10_000, "EUR").await;
    // Hold the SKU's stock row: inventory-svc's batch with the order's OrderCreated waits
    // for it, in flight.
    let inventory = stack.db(Service::Inventory).await;
    let mut holder = inventory.begin().await.expect("a transaction");
    sqlx::query("SELECT 1 FROM stock WHERE sku = 'DRAIN-1' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .expect("the stock row locked");
    let order_id = stack
        .place_order_ok(&order_request("drainer", "EUR", &[("DRAIN-1", 2, 100)]))
        .await;
    eventually(Duration::from_secs(30), || async {
        match stack
            .db_count(
                Service::Inventory,
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .await
        {
            Ok(n) if n > 0 => Ok(()),
            Ok(_) => Err("no batch waits on the stock row yet".to_owned()),
            Err(e) => Err(e),
        }
    })
    .await;
    let sent = stack.sigterm(Service::Inventory);
    // The consumer has cancelled its subscription and waits for its batch.
    let log = stack.log_path(Service::Inventory);
    eventually(Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("consumer cancelled")
            .then_some(())
            .ok_or("inventory-svc has not cancelled its consumer yet")
    })
    .await;
    holder.rollback().await.expect("the stock row released");
    let exit = stack
        .wait_exit(Service::Inventory, sent, GRACE + Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("inventory-svc: {e}"));
    assert_drained("inventory-svc", &exit);
    println!(
        "inventory-svc drained a batch in flight and exited {:.2}s after SIGTERM",
        exit.after.as_secs_f64()
    );
    // Its StockReserved was published by the draining relay, not left to the lease.
    let unsent = stack
        .db_count(
            Service::Inventory,
            "SELECT count(*) FROM outbox WHERE sent_at IS NULL",
        )
        .await
        .expect("inventory's outbox");
    assert_eq!(unsent, 0, "inventory-svc exited with outbox rows unsent");
    stack.wait_for_status(&order_id, "confirmed").await;
    // Acked: with nobody consuming, an abandoned delivery would be back in the queue (where
    // the order's OrderConfirmed now waits for inventory-svc).
    let probe = stack.probe().await;
    let waiting: Vec<Option<String>> = probe
        .peek(Service::Inventory.name(), 10)
        .await
        .into_iter()
        .map(|m| m.kind)
        .collect();
    probe.close().await;
    assert!(
        !waiting.iter().any(|k| k.as_deref() == Some("OrderCreated")),
        "the OrderCreated of the batch in flight went back to the queue: {waiting:?}"
    );
    stack.start_service(Service::Inventory).await;
    stack.assert_invariants().await;
    assert_eq!(
        stack
            .metric(
                Service::Inventory,
                "saga_messages_handled_total",
                &[("outcome", "duplicate")]
            )
            .await,
        0.0,
        "the batch drained was delivered again"
    );
}
