//! One service replica cut off from every broker node, not from its database, under load.
//!
//! Beside the stack's payment-svc runs a second replica whose `SAGA_AMQP_URL` goes through
//! a [`TcpProxy`] (one per broker node; the shared broker is a single node). While orders
//! come in, the replica has taken deliveries; then the proxy is cut for 60 s: every
//! connection of the replica's consumer and relay is dropped and every new one refused,
//! while its database stays reachable. The replica must pause, not fail: its `/healthz`
//! reports both broker links down, the deliveries it held go back to the queue, and orders
//! keep confirming through the other replica. When the proxy lets connections through
//! again, the replica's links come up and it takes deliveries again.
//!
//! Afterwards: no accepted order lost, every order terminal, nobody charged twice, the
//! outboxes drained (the rows the replica could not send included), nothing dead-lettered,
//! `sagactl verify` clean. The stalls are printed, not asserted. About 1.5 minutes.

use std::time::{Duration, Instant};

use saga_tests::replicas::Replica;
use saga_tests::sandbox::broker_addr;
use saga_tests::steady_load::{self, Journal};
use saga_tests::{Poll, Service, Stack, StackOptions, StatusCode, TcpProxy, eventually};

/// How long the replica stays cut off.
const HOLD: Duration = Duration::from_secs(60);
const SERVICE: Service = Service::Payment;

/// The replica's `/healthz`: its status and whether every broker link reports `want`.
async fn links_are(replica: &Replica, want: &str) -> Poll<()> {
    let answer = async {
        let response = reqwest::get(format!("{}/healthz", replica.base_url())).await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        Ok::<_, reqwest::Error>((status, body))
    };
    match answer.await {
        Ok((status, body)) => {
            let links = body["broker"].as_object();
            let all = links.is_some_and(|l| !l.is_empty() && l.values().all(|v| v == want));
            // Up means fully healthy (200); down means unavailable (503), the database up.
            let status_fits = if want == "up" {
                status == StatusCode::OK
            } else {
                status == StatusCode::SERVICE_UNAVAILABLE && body["database"] == "up"
            };
            if all && status_fits {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("/healthz answered {status} {body}"))
            }
        }
        Err(e) => Poll::Failed(format!("the replica does not answer /healthz: {e}")),
    }
}

async fn handled(replica: &Replica) -> f64 {
    replica.metric("saga_messages_handled_total", &[]).await
}

/// Cuts the replica off for [`HOLD`] and reconnects it; returns the faults and the span
/// during which it was cut off.
async fn cut_the_replica(
    proxy: &TcpProxy,
    replica: &Replica,
    journal: &Journal,
) -> Vec<(String, Instant)> {
    // The replica shares the work before the cut, so that it has something to give back.
    eventually(Duration::from_secs(60), || async {
        let n = handled(replica).await;
        if n > 0.0 {
            Poll::Ready(n)
        } else {
            Poll::Pending("the replica has handled nothing yet".to_owned())
        }
    })
    .await;
    // A few seconds of steady load, to compare the stall with.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = handled(replica).await;

    let cut_at = Instant::now();
    proxy.cut();
    journal.note(format!(
        "the {SERVICE} replica cut off from the broker after handling {before} messages"
    ));
    eventually(Duration::from_secs(30), || links_are(replica, "down")).await;
    journal.note(format!(
        "the replica reports its broker links down (its database up) {:.1}s after the cut",
        cut_at.elapsed().as_secs_f64()
    ));

    // The fault's duration, not a wait for a result.
    tokio::time::sleep(HOLD.saturating_sub(cut_at.elapsed())).await;
    let during = handled(replica).await;
    let restored_at = Instant::now();
    proxy.restore();
    journal.note(format!(
        "the replica reconnected after {:.1}s",
        (restored_at - cut_at).as_secs_f64()
    ));
    eventually(Duration::from_secs(60), || links_are(replica, "up")).await;
    eventually(Duration::from_secs(60), || async {
        let n = handled(replica).await;
        if n > during {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("the replica has handled {n} messages, as before"))
        }
    })
    .await;
    journal.note(format!(
        "the replica's links up and it takes deliveries again {:.1}s after reconnecting",
        restored_at.elapsed().as_secs_f64()
    ));
    vec![
        (format!("cutting the {SERVICE} replica off"), cut_at),
        ("reconnecting it".to_owned(), restored_at),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_the_broker_pauses_and_resumes_without_dead_letters() {
    let journal = Journal::default();
    let stack = Stack::start(
        StackOptions::default()
            .deadline_secs(steady_load::ORDER_DEADLINE_SECS)
            .wait(Duration::from_secs(60)),
    )
    .await;
    steady_load::seed(&stack).await;
    let proxy = TcpProxy::start(broker_addr())
        .await
        .expect("starting the replica's AMQP proxy");
    let replica = stack
        .start_replica_from(
            SERVICE,
            &stack.binary(SERVICE),
            &[(
                "SAGA_AMQP_URL".to_owned(),
                stack.sandbox().amqp_url_via(proxy.addr()),
            )],
        )
        .await;
    journal.note(format!(
        "stack up, a second {SERVICE} replica reaching the broker through a proxy"
    ));

    let (placed, progress, faults) = steady_load::under_load(
        &stack,
        cut_the_replica(&proxy, &replica, &journal),
        &journal,
    )
    .await;
    let (cut_at, restored_at) = (faults[0].1, faults[1].1);
    // Past the first stall, orders went on confirming through the other replica.
    let flowing = progress.confirmations_between(cut_at + Duration::from_secs(20), restored_at);
    assert!(
        flowing > 0,
        "no order confirmed while the replica was cut off: the other replica did not take over"
    );
    journal.note(format!(
        "orders confirmed through the other replica during the cut ({flowing} times new ones \
         were seen)"
    ));
    steady_load::assert_clean_after_broker_faults(&stack, &placed, &progress, &[], &journal).await;
    steady_load::report_stalls(&progress, &faults, &journal);
    drop(replica);
}
