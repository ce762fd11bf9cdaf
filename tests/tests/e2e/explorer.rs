//! The saga explorer (`sagactl ui`) in a real headless browser (Debian's chromium through
//! chromedriver), against a running stack: the orders page lists, filters and searches;
//! the saga page draws the timeline and causation tree of a confirmed and of a compensated
//! saga in the order the events happened; the DLQ page groups dead letters by cause, filters
//! them, counts a dry run, redrives with progress and an outcome that says what came back
//! and why, and purges after a confirmation, and the audit page lists both by the operator
//! who asked; the stuck page lists the open
//! sagas with the participant each waits on, filters them and cancels the filtered set
//! with its progress shown; the header's search box finds the sagas naming a customer or
//! SKU. Screenshots of every page are kept under `target/explorer-screenshots/`.

use events::Event;
use events::catalog::StockAdjusted;
use saga_tests::browser::{Browser, Explorer, PAGE_DEADLINE};
use saga_tests::{Poll, Service, Stack, StackOptions, eventually, order_request};

const CONFIRMED_SAGA: [&str; 4] = [
    "OrderCreated",
    "StockReserved",
    "PaymentDone",
    "OrderConfirmed",
];
const COMPENSATED_SAGA: [&str; 5] = [
    "OrderCreated",
    "StockReserved",
    "PaymentFailed",
    "OrderCancelled",
    "StockReleased",
];

/// Opens the saga page of `order_id` until its timeline shows `want` (the last events of a
/// compensation may still be on their way when the order is already cancelled), and
/// returns the causation tree's (type, depth) pairs.
async fn saga_page_shows(
    browser: &Browser,
    explorer: &Explorer,
    order_id: &str,
    want: &[&str],
) -> Vec<(String, String)> {
    let url = explorer.url(&format!("/orders/{order_id}"));
    eventually(PAGE_DEADLINE, || {
        let url = url.clone();
        async move {
            browser.goto(&url).await;
            browser.wait_for("#state").await;
            let shown = browser.attributes("#timeline .event", "data-type").await;
            if shown == want {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("the timeline shows {shown:?}"))
            }
        }
    })
    .await;
    let types = browser.attributes("#tree .node", "data-type").await;
    let depths = browser.attributes("#tree .node", "data-depth").await;
    types.into_iter().zip(depths).collect()
}

/// Waits until the orders page lists exactly `want`, in that order.
async fn orders_listed(browser: &Browser, want: &[&str]) {
    eventually(PAGE_DEADLINE, || async {
        let ids = browser.attributes("tr.order", "data-order-id").await;
        if ids == want {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("orders listed: {ids:?}, waiting for {want:?}"))
        }
    })
    .await;
}

