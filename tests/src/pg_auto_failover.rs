//! A pg_auto_failover formation of its own: a monitor, a primary and a synchronous
//! secondary, for a test in which the HA manager, not the test, fails the database over.
//!
//! Debian's `postgresql-<v>-auto-failover` provides `pg_autoctl` (scripts/lib.sh,
//! `ensure_pg_auto_failover`, installs it). Each of the three runs under a keeper
//! (`pg_autoctl … --run`) as the `postgres` user, on free ports, in a directory of its own
//! which also holds the keepers' configuration, state and pid files (the XDG directories
//! point there); the shared server on 5432 is never touched. Each keeper and the PostgreSQL
//! it starts form one process group, so [`Formation::kill`] takes a node down the way a
//! crashed machine goes, keeper and server at once (the keeper alone would restart the
//! server). Dropping the [`Formation`], on success or while the test panics, stops
//! everything it started and removes the directory.
//!
//! The monitor decides a failover from its health checks; their defaults take about 30 s
//! from a dead primary to a promoted secondary. [`MONITOR_SETTINGS`] shortens that (see
//! docs/operations.md, "Automatic database failover").

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use sqlx::{Connection, PgConnection};

use crate::failure_support::postgres_version;
use crate::pg_standby::{chown_to_postgres, postgres_command, run_as_postgres};
use crate::poll::eventually;

/// The monitor's settings (`ALTER SYSTEM`, then a reload), in milliseconds: a health check
/// of each node every second, one that does not answer within 2 s retried twice a second
/// apart, a node unhealthy once those fail and it has not reported for 5 s, and 5 s for a
/// dead primary to demote itself before the secondary is promoted anyway.
pub const MONITOR_SETTINGS: [(&str, u32); 6] = [
    ("pgautofailover.health_check_period", 1_000),
    ("pgautofailover.health_check_timeout", 2_000),
    ("pgautofailover.health_check_max_retries", 2),
    ("pgautofailover.health_check_retry_delay", 1_000),
    ("pgautofailover.node_considered_unhealthy_timeout", 5_000),
    ("pgautofailover.primary_demote_timeout", 5_000),
];

/// The two data nodes, in the order they join (the first becomes the primary).
pub const NODES: [&str; 2] = ["node_1", "node_2"];
const MONITOR: &str = "monitor";

/// How long the formation gets to come up, and each later change of roles.
const FORMATION_DEADLINE: Duration = Duration::from_secs(120);

/// One node as the monitor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub name: String,
    /// What the node's keeper last reported.
    pub reported: String,
    /// What the monitor assigned it.
    pub goal: String,
}

impl NodeState {
    /// Reported and assigned `state`: the node is there.
    fn is(&self, state: &str) -> bool {
        self.reported == state && self.goal == state
    }
}

pub struct Formation {
    dir: PathBuf,
    bin: PathBuf,
    ports: BTreeMap<&'static str, u16>,
    /// The running keepers (monitor and nodes), by name; each leads its process group.
    keepers: Mutex<BTreeMap<&'static str, Child>>,
    /// `pg_autoctl show uri --formation default`.
    uri: String,
}

