//! A whole saga for one test: the three real service binaries as OS processes, in a
//! [`Sandbox`] of their own, with helpers to drive them over HTTP and AMQP and to check
//! what they did.
//!
//! The binaries are the ones `cargo build --workspace --bins` left next to the test
//! executable (`target/debug`), started with the environment variables of the contract.
//! Each one logs to a file in a temporary directory; when a test fails, the tail of every
//! log is printed and the directory is kept. Dropping the [`Stack`], on success or while a
//! test panics, kills the processes and removes the vhost and the databases.
//!
//! The harness itself plays the operator and the client: it publishes straight to the
//! broker (never through the stack's proxy, so it can still seed while the services are
//! cut off) and reads every result through the public HTTP API.

use std::collections::HashMap;
use std::fmt::Display;
use std::fs::{File, OpenOptions};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use events::catalog::{FundsDeposited, StockAdjusted};
use events::{Event, EventType};
use lapin::{BasicProperties, Connection};
use messaging::Envelope;
use messaging::publisher::{ConfirmedPublisher, OutgoingMessage};
use messaging::topology::EVENTS_EXCHANGE;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use sagactl::verify::{self, Endpoints, Expected, Snapshot};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::poll::{Poll, eventually, until};
use crate::prometheus;
use crate::proxy::TcpProxy;
use crate::sandbox::{self, Sandbox};

/// How long the three services get to answer `/healthz` 200 after being spawned.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

/// Lines of each log printed when a test fails.
const LOG_TAIL_LINES: usize = 80;

/// One of the three services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    Order,
    Inventory,
    Payment,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Order, Service::Inventory, Service::Payment];

    /// The binary's (and the service's) name.
    pub fn name(self) -> &'static str {
        match self {
            Service::Order => "order-svc",
            Service::Inventory => "inventory-svc",
            Service::Payment => "payment-svc",
        }
    }

    /// `SAGA_<PREFIX>_DATABASE_URL`, `SAGA_<PREFIX>_HTTP_ADDR`.
    pub fn env_prefix(self) -> &'static str {
        match self {
            Service::Order => "ORDER",
            Service::Inventory => "INVENTORY",
            Service::Payment => "PAYMENT",
        }
    }

    /// The contract's database name, which the sandbox suffixes.
    fn database(self) -> &'static str {
        match self {
            Service::Order => "orders",
            Service::Inventory => "inventory",
            Service::Payment => "payments",
        }
    }
}

impl Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a [`Stack`] is started.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// `SAGA_ORDER_DEADLINE_SECS`.
    pub deadline_secs: f64,
    /// Route the services' AMQP through a [`TcpProxy`] (see [`Stack::proxy`]).
    pub amqp_via_proxy: bool,
    /// Route the services' PostgreSQL connections through a [`TcpProxy`] (see
    /// [`Stack::db_proxy`]): a database outage for this stack alone.
    pub db_via_proxy: bool,
    /// How long the waiting helpers (`seed_stock`, `wait_for_status`, …) wait.
    pub wait: Duration,
    /// More environment variables for every service (`SAGA_CONCURRENCY`, say).
    pub extra_env: Vec<(String, String)>,
    /// Broker URLs (comma-separated) the services and the harness use instead of the
    /// sandbox's vhost on the shared broker: a private cluster's nodes.
    pub broker: Option<String>,
    /// The directory the services' binaries are started from, instead of the current
    /// build's ([`binary_path`]): the stack's own processes and its replicas run the
    /// previous release's, say ([`crate::upgrade`]).
    pub binaries: Option<PathBuf>,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            deadline_secs: 30.0,
            amqp_via_proxy: false,
            db_via_proxy: false,
            wait: Duration::from_secs(30),
            extra_env: Vec::new(),
            broker: None,
            binaries: None,
        }
    }
}

impl StackOptions {
    pub fn deadline_secs(mut self, secs: f64) -> Self {
        self.deadline_secs = secs;
        self
    }

    pub fn with_proxy(mut self) -> Self {
        self.amqp_via_proxy = true;
        self
    }

