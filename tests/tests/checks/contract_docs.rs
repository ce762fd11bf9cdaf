//! docs/asyncapi/ is checked against the code: `asyncapi.json` and one JSON Schema per event
//! type under `schemas/` (`<Type>.json` for the newest version, `<Type>.v<N>.json` for each
//! older version still read) are rendered here from `events::contract` (with the services' own
//! subscriptions, `sagactl::subscriptions`) and must be byte for byte what is committed,
//! with no stale schema left beside them. Run with `UPDATE_DOCS=1` to rewrite them after
//! changing the envelope, a payload, a routing key or what a service consumes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use events::EventType;
use events::contract::{asyncapi, event_schema, event_schema_at};
use sagactl::subscriptions::saga_services;

const REGENERATE: &str = "UPDATE_DOCS=1 cargo test -p saga-tests --test checks contract_docs";

fn docs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/asyncapi")
}

/// Pretty JSON (two-space indent) with a trailing newline.
fn render(value: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("JSON values always serialise");
    text.push('\n');
    text
}

/// Every generated file, by its path relative to docs/asyncapi/.
fn generated() -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    files.insert(
        "asyncapi.json".to_owned(),
        render(&asyncapi(&saga_services())),
    );
    for t in EventType::ALL {
        files.insert(
            format!("schemas/{}.json", t.name()),
            render(&event_schema(t)),
        );
        for &version in t.versions().iter().filter(|&&v| v != t.version()) {
            let schema = event_schema_at(t, version).expect("a declared version has a schema");
            files.insert(
                format!("schemas/{}.v{version}.json", t.name()),
                render(&schema),
            );
        }
    }
    files
}

/// The JSON files under schemas/ that nothing generates any more.
fn stale(dir: &Path, files: &BTreeMap<String, String>) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.join("schemas")) else {
        return Vec::new();
    };
    let mut stale: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| format!("schemas/{}", e.file_name().to_string_lossy()))
        .filter(|name| name.ends_with(".json") && !files.contains_key(name))
        .collect();
    stale.sort();
    stale
}

#[test]
fn asyncapi_docs_match_the_code() {
    let dir = docs_dir();
    let files = generated();
    let stale = stale(&dir, &files);

    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::create_dir_all(dir.join("schemas")).expect("create docs/asyncapi/schemas");
        for (name, text) in &files {
            let path = dir.join(name);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                std::fs::write(&path, text)
                    .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            }
        }
        for name in &stale {
            let path = dir.join(name);
            std::fs::remove_file(&path)
                .unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
        }
        return;
    }

    let mut problems: Vec<String> = files
        .iter()
        .filter_map(
            |(name, text)| match std::fs::read_to_string(dir.join(name)) {
                Ok(committed) if committed == *text => None,
                Ok(_) => Some(format!("docs/asyncapi/{name} differs from the code")),
                Err(e) => Some(format!("docs/asyncapi/{name} cannot be read: {e}")),
            },
        )
        .collect();
    problems.extend(
        stale
            .iter()
            .map(|name| format!("docs/asyncapi/{name} is not generated any more")),
    );
    assert!(
        problems.is_empty(),
        "docs/asyncapi/ is out of date with the event contract in the code:\n  {}\n\
         Regenerate it with `{REGENERATE}` and commit the result.",
        problems.join("\n  ")
    );
}
