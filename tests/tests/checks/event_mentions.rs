//! Hand-written passages of the docs (and of `sagactl`'s help and the OpenAPI documents'
//! descriptions) that speak of every event of a kind (every operator event, every event a
//! producer publishes, every operator event a service consumes) must name each: a new
//! event of that kind fails here, naming the file, the passage and the event, until the
//! passage says what the new event does there. What can be generated is generated instead
//! (`routing_docs`, `catalog_artefacts`, `state_machine_docs`).

use events::EventType;
use sagactl::subscriptions::saga_services;

use crate::doc_files::read;

/// Which events a passage must name.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Every event operators publish (producer `sagactl`): no order, no natural key.
    Operator,
    /// Every event this producer publishes.
    ProducedBy(&'static str),
    /// Every operator event this service consumes.
    OperatorConsumedBy(&'static str),
}

impl Kind {
    fn events(self) -> Vec<EventType> {
        let services = saga_services();
        EventType::ALL
            .into_iter()
            .filter(|t| match self {
                Kind::Operator => t.producer() == EventType::OPERATOR,
                Kind::ProducedBy(p) => t.producer() == p,
                Kind::OperatorConsumedBy(service) => {
                    t.producer() == EventType::OPERATOR
                        && services
                            .iter()
                            .any(|s| s.service == service && s.consumes.contains(t))
                }
            })
            .collect()
    }
}

/// (file, the passage's first words, what it must name). A passage runs from the line
/// holding its first words to the end of its paragraph, list item, table row or doc
/// comment.
const PASSAGES: [(&str, &str, Kind); 15] = [
    (
        "docs/architecture.md",
        "take no advisory lock",
        Kind::Operator,
    ),
    (
        "docs/architecture.md",
        "**Operator events are deduplicated",
        Kind::Operator,
    ),
    (
        "docs/configuration.md",
        "| `SAGA_INBOX_RETENTION_SECS` |",
        Kind::Operator,
    ),
    (
        "docs/configuration.md",
        "| `SAGA_PRODUCER_USERS_ORDER_SVC` |",
        Kind::ProducedBy("order-svc"),
    ),
    (
        "docs/configuration.md",
        "| `SAGA_PRODUCER_USERS_SAGACTL` |",
        Kind::Operator,
    ),
    ("docs/events.md", "| `correlation_id` |", Kind::Operator),
    (
        "docs/http.md",
        "`adjusted` is the sum of every",
        Kind::OperatorConsumedBy("inventory-svc"),
    ),
    // `sagactl verify --help`: the totals its `stock_matches_published` and
    // `wallet_matches_published` compare with.
    (
        "sagactl/src/cli/mod.rs",
        "/// What you know was published as StockAdjusted",
        Kind::OperatorConsumedBy("inventory-svc"),
    ),
    (
        "sagactl/src/cli/mod.rs",
        "/// What you know was published as FundsDeposited",
        Kind::OperatorConsumedBy("payment-svc"),
    ),
    // The OpenAPI documents (docs/openapi/): what moves stock and money, and what the
    // running totals add up.
    (
        "inventory-svc/src/openapi.rs",
        "Stock changes only through events",
        Kind::OperatorConsumedBy("inventory-svc"),
    ),
    (
        "inventory-svc/src/schema.rs",
        "/// The sum of every StockAdjusted",
        Kind::OperatorConsumedBy("inventory-svc"),
    ),
    (
        "payment-svc/src/openapi.rs",
        "Money moves only through events",
        Kind::OperatorConsumedBy("payment-svc"),
    ),
    (
        "payment-svc/src/schema.rs",
        "/// The sum of every FundsDeposited",
        Kind::OperatorConsumedBy("payment-svc"),
    ),
    (
        "docs/state-machines.md",
        "States: `none` (never heard of the order)",
        Kind::OperatorConsumedBy("inventory-svc"),
    ),
    (
        "docs/state-machines.md",
        "States: `none`, `captured`",
        Kind::OperatorConsumedBy("payment-svc"),
    ),
];

/// The passage of `doc` that starts on the line holding `first_words`.
fn passage<'a>(doc: &'a str, first_words: &str) -> Option<&'a str> {
    let at = doc.find(first_words)?;
    let start = doc[..at].rfind('\n').map_or(0, |i| i + 1);
    let rest = &doc[start..];
    // A table row is one line; a doc comment ends with its `///` lines; a paragraph or
    // list item ends at a blank line or at the next item.
    let end = if rest.starts_with('|') {
        rest.find('\n').unwrap_or(rest.len())
    } else if rest.trim_start().starts_with("///") {
        rest.lines()
            .take_while(|l| l.trim_start().starts_with("///"))
            .map(|l| l.len() + 1)
            .sum::<usize>()
            - 1
    } else {
        let mut end = rest.find('\n').unwrap_or(rest.len());
        while end < rest.len() {
            let next = rest[end + 1..].lines().next().unwrap_or("");
            let item = next.trim_start().starts_with("- ") || next.starts_with('|');
            if next.trim().is_empty() || item {
                break;
            }
            end += 1 + next.len();
        }
        end
    };
    Some(&rest[..end])
}

/// Whether `text` names `t` as a word (`StockAdjusted`, not `StockAdjustedFoo`).
fn names(text: &str, t: EventType) -> bool {
    text.match_indices(t.name()).any(|(i, m)| {
        let after = text[i + m.len()..].chars().next();
        !after.is_some_and(char::is_alphanumeric)
    })
}

#[test]
fn passages_that_speak_of_every_event_of_a_kind_name_each() {
    let mut missing = Vec::new();
    for (file, first_words, kind) in PASSAGES {
        let doc = read(file);
        let text = passage(&doc, first_words)
            .unwrap_or_else(|| panic!("{file} has no passage starting {first_words:?}"));
        for t in kind.events() {
            if !names(text, t) {
                missing.push(format!(
                    "{file}, the passage at {first_words:?}, must name {t} ({kind:?})"
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "hand-written docs miss events they speak of; say there what each does:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn every_producer_has_its_broker_users_setting() {
    let doc = read("docs/configuration.md");
    for t in EventType::ALL {
        let variable = format!(
            "`SAGA_PRODUCER_USERS_{}`",
            t.producer().to_ascii_uppercase().replace('-', "_")
        );
        assert!(
            doc.contains(&variable),
            "docs/configuration.md does not document {variable}, the users that may publish {t}"
        );
    }
}

#[test]
fn a_passage_ends_with_its_paragraph_item_or_row() {
    let doc = "intro\n\n- one: A and\n  B go on\n- two: C\n\n| `x` | D |\n| `y` | E |\n";
    assert_eq!(passage(doc, "one:"), Some("- one: A and\n  B go on"));
    assert_eq!(passage(doc, "| `x`"), Some("| `x` | D |"));
    assert_eq!(passage(doc, "intro"), Some("intro"));
    let code = "    /// Sums A\n    /// and B.\n    #[arg]\n    a: i64,\n    /// Sums C.\n";
    assert_eq!(
        passage(code, "/// Sums A"),
        Some("    /// Sums A\n    /// and B.")
    );
    assert!(names(
        "StockAdjusted, FundsDeposited",
        EventType::StockAdjusted
    ));
    assert!(!names("StockAdjustedLater", EventType::StockAdjusted));
}
