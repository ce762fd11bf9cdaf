//! A private three-node RabbitMQ cluster for one test, run by `scripts/rabbit-cluster.sh`
//! (the same script operators use), on free ports and in a directory of its own, never
//! touching the shared broker on 5672.
//!
//! A test can kill a node with SIGKILL, stop one gracefully, start it again and ask which
//! node leads a queue. Dropping the [`RabbitCluster`], on success or while the test panics,
//! kills every node and removes its data.
//!
//! # Partitions
//!
//! [`RabbitCluster::start_in_namespaces`] runs each node in a network namespace of its own,
//! with an address of its own on a bridge that the machine's namespace (where the services
//! and the test run) also sits on; [`RabbitCluster::partition`] then cuts one node off from
//! the two others with blackhole routes on both sides (`rabbit-cluster.sh partition`).
//! That choice, over packet filtering on loopback: all nodes of a loopback cluster share
//! 127.0.0.1, so a rule cannot tell them apart by address, and by port it catches the
//! connections to the cut node's distribution port but not the ones the cut node opens to
//! the others from ephemeral ports (and iptables' `owner` match knows only uids, the same
//! for every node). A namespace per node isolates exactly one node's traffic, needs
//! nothing but iproute2, and leaves the shared broker on 5672 (and its epmd) untouched.
//! The clients keep reaching every node, the minority one included, so the move to the
//! majority is the work of `pause_minority`, not of the cut.
//!
//! Undoing it: the [`Partition`] guard heals when dropped, and dropping the cluster (also
//! while a test panics) kills every process in the namespaces and removes them, the
//! bridge and the namespaces' hosts files.
//!
//! In namespaces, a CLI command that streams answers from other nodes (`list_queues`
//! without `--local`) hangs: the other nodes cannot reach the CLI's node, named after the
//! machine's host name. Hence [`RabbitCluster::leader`] asks each node for its own queues.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;

use rand::Rng;

/// How many nodes the script starts.
pub const NODES: [u8; 3] = [1, 2, 3];

/// The vhost the definitions create.
pub const VHOST: &str = "saga";

/// Offsets from a node's AMQP port of its management and distribution ports (the script's
/// layout).
const PORT_OFFSETS: [u16; 3] = [0, 10_000, 20_000];

/// Erlang's `net_ticktime` for a cluster in namespaces: a peer silent for 3/4 of it to the
/// full tick time is declared down, so a partition is noticed (and the minority pauses)
/// within about that many seconds. Erlang's default, 60 s, would leave most of a 60 s
/// partition unnoticed; production keeps the default (see docs/operations.md).
pub const NAMESPACED_NET_TICKTIME_SECS: u32 = 10;

pub struct RabbitCluster {
    dir: PathBuf,
    prefix: String,
    base_port: u16,
    /// `a.b.c` when the nodes run in network namespaces on a.b.c.0/24.
    subnet: Option<String>,
}

impl RabbitCluster {
    /// Starts three nodes, joins them and applies the topology; panics with the script's
    /// output when that fails (after removing whatever it started).
    pub fn start() -> RabbitCluster {
        RabbitCluster::start_with(None)
    }

    /// Like [`RabbitCluster::start`], each node in a network namespace of its own (see the
    /// module docs), so that [`RabbitCluster::partition`] can cut one off. Needs root.
    pub fn start_in_namespaces() -> RabbitCluster {
        // A /24 in 10.200.0.0/13 nobody on the machine uses; the script refuses one in use.
        let mut rng = rand::rng();
        let subnet = format!(
            "10.{}.{}",
            rng.random_range(200..208),
            rng.random_range(0..=255)
        );
        RabbitCluster::start_with(Some(subnet))
    }

    fn start_with(subnet: Option<String>) -> RabbitCluster {
        let id: u32 = rand::rng().random_range(0..1_000_000);
        let cluster = RabbitCluster {
            dir: std::env::temp_dir().join(format!("saga-cluster-{id}")),
            prefix: format!("saga-t{id}-"),
            base_port: free_base_port(),
            subnet,
        };
        // From here a panic drops `cluster`, which runs `down`.
        cluster.script_ok(&["up"]);
        cluster
    }

    /// The address node `node` listens on.
    pub fn host(&self, node: u8) -> String {
        match &self.subnet {
            Some(subnet) => format!("{subnet}.{node}"),
            None => "127.0.0.1".to_owned(),
        }
    }

    /// The services' `SAGA_AMQP_URL`: the three nodes, comma-separated.
    pub fn urls(&self) -> String {
        self.script_ok(&["urls"]).trim().to_owned()
    }

    /// The AMQP URL of one node alone.
    pub fn node_url(&self, node: u8) -> String {
        format!(
            "amqp://guest:guest@{}:{}/{VHOST}?heartbeat=5",
            self.host(node),
            self.amqp_port(node)
        )
    }

    pub fn amqp_port(&self, node: u8) -> u16 {
        self.base_port + u16::from(node) - 1
    }

