//! A steady load of orders while a test breaks the infrastructure under it, a watcher that
//! notes when orders get confirmed (to measure how long each fault stalled the saga), and
//! the checks that must hold afterwards: no accepted order lost, every order terminal and
//! as expected, nobody charged twice, every invariant of `sagactl verify`.
//!
//! Used by the failover tests (broker cluster, database standby), whose faults differ but
//! whose promise is the same.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::stack::retry_after;
use crate::{Method, Service, Stack, StatusCode, order_request};

/// The services' input queues, each with a dead-letter queue `<name>.dlq`.
pub const INPUT_QUEUES: [&str; 3] = ["order-svc", "inventory-svc", "payment-svc"];

/// Orders placed per second.
pub const ORDERS_PER_SECOND: u64 = 5;
/// Long enough that no order is timed out by a failover: every plain order must confirm.
pub const ORDER_DEADLINE_SECS: f64 = 120.0;
const CUSTOMERS: u64 = 4;
const SKU: &str = "SKU-C";
/// Every `GHOST_EVERY`-th order asks for a SKU nobody stocks, and is rejected.
const GHOST_EVERY: u64 = 8;
/// How long one order keeps retrying its POST (same idempotency key) while a fault lasts.
const PLACE_DEADLINE: Duration = Duration::from_secs(60);

/// Prints what happened when, relative to the start of the test.
pub struct Journal {
    started: Instant,
}

impl Default for Journal {
    fn default() -> Self {
        Journal {
            started: Instant::now(),
        }
    }
}

impl Journal {
    pub fn note(&self, what: impl AsRef<str>) {
        println!(
            "[{:>6.1}s] {}",
            self.started.elapsed().as_secs_f64(),
            what.as_ref()
        );
    }
}

/// One order of the load: its id once accepted, and whether it should confirm.
pub struct Placed {
    pub order_id: Option<String>,
    pub ghost: bool,
    /// POSTs that failed (5xx or no answer) before one was accepted.
    pub failed_attempts: u32,
    /// POSTs shed (503 with `Retry-After`: order-svc over its backlog bound) before one
    /// was accepted; each waited as told and was sent again with the same key.
    pub shed_attempts: u32,
}

/// The stock and the wallets the load draws on.
pub async fn seed(stack: &Stack) {
    stack.seed_stock(SKU, 1_000_000).await;
    for c in 0..CUSTOMERS {
        stack
            .deposit(&format!("cust-{c}"), 100_000_000, "EUR")
            .await;
    }
}

/// The `n`-th order of the load, and whether it is a ghost (asks for a SKU nobody stocks:
/// it must be rejected; every other one must confirm).
pub fn order_body(n: u64) -> (serde_json::Value, bool) {
    let ghost = n % GHOST_EVERY == GHOST_EVERY - 1;
    let sku = if ghost { "SKU-GHOST" } else { SKU };
    let body = order_request(&format!("cust-{}", n % CUSTOMERS), "EUR", &[(sku, 1, 100)]);
    (body, ghost)
}

