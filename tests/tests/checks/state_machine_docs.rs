//! docs/state-machines.md is checked against the code: the three decision tables in it
//! are rendered here from the services' `decide` functions over every state × input pair,
//! and must match what the file holds between its GENERATED markers. Run with
//! `UPDATE_DOCS=1` to rewrite those sections after changing a state machine.
//!
//! A cell describes the plan `decide` returns, in general terms: the state it stores, the
//! stock or money it moves, the events it emits. Where the answer depends on what is on
//! hand (stock, a wallet), the cell shows each answer, from a context where enough is on
//! hand and one where nothing is.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::Utc;
use events::Event;
use events::catalog::{
    CancelReason, FundsDeposited, OrderCancelled, OrderConfirmed, OrderCreated, OrderItem,
    PaymentDone, PaymentFailed, PaymentFailureReason, PaymentRefunded, StockAdjusted, StockItem,
    StockRejected, StockReleased, StockReserved,
};
use inventory_svc::saga::{
    self as inventory, InventoryInput, InventoryState, Reservation, ReservationState, StockLevels,
};
use order_svc::saga::{self as order, NewOrder, Order, OrderInput, OrderRefusal, OrderStatus};
use payment_svc::saga::{self as payment, Payment, PaymentContext, PaymentInput, PaymentState};
use platform::inputs::Refusal;
use uuid::Uuid;

const ORDER: Uuid = Uuid::nil();

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

/// An input's name: its variant, without the payload.
fn name(input: &impl std::fmt::Debug) -> String {
    let debug = format!("{input:?}");
    debug
        .split(['(', ' ', '{'])
        .next()
        .unwrap_or(&debug)
        .to_owned()
}

/// The events a plan emits, as ` + Name` each (with a reason where the event has one).
fn emitted(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| match e {
            Event::OrderCancelled(c) => format!(" + OrderCancelled({})", c.reason.as_str()),
            Event::PaymentFailed(f) => format!(
                " + PaymentFailed({})",
                serde_json::to_value(f.reason).expect("a reason serialises")
            )
            .replace('"', ""),
            Event::StockReleased(r) if r.items.is_empty() => " + StockReleased (no items)".into(),
            other => format!(" + {}", other.event_type().name()),
        })
        .collect()
}

/// The answers over each context, distinct, joined.
fn either(answers: Vec<String>) -> String {
    let mut distinct: Vec<String> = Vec::new();
    for a in answers {
        if !distinct.contains(&a) {
            distinct.push(a);
        }
    }
    distinct.join(", or ")
}

fn refused(r: &Refusal) -> String {
    format!("refused ({})", r.code)
}

// ---- order-svc ---------------------------------------------------------------------------

fn order_inputs() -> Vec<OrderInput> {
    let now = Utc::now();
    vec![
        OrderInput::Place(NewOrder {
            order_id: ORDER,
            customer_id: "c".into(),
            currency: "EUR".into(),
            items: vec![OrderItem {
                sku: "A".into(),
                quantity: 1,
                unit_price: 1,
            }],
            placed_at: now,
            deadline: now,
            idempotency: None,
        }),
        OrderInput::StockReserved(StockReserved {
            order_id: ORDER,
            customer_id: "c".into(),
            items: Vec::new(),
            total: 1,
            currency: "EUR".into(),
        }),
        OrderInput::StockRejected(StockRejected {
            order_id: ORDER,
            reason: "insufficient_stock".into(),
            unavailable: Vec::new(),
        }),
        OrderInput::PaymentDone(PaymentDone {
            order_id: ORDER,
            payment_id: ORDER,
            customer_id: "c".into(),
            amount: 1,
            currency: "EUR".into(),
        }),
        OrderInput::PaymentFailed(PaymentFailed {
            order_id: ORDER,
            customer_id: "c".into(),
            amount: 1,
            reason: PaymentFailureReason::InsufficientFunds,
        }),
        OrderInput::StockReleased(StockReleased {
            order_id: ORDER,
            items: Vec::new(),
        }),
        OrderInput::PaymentRefunded(PaymentRefunded {
            order_id: ORDER,
            payment_id: ORDER,
            amount: 1,
            currency: "EUR".into(),
        }),
        OrderInput::Cancel(ORDER),
        OrderInput::Deadline(ORDER),
    ]
}

