//! The test harness of the order saga: real binaries, a real broker, a real database.
//!
//! - [`stack`]: [`Stack`] starts order-svc, inventory-svc and payment-svc as processes in
//!   a sandbox of their own and drives them over HTTP and AMQP. Its invariant checks are
//!   `sagactl verify`'s ([`sagactl::verify`]), on what the services' read endpoints answer.
//! - [`sandbox`]: a fresh RabbitMQ vhost and fresh PostgreSQL databases per test, removed
//!   afterwards; also used alone by the in-process tests of the messaging building blocks.
//! - [`proxy`]: [`TcpProxy`], to cut one stack off the broker.
//! - [`cluster`]: [`cluster::RabbitCluster`], a private three-node RabbitMQ cluster.
//! - [`pg_standby`]: a private PostgreSQL primary with a synchronous hot standby.
//! - [`steady_load`]: orders at a steady rate through a fault, and the checks after it.
//! - [`replicas`]: more instances of a service on the same stack.
//! - [`sigterm`]: stopping a service process as an orchestrator does, and timing its drain.
//! - [`upgrade`]: the previous release's binaries, the event versions the current release
//!   writes beside them, and replacing a process by another release's.
//! - [`poll`]: [`eventually`], the only way tests wait for a result.
//! - [`saga_support`]: helpers for the saga tests: watching the events on the broker,
//!   waiting for a service to have handled a message, reading reservations and payments.
//! - [`prometheus`]: reading `/metrics`.
//! - [`browser`]: a headless chromium through chromedriver, and `sagactl ui` for a stack.
//! - [`auth`]: bearer tokens signed with the development key; the stack's HTTP helpers
//!   send an operator's by default.
//! - [`compat`]: the compatibility gate's comparisons: event schemas and migrations against
//!   the previous release's (needs neither broker nor database).
//!
//! The end-to-end tests run the binaries of `cargo build --workspace --bins`; PostgreSQL
//! and RabbitMQ (with its management plugin) must be running, as `scripts/test.sh`
//! arranges.

pub mod auth;
pub mod browser;
pub mod cluster;
pub mod compat;
pub mod failure_support;
pub mod pg_auto_failover;
pub mod pg_standby;
pub mod poll;
pub mod prometheus;
pub mod proxy;
pub mod replicas;
pub mod saga_support;
pub mod sandbox;
pub mod sigterm;
pub mod stack;
pub mod steady_load;
pub mod upgrade;

pub use poll::{Poll, eventually};
pub use proxy::TcpProxy;
pub use reqwest::{Method, StatusCode};
pub use sandbox::Sandbox;
pub use stack::{Service, Stack, StackOptions, order_request};
