//! What the saga's compensation, race and concurrency tests need beyond [`Stack`]'s
//! everyday helpers: the per-order records of inventory and payment, waits on the figures
//! of a SKU, a wallet and an order's history, how many messages a service has handled, a
//! watcher of every event on `saga.events`, and the events a test publishes itself to force
//! an order of delivery.
//!
//! Every wait here has the stack's deadline ([`StackOptions::wait`]) and fails the test with
//! what it saw last.
//!
//! [`StackOptions::wait`]: crate::StackOptions::wait

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use events::Event;
use events::catalog::{Money, OrderCancelled, OrderCreated, OrderItem, StockItem, StockReserved};
use futures_util::StreamExt;
use lapin::Connection;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use messaging::Envelope;
use messaging::topology::EVENTS_EXCHANGE;
use reqwest::StatusCode;
use sagactl::verify::Snapshot;
use serde_json::Value;
use uuid::Uuid;

use crate::poll::{Poll, eventually, until};
use crate::sandbox;
use crate::stack::{Service, Stack};

/// The metric every consumer counts its messages in, by `type` and `outcome`.
pub const HANDLED_METRIC: &str = "saga_messages_handled_total";

/// `outcome` of a message a handler applied.
pub const HANDLED: &str = "ok";

/// `outcome` of a message the inbox recognised as already handled.
pub const DUPLICATE: &str = "duplicate";

/// An integer field of a JSON answer; panics, showing the answer, when there is none.
pub fn int(v: &Value, key: &str) -> i64 {
    v[key]
        .as_i64()
        .unwrap_or_else(|| panic!("{key:?} is not an integer in {v}"))
}

/// `(available, reserved, sold)` of a `GET /stock/{sku}` answer.
pub fn stock_figures(stock: &Value) -> (i64, i64, i64) {
    (
        int(stock, "available"),
        int(stock, "reserved"),
        int(stock, "sold"),
    )
}

/// `(balance, captured, refunded)` of a `GET /wallets/{customer_id}` answer.
pub fn wallet_figures(wallet: &Value) -> (i64, i64, i64) {
    (
        int(wallet, "balance"),
        int(wallet, "captured"),
        int(wallet, "refunded"),
    )
}

