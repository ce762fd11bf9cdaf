//! Least privilege on the broker, and secrets kept out of logs.
//!
//! The per-service permissions are the ones `deploy/rabbitmq/definitions.json` grants
//! (the file compose.yaml loads): the services run the whole saga with nothing more, and
//! one service's credentials are refused on another's queue.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::FutureExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rabbitmq_http_client::password_hashing;
use rabbitmq_http_client::requests::{Permissions, TopicPermissions, UserParams};
use saga_tests::sandbox::{broker_addr, management_client};
use saga_tests::stack::binary_path;
use saga_tests::{Sandbox, Service, Stack, StackOptions, eventually, order_request};
use serde_json::Value;

const SERVICES: [&str; 3] = ["order-svc", "inventory-svc", "payment-svc"];

fn definitions() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/rabbitmq/definitions.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("definitions.json")).expect("JSON")
}

/// Broker users made for one test (user names are global), removed when dropped.
pub(crate) struct Users {
    names: Vec<String>,
}

impl Drop for Users {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.names);
        // Drop may run inside the test's runtime: clean up from a thread of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let api = management_client();
                for n in names {
                    if let Err(e) = api.delete_user(&n, true).await {
                        eprintln!("could not remove broker user {n}: {e}");
                    }
                }
            });
        })
        .join();
    }
}

