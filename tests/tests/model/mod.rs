//! An in-memory model of the three services and the broker between them.
//!
//! Every decision is taken by the services' own pure functions (`decide`, `merge_items`,
//! `plan_reservation`, `can_charge`, `http::validate`), every stock movement uses
//! inventory's own `Movement` constants, routing follows the queue bindings of each
//! service's own `topology()`, and every message goes through the real envelope encoding and `decode_body`, so
//! a payload the consumers would refuse is dead-lettered here as it would be there.
//! What the model re-implements is only the storage effects of the handlers (the SQL in
//! each `store.rs`), kept as close to those statements as possible.
//!
//! Next to the services' own rows the model keeps an audit of what really happened to
//! each order (every capture, every refund, every unit moved between stock buckets), so
//! the invariants are checked against the facts rather than against the services'
//! opinion of them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::OnceLock;

use events::catalog::{
    FundsDeposited, OrderCancelled, OrderConfirmed, OrderCreated, OrderItem, PaymentDone,
    PaymentFailed, PaymentFailureReason, PaymentRefunded, StockAdjusted, StockItem, StockRejected,
    StockReleased, StockReserved,
};
use events::{Event, EventType};
use inventory_svc::saga::{self as inventory_saga, InventoryInput, ReservationState};
use inventory_svc::store::{Movement, RELEASE_RESERVED, RESERVE, RETURN_SOLD, SELL};
use messaging::envelope::{Envelope, decode_body};
use order_svc::http::PlaceOrder;
use order_svc::saga::{self as order_saga, Decision, OrderEmit, OrderInput, OrderStatus};
use payment_svc::saga::{self as payment_saga, PaymentInput, PaymentState, WalletView};
use uuid::Uuid;

/// The producer name operators' events carry.
pub const OPERATOR: &str = "sagactl";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    Order,
    Inventory,
    Payment,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Order, Service::Inventory, Service::Payment];

    pub fn name(self) -> &'static str {
        match self {
            Service::Order => order_svc::SERVICE,
            Service::Inventory => inventory_svc::SERVICE,
            Service::Payment => payment_svc::SERVICE,
        }
    }

    /// What the service's queue is bound to: the service's own topology.
    pub fn consumes(self) -> &'static [EventType] {
        static ROUTES: OnceLock<[Vec<EventType>; 3]> = OnceLock::new();
        let routes = ROUTES.get_or_init(|| {
            [
                order_svc::topology().consumes,
                inventory_svc::topology().consumes,
                payment_svc::topology().consumes,
            ]
        });
        &routes[self as usize]
    }
}

/// A message on the broker, with the queues it still has to reach.
#[derive(Debug, Clone)]
pub struct Message {
    /// Sequence number, for readable traces only.
    pub seq: u32,
    pub id: Uuid,
    pub event: Event,
    /// What `decode_body` made of the published bytes: `Err(code)` means every consumer
    /// dead-letters it.
    pub decoded: Result<(), &'static str>,
    pub producer: &'static str,
    pub to: Vec<Service>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub customer_id: String,
    pub currency: String,
    pub items: Vec<OrderItem>,
    pub total: i64,
    pub status: OrderStatus,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stock {
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    pub adjusted: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub state: ReservationState,
    pub items: Vec<StockItem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub payment_id: Option<Uuid>,
    pub customer_id: String,
    pub amount: i64,
    pub currency: String,
    pub state: PaymentState,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wallet {
    pub currency: String,
    pub balance: i64,
    pub deposited: i64,
    pub captured: i64,
    pub refunded: i64,
}

/// order-svc's database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderDb {
    pub orders: BTreeMap<Uuid, Order>,
    pub inbox: BTreeSet<Uuid>,
}

/// inventory-svc's database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InventoryDb {
    pub stock: BTreeMap<String, Stock>,
    pub reservations: BTreeMap<Uuid, Reservation>,
    pub inbox: BTreeSet<Uuid>,
}

/// payment-svc's database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaymentDb {
    pub wallets: BTreeMap<String, Wallet>,
    pub payments: BTreeMap<Uuid, Payment>,
    pub inbox: BTreeSet<Uuid>,
}

/// Units of one SKU held for one order, as moved (not as recorded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    pub reserved: i64,
    pub sold: i64,
    /// Units ever reserved for the order.
    pub ever_reserved: i64,
}