async fn place_one(stack: &Stack, n: u64) -> Placed {
    let (body, ghost) = order_body(n);
    let body = body.to_string().into_bytes();
    // The same key on every attempt: a POST whose answer was lost is not a second order.
    let key = Uuid::now_v7().to_string();
    let headers = [
        ("content-type", "application/json"),
        ("idempotency-key", key.as_str()),
    ];
    let started = Instant::now();
    let mut placed = Placed {
        order_id: None,
        ghost,
        failed_attempts: 0,
        shed_attempts: 0,
    };
    while started.elapsed() < PLACE_DEADLINE {
        match stack
            .try_request_with_headers(
                Service::Order,
                Method::POST,
                "/orders",
                &headers,
                Some(body.clone()),
            )
            .await
        {
            Ok((StatusCode::ACCEPTED, _, answer)) => {
                placed.order_id = answer["order_id"].as_str().map(str::to_owned);
                break;
            }
            // 408: the request outlived the service's 10 s limit (waiting for a database
            // being failed over, say). Not bad input: sent again below, with the same key.
            Ok((status, _, answer))
                if status.is_client_error() && status != StatusCode::REQUEST_TIMEOUT =>
            {
                panic!("POST /orders answered {status} {answer}")
            }
            answer => {
                // A 503 with Retry-After is order-svc shedding load, not a fault: the order
                // waits as told and is placed again with the same key.
                let shed = answer
                    .ok()
                    .filter(|(status, _, _)| *status == StatusCode::SERVICE_UNAVAILABLE)
                    .and_then(|(_, answer_headers, _)| retry_after(&answer_headers));
                let wait = match shed {
                    Some(wait) => {
                        placed.shed_attempts += 1;
                        wait.min(Duration::from_secs(5))
                    }
                    None => {
                        placed.failed_attempts += 1;
                        Duration::from_millis(250)
                    }
                };
                tokio::time::sleep(wait).await;
            }
        }
    }
    placed
}

/// Calls `place(0)`, `place(1)`, … `per_second` times a second until `stop`, each running
/// concurrently with the next, then waits for those in flight; returns what they returned.
pub async fn at_steady_rate<T, Fut: Future<Output = T>>(
    per_second: u64,
    stop: &CancellationToken,
    place: impl Fn(u64) -> Fut,
) -> Vec<T> {
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / per_second.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight = FuturesUnordered::new();
    let mut done = Vec::new();
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                in_flight.push(place(n));
                n += 1;
            }
            Some(placed) = in_flight.next(), if !in_flight.is_empty() => done.push(placed),
        }
    }
    while let Some(placed) = in_flight.next().await {
        done.push(placed);
    }
    done
}

/// Runs the load and the confirmation watcher while `faults` runs; stops both when it
/// returns the faults it caused (what, when).
pub async fn under_load(
    stack: &Stack,
    faults: impl Future<Output = Vec<(String, Instant)>>,
    journal: &Journal,
) -> (Vec<Placed>, Progress, Vec<(String, Instant)>) {
    let stop = CancellationToken::new();
    let progress = Mutex::new(Progress::default());
    let (placed, (), faults) = tokio::join!(
        at_steady_rate(ORDERS_PER_SECOND, &stop, |n| place_one(stack, n)),
        watch_confirmed(stack, &stop, &progress),
        async {
            let faults = faults.await;
            stop.cancel();
            faults
        }
    );
    journal.note(format!("load stopped after {} orders", placed.len()));
    let progress = progress.into_inner().unwrap_or_else(|e| e.into_inner());
    (placed, progress, faults)
}

/// Starts a fixture that takes seconds to start (a cluster, a pair of servers) off the
/// async threads, runs `run` with it under `deadline`, and drops the fixture, whose `Drop`
/// removes what it started, whatever happened.
pub async fn with_fixture<T, Fut>(
    start: fn() -> T,
    deadline: Duration,
    run: impl FnOnce(Arc<T>) -> Fut,
) where
    T: Send + Sync + 'static,
    Fut: Future<Output = ()>,
{
    let fixture = Arc::new(
        tokio::task::spawn_blocking(start)
            .await
            .unwrap_or_else(|e| panic!("starting the fixture panicked: {e}")),
    );
    let outcome = tokio::time::timeout(deadline, run(fixture.clone())).await;
    drop(fixture);
    if outcome.is_err() {
        panic!("the run took over {deadline:?}; abandoned");
    }
}

/// Runs a blocking operation on a fixture (a script that takes seconds) off the async
/// threads, so the load and the watcher keep going meanwhile.
pub async fn blocking<T: Send + Sync + 'static, R: Send + 'static>(
    fixture: &Arc<T>,
    f: impl FnOnce(&T) -> R + Send + 'static,
) -> R {
    let fixture = fixture.clone();
    tokio::task::spawn_blocking(move || f(&fixture))
        .await
        .unwrap_or_else(|e| panic!("a blocking operation panicked: {e}"))
}