/// Creates, in `vhost`, a user per service with exactly the permissions and topic
/// permissions the definitions give that service. Returns (service, user, password).
pub(crate) async fn service_users(
    vhost: &str,
    suffix: &str,
) -> (Users, Vec<(String, String, String)>) {
    let defs = definitions();
    let api = management_client();
    let mut made = Users { names: Vec::new() };
    let mut out = Vec::new();
    for service in SERVICES {
        let user = format!("{service}-{suffix}");
        let password = format!("pw-{suffix}-{service}");
        let hash = password_hashing::base64_encoded_salted_password_hash_sha256(
            &password_hashing::salt(),
            &password,
        );
        api.create_user(&UserParams::new(&user, &hash, ""))
            .await
            .unwrap_or_else(|e| panic!("creating user {user}: {e}"));
        made.names.push(user.clone());
        let perm = defs["permissions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["user"] == service)
            .unwrap_or_else(|| panic!("definitions grant {service} nothing"));
        let pattern = |p: &Value, k: &str| p[k].as_str().expect("a pattern").to_owned();
        let (configure, write, read) = (
            pattern(perm, "configure"),
            pattern(perm, "write"),
            pattern(perm, "read"),
        );
        api.declare_permissions(&Permissions {
            user: &user,
            vhost,
            configure: &configure,
            read: &read,
            write: &write,
        })
        .await
        .unwrap_or_else(|e| panic!("permissions of {user}: {e}"));
        for tp in defs["topic_permissions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["user"] == service)
        {
            let (exchange, write, read) = (
                pattern(tp, "exchange"),
                pattern(tp, "write"),
                pattern(tp, "read"),
            );
            api.declare_topic_permissions(&TopicPermissions {
                user: &user,
                vhost,
                exchange: &exchange,
                write: &write,
                read: &read,
            })
            .await
            .unwrap_or_else(|e| panic!("topic permissions of {user}: {e}"));
        }
        out.push((service.to_owned(), user, password));
    }
    (made, out)
}

pub(crate) fn amqp_url(user: &str, password: &str, vhost: &str) -> String {
    let mut url = url::Url::parse(&format!("amqp://{}/", broker_addr())).expect("broker address");
    url.set_username(user).expect("a user name");
    url.set_password(Some(password)).expect("a password");
    url.path_segments_mut().expect("a base").pop().push(vhost);
    url.set_query(Some("heartbeat=5"));
    url.into()
}

/// The environment that makes every service log in as its own user and accept each event
/// type only from its producer's user (the harness, as guest, is the operator).
fn restricted_env(creds: &[(String, String, String)], vhost: &str) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for (service, user, password) in creds {
        let prefix = service.trim_end_matches("-svc").to_uppercase();
        env.push((
            format!("SAGA_{prefix}_AMQP_URL"),
            amqp_url(user, password, vhost),
        ));
        let producer = service.to_uppercase().replace('-', "_");
        env.push((format!("SAGA_PRODUCER_USERS_{producer}"), user.clone()));
    }
    env.push(("SAGA_PRODUCER_USERS_SAGACTL".into(), "guest".into()));
    env
}

#[tokio::test]
async fn the_saga_runs_with_each_service_holding_only_its_own_broker_permissions() {
    // The stack makes the vhost and its topology; then every service is restarted under a
    // user holding only what the definitions grant it.
    let stack = Stack::start(StackOptions::default()).await;
    let vhost = stack.sandbox().vhost().to_owned();
    let (_users, creds) = service_users(&vhost, stack.sandbox().id()).await;
    let restricted = restricted_env(&creds, &vhost);
    for s in Service::ALL {
        stack.kill(s);
    }
    for s in Service::ALL {
        stack.start_service_with_env(s, &restricted).await;
    }
    stack.seed_stock("LEAST", 5).await;
    stack.deposit("lea", 1000, "EUR").await;
    let order_id = stack
        .place_order_ok(&order_request("lea", "EUR", &[("LEAST", 2, 100)]))
        .await;
    stack.wait_for_status(&order_id, "confirmed").await;
    stack.assert_invariants().await;
}

#[tokio::test]
async fn a_services_credentials_are_refused_on_another_services_queue() {
    // The services declare their own queues in the stack's vhost.
    let stack = Stack::start(StackOptions::default()).await;
    let vhost = stack.sandbox().vhost().to_owned();
    let (_users, creds) = service_users(&vhost, stack.sandbox().id()).await;
    let (_, user, password) = &creds[0]; // order-svc's
    let conn = Connection::connect(
        &amqp_url(user, password, &vhost),
        ConnectionProperties::default(),
    )
    .await
    .expect("order-svc's user may connect to the vhost");

    // Its own queue: allowed.
    let own = conn.create_channel().await.unwrap();
    own.basic_consume(
        "order-svc".into(),
        "probe".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("order-svc may consume its own queue");

    // Its own dead letters, which it reads for the operator's triage.
    let ch = conn.create_channel().await.unwrap();
    ch.basic_consume(
        "order-svc.dlq".into(),
        "probe".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("order-svc may read its own dead letters");

    // Another service's queue, and another service's dead letters: refused.
    for queue in ["inventory-svc", "payment-svc", "inventory-svc.dlq"] {
        let ch = conn.create_channel().await.unwrap();
        let err = ch
            .basic_consume(
                queue.into(),
                "probe".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect_err(&format!("order-svc's user must not read {queue}"));
        assert!(
            err.to_string().to_uppercase().contains("ACCESS_REFUSED"),
            "{queue}: {err}"
        );
    }

    // Publishing an event it does not produce: refused by the topic permissions.
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let refused = ch
        .basic_publish(
            "saga.events".into(),
            "payment.done".into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default(),
        )
        .then(|sent| async move {
            match sent {
                Err(e) => Some(e.to_string()),
                Ok(confirm) => match tokio::time::timeout(Duration::from_secs(10), confirm).await {
                    Ok(Err(e)) => Some(e.to_string()),
                    Ok(Ok(c)) if c.is_nack() => Some("nack".to_owned()),
                    _ => None,
                },
            }
        })
        .await;
    let refused = refused.expect("order-svc's user must not publish payment.done");
    assert!(
        refused.to_uppercase().contains("ACCESS_REFUSED") || refused == "nack",
        "{refused}"
    );
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test]
async fn broker_passwords_never_reach_the_logs_and_may_come_from_a_file() {
    let sandbox = Sandbox::create(&["orders"]).await;
    let dir = std::env::temp_dir().join(format!("saga-secret-{}", sandbox.id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = format!("Sup3rSecret{}", sandbox.id());
    let password_file = dir.join("amqp-password");
    // The right user with a wrong password (from a file): the service keeps retrying and
    // logging why, without the password.
    std::fs::write(&password_file, format!("{secret}\n")).unwrap();
    let log_path = dir.join("order-svc.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let port = saga_tests::stack::free_port().port();
    let mut child = Command::new(binary_path("order-svc"))
        .env(
            "SAGA_AMQP_URL",
            amqp_url("guest", "also-not-logged", sandbox.vhost()),
        )
        .env("SAGA_ORDER_AMQP_PASSWORD_FILE", &password_file)
        .env("SAGA_ORDER_DATABASE_URL", sandbox.database_url("orders"))
        .env("SAGA_ORDER_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("SAGA_AUTH_JWKS_FILE", saga_tests::auth::jwks_path())
        .env("SAGA_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("order-svc starts");
    let text = eventually(Duration::from_secs(30), || {
        let log_path = log_path.clone();
        async move {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            (text.contains("broker") && text.contains("***"))
                .then_some(text.clone())
                .ok_or(text)
        }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !text.contains(&secret),
        "the password from the file was logged:\n{text}"
    );
    assert!(
        !text.contains("also-not-logged"),
        "the URL's password was logged:\n{text}"
    );
    assert!(
        text.contains("guest:***@"),
        "the redacted URL names the user:\n{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Publishes `envelope` as `user` (its `user_id` is that user's, which the broker checks)
/// to `exchange` with `routing_key`, with `extra_headers` on top of the event's own.
pub(crate) async fn publish_as(
    url: &str,
    envelope: &messaging::Envelope,
    exchange: &str,
    routing_key: &str,
    extra_headers: &[(&str, &str)],
) {
    let conn = messaging::amqp::connect(url, "forger")
        .await
        .expect("connect");
    let publisher = messaging::publisher::ConfirmedPublisher::open(&conn, Duration::from_secs(10))
        .await
        .expect("confirm channel");
    let mut message =
        messaging::publisher::OutgoingMessage::event::<events::EventType>(envelope, None)
            .expect("a catalog type");
    message.exchange = exchange.to_owned();
    message.routing_key = routing_key.to_owned();
    let mut headers = message.properties.headers().clone().unwrap_or_default();
    for (name, value) in extra_headers {
        headers.insert(
            (*name).into(),
            lapin::types::AMQPValue::LongString(value.as_bytes().into()),
        );
    }
    message.properties = message.properties.with_headers(headers);
    publisher
        .publish(&message)
        .await
        .unwrap_or_else(|e| panic!("publishing to {exchange}/{routing_key}: {e}"));
    let _ = conn.close(200, "done".into()).await;
}

/// Waits until `queue` holds a dead letter with message id `message_id`; returns its
/// `x-saga-error-code`. Other messages are put back.
pub(crate) async fn dead_letter_code(stack: &Stack, queue: &str, message_id: uuid::Uuid) -> String {
    let conn = messaging::amqp::connect(&stack.sandbox().amqp_url(), "dlq reader")
        .await
        .expect("connect");
    let channel = conn.create_channel().await.expect("channel");
    let code = eventually(Duration::from_secs(30), || {
        let channel = channel.clone();
        async move {
            let got = channel
                .basic_get(
                    queue.into(),
                    lapin::options::BasicGetOptions { no_ack: false },
                )
                .await
                .map_err(|e| e.to_string())?;
            let Some(message) = got else {
                return Err(format!("{queue} is empty"));
            };
            let id = message
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_owned());
            let code = messaging::envelope::header_str(
                &message.delivery.properties,
                messaging::consumer::ERROR_CODE_HEADER,
            );
            let _ = message
                .delivery
                .acker
                .nack(lapin::options::BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await;
            match (id, code) {
                (Some(id), Some(code)) if id == message_id.to_string() => Ok(code),
                (id, _) => Err(format!("{queue} holds {id:?}, not {message_id}")),
            }
        }
    })
    .await;
    let _ = conn.close(200, "done".into()).await;
    code
}

#[tokio::test]
async fn events_from_the_wrong_broker_user_are_dead_lettered_and_change_nothing() {
    let stack = Stack::start(StackOptions::default()).await;
    let vhost = stack.sandbox().vhost().to_owned();
    let (_users, creds) = service_users(&vhost, stack.sandbox().id()).await;
    let url_of = |service: &str| {
        let (_, user, password) = creds.iter().find(|(s, _, _)| s == service).unwrap();
        amqp_url(user, password, &vhost)
    };
    // Each service publishes as its own user and accepts each event type only from its
    // producer's user; the harness (guest) is the operator.
    let env = restricted_env(&creds, &vhost);
    for s in Service::ALL {
        stack.kill(s);
    }
    for s in Service::ALL {
        stack.start_service_with_env(s, &env).await;
    }
    // The saga runs with the per-service users.
    stack.seed_stock("AUTHENTIC", 5).await;
    stack.deposit("ann", 1000, "EUR").await;
    let confirmed = stack
        .place_order_ok(&order_request("ann", "EUR", &[("AUTHENTIC", 1, 100)]))
        .await;
    stack.wait_for_status(&confirmed, "confirmed").await;

    // An order held `reserved`: payment-svc is stopped, so only a (forged) OrderConfirmed
    // could make its stock sold.
    stack.kill(Service::Payment);
    let reserved = stack
        .place_order_ok(&order_request("ann", "EUR", &[("AUTHENTIC", 2, 100)]))
        .await;
    stack.wait_for_status(&reserved, "reserved").await;
    let stock_before = stack.stock("AUTHENTIC").await.1;

    // 1. OrderConfirmed from payment-svc's user, sent back to inventory-svc through the
    //    replay exchange, claiming (in the relay header) to come from order-svc's user.
    let order_user = &creds.iter().find(|(s, _, _)| s == "order-svc").unwrap().1;
    let forged_confirm = messaging::Envelope::wrap(
        &events::Event::OrderConfirmed(events::catalog::OrderConfirmed {
            order_id: reserved.parse().unwrap(),
        }),
        "order-svc",
        None,
    );
    publish_as(
        &url_of("payment-svc"),
        &forged_confirm,
        "saga.redeliver",
        "inventory-svc",
        &[(messaging::authenticity::PUBLISHED_BY_HEADER, order_user)],
    )
    .await;
    assert_eq!(
        dead_letter_code(&stack, "inventory-svc.dlq", forged_confirm.message_id).await,
        "forged_producer"
    );
    assert_eq!(
        stack.stock("AUTHENTIC").await.1,
        stock_before,
        "the stock did not change"
    );

    // 2. and 3. FundsDeposited from order-svc's user: injected into payment-svc's retry
    //    queue (the broker moves it to payment-svc a second later), and through the
    //    replay exchange.
    stack.start_service_with_env(Service::Payment, &env).await;
    let deposits = |wallet: serde_json::Value| {
        let (balance, captured, refunded) = saga_tests::saga_support::wallet_figures(&wallet);
        balance + captured - refunded
    };
    let deposits_before = deposits(stack.wallet("ann").await.1);
    let mut forged = Vec::new();
    for (exchange, key) in [
        ("saga.retry", "payment-svc.retry.1s"),
        ("saga.redeliver", "payment-svc"),
    ] {
        let deposit = messaging::Envelope::wrap(
            &events::Event::FundsDeposited(events::catalog::FundsDeposited {
                customer_id: "ann".into(),
                amount: 1_000_000,
                currency: "EUR".into(),
            }),
            "sagactl",
            None,
        );
        publish_as(&url_of("order-svc"), &deposit, exchange, key, &[]).await;
        forged.push(deposit.message_id);
    }
    for message_id in forged {
        assert_eq!(
            dead_letter_code(&stack, "payment-svc.dlq", message_id).await,
            "forged_producer"
        );
    }
    assert_eq!(
        deposits(stack.wallet("ann").await.1),
        deposits_before,
        "no money appeared"
    );
}