#[tokio::test]
async fn the_explorer_lists_orders_and_draws_a_confirmed_and_a_compensated_saga() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("BOOK", 10).await;
    stack.deposit("alice", 5000, "EUR").await;
    let confirmed = stack
        .place_order_ok(&order_request("alice", "EUR", &[("BOOK", 2, 1500)]))
        .await;
    stack.wait_for_status(&confirmed, "confirmed").await;
    let compensated = stack
        .place_order_ok(&order_request("alice", "EUR", &[("BOOK", 1, 9900)]))
        .await;
    stack.wait_for_status(&compensated, "cancelled").await;

    let explorer = Explorer::start(&stack).await;
    let browser = Browser::start().await;

    // Recent orders: both, newest first; the status filter and the search narrow them.
    browser.goto(&explorer.url("/")).await;
    orders_listed(&browser, &[&compensated, &confirmed]).await;
    browser.screenshot("orders").await;
    // The header links each service's API reference page.
    browser
        .wait_for("#api-reference a[data-service=payment-svc]")
        .await;
    let references = browser.attributes("#api-reference a", "href").await;
    let wanted: Vec<String> = Service::ALL
        .iter()
        .map(|s| format!("{}/api-docs", stack.base_url(*s)))
        .collect();
    assert_eq!(references, wanted);
    browser.click("button[data-status=cancelled]").await;
    orders_listed(&browser, &[&compensated]).await;
    browser.click("button[data-status=all]").await;
    let search = browser.wait_for("#search").await;
    search
        .send_keys(&confirmed[confirmed.len() - 12..])
        .await
        .unwrap_or_else(|e| panic!("typing into the search box: {e}"));
    orders_listed(&browser, &[&confirmed]).await;

    // The confirmed saga: four events, each caused by the one before.
    let tree = saga_page_shows(&browser, &explorer, &confirmed, &CONFIRMED_SAGA).await;
    let chain: Vec<(String, String)> = CONFIRMED_SAGA
        .iter()
        .enumerate()
        .map(|(depth, t)| (t.to_string(), depth.to_string()))
        .collect();
    assert_eq!(tree, chain);
    let state = browser.text("#state").await;
    assert!(state.contains("confirmed"), "{state}");
    assert!(state.contains("sold"), "{state}");
    assert!(state.contains("€30.00"), "the total in euros: {state}");
    browser.screenshot("saga-confirmed").await;

    // The compensated saga: the payment failed, the order was cancelled, the stock released.
    let tree = saga_page_shows(&browser, &explorer, &compensated, &COMPENSATED_SAGA).await;
    assert_eq!(tree.len(), COMPENSATED_SAGA.len(), "{tree:?}");
    assert_eq!(tree[0], ("OrderCreated".to_owned(), "0".to_owned()));
    assert!(
        tree.contains(&("StockReleased".to_owned(), "4".to_owned())),
        "StockReleased answers OrderCancelled, which answers PaymentFailed: {tree:?}"
    );
    let state = browser.text("#state").await;
    assert!(state.contains("payment_failed"), "{state}");
    assert!(state.contains("released"), "{state}");
    browser.screenshot("saga-compensated").await;

    browser.close().await;
}

/// `attribute` of the elements matching `css`, once `check` holds for them.
async fn attributes_when(
    browser: &Browser,
    css: &str,
    attribute: &str,
    check: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    eventually(PAGE_DEADLINE, || async {
        let values = browser.attributes(css, attribute).await;
        if check(&values) {
            Poll::Ready(values)
        } else {
            Poll::Pending(format!("{css} [{attribute}]: {values:?}"))
        }
    })
    .await
}

/// The text of `css` once its element carries `data-finished="true"` (a job followed to
/// its end).
async fn job_outcome(browser: &Browser, css: &str) -> String {
    attributes_when(browser, css, "data-finished", |v| v == ["true"]).await;
    browser.text(css).await
}

