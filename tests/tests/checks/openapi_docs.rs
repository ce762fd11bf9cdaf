//! docs/openapi/ is checked against the code: each service's OpenAPI document is rendered
//! here from its `openapi::document()` (the `#[utoipa::path]` of its handlers and the
//! shared routes of `platform::openapi`) and must be byte for byte what is committed as
//! `docs/openapi/<service>.json`. Run with `UPDATE_DOCS=1` to rewrite them after changing
//! a route, a body or an answer.

use std::path::PathBuf;

const REGENERATE: &str = "UPDATE_DOCS=1 cargo test -p saga-tests --test checks openapi_docs";

fn docs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi")
}

/// Every generated file, by its name under docs/openapi/.
fn generated() -> Vec<(String, String)> {
    [
        (order_svc::SERVICE, order_svc::openapi::document()),
        (inventory_svc::SERVICE, inventory_svc::openapi::document()),
        (payment_svc::SERVICE, payment_svc::openapi::document()),
    ]
    .into_iter()
    .map(|(service, doc)| {
        let text = platform::openapi::render(&doc).expect("an OpenAPI document serialises");
        (format!("{service}.json"), text)
    })
    .collect()
}

#[test]
fn openapi_docs_match_the_code() {
    let dir = docs_dir();
    let files = generated();

    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::create_dir_all(&dir).expect("create docs/openapi");
        for (name, text) in &files {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
        return;
    }

    let problems: Vec<String> = files
        .iter()
        .filter_map(
            |(name, text)| match std::fs::read_to_string(dir.join(name)) {
                Ok(committed) if committed == *text => None,
                Ok(_) => Some(format!("docs/openapi/{name} differs from the code")),
                Err(e) => Some(format!("docs/openapi/{name} cannot be read: {e}")),
            },
        )
        .collect();
    assert!(
        problems.is_empty(),
        "docs/openapi/ is out of date with the services' HTTP APIs:\n  {}\n\
         Regenerate it with `{REGENERATE}` and commit the result.",
        problems.join("\n  ")
    );
}

/// Each document is OpenAPI 3.1, names every route of the contract, and requires the
/// bearer token everywhere but on the probes and `/metrics`.
#[test]
fn documents_name_the_contract_routes_and_their_security() {
    let expected: [(&str, &[&str]); 3] = [
        (
            "order-svc.json",
            &["/orders", "/orders/{id}", "/orders/{id}/cancel"],
        ),
        (
            "inventory-svc.json",
            &[
                "/stock",
                "/stock/{sku}",
                "/reservations",
                "/reservations/{order_id}",
            ],
        ),
        (
            "payment-svc.json",
            &[
                "/wallets",
                "/wallets/{customer_id}",
                "/payments",
                "/payments/{order_id}",
            ],
        ),
    ];
    let files = generated();
    for (name, own) in expected {
        let text = &files.iter().find(|(n, _)| n == name).expect("generated").1;
        let doc: serde_json::Value = serde_json::from_str(text).expect("valid JSON");
        assert_eq!(doc["openapi"], "3.1.0", "{name}");
        assert_eq!(
            doc["security"],
            serde_json::json!([{"bearer": []}]),
            "{name}"
        );
        let paths = doc["paths"].as_object().expect("paths");
        let shared = [
            "/healthz",
            "/healthz/live",
            "/healthz/ready",
            "/metrics",
            "/openapi.json",
            "/messages/{correlation_id}",
        ];
        for path in own.iter().chain(shared.iter()) {
            assert!(paths.contains_key(*path), "{name} lacks {path}");
        }
        for (path, item) in paths {
            let open = platform::auth::is_open(path);
            for (method, op) in item.as_object().expect("path item") {
                let security = &op["security"];
                assert_eq!(
                    security == &serde_json::json!([]),
                    open,
                    "{name}: {method} {path} security {security}"
                );
            }
        }
    }
}
