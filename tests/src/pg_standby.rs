//! A private PostgreSQL primary with a hot standby, for a test that kills the primary.
//!
//! Both servers are made here (`initdb`, `pg_basebackup -R`) on free ports, in a
//! directory of their own, from the distribution's PostgreSQL binaries; the shared server on
//! 5432 is never touched. Replication is synchronous, so a commit the primary acknowledged
//! is on the standby too and survives the promotion. Dropping the [`PgStandbyPair`], on
//! success or while the test panics, stops both servers and removes their data.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::failure_support::postgres_version;

pub struct PgStandbyPair {
    dir: PathBuf,
    bin: PathBuf,
    primary_port: u16,
    standby_port: u16,
}

impl PgStandbyPair {
    /// Makes and starts the primary, clones it into a streaming standby and waits until
    /// the standby is the primary's synchronous standby. Panics with what failed.
    pub fn start() -> PgStandbyPair {
        let id = std::process::id();
        let nonce: u32 = rand::random();
        let [primary, standby] = crate::stack::free_ports();
        let pair = PgStandbyPair {
            dir: std::env::temp_dir().join(format!("saga-pg-ha-{id}-{nonce}")),
            bin: PathBuf::from(format!("/usr/lib/postgresql/{}/bin", postgres_version())),
            primary_port: primary.port(),
            standby_port: standby.port(),
        };
        // From here a panic drops `pair`, which stops whatever started.
        std::fs::create_dir_all(&pair.dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", pair.dir.display()));
        chown_to_postgres(&pair.dir);
        let primary = pair.data("primary");
        pair.pg_ok(
            "initdb",
            &[
                "-D",
                &primary,
                "--auth=trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        pair.append_conf(
            "primary",
            &format!(
                "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
                 synchronous_standby_names = '*'\n",
                pair.primary_port,
                pair.dir.display()
            ),
        );
        pair.start_server("primary");
        let standby = pair.data("standby");
        let port = pair.primary_port.to_string();
        pair.pg_ok(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &standby,
                "-R",
                "-X",
                "stream",
            ],
        );
        // Once promoted, the standby has no standby of its own to wait for.
        pair.append_conf(
            "standby",
            &format!(
                "port = {}\nsynchronous_standby_names = ''\n",
                pair.standby_port
            ),
        );
        pair.start_server("standby");
        pair.wait_sync_standby();
        pair
    }

    /// `SAGA_<S>_DATABASE_URL` for `database`: the primary first, then the standby.
    pub fn urls(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database},postgres://postgres@127.0.0.1:{}/{database}",
            self.primary_port, self.standby_port
        )
    }

    /// SIGKILL to the primary's postmaster: no shutdown checkpoint, connections reset.
    pub fn kill_primary(&self) {
        let pid_file = Path::new(&self.data("primary")).join("postmaster.pid");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no pid in {}", pid_file.display()));
        // SAFETY: kill(2) on a pid this test started.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }

    /// `pg_ctl promote`: the standby becomes a primary and accepts writes.
    pub fn promote_standby(&self) {
        self.pg_ok("pg_ctl", &["-D", &self.data("standby"), "-w", "promote"]);
    }

    fn data(&self, which: &str) -> String {
        self.dir.join(which).display().to_string()
    }

    fn append_conf(&self, which: &str, lines: &str) {
        use std::io::Write;
        let path = Path::new(&self.data(which)).join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        f.write_all(lines.as_bytes())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    fn start_server(&self, which: &str) {
        let log = self.dir.join(format!("{which}.log")).display().to_string();
        self.pg_ok(
            "pg_ctl",
            &["-D", &self.data(which), "-l", &log, "-w", "start"],
        );
    }

    fn wait_sync_standby(&self) {
        let port = self.primary_port.to_string();
        for _ in 0..60 {
            let state = self.pg(
                "psql",
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-Atc",
                    "SELECT sync_state FROM pg_stat_replication",
                ],
            );
            if state.as_deref().map(str::trim) == Ok("sync") {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        panic!("the standby did not become synchronous within 30 s");
    }

    /// Runs a PostgreSQL binary as the `postgres` user (the server refuses root).
    fn pg(&self, program: &str, args: &[&str]) -> Result<String, String> {
        run_as_postgres(&self.bin.join(program), args, &self.dir, &[])
    }

    fn pg_ok(&self, program: &str, args: &[&str]) -> String {
        self.pg(program, args).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for PgStandbyPair {
    fn drop(&mut self) {
        for which in ["primary", "standby"] {
            if Path::new(&self.data(which)).join("postmaster.pid").exists() {
                let _ = self.pg(
                    "pg_ctl",
                    &["-D", &self.data(which), "-m", "immediate", "stop"],
                );
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `program` with `env` set, to run as the `postgres` user: through `runuser` when the
/// tests run as root (PostgreSQL refuses to run as root), as it is otherwise.
pub(crate) fn postgres_command(program: &Path, env: &[(&str, String)]) -> Command {
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]);
        if !env.is_empty() {
            // runuser keeps most of the environment but not all; `env` sets it for sure.
            c.arg("env");
            c.args(env.iter().map(|(k, v)| format!("{k}={v}")));
        }
        c.arg(program);
        c
    } else {
        let mut c = Command::new(program);
        c.envs(env.iter().map(|(k, v)| (k, v)));
        c
    };
    command.stdin(std::process::Stdio::null());
    command
}

/// Runs `program` as the `postgres` user in `dir`; its output on exit 0, else what failed.
pub(crate) fn run_as_postgres(
    program: &Path,
    args: &[&str],
    dir: &Path,
    env: &[(&str, String)],
) -> Result<String, String> {
    let out = postgres_command(program, env)
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{} {args:?} failed ({}): {}{}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub(crate) fn chown_to_postgres(dir: &Path) {
    if !is_root() {
        return;
    }
    let out = Command::new("chown")
        .arg("postgres:postgres")
        .arg(dir)
        .output();
    if !matches!(out, Ok(ref o) if o.status.success()) {
        panic!(
            "cannot give {} to the postgres user: {out:?}",
            dir.display()
        );
    }
}
