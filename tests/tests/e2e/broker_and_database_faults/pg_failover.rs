//! The saga on a PostgreSQL primary with a hot standby, losing the primary under load.
//!
//! The three services get both servers as one comma-separated `SAGA_<S>_DATABASE_URL`
//! (primary first). While orders come in at a steady rate the primary is killed with
//! SIGKILL and the standby promoted with `pg_ctl promote`; the services move their pools
//! to the new primary by themselves. Replication is synchronous, so every commit the old
//! primary acknowledged is on the new one. Afterwards no accepted order is lost, every
//! order is terminal, nobody is charged twice and `sagactl verify` is clean. The stall is
//! printed, not asserted.
//!
//! Both servers are private (own ports and data directories, see `pg_standby`), on the
//! shared broker in a vhost of the test's own, and removed at the end, pass or fail.

use std::sync::Arc;
use std::time::{Duration, Instant};

use saga_tests::pg_standby::PgStandbyPair;
use saga_tests::steady_load::{self, Journal, blocking};

const TEST_DEADLINE: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_order_is_lost_or_charged_twice_when_the_database_primary_fails_over() {
    steady_load::with_fixture(PgStandbyPair::start, TEST_DEADLINE, run).await;
}

async fn fail_over(pair: &Arc<PgStandbyPair>, journal: &Journal) -> Vec<(String, Instant)> {
    tokio::time::sleep(Duration::from_secs(6)).await;
    let at = Instant::now();
    blocking(pair, |p| {
        p.kill_primary();
        p.promote_standby();
    })
    .await;
    journal.note("primary killed (SIGKILL), standby promoted");
    tokio::time::sleep(Duration::from_secs(15)).await;
    vec![("kill -9 of the primary".to_owned(), at)]
}

async fn run(pair: Arc<PgStandbyPair>) {
    let journal = Journal::default();
    journal.note("private primary and synchronous standby up");
    let stack = steady_load::stack_on_own_databases(|db| pair.urls(db), &journal).await;
    let outcome = steady_load::under_load(&stack, fail_over(&pair, &journal), &journal).await;
    steady_load::assert_rode_through_database_faults(&stack, outcome, &journal).await;
}
