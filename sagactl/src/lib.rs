//! The parts of sagactl other programs use too: the test suites run the same invariant
//! checks as `sagactl verify`, and `saga-bench` (the benchmarks and the load generator)
//! is a command line of the same kind, with the same global options, identity, output and
//! broker connections.
//!
//! - [`scenario`]: the scenario file format and its pure helpers.
//! - [`verify`]: reads the three services' HTTP read endpoints and checks the contract's
//!   at-rest invariants.
//! - [`subscriptions`]: which service consumes which event types, from the services' own
//!   topologies.
//! - [`options`], [`identity`]: the global options of a command line (connections,
//!   output) and who it is at the services' HTTP edge (a token, or the development key).
//! - [`context`]: what every command needs (HTTP client, broker connections, management
//!   API), and the errors that decide the exit status.
//! - [`output`]: printing results as text or JSON, errors and exit statuses.
//! - [`publish`], [`bus`]: publishing an event as the operator; watching `saga.events`.
//! - [`grammar`]: the checks every command line's tests run on its grammar.
//! - [`dead_letters`]: the filters, job outcomes and audit pages of the dead-letter
//!   triage, which goes through the owning service's HTTP API.
//! - [`triage`]: the pure rules of `sagactl stuck` and `sagactl find` (which participant
//!   an open saga waits on, ages, which fields of a dead letter name an id).

pub mod bus;
pub mod context;
pub mod dead_letters;
pub mod grammar;
pub mod identity;
pub mod options;
pub mod output;
pub mod publish;
pub mod scenario;
pub mod subscriptions;
pub mod triage;
pub mod verify;
