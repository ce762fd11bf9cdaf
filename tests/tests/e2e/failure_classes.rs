//! Every failure has a class with one behaviour (docs/runbook.md): bad input is a 400 at
//! HTTP and the DLQ at once on the bus, with the real cause; a transient failure takes the
//! retry ladder; an unreachable database pauses the consumer. And the limits that keep a
//! service bounded: a parked copy that cannot be published comes back after a delay, a
//! refused outbox row backs off alone, nothing a client sends creates a time series, and a
//! configuration value out of range stops the service with its name.

use std::time::Duration;

use events::Event;
use events::catalog::{FundsDeposited, StockAdjusted};
use lapin::BasicProperties;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, BasicRejectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use saga_tests::sandbox;
use saga_tests::stack::binary_path;
use saga_tests::{Method, Service, Stack, StackOptions, StatusCode, eventually, order_request};

/// A counter of `saga_messages_handled_total` on `service` for one outcome.
async fn handled(stack: &Stack, service: Service, outcome: &str) -> f64 {
    stack
        .metric(
            service,
            "saga_messages_handled_total",
            &[("outcome", outcome)],
        )
        .await
}

/// Opens a channel on a connection of the test's own to its vhost.
async fn channel(stack: &Stack) -> (lapin::Connection, lapin::Channel) {
    let conn = messaging::amqp::connect(&stack.sandbox().amqp_url(), "saga-tests")
        .await
        .expect("connecting to the test's vhost");
    let channel = conn.create_channel().await.expect("opening a channel");
    (conn, channel)
}

#[tokio::test]
async fn bad_input_at_http_is_a_400_never_a_503() {
    let stack = Stack::start(StackOptions::default()).await;
    let (status, body) = stack
        .place_order(&order_request("nul\u{0}here", "EUR", &[("SKU-1", 1, 100)]))
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "POST /orders with NUL: {body}"
    );
    assert!(
        body["error"].is_string(),
        "not the contract's JSON error: {body}"
    );
    for (service, path) in [
        (Service::Payment, "/wallets/a%00"),
        (Service::Inventory, "/stock/a%00"),
        (Service::Order, "/orders/a%00"),
    ] {
        let (status, body) = stack.get(service, path).await;
        assert!(
            status.is_client_error(),
            "GET {path} answered {status} {body}, expected a 4xx"
        );
        assert!(body["error"].is_string(), "GET {path}: not JSON: {body}");
    }
}

#[tokio::test]
async fn bad_input_on_the_bus_is_dead_lettered_at_once_with_its_cause() {
    let stack = Stack::start(StackOptions::default()).await;
    // A value the database cannot store (NUL), and sums that overflow a bigint.
    stack
        .publish(&Event::FundsDeposited(FundsDeposited {
            customer_id: "nul\u{0}customer".into(),
            amount: 10,
            currency: "EUR".into(),
        }))
        .await;
    stack.deposit("rich", i64::MAX, "EUR").await;
    stack
        .publish(&Event::FundsDeposited(FundsDeposited {
            customer_id: "rich".into(),
            amount: 1,
            currency: "EUR".into(),
        }))
        .await;
    stack.seed_stock("SKU-BIG", i64::MAX).await;
    stack
        .publish(&Event::StockAdjusted(StockAdjusted {
            sku: "SKU-BIG".into(),
            delta: 1,
        }))
        .await;

    let probe = stack.probe().await;
    let wait = stack.options().wait;
    probe.wait_depth("payment-svc.dlq", 2, wait).await;
    probe.wait_depth("inventory-svc.dlq", 1, wait).await;
    let mut parked = probe.peek("payment-svc.dlq", 10).await;
    parked.extend(probe.peek("inventory-svc.dlq", 10).await);
    for m in &parked {
        let queue = m
            .header(messaging::consumer::QUEUE_HEADER)
            .as_str()
            .unwrap_or("?");
        let problems = m.dead_letter_problems("invalid_value", queue, 1);
        assert!(problems.is_empty(), "{problems:?}");
        let error = m.header(messaging::consumer::ERROR_HEADER).to_string();
        assert!(
            error.contains("0x00") || error.contains("out of range"),
            "the real cause is missing: {error}"
        );
    }
    assert_eq!(handled(&stack, Service::Payment, "retried").await, 0.0);
    assert_eq!(handled(&stack, Service::Inventory, "retried").await, 0.0);
    probe.close().await;
}

