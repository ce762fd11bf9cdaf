//! A network partition of the three-node RabbitMQ cluster under load.
//!
//! Each node runs in a network namespace of its own (`RabbitCluster::start_in_namespaces`;
//! the module docs of `saga_tests::cluster` say why namespaces and not packet filtering).
//! While orders come in at a steady rate, the node holding most client connections is cut
//! off from the two others by blackhole routes on both sides, for 60 s, then the routes are
//! removed. The services still reach every node, the cut one included: what moves them is
//! `cluster_partition_handling = pause_minority`, with which the cut node, seeing itself in
//! the minority, pauses and closes its client connections. The test sees it pause, sees
//! every service report its broker links up again (on the majority) while the cut lasts,
//! heals, and waits until every node runs and none reports a partition.
//!
//! Afterwards, as after a node is killed: no accepted order lost, every order terminal,
//! nobody charged twice, no stock sold twice, the outboxes drained, the dead-letter
//! queues empty and `sagactl verify --expect-stock/--expect-deposits` clean. The stalls
//! after the cut and after the heal are printed, not asserted. The nodes notice the cut
//! within `NAMESPACED_NET_TICKTIME_SECS` (10 s instead of Erlang's 60 s; see
//! docs/operations.md for what that means in production).
//!
//! The namespaces, routes and nodes are removed at the end, pass or fail (the partition
//! guard heals, the cluster's drop removes the rest). About two minutes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use saga_tests::cluster::{NODES, RabbitCluster};
use saga_tests::steady_load::{self, Journal, blocking};
use saga_tests::{Poll, Service, Stack, StatusCode, eventually};

const TEST_DEADLINE: Duration = Duration::from_secs(400);
/// How long the node stays cut off.
const HOLD: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_broker_node_pauses_and_nothing_is_lost_or_doubled() {
    steady_load::with_fixture(RabbitCluster::start_in_namespaces, TEST_DEADLINE, run).await;
}

/// The node with the most client connections (on a tie, the one leading most input
/// queues among them), and how many it holds.
fn node_to_cut(cluster: &RabbitCluster) -> (u8, usize) {
    let counts: Vec<(u8, usize)> = NODES
        .into_iter()
        .map(|n| {
            let count = cluster
                .client_connections(n)
                .unwrap_or_else(|e| panic!("connections on node {n}: {e}"));
            (n, count)
        })
        .collect();
    let most = counts.iter().map(|(_, c)| *c).max().unwrap_or(0);
    let tied: Vec<u8> = counts
        .iter()
        .filter(|(_, c)| *c == most)
        .map(|(n, _)| *n)
        .collect();
    let node = if tied.len() == 1 {
        tied[0]
    } else {
        cluster.busiest_leader(&steady_load::INPUT_QUEUES, &tied)
    };
    (node, most)
}

/// Every service answers `/healthz` 200: database and every broker link up.
async fn all_services_linked(stack: &Stack) -> Poll<()> {
    for service in Service::ALL {
        match stack.try_get(service, "/healthz").await {
            Ok((StatusCode::OK, _)) => {}
            Ok((status, body)) => {
                return Poll::Pending(format!("{service} /healthz: {status} {body}"));
            }
            Err(e) => return Poll::Pending(format!("{service} /healthz: {e}")),
        }
    }
    Poll::Ready(())
}

/// Cuts the busiest node off for [`HOLD`], heals, waits until the cluster is whole;
/// returns the faults.
async fn partition_a_node(
    cluster: &Arc<RabbitCluster>,
    stack: &Stack,
    journal: &Journal,
) -> Vec<(String, Instant)> {
    // Some steady load before the fault, to compare the stall with.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (cut, held) = blocking(cluster, node_to_cut).await;
    let name = cluster.node_name(cut);
    assert!(held > 0, "no node holds a client connection to move");

    let cut_at = Instant::now();
    let partition = {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || cluster.partition(cut))
            .await
            .unwrap_or_else(|e| panic!("cutting {name} off panicked: {e}"))
    };
    journal.note(format!(
        "{name} ({held} client connections) cut off from the two other nodes"
    ));

    eventually(Duration::from_secs(60), || async {
        match blocking(cluster, move |c| c.app_running(cut)).await {
            Ok(false) => Poll::Ready(()),
            Ok(true) => Poll::Pending(format!("{name} still runs")),
            Err(e) => Poll::Failed(format!("{name} does not answer: {e}")),
        }
    })
    .await;
    journal.note(format!(
        "{name} paused (pause_minority) {:.1}s after the cut",
        cut_at.elapsed().as_secs_f64()
    ));

    eventually(Duration::from_secs(60), || all_services_linked(stack)).await;
    let majority: Vec<u8> = NODES.into_iter().filter(|n| *n != cut).collect();
    let on_majority = blocking(cluster, move |c| {
        majority
            .iter()
            .map(|n| {
                let count = c.client_connections(*n).unwrap_or_else(|e| panic!("{e}"));
                format!("{} {count}", c.node_name(*n))
            })
            .collect::<Vec<_>>()
            .join(", ")
    })
    .await;
    journal.note(format!(
        "every service's broker links up again {:.1}s after the cut; client connections on \
         the majority: {on_majority}",
        cut_at.elapsed().as_secs_f64()
    ));

    // The fault's duration, not a wait for a result.
    tokio::time::sleep(HOLD.saturating_sub(cut_at.elapsed())).await;
    let healed_at = Instant::now();
    tokio::task::spawn_blocking(move || partition.heal())
        .await
        .unwrap_or_else(|e| panic!("healing panicked: {e}"));
    journal.note(format!(
        "partition healed after {:.1}s",
        (healed_at - cut_at).as_secs_f64()
    ));
    eventually(Duration::from_secs(90), || blocking(cluster, |c| c.whole())).await;
    journal.note(format!(
        "cluster whole again {:.1}s after the heal: three nodes running, no partition reported",
        healed_at.elapsed().as_secs_f64()
    ));
    vec![
        (format!("cutting {name} off"), cut_at),
        ("healing the partition".to_owned(), healed_at),
    ]
}

async fn run(cluster: Arc<RabbitCluster>) {
    let journal = Journal::default();
    journal.note("three-node cluster up in network namespaces, topology applied");
    let urls = cluster.urls();
    let stack = steady_load::stack_on_broker(&urls, &journal).await;

    let (placed, progress, faults) = steady_load::under_load(
        &stack,
        partition_a_node(&cluster, &stack, &journal),
        &journal,
    )
    .await;
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
