//! What every command of a command line (`sagactl`, `saga-bench`) needs: connection
//! settings, the output mode, an HTTP client that carries its token, broker connections
//! named for the console, and the errors that decide the exit status.

use std::time::Duration;

use messaging::publisher::{ConfirmedPublisher, OutgoingMessage};
use reqwest::StatusCode;
use serde_json::Value;

use crate::options::{Connection, GlobalArgs, OutputFormat};

/// Cloned by `sagactl ui`, whose request handlers each hold one.
#[derive(Clone)]
pub struct Context {
    /// The command line's name (`sagactl`, `saga-bench`): its broker connections, its
    /// queues and its warnings are named after it.
    pub program: &'static str,
    pub conn: Connection,
    /// `-o`: table, json or jsonl.
    pub format: OutputFormat,
    /// Output is JSON (`-o json`, `-o jsonl` or `--json`): no text for people.
    pub json: bool,
    /// `--color`, resolved per stream by `output::use_color`.
    pub color: clap::ColorChoice,
    pub http: reqwest::Client,
    pub identity: crate::identity::Identity,
}

/// Errors whose kind sets the exit status.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A broker or service could not be reached (exit 3).
    #[error("{what} is not reachable at {url}: {cause}\n  hint: {hint}")]
    Unreachable {
        what: &'static str,
        url: String,
        cause: String,
        hint: &'static str,
    },
    /// The command ran and the answer is no (exit 1).
    #[error("{0}")]
    Refused(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Refused,
    Unreachable,
}

impl Failure {
    pub fn classify(e: &anyhow::Error) -> Failure {
        match e.downcast_ref::<CliError>() {
            Some(CliError::Unreachable { .. }) => Failure::Unreachable,
            _ => Failure::Refused,
        }
    }

    pub fn exit_code(self) -> i32 {
        match self {
            Failure::Refused => 1,
            Failure::Unreachable => 3,
        }
    }
}

const MANAGEMENT_HINT: &str =
    "enable it with `rabbitmq-plugins enable rabbitmq_management`, or set SAGA_MANAGEMENT_URL";

/// The typed client of the RabbitMQ management API.
pub type Management = rabbitmq_http_client::api::Client<String, String, String>;
pub use rabbitmq_http_client::api::HttpClientError;

/// One queue's message counters and rates (`message_stats`), absent until the queue has
/// seen traffic.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct QueueStats {
    pub name: String,
    #[serde(default)]
    pub message_stats: MessageStats,
}

/// The part of a queue's `message_stats` sagactl shows; a counter or rate the broker has
/// not reported yet is zero.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
#[serde(default)]
pub struct MessageStats {
    /// Deliveries since the queue was declared (`saga-bench bench`).
    pub deliver_get: u64,
    pub publish_details: Rate,
    pub deliver_get_details: Rate,
    pub ack_details: Rate,
}

/// Messages per second over the broker's sampling window.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
#[serde(default)]
pub struct Rate {
    pub rate: f64,
}

const STACK_HINT: &str = "is the stack up? Start it with ./scripts/stack.sh up, or point the matching SAGA_*_URL variable at it";

/// Which service a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Order,
    Inventory,
    Payment,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Order, Service::Inventory, Service::Payment];

    /// The service's name: `order-svc`, `inventory-svc`, `payment-svc`.
    pub fn name(self) -> &'static str {
        match self {
            Service::Order => "order-svc",
            Service::Inventory => "inventory-svc",
            Service::Payment => "payment-svc",
        }
    }
}

impl Context {
    /// The context of `program` run with `global`.
    pub fn new(program: &'static str, global: &GlobalArgs) -> Self {
        let format = if global.output.json {
            OutputFormat::Json
        } else {
            global.output.format
        };
        Context {
            program,
            conn: global.conn.clone(),
            format,
            json: format != OutputFormat::Table,
            color: global.output.color,
            http: platform::crypto::http_client()
                .timeout(Duration::from_secs(15))
                .default_headers(authorization_headers(program, &global.identity))
                .build()
                .expect("the HTTP client's TLS backend initialises"),
            identity: global.identity.clone(),
        }
    }

