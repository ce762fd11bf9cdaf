//! A rolling upgrade from the previous release under steady load (docs/upgrading.md, "A
//! release"). Every service starts as the previous release's binaries (the commit in
//! `PREVIOUS_RELEASE`, built by scripts/build-previous-release.sh), two processes each: the
//! stack's own and a replica. Then each service in turn, consumers before producers
//! (inventory-svc, payment-svc, then order-svc), is moved to the current release one
//! process at a time: SIGTERM, its exit (it drains: status 0), the current binary started,
//! `/healthz/ready` 200, and not before the new process has handled messages beside the
//! old ones does the next one go. The current release first writes every event at a
//! version the previous one reads (`SAGA_EMIT_VERSIONS`, [`upgrade::pinned_versions`]);
//! once no old process runs, the producers of those types are switched, again one process
//! at a time, without it.
//!
//! Afterwards every order has ended as it should (none cancelled for `timeout`), nothing
//! is in a dead-letter queue, each event was applied once, and `sagactl verify` is clean
//! with the stock and deposits published.

use std::time::{Duration, Instant};

use events::EventType;
use saga_tests::replicas::Replica;
use saga_tests::sigterm::Exit;
use saga_tests::stack::binary_path;
use saga_tests::steady_load::{self, Journal};
use saga_tests::upgrade::{self, PreviousRelease};
use saga_tests::{Service, Stack, StackOptions, eventually};

/// Consumers before producers: inventory-svc and payment-svc read what order-svc writes.
const UPGRADE_ORDER: [Service; 3] = [Service::Inventory, Service::Payment, Service::Order];
/// `SAGA_ORDER_DEADLINE_SECS`: far above any stall a replacement should cause (a few
/// seconds), below the steady load's two minutes, so that an order a replacement left
/// waiting would be cancelled for `timeout` within the test.
const ORDER_DEADLINE_SECS: f64 = 60.0;
/// Messages a process has handled before it is replaced, and a new one before the next
/// process is: old and new releases have worked side by side.
const HANDLED_BEFORE_NEXT: f64 = 10.0;
/// `SAGA_SHUTDOWN_GRACE_SECS` of the services: the default.
const GRACE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_rolling_upgrade_from_the_previous_release_under_load_loses_nothing() {
    let previous = PreviousRelease::built();
    let pins = upgrade::pinned_versions();
    let stack = Stack::start(
        StackOptions::default()
            .deadline_secs(ORDER_DEADLINE_SECS)
            .binaries(&previous.dir),
    )
    .await;
    let mut replicas = stack.start_replica_of_each().await;
    steady_load::seed(&stack).await;
    let journal = Journal::default();
    journal.note(format!(
        "two processes of each service run the previous release {}; the current one writes \
         {} until its producers are switched",
        previous.commit,
        if pins.is_empty() {
            "every event at its newest version (no type has a version the previous release \
             does not write)"
                .to_owned()
        } else {
            format!("{:?}", upgrade::emit_versions_env(&pins))
        }
    ));
    let (placed, progress, replaced) = steady_load::under_load(
        &stack,
        upgrade_every_process(&stack, &mut replicas, &pins, &journal),
        &journal,
    )
    .await;
    steady_load::assert_nothing_lost(&stack, &placed, &progress, &[], &journal).await;
    steady_load::report_stalls(&progress, &replaced, &journal);
    let orders = stack.wait_all_settled(Duration::from_secs(90)).await;
    let timed_out: Vec<&serde_json::Value> = orders
        .iter()
        .filter(|o| o["status"] == "cancelled" && o["reason"] == "timeout")
        .collect();
    assert!(
        timed_out.is_empty(),
        "{} orders cancelled for timeout, e.g. {:?}",
        timed_out.len(),
        timed_out.first()
    );
    let dead = stack.dlq_counts().await;
    assert!(
        dead.values().all(|n| *n == 0),
        "messages were dead-lettered: {dead:?}"
    );
    steady_load::assert_each_event_applied_once(&stack, &journal).await;
}

/// Moves every process to the current release and then switches the producers; returns
/// each SIGTERM sent, with when.
async fn upgrade_every_process(
    stack: &Stack,
    replicas: &mut [Replica],
    pins: &[(EventType, u32)],
    journal: &Journal,
) -> Vec<(String, Instant)> {
    let mut replaced = Vec::new();
    let pinned = upgrade::emit_versions_env(pins);
    for service in UPGRADE_ORDER {
        replace_both(
            stack,
            replicas,
            service,
            &pinned,
            "upgraded",
            journal,
            &mut replaced,
        )
        .await;
    }
    let producers = upgrade::producers_of(pins);
    if producers.is_empty() {
        journal.note("no type is pinned: no producer to switch");
    }
    for service in producers {
        replace_both(
            stack,
            replicas,
            service,
            &[],
            "switched",
            journal,
            &mut replaced,
        )
        .await;
    }
    replaced
}

/// Replaces the stack's process of `service` and then its replica by the current release
/// with `env`, noting each SIGTERM (as `what`) in `replaced`.
async fn replace_both(
    stack: &Stack,
    replicas: &mut [Replica],
    service: Service,
    env: &[(String, String)],
    what: &str,
    journal: &Journal,
    replaced: &mut Vec<(String, Instant)>,
) {
    let current = binary_path(service.name());
    let own = format!("{service} (the stack's)");
    has_handled(move || stack.metric(service, HANDLED, &OK), &own).await;
    let (sent, exit) = stack.replace_service(service, &current, env).await;
    note_exit(journal, &own, &exit, what);
    replaced.push((format!("{own} {what}"), sent));
    has_handled(move || stack.metric(service, HANDLED, &OK), &own).await;
    let replica = replicas
        .iter_mut()
        .find(|r| r.service == service)
        .unwrap_or_else(|| panic!("no replica of {service}"));
    let other = format!("{service} (the replica)");
    let (sent, exit) = stack.replace_replica(replica, &current, env).await;
    note_exit(journal, &other, &exit, what);
    replaced.push((format!("{other} {what}"), sent));
    let replica: &Replica = replica;
    has_handled(move || replica.metric(HANDLED, &OK), &other).await;
}

const HANDLED: &str = "saga_messages_handled_total";
const OK: [(&str, &str); 1] = [("outcome", "ok")];

/// Notes how a replaced process ended; it must have drained (status 0) within its grace.
fn note_exit(journal: &Journal, which: &str, exit: &Exit, what: &str) {
    journal.note(format!(
        "{which} exited with {} {:.2}s after SIGTERM; {what}, ready",
        exit.status,
        exit.after.as_secs_f64()
    ));
    assert!(exit.status.success(), "{which} exited with {}", exit.status);
    assert!(
        exit.after < GRACE,
        "{which} took {:?} to drain, over its grace period",
        exit.after
    );
}

/// Waits until a process has handled messages of its own: the one about to be replaced
/// (the previous release has worked under the load), and the one just started (beside the
/// other release's process), before the next SIGTERM.
async fn has_handled<F, Fut>(handled: F, which: &str)
where
    F: Fn() -> Fut,
    Fut: Future<Output = f64>,
{
    eventually(Duration::from_secs(60), || async {
        let n = handled().await;
        (n >= HANDLED_BEFORE_NEXT)
            .then_some(())
            .ok_or(format!("{which} handled {n} messages"))
    })
    .await;
}
