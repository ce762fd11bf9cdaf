//! The chaos suite: one stack under a steady load of orders while, on a fixed schedule,
//! its services are killed with SIGKILL and restarted, its broker connections are closed,
//! the broker itself is stopped and started, and PostgreSQL is restarted. Afterwards every
//! order must have settled, `sagactl verify` must find no breach, no confirmed order may be
//! lost, nobody may be charged twice, every outbox must be drained and the dead-letter
//! queues may hold nothing that was not handled after all.
//!
//! One test only, so that it runs alone in its binary (cargo runs test binaries one after
//! another): it stops the shared broker and database, which every other test running at
//! the same moment would notice. A guard brings both back whatever happens. Every wait has
//! a deadline; the whole run takes about two minutes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use events::Event;
use events::catalog::{FundsDeposited, StockAdjusted};
use saga_tests::failure_support::{
    ServersGuard, pg_cluster, rabbitmqctl, wait_broker, wait_postgres,
};
use saga_tests::{Method, Service, Stack, StackOptions, StatusCode, order_request};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Orders placed per second by the load.
const ORDERS_PER_SECOND: u64 = 5;
/// The order deadline the stack runs with: short, so orders stuck behind a fault are
/// timed out (and compensated) within the test's time.
const ORDER_DEADLINE_SECS: f64 = 20.0;
/// How long one order of the load keeps retrying its POST while order-svc is away.
const PLACE_DEADLINE: Duration = Duration::from_secs(30);
/// Longest the services may take to be healthy again after a fault.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(90);
/// Longest every order may take to settle once the load stops.
const SETTLE_DEADLINE: Duration = Duration::from_secs(120);

