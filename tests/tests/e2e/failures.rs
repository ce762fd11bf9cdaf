//! The saga when things go wrong: poison messages, operators replaying dead letters, a
//! database that makes handlers fail for a while, a broker that goes away, services killed
//! mid-saga, and housekeeping deleting the rows deduplication relies on. Each test runs its
//! own stack of the three real binaries and checks one behaviour end to end.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use events::catalog::{FundsDeposited, OrderCreated, PaymentDone, StockAdjusted, StockReserved};
use events::{Event, EventType};
use messaging::Envelope;
use saga_tests::failure_support::SETTLED;
use saga_tests::{Service, Stack, StackOptions, StatusCode, eventually, order_request};
use serde_json::{Value, json};
use uuid::Uuid;

fn int(v: &Value, key: &str) -> i64 {
    v[key]
        .as_i64()
        .unwrap_or_else(|| panic!("{key:?} is not an integer in {v}"))
}

/// (available, reserved, sold) of `sku`.
async fn stock_figures(stack: &Stack, sku: &str) -> (i64, i64, i64) {
    let (status, s) = stack.stock(sku).await;
    assert_eq!(status, StatusCode::OK, "GET /stock/{sku}: {s}");
    (int(&s, "available"), int(&s, "reserved"), int(&s, "sold"))
}

/// Waits until `sku` shows `want` as (available, reserved, sold).
async fn wait_stock(stack: &Stack, sku: &str, want: (i64, i64, i64)) {
    eventually(stack.options().wait, || async {
        let got = stock_figures(stack, sku).await;
        if got == want {
            Ok(())
        } else {
            Err(format!(
                "{sku} (available, reserved, sold) = {got:?}, want {want:?}"
            ))
        }
    })
    .await
}

/// A counter of `saga_messages_handled_total` on `service`.
async fn handled(stack: &Stack, service: Service, kind: &str, outcome: &str) -> f64 {
    let mut labels = vec![("outcome", outcome)];
    if !kind.is_empty() {
        labels.push(("type", kind));
    }
    stack
        .metric(service, "saga_messages_handled_total", &labels)
        .await
}

/// Waits until that counter reaches `want`.
async fn wait_handled(stack: &Stack, service: Service, kind: &str, outcome: &str, want: f64) {
    eventually(stack.options().wait, || async {
        let n = handled(stack, service, kind, outcome).await;
        if n >= want {
            Ok(())
        } else {
            Err(format!(
                "{service} handled {n} {kind} with outcome {outcome}, waiting for {want}"
            ))
        }
    })
    .await
}

/// A valid envelope for `event` as JSON, to break on purpose; and its message id.
fn envelope_json(event: &Event) -> (String, Value) {
    let envelope = Envelope::wrap(event, event.event_type().producer(), None);
    let value = serde_json::to_value(&envelope).expect("an envelope serialises");
    (envelope.message_id.to_string(), value)
}

fn adjust(sku: &str, delta: i64) -> Event {
    Event::StockAdjusted(StockAdjusted {
        sku: sku.to_owned(),
        delta,
    })
}

/// A message that can never be handled, where it goes and why.
struct Poison {
    what: &'static str,
    service: Service,
    routing_key: &'static str,
    body: Vec<u8>,
    message_id: String,
    code: &'static str,
}