/// The event types of an order's history, oldest first.
pub fn history_types(order: &Value) -> Vec<String> {
    order["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["type"].as_str().map(str::to_owned))
        .collect()
}

/// The order of a `GET /orders/{id}` answer, as the OrderCreated order-svc published for it.
pub fn order_created_of(order: &Value) -> OrderCreated {
    serde_json::from_value(serde_json::json!({
        "order_id": order["order_id"],
        "customer_id": order["customer_id"],
        "items": order["items"],
        "total": {"amount": order["total"], "currency": order["currency"]},
    }))
    .unwrap_or_else(|e| panic!("{order} does not read as an OrderCreated: {e}"))
}

/// An OrderCreated for an order order-svc never heard of: `quantity` of `sku` at
/// `unit_price` each.
pub fn synthetic_order(
    customer_id: &str,
    currency: &str,
    sku: &str,
    quantity: i64,
    unit_price: i64,
) -> OrderCreated {
    OrderCreated {
        order_id: Uuid::now_v7(),
        customer_id: customer_id.to_owned(),
        items: vec![OrderItem {
            sku: sku.to_owned(),
            quantity,
            unit_price,
        }],
        total: Money::new(quantity * unit_price, currency),
    }
}

/// The StockReserved inventory answers `order` with when it reserves all of it.
pub fn stock_reserved_for(order: &OrderCreated) -> StockReserved {
    StockReserved {
        order_id: order.order_id,
        customer_id: order.customer_id.clone(),
        items: order
            .items
            .iter()
            .map(|i| StockItem {
                sku: i.sku.clone(),
                quantity: i.quantity,
            })
            .collect(),
        total: order.total.clone(),
    }
}

/// OrderCancelled for `order_id` with `reason`.
pub fn order_cancelled(order_id: Uuid, reason: events::catalog::CancelReason) -> Event {
    Event::OrderCancelled(OrderCancelled { order_id, reason })
}

/// An order id as order-svc's answers spell it.
pub fn order_uuid(order_id: &str) -> Uuid {
    Uuid::parse_str(order_id).unwrap_or_else(|e| panic!("{order_id:?} is no order id: {e}"))
}

impl Stack {
    /// `GET /reservations/{order_id}` at inventory-svc.
    pub async fn reservation_of(&self, order_id: &str) -> (StatusCode, Value) {
        let path = format!("/reservations/{}", sandbox::encode_segment(order_id));
        self.get(Service::Inventory, &path).await
    }

    /// `GET /payments/{order_id}` at payment-svc.
    pub async fn payment_of(&self, order_id: &str) -> (StatusCode, Value) {
        let path = format!("/payments/{}", sandbox::encode_segment(order_id));
        self.get(Service::Payment, &path).await
    }

    /// How many messages of `event_type` the running `service` process has settled with
    /// `outcome` ([`HANDLED`], [`DUPLICATE`], …). A restarted process counts from 0.
    pub async fn handled_count(&self, service: Service, event_type: &str, outcome: &str) -> u64 {
        self.metric(
            service,
            HANDLED_METRIC,
            &[("type", event_type), ("outcome", outcome)],
        )
        .await as u64
    }

    /// Waits until `service` has settled at least `at_least` messages of `event_type` with
    /// `outcome`: what it did with them is committed by then.
    pub async fn wait_handled(
        &self,
        service: Service,
        event_type: &str,
        outcome: &str,
        at_least: u64,
    ) {
        eventually(self.options().wait, || async move {
            let n = self.handled_count(service, event_type, outcome).await;
            if n >= at_least {
                Ok(())
            } else {
                Err(format!(
                    "{service} settled {n} {event_type} with outcome {outcome}, waiting for {at_least}"
                ))
            }
        })
        .await
    }

    /// Waits until `GET /stock/{sku}` shows `(available, reserved, sold)`.
    pub async fn wait_stock_figures(&self, sku: &str, want: (i64, i64, i64)) -> Value {
        eventually(self.options().wait, || async move {
            match self.stock(sku).await {
                (StatusCode::OK, s) if stock_figures(&s) == want => Ok(s),
                (StatusCode::OK, s) => Err(format!(
                    "stock of {sku} (available, reserved, sold) = {:?}, want {want:?}",
                    stock_figures(&s)
                )),
                (status, body) => Err(format!("GET /stock/{sku} answered {status} {body}")),
            }
        })
        .await
    }

    /// Waits until `GET /wallets/{customer_id}` shows `(balance, captured, refunded)`.
    pub async fn wait_wallet_figures(&self, customer_id: &str, want: (i64, i64, i64)) -> Value {
        eventually(self.options().wait, || async move {
            match self.wallet(customer_id).await {
                (StatusCode::OK, w) if wallet_figures(&w) == want => Ok(w),
                (StatusCode::OK, w) => Err(format!(
                    "wallet of {customer_id} (balance, captured, refunded) = {:?}, want {want:?}",
                    wallet_figures(&w)
                )),
                (status, body) => Err(format!(
                    "GET /wallets/{customer_id} answered {status} {body}"
                )),
            }
        })
        .await
    }

    /// Waits until the order's history holds every type of `types` (at least once) and
    /// returns the order.
    pub async fn wait_order_history(&self, order_id: &str, types: &[&str]) -> Value {
        eventually(self.options().wait, || async move {
            let (status, order) = self.order(order_id).await;
            let seen = history_types(&order);
            if status == StatusCode::OK && types.iter().all(|t| seen.iter().any(|s| s == t)) {
                Ok(order)
            } else {
                Err(format!(
                    "history of order {order_id}: {seen:?}, waiting for all of {types:?} ({status})"
                ))
            }
        })
        .await
    }

    /// Waits until inventory's reservation of the order has one of `statuses`; returns it.
    pub async fn wait_reservation_status(&self, order_id: &str, statuses: &[&str]) -> Value {
        eventually(self.options().wait, || async move {
            match self.reservation_of(order_id).await {
                (StatusCode::OK, r) if statuses.contains(&r["status"].as_str().unwrap_or("")) => {
                    Ok(r)
                }
                (status, body) => Err(format!(
                    "reservation of {order_id}: {status} {body}, waiting for one of {statuses:?}"
                )),
            }
        })
        .await
    }

    /// Waits until payment-svc's payment of the order has one of `statuses`; returns it.
    pub async fn wait_payment_status(&self, order_id: &str, statuses: &[&str]) -> Value {
        eventually(self.options().wait, || async move {
            match self.payment_of(order_id).await {
                (StatusCode::OK, p) if statuses.contains(&p["status"].as_str().unwrap_or("")) => {
                    Ok(p)
                }
                (status, body) => Err(format!(
                    "payment of {order_id}: {status} {body}, waiting for one of {statuses:?}"
                )),
            }
        })
        .await
    }

    /// Waits until order-svc lists `count` orders and none of them is `pending` or
    /// `reserved`; returns them.
    pub async fn wait_orders_closed(&self, count: usize) -> Vec<Value> {
        eventually(self.options().wait, || async move {
            let orders = self.try_all_orders().await?;
            let open = orders
                .iter()
                .filter(|o| matches!(o["status"].as_str(), Some("pending" | "reserved")))
                .count();
            if orders.len() == count && open == 0 {
                Ok(orders)
            } else {
                Err(format!(
                    "{} orders listed, {open} still open; waiting for {count} closed",
                    orders.len()
                ))
            }
        })
        .await
    }

    /// How many events of `event_type` about `correlation_id` (the order id) `service`
    /// has written to its outbox: everything it ever emitted, published or not yet.
    pub async fn emitted_count(
        &self,
        service: Service,
        event_type: &str,
        correlation_id: &str,
    ) -> i64 {
        let pool = self.db(service).await;
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE event_type = $1 AND correlation_id = $2",
        )
        .bind(event_type)
        .bind(correlation_id)
        .fetch_one(&pool)
        .await
        .unwrap_or_else(|e| panic!("cannot count {service}'s outbox rows: {e}"));
        pool.close().await;
        count
    }

    /// Waits until order-svc lists `count` orders and every saga has come to rest: each
    /// order closed, and its reservation and payment where the order's status leaves them
    /// for good ([`at_rest`]). Stricter than the invariants, which a saga still in flight
    /// can satisfy for a moment (a cancelled order whose StockReserved has not reached
    /// payment yet, say). Returns the snapshot that showed it.
    pub async fn wait_sagas_at_rest(&self, count: usize) -> Snapshot {
        eventually(self.options().wait, || async move {
            let snapshot = self.snapshot().await?;
            if snapshot.orders.len() != count {
                return Err(format!(
                    "{} orders listed, waiting for {count}",
                    snapshot.orders.len()
                ));
            }
            let reservations: HashMap<Uuid, &str> = snapshot
                .reservations
                .iter()
                .map(|r| (r.order_id, r.status.as_str()))
                .collect();
            let payments: HashMap<Uuid, &str> = snapshot
                .payments
                .iter()
                .map(|p| (p.order_id, p.status.as_str()))
                .collect();
            let restless: Vec<String> = snapshot
                .orders
                .iter()
                .filter_map(|o| {
                    let r = reservations.get(&o.order_id).copied();
                    let p = payments.get(&o.order_id).copied();
                    (!at_rest(&o.status, r, p)).then(|| {
                        format!(
                            "{} {} (reservation {}, payment {})",
                            o.status,
                            o.order_id,
                            r.unwrap_or("none"),
                            p.unwrap_or("none")
                        )
                    })
                })
                .collect();
            if restless.is_empty() {
                Ok(snapshot)
            } else {
                Err(format!(
                    "{} sagas not at rest, e.g. {:?}",
                    restless.len(),
                    &restless[..restless.len().min(5)]
                ))
            }
        })
        .await
    }

    /// Reads `GET /stock/{sku}` again and again until `done` is set (or twice the stack's
    /// wait has passed), and returns every `(available, reserved, sold)` seen, to check a
    /// property that must hold at every moment, not only at rest.
    pub async fn sample_stock_while(&self, sku: &str, done: &AtomicBool) -> Vec<(i64, i64, i64)> {
        let samples = Mutex::new(Vec::new());
        let sampled = until(self.options().wait * 2, || async {
            if let Ok((StatusCode::OK, s)) = self
                .try_get(
                    Service::Inventory,
                    &format!("/stock/{}", sandbox::encode_segment(sku)),
                )
                .await
            {
                samples
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(stock_figures(&s));
            }
            if done.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending("still sampling".to_owned())
            }
        })
        .await;
        if let Err(e) = sampled {
            panic!("the work being sampled did not finish: {e}");
        }
        samples.into_inner().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts watching every event published on `saga.events` from now on.
    pub async fn watch_events(&self) -> EventWatch {
        EventWatch::start(self).await
    }
}

