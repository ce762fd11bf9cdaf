//! TLS to PostgreSQL: a service connects with `sslmode=require` and with
//! `sslmode=verify-full` (checking the certificate against the CA in `sslrootcert`) to a
//! PRIVATE PostgreSQL instance that accepts TLS connections only, with certificates this
//! test generates. The shared server is never touched.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use saga_tests::poll::{Poll, until};
use saga_tests::stack::binary_path;
use saga_tests::{Sandbox, StatusCode, order_request};
use sqlx::Connection;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn as_postgres(program: &str, args: &[&str]) {
    let mut all = vec!["-u", "postgres", "--", program];
    all.extend_from_slice(args);
    run("runuser", &all);
}

fn free_port() -> u16 {
    saga_tests::stack::free_port().port()
}

/// A CA and a server certificate for `localhost` / 127.0.0.1 signed by it, in `dir`.
fn make_certificates(dir: &Path) {
    let p = |name: &str| dir.join(name).display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend_from_slice(&ec);
    let (ca_key, ca_pem) = (p("ca.key"), p("ca.pem"));
    ca.extend_from_slice(&[
        "-keyout",
        ca_key.as_str(),
        "-out",
        ca_pem.as_str(),
        "-days",
        "2",
        "-subj",
        "/CN=saga test CA",
    ]);
    run("openssl", &ca);
    let mut csr = vec!["req"];
    csr.extend_from_slice(&ec);
    let (key, csr_path) = (p("server.key"), p("server.csr"));
    csr.extend_from_slice(&[
        "-keyout",
        key.as_str(),
        "-out",
        csr_path.as_str(),
        "-subj",
        "/CN=localhost",
    ]);
    run("openssl", &csr);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let (ext, cert) = (p("ext.cnf"), p("server.pem"));
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            csr_path.as_str(),
            "-CA",
            ca_pem.as_str(),
            "-CAkey",
            ca_key.as_str(),
            "-CAcreateserial",
            "-out",
            cert.as_str(),
            "-days",
            "2",
            "-extfile",
            ext.as_str(),
        ],
    );
}