/// What really happened to an order's money and stock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    /// (customer, amount) of every debit taken for the order.
    pub captures: Vec<(String, i64)>,
    /// (customer, amount) of every refund credited for the order.
    pub refunds: Vec<(String, i64)>,
    pub held: BTreeMap<String, Held>,
}

impl Audit {
    pub fn net_charged(&self) -> i64 {
        self.captures.iter().map(|c| c.1).sum::<i64>()
            - self.refunds.iter().map(|r| r.1).sum::<i64>()
    }

    pub fn holds_stock(&self) -> bool {
        self.held.values().any(|h| h.reserved != 0 || h.sold != 0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Handled,
    Duplicate,
    DeadLettered(&'static str),
}

/// One line of the run's history, formatted only when a case fails.
#[derive(Debug, Clone)]
pub enum Note {
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
        decision: Decision,
    },
    Deadline {
        order: Uuid,
        decision: Decision,
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
pub struct DeadLetter {
    pub seq: u32,
    pub to: Service,
    pub ty: EventType,
    pub producer: &'static str,
    pub code: &'static str,
}

/// The three services, the broker, and the audit.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub order: OrderDb,
    pub inventory: InventoryDb,
    pub payment: PaymentDb,
    pub audit: BTreeMap<Uuid, Audit>,
    pub bus: Vec<Message>,
    /// Every event about an order ever published, for repeats under a new message id.
    pub about_orders: Vec<(Event, &'static str)>,
    /// Every (queue, message) delivered and acknowledged, for late redeliveries.
    pub delivered: Vec<(Service, Message)>,
    pub dead_letters: Vec<DeadLetter>,
    pub refused_cancels: usize,
    pub notes: Vec<Note>,
    next_seq: u32,
    next_payment: u128,
}

/// Everything a duplicate delivery must leave untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    order: OrderDb,
    inventory: InventoryDb,
    payment: PaymentDb,
    audit: BTreeMap<Uuid, Audit>,
    in_flight: usize,
}

/// A short, stable name for the ids the scenarios make (`Uuid::from_u128(n)`).
pub fn label(id: Uuid) -> String {
    let n = id.as_u128();
    if n < 1 << 32 {
        format!("o{n}")
    } else {
        id.to_string()
    }
}

pub fn order_id(n: usize) -> Uuid {
    Uuid::from_u128(n as u128 + 1)
}

impl World {
    pub fn new() -> Self {
        World::default()
    }

    // ---- the broker ----------------------------------------------------------------

    /// Publishes `event` as `producer` would: wrapped in an envelope, encoded, decoded by
    /// the consumers' own decoder, routed to every queue bound to its type.
    pub fn publish(&mut self, event: Event, producer: &'static str, copy: bool) {
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
        });
    }

    /// Publishes again an event about an order published before, under a new message id.
    pub fn republish(&mut self, pick: usize) {
        if self.about_orders.is_empty() {
            return;
        }
        let (event, producer) = self.about_orders[pick % self.about_orders.len()].clone();
        self.publish(event, producer, true);
    }

    /// Delivers in-flight message `pick` to one of the queues it has still to reach;
    /// with `twice`, delivers it a second time (same message id) and checks that the
    /// second time changed nothing.
    pub fn deliver(&mut self, pick: usize, recipient: usize, twice: bool) -> Result<(), String> {
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
    pub fn redeliver(&mut self, pick: usize) -> Result<(), String> {
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
    /// All of it is one transaction: a handler error leaves nothing behind.
    fn receive(&mut self, to: Service, msg: &Message, again: bool) -> Outcome {
        let ty = msg.event.event_type();
        let outcome = if let Err(code) = msg.decoded {
            Outcome::DeadLettered(code)
        } else if self.inbox(to).contains(&msg.id) {
            Outcome::Duplicate
        } else {
            let handled = match to {
                Service::Order => self.order_handle(&msg.event),
                Service::Inventory => self.inventory_handle(&msg.event),
                Service::Payment => self.payment_handle(&msg.event),
            };
            match handled {
                Ok(emitted) => {
                    self.inbox_mut(to).insert(msg.id);
                    for e in emitted {
                        self.publish(e, to.name(), false);
                    }
                    Outcome::Handled
                }
                Err(code) => Outcome::DeadLettered(code),
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

    fn inbox(&self, s: Service) -> &BTreeSet<Uuid> {
        match s {
            Service::Order => &self.order.inbox,
            Service::Inventory => &self.inventory.inbox,
            Service::Payment => &self.payment.inbox,
        }
    }

    fn inbox_mut(&mut self, s: Service) -> &mut BTreeSet<Uuid> {
        match s {
            Service::Order => &mut self.order.inbox,
            Service::Inventory => &mut self.inventory.inbox,
            Service::Payment => &mut self.payment.inbox,
        }
    }

    // ---- operators -----------------------------------------------------------------

    pub fn adjust_stock(&mut self, sku: &str, delta: i64) {
        self.publish(
            Event::StockAdjusted(StockAdjusted {
                sku: sku.to_owned(),
                delta,
            }),
            OPERATOR,
            false,
        );
    }

    pub fn deposit(&mut self, customer_id: &str, amount: i64, currency: &str) {
        self.publish(
            Event::FundsDeposited(FundsDeposited {
                customer_id: customer_id.to_owned(),
                amount,
                currency: currency.to_owned(),
            }),
            OPERATOR,
            false,
        );
    }

    // ---- order-svc -------------------------------------------------------------------

    /// `POST /orders`: `false` when the request is refused (400).
    pub fn place_order(&mut self, order_id: Uuid, req: PlaceOrder) -> bool {
        let Ok(total) = order_svc::http::validate(&req) else {
            return false;
        };
        assert!(
            !self.order.orders.contains_key(&order_id),
            "order {} placed twice",
            label(order_id)
        );
        self.order.orders.insert(
            order_id,
            Order {
                customer_id: req.customer_id.clone(),
                currency: req.currency.clone(),
                items: req.items.clone(),
                total,
                status: OrderStatus::Pending,
                reason: None,
            },
        );
        self.notes.push(Note::Placed { order: order_id });
        self.publish(
            Event::OrderCreated(OrderCreated {
                order_id,
                customer_id: req.customer_id,
                items: req.items,
                total,
                currency: req.currency,
            }),
            order_svc::SERVICE,
            false,
        );
        true
    }

    /// `POST /orders/{id}/cancel`; `None` for an unknown order (404).
    pub fn request_cancel(&mut self, order_id: Uuid) -> Option<Decision> {
        self.order.orders.get(&order_id)?;
        let (decision, emitted) = self.order_apply(order_id, OrderInput::CancelRequested, None);
        if decision == Decision::Refuse {
            self.refused_cancels += 1;
        }
        self.notes.push(Note::Cancel {
            order: order_id,
            decision,
        });
        for e in emitted {
            self.publish(e, order_svc::SERVICE, false);
        }
        Some(decision)
    }

    /// The deadline sweep reaching the order: it only takes pending and reserved orders.
    pub fn deadline_passes(&mut self, order_id: Uuid) {
        let Some(order) = self.order.orders.get(&order_id) else {
            return;
        };
        if !matches!(order.status, OrderStatus::Pending | OrderStatus::Reserved) {
            return;
        }
        let (decision, emitted) = self.order_apply(order_id, OrderInput::DeadlinePassed, None);
        self.notes.push(Note::Deadline {
            order: order_id,
            decision,
        });
        for e in emitted {
            self.publish(e, order_svc::SERVICE, false);
        }
    }

    /// Every order the sweep would find once all deadlines have passed.
    pub fn expire_all_open_orders(&mut self) {
        let open: Vec<Uuid> = self.open_orders();
        for id in open {
            self.deadline_passes(id);
        }
    }

    pub fn open_orders(&self) -> Vec<Uuid> {
        self.order
            .orders
            .iter()
            .filter(|(_, o)| matches!(o.status, OrderStatus::Pending | OrderStatus::Reserved))
            .map(|(id, _)| *id)
            .collect()
    }

    fn order_handle(&mut self, event: &Event) -> Result<Vec<Event>, &'static str> {
        let (order_id, input, rejection) = match event {
            Event::StockReserved(e) => (e.order_id, OrderInput::StockReserved, None),
            Event::StockRejected(e) => (
                e.order_id,
                OrderInput::StockRejected,
                Some(e.reason.as_str()),
            ),
            Event::PaymentDone(e) => (e.order_id, OrderInput::PaymentDone, None),
            Event::PaymentFailed(e) => (e.order_id, OrderInput::PaymentFailed, None),
            Event::StockReleased(e) => (e.order_id, OrderInput::StockReleased, None),
            Event::PaymentRefunded(e) => (e.order_id, OrderInput::PaymentRefunded, None),
            _ => return Err("unexpected_event"),
        };
        if !self.order.orders.contains_key(&order_id) {
            return Err("unknown_order");
        }
        let rejection = rejection.map(str::to_owned);
        Ok(self.order_apply(order_id, input, rejection.as_deref()).1)
    }

    /// `handlers::apply`: decide, move, emit.
    fn order_apply(
        &mut self,
        order_id: Uuid,
        input: OrderInput,
        rejection: Option<&str>,
    ) -> (Decision, Vec<Event>) {
        let order = self
            .order
            .orders
            .get_mut(&order_id)
            .expect("callers check the order exists");
        let decision = order_saga::decide(order.status, input);
        let mut emitted = Vec::new();
        if let Decision::Move { to, emit } = decision {
            let reason = match (to, emit) {
                (_, Some(OrderEmit::Cancelled(r))) => Some(r.as_str()),
                (OrderStatus::Rejected, _) => Some(rejection.unwrap_or("insufficient_stock")),
                _ => None,
            };
            order.status = to;
            if let Some(r) = reason {
                order.reason = Some(r.to_owned());
            }
            match emit {
                Some(OrderEmit::Confirmed) => {
                    emitted.push(Event::OrderConfirmed(OrderConfirmed { order_id }))
                }
                Some(OrderEmit::Cancelled(reason)) => {
                    emitted.push(Event::OrderCancelled(OrderCancelled { order_id, reason }))
                }
                None => {}
            }
        }
        (decision, emitted)
    }

    // ---- inventory-svc ---------------------------------------------------------------

    fn inventory_handle(&mut self, event: &Event) -> Result<Vec<Event>, &'static str> {
        let (order_id, input) = match event {
            Event::StockAdjusted(e) => return self.inventory_adjust(e).map(|()| Vec::new()),
            Event::OrderCreated(e) => (e.order_id, InventoryInput::OrderCreated),
            Event::OrderConfirmed(e) => (e.order_id, InventoryInput::OrderConfirmed),
            Event::OrderCancelled(e) => (e.order_id, InventoryInput::OrderCancelled),
            _ => return Err("unexpected_event"),
        };
        let (state, held) = match self.inventory.reservations.get(&order_id) {
            None => (ReservationState::None, Vec::new()),
            Some(r) => (r.state, r.items.clone()),
        };
        let mut emitted = Vec::new();
        match inventory_saga::decide(state, input) {
            inventory_saga::Step::TryReserve => {
                if let Event::OrderCreated(order) = event {
                    emitted.push(self.inventory_try_reserve(order));
                }
            }
            inventory_saga::Step::Sell => {
                self.move_stock(order_id, &held, SELL);
                self.set_reservation(order_id, ReservationState::Sold, held);
            }
            inventory_saga::Step::ReleaseReserved => {
                emitted.push(self.inventory_release(order_id, held, RELEASE_RESERVED))
            }
            inventory_saga::Step::ReturnSold => {
                emitted.push(self.inventory_release(order_id, held, RETURN_SOLD))
            }
            inventory_saga::Step::ReleaseNothing => {
                emitted.push(self.inventory_release(order_id, Vec::new(), RELEASE_RESERVED))
            }
            inventory_saga::Step::Ignore => {}
        }
        Ok(emitted)
    }

    fn inventory_try_reserve(&mut self, order: &OrderCreated) -> Event {
        let wanted = inventory_saga::merge_items(&order.items);
        let stock = &self.inventory.stock;
        let available = |sku: &str| stock.get(sku).map_or(0, |s| s.available);
        match inventory_saga::plan_reservation(&wanted, available) {
            Ok(()) => {
                self.move_stock(order.order_id, &wanted, RESERVE);
                self.set_reservation(order.order_id, ReservationState::Reserved, wanted.clone());
                Event::StockReserved(StockReserved {
                    order_id: order.order_id,
                    customer_id: order.customer_id.clone(),
                    items: wanted,
                    total: order.total,
                    currency: order.currency.clone(),
                })
            }
            Err(unavailable) => {
                self.set_reservation(order.order_id, ReservationState::Rejected, wanted);
                Event::StockRejected(StockRejected {
                    order_id: order.order_id,
                    reason: "insufficient_stock".to_owned(),
                    unavailable,
                })
            }
        }
    }

    fn inventory_release(&mut self, order_id: Uuid, items: Vec<StockItem>, m: Movement) -> Event {
        self.move_stock(order_id, &items, m);
        self.set_reservation(order_id, ReservationState::Released, items.clone());
        Event::StockReleased(StockReleased { order_id, items })
    }

    fn set_reservation(&mut self, order_id: Uuid, state: ReservationState, items: Vec<StockItem>) {
        self.inventory
            .reservations
            .insert(order_id, Reservation { state, items });
    }

    /// `store::move_stock`: an UPDATE, so a SKU without a row moves nothing.
    fn move_stock(&mut self, order_id: Uuid, items: &[StockItem], m: Movement) {
        for item in items {
            let Some(row) = self.inventory.stock.get_mut(&item.sku) else {
                continue;
            };
            row.available += item.quantity * m.available;
            row.reserved += item.quantity * m.reserved;
            row.sold += item.quantity * m.sold;
            let held = self
                .audit
                .entry(order_id)
                .or_default()
                .held
                .entry(item.sku.clone())
                .or_default();
            held.reserved += item.quantity * m.reserved;
            held.sold += item.quantity * m.sold;
            held.ever_reserved += item.quantity * m.reserved.max(0);
        }
    }

    /// `store::adjust`.
    fn inventory_adjust(&mut self, e: &StockAdjusted) -> Result<(), &'static str> {
        if e.delta >= 0 {
            let row = self.inventory.stock.entry(e.sku.clone()).or_default();
            row.available += e.delta;
            row.adjusted += e.delta;
            return Ok(());
        }
        match self.inventory.stock.get_mut(&e.sku) {
            Some(row) if row.available + e.delta >= 0 => {
                row.available += e.delta;
                row.adjusted += e.delta;
                Ok(())
            }
            _ => Err("negative_stock"),
        }
    }

    // ---- payment-svc -----------------------------------------------------------------

    fn payment_handle(&mut self, event: &Event) -> Result<Vec<Event>, &'static str> {
        let (order_id, input, reserved) = match event {
            Event::FundsDeposited(e) => return self.payment_deposit(e).map(|()| Vec::new()),
            Event::StockReserved(e) => (e.order_id, PaymentInput::StockReserved, Some(e)),
            Event::OrderCancelled(e) => (e.order_id, PaymentInput::OrderCancelled, None),
            _ => return Err("unexpected_event"),
        };
        let payment = self.payment.payments.get(&order_id).cloned();
        let state = payment.as_ref().map_or(PaymentState::None, |p| p.state);
        let mut emitted = Vec::new();
        match (payment_saga::decide(state, input), reserved, payment) {
            (payment_saga::Step::TryCharge, Some(r), _) => emitted.push(self.payment_charge(r)),
            (payment_saga::Step::RefuseCancelled, Some(r), _) => {
                emitted.push(self.payment_fail(r, PaymentFailureReason::OrderCancelled))
            }
            (payment_saga::Step::Refund, _, Some(p)) => {
                emitted.push(self.payment_refund(order_id, &p))
            }
            (payment_saga::Step::Void, _, _) => self.upsert_payment(
                order_id,
                Payment {
                    payment_id: None,
                    customer_id: String::new(),
                    amount: 0,
                    currency: String::new(),
                    state: PaymentState::Voided,
                    reason: Some("order_cancelled".into()),
                },
            ),
            _ => {}
        }
        Ok(emitted)
    }

    fn payment_charge(&mut self, r: &StockReserved) -> Event {
        let view = self
            .payment
            .wallets
            .get(&r.customer_id)
            .map(|w| WalletView {
                currency: w.currency.clone(),
                balance: w.balance,
            });
        if let Err(reason) = payment_saga::can_charge(view.as_ref(), r.total, &r.currency) {
            return self.payment_fail(r, reason);
        }
        self.next_payment += 1;
        let payment_id = Uuid::from_u128((1 << 64) + self.next_payment);
        if let Some(w) = self.payment.wallets.get_mut(&r.customer_id) {
            w.balance -= r.total;
            w.captured += r.total;
            self.audit
                .entry(r.order_id)
                .or_default()
                .captures
                .push((r.customer_id.clone(), r.total));
        }
        self.upsert_payment(
            r.order_id,
            Payment {
                payment_id: Some(payment_id),
                customer_id: r.customer_id.clone(),
                amount: r.total,
                currency: r.currency.clone(),
                state: PaymentState::Captured,
                reason: None,
            },
        );
        Event::PaymentDone(PaymentDone {
            order_id: r.order_id,
            payment_id,
            customer_id: r.customer_id.clone(),
            amount: r.total,
            currency: r.currency.clone(),
        })
    }

    fn payment_fail(&mut self, r: &StockReserved, reason: PaymentFailureReason) -> Event {
        let reason_text = serde_json::to_value(reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned));
        self.upsert_payment(
            r.order_id,
            Payment {
                payment_id: None,
                customer_id: r.customer_id.clone(),
                amount: r.total,
                currency: r.currency.clone(),
                state: PaymentState::Failed,
                reason: reason_text,
            },
        );
        Event::PaymentFailed(PaymentFailed {
            order_id: r.order_id,
            customer_id: r.customer_id.clone(),
            amount: r.total,
            reason,
        })
    }

    fn payment_refund(&mut self, order_id: Uuid, p: &Payment) -> Event {
        if let Some(w) = self.payment.wallets.get_mut(&p.customer_id) {
            w.balance += p.amount;
            w.refunded += p.amount;
            self.audit
                .entry(order_id)
                .or_default()
                .refunds
                .push((p.customer_id.clone(), p.amount));
        }
        self.upsert_payment(
            order_id,
            Payment {
                state: PaymentState::Refunded,
                reason: Some("order_cancelled".into()),
                ..p.clone()
            },
        );
        Event::PaymentRefunded(PaymentRefunded {
            order_id,
            payment_id: p.payment_id.unwrap_or_default(),
            amount: p.amount,
            currency: p.currency.clone(),
        })
    }

    /// `store::upsert_payment`: the payment id, once set, is kept.
    fn upsert_payment(&mut self, order_id: Uuid, mut p: Payment) {
        if let Some(old) = self.payment.payments.get(&order_id) {
            p.payment_id = p.payment_id.or(old.payment_id);
        }
        self.payment.payments.insert(order_id, p);
    }

    /// `store::deposit`: refused when the wallet exists in another currency.
    fn payment_deposit(&mut self, e: &FundsDeposited) -> Result<(), &'static str> {
        let w = self
            .payment
            .wallets
            .entry(e.customer_id.clone())
            .or_insert_with(|| Wallet {
                currency: e.currency.clone(),
                balance: 0,
                deposited: 0,
                captured: 0,
                refunded: 0,
            });
        if w.currency != e.currency {
            return Err("currency_mismatch");
        }
        w.balance += e.amount;
        w.deposited += e.amount;
        Ok(())
    }

