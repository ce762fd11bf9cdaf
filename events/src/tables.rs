//! Text derived from the catalog's declaration: the tables of docs/events.md (between
//! marker comments, checked by `tests/tests/checks/catalog_artefacts.rs`) and the event list of
//! `sagactl publish --help`.

use messaging::topology::ServiceTopology;

use crate::catalog::EventType;
use crate::contract::consumers_of;

/// The comment before the generated catalog table in docs/events.md.
pub(crate) const CATALOG_TABLE_BEGIN: &str =
    "<!-- catalog table: generated from the catalog (events::tables), do not edit -->";
/// The comment after it.
pub(crate) const CATALOG_TABLE_END: &str = "<!-- end of catalog table -->";

/// The catalog table of docs/events.md: each type with its routing key, producer, the
/// consumers among `subscriptions`, and its payload fields.
pub fn catalog_table(subscriptions: &[ServiceTopology<EventType>]) -> String {
    let mut out = String::from(
        "| type | version | routing key | producer | consumers | payload fields |\n\
         |---|---|---|---|---|---|\n",
    );
    for t in EventType::ALL {
        let producer = if t.producer() == EventType::OPERATOR {
            format!("{} (operators)", t.producer())
        } else {
            t.producer().to_owned()
        };
        out.push_str(&format!(
            "| [{name}](#{anchor}) | {version} | `{key}` | {producer} | {consumers} | {fields} |\n",
            name = t.name(),
            anchor = t.name().to_ascii_lowercase(),
            version = t.version(),
            key = t.routing_key(),
            consumers = consumers_of(t, subscriptions).join(", "),
            fields = t.fields().replace('|', "\\|"),
        ));
    }
    out
}

/// `text` with the part between [`CATALOG_TABLE_BEGIN`] and [`CATALOG_TABLE_END`] replaced
/// by `table`, or `None` when the markers are missing.
pub fn with_catalog_table(text: &str, table: &str) -> Option<String> {
    let start = text.find(CATALOG_TABLE_BEGIN)? + CATALOG_TABLE_BEGIN.len();
    let end = start + text[start..].find(CATALOG_TABLE_END)?;
    Some(format!("{}\n{table}{}", &text[..start], &text[end..]))
}

/// The event list of `sagactl publish --help`: one line per type with its routing key and
/// payload fields.
pub fn publish_listing() -> String {
    EventType::ALL
        .iter()
        .map(|t| {
            format!(
                "  {:<16} {:<17} {}\n",
                t.name(),
                t.routing_key(),
                t.fields()
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_type_naming_its_consumers() {
        let subscriptions = [ServiceTopology::new("x-svc", &[EventType::OrderCreated])];
        let table = catalog_table(&subscriptions);
        assert_eq!(table.lines().count(), 2 + EventType::ALL.len());
        assert!(table.contains("| `order.created` | order-svc | x-svc |"));
        assert!(table.contains("| `stock.adjusted` | sagactl (operators) |  |"));
    }

    #[test]
    fn the_table_replaces_what_is_between_the_markers() {
        let text = format!("a\n{CATALOG_TABLE_BEGIN}\nold\n{CATALOG_TABLE_END}\nb\n");
        let new = with_catalog_table(&text, "new\n").unwrap();
        assert_eq!(
            new,
            format!("a\n{CATALOG_TABLE_BEGIN}\nnew\n{CATALOG_TABLE_END}\nb\n")
        );
        assert_eq!(with_catalog_table("no markers", "new\n"), None);
    }

    #[test]
    fn the_listing_names_every_type() {
        let listing = publish_listing();
        for t in EventType::ALL {
            assert!(listing.contains(t.name()) && listing.contains(t.routing_key()));
        }
    }
}