fn order_cell(state: Option<&Order>, input: &OrderInput) -> String {
    match order::decide(state, input) {
        Ok(plan) => {
            let to = match &plan.write {
                Some(order::OrderWrite::Insert { order, .. }) => Some(order.status),
                Some(order::OrderWrite::Move { to, .. }) => Some(*to),
                None => None,
            };
            match to {
                Some(to) => format!("→ {}{}", to.as_str(), emitted(&plan.emit)),
                None => "·".into(),
            }
        }
        Err(OrderRefusal::Closed { .. }) => "409".into(),
        Err(r) => refused(&Refusal::from(r)),
    }
}

fn order_table() -> String {
    let inputs = order_inputs();
    let names: Vec<String> = inputs.iter().map(name).collect();
    let states = std::iter::once(None).chain(OrderStatus::ALL.map(Some));
    let rows = states
        .map(|status| {
            let o = status.map(|status| Order {
                order_id: ORDER,
                customer_id: "c".into(),
                status,
                reason: None,
                items: Vec::new(),
                total: 1,
                currency: "EUR".into(),
                created_at: Utc::now(),
            });
            let cells = inputs.iter().map(|i| order_cell(o.as_ref(), i)).collect();
            (status.map_or("none", OrderStatus::as_str).to_owned(), cells)
        })
        .collect();
    table(&names, rows)
}

// ---- inventory-svc -----------------------------------------------------------------------

fn inventory_inputs() -> Vec<InventoryInput> {
    vec![
        InventoryInput::OrderCreated(OrderCreated {
            order_id: ORDER,
            customer_id: "c".into(),
            items: vec![OrderItem {
                sku: "A".into(),
                quantity: 2,
                unit_price: 1,
            }],
            total: 2,
            currency: "EUR".into(),
        }),
        InventoryInput::OrderConfirmed(OrderConfirmed { order_id: ORDER }),
        InventoryInput::OrderCancelled(OrderCancelled {
            order_id: ORDER,
            reason: CancelReason::Timeout,
        }),
        InventoryInput::StockAdjusted(StockAdjusted {
            sku: "A".into(),
            delta: -3,
        }),
    ]
}

/// How the plan moves stock between buckets, e.g. `reserved→sold`.
fn stock_moves(before: &InventoryState, plan: &inventory::Plan) -> String {
    let Some((sku, after)) = plan.stock.first() else {
        return String::new();
    };
    let b = before.stock.get(sku).copied().unwrap_or_default();
    let buckets = [
        ("available", after.available - b.available),
        ("reserved", after.reserved - b.reserved),
        ("sold", after.sold - b.sold),
    ];
    let from: Vec<&str> = buckets.iter().filter(|x| x.1 < 0).map(|x| x.0).collect();
    let to: Vec<&str> = buckets.iter().filter(|x| x.1 > 0).map(|x| x.0).collect();
    match (from.as_slice(), to.as_slice()) {
        ([f], [t]) => format!("{f}→{t} "),
        ([], [t]) => format!("{t} up "),
        ([f], []) => format!("{f} down "),
        _ => String::new(),
    }
}

fn inventory_cell(state: &InventoryState, input: &InventoryInput) -> String {
    match inventory::decide(state, input) {
        Ok(plan) if plan == inventory::Plan::default() => "·".into(),
        Ok(plan) => {
            let moves = stock_moves(state, &plan);
            let to = plan
                .reservation
                .as_ref()
                .map_or(String::new(), |(_, r)| format!("→ {}", r.state.as_str()));
            format!("{moves}{to}{}", emitted(&plan.emit))
                .trim()
                .to_owned()
        }
        Err(r) => refused(&r),
    }
}