/// An envelope seen on the bus, with the `traceparent` header it travelled with.
type Seen = (Envelope, Option<String>);

/// Every event published on `saga.events` while it lives, seen through an exclusive,
/// auto-deleted queue bound to `#` (it takes no service's messages, and it goes with its
/// connection). The saga's queues are declared before it binds.
pub struct EventWatch {
    seen: Arc<Mutex<Vec<Seen>>>,
    wait: Duration,
    // Kept open for as long as the watch lives.
    _connection: Connection,
}

impl EventWatch {
    async fn start(stack: &Stack) -> EventWatch {
        let url = stack.sandbox().amqp_url();
        let connection = messaging::amqp::connect(&url, "saga-tests event watch")
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the broker to watch events: {e}"));
        // A bystander: the saga's own queues first, so no event reaches the watch alone.
        messaging::topology::declare_all(&connection, &sagactl::subscriptions::saga_services())
            .await;
        let channel = connection
            .create_channel()
            .await
            .unwrap_or_else(|e| panic!("cannot open a channel to watch events: {e}"));
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("cannot declare the watch queue: {e}"));
        let name = queue.name().as_str().to_owned();
        channel
            .queue_bind(
                name.as_str().into(),
                EVENTS_EXCHANGE.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("cannot bind the watch queue to {EVENTS_EXCHANGE}: {e}"));
        let mut consumer = channel
            .basic_consume(
                name.as_str().into(),
                "saga-tests-watch".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("cannot consume from the watch queue: {e}"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                // Only envelopes: the tests that publish bytes that are none do not watch.
                if let Ok(envelope) = serde_json::from_slice::<Envelope>(&delivery.data) {
                    let traceparent = messaging::envelope::header_str(
                        &delivery.properties,
                        messaging::envelope::TRACEPARENT_HEADER,
                    );
                    sink.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((envelope, traceparent));
                }
            }
        });
        EventWatch {
            seen,
            wait: stack.options().wait,
            _connection: connection,
        }
    }

    /// The envelopes of type `event_type` about `correlation_id` (the order id) seen so
    /// far, in arrival order.
    pub fn of(&self, event_type: &str, correlation_id: &str) -> Vec<Envelope> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(e, _)| e)
            .filter(|e| e.event_type == event_type && e.correlation_id == correlation_id)
            .cloned()
            .collect()
    }

    /// Waits until the message `message_id` has been seen on the bus; returns it.
    pub async fn wait_for_id(&self, message_id: &str) -> Envelope {
        eventually(self.wait, || async move {
            self.seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(e, _)| e)
                .find(|e| e.message_id.to_string() == message_id)
                .cloned()
                .ok_or_else(|| format!("message {message_id} not seen on the bus yet"))
        })
        .await
    }

    /// Every event about `correlation_id` seen so far, as (type, traceparent header).
    pub fn traces_of(&self, correlation_id: &str) -> Vec<(String, Option<String>)> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(e, _)| e.correlation_id == correlation_id)
            .map(|(e, tp)| (e.event_type.clone(), tp.clone()))
            .collect()
    }

    /// Waits until an envelope of type `event_type` about `correlation_id` has been seen;
    /// returns the first.
    pub async fn wait_for(&self, event_type: &str, correlation_id: &str) -> Envelope {
        eventually(self.wait, || async move {
            self.of(event_type, correlation_id)
                .into_iter()
                .next()
                .ok_or_else(|| format!("no {event_type} about {correlation_id} seen yet"))
        })
        .await
    }
}