    /// The node's Erlang name (`saga-t123-1@localhost`, or `saga-t123-1@saga-t123-h1` in
    /// namespaces).
    pub fn node_name(&self, node: u8) -> String {
        match self.subnet {
            Some(_) => format!("{p}{node}@{p}h{node}", p = self.prefix),
            None => format!("{}{node}@localhost", self.prefix),
        }
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

    /// The node leading `queue`, among `candidates` (nodes that are running): the one that
    /// lists it among the queues it leads.
    pub fn leader(&self, queue: &str, candidates: &[u8]) -> Result<u8, String> {
        let mut asked = Vec::new();
        for &node in candidates {
            let out = self.rabbitmqctl(
                node,
                &["list_queues", "-p", VHOST, "--local", "name", "leader"],
            )?;
            let led_here = out.lines().any(|l| {
                let mut words = l.split_whitespace();
                words.next() == Some(queue) && words.next() == Some(&self.node_name(node))
            });
            if led_here {
                return Ok(node);
            }
            asked.push(node);
        }
        Err(format!("none of nodes {asked:?} leads {queue}"))
    }

    /// The node, among `candidates`, that leads most of `queues`.
    pub fn busiest_leader(&self, queues: &[&str], candidates: &[u8]) -> u8 {
        let mut led: BTreeMap<u8, usize> = candidates.iter().map(|n| (*n, 0)).collect();
        for queue in queues {
            let leader = self
                .leader(queue, candidates)
                .unwrap_or_else(|e| panic!("who leads {queue}: {e}"));
            *led.entry(leader).or_default() += 1;
        }
        // On a tie, the first of `candidates` (max_by_key keeps the last maximum).
        led.into_iter()
            .rev()
            .max_by_key(|(_, count)| *count)
            .map_or(candidates[0], |(n, _)| n)
    }

    /// The AMQP connections that clients hold on `node`.
    pub fn client_connections(&self, node: u8) -> Result<usize, String> {
        let out = self.rabbitmqctl(
            node,
            &["eval", "length(rabbit_networking:local_connections())."],
        )?;
        out.trim()
            .parse()
            .map_err(|e| format!("node {node} counted its connections as {out:?}: {e}"))
    }

    /// Whether the RabbitMQ application runs on `node` (false while `pause_minority` holds
    /// it paused; an error when the node itself does not answer).
    pub fn app_running(&self, node: u8) -> Result<bool, String> {
        let out = self.rabbitmqctl(node, &["eval", "rabbit:is_running()."])?;
        Ok(out.trim() == "true")
    }

    /// Ok when every node runs the application and sees the two others running, and none
    /// reports a partition (`rabbitmqctl cluster_status`); otherwise what is missing.
    pub fn whole(&self) -> Result<(), String> {
        let all: Vec<String> = NODES.iter().map(|n| self.node_name(*n)).collect();
        for node in NODES {
            let out = self.rabbitmqctl(node, &["cluster_status", "--formatter", "json"])?;
            let status: serde_json::Value = serde_json::from_str(&out)
                .map_err(|e| format!("node {node}'s cluster_status is not JSON ({e}): {out}"))?;
            let running: Vec<&str> = status["running_nodes"]
                .as_array()
                .map(|a| a.iter().filter_map(|n| n.as_str()).collect())
                .unwrap_or_default();
            let partitions = &status["partitions"];
            let partitioned = partitions.as_object().is_none_or(|p| !p.is_empty());
            if all.iter().any(|n| !running.contains(&n.as_str())) || partitioned {
                return Err(format!(
                    "node {node} sees running {running:?}, partitions {partitions}"
                ));
            }
        }
        Ok(())
    }

    /// Cuts `node` off from the two other nodes (not from the clients) until the returned
    /// guard is healed or dropped. Only for a cluster started in namespaces.
    pub fn partition(self: &Arc<Self>, node: u8) -> Partition {
        self.script_ok(&["partition", &node.to_string()]);
        Partition {
            cluster: self.clone(),
            healed: false,
        }
    }

    /// `rabbitmqctl -n <node> args…` (from the node's namespace), its standard output or
    /// why it failed.
    pub fn rabbitmqctl(&self, node: u8, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["ctl".to_owned(), node.to_string()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        self.script(&all)
    }

    fn script(&self, args: &[&str]) -> Result<String, String> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("scripts")
            .join("rabbit-cluster.sh");
        let mut command = Command::new("timeout");
        // `up` may wait three minutes for each node; a CLI call to a node that is half up
        // can hang.
        let limit = if args.first() == Some(&"ctl") {
            "90"
        } else {
            "600"
        };
        command
            .arg(limit)
            .arg(&script)
            .args(args)
            .env("SAGA_CLUSTER_DIR", &self.dir)
            .env("SAGA_CLUSTER_PREFIX", &self.prefix)
            .env("SAGA_CLUSTER_AMQP_PORT", self.base_port.to_string());
        if let Some(subnet) = &self.subnet {
            command.env("SAGA_CLUSTER_NETNS", subnet).env(
                "SAGA_CLUSTER_NET_TICKTIME",
                NAMESPACED_NET_TICKTIME_SECS.to_string(),
            );
        }
        let out = command
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

/// A node cut off from the two others; dropping it heals the cluster (the cluster's own
/// drop removes the namespaces anyway).
pub struct Partition {
    cluster: Arc<RabbitCluster>,
    healed: bool,
}

impl Partition {
    /// Removes the cut: the nodes reach each other again.
    pub fn heal(mut self) {
        self.healed = true;
        self.cluster.script_ok(&["heal"]);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if !self.healed
            && let Err(e) = self.cluster.script(&["heal"])
        {
            eprintln!("could not heal the partition: {e}");
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