#[tokio::test]
async fn a_transient_failure_takes_the_retry_ladder_and_applies_once() {
    let stack = Stack::start(StackOptions::default().env("SAGA_DB_LOCK_TIMEOUT_MS", "200")).await;
    stack.deposit("locked", 100, "EUR").await;
    // Hold the wallet's row lock: the next deposit's update times out (55P03), a failure
    // that a later attempt gets past.
    let pool = stack.db(Service::Payment).await;
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM wallets WHERE customer_id = 'locked' FOR UPDATE")
        .execute(&mut *tx)
        .await
        .expect("locking the wallet");
    stack
        .publish(&Event::FundsDeposited(FundsDeposited {
            customer_id: "locked".into(),
            amount: 50,
            currency: "EUR".into(),
        }))
        .await;
    eventually(stack.options().wait, || async {
        let n = handled(&stack, Service::Payment, "retried").await;
        if n >= 1.0 {
            Ok(())
        } else {
            Err("no retry yet".to_owned())
        }
    })
    .await;
    tx.rollback().await.expect("releasing the lock");
    eventually(Duration::from_secs(60), || async {
        let (_, w) = stack.wallet("locked").await;
        if w["balance"] == 150 {
            Ok(())
        } else {
            Err(format!("wallet: {w}"))
        }
    })
    .await;
    let probe = stack.probe().await;
    assert_eq!(probe.depth("payment-svc.dlq").await, 0);
    probe.close().await;
}

