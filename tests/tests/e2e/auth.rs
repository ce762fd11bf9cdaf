//! Identity and access at the HTTP edge, as the contract's section "Identity and access
//! (HTTP)" says: every endpoint but `/healthz*` and `/metrics` needs a valid bearer JWT;
//! a customer acts only for themselves (another's order or wallet does not exist for
//! them); an operator sees everything; list pages hold at most 1,000 rows.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use platform::auth::dev::{self, TokenClaims};
use saga_tests::auth::{sign, token};
use saga_tests::{Method, Service, Stack, StackOptions, StatusCode, order_request};
use serde_json::Value;

/// `GET path` on `service` with `authorization` as given ("" = no header).
async fn get_as(
    stack: &Stack,
    service: Service,
    path: &str,
    authorization: &str,
) -> (StatusCode, Value) {
    stack
        .request(
            service,
            Method::GET,
            path,
            &[("authorization", authorization)],
            None,
        )
        .await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn claims(sub: &str, roles: &[&str]) -> TokenClaims {
    TokenClaims::new(sub, roles, Duration::from_secs(600))
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Every way a token can be wrong, each answered 401 with `WWW-Authenticate: Bearer`.
#[tokio::test]
async fn a_missing_or_invalid_token_is_answered_401_with_a_bearer_challenge() {
    let stack = Stack::start(StackOptions::default()).await;
    let good = claims("alice", &["customer"]);
    let expired = TokenClaims {
        exp: chrono::Utc::now().timestamp() - 600,
        iat: chrono::Utc::now().timestamp() - 1200,
        ..good.clone()
    };
    let wrong_issuer = TokenClaims {
        iss: "someone-else".into(),
        ..good.clone()
    };
    let wrong_audience = TokenClaims {
        aud: "another-app".into(),
        ..good.clone()
    };
    let claims_json = serde_json::to_vec(&good).unwrap();
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT","kid":"dev"}"#),
        b64(&claims_json)
    );
    // HS256 keyed with the public key: the classic algorithm confusion.
    let jwks = std::fs::read(saga_tests::auth::jwks_path()).unwrap();
    platform::crypto::install();
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some(dev::DEV_KID.into());
    let hs256_with_public_key =
        jsonwebtoken::encode(&hs_header, &good, &EncodingKey::from_secret(&jwks).unwrap()).unwrap();
    let stranger_key = dev::generate_key_pem().unwrap();
    let key_not_in_jwks = dev::sign(&stranger_key, dev::DEV_KID, &good).unwrap();
    let unknown_kid = dev::sign(&stranger_key, "elsewhere", &good).unwrap();
    let cases = [
        ("no token", String::new()),
        ("not a bearer token", "Basic YWxpY2U6c2VjcmV0".to_owned()),
        ("malformed", bearer("not.a.jwt")),
        ("expired", bearer(&sign(&expired))),
        ("wrong issuer", bearer(&sign(&wrong_issuer))),
        ("wrong audience", bearer(&sign(&wrong_audience))),
        ("alg none", bearer(&alg_none)),
        ("HS256 with the public key", bearer(&hs256_with_public_key)),
        ("key not in the JWKS", bearer(&key_not_in_jwks)),
        ("unknown kid", bearer(&unknown_kid)),
    ];
    let anonymous = platform::crypto::http_client().build().unwrap();
    for (what, authorization) in &cases {
        for (service, path) in [
            (
                Service::Order,
                "/orders/0192f7a0-0000-7000-8000-000000000000",
            ),
            (Service::Inventory, "/stock/BOOK"),
            (Service::Payment, "/wallets/alice"),
        ] {
            let mut request = anonymous.get(format!("{}{path}", stack.base_url(service)));
            if !authorization.is_empty() {
                request = request.header("authorization", authorization.as_str());
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{what}: {service} {path}"
            );
            let challenge = response
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            assert!(
                challenge.starts_with("Bearer"),
                "{what}: WWW-Authenticate is {challenge:?}"
            );
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"], "unauthorized", "{what}: {body}");
        }
    }
    // The same claims, properly signed, pass: the failures above are the token's faults.
    let (status, _) = get_as(
        &stack,
        Service::Inventory,
        "/stock/BOOK",
        &bearer(&sign(&good)),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a valid token reads stock (never adjusted: 404)"
    );
}

#[tokio::test]
async fn probes_and_metrics_need_no_token() {
    let stack = Stack::start(StackOptions::default()).await;
    for service in Service::ALL {
        for path in ["/healthz", "/metrics"] {
            let (status, _) = get_as(&stack, service, path, "").await;
            assert_eq!(status, StatusCode::OK, "{service} {path}");
        }
        let (status, _) = get_as(&stack, service, "/messages/anything", "").await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{service} /messages needs a token"
        );
    }
}