#[tokio::test]
async fn the_dlq_page_groups_filters_redrives_and_purges_and_the_audit_page_lists_them() {
    let stack = Stack::start(StackOptions::default()).await;
    let probe = stack.probe().await;
    let dlq = "inventory-svc.dlq";
    // Two causes in one queue: three adjustments taking 5 of a SKU nobody stocked yet, and
    // two messages that are not JSON at all.
    for _ in 0..3 {
        stack
            .publish(&Event::StockAdjusted(StockAdjusted {
                sku: "SKU-UI".to_owned(),
                delta: -5,
            }))
            .await;
    }
    for _ in 0..2 {
        stack
            .publish_raw("order.created", b"not json".to_vec())
            .await;
    }
    probe.wait_depth(dlq, 5, stack.options().wait).await;

    let explorer = Explorer::start_as(&stack, "ops-anna").await;
    let browser = Browser::start().await;
    browser.goto(&explorer.url("/dlq")).await;
    let section = ".dlq[data-service=\"inventory-svc\"]";
    let groups = format!("{section} tr.group");
    let mut counts = attributes_when(&browser, &groups, "data-count", |v| v.len() == 2).await;
    counts.sort();
    assert_eq!(counts, ["2", "3"]);
    let causes = browser.attributes(&groups, "data-cause").await;
    let stock_cause = browser
        .attributes(&format!("{groups}[data-count=\"3\"]"), "data-cause")
        .await;
    let [stock_cause] = stock_cause.as_slice() else {
        panic!("one group of three: {causes:?}");
    };
    let other_cause = causes
        .iter()
        .find(|c| *c != stock_cause)
        .unwrap_or_else(|| panic!("two causes: {causes:?}"))
        .clone();
    browser.screenshot("dlq-groups").await;

    // Filtered on the adjustments' cause: three listed, and the dry run counts them.
    browser
        .click(&format!("{groups}[data-count=\"3\"] button.pick"))
        .await;
    attributes_when(
        &browser,
        &format!("{section} tr.message"),
        "data-cause",
        |v| v.len() == 3 && v.iter().all(|c| c == stock_cause),
    )
    .await;
    browser.click(&format!("{section} button.dry-run")).await;
    attributes_when(
        &browser,
        &format!("{section} .dlq-notice"),
        "data-matched",
        |v| v == ["3"],
    )
    .await;
    let notice = browser.text(&format!("{section} .dlq-notice")).await;
    assert!(notice.contains("3 would be redriven"), "{notice}");

    // Stock for one adjustment only: the redrive applies one and two come back, and the
    // summary says why.
    stack.seed_stock("SKU-UI", 6).await;
    browser.click(&format!("{section} button.redrive")).await;
    let question = browser.confirm().await;
    assert!(question.contains("Redrive 3 dead letters"), "{question}");
    let outcome = job_outcome(&browser, &format!("{section} .job")).await;
    assert!(outcome.contains("1 applied"), "{outcome}");
    assert!(outcome.contains("2 back in the DLQ"), "{outcome}");
    assert!(
        outcome.contains(&format!("back in the DLQ: 2 × {stock_cause}")),
        "{outcome}"
    );
    let progress = browser
        .attributes(&format!("{section} .job progress"), "value")
        .await;
    assert_eq!(progress, ["3"], "the bar ends full");
    browser.screenshot("dlq-redriven").await;
    eventually(stack.options().wait, || async {
        let (_, stock) = stack.stock("SKU-UI").await;
        if stock["available"] == 1 {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("stock {stock}"))
        }
    })
    .await;
    probe.wait_depth(dlq, 4, stack.options().wait).await;

    // The other cause purged after its confirmation: its group is gone.
    browser
        .click(&format!(
            "{groups}[data-cause=\"{other_cause}\"] button.pick"
        ))
        .await;
    attributes_when(
        &browser,
        &format!("{section} .messages"),
        "data-matched",
        |v| v == ["2"],
    )
    .await;
    browser.click(&format!("{section} button.purge")).await;
    let question = browser.confirm().await;
    assert!(question.contains("Delete 2 dead letters"), "{question}");
    let outcome = job_outcome(&browser, &format!("{section} .job")).await;
    assert!(outcome.contains("purged 2 of 2"), "{outcome}");
    let left = attributes_when(&browser, &groups, "data-cause", |v| v.len() == 1).await;
    assert_eq!(left, [stock_cause.as_str()]);
    probe.wait_depth(dlq, 2, stack.options().wait).await;
    browser.screenshot("dlq-purged").await;

    // The audit page lists both, by the operator who clicked.
    browser.click("header nav a[data-nav=audit]").await;
    let actions = attributes_when(
        &browser,
        "tr.audit[data-actor=\"ops-anna\"]",
        "data-action",
        |v| v.iter().any(|a| a == "replay") && v.iter().any(|a| a == "purge"),
    )
    .await;
    assert_eq!(
        actions.first().map(String::as_str),
        Some("purge"),
        "newest first: {actions:?}"
    );
    let services = browser
        .attributes("tr.audit[data-actor=\"ops-anna\"]", "data-service")
        .await;
    assert!(
        services.iter().all(|s| s == "inventory-svc"),
        "{services:?}"
    );
    let select = browser.wait_for("#audit-action").await;
    select
        .select_by_value("purge")
        .await
        .unwrap_or_else(|e| panic!("choosing the action: {e}"));
    browser.click("#audit-apply").await;
    attributes_when(&browser, "tr.audit", "data-action", |v| {
        !v.is_empty() && v.iter().all(|a| a == "purge")
    })
    .await;
    browser.screenshot("audit").await;

    browser.close().await;
    probe.close().await;
}

