//! Property tests of the saga's choreography, without a broker or a database.
//!
//! `model` runs the three services in memory on their own `decide` functions and plan
//! application, and delivers their messages in whatever order a generated schedule picks: late, reordered,
//! delivered twice under the same message id, repeated under a new one, with customers
//! cancelling and deadlines passing at any moment. Once nothing is in flight, every
//! at-rest invariant of the contract ("The choreography") must hold.
//!
//! The generators publish every operator event of the catalog (`operator_event`) and the
//! services answer with the rest. Each property gathers what its cases reached and, at
//! the end, asserts `coverage`: every input each service consumes handled, every event
//! and reason published, every ending of an order, refunds, late events.
//!
//! The two properties run 10,500 generated interleavings between them by default;
//! `PROPTEST_CASES` overrides the number of cases of every property here.

mod coverage;
mod model;
mod services;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt::Debug;

use coverage::{Path, assert_reached, every_path};
use events::catalog::{CancelReason, FundsDeposited, OrderItem, StockAdjusted};
use events::{Event, EventType};
use model::{World, label, order_id};
use order_svc::saga::OrderStatus;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestError, TestRunner};
use services::Service;

/// The last SKU is never stocked, the last customer never deposits.
const SKUS: [&str; 5] = ["APPLE", "BREAD", "CHEESE", "DATES", "NEVER-STOCKED"];
const CUSTOMERS: [&str; 5] = ["ada", "bob", "cyd", "dee", "nobody"];
/// Most steps one run may take before it counts as never settling.
const MAX_STEPS: usize = 100_000;

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---- scenarios ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct OrderSpec {
    customer: String,
    currency: &'static str,
    /// (sku, quantity, unit price)
    items: Vec<(String, i64, i64)>,
}

impl OrderSpec {
    /// `POST /orders` of this order as `id`: `false` when it is refused.
    fn place(&self, world: &mut World, id: uuid::Uuid) -> bool {
        let items = self
            .items
            .iter()
            .map(|(sku, quantity, unit_price)| OrderItem {
                sku: sku.clone(),
                quantity: *quantity,
                unit_price: *unit_price,
            })
            .collect();
        world.place_order(id, &self.customer, self.currency, items)
    }
}

/// One step of a schedule.
#[derive(Debug, Clone)]
enum Op {
    /// Deliver in-flight message `pick` to one of its queues (`recipient`); `twice`:
    /// deliver it again with the same message id right after.
    Deliver {
        pick: usize,
        recipient: usize,
        twice: bool,
    },
    /// Deliver again, later, a message a queue already received (same message id).
    Redeliver { pick: usize },
    /// Publish again an event about an order, under a new message id.
    Repeat { pick: usize },
    /// `POST /orders` for the next order of the scenario.
    Place,
    /// `POST /orders/{id}/cancel`.
    Cancel { order: usize },
    /// The order's deadline passes (the sweep takes it if still pending/reserved).
    Deadline { order: usize },
}

#[derive(Debug, Clone)]
struct Scenario {
    /// The operators' events, published at the start: opening stock and wallets, then
    /// more of every operator type.
    operator: Vec<Event>,
    /// Whether stock and money are in place before the first order; otherwise the
    /// operators' events race the orders.
    setup_first: bool,
    orders: Vec<OrderSpec>,
    ops: Vec<Op>,
    /// Drives the deliveries left once `ops` runs out.
    drain_seed: u64,
}

fn currency() -> impl Strategy<Value = &'static str> {
    prop_oneof![6 => Just("EUR"), 1 => Just("USD")]
}

fn order_spec() -> impl Strategy<Value = OrderSpec> {
    let sku = prop_oneof![12 => 0..4usize, 1 => Just(4usize)].prop_map(|i| SKUS[i].to_owned());
    let customer = prop_oneof![8 => 0..4usize, 1 => Just(4usize)];
    (
        customer,
        prop_oneof![9 => Just("EUR"), 1 => Just("USD")],
        prop::collection::vec((sku, 1..=4i64, 0..=15i64), 1..=3),
    )
        .prop_map(|(c, currency, items)| OrderSpec {
            customer: CUSTOMERS[c].to_owned(),
            currency,
            items,
        })
}