/// A PostgreSQL server of this test's own: TLS only, on a free port, in a temporary
/// directory; stopped and removed when dropped, also when the test fails.
struct PrivatePostgres {
    dir: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    fn start(certs: &Path) -> PrivatePostgres {
        let dir = std::env::temp_dir().join(format!("saga-tls-pg-{}", uuid::Uuid::new_v4()));
        let data = dir.join("data");
        std::fs::create_dir_all(&dir).unwrap();
        run("chown", &["postgres", dir.display().to_string().as_str()]);
        let pg = PrivatePostgres {
            dir,
            port: free_port(),
        };
        let data_s = data.display().to_string();
        as_postgres(
            &format!("{PG_BIN}/initdb"),
            &[
                "-D",
                data_s.as_str(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        for f in ["server.pem", "server.key"] {
            std::fs::copy(certs.join(f), data.join(f)).unwrap();
        }
        let (pem, key) = (
            format!("{data_s}/server.pem"),
            format!("{data_s}/server.key"),
        );
        run("chown", &["postgres", pem.as_str(), key.as_str()]);
        run("chmod", &["600", key.as_str()]);
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\nfsync = off\n",
            pg.port,
            pg.dir.display()
        );
        let mut text = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        text.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), text).unwrap();
        // TLS only: a plain connection over TCP is refused.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 0.0.0.0/0 reject\n",
        )
        .unwrap();
        let log = pg.dir.join("postgres.log").display().to_string();
        as_postgres(
            &format!("{PG_BIN}/pg_ctl"),
            &[
                "-D",
                data_s.as_str(),
                "-l",
                log.as_str(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        pg
    }

    fn url(&self, query: &str) -> String {
        format!("postgres://postgres@localhost:{}/orders?{query}", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        let _ = Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                format!("{PG_BIN}/pg_ctl").as_str(),
                "-D",
                data.as_str(),
                "-m",
                "immediate",
                "stop",
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the service on `port` answers `/healthz` 200 (its database and broker
/// links are up).
async fn wait_healthy(http: &reqwest::Client, port: u16) -> Result<(), String> {
    until(Duration::from_secs(90), || {
        let url = format!("http://127.0.0.1:{port}/healthz");
        let http = http.clone();
        async move {
            match http.get(&url).send().await {
                Ok(r) if r.status() == StatusCode::OK => Poll::Ready(()),
                Ok(r) => Poll::Pending(format!("/healthz answered {}", r.status())),
                Err(e) => Poll::Pending(e.to_string()),
            }
        }
    })
    .await
}

/// order-svc against `database_url`, until `/healthz` answers 200; then one order placed.
async fn order_svc_serves_with(database_url: &str, sandbox: &Sandbox, log: &Path) {
    let port = free_port();
    let child = Command::new(binary_path("order-svc"))
        .env("SAGA_AMQP_URL", sandbox.amqp_url())
        .env("SAGA_ORDER_DATABASE_URL", database_url)
        .env("SAGA_ORDER_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("SAGA_AUTH_JWKS_FILE", saga_tests::auth::jwks_path())
        .env("SAGA_LOG", "info,sqlx=warn,lapin=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("order-svc starts");
    let _service = Service(child);
    let http = saga_tests::auth::operator_client();
    let base = format!("http://127.0.0.1:{port}");
    let healthy = wait_healthy(&http, port).await;
    assert!(
        healthy.is_ok(),
        "order-svc with {database_url} did not become healthy: {healthy:?}\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    let placed = http
        .post(format!("{base}/orders"))
        .json(&order_request("tls", "EUR", &[("TLS", 1, 100)]))
        .send()
        .await
        .expect("POST /orders");
    assert_eq!(
        placed.status(),
        StatusCode::ACCEPTED,
        "the order is stored over TLS"
    );
}

#[tokio::test]
async fn a_service_reaches_postgresql_over_tls_with_require_and_verify_full() {
    let certs = std::env::temp_dir().join(format!("saga-tls-certs-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&certs).unwrap();
    make_certificates(&certs);
    let pg = PrivatePostgres::start(&certs);
    let sandbox = Sandbox::create(&[]).await;
    let ca = certs.join("ca.pem").display().to_string();

    // Plain text is refused by the server, so what follows really is TLS.
    let plain = sqlx::PgConnection::connect(&pg.url("sslmode=disable")).await;
    assert!(
        plain.is_err(),
        "the private server accepts TLS connections only"
    );
    // verify-full refuses a server whose certificate the given CA did not sign.
    let other_ca = certs.join("server.pem").display().to_string();
    let wrong = sqlx::PgConnection::connect(
        &pg.url(&format!("sslmode=verify-full&sslrootcert={other_ca}")),
    )
    .await;
    assert!(wrong.is_err(), "verify-full checks the certificate");

    order_svc_serves_with(
        &pg.url("sslmode=require"),
        &sandbox,
        &certs.join("require.log"),
    )
    .await;
    order_svc_serves_with(
        &pg.url(&format!("sslmode=verify-full&sslrootcert={ca}")),
        &sandbox,
        &certs.join("verify-full.log"),
    )
    .await;
    drop(pg);
    let _ = std::fs::remove_dir_all(&certs);
}

/// A RabbitMQ node of this test's own with an AMQPS listener only (no plain AMQP), on free
/// ports, in a temporary directory; stopped and removed when dropped.
struct PrivateRabbit {
    dir: PathBuf,
    node: String,
    tls_port: u16,
}

impl PrivateRabbit {
    fn start(certs: &Path) -> PrivateRabbit {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("saga-tls-rabbit-{id}"));
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        for f in ["ca.pem", "server.pem", "server.key"] {
            std::fs::copy(certs.join(f), dir.join(f)).unwrap();
        }
        let [tls_port, node_port, dist_port] = saga_tests::stack::free_ports().map(|a| a.port());
        let rabbit = PrivateRabbit {
            node: format!("saga-tls-{}@localhost", &id[..12]),
            tls_port,
            dir,
        };
        let d = |f: &str| rabbit.dir.join(f).display().to_string();
        std::fs::write(
            rabbit.dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp = none\nlisteners.ssl.default = {}\n\
                 ssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n\
                 loopback_users = none\n",
                rabbit.tls_port,
                d("ca.pem"),
                d("server.pem"),
                d("server.key")
            ),
        )
        .unwrap();
        std::fs::write(rabbit.dir.join("enabled_plugins"), "[].\n").unwrap();
        run(
            "chown",
            &[
                "-R",
                "rabbitmq:rabbitmq",
                rabbit.dir.display().to_string().as_str(),
            ],
        );
        let out = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &rabbit.node)
            .env("RABBITMQ_NODE_PORT", node_port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d("mnesia"))
            .env("RABBITMQ_LOG_BASE", d("log"))
            .env("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d("rabbit.pid"))
            .output()
            .expect("rabbitmq-server runs");
        assert!(
            out.status.success(),
            "rabbitmq-server -detached failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        rabbit
    }

    fn amqps_url(&self) -> String {
        format!(
            "amqps://guest:guest@localhost:{}/%2f?heartbeat=10",
            self.tls_port
        )
    }

    fn log(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(self.dir.join("log"))
            .into_iter()
            .flatten()
            .flatten()
        {
            text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
        text
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(self.dir.join("rabbit.pid")).unwrap_or_default();
        let stopped = Command::new("runuser")
            .args([
                "-u",
                "rabbitmq",
                "--",
                "rabbitmqctl",
                "-n",
                self.node.as_str(),
                "stop",
            ])
            .output()
            .is_ok_and(|o| o.status.success());
        if !stopped && let Ok(pid) = pid.trim().parse::<i32>() {
            // SAFETY: a plain kill(2) of the node this test started, by its recorded pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_service_reaches_rabbitmq_over_amqps() {
    let certs = std::env::temp_dir().join(format!("saga-tls-certs-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&certs).unwrap();
    make_certificates(&certs);
    let rabbit = PrivateRabbit::start(&certs);
    let sandbox = Sandbox::create(&["orders"]).await;
    let port = free_port();
    let log = certs.join("order-svc.log");
    let child = Command::new(binary_path("order-svc"))
        .env("SAGA_AMQP_URL", rabbit.amqps_url())
        // The test's CA, for the broker's certificate (it replaces the system roots).
        .env("SSL_CERT_FILE", certs.join("ca.pem"))
        .env("SAGA_ORDER_DATABASE_URL", sandbox.database_url("orders"))
        .env("SAGA_ORDER_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("SAGA_AUTH_JWKS_FILE", saga_tests::auth::jwks_path())
        .env("SAGA_LOG", "info,sqlx=warn,lapin=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("order-svc starts");
    let _service = Service(child);
    // /healthz is 200 only when the consumer's and the relay's broker links are up.
    let healthy = wait_healthy(&saga_tests::auth::operator_client(), port).await;
    assert!(
        healthy.is_ok(),
        "order-svc over amqps did not become healthy: {healthy:?}\nservice log:\n{}\nbroker log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default(),
        rabbit.log()
    );
    drop(rabbit);
    let _ = std::fs::remove_dir_all(&certs);
}
