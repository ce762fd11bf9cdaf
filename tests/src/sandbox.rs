//! Per-test isolation on the shared servers: a RabbitMQ vhost and PostgreSQL databases
//! that belong to one test only, removed again when the [`Sandbox`] is dropped.
//!
//! Tests run in parallel against one PostgreSQL and one RabbitMQ. Queue and exchange names
//! are fixed by the contract (`order-svc`, `saga.events`, …), so two stacks can only
//! coexist in different vhosts; each service creates its own database on start, so fresh
//! database names are all a stack needs there. Everything is named after one short random
//! id (`saga-test-<id>`, `orders_t<id>`), so leftovers of a killed run are easy to spot.
//!
//! Where the servers are comes from the same variables as `scripts/lib.sh`:
//! `SAGA_PG_USERINFO` (`postgres`), `SAGA_PG_HOST` (`127.0.0.1`), `SAGA_PG_PORT` (`5432`),
//! `SAGA_RABBITMQ_API` (`http://127.0.0.1:15672`), plus `SAGA_TEST_AMQP_ADDR`
//! (`127.0.0.1:5672`). The broker account is `guest`/`guest`.
//! `SAGA_TEST_KEEP=1` keeps vhosts, databases and logs for a post-mortem.

use std::net::SocketAddr;
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};

/// The broker account tests use, for AMQP and the management API alike.
pub const BROKER_USER: &str = "guest";
pub const BROKER_PASSWORD: &str = "guest";

fn env_or(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => default.to_owned(),
    }
}

/// `postgres://user@host:port`, without a database.
pub fn postgres_server_url() -> String {
    format!(
        "postgres://{}@{}:{}",
        env_or("SAGA_PG_USERINFO", "postgres"),
        env_or("SAGA_PG_HOST", "127.0.0.1"),
        env_or("SAGA_PG_PORT", "5432"),
    )
}

/// The PostgreSQL server's address, for a [`crate::proxy::TcpProxy`] in front of it.
pub fn postgres_addr() -> SocketAddr {
    let addr = format!(
        "{}:{}",
        env_or("SAGA_PG_HOST", "127.0.0.1"),
        env_or("SAGA_PG_PORT", "5432")
    );
    addr.parse()
        .unwrap_or_else(|e| panic!("SAGA_PG_HOST:SAGA_PG_PORT={addr:?} is not an IP:port: {e}"))
}

/// The RabbitMQ management API's base URL.
pub fn management_api() -> String {
    env_or("SAGA_RABBITMQ_API", "http://127.0.0.1:15672")
        .trim_end_matches('/')
        .to_owned()
}

/// The broker's AMQP address.
pub fn broker_addr() -> SocketAddr {
    let addr = env_or("SAGA_TEST_AMQP_ADDR", "127.0.0.1:5672");
    addr.parse()
        .unwrap_or_else(|e| panic!("SAGA_TEST_AMQP_ADDR={addr:?} is not an IP:port: {e}"))
}

/// Whether `SAGA_TEST_KEEP` asks to leave everything in place after the test.
pub fn keep_leftovers() -> bool {
    matches!(
        std::env::var("SAGA_TEST_KEEP").as_deref(),
        Ok("1" | "true" | "yes")
    )
}

/// `s` as one URL path segment, percent-encoded (a vhost, SKU or customer may hold `/`,
/// `?` or `%`, which must stay inside their segment).
pub fn encode_segment(s: &str) -> String {
    let mut url = url::Url::parse("http://localhost/").expect("a constant URL parses");
    url.path_segments_mut()
        .expect("an http URL has path segments")
        .push(s);
    url.path()[1..].to_owned()
}

/// The AMQP URL of `vhost` at `addr`, with a short heartbeat so that a dead link is noticed
/// within seconds rather than minutes.
pub fn amqp_url(addr: SocketAddr, vhost: &str) -> String {
    let mut url = url::Url::parse(&format!("amqp://{addr}/")).expect("an address makes a URL");
    url.set_username(BROKER_USER)
        .expect("amqp URLs hold a user");
    url.set_password(Some(BROKER_PASSWORD))
        .expect("amqp URLs hold a password");
    url.path_segments_mut()
        .expect("amqp URLs with a host have a path")
        .push(vhost);
    url.set_query(Some("heartbeat=5"));
    url.into()
}

/// The typed client of the RabbitMQ management API, as the test user.
pub fn management_client() -> rabbitmq_http_client::api::Client<String, &'static str, &'static str>
{
    // `no_proxy`: a developer's HTTP_PROXY must not route requests for 127.0.0.1.
    let http = platform::crypto::http_client()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("building an HTTP client");
    rabbitmq_http_client::api::Client::from_http_client(
        http,
        format!("{}/api", management_api()),
        BROKER_USER,
        BROKER_PASSWORD,
    )
}

/// A vhost and a set of database names owned by one test.
pub struct Sandbox {
    id: String,
    vhost: String,
    /// `(prefix, name)`: `("orders", "orders_t1a2b3c4d")`.
    databases: Vec<(String, String)>,
}