/// When new orders were seen confirmed, and which.
#[derive(Default)]
pub struct Progress {
    confirmations: Vec<Instant>,
    seen: BTreeSet<String>,
}

impl Progress {
    /// The longest time without a new confirmation that overlaps `[at, at + window]`: the
    /// stall a fault at `at` caused (the watcher's resolution is a quarter second).
    pub fn stall_after(&self, at: Instant, window: Duration) -> Duration {
        self.confirmations
            .windows(2)
            .filter(|p| p[1] >= at && p[0] <= at + window)
            .map(|p| p[1] - p[0])
            .max()
            // No two confirmations in the window: no gap to report.
            .unwrap_or(Duration::ZERO)
    }

    /// How many times new confirmations were seen between `from` and `to`.
    pub fn confirmations_between(&self, from: Instant, to: Instant) -> usize {
        self.confirmations
            .iter()
            .filter(|t| **t >= from && **t <= to)
            .count()
    }

    /// The usual (median) gap between confirmations before `before`.
    pub fn usual_gap(&self, before: Instant) -> Duration {
        let mut gaps: Vec<Duration> = self
            .confirmations
            .windows(2)
            .filter(|p| p[1] < before)
            .map(|p| p[1] - p[0])
            .collect();
        gaps.sort();
        gaps.get(gaps.len() / 2).copied().unwrap_or(Duration::ZERO)
    }
}

