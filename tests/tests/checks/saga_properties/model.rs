//! An in-memory run of the three services and the broker between them.
//!
//! Every service is its own code: each delivery goes through the service's real input
//! declaration (`TryFrom<&Event>`), its real `decide` and the in-memory application of the
//! plan its crate exports (`order_svc::staging`, `inventory_svc::staging`,
//! `payment_svc::staging`, the tables every plan is applied to). Routing follows
//! the queue bindings of each service's own `topology()`, and every message goes through
//! the real envelope encoding and `decode_body`, so a payload the consumers would refuse
//! is dead-lettered here as it would be there. What this file adds is only the broker
//! (delays, duplicates, redeliveries, repeats), the inbox (one claim per message id per
//! queue) and the checks: nothing here decides what a service does.
//!
//! Next to the services' own rows the run keeps an audit of what really happened to each
//! order, observed from the rows each delivery changed (every capture, every refund, every
//! unit moved between stock buckets), so the invariants are checked against the facts
//! rather than against the services' opinion of them. What each event type counts for in
//! that audit is said once, in [`counted`], whose `match` names every type. The run also
//! records the [`Path`]s it reached, for the coverage the properties assert.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use events::catalog::{FundsDeposited, OrderItem, StockAdjusted};
use events::{Event, EventType};
use inventory_svc::saga::{ReservationState, merge_items};
use inventory_svc::staging::InventoryTables;
use messaging::envelope::{Envelope, decode_body};
use order_svc::saga::{NewOrder, OrderInput, OrderRefusal, OrderStatus};
use order_svc::staging::OrderTables;
use payment_svc::saga::PaymentState;
use payment_svc::staging::PaymentTables;
use uuid::Uuid;

use super::coverage::{self, Path};
use super::services::Service;

/// The producer name operators' events carry.
pub(crate) const OPERATOR: &str = EventType::OPERATOR;

/// A message on the broker, with the queues it still has to reach.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    /// Sequence number, for readable traces only.
    pub seq: u32,
    pub id: Uuid,
    pub event: Event,
    /// What `decode_body` made of the published bytes: `Err(code)` means every consumer
    /// dead-letters it.
    pub decoded: Result<(), &'static str>,
    pub producer: &'static str,
    pub to: Vec<Service>,
    /// Whether its order was open (pending or reserved) when it was published.
    pub while_open: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Held {
    pub reserved: i64,
    pub sold: i64,
    /// Units ever reserved for the order.
    pub ever_reserved: i64,
}

/// What really happened to an order's money and stock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Audit {
    /// (customer, amount) of every debit taken for the order.
    pub captures: Vec<(String, i64)>,
    /// (customer, amount) of every refund credited for the order.
    pub refunds: Vec<(String, i64)>,
    pub held: BTreeMap<String, Held>,
}

impl Audit {
    pub(crate) fn net_charged(&self) -> i64 {
        self.captures.iter().map(|c| c.1).sum::<i64>()
            - self.refunds.iter().map(|r| r.1).sum::<i64>()
    }

