//! Dead letters triaged through a service's own operator endpoints: 100,000 of them grouped
//! by cause, a page listed with a filter, a dry run, a redrive of one group followed to the
//! end of each message (applied, duplicate, back in the DLQ with its reason), a purge behind
//! a confirmation, and one message corrected and replayed, the original removed only once
//! the correction was applied. Every action is in the audit log with the operator's name.

use std::time::Duration;

use events::catalog::StockAdjusted;
use events::{Event, EventType};
use messaging::Envelope;
use saga_tests::auth::token;
use saga_tests::failure_support::BrokerProbe;
use saga_tests::poll::{Poll, eventually, until};
use saga_tests::{Service, Stack, StackOptions};
use serde_json::{Value, json};

/// Dead letters in the big queue, as the issue asks for at least.
const MANY: usize = 100_000;

fn adjustment(sku: &str, delta: i64) -> Envelope {
    let event = Event::StockAdjusted(StockAdjusted {
        sku: sku.to_owned(),
        delta,
    });
    Envelope::wrap(&event, EventType::StockAdjusted.producer(), None)
}

/// An envelope of `OrderCreated` that names `customer`, as a forged copy would.
fn forged_order(customer: &str) -> Envelope {
    let order_id = uuid::Uuid::now_v7();
    let mut e = adjustment("FILLER", 1);
    e.event_type = "OrderCreated".into();
    e.correlation_id = order_id.to_string();
    e.payload = json!({"order_id": order_id, "customer_id": customer, "padding": "x".repeat(300)});
    e
}

/// `GET` with a token for `sub`.
async fn get_as(stack: &Stack, sub: &str, path: &str) -> (reqwest::StatusCode, Value) {
    let auth = format!("Bearer {}", token(sub, &["operator"]));
    stack
        .request(
            Service::Inventory,
            reqwest::Method::GET,
            path,
            &[("authorization", auth.as_str())],
            None,
        )
        .await
}

/// `POST` a JSON body with a token for `sub`.
async fn post_as(
    stack: &Stack,
    sub: &str,
    path: &str,
    body: Value,
) -> (reqwest::StatusCode, Value) {
    let auth = format!("Bearer {}", token(sub, &["operator"]));
    stack
        .post_json(
            Service::Inventory,
            path,
            &[("authorization", auth.as_str())],
            &body,
        )
        .await
}

/// Starts a job and waits until it ended; answers the job.
async fn run_job(stack: &Stack, sub: &str, path: &str, body: Value) -> Value {
    let (status, job) = post_as(stack, sub, path, body).await;
    assert_eq!(status, 202, "{path}: {job}");
    let id = job["id"].as_str().expect("a job id").to_owned();
    eventually(Duration::from_secs(240), || {
        let id = id.clone();
        async move {
            let (status, job) = get_as(stack, sub, &format!("/dlq/jobs/{id}")).await;
            match job["status"].as_str() {
                _ if status != 200 => Poll::Failed(format!("job {id}: {status} {job}")),
                Some("done") => Poll::Ready(job),
                Some("running") => Poll::Pending(format!("job {id} still running: {job}")),
                _ => Poll::Failed(format!("job {id} ended badly: {job}")),
            }
        }
    })
    .await
}

fn group<'a>(summary: &'a Value, cause: &str, t: &str) -> &'a Value {
    summary["groups"]
        .as_array()
        .and_then(|gs| gs.iter().find(|g| g["cause"] == cause && g["type"] == t))
        .unwrap_or_else(|| panic!("no group {cause}/{t} in {summary}"))
}

