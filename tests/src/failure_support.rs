//! What the failure and chaos tests need beyond [`Stack`]'s everyday helpers: a look into
//! the broker's queues (dead-letter and retry queues read without removing anything), the
//! real `sagactl` and `saga-bench` binaries run against a stack, the messaging tables of
//! each service's database, and control of the shared PostgreSQL and RabbitMQ servers with
//! a guard that brings them back whatever happens to the test.
//!
//! Every wait here has a deadline: a check that cannot succeed fails the test with what it
//! saw last instead of hanging it.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use events::EventType;
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection};
use messaging::Envelope;
use messaging::consumer::{
    ATTEMPTS_HEADER, ERROR_CODE_HEADER, ERROR_HEADER, FAILED_AT_HEADER, QUEUE_HEADER,
};
use messaging::envelope::properties_for;
use messaging::publisher::OutgoingMessage;
use messaging::retry::{ATTEMPT_HEADER, RETRY_DELAYS};
use messaging::topology::{DEAD_LETTER_EXCHANGE, EVENTS_EXCHANGE, ServiceTopology};
use serde_json::{Value, json};
use sqlx::{Connection as _, PgConnection};

use crate::poll::{Poll, eventually, until};
use crate::sandbox;
use crate::stack::{Service, Stack, binary_path};

/// The statuses no event moves an order out of, plus `confirmed` (which only a customer's
/// cancel moves): an order in one of them has finished its saga.
pub const SETTLED: [&str; 3] = ["confirmed", "rejected", "cancelled"];

// ---------------------------------------------------------------------- broker probe

/// One message read from a queue (left in it).
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// The AMQP `message_id` property.
    pub message_id: Option<String>,
    /// The AMQP `type` property.
    pub kind: Option<String>,
    pub routing_key: String,
    pub body: Vec<u8>,
    /// Every header, strings as JSON strings and integers as JSON numbers.
    pub headers: BTreeMap<String, Value>,
}

impl QueuedMessage {
    pub fn header(&self, name: &str) -> &Value {
        self.headers.get(name).unwrap_or(&Value::Null)
    }

    /// `x-saga-error-code`, or "" when there is none.
    pub fn error_code(&self) -> &str {
        self.header(ERROR_CODE_HEADER).as_str().unwrap_or("")
    }

    /// Checks the headers the consumer puts on a dead-lettered message: the code, the
    /// explanation starting with it, the input queue, the attempt and a recent time.
    /// Returns what is wrong, one sentence per problem.
    pub fn dead_letter_problems(&self, code: &str, queue: &str, attempts: i64) -> Vec<String> {
        let mut wrong = Vec::new();
        let id = self.message_id.as_deref().unwrap_or("(no message id)");
        if self.error_code() != code {
            wrong.push(format!(
                "{id}: {ERROR_CODE_HEADER} is {}, expected {code:?}",
                self.header(ERROR_CODE_HEADER)
            ));
        }
        let error = self.header(ERROR_HEADER).as_str().unwrap_or("");
        if !error.starts_with(&format!("{code}: ")) || error.len() <= code.len() + 2 {
            wrong.push(format!(
                "{id}: {ERROR_HEADER} is {error:?}, expected \"{code}: <explanation>\""
            ));
        }
        if self.header(QUEUE_HEADER).as_str() != Some(queue) {
            wrong.push(format!(
                "{id}: {QUEUE_HEADER} is {}, expected {queue:?}",
                self.header(QUEUE_HEADER)
            ));
        }
        if self.header(ATTEMPTS_HEADER).as_i64() != Some(attempts) {
            wrong.push(format!(
                "{id}: {ATTEMPTS_HEADER} is {}, expected {attempts}",
                self.header(ATTEMPTS_HEADER)
            ));
        }
        let failed_at = self.header(FAILED_AT_HEADER).as_str().unwrap_or("");
        match DateTime::parse_from_rfc3339(failed_at) {
            Ok(t) => {
                let age = Utc::now() - t.with_timezone(&Utc);
                if age > chrono::Duration::minutes(10) || age < chrono::Duration::minutes(-1) {
                    wrong.push(format!(
                        "{id}: {FAILED_AT_HEADER} {failed_at} is not recent"
                    ));
                }
                if !failed_at.ends_with('Z') {
                    wrong.push(format!("{id}: {FAILED_AT_HEADER} {failed_at} is not UTC"));
                }
            }
            Err(e) => wrong.push(format!(
                "{id}: {FAILED_AT_HEADER} {failed_at:?} is not RFC 3339: {e}"
            )),
        }
        wrong
    }
}

