//! Verifying bearer tokens: the JWKS they are checked against (a file or a URL, read again
//! on an unknown `kid`), the algorithms and claims a token must have, the memory of tokens
//! that passed, and `SAGA_AUTH=off`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

use crate::config::{env_or, env_value};

use super::caller::Caller;
use super::{DEFAULT_AUDIENCE, DEFAULT_ISSUER};

/// Clock skew allowed on `exp` (the contract's upper bound).
pub(crate) const LEEWAY_SECS: u64 = 60;
/// Least time between two reads of the JWKS caused by unknown `kid`s.
pub(crate) const REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// The only signature algorithms accepted.
const ALGORITHMS: [Algorithm; 2] = [Algorithm::ES256, Algorithm::RS256];
/// Longest time a verified token is let through without checking its signature again.
const VERIFIED_FOR: Duration = Duration::from_secs(60);
/// Most tokens remembered; past it, the memory starts afresh.
const VERIFIED_MAX: usize = 10_000;

/// Whether this process runs with `SAGA_AUTH=off` (for the health body).
static AUTH_OFF: AtomicBool = AtomicBool::new(false);

/// `"off"` when checking is turned off, else `"jwt"`: what the health body reports.
pub(crate) fn mode_label() -> &'static str {
    if AUTH_OFF.load(Ordering::Relaxed) {
        "off"
    } else {
        "jwt"
    }
}

/// The claims read from a token (the registered ones are checked by `Validation`).
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    /// Seconds since the epoch (required and checked by `Validation`).
    exp: u64,
    #[serde(default)]
    roles: Vec<String>,
}

/// Where the JWKS comes from.
#[derive(Debug, Clone)]
pub(crate) enum JwksSource {
    File(PathBuf),
    Url(String),
}

impl JwksSource {
    async fn load(&self, http: &reqwest::Client) -> anyhow::Result<JwkSet> {
        let text = match self {
            JwksSource::File(path) => tokio::fs::read_to_string(path)
                .await
                .with_context(|| format!("cannot read the JWKS file {}", path.display()))?,
            JwksSource::Url(url) => http
                .get(url)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .with_context(|| format!("cannot fetch the JWKS from {url}"))?
                .text()
                .await
                .with_context(|| format!("cannot read the JWKS from {url}"))?,
        };
        serde_json::from_str(&text).context("the JWKS is not a JSON Web Key Set")
    }
}

/// Verifies bearer tokens; cheap to clone.
#[derive(Clone)]
pub(crate) struct Authenticator {
    inner: Option<Arc<Verifier>>,
}

struct Verifier {
    source: JwksSource,
    issuer: String,
    audience: String,
    http: reqwest::Client,
    keys: RwLock<JwkSet>,
    /// When the set was last read because of an unknown `kid`.
    last_refresh: Mutex<Option<Instant>>,
    verified: VerifiedTokens,
}

/// Tokens that passed every check, by the SHA-256 of their text, each with the caller it
/// proved and until when it may be let through on this memory alone.
#[derive(Default)]
struct VerifiedTokens(std::sync::Mutex<HashMap<[u8; 32], (Caller, Instant)>>);

impl VerifiedTokens {
    fn digest(token: &str) -> [u8; 32] {
        crate::crypto::sha256(token.as_bytes())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (Caller, Instant)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The caller `token` proved, if it passed before and is still within its time.
    fn get(&self, digest: &[u8; 32]) -> Option<Caller> {
        let mut tokens = self.lock();
        match tokens.get(digest) {
            Some((caller, until)) if Instant::now() < *until => Some(caller.clone()),
            Some(_) => {
                tokens.remove(digest);
                None
            }
            None => None,
        }
    }

    /// Remembers a token that passed, until `expires_at` (seconds since the epoch, its
    /// `exp` with the leeway) or [`VERIFIED_FOR`] from now, whichever comes first.
    fn insert(&self, digest: [u8; 32], caller: &Caller, expires_at: u64) {
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let left = Duration::from_secs(expires_at.saturating_sub(now_unix)).min(VERIFIED_FOR);
        if left.is_zero() {
            return;
        }
        let mut tokens = self.lock();
        if tokens.len() >= VERIFIED_MAX {
            let now = Instant::now();
            tokens.retain(|_, (_, until)| now < *until);
            if tokens.len() >= VERIFIED_MAX {
                tokens.clear();
            }
        }
        tokens.insert(digest, (caller.clone(), Instant::now() + left));
    }

    fn forget_all(&self) {
        self.lock().clear();
    }
}

/// Why a token was refused (the message a client gets with its 401).
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("a bearer token is required")]
    Missing,
    #[error("the token is not valid: {0}")]
    Invalid(String),
    #[error("the token's key is not known")]
    UnknownKey,
}

