//! `sagactl token` and `sagactl dev-keys`: a token signed with the development key, for
//! curl, and the development key pair itself.

use std::time::Duration;

use platform::auth::dev;
use sagactl::identity::Identity;

use crate::cli::{DevKeysArgs, TokenArgs};

/// `sagactl token`.
pub(super) fn print_token(identity: &Identity, args: &TokenArgs) -> anyhow::Result<()> {
    let key = identity.key_path().ok_or_else(|| {
        anyhow::anyhow!(
            "no signing key: run ./scripts/stack.sh up (it creates .stack/dev-signing-key.pem) \
             or pass --signing-key"
        )
    })?;
    let sub = args.sub.as_deref().unwrap_or(&identity.sub);
    let roles: Vec<&str> = if args.role.is_empty() {
        identity.roles.iter().map(String::as_str).collect()
    } else {
        args.role.iter().map(String::as_str).collect()
    };
    for role in &roles {
        anyhow::ensure!(
            matches!(*role, "customer" | "operator"),
            "--role {role:?}: the roles are customer and operator"
        );
    }
    println!(
        "{}",
        identity.sign(&key, sub, &roles, Duration::from_secs(args.ttl))?
    );
    Ok(())
}

/// `sagactl dev-keys`.
pub(super) fn create_dev_keys(args: &DevKeysArgs) -> anyhow::Result<()> {
    let (key, jwks) = dev::ensure_key_pair(&args.dir)?;
    println!("{}\n{}", key.display(), jwks.display());
    Ok(())
}
