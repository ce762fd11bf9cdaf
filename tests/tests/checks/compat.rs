//! The compatibility gate: this tree against the previous release (the commit named in
//! `PREVIOUS_RELEASE`), whose binaries run beside this release's during a rolling upgrade.
//! The event schemas the code derives must still be what that release's writers send and
//! its readers accept, version by version; its migrations must be unchanged, and new ones
//! must leave its binaries working unless they are the contract step of an earlier expand.
//! The comparisons are `saga_tests::compat`'s; docs/upgrading.md says what to do on a break.

use std::collections::BTreeMap;
use std::path::Path;

use events::EventType;
use events::contract::event_schema_at;
use saga_tests::compat::migrations::{CONTRACT_MARKER, check_migrations, is_migration_path};
use saga_tests::compat::schemas::{Catalog, catalog_of_files, compare_catalogs};
use saga_tests::compat::{PREVIOUS_RELEASE_FILE, PreviousRelease, repo_root};

/// Where the schemas of every published (type, version) live, in any release.
const SCHEMAS_DIR: &str = "docs/asyncapi/schemas";

fn previous_release() -> PreviousRelease {
    PreviousRelease::open(&repo_root()).unwrap_or_else(|e| panic!("{e}"))
}

/// Fails with `problems`, one a line, and `hint`.
fn assert_none(problems: &[String], what: &str, hint: &str) {
    assert!(
        problems.is_empty(),
        "{what} the previous release cannot take ({count}):\n  {list}\n\n{hint}",
        count = problems.len(),
        list = problems.join("\n  "),
    );
}

/// Every (type, version) this code reads, with the schema it derives.
fn current_catalog() -> Catalog {
    let mut catalog = Catalog::new();
    for t in EventType::ALL {
        for &version in t.versions() {
            let schema = event_schema_at(t, version)
                .unwrap_or_else(|| panic!("{} declares version {version}", t.name()));
            catalog.insert((t.name().to_owned(), version), schema);
        }
    }
    catalog
}

#[test]
fn event_schemas_are_compatible_with_the_previous_release() {
    let release = previous_release();
    let files = release
        .read_all(Some(SCHEMAS_DIR), |p| p.ends_with(".json"))
        .unwrap_or_else(|e| panic!("{e}"));
    let old = catalog_of_files(&files).unwrap_or_else(|errors| {
        panic!(
            "the previous release's {SCHEMAS_DIR}/ does not read:\n  {}",
            errors.join("\n  ")
        )
    });
    assert!(
        !old.is_empty(),
        "the previous release {} has no schema under {SCHEMAS_DIR}/",
        release.commit
    );
    let new = current_catalog();
    let compared = old.keys().filter(|k| new.contains_key(*k)).count();
    eprintln!(
        "compat: {} event types and {} versions in this tree; {} (type, version) schemas of \
         the previous release {} compared, {} newer versions not compared",
        EventType::ALL.len(),
        new.len(),
        compared,
        release.commit,
        new.keys().filter(|k| !old.contains_key(*k)).count(),
    );
    assert_none(
        &compare_catalogs(&old, &new),
        "event schema changes",
        "A version that has shipped is frozen: keep it as it is and put the change in a new \
         version of the event (its own payload struct; keep reading the old one), or make it \
         an optional field. See docs/upgrading.md, \"A new version of an event\".",
    );
}

/// Every migration of the working tree, by path relative to `root`.
fn current_migrations(root: &Path) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let dirs = std::fs::read_dir(root).unwrap_or_else(|e| panic!("read {}: {e}", root.display()));
    for dir in dirs.filter_map(Result::ok) {
        let Ok(entries) = std::fs::read_dir(dir.path().join("migrations")) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = format!(
                "{}/migrations/{}",
                dir.file_name().to_string_lossy(),
                entry.file_name().to_string_lossy()
            );
            if is_migration_path(&path) {
                let text = std::fs::read_to_string(entry.path())
                    .unwrap_or_else(|e| panic!("read {path}: {e}"));
                files.insert(path, text);
            }
        }
    }
    files
}

#[test]
fn migrations_are_compatible_with_the_previous_release() {
    let release = previous_release();
    let old = release
        .read_all(None, is_migration_path)
        .unwrap_or_else(|e| panic!("{e}"));
    let root = repo_root();
    let new = current_migrations(&root);
    assert!(
        !old.is_empty() && !new.is_empty(),
        "no migrations found (previous release: {}, this tree: {})",
        old.len(),
        new.len()
    );
    eprintln!(
        "compat: {} migrations of the previous release {} compared with this tree's, {} new \
         ones scanned",
        old.len(),
        release.commit,
        new.keys().filter(|p| !old.contains_key(*p)).count(),
    );
    assert_none(
        &check_migrations(&old, &new),
        "migration problems",
        &format!(
            "The previous release's binaries run on the migrated database during a rolling \
             upgrade. Expand now (new tables, nullable columns or columns with a default, \
             indexes) and contract in a later release, in a migration with the comment \
             `-- {CONTRACT_MARKER} <expand file>` naming the expand, once that has shipped \
             (it is in the commit of {PREVIOUS_RELEASE_FILE}). Never edit a migration that \
             has shipped. See docs/upgrading.md, \"A database change\"."
        ),
    );
}
