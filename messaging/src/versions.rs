//! Which version of each event type this process writes. By default the newest its catalog
//! declares; during an upgrade, the one `SAGA_EMIT_VERSIONS` names (`OrderCreated=1,
//! StockReserved=1`), so that a fleet moves in order: consumers that read the new version
//! first (expand), then producers switched to write it, then the old version dropped
//! (contract). Set once at start, before anything is emitted.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::event::EventKind;

/// Event type name → the version written, for the types configured to write an older one.
static EMITTED: OnceLock<BTreeMap<&'static str, u32>> = OnceLock::new();

/// The variable that names the versions to write.
pub const EMIT_VERSIONS_VAR: &str = "SAGA_EMIT_VERSIONS";

/// Parses `spec` (`Type=version,…`; empty for none) against the catalog of `K`: every
/// type must exist and its version be one the catalog can write.
pub fn parse<K: EventKind>(spec: &str) -> Result<BTreeMap<&'static str, u32>, String> {
    let mut versions = BTreeMap::new();
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, version) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not Type=version (e.g. OrderCreated=1)"))?;
        let kind = K::from_name(name.trim())
            .ok_or_else(|| format!("{name:?} is not an event type of the catalog"))?;
        let version: u32 = version
            .trim()
            .parse()
            .map_err(|_| format!("{item:?}: the version must be a positive integer"))?;
        if !kind.reads(version) {
            return Err(format!(
                "{kind} has no version {version} (this code writes up to {})",
                kind.version()
            ));
        }
        versions.insert(kind.name(), version);
    }
    Ok(versions)
}

/// Reads [`EMIT_VERSIONS_VAR`] and sets what this process writes; an error names the bad
/// part. Without the variable, every type is written at its newest version.
pub fn configure_from_env<K: EventKind>() -> Result<(), String> {
    let spec = std::env::var(EMIT_VERSIONS_VAR).unwrap_or_default();
    let versions = parse::<K>(&spec).map_err(|e| format!("{EMIT_VERSIONS_VAR}: {e}"))?;
    if !versions.is_empty() {
        tracing::info!(?versions, "writing older event versions, as configured");
    }
    // Set once: a second call (tests starting several services in one process) keeps the
    // first, which read the same variable.
    let _ = EMITTED.set(versions);
    Ok(())
}

/// The version to write `kind` at, when it is not the newest.
pub(crate) fn emitted<K: EventKind>(kind: K) -> Option<u32> {
    EMITTED
        .get()?
        .get(kind.name())
        .copied()
        .filter(|v| *v != kind.version())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_catalog::Kind;

    #[test]
    fn a_spec_names_known_types_at_versions_they_have() {
        assert_eq!(parse::<Kind>("").unwrap(), BTreeMap::new());
        assert_eq!(
            parse::<Kind>(" Ping=1 , Pong=1").unwrap(),
            BTreeMap::from([("Ping", 1), ("Pong", 1)])
        );
        for bad in ["Ping", "Nope=1", "Ping=x", "Ping=2", "Ping=-1"] {
            assert!(parse::<Kind>(bad).is_err(), "{bad}");
        }
    }
}