    pub(crate) fn holds_stock(&self) -> bool {
        self.held.values().any(|h| h.reserved != 0 || h.sold != 0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Handled,
    Duplicate,
    DeadLettered(&'static str),
}

/// One line of the run's history, formatted only when a case fails.
#[derive(Debug, Clone)]
pub(crate) enum Note {
    Published {
        seq: u32,
        ty: EventType,
        order: Option<Uuid>,
        copy: bool,
        decoded: Result<(), &'static str>,
    },
    Delivered {
        seq: u32,
        ty: EventType,
        to: Service,
        order: Option<Uuid>,
        outcome: Outcome,
        again: bool,
    },
    Placed {
        order: Uuid,
    },
    Cancel {
        order: Uuid,
        answer: Result<(), OrderRefusal>,
    },
    Deadline {
        order: Uuid,
        answer: Result<(), OrderRefusal>,
    },
    Quiescent,
}

impl Note {
    fn order(&self) -> Option<Uuid> {
        match self {
            Note::Published { order, .. } | Note::Delivered { order, .. } => *order,
            Note::Placed { order } | Note::Cancel { order, .. } | Note::Deadline { order, .. } => {
                Some(*order)
            }
            Note::Quiescent => None,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    pub seq: u32,
    pub to: Service,
    pub ty: EventType,
    pub producer: &'static str,
    pub code: &'static str,
}

/// The three services, the broker, and the audit.
#[derive(Debug, Clone, Default)]
pub(crate) struct World {
    pub order: OrderTables,
    pub inventory: InventoryTables,
    pub payment: PaymentTables,
    /// Each service's inbox: the message ids it handled.
    pub inboxes: [BTreeSet<Uuid>; 3],
    pub audit: BTreeMap<Uuid, Audit>,
    pub bus: Vec<Message>,
    /// Every event about an order ever published, for repeats under a new message id.
    pub about_orders: Vec<(Event, &'static str)>,
    /// Every (queue, message) delivered and acknowledged, for late redeliveries.
    pub delivered: Vec<(Service, Message)>,
    pub dead_letters: Vec<DeadLetter>,
    pub refused_cancels: usize,
    /// Per SKU, the sum of the adjustments inventory accepted, as published.
    pub adjusted: BTreeMap<String, i64>,
    /// Per customer, the sum of the deposits payment accepted, as published.
    pub deposited: BTreeMap<String, i64>,
    pub notes: Vec<Note>,
    /// What the run reached, for the properties' coverage.
    pub reached: BTreeSet<Path>,
    /// The orders that were confirmed at some point.
    pub confirmed_once: BTreeSet<Uuid>,
    next_seq: u32,
}

/// What an event counts for in the audit and in the totals operators published. The
/// `match` names every event type: a new one stops the build here until it says whether
/// it moves stock or money.
enum Counted<'a> {
    /// Stock an operator brings in (or takes out) of a SKU: it adds to what the SKU must
    /// hold, `adjusted` = available + reserved + sold.
    Stock { sku: &'a str, delta: i64 },
    /// Money an operator deposits into a customer's wallet.
    Deposit { customer: &'a str, amount: i64 },
    /// An order's capture.
    Capture { customer: &'a str, amount: i64 },
    /// An order's refund.
    Refund { amount: i64 },
    /// Nothing by itself: the stock an order's events move is read off the rows.
    Nothing,
}

fn counted(event: &Event) -> Counted<'_> {
    match event {
        Event::StockAdjusted(e) => Counted::Stock {
            sku: &e.sku,
            delta: e.delta,
        },
        Event::FundsDeposited(e) => Counted::Deposit {
            customer: &e.customer_id,
            amount: e.amount,
        },
        Event::PaymentDone(e) => Counted::Capture {
            customer: &e.customer_id,
            amount: e.amount,
        },
        Event::PaymentRefunded(e) => Counted::Refund { amount: e.amount },
        Event::OrderCreated(_)
        | Event::StockReserved(_)
        | Event::StockRejected(_)
        | Event::PaymentFailed(_)
        | Event::OrderConfirmed(_)
        | Event::OrderCancelled(_)
        | Event::StockReleased(_) => Counted::Nothing,
    }
}

/// Everything a duplicate delivery must leave untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    order: OrderTables,
    inventory: InventoryTables,
    payment: PaymentTables,
    audit: BTreeMap<Uuid, Audit>,
    in_flight: usize,
}

/// A short, stable name for the ids the scenarios make (`Uuid::from_u128(n)`).
pub(crate) fn label(id: Uuid) -> String {
    let n = id.as_u128();
    if n < 1 << 32 {
        format!("o{n}")
    } else {
        id.to_string()
    }
}

pub(crate) fn order_id(n: usize) -> Uuid {
    Uuid::from_u128(n as u128 + 1)
}

impl World {
    pub(crate) fn new() -> Self {
        World::default()
    }

    // ---- the broker ----------------------------------------------------------------

    /// Publishes `event` as `producer` would: wrapped in an envelope, encoded, decoded by
    /// the consumers' own decoder, routed to every queue bound to its type.
    pub(crate) fn publish(&mut self, event: Event, producer: &'static str, copy: bool) {
        let envelope = Envelope::wrap(&event, producer, None);
        let decoded = match decode_body::<Event>(&envelope.to_body()) {
            Ok((env, back)) => {
                // The timestamp travels in milliseconds; everything else exactly.
                let sent = Envelope {
                    occurred_at: env.occurred_at,
                    ..envelope.clone()
                };
                assert_eq!(env, sent, "an envelope did not survive its encoding");
                assert_eq!(back, event, "an event did not survive its encoding");
                Ok(())
            }
            Err((_, e)) => Err(e.code()),
        };
        let ty = event.event_type();
        let to: Vec<Service> = Service::ALL
            .into_iter()
            .filter(|s| s.consumes().contains(&ty))
            .collect();
        assert!(
            !to.is_empty(),
            "{} is bound to no queue: a mandatory publish would be returned",
            ty.name()
        );
        let seq = self.next_seq;
        self.next_seq += 1;
        let order = event.order_id();
        if order.is_some() && !copy {
            self.about_orders.push((event.clone(), producer));
        }
        if !copy {
            self.reached.extend(coverage::published(&event));
        }
        let while_open = order.is_some_and(|id| self.is_open(id));
        self.notes.push(Note::Published {
            seq,
            ty,
            order,
            copy,
            decoded,
        });
        self.bus.push(Message {
            seq,
            id: envelope.message_id,
            event,
            decoded,
            producer,
            to,
            while_open,
        });
    }

    fn is_open(&self, order: Uuid) -> bool {
        self.order
            .orders
            .get(&order)
            .is_some_and(|o| OrderStatus::OPEN.contains(&o.status))
    }

    /// Publishes again an event about an order published before, under a new message id.
    pub(crate) fn republish(&mut self, pick: usize) {
        if self.about_orders.is_empty() {
            return;
        }
        let (event, producer) = self.about_orders[pick % self.about_orders.len()].clone();
        self.publish(event, producer, true);
    }

    /// Delivers in-flight message `pick` to one of the queues it has still to reach;
    /// with `twice`, delivers it a second time (same message id) and checks that the
    /// second time changed nothing.
    pub(crate) fn deliver(
        &mut self,
        pick: usize,
        recipient: usize,
        twice: bool,
    ) -> Result<(), String> {
        if self.bus.is_empty() {
            return Ok(());
        }
        let i = pick % self.bus.len();
        let to = {
            let m = &mut self.bus[i];
            m.to.remove(recipient % m.to.len())
        };
        let msg = if self.bus[i].to.is_empty() {
            self.bus.remove(i)
        } else {
            self.bus[i].clone()
        };
        let outcome = self.receive(to, &msg, false);
        if twice {
            self.deliver_again(to, &msg)?;
        }
        // A dead-lettered message is settled: the broker never hands it out again.
        if !matches!(outcome, Outcome::DeadLettered(_)) {
            self.delivered.push((to, msg));
        }
        Ok(())
    }

    /// The broker delivers again, later, a message a queue already received (a lost ack):
    /// the same message id must change nothing.
    pub(crate) fn redeliver(&mut self, pick: usize) -> Result<(), String> {
        if self.delivered.is_empty() {
            return Ok(());
        }
        let (to, msg) = self.delivered[pick % self.delivered.len()].clone();
        self.deliver_again(to, &msg)
    }

    fn deliver_again(&mut self, to: Service, msg: &Message) -> Result<(), String> {
        let before = self.snapshot();
        let outcome = self.receive(to, msg, true);
        let after = self.snapshot();
        if before != after || matches!(outcome, Outcome::Handled) {
            return Err(format!(
                "delivering message #{} ({} about {}) to {} again with the same message id \
                 changed something (outcome {outcome:?})",
                msg.seq,
                msg.event.event_type().name(),
                msg.event.order_id().map_or("-".into(), label),
                to.name()
            ));
        }
        Ok(())
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            order: self.order.clone(),
            inventory: self.inventory.clone(),
            payment: self.payment.clone(),
            audit: self.audit.clone(),
            in_flight: self.bus.len(),
        }
    }

    /// A consumer's processing of one delivery: decode, inbox claim, handler, outbox.
    /// All of it is one transaction: a refusal leaves nothing behind.
    fn receive(&mut self, to: Service, msg: &Message, again: bool) -> Outcome {
        let ty = msg.event.event_type();
        let outcome = if let Err(code) = msg.decoded {
            Outcome::DeadLettered(code)
        } else if self.inboxes[to as usize].contains(&msg.id) {
            Outcome::Duplicate
        } else {
            let stock_before = self.inventory.stock.clone();
            let order = msg.event.order_id();
            let late = msg.while_open && order.is_some_and(|id| !self.is_open(id));
            let handled = match to {
                Service::Order => self.order.handle(&msg.event),
                Service::Inventory => self.inventory.handle(&msg.event),
                Service::Payment => self.payment.handle(&msg.event),
            };
            match handled {
                Ok(emitted) => {
                    self.inboxes[to as usize].insert(msg.id);
                    self.reached.insert(Path::Consumed { service: to, ty });
                    if late {
                        self.reached.insert(Path::Late { service: to });
                    }
                    match (counted(&msg.event), order) {
                        (Counted::Stock { sku, delta }, _) => {
                            *self.adjusted.entry(sku.to_owned()).or_default() += delta
                        }
                        (Counted::Deposit { customer, amount }, _) => {
                            *self.deposited.entry(customer.to_owned()).or_default() += amount
                        }
                        (_, Some(order)) => self.observe(order, &stock_before, &emitted),
                        (_, None) => {}
                    }
                    if let Some(id) = order.filter(|id| {
                        self.order.orders.get(id).map(|o| o.status) == Some(OrderStatus::Confirmed)
                    }) {
                        self.confirmed_once.insert(id);
                    }
                    for e in emitted {
                        self.publish(e, to.name(), false);
                    }
                    Outcome::Handled
                }
                Err(refusal) => Outcome::DeadLettered(refusal.code),
            }
        };
        if let Outcome::DeadLettered(code) = outcome {
            self.dead_letters.push(DeadLetter {
                seq: msg.seq,
                to,
                ty,
                producer: msg.producer,
                code,
            });
        }
        self.notes.push(Note::Delivered {
            seq: msg.seq,
            ty,
            to,
            order: msg.event.order_id(),
            outcome,
            again,
        });
        outcome
    }

    /// Records in `order`'s audit what the delivery just handled did: the units it moved
    /// between stock buckets, read off the stock rows it changed, and the captures and
    /// refunds it announced (checked against the wallets' own counters by
    /// [`World::check_always`]).
    fn observe(
        &mut self,
        order: Uuid,
        stock: &BTreeMap<String, inventory_svc::saga::StockLevels>,
        emitted: &[Event],
    ) {
        let audit = self.audit.entry(order).or_default();
        for (sku, after) in &self.inventory.stock {
            let Some(before) = stock.get(sku) else {
                continue;
            };
            let (reserved, sold) = (after.reserved - before.reserved, after.sold - before.sold);
            if (reserved, sold) != (0, 0) {
                let held = audit.held.entry(sku.clone()).or_default();
                held.reserved += reserved;
                held.sold += sold;
                held.ever_reserved += reserved.max(0);
            }
        }
        for e in emitted {
            match counted(e) {
                Counted::Capture { customer, amount } => {
                    audit.captures.push((customer.to_owned(), amount))
                }
                Counted::Refund { amount } => {
                    let payment = &self.payment.payments[&order];
                    audit.refunds.push((payment.customer_id.clone(), amount));
                }
                Counted::Stock { .. } | Counted::Deposit { .. } | Counted::Nothing => {}
            }
        }
    }

    // ---- operators -----------------------------------------------------------------

    /// Publishes an operator's event, as `sagactl` does.
    pub(crate) fn operate(&mut self, event: Event) {
        self.publish(event, OPERATOR, false);
    }

    pub(crate) fn adjust_stock(&mut self, sku: &str, delta: i64) {
        self.operate(Event::StockAdjusted(StockAdjusted {
            sku: sku.to_owned(),
            delta,
        }));
    }

    pub(crate) fn deposit(&mut self, customer_id: &str, amount: i64, currency: &str) {
        self.operate(Event::FundsDeposited(FundsDeposited {
            customer_id: customer_id.to_owned(),
            amount,
            currency: currency.to_owned(),
        }));
    }

    // ---- order-svc's commands and sweep ------------------------------------------------

    /// `POST /orders`: `false` when the request is refused (400).
    pub(crate) fn place_order(
        &mut self,
        order_id: Uuid,
        customer_id: &str,
        currency: &str,
        items: Vec<OrderItem>,
    ) -> bool {
        let placed_at = DateTime::<Utc>::UNIX_EPOCH;
        let new = NewOrder {
            order_id,
            customer_id: customer_id.to_owned(),
            currency: currency.to_owned(),
            items,
            placed_at,
            deadline: placed_at,
            idempotency: None,
        };
        let Ok(emitted) = self.order.run(&OrderInput::Place(new)) else {
            return false;
        };
        self.notes.push(Note::Placed { order: order_id });
        for e in emitted {
            self.publish(e, order_svc::SERVICE, false);
        }
        true
    }

    /// `POST /orders/{id}/cancel`.
    pub(crate) fn request_cancel(&mut self, order_id: Uuid) {
        let answer = self.order.run(&OrderInput::Cancel(order_id));
        if matches!(answer, Err(OrderRefusal::Closed { .. })) {
            self.refused_cancels += 1;
        }
        self.after_command(order_id, answer, |order, answer| Note::Cancel {
            order,
            answer,
        });
    }

    /// The deadline sweep reaching the order: it takes only open orders.
    pub(crate) fn deadline_passes(&mut self, order_id: Uuid) {
        if self.is_open(order_id) {
            let answer = self.order.run(&OrderInput::Deadline(order_id));
            self.after_command(order_id, answer, |order, answer| Note::Deadline {
                order,
                answer,
            });
        }
    }

    fn after_command(
        &mut self,
        order: Uuid,
        answer: Result<Vec<Event>, OrderRefusal>,
        note: fn(Uuid, Result<(), OrderRefusal>) -> Note,
    ) {
        let emitted = answer.as_ref().map_or(Vec::new(), Clone::clone);
        self.notes.push(note(order, answer.map(|_| ())));
        for e in emitted {
            self.publish(e, order_svc::SERVICE, false);
        }
    }

    /// Every order the sweep would find once all deadlines have passed.
    pub(crate) fn expire_all_open_orders(&mut self) {
        let open: Vec<Uuid> = self.open_orders();
        for id in open {
            self.deadline_passes(id);
        }
    }

    pub(crate) fn open_orders(&self) -> Vec<Uuid> {
        self.order
            .orders
            .iter()
            .filter(|(_, o)| OrderStatus::OPEN.contains(&o.status))
            .map(|(id, _)| *id)
            .collect()
    }

    // ---- invariants ------------------------------------------------------------------

    /// What must hold after every single step, messages in flight or not: each handler
    /// is one transaction, so the books always balance.
    pub(crate) fn check_always(&self) -> Result<(), String> {
        for (sku, s) in &self.inventory.stock {
            if s.available < 0 || s.reserved < 0 || s.sold < 0 {
                return Err(format!("stock of {sku} went negative: {s:?}"));
            }
            // Against what was published, and against the service's own running sum.
            let published = self.adjusted.get(sku).copied().unwrap_or(0);
            if [published, s.adjusted] != [s.available + s.reserved + s.sold; 2] {
                return Err(format!(
                    "stock of {sku}: adjustments {published} published, {} counted != \
                     available {} + reserved {} + sold {}",
                    s.adjusted, s.available, s.reserved, s.sold
                ));
            }
            if s.sold > s.adjusted {
                return Err(format!(
                    "{sku}: sold {} exceeds the {} units adjusted in",
                    s.sold, s.adjusted
                ));
            }
            let (reserved, sold) = self
                .audit
                .values()
                .filter_map(|a| a.held.get(sku))
                .fold((0, 0), |(r, s), h| (r + h.reserved, s + h.sold));
            if (reserved, sold) != (s.reserved, s.sold) {
                return Err(format!(
                    "{sku}: the orders hold {reserved} reserved / {sold} sold, the stock row \
                     says {} / {}",
                    s.reserved, s.sold
                ));
            }
        }
        for (id, a) in &self.audit {
            for (sku, h) in &a.held {
                if h.reserved < 0 || h.sold < 0 {
                    return Err(format!(
                        "order {} gave back more {sku} than it held: {h:?}",
                        label(*id)
                    ));
                }
            }
            if a.captures.len() > 1 {
                return Err(format!(
                    "order {} was charged {} times: {:?}",
                    label(*id),
                    a.captures.len(),
                    a.captures
                ));
            }
            if a.refunds.len() > a.captures.len() {
                return Err(format!(
                    "order {} was refunded more often than charged: {:?} vs {:?}",
                    label(*id),
                    a.refunds,
                    a.captures
                ));
            }
        }
        for (customer, w) in &self.payment.wallets {
            if w.balance < 0 {
                return Err(format!("wallet of {customer} went negative: {w:?}"));
            }
            let published = self.deposited.get(customer).copied().unwrap_or(0);
            if [published, w.deposited] != [w.balance + w.captured - w.refunded; 2] {
                return Err(format!(
                    "wallet of {customer}: deposits {published} published, {} counted != \
                     balance {} + captured {} - refunded {}",
                    w.deposited, w.balance, w.captured, w.refunded
                ));
            }
            let (captured, refunded) = self.audit.values().fold((0, 0), |(c, r), a| {
                (
                    c + a
                        .captures
                        .iter()
                        .filter(|x| &x.0 == customer)
                        .map(|x| x.1)
                        .sum::<i64>(),
                    r + a
                        .refunds
                        .iter()
                        .filter(|x| &x.0 == customer)
                        .map(|x| x.1)
                        .sum::<i64>(),
                )
            });
            if (captured, refunded) != (w.captured, w.refunded) {
                return Err(format!(
                    "wallet of {customer}: the orders were charged {captured} / refunded \
                     {refunded}, the wallet says {} / {}",
                    w.captured, w.refunded
                ));
            }
        }
        Ok(())
    }

    /// The contract's at-rest invariants, checked once nothing is in flight.
    pub(crate) fn check_at_rest(&self) -> Result<(), String> {
        if !self.bus.is_empty() {
            return Err(format!("{} messages still in flight", self.bus.len()));
        }
        self.check_always()?;
        let empty = Audit::default();
        for (id, o) in &self.order.orders {
            let who = label(*id);
            let audit = self.audit.get(id).unwrap_or(&empty);
            let payment = self.payment.payments.get(id);
            let reservation = self.inventory.reservations.get(id);
            let net = audit.net_charged();
            let kept = audit.captures.len() - audit.refunds.len();
            let wanted = merge_items(&o.items);
            let all_sold = wanted.iter().all(|w| {
                audit.held.get(&w.sku).copied().unwrap_or_default()
                    == Held {
                        reserved: 0,
                        sold: w.quantity,
                        ever_reserved: w.quantity,
                    }
            }) && audit.held.len() == wanted.len();
            match o.status {
                OrderStatus::Pending | OrderStatus::Reserved => {
                    return Err(format!(
                        "order {who} is still {} after its deadline passed",
                        o.status.as_str()
                    ));
                }
                OrderStatus::Confirmed => {
                    if kept != 1 || net != o.total {
                        return Err(format!(
                            "order {who} is confirmed but holds {kept} unrefunded captures \
                             worth {net} (total {}): {audit:?}",
                            o.total
                        ));
                    }
                    if payment.map(|p| p.state) != Some(PaymentState::Captured)
                        || payment.map(|p| p.amount) != Some(o.total)
                    {
                        return Err(format!(
                            "order {who} is confirmed but its payment is {payment:?}"
                        ));
                    }
                    if !all_sold {
                        return Err(format!(
                            "order {who} is confirmed but its stock is not exactly sold: \
                             wanted {wanted:?}, held {:?}",
                            audit.held
                        ));
                    }
                    if reservation.map(|r| r.state) != Some(ReservationState::Sold) {
                        return Err(format!(
                            "order {who} is confirmed but its reservation is {reservation:?}"
                        ));
                    }
                }
                OrderStatus::Rejected | OrderStatus::Cancelled => {
                    if audit.holds_stock() {
                        return Err(format!(
                            "order {who} is {} but still holds stock: {:?}",
                            o.status.as_str(),
                            audit.held
                        ));
                    }
                    if kept != 0 || net != 0 {
                        return Err(format!(
                            "order {who} is {} but keeps {kept} unrefunded capture(s) \
                             worth {net} (captures {:?}, refunds {:?})",
                            o.status.as_str(),
                            audit.captures,
                            audit.refunds
                        ));
                    }
                    if payment.map(|p| p.state) == Some(PaymentState::Captured) {
                        return Err(format!(
                            "order {who} is {} but its payment is still captured: {payment:?}",
                            o.status.as_str()
                        ));
                    }
                    if matches!(
                        reservation.map(|r| r.state),
                        Some(ReservationState::Reserved | ReservationState::Sold)
                    ) {
                        return Err(format!(
                            "order {who} is {} but its reservation is {reservation:?}",
                            o.status.as_str()
                        ));
                    }
                    let reason = o.reason.as_deref().unwrap_or("");
                    let expected: &[&str] = if o.status == OrderStatus::Rejected {
                        &["insufficient_stock"]
                    } else {
                        &["payment_failed", "timeout", "customer_request"]
                    };
                    if !expected.contains(&reason) {
                        return Err(format!(
                            "order {who} is {} with reason {reason:?}",
                            o.status.as_str()
                        ));
                    }
                }
            }
            if o.status == OrderStatus::Rejected
                && (!audit.captures.is_empty() || audit.held.values().any(|h| h.ever_reserved > 0))
            {
                return Err(format!(
                    "order {who} was rejected, yet something was taken for it \
                     (nothing to compensate, says the contract): {audit:?}"
                ));
            }
            // The converse of `confirmed ⇒ …`: money kept or stock sold means confirmed.
            if o.status != OrderStatus::Confirmed && (kept != 0 || all_sold && !wanted.is_empty()) {
                return Err(format!(
                    "order {who} is {} yet the customer paid for it or its stock is sold: \
                     {audit:?}",
                    o.status.as_str()
                ));
            }
        }
        // Per customer, the money kept is exactly what their confirmed orders cost; per
        // SKU, nothing stays reserved and what is sold is what confirmed orders bought.
        for (customer, w) in &self.payment.wallets {
            let owed: i64 = self
                .order
                .orders
                .values()
                .filter(|o| &o.customer_id == customer && o.status == OrderStatus::Confirmed)
                .map(|o| o.total)
                .sum();
            if w.captured - w.refunded != owed {
                return Err(format!(
                    "customer {customer} paid {} net, their confirmed orders cost {owed}",
                    w.captured - w.refunded
                ));
            }
        }
        for (sku, s) in &self.inventory.stock {
            let bought: i64 = self
                .order
                .orders
                .values()
                .filter(|o| o.status == OrderStatus::Confirmed)
                .flat_map(|o| merge_items(&o.items))
                .filter(|i| &i.sku == sku)
                .map(|i| i.quantity)
                .sum();
            if s.reserved != 0 || s.sold != bought {
                return Err(format!(
                    "{sku} at rest: {s:?}, but confirmed orders bought {bought} and nothing \
                     should stay reserved"
                ));
            }
        }
        // Money and stock only ever move for orders order-svc knows.
        for id in self.audit.keys() {
            if !self.order.orders.contains_key(id) {
                return Err(format!("stock or money moved for unknown order {id}"));
            }
        }
        Ok(())
    }

    /// How each order ended, at rest: its status (a cancellation with its reason) and
    /// whether a capture of it was refunded, after its confirmation or before.
    pub(crate) fn endings(&self) -> Vec<Path> {
        let mut out = Vec::new();
        for (id, o) in &self.order.orders {
            let reason = match o.status {
                OrderStatus::Cancelled => o.reason.clone(),
                _ => None,
            };
            out.push(Path::Ended {
                status: o.status.as_str(),
                reason,
            });
            if self.audit.get(id).is_some_and(|a| !a.refunds.is_empty()) {
                out.push(Path::Refunded {
                    after_confirmation: self.confirmed_once.contains(id),
                });
            }
        }
        out
    }

    /// Messages the services themselves produced that a consumer dead-lettered: each is a
    /// saga step that never happened.
    pub(crate) fn dead_lettered_saga_messages(&self) -> Vec<&DeadLetter> {
        self.dead_letters
            .iter()
            .filter(|d| d.producer != OPERATOR)
            .collect()
    }

    // ---- reporting ---------------------------------------------------------------------

    /// The run's history, restricted to `order` when given.
    pub(crate) fn history(&self, order: Option<Uuid>) -> String {
        let mut out = String::new();
        for n in &self.notes {
            if order.is_some() && n.order() != order && !matches!(n, Note::Quiescent) {
                continue;
            }
            let about = |o: &Option<Uuid>| o.map_or_else(String::new, |o| format!(" {}", label(o)));
            let _ = match n {
                Note::Published {
                    seq,
                    ty,
                    order,
                    copy,
                    decoded,
                } => writeln!(
                    out,
                    "  publish #{seq} {}{}{}{}",
                    ty.name(),
                    about(order),
                    if *copy {
                        " (repeat, new message id)"
                    } else {
                        ""
                    },
                    match decoded {
                        Ok(()) => String::new(),
                        Err(code) => format!(" [undecodable: {code}]"),
                    }
                ),
                Note::Delivered {
                    seq,
                    ty,
                    to,
                    order,
                    outcome,
                    again,
                } => writeln!(
                    out,
                    "  deliver #{seq} {}{} -> {}{}: {outcome:?}",
                    ty.name(),
                    about(order),
                    to.name(),
                    if *again {
                        " (same message id again)"
                    } else {
                        ""
                    },
                ),
                Note::Placed { order } => writeln!(out, "  POST /orders -> {}", label(*order)),
                Note::Cancel { order, answer } => {
                    writeln!(out, "  POST /orders/{}/cancel: {answer:?}", label(*order))
                }
                Note::Deadline { order, answer } => {
                    writeln!(out, "  deadline of {} passes: {answer:?}", label(*order))
                }
                Note::Quiescent => writeln!(out, "  -- nothing in flight --"),
            };
        }
        out
    }

    /// Everything the services hold about `order`.
    pub(crate) fn describe(&self, order: Uuid) -> String {
        format!(
            "order {}: {:?}\n  reservation: {:?}\n  payment: {:?}\n  audit: {:?}\n",
            label(order),
            self.order.orders.get(&order),
            self.inventory.reservations.get(&order),
            self.payment.payments.get(&order),
            self.audit.get(&order),
        )
    }

    /// A readable account of a failed run: the whole final state, then the history of the
    /// order a message names (or the whole history).
    pub(crate) fn explain(&self, failure: &str) -> String {
        let mut out = format!("{failure}\n\nfinal state:\n");
        for id in self.order.orders.keys() {
            out.push_str(&self.describe(*id));
        }
        let _ = writeln!(out, "  stock: {:?}", self.inventory.stock);
        let _ = writeln!(out, "  wallets: {:?}", self.payment.wallets);
        if !self.dead_letters.is_empty() {
            let _ = writeln!(out, "  dead letters: {:?}", self.dead_letters);
        }
        let named = self
            .order
            .orders
            .keys()
            .find(|id| failure.contains(&format!("order {} ", label(**id))));
        match named {
            Some(id) => {
                let _ = write!(
                    out,
                    "\nhistory of {}:\n{}",
                    label(*id),
                    self.history(Some(*id))
                );
            }
            None => {
                let _ = write!(out, "\nhistory:\n{}", self.history(None));
            }
        }
        out
    }
}
