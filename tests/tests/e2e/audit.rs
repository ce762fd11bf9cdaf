//! Who did what: every change made by hand is in the audit log of the service that made it,
//! once, with who made it. A stock adjustment and a deposit name the operator sagactl
//! runs `--as`, believed only from the operator's broker user; a cancellation names the
//! token's `sub`, refused ones too; and nobody changes a record once written.

use events::catalog::{FundsDeposited, StockAdjusted};
use events::{Event, EventType};
use messaging::Envelope;
use messaging::audit::{self, AuditQuery, HandAction, Via};
use saga_tests::auth::token;
use saga_tests::sandbox::encode_segment;
use saga_tests::{
    Method, Sandbox, Service, Stack, StackOptions, StatusCode, eventually, order_request,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::security::{amqp_url, dead_letter_code, publish_as, service_users};

/// The broker user the harness and sagactl publish as.
const HARNESS_USER: &str = "guest";

/// `service`'s audit log, newest first, each record as `GET /audit` answers it.
async fn audit_records(stack: &Stack, service: Service) -> Vec<Value> {
    let (status, page) = stack.get(service, "/audit?limit=500").await;
    assert_eq!(status, 200, "GET /audit: {page}");
    page["records"].as_array().cloned().unwrap_or_default()
}

/// The records of `service` that name `subject`.
async fn records_about(stack: &Stack, service: Service, subject: &str) -> Vec<Value> {
    let records = audit_records(stack, service).await;
    records
        .into_iter()
        .filter(|r| {
            r["subjects"]
                .as_array()
                .is_some_and(|s| s.contains(&json!(subject)))
        })
        .collect()
}

/// Waits until `service` holds `count` records about `subject`; returns them, newest first.
async fn wait_records(stack: &Stack, service: Service, subject: &str, count: usize) -> Vec<Value> {
    eventually(stack.options().wait, || async move {
        let records = records_about(stack, service, subject).await;
        if records.len() >= count {
            Ok(records)
        } else {
            Err(format!(
                "{service} holds {} audit records about {subject}, waiting for {count}: {records:?}",
                records.len()
            ))
        }
    })
    .await
}

/// Asserts who, how and what of `record`.
fn assert_record(record: &Value, who: (&str, Option<&str>), action: &str, subjects: &[&str]) {
    let (actor, broker_user) = who;
    assert_eq!(record["actor"], actor, "{record}");
    assert_eq!(record["broker_user"], json!(broker_user), "{record}");
    assert_eq!(record["action"], action, "{record}");
    assert_eq!(record["subjects"], json!(subjects), "{record}");
    let via = if broker_user.is_some() {
        "amqp"
    } else {
        "http"
    };
    assert_eq!(record["via"], via, "{record}");
    assert!(record["finished_at"].is_string(), "ended: {record}");
}

fn message_id(printed: &Value) -> String {
    printed["message_id"]
        .as_str()
        .unwrap_or_else(|| panic!("sagactl printed no message_id: {printed}"))
        .to_owned()
}

/// `event` in an envelope with message id `id`: the same message again, for the inbox.
fn again(event: &Event, id: &str) -> Envelope {
    let mut envelope = Envelope::wrap(event, EventType::OPERATOR, None);
    envelope.message_id = id.parse().expect("a message id");
    envelope
}

#[tokio::test]
async fn sagactl_names_its_operator_on_an_adjustment_and_a_deposit_recorded_once_each() {
    let stack = Stack::start(StackOptions::default()).await;
    let as_alice = |args: &[&'static str]| [&["--as", "alice"], args].concat();
    let adjusted = stack
        .sagactl_json(&as_alice(&["stock", "adjust", "AUDIT-1", "5"]), &[])
        .await;
    let deposited = stack
        .sagactl_json(&as_alice(&["wallet", "deposit", "ann", "1500"]), &[])
        .await;
    // The record commits with the effect: once the effect shows, so does the record.
    stack.wait_stock_figures("AUDIT-1", (5, 0, 0)).await;
    stack.wait_wallet_figures("ann", (1500, 0, 0)).await;

    let adjustment = message_id(&adjusted);
    let records = records_about(&stack, Service::Inventory, &adjustment).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let alice = ("alice", Some(HARNESS_USER));
    assert_record(
        &records[0],
        alice,
        "stock_adjustment",
        &["AUDIT-1", &adjustment],
    );
    assert_eq!(records[0]["outcome"], "applied");
    assert_eq!(records[0]["detail"]["event_type"], "StockAdjusted");
    assert_eq!(records[0]["detail"]["payload"]["delta"], 5);
    assert!(records[0]["detail"].get("claimed_operator").is_none());

    let deposit = message_id(&deposited);
    let records = records_about(&stack, Service::Payment, &deposit).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_record(&records[0], alice, "deposit", &["ann", &deposit]);
    assert_eq!(records[0]["outcome"], "applied");
    assert_eq!(records[0]["detail"]["payload"]["amount"], 1500);

    // The same messages again: duplicates, neither applied nor recorded a second time.
    let adjust_event = Event::StockAdjusted(StockAdjusted {
        sku: "AUDIT-1".into(),
        delta: 5,
    });
    let deposit_event = Event::FundsDeposited(FundsDeposited {
        customer_id: "ann".into(),
        amount: 1500,
        currency: "EUR".into(),
    });
    stack
        .publish_envelope(&again(&adjust_event, &adjustment))
        .await;
    stack
        .publish_envelope(&again(&deposit_event, &deposit))
        .await;
    stack
        .wait_handled(Service::Inventory, "StockAdjusted", "duplicate", 1)
        .await;
    stack
        .wait_handled(Service::Payment, "FundsDeposited", "duplicate", 1)
        .await;
    assert_eq!(
        records_about(&stack, Service::Inventory, &adjustment)
            .await
            .len(),
        1
    );
    assert_eq!(
        records_about(&stack, Service::Payment, &deposit)
            .await
            .len(),
        1
    );

    // An adjustment that cannot be made is dead-lettered, and recorded as rejected.
    let refused = stack
        .sagactl_json(&as_alice(&["stock", "adjust", "AUDIT-2", "-3"]), &[])
        .await;
    let refused = message_id(&refused);
    let records = wait_records(&stack, Service::Inventory, &refused, 1).await;
    assert_record(
        &records[0],
        alice,
        "stock_adjustment",
        &["AUDIT-2", &refused],
    );
    assert_eq!(records[0]["outcome"], "rejected", "{}", records[0]);
    assert_eq!(records[0]["result"]["code"], "negative_stock");

    // The harness names nobody: its broker user is the actor.
    let seeded = "AUDIT-SEEDED";
    stack.seed_stock(seeded, 2).await;
    let records = records_about(&stack, Service::Inventory, seeded).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["actor"], HARNESS_USER, "{}", records[0]);
}

#[tokio::test]
async fn an_operator_named_by_another_broker_user_is_not_believed() {
    let stack = Stack::start(StackOptions::default()).await;
    let vhost = stack.sandbox().vhost().to_owned();
    let (_users, creds) = service_users(&vhost, stack.sandbox().id()).await;
    let (_, user, password) = creds
        .iter()
        .find(|(s, _, _)| s == "order-svc")
        .expect("order-svc's user");
    // An adjustment sent with order-svc's credentials, naming an operator.
    let forged = Envelope::wrap(
        &Event::StockAdjusted(StockAdjusted {
            sku: "AUDIT-M".into(),
            delta: 100,
        }),
        EventType::OPERATOR,
        None,
    );
    publish_as(
        &amqp_url(user, password, &vhost),
        &forged,
        "saga.redeliver",
        "inventory-svc",
        &[(audit::OPERATOR_HEADER, "mallory")],
    )
    .await;
    assert_eq!(
        dead_letter_code(&stack, "inventory-svc.dlq", forged.message_id).await,
        "forged_producer"
    );
    assert_eq!(stack.stock("AUDIT-M").await.0, StatusCode::NOT_FOUND);

    let id = forged.message_id.to_string();
    let records = wait_records(&stack, Service::Inventory, &id, 1).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    assert_record(
        record,
        (user, Some(user)),
        "stock_adjustment",
        &["AUDIT-M", &id],
    );
    assert_eq!(record["outcome"], "rejected", "{record}");
    assert_eq!(record["result"]["code"], "forged_producer", "{record}");
    assert_eq!(record["detail"]["claimed_operator"], "mallory", "{record}");
    let all = audit_records(&stack, Service::Inventory).await;
    assert!(all.iter().all(|r| r["actor"] != "mallory"), "{all:?}");
}

/// `POST /orders/{id}/cancel` with a token for `sub` with `roles`.
async fn cancel_as(stack: &Stack, order_id: &str, sub: &str, roles: &[&str]) -> StatusCode {
    let bearer = format!("Bearer {}", token(sub, roles));
    let path = format!("/orders/{}/cancel", encode_segment(order_id));
    let headers = [("authorization", bearer.as_str())];
    let (status, _) = stack
        .request(Service::Order, Method::POST, &path, &headers, None)
        .await;
    status
}

#[tokio::test]
async fn a_cancellation_records_who_asked_and_a_refused_one_who_tried() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("AUDIT-C", 10).await;
    stack.deposit("cara", 10_000, "EUR").await;
    let order = || order_request("cara", "EUR", &[("AUDIT-C", 1, 100)]);
    let by_operator = stack.place_order_ok(&order()).await;
    let by_customer = stack.place_order_ok(&order()).await;
    stack.wait_for_status(&by_operator, "confirmed").await;
    stack.wait_for_status(&by_customer, "confirmed").await;

    // An operator cancels, then tries again.
    assert_eq!(
        cancel_as(&stack, &by_operator, "bob", &["operator"]).await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        cancel_as(&stack, &by_operator, "bob", &["operator"]).await,
        StatusCode::CONFLICT
    );
    let records = wait_records(&stack, Service::Order, &by_operator, 2).await;
    assert_eq!(records.len(), 2, "{records:?}");
    let (again, first) = (&records[0], &records[1]);
    for record in [first, again] {
        assert_record(record, ("bob", None), "cancel", &[&by_operator, "cara"]);
        assert_eq!(record["detail"]["role"], "operator", "{record}");
    }
    assert_eq!(first["outcome"], "cancelled", "{first}");
    assert_eq!(again["outcome"], "refused", "{again}");
    assert_eq!(again["result"]["status"], 409, "{again}");
    assert_eq!(again["result"]["code"], "order_closed", "{again}");

    // Another customer is answered as if the order did not exist; the attempt is seen.
    assert_eq!(
        cancel_as(&stack, &by_customer, "dave", &["customer"]).await,
        StatusCode::NOT_FOUND
    );
    // The customer cancels their own order.
    assert_eq!(
        cancel_as(&stack, &by_customer, "cara", &["customer"]).await,
        StatusCode::ACCEPTED
    );
    let records = wait_records(&stack, Service::Order, &by_customer, 2).await;
    assert_eq!(records.len(), 2, "{records:?}");
    let (own, other) = (&records[0], &records[1]);
    assert_record(other, ("dave", None), "cancel", &[&by_customer, "cara"]);
    assert_eq!(other["outcome"], "refused", "{other}");
    assert_eq!(other["result"]["status"], 404, "{other}");
    assert_record(own, ("cara", None), "cancel", &[&by_customer, "cara"]);
    assert_eq!(own["outcome"], "cancelled", "{own}");
    assert_eq!(own["detail"]["role"], "customer", "{own}");
    stack.wait_for_status(&by_customer, "cancelled").await;
}