impl Authenticator {
    /// `SAGA_AUTH` (`on` unless exactly `off`), `SAGA_AUTH_JWKS_FILE` or
    /// `SAGA_AUTH_JWKS_URL`, `SAGA_AUTH_ISSUER`, `SAGA_AUTH_AUDIENCE`. The JWKS is read once
    /// here, so a wrong path or URL stops the service at start.
    pub(crate) async fn from_env() -> anyhow::Result<Self> {
        match env_or("SAGA_AUTH", "on")?.trim() {
            "off" => {
                AUTH_OFF.store(true, Ordering::Relaxed);
                tracing::warn!(
                    "SAGA_AUTH=off: HTTP requests are NOT authenticated and every caller is an \
                     operator; use this only for a throwaway local run"
                );
                return Ok(Authenticator { inner: None });
            }
            "on" => {}
            other => anyhow::bail!("SAGA_AUTH={other:?} must be on or off"),
        }
        let source = match (
            env_value("SAGA_AUTH_JWKS_FILE")?,
            env_value("SAGA_AUTH_JWKS_URL")?,
        ) {
            (Some(path), None) => JwksSource::File(PathBuf::from(path.trim())),
            (None, Some(url)) => JwksSource::Url(url.trim().to_owned()),
            (Some(_), Some(_)) => {
                anyhow::bail!("set SAGA_AUTH_JWKS_FILE or SAGA_AUTH_JWKS_URL, not both")
            }
            (None, None) => anyhow::bail!(
                "SAGA_AUTH_JWKS_FILE or SAGA_AUTH_JWKS_URL must name the keys that sign client \
                 tokens (./scripts/stack.sh up creates .stack/dev-jwks.json); SAGA_AUTH=off \
                 turns authentication off for a throwaway local run"
            ),
        };
        Self::new(
            source,
            env_or("SAGA_AUTH_ISSUER", DEFAULT_ISSUER)?,
            env_or("SAGA_AUTH_AUDIENCE", DEFAULT_AUDIENCE)?,
        )
        .await
    }

    pub(crate) async fn new(
        source: JwksSource,
        issuer: String,
        audience: String,
    ) -> anyhow::Result<Self> {
        let http = crate::crypto::http_client()
            .timeout(Duration::from_secs(5))
            .build()
            .context("building the JWKS client")?;
        let keys = source.load(&http).await?;
        Ok(Authenticator {
            inner: Some(Arc::new(Verifier {
                source,
                issuer,
                audience,
                http,
                keys: RwLock::new(keys),
                last_refresh: Mutex::new(None),
                verified: VerifiedTokens::default(),
            })),
        })
    }

    /// Whether checking is off (`SAGA_AUTH=off`).
    pub(crate) fn is_off(&self) -> bool {
        self.inner.is_none()
    }

    /// The caller a token proves.
    pub(crate) async fn verify(&self, token: &str) -> Result<Caller, TokenError> {
        let Some(verifier) = &self.inner else {
            return Ok(Caller {
                sub: "anonymous".to_owned(),
                customer: false,
                operator: true,
            });
        };
        verifier.verify(token).await
    }
}

impl Verifier {
    async fn verify(&self, token: &str) -> Result<Caller, TokenError> {
        let digest = VerifiedTokens::digest(token);
        if let Some(caller) = self.verified.get(&digest) {
            return Ok(caller);
        }
        let invalid = |e: jsonwebtoken::errors::Error| TokenError::Invalid(e.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(TokenError::Invalid(format!(
                "algorithm {:?} is not accepted (ES256 or RS256 only)",
                header.alg
            )));
        }
        let key = match self.key_for(header.kid.as_deref()).await {
            Some(key) => key,
            None if self.refresh().await => self
                .key_for(header.kid.as_deref())
                .await
                .ok_or(TokenError::UnknownKey)?,
            None => return Err(TokenError::UnknownKey),
        };
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = LEEWAY_SECS;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(invalid)?
            .claims;
        let caller = Caller {
            customer: claims.roles.iter().any(|r| r == "customer"),
            operator: claims.roles.iter().any(|r| r == "operator"),
            sub: claims.sub,
        };
        self.verified
            .insert(digest, &caller, claims.exp.saturating_add(LEEWAY_SECS));
        Ok(caller)
    }

