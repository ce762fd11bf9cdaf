//! The operator's triage with the real `sagactl` binary against a running stack:
//! `sagactl stuck list` shows the open sagas oldest first with the participant each waits
//! on (payment-svc or inventory-svc stopped so that orders wait on it), filters and pages
//! them, and `sagactl stuck cancel` cancels a filtered set one order at a time with a line
//! per order, safely again; `sagactl find` finds a saga by its order id, customer, SKU,
//! payment id and message id, a dead letter by its message id and payload, reading no
//! more dead letters than it is allowed to, and the audit record of a purge by hand;
//! `sagactl dlq` groups, counts, redrives, edits and purges dead letters through their
//! service, and `sagactl audit` lists who did it.

use events::Event;
use events::catalog::StockAdjusted;
use saga_tests::{Service, Stack, StackOptions, order_request};
use serde_json::{Value, json};

/// The `field` of every entry of the list `key` of `v`.
fn each(v: &Value, key: &str, field: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("no list {key} in {v}"))
        .iter()
        .map(|e| e[field].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// A stack with two orders waiting on payment-svc (stopped after inventory reserved their
/// stock) and one, placed later, waiting on inventory-svc (stopped too), and one confirmed
/// order before them all; returns the waiting ones, oldest first.
pub(crate) async fn stack_with_stuck_sagas() -> (Stack, [String; 3]) {
    let stack = Stack::start(StackOptions::default().deadline_secs(600.0)).await;
    stack.seed_stock("BOOK", 10).await;
    stack.deposit("alice", 10_000, "EUR").await;
    stack.deposit("bob", 10_000, "EUR").await;
    let done = stack
        .place_order_ok(&order_request("alice", "EUR", &[("BOOK", 1, 100)]))
        .await;
    stack.wait_for_status(&done, "confirmed").await;

    stack.kill(Service::Payment);
    let mut on_payment = Vec::new();
    for _ in 0..2 {
        let id = stack
            .place_order_ok(&order_request("alice", "EUR", &[("BOOK", 1, 100)]))
            .await;
        stack.wait_for_status(&id, "reserved").await;
        on_payment.push(id);
    }
    stack.kill(Service::Inventory);
    let on_inventory = stack
        .place_order_ok(&order_request("bob", "EUR", &[("BOOK", 2, 100)]))
        .await;
    let [a, b] = <[String; 2]>::try_from(on_payment).unwrap_or_else(|v| panic!("{v:?}"));
    (stack, [a, b, on_inventory])
}

#[tokio::test]
async fn stuck_lists_open_sagas_with_what_they_wait_on_and_cancels_a_filtered_set() {
    let (stack, [first, second, pending]) = stack_with_stuck_sagas().await;

    let all = stack.sagactl_json(&["stuck", "list"], &[]).await;
    assert_eq!(
        each(&all, "sagas", "order_id"),
        [first.as_str(), second.as_str(), pending.as_str()]
    );
    assert_eq!(
        each(&all, "sagas", "waiting_on"),
        ["payment-svc", "payment-svc", "inventory-svc"]
    );
    assert_eq!(
        each(&all, "sagas", "status"),
        ["reserved", "reserved", "pending"]
    );
    assert_eq!(
        each(&all, "sagas", "last_event"),
        ["StockReserved", "StockReserved", "OrderCreated"]
    );
    assert_eq!(all["sagas"][0]["page"], format!("/orders/{first}"));
    assert_eq!(
        (all["total"].as_u64(), all["complete"].as_bool()),
        (Some(3), Some(true))
    );

    // Filters by participant, status and age; pages.
    let on_payment = stack
        .sagactl_json(&["stuck", "list", "--waiting-on", "payment-svc"], &[])
        .await;
    assert_eq!(
        each(&on_payment, "sagas", "order_id"),
        [first.as_str(), second.as_str()]
    );
    let by_status = stack
        .sagactl_json(&["stuck", "list", "--status", "pending"], &[])
        .await;
    assert_eq!(each(&by_status, "sagas", "order_id"), [pending.as_str()]);
    let page = stack
        .sagactl_json(&["stuck", "list", "--limit", "1", "--offset", "1"], &[])
        .await;
    assert_eq!(each(&page, "sagas", "order_id"), [second.as_str()]);
    assert_eq!(page["total"], 3);
    let old = stack
        .sagactl_json(&["stuck", "list", "--older-than", "1d"], &[])
        .await;
    assert_eq!(
        (old["total"].as_u64(), each(&old, "sagas", "order_id").len()),
        (Some(0), 0)
    );
    // The table names each saga's participant.
    let table = stack.sagactl(&["stuck", "list"], &[]).await;
    assert!(table.success(), "{table:?}");
    let row = table.stdout.lines().find(|l| l.starts_with(&pending));
    assert!(
        row.is_some_and(|r| r.contains("pending") && r.contains("inventory-svc")),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.contains("1 to 3 of 3 open sagas"),
        "{}",
        table.stdout
    );

    // Bad input says what to write.
    let bad = stack
        .sagactl(&["stuck", "list", "--older-than", "5w"], &[])
        .await;
    assert_eq!(bad.code, Some(2), "{bad:?}");
    assert!(bad.stderr.contains("use s, m, h or d"), "{bad:?}");

    // A filtered set is cancelled only when confirmed; without a terminal, --yes says so.
    let unconfirmed = stack
        .sagactl(&["stuck", "cancel", "--waiting-on", "payment-svc"], &[])
        .await;
    assert_eq!(unconfirmed.code, Some(1), "{unconfirmed:?}");
    assert!(unconfirmed.stderr.contains("add --yes"), "{unconfirmed:?}");
    assert_eq!(stack.order(&first).await.1["status"], "reserved");

    let cancelled = stack
        .sagactl(
            &["stuck", "cancel", "--waiting-on", "payment-svc", "--yes"],
            &[],
        )
        .await;
    assert!(cancelled.success(), "{cancelled:?}");
    let lines: Vec<&str> = cancelled.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!("[1/2] {first} cancelled").as_str(),
            format!("[2/2] {second} cancelled").as_str(),
            "2 cancelled, 0 already closed, 0 failed",
        ]
    );
    for id in [&first, &second] {
        stack.wait_for_status(id, "cancelled").await;
    }
    // Again: nothing left to do, and no error.
    let again = stack.sagactl_json(&["stuck", "cancel", &first], &[]).await;
    assert_eq!(
        (
            again["cancelled"].as_u64(),
            again["already_closed"].as_u64()
        ),
        (Some(0), Some(1))
    );
    let left = stack.sagactl_json(&["stuck", "list"], &[]).await;
    assert_eq!(each(&left, "sagas", "order_id"), [pending.as_str()]);

    // The last one, by its status; then the services come back and settle every saga.
    let last = stack
        .sagactl_json(&["stuck", "cancel", "--status", "pending", "--yes"], &[])
        .await;
    assert_eq!(each(&last, "orders", "order_id"), [pending.as_str()]);
    assert_eq!(last["cancelled"], 1);
    stack.start_service(Service::Inventory).await;
    stack.start_service(Service::Payment).await;
    for id in [&first, &second, &pending] {
        let order = stack.wait_for_status(id, "cancelled").await;
        assert_eq!(order["reason"], "customer_request", "{order}");
    }
    stack.assert_invariants().await;
    let none = stack.sagactl_json(&["stuck", "list"], &[]).await;
    assert_eq!(none["total"], 0, "{none}");
}