fn op(with_commands: bool) -> BoxedStrategy<Op> {
    let deliver = (any::<usize>(), any::<usize>(), prop::bool::weighted(0.12)).prop_map(
        |(pick, recipient, twice)| Op::Deliver {
            pick,
            recipient,
            twice,
        },
    );
    let repeat = any::<usize>().prop_map(|pick| Op::Repeat { pick });
    let redeliver = any::<usize>().prop_map(|pick| Op::Redeliver { pick });
    if with_commands {
        prop_oneof![
            28 => deliver,
            2 => redeliver,
            2 => repeat,
            6 => Just(Op::Place),
            2 => (0..12usize).prop_map(|order| Op::Cancel { order }),
            2 => (0..12usize).prop_map(|order| Op::Deadline { order }),
        ]
        .boxed()
    } else {
        prop_oneof![28 => deliver, 2 => redeliver, 2 => repeat, 6 => Just(Op::Place)].boxed()
    }
}

fn adjustment(sku: &str, delta: i64) -> Event {
    Event::StockAdjusted(StockAdjusted {
        sku: sku.to_owned(),
        delta,
    })
}

fn deposit(customer: &str, amount: i64, currency: &str) -> Event {
    Event::FundsDeposited(FundsDeposited {
        customer_id: customer.to_owned(),
        amount,
        currency: currency.to_owned(),
    })
}

/// The event types operators publish: the catalog's, by their producer.
fn operator_types() -> Vec<EventType> {
    EventType::ALL
        .into_iter()
        .filter(|t| t.producer() == EventType::OPERATOR)
        .collect()
}

/// Operator events of type `t` on the scenario's SKUs and customers, some of which the
/// services refuse. Every operator type of the catalog needs its strategy here.
fn operator_event(t: EventType) -> BoxedStrategy<Event> {
    match t {
        // Some would make the stock negative and are refused.
        EventType::StockAdjusted => (0..4usize, prop_oneof![3 => 1..=8i64, 2 => -6..=-1i64])
            .prop_map(|(s, d)| adjustment(SKUS[s], d))
            .boxed(),
        // Some are in another currency than the wallet's and are refused.
        EventType::FundsDeposited => (0..4usize, 1..=40i64, currency())
            .prop_map(|(c, a, cur)| deposit(CUSTOMERS[c], a, cur))
            .boxed(),
        other => panic!(
            "{other} is an operator event, but the property tests generate none: give it a \
             strategy in `operator_event` (tests/tests/checks/saga_properties.rs)"
        ),
    }
}

fn scenario() -> impl Strategy<Value = Scenario> {
    // Opening stock of the four stocked SKUs and one wallet each for most of the first
    // four customers, then a few more events of every operator type.
    let opening = prop::array::uniform4(prop_oneof![1 => Just(0i64), 6 => 1..=30i64]);
    let wallets = prop::array::uniform4(prop::option::weighted(0.8, (10..=120i64, currency())));
    let more = prop::strategy::Union::new(operator_types().into_iter().map(operator_event));
    (
        (opening, wallets, prop::collection::vec(more, 0..=7)),
        prop::collection::vec(order_spec(), 1..=12),
        prop::collection::vec(op(true), 0..=200),
        prop::bool::weighted(0.7),
        any::<u64>(),
    )
        .prop_map(
            |((opening, wallets, more), orders, ops, setup_first, drain_seed)| {
                let stock = (0..4)
                    .filter(|&i| opening[i] > 0)
                    .map(|i| adjustment(SKUS[i], opening[i]));
                let money =
                    (0..4).filter_map(|i| wallets[i].map(|(a, cur)| deposit(CUSTOMERS[i], a, cur)));
                Scenario {
                    operator: stock.chain(money).chain(more).collect(),
                    setup_first,
                    orders,
                    ops,
                    drain_seed,
                }
            },
        )
}

// ---- running a scenario ----------------------------------------------------------------

/// xorshift64*: the deliveries after the schedule, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 16) as usize
    }
}

/// A failed run, with its account.
fn fail(world: &World, failure: String) -> TestCaseError {
    TestCaseError::fail(world.explain(&failure))
}

struct Runner<'a> {
    world: World,
    orders: &'a [OrderSpec],
    placed: usize,
    steps: usize,
}

