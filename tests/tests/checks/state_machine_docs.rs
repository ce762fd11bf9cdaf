//! docs/state-machines.md is checked against the code: the three decision tables in it
//! are rendered here from the services' `decide` functions over every state × input pair,
//! and must match what the file holds between its GENERATED markers. Run with
//! `UPDATE_DOCS=1` to rewrite those sections after changing a state machine.
//!
//! The inputs are every event a service consumes (its `CONSUMES`), each as the catalog's
//! example of it, and order-svc's commands: a new input gets its column without an edit
//! here. A cell describes the plan `decide` returns, in general terms: the state it
//! stores, the stock or money it moves, the events it emits. Where the answer depends on
//! what is on hand (stock, a wallet), the cell shows each answer, from a context where
//! enough is on hand and one where nothing is.

use chrono::Utc;
use events::catalog::{OrderItem, StockItem};
use events::{Event, EventType};
use inventory_svc::saga::{
    self as inventory, InventoryInput, InventoryState, Reservation, ReservationState, StockLevels,
};
use order_svc::saga::{self as order, NewOrder, Order, OrderInput, OrderRefusal, OrderStatus};
use payment_svc::saga::{self as payment, Payment, PaymentContext, PaymentInput, PaymentState};
use platform::inputs::Refusal;
use uuid::Uuid;

use crate::doc_files::{keep, read, splice};

const DOC: &str = "docs/state-machines.md";

/// The order the catalog's examples are about.
fn example_order() -> Uuid {
    EventType::ALL
        .iter()
        .find_map(|t| t.example().order_id())
        .expect("the catalog has an example about an order")
}

/// The catalog's example of each type in `consumes`, as a service's input.
fn examples<I>(consumes: &[EventType]) -> Vec<I>
where
    I: for<'a> TryFrom<&'a Event, Error = EventType>,
{
    consumes
        .iter()
        .map(|t| {
            I::try_from(&t.example())
                .unwrap_or_else(|t| panic!("{t} is in CONSUMES but its input does not accept it"))
        })
        .collect()
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
    let order = example_order();
    let place = OrderInput::Place(NewOrder {
        order_id: order,
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
    });
    std::iter::once(place)
        .chain(examples(OrderInput::CONSUMES))
        .chain([OrderInput::Cancel(order), OrderInput::Deadline(order)])
        .collect()
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
                order_id: example_order(),
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

/// The examples, but a StockAdjusted removes what it adds in the example: its cell then
/// shows the refusal of a removal beyond what is on hand too.
fn inventory_inputs() -> Vec<InventoryInput> {
    examples(InventoryInput::CONSUMES)
        .into_iter()
        .map(|input| match input {
            InventoryInput::StockAdjusted(mut e) => {
                e.delta = -e.delta.abs();
                InventoryInput::StockAdjusted(e)
            }
            other => other,
        })
        .collect()
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
    let contexts = [ON_HAND, 0];
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

/// More than any example asks for or removes.
const ON_HAND: i64 = 1_000;

/// What the example order's reservation holds: the items of the example StockReserved.
fn held_items() -> Vec<StockItem> {
    match EventType::StockReserved.example() {
        Event::StockReserved(e) => e.items,
        other => panic!("the example StockReserved is {other:?}"),
    }
}

/// The reservation in `state` holding [`held_items`] (the SKUs every example names), and
/// stock of each with `on_hand` available and as much reserved and sold as the
/// reservation holds.
fn inventory_state(state: Option<ReservationState>, on_hand: i64) -> InventoryState {
    let items = held_items();
    let stock = items
        .iter()
        .map(|i| {
            let levels = StockLevels {
                available: on_hand,
                reserved: i.quantity,
                sold: i.quantity,
                adjusted: on_hand + 2 * i.quantity,
            };
            (i.sku.clone(), levels)
        })
        .collect();
    InventoryState {
        reservation: state.map(|state| Reservation { state, items }),
        stock,
    }
}

// ---- payment-svc -------------------------------------------------------------------------

fn payment_inputs() -> Vec<PaymentInput> {
    examples(PaymentInput::CONSUMES)
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
    // A wallet that can pay for any example, then a wallet in another currency.
    let contexts = [("EUR", 1_000_000), ("USD", 0)];
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
            payment_id: Some(example_order()),
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
        new_payment_id: example_order(),
    }
}

#[test]
fn state_machine_docs_match_the_code() {
    let doc = read(DOC);
    let tables = [
        ("order", order_table()),
        ("inventory", inventory_table()),
        ("payment", payment_table()),
    ];
    let want = tables
        .iter()
        .try_fold(doc.clone(), |want, (name, table)| {
            splice(&want, name, table)
        })
        .unwrap_or_else(|e| panic!("{DOC} {e}"));
    keep(DOC, &doc, &want, "state_machine_docs");
}