#[tokio::test]
async fn find_names_every_saga_and_dead_letter_that_holds_an_id() {
    let stack = Stack::start(StackOptions::default()).await;
    let probe = stack.probe().await;
    stack.seed_stock("MUG", 5).await;
    stack.deposit("carol", 5_000, "EUR").await;
    let order = stack
        .place_order_ok(&order_request("carol", "EUR", &[("MUG", 1, 700)]))
        .await;
    let confirmed = stack.wait_for_status(&order, "confirmed").await;
    let reserved_message = confirmed["history"]
        .as_array()
        .and_then(|h| h.iter().find(|e| e["type"] == "StockReserved"))
        .and_then(|e| e["message_id"].as_str())
        .unwrap_or_else(|| panic!("no StockReserved in {confirmed}"))
        .to_owned();
    let (_, payment) = stack
        .get(Service::Payment, &format!("/payments/{order}"))
        .await;
    let payment_id = payment["payment_id"]
        .as_str()
        .expect("a payment id")
        .to_owned();
    // Taking stock of a SKU nobody stocked is dead-lettered.
    let dlq = "inventory-svc.dlq";
    let ghost = stack
        .publish(&Event::StockAdjusted(StockAdjusted {
            sku: "GHOST".to_owned(),
            delta: -5,
        }))
        .await;
    let ghost_id = ghost.message_id.to_string();
    probe.wait_depth(dlq, 1, stack.options().wait).await;

    // A saga by each of its ids, with the field that named it.
    for (id, field) in [
        (order.as_str(), "order_id"),
        ("carol", "customer_id"),
        ("MUG", "sku"),
        (payment_id.as_str(), "payment_id"),
        (reserved_message.as_str(), "message_id"),
    ] {
        let found = stack.sagactl_json(&["find", id], &[]).await;
        let sagas = &found["sagas"];
        assert_eq!(
            each(sagas, "matches", "order_id"),
            [order.as_str()],
            "{id}: {found}"
        );
        assert_eq!(
            sagas["matches"][0]["matched"],
            serde_json::json!([field]),
            "{found}"
        );
        assert!(
            each(&found["dead_letters"], "matches", "message_id").is_empty(),
            "{found}"
        );
    }

    // A dead letter by its payload's SKU and by its message id; it stays in its queue.
    for (id, field) in [("GHOST", "sku"), (ghost_id.as_str(), "message_id")] {
        let found = stack.sagactl_json(&["find", id], &[]).await;
        let letters = &found["dead_letters"];
        assert_eq!(
            each(letters, "matches", "message_id"),
            [ghost_id.as_str()],
            "{found}"
        );
        assert_eq!(letters["matches"][0]["dlq"], dlq, "{found}");
        let matched = letters["matches"][0]["matched"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(matched.contains(&serde_json::json!(field)), "{found}");
        assert!(
            each(&found["sagas"], "matches", "order_id").is_empty(),
            "{found}"
        );
    }
    probe.wait_depth(dlq, 1, stack.options().wait).await;

    // No more dead letters read than allowed, and the answer says the queue was not read
    // through.
    let bounded = stack
        .sagactl_json(&["find", "GHOST", "--dlq-limit", "0"], &[])
        .await;
    assert!(
        each(&bounded["dead_letters"], "matches", "message_id").is_empty(),
        "{bounded}"
    );
    let queues = bounded["dead_letters"]["queues"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let inventory = queues
        .iter()
        .find(|q| q["queue"] == dlq)
        .unwrap_or_else(|| panic!("no {dlq} in {bounded}"));
    assert_eq!(
        (inventory["read"].as_u64(), inventory["complete"].as_bool()),
        (Some(0), Some(false))
    );
    let text = stack
        .sagactl(&["find", "GHOST", "--dlq-limit", "0"], &[])
        .await;
    assert!(text.stdout.contains("raise --dlq-limit"), "{text:?}");

    // A dead letter purged by hand: the search finds the purge in the audit log.
    let purged = stack
        .sagactl_json(
            &[
                "dlq",
                "purge",
                "inventory-svc",
                "--message-id",
                &ghost_id,
                "--yes",
            ],
            &[],
        )
        .await;
    assert_eq!(purged["job"]["outcome"]["purged"], 1, "{purged}");
    let found = stack.sagactl_json(&["find", &ghost_id], &[]).await;
    // Newest first: the purge, and the adjustment's own rejection (by the broker user
    // that published it).
    assert_eq!(
        each(&found["audit"], "records", "action"),
        ["purge", "stock_adjustment"],
        "{found}"
    );
    assert_eq!(
        each(&found["audit"], "records", "actor"),
        ["operator", "guest"],
        "{found}"
    );

    // The text names the saga, and its audit section.
    let text = stack.sagactl(&["find", "carol"], &[]).await;
    assert!(text.success(), "{text:?}");
    let row = text
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with(&order));
    assert!(
        row.is_some_and(|r| r.contains("confirmed") && r.contains("by customer_id")),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("audit records naming carol:"),
        "{}",
        text.stdout
    );
    let empty = stack.sagactl(&["find", "  "], &[]).await;
    assert_eq!(empty.code, Some(1), "{empty:?}");
    assert!(empty.stderr.contains("nothing to find"), "{empty:?}");
    probe.close().await;
}

/// `StockAdjusted` taking `delta` of `sku`.
fn adjust(sku: &str, delta: i64) -> Event {
    Event::StockAdjusted(StockAdjusted {
        sku: sku.to_owned(),
        delta,
    })
}

#[tokio::test]
async fn dlq_groups_redrives_edits_and_purges_through_the_service_and_audit_names_who() {
    let stack = Stack::start(StackOptions::default()).await;
    let probe = stack.probe().await;
    let dlq = "inventory-svc.dlq";
    // Two causes: two adjustments of a SKU nobody stocked yet, two bodies that are not JSON.
    let take_five = stack.publish(&adjust("SKU-C", -5)).await;
    let take_fifty = stack.publish(&adjust("SKU-C", -50)).await;
    for _ in 0..2 {
        stack
            .publish_raw("order.created", b"not json".to_vec())
            .await;
    }
    probe.wait_depth(dlq, 4, stack.options().wait).await;
    let as_anna = [("SAGA_AUTH_SUB", "ops-anna")];

    // Grouped by cause and type, with an example of each.
    let grouped = stack
        .sagactl_json(&["dlq", "groups", "inventory-svc"], &as_anna)
        .await;
    assert_eq!(grouped["messages"], 4, "{grouped}");
    let groups = grouped["groups"].as_array().cloned().unwrap_or_default();
    assert_eq!(groups.len(), 2, "{grouped}");
    let stock = groups
        .iter()
        .find(|g| g["type"] == "StockAdjusted")
        .unwrap_or_else(|| panic!("no StockAdjusted group: {grouped}"));
    assert_eq!(stock["count"], 2, "{grouped}");
    let stock_cause = stock["cause"].as_str().expect("a cause").to_owned();
    let other_cause = groups
        .iter()
        .find(|g| g["cause"] != stock_cause.as_str())
        .and_then(|g| g["cause"].as_str())
        .unwrap_or_else(|| panic!("a second cause: {grouped}"))
        .to_owned();
    let text = stack
        .sagactl(&["dlq", "groups", "inventory-svc"], &[])
        .await;
    assert!(
        text.success() && text.stdout.contains("CAUSE") && text.stdout.contains(&stock_cause),
        "{text:?}"
    );

    // A dry run counts and moves nothing; without a terminal a redrive needs --yes.
    let counted = stack
        .sagactl_json(
            &[
                "dlq",
                "redrive",
                "inventory-svc",
                "--cause",
                &stock_cause,
                "--dry-run",
            ],
            &as_anna,
        )
        .await;
    assert_eq!(
        (&counted["matched"], &counted["dry_run"]),
        (&json!(2), &json!(true))
    );
    let refused = stack
        .sagactl(
            &["dlq", "redrive", "inventory-svc", "--cause", &stock_cause],
            &[],
        )
        .await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(refused.stderr.contains("--yes"), "{refused:?}");
    probe.wait_depth(dlq, 4, stack.options().wait).await;

    // The edited copy of the -50 takes 2: applied, and the original leaves the queue.
    stack.seed_stock("SKU-C", 10).await;
    let payload = std::env::temp_dir().join(format!("payload-{}.json", take_fifty.message_id));
    std::fs::write(&payload, r#"{"sku": "SKU-C", "delta": -2}"#).expect("write the payload");
    let edited = stack
        .sagactl_json(
            &[
                "dlq",
                "edit",
                "inventory-svc",
                &take_fifty.message_id.to_string(),
                "--payload",
                payload.to_str().expect("a UTF-8 path"),
            ],
            &as_anna,
        )
        .await;
    let _ = std::fs::remove_file(&payload);
    let outcome = &edited["job"]["outcome"];
    assert_eq!(outcome["applied"], 1, "{edited}");
    assert_eq!(outcome["original"], "removed", "{edited}");
    assert_ne!(
        outcome["corrected_message_id"],
        json!(take_fifty.message_id.to_string()),
        "a corrected copy is a new message: {edited}"
    );

    // The -5 redriven, in text: the summary says it applied.
    let redriven = stack
        .sagactl(
            &[
                "dlq",
                "redrive",
                "inventory-svc",
                "--cause",
                &stock_cause,
                "--yes",
            ],
            &as_anna,
        )
        .await;
    assert!(redriven.success(), "{redriven:?}");
    assert!(
        redriven.stdout.contains("1 matched, 1 applied"),
        "{}",
        redriven.stdout
    );
    let (_, figures) = stack.stock("SKU-C").await;
    assert_eq!(figures["available"], 3, "10 - 2 - 5: {figures}");

    // The rest purged; the queue is empty.
    let purged = stack
        .sagactl_json(
            &[
                "dlq",
                "purge",
                "inventory-svc",
                "--cause",
                &other_cause,
                "--yes",
            ],
            &as_anna,
        )
        .await;
    assert_eq!(purged["job"]["outcome"]["purged"], 2, "{purged}");
    probe.wait_depth(dlq, 0, stack.options().wait).await;

    // Who did it: the replay by ops-anna names the message it sent back.
    let audit = stack
        .sagactl_json(&["audit", "--action", "replay"], &[])
        .await;
    let records = audit["records"].as_array().cloned().unwrap_or_default();
    let anna: Vec<&Value> = records
        .iter()
        .filter(|r| r["actor"] == "ops-anna")
        .collect();
    assert_eq!(anna.len(), 1, "{audit}");
    assert_eq!(anna[0]["service"], "inventory-svc", "{audit}");
    assert!(
        anna[0]["subjects"]
            .to_string()
            .contains(&take_five.message_id.to_string()),
        "the record names the message sent back: {audit}"
    );
    let actions = stack
        .sagactl_json(&["audit", "--actor", "ops-anna"], &[])
        .await;
    let mut done = each(&actions, "records", "action");
    done.sort();
    assert_eq!(done, ["edit", "purge", "replay"], "{actions}");
    probe.close().await;
}