/// A version newer than the consumer knows is not bad input (contract, "Versions"): a newer
/// replica may be running beside it. The message takes the whole retry ladder, and reaches
/// the DLQ with `unknown_version` only after the last attempt.
#[tokio::test]
async fn a_version_newer_than_the_consumer_knows_takes_the_retry_ladder_before_the_dlq() {
    let stack = Stack::start(StackOptions::default()).await;
    let (id, mut v) = envelope_json(&adjust("SKU-NEXT", 1));
    let newer = EventType::StockAdjusted.version() + 1;
    v["version"] = json!(newer);
    stack
        .publish_bytes("stock.adjusted", v.to_string().into_bytes(), &id)
        .await;
    // Retried, and not dead-lettered meanwhile.
    wait_handled(&stack, Service::Inventory, "", "retried", 2.0).await;
    let probe = stack.probe().await;
    assert_eq!(
        probe.depth("inventory-svc.dlq").await,
        0,
        "version {newer} was dead-lettered before the ladder ended"
    );
    // After the last of its 1 + 4 attempts (about 85 s of delays), the DLQ.
    let ladder = messaging::retry::longest_retry_path() + stack.options().wait;
    probe.wait_depth("inventory-svc.dlq", 1, ladder).await;
    let parked = probe.peek("inventory-svc.dlq", 10).await;
    assert_eq!(parked.len(), 1, "{parked:?}");
    let attempts = messaging::retry::RETRY_DELAYS.len() as i64 + 1;
    let problems = parked[0].dead_letter_problems("unknown_version", "inventory-svc", attempts);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(parked[0].message_id.as_deref(), Some(id.as_str()));
    probe.close().await;
    // Nothing of it was applied.
    assert_eq!(stack.stock("SKU-NEXT").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_with_their_reason_and_the_saga_goes_on() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.deposit("carol", 10_000, "EUR").await;
    stack.seed_stock("SKU-AFTER", 5).await;

    let mut poisons = Vec::new();
    let mut add = |what, service, routing_key, body: Vec<u8>, message_id: String, code| {
        poisons.push(Poison {
            what,
            service,
            routing_key,
            body,
            message_id,
            code,
        })
    };
    let fresh = || Uuid::now_v7().to_string();
    let inventory = Service::Inventory;

    add(
        "a body that is not JSON",
        inventory,
        "order.created",
        b"this is { not JSON".to_vec(),
        fresh(),
        "not_json",
    );
    add(
        "a body that is not UTF-8",
        inventory,
        "stock.adjusted",
        b"\xff\xfe\x00garbage".to_vec(),
        fresh(),
        "not_json",
    );
    add(
        "JSON that is not an envelope",
        inventory,
        "order.created",
        br#"{"hello": "world", "version": 1}"#.to_vec(),
        fresh(),
        "invalid_envelope",
    );
    let (id, mut v) = envelope_json(&adjust("SKU-P", 1));
    v["correlation_id"] = json!("");
    add(
        "an envelope with an empty correlation id",
        inventory,
        "stock.adjusted",
        v.to_string().into_bytes(),
        id,
        "invalid_envelope",
    );
    let (id, mut v) = envelope_json(&adjust("SKU-P", 1));
    v["type"] = json!("OrderShipped");
    add(
        "an unknown type",
        inventory,
        "order.created",
        v.to_string().into_bytes(),
        id,
        "unknown_type",
    );
    let (id, mut v) = envelope_json(&adjust("SKU-P", 1));
    // Older than any version the catalog declares: no release ever wrote it. (A newer one
    // takes the retry ladder first, see below.)
    v["version"] = json!(0);
    add(
        "a version no release ever had",
        inventory,
        "stock.adjusted",
        v.to_string().into_bytes(),
        id,
        "unknown_version",
    );
    let (id, mut v) = envelope_json(&adjust("SKU-P", 1));
    // Valid in every other respect: only the size is wrong.
    v["payload"]["padding"] = json!("x".repeat(300 * 1024));
    add(
        "a message over 256 KiB",
        inventory,
        "stock.adjusted",
        v.to_string().into_bytes(),
        id,
        "too_large",
    );
    let (id, mut v) = envelope_json(&adjust("SKU-P", 1));
    v["payload"]["delta"] = json!(0);
    add(
        "a StockAdjusted with delta 0",
        inventory,
        "stock.adjusted",
        v.to_string().into_bytes(),
        id,
        "invalid_payload",
    );
    let (id, mut v) = envelope_json(&adjust("SKU-P", 1));
    v["payload"]["sku"] = json!("not a sku!");
    add(
        "a StockAdjusted with a malformed SKU",
        inventory,
        "stock.adjusted",
        v.to_string().into_bytes(),
        id,
        "invalid_payload",
    );
    let (id, mut v) = envelope_json(&adjust("SKU-P", 1));
    v["payload"] = json!({"sku": "SKU-P"});
    add(
        "a StockAdjusted without its delta",
        inventory,
        "stock.adjusted",
        v.to_string().into_bytes(),
        id,
        "invalid_payload",
    );
    let (id, v) = envelope_json(&adjust("SKU-NEG", -5));
    add(
        "a StockAdjusted that would make stock negative",
        inventory,
        "stock.adjusted",
        v.to_string().into_bytes(),
        id,
        "negative_stock",
    );
    let payment_done = Event::PaymentDone(PaymentDone {
        order_id: Uuid::now_v7(),
        payment_id: Uuid::now_v7(),
        customer_id: "carol".into(),
        amount: 100,
        currency: "EUR".into(),
    });
    let (id, v) = envelope_json(&payment_done);
    add(
        "an event of a type inventory does not consume (routing key and type disagree)",
        inventory,
        "order.created",
        v.to_string().into_bytes(),
        id,
        "unexpected_event",
    );
    let (id, v) = envelope_json(&Event::FundsDeposited(FundsDeposited {
        customer_id: "carol".into(),
        amount: 500,
        currency: "USD".into(),
    }));
    add(
        "a FundsDeposited in another currency than the wallet's",
        Service::Payment,
        "funds.deposited",
        v.to_string().into_bytes(),
        id,
        "currency_mismatch",
    );
    let (id, v) = envelope_json(&payment_done);
    add(
        "a PaymentDone about an order order-svc does not know",
        Service::Order,
        "payment.done",
        v.to_string().into_bytes(),
        id,
        "unknown_order",
    );

    for p in &poisons {
        stack
            .publish_bytes(p.routing_key, p.body.clone(), &p.message_id)
            .await;
    }

    let probe = stack.probe().await;
    let mut wrong = Vec::new();
    for service in Service::ALL {
        let expected: Vec<&Poison> = poisons.iter().filter(|p| p.service == service).collect();
        let dlq = format!("{service}.dlq");
        probe
            .wait_depth(&dlq, expected.len() as u32, stack.options().wait)
            .await;
        let parked = probe.peek(&dlq, 100).await;
        assert_eq!(parked.len(), expected.len(), "{dlq}: {parked:?}");
        for p in expected {
            let Some(m) = parked
                .iter()
                .find(|m| m.message_id.as_deref() == Some(&p.message_id))
            else {
                wrong.push(format!("{}: not in {dlq}", p.what));
                continue;
            };
            for problem in m.dead_letter_problems(p.code, service.name(), 1) {
                wrong.push(format!("{}: {problem}", p.what));
            }
            if m.body != p.body {
                wrong.push(format!("{}: the body was not kept as it was", p.what));
            }
        }
        // Reading left everything in place (the broker takes the messages back
        // asynchronously once the reading channel is closed).
        probe
            .wait_depth(&dlq, parked.len() as u32, stack.options().wait)
            .await;
    }
    assert!(
        wrong.is_empty(),
        "dead letters not as the contract says:\n  {}",
        wrong.join("\n  ")
    );
    // None of them was retried, none got lost: each service counted exactly its own.
    for service in Service::ALL {
        let n = poisons.iter().filter(|p| p.service == service).count() as f64;
        assert_eq!(
            handled(&stack, service, "", "dead_lettered").await,
            n,
            "{service}"
        );
        assert_eq!(handled(&stack, service, "", "retried").await, 0.0);
    }
    // The poison changed nothing, and every service is healthy and still consuming.
    assert_eq!(stack.stock("SKU-NEG").await.0, StatusCode::NOT_FOUND);
    assert_eq!(stack.stock("SKU-P").await.0, StatusCode::NOT_FOUND);
    let (_, wallet) = stack.wallet("carol").await;
    assert_eq!(
        (wallet["currency"].as_str(), int(&wallet, "balance")),
        (Some("EUR"), 10_000)
    );
    for service in Service::ALL {
        assert_eq!(
            stack.health(service).await,
            Some(StatusCode::OK),
            "{service}"
        );
    }
    let order_id = stack
        .place_order_ok(&order_request("carol", "EUR", &[("SKU-AFTER", 2, 300)]))
        .await;
    stack.wait_for_status(&order_id, "confirmed").await;
    stack.assert_invariants().await;
    probe.close().await;
}

#[tokio::test]
async fn sagactl_dlq_replay_sends_a_dead_letter_back_once_and_purge_empties_the_queue() {
    let stack = Stack::start(StackOptions::default()).await;
    let probe = stack.probe().await;
    let dlq = "inventory-svc.dlq";
    let counts = |inventory: i64, order: i64| {
        BTreeMap::from([
            ("inventory-svc.dlq".to_owned(), inventory),
            ("order-svc.dlq".to_owned(), order),
            ("payment-svc.dlq".to_owned(), 0),
        ])
    };

    // Taking 5 of a SKU nobody stocked yet cannot be done: dead-lettered.
    let take_five = stack.publish(&adjust("SKU-R", -5)).await;
    probe.wait_depth(dlq, 1, stack.options().wait).await;
    assert_eq!(stack.dlq_counts().await, counts(1, 0));
    let shown = stack
        .sagactl_json(&["dlq", "show", "inventory-svc"], &[])
        .await;
    assert_eq!(shown["messages"], 1, "{shown}");
    assert_eq!(
        shown["dead_letters"][0]["message_id"],
        take_five.message_id.to_string()
    );
    assert!(
        shown["dead_letters"][0]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("negative_stock: ")),
        "{shown}"
    );
    // `show` reads without removing.
    probe.wait_depth(dlq, 1, stack.options().wait).await;

    // Once there is stock, the replayed adjustment applies, exactly once.
    stack.seed_stock("SKU-R", 10).await;
    let replayed = stack
        .sagactl_json(&["dlq", "replay", "inventory-svc", "--yes"], &[])
        .await;
    assert_eq!(replayed["matched"], 1, "{replayed}");
    assert_eq!(replayed["job"]["outcome"]["applied"], 1, "{replayed}");
    wait_stock(&stack, "SKU-R", (5, 0, 0)).await;
    assert_eq!(stack.dlq_counts().await, counts(0, 0));

    // The same message again, twice, straight on the bus: the inbox drops both.
    let duplicates_before = handled(&stack, Service::Inventory, "StockAdjusted", "duplicate").await;
    stack.publish_envelope(&take_five).await;
    stack.publish_envelope(&take_five).await;
    wait_handled(
        &stack,
        Service::Inventory,
        "StockAdjusted",
        "duplicate",
        duplicates_before + 2.0,
    )
    .await;
    // And a dead-lettered copy of a message that was handled meanwhile, replayed by id.
    stack
        .park_in_dlq(Service::Inventory, &take_five, "negative_stock")
        .await;
    probe.wait_depth(dlq, 1, stack.options().wait).await;
    let id = take_five.message_id.to_string();
    let replayed = stack
        .sagactl_json(
            &[
                "dlq",
                "replay",
                "inventory-svc",
                "--yes",
                "--message-id",
                &id,
            ],
            &[],
        )
        .await;
    assert_eq!(replayed["job"]["outcome"]["duplicate"], 1, "{replayed}");
    wait_handled(
        &stack,
        Service::Inventory,
        "StockAdjusted",
        "duplicate",
        duplicates_before + 3.0,
    )
    .await;
    assert_eq!(stock_figures(&stack, "SKU-R").await, (5, 0, 0));
    assert_eq!(probe.depth(dlq).await, 0);

    // --edit: the operator fixes the payload on the way back (take 2, not 50), as a new
    // message caused by the dead letter.
    let take_fifty = stack.publish(&adjust("SKU-R", -50)).await;
    probe.wait_depth(dlq, 1, stack.options().wait).await;
    let id = take_fifty.message_id.to_string();
    let editor = r#"sed -i -e 's/"delta": *-50/"delta": -2/'"#;
    let replayed = stack
        .sagactl_json(
            &[
                "dlq",
                "replay",
                "inventory-svc",
                "--message-id",
                &id,
                "--edit",
            ],
            &[("EDITOR", editor)],
        )
        .await;
    assert_eq!(replayed["job"]["outcome"]["applied"], 1, "{replayed}");
    assert_eq!(
        replayed["job"]["outcome"]["original"], "removed",
        "{replayed}"
    );
    wait_stock(&stack, "SKU-R", (3, 0, 0)).await;
    assert_eq!(probe.depth(dlq).await, 0);

    // Purge: three poison messages for inventory and one for order-svc; counts are exact.
    for n in 0..3 {
        stack
            .publish_bytes(
                "stock.adjusted",
                format!("not JSON #{n}").into_bytes(),
                &Uuid::now_v7().to_string(),
            )
            .await;
    }
    let (id, unknown) = envelope_json(&Event::PaymentDone(PaymentDone {
        order_id: Uuid::now_v7(),
        payment_id: Uuid::now_v7(),
        customer_id: "nobody".into(),
        amount: 1,
        currency: "EUR".into(),
    }));
    stack
        .publish_bytes("payment.done", unknown.to_string().into_bytes(), &id)
        .await;
    probe.wait_depth(dlq, 3, stack.options().wait).await;
    probe
        .wait_depth("order-svc.dlq", 1, stack.options().wait)
        .await;
    assert_eq!(stack.dlq_counts().await, counts(3, 1));
    let purged = stack
        .sagactl_json(&["dlq", "purge", "inventory-svc", "--yes"], &[])
        .await;
    assert_eq!(purged["job"]["outcome"]["purged"], 3, "{purged}");
    assert_eq!(stack.dlq_counts().await, counts(0, 1));
    let purged = stack
        .sagactl_json(&["dlq", "purge", "order-svc.dlq", "--yes"], &[])
        .await;
    assert_eq!(purged["job"]["outcome"]["purged"], 1, "{purged}");
    assert_eq!(stack.dlq_counts().await, counts(0, 0));

    // Replaying an empty queue, or a message that is not there, sends nothing.
    let missing = stack
        .sagactl(
            &[
                "dlq",
                "replay",
                "inventory-svc",
                "--message-id",
                &Uuid::now_v7().to_string(),
            ],
            &[],
        )
        .await;
    assert_eq!(missing.code, Some(1), "{missing:?}");
    assert_eq!(stock_figures(&stack, "SKU-R").await, (3, 0, 0));
    probe.close().await;
}