    fn base(&self, service: Service) -> (&'static str, &str) {
        let base = match service {
            Service::Order => &self.conn.order_url,
            Service::Inventory => &self.conn.inventory_url,
            Service::Payment => &self.conn.payment_url,
        };
        (service.name(), base)
    }

    /// Sends a request and returns the status and JSON body (Null when there is none).
    pub async fn call(
        &self,
        service: Service,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(StatusCode, Value)> {
        let (what, base) = self.base(service);
        let url = format!("{}{}", base.trim_end_matches('/'), path);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(b);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.map_err(|e| CliError::Unreachable {
            what,
            url: base.to_owned(),
            cause: root_cause(&e),
            hint: STACK_HINT,
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| CliError::Unreachable {
            what,
            url: base.to_owned(),
            cause: root_cause(&e),
            hint: STACK_HINT,
        })?;
        // An answer that is not JSON (an empty 202, a proxy's error page) has no body.
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok((status, json))
    }

    /// GET that must answer 2xx; a 4xx becomes a refusal carrying the service's message.
    pub async fn get_ok(&self, service: Service, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self
            .call(service, reqwest::Method::GET, path, None, &[])
            .await?;
        ok_or_refused(status, body)
    }

    /// POST of a JSON body that must answer 2xx; a 4xx becomes a refusal carrying the
    /// service's message.
    pub async fn post_ok(
        &self,
        service: Service,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<Value> {
        let (status, answer) = self
            .call(service, reqwest::Method::POST, path, Some(body), &[])
            .await?;
        ok_or_refused(status, answer)
    }

    /// A broker connection named for the console, or an error saying what to check.
    pub async fn broker(&self, purpose: &str) -> anyhow::Result<lapin::Connection> {
        messaging::amqp::connect(&self.conn.amqp_url, &format!("{} {purpose}", self.program))
            .await
            .map_err(|e| self.broker_unreachable(e).into())
    }

    pub fn broker_unreachable(&self, e: lapin::Error) -> CliError {
        CliError::Unreachable {
            what: "the broker",
            url: messaging::amqp::redact_url(&self.conn.amqp_url),
            cause: e.to_string(),
            hint: "is RabbitMQ running with the vhost in the URL? Set SAGA_AMQP_URL or --amqp-url",
        }
    }

    /// The vhost named in the AMQP URL (`/` when none), read by the same parser the
    /// broker connection uses.
    pub fn vhost(&self) -> String {
        messaging::amqp_nodes::first_url(&self.conn.amqp_url)
            .parse::<lapin::uri::AMQPUri>()
            .map_or_else(|_| "/".to_owned(), |uri| uri.vhost)
    }

    /// The RabbitMQ management API's typed client (`--management-url`, user and password).
    pub fn management(&self) -> Management {
        let endpoint = format!("{}/api", self.conn.management_url.trim_end_matches('/'));
        // A client of its own: `self.http` carries the services' bearer token.
        let http = platform::crypto::http_client()
            .timeout(Duration::from_secs(15))
            .build()
            .expect("the HTTP client's TLS backend initialises");
        Management::from_http_client(
            http,
            endpoint,
            self.conn.management_user.clone(),
            self.conn.management_password.clone(),
        )
    }

    /// A management API failure as sagactl reports it: not reachable (exit 3) or refused.
    pub fn management_failed(&self, what: &str, e: HttpClientError) -> anyhow::Error {
        match e {
            HttpClientError::RequestError { error, .. } => CliError::Unreachable {
                what: "the RabbitMQ management API",
                url: self.conn.management_url.clone(),
                cause: root_cause(&error),
                hint: MANAGEMENT_HINT,
            }
            .into(),
            other => {
                CliError::Refused(format!("the management API refused {what}: {other}")).into()
            }
        }
    }

    /// Message counters and rates of the vhost's queues, which the typed client's
    /// `QueueInfo` does not carry: the smallest typed read of the same endpoint.
    pub async fn queue_stats(&self, vhost: &str) -> anyhow::Result<Vec<QueueStats>> {
        let mut url = url::Url::parse(&self.conn.management_url)
            .map_err(|e| CliError::Refused(format!("--management-url is not a URL: {e}")))?;
        url.path_segments_mut()
            .map_err(|()| CliError::Refused("--management-url cannot hold a path".into()))?
            .pop_if_empty()
            .extend(["api", "queues", vhost]);
        url.query_pairs_mut()
            .append_pair("columns", "name,message_stats");
        let unreachable = |e: reqwest::Error| CliError::Unreachable {
            what: "the RabbitMQ management API",
            url: self.conn.management_url.clone(),
            cause: root_cause(&e),
            hint: MANAGEMENT_HINT,
        };
        // A client of its own, as for `management()`: `self.http` carries the services'
        // bearer token.
        let http = platform::crypto::http_client()
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build an HTTP client: {e}"))?;
        let resp = http
            .get(url)
            .basic_auth(
                &self.conn.management_user,
                Some(&self.conn.management_password),
            )
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(CliError::Refused(format!(
                "the management API answered {status} for the queues of vhost {vhost:?}"
            ))
            .into());
        }
        Ok(resp.json().await.map_err(unreachable)?)
    }

    /// Publishes one message with confirms on a fresh connection.
    pub async fn publish(&self, message: &OutgoingMessage) -> anyhow::Result<()> {
        let conn = self.broker("publish").await?;
        let publisher = ConfirmedPublisher::open(&conn, Duration::from_secs(10))
            .await
            .map_err(|e| self.broker_unreachable(e))?;
        let result = publisher.publish(message).await;
        close(conn).await;
        result.map_err(|e| CliError::Refused(format!("not published: {e}")).into())
    }
}

/// Closes a broker connection at the end of a command. What the command did is settled by
/// then (confirms received, acks sent), so a failure to close is only logged, and a close
/// the broker leaves unanswered is given up after a few seconds.
pub async fn close(conn: lapin::Connection) {
    messaging::amqp::close_quietly(&conn, "done").await;
}

/// A URL path from raw segments, each percent-encoded: a SKU, customer or vhost name may
/// hold `/`, `?`, `%` or spaces, which must stay inside their segment.
pub fn path(segments: &[&str]) -> String {
    let mut url = url::Url::parse("http://localhost/").unwrap_or_else(|_| unreachable!());
    if let Ok(mut p) = url.path_segments_mut() {
        p.clear().extend(segments);
    }
    url.path().to_owned()
}

pub fn ok_or_refused(status: StatusCode, body: Value) -> anyhow::Result<Value> {
    if status.is_success() {
        return Ok(body);
    }
    let message = body
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("the service answered {status}"));
    let code = body.get("error").and_then(Value::as_str).unwrap_or("error");
    let hint = if status == StatusCode::UNAUTHORIZED {
        "\n  hint: sagactl signs its requests with .stack/dev-signing-key.pem, which ./scripts/stack.sh up creates; elsewhere pass --signing-key or --token"
    } else {
        ""
    };
    Err(CliError::Refused(format!("{message} ({status}, {code}){hint}")).into())
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Every request carries the command line's bearer token, when it has one; without one the
/// services answer 401 and the command says so.
fn authorization_headers(
    program: &str,
    identity: &crate::identity::Identity,
) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    match identity.authorization() {
        Ok(Some(value)) => {
            if let Ok(value) = reqwest::header::HeaderValue::from_str(&value) {
                headers.insert(reqwest::header::AUTHORIZATION, value);
            }
        }
        Ok(None) => {}
        Err(e) => eprintln!("{program}: warning: requests go without a token: {e:#}"),
    }
    headers
}
