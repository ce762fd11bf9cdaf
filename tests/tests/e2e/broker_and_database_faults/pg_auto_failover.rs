//! The saga on a database that an HA manager fails over: pg_auto_failover.
//!
//! A monitor, a primary and its synchronous secondary run under their keepers
//! (`pg_auto_failover`); the three services get the URI the monitor hands out
//! (`postgres://postgres@h1:p1,h2:p2/<db>?target_session_attrs=read-write`) as their
//! `SAGA_<S>_DATABASE_URL`, and nothing else. While orders come in at a steady rate the
//! primary (keeper and server) is killed with SIGKILL; the monitor promotes the secondary by
//! itself, the test only watches, and the services follow without a restart. The killed
//! node's keeper is started again and rejoins as the secondary; then the new primary is
//! killed the same way and the formation fails back. Afterwards no accepted order is lost,
//! every order is terminal, nobody is charged twice, no stock is sold twice, no dead-letter
//! queue holds anything and `sagactl verify` is clean with the stock and deposits
//! published. Both stalls are printed, not asserted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use saga_tests::pg_auto_failover::{Formation, NODES};
use saga_tests::steady_load::{self, Journal, blocking};

const TEST_DEADLINE: Duration = Duration::from_secs(360);
/// Load before each kill, and after the last rejoin, for the stalls to show against.
const LOAD_BETWEEN: Duration = Duration::from_secs(6);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_order_is_lost_or_charged_twice_when_pg_auto_failover_fails_over_and_back() {
    steady_load::with_fixture(Formation::start, TEST_DEADLINE, run).await;
}

/// Kills the primary, waits for the monitor to promote the other node, brings the killed
/// node back and waits until it is the secondary; notes the kill in `faults`.
async fn kill_primary(
    formation: &Arc<Formation>,
    journal: &Journal,
    faults: &mut Vec<(String, Instant)>,
) {
    let Some(primary) = formation.primary().await else {
        panic!("no primary: {:?}", formation.states().await);
    };
    let other = NODES
        .into_iter()
        .find(|n| *n != primary)
        .unwrap_or_else(|| panic!("{primary} is the only node"));
    tokio::time::sleep(LOAD_BETWEEN).await;
    let at = Instant::now();
    blocking(formation, move |f| f.kill(primary)).await;
    journal.note(format!(
        "{primary} (primary) killed: keeper and server, SIGKILL"
    ));
    faults.push((format!("kill -9 of {primary} (primary)"), at));
    formation.wait_promoted(other).await;
    journal.note(format!(
        "the monitor promoted {other} {:.1}s after the kill",
        at.elapsed().as_secs_f64()
    ));
    blocking(formation, move |f| f.restart(primary)).await;
    formation
        .wait_for(&[(other, "primary"), (primary, "secondary")])
        .await;
    journal.note(format!(
        "{primary} rejoined as the synchronous secondary, {:.1}s after the kill",
        at.elapsed().as_secs_f64()
    ));
}

async fn fail_over_and_back(
    formation: &Arc<Formation>,
    journal: &Journal,
) -> Vec<(String, Instant)> {
    let mut faults = Vec::new();
    kill_primary(formation, journal, &mut faults).await;
    kill_primary(formation, journal, &mut faults).await;
    tokio::time::sleep(LOAD_BETWEEN).await;
    faults
}

async fn run(formation: Arc<Formation>) {
    let journal = Journal::default();
    journal.note(format!(
        "monitor, primary and synchronous secondary up; clients get {}",
        formation.monitor_uri()
    ));
    let stack = steady_load::stack_on_own_databases(|db| formation.uri(db), &journal).await;
    let outcome =
        steady_load::under_load(&stack, fail_over_and_back(&formation, &journal), &journal).await;
    steady_load::assert_rode_through_database_faults(&stack, outcome, &journal).await;
}