    // ---- invariants ------------------------------------------------------------------

    /// What must hold after every single step, messages in flight or not: each handler
    /// is one transaction, so the books always balance.
    pub fn check_always(&self) -> Result<(), String> {
        for (sku, s) in &self.inventory.stock {
            if s.available < 0 || s.reserved < 0 || s.sold < 0 {
                return Err(format!("stock of {sku} went negative: {s:?}"));
            }
            if s.adjusted != s.available + s.reserved + s.sold {
                return Err(format!(
                    "stock of {sku}: adjustments {} != available {} + reserved {} + sold {}",
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
            if w.deposited != w.balance + w.captured - w.refunded {
                return Err(format!(
                    "wallet of {customer}: deposits {} != balance {} + captured {} - refunded {}",
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
    pub fn check_at_rest(&self) -> Result<(), String> {
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
            let wanted = inventory_saga::merge_items(&o.items);
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
                .flat_map(|o| inventory_saga::merge_items(&o.items))
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

    /// Messages the services themselves produced that a consumer dead-lettered: each is a
    /// saga step that never happened.
    pub fn dead_lettered_saga_messages(&self) -> Vec<&DeadLetter> {
        self.dead_letters
            .iter()
            .filter(|d| d.producer != OPERATOR)
            .collect()
    }

    // ---- reporting ---------------------------------------------------------------------

    /// The run's history, restricted to `order` when given.
    pub fn history(&self, order: Option<Uuid>) -> String {
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
                Note::Cancel { order, decision } => {
                    writeln!(out, "  POST /orders/{}/cancel: {decision:?}", label(*order))
                }
                Note::Deadline { order, decision } => {
                    writeln!(out, "  deadline of {} passes: {decision:?}", label(*order))
                }
                Note::Quiescent => writeln!(out, "  -- nothing in flight --"),
            };
        }
        out
    }

    /// Everything the services hold about `order`.
    pub fn describe(&self, order: Uuid) -> String {
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
    pub fn explain(&self, failure: &str) -> String {
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
