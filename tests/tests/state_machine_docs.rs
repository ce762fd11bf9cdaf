//! docs/state-machines.md is checked against the code: the three decision tables in it
//! are rendered here from the services' `decide` functions over every state × input pair,
//! and must match what the file holds between its GENERATED markers. Run with
//! `UPDATE_DOCS=1` to rewrite those sections after changing a state machine.

use std::path::PathBuf;

use inventory_svc::saga::{self as inventory, InventoryInput, ReservationState};
use order_svc::saga::{self as order, Decision, OrderEmit, OrderInput, OrderStatus};
use payment_svc::saga::{self as payment, PaymentInput, PaymentState};

fn doc_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/state-machines.md")
}

fn table(inputs: &[String], rows: Vec<(String, Vec<String>)>) -> String {
    let mut s = format!("| state \\ input | {} |\n", inputs.join(" | "));
    s.push_str(&format!("|---|{}\n", "---|".repeat(inputs.len())));
    for (state, cells) in rows {
        s.push_str(&format!("| **{state}** | {} |\n", cells.join(" | ")));
    }
    s
}

fn order_table() -> String {
    let inputs: Vec<String> = OrderInput::ALL.iter().map(|i| format!("{i:?}")).collect();
    let rows = OrderStatus::ALL
        .iter()
        .map(|&st| {
            let cells = OrderInput::ALL
                .iter()
                .map(|&i| match order::decide(st, i) {
                    Decision::Move { to, emit } => {
                        let emit = match emit {
                            None => String::new(),
                            Some(OrderEmit::Confirmed) => " + OrderConfirmed".to_owned(),
                            Some(OrderEmit::Cancelled(r)) => {
                                format!(" + OrderCancelled({})", r.as_str())
                            }
                        };
                        format!("→ {}{emit}", to.as_str())
                    }
                    Decision::Stay => "·".to_owned(),
                    Decision::Refuse => "409".to_owned(),
                })
                .collect();
            (st.as_str().to_owned(), cells)
        })
        .collect();
    table(&inputs, rows)
}

fn inventory_table() -> String {
    let inputs: Vec<String> = InventoryInput::ALL
        .iter()
        .map(|i| format!("{i:?}"))
        .collect();
    let rows = ReservationState::ALL
        .iter()
        .map(|&st| {
            let cells = InventoryInput::ALL
                .iter()
                .map(|&i| match inventory::decide(st, i) {
                    inventory::Step::TryReserve => {
                        "reserve all → reserved + StockReserved, or none → rejected + StockRejected"
                            .to_owned()
                    }
                    inventory::Step::Sell => "→ sold".to_owned(),
                    inventory::Step::ReleaseReserved => {
                        "give back reserved → released + StockReleased".to_owned()
                    }
                    inventory::Step::ReturnSold => {
                        "give back sold → released + StockReleased".to_owned()
                    }
                    inventory::Step::ReleaseNothing => {
                        "→ released + StockReleased (no items)".to_owned()
                    }
                    inventory::Step::Ignore => "·".to_owned(),
                })
                .collect();
            (st.as_str().to_owned(), cells)
        })
        .collect();
    table(&inputs, rows)
}

fn payment_table() -> String {
    let inputs: Vec<String> = PaymentInput::ALL.iter().map(|i| format!("{i:?}")).collect();
    let rows = PaymentState::ALL
        .iter()
        .map(|&st| {
            let cells = PaymentInput::ALL
                .iter()
                .map(|&i| match payment::decide(st, i) {
                    payment::Step::TryCharge => {
                        "debit → captured + PaymentDone, or → failed + PaymentFailed(reason)"
                            .to_owned()
                    }
                    payment::Step::Refund => "credit back → refunded + PaymentRefunded".to_owned(),
                    payment::Step::Void => "→ voided".to_owned(),
                    payment::Step::RefuseCancelled => {
                        "→ failed + PaymentFailed(order_cancelled)".to_owned()
                    }
                    payment::Step::Ignore => "·".to_owned(),
                })
                .collect();
            (st.as_str().to_owned(), cells)
        })
        .collect();
    table(&inputs, rows)
}

/// Replaces the text between `<!-- BEGIN GENERATED: name -->` and `<!-- END GENERATED: name -->`.
fn splice(doc: &str, name: &str, body: &str) -> String {
    let begin = format!("<!-- BEGIN GENERATED: {name} -->\n");
    let end = format!("<!-- END GENERATED: {name} -->");
    let (Some(b), Some(e)) = (doc.find(&begin), doc.find(&end)) else {
        panic!("docs/state-machines.md lacks the markers for {name}");
    };
    format!("{}{begin}{body}{}", &doc[..b], &doc[e..])
}

#[test]
fn state_machine_docs_match_the_code() {
    let path = doc_path();
    let doc = std::fs::read_to_string(&path).expect("docs/state-machines.md exists");
    let mut want = doc.clone();
    want = splice(&want, "order", &order_table());
    want = splice(&want, "inventory", &inventory_table());
    want = splice(&want, "payment", &payment_table());
    if std::env::var("UPDATE_DOCS").is_ok() {
        std::fs::write(&path, &want).expect("write docs/state-machines.md");
        return;
    }
    assert!(
        doc == want,
        "docs/state-machines.md is out of date with the state machines; run \
         `UPDATE_DOCS=1 cargo test -p saga-tests --test state_machine_docs` and commit the result"
    );
}
