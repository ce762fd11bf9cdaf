//! A private three-node RabbitMQ cluster for one test, run by `scripts/rabbit-cluster.sh`
//! (the same script operators use), on free ports and in a directory of its own, never
//! touching the shared broker on 5672.
//!
//! A test can kill a node with SIGKILL, stop one gracefully, start it again and ask which
//! node leads a queue. Dropping the [`RabbitCluster`], on success or while the test panics,
//! kills every node and removes its data.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};

use rand::Rng;

/// How many nodes the script starts.
pub const NODES: [u8; 3] = [1, 2, 3];

/// The vhost the definitions create.
pub const VHOST: &str = "saga";

/// Offsets from a node's AMQP port of its management and distribution ports (the script's
/// layout).
const PORT_OFFSETS: [u16; 3] = [0, 10_000, 20_000];

pub struct RabbitCluster {
    dir: PathBuf,
    prefix: String,
    base_port: u16,
}

impl RabbitCluster {
    /// Starts three nodes, joins them and applies the topology; panics with the script's
    /// output when that fails (after removing whatever it started).
    pub fn start() -> RabbitCluster {
        let id: u32 = rand::rng().random_range(0..1_000_000);
        let cluster = RabbitCluster {
            dir: std::env::temp_dir().join(format!("saga-cluster-{id}")),
            prefix: format!("saga-t{id}-"),
            base_port: free_base_port(),
        };
        // From here a panic drops `cluster`, which runs `down`.
        cluster.script_ok(&["up"]);
        cluster
    }

    /// The services' `SAGA_AMQP_URL`: the three nodes, comma-separated.
    pub fn urls(&self) -> String {
        self.script_ok(&["urls"]).trim().to_owned()
    }

    /// The AMQP URL of one node alone.
    pub fn node_url(&self, node: u8) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}/{VHOST}?heartbeat=5",
            self.amqp_port(node)
        )
    }

    pub fn amqp_port(&self, node: u8) -> u16 {
        self.base_port + u16::from(node) - 1
    }

    /// The node's Erlang name (`saga-t123-1@localhost`).
    pub fn node_name(&self, node: u8) -> String {
        format!("{}{node}@localhost", self.prefix)
    }

    /// SIGKILL: the node gets no chance to hand over its queues or close its connections.
    pub fn kill(&self, node: u8) {
        self.script_ok(&["kill", &node.to_string()]);
    }

    /// `rabbitmqctl stop`: the node closes its connections and leaves its queues' leadership.
    pub fn stop(&self, node: u8) {
        self.script_ok(&["stop", &node.to_string()]);
    }

    /// Starts a node again (it rejoins the cluster by itself) and waits until it runs. A
    /// start that fails is tried once more after killing what is left of the node: its
    /// management and distribution ports (AMQP + 10000 and + 20000) lie in the kernel's
    /// ephemeral range, where an outgoing connection of another test may hold one for a
    /// while.
    pub fn start_node(&self, node: u8) {
        let n = node.to_string();
        if let Err(first) = self.script(&["start", &n]) {
            eprintln!("node {node} did not start, trying once more: {first}");
            let _ = self.script(&["kill", &n]);
            self.script_ok(&["start", &n]);
        }
    }

    /// The node leading `queue`, asked of `via` (a node that is running).
    pub fn leader(&self, queue: &str, via: u8) -> Result<u8, String> {
        let out = self.rabbitmqctl(via, &["list_queues", "-p", VHOST, "name", "leader"])?;
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(queue))
            .ok_or_else(|| format!("{queue} is not listed by node {via}: {out}"))?;
        let leader = line
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| format!("no leader column for {queue} in: {line}"))?;
        NODES
            .into_iter()
            .find(|n| self.node_name(*n) == leader)
            .ok_or_else(|| {
                format!("{queue} is led by {leader:?}, not by one of this cluster's nodes")
            })
    }

    /// `rabbitmqctl -n <node> args…`, its standard output or why it failed.
    pub fn rabbitmqctl(&self, node: u8, args: &[&str]) -> Result<String, String> {
        let out = Command::new("timeout")
            .arg("30")
            .arg("rabbitmqctl")
            .arg("-q")
            .arg("-n")
            .arg(self.node_name(node))
            .args(args)
            .output()
            .map_err(|e| format!("cannot run rabbitmqctl: {e}"))?;
        text_of(out, &format!("rabbitmqctl {}", args.join(" ")))
    }

    fn script(&self, args: &[&str]) -> Result<String, String> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("scripts")
            .join("rabbit-cluster.sh");
        let out = Command::new(&script)
            .args(args)
            .env("SAGA_CLUSTER_DIR", &self.dir)
            .env("SAGA_CLUSTER_PREFIX", &self.prefix)
            .env("SAGA_CLUSTER_AMQP_PORT", self.base_port.to_string())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        text_of(out, &format!("rabbit-cluster.sh {}", args.join(" ")))
    }

    fn script_ok(&self, args: &[&str]) -> String {
        self.script(args).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        if let Err(e) = self.script(&["down"]) {
            eprintln!(
                "could not remove the test cluster in {}: {e}",
                self.dir.display()
            );
        }
    }
}

fn text_of(out: Output, what: &str) -> Result<String, String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{what} failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A base port such that the nine ports of the cluster (three nodes' AMQP, management and
/// distribution ports) are free right now. Drawn at random below the kernel's ephemeral
/// range, so that two tests, or a client's outgoing connection, hardly ever pick the same.
fn free_base_port() -> u16 {
    for _ in 0..100 {
        let base: u16 = rand::rng().random_range(20_000..29_990);
        let free = NODES.iter().all(|n| {
            PORT_OFFSETS.iter().all(|offset| {
                TcpListener::bind(("127.0.0.1", base + u16::from(*n) - 1 + offset)).is_ok()
            })
        });
        if free {
            return base;
        }
    }
    panic!("no free ports for a test cluster after 100 draws");
}
