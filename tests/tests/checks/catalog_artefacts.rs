//! What derives from the catalog's declaration is checked against it: the catalog table of
//! docs/events.md (generated between marker comments; `UPDATE_DOCS=1` rewrites it), the
//! field tables of docs/events.md (one row per payload field of the JSON Schema of every
//! version still read), and
//! `sagactl publish --help` and its shell completions (every type with its routing key and
//! fields). The AsyncAPI document and JSON Schemas are checked by `contract_docs.rs`.

use std::process::Command;

use events::EventType;
use events::contract::event_schema_at;
use events::tables::{catalog_table, publish_listing, with_catalog_table};
use saga_tests::stack::binary_path;
use sagactl::subscriptions::saga_services;

use crate::doc_files::{keep, read};

const EVENTS_MD: &str = "docs/events.md";

/// What to do when `sagactl`'s output lacks a type: the check runs the binary.
const REBUILD: &str = "these checks run target/debug/sagactl: after changing the catalog, \
                       rebuild it (`cargo build -p sagactl`, or ./scripts/checks.sh)";

#[test]
fn the_catalog_table_of_the_docs_is_the_declarations() {
    let committed = read(EVENTS_MD);
    let table = catalog_table(&saga_services());
    let generated = with_catalog_table(&committed, &table)
        .expect("docs/events.md has lost the markers around its catalog table");
    keep(EVENTS_MD, &committed, &generated, "catalog_artefacts");
}

/// The payload fields a section of docs/events.md lists in its table, top-level ones only
/// (`items`, not `items[].sku`): `### <type>` for the newest version, `#### <type> version
/// <n>` for an older one.
fn documented_fields(doc: &str, t: EventType, version: u32) -> Vec<String> {
    let heading = if version == t.version() {
        format!("\n### {}\n", t.name())
    } else {
        format!("\n#### {} version {version}\n", t.name())
    };
    let start = doc
        .find(&heading)
        .unwrap_or_else(|| panic!("docs/events.md has no section {heading:?}"));
    let section = &doc[start + heading.len()..];
    let section = &section[..section.find("\n#").unwrap_or(section.len())];
    let mut fields: Vec<String> = section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .filter(|name| !name.contains('.') && !name.contains('['))
        .map(str::to_owned)
        .collect();
    fields.sort();
    fields
}

#[test]
fn every_field_table_of_the_docs_lists_exactly_the_payloads_fields() {
    let doc = read(EVENTS_MD);
    for t in EventType::ALL {
        for &version in t.versions() {
            let schema = event_schema_at(t, version).expect("a declared version has a schema");
            let payload = schema["properties"]["payload"]["$ref"]
                .as_str()
                .and_then(|r| r.strip_prefix("#/$defs/"))
                .unwrap_or_else(|| panic!("{t} v{version}: the payload is not a $ref"));
            let mut fields: Vec<String> = schema["$defs"][payload]["properties"]
                .as_object()
                .unwrap_or_else(|| panic!("{t} v{version} has no payload properties"))
                .keys()
                .cloned()
                .collect();
            fields.sort();
            assert_eq!(
                documented_fields(&doc, t, version),
                fields,
                "docs/events.md's table of {t} version {version} and its payload disagree"
            );
        }
    }
}

fn sagactl(args: &[&str]) -> String {
    let out = Command::new(binary_path("sagactl"))
        .args(args)
        .output()
        .expect("running sagactl");
    assert!(out.status.success(), "sagactl {args:?} failed: {out:?}");
    String::from_utf8(out.stdout).expect("sagactl writes UTF-8")
}

#[test]
fn publish_help_lists_every_type_with_its_routing_key_and_fields() {
    let help = sagactl(&["publish", "--help"]);
    let lines: Vec<&str> = help.lines().map(str::trim_end).collect();
    for expected in publish_listing().lines() {
        assert!(
            lines.contains(&expected.trim_end()),
            "`sagactl publish --help` lacks the line {expected:?} ({REBUILD}):\n{help}"
        );
    }
    for t in EventType::ALL {
        assert!(
            publish_listing().contains(&format!(
                "{:<16} {:<17} {}",
                t.name(),
                t.routing_key(),
                t.fields()
            )),
            "{t} is missing from the listing"
        );
    }
}

#[test]
fn completions_offer_every_event_type_to_publish() {
    let script = sagactl(&["completions", "bash"]);
    for t in EventType::ALL {
        assert!(
            script.contains(t.name()),
            "the bash completion script does not offer {t} ({REBUILD})"
        );
    }
}