#[tokio::test]
async fn an_unreachable_database_pauses_the_consumer_and_spends_no_retry() {
    let stack = Stack::start(StackOptions::default().with_db_proxy()).await;
    stack.deposit("paused", 100, "EUR").await;
    stack.db_proxy().cut();
    // Ready turns 503 with the database down; live stays 200: no restart for an outage.
    eventually(stack.options().wait, || async {
        let (status, body) = stack.get(Service::Payment, "/healthz/ready").await;
        if status == StatusCode::SERVICE_UNAVAILABLE && body["database"] == "down" {
            Ok(())
        } else {
            Err(format!("/healthz/ready answered {status} {body}"))
        }
    })
    .await;
    let (status, _) = stack.get(Service::Payment, "/healthz/live").await;
    assert_eq!(status, StatusCode::OK);
    for _ in 0..5 {
        stack
            .publish(&Event::FundsDeposited(FundsDeposited {
                customer_id: "paused".into(),
                amount: 10,
                currency: "EUR".into(),
            }))
            .await;
    }
    eventually(stack.options().wait, || async {
        let n = stack
            .metric(Service::Payment, "saga_consumer_paused", &[])
            .await;
        if n == 1.0 {
            Ok(())
        } else {
            Err(format!("saga_consumer_paused = {n}"))
        }
    })
    .await;
    stack.db_proxy().restore();
    eventually(Duration::from_secs(60), || async {
        let (_, w) = stack.wallet("paused").await;
        if w["balance"] == 150 {
            Ok(())
        } else {
            Err(format!("wallet: {w}"))
        }
    })
    .await;
    assert_eq!(handled(&stack, Service::Payment, "retried").await, 0.0);
    let probe = stack.probe().await;
    assert_eq!(probe.depth("payment-svc.dlq").await, 0);
    probe.close().await;
    let (status, body) = stack.get(Service::Payment, "/healthz/ready").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_copy_that_cannot_be_parked_comes_back_after_a_delay_not_at_once() {
    let stack = Stack::start(StackOptions::default()).await;
    let (conn, channel) = channel(&stack).await;
    // Without its DLQ, a dead-letter copy is unroutable: the parking path is unavailable.
    channel
        .queue_delete("inventory-svc.dlq".into(), QueueDeleteOptions::default())
        .await
        .expect("deleting the DLQ");
    stack
        .publish_raw("stock.adjusted", b"not json".to_vec())
        .await;
    eventually(stack.options().wait, || async {
        let n = stack
            .metric(Service::Inventory, "saga_park_failures_total", &[])
            .await;
        if n >= 1.0 {
            Ok(())
        } else {
            Err("no parking failure yet".to_owned())
        }
    })
    .await;
    // Give a hot loop the time to show itself: the delivery is held, so it is handled once.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let attempts = handled(&stack, Service::Inventory, "dead_lettered").await;
    assert!(
        attempts <= 2.0,
        "the message was handled {attempts} times in a few seconds: a hot loop"
    );
    // The DLQ is back: the held copy is parked on the next try, with its real cause.
    inventory_svc::topology()
        .declare(&channel)
        .await
        .expect("declaring the topology again");
    let probe = stack.probe().await;
    probe
        .wait_depth("inventory-svc.dlq", 1, Duration::from_secs(60))
        .await;
    let parked = probe.peek("inventory-svc.dlq", 1).await;
    assert_eq!(parked[0].error_code(), "not_json", "{:?}", parked[0]);
    probe.close().await;
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test]
async fn a_refused_outbox_row_backs_off_alone() {
    let stack = Stack::start(StackOptions::default()).await;
    // The services' broker user may not write routing keys starting with `forbidden.`.
    sandbox::management_client()
        .declare_topic_permissions(&rabbitmq_http_client::requests::TopicPermissions {
            user: sandbox::BROKER_USER,
            vhost: stack.sandbox().vhost(),
            exchange: "saga.events",
            write: "^(?!forbidden\\.).*",
            read: ".*",
        })
        .await
        .expect("setting topic permissions");
    let pool = stack.db(Service::Order).await;
    sqlx::query(
        "INSERT INTO outbox (message_id, event_type, routing_key, correlation_id, producer, occurred_at, body)
         VALUES (gen_random_uuid(), 'OrderCreated', 'forbidden.key', 'x', 'order-svc', now(), '{}')",
    )
    .execute(&pool)
    .await
    .expect("writing a row the broker will refuse");
    // The rows behind it keep flowing: orders placed now are confirmed.
    stack.seed_stock("SKU-R", 10).await;
    stack.deposit("rita", 10_000, "EUR").await;
    for _ in 0..3 {
        let id = stack
            .place_order_ok(&order_request("rita", "EUR", &[("SKU-R", 1, 100)]))
            .await;
        stack.wait_for_status(&id, "confirmed").await;
    }
    // The row is claimed within a poll interval (it was written by no writer of the
    // service's own, so nothing hands it to the relay): tried, refused, backing off.
    eventually(stack.options().wait, || async {
        let (attempts, sent): (i32, bool) = sqlx::query_as(
            "SELECT attempts, sent_at IS NOT NULL FROM outbox WHERE routing_key = 'forbidden.key'",
        )
        .fetch_one(&pool)
        .await
        .expect("reading the refused row");
        match (attempts, sent) {
            (_, true) => panic!("the refused row was marked sent"),
            (0, false) => Err("the refused row was not tried yet".to_owned()),
            _ => Ok(()),
        }
    })
    .await;
    let refused = stack
        .metric(Service::Order, "saga_outbox_refused_total", &[])
        .await;
    assert!(refused >= 1.0, "saga_outbox_refused_total = {refused}");
}

/// The number of samples `/metrics` of `service` shows.
/// The series of `service` whose labels carry something a client sent (an HTTP method or
/// route, a message type). Other series (the housekeeping's, say) may appear over time on
/// their own; these must not grow with what clients send.
async fn series(stack: &Stack, service: Service) -> usize {
    let (_, body) = stack.get(service, "/metrics").await;
    body.as_str()
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| ["method=", "route=", "type="].iter().any(|k| l.contains(k)))
        .count()
}