    pub fn with_db_proxy(mut self) -> Self {
        self.db_via_proxy = true;
        self
    }

    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra_env.push((name.into(), value.into()));
        self
    }

    pub fn broker(mut self, urls: impl Into<String>) -> Self {
        self.broker = Some(urls.into());
        self
    }

    pub fn binaries(mut self, dir: impl Into<PathBuf>) -> Self {
        self.binaries = Some(dir.into());
        self
    }
}

/// The body of `POST /orders` for `items` given as `(sku, quantity, unit_price)`.
pub fn order_request(customer_id: &str, currency: &str, items: &[(&str, i64, i64)]) -> Value {
    json!({
        "customer_id": customer_id,
        "currency": currency,
        "items": items
            .iter()
            .map(|(sku, quantity, unit_price)| json!({"sku": sku, "quantity": quantity, "unit_price": unit_price}))
            .collect::<Vec<_>>(),
    })
}

/// The `Retry-After` of an answer, in whole seconds as order-svc sends it when it sheds
/// load; `None` when absent or not a number.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse().ok().map(Duration::from_secs)
}

/// The directory of the current build's binaries: `target/<profile>`, which holds the
/// `deps` directory of the running test executable.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} has no grandparent directory", exe.display()))
        .to_owned()
}

/// The file of the binary `name` in `dir`.
pub fn binary_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// Where the service binaries are: `target/<profile>/<name>`, next to the `deps`
/// directory that holds the running test executable.
pub fn binary_path(name: &str) -> PathBuf {
    let path = binary_in(&profile_dir(), name);
    assert!(
        path.is_file(),
        "{} not found: the end-to-end tests run the real service binaries; \
         run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// Where the tests' own listeners get their ports: below the kernel's ephemeral range
/// (32768-60999 by default), where neither a `bind` to port 0 nor a client's outgoing
/// connection ever lands, below the ports of a test RabbitMQ cluster (20000 and up, see
/// `cluster`) and below RabbitMQ's management port 15672.
const TEST_PORTS: std::ops::Range<u16> = 10_000..15_600;

/// The next port of [`TEST_PORTS`] this process hands out. It starts at a place drawn
/// from the process id, so that one test binary after another do not begin on the same
/// ports.
fn port_cursor() -> &'static std::sync::atomic::AtomicU32 {
    static CURSOR: std::sync::OnceLock<std::sync::atomic::AtomicU32> = std::sync::OnceLock::new();
    CURSOR.get_or_init(|| {
        let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
        std::sync::atomic::AtomicU32::new(std::process::id().wrapping_mul(7919) % span)
    })
}

/// `N` ports on 127.0.0.1 that nobody listens on right now, all different, and different
/// from every other port this process has handed out. They come one after another from
/// [`TEST_PORTS`], each checked free by binding it: a port drawn from the kernel with a
/// `bind` to port 0 and let go could be handed again to another test running at the same
/// time, or taken as the local port of an outgoing connection before its service listens
/// on it, and both happened (a service of a test stack could not listen).
pub fn free_ports<const N: usize>() -> [SocketAddr; N] {
    std::array::from_fn(|_| next_free_port())
}

fn next_free_port() -> SocketAddr {
    use std::sync::atomic::Ordering;
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    for _ in 0..span {
        let step = port_cursor().fetch_add(1, Ordering::Relaxed) % span;
        let port = TEST_PORTS.start + u16::try_from(step).expect("a step is below the span");
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().expect("a bound listener's address");
        }
    }
    panic!("no free port left in {TEST_PORTS:?} on 127.0.0.1");
}

/// One port nobody listens on right now (see [`free_ports`]).
pub fn free_port() -> SocketAddr {
    let [addr] = free_ports();
    addr
}

/// A link to the broker for publishing, opened on first use.
type BrokerLink = (Connection, ConfirmedPublisher);