/// Four times a second until `stop`, the orders order-svc reports confirmed.
pub async fn watch_confirmed(stack: &Stack, stop: &CancellationToken, progress: &Mutex<Progress>) {
    while !stop.is_cancelled() {
        if let Ok(Ok(confirmed)) = tokio::time::timeout(
            Duration::from_secs(5),
            stack.try_list_orders(Some("confirmed")),
        )
        .await
        {
            let now = Instant::now();
            let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
            let mut new = false;
            for o in &confirmed {
                if let Some(id) = o["order_id"].as_str() {
                    new |= p.seen.insert(id.to_owned());
                }
            }
            if new {
                p.confirmations.push(now);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// After the load: every accepted order settled as expected (plain ones confirmed, ghost
/// ones rejected), no order nobody placed, none seen confirmed that is not any more,
/// nobody charged twice, every invariant holds and `sagactl verify` (with `sagactl_env`)
/// agrees.
pub async fn assert_nothing_lost(
    stack: &Stack,
    placed: &[Placed],
    progress: &Progress,
    sagactl_env: &[(&str, &str)],
    journal: &Journal,
) {
    let orders = stack.wait_all_settled(Duration::from_secs(90)).await;
    let status_of: BTreeMap<String, String> = orders
        .iter()
        .map(|o| {
            (
                o["order_id"].as_str().unwrap_or("?").to_owned(),
                o["status"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    let unanswered = placed.iter().filter(|p| p.order_id.is_none()).count();
    assert_eq!(
        unanswered, 0,
        "POST /orders never accepted within {PLACE_DEADLINE:?}"
    );
    let wrong: Vec<String> = placed
        .iter()
        .filter_map(|p| {
            // Every order was answered (asserted above).
            let id = p.order_id.as_deref()?;
            let want = if p.ghost { "rejected" } else { "confirmed" };
            match status_of.get(id) {
                Some(got) if got == want => None,
                got => Some(format!("{id}: {got:?}, expected {want}")),
            }
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "orders lost or ended wrong:\n  {}",
        wrong.join("\n  ")
    );
    assert_eq!(
        orders.len(),
        placed.len(),
        "orders that nobody placed exist"
    );
    let vanished: Vec<&String> = progress
        .seen
        .iter()
        .filter(|id| status_of.get(*id).map(String::as_str) != Some("confirmed"))
        .collect();
    assert!(
        vanished.is_empty(),
        "orders seen confirmed are no longer: {vanished:?}"
    );
    journal.note(format!(
        "all {} orders terminal as expected ({} POSTs repeated during faults, {} shed)",
        orders.len(),
        placed.iter().map(|p| p.failed_attempts).sum::<u32>(),
        placed.iter().map(|p| p.shed_attempts).sum::<u32>()
    ));
    stack.wait_no_double_charge(Duration::from_secs(30)).await;
    stack.assert_invariants().await;
    let expected = stack.verify_expectations();
    let mut args = vec!["verify", "--settle", "30"];
    args.extend(expected.iter().map(String::as_str));
    let verify = stack.sagactl(&args, sagactl_env).await;
    assert!(verify.success(), "sagactl {args:?} failed: {verify:?}");
    journal.note(
        "nobody charged twice; every invariant holds; sagactl verify clean, with the stock \
         and deposits published",
    );
}

/// Starts a stack whose services reach the broker at `urls` (the nodes of a cluster, comma
/// separated), with an order deadline no broker fault reaches, and seeds it.
pub async fn stack_on_broker(urls: &str, journal: &Journal) -> Stack {
    let stack = Stack::start(
        crate::StackOptions::default()
            .broker(urls)
            .deadline_secs(ORDER_DEADLINE_SECS)
            .wait(Duration::from_secs(60)),
    )
    .await;
    seed(&stack).await;
    journal.note("services up on the cluster; stock and wallets seeded");
    stack
}

/// Starts a stack whose services use database servers of the test's own, `url(database)`
/// being `SAGA_<S>_DATABASE_URL` for the contract's database name (`orders`, `inventory`,
/// `payments`), with an order deadline no failover reaches, and seeds it.
pub async fn stack_on_own_databases(url: impl Fn(&str) -> String, journal: &Journal) -> Stack {
    let mut options = crate::StackOptions::default()
        .deadline_secs(ORDER_DEADLINE_SECS)
        .wait(Duration::from_secs(60));
    for (service, database) in [
        (Service::Order, "orders"),
        (Service::Inventory, "inventory"),
        (Service::Payment, "payments"),
    ] {
        options = options.env(
            format!("SAGA_{}_DATABASE_URL", service.env_prefix()),
            url(database),
        );
    }
    let stack = Stack::start(options).await;
    seed(&stack).await;
    journal.note("services up on the primary; stock and wallets seeded");
    stack
}

/// Everything a database failover test checks after its load ([`assert_nothing_lost`],
/// no dead letter), then the stalls of its faults.
pub async fn assert_rode_through_database_faults(
    stack: &Stack,
    (placed, progress, faults): (Vec<Placed>, Progress, Vec<(String, Instant)>),
    journal: &Journal,
) {
    assert_nothing_lost(stack, &placed, &progress, &[], journal).await;
    assert_dead_letter_queues_empty(stack).await;
    journal.note("every dead-letter queue empty");
    report_stalls(&progress, &faults, journal);
}

/// No service's dead-letter queue holds a message: every delivery that failed during the
/// faults was retried until handled, none given up on.
pub async fn assert_dead_letter_queues_empty(stack: &Stack) {
    let probe = stack.probe().await;
    for s in Service::ALL {
        let dlq = format!("{s}.dlq");
        assert_eq!(probe.depth(&dlq).await, 0, "{dlq} holds messages");
    }
    probe.close().await;
}

/// After broker faults: what [`assert_nothing_lost`] checks, and nothing waits in an outbox
/// and no delivery was dead-lettered (an outage is no reason to give up on a message);
/// prints how many copies the inboxes absorbed.
pub async fn assert_clean_after_broker_faults(
    stack: &Stack,
    placed: &[Placed],
    progress: &Progress,
    sagactl_env: &[(&str, &str)],
    journal: &Journal,
) {
    assert_nothing_lost(stack, placed, progress, sagactl_env, journal).await;
    stack.wait_outbox_drained(Duration::from_secs(30)).await;
    assert_dead_letter_queues_empty(stack).await;
    journal.note("outboxes drained, dead-letter queues empty");

    let mut duplicates = Vec::new();
    for service in Service::ALL {
        let n = stack
            .metric(
                service,
                "saga_messages_handled_total",
                &[("outcome", "duplicate")],
            )
            .await;
        duplicates.push(format!("{service} {n}"));
    }
    journal.note(format!(
        "copies absorbed by the inboxes (redeliveries, republished outbox rows): {}",
        duplicates.join(", ")
    ));
}

/// An event as a service's outbox holds it: message id, type, saga (correlation id).
type Emitted = (Uuid, String, String);

/// Each event applied once: no saga has two events of one type (a decision taken twice, by
/// two replicas, say), and every event a service emitted is in the inbox of each service
/// that consumes its type, once (the inbox holds a message once per consumer), and nothing
/// else is but what the operator published (the stock and the deposits). Run at rest.
pub async fn assert_each_event_applied_once(stack: &Stack, journal: &Journal) {
    let mut emitted: Vec<Emitted> = Vec::new();
    for s in Service::ALL {
        let pool = stack.db(s).await;
        let rows: Vec<Emitted> =
            sqlx::query_as("SELECT message_id, event_type, correlation_id FROM outbox ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap_or_else(|e| panic!("reading {s}'s outbox: {e}"));
        pool.close().await;
        emitted.extend(rows);
    }
    let mut per_saga: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (_, event_type, saga) in &emitted {
        *per_saga.entry((saga, event_type)).or_default() += 1;
    }
    let twice: Vec<String> = per_saga
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|((saga, event_type), n)| format!("{event_type} {n} times for {saga}"))
        .collect();
    assert!(
        twice.is_empty(),
        "events emitted more than once for one saga:\n  {}",
        twice.join("\n  ")
    );
    let mut delivered = 0;
    for topology in sagactl::subscriptions::saga_services() {
        let service = Service::ALL
            .into_iter()
            .find(|s| s.name() == topology.service)
            .unwrap_or_else(|| panic!("{} is not a service of the stack", topology.service));
        let expected: BTreeSet<Uuid> = emitted
            .iter()
            .filter(|(_, t, _)| topology.consumes.iter().any(|c| c.name() == t))
            .map(|(id, _, _)| *id)
            .collect();
        let pool = stack.db(service).await;
        let inbox: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT message_id, producer FROM inbox WHERE producer <> $1")
                .bind(events::EventType::OPERATOR)
                .fetch_all(&pool)
                .await
                .unwrap_or_else(|e| panic!("reading {service}'s inbox: {e}"));
        pool.close().await;
        let taken: BTreeSet<Uuid> = inbox.iter().map(|(id, _)| *id).collect();
        assert_eq!(taken.len(), inbox.len(), "{service} took a message twice");
        let missing: Vec<&Uuid> = expected.difference(&taken).collect();
        let unexpected: Vec<&Uuid> = taken.difference(&expected).collect();
        assert!(
            missing.is_empty() && unexpected.is_empty(),
            "{service}'s inbox misses {} events it consumes ({missing:?}) and holds {} that no \
             service emitted for it ({unexpected:?})",
            missing.len(),
            unexpected.len()
        );
        delivered += taken.len();
    }
    journal.note(format!(
        "each of {} events emitted once per saga and type, and taken once by each of its \
         consumers ({delivered} deliveries)",
        emitted.len()
    ));
}

/// Prints the stall after each fault against the usual gap between confirmations.
pub fn report_stalls(progress: &Progress, faults: &[(String, Instant)], journal: &Journal) {
    let first = faults.first().map(|(_, t)| *t).unwrap_or_else(Instant::now);
    journal.note(format!(
        "usual gap between confirmations before the faults: {:.2}s",
        progress.usual_gap(first).as_secs_f64()
    ));
    for (what, at) in faults {
        journal.note(format!(
            "stall after {what}: {:.2}s without a new confirmation",
            progress
                .stall_after(*at, Duration::from_secs(15))
                .as_secs_f64()
        ));
    }
}