#[tokio::test]
async fn made_up_methods_and_message_types_create_no_time_series() {
    let stack = Stack::start(StackOptions::default()).await;
    let (conn, channel) = channel(&stack).await;
    let made_up = |i: usize| format!("MADEUP{i}");
    let send = |i: usize| {
        let method = Method::from_bytes(made_up(i).as_bytes()).expect("a method token");
        let channel = channel.clone();
        let stack = &stack;
        async move {
            let _ = stack
                .try_request(Service::Order, method, "/orders", &[], None)
                .await;
            channel
                .basic_publish(
                    "saga.events".into(),
                    "stock.adjusted".into(),
                    BasicPublishOptions::default(),
                    b"{}",
                    BasicProperties::default().with_type(made_up(i).as_str().into()),
                )
                .await
                .expect("publishing");
        }
    };
    // One of each first, so the `other` series exist before the size is taken.
    send(0).await;
    let probe = stack.probe().await;
    probe
        .wait_depth("inventory-svc.dlq", 1, stack.options().wait)
        .await;
    // Reading /metrics is a request too: its own series exist after the first read.
    series(&stack, Service::Order).await;
    series(&stack, Service::Inventory).await;
    let before = (
        series(&stack, Service::Order).await,
        series(&stack, Service::Inventory).await,
    );
    for i in 1..=1000 {
        send(i).await;
    }
    probe
        .wait_depth("inventory-svc.dlq", 1001, Duration::from_secs(120))
        .await;
    let after = (
        series(&stack, Service::Order).await,
        series(&stack, Service::Inventory).await,
    );
    assert_eq!(before, after, "(order-svc, inventory-svc) /metrics series");
    probe.close().await;
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test]
async fn a_configuration_value_out_of_range_stops_the_service_naming_it() {
    for (service, name, value) in [
        (Service::Payment, "SAGA_INBOX_RETENTION_SECS", "0"),
        (Service::Payment, "SAGA_CONCURRENCY", "0"),
        (Service::Payment, "SAGA_DB_POOL_SIZE", "3"),
        (Service::Order, "SAGA_ORDER_MAX_OPEN", "0"),
        (Service::Order, "SAGA_ORDER_MAX_UNPUBLISHED", "-3"),
    ] {
        let prefix = service.env_prefix();
        let out = tokio::process::Command::new(binary_path(service.name()))
            .env(name, value)
            .env(format!("SAGA_{prefix}_HTTP_ADDR"), "127.0.0.1:0")
            // Should the value pass, the service must not reach anyone's database.
            .env(
                format!("SAGA_{prefix}_DATABASE_URL"),
                "postgres://postgres@127.0.0.1:1/none",
            )
            .output()
            .await
            .unwrap_or_else(|e| panic!("running {service}: {e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{service}: {name}={value} was accepted"
        );
        assert!(stderr.contains(name), "{service}: {name}={value}: {stderr}");
    }
}

#[tokio::test]
async fn dlq_show_explains_a_message_the_broker_dead_lettered_itself() {
    let stack = Stack::start(StackOptions::default()).await;
    let (conn, channel) = channel(&stack).await;
    // A queue of the test's own whose delivery limit sends to inventory-svc's DLQ.
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(1));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from(messaging::topology::DEAD_LETTER_EXCHANGE)),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from("inventory-svc.dlq")),
    );
    channel
        .queue_declare(
            "limited".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .expect("declaring the limited queue");
    channel
        .basic_publish(
            "".into(),
            "limited".into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publishing");
    // Return it until the broker gives up on it and it shows in the DLQ. (An empty get
    // does not mean it is gone: a requeued message may take a moment to be ready again.)
    let probe = stack.probe().await;
    eventually(stack.options().wait, || async {
        match channel
            .basic_get("limited".into(), BasicGetOptions { no_ack: false })
            .await
        {
            Ok(Some(m)) => {
                let _ = m
                    .delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: true })
                    .await;
                Err("still in its queue".to_owned())
            }
            Ok(None) => match probe.try_depth("inventory-svc.dlq").await {
                Ok(1) => Ok(()),
                Ok(n) => Err(format!(
                    "inventory-svc.dlq holds {n} messages, waiting for 1"
                )),
                Err(e) => Err(e),
            },
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    probe.close().await;
    let shown = stack
        .sagactl_json(&["dlq", "show", "inventory-svc"], &[])
        .await;
    let error = shown["dead_letters"][0]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.starts_with("delivery_limit"), "{shown}");
    let _ = conn.close(200, "done".into()).await;
}
