//! The saga end to end through its public edges: orders placed over HTTP, stock and funds
//! seeded over the broker, outcomes read back over HTTP. Each test runs its own stack of
//! the three real binaries.

use std::cell::RefCell;
use std::collections::BTreeSet;

use saga_tests::{
    Method, Poll, Service, Stack, StackOptions, StatusCode, eventually, order_request,
};
use serde_json::{Value, json};

/// The contract's error body: `{"error": <code>, "message": <text>}`.
fn is_error_body(body: &Value) -> bool {
    body["error"].as_str().is_some_and(|c| !c.is_empty())
        && body["message"].as_str().is_some_and(|m| !m.is_empty())
}

fn int(v: &Value, key: &str) -> i64 {
    v[key]
        .as_i64()
        .unwrap_or_else(|| panic!("{key:?} is not an integer in {v}"))
}

#[tokio::test]
async fn happy_path_confirms_the_order_and_moves_stock_and_money() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("SKU-HAPPY", 10).await;
    stack.deposit("alice", 10_000, "EUR").await;

    let order_id = stack
        .place_order_ok(&order_request("alice", "EUR", &[("SKU-HAPPY", 2, 1250)]))
        .await;
    let order = stack.wait_for_status(&order_id, "confirmed").await;
    assert_eq!(order["total"], 2500);
    assert_eq!(order["reason"], Value::Null);

    // Inventory sells the reservation on OrderConfirmed, which follows the confirmation.
    eventually(stack.options().wait, || async {
        let (_, s) = stack.stock("SKU-HAPPY").await;
        let figures = (int(&s, "available"), int(&s, "reserved"), int(&s, "sold"));
        if figures == (8, 0, 2) {
            Ok(())
        } else {
            Err(format!(
                "stock (available, reserved, sold) = {figures:?}, want (8, 0, 2)"
            ))
        }
    })
    .await;
    let (status, wallet) = stack.wallet("alice").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            int(&wallet, "balance"),
            int(&wallet, "captured"),
            int(&wallet, "refunded")
        ),
        (7500, 2500, 0),
        "{wallet}"
    );

    // StockReserved and PaymentDone come from different services and may reach order-svc
    // in either order; the history records each event once, with its message id.
    let wanted = [
        "OrderCreated",
        "StockReserved",
        "PaymentDone",
        "OrderConfirmed",
    ];
    let history = eventually(stack.options().wait, || async {
        let (_, order) = stack.order(&order_id).await;
        let history = order["history"].as_array().cloned().unwrap_or_default();
        let types: Vec<&str> = history.iter().filter_map(|h| h["type"].as_str()).collect();
        if wanted.iter().all(|w| types.contains(w)) {
            Ok(history)
        } else {
            Err(format!("history so far: {types:?}"))
        }
    })
    .await;
    let types: Vec<&str> = history.iter().filter_map(|h| h["type"].as_str()).collect();
    assert_eq!(types.len(), 4, "every event recorded once: {types:?}");
    assert_eq!(types[0], "OrderCreated");
    let position = |t: &str| types.iter().position(|x| *x == t).unwrap();
    assert!(
        position("PaymentDone") < position("OrderConfirmed"),
        "{types:?}"
    );
    let ids: BTreeSet<&str> = history
        .iter()
        .map(|h| {
            let id = h["message_id"].as_str().unwrap_or("");
            assert!(uuid::Uuid::parse_str(id).is_ok(), "bad message id in {h}");
            id
        })
        .collect();
    assert_eq!(ids.len(), 4, "message ids must be distinct: {history:?}");

    stack.assert_invariants().await;
}