    /// The key `kid` names; without a `kid`, the only key of a one-key set.
    async fn key_for(&self, kid: Option<&str>) -> Option<DecodingKey> {
        let keys = self.keys.read().await;
        let jwk = match kid {
            Some(kid) => keys.find(kid)?,
            None if keys.keys.len() == 1 => &keys.keys[0],
            None => return None,
        };
        DecodingKey::from_jwk(jwk).ok()
    }

    /// Reads the set again unless that happened less than [`REFRESH_MIN_INTERVAL`] ago;
    /// whether it did.
    async fn refresh(&self) -> bool {
        let mut last = self.last_refresh.lock().await;
        if last.is_some_and(|at| at.elapsed() < REFRESH_MIN_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        match self.source.load(&self.http).await {
            Ok(keys) => {
                *self.keys.write().await = keys;
                // A key may have gone from the set: every token is checked again.
                self.verified.forget_all();
                true
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot refresh the JWKS; keeping the keys known");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::dev::*;

    async fn authenticator(dir: &std::path::Path) -> (Authenticator, String) {
        let (key, jwks) = ensure_key_pair(dir).unwrap();
        let auth = Authenticator::new(
            JwksSource::File(jwks),
            DEFAULT_ISSUER.into(),
            DEFAULT_AUDIENCE.into(),
        )
        .await
        .unwrap();
        (auth, std::fs::read_to_string(key).unwrap())
    }

    #[tokio::test]
    async fn a_token_signed_with_the_development_key_names_its_caller() {
        let dir = std::env::temp_dir().join(format!("saga-auth-{}", uuid::Uuid::new_v4()));
        let (auth, pem) = authenticator(&dir).await;
        let claims = TokenClaims::new("alice", &["customer"], Duration::from_secs(60));
        let token = sign(&pem, DEV_KID, &claims).unwrap();
        let caller = auth.verify(&token).await.unwrap();
        assert_eq!(
            caller,
            Caller {
                sub: "alice".into(),
                customer: true,
                operator: false
            }
        );
        assert!(caller.may_act_for("alice") && !caller.may_act_for("bob"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_verified_token_is_let_through_again_until_it_expires_and_no_other_is() {
        let dir = std::env::temp_dir().join(format!("saga-auth-{}", uuid::Uuid::new_v4()));
        let (auth, pem) = authenticator(&dir).await;
        let verifier = auth.inner.clone().unwrap();
        let claims = TokenClaims::new("alice", &["customer"], Duration::from_secs(60));
        let token = sign(&pem, DEV_KID, &claims).unwrap();
        let first = auth.verify(&token).await.unwrap();
        let digest = VerifiedTokens::digest(&token);
        assert_eq!(verifier.verified.get(&digest), Some(first.clone()));
        assert_eq!(auth.verify(&token).await.unwrap(), first);
        // The same claims under another signature are checked, and refused.
        let (head, _) = token.rsplit_once('.').unwrap();
        let forged = format!("{head}.{}", "A".repeat(86));
        assert!(matches!(
            auth.verify(&forged).await,
            Err(TokenError::Invalid(_))
        ));
        // A token remembered past its time is checked again (and so refused once expired).
        verifier.verified.lock().get_mut(&digest).unwrap().1 = Instant::now();
        assert_eq!(verifier.verified.get(&digest), None);
        // One whose `exp` has passed is not remembered at all.
        verifier.verified.insert(digest, &first, 0);
        assert_eq!(verifier.verified.get(&digest), None);
        // A new read of the key set forgets every token.
        auth.verify(&token).await.unwrap();
        verifier.verified.forget_all();
        assert_eq!(verifier.verified.get(&digest), None);
        let _ = std::fs::remove_dir_all(dir);
    }
}