fn header_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::Boolean(b) => json!(b),
        other => json!(format!("{other:?}")),
    }
}

/// A broker connection of its own on a stack's vhost, to look into queues.
pub struct BrokerProbe {
    connection: Connection,
}

impl BrokerProbe {
    pub async fn connect(stack: &Stack) -> BrokerProbe {
        BrokerProbe::at(&stack.broker_url()).await
    }

    /// A probe on the broker (and vhost) of `url`.
    pub async fn at(url: &str) -> BrokerProbe {
        let connection = tokio::time::timeout(
            Duration::from_secs(30),
            messaging::amqp::connect(url, "saga-tests probe"),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "connecting to {} took over 30 s",
                messaging::amqp::redact_url(url)
            )
        })
        .unwrap_or_else(|e| {
            panic!(
                "cannot connect to {}: {e}",
                messaging::amqp::redact_url(url)
            )
        });
        BrokerProbe { connection }
    }

    /// Ready messages in `queue`, exactly (asked over AMQP; the management API lags).
    pub async fn try_depth(&self, queue: &str) -> Result<u32, String> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(|e| format!("opening a channel: {e}"))?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("queue {queue}: {e}"))?;
        let _ = channel.close(200, "counted".into()).await;
        Ok(declared.message_count())
    }

    pub async fn depth(&self, queue: &str) -> u32 {
        self.try_depth(queue)
            .await
            .unwrap_or_else(|e| panic!("cannot count {queue}: {e}"))
    }

    /// Waits until `queue` holds exactly `want` messages.
    pub async fn wait_depth(&self, queue: &str, want: u32, deadline: Duration) {
        eventually(deadline, || async move {
            match self.try_depth(queue).await {
                Ok(n) if n == want => Ok(()),
                Ok(n) => Err(format!("{queue} holds {n} messages, waiting for {want}")),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Up to `limit` messages of `queue`, left in it: taken unacked, then handed back by
    /// closing the channel.
    pub async fn peek(&self, queue: &str, limit: usize) -> Vec<QueuedMessage> {
        self.get(queue, limit, false).await
    }

    /// The first message of `queue`, taken off it for good (acknowledged), or `None` when
    /// the queue is empty.
    pub async fn take(&self, queue: &str) -> Option<QueuedMessage> {
        self.get(queue, 1, true).await.pop()
    }

    /// Up to `limit` messages of `queue` by basic.get; acknowledged when `keep` (taken off
    /// the queue), else handed back by closing the channel.
    async fn get(&self, queue: &str, limit: usize, keep: bool) -> Vec<QueuedMessage> {
        let channel = self
            .connection
            .create_channel()
            .await
            .unwrap_or_else(|e| panic!("opening a channel: {e}"));
        let mut out = Vec::new();
        while out.len() < limit {
            let got = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: keep })
                .await
                .unwrap_or_else(|e| panic!("basic.get on {queue}: {e}"));
            let Some(message) = got else { break };
            let d = message.delivery;
            let p = &d.properties;
            let short =
                |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| s.as_str().to_owned());
            out.push(QueuedMessage {
                message_id: short(p.message_id()),
                kind: short(p.kind()),
                routing_key: d.routing_key.as_str().to_owned(),
                headers: p
                    .headers()
                    .as_ref()
                    .map(|h| {
                        h.inner()
                            .iter()
                            .map(|(k, v)| (k.as_str().to_owned(), header_json(v)))
                            .collect()
                    })
                    .unwrap_or_default(),
                body: d.data,
            });
        }
        // Closing the channel returns every unacked message to the queue.
        let _ = channel.close(200, "read".into()).await;
        out
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }
}

// ---------------------------------------------------------------------- sagactl

/// What one run of `sagactl` (or `saga-bench`) did.
#[derive(Debug, Clone)]
pub struct SagactlRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl SagactlRun {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// stdout as JSON (for `--json`), panicking with the whole run when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("no JSON printed ({e}): {self:?}");
        })
    }
}

/// Longest a `sagactl` or `saga-bench` run may take before it is killed and the test fails.
pub const SAGACTL_DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------- Stack additions

impl Stack {
    pub async fn probe(&self) -> BrokerProbe {
        BrokerProbe::connect(self).await
    }

