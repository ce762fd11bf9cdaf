//! The invariant checker itself (`sagactl verify` and the tests' `assert_invariants`)
//! against a stack whose state was corrupted on purpose: it must see what the services'
//! own counters cannot.

use saga_tests::{Service, Stack, StackOptions};

/// An adjustment and a deposit applied a second time behind the inbox's back (as a broken
/// inbox would) keep every service-side balance true (`adjusted` and `deposited` move
/// too), so only the totals the checker knows from what was published catch them.
#[tokio::test]
async fn a_stock_adjustment_and_a_deposit_applied_twice_are_caught() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("SKU-TWICE", 5).await;
    stack.deposit("twice", 1_000, "EUR").await;
    stack.assert_invariants().await;

    let inventory = stack.db(Service::Inventory).await;
    sqlx::query(
        "UPDATE stock SET available = available + 5, adjusted = adjusted + 5 \
         WHERE sku = 'SKU-TWICE'",
    )
    .execute(&inventory)
    .await
    .expect("applying the adjustment again");
    let payments = stack.db(Service::Payment).await;
    sqlx::query(
        "UPDATE wallets SET balance = balance + 1000, deposited = deposited + 1000 \
         WHERE customer_id = 'twice'",
    )
    .execute(&payments)
    .await
    .expect("applying the deposit again");

    let breaches = stack.invariant_breaches().await;
    let rules: Vec<&str> = breaches
        .iter()
        .filter_map(|b| b.split_once(':').map(|(rule, _)| rule))
        .collect();
    assert_eq!(
        rules,
        ["stock_matches_published", "wallet_matches_published"],
        "{breaches:#?}"
    );

    // sagactl verify, told what was published, says the same and exits 1 ...
    let told = [
        "--json",
        "verify",
        "--expect-stock",
        "SKU-TWICE=5",
        "--expect-deposits",
        "twice=1000",
    ];
    let run = stack.sagactl(&told, &[]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    let report = run.json();
    let reported: Vec<&str> = report["breaches"]
        .as_array()
        .unwrap_or_else(|| panic!("no breaches list in {report}"))
        .iter()
        .filter_map(|b| b["rule"].as_str())
        .collect();
    assert_eq!(
        reported,
        ["stock_matches_published", "wallet_matches_published"],
        "{report}"
    );
    // ... while without those totals every service-side rule holds: this is the breach
    // that only an outside total can see.
    let run = stack.sagactl(&["--json", "verify"], &[]).await;
    assert!(run.success(), "{run:?}");

    // A malformed total is refused with a message that says what is expected.
    let run = stack
        .sagactl(&["verify", "--expect-stock", "SKU-TWICE"], &[])
        .await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("NAME=TOTAL"), "{run:?}");
}

/// More orders, SKUs and wallets than a page of the list endpoints (1000 rows) are all
/// read, each once: a breach in the last row of each list, three pages in, is found.
#[tokio::test]
async fn the_checker_reads_every_page_of_orders_stock_and_wallets() {
    const ROWS: i64 = 2_500;
    let stack = Stack::start(StackOptions::default()).await;
    let inventory = stack.db(Service::Inventory).await;
    // Each SKU consistent (adjusted = available + reserved + sold) but the last one.
    sqlx::query(
        "INSERT INTO stock (sku, available, adjusted) \
         SELECT 'SKU-' || lpad(n::text, 5, '0'), 3, CASE WHEN n = $1 THEN 4 ELSE 3 END \
         FROM generate_series(1, $1) AS n",
    )
    .bind(ROWS)
    .execute(&inventory)
    .await
    .expect("stocking the SKUs");
    let payments = stack.db(Service::Payment).await;
    // Each wallet consistent (deposited = balance + captured - refunded) but the last one.
    sqlx::query(
        "INSERT INTO wallets (customer_id, currency, balance, deposited) \
         SELECT 'customer-' || lpad(n::text, 5, '0'), 'EUR', 7, CASE WHEN n = $1 THEN 8 ELSE 7 END \
         FROM generate_series(1, $1) AS n",
    )
    .bind(ROWS)
    .execute(&payments)
    .await
    .expect("opening the wallets");

    let orders = stack.db(Service::Order).await;
    // Rejected orders hold nothing, so they break no rule; each must be read once.
    sqlx::query(
        "INSERT INTO orders (order_id, customer_id, status, reason, items, total, currency, deadline) \
         SELECT gen_random_uuid(), 'customer-00001', 'rejected', 'insufficient_stock', \
                '[{\"sku\": \"SKU-00001\", \"quantity\": 1, \"unit_price\": 1}]', 1, 'EUR', now() \
         FROM generate_series(1, $1)",
    )
    .bind(ROWS)
    .execute(&orders)
    .await
    .expect("placing the orders");

    let snapshot = stack.snapshot().await.expect("reading the stack");
    let read: std::collections::HashSet<_> = snapshot.orders.iter().map(|o| o.order_id).collect();
    assert_eq!(
        (snapshot.orders.len(), read.len()),
        (ROWS as usize, ROWS as usize),
        "orders read, and distinct"
    );
    assert_eq!(snapshot.stock.len(), ROWS as usize, "SKUs read");
    assert_eq!(snapshot.wallets.len(), ROWS as usize, "wallets read");
    let breaches = stack.invariant_breaches().await;
    let subjects: Vec<&str> = breaches
        .iter()
        .filter_map(|b| b.split(": ").nth(1))
        .collect();
    assert_eq!(
        subjects,
        [
            format!("sku SKU-{ROWS:05}"),
            format!("customer customer-{ROWS:05}")
        ],
        "{breaches:#?}"
    );
}