#[tokio::test]
async fn a_customer_acts_only_for_themselves() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("AUTH-BOOK", 10).await;
    stack.deposit("alice", 10_000, "EUR").await;
    stack.deposit("bob", 10_000, "EUR").await;
    let alice = bearer(&token("alice", &["customer"]));
    let bob = bearer(&token("bob", &["customer"]));
    let body = order_request("alice", "EUR", &[("AUTH-BOOK", 1, 500)]);

    // Placing for someone else: 403; for oneself: 202.
    let (status, answer) = stack
        .post_json(
            Service::Order,
            "/orders",
            &[("authorization", bob.as_str())],
            &body,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert_eq!(answer["error"], "forbidden");
    let (status, answer) = stack
        .post_json(
            Service::Order,
            "/orders",
            &[("authorization", alice.as_str())],
            &body,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let order_id = answer["order_id"].as_str().unwrap().to_owned();
    stack.wait_for_status(&order_id, "confirmed").await;

    // Alice reads her order and wallet; Bob gets 404 for both, as if they did not exist.
    let order_path = format!("/orders/{order_id}");
    let (status, order) = get_as(&stack, Service::Order, &order_path, &alice).await;
    assert_eq!(
        (status, order["customer_id"].as_str()),
        (StatusCode::OK, Some("alice"))
    );
    let (status, answer) = get_as(&stack, Service::Order, &order_path, &bob).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let (status, _) = get_as(&stack, Service::Payment, "/wallets/alice", &alice).await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer) = get_as(&stack, Service::Payment, "/wallets/alice", &bob).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    // Both read stock.
    let (status, _) = get_as(&stack, Service::Inventory, "/stock/AUTH-BOOK", &bob).await;
    assert_eq!(status, StatusCode::OK);

    // Bob cannot cancel Alice's order: 404, and it stays confirmed.
    let cancel = format!("/orders/{order_id}/cancel");
    let (status, answer) = stack
        .request(
            Service::Order,
            Method::POST,
            &cancel,
            &[("authorization", bob.as_str())],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let (_, order) = stack.order(&order_id).await;
    assert_eq!(order["status"], "confirmed");

    // Lists and internals are for operators.
    for (service, path) in [
        (Service::Order, "/orders"),
        (Service::Inventory, "/stock"),
        (Service::Inventory, "/reservations"),
        (Service::Payment, "/wallets"),
        (Service::Payment, "/payments"),
        (Service::Order, "/messages/anything"),
    ] {
        let (status, answer) = get_as(&stack, service, path, &alice).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{service} {path}: {answer}");
    }

    // Alice cancels her own order.
    let (status, answer) = stack
        .request(
            Service::Order,
            Method::POST,
            &cancel,
            &[("authorization", alice.as_str())],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    stack.wait_for_status(&order_id, "cancelled").await;
}

#[tokio::test]
async fn an_operator_sees_everything_and_pages_hold_at_most_1000_rows() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.seed_stock("AUTH-OPS", 5).await;
    stack.deposit("carol", 5_000, "EUR").await;
    let carol = bearer(&token("carol", &["customer"]));
    let (status, answer) = stack
        .post_json(
            Service::Order,
            "/orders",
            &[("authorization", carol.as_str())],
            &order_request("carol", "EUR", &[("AUTH-OPS", 1, 100)]),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let order_id = answer["order_id"].as_str().unwrap().to_owned();
    stack.wait_for_status(&order_id, "confirmed").await;

    let operator = bearer(&token("ops", &["operator"]));
    for (service, path) in [
        (Service::Order, format!("/orders/{order_id}")),
        (Service::Order, "/orders".to_owned()),
        (Service::Order, format!("/messages/{order_id}")),
        (Service::Inventory, "/stock".to_owned()),
        (Service::Inventory, "/reservations".to_owned()),
        (Service::Payment, "/wallets/carol".to_owned()),
        (Service::Payment, "/wallets".to_owned()),
        (Service::Payment, "/payments".to_owned()),
        (Service::Payment, format!("/payments/{order_id}")),
    ] {
        let (status, answer) = get_as(&stack, service, &path, &operator).await;
        assert_eq!(status, StatusCode::OK, "{service} {path}: {answer}");
    }
    // An operator places orders for anyone.
    let (status, answer) = stack
        .post_json(
            Service::Order,
            "/orders",
            &[("authorization", operator.as_str())],
            &order_request("carol", "EUR", &[("AUTH-OPS", 1, 100)]),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");

    for (service, path) in [
        (Service::Order, "/orders"),
        (Service::Inventory, "/reservations"),
        (Service::Payment, "/payments"),
    ] {
        let (status, _) = get_as(&stack, service, &format!("{path}?limit=1000"), &operator).await;
        assert_eq!(status, StatusCode::OK, "{service} {path}?limit=1000");
        let (status, answer) =
            get_as(&stack, service, &format!("{path}?limit=1001"), &operator).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{service} {path}?limit=1001: {answer}"
        );
        assert_eq!(answer["error"], "invalid_limit");
    }
}

#[tokio::test]
async fn auth_off_is_explicit_and_reported() {
    let stack = Stack::start(StackOptions::default().env("SAGA_AUTH", "off")).await;
    let (status, body) = get_as(&stack, Service::Order, "/orders", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, health) = get_as(&stack, Service::Order, "/healthz", "").await;
    assert_eq!(health["auth"], "off", "{health}");
    let log = std::fs::read_to_string(stack.log_path(Service::Order)).unwrap();
    assert!(
        log.contains("SAGA_AUTH=off"),
        "the start-up warning is logged"
    );
}