/// What happened when, printed as it happens and kept for the summary.
struct Journal {
    started: Instant,
    lines: Mutex<Vec<String>>,
    /// `saga_messages_handled_total` by (service, outcome), summed over the processes the
    /// test killed (read just before each kill) and the ones running at the end.
    handled: Mutex<BTreeMap<(Service, &'static str), u64>>,
}

impl Journal {
    fn new() -> Journal {
        Journal {
            started: Instant::now(),
            lines: Mutex::new(Vec::new()),
            handled: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds what `service`'s current process counted (before it is killed, say).
    async fn count_handled(&self, stack: &Stack, service: Service) {
        let Ok(Ok((StatusCode::OK, body))) =
            tokio::time::timeout(Duration::from_secs(5), stack.try_get(service, "/metrics")).await
        else {
            return;
        };
        let samples = saga_tests::prometheus::parse(body.as_str().unwrap_or_default());
        let mut handled = self.handled.lock().unwrap_or_else(|p| p.into_inner());
        for outcome in OUTCOMES {
            let n = saga_tests::prometheus::sum(
                &samples,
                "saga_messages_handled_total",
                &[("outcome", outcome)],
            );
            *handled.entry((service, outcome)).or_default() += n.max(0.0) as u64;
        }
    }

    fn handled_summary(&self) -> String {
        let handled = self.handled.lock().unwrap_or_else(|p| p.into_inner());
        Service::ALL
            .iter()
            .map(|s| {
                let counts: Vec<String> = OUTCOMES
                    .iter()
                    .map(|o| format!("{} {o}", handled.get(&(*s, *o)).copied().unwrap_or(0)))
                    .collect();
                format!("{s}: {}", counts.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn note(&self, what: impl Into<String>) {
        let line = format!(
            "[{:>6.1}s] {}",
            self.started.elapsed().as_secs_f64(),
            what.into()
        );
        println!("{line}");
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line);
    }
}

/// Operator events of each kind published while PostgreSQL is stopped.
const OUTAGE_EVENTS: i64 = 5;
/// What the stock and the wallet those events change were seeded with.
const PLENTY: i64 = 1_000_000;
const RICH: i64 = 100_000_000;

/// The outcomes of `saga_messages_handled_total`.
const OUTCOMES: [&str; 4] = ["ok", "duplicate", "retried", "dead_lettered"];

/// What the load meant an order to become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// A rich customer, plenty of stock.
    Plain,
    /// A SKU with little stock: confirmed until it runs out, then rejected.
    Scarce,
    /// A SKU nobody stocks: rejected.
    Ghost,
    /// A customer who runs out of money: cancelled (payment_failed) after a few.
    Pauper,
    /// A wallet in another currency: cancelled (payment_failed, currency_mismatch).
    Foreign,
    /// Cancelled by the customer soon after placing it.
    CancelSoon,
    /// Cancelled by the customer later, usually once confirmed (refund and restock).
    CancelLate,
}

impl Kind {
    fn of(n: u64) -> Kind {
        match n % 12 {
            0..=4 => Kind::Plain,
            5 => Kind::Scarce,
            6 => Kind::Ghost,
            7 => Kind::Pauper,
            8 => Kind::Foreign,
            9 | 10 => Kind::CancelSoon,
            _ => Kind::CancelLate,
        }
    }

    fn body(self, n: u64) -> Value {
        let rich = format!("rich-{}", n % 4);
        let qty = (n % 3 + 1) as i64;
        match self {
            Kind::Plain | Kind::CancelSoon | Kind::CancelLate => {
                order_request(&rich, "EUR", &[("SKU-PLENTY", qty, 150)])
            }
            Kind::Scarce => order_request(
                &rich,
                "EUR",
                &[("SKU-SCARCE", 1, 900), ("SKU-PLENTY", 1, 150)],
            ),
            Kind::Ghost => order_request(&rich, "EUR", &[("SKU-GHOST", 1, 10)]),
            Kind::Pauper => order_request("pauper", "EUR", &[("SKU-PLENTY", 1, 100)]),
            Kind::Foreign => order_request("yankee", "EUR", &[("SKU-PLENTY", 1, 100)]),
        }
    }

    fn cancel_after(self, n: u64) -> Option<Duration> {
        match self {
            Kind::CancelSoon => Some(Duration::from_millis(n * 37 % 400)),
            Kind::CancelLate => Some(Duration::from_millis(1500)),
            _ => None,
        }
    }
}

/// One order of the load, as the load saw it.
#[derive(Debug)]
struct Placed {
    kind: Kind,
    /// None when no POST got an answer in time (the order may exist all the same).
    order_id: Option<String>,
    /// A cancel was sent (whether or not it was answered).
    cancel_sent: bool,
    /// The cancel was answered 202 or 409.
    cancel_answered: bool,
    /// POSTs that failed before one was answered 202.
    failed_attempts: u32,
}

/// Whether a request failed in a way worth repeating (service away or overloaded).
fn retryable(result: &Result<(StatusCode, Value), reqwest::Error>) -> bool {
    match result {
        Err(_) => true,
        Ok((status, _)) => status.is_server_error() || *status == StatusCode::REQUEST_TIMEOUT,
    }
}

async fn place_one(stack: &Stack, n: u64) -> Placed {
    let kind = Kind::of(n);
    let body = kind.body(n).to_string().into_bytes();
    let key = Uuid::now_v7().to_string();
    let headers = [
        ("content-type", "application/json"),
        ("idempotency-key", key.as_str()),
    ];
    let started = Instant::now();
    let mut placed = Placed {
        kind,
        order_id: None,
        cancel_sent: false,
        cancel_answered: false,
        failed_attempts: 0,
    };
    while started.elapsed() < PLACE_DEADLINE {
        let answer = stack
            .try_request(
                Service::Order,
                Method::POST,
                "/orders",
                &headers,
                Some(body.clone()),
            )
            .await;
        match &answer {
            Ok((StatusCode::ACCEPTED, a)) => {
                placed.order_id = a["order_id"].as_str().map(str::to_owned);
                break;
            }
            _ if retryable(&answer) => {
                placed.failed_attempts += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok((status, a)) => panic!("POST /orders answered {status} {a}"),
            Err(_) => unreachable!("transport errors are retryable"),
        }
    }
    let (Some(id), Some(delay)) = (placed.order_id.clone(), kind.cancel_after(n)) else {
        return placed;
    };
    tokio::time::sleep(delay).await;
    placed.cancel_sent = true;
    let path = format!("/orders/{id}/cancel");
    let started = Instant::now();
    while started.elapsed() < PLACE_DEADLINE {
        let answer = stack
            .try_request(Service::Order, Method::POST, &path, &[], None)
            .await;
        match &answer {
            // 409: already rejected or cancelled.
            Ok((StatusCode::ACCEPTED | StatusCode::CONFLICT, _)) => {
                placed.cancel_answered = true;
                break;
            }
            _ if retryable(&answer) => tokio::time::sleep(Duration::from_millis(250)).await,
            Ok((status, a)) => panic!("POST {path} answered {status} {a}"),
            Err(_) => unreachable!("transport errors are retryable"),
        }
    }
    placed
}

/// Places orders at a steady rate until `stop`, then waits for those in flight.
async fn load(stack: &Stack, stop: &CancellationToken, journal: &Journal) -> Vec<Placed> {
    let done =
        saga_tests::steady_load::at_steady_rate(ORDERS_PER_SECOND, stop, |n| place_one(stack, n))
            .await;
    journal.note(format!("load stopped after {} orders", done.len()));
    done
}

/// Every second, the ids of the orders order-svc reports confirmed (while it answers).
async fn watch_confirmed(stack: &Stack, stop: &CancellationToken) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    while !stop.is_cancelled() {
        if let Ok(Ok(confirmed)) = tokio::time::timeout(
            Duration::from_secs(5),
            stack.try_list_orders(Some("confirmed")),
        )
        .await
        {
            for o in &confirmed {
                if let Some(id) = o["order_id"].as_str() {
                    seen.insert(id.to_owned());
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    seen
}

async fn kill_and_restart(stack: &Stack, service: Service, journal: &Journal) {
    journal.count_handled(stack, service).await;
    journal.note(format!("kill -9 {service} (pid {:?})", stack.pid(service)));
    stack.kill(service);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.start_service(service).await;
    journal.note(format!(
        "{service} restarted (pid {:?}) and healthy",
        stack.pid(service)
    ));
}

async fn wait_healthy(stack: &Stack, journal: &Journal, after: &str) {
    let since = Instant::now();
    stack
        .wait_all_health(StatusCode::OK, RECOVERY_DEADLINE)
        .await;
    journal.note(format!(
        "all three services healthy again {:.1}s after {after}",
        since.elapsed().as_secs_f64()
    ));
}

fn expect_ok(what: &str, result: Result<String, String>) {
    if let Err(e) = result {
        panic!("{what} failed: {e}");
    }
}

/// The fixed schedule of faults.
async fn inject_faults(stack: &Stack, journal: &Journal) {
    let pause = || tokio::time::sleep(Duration::from_secs(3));
    pause().await;
    for service in [Service::Inventory, Service::Payment, Service::Order] {
        kill_and_restart(stack, service, journal).await;
        pause().await;
    }

    let vhost = stack.sandbox().vhost().to_owned();
    journal.note(format!(
        "rabbitmqctl close_all_connections --vhost {vhost} chaos"
    ));
    expect_ok(
        "close_all_connections",
        rabbitmqctl(&["close_all_connections", "--vhost", &vhost, "chaos"]).await,
    );
    wait_healthy(stack, journal, "the closed connections").await;
    pause().await;

    journal.note("rabbitmqctl stop_app");
    expect_ok("rabbitmqctl stop_app", rabbitmqctl(&["stop_app"]).await);
    stack
        .wait_all_health(StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(20))
        .await;
    journal.note("broker stopped; /healthz answers 503 on all three services");
    tokio::time::sleep(Duration::from_secs(2)).await;
    journal.note("rabbitmqctl start_app");
    expect_ok("rabbitmqctl start_app", rabbitmqctl(&["start_app"]).await);
    if let Err(e) = wait_broker(&vhost, Duration::from_secs(60)).await {
        panic!("RabbitMQ did not come back: {e}");
    }
    journal.note("broker up");
    wait_healthy(stack, journal, "the broker restart").await;
    pause().await;

    journal.note("PostgreSQL restart");
    expect_ok("pg_ctlcluster restart", pg_cluster("restart").await);
    if let Err(e) = wait_postgres(Duration::from_secs(60)).await {
        panic!("PostgreSQL did not come back: {e}");
    }
    journal.note("PostgreSQL up");
    wait_healthy(stack, journal, "the PostgreSQL restart").await;
    pause().await;

    journal.note("PostgreSQL stop");
    expect_ok("pg_ctlcluster stop", pg_cluster("stop").await);
    stack
        .wait_all_health(StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(20))
        .await;
    journal.note("PostgreSQL stopped; /healthz answers 503 on all three services");
    // Operator events reach the consumers while their database is away: each fails and
    // goes through the retry queues, and must still apply exactly once.
    for _ in 0..OUTAGE_EVENTS {
        stack
            .publish(&Event::StockAdjusted(StockAdjusted {
                sku: "SKU-PLENTY".into(),
                delta: 1,
            }))
            .await;
        stack
            .publish(&Event::FundsDeposited(FundsDeposited {
                customer_id: "rich-0".into(),
                amount: 1,
                currency: "EUR".into(),
            }))
            .await;
        stack.expect_published_stock("SKU-PLENTY", 1);
        stack.expect_published_deposit("rich-0", 1);
    }
    journal.note(format!(
        "published {OUTAGE_EVENTS} StockAdjusted(SKU-PLENTY, +1) and {OUTAGE_EVENTS} \
         FundsDeposited(rich-0, 1 EUR) while PostgreSQL is down"
    ));
    // Longer than the services' pool acquire timeout (5 s), so that handlers fail rather
    // than wait it out.
    tokio::time::sleep(Duration::from_secs(8)).await;
    journal.note("PostgreSQL start");
    expect_ok("pg_ctlcluster start", pg_cluster("start").await);
    if let Err(e) = wait_postgres(Duration::from_secs(60)).await {
        panic!("PostgreSQL did not come back: {e}");
    }
    journal.note("PostgreSQL up");
    wait_healthy(stack, journal, "the PostgreSQL stop and start").await;
    pause().await;

    for service in [Service::Order, Service::Payment, Service::Inventory] {
        kill_and_restart(stack, service, journal).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    pause().await;
}

/// Whether `service` handled (committed) message `message_id`, per its inbox.
async fn handled_by(stack: &Stack, service: Service, message_id: &str) -> bool {
    let Ok(id) = message_id.parse::<Uuid>() else {
        return false;
    };
    let db = stack.db(service).await;
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM inbox WHERE consumer = $1 AND message_id = $2")
            .bind(service.name())
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap_or_else(|e| panic!("reading {service}'s inbox: {e}"));
    db.close().await;
    n > 0
}

/// The hard limit on the whole test: past it the run is abandoned (the guard still brings
/// the servers back and the stack is removed) and the test fails.
const TEST_DEADLINE: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_survives_crashes_broker_and_database_restarts_under_load() {
    if tokio::time::timeout(TEST_DEADLINE, chaos_run())
        .await
        .is_err()
    {
        panic!("the chaos run took over {TEST_DEADLINE:?}; abandoned");
    }
}

async fn chaos_run() {
    let journal = Journal::new();
    let stack = Stack::start(
        StackOptions::default()
            .deadline_secs(ORDER_DEADLINE_SECS)
            .wait(Duration::from_secs(60)),
    )
    .await;
    for c in 0..4 {
        stack.deposit(&format!("rich-{c}"), RICH, "EUR").await;
    }
    stack.deposit("pauper", 300, "EUR").await;
    stack.deposit("yankee", 1_000_000, "USD").await;
    stack.seed_stock("SKU-PLENTY", PLENTY).await;
    stack.seed_stock("SKU-SCARCE", 12).await;
    journal.note(format!(
        "stack up in vhost {}; stock and wallets seeded",
        stack.sandbox().vhost()
    ));
    // From here on the broker or the database may be down: the guard brings both back
    // (before the stack, declared earlier, is dropped and removes its vhost and databases).
    let _servers = ServersGuard::new();

    let stop = CancellationToken::new();
    journal.note(format!("load starts: {ORDERS_PER_SECOND} orders/s"));
    let (placed, confirmed_seen, ()) = tokio::join!(
        load(&stack, &stop, &journal),
        watch_confirmed(&stack, &stop),
        async {
            inject_faults(&stack, &journal).await;
            stop.cancel();
        }
    );

    // ------------------------------------------------------------------ checks
    let settle_started = Instant::now();
    let orders = stack.wait_all_settled(SETTLE_DEADLINE).await;
    journal.note(format!(
        "all {} orders settled {:.1}s after the load stopped",
        orders.len(),
        settle_started.elapsed().as_secs_f64()
    ));

    let ending_of: BTreeMap<&str, (&str, &str)> = orders
        .iter()
        .map(|o| {
            (
                o["order_id"].as_str().unwrap_or("?"),
                (
                    o["status"].as_str().unwrap_or("?"),
                    o["reason"].as_str().unwrap_or(""),
                ),
            )
        })
        .collect();
    let status_of: BTreeMap<&str, &str> = ending_of.iter().map(|(id, (s, _))| (*id, *s)).collect();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for o in &orders {
        let key = match o["reason"].as_str() {
            Some(r) => format!("{} ({r})", o["status"].as_str().unwrap_or("?")),
            None => o["status"].as_str().unwrap_or("?").to_owned(),
        };
        *outcomes.entry(key).or_default() += 1;
    }
    journal.note(format!("outcomes: {outcomes:?}"));

    // Every order the load placed exists, and no POST made two orders.
    let answered: Vec<&str> = placed
        .iter()
        .filter_map(|p| p.order_id.as_deref())
        .collect();
    let unanswered = placed.len() - answered.len();
    let retried_posts: u32 = placed.iter().map(|p| p.failed_attempts).sum();
    journal.note(format!(
        "the load placed {} orders ({} POSTs repeated during faults, {unanswered} never answered), \
         sent {} cancels",
        placed.len(),
        retried_posts,
        placed.iter().filter(|p| p.cancel_sent).count()
    ));
    let missing: Vec<&&str> = answered
        .iter()
        .filter(|id| !status_of.contains_key(**id))
        .collect();
    assert!(missing.is_empty(), "accepted orders lost: {missing:?}");
    assert!(
        orders.len() <= placed.len(),
        "{} orders exist for {} placed",
        orders.len(),
        placed.len()
    );
    assert!(
        unanswered * 20 < placed.len(),
        "too many orders never answered: {unanswered} of {}",
        placed.len()
    );

    // The mix produced every kind of ending.
    for (status, kinds) in [
        ("confirmed", vec![Kind::Plain]),
        ("rejected", vec![Kind::Ghost]),
        ("cancelled", vec![Kind::Foreign, Kind::CancelSoon]),
    ] {
        let n = placed
            .iter()
            .filter(|p| kinds.contains(&p.kind))
            .filter_map(|p| p.order_id.as_deref())
            .filter(|id| status_of.get(id) == Some(&status))
            .count();
        assert!(n > 0, "no order of {kinds:?} ended {status}: {outcomes:?}");
    }
    // Each order ended in a way its kind allows (a timeout may cancel any order that was
    // stuck behind a fault; nothing else may surprise).
    let mut surprises = Vec::new();
    for p in &placed {
        let Some(id) = p.order_id.as_deref() else {
            continue;
        };
        let (status, reason) = ending_of[id];
        let ok = match (p.kind, status, reason) {
            (_, "cancelled", "timeout") => true,
            (_, "cancelled", "customer_request") => p.cancel_sent,
            (Kind::CancelSoon | Kind::CancelLate, _, _) if p.cancel_answered => false,
            (Kind::Plain | Kind::CancelSoon | Kind::CancelLate, "confirmed", _) => true,
            (Kind::Scarce, "confirmed" | "rejected", _) => true,
            (Kind::Ghost, "rejected", _) => true,
            (Kind::Pauper, "confirmed", _)
            | (Kind::Pauper | Kind::Foreign, "cancelled", "payment_failed") => true,
            _ => false,
        };
        if !ok {
            surprises.push(format!("{id} ({:?}) ended {status} ({reason})", p.kind));
        }
    }
    assert!(
        surprises.is_empty(),
        "orders that ended as their kind does not allow:\n  {}",
        surprises.join("\n  ")
    );

    // No confirmed order lost: what was seen confirmed and not cancelled by its customer
    // is still confirmed.
    let cancelled_by_customer: BTreeSet<&str> = placed
        .iter()
        .filter(|p| p.cancel_sent)
        .filter_map(|p| p.order_id.as_deref())
        .collect();
    let unconfirmed: Vec<(&String, Option<&&str>)> = confirmed_seen
        .iter()
        .filter(|id| !cancelled_by_customer.contains(id.as_str()))
        .map(|id| (id, status_of.get(id.as_str())))
        .filter(|(_, s)| *s != Some(&"confirmed"))
        .collect();
    assert!(
        unconfirmed.is_empty(),
        "orders seen confirmed are no longer: {unconfirmed:?}"
    );
    journal.note(format!(
        "{} orders seen confirmed during the run; all still confirmed unless their customer cancelled",
        confirmed_seen.len()
    ));

    for service in Service::ALL {
        journal.count_handled(&stack, service).await;
    }
    journal.note(format!(
        "messages handled over the run (every process): {}",
        journal.handled_summary()
    ));

    // The operator events sent during the database outage waited for it (the consumers
    // paused) and were applied once: none of them, nor anything else, was dead-lettered.
    for service in Service::ALL {
        let dead = journal
            .handled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(service, "dead_lettered"))
            .copied()
            .unwrap_or(0);
        assert_eq!(dead, 0, "{service} dead-lettered messages during the run");
    }
    // (The last of them may still wait in a retry queue: up to 1 + 4 + 16 s.)
    saga_tests::eventually(Duration::from_secs(60), || async {
        let (_, stock) = stack.stock("SKU-PLENTY").await;
        let on_record: i64 = ["available", "reserved", "sold"]
            .iter()
            .map(|k| stock[*k].as_i64().unwrap_or(0))
            .sum();
        let (_, wallet) = stack.wallet("rich-0").await;
        let deposited = wallet["balance"].as_i64().unwrap_or(0)
            + wallet["captured"].as_i64().unwrap_or(0)
            - wallet["refunded"].as_i64().unwrap_or(0);
        if (on_record, deposited) == (PLENTY + OUTAGE_EVENTS, RICH + OUTAGE_EVENTS) {
            Ok(())
        } else {
            Err(format!(
                "SKU-PLENTY adds up to {on_record} (want {}), rich-0's deposits to {deposited} (want {})",
                PLENTY + OUTAGE_EVENTS,
                RICH + OUTAGE_EVENTS
            ))
        }
    })
    .await;
    journal.note(format!(
        "the {OUTAGE_EVENTS} + {OUTAGE_EVENTS} operator events of the outage were retried and applied once each"
    ));

    // Nobody charged twice, nothing left unpublished, nothing left in flight.
    stack.wait_no_double_charge(Duration::from_secs(30)).await;
    journal.note("every wallet's captured − refunded equals its confirmed orders' totals");
    stack.wait_outbox_drained(Duration::from_secs(30)).await;
    journal.note("outbox drained in all three databases");
    let probe = stack.probe().await;
    for service in Service::ALL {
        for queue in [
            service.name().to_owned(),
            format!("{service}.retry.1s"),
            format!("{service}.retry.4s"),
            format!("{service}.retry.16s"),
            format!("{service}.retry.64s"),
        ] {
            probe.wait_depth(&queue, 0, Duration::from_secs(30)).await;
        }
    }
    journal.note("input and retry queues empty");

    // A dead-letter queue may only hold copies of messages that were handled after all
    // (a crash between parking the copy and acking the original leaves both).
    let mut unexpected = Vec::new();
    for service in Service::ALL {
        let parked = probe.peek(&format!("{service}.dlq"), 1000).await;
        for m in &parked {
            let id = m.message_id.clone().unwrap_or_default();
            if !handled_by(&stack, service, &id).await {
                unexpected.push(format!(
                    "{service}.dlq: {id} {:?} {:?} never handled: {}",
                    m.kind,
                    m.error_code(),
                    m.header("x-saga-error")
                ));
            }
        }
        journal.note(format!(
            "{service}.dlq holds {} messages, each handled after all",
            parked.len()
        ));
    }
    probe.close().await;
    assert!(
        unexpected.is_empty(),
        "dead letters that were never handled:\n  {}",
        unexpected.join("\n  ")
    );

    // The operator's check, with the real binary.
    let verify_started = Instant::now();
    let mut runs = 0;
    let verified = loop {
        runs += 1;
        let run = stack.sagactl(&["verify"], &[]).await;
        if run.success() || verify_started.elapsed() > Duration::from_secs(30) {
            break run;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(
        verified.success(),
        "sagactl verify found breaches after {runs} runs:\n{}\n{}",
        verified.stdout,
        verified.stderr
    );
    journal.note(format!(
        "sagactl verify: exit 0 ({runs} run(s)): {}",
        verified.stdout.lines().next().unwrap_or("")
    ));
    for service in Service::ALL {
        assert!(stack.is_running(service), "{service} is not running");
    }
    journal.note("done");
}