impl<'a> Runner<'a> {
    fn new(orders: &'a [OrderSpec]) -> Self {
        Runner {
            world: World::new(),
            orders,
            placed: 0,
            steps: 0,
        }
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return Err(fail(
                &self.world,
                format!("the saga did not settle within {MAX_STEPS} steps"),
            ));
        }
        let w = &mut self.world;
        match *op {
            Op::Deliver {
                pick,
                recipient,
                twice,
            } => w.deliver(pick, recipient, twice).map_err(|e| fail(w, e))?,
            Op::Redeliver { pick } => w.redeliver(pick).map_err(|e| fail(w, e))?,
            Op::Repeat { pick } => w.republish(pick),
            Op::Place => {
                if let Some(spec) = self.orders.get(self.placed) {
                    let id = order_id(self.placed);
                    self.placed += 1;
                    if !spec.place(w, id) {
                        return Err(fail(w, format!("a valid order was refused: {spec:?}")));
                    }
                }
            }
            Op::Cancel { order } => {
                if order < self.placed {
                    w.request_cancel(order_id(order));
                }
            }
            Op::Deadline { order } => {
                if order < self.placed {
                    w.deadline_passes(order_id(order));
                }
            }
        }
        w.check_always().map_err(|e| fail(w, e))
    }

    /// Delivers everything in flight, oldest first.
    fn deliver_all_in_order(&mut self) -> Result<(), TestCaseError> {
        while !self.world.bus.is_empty() {
            let first = Op::Deliver {
                pick: 0,
                recipient: 0,
                twice: false,
            };
            self.step(&first)?;
        }
        Ok(())
    }

    /// Places the orders the schedule left unplaced, then delivers everything in flight
    /// in an order drawn from `rng`.
    fn settle(&mut self, rng: &mut Rng) -> Result<(), TestCaseError> {
        while self.placed < self.orders.len() {
            self.step(&Op::Place)?;
        }
        while !self.world.bus.is_empty() {
            let op = Op::Deliver {
                pick: rng.next(),
                recipient: rng.next(),
                twice: rng.next().is_multiple_of(10),
            };
            self.step(&op)?;
        }
        self.world.notes.push(model::Note::Quiescent);
        Ok(())
    }

    /// Settles, lets every deadline pass, settles again: the state the contract's at-rest
    /// invariants talk about.
    fn run_to_rest(&mut self, ops: &[Op], seed: u64) -> Result<(), TestCaseError> {
        for op in ops {
            self.step(op)?;
        }
        let mut rng = Rng(seed | 1);
        self.settle(&mut rng)?;
        // Nothing was lost, so every saga should have reached an answer on its own; the
        // deadline is the safety net for what is still open.
        let stalled = self.world.open_orders();
        self.world.expire_all_open_orders();
        self.settle(&mut rng)?;
        let w = &self.world;
        w.check_at_rest().map_err(|e| fail(w, e))?;
        if let Some(d) = w.dead_lettered_saga_messages().first() {
            return Err(fail(
                w,
                format!(
                    "{} dead-lettered message #{} ({} from {}): {}",
                    d.to.name(),
                    d.seq,
                    d.ty.name(),
                    d.producer,
                    d.code
                ),
            ));
        }
        if let Some(open) = stalled.first() {
            return Err(fail(
                w,
                format!(
                    "order {} was still open with nothing in flight: the saga stalled \
                     and only its deadline closed it",
                    label(*open)
                ),
            ));
        }
        Ok(())
    }

    /// What the run reached, its orders' endings included.
    fn reached(self) -> BTreeSet<Path> {
        let endings = self.world.endings();
        let mut reached = self.world.reached;
        reached.extend(endings);
        reached
    }
}

// ---- the properties --------------------------------------------------------------------

/// Runs `property` on `cases` values of `strategy` as `proptest!` does (a failure shrunk to
/// a minimal case, kept in proptest-regressions/), gathering what each case reached; then
/// asserts that the cases together reached every path of `wanted`.
fn check_property<S>(
    name: &str,
    cases: u32,
    strategy: S,
    wanted: &BTreeSet<Path>,
    property: impl Fn(S::Value) -> Result<BTreeSet<Path>, TestCaseError>,
) where
    S: Strategy,
    S::Value: Debug,
{
    let config = ProptestConfig {
        cases,
        max_shrink_iters: 4096,
        source_file: Some(file!()),
        ..ProptestConfig::default()
    };
    let reached = RefCell::new(BTreeSet::new());
    let result = TestRunner::new(config).run(&strategy, |value| {
        reached.borrow_mut().extend(property(value)?);
        Ok(())
    });
    match result {
        Ok(()) => assert_reached(name, cases, wanted, &reached.borrow()),
        Err(TestError::Fail(why, value)) => {
            panic!("{name} failed: {why}\nminimal failing input: {value:#?}")
        }
        Err(TestError::Abort(why)) => panic!("{name} aborted: {why}"),
    }
}