#[tokio::test]
async fn a_transient_database_failure_is_retried_after_a_delay_and_the_saga_completes() {
    let stack = Stack::start(StackOptions::default().env("SAGA_DB_LOCK_TIMEOUT_MS", "300")).await;
    stack.seed_stock("SKU-LOCKED", 10).await;
    stack.deposit("dave", 10_000, "EUR").await;
    let probe = stack.probe().await;

    // Hold the stock row from outside: inventory's reservation waits 300 ms for it, fails,
    // and the message goes to the retry queues.
    let db = stack.db(Service::Inventory).await;
    let mut holder = db.begin().await.expect("BEGIN");
    sqlx::query("SELECT sku FROM stock WHERE sku = 'SKU-LOCKED' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .expect("locking the stock row");
    let order_id = stack
        .place_order_ok(&order_request("dave", "EUR", &[("SKU-LOCKED", 1, 700)]))
        .await;
    // While the row is held, the first attempt fails and the message waits in the 1 s
    // queue; the second fails and it waits in the 4 s one. It is seen in each in turn.
    for queue in ["inventory-svc.retry.1s", "inventory-svc.retry.4s"] {
        probe
            .wait_depth(queue, 1, stack.options().wait + Duration::from_secs(5))
            .await;
    }
    // It is in the 4 s queue now, after exactly two failed attempts: each retry went
    // through a delay queue (a hot loop would have counted many more by now).
    let retried_while_locked = handled(&stack, Service::Inventory, "OrderCreated", "retried").await;
    assert_eq!(retried_while_locked, 2.0);
    let (_, order) = stack.order(&order_id).await;
    assert_eq!(order["status"], "pending", "{order}");
    holder.rollback().await.expect("ROLLBACK");

    let order = stack.wait_for_status(&order_id, "confirmed").await;
    assert_eq!(order["total"], 700);
    let retried = handled(&stack, Service::Inventory, "OrderCreated", "retried").await;
    assert_eq!(
        retried, retried_while_locked,
        "retried again after the lock was released"
    );
    assert_eq!(
        handled(&stack, Service::Inventory, "OrderCreated", "ok").await,
        1.0
    );
    for service in Service::ALL {
        assert_eq!(
            handled(&stack, service, "", "dead_lettered").await,
            0.0,
            "{service}"
        );
    }
    wait_stock(&stack, "SKU-LOCKED", (9, 0, 1)).await;
    stack.assert_invariants().await;
    probe.close().await;
}

#[tokio::test]
async fn the_services_reconnect_to_the_broker_without_a_restart_and_lose_nothing() {
    let stack = Stack::start(StackOptions::default().with_proxy()).await;
    stack.seed_stock("SKU-CUT", 10).await;
    stack.deposit("erin", 10_000, "EUR").await;
    let before = stack
        .place_order_ok(&order_request("erin", "EUR", &[("SKU-CUT", 1, 100)]))
        .await;
    stack.wait_for_status(&before, "confirmed").await;
    // Its OrderConfirmed reached inventory: nothing of it is left to publish.
    wait_stock(&stack, "SKU-CUT", (9, 0, 1)).await;
    let pids: Vec<_> = Service::ALL.iter().map(|s| stack.pid(*s)).collect();

    stack.proxy().cut();
    stack
        .wait_all_health(StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(20))
        .await;
    let (_, health) = stack.get(Service::Order, "/healthz").await;
    assert_eq!(health["database"], "up", "{health}");
    // HTTP still answers, reads and writes alike; the saga waits for the broker.
    let (status, order) = stack.order(&before).await;
    assert_eq!(
        (status, order["status"].as_str()),
        (StatusCode::OK, Some("confirmed"))
    );
    let during = stack
        .place_order_ok(&order_request("erin", "EUR", &[("SKU-CUT", 2, 250)]))
        .await;
    // Operator events published meanwhile wait in the queue (the harness is not cut off).
    stack.publish(&adjust("SKU-CUT", 5)).await;
    stack.expect_published_stock("SKU-CUT", 5);
    let (_, order) = stack.order(&during).await;
    assert_eq!(order["status"], "pending", "{order}");
    assert_eq!(
        stack.unsent_outbox().await.unwrap()[&Service::Order],
        1,
        "OrderCreated waits in the outbox"
    );

    stack.proxy().restore();
    stack
        .wait_all_health(StatusCode::OK, Duration::from_secs(30))
        .await;
    let after: Vec<_> = Service::ALL.iter().map(|s| stack.pid(*s)).collect();
    assert_eq!(pids, after, "no service was restarted");
    let order = stack.wait_for_status(&during, "confirmed").await;
    assert_eq!(order["total"], 500);
    // Nothing lost, nothing twice: every event of the saga is in the history once.
    let wanted = [
        "OrderConfirmed",
        "OrderCreated",
        "PaymentDone",
        "StockReserved",
    ];
    let history = eventually(stack.options().wait, || async {
        let (_, order) = stack.order(&during).await;
        let history = order["history"].as_array().cloned().unwrap_or_default();
        let mut types: Vec<&str> = history.iter().filter_map(|h| h["type"].as_str()).collect();
        types.sort();
        if wanted.iter().all(|w| types.contains(w)) {
            Ok(history)
        } else {
            Err(format!("history so far: {types:?}"))
        }
    })
    .await;
    let mut types: Vec<&str> = history.iter().filter_map(|h| h["type"].as_str()).collect();
    types.sort();
    assert_eq!(types, wanted, "each event once: {history:?}");
    let ids: BTreeSet<&str> = history
        .iter()
        .filter_map(|h| h["message_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 4, "{history:?}");
    // 10 + 5 adjusted, 1 + 2 sold.
    wait_stock(&stack, "SKU-CUT", (12, 0, 3)).await;
    let (_, wallet) = stack.wallet("erin").await;
    assert_eq!(
        (int(&wallet, "balance"), int(&wallet, "captured")),
        (9_400, 600),
        "{wallet}"
    );
    stack.wait_outbox_drained(stack.options().wait).await;
    stack.assert_invariants().await;
}

/// Places an order, retrying with the same idempotency key while order-svc is away (killed
/// and restarting); returns its id.
async fn place_with_retries(stack: &Stack, body: &Value) -> String {
    let key = Uuid::now_v7().to_string();
    eventually(Duration::from_secs(60), || async {
        let headers = [
            ("content-type", "application/json"),
            ("idempotency-key", &key),
        ];
        match stack
            .try_request(
                Service::Order,
                saga_tests::Method::POST,
                "/orders",
                &headers,
                Some(body.to_string().into_bytes()),
            )
            .await
        {
            Ok((StatusCode::ACCEPTED, answer)) => answer["order_id"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("no order id in {answer}")),
            Ok((status, answer)) => Err(format!("POST /orders answered {status} {answer}")),
            Err(e) => Err(format!("POST /orders: {e}")),
        }
    })
    .await
}

/// Most kill rounds per service before the test gives up on hitting work in flight. A
/// batch commits and acks within milliseconds, so the window is narrow: the rounds sweep
/// the kill over the first 160 ms of the orders' flow, twice.
const KILL_ROUNDS: usize = 16;

/// Evidence that killing `victim` hit work in flight, read once the round has settled:
/// the restarted victim was handed deliveries the killed one had taken and not acked
/// (redelivered), or a peer got a second copy of an event the victim had published but
/// not yet marked sent (an inbox duplicate beyond `peer_duplicates_before`).
async fn kill_hit_work(
    stack: &Stack,
    victim: Service,
    peer_duplicates_before: f64,
) -> Option<String> {
    let redelivered = stack
        .metric(victim, "saga_messages_redelivered_total", &[])
        .await;
    let duplicates = peer_duplicates(stack, victim).await - peer_duplicates_before;
    (redelivered + duplicates > 0.0).then(|| {
        format!(
            "{redelivered} deliveries redelivered to {victim}, {duplicates} duplicates at its peers"
        )
    })
}

async fn peer_duplicates(stack: &Stack, victim: Service) -> f64 {
    let mut sum = 0.0;
    for peer in Service::ALL.into_iter().filter(|s| *s != victim) {
        sum += handled(stack, peer, "", "duplicate").await;
    }
    sum
}

#[tokio::test]
async fn killing_each_service_mid_saga_loses_nothing_and_charges_nobody_twice() {
    let stack = Stack::start(StackOptions::default().wait(Duration::from_secs(60))).await;
    let customers = ["kim", "lee", "max"];
    for c in customers {
        stack.deposit(c, 1_000_000, "EUR").await;
    }
    stack.deposit("poor", 150, "EUR").await;
    stack.seed_stock("SKU-CRASH", 10_000).await;
    stack.seed_stock("SKU-RARE", 3).await;

    let mut placed = Vec::new();
    for (n, victim) in Service::ALL.into_iter().enumerate() {
        // Kill and restart the victim while orders flow, round after round, until a kill
        // is seen to have hit work in flight.
        let mut hit = None;
        for round in 0..KILL_ROUNDS {
            let before = peer_duplicates(&stack, victim).await;
            let bodies: Vec<Value> = (0..9)
                .map(|i| match i % 3 {
                    0 => order_request("poor", "EUR", &[("SKU-CRASH", 1, 100)]),
                    1 => order_request(customers[n], "EUR", &[("SKU-RARE", 1, 50)]),
                    _ => order_request(customers[(n + i) % 3], "EUR", &[("SKU-CRASH", 2, 120)]),
                })
                .collect();
            let place_all = async {
                let mut ids = Vec::new();
                for body in &bodies {
                    ids.push(place_with_retries(&stack, body).await);
                }
                ids
            };
            let crash = async {
                // Pacing of the fault, not a wait for a result: the kill lands while the
                // orders above are on their way.
                tokio::time::sleep(Duration::from_millis(20 + 20 * (round % 8) as u64)).await;
                stack.kill(victim);
                stack.start_service(victim).await;
            };
            let (ids, ()) = tokio::join!(place_all, crash);
            placed.extend(ids);
            stack.wait_all_settled(Duration::from_secs(60)).await;
            stack.wait_outbox_drained(stack.options().wait).await;
            hit = kill_hit_work(&stack, victim, before).await;
            if let Some(evidence) = &hit {
                println!("{victim}: round {round}: the kill hit work in flight: {evidence}");
                break;
            }
        }
        assert!(
            hit.is_some(),
            "{KILL_ROUNDS} kills of {victim} under load never hit a delivery or an outbox row in flight"
        );
    }

    let orders = stack.wait_all_settled(Duration::from_secs(60)).await;
    let listed: BTreeSet<&str> = orders
        .iter()
        .filter_map(|o| o["order_id"].as_str())
        .collect();
    for id in &placed {
        assert!(listed.contains(id.as_str()), "order {id} is lost");
    }
    assert_eq!(orders.len(), placed.len(), "an order appeared twice");
    let by_status = |s: &str| orders.iter().filter(|o| o["status"] == s).count();
    assert!(by_status("confirmed") > 0, "{orders:?}");
    assert!(
        by_status("cancelled") + by_status("rejected") > 0,
        "{orders:?}"
    );
    assert!(
        orders
            .iter()
            .all(|o| SETTLED.contains(&o["status"].as_str().unwrap_or("")))
    );

    stack.wait_no_double_charge(stack.options().wait).await;
    stack.wait_outbox_drained(stack.options().wait).await;
    stack.assert_invariants().await;
}

#[tokio::test]
async fn housekeeping_purges_old_rows_and_a_late_redelivery_still_changes_nothing() {
    let stack = Stack::start(
        StackOptions::default()
            .env("SAGA_OUTBOX_RETENTION_SECS", "1")
            .env("SAGA_PURGE_INTERVAL_SECS", "1"),
    )
    .await;
    stack.seed_stock("SKU-OLD", 4).await;
    stack.deposit("finn", 5_000, "EUR").await;
    let order_id = stack
        .place_order_ok(&order_request("finn", "EUR", &[("SKU-OLD", 3, 400)]))
        .await;
    stack.wait_for_status(&order_id, "confirmed").await;
    wait_stock(&stack, "SKU-OLD", (1, 0, 3)).await;
    stack.assert_invariants().await;

    // Sent outbox rows and inbox rows go once past their retention. A service refuses an
    // inbox retention shorter than the retry path, so the inbox's purge runs here with a
    // short one, as a long-running service's would after days.
    let short = messaging::housekeeping::Retention {
        outbox: Duration::from_secs(1),
        inbox: Duration::from_secs(1),
        ..Default::default()
    };
    eventually(Duration::from_secs(20), || async {
        let mut left = Vec::new();
        for s in Service::ALL {
            messaging::housekeeping::purge_once(&stack.db(s).await, &short)
                .await
                .map_err(|e| format!("{s}: purge failed: {e}"))?;
            let outbox = stack.db_count(s, "SELECT count(*) FROM outbox").await?;
            let inbox = stack.db_count(s, "SELECT count(*) FROM inbox").await?;
            if outbox + inbox > 0 {
                left.push(format!("{s}: {outbox} outbox, {inbox} inbox rows"));
            }
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(left.join("; "))
        }
    })
    .await;

    // Now the saga's first two events arrive again, same message ids, as a broker or relay
    // would redeliver them long after: no inbox row to catch them, only the natural keys.
    let (_, order) = stack.order(&order_id).await;
    let history = order["history"].as_array().cloned().unwrap_or_default();
    let message_id = |kind: &str| -> Uuid {
        history
            .iter()
            .find(|h| h["type"] == kind)
            .and_then(|h| h["message_id"].as_str())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no {kind} in the history: {order}"))
    };
    let order_uuid: Uuid = order_id.parse().unwrap();
    let mut created = Envelope::wrap(
        &Event::OrderCreated(OrderCreated {
            order_id: order_uuid,
            customer_id: "finn".into(),
            items: vec![events::catalog::OrderItem {
                sku: "SKU-OLD".into(),
                quantity: 3,
                unit_price: 400,
            }],
            total: events::catalog::Money::new(1200, "EUR"),
        }),
        "order-svc",
        None,
    );
    created.message_id = message_id("OrderCreated");
    let mut reserved = Envelope::wrap(
        &Event::StockReserved(StockReserved {
            order_id: order_uuid,
            customer_id: "finn".into(),
            items: vec![events::catalog::StockItem {
                sku: "SKU-OLD".into(),
                quantity: 3,
            }],
            total: events::catalog::Money::new(1200, "EUR"),
        }),
        "inventory-svc",
        Some(created.message_id),
    );
    reserved.message_id = message_id("StockReserved");
    let (_, wallet_before) = stack.wallet("finn").await;
    stack.publish_envelope(&created).await;
    stack.publish_envelope(&reserved).await;

    // Handled as new messages (their inbox rows were gone), yet nothing moved.
    wait_handled(&stack, Service::Inventory, "OrderCreated", "ok", 2.0).await;
    wait_handled(&stack, Service::Payment, "StockReserved", "ok", 2.0).await;
    wait_handled(&stack, Service::Order, "StockReserved", "ok", 2.0).await;
    assert_eq!(stock_figures(&stack, "SKU-OLD").await, (1, 0, 3));
    let (_, wallet) = stack.wallet("finn").await;
    assert_eq!(wallet, wallet_before);
    assert_eq!(
        (int(&wallet, "balance"), int(&wallet, "captured")),
        (3_800, 1_200)
    );
    let (_, again) = stack.order(&order_id).await;
    assert_eq!(again["status"], "confirmed");
    assert_eq!(
        again["history"], order["history"],
        "a redelivered event is not history"
    );
    for service in Service::ALL {
        assert_eq!(
            handled(&stack, service, "", "dead_lettered").await,
            0.0,
            "{service}"
        );
    }
    stack.assert_invariants().await;
}