    /// Runs the real `sagactl` (next to the service binaries) against this stack, with
    /// `env` added (EDITOR, say). Killed, and the test failed, after [`SAGACTL_DEADLINE`].
    pub async fn sagactl(&self, args: &[&str], env: &[(&str, &str)]) -> SagactlRun {
        self.run_command_line("sagactl", args, env).await
    }

    /// The real `sagactl` configured for this stack, not started; killed when dropped.
    pub fn sagactl_command(&self, args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
        self.command_line("sagactl", args, env)
    }

    /// `sagactl --json <args>`, asserting exit 0; returns what it printed.
    pub async fn sagactl_json(&self, args: &[&str], env: &[(&str, &str)]) -> Value {
        self.command_line_json("sagactl", args, env).await
    }

    /// `saga-bench --json <args>` (the load generator and the benchmarks) against this
    /// stack, asserting exit 0; returns what it printed.
    pub async fn saga_bench_json(&self, args: &[&str], env: &[(&str, &str)]) -> Value {
        self.command_line_json("saga-bench", args, env).await
    }

    /// Runs the real command line `binary` (`sagactl`, `saga-bench`) against this stack.
    async fn run_command_line(
        &self,
        binary: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> SagactlRun {
        let child = self
            .command_line(binary, args, env)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let output = output_within(child, SAGACTL_DEADLINE)
            .await
            .unwrap_or_else(|e| panic!("{binary} {args:?}: {e}"));
        SagactlRun {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The real command line `binary` configured for this stack (both take the same
    /// connection settings), not started; killed when dropped.
    fn command_line(
        &self,
        binary: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(binary_path(binary));
        command
            .args(args)
            .env("SAGA_AMQP_URL", self.sandbox().amqp_url())
            .env("SAGA_ORDER_URL", self.base_url(Service::Order))
            .env("SAGA_INVENTORY_URL", self.base_url(Service::Inventory))
            .env("SAGA_PAYMENT_URL", self.base_url(Service::Payment))
            .env("SAGA_MANAGEMENT_URL", sandbox::management_api())
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// `<binary> --json <args>`, asserting exit 0; returns what it printed.
    async fn command_line_json(&self, binary: &str, args: &[&str], env: &[(&str, &str)]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let run = self.run_command_line(binary, &all, env).await;
        assert!(run.success(), "{binary} {all:?} failed: {run:?}");
        run.json()
    }

    /// `sagactl dlq list`: messages per dead-letter queue, by queue name.
    pub async fn dlq_counts(&self) -> BTreeMap<String, i64> {
        let listed = self.sagactl_json(&["dlq", "list"], &[]).await;
        listed["queues"]
            .as_array()
            .unwrap_or_else(|| panic!("sagactl dlq list printed no queues: {listed}"))
            .iter()
            .map(|q| {
                (
                    q["queue"].as_str().unwrap_or("?").to_owned(),
                    q["messages"].as_i64().unwrap_or(-1),
                )
            })
            .collect()
    }

    /// Publishes `body` as is on `saga.events` with `routing_key`, persistent, with the
    /// AMQP `message_id` property set so the message can be found again.
    pub async fn publish_bytes(&self, routing_key: &str, body: Vec<u8>, message_id: &str) {
        let message = OutgoingMessage {
            exchange: EVENTS_EXCHANGE.to_owned(),
            routing_key: routing_key.to_owned(),
            body,
            properties: BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_message_id(message_id.into()),
        };
        self.publisher()
            .await
            .publish(&message)
            .await
            .unwrap_or_else(|e| panic!("publishing to {routing_key:?} failed: {e}"));
    }

    /// Puts a copy of `envelope` straight into `service`'s dead-letter queue, as the consumer
    /// would have parked it (with the `x-saga-*` headers of a failure), without the service
    /// ever seeing it: a DLQ holding a message that was in fact handled.
    pub async fn park_in_dlq(&self, service: Service, envelope: &Envelope, code: &str) {
        self.park_all_in_dlq(service, &[(envelope.clone(), code.to_owned())])
            .await;
    }

    /// [`Stack::park_in_dlq`] for many messages at once, in windows of confirms (fast
    /// enough to fill a DLQ with 100,000 messages).
    pub async fn park_all_in_dlq(&self, service: Service, parked: &[(Envelope, String)]) {
        let publisher = self.publisher().await;
        for window in parked.chunks(512) {
            let messages: Vec<OutgoingMessage> = window
                .iter()
                .map(|(envelope, code)| dead_letter_copy(service, envelope, code))
                .collect();
            for result in publisher.publish_all(&messages).await {
                if let Err(e) = result {
                    panic!("parking a message in {service}.dlq failed: {e}");
                }
            }
        }
    }

    /// `GET /healthz` of `service`: its status, or `None` when nothing answers.
    pub async fn health(&self, service: Service) -> Option<crate::StatusCode> {
        self.try_get(service, "/healthz").await.ok().map(|(s, _)| s)
    }

    /// Waits until `/healthz` of every service answers `want`.
    pub async fn wait_all_health(&self, want: crate::StatusCode, deadline: Duration) {
        eventually(deadline, || async move {
            let mut seen = Vec::new();
            for s in Service::ALL {
                let got = self.health(s).await;
                if got != Some(want) {
                    seen.push(format!("{s} answers {got:?}"));
                }
            }
            if seen.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "waiting for {want} everywhere: {}",
                    seen.join(", ")
                ))
            }
        })
        .await
    }

    /// A one-off connection to `service`'s database (the stack's pools are for assertions
    /// that run while the database is up; this one is opened and closed per question).
    async fn db_connection(&self, service: Service) -> Result<PgConnection, String> {
        let prefix = match service {
            Service::Order => "orders",
            Service::Inventory => "inventory",
            Service::Payment => "payments",
        };
        // A test that gives the services servers of its own (a primary and a standby, say)
        // names them in SAGA_<S>_DATABASE_URL (URLs, or hosts of one URL): ask the primary,
        // or else the first of them that answers.
        let key = format!("SAGA_{}_DATABASE_URL", service.env_prefix());
        let urls: Vec<String> = match self
            .options()
            .extra_env
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
        {
            Some((_, setting)) => platform::db_failover::candidate_urls(setting)
                .map_err(|e| format!("{service}'s database setting: {e:#}"))?,
            None => vec![self.sandbox().database_url(prefix)],
        };
        let mut errors = Vec::new();
        let mut standby = None;
        for url in &urls {
            match PgConnection::connect(url).await {
                Ok(mut conn) if urls.len() > 1 => {
                    let in_recovery: Result<bool, _> =
                        sqlx::query_scalar("SELECT pg_is_in_recovery()")
                            .fetch_one(&mut conn)
                            .await;
                    match in_recovery {
                        Ok(false) => return Ok(conn),
                        _ => standby = standby.or(Some(conn)),
                    }
                }
                Ok(conn) => return Ok(conn),
                Err(e) => errors.push(e.to_string()),
            }
        }
        standby.ok_or_else(|| format!("connecting to {service}'s database: {}", errors.join("; ")))
    }

    /// The answer of one `SELECT count(*) …` in `service`'s database.
    pub async fn db_count(&self, service: Service, sql: &'static str) -> Result<i64, String> {
        let mut conn = self.db_connection(service).await?;
        let n: Result<i64, _> = sqlx::query_scalar(sql).fetch_one(&mut conn).await;
        let _ = conn.close().await;
        n.map_err(|e| format!("{service}: {sql}: {e}"))
    }

    /// Outbox rows not yet published, per service.
    pub async fn unsent_outbox(&self) -> Result<BTreeMap<Service, i64>, String> {
        let mut out = BTreeMap::new();
        for s in Service::ALL {
            let n = self
                .db_count(s, "SELECT count(*) FROM outbox WHERE sent_at IS NULL")
                .await?;
            out.insert(s, n);
        }
        Ok(out)
    }

    /// Waits until no service has an unsent outbox row.
    pub async fn wait_outbox_drained(&self, deadline: Duration) {
        eventually(deadline, || async {
            let unsent = self.unsent_outbox().await?;
            if unsent.values().all(|n| *n == 0) {
                Ok(())
            } else {
                Err(format!("unsent outbox rows: {unsent:?}"))
            }
        })
        .await
    }

    /// What keeps the stack from being at rest right now (an open order, an unsent outbox
    /// row, a message waiting in an input or retry queue), or `None` when nothing is in
    /// flight. Only at rest do the contract's invariants have to hold.
    pub async fn in_flight(&self) -> Result<Option<String>, String> {
        let unsent = self.unsent_outbox().await?;
        if unsent.values().any(|n| *n > 0) {
            return Ok(Some(format!("unsent outbox rows: {unsent:?}")));
        }
        let orders = self.try_all_orders().await?;
        let open = orders
            .iter()
            .filter(|o| !SETTLED.contains(&o["status"].as_str().unwrap_or("?")))
            .count();
        if open > 0 {
            return Ok(Some(format!(
                "{open} of {} orders still open",
                orders.len()
            )));
        }
        let probe = self.probe().await;
        let mut waiting = Vec::new();
        for service in Service::ALL {
            let topology = ServiceTopology::<EventType>::new(service.name(), &[]);
            let queues = std::iter::once(topology.input_queue().to_owned())
                .chain(RETRY_DELAYS.iter().map(|d| topology.retry_queue(*d)));
            for queue in queues {
                match probe.try_depth(&queue).await {
                    Ok(0) => {}
                    Ok(n) => waiting.push(format!("{queue}: {n}")),
                    Err(e) => waiting.push(e),
                }
            }
        }
        probe.close().await;
        if waiting.is_empty() {
            Ok(None)
        } else {
            Ok(Some(format!("messages waiting: {}", waiting.join(", "))))
        }
    }

    /// Every order, as `GET /orders` lists them, page by page.
    pub async fn try_all_orders(&self) -> Result<Vec<Value>, String> {
        self.try_list_orders(None).await
    }

    /// Every order with `status` (every order with `None`), read page by page: the list
    /// endpoint gives at most 1,000 at a time.
    pub async fn try_list_orders(&self, status: Option<&str>) -> Result<Vec<Value>, String> {
        let filter = status.map_or_else(String::new, |s| format!("&status={s}"));
        let mut all: Vec<Value> = Vec::new();
        loop {
            let after = all
                .last()
                .and_then(|o| o["order_id"].as_str())
                .map_or_else(String::new, |id| format!("&after={id}"));
            let path = format!("/orders?limit=1000{filter}{after}");
            let page = match self.try_get(Service::Order, &path).await {
                Ok((crate::StatusCode::OK, body)) => body["orders"]
                    .as_array()
                    .cloned()
                    .ok_or_else(|| format!("GET {path} answered no list: {body}"))?,
                Ok((status, body)) => return Err(format!("GET {path} answered {status} {body}")),
                Err(e) => return Err(format!("GET {path}: {e}")),
            };
            let full = page.len() == 1000;
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }

    /// Waits until every order has settled (no order `pending` or `reserved`) and returns
    /// them all.
    pub async fn wait_all_settled(&self, deadline: Duration) -> Vec<Value> {
        eventually(deadline, || async {
            let orders = self.try_all_orders().await?;
            let open: Vec<String> = orders
                .iter()
                .filter(|o| !SETTLED.contains(&o["status"].as_str().unwrap_or("?")))
                .map(|o| format!("{} {}", o["order_id"], o["status"]))
                .collect();
            if open.is_empty() {
                Ok(orders)
            } else {
                Err(format!(
                    "{} of {} orders still open, e.g. {:?}",
                    open.len(),
                    orders.len(),
                    &open[..open.len().min(5)]
                ))
            }
        })
        .await
    }

    /// Customers whose wallet kept more or less than their confirmed orders cost:
    /// captured − refunded must equal the sum of the totals of their confirmed orders
    /// (a customer charged twice, or charged for an order that is not confirmed, breaks it).
    pub async fn charge_mismatches(&self, orders: &[Value]) -> Result<Vec<String>, String> {
        let mut confirmed: HashMap<String, i64> = HashMap::new();
        for o in orders {
            let customer = o["customer_id"].as_str().unwrap_or("?").to_owned();
            let total = o["total"].as_i64().unwrap_or(0);
            let entry = confirmed.entry(customer).or_default();
            if o["status"] == "confirmed" {
                *entry += total;
            }
        }
        let mut wrong = Vec::new();
        for (customer, want) in &confirmed {
            let (status, w) = self
                .try_get(
                    Service::Payment,
                    &format!("/wallets/{}", sandbox::encode_segment(customer)),
                )
                .await
                .map_err(|e| format!("GET /wallets/{customer}: {e}"))?;
            let kept = if status == crate::StatusCode::NOT_FOUND {
                0
            } else if status == crate::StatusCode::OK {
                w["captured"].as_i64().unwrap_or(0) - w["refunded"].as_i64().unwrap_or(0)
            } else {
                return Err(format!("GET /wallets/{customer} answered {status} {w}"));
            };
            if kept != *want {
                wrong.push(format!(
                    "{customer}: captured − refunded = {kept}, but the confirmed orders total {want} ({w})"
                ));
            }
        }
        wrong.sort();
        Ok(wrong)
    }

    /// Waits until every customer's wallet matches their confirmed orders.
    pub async fn wait_no_double_charge(&self, deadline: Duration) {
        eventually(deadline, || async {
            let orders = self.try_all_orders().await?;
            let wrong = self.charge_mismatches(&orders).await?;
            if wrong.is_empty() {
                Ok(())
            } else {
                Err(format!("wallets disagree with orders: {wrong:?}"))
            }
        })
        .await
    }
}

// ---------------------------------------------------------------------- shared servers

/// Runs a command with a deadline; `Ok(stdout)` on exit 0, else what went wrong.
pub async fn run_command(
    program: &str,
    args: &[&str],
    deadline: Duration,
) -> Result<String, String> {
    let what = format!("{program} {}", args.join(" "));
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let output = output_within(child, deadline)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{what} exited with {}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Waits for `child` (its standard output and error piped) and what it printed. A child
/// still running at `deadline` is killed, and the error holds what it had printed by then,
/// so a hang shows where it hung.
pub async fn output_within(
    mut child: tokio::process::Child,
    deadline: Duration,
) -> Result<std::process::Output, String> {
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncReadExt;
    type Printed = Arc<Mutex<Vec<u8>>>;
    fn drain<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
        pipe: Option<R>,
    ) -> (Printed, tokio::task::JoinHandle<()>) {
        let printed = Printed::default();
        let into = printed.clone();
        let reader = tokio::spawn(async move {
            let Some(mut pipe) = pipe else { return };
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
                into.lock()
                    .expect("not poisoned")
                    .extend_from_slice(&chunk[..n]);
            }
        });
        (printed, reader)
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = tokio::time::timeout(deadline, child.wait()).await;
    if status.is_err() {
        // Killed, its pipes close and both readers end with what it printed.
        let _ = child.kill().await;
    }
    // A process it started may still hold the pipes: what was read by then is enough.
    let read = |(printed, reader): (Printed, tokio::task::JoinHandle<()>)| async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        std::mem::take(&mut *printed.lock().expect("not poisoned"))
    };
    let (stdout, stderr) = (read(stdout).await, read(stderr).await);
    let printed = |read: Vec<u8>| String::from_utf8_lossy(&read).trim().to_owned();
    match status {
        Ok(Ok(status)) => Ok(std::process::Output {
            status,
            stdout,
            stderr,
        }),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "ran over {deadline:?} and was killed; it had printed\n--- stdout\n{}\n--- stderr\n{}",
            printed(stdout),
            printed(stderr)
        )),
    }
}

