//! The hand-written docs' lists of who publishes and who consumes which event are
//! generated from the declarations: the catalog (each type's producer and routing key) and
//! each service's `saga_inputs!` (its `CONSUMES`, through `topology()`). Rewritten in
//! place, the rest of each doc left as written:
//!
//! - README.md: the labels of the system diagram's edges to and from `saga.events`;
//! - docs/architecture.md: the consumes and emits columns of the services table, and the
//!   routing keys of the bindings table;
//! - docs/operations.md: the topic permissions table, and the keys of the
//!   `rabbitmqctl set_topic_permissions` example.
//!
//! `UPDATE_DOCS=1` rewrites them; otherwise the test fails on the first line that differs.

use events::EventType;
use messaging::topology::ServiceTopology;
use sagactl::subscriptions::saga_services;

use crate::doc_files::{keep, read, set_cell, set_edge_label, set_line_after};

const MODULE: &str = "routing_docs";

/// Each service's nodes in README.md's diagram (its input queue, its process) and what the
/// label of its edge to `saga.events` says before the routing keys.
const DIAGRAM_NODES: [(&str, &str, &str, &str); 3] = [
    ("order-svc", "qo", "order", "outbox relay:<br>"),
    ("inventory-svc", "qi", "inventory", ""),
    ("payment-svc", "qp", "payment", ""),
];

/// The event types `producer` publishes, in the catalog's order.
fn produced_by(producer: &str) -> Vec<EventType> {
    EventType::ALL
        .into_iter()
        .filter(|t| t.producer() == producer)
        .collect()
}

fn names(types: &[EventType]) -> Vec<String> {
    types.iter().map(|t| t.name().to_owned()).collect()
}

fn keys(types: &[EventType]) -> Vec<String> {
    types.iter().map(|t| t.routing_key().to_owned()).collect()
}

/// Two to a line, as the diagram's labels are wrapped.
fn wrapped(items: &[String]) -> String {
    items
        .chunks(2)
        .map(|pair| pair.join(", "))
        .collect::<Vec<_>>()
        .join(",<br>")
}

/// The keys as the anchored alternation a topic permission is, sorted.
fn key_regex(types: &[EventType]) -> String {
    let mut keys = keys(types);
    keys.sort();
    let alternation: Vec<String> = keys.iter().map(|k| k.replace('.', r"\.")).collect();
    format!("^({})$", alternation.join("|"))
}

type Edit = Box<dyn Fn(&str) -> Result<String, String>>;

fn readme(services: &[ServiceTopology<EventType>]) -> Vec<Edit> {
    let operator = names(&produced_by(EventType::OPERATOR)).join("<br>");
    let mut edits: Vec<Edit> = vec![Box::new(move |doc| {
        set_edge_label(doc, "sagactl([sagactl])", "ex", &operator)
    })];
    for s in services {
        let (_, queue, process, relay) = DIAGRAM_NODES
            .iter()
            .find(|n| n.0 == s.service)
            .unwrap_or_else(|| {
                panic!(
                    "README.md's diagram has no nodes for {}: draw them and name them in \
                     DIAGRAM_NODES (tests/tests/checks/routing_docs.rs)",
                    s.service
                )
            });
        let consumed = wrapped(&keys(&s.consumes));
        edits.push(Box::new(move |doc| {
            set_edge_label(doc, "ex", queue, &consumed)
        }));
        let emitted = format!("{relay}{}", wrapped(&keys(&produced_by(&s.service))));
        edits.push(Box::new(move |doc| {
            set_edge_label(doc, process, "ex", &emitted)
        }));
    }
    edits
}

fn architecture(services: &[ServiceTopology<EventType>]) -> Vec<Edit> {
    const SERVICES: &str = "| process | owns |";
    const BINDINGS: &str = "| queue | routing keys |";
    let mut edits: Vec<Edit> = Vec::new();
    for s in services {
        let row = format!("`{}`", s.service);
        let consumes = names(&s.consumes).join(", ");
        let emits = names(&produced_by(&s.service)).join(", ");
        let bindings = keys(&s.consumes)
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        edits.push(Box::new(move |doc| {
            let doc = set_cell(doc, SERVICES, &row, 4, &consumes)?;
            let doc = set_cell(&doc, SERVICES, &row, 5, &emits)?;
            set_cell(&doc, BINDINGS, &row, 1, &bindings)
        }));
    }
    let operator = format!(
        "{} (and any event with `sagactl publish`)",
        names(&produced_by(EventType::OPERATOR)).join(", ")
    );
    edits.push(Box::new(move |doc| {
        set_cell(doc, SERVICES, "`sagactl`", 5, &operator)
    }));
    edits
}

fn operations(services: &[ServiceTopology<EventType>]) -> Vec<Edit> {
    const TOPICS: &str = "| user | publish (`write`) | bind (`read`) |";
    let mut edits: Vec<Edit> = Vec::new();
    for s in services {
        let row = format!("`{}`", s.service);
        let publish = key_regex(&produced_by(&s.service));
        let bind = key_regex(&s.consumes);
        let cell = |regex: &str| format!("`{}`", regex.replace('|', r"\|"));
        let (publish_cell, bind_cell) = (cell(&publish), cell(&bind));
        edits.push(Box::new(move |doc| {
            let doc = set_cell(doc, TOPICS, &row, 1, &publish_cell)?;
            set_cell(&doc, TOPICS, &row, 2, &bind_cell)
        }));
        if s.service == "order-svc" {
            // The example of the commands that grant them, shown for order-svc.
            let anchor = "rabbitmqctl set_topic_permissions -p saga order-svc saga.events \\";
            edits.push(Box::new(move |doc| {
                let doc = set_line_after(doc, anchor, 1, &format!("  '{publish}' \\"))?;
                set_line_after(&doc, anchor, 2, &format!("  '{bind}'"))
            }));
        }
    }
    edits
}

#[test]
fn the_docs_lists_of_publishers_and_consumers_are_the_declarations() {
    let services = saga_services();
    let docs = [
        ("README.md", readme(&services)),
        ("docs/architecture.md", architecture(&services)),
        ("docs/operations.md", operations(&services)),
    ];
    for (rel, edits) in docs {
        let committed = read(rel);
        let want = edits
            .iter()
            .try_fold(committed.clone(), |doc, edit| edit(&doc))
            .unwrap_or_else(|e| panic!("{rel} {e}"));
        keep(rel, &committed, &want, MODULE);
    }
}