impl Formation {
    /// Starts the monitor, tunes its health checks, starts the nodes one after the other
    /// and waits until one is the primary and the other its secondary. Panics with what
    /// failed. Blocking: call it off the async threads (inside a Tokio runtime).
    pub fn start() -> Formation {
        let id = std::process::id();
        let nonce: u32 = rand::random();
        let [monitor, first, second] = crate::stack::free_ports();
        let mut formation = Formation {
            dir: std::env::temp_dir().join(format!("saga-pg-af-{id}-{nonce}")),
            bin: PathBuf::from(format!("/usr/lib/postgresql/{}/bin", postgres_version())),
            ports: BTreeMap::from([
                (MONITOR, monitor.port()),
                (NODES[0], first.port()),
                (NODES[1], second.port()),
            ]),
            keepers: Mutex::new(BTreeMap::new()),
            uri: String::new(),
        };
        // From here a panic drops `formation`, which stops whatever started.
        std::fs::create_dir_all(&formation.dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", formation.dir.display()));
        chown_to_postgres(&formation.dir);
        // pg_autoctl falls back to /tmp and the home directory for what does not exist.
        for (_, dir) in formation.env().into_iter().skip(2) {
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {dir}: {e}"));
            chown_to_postgres(Path::new(&dir));
        }
        let runtime = tokio::runtime::Handle::current();
        let port = formation.ports[MONITOR].to_string();
        formation.spawn_keeper(
            MONITOR,
            &[
                "create",
                "monitor",
                "--pgdata",
                &formation.data(MONITOR),
                "--pgport",
                &port,
                "--hostname",
                "127.0.0.1",
                "--auth",
                "trust",
                "--no-ssl",
                "--run",
            ],
        );
        runtime.block_on(formation.tune_monitor());
        for (i, node) in NODES.into_iter().enumerate() {
            formation.spawn_keeper(node, &formation.create_node_args(node));
            // One at a time: the first must be the primary before the second joins.
            let want: &[(&str, &str)] = if i == 0 {
                &[(NODES[0], "single")]
            } else {
                &[(NODES[0], "primary"), (NODES[1], "secondary")]
            };
            runtime.block_on(formation.wait_for(want));
        }
        formation.uri = formation
            .autoctl(&[
                "show",
                "uri",
                "--formation",
                "default",
                "--pgdata",
                &formation.data(MONITOR),
            ])
            .unwrap_or_else(|e| panic!("{e}"))
            .trim()
            .to_owned();
        formation
    }

    /// The URI the monitor gives clients (`postgres://h1:p1,h2:p2/postgres?
    /// target_session_attrs=read-write…`) for `database`, with `postgres` as the user.
    pub fn uri(&self, database: &str) -> String {
        let (scheme, rest) = self
            .uri
            .split_once("://")
            .unwrap_or_else(|| panic!("pg_autoctl show uri printed {:?}", self.uri));
        let (hosts, tail) = rest
            .split_once('/')
            .unwrap_or_else(|| panic!("no database in {:?}", self.uri));
        let query = tail.split_once('?').map_or("", |(_, q)| q);
        format!("{scheme}://postgres@{hosts}/{database}?{query}")
    }

    /// The formation's URI as `pg_autoctl show uri` printed it.
    pub fn monitor_uri(&self) -> &str {
        &self.uri
    }

    /// Every node as the monitor sees it right now.
    pub async fn states(&self) -> Result<Vec<NodeState>, String> {
        let mut conn = self.monitor().await?;
        let rows: Result<Vec<(String, String, String)>, _> = sqlx::query_as(
            "SELECT nodename, reportedstate::text, goalstate::text \
             FROM pgautofailover.node ORDER BY nodeid",
        )
        .fetch_all(&mut conn)
        .await;
        let _ = conn.close().await;
        let rows = rows.map_err(|e| format!("reading pgautofailover.node: {e}"))?;
        Ok(rows
            .into_iter()
            .map(|(name, reported, goal)| NodeState {
                name,
                reported,
                goal,
            })
            .collect())
    }

    /// The node that is the primary (reported and assigned), if one is.
    pub async fn primary(&self) -> Option<&'static str> {
        let states = self.states().await.ok()?;
        NODES.into_iter().find(|n| {
            states
                .iter()
                .any(|s| s.name == *n && (s.is("primary") || s.is("wait_primary")))
        })
    }

    /// Waits until each named node has reported, and been assigned, its state; panics
    /// with the states last seen after [`FORMATION_DEADLINE`].
    pub async fn wait_for(&self, want: &[(&str, &str)]) {
        eventually(FORMATION_DEADLINE, || async {
            let states = self.states().await?;
            let there = want
                .iter()
                .all(|(node, state)| states.iter().any(|s| s.name == *node && s.is(state)));
            if there {
                Ok(())
            } else {
                Err(format!("waiting for {want:?}; the monitor says {states:?}"))
            }
        })
        .await
    }

    /// Waits until `node` has been promoted: it reports `wait_primary` (writable, its
    /// standby not back yet) or `primary`. Nothing is done to make that happen.
    pub async fn wait_promoted(&self, node: &str) {
        eventually(FORMATION_DEADLINE, || async {
            let states = self.states().await?;
            let promoted = states.iter().any(|s| {
                s.name == node && matches!(s.reported.as_str(), "wait_primary" | "primary")
            });
            if promoted {
                Ok(())
            } else {
                Err(format!(
                    "waiting for {node} to be promoted; the monitor says {states:?}"
                ))
            }
        })
        .await
    }

