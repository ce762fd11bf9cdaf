//! Each running service serves its OpenAPI 3.1 document at `/openapi.json` (with a bearer
//! token, like every API route) and the API reference page at `/api-docs` (open, assets
//! from inside the binary); the document names the contract's routes, and the bodies the
//! services really answer have exactly the fields their schemas list.

use saga_tests::{Method, Service, Stack, StackOptions, StatusCode, order_request};
use serde_json::Value;

/// The routes of the contract each service must document, besides the shared ones.
fn contract_paths(service: Service) -> &'static [&'static str] {
    match service {
        Service::Order => &["/orders", "/orders/{id}", "/orders/{id}/cancel"],
        Service::Inventory => &["/stock/{sku}"],
        Service::Payment => &["/wallets/{customer_id}"],
    }
}

const SHARED_PATHS: [&str; 5] = [
    "/healthz",
    "/healthz/live",
    "/healthz/ready",
    "/metrics",
    "/openapi.json",
];

async fn document(stack: &Stack, service: Service) -> Value {
    let (status, doc) = stack.get(service, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK, "{service}: {doc}");
    doc
}

/// The property names of the component schema `name`, following `allOf` (a flattened
/// struct) through `$ref`s.
fn properties(doc: &Value, name: &str) -> Vec<String> {
    let schema = &doc["components"]["schemas"][name];
    assert!(schema.is_object(), "no schema {name}");
    let mut names: Vec<String> = schema["properties"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        match part["$ref"].as_str() {
            Some(r) => names.extend(properties(
                doc,
                r.trim_start_matches("#/components/schemas/"),
            )),
            None => names.extend(
                part["properties"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k.clone()),
            ),
        }
    }
    names.sort();
    names
}

fn keys(body: &Value) -> Vec<String> {
    let mut keys: Vec<String> = body
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {body}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn every_service_serves_its_openapi_document_and_reference_page() {
    let stack = Stack::start(StackOptions::default()).await;
    for service in Service::ALL {
        let anonymous = [("authorization", "")];
        let (status, _) = stack
            .request(service, Method::GET, "/openapi.json", &anonymous, None)
            .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{service}: the document needs a token"
        );

        let doc = document(&stack, service).await;
        assert_eq!(doc["openapi"], "3.1.0", "{service}");
        assert_eq!(doc["info"]["title"], service.name(), "{service}");
        let paths = doc["paths"].as_object().expect("paths");
        for path in contract_paths(service).iter().chain(SHARED_PATHS.iter()) {
            assert!(
                paths.contains_key(*path),
                "{service} does not document {path}"
            );
        }

        let (status, page) = stack
            .request(service, Method::GET, "/api-docs", &anonymous, None)
            .await;
        assert_eq!(status, StatusCode::OK, "{service}: the page is open");
        let page = page.as_str().expect("an HTML page");
        assert!(page.contains("/api-docs/swagger-ui-bundle.js") && page.contains("/openapi.json"));
        for asset in ["/api-docs/swagger-ui-bundle.js", "/api-docs/swagger-ui.css"] {
            let (status, body) = stack
                .request(service, Method::GET, asset, &anonymous, None)
                .await;
            assert_eq!(status, StatusCode::OK, "{service} {asset}");
            assert!(
                body.as_str().is_some_and(|b| b.len() > 10_000),
                "{service} {asset} is served from the binary"
            );
        }
    }
}

#[tokio::test]
async fn answers_have_the_fields_their_schemas_name() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("SKU-DOC", 5).await;
    stack.deposit("doc-reader", 1_000, "EUR").await;
    let order_id = stack
        .place_order_ok(&order_request("doc-reader", "EUR", &[("SKU-DOC", 1, 100)]))
        .await;
    let order = stack.wait_for_status(&order_id, "confirmed").await;

    let orders = document(&stack, Service::Order).await;
    assert_eq!(
        keys(&order),
        properties(&orders, "OrderDetail"),
        "GET /orders/{{id}}"
    );
    let (_, list) = stack.get(Service::Order, "/orders?limit=1").await;
    assert_eq!(keys(&list), properties(&orders, "OrderList"), "GET /orders");
    assert_eq!(
        keys(&list["orders"][0]),
        properties(&orders, "Order"),
        "GET /orders item"
    );

    let inventory = document(&stack, Service::Inventory).await;
    let (_, stock) = stack.stock("SKU-DOC").await;
    assert_eq!(
        keys(&stock),
        properties(&inventory, "Stock"),
        "GET /stock/{{sku}}"
    );
    let (status, reservation) = stack
        .get(Service::Inventory, &format!("/reservations/{order_id}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{reservation}");
    assert_eq!(keys(&reservation), properties(&inventory, "Reservation"));

    let payments = document(&stack, Service::Payment).await;
    let (_, wallet) = stack.wallet("doc-reader").await;
    assert_eq!(
        keys(&wallet),
        properties(&payments, "Wallet"),
        "GET /wallets/{{customer_id}}"
    );
    let (status, payment) = stack
        .get(Service::Payment, &format!("/payments/{order_id}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{payment}");
    assert_eq!(keys(&payment), properties(&payments, "Payment"));
}

/// Where scripts/validate-deploy.sh installs schemathesis with the other validators.
fn schemathesis() -> std::path::PathBuf {
    let venv = std::env::var_os("SAGA_VALIDATE_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            std::path::Path::new(&home).join(".cache/order-saga/validate-venv")
        });
    let bin = venv.join("bin/schemathesis");
    assert!(
        bin.is_file(),
        "{} is missing: ./scripts/validate-deploy.sh installs it (scripts/test.sh runs that first)",
        bin.display()
    );
    bin
}

/// Every operation of each service's document, tried by schemathesis with every check on
/// (examples, coverage, fuzzing, the stateful phase) and an operator token: no status the
/// document does not list, no request the document allows refused, no request it forbids
/// accepted, no answer off its schema, no 5xx, no hang.
#[tokio::test]
async fn schemathesis_finds_nothing_the_documents_do_not_say() {
    let stack = Stack::start(StackOptions::default()).await;
    // Something to find, so the reads answer 200 as well as 404.
    stack.seed_stock("BOOK", 10).await;
    stack.deposit("alice", 5_000, "EUR").await;
    let tool = schemathesis();
    let dir = std::env::temp_dir().join(format!("schemathesis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = format!(
        "Authorization: Bearer {}",
        saga_tests::auth::operator_token()
    );
    let mut findings = Vec::new();
    for service in Service::ALL {
        let path = dir.join(format!("{service}.json"));
        std::fs::write(&path, document(&stack, service).await.to_string()).unwrap();
        let base = stack.base_url(service);
        let args = [
            "run",
            path.to_str().unwrap(),
            "--url",
            base.as_str(),
            "-H",
            token.as_str(),
            "--checks",
            "all",
            "--max-examples",
            "40",
            "--workers",
            "2",
            "--no-color",
        ];
        match saga_tests::failure_support::run_command(
            tool.to_str().unwrap(),
            &args,
            std::time::Duration::from_secs(300),
        )
        .await
        {
            // A reference it cannot follow is a part of the document it did not test.
            Ok(report) if report.contains("Unresolvable") => findings.push(format!(
                "{service}: parts of the document were skipped:\n{report}"
            )),
            Ok(_) => {}
            Err(e) => findings.push(format!("{service}:\n{e}")),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(findings.is_empty(), "{}", findings.join("\n\n"));
}