/// The peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_hundred_thousand_dead_letters_are_triaged_by_cause() {
    let stack = Stack::start(StackOptions::default()).await;
    let dlq = "inventory-svc.dlq";
    // 250 adjustments parked as an old replica would park a version it could not read:
    // 200 never handled, 50 handled before (their redrive is a duplicate).
    let handled: Vec<Envelope> = (0..50).map(|_| adjustment("SKU-TRIAGE", 1)).collect();
    for e in &handled {
        stack.publish_envelope(e).await;
    }
    stack.expect_published_stock("SKU-TRIAGE", 50);
    eventually(stack.options().wait, || async {
        let (_, s) = stack.stock("SKU-TRIAGE").await;
        (s["available"] == 50)
            .then_some(())
            .ok_or(format!("stock {s}"))
    })
    .await;
    let mut parked: Vec<(Envelope, String)> = (0..200)
        .map(|_| (adjustment("SKU-TRIAGE", 1), "unknown_version".to_owned()))
        .collect();
    parked.extend(
        handled
            .into_iter()
            .map(|e| (e, "unknown_version".to_owned())),
    );
    // 100 that are wrong in themselves: they come back.
    parked.extend((0..100).map(|_| {
        let mut e = adjustment("SKU-TRIAGE", 1);
        e.payload = json!({"sku": "not a sku!", "delta": 1});
        (e, "bad_payload".to_owned())
    }));
    // And the bulk: forged orders, 1,000 of them naming one customer.
    let bulk = MANY - parked.len();
    parked.extend((0..bulk).map(|i| {
        let customer = if i % 100 == 0 {
            "bulk-customer"
        } else {
            "someone"
        };
        (forged_order(customer), "forged_producer".to_owned())
    }));
    stack.park_all_in_dlq(Service::Inventory, &parked).await;
    let probe = BrokerProbe::connect(&stack).await;
    probe
        .wait_depth(dlq, MANY as u32, Duration::from_secs(60))
        .await;

    // Grouped by cause, every message counted, without the service holding them.
    let pid = stack.pid(Service::Inventory).expect("inventory-svc runs");
    let rss_before = peak_rss_kib(pid);
    let started = std::time::Instant::now();
    let (status, summary) = get_as(&stack, "olga", "/dlq").await;
    eprintln!(
        "GET /dlq over {MANY} dead letters took {:?}",
        started.elapsed()
    );
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["messages"], MANY, "{}", summary["messages"]);
    assert_eq!(summary["scanned"], MANY);
    assert_eq!(
        group(&summary, "unknown_version", "StockAdjusted")["count"],
        250
    );
    assert_eq!(
        group(&summary, "bad_payload", "StockAdjusted")["count"],
        100
    );
    let forged = group(&summary, "forged_producer", "OrderCreated");
    assert_eq!(forged["count"], bulk);
    assert!(forged["first_seen"].as_str() <= forged["last_seen"].as_str());
    assert_eq!(forged["example"]["cause"], "forged_producer");
    let bytes_parked: usize = MANY * 500;
    let grown_kib = peak_rss_kib(pid).saturating_sub(rss_before);
    eprintln!("inventory-svc's peak memory grew by {} KiB", grown_kib);
    assert!(
        (grown_kib as usize) * 1024 < bytes_parked / 2,
        "reading {MANY} dead letters ({} MiB) grew inventory-svc's peak memory by {} MiB",
        bytes_parked >> 20,
        grown_kib >> 10
    );

    // A filtered page: the count of all that match, one page of them.
    let (status, page) = get_as(
        &stack,
        "olga",
        "/dlq/messages?customer_id=bulk-customer&limit=7",
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["matched"], bulk.div_ceil(100));
    assert_eq!(page["dead_letters"].as_array().map(Vec::len), Some(7));
    let (status, err) = get_as(&stack, "olga", "/dlq/messages?costumer_id=x").await;
    assert_eq!(
        status, 400,
        "a misspelt filter must not list everything: {err}"
    );

    // Dry run, then the redrive of one group, followed to each message's end.
    let only_versions = json!({"cause": "unknown_version", "type": "StockAdjusted"});
    let (status, dry) = post_as(
        &stack,
        "olga",
        "/dlq/redrive",
        json!({"filter": only_versions, "dry_run": true}),
    )
    .await;
    assert_eq!(
        (status.as_u16(), &dry["matched"]),
        (200, &json!(250)),
        "{dry}"
    );
    let job = run_job(
        &stack,
        "olga",
        "/dlq/redrive",
        json!({"filter": only_versions}),
    )
    .await;
    let outcome = &job["outcome"];
    assert_eq!(job["matched"], 250, "{job}");
    assert_eq!(
        (
            &outcome["applied"],
            &outcome["duplicate"],
            &outcome["dead_lettered"],
            &outcome["pending"]
        ),
        (&json!(200), &json!(50), &json!(0), &json!(0)),
        "{job}"
    );
    stack.expect_published_stock("SKU-TRIAGE", 200);
    let (_, stock) = stack.stock("SKU-TRIAGE").await;
    assert_eq!(
        stock["available"], 250,
        "each adjustment applied once: {stock}"
    );

    // The bad ones come back, with why.
    let job = run_job(
        &stack,
        "olga",
        "/dlq/redrive",
        json!({"filter": {"cause": "bad_payload"}}),
    )
    .await;
    let outcome = &job["outcome"];
    assert_eq!(
        (&outcome["applied"], &outcome["dead_lettered"]),
        (&json!(0), &json!(100)),
        "{job}"
    );
    let reason = &outcome["reasons"][0];
    assert_eq!(reason["count"], 100, "{job}");
    assert!(
        reason["error"].as_str().is_some_and(|e| e.contains("sku")),
        "{job}"
    );

    // A purge needs its confirmation; then it deletes exactly what the filter takes.
    let one_customer = json!({"customer_id": "bulk-customer"});
    let (status, refused) = post_as(
        &stack,
        "olga",
        "/dlq/purge",
        json!({"filter": one_customer}),
    )
    .await;
    assert_eq!(
        (status.as_u16(), refused["error"].as_str()),
        (409, Some("confirmation_required")),
        "{refused}"
    );
    let job = run_job(
        &stack,
        "olga",
        "/dlq/purge",
        json!({"filter": one_customer, "confirm": true}),
    )
    .await;
    assert_eq!(job["outcome"]["purged"], bulk.div_ceil(100), "{job}");
    let left = MANY - 250 - bulk.div_ceil(100);
    probe
        .wait_depth(dlq, left as u32, Duration::from_secs(30))
        .await;

    // Who did what.
    let (status, audit) = get_as(&stack, "auditor", "/audit?actor=olga").await;
    assert_eq!(status, 200, "{audit}");
    let actions: Vec<(&str, &str)> = audit["records"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["action"].as_str().unwrap_or("?"),
                r["outcome"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(
        actions,
        vec![("purge", "done"), ("replay", "done"), ("replay", "done")],
        "{audit}"
    );
    assert_eq!(audit["records"][0]["detail"]["filter"], one_customer);
    assert_eq!(audit["records"][0]["result"]["purged"], bulk.div_ceil(100));
    // A redrive's record names the messages it took, so a search by id finds it.
    let redriven = audit["records"][2]["subjects"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(redriven, 250, "{}", audit["records"][2]);
    probe.close().await;
}

#[tokio::test]
async fn an_edited_dead_letter_replaces_its_original_once_applied() {
    let stack = Stack::start(StackOptions::default()).await;
    let dlq = "inventory-svc.dlq";
    let probe = BrokerProbe::connect(&stack).await;
    // A real failure: the service dead-letters an adjustment of a SKU no SKU can be.
    let mut bad = adjustment("SKU-EDIT", 3);
    bad.payload = json!({"sku": "SKU EDIT", "delta": 3});
    stack.publish_envelope(&bad).await;
    probe.wait_depth(dlq, 1, stack.options().wait).await;

    // Bad edits are refused and change nothing.
    let (status, e) = post_as(
        &stack,
        "edith",
        "/dlq/edit",
        json!({"message_id": uuid::Uuid::now_v7(), "payload": {}}),
    )
    .await;
    assert_eq!(status, 404, "{e}");
    let (status, e) = post_as(
        &stack,
        "edith",
        "/dlq/edit",
        json!({"message_id": bad.message_id, "payload": [1]}),
    )
    .await;
    assert_eq!(status, 400, "{e}");

    // A correction that is still wrong: it comes back and the original stays.
    let job = run_job(
        &stack,
        "edith",
        "/dlq/edit",
        json!({"message_id": bad.message_id, "payload": {"sku": "SKU-EDIT", "delta": 0}}),
    )
    .await;
    assert_eq!(
        (
            &job["outcome"]["dead_lettered"],
            &job["outcome"]["original"]
        ),
        (&json!(1), &json!("kept")),
        "{job}"
    );
    probe.wait_depth(dlq, 2, stack.options().wait).await;

    // The right correction: a new message caused by the original, which then goes.
    let job = run_job(
        &stack,
        "edith",
        "/dlq/edit",
        json!({"message_id": bad.message_id, "payload": {"sku": "SKU-EDIT", "delta": 3}}),
    )
    .await;
    let outcome = &job["outcome"];
    assert_eq!(
        (&outcome["applied"], &outcome["original"]),
        (&json!(1), &json!("removed")),
        "{job}"
    );
    assert_eq!(
        outcome["diff"],
        json!([{"path": "/sku", "before": "SKU EDIT", "after": "SKU-EDIT"}])
    );
    let corrected = outcome["corrected_message_id"]
        .as_str()
        .expect("the corrected id")
        .to_owned();
    assert_ne!(corrected, bad.message_id.to_string());
    stack.expect_published_stock("SKU-EDIT", 3);
    let (_, stock) = stack.stock("SKU-EDIT").await;
    assert_eq!(stock["available"], 3, "{stock}");
    let pool = stack.db(Service::Inventory).await;
    let cause: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT causation_id FROM inbox WHERE message_id = $1::uuid")
            .bind(&corrected)
            .fetch_one(&pool)
            .await
            .expect("the corrected message in the inbox");
    assert_eq!(cause, Some(bad.message_id));
    // Only the failed correction is left.
    let left = until(stack.options().wait, || async {
        let (_, page) = get_as(&stack, "edith", "/dlq/messages").await;
        match page["matched"].as_u64() {
            Some(1) => Poll::Ready(page),
            _ => Poll::Pending(format!("{page}")),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(left["dead_letters"][0]["message_id"], json!(bad.message_id));

    // The edits are on record with their diff.
    let (_, audit) = get_as(
        &stack,
        "auditor",
        &format!("/audit?action=edit&subject={}", bad.message_id),
    )
    .await;
    let records = audit["records"].as_array().expect("records");
    assert_eq!(records.len(), 2, "{audit}");
    assert_eq!(records[0]["actor"], "edith");
    assert_eq!(records[0]["detail"]["diff"][0]["path"], "/sku");
    assert_eq!(records[0]["result"]["original"], "removed");
    assert_eq!(records[1]["result"]["original"], "kept");

    // Nobody writes the record but the service's own actions.
    let refused = sqlx::query("UPDATE audit_log SET actor = 'mallory'")
        .execute(&pool)
        .await;
    assert!(refused.is_err_and(|e| e.to_string().contains("append-only")));
    let refused = sqlx::query("DELETE FROM audit_log").execute(&pool).await;
    assert!(refused.is_err_and(|e| e.to_string().contains("append-only")));
    probe.close().await;
}

#[tokio::test]
async fn dead_letter_endpoints_are_for_operators() {
    let stack = Stack::start(StackOptions::default()).await;
    let customer = format!("Bearer {}", token("alice", &["customer"]));
    for path in ["/dlq", "/dlq/messages", "/dlq/jobs", "/audit"] {
        let (status, body) = stack
            .request(
                Service::Payment,
                reqwest::Method::GET,
                path,
                &[("authorization", customer.as_str())],
                None,
            )
            .await;
        assert_eq!(status, 403, "{path}: {body}");
    }
    let (status, body) = stack
        .post_json(
            Service::Order,
            "/dlq/purge",
            &[("authorization", customer.as_str())],
            &json!({"confirm": true}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = stack.get(Service::Order, "/audit?limit=0").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = stack
        .get(Service::Order, "/dlq/messages?since=yesterday")
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = stack.get(Service::Order, "/dlq/jobs/not-a-job").await;
    assert_eq!(status, 404, "{body}");
}