/// Many orders compete for a little stock and money while messages are delayed,
/// reordered, redelivered and repeated, customers cancel and deadlines pass at any
/// moment: at rest, every invariant of the contract holds. Together the cases reach every
/// path of [`every_path`].
#[test]
fn any_interleaving_of_duplicated_late_and_reordered_events_ends_with_every_invariant_holding() {
    check_property(
        "any_interleaving_of_duplicated_late_and_reordered_events_ends_with_every_invariant_holding",
        cases(8000),
        scenario(),
        &every_path(),
        |s| {
            let mut run = Runner::new(&s.orders);
            for event in &s.operator {
                run.world.operate(event.clone());
            }
            if s.setup_first {
                run.deliver_all_in_order()?;
            }
            run.run_to_rest(&s.ops, s.drain_seed)?;
            Ok(run.reached())
        },
    );
}
/// One order with its own customer and its own SKUs, so no other order competes for them.
#[derive(Debug, Clone)]
struct Solo {
    spec: OrderSpec,
    /// Stock of the order's SKUs, by SKU index (0: never stocked).
    stock: [i64; 3],
    /// The customer's only deposit, if any.
    deposit: Option<(i64, &'static str)>,
}

fn solo(i: usize) -> impl Strategy<Value = Solo> {
    (
        prop::collection::vec((0..3usize, 1..=4i64, 0..=15i64), 1..=3),
        prop::array::uniform3(prop_oneof![1 => Just(0i64), 4 => 1..=6i64]),
        prop::option::weighted(0.85, (1..=60i64, currency())),
    )
        .prop_map(move |(items, stock, deposit)| Solo {
            spec: OrderSpec {
                customer: format!("solo-{i}"),
                currency: "EUR",
                items: items
                    .into_iter()
                    .map(|(k, q, p)| (format!("S{i}-{k}"), q, p))
                    .collect(),
            },
            stock,
            deposit,
        })
}

fn solos() -> impl Strategy<Value = (Vec<Solo>, Vec<Op>, u64)> {
    (1..=6usize)
        .prop_flat_map(|n| (0..n).map(solo).collect::<Vec<_>>())
        .prop_flat_map(|solos| {
            (
                Just(solos),
                prop::collection::vec(op(false), 0..=120),
                any::<u64>(),
            )
        })
}

/// A run with the solos' stock and wallets in place before the first order.
fn stocked<'a>(solos: &[Solo], specs: &'a [OrderSpec]) -> Result<Runner<'a>, TestCaseError> {
    let mut run = Runner::new(specs);
    for (i, s) in solos.iter().enumerate() {
        for (k, n) in s.stock.iter().enumerate() {
            if *n > 0 {
                run.world.adjust_stock(&format!("S{i}-{k}"), *n);
            }
        }
        if let Some((amount, cur)) = s.deposit {
            run.world.deposit(&s.spec.customer, amount, cur);
        }
    }
    run.deliver_all_in_order()?;
    Ok(run)
}

/// What the services hold about one order, but for ids the run hands out in its own order.
fn outcome(w: &World, id: uuid::Uuid) -> String {
    let payment = w
        .payment
        .payments
        .get(&id)
        .map(|p| payment_svc::saga::Payment {
            payment_id: None,
            ..p.clone()
        });
    format!(
        "{:?} {:?} {payment:?}",
        w.order.orders.get(&id),
        w.inventory.reservations.get(&id)
    )
}

/// The endings a run without cancellations or deadlines must reach: confirmed, rejected,
/// and cancelled because the payment failed.
fn endings_without_cancellations() -> BTreeSet<Path> {
    let ended = |status: OrderStatus, reason: Option<CancelReason>| Path::Ended {
        status: status.as_str(),
        reason: reason.map(|r| r.as_str().to_owned()),
    };
    BTreeSet::from([
        ended(OrderStatus::Confirmed, None),
        ended(OrderStatus::Rejected, None),
        ended(OrderStatus::Cancelled, Some(CancelReason::PaymentFailed)),
    ])
}