#[tokio::test]
async fn an_order_of_a_customer_with_no_money_left_is_cancelled_and_its_stock_released() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("SKU-BROKE", 5).await;
    stack.deposit("bob", 1000, "EUR").await;
    // Spend everything: bob's balance is 0 afterwards.
    let first = stack
        .place_order_ok(&order_request("bob", "EUR", &[("SKU-BROKE", 1, 1000)]))
        .await;
    stack.wait_for_status(&first, "confirmed").await;
    let (_, wallet) = stack.wallet("bob").await;
    assert_eq!(int(&wallet, "balance"), 0, "{wallet}");

    let second = stack
        .place_order_ok(&order_request("bob", "EUR", &[("SKU-BROKE", 2, 10)]))
        .await;
    // Watch every status the order goes through until it settles.
    let seen = RefCell::new(Vec::<String>::new());
    let order = eventually(stack.options().wait, || async {
        let (_, order) = stack.order(&second).await;
        let status = order["status"].as_str().unwrap_or("?").to_owned();
        if seen.borrow().last() != Some(&status) {
            seen.borrow_mut().push(status.clone());
        }
        match status.as_str() {
            "cancelled" => Poll::Ready(order),
            "confirmed" | "rejected" => Poll::Failed(format!("order became {status}: {order}")),
            _ => Poll::Pending(format!("order is {status}")),
        }
    })
    .await;
    let seen = seen.into_inner();
    assert!(
        !seen.iter().any(|s| s == "confirmed"),
        "statuses seen: {seen:?}"
    );
    assert_eq!(order["reason"], "payment_failed", "{order}");
    let types: Vec<&str> = order["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["type"].as_str())
        .collect();
    assert!(types.contains(&"PaymentFailed"), "{types:?}");
    assert!(
        !types.contains(&"PaymentDone") && !types.contains(&"OrderConfirmed"),
        "{types:?}"
    );

    let (status, payment) = stack
        .get(Service::Payment, &format!("/payments/{second}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (payment["status"].as_str(), payment["reason"].as_str()),
        (Some("failed"), Some("insufficient_funds")),
        "{payment}"
    );
    // The reservation of the second order goes back: only the first order's unit is sold.
    eventually(stack.options().wait, || async {
        let (_, s) = stack.stock("SKU-BROKE").await;
        let figures = (int(&s, "available"), int(&s, "reserved"), int(&s, "sold"));
        if figures == (4, 0, 1) {
            Ok(())
        } else {
            Err(format!(
                "stock (available, reserved, sold) = {figures:?}, want (4, 0, 1)"
            ))
        }
    })
    .await;
    let (_, wallet) = stack.wallet("bob").await;
    assert_eq!(
        (int(&wallet, "balance"), int(&wallet, "captured")),
        (0, 1000),
        "{wallet}"
    );

    stack.assert_invariants().await;
}

#[tokio::test]
async fn an_idempotency_key_places_one_order_and_refuses_a_different_body() {
    let stack = Stack::start(StackOptions::default()).await;
    let body = order_request("carol", "EUR", &[("SKU-IDEM", 1, 500)]);

    let (first_status, first) = stack.place_order_with_key("key-1", &body).await;
    assert_eq!(first_status, StatusCode::ACCEPTED, "{first}");
    let (again_status, again) = stack.place_order_with_key("key-1", &body).await;
    assert_eq!(again_status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["order_id"], first["order_id"]);

    let (_, list) = stack.get(Service::Order, "/orders?limit=100").await;
    let orders = list["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 1, "one order for one key: {list}");
    assert_eq!(orders[0]["order_id"], first["order_id"]);

    let other = order_request("carol", "EUR", &[("SKU-IDEM", 2, 500)]);
    let (status, error) = stack.place_order_with_key("key-1", &other).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert!(is_error_body(&error), "{error}");
    let (_, list) = stack.get(Service::Order, "/orders?limit=100").await;
    assert_eq!(list["orders"].as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test]
async fn invalid_requests_are_refused_with_a_json_4xx_and_never_a_5xx() {
    let stack = Stack::start(StackOptions::default()).await;
    let valid = order_request("dave", "EUR", &[("SKU-V", 1, 100)]);
    let with = |pointer: &str, value: Value| {
        let mut body = valid.clone();
        *body.pointer_mut(pointer).unwrap() = value;
        body
    };
    let items = |n: usize| {
        json!(
            (0..n)
                .map(|i| json!({"sku": format!("S{i}"), "quantity": 1, "unit_price": 1}))
                .collect::<Vec<_>>()
        )
    };
    let mut wrong = Vec::new();
    let mut judge =
        |what: &str, (status, answer): (StatusCode, Value), want: Option<StatusCode>| {
            let status_ok = want.map_or(status.is_client_error(), |w| status == w);
            if !status_ok || !is_error_body(&answer) {
                wrong.push(format!("{what}: {status} {answer}"));
            }
        };

    // Each rule of the contract broken once, in an otherwise valid order.
    for (what, body) in [
        ("no items", with("/items", items(0))),
        ("101 items", with("/items", items(101))),
        ("quantity 0", with("/items/0/quantity", json!(0))),
        ("quantity 10001", with("/items/0/quantity", json!(10_001))),
        (
            "negative unit_price",
            with("/items/0/unit_price", json!(-1)),
        ),
        ("sku with a space", with("/items/0/sku", json!("bad sku"))),
        ("empty sku", with("/items/0/sku", json!(""))),
        ("65-char sku", with("/items/0/sku", json!("s".repeat(65)))),
        ("empty customer_id", with("/customer_id", json!(""))),
        (
            "65-char customer_id",
            with("/customer_id", json!("c".repeat(65))),
        ),
        ("lowercase currency", with("/currency", json!("eur"))),
        ("4-letter currency", with("/currency", json!("EURO"))),
        (
            "quantity as a string",
            with("/items/0/quantity", json!("1")),
        ),
        (
            "no items field",
            json!({"customer_id": "dave", "currency": "EUR"}),
        ),
    ] {
        judge(what, stack.place_order(&body).await, None);
    }
    // A body that parses but does not fit the order's shape is the contract's 400 too,
    // never a 422.
    for (what, body) in [
        ("quantity 1.5", with("/items/0/quantity", json!(1.5))),
        (
            "quantity as a string, exactly",
            with("/items/0/quantity", json!("1")),
        ),
        (
            "unit_price over the largest",
            with(
                "/items/0/unit_price",
                json!(events::catalog::MAX_UNIT_PRICE + 1),
            ),
        ),
    ] {
        judge(
            what,
            stack.place_order(&body).await,
            Some(StatusCode::BAD_REQUEST),
        );
    }
    let blank_key = stack.place_order_with_key(" ", &valid).await;
    judge(
        "blank idempotency key",
        blank_key,
        Some(StatusCode::BAD_REQUEST),
    );

    // Bodies that are not a JSON order at all.
    let mut big = valid.clone();
    big["padding"] = json!("x".repeat(70 * 1024));
    let json_type = "application/json";
    for (what, content_type, body, want) in [
        (
            "malformed JSON",
            json_type,
            br#"{"customer_id": "#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "not UTF-8",
            json_type,
            b"\xff\xfe{}".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "text/plain",
            "text/plain",
            valid.to_string().into_bytes(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "body over 64 KiB",
            json_type,
            big.to_string().into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ] {
        let headers = [("content-type", content_type)];
        let answer = stack
            .request(
                Service::Order,
                Method::POST,
                "/orders",
                &headers,
                Some(body),
            )
            .await;
        judge(what, answer, Some(want));
    }
    let untyped = stack
        .request(
            Service::Order,
            Method::POST,
            "/orders",
            &[],
            Some(valid.to_string().into_bytes()),
        )
        .await;
    judge(
        "no content type",
        untyped,
        Some(StatusCode::UNSUPPORTED_MEDIA_TYPE),
    );

    // Reads and commands on ids and paths that do not exist or do not decode.
    let unknown = uuid::Uuid::now_v7();
    let (order, inventory, payment) = (Service::Order, Service::Inventory, Service::Payment);
    let (missing, bad) = (StatusCode::NOT_FOUND, StatusCode::BAD_REQUEST);
    for (what, service, method, path, want) in [
        (
            "unknown order",
            order,
            Method::GET,
            format!("/orders/{unknown}"),
            missing,
        ),
        (
            "non-UUID order id",
            order,
            Method::GET,
            "/orders/x".into(),
            missing,
        ),
        (
            "cancel of an unknown order",
            order,
            Method::POST,
            format!("/orders/{unknown}/cancel"),
            missing,
        ),
        (
            "cancel of a non-UUID id",
            order,
            Method::POST,
            "/orders/x/cancel".into(),
            missing,
        ),
        (
            "unknown route",
            order,
            Method::GET,
            "/no/such/route".into(),
            missing,
        ),
        (
            "order id not UTF-8",
            order,
            Method::GET,
            "/orders/%FF".into(),
            bad,
        ),
        (
            "unknown status filter",
            order,
            Method::GET,
            "/orders?status=shipped".into(),
            bad,
        ),
        ("limit 0", order, Method::GET, "/orders?limit=0".into(), bad),
        (
            "limit not a number",
            order,
            Method::GET,
            "/orders?limit=many".into(),
            bad,
        ),
        (
            "SKU never adjusted",
            inventory,
            Method::GET,
            "/stock/NEVER".into(),
            missing,
        ),
        (
            "SKU not UTF-8",
            inventory,
            Method::GET,
            "/stock/%FF".into(),
            bad,
        ),
        (
            "customer who never deposited",
            payment,
            Method::GET,
            "/wallets/nobody".into(),
            missing,
        ),
        (
            "customer id not UTF-8",
            payment,
            Method::GET,
            "/wallets/%FF".into(),
            bad,
        ),
    ] {
        let answer = stack.request(service, method, &path, &[], None).await;
        judge(&format!("{what} ({service} {path})"), answer, Some(want));
    }
    assert!(
        wrong.is_empty(),
        "answers outside the contract:\n  {}",
        wrong.join("\n  ")
    );

    // Nothing refused left an order behind.
    let (_, list) = stack.get(Service::Order, "/orders").await;
    assert_eq!(list["orders"], json!([]), "{list}");

    // A whole number written with a zero fraction is one (JSON Schema's `integer`, which
    // generated clients follow).
    let (status, answer) = stack
        .place_order(&with("/items/0/quantity", json!(1.0)))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "quantity 1.0: {answer}");
}
