//! Property tests of the saga's choreography, without a broker or a database.
//!
//! `model` runs the three services in memory on their own `decide` functions and plan
//! application, and delivers their messages in whatever order a generated schedule picks: late, reordered,
//! delivered twice under the same message id, repeated under a new one, with customers
//! cancelling and deadlines passing at any moment. Once nothing is in flight, every
//! at-rest invariant of the contract ("The choreography") must hold.
//!
//! The two properties run 10,500 generated interleavings between them by default;
//! `PROPTEST_CASES` overrides the number of cases of every property here.

mod model;

use events::catalog::OrderItem;
use model::{Service, World, label, order_id};
use order_svc::saga::OrderStatus;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

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
    /// (sku, delta) stock adjustments, published at the start.
    adjustments: Vec<(&'static str, i64)>,
    /// (customer, amount, currency) deposits, published at the start.
    deposits: Vec<(&'static str, i64, &'static str)>,
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

fn scenario() -> impl Strategy<Value = Scenario> {
    // Opening stock of the four stocked SKUs, then a few more adjustments, some of
    // which would make the stock negative and are refused.
    let opening = prop::array::uniform4(prop_oneof![1 => Just(0i64), 6 => 1..=30i64]);
    let adjustment =
        (0..4usize, prop_oneof![3 => 1..=8i64, 2 => -6..=-1i64]).prop_map(|(s, d)| (SKUS[s], d));
    // One wallet each for most of the first four customers, then a few more deposits,
    // some in another currency than the wallet's and refused.
    let wallets = prop::array::uniform4(prop::option::weighted(0.8, (10..=120i64, currency())));
    let deposit = (0..4usize, 1..=40i64, currency()).prop_map(|(c, a, cur)| (CUSTOMERS[c], a, cur));
    (
        (opening, prop::collection::vec(adjustment, 0..=4)),
        (wallets, prop::collection::vec(deposit, 0..=3)),
        prop::collection::vec(order_spec(), 1..=12),
        prop::collection::vec(op(true), 0..=200),
        prop::bool::weighted(0.7),
        any::<u64>(),
    )
        .prop_map(
            |(
                (opening, more_stock),
                (wallets, more_money),
                orders,
                ops,
                setup_first,
                drain_seed,
            )| {
                let adjustments = (0..4)
                    .filter(|&i| opening[i] > 0)
                    .map(|i| (SKUS[i], opening[i]))
                    .chain(more_stock)
                    .collect();
                let deposits = (0..4)
                    .filter_map(|i| wallets[i].map(|(a, cur)| (CUSTOMERS[i], a, cur)))
                    .chain(more_money)
                    .collect();
                Scenario {
                    adjustments,
                    deposits,
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
}

// ---- the properties --------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(8000),
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    })]

    /// Many orders compete for a little stock and money while messages are delayed,
    /// reordered, redelivered and repeated, customers cancel and deadlines pass at any
    /// moment: at rest, every invariant of the contract holds.
    #[test]
    fn any_interleaving_of_duplicated_late_and_reordered_events_ends_with_every_invariant_holding(
        s in scenario()
    ) {
        let mut run = Runner::new(&s.orders);
        for (sku, delta) in &s.adjustments {
            run.world.adjust_stock(sku, *delta);
        }
        for (customer, amount, currency) in &s.deposits {
            run.world.deposit(customer, *amount, currency);
        }
        if s.setup_first {
            run.deliver_all_in_order()?;
        }
        run.run_to_rest(&s.ops, s.drain_seed)?;
    }
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

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(2500),
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    })]

    /// Without cancellations, deadlines or competition for stock and money, the delivery
    /// order, duplicates and repeats change nothing: every order ends exactly as a
    /// sequential run of it would, with the stock and money to match.
    #[test]
    fn without_cancellations_any_delivery_order_reaches_the_outcome_of_a_sequential_run(
        (solos, ops, seed) in solos()
    ) {
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
                return Err(fail(got, format!(
                    "order {} ended as\n  {b}\na sequential run ends it as\n  {a}", label(id)
                )));
            }
        }
        if (&want.inventory.stock, &want.payment.wallets) != (&got.inventory.stock, &got.payment.wallets) {
            return Err(fail(got, format!(
                "the run left stock {:?} and wallets {:?}; a sequential run leaves {:?} and {:?}",
                got.inventory.stock, got.payment.wallets, want.inventory.stock, want.payment.wallets
            )));
        }
    }
}

// ---- the services' declarations ---------------------------------------------------------

#[test]
fn each_service_consumes_exactly_the_events_the_contract_routes_to_it() {
    use events::EventType as E;
    let expected = [
        (
            Service::Order,
            vec![
                E::StockReserved,
                E::StockRejected,
                E::PaymentDone,
                E::PaymentFailed,
                E::StockReleased,
                E::PaymentRefunded,
            ],
        ),
        (
            Service::Inventory,
            vec![
                E::OrderCreated,
                E::OrderConfirmed,
                E::OrderCancelled,
                E::StockAdjusted,
            ],
        ),
        (
            Service::Payment,
            vec![E::StockReserved, E::OrderCancelled, E::FundsDeposited],
        ),
    ];
    for (service, mut wanted) in expected {
        let mut got = service.consumes().to_vec();
        got.sort();
        wanted.sort();
        assert_eq!(got, wanted, "{} consumes the wrong events", service.name());
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
