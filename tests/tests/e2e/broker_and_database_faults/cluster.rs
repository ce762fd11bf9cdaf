//! The saga on a three-node RabbitMQ cluster, losing nodes under load.
//!
//! The three services get the three nodes as one comma-separated `SAGA_AMQP_URL`. While
//! orders come in at a steady rate, the node leading most of the services' input queues
//! is killed with SIGKILL (its quorum queues elect new leaders; every connection on it
//! breaks, with deliveries unacked and publisher confirms outstanding), restarted later,
//! and then another node is stopped gracefully. Afterwards no accepted order is lost, every
//! order is terminal, nobody is charged twice, the outboxes are drained, the dead-letter
//! queues are empty and `sagactl verify` finds nothing wrong. How long confirmations stalled
//! around each failover is printed, not asserted.
//!
//! The cluster is private (own node names, ports and data directories, see
//! `scripts/rabbit-cluster.sh`) and removed at the end, pass or fail. The run takes about
//! two minutes, most of it starting the nodes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use saga_tests::cluster::{NODES, RabbitCluster};
use saga_tests::steady_load::{self, Journal, blocking};

const TEST_DEADLINE: Duration = Duration::from_secs(400);

/// The node, other than `skip`, that leads most of the services' input queues.
fn busiest_leader(cluster: &RabbitCluster, skip: Option<u8>) -> u8 {
    let others: Vec<u8> = NODES.into_iter().filter(|n| Some(*n) != skip).collect();
    cluster.busiest_leader(&steady_load::INPUT_QUEUES, &others)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_order_is_lost_or_charged_twice_when_broker_nodes_fail_under_load() {
    steady_load::with_fixture(RabbitCluster::start, TEST_DEADLINE, run).await;
}

/// Kills the busiest node, restarts it, then stops another; returns the faults.
async fn break_nodes(cluster: &Arc<RabbitCluster>, journal: &Journal) -> Vec<(String, Instant)> {
    let mut faults = Vec::new();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let killed = blocking(cluster, |c| busiest_leader(c, None)).await;
    let name = cluster.node_name(killed);
    faults.push((format!("kill -9 {name}"), Instant::now()));
    blocking(cluster, move |c| c.kill(killed)).await;
    journal.note(format!(
        "kill -9 {name}, the node leading most input queues"
    ));
    tokio::time::sleep(Duration::from_secs(15)).await;

    blocking(cluster, move |c| c.start_node(killed)).await;
    journal.note(format!("{name} restarted and running"));
    tokio::time::sleep(Duration::from_secs(8)).await;

    let stopped = blocking(cluster, move |c| busiest_leader(c, Some(killed))).await;
    let name = cluster.node_name(stopped);
    faults.push((format!("rabbitmqctl stop {name}"), Instant::now()));
    blocking(cluster, move |c| c.stop(stopped)).await;
    journal.note(format!("{name} stopped gracefully"));
    tokio::time::sleep(Duration::from_secs(15)).await;
    faults
}

async fn run(cluster: Arc<RabbitCluster>) {
    let journal = Journal::default();
    journal.note("three-node cluster up, topology applied");
    let urls = cluster.urls();
    let stack = steady_load::stack_on_broker(&urls, &journal).await;

    let (placed, progress, faults) =
        steady_load::under_load(&stack, break_nodes(&cluster, &journal), &journal).await;
    steady_load::assert_clean_after_broker_faults(
        &stack,
        &placed,
        &progress,
        &[("SAGA_AMQP_URL", &urls)],
        &journal,
    )
    .await;
    steady_load::report_stalls(&progress, &faults, &journal);
}