#[tokio::test]
async fn the_audit_log_is_append_only_but_for_finishing_a_running_record_once() {
    let sandbox = Sandbox::create(&["audit"]).await;
    let pool = sandbox.migrated_pool("audit", &messaging::MIGRATOR).await;
    let mut conn = pool.acquire().await.expect("a connection");
    let subject = Uuid::new_v4().to_string();
    let purge = HandAction {
        actor: "carol".into(),
        via: Via::Http,
        broker_user: None,
        action: audit::actions::PURGE,
        subjects: vec![subject.clone()],
        detail: json!({"queue": "inventory-svc.dlq"}),
    };
    let id = audit::start(&mut conn, &purge).await.expect("started");
    audit::finish(&mut conn, id, "done", &json!({"purged": 3}), &[])
        .await
        .expect("finished");
    // A second end changes nothing (the first one stands).
    audit::finish(&mut conn, id, "failed", &json!({"purged": 0}), &[])
        .await
        .expect("a second finish is no error");

    let refused = [
        "UPDATE audit_log SET actor = 'x'",
        "UPDATE audit_log SET outcome = 'failed'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log CASCADE",
    ];
    for sql in refused {
        let e = sqlx::query(sql).execute(&mut *conn).await.expect_err(sql);
        assert!(e.to_string().contains("append-only"), "{sql}: {e}");
    }
    // A running record may be finished, but nothing else of it changed.
    let running = audit::start(&mut conn, &purge).await.expect("started");
    let e = sqlx::query("UPDATE audit_log SET actor = 'x', outcome = 'done' WHERE id = $1")
        .bind(running)
        .execute(&mut *conn)
        .await
        .expect_err("a running record's actor changed");
    assert!(e.to_string().contains("append-only"), "{e}");

    let about = AuditQuery {
        subject: Some(subject),
        limit: 10,
        ..AuditQuery::default()
    };
    let records = audit::list(&mut conn, &about).await.expect("the audit log");
    let outcomes: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r.actor.as_str(), r.outcome.as_str()))
        .collect();
    assert_eq!(outcomes, [("carol", "running"), ("carol", "done")]);
    assert_eq!(records[1].result, Some(json!({"purged": 3})));
    assert!(records[1].finished_at.is_some());
}