/// Blocking twin of [`output_within`]: `cmd` run to its end with stdin closed and its
/// output captured, as [`std::process::Command::output`] does, but killed, with an error
/// saying so, once it runs over `deadline`: a command that hangs fails its test instead of
/// holding up the whole run.
pub fn output_within_blocking(
    cmd: &mut std::process::Command,
    deadline: Duration,
) -> Result<std::process::Output, String> {
    use std::io::Read;
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::sync::mpsc::Receiver<Vec<u8>> {
        let (printed, read) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut all = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut all);
            }
            let _ = printed.send(all);
        });
        read
    }
    let (stdout, stderr) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let status = wait_within(&mut child, deadline).map_err(|e| format!("{what}: {e}"))?;
    // A process it started may still hold the pipes: what was read by then is enough.
    let read = |pipe: std::sync::mpsc::Receiver<Vec<u8>>| {
        pipe.recv_timeout(Duration::from_secs(5))
            .unwrap_or_default()
    };
    let (stdout, stderr) = (read(stdout), read(stderr));
    let Some(status) = status else {
        return Err(format!(
            "{what} ran over {deadline:?} and was killed; it had printed\n--- stdout\n{}\n--- stderr\n{}",
            String::from_utf8_lossy(&stdout).trim(),
            String::from_utf8_lossy(&stderr).trim()
        ));
    };
    Ok(std::process::Output {
        status,
        stdout,
        stderr,
    })
}