/// Without cancellations, deadlines or competition for stock and money, the delivery
/// order, duplicates and repeats change nothing: every order ends exactly as a sequential
/// run of it would, with the stock and money to match. Together the cases reach
/// [`endings_without_cancellations`].
#[test]
fn without_cancellations_any_delivery_order_reaches_the_outcome_of_a_sequential_run() {
    check_property(
        "without_cancellations_any_delivery_order_reaches_the_outcome_of_a_sequential_run",
        cases(2500),
        solos(),
        &endings_without_cancellations(),
        |(solos, ops, seed)| {
            let specs: Vec<OrderSpec> = solos.iter().map(|s| s.spec.clone()).collect();
            // One order after the other, each delivered to the end before the next.
            let mut sequential = stocked(&solos, &specs)?;
            for _ in &specs {
                sequential.step(&Op::Place)?;
                sequential.deliver_all_in_order()?;
            }
            let mut run = stocked(&solos, &specs)?;
            run.run_to_rest(&ops, seed)?;

            let (want, got) = (&sequential.world, &run.world);
            for i in 0..specs.len() {
                let id = order_id(i);
                let (a, b) = (outcome(want, id), outcome(got, id));
                if a != b {
                    return Err(fail(
                        got,
                        format!(
                            "order {} ended as\n  {b}\na sequential run ends it as\n  {a}",
                            label(id)
                        ),
                    ));
                }
            }
            if (&want.inventory.stock, &want.payment.wallets)
                != (&got.inventory.stock, &got.payment.wallets)
            {
                return Err(fail(
                    got,
                    format!(
                        "the run left stock {:?} and wallets {:?}; a sequential run leaves \
                         {:?} and {:?}",
                        got.inventory.stock,
                        got.payment.wallets,
                        want.inventory.stock,
                        want.payment.wallets
                    ),
                ));
            }
            Ok(run.reached())
        },
    );
}

// ---- the services' declarations ---------------------------------------------------------

/// The model routes by each service's own `topology()`: it must be the service's
/// `CONSUMES`, and every event type must reach some queue (a mandatory publish of one
/// that reaches none is returned).
#[test]
fn each_service_is_bound_to_what_it_consumes_and_every_event_has_a_consumer() {
    let declared = [
        order_svc::saga::OrderInput::CONSUMES,
        inventory_svc::saga::InventoryInput::CONSUMES,
        payment_svc::saga::PaymentInput::CONSUMES,
    ];
    for (service, consumes) in Service::ALL.into_iter().zip(declared) {
        assert_eq!(
            service.consumes(),
            consumes,
            "{} is bound to other events than it consumes",
            service.name()
        );
    }
    for t in EventType::ALL {
        assert!(
            Service::ALL.iter().any(|s| s.consumes().contains(&t)),
            "no service consumes {t}"
        );
    }
}

/// `POST /orders` accepts up to 10000 of an item per line and any number of lines naming
/// the same SKU; inventory sums them into one StockReserved line, which therefore may hold
/// more than 10000 and must still be accepted by order-svc and payment-svc.
#[test]
fn an_order_naming_one_sku_on_several_lines_is_confirmed_when_stock_and_funds_suffice() {
    let mut w = World::new();
    w.adjust_stock("BULK", 20_000);
    w.deposit("whale", 1_000_000, "EUR");
    while !w.bus.is_empty() {
        w.deliver(0, 0, false).unwrap();
    }
    let spec = OrderSpec {
        customer: "whale".into(),
        currency: "EUR",
        items: vec![("BULK".into(), 10_000, 1), ("BULK".into(), 1, 1)],
    };
    assert!(spec.place(&mut w, order_id(0)), "the order is valid");
    while !w.bus.is_empty() {
        w.deliver(0, 0, false).unwrap();
    }
    let status = w.order.orders[&order_id(0)].status;
    assert!(
        status == OrderStatus::Confirmed && w.dead_letters.is_empty(),
        "{}",
        w.explain(&format!("order o1 ends {}", status.as_str()))
    );
}
