//! Who a command line (`sagactl`, `saga-bench`) is at the services' HTTP edge: a bearer
//! token given as it is (`--token`, from a real identity provider), or one it signs itself
//! with the development key. In a checkout the key is found without configuration: the
//! nearest `.stack/dev-signing-key.pem` above the current directory, else the one of the
//! checkout it was built from (what `./scripts/stack.sh up` creates).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use platform::auth::dev::{self, TokenClaims};

/// How long a token signed for the command line's own requests stays valid: longer than
/// any command it runs (saga-bench's `load`, `bench`), short enough not to matter if it
/// leaks.
const OWN_TOKEN_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Identity")]
pub struct Identity {
    /// A bearer token to send as it is (instead of signing one).
    #[arg(long, global = true, env = "SAGA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The private key (PKCS#8 PEM, EC P-256) to sign tokens with
    /// [default: .stack/dev-signing-key.pem of the checkout].
    #[arg(long, global = true, env = "SAGA_AUTH_SIGNING_KEY", value_name = "PEM")]
    pub signing_key: Option<PathBuf>,
    /// The `sub` of the tokens it signs for its requests, and the operator named (header
    /// `x-saga-operator`) on the events it publishes, for the services' audit logs.
    #[arg(
        long = "as",
        global = true,
        env = "SAGA_AUTH_SUB",
        default_value = "operator"
    )]
    pub sub: String,
    /// The roles of the tokens it signs (customer, operator).
    #[arg(
        long = "roles",
        global = true,
        env = "SAGA_AUTH_ROLES",
        value_delimiter = ',',
        default_value = "operator"
    )]
    pub roles: Vec<String>,
    /// `iss` of the tokens it signs.
    #[arg(long, global = true, env = "SAGA_AUTH_ISSUER", default_value = platform::auth::DEFAULT_ISSUER)]
    pub issuer: String,
    /// `aud` of the tokens it signs.
    #[arg(long, global = true, env = "SAGA_AUTH_AUDIENCE", default_value = platform::auth::DEFAULT_AUDIENCE)]
    pub audience: String,
}

impl Identity {
    /// The `Authorization` value for the command line's own requests, if it has a token or
    /// a key.
    pub fn authorization(&self) -> anyhow::Result<Option<String>> {
        if let Some(token) = &self.token {
            return Ok(Some(format!("Bearer {}", token.trim())));
        }
        let Some(key) = self.key_path() else {
            return Ok(None);
        };
        let roles: Vec<&str> = self.roles.iter().map(String::as_str).collect();
        let token = self.sign(&key, &self.sub, &roles, OWN_TOKEN_TTL)?;
        Ok(Some(format!("Bearer {token}")))
    }

    /// A token for `sub` with `roles`, signed with the configured or found key.
    pub fn sign(
        &self,
        key: &Path,
        sub: &str,
        roles: &[&str],
        ttl: Duration,
    ) -> anyhow::Result<String> {
        let pem = std::fs::read_to_string(key)
            .with_context(|| format!("cannot read the signing key {}", key.display()))?;
        let mut claims = TokenClaims::new(sub, roles, ttl);
        claims.iss = self.issuer.clone();
        claims.aud = self.audience.clone();
        dev::sign(&pem, dev::DEV_KID, &claims)
    }

    /// `--signing-key`, else the development key of the checkout, if there is one.
    pub fn key_path(&self) -> Option<PathBuf> {
        if let Some(path) = &self.signing_key {
            return Some(path.clone());
        }
        let from_cwd = std::env::current_dir().ok().and_then(|dir| {
            dir.ancestors()
                .map(|d| d.join(".stack").join(dev::SIGNING_KEY_FILE))
                .find(|p| p.is_file())
        });
        // The checkout this was built from (for a run from another directory).
        let built_from = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(".stack")
            .join(dev::SIGNING_KEY_FILE);
        from_cwd.or_else(|| built_from.is_file().then_some(built_from))
    }
}