fn inventory_table() -> String {
    let inputs = inventory_inputs();
    let names: Vec<String> = inputs.iter().map(name).collect();
    let states = std::iter::once(None).chain(ReservationState::ALL.map(Some));
    // Enough on hand for the order and the adjustment, then nothing on hand.
    let contexts = [5, 0];
    let rows = states
        .map(|state| {
            let cells = inputs
                .iter()
                .map(|i| {
                    either(
                        contexts
                            .iter()
                            .map(|&on_hand| {
                                let s = inventory_state(state, on_hand);
                                inventory_cell(&s, i)
                            })
                            .collect(),
                    )
                })
                .collect();
            (
                state.map_or("none", ReservationState::as_str).to_owned(),
                cells,
            )
        })
        .collect();
    table(&names, rows)
}

fn inventory_state(state: Option<ReservationState>, on_hand: i64) -> InventoryState {
    let levels = StockLevels {
        available: on_hand,
        reserved: 2,
        sold: 2,
        adjusted: on_hand + 4,
    };
    InventoryState {
        reservation: state.map(|state| Reservation {
            state,
            items: vec![StockItem {
                sku: "A".into(),
                quantity: 2,
            }],
        }),
        stock: BTreeMap::from([("A".to_owned(), levels)]),
    }
}

// ---- payment-svc -------------------------------------------------------------------------

fn payment_inputs() -> Vec<PaymentInput> {
    vec![
        PaymentInput::StockReserved(StockReserved {
            order_id: ORDER,
            customer_id: "c".into(),
            items: Vec::new(),
            total: 10,
            currency: "EUR".into(),
        }),
        PaymentInput::OrderCancelled(OrderCancelled {
            order_id: ORDER,
            reason: CancelReason::Timeout,
        }),
        PaymentInput::FundsDeposited(FundsDeposited {
            customer_id: "c".into(),
            amount: 5,
            currency: "EUR".into(),
        }),
    ]
}

fn payment_cell(ctx: &PaymentContext, input: &PaymentInput) -> String {
    match payment::decide(ctx, input) {
        Ok(plan) if plan == payment::Plan::default() => "·".into(),
        Ok(plan) => {
            let money = match (&ctx.wallet, &plan.wallet) {
                (Some(b), Some((_, a))) if a.balance < b.balance => "debit ",
                (_, Some(_)) => "credit ",
                _ => "",
            };
            let to = plan
                .payment
                .as_ref()
                .map_or(String::new(), |(_, p)| format!("→ {}", p.state.as_str()));
            format!("{money}{to}{}", emitted(&plan.emit))
                .trim()
                .to_owned()
        }
        Err(r) => refused(&r),
    }
}

fn payment_table() -> String {
    let inputs = payment_inputs();
    let names: Vec<String> = inputs.iter().map(name).collect();
    let states = std::iter::once(None).chain(PaymentState::ALL.map(Some));
    // A wallet that can pay, then a wallet in another currency.
    let contexts = [("EUR", 100), ("USD", 0)];
    let rows = states
        .map(|state| {
            let cells = inputs
                .iter()
                .map(|i| {
                    either(
                        contexts
                            .iter()
                            .map(|&(currency, balance)| {
                                payment_cell(&payment_context(state, currency, balance), i)
                            })
                            .collect(),
                    )
                })
                .collect();
            (state.map_or("none", PaymentState::as_str).to_owned(), cells)
        })
        .collect();
    table(&names, rows)
}

fn payment_context(state: Option<PaymentState>, currency: &str, balance: i64) -> PaymentContext {
    PaymentContext {
        payment: state.map(|state| Payment {
            payment_id: Some(ORDER),
            customer_id: "c".into(),
            amount: 10,
            currency: "EUR".into(),
            state,
            reason: None,
        }),
        wallet: Some(payment::Wallet {
            currency: currency.into(),
            balance,
            deposited: balance + 10,
            captured: 10,
            refunded: 0,
        }),
        new_payment_id: ORDER,
    }
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
         `UPDATE_DOCS=1 cargo test -p saga-tests --test checks state_machine_docs` and commit the result"
    );
}