/// The three services of one test, running.
pub struct Stack {
    options: StackOptions,
    /// Sends the operator token ([`crate::auth`]) unless a request names its own.
    http: reqwest::Client,
    /// Sends no token (a request given an empty `authorization` header goes through it).
    anonymous_http: reqwest::Client,
    addrs: HashMap<Service, SocketAddr>,
    amqp_url_for_services: String,
    log_dir: PathBuf,
    pub(crate) children: Mutex<HashMap<Service, Child>>,
    publisher: tokio::sync::Mutex<Option<BrokerLink>>,
    proxy: Option<TcpProxy>,
    /// What the harness published as StockAdjusted and FundsDeposited (through
    /// [`Stack::seed_stock`] and [`Stack::deposit`]): totals known without asking the
    /// services, which the invariant checks compare stock and wallets with.
    published: Mutex<Expected>,
    db_proxy: Option<TcpProxy>,
    // Last: fields drop in order, and the vhost and databases go once nothing uses them.
    sandbox: Sandbox,
}

impl Stack {
    /// Starts the three services in a fresh sandbox and waits until all three are healthy.
    /// Panics (after printing their logs) if they are not within [`STARTUP_DEADLINE`].
    pub async fn start(options: StackOptions) -> Stack {
        let sandbox = Sandbox::create(&Service::ALL.map(Service::database)).await;
        let proxy = if options.amqp_via_proxy {
            Some(
                TcpProxy::start(sandbox::broker_addr())
                    .await
                    .expect("starting the AMQP proxy"),
            )
        } else {
            None
        };
        let db_proxy = if options.db_via_proxy {
            Some(
                TcpProxy::start(sandbox::postgres_addr())
                    .await
                    .expect("starting the PostgreSQL proxy"),
            )
        } else {
            None
        };
        let amqp_url_for_services = match (&options.broker, &proxy) {
            (Some(urls), _) => urls.clone(),
            (None, Some(p)) => sandbox.amqp_url_via(p.addr()),
            (None, None) => sandbox.amqp_url(),
        };
        let log_dir = std::env::temp_dir().join("saga-tests").join(sandbox.id());
        std::fs::create_dir_all(&log_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_dir.display()));
        let stack = Stack {
            http: crate::auth::operator_client(),
            anonymous_http: platform::crypto::http_client()
                .no_proxy()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("building an HTTP client"),
            addrs: Service::ALL
                .into_iter()
                .zip(free_ports::<{ Service::ALL.len() }>())
                .collect(),
            amqp_url_for_services,
            log_dir,
            children: Mutex::new(HashMap::new()),
            publisher: tokio::sync::Mutex::new(None),
            proxy,
            published: Mutex::new(Expected::default()),
            db_proxy,
            sandbox,
            options,
        };
        // A panic from here on drops `stack`, which prints the logs and cleans up.
        for service in Service::ALL {
            stack.spawn(service);
        }
        stack.wait_healthy(&Service::ALL).await;
        stack
    }

    /// The environment every service process of this stack gets.
    pub fn service_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "SAGA_AMQP_URL".to_owned(),
                self.amqp_url_for_services.clone(),
            ),
            (
                "SAGA_LOG".to_owned(),
                std::env::var("SAGA_LOG")
                    .unwrap_or_else(|_| "info,sqlx=warn,lapin=warn".to_owned()),
            ),
            (
                "SAGA_ORDER_DEADLINE_SECS".to_owned(),
                self.options.deadline_secs.to_string(),
            ),
            (
                "SAGA_AUTH_JWKS_FILE".to_owned(),
                crate::auth::jwks_path().display().to_string(),
            ),
        ];
        // Every service gets all three addresses and databases: harmless to the others,
        // and a service that read the wrong variable would be caught by a port clash.
        for s in Service::ALL {
            let prefix = s.env_prefix();
            env.push((
                format!("SAGA_{prefix}_DATABASE_URL"),
                match &self.db_proxy {
                    Some(p) => self.sandbox.database_url_via(s.database(), p.addr()),
                    None => self.sandbox.database_url(s.database()),
                },
            ));
            env.push((
                format!("SAGA_{prefix}_HTTP_ADDR"),
                self.addrs[&s].to_string(),
            ));
        }
        env.extend(self.options.extra_env.iter().cloned());
        env
    }

    fn log_file(&self, service: Service) -> File {
        let path = self.log_path(service);
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
    }

    fn spawn(&self, service: Service) {
        self.spawn_from(service, &self.binary(service), &[]);
    }

    /// The binary this stack starts `service` from: the one in the options' directory
    /// ([`StackOptions::binaries`]), or the current build's.
    pub fn binary(&self, service: Service) -> PathBuf {
        match &self.options.binaries {
            Some(dir) => binary_in(dir, service.name()),
            None => binary_path(service.name()),
        }
    }

    /// Starts `service` again with `env` on top of the stack's own (other credentials, say).
    pub async fn start_service_with_env(&self, service: Service, env: &[(String, String)]) {
        self.start_service_from(service, &self.binary(service), env)
            .await;
    }

    /// Starts `service` again from `binary` (another release's, say), with `env` on top of
    /// the stack's own, and waits until it is healthy.
    pub async fn start_service_from(
        &self,
        service: Service,
        binary: &Path,
        env: &[(String, String)],
    ) {
        assert!(!self.is_running(service), "{service} is already running");
        self.spawn_from(service, binary, env);
        self.wait_healthy(&[service]).await;
    }

    /// A process of this stack, not started: `binary` with the stack's environment and
    /// `env` on top, its output to `log`, killed when the test process dies.
    pub(crate) fn service_command(
        &self,
        binary: &Path,
        env: &[(String, String)],
        log: File,
    ) -> Command {
        let mut command = Command::new(binary);
        command
            .envs(self.service_env())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            // The error chain says enough; anyhow backtraces would bury the log tails.
            .env("RUST_LIB_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating a log file handle"))
            .stderr(log);
        die_with_the_test(&mut command);
        command
    }

    fn spawn_from(&self, service: Service, binary: &Path, env: &[(String, String)]) {
        let log = self.log_file(service);
        let child = self
            .service_command(binary, env, log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {service} ({}): {e}", binary.display()));
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(service, child);
    }

    /// Why `service` is not running, if it is not.
    fn exit_status(&self, service: Service) -> Option<String> {
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        match children.get_mut(&service) {
            None => Some("it was killed by the test".to_owned()),
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Some(format!("it exited ({status})")),
                Ok(None) => None,
                Err(e) => Some(format!("its status is unknown: {e}")),
            },
        }
    }

    /// The process id of `service`, while the stack holds a process for it.
    pub fn pid(&self, service: Service) -> Option<u32> {
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&service)
            .map(Child::id)
    }

    pub fn is_running(&self, service: Service) -> bool {
        self.exit_status(service).is_none()
    }

    async fn wait_healthy(&self, services: &[Service]) {
        for &service in services {
            let result = until(STARTUP_DEADLINE, || async move {
                if let Some(why) = self.exit_status(service) {
                    return Poll::Failed(format!("{service} is not running: {why}"));
                }
                match self.try_get(service, "/healthz").await {
                    Ok((StatusCode::OK, _)) => Poll::Ready(()),
                    Ok((status, body)) => {
                        Poll::Pending(format!("{service} /healthz answered {status} {body}"))
                    }
                    Err(e) => Poll::Pending(format!("{service} /healthz: {e}")),
                }
            })
            .await;
            if let Err(last) = result {
                panic!(
                    "{service} did not become healthy: {last} (logs in {})",
                    self.log_dir.display()
                );
            }
        }
    }

    /// SIGKILLs `service` (no graceful shutdown: in-flight work is lost mid-way) and
    /// reaps it.
    pub fn kill(&self, service: Service) {
        let child = self
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&service);
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts `service` again with the same environment (same port, database and vhost)
    /// and waits until it is healthy. Its log continues in the same file.
    pub async fn start_service(&self, service: Service) {
        self.start_service_unwaited(service);
        self.wait_healthy(&[service]).await;
    }

    /// [`Stack::start_service`] without waiting: for a start during an outage, which the
    /// service is healthy only after ([`Stack::wait_service_healthy`]).
    pub fn start_service_unwaited(&self, service: Service) {
        assert!(!self.is_running(service), "{service} is already running");
        self.spawn(service);
    }

    /// Waits until `service` answers `/healthz` with 200; panics if it exits or the startup
    /// deadline passes.
    pub async fn wait_service_healthy(&self, service: Service) {
        self.wait_healthy(&[service]).await;
    }

    // ------------------------------------------------------------------ accessors

    pub fn options(&self) -> &StackOptions {
        &self.options
    }

    /// The broker URL(s) the harness publishes to: the options' broker, or the sandbox's.
    pub fn broker_url(&self) -> String {
        self.options
            .broker
            .clone()
            .unwrap_or_else(|| self.sandbox.amqp_url())
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// The proxy between the services and the broker; panics unless the stack was started
    /// with [`StackOptions::with_proxy`].
    pub fn proxy(&self) -> &TcpProxy {
        self.proxy
            .as_ref()
            .expect("this stack was started without StackOptions::with_proxy()")
    }

    /// The proxy between the services and PostgreSQL; panics unless the stack was started
    /// with [`StackOptions::with_db_proxy`]. The test's own pools ([`Stack::db`]) bypass it.
    pub fn db_proxy(&self) -> &TcpProxy {
        self.db_proxy
            .as_ref()
            .expect("this stack was started without StackOptions::with_db_proxy()")
    }

    pub fn addr(&self, service: Service) -> SocketAddr {
        self.addrs[&service]
    }

    pub fn base_url(&self, service: Service) -> String {
        format!("http://{}", self.addrs[&service])
    }

    pub fn log_path(&self, service: Service) -> PathBuf {
        self.log_dir.join(format!("{}.log", service.name()))
    }

    /// The last lines of every service's log.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for s in Service::ALL {
            let path = self.log_path(s);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| format!("(no log at {}: {e})", path.display()));
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(LOG_TAIL_LINES);
            out.push_str(&format!(
                "----- {} (last {} of {} lines) -----\n",
                path.display(),
                lines.len() - from,
                lines.len()
            ));
            for line in &lines[from..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// A small pool on `service`'s database, for assertions on its tables.
    pub async fn db(&self, service: Service) -> PgPool {
        PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.sandbox.database_url(service.database()))
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {service}'s database: {e}"))
    }

    // ------------------------------------------------------------------ HTTP

    fn url(&self, service: Service, path: &str) -> String {
        format!("{}{path}", self.base_url(service))
    }

    /// Sends a request; the body is answered as JSON when it is JSON, as a JSON string
    /// otherwise, and as `null` when empty. It carries the operator token unless `headers`
    /// hold an `authorization` of their own; an empty one sends none.
    pub async fn try_request(
        &self,
        service: Service,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> reqwest::Result<(StatusCode, Value)> {
        let (status, _, value) = self
            .try_request_with_headers(service, method, path, headers, body)
            .await?;
        Ok((status, value))
    }

    /// [`Stack::try_request`] that also answers the response's headers (`Retry-After`,
    /// say).
    pub async fn try_request_with_headers(
        &self,
        service: Service,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> reqwest::Result<(StatusCode, HeaderMap, Value)> {
        let no_token = headers
            .iter()
            .any(|(name, value)| name.eq_ignore_ascii_case("authorization") && value.is_empty());
        let client = if no_token {
            &self.anonymous_http
        } else {
            &self.http
        };
        let mut request = client.request(method, self.url(service, path));
        for (name, value) in headers.iter().filter(|(name, value)| {
            !(value.is_empty() && name.eq_ignore_ascii_case("authorization"))
        }) {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok((status, headers, value))
    }

    /// [`Stack::try_request`] that panics when the service cannot be reached.
    pub async fn request(
        &self,
        service: Service,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let what = format!("{method} {service} {path}");
        self.try_request(service, method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{what} failed: {e}"))
    }

    pub async fn try_get(
        &self,
        service: Service,
        path: &str,
    ) -> reqwest::Result<(StatusCode, Value)> {
        self.try_request(service, Method::GET, path, &[], None)
            .await
    }

    pub async fn get(&self, service: Service, path: &str) -> (StatusCode, Value) {
        self.request(service, Method::GET, path, &[], None).await
    }

    pub async fn post_json(
        &self,
        service: Service,
        path: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> (StatusCode, Value) {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.request(
            service,
            Method::POST,
            path,
            &all,
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    /// `POST /orders` without an idempotency key.
    pub async fn place_order(&self, body: &Value) -> (StatusCode, Value) {
        self.post_json(Service::Order, "/orders", &[], body).await
    }

    /// `POST /orders` with `Idempotency-Key: key`.
    pub async fn place_order_with_key(&self, key: &str, body: &Value) -> (StatusCode, Value) {
        self.post_json(Service::Order, "/orders", &[("idempotency-key", key)], body)
            .await
    }

    /// `POST /orders`, asserting 202; returns the order id.
    pub async fn place_order_ok(&self, body: &Value) -> String {
        let (status, answer) = self.place_order(body).await;
        assert_eq!(
            status,
            StatusCode::ACCEPTED,
            "POST /orders {body} answered {answer}"
        );
        answer["order_id"]
            .as_str()
            .unwrap_or_else(|| panic!("POST /orders answered no order_id: {answer}"))
            .to_owned()
    }

    /// `GET /orders/{id}`.
    pub async fn order(&self, order_id: &str) -> (StatusCode, Value) {
        self.get(
            Service::Order,
            &format!("/orders/{}", sandbox::encode_segment(order_id)),
        )
        .await
    }

    /// `POST /orders/{id}/cancel`.
    pub async fn cancel(&self, order_id: &str) -> (StatusCode, Value) {
        let path = format!("/orders/{}/cancel", sandbox::encode_segment(order_id));
        self.request(Service::Order, Method::POST, &path, &[], None)
            .await
    }

    /// `GET /stock/{sku}`.
    pub async fn stock(&self, sku: &str) -> (StatusCode, Value) {
        self.get(
            Service::Inventory,
            &format!("/stock/{}", sandbox::encode_segment(sku)),
        )
        .await
    }

    /// `GET /wallets/{customer_id}`.
    pub async fn wallet(&self, customer_id: &str) -> (StatusCode, Value) {
        let path = format!("/wallets/{}", sandbox::encode_segment(customer_id));
        self.get(Service::Payment, &path).await
    }

    /// The value of a metric of `service`: the sum of its series whose labels include
    /// `labels` (0 when there is none yet).
    pub async fn metric(&self, service: Service, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (status, body) = self.get(service, "/metrics").await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{service} /metrics answered {status}"
        );
        let text = body
            .as_str()
            .unwrap_or_else(|| panic!("{service} /metrics is not text: {body}"));
        prometheus::sum(&prometheus::parse(text), name, labels)
    }

    /// Waits until order `order_id` has `status` and returns the order. Fails at once if
    /// the order settles in another terminal status (`rejected` and `cancelled` never move).
    pub async fn wait_for_status(&self, order_id: &str, status: &str) -> Value {
        eventually(self.options.wait, || async move {
            let (code, order) = self.order(order_id).await;
            let now = order["status"].as_str().unwrap_or("");
            if code == StatusCode::OK && now == status {
                Poll::Ready(order)
            } else if code == StatusCode::OK && matches!(now, "rejected" | "cancelled") {
                Poll::Failed(format!(
                    "order {order_id} settled as {now} while waiting for {status}: {order}"
                ))
            } else {
                Poll::Pending(format!("order {order_id}: {code} {order}"))
            }
        })
        .await
    }

    // ------------------------------------------------------------------ AMQP

    /// A confirm-mode publisher on the sandbox's vhost, straight to the broker.
    pub async fn publisher(&self) -> ConfirmedPublisher {
        let mut link = self.publisher.lock().await;
        if let Some((_, publisher)) = link.as_ref()
            && publisher.is_usable()
        {
            return publisher.clone();
        }
        let url = self.broker_url();
        let connection = messaging::amqp::connect(&url, "saga-tests publisher")
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot connect to {}: {e}",
                    messaging::amqp::redact_url(&url)
                )
            });
        let publisher = ConfirmedPublisher::open(&connection, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("cannot open a confirm-mode channel: {e}"));
        *link = Some((connection, publisher.clone()));
        publisher
    }

    async fn publish_message(&self, message: OutgoingMessage) {
        let publisher = self.publisher().await;
        if let Err(e) = publisher.publish(&message).await {
            panic!(
                "publishing to {} with key {:?} failed: {e}",
                message.exchange, message.routing_key
            );
        }
    }

    /// Publishes `event` as its contract producer would (fresh message id, no cause) and
    /// waits for the broker's confirm; returns the envelope sent.
    pub async fn publish(&self, event: &Event) -> Envelope {
        let envelope = Envelope::wrap(event, event.event_type().producer(), None);
        self.publish_envelope(&envelope).await;
        envelope
    }

    /// Publishes `envelope` as is (publish one twice to duplicate a message).
    pub async fn publish_envelope(&self, envelope: &Envelope) {
        let message = OutgoingMessage::event::<EventType>(envelope, None).unwrap_or_else(|e| {
            panic!("{e}: {envelope:?} cannot be published; use publish_raw for made-up types")
        });
        self.publish_message(message).await;
    }

    /// Publishes any bytes on `saga.events` with `routing_key`, as a persistent JSON
    /// message with no other properties.
    pub async fn publish_raw(&self, routing_key: &str, body: Vec<u8>) {
        self.publish_message(OutgoingMessage {
            exchange: EVENTS_EXCHANGE.to_owned(),
            routing_key: routing_key.to_owned(),
            body,
            properties: BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2),
        })
        .await;
    }

    /// available + reserved + sold of `sku` (what its adjustments add up to), 0 if unknown.
    async fn stock_total(&self, sku: &str) -> Result<i64, String> {
        match self.stock(sku).await {
            (StatusCode::NOT_FOUND, _) => Ok(0),
            (StatusCode::OK, s) => Ok(["available", "reserved", "sold"]
                .iter()
                .map(|k| s[*k].as_i64().unwrap_or(0))
                .sum()),
            (status, body) => Err(format!("GET /stock/{sku} answered {status} {body}")),
        }
    }

    /// balance + captured - refunded of `customer_id` (what was deposited), 0 if unknown.
    async fn wallet_total(&self, customer_id: &str) -> Result<i64, String> {
        match self.wallet(customer_id).await {
            (StatusCode::NOT_FOUND, _) => Ok(0),
            (StatusCode::OK, w) => Ok(w["balance"].as_i64().unwrap_or(0)
                + w["captured"].as_i64().unwrap_or(0)
                - w["refunded"].as_i64().unwrap_or(0)),
            (status, body) => Err(format!(
                "GET /wallets/{customer_id} answered {status} {body}"
            )),
        }
    }

    /// Publishes StockAdjusted(`sku`, `delta`) and waits until inventory shows it.
    pub async fn seed_stock(&self, sku: &str, delta: i64) {
        let before = self
            .stock_total(sku)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        self.publish(&Event::StockAdjusted(StockAdjusted {
            sku: sku.to_owned(),
            delta,
        }))
        .await;
        self.expect_published_stock(sku, delta);
        let want = before + delta;
        eventually(self.options.wait, || async move {
            match self.stock_total(sku).await {
                Ok(total) if total == want => Ok(()),
                Ok(total) => Err(format!(
                    "stock of {sku} adds up to {total}, waiting for {want}"
                )),
                Err(e) => Err(e),
            }
        })
        .await;
    }

    /// Publishes FundsDeposited(`customer_id`, `amount`, `currency`) and waits until
    /// payment-svc shows it.
    pub async fn deposit(&self, customer_id: &str, amount: i64, currency: &str) {
        let before = self
            .wallet_total(customer_id)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        self.publish(&Event::FundsDeposited(FundsDeposited {
            customer_id: customer_id.to_owned(),
            amount,
            currency: currency.to_owned(),
        }))
        .await;
        self.expect_published_deposit(customer_id, amount);
        let want = before + amount;
        eventually(self.options.wait, || async move {
            match self.wallet_total(customer_id).await {
                Ok(total) if total == want => Ok(()),
                Ok(total) => Err(format!(
                    "deposits of {customer_id} add up to {total}, waiting for {want}"
                )),
                Err(e) => Err(e),
            }
        })
        .await;
    }

    // ------------------------------------------------------------------ invariants

    /// Records a StockAdjusted that a test published itself (not through
    /// [`Stack::seed_stock`]) and expects inventory to apply.
    pub fn expect_published_stock(&self, sku: &str, delta: i64) {
        let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        *published.stock.entry(sku.to_owned()).or_default() += delta;
    }

    /// Records a FundsDeposited that a test published itself and expects payment-svc to
    /// apply.
    pub fn expect_published_deposit(&self, customer_id: &str, amount: i64) {
        let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        *published
            .deposits
            .entry(customer_id.to_owned())
            .or_default() += amount;
    }

    fn published(&self) -> Expected {
        self.published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `sagactl verify`'s `--expect-stock` and `--expect-deposits` for what the harness
    /// published: the totals that catch an adjustment or a deposit applied twice.
    pub fn verify_expectations(&self) -> Vec<String> {
        let published = self.published();
        let stock = published
            .stock
            .iter()
            .map(|(sku, total)| ("--expect-stock", sku, total));
        let deposits = published
            .deposits
            .iter()
            .map(|(customer, total)| ("--expect-deposits", customer, total));
        stock
            .chain(deposits)
            .flat_map(|(flag, name, total)| [flag.to_owned(), format!("{name}={total}")])
            .collect()
    }

    /// Everything the read endpoints say, as `sagactl verify` reads it.
    pub async fn snapshot(&self) -> Result<Snapshot, String> {
        let endpoints = Endpoints {
            order: self.base_url(Service::Order),
            inventory: self.base_url(Service::Inventory),
            payment: self.base_url(Service::Payment),
        };
        Snapshot::fetch(&self.http, &endpoints)
            .await
            .map_err(|e| format!("{e:#}"))
    }

    /// The breaches of the at-rest invariants right now (empty when they all hold), one
    /// sentence each: the rule of `sagactl verify`, what it is about and what is wrong.
    pub async fn invariant_breaches(&self) -> Vec<String> {
        match self.snapshot().await {
            Ok(s) => verify::check_against(&s, &self.published())
                .into_iter()
                .map(|b| format!("{}: {}: {}", b.rule, b.subject, b.detail))
                .collect(),
            Err(e) => vec![format!("cannot read the state of the stack: {e}")],
        }
    }

    /// Waits for the stack to come to rest (no order open, nothing in an outbox, an input
    /// or a retry queue) and then checks every invariant; panics with what is still in
    /// flight, or the breaches still seen, at the deadline. A look while messages are in
    /// flight proves nothing either way, so breaches only count at rest. The wait covers one
    /// order deadline, the longest an open order may rightly stay open.
    pub async fn assert_invariants(&self) {
        let deadline =
            self.options.wait + Duration::from_secs_f64(self.options.deadline_secs.max(0.0));
        eventually(deadline, || async {
            if let Some(busy) = self.in_flight().await? {
                return Err(format!("not at rest yet: {busy}"));
            }
            let found = self.invariant_breaches().await;
            if found.is_empty() {
                Ok(())
            } else {
                Err(format!("invariants broken:\n  - {}", found.join("\n  - ")))
            }
        })
        .await
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let children: Vec<_> = self
            .children
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (_, mut child) in children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            // libtest shows this output with the failure; the log directory stays.
            eprintln!(
                "\nthe test failed; service logs are kept in {}\n{}",
                self.log_dir.display(),
                self.log_tails()
            );
        } else if !sandbox::keep_leftovers() {
            let _ = std::fs::remove_dir_all(&self.log_dir);
        }
    }
}

/// Makes the child die when the test process does (Linux): a test run killed by a
/// timeout must not leave services behind that reconnect for ever. The signal is tied to
/// the spawning thread, which is the test's own thread for as long as the stack lives.
pub(crate) fn die_with_the_test(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id();
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls (prctl, getppid, kill).
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The test may have died between fork and prctl.
                if libc::getppid() as u32 != parent {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

#[cfg(test)]
mod tests {
    #[test]
    #[should_panic(expected = "run `cargo build --workspace --bins` first")]
    fn a_missing_binary_says_how_to_build_it() {
        super::binary_path("no-such-service");
    }

    #[test]
    fn ports_handed_out_are_all_different_and_below_the_ephemeral_range() {
        let mut ports: Vec<_> = super::free_ports::<32>().to_vec();
        ports.extend(super::free_ports::<32>());
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        assert!(
            ports.iter().all(|a| super::TEST_PORTS.contains(&a.port())),
            "{ports:?}"
        );
    }
}