/// Whether an order with `status` has nothing left in flight, given the status of its
/// reservation at inventory and of its payment at payment-svc (`None`: no record).
/// - confirmed: sold and captured;
/// - rejected: inventory refused it, and payment never heard of it;
/// - cancelled: inventory gave back whatever it held (`released`), and payment has seen the
///   cancellation (`voided`, `refunded`, or `failed`: a charge refused or not possible),
///   after which nothing can take money for it any more.
pub fn at_rest(status: &str, reservation: Option<&str>, payment: Option<&str>) -> bool {
    match status {
        "confirmed" => reservation == Some("sold") && payment == Some("captured"),
        "rejected" => reservation == Some("rejected") && payment.is_none(),
        "cancelled" => {
            reservation == Some("released")
                && matches!(payment, Some("voided" | "refunded" | "failed"))
        }
        _ => false,
    }
}

/// A `Poll` over a status: ready on `want`, failed on any status of `never`.
pub fn status_poll(order: Value, want: &str, never: &[&str]) -> Poll<Value> {
    let status = order["status"].as_str().unwrap_or("").to_owned();
    if status == want {
        Poll::Ready(order)
    } else if never.contains(&status.as_str()) {
        Poll::Failed(format!("the order became {status}: {order}"))
    } else {
        Poll::Pending(format!("the order is {status}"))
    }
}