/// Waits for `child` to end, polling; kills it once it runs over `deadline` (`None`).
fn wait_within(
    child: &mut std::process::Child,
    deadline: Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let started = std::time::Instant::now();
    loop {
        match child.try_wait()? {
            Some(status) => return Ok(Some(status)),
            None if started.elapsed() >= deadline => {
                // Killed, its pipes close and their readers end with what it printed.
                let _ = child.kill();
                let _ = child.wait();
                return Ok(None);
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Blocking twin of [`run_command`], for `Drop`: the command is killed at the deadline.
fn run_command_blocking(program: &str, args: &[&str], deadline: Duration) -> Result<(), String> {
    let what = format!("{program} {}", args.join(" "));
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    match wait_within(&mut child, deadline) {
        Ok(Some(status)) if status.success() => Ok(()),
        Ok(Some(status)) => Err(format!("{what} exited with {status}")),
        Ok(None) => Err(format!("{what} ran over {deadline:?}")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// The newest PostgreSQL major version installed (`/etc/postgresql/<version>`).
pub fn postgres_version() -> String {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|v| {
        v.split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0))
            .collect::<Vec<_>>()
    });
    versions
        .pop()
        .expect("no PostgreSQL cluster under /etc/postgresql (pg_ctlcluster needs one)")
}

/// `pg_ctlcluster <version> main <action>` (`stop`, `start`, `restart`).
pub async fn pg_cluster(action: &str) -> Result<String, String> {
    let version = postgres_version();
    run_command(
        "pg_ctlcluster",
        &["--skip-systemctl-redirect", &version, "main", action],
        Duration::from_secs(60),
    )
    .await
}

/// `rabbitmqctl <args>`, with a deadline.
pub async fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    run_command("rabbitmqctl", args, Duration::from_secs(90)).await
}

/// Whether PostgreSQL accepts a connection and answers a query.
pub async fn postgres_answers() -> Result<(), String> {
    let url = format!("{}/postgres", sandbox::postgres_server_url());
    let mut conn = tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&url))
        .await
        .map_err(|_| "connecting to PostgreSQL took over 5 s".to_owned())?
        .map_err(|e| format!("PostgreSQL: {e}"))?;
    let one: Result<i32, _> = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await;
    let _ = conn.close().await;
    one.map(|_| ()).map_err(|e| format!("PostgreSQL: {e}"))
}

/// Whether the broker accepts an AMQP connection on `vhost`.
pub async fn broker_answers(vhost: &str) -> Result<(), String> {
    let url = sandbox::amqp_url(sandbox::broker_addr(), vhost);
    let connected = tokio::time::timeout(
        Duration::from_secs(5),
        messaging::amqp::connect(&url, "saga-tests readiness"),
    )
    .await
    .map_err(|_| "connecting to RabbitMQ took over 5 s".to_owned())?
    .map_err(|e| format!("RabbitMQ: {e}"))?;
    let _ = connected.close(200, "ready".into()).await;
    Ok(())
}

/// Waits until PostgreSQL answers.
pub async fn wait_postgres(deadline: Duration) -> Result<(), String> {
    until(deadline, || async {
        match postgres_answers().await {
            Ok(()) => Poll::Ready(()),
            Err(e) => Poll::Pending(e),
        }
    })
    .await
}

/// Waits until RabbitMQ has finished starting and accepts connections on `vhost`.
pub async fn wait_broker(vhost: &str, deadline: Duration) -> Result<(), String> {
    until(deadline, || async {
        if let Err(e) = rabbitmqctl(&["await_startup", "-t", "10"]).await {
            return Poll::Pending(e);
        }
        match broker_answers(vhost).await {
            Ok(()) => Poll::Ready(()),
            Err(e) => Poll::Pending(e),
        }
    })
    .await
}

/// Brings RabbitMQ's application and PostgreSQL back up when dropped, whatever happened:
/// a test that stops either server holds one for as long as it may have them down, and
/// leaves both running for everybody else even when it panics half-way through a fault.
pub struct ServersGuard {
    _private: (),
}

impl ServersGuard {
    #[allow(clippy::new_without_default)]
    pub fn new() -> ServersGuard {
        ServersGuard { _private: () }
    }

    /// Starts both servers if they are down and waits (bounded) until they answer.
    pub fn restore_blocking() -> Vec<String> {
        let mut problems = Vec::new();
        // start_app on a running node is a no-op; await_startup returns once it is up.
        if let Err(e) = run_command_blocking("rabbitmqctl", &["start_app"], Duration::from_secs(90))
        {
            problems.push(e);
        }
        if let Err(e) = run_command_blocking(
            "rabbitmqctl",
            &["await_startup", "-t", "60"],
            Duration::from_secs(75),
        ) {
            problems.push(e);
        }
        let version = postgres_version();
        // `start` fails when the cluster already runs, so ask first.
        let running = run_command_blocking(
            "pg_ctlcluster",
            &["--skip-systemctl-redirect", &version, "main", "status"],
            Duration::from_secs(30),
        )
        .is_ok();
        if !running
            && let Err(e) = run_command_blocking(
                "pg_ctlcluster",
                &["--skip-systemctl-redirect", &version, "main", "start"],
                Duration::from_secs(60),
            )
        {
            problems.push(e);
        }
        let pg_host = std::env::var("SAGA_PG_HOST").unwrap_or_else(|_| "127.0.0.1".to_owned());
        let ready = (0..60).any(|_| {
            let ok = run_command_blocking(
                "pg_isready",
                &["-q", "-h", &pg_host, "-t", "2"],
                Duration::from_secs(5),
            )
            .is_ok();
            if !ok {
                std::thread::sleep(Duration::from_millis(500));
            }
            ok
        });
        if !ready {
            problems.push("PostgreSQL is still not ready".to_owned());
        }
        problems
    }
}

impl Drop for ServersGuard {
    fn drop(&mut self) {
        let problems = ServersGuard::restore_blocking();
        if !problems.is_empty() {
            eprintln!(
                "could not make sure RabbitMQ and PostgreSQL run again:\n  {}",
                problems.join("\n  ")
            );
        }
    }
}

/// The copy of `envelope` a consumer of `service` would have dead-lettered with `code`.
fn dead_letter_copy(service: Service, envelope: &Envelope, code: &str) -> OutgoingMessage {
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes()));
    let mut headers = FieldTable::default();
    headers.insert(
        ERROR_HEADER.into(),
        text(&format!("{code}: parked by a test")),
    );
    headers.insert(ERROR_CODE_HEADER.into(), text(code));
    headers.insert(QUEUE_HEADER.into(), text(service.name()));
    headers.insert(ATTEMPTS_HEADER.into(), AMQPValue::LongLongInt(1));
    headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(1));
    headers.insert(
        FAILED_AT_HEADER.into(),
        text(&Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    );
    let properties = properties_for(
        envelope.message_id,
        &envelope.event_type,
        &envelope.correlation_id,
        &envelope.producer,
        envelope.occurred_at,
        None,
    )
    .with_headers(headers);
    OutgoingMessage {
        exchange: DEAD_LETTER_EXCHANGE.to_owned(),
        routing_key: format!("{}.dlq", service.name()),
        body: envelope.to_body(),
        properties,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str) -> tokio::process::Child {
        tokio::process::Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("sh starts")
    }

    #[tokio::test]
    async fn a_command_that_hangs_is_killed_and_shows_what_it_printed() {
        // The child hangs on purpose, past the deadline; nothing waits on a result here.
        let child = shell("echo working; echo 'waiting for the broker' >&2; exec sleep 600");
        let hung = output_within(child, Duration::from_millis(500))
            .await
            .expect_err("the child ran over its deadline");
        assert!(hung.contains("ran over"), "{hung}");
        assert!(hung.contains("working"), "{hung}");
        assert!(hung.contains("waiting for the broker"), "{hung}");
    }

    #[tokio::test]
    async fn a_command_that_ends_gives_its_status_and_output() {
        let output = output_within(
            shell("echo out; echo err >&2; exit 3"),
            Duration::from_secs(30),
        )
        .await
        .expect("the child ended");
        assert_eq!(output.status.code(), Some(3));
        assert_eq!(output.stdout, b"out\n");
        assert_eq!(output.stderr, b"err\n");
    }

    fn blocking_shell(script: &str) -> std::process::Command {
        let mut command = std::process::Command::new("sh");
        command.args(["-c", script]);
        command
    }

    #[test]
    fn a_blocking_command_that_hangs_is_killed_and_shows_what_it_printed() {
        // The child hangs on purpose, past the deadline; nothing waits on a result here.
        let script = "echo working; echo 'waiting for the broker' >&2; exec sleep 600";
        let hung = output_within_blocking(&mut blocking_shell(script), Duration::from_millis(500))
            .expect_err("the child ran over its deadline");
        assert!(hung.contains("ran over"), "{hung}");
        assert!(hung.contains("working"), "{hung}");
        assert!(hung.contains("waiting for the broker"), "{hung}");
    }

    #[test]
    fn a_blocking_command_that_ends_gives_its_status_and_output_with_stdin_closed() {
        // `cat` ends at once only if stdin is closed.
        let script = "cat; echo out; echo err >&2; exit 3";
        let output = output_within_blocking(&mut blocking_shell(script), Duration::from_secs(30))
            .expect("the child ended");
        assert_eq!(output.status.code(), Some(3));
        assert_eq!(output.stdout, b"out\n");
        assert_eq!(output.stderr, b"err\n");
    }
}
