//! Tokens for the tests: the harness signs with the checkout's development key
//! (`.stack/dev-signing-key.pem`, created here when missing, exactly as
//! `./scripts/stack.sh up` does), so `sagactl` run from the tests finds the same key
//! without being told, and every service is configured with its JWKS.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use platform::auth::dev::{self, TokenClaims};

/// How long the harness's tokens stay valid: longer than any test.
const TOKEN_TTL: Duration = Duration::from_secs(6 * 3600);

/// The development key pair: (private key PEM path, JWKS path).
pub fn dev_key_pair() -> &'static (PathBuf, PathBuf) {
    static PAIR: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    PAIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.stack");
        dev::ensure_key_pair(&dir)
            .unwrap_or_else(|e| panic!("cannot create the development key pair: {e:#}"))
    })
}

/// The JWKS file every service of a test stack reads.
pub fn jwks_path() -> &'static PathBuf {
    &dev_key_pair().1
}

/// A token signed with the development key for `claims`.
pub fn sign(claims: &TokenClaims) -> String {
    let pem = std::fs::read_to_string(&dev_key_pair().0).expect("the development key");
    dev::sign(&pem, dev::DEV_KID, claims).expect("signing a token")
}

/// A valid token for `sub` with `roles`.
pub fn token(sub: &str, roles: &[&str]) -> String {
    sign(&TokenClaims::new(sub, roles, TOKEN_TTL))
}

/// The operator token the harness's HTTP helpers send unless told otherwise.
pub fn operator_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| token("test-operator", &["operator"]))
}

/// An HTTP client whose requests carry the operator token.
pub fn operator_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", operator_token()))
        .expect("a token is a valid header value");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    platform::crypto::http_client()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .default_headers(headers)
        .build()
        .expect("building an HTTP client")
}
