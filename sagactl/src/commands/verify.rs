//! `sagactl verify`: report every breach of the contract's at-rest invariants; exit 1 when
//! there is any.

use std::time::{Duration, Instant};

use serde_json::json;

use sagactl::verify::{Endpoints, Expected, Snapshot, check_against};

use sagactl::context::{CliError, Context};
use sagactl::output;

pub(super) async fn run(
    ctx: &Context,
    settle_secs: u64,
    expected: &Expected,
) -> anyhow::Result<()> {
    let endpoints = Endpoints {
        order: ctx.conn.order_url.clone(),
        inventory: ctx.conn.inventory_url.clone(),
        payment: ctx.conn.payment_url.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(settle_secs);
    let (snapshot, breaches) = loop {
        let snapshot =
            Snapshot::fetch(&ctx.http, &endpoints)
                .await
                .map_err(|e| CliError::Unreachable {
                    what: "a service",
                    url: format!(
                        "{}, {}, {}",
                        endpoints.order, endpoints.inventory, endpoints.payment
                    ),
                    cause: format!("{e:#}"),
                    hint: "is the stack up? Start it with ./scripts/stack.sh up",
                })?;
        let breaches = check_against(&snapshot, expected);
        // Sagas in flight look like breaches; with --settle, look again until they settle.
        if breaches.is_empty() || Instant::now() >= deadline {
            break (snapshot, breaches);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let report = json!({
        "checked": {
            "orders": snapshot.orders.len(), "skus": snapshot.stock.len(), "wallets": snapshot.wallets.len(),
            "reservations": snapshot.reservations.len(), "payments": snapshot.payments.len(),
        },
        "breaches": breaches,
    });
    output::show(ctx, &report, |_| {
        let mut s = format!(
            "checked {} orders, {} SKUs, {} wallets, {} reservations, {} payments\n",
            snapshot.orders.len(),
            snapshot.stock.len(),
            snapshot.wallets.len(),
            snapshot.reservations.len(),
            snapshot.payments.len()
        );
        if breaches.is_empty() {
            s.push_str("no breach: every invariant holds");
        }
        for b in &breaches {
            s.push_str(&format!(
                "BREACH {:<28} {:<46} {}\n",
                b.rule, b.subject, b.detail
            ));
        }
        s.trim_end().to_owned()
    });
    if breaches.is_empty() {
        Ok(())
    } else {
        Err(CliError::Refused(format!("{} invariant breaches", breaches.len())).into())
    }
}