impl Sandbox {
    /// Creates a fresh vhost (guest may do anything in it) and names one database per
    /// prefix. The databases themselves are created by whoever connects first (the
    /// services do it on start; [`Sandbox::migrated_pool`] does it for in-process tests).
    pub async fn create(database_prefixes: &[&str]) -> Sandbox {
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let sandbox = Sandbox {
            vhost: format!("saga-test-{id}"),
            databases: database_prefixes
                .iter()
                .map(|p| ((*p).to_owned(), format!("{p}_t{id}")))
                .collect(),
            id,
        };
        // From here on `sandbox` is dropped (and cleans up) if anything below panics.
        sandbox.create_vhost().await;
        sandbox
    }

    async fn create_vhost(&self) {
        let api = management_client();
        let hint = "is RabbitMQ running with its management plugin (see scripts/lib.sh)?";
        let vhost = rabbitmq_http_client::requests::VirtualHostParams {
            name: &self.vhost,
            description: Some("saga-tests sandbox; removed when its test ends"),
            tags: None,
            default_queue_type: None,
            tracing: false,
        };
        api.create_vhost(&vhost).await.unwrap_or_else(|e| {
            panic!(
                "creating vhost {} through the management API at {} failed: {e}; {hint}",
                self.vhost,
                management_api()
            )
        });
        let everything = rabbitmq_http_client::requests::Permissions {
            user: BROKER_USER,
            vhost: &self.vhost,
            configure: ".*",
            read: ".*",
            write: ".*",
        };
        api.declare_permissions(&everything)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "granting {BROKER_USER} access to vhost {} failed: {e}",
                    self.vhost
                )
            });
    }

    /// The short random id every name of this sandbox carries.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// The AMQP URL of the vhost, straight to the broker.
    pub fn amqp_url(&self) -> String {
        amqp_url(broker_addr(), &self.vhost)
    }

    /// The AMQP URL of the vhost through another address (a [`crate::proxy::TcpProxy`]).
    pub fn amqp_url_via(&self, addr: SocketAddr) -> String {
        amqp_url(addr, &self.vhost)
    }

    /// The name of the database made for `prefix`.
    pub fn database_name(&self, prefix: &str) -> &str {
        self.databases
            .iter()
            .find(|(p, _)| p == prefix)
            .map(|(_, name)| name.as_str())
            .unwrap_or_else(|| panic!("this sandbox has no database for {prefix:?}"))
    }

    pub fn database_url(&self, prefix: &str) -> String {
        format!("{}/{}", postgres_server_url(), self.database_name(prefix))
    }

    /// The URL of the database of `prefix` through a proxy listening at `addr`.
    pub fn database_url_via(&self, prefix: &str, addr: SocketAddr) -> String {
        format!(
            "postgres://{}@{addr}/{}",
            env_or("SAGA_PG_USERINFO", "postgres"),
            self.database_name(prefix)
        )
    }

    /// Creates the database of `prefix` if needed, migrates it, and opens a small pool.
    pub async fn migrated_pool(&self, prefix: &str, migrator: &sqlx::migrate::Migrator) -> PgPool {
        let url = self.database_url(prefix);
        platform::db::connect_and_migrate(&url, 8, migrator)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot prepare database {}: {e:#}",
                    self.database_name(prefix)
                )
            })
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if keep_leftovers() {
            eprintln!(
                "SAGA_TEST_KEEP: leaving vhost {} and databases {:?}",
                self.vhost,
                self.databases.iter().map(|(_, n)| n).collect::<Vec<_>>()
            );
            return;
        }
        let vhost = self.vhost.clone();
        let databases: Vec<String> = self.databases.iter().map(|(_, n)| n.clone()).collect();
        // Drop cannot await, and it may run inside the test's runtime (where blocking on
        // another future is forbidden): clean up on a thread with a runtime of its own.
        let cleaner = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return eprintln!("cannot clean up sandbox {vhost}: {e}"),
            };
            runtime.block_on(async {
                let cleanup = async {
                    delete_vhost(&vhost).await;
                    drop_databases(&databases).await;
                };
                if tokio::time::timeout(Duration::from_secs(60), cleanup)
                    .await
                    .is_err()
                {
                    eprintln!("cleaning up sandbox {vhost} took over 60 s; leaving the rest");
                }
            });
        });
        let _ = cleaner.join();
    }
}

async fn delete_vhost(vhost: &str) {
    // Idempotently: a vhost already gone is fine.
    if let Err(e) = management_client().delete_vhost(vhost, true).await {
        eprintln!("deleting vhost {vhost} failed: {e}");
    }
}

async fn drop_databases(names: &[String]) {
    let admin_url = format!("{}/postgres", postgres_server_url());
    let mut admin = match PgConnection::connect(&admin_url).await {
        Ok(c) => c,
        Err(e) => return eprintln!("cannot drop test databases {names:?}: {e}"),
    };
    for name in names {
        // FORCE ends the sessions still open on it (pools of a test that panicked, a
        // service that was not reaped yet).
        let sql = format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            name.replace('"', "\"\"")
        );
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
        {
            eprintln!("dropping database {name} failed: {e}");
        }
    }
    let _ = admin.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vhost_names_are_encoded_as_one_path_segment() {
        assert_eq!(encode_segment("saga-test-ab12"), "saga-test-ab12");
        assert_eq!(encode_segment("/"), "%2F");
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
        assert_eq!(
            amqp_url("127.0.0.1:5672".parse().unwrap(), "saga/x"),
            "amqp://guest:guest@127.0.0.1:5672/saga%2Fx?heartbeat=5"
        );
    }
}