/// The `data-order-id`s of the rows matching `css`, once they are `want`.
async fn rows_listed(browser: &Browser, css: &str, want: &[&String]) {
    eventually(PAGE_DEADLINE, || async {
        let ids = browser.attributes(css, "data-order-id").await;
        if ids.iter().collect::<Vec<_>>() == want {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("{css} lists {ids:?}, waiting for {want:?}"))
        }
    })
    .await;
}

#[tokio::test]
async fn the_stuck_page_filters_and_cancels_with_progress_and_the_search_box_finds_an_id() {
    let (stack, [first, second, pending]) = crate::triage::stack_with_stuck_sagas().await;
    let explorer = Explorer::start(&stack).await;
    let browser = Browser::start().await;

    // Every open saga, oldest first, with the participant it waits on.
    browser.goto(&explorer.url("/stuck")).await;
    rows_listed(&browser, "tr.stuck", &[&first, &second, &pending]).await;
    let waiting = browser.attributes("tr.stuck", "data-waiting-on").await;
    assert_eq!(waiting, ["payment-svc", "payment-svc", "inventory-svc"]);
    let link = browser
        .attributes(&format!("tr.stuck[data-order-id=\"{pending}\"] a"), "href")
        .await;
    assert_eq!(link, [format!("/orders/{pending}")]);
    browser.screenshot("stuck").await;

    // Filtered on the participant, then every match cancelled, one order at a time.
    let select = browser.wait_for("#waiting-on").await;
    select
        .select_by_value("payment-svc")
        .await
        .unwrap_or_else(|e| panic!("choosing the participant: {e}"));
    browser.click("#apply-filters").await;
    rows_listed(&browser, "tr.stuck", &[&first, &second]).await;
    browser.click("#cancel-all").await;
    let question = browser.confirm().await;
    assert!(question.contains("Cancel all 2 open sagas"), "{question}");
    eventually(PAGE_DEADLINE, || async {
        let done = browser.attributes("#progress", "data-finished").await;
        let text = browser.text("#progress").await;
        if done == ["true"] && text.contains("2 of 2 orders (2 cancelled") {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("progress {done:?}: {text:?}"))
        }
    })
    .await;
    rows_listed(&browser, "tr.stuck", &[]).await;
    browser.screenshot("stuck-cancelled").await;
    for id in [&first, &second] {
        stack.wait_for_status(id, "cancelled").await;
    }
    assert_eq!(stack.order(&pending).await.1["status"], "pending");

    // The header's search box: a customer id finds their saga.
    let search = browser.wait_for("#find").await;
    search
        .send_keys(&format!("bob{}", char::from(fantoccini::key::Key::Enter)))
        .await
        .unwrap_or_else(|e| panic!("typing into the search box: {e}"));
    rows_listed(&browser, "#found-sagas tr.found-saga", &[&pending]).await;
    let matched = browser
        .attributes("#found-sagas tr.found-saga", "data-matched")
        .await;
    assert_eq!(matched, ["customer_id"]);
    browser.screenshot("find").await;
    // An order cancelled from the stuck page: its audit record, by the operator.
    browser
        .goto(&explorer.url(&format!("/find?q={first}")))
        .await;
    let actors = attributes_when(
        &browser,
        "#found-audit tr.audit[data-action=cancel]",
        "data-actor",
        |v| !v.is_empty(),
    )
    .await;
    assert_eq!(actors, ["operator"]);
    // A payload's SKU finds every saga holding it.
    browser.goto(&explorer.url("/find?q=BOOK")).await;
    eventually(PAGE_DEADLINE, || async {
        let n = browser.find_all("#found-sagas tr.found-saga").await.len();
        if n == 4 {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("{n} sagas found by their SKU"))
        }
    })
    .await;

    // Back up, the last saga goes on and everything settles.
    stack.start_service(Service::Inventory).await;
    stack.start_service(Service::Payment).await;
    stack.wait_for_status(&pending, "confirmed").await;
    stack.assert_invariants().await;
    browser.close().await;
}
