//! The development key pair (`./scripts/stack.sh up`, the tests) and token signing for
//! clients that hold a private key (`sagactl`, the tests).

use std::path::{Path, PathBuf};

use anyhow::Context;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// The `kid` of the development key.
pub const DEV_KID: &str = "dev";
/// File names inside `.stack/`.
pub const SIGNING_KEY_FILE: &str = "dev-signing-key.pem";
pub(crate) const JWKS_FILE: &str = "dev-jwks.json";

/// A new EC P-256 private key as PKCS#8 PEM.
pub fn generate_key_pem() -> anyhow::Result<String> {
    let pkcs8 = crate::crypto::generate_p256_pkcs8()
        .map_err(|_| anyhow::anyhow!("cannot generate an EC P-256 key"))?;
    Ok(pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8)))
}

/// The public JWKS (one ES256 key with `kid`) of a private key in PEM.
pub(crate) fn jwks_for(private_pem: &str, kid: &str) -> anyhow::Result<JwkSet> {
    crate::crypto::install();
    let key = EncodingKey::from_ec_pem(private_pem.as_bytes())
        .context("the signing key is not an EC private key in PKCS#8 PEM")?;
    let mut jwk =
        Jwk::from_encoding_key(&key, Algorithm::ES256).context("cannot derive the public key")?;
    jwk.common.key_id = Some(kid.to_owned());
    jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
    Ok(JwkSet { keys: vec![jwk] })
}

/// Creates `dir/dev-signing-key.pem` and `dir/dev-jwks.json` unless the key exists,
/// and (re)writes the JWKS from the key. Safe when several processes race: the key is
/// created with a hard link, which fails when another process got there first.
/// Returns the two paths.
pub fn ensure_key_pair(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key_path = dir.join(SIGNING_KEY_FILE);
    if !key_path.exists() {
        let tmp = dir.join(format!(".{SIGNING_KEY_FILE}.{}", std::process::id()));
        write_private(&tmp, &generate_key_pem()?)?;
        let linked = std::fs::hard_link(&tmp, &key_path);
        if let Err(e) = std::fs::remove_file(&tmp) {
            tracing::warn!(path = %tmp.display(), error = %e, "could not remove a temporary key file");
        }
        if let Err(e) = linked
            && e.kind() != std::io::ErrorKind::AlreadyExists
        {
            return Err(e).with_context(|| format!("cannot create {}", key_path.display()));
        }
    }
    let pem = std::fs::read_to_string(&key_path)
        .with_context(|| format!("cannot read {}", key_path.display()))?;
    let jwks_path = dir.join(JWKS_FILE);
    let jwks = serde_json::to_string_pretty(&jwks_for(&pem, DEV_KID)?)?;
    if std::fs::read_to_string(&jwks_path).ok().as_deref() != Some(jwks.as_str()) {
        let tmp = dir.join(format!(".{JWKS_FILE}.{}", std::process::id()));
        std::fs::write(&tmp, &jwks).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &jwks_path)
            .with_context(|| format!("cannot write {}", jwks_path.display()))?;
    }
    Ok((key_path, jwks_path))
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// What a signed token says.
#[derive(Debug, Clone, Serialize)]
pub struct TokenClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub roles: Vec<String>,
    pub iat: i64,
    pub exp: i64,
}

impl TokenClaims {
    /// Claims for `sub` with `roles`, valid from now for `ttl`, for the defaults'
    /// issuer and audience.
    pub fn new(sub: &str, roles: &[&str], ttl: std::time::Duration) -> Self {
        let now = chrono::Utc::now().timestamp();
        TokenClaims {
            iss: super::DEFAULT_ISSUER.to_owned(),
            aud: super::DEFAULT_AUDIENCE.to_owned(),
            sub: sub.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            iat: now,
            exp: now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
        }
    }
}

/// `claims` signed ES256 with the PKCS#8 PEM `private_pem`, its header naming `kid`.
pub fn sign(private_pem: &str, kid: &str, claims: &impl Serialize) -> anyhow::Result<String> {
    crate::crypto::install();
    let key = EncodingKey::from_ec_pem(private_pem.as_bytes())
        .context("the signing key is not an EC private key in PKCS#8 PEM")?;
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).context("cannot sign the token")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_process_keeps_the_key_the_first_created() {
        let dir = std::env::temp_dir().join(format!("saga-auth-{}", uuid::Uuid::new_v4()));
        let (key, _) = ensure_key_pair(&dir).unwrap();
        let first = std::fs::read_to_string(&key).unwrap();
        ensure_key_pair(&dir).unwrap();
        assert_eq!(std::fs::read_to_string(&key).unwrap(), first);
        let _ = std::fs::remove_dir_all(dir);
    }
}