    /// SIGKILL to `node`'s keeper and PostgreSQL (its whole process group): no shutdown
    /// checkpoint, connections reset, nobody left on that node to restart anything.
    pub fn kill(&self, node: &'static str) {
        let child = self
            .keepers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node);
        let mut child = child.unwrap_or_else(|| panic!("{node} is not running"));
        signal_group(&child, libc::SIGKILL);
        let _ = child.wait();
    }

    /// Starts `node`'s keeper again (`pg_autoctl run`): it asks the monitor what it is now
    /// and rejoins as whatever it is told (a secondary, after a failover).
    pub fn restart(&self, node: &'static str) {
        let data = self.data(node);
        self.spawn_keeper(node, &["run", "--pgdata", &data]);
    }

    /// `pg_autoctl create postgres` for a data node, registered with the monitor.
    fn create_node_args(&self, node: &'static str) -> Vec<String> {
        let monitor = format!(
            "postgres://autoctl_node@127.0.0.1:{}/pg_auto_failover?sslmode=prefer",
            self.ports[MONITOR]
        );
        [
            "create",
            "postgres",
            "--pgdata",
            &self.data(node),
            "--pgport",
            &self.ports[node].to_string(),
            "--name",
            node,
            "--hostname",
            "127.0.0.1",
            "--listen",
            "127.0.0.1",
            "--auth",
            "trust",
            "--no-ssl",
            "--monitor",
            &monitor,
            "--run",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Shortens the monitor's health checks ([`MONITOR_SETTINGS`]) once it answers.
    async fn tune_monitor(&self) {
        let mut conn = eventually(FORMATION_DEADLINE, || async {
            let mut conn = self.monitor().await?;
            // The extension is there once the keeper finished creating the monitor.
            sqlx::query("SELECT count(*) FROM pgautofailover.node")
                .execute(&mut conn)
                .await
                .map_err(|e| format!("the monitor is not ready: {e}"))?;
            Ok::<_, String>(conn)
        })
        .await;
        for (name, value) in MONITOR_SETTINGS {
            // Not a checked macro, nor a bind: ALTER SYSTEM takes no parameters.
            let sql = format!("ALTER SYSTEM SET {name} = {value}");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("setting {name} on the monitor: {e}"));
        }
        sqlx::query("SELECT pg_reload_conf()")
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("reloading the monitor's configuration: {e}"));
        let _ = conn.close().await;
    }

    async fn monitor(&self) -> Result<PgConnection, String> {
        let url = format!(
            "postgres://postgres@127.0.0.1:{}/pg_auto_failover?sslmode=disable",
            self.ports[MONITOR]
        );
        PgConnection::connect(&url)
            .await
            .map_err(|e| format!("connecting to the monitor: {e}"))
    }

    fn data(&self, which: &str) -> String {
        self.dir.join(which).display().to_string()
    }

    /// What every `pg_autoctl` here runs with: the distribution's PostgreSQL binaries
    /// first on the PATH, and its configuration, state and pid files in this directory.
    /// The directories come after PATH and HOME.
    fn env(&self) -> Vec<(&'static str, String)> {
        let dir = self.dir.display();
        vec![
            ("PATH", format!("{}:/usr/bin:/bin", self.bin.display())),
            ("HOME", dir.to_string()),
            ("XDG_CONFIG_HOME", format!("{dir}/config")),
            ("XDG_DATA_HOME", format!("{dir}/share")),
            ("XDG_RUNTIME_DIR", format!("{dir}/run")),
        ]
    }

    /// Starts a keeper in a process group of its own, its output in `<name>.log`.
    fn spawn_keeper<S: AsRef<str>>(&self, name: &'static str, args: &[S]) {
        let log_path = self.dir.join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
        let err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
        let child = postgres_command(Path::new("pg_autoctl"), &self.env())
            .args(args.iter().map(AsRef::as_ref))
            .current_dir(&self.dir)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start pg_autoctl for {name}: {e}"));
        self.keepers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, child);
    }

    fn autoctl(&self, args: &[&str]) -> Result<String, String> {
        run_as_postgres(Path::new("pg_autoctl"), args, &self.dir, &self.env())
    }

    /// The keepers' logs, for a failure message.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for name in [MONITOR, NODES[0], NODES[1]] {
            let path = self.dir.join(format!("{name}.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("----- {} -----\n", path.display()));
            for line in &lines[lines.len().saturating_sub(30)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// Sends `signal` to the process group `child` leads.
fn signal_group(child: &Child, signal: libc::c_int) {
    if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: killpg(2) on a process group this test started.
        unsafe {
            libc::killpg(pgid, signal);
        }
    }
}

impl Drop for Formation {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("\nthe pg_auto_failover formation:\n{}", self.log_tails());
        }
        let keepers = std::mem::take(self.keepers.get_mut().unwrap_or_else(|p| p.into_inner()));
        // SIGQUIT: the keepers and their servers stop at once, but cleanly enough to give
        // back their shared memory; whoever is still there after a while gets SIGKILL.
        for child in keepers.values() {
            signal_group(child, libc::SIGQUIT);
        }
        for (_, mut child) in keepers {
            let gone = (0..100).any(|_| {
                let exited = matches!(child.try_wait(), Ok(Some(_)));
                if !exited {
                    std::thread::sleep(Duration::from_millis(100));
                }
                exited
            });
            signal_group(&child, libc::SIGKILL);
            if !gone {
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
